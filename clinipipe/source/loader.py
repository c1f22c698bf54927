"""Loading data into the source PostgreSQL: the hospital schema and Arrow batches via COPY.

This is the only place where ``clinipipe synth`` talks to PostgreSQL. Rows travel as CSV produced
by Arrow's C++ writer (``pyarrow.csv.write_csv``) straight into ``COPY ... FROM STDIN``: no Python
object is built per row.

Transactions: functions that receive a *connection* run inside the caller's transaction and never
commit, so that a caller can make a whole load atomic; functions that receive a *DSN* open their
own connection and commit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from importlib import resources
from itertools import chain

import numpy as np
import psycopg2
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg2 import sql

__all__ = [
    "HOSPITAL_TABLES",
    "CopyStream",
    "analyze_tables",
    "copy_record_batches",
    "create_hospital_schema",
    "drop_indexes",
    "hospital_schema_sql",
    "populated_tables",
    "recreate_indexes",
]

#: The tables of ``sql/hospital_schema.sql``, parents first.
HOSPITAL_TABLES: tuple[str, ...] = (
    "providers",
    "patients",
    "encounters",
    "labs",
    "medications",
    "claims",
    "clinical_notes",
)

#: Approximate size of a CSV piece handed to libpq: large enough to amortize the calls, small
#: enough that the server always has data to parse while the next piece is encoded (measured
#: here: pieces of ~0.5-1 MB load ~10% faster than pieces of ~4-30 MB).
PIECE_BYTES = 1 << 20
_WRITE_OPTIONS = pacsv.WriteOptions(include_header=False, batch_size=1 << 16)


def hospital_schema_sql() -> str:
    """The DDL of the synthetic hospital (``clinipipe/source/sql/hospital_schema.sql``)."""
    return (
        resources.files("clinipipe.source")
        .joinpath("sql")
        .joinpath("hospital_schema.sql")
        .read_text("utf-8")
    )


def create_hospital_schema(
    dsn_or_conn: str | psycopg2.extensions.connection, *, drop_existing: bool = False
) -> None:
    """Create the seven hospital tables if they do not exist.

    With ``drop_existing`` the tables are dropped first (not ``CASCADE``: a view or other object
    that depends on them makes this fail rather than vanish silently). Given a connection, runs in
    its current transaction without committing; given a DSN, commits on its own connection.
    """
    if isinstance(dsn_or_conn, str):
        conn = psycopg2.connect(dsn_or_conn)
        try:
            with conn:
                create_hospital_schema(conn, drop_existing=drop_existing)
        finally:
            conn.close()
        return
    with dsn_or_conn.cursor() as cur:
        if drop_existing:
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.SQL(", ").join(sql.Identifier(t) for t in reversed(HOSPITAL_TABLES))
                )
            )
        cur.execute(hospital_schema_sql())


def drop_indexes(
    conn: psycopg2.extensions.connection, tables: Iterable[str]
) -> list[sql.Composable]:
    """Drop every index of ``tables`` (primary-key, unique and exclusion constraints included)
    and return the statements that recreate them exactly (same names and definitions).

    Bulk loads run much faster into tables without indexes, and building an index by sorting
    afterwards is cheaper than maintaining it row by row (this is what ``pg_restore`` does). Runs
    in the caller's transaction: use it only in the transaction that also loads and then runs the
    returned statements (see :func:`recreate_indexes`), so that nobody ever sees a table without
    its keys. Fails (e.g. when a foreign key elsewhere depends on a primary key) without having
    dropped anything only if the caller wraps it in a savepoint.
    """
    found: list[tuple[str, str, str | None, str | None]] = []
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(
                """
                SELECT c.conrelid::regclass::text, quote_ident(c.conname),
                       pg_get_constraintdef(c.oid), NULL
                FROM pg_constraint c
                WHERE c.conrelid = to_regclass(%(t)s) AND c.contype IN ('p', 'u', 'x')
                UNION ALL
                SELECT x.indrelid::regclass::text, x.indexrelid::regclass::text, NULL,
                       pg_get_indexdef(x.indexrelid)
                FROM pg_index x
                WHERE x.indrelid = to_regclass(%(t)s)
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
                """,
                {"t": sql.Identifier(table).as_string(conn)},
            )
            found.extend(cur.fetchall())
        rebuild: list[sql.Composable] = []
        for relation, name, constraint_def, index_def in found:
            if constraint_def is not None:
                cur.execute(sql.SQL(f"ALTER TABLE {relation} DROP CONSTRAINT {name}"))
                rebuild.append(
                    sql.SQL(f"ALTER TABLE {relation} ADD CONSTRAINT {name} ")
                    + sql.SQL(constraint_def)
                )
            else:
                cur.execute(sql.SQL(f"DROP INDEX {name}"))
                rebuild.append(sql.SQL(index_def or ""))
    return rebuild


def recreate_indexes(
    conn: psycopg2.extensions.connection,
    statements: Iterable[sql.Composable],
    *,
    maintenance_work_mem: str = "256MB",
) -> None:
    """Run the statements returned by :func:`drop_indexes` (in the caller's transaction), with
    ``maintenance_work_mem`` raised for this transaction only."""
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('maintenance_work_mem', %s, true)", (maintenance_work_mem,))
        for statement in statements:
            cur.execute(statement)


def populated_tables(
    conn: psycopg2.extensions.connection, tables: Iterable[str] = HOSPITAL_TABLES
) -> list[str]:
    """The tables that exist and hold at least one row (cheap: no full count)."""
    found: list[str] = []
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(table).as_string(conn),)
            )
            row = cur.fetchone()
            if not (row and row[0]):
                continue
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table)))
            row = cur.fetchone()
            if row and row[0]:
                found.append(table)
    return found


def analyze_tables(
    target: str | psycopg2.extensions.connection, tables: Iterable[str], *, workers: int = 1
) -> None:
    """``ANALYZE`` the tables.

    Given a connection, runs in its current transaction, one table after the other. Given a DSN,
    uses ``workers`` autocommit connections at once (tables are handed out in the order given,
    so list the largest first).
    """
    names = list(tables)
    if not isinstance(target, str):
        with target.cursor() as cur:
            for table in names:
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        return

    workers = max(1, min(workers, len(names)))
    pending = list(reversed(names))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            conn = psycopg2.connect(target)
            try:
                conn.autocommit = True
                while True:
                    with lock:
                        if not pending or errors:
                            return
                        table = pending.pop()
                    analyze_tables(conn, [table])
            finally:
                conn.close()
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"analyze-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_FRACTION_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
_DAY = 86_400


def _digits(out: np.ndarray, col: int, values: np.ndarray, width: int) -> None:
    v = values.copy()
    for k in range(width - 1, -1, -1):
        out[:, col + k] = 48 + v % 10
        v //= 10


def _temporal_text(arr: pa.Array) -> pa.Array | None:
    """``date32`` and ``timestamp`` values as PostgreSQL input text, or None to let Arrow do it.

    Arrow's CSV writer formats timestamps through a calendar library at about a microsecond a
    value, which made timestamps the most expensive part of a COPY; this builds the bytes of
    ``YYYY-MM-DD[ HH:MM:SS[.fff...]][+00]`` with NumPy instead. Time-zone-aware timestamps are
    instants stored as UTC, so they are written as UTC with an explicit ``+00``; naive ones are
    written without an offset, as Arrow would.
    """
    t = arr.type
    if arr.null_count == len(arr):
        return None
    if pa.types.is_date32(t):
        days = np.asarray(arr.fill_null(0).cast(pa.int32()).to_numpy(), dtype=np.int64)
        seconds = None
        unit = None
    elif pa.types.is_timestamp(t) and t.unit in _UNIT_PER_SECOND:
        unit = t.unit
        raw = np.asarray(arr.fill_null(0).cast(pa.int64()).to_numpy(), dtype=np.int64)
        per = _UNIT_PER_SECOND[unit]
        whole, fraction = np.divmod(raw, per)
        days, seconds = np.divmod(whole, _DAY)
    else:
        return None
    d = days.astype("datetime64[D]")
    month_start = d.astype("datetime64[M]")
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    if year.min() < 1 or year.max() > 9999:
        return None
    month = month_start.astype(np.int64) % 12 + 1
    dom = (d - month_start).astype(np.int64) + 1
    n = len(arr)
    fraction_digits = _FRACTION_DIGITS[unit] if unit else 0
    width = 10
    if seconds is not None:
        width += 9 + (fraction_digits + 1 if fraction_digits else 0)
        if t.tz is not None:
            width += 3
    out = np.empty((n, width), dtype=np.uint8)
    _digits(out, 0, year, 4)
    out[:, 4] = out[:, 7] = ord("-")
    _digits(out, 5, month, 2)
    _digits(out, 8, dom, 2)
    if seconds is not None:
        out[:, 10] = ord(" ")
        _digits(out, 11, seconds // 3600, 2)
        out[:, 13] = out[:, 16] = ord(":")
        _digits(out, 14, seconds % 3600 // 60, 2)
        _digits(out, 17, seconds % 60, 2)
        col = 19
        if fraction_digits:
            out[:, col] = ord(".")
            _digits(out, col + 1, fraction, fraction_digits)
            col += fraction_digits + 1
        if t.tz is not None:
            out[:, col : col + 3] = np.frombuffer(b"+00", dtype=np.uint8)
    offsets = (np.arange(n + 1, dtype=np.int64) * width).astype(np.int32)
    text = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out.reshape(-1)))
    if arr.null_count:
        text = pc.if_else(pc.is_valid(arr), text, pa.scalar(None, pa.string()))
    return text


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with date and timestamp columns pre-formatted as text (same values)."""
    columns = list(batch.columns)
    changed = False
    for i, column in enumerate(columns):
        text = _temporal_text(column)
        if text is not None:
            columns[i] = text
            changed = True
    return pa.record_batch(columns, names=batch.schema.names) if changed else batch


class CopyStream:
    """A read-only file object producing the CSV of a stream of record batches.

    ``psycopg2``'s ``copy_expert`` calls :meth:`read` and forwards each returned piece to the
    server; each piece is the CSV of roughly ``piece_bytes`` bytes of rows, produced by Arrow's
    C++ CSV writer (NULL as an empty unquoted field, empty strings as ``""``, which is exactly
    what PostgreSQL's CSV format expects), with dates and timestamps pre-formatted by
    :func:`_temporal_text`. All batches must have the column names of the first.
    """

    def __init__(
        self,
        batches: Iterable[pa.RecordBatch],
        columns: list[str],
        piece_bytes: int = PIECE_BYTES,
    ) -> None:
        self.columns = columns
        self.rows = 0
        self.bytes = 0
        self._pieces = self._encode(batches, piece_bytes)

    def _encode(self, batches: Iterable[pa.RecordBatch], piece_bytes: int) -> Iterator[bytes]:
        for batch in batches:
            if batch.schema.names != self.columns:
                raise ValueError(
                    f"batch columns {batch.schema.names} differ from the first batch's "
                    f"{self.columns}"
                )
            # Arrow's in-memory size is a fair estimate of the CSV size.
            row_bytes = max(1.0, batch.nbytes / max(1, batch.num_rows))
            rows_per_piece = int(min(1 << 16, max(256, piece_bytes / row_bytes)))
            for offset in range(0, batch.num_rows, rows_per_piece):
                piece = _csv_ready(batch.slice(offset, rows_per_piece))
                sink = pa.BufferOutputStream()
                pacsv.write_csv(piece, sink, _WRITE_OPTIONS)
                data = sink.getvalue().to_pybytes()
                self.rows += piece.num_rows
                self.bytes += len(data)
                yield data

    def read(self, size: int = -1) -> bytes:
        """The next CSV piece (whole, whatever ``size``), or ``b""`` at the end."""
        return next(self._pieces, b"")


def copy_record_batches(
    conn: psycopg2.extensions.connection,
    table: str,
    batches: Iterable[pa.RecordBatch],
    *,
    freeze: bool = False,
    stats: dict[str, int] | None = None,
) -> int:
    """Stream ``batches`` into ``table`` with one ``COPY table (cols) FROM STDIN (FORMAT csv)``.

    Columns are the batches' field names (quoted as identifiers); all batches must share them.
    Runs in the connection's current transaction and does not commit: on any error nothing of
    this COPY is visible and the transaction is aborted. ``freeze`` adds ``FREEZE`` (legal only
    if the table was created or truncated in the current transaction). If ``stats`` is given, its
    ``"bytes"`` entry is increased by the CSV bytes sent. Returns the number of rows copied.
    """
    iterator = iter(batches)
    first = next(iterator, None)
    while first is not None and first.num_rows == 0:
        first = next(iterator, None)
    if first is None:
        return 0
    columns = list(first.schema.names)
    options = sql.SQL("FORMAT csv, ENCODING 'UTF8'" + (", FREEZE" if freeze else ""))
    statement = sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns), options
    )
    stream = CopyStream(chain([first], iterator), columns)
    with conn.cursor() as cur:
        cur.copy_expert(statement, stream)
        copied = cur.rowcount
    if stats is not None:
        stats["bytes"] = stats.get("bytes", 0) + stream.bytes
    if copied >= 0 and copied != stream.rows:
        raise RuntimeError(f"COPY into {table} reported {copied} rows, {stream.rows} were sent")
    return stream.rows
