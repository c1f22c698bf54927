"""Load generated tables into PostgreSQL in one transaction (the database side of `synth`).

Guarantees
----------
* **Atomic**: schema creation (or replacement), every COPY and the index builds run in one
  transaction, committed at the end. If anything fails (or the process is interrupted), the
  database is left as it was.
* **No mixing**: if the tables already hold rows and ``drop_existing`` is false, nothing is
  written and :class:`HospitalPopulated` is raised.
* Serialized: concurrent loads with the same ``lock_key`` wait for each other (a
  transaction-scoped advisory lock).
* Database failures raise :class:`~clinipipe.source.postgres.SourceError` (first line of the
  server's message, no password, no row values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import psycopg2
from psycopg2 import sql

from clinipipe.secrets import first_line, mask_dsn, scrub_values
from clinipipe.source.loader import (
    copy_record_batches,
    create_hospital_schema,
    drop_indexes,
    populated_tables,
    recreate_indexes,
)
from clinipipe.source.postgres import SourceError

T = TypeVar("T")


class HospitalPopulated(SourceError):
    """The tables already hold rows; nothing was written."""

    def __init__(self, patients: int, detail: str) -> None:
        super().__init__(f"source already holds {patients:,} patients{detail}")
        self.patients = patients
        self.detail = detail


def load_hospital(
    dsn: str,
    tables: Sequence[str],
    batches: Iterable[tuple[str, object]],
    *,
    drop_existing: bool,
    lock_key: int,
    on_loaded: Callable[[str, int], None],
    stats: dict[str, int],
) -> None:
    """COPY every `(table, record batch)` of `batches` into `tables`, in one transaction.

    The tables are created if needed (``drop_existing`` drops and recreates them first), stripped
    of their indexes for the load and the indexes rebuilt before the commit. `on_loaded(table,
    rows)` is called after each batch; `stats["bytes"]` accumulates the CSV bytes sent.
    """
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        raise SourceError(
            f"cannot connect to the source {mask_dsn(dsn)}: {mask_dsn(first_line(exc))}"
        ) from None
    try:
        with conn:  # one transaction: commit on success, roll back on any exception
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            if not drop_existing:
                _refuse_if_populated(conn, tables)
            create_hospital_schema(conn, drop_existing=drop_existing)
            rebuild, freeze = _prepare_bulk_load(conn, tables)
            for table, batch in batches:
                rows = copy_record_batches(conn, table, [batch], freeze=freeze, stats=stats)
                on_loaded(table, rows)
            recreate_indexes(conn, rebuild)
    except psycopg2.Error as exc:
        raise SourceError(f"loading the source failed: {scrub_values(first_line(exc))}") from None
    finally:
        conn.close()


def _refuse_if_populated(conn: psycopg2.extensions.connection, tables: Sequence[str]) -> None:
    full = populated_tables(conn, tables)
    if not full:
        return
    patients = 0
    if "patients" in full:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM patients")
            row = cur.fetchone()
            patients = int(row[0]) if row else 0
    # Only when patients is empty is it worth naming the other tables that hold rows.
    raise HospitalPopulated(patients, "" if patients else f" (but rows in {', '.join(full)})")


def _attempt(conn: psycopg2.extensions.connection, name: str, action: Callable[[], T]) -> T | None:
    """Run ``action`` inside a savepoint; on a database error undo it and return None."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SAVEPOINT {}").format(sql.Identifier(name)))
        try:
            result = action()
        except psycopg2.Error:
            cur.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(name)))
            return None
        cur.execute(sql.SQL("RELEASE SAVEPOINT {}").format(sql.Identifier(name)))
    return result


def _prepare_bulk_load(
    conn: psycopg2.extensions.connection, tables: Sequence[str]
) -> tuple[list[sql.Composable], bool]:
    """Make the (empty) tables fast to fill, in the load's transaction.

    Drops their indexes and keys, returning the statements that rebuild them before commit
    (sorting once beats maintaining a B-tree row by row), and truncates them so that COPY may use
    ``FREEZE`` (rows land frozen and all-visible: no hint-bit rewrite on first read). Each step
    is skipped, not fatal, when something outside the hospital forbids it (e.g. a foreign key
    from another table); returns ``(rebuild statements, freeze allowed)``.
    """
    rebuild = _attempt(conn, "clinipipe_drop_indexes", lambda: drop_indexes(conn, tables))

    def truncate() -> bool:
        with conn.cursor() as cur:
            names = sql.SQL(", ").join(sql.Identifier(t) for t in tables)
            cur.execute(sql.SQL("TRUNCATE {}").format(names))
        return True

    freeze = _attempt(conn, "clinipipe_truncate", truncate)
    return rebuild or [], bool(freeze)
