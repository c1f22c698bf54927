"""The DuckDB core: one local database file, its connection, transactions and compute profiles."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from clinipipe.secrets import first_line, scrub_values
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import DuckDBTarget as DuckDBTargetSpec
from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR
from clinipipe.sql.context import RAW_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.targets.core import TargetCore, TargetError

if TYPE_CHECKING:
    from clinipipe.targets.capabilities.loading import BatchStream

GIB = 1024**3


class DuckDBDialect(Dialect):
    """DuckDB follows PostgreSQL: double-quoted identifiers, standard strings."""

    name = "duckdb"
    sqlglot_name = "duckdb"  # the spec's own SQL dialect: spec queries are used as written


def _machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * GIB


def compute_profile(size: str) -> tuple[int, int]:
    """(threads, memory_limit bytes) standing in for a Snowflake warehouse of `size`.

    One thread per credit/hour (XSMALL 1, SMALL 2, MEDIUM 4, ...) and 2 GiB of memory per
    credit/hour, capped by the machine's cores and 80 % of its memory.
    """
    credits = WAREHOUSE_CREDITS_PER_HOUR[size]
    threads = max(1, min(credits, os.cpu_count() or 1))
    memory = max(GIB // 2, min(credits * 2 * GIB, int(_machine_memory() * 0.8)))
    return threads, memory


class DuckDBCore(TargetCore):
    """A DuckDB database file. One process may open it read-write at a time.

    Every transaction runs on its own cursor of the one connection; `execute_atomically` is
    BEGIN ... COMMIT (ROLLBACK on any failure), and DuckDB's WAL makes a commit durable: a
    kill -9 leaves every committed transaction and none of an uncommitted one.
    """

    type = "duckdb"
    dialect = DuckDBDialect()

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        super().__init__(loaded, read_only=read_only)
        spec = loaded.spec.target
        assert isinstance(spec, DuckDBTargetSpec)
        self.path = loaded.resolve(spec.path)
        self._con: duckdb.DuckDBPyConnection | None = None

    def describe(self) -> str:
        return f"DuckDB file {self.path}"

    def connect(self) -> None:
        if not self.path.parent.is_dir():
            raise TargetError(
                f"cannot open {self.describe()}: folder {self.path.parent} does not exist "
                "(create it, or fix target.path in the spec)"
            )
        if self.read_only and not self.path.exists():
            # Nothing deployed yet; an empty database answers every question without
            # creating the file (a dry run must change nothing).
            self._con = duckdb.connect(":memory:")
            return
        try:
            self._con = duckdb.connect(str(self.path), read_only=self.read_only)
        except duckdb.Error as exc:
            reason = first_line(exc)
            hint = ""
            if "lock" in reason.lower():
                hint = " Another clinipipe process (or a DuckDB client) has it open; stop it first."
            raise TargetError(f"cannot open {self.describe()}: {reason}.{hint}") from None

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise TargetError("the DuckDB target is not connected")
        return self._con

    def use_warehouse(self, role: str) -> str:
        """Switch the database to the compute profile of warehouse `role`."""
        warehouse = getattr(self.loaded.spec.warehouses, role)
        threads, memory = compute_profile(warehouse.size)
        self.con.execute(f"SET threads = {threads}")
        self.con.execute(f"SET memory_limit = '{memory // (1024 * 1024)}MB'")
        return f"{warehouse.name} ({warehouse.size}: {threads} threads, {memory // GIB} GiB)"

    def execute_atomically(self, statements: Sequence[str]) -> None:
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                for statement in statements:
                    cur.execute(statement)
                cur.execute("COMMIT")
            except BaseException:
                rollback(cur)
                raise
        finally:
            cur.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def table_exists(self, schema: str, table: str) -> bool:
        rows = self.con.execute(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()
        return bool(rows)

    def raw_name(self, table: str) -> str:
        return self.dialect.qualify(RAW_SCHEMA, table)


# --- helpers shared by the DuckDB mixins ----------------------------------------------------------


def rollback(cur: duckdb.DuckDBPyConnection) -> None:
    """Roll back `cur`'s transaction, if one is still open: a COMMIT that failed has already
    ended it, and the error of a second ROLLBACK must not replace the first error."""
    with contextlib.suppress(duckdb.TransactionException):
        cur.execute("ROLLBACK")


def columns_of(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[str, str]]:
    """(name, type) of each column of `schema.table` as `con` sees it (its transaction)."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return [(str(n), str(t)) for n, t in rows]


def load_batches(
    con: duckdb.DuckDBPyConnection,
    stream: BatchStream,
    view: str,
    per_batch: Sequence[str],
    finish: Callable[[int], Sequence[str]],
    failure: str,
) -> int:
    """In one transaction: each Arrow batch of `stream` registered as `view` and
    `per_batch` run over it, then `finish(rows read)`; committed, or on any error rolled
    back whole (a DuckDB error becomes `TargetError` "`failure`: reason"). Returns the rows
    read."""
    rows = 0
    cur = con.cursor()
    try:
        cur.execute("BEGIN TRANSACTION")
        try:
            for batch in stream.batches:
                cur.register(view, batch)
                for statement in per_batch:
                    cur.execute(statement)
                cur.unregister(view)
                rows += batch.num_rows
            for statement in finish(rows):
                cur.execute(statement)
            cur.execute("COMMIT")
        except BaseException:
            rollback(cur)
            raise
    except duckdb.Error as exc:
        raise TargetError(
            f"{failure}: {scrub_values(first_line(exc))} (nothing of it was kept)"
        ) from None
    finally:
        cur.close()
    return rows
