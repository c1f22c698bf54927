"""Read one page range as *typed* Arrow batches: ``COPY ... (FORMAT binary)`` decoded in C++.

The backfill's fast path for warehouses that take typed Arrow columns (DuckDB). ADBC's
PostgreSQL driver (``adbc-driver-postgresql``) runs ``COPY (SELECT ...) TO STDOUT (FORMAT
binary)`` and decodes it into Arrow record batches in C++: no CSV text is written, parsed or
cast for the columns that travel typed, and Python only hands batches on.

Each column travels in one of three forms (`ColumnForm`), chosen per column from its type by
`typed_columns` so that every value stays exact (``docs/TYPE_MAPPING.md``, "Typed transport"):

* ``typed``: the column's binary value, decoded by the driver into the Arrow type of
  `TYPED_ARROW` (bool, integers, floats with NaN/-0/subnormals bit for bit, text with char(n)
  padding, enums as their label, bytea, uuid). Domains are cast to their base type in the
  select list.
* ``guarded``: dates and timestamps. The driver converts PostgreSQL's epoch (2000) to Unix's
  (1970) in int32/int64 arithmetic and *silently wraps* for ``infinity``, ``-infinity`` and
  timestamps after year 294246 (verified with adbc-driver-postgresql 1.13). So the typed
  column carries only finite values before year 100000, and a second column,
  ``overflow_name(i)``, carries the export text of every other non-NULL value; the warehouse
  takes the typed value, else casts the text exactly as the text path does (so ``infinity``
  loads, and a value beyond the warehouse's range fails the load as before).
* ``scaled``: ``numeric(p, s)`` up to 18 digits (`SCALED_MAX_WIDTH`): the value times
  ``10^s`` as an int8 (exact: the stored value has exactly ``s`` fraction digits); the warehouse
  divides it back exactly in decimal arithmetic. ``NaN`` fails the cast, hence the load, as it
  does on the text path for a constrained numeric.
* ``text``: every other type (wider or unconstrained numeric, money, intervals, time, timetz,
  json, arrays, inet, other): the export text of `clinipipe.source.catalog.export_expression`
  as a ``text`` value, read by the driver as an Arrow string and cast by the warehouse exactly
  as on the CSV path.

Guarantees of `read_range_typed` (the same as `clinipipe.source.range_reader.read_range`):
the range is read under the exported snapshot (``BEGIN ISOLATION LEVEL REPEATABLE READ READ
ONLY; SET TRANSACTION SNAPSHOT`` on the same connection before the COPY); a stream that ends
without an exception is a complete range; a `CopyCancel` cancels the running COPY on the server
and makes the batches end in `CopyCancelled`; failures are `SourceError` with the DSN masked.
Memory: one Arrow batch of about `BATCH_BYTES` in flight per range.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg2.extensions
import pyarrow as pa

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.source.catalog import (
    EXPORT_SESSION_SETTINGS,
    Column,
    ColumnType,
    TableSchema,
    export_expression,
)
from clinipipe.source.postgres import SourceError
from clinipipe.source.range_reader import CopyCancel, CopyCancelled, PageRange
from clinipipe.sql.dialect import POSTGRES

ColumnForm = Literal["typed", "guarded", "scaled", "text"]

BATCH_BYTES = 16 * 1024 * 1024
"""The driver's batch size hint: roughly the Arrow bytes of one batch."""

TYPED_ARROW: dict[str, str] = {
    "bool": "bool",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "float32": "float",
    "float64": "double",
    "text": "string",
    "enum": "string",
    "bytes": "binary",
    "uuid": "arrow.uuid",
    "date": "date32[day]",
    "timestamp": "timestamp[us]",
    "timestamptz": "timestamp[us, tz=UTC]",
}
"""The Arrow type each typed or guarded logical type arrives as."""

_CASTS: dict[str, str] = {
    "bool": "pg_catalog.bool",
    "int16": "pg_catalog.int2",
    "int32": "pg_catalog.int4",
    "int64": "pg_catalog.int8",
    "float32": "pg_catalog.float4",
    "float64": "pg_catalog.float8",
    "enum": "pg_catalog.text",
    "bytes": "pg_catalog.bytea",
    "uuid": "pg_catalog.uuid",
    "date": "pg_catalog.date",
    "timestamp": "pg_catalog.timestamp",
    "timestamptz": "pg_catalog.timestamptz",
}
_GUARDED = frozenset({"date", "timestamp", "timestamptz"})
# Finite values before this year convert without overflow (the driver wraps from 294247 on).
_GUARD_LIMIT = "100000-01-01"
_OVERFLOW_PREFIX = "__clinipipe_overflow_"


