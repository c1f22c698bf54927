"""Parse a ``COPY ... TO STDOUT (FORMAT csv)`` byte stream into Arrow batches of strings.

pyarrow's C++ CSV reader does the per-row work; Python only hands it blocks of bytes. Every
column is read as ``pa.string()``; the warehouse casts text to typed values in SQL.

Guarantees of `read_csv_batches` (pinned by ``tests/test_types.py``):

* SQL NULL (PostgreSQL writes an unquoted empty field) becomes null; an empty string (written
  ``""``) stays an empty string. Commas, quotes, CR/LF, backslashes, tabs, NUL-free Unicode
  and a leading byte-order mark inside values survive byte for byte.
* Rows come out in stream order, none dropped (an all-NULL row of a one-column select is an
  empty line and is kept).
* Memory is bounded by a few blocks of `block_size` bytes, whatever the stream length. A
  single row longer than about one block cannot be parsed: the reader raises `CopyStreamError`
  saying so (raise `block_size`).
* Errors never contain row data (PHI): pyarrow's messages, which quote the offending row, are
  replaced by a description of the problem.

The reader trusts the stream to be complete: a COPY cut short may end in a partial last row
that parses. Callers must check that the COPY itself succeeded before using the rows.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Protocol

import pyarrow as pa
import pyarrow.csv as pacsv

from clinipipe.source.catalog import TableSchema

DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
"""Bytes per CSV block (and so roughly per Arrow batch); also the practical limit of one row."""


class CopyStreamError(Exception):
    """The COPY CSV stream could not be parsed. The message never contains row data."""


class Readable(Protocol):
    """Anything with ``read(size) -> bytes`` (a file, a pipe, a socket reader). Short reads
    are fine; ``b""`` means the end of the stream."""

    def read(self, size: int = -1, /) -> bytes: ...


class _LeadingNewline(io.RawIOBase):
    """`raw` preceded by one newline, read in full blocks.

    The extra (skipped) first line keeps pyarrow from treating a byte-order mark at the start of
    the first value as a file BOM and dropping it, and makes an empty stream a valid CSV. Reads
    are filled up to the requested size so that short pipe reads never shrink CSV blocks (a row
    must fit in about one block).
    """

    def __init__(self, raw: Readable) -> None:
        super().__init__()
        self._raw = raw
        self._pending = b"\n"
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        chunks = [self._pending]
        have = len(self._pending)
        self._pending = b""
        while not self._eof and (size < 0 or have < size):
            chunk = self._raw.read(-1 if size < 0 else size - have)
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
            have += len(chunk)
        data = b"".join(chunks)
        if size >= 0 and len(data) > size:
            data, self._pending = data[:size], data[size:]
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


def csv_options(
    column_names: list[str], block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """The pyarrow options matching PostgreSQL's CSV COPY output (for a stream that starts with
    the extra newline `read_csv_batches` adds)."""
    read = pacsv.ReadOptions(
        column_names=column_names,
        autogenerate_column_names=False,
        block_size=block_size,
        skip_rows=1,  # the newline added in front of the stream
    )
    parse = pacsv.ParseOptions(
        delimiter=",",
        quote_char='"',
        double_quote=True,
        escape_char=False,
        newlines_in_values=True,
        ignore_empty_lines=False,
    )
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in column_names},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        null_values=[""],
        check_utf8=True,
    )
    return read, parse, convert


def read_csv_batches(
    stream: Readable, table: TableSchema, *, block_size: int = DEFAULT_BLOCK_SIZE
) -> Iterator[pa.RecordBatch]:
    """Arrow batches (one string column per `table.column_names`, in order) of the CSV rows of
    `stream`, as written by ``COPY (SELECT export_select_list(table) ...) TO STDOUT (FORMAT
    csv)``. Lazy and streaming: nothing is read before the first batch is asked for. See the
    module docstring for the guarantees."""
    names = table.column_names
    read, parse, convert = csv_options(names, block_size)
    source = _LeadingNewline(stream)
    try:
        reader = pacsv.open_csv(
            source, read_options=read, parse_options=parse, convert_options=convert
        )
        for batch in reader:
            if batch.num_rows:
                yield batch
    except pa.ArrowInvalid as exc:
        raise CopyStreamError(_describe(str(exc), table, block_size)) from None


_COLUMN_COUNT = re.compile(r"Expected (\d+) columns?, got (\d+)")
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")


def _describe(message: str, table: TableSchema, block_size: int) -> str:
    where = f"the COPY stream of {table.qualified_name}"
    if "straddl" in message:
        return (
            f"a row of {where} is longer than the CSV block size ({block_size:,} bytes): "
            "raise block_size above the largest row"
        )
    if (m := _COLUMN_COUNT.search(message)) is not None:
        return (
            f"{where} has a row of {m.group(2)} fields where {m.group(1)} were expected (the "
            "export select list and the table schema disagree, or the stream is not CSV)"
        )
    if "UTF8" in message or "UTF-8" in message:
        m = _CSV_COLUMN.search(message)
        column = table.column_names[int(m.group(1))] if m else "a column"
        return f"{where} has invalid UTF-8 in column {column} (set client_encoding = 'UTF8')"
    return f"{where} could not be parsed as CSV"
