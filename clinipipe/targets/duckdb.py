"""DuckDB: the embedded default target, a real warehouse in one local file."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Sequence
from typing import Any

import duckdb

from clinipipe.secrets import scrub_values
from clinipipe.source.catalog import Column, TableSchema
from clinipipe.source.pgoutput import lsn_to_str
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import DuckDBTarget as DuckDBTargetSpec
from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR
from clinipipe.sql.context import RAW_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import RenderedFile
from clinipipe.targets.base import (
    BatchStream,
    CdcBatch,
    DeploymentRecord,
    DeployStatementError,
    RangeWork,
    SchemaChange,
    TableBatch,
    Target,
    TargetError,
)
from clinipipe.targets.duckdb_types import duckdb_cast, duckdb_stream_cast, duckdb_type

GIB = 1024**3


class DuckDBDialect(Dialect):
    """DuckDB follows PostgreSQL: double-quoted identifiers, standard strings."""

    name = "duckdb"


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


class DuckDBTarget(Target):
    """A DuckDB database file. One process may open it read-write at a time."""

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
            reason = str(exc).splitlines()[0]
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
                cur.execute("ROLLBACK")
                raise
        finally:
            cur.close()

    def raw_name(self, table: str) -> str:
        return self.dialect.qualify(RAW_SCHEMA, table)

    def create_raw_table(self, table: TableSchema, *, replace: bool) -> None:
        q = self.dialect.quote_literal
        columns = ", ".join(
            f"{self.dialect.quote_ident(c.name)} {duckdb_type(c.type)}" for c in table.columns
        )
        statements = [f"DROP TABLE IF EXISTS {self.raw_name(table.name)}"] if replace else []
        statements.append(f"CREATE TABLE IF NOT EXISTS {self.raw_name(table.name)} ({columns})")
        statements.append(
            f"DELETE FROM {self.control('source_columns')} WHERE table_name = {q(table.name)}"
        )
        statements += [
            f"INSERT INTO {self.control('source_columns')} VALUES ({q(table.name)}, {c.attnum}, "
            f"{q(c.name)}, {q(c.type.pg_type)}, FALSE)"
            for c in table.columns
        ]
        self.execute_atomically(statements)

    def evolve_table(self, changes: Sequence[SchemaChange], lsn: int) -> None:
        q, quote = self.dialect.quote_literal, self.dialect.quote_ident
        now = q(dt.datetime.now(dt.timezone.utc).isoformat())
        statements: list[str] = []
        for change in changes:
            raw, columns = self.raw_name(change.table), self.control("source_columns")
            where = f"table_name = {q(change.table)} AND attnum = {change.attnum}"
            detail: str | None = None
            if change.kind == "add":
                assert change.column_type is not None
                default = ""
                if change.missing_value is not None:
                    value = duckdb_stream_cast(q(change.missing_value), change.column_type)
                    default = f" DEFAULT {value}"
                statements.append(
                    f"ALTER TABLE {raw} ADD COLUMN IF NOT EXISTS {quote(change.column)} "
                    f"{duckdb_type(change.column_type)}{default}"
                )
                statements.append(f"DELETE FROM {columns} WHERE {where}")
                statements.append(
                    f"INSERT INTO {columns} VALUES ({q(change.table)}, {change.attnum}, "
                    f"{q(change.column)}, {q(change.column_type.pg_type)}, FALSE)"
                )
                detail = change.column_type.pg_type
            elif change.kind == "drop":
                statements.append(f"UPDATE {columns} SET dropped = TRUE WHERE {where}")
            elif change.kind == "rename":
                assert change.new_name is not None
                statements.append(
                    f"ALTER TABLE {raw} RENAME COLUMN {quote(change.column)} "
                    f"TO {quote(change.new_name)}"
                )
                statements.append(
                    f"UPDATE {columns} SET target_column = {q(change.new_name)} WHERE {where}"
                )
                detail = change.new_name
            elif change.kind == "retype":
                assert change.column_type is not None
                statements.append(
                    f"ALTER TABLE {raw} ALTER COLUMN {quote(change.column)} "
                    f"SET DATA TYPE {duckdb_type(change.column_type)}"
                )
                statements.append(
                    f"UPDATE {columns} SET pg_type = {q(change.column_type.pg_type)} WHERE {where}"
                )
                detail = change.column_type.pg_type
            statements.append(
                f"INSERT INTO {self.control('schema_history')} VALUES ({q(change.table)}, "
                f"{q(change.kind)}, {q(change.column)}, {q(detail)}, {lsn}, {now})"
            )
        try:
            self.execute_atomically(statements)
        except duckdb.Error as exc:
            raise TargetError(
                f"applying schema changes to {self.describe()} failed: "
                f"{scrub_values(str(exc).splitlines()[0])} (nothing was changed)"
            ) from None

    def load_range(self, table: TableSchema, work: RangeWork, stream: BatchStream) -> int:
        target = self.raw_name(table.name)
        names = ", ".join(self.dialect.quote_ident(c.name) for c in table.columns)
        casts = ", ".join(
            duckdb_cast(self.dialect.quote_ident(c.name), c.type) for c in table.columns
        )
        insert = f"INSERT INTO {target} ({names}) SELECT {casts} FROM _clinipipe_batch"
        delete = None
        if work.replace_keys:
            by_name = {c.name: c for c in table.columns}
            keys = ", ".join(self.dialect.quote_ident(k) for k in table.primary_key)
            key_casts = ", ".join(
                duckdb_cast(self.dialect.quote_ident(k), by_name[k].type) for k in table.primary_key
            )
            delete = (
                f"DELETE FROM {target} WHERE ({keys}) IN "
                f"(SELECT ({key_casts}) FROM _clinipipe_batch)"
                if len(table.primary_key) > 1
                else f"DELETE FROM {target} WHERE {keys} IN "
                f"(SELECT {key_casts} FROM _clinipipe_batch)"
            )
        started = dt.datetime.now(dt.timezone.utc)
        rows = 0
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                for batch in stream.batches:
                    cur.register("_clinipipe_batch", batch)
                    if delete is not None:
                        cur.execute(delete)
                    cur.execute(insert)
                    cur.unregister("_clinipipe_batch")
                    rows += batch.num_rows
                nbytes = stream.bytes_read
                ended = dt.datetime.now(dt.timezone.utc)
                for statement in self.range_done_sql(table, work, rows, nbytes, started, ended):
                    cur.execute(statement)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except duckdb.Error as exc:
            raise TargetError(
                f"loading {table.name} range {work.range_no} into {self.describe()} failed: "
                f"{scrub_values(str(exc).splitlines()[0])} (nothing of this range was kept)"
            ) from None
        finally:
            cur.close()
        return rows

    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        q = self.dialect.quote_literal
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                for table_batch in batch.tables:
                    _apply_table_changes(cur, self, table_batch, batch.end_lsn)
                applied = dt.datetime.now(dt.timezone.utc)
                latencies = [
                    round((applied - t).total_seconds() * 1000, 3) for t in batch.commit_times
                ]
                tables = ",".join(t.table.name for t in batch.tables)
                cur.execute(
                    f"INSERT OR REPLACE INTO {self.control('cdc_checkpoints')} "
                    f"VALUES ({q(batch.slot)}, {batch.end_lsn}, {q(lsn_to_str(batch.end_lsn))}, "
                    f"{q(applied.isoformat())})"
                )
                cur.execute(
                    f"INSERT INTO {self.control('cdc_batches')} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [uuid.uuid4().hex, batch.slot, batch.end_lsn, batch.changes, tables,
                     len(batch.commit_times), batch.received_at, applied, latencies],
                )  # fmt: skip
                cur.execute(
                    f"INSERT INTO {self.control('metering')} (job_id, job, warehouse, "
                    "warehouse_role, size, started_at, ended_at, rows_processed, bytes_processed) "
                    "VALUES (?, 'cdc:batch', ?, 'incremental', ?, ?, ?, ?, NULL)",
                    [uuid.uuid4().hex, batch.warehouse, batch.size, batch.received_at, applied,
                     batch.changes],
                )  # fmt: skip
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except duckdb.Error as exc:
            raise TargetError(
                f"applying a CDC batch to {self.describe()} failed: "
                f"{scrub_values(str(exc).splitlines()[0])} (nothing of the batch was kept)"
            ) from None
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

    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
    ) -> int:
        """Atomic: every statement and the deployment record commit in one transaction.

        On any failure the transaction is rolled back and the file is as before.
        """
        con = self.con
        run = 0
        con.execute("BEGIN TRANSACTION")
        try:
            for file in files:
                for statement in file.statements:
                    try:
                        con.execute(statement.sql)
                    except duckdb.Error as exc:
                        raise DeployStatementError(
                            file.name, statement.number, str(exc).splitlines()[0], rolled_back=True
                        ) from None
                    run += 1
                con.execute(self.template_record_sql(record, file))
            for file in also_record:
                con.execute(self.template_record_sql(record, file))
            con.execute(self.deployment_record_sql(record, run))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return run


def _apply_table_changes(
    cur: duckdb.DuckDBPyConnection, target: DuckDBTarget, batch: TableBatch, lsn: int
) -> None:
    """Set-based apply of one table's changes (see `Target.apply_cdc_batch`)."""
    import pyarrow.compute as pc

    quote = target.dialect.quote_ident
    table = batch.table
    raw = target.raw_name(table.name)
    changes = batch.changes
    truncated = pc.equal(changes["_op"], "T")
    if pc.any(truncated).as_py():
        last = pc.max(pc.filter(changes["_seq"], truncated)).as_py()
        cur.execute(f"DELETE FROM {raw}")
        changes = changes.filter(pc.greater(changes["_seq"], last))
    if changes.num_rows == 0:
        return
    by_name = {c.name: c for c in table.columns}
    key_cols = [quote(k) for k in table.primary_key]
    keys = ", ".join(key_cols)
    key_casts = ", ".join(
        f"{duckdb_stream_cast(f'f.{quote(k)}', by_name[k].type)}" for k in table.primary_key
    )
    key_match = " AND ".join(
        f"cur.{quote(k)} = {duckdb_stream_cast(f'f.{quote(k)}', by_name[k].type)}"
        for k in table.primary_key
    )
    toast = [c for c in table.columns if f"{c.name}__u" in changes.column_names]
    cur.register("_cdc", changes)
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _cdc_final AS SELECT * FROM _cdc "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _seq DESC) = 1"
    )
    toast_join = ""
    if toast:
        sent = ", ".join(
            f"list({quote(c.name)} ORDER BY _seq) FILTER (WHERE NOT {quote(c.name + '__u')}) "
            f"AS {quote(c.name + '__sent')}"
            for c in toast
        )
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _cdc_toast AS SELECT {keys}, {sent} "
            f"FROM _cdc GROUP BY {keys}"
        )
        toast_join = f" LEFT JOIN _cdc_toast USING ({keys})"

    def value(c: Column) -> str:
        cast = duckdb_stream_cast(f"f.{quote(c.name)}", c.type)
        if c not in toast:
            return f"{cast} AS {quote(c.name)}"
        flag, sent = quote(c.name + "__u"), quote(c.name + "__sent")
        earlier = duckdb_stream_cast(f"{sent}[-1]", c.type)
        return (
            f"CASE WHEN NOT coalesce(f.{flag}, false) THEN {cast} "
            f"WHEN len({sent}) > 0 THEN {earlier} ELSE cur.{quote(c.name)} END AS {quote(c.name)}"
        )

    missing_row = " AND ".join(f"cur.{quote(k)} IS NULL" for k in table.primary_key)

    def kept(c: Column) -> str:
        fallback = (
            "NULL"
            if c.missing_value is None
            else duckdb_stream_cast(target.dialect.quote_literal(c.missing_value), c.type)
        )
        name = quote(c.name)
        return f"CASE WHEN {missing_row} THEN {fallback} ELSE cur.{name} END AS {name}"

    values = ", ".join([*(value(c) for c in table.columns), *(kept(c) for c in batch.kept)])
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE _cdc_rows AS SELECT {values} FROM _cdc_final f{toast_join} "
        f"LEFT JOIN {raw} cur ON {key_match} WHERE f._op <> 'D'"
    )
    for key in batch.refresh_keys:  # pre-images: the rows about to be replaced or deleted
        cur.execute(
            f"INSERT INTO {target.control('changed_keys')} SELECT ?, ?, CAST(cur.{quote(key)} "
            f"AS VARCHAR), ? FROM {raw} cur "
            f"WHERE ({keys}) IN (SELECT {key_casts} FROM _cdc_final f)",
            [table.name, key, lsn],
        )
    cur.execute(f"DELETE FROM {raw} WHERE ({keys}) IN (SELECT {key_casts} FROM _cdc_final f)")
    names = ", ".join(quote(c.name) for c in (*table.columns, *batch.kept))
    cur.execute(f"INSERT INTO {raw} ({names}) SELECT {names} FROM _cdc_rows")
    for key in batch.refresh_keys:
        cur.execute(
            f"INSERT INTO {target.control('changed_keys')} SELECT DISTINCT ?, ?, "
            f"CAST({quote(key)} AS VARCHAR), ? FROM _cdc_rows",
            [table.name, key, lsn],
        )
    cur.unregister("_cdc")