def overflow_name(index: int) -> str:
    """The Arrow column that carries the export text of guarded column number `index` where
    its typed value is NULL for a non-NULL value (infinite or very large)."""
    return f"{_OVERFLOW_PREFIX}{index}"


SCALED_MAX_WIDTH = 18
"""The widest numeric(p, s) (as `ColumnType.decimal_width`) that travels as a scaled int8."""


def scaled_scale(t: ColumnType) -> int:
    """The power of ten a ``scaled`` column's values are multiplied by: its DECIMAL scale."""
    return t.decimal_width()[1]


def column_form(t: ColumnType) -> ColumnForm:
    """How a column of type `t` travels on the typed path (see the module docstring)."""
    if t.logical == "decimal" and t.decimal_width()[0] <= SCALED_MAX_WIDTH:
        return "scaled"
    if t.logical in _GUARDED:
        return "guarded"
    if t.logical == "text":
        # text, varchar(n), char(n), name and text-like extension types: all read as strings
        # (char(n) keeps its padding: it is cast to bpchar, which the driver reads as is).
        return "typed"
    if t.logical in _CASTS:
        return "typed"
    return "text"


def typed_columns(table: TableSchema) -> dict[str, ColumnForm]:
    """Column name -> `ColumnForm`, in table order."""
    return {c.name: column_form(c.type) for c in table.columns}


def _typed_expression(column: Column) -> str:
    col = POSTGRES.quote_ident(column.name)
    t = column.type
    if t.logical == "text":
        # Domains resolve to their base: bpchar keeps its padding (the driver reads it as
        # is); name and text-like extension types (citext) as their output text, which is
        # what the CSV path writes.
        if t.pg_type.startswith("character("):
            return f"{col}::pg_catalog.bpchar"
        if t.pg_type == "text" or t.pg_type.startswith("character varying"):
            return f"{col}::pg_catalog.text"
        return _as_text(column)
    return f"{col}::{_CASTS[t.logical]}"


def _as_text(column: Column) -> str:
    """The export text of `column` as a ``text`` value (NULL for NULL).

    Where the export expression is the column itself, the CSV path writes the type's output
    function text, which a cast to text is not for every type (``inet::text`` adds ``/32``):
    ``concat`` writes the output text; ``num_nonnulls`` tells a NULL from a composite whose
    fields are all NULL (``(,)``, not NULL, for which ``IS NULL`` is true)."""
    col = POSTGRES.quote_ident(column.name)
    expression = export_expression(column)
    if expression == col:
        return f"CASE WHEN pg_catalog.num_nonnulls({col}) = 1 THEN pg_catalog.concat({col}) END"
    return f"({expression})::pg_catalog.text"


def typed_select_list(table: TableSchema) -> str:
    """The select list of the typed COPY: one item per column (named as the column), then one
    overflow item per guarded column (named `overflow_name(position)`)."""
    items: list[str] = []
    overflow: list[str] = []
    for index, column in enumerate(table.columns):
        name = POSTGRES.quote_ident(column.name)
        form = column_form(column.type)
        if form == "text":
            items.append(f"{_as_text(column)} AS {name}")
            continue
        if form == "scaled":
            # Exact: a numeric(p, s) value times 10^s is an integer below 10^18 (NaN fails
            # the cast, as a constrained numeric holding NaN fails the load on every path).
            factor = 10 ** scaled_scale(column.type)
            col = POSTGRES.quote_ident(column.name)
            items.append(
                f"({col}::pg_catalog.numeric * {factor}::pg_catalog.numeric)::pg_catalog.int8 "
                f"AS {name}"
            )
            continue
        value = _typed_expression(column)
        if form == "typed":
            items.append(f"{value} AS {name}")
            continue
        col = POSTGRES.quote_ident(column.name)
        safe = f"({col} > '-infinity' AND {col} < '{_GUARD_LIMIT}')"
        items.append(f"CASE WHEN {safe} THEN {value} END AS {name}")
        overflow.append(
            f"CASE WHEN NOT {safe} THEN {_as_text(column)} END "
            f"AS {POSTGRES.quote_ident(overflow_name(index))}"
        )
    return ", ".join(items + overflow)


