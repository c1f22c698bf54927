"""Read one page range of a table under an exported snapshot, as a stream of Arrow batches.

`COPY (SELECT ... WHERE ctid >= '(a,0)' AND ctid < '(b,0)') TO STDOUT (FORMAT csv)` runs on its
own connection in a thread, writing into a pipe; the caller parses the pipe with pyarrow's C++
CSV reader. Memory stays bounded by the pipe and the CSV block size, whatever the table size.

A `CopyCancel` stops every range read with it, running or not started yet: the COPY is cancelled
on the server and the range's batches end in `CopyCancelled`, so the consumer (which commits a
range only after its stream ended cleanly) never records a cancelled range as done.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Protocol

import psycopg2
import psycopg2.extensions

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.source.catalog import EXPORT_SESSION_SETTINGS, TableSchema, export_select_list
from clinipipe.source.postgres import SourceError, connect
from clinipipe.sql.dialect import POSTGRES

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_PAGES_PER_RANGE = 8192  # 64 MiB of 8 KiB heap pages


@dataclass(frozen=True)
class PageRange:
    """Heap pages [start_page, end_page) of a table; `end_page` None means "to the end"."""

    table: str
    number: int
    start_page: int
    end_page: int | None

    def predicate(self) -> str:
        lower = f"ctid >= '({self.start_page},0)'::tid"
        if self.end_page is None:
            return lower
        return f"{lower} AND ctid < '({self.end_page},0)'::tid"


def plan_ranges(
    table: TableSchema, pages_per_range: int = DEFAULT_PAGES_PER_RANGE
) -> list[PageRange]:
    """Split the table's heap into ranges; the last one is open-ended (the table may grow)."""
    count = max(1, -(-table.pages // pages_per_range))
    ranges = []
    for number in range(count):
        start = number * pages_per_range
        end = None if number == count - 1 else start + pages_per_range
        ranges.append(PageRange(table.name, number, start, end))
    return ranges


class CopyCancelled(SourceError):
    """The range was not read completely because its `CopyCancel` was cancelled."""


class Cancellable(Protocol):
    """A connection whose running statement `cancel()` cancels on the server."""

    def cancel(self) -> None: ...


class CopyCancel:
    """Cancels the COPYs of every `read_range` given it: those running (a cancel request to the
    server, PostgreSQL's `pg_cancel_backend`) and those that start afterwards (they fail at
    once). Thread-safe; `cancel` may be called from any thread, any number of times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: set[Cancellable] = set()
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            running = list(self._connections)
        for con in running:
            with contextlib.suppress(psycopg2.Error):  # it ended meanwhile: nothing to cancel
                con.cancel()  # a `Cancellable` of another driver handles its own errors

    def _enter(self, con: Cancellable) -> None:
        with self._lock:
            if self._cancelled:
                raise CopyCancelled("the backfill was cancelled")
            self._connections.add(con)

    def _leave(self, con: Cancellable) -> None:
        with self._lock:
            self._connections.discard(con)

    def check(self) -> None:
        """Raise `CopyCancelled` when cancelled."""
        if self._cancelled:
            raise CopyCancelled("the backfill was cancelled")


@dataclass
class RangeStream:
    """Arrow batches of one range (all columns as strings) and the CSV bytes read so far."""

    batches: Iterator[pa.RecordBatch]
    counter: _CountingReader = field(repr=False)

    @property
    def bytes_read(self) -> int:
        return self.counter.count


class _CountingReader:
    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def close(self) -> None:
        self.closed = True
        self.raw.close()


@contextmanager
def read_range(
    dsn: str,
    snapshot_name: str,
    table: TableSchema,
    page_range: PageRange,
    cancel: CopyCancel | None = None,
) -> Iterator[RangeStream]:
    """Stream `page_range` of `table` as seen by snapshot `snapshot_name`.

    Raises `SourceError` (never leaves the COPY thread running) when PostgreSQL fails, e.g.
    the table was dropped or the snapshot is gone. Once `cancel` is cancelled, the batches stop
    within one CSV block and end in `CopyCancelled`, also when the COPY itself had completed:
    a stream that ends without an exception is a complete range read before any cancel.
    """
    cancel = cancel or CopyCancel()
    cancel.check()
    con = connect(dsn, application_name="clinipipe-backfill")
    con.autocommit = True
    try:
        cancel._enter(con)
    except CopyCancelled:
        con.close()
        raise
    relation = f"{POSTGRES.quote_ident(table.schema)}.{POSTGRES.quote_ident(table.name)}"
    copy_sql = (
        f"COPY (SELECT {export_select_list(table)} FROM {relation} "
        f"WHERE {page_range.predicate()}) TO STDOUT (FORMAT csv)"
    )
    failure: list[BaseException] = []
    read_fd, write_fd = os.pipe()
    reader = _CountingReader(os.fdopen(read_fd, "rb"))

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as sink, con.cursor() as cur:
                for statement in EXPORT_SESSION_SETTINGS:
                    cur.execute(statement)
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
                cancel.check()  # a cancel sent before the COPY started found nothing running
                cur.copy_expert(copy_sql, sink)
                cur.execute("COMMIT")
        except BaseException as exc:  # handed to the consumer below
            failure.append(exc)

    thread = threading.Thread(target=produce, name=f"copy-{table.name}-{page_range.number}")

    def batches() -> Iterator[pa.RecordBatch]:
        # The COPY's success is checked when the stream ends, before the caller can commit:
        # a COPY cut short must never look like a complete range.
        from clinipipe.source.copy_reader import read_csv_batches  # pyarrow: only when used

        try:
            for batch in read_csv_batches(reader, table):
                cancel.check()
                yield batch
        except Exception:
            if thread.is_alive():
                reader.close()  # the producer gets EPIPE and stops
                con.cancel()
            thread.join()
            cancel.check()
            _raise_source_failure(failure, table, page_range)
            raise
        thread.join()
        cancel.check()
        _raise_source_failure(failure, table, page_range)

    thread.start()
    try:
        yield RangeStream(batches(), reader)
    finally:
        if thread.is_alive():
            reader.close()  # the producer gets EPIPE and stops
            con.cancel()
            thread.join()
        if not reader.closed:
            reader.close()
        cancel._leave(con)
        con.close()


def _raise_source_failure(
    failure: list[BaseException], table: TableSchema, page_range: PageRange
) -> None:
    if not failure:
        return
    exc = failure[0]
    if isinstance(exc, CopyCancelled):
        raise exc
    if isinstance(exc, psycopg2.Error):
        reason = mask_dsn(first_line(exc))
        raise SourceError(
            f"reading {table.schema}.{table.name} range {page_range.number} failed: {reason}"
        ) from None
    if isinstance(exc, BrokenPipeError):
        return  # the consumer stopped reading; it reports its own error
    raise exc
