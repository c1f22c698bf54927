"""What a warehouse that reads PostgreSQL itself (DuckDB's postgres extension) needs from the
source to read a table exactly as the backfill's own readers do.

The warehouse issues these texts on its own connections; this module only builds them (only
`clinipipe.source` writes PostgreSQL SQL) and runs the guard query:

* `scan_conninfo`: the libpq conninfo of the source with the session settings the scan relies
  on (``client_encoding`` UTF8: text, enum labels and catalog names arrive as UTF-8 whatever
  the server or database default) added to the ``options`` the DSN already has. It holds the
  password of the DSN: never print it (`clinipipe.secrets.mask_dsn` masks it).
* `snapshot_statement`: ``SET TRANSACTION SNAPSHOT '<id>'``, the first statement of the
  warehouse's REPEATABLE READ transaction on the source: the scan then reads exactly the
  exported snapshot (its parallel readers import the same snapshot from that transaction).
* `guard_query` / `check_guard`: the values the extension's binary decoding would alter
  silently instead of failing as the text path does: ``NaN`` in a ``numeric(p, s)`` (read as
  0) and timestamps after DuckDB's last one, 294247-01-10 04:00:54.775806 (they wrap around to
  290279 BC, or become ``infinity``). The guard reads the table once under the same snapshot
  and names the columns holding such a value (never the value); the load then fails, as on
  the text path.
"""

from __future__ import annotations

import contextlib
import uuid

import psycopg2
import psycopg2.extensions

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.source.catalog import Column, TableSchema
from clinipipe.source.postgres import SourceError, connect
from clinipipe.source.range_reader import CopyCancel, CopyCancelled
from clinipipe.sql.dialect import POSTGRES

SCAN_OPTIONS = "-c client_encoding=UTF8 -c TimeZone=UTC -c DateStyle=ISO,YMD"
"""Session settings of every connection of the scan (libpq ``options``)."""

DUCKDB_LAST_TIMESTAMP = "294247-01-10 04:00:54.775806"
"""DuckDB's last finite timestamp (microseconds since 1970 = 2^63 - 2)."""


def scan_conninfo(dsn: str, application_name: str = "clinipipe-backfill") -> str:
    """`dsn` (URI or key=value) as a key=value libpq conninfo with `SCAN_OPTIONS` appended to
    its own ``options``. Contains the DSN's password: never print it."""
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise SourceError(f"invalid source DSN ({mask_dsn(dsn)}): {first_line(exc)}") from None
    options = " ".join(o for o in (parsed.get("options", ""), SCAN_OPTIONS) if o)
    return psycopg2.extensions.make_dsn(
        dsn, options=options, application_name=application_name, connect_timeout=15
    )


class ScanSession:
    """The connections of one warehouse scan, named so they can be cancelled on the server.

    `conninfo` carries an application name of its own (`scan_conninfo`); `cancel` (a
    `clinipipe.source.range_reader.Cancellable`) cancels every running statement of a
    connection with that name (``pg_cancel_backend``): a reader blocked in PostgreSQL (on a
    lock, say) does not notice the warehouse's own interrupt."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.application_name = f"clinipipe-scan-{uuid.uuid4().hex[:16]}"
        self.conninfo = scan_conninfo(dsn, self.application_name)

    def __repr__(self) -> str:  # the conninfo holds the password
        return f"ScanSession({self.application_name})"

    def cancel(self) -> None:
        with contextlib.suppress(SourceError, psycopg2.Error):
            con = connect(self._dsn, application_name="clinipipe-backfill")
            try:
                con.autocommit = True
                with con.cursor() as cur:
                    cur.execute(
                        "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity "
                        "WHERE application_name = %s AND pid <> pg_catalog.pg_backend_pid()",
                        (self.application_name,),
                    )
            finally:
                con.close()


def snapshot_statement(snapshot_name: str) -> str:
    """The statement that makes a REPEATABLE READ transaction read the exported snapshot; it
    must be the first statement of that transaction."""
    return f"SET TRANSACTION SNAPSHOT {POSTGRES.quote_string(snapshot_name)}"


def _unsafe(column: Column) -> str | None:
    """A predicate true for a value of `column` the extension would not read exactly."""
    col = POSTGRES.quote_ident(column.name)
    t = column.type
    if t.logical == "decimal":
        return f"{col} = 'NaN'::pg_catalog.numeric"
    if t.logical == "timestamp":
        return (
            f"({col} > '{DUCKDB_LAST_TIMESTAMP}'::pg_catalog.timestamp "
            f"AND {col} <> 'infinity'::pg_catalog.timestamp)"
        )
    if t.logical == "timestamptz":
        return (
            f"({col} > '{DUCKDB_LAST_TIMESTAMP}+00'::pg_catalog.timestamptz "
            f"AND {col} <> 'infinity'::pg_catalog.timestamptz)"
        )
    return None


def guarded_columns(table: TableSchema) -> list[str]:
    """Names of the columns `guard_query` checks, in table order."""
    return [c.name for c in table.columns if _unsafe(c) is not None]


def guard_query(table: TableSchema) -> str | None:
    """One pass over `table`: one boolean per `guarded_columns` entry, true when some row
    holds a value the extension would alter (NULL or false otherwise). None: nothing to check."""
    checks = [(c, p) for c in table.columns if (p := _unsafe(c)) is not None]
    if not checks:
        return None
    relation = POSTGRES.qualify(table.schema, table.name)
    flags = ", ".join(f"pg_catalog.bool_or({p})" for _, p in checks)
    where = " OR ".join(p for _, p in checks)
    return f"SELECT {flags} FROM {relation} WHERE {where}"


def check_guard(
    dsn: str,
    snapshot_name: str,
    table: TableSchema,
    cancel: CopyCancel | None = None,
    range_no: int = 0,
) -> None:
    """Run `guard_query` under snapshot `snapshot_name`; raise `SourceError` naming the
    columns (never a value) that hold a value the extension would alter. `cancel` cancels the
    running query (`CopyCancelled`)."""
    query = guard_query(table)
    if query is None:
        return
    cancel = cancel or CopyCancel()
    cancel.check()
    con = connect(dsn, application_name="clinipipe-backfill")
    try:
        cancel._enter(con)
        try:
            with con.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute(snapshot_statement(snapshot_name))
                cur.execute(query)
                row = cur.fetchone() or ()
                cur.execute("COMMIT")
        except psycopg2.Error as exc:
            cancel.check()
            raise SourceError(
                f"reading {table.qualified_name} range {range_no} failed: "
                f"{mask_dsn(first_line(exc))}"
            ) from None
        finally:
            cancel._leave(con)
    except CopyCancelled:
        raise
    finally:
        with contextlib.suppress(psycopg2.Error):
            con.close()
    bad = [name for name, flag in zip(guarded_columns(table), row, strict=False) if flag]
    if bad:
        raise SourceError(
            f"reading {table.qualified_name} range {range_no} failed: column(s) "
            f"{', '.join(bad)} hold NaN (numeric) or a timestamp after 294247-01-10, which "
            "the warehouse cannot store (nothing of the range was kept)."
        )