@dataclass
class TypedRangeStream:
    """Arrow batches of one range in the forms of `forms`, and the Arrow bytes read so far.

    The batches' columns: every table column by name (typed, guarded or text as `forms` says),
    then `overflow_name(i)` for each guarded column number `i`."""

    batches: Iterator[pa.RecordBatch]
    forms: dict[str, ColumnForm]
    _counted: list[int] = field(default_factory=lambda: [0], repr=False)

    @property
    def bytes_read(self) -> int:
        return self._counted[0]


class _AdbcCancel:
    """What `CopyCancel` calls to stop a running COPY of an ADBC connection."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def cancel(self) -> None:
        with contextlib.suppress(Exception):  # it ended meanwhile: nothing to cancel
            self._con.adbc_cancel()


def _conninfo(dsn: str) -> str:
    """`dsn` (URI or key=value) as a libpq conninfo with our application name and timeout."""
    try:
        return psycopg2.extensions.make_dsn(
            dsn, application_name="clinipipe-backfill", connect_timeout=15
        )
    except psycopg2.ProgrammingError as exc:
        raise SourceError(f"invalid source DSN ({mask_dsn(dsn)}): {first_line(exc)}") from None


def _source_error(exc: BaseException, table: TableSchema, page_range: PageRange) -> SourceError:
    reason = mask_dsn(first_line(exc))
    return SourceError(
        f"reading {table.schema}.{table.name} range {page_range.number} failed: {reason}"
    )


@contextmanager
def read_range_typed(
    dsn: str,
    snapshot_name: str,
    table: TableSchema,
    page_range: PageRange,
    cancel: CopyCancel | None = None,
) -> Iterator[TypedRangeStream]:
    """Stream `page_range` of `table` as seen by snapshot `snapshot_name`, as typed Arrow
    batches (see the module docstring). The batches are read on the caller's thread (the
    driver decodes in C++ without the GIL)."""
    import adbc_driver_manager  # here: only the backfill's load pays for importing the driver
    import adbc_driver_postgresql
    import adbc_driver_postgresql.dbapi as adbc_pg

    cancel = cancel or CopyCancel()
    cancel.check()
    try:
        con = adbc_pg.connect(_conninfo(dsn), autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise SourceError(
            f"cannot connect to the source PostgreSQL ({mask_dsn(dsn)}): "
            f"{mask_dsn(first_line(exc))}"
        ) from None
    canceller = _AdbcCancel(con)
    try:
        cancel._enter(canceller)
    except CopyCancelled:
        con.close()
        raise
    relation = f"{POSTGRES.quote_ident(table.schema)}.{POSTGRES.quote_ident(table.name)}"
    query = f"SELECT {typed_select_list(table)} FROM {relation} WHERE {page_range.predicate()}"
    counted = [0]
    finished = [False]
    cur = con.cursor()

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for statement in EXPORT_SESSION_SETTINGS:
                cur.execute(statement)
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute(f"SET TRANSACTION SNAPSHOT {POSTGRES.quote_string(snapshot_name)}")
            cancel.check()  # a cancel sent before the COPY started found nothing running
            hint = adbc_driver_postgresql.StatementOptions.BATCH_SIZE_HINT_BYTES.value
            cur.adbc_statement.set_options(**{hint: str(BATCH_BYTES)})
            cur.execute(query)
            reader = cur.fetch_record_batch()
            for batch in reader:
                cancel.check()
                counted[0] += batch.nbytes
                if batch.num_rows:
                    yield batch
            cur.execute("COMMIT")
            finished[0] = True
        except (adbc_driver_manager.Error, pa.ArrowException, OSError) as exc:
            cancel.check()
            raise _source_error(exc, table, page_range) from None
        cancel.check()

    try:
        yield TypedRangeStream(batches(), typed_columns(table), counted)
    finally:
        if not finished[0]:
            canceller.cancel()  # the consumer stopped early: do not drain the rest of the COPY
        cancel._leave(canceller)
        with contextlib.suppress(Exception):
            cur.close()
        with contextlib.suppress(Exception):
            con.close()
