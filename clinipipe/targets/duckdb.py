"""DuckDB: the embedded default target, a real warehouse in one local file."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from clinipipe.secrets import first_line, scrub_values
from clinipipe.source.catalog import Column, TableSchema
from clinipipe.source.pgoutput import lsn_to_str
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import DuckDBTarget as DuckDBTargetSpec
from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR
from clinipipe.sql.context import DERIVED_SCHEMA, RAW_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import RenderedFile
from clinipipe.targets.base import (
    BatchStream,
    CdcBatch,
    DeploymentRecord,
    DeployStatementError,
    DynamicTableInputs,
    PendingChanges,
    RangeWork,
    RefreshResult,
    RefreshWork,
    SchemaChange,
    TableBatch,
    Target,
    TargetError,
    changed_keys_source,
)
from clinipipe.targets.duckdb_types import duckdb_cast, duckdb_stream_cast, duckdb_type

if TYPE_CHECKING:
    import pyarrow as pa  # PHI scan

    from clinipipe.phi.safe_harbor import RedactionKey  # redact
    from clinipipe.phi.scan import CandidateQuery, Finding  # PHI scan
    from clinipipe.targets.duckdb_redact import RedactSql, ResearchBuild  # redact

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
        self._cdc_cursor: duckdb.DuckDBPyConnection | None = None  # open CDC transaction

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
            self.discard_staged_cdc()
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
                _rollback(cur)
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
        # Every ALTER first, then the data: DuckDB 1.5.5 cannot commit a transaction that
        # ALTERs a table it has already UPDATEd ("another transaction has altered this table").
        alters: list[str] = []
        fills: list[str] = []
        records: list[str] = []
        for change in changes:
            raw, columns = self.raw_name(change.table), self.control("source_columns")
            where = f"table_name = {q(change.table)} AND attnum = {change.attnum}"
            detail: str | None = None
            if change.kind == "add":
                assert change.column_type is not None
                # No DEFAULT in the catalog: DuckDB replays its WAL without a default database
                # and fails on a default calling a function (kill -9 after such an ALTER left a
                # file that cannot be opened). Existing rows get the source's missing value as
                # data; rows written later always carry the column.
                alters.append(
                    f"ALTER TABLE {raw} ADD COLUMN IF NOT EXISTS {quote(change.column)} "
                    f"{duckdb_type(change.column_type)}"
                )
                if change.missing_value is not None:
                    value = duckdb_stream_cast(q(change.missing_value), change.column_type)
                    fills.append(f"UPDATE {raw} SET {quote(change.column)} = {value}")
                records.append(f"DELETE FROM {columns} WHERE {where}")
                records.append(
                    f"INSERT INTO {columns} VALUES ({q(change.table)}, {change.attnum}, "
                    f"{q(change.column)}, {q(change.column_type.pg_type)}, FALSE)"
                )
                if change.fill:
                    records.append(
                        f"INSERT OR REPLACE INTO {self.control('column_fills')} VALUES "
                        f"({q(change.table)}, {change.attnum}, {lsn})"
                    )
                detail = change.column_type.pg_type
            elif change.kind == "drop":
                records.append(f"UPDATE {columns} SET dropped = TRUE WHERE {where}")
            elif change.kind == "rename":
                assert change.new_name is not None
                alters += self._rename_sql(raw, change, changes)
                records.append(
                    f"UPDATE {columns} SET target_column = {q(change.new_name)} WHERE {where}"
                )
                detail = change.new_name
            elif change.kind == "retype":
                assert change.column_type is not None
                alters.append(
                    f"ALTER TABLE {raw} ALTER COLUMN {quote(change.column)} "
                    f"SET DATA TYPE {duckdb_type(change.column_type)}"
                )
                records.append(
                    f"UPDATE {columns} SET pg_type = {q(change.column_type.pg_type)} WHERE {where}"
                )
                detail = change.column_type.pg_type
            records.append(
                f"INSERT INTO {self.control('schema_history')} VALUES ({q(change.table)}, "
                f"{q(change.kind)}, {q(change.column)}, {q(detail)}, {lsn}, {now})"
            )
        try:
            self.execute_atomically(alters + fills + records)
        except duckdb.Error as exc:
            raise TargetError(
                f"applying schema changes to {self.describe()} failed: "
                f"{scrub_values(first_line(exc))} (nothing was changed)"
            ) from None

    def _rename_sql(
        self, raw: str, change: SchemaChange, changes: Sequence[SchemaChange]
    ) -> list[str]:
        """The ALTERs of one rename of a set (`changes`) applied together: when any rename of
        the table takes a name another column has now (a swap, a name freed by a rename), each
        goes through a temporary name first (the first rename of the set moves them all there,
        every rename then takes its final name)."""
        quote = self.dialect.quote_ident
        renames = [c for c in changes if c.kind == "rename" and c.table == change.table]
        raw_names = {name.lower() for name, _ in _columns(self.con, RAW_SCHEMA, change.table)}
        swapping = any(
            c.new_name is not None
            and c.new_name.lower() != c.column.lower()
            and c.new_name.lower() in raw_names
            for c in renames
        )
        if not swapping:
            new_name = quote(change.new_name or "")
            return [f"ALTER TABLE {raw} RENAME COLUMN {quote(change.column)} TO {new_name}"]
        statements = []
        if change is renames[0]:
            statements += [
                f"ALTER TABLE {raw} RENAME COLUMN {quote(c.column)} "
                f"TO {quote(f'__clinipipe_renaming_{c.attnum}')}"
                for c in renames
            ]
        statements.append(
            f"ALTER TABLE {raw} RENAME COLUMN {quote(f'__clinipipe_renaming_{change.attnum}')} "
            f"TO {quote(change.new_name or '')}"
        )
        return statements

    def fill_column(
        self, table: TableSchema, column: str, attnum: int, stream: BatchStream | None
    ) -> int:
        quote, q = self.dialect.quote_ident, self.dialect.quote_literal
        forget = (
            f"DELETE FROM {self.control('column_fills')} "
            f"WHERE table_name = {q(table.name)} AND attnum = {attnum}"
        )
        if stream is None:
            self.execute_atomically([forget])
            return 0
        raw = self.raw_name(table.name)
        by_name = {c.name: c for c in table.columns}
        match = " AND ".join(
            f"{raw}.{quote(k)} = {duckdb_cast(f'b.{quote(k)}', by_name[k].type)}"
            for k in table.primary_key
        )
        update = (
            f"UPDATE {raw} SET {quote(column)} = "
            f"{duckdb_cast(f'b.{quote(column)}', by_name[column].type)} "
            f"FROM _clinipipe_fill b WHERE {match}"
        )
        return self._load_batches(
            stream, "_clinipipe_fill", [update], lambda _rows: [forget],
            f"copying column {table.name}.{column} into {self.describe()} failed",
        )  # fmt: skip

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

        def done(rows: int) -> list[str]:
            ended = dt.datetime.now(dt.timezone.utc)
            return self.range_done_sql(table, work, rows, stream.bytes_read, started, ended)

        return self._load_batches(
            stream, "_clinipipe_batch", [s for s in (delete, insert) if s is not None], done,
            f"loading {table.name} range {work.range_no} into {self.describe()} failed",
        )  # fmt: skip

    def _load_batches(
        self,
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
        cur = self.con.cursor()
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
                _rollback(cur)
                raise
        except duckdb.Error as exc:
            raise TargetError(
                f"{failure}: {scrub_values(first_line(exc))} (nothing of it was kept)"
            ) from None
        finally:
            cur.close()
        return rows

    streams_large_transactions = True

    def _cdc_transaction(self) -> duckdb.DuckDBPyConnection:
        """The cursor of the open CDC transaction (begun on first use)."""
        if self._cdc_cursor is None:
            cur = self.con.cursor()
            cur.execute("BEGIN TRANSACTION")
            self._cdc_cursor = cur
        return self._cdc_cursor

    def discard_staged_cdc(self) -> None:
        cur, self._cdc_cursor = self._cdc_cursor, None
        if cur is not None:
            try:
                _rollback(cur)
            finally:
                cur.close()

    def stage_cdc_changes(self, tables: Sequence[TableBatch], lsn: int) -> None:
        cur = self._cdc_transaction()
        try:
            for table_batch in tables:
                _apply_table_changes(cur, self, table_batch, lsn)
        except BaseException as exc:
            self.discard_staged_cdc()
            if isinstance(exc, duckdb.Error):
                raise TargetError(
                    f"applying CDC changes to {self.describe()} failed: "
                    f"{scrub_values(first_line(exc))} (nothing of the batch was kept)"
                ) from None
            raise

    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        q = self.dialect.quote_literal
        cur = self._cdc_transaction()
        self._cdc_cursor = None  # this call ends the transaction, committed or rolled back
        try:
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
                _rollback(cur)
                raise
        except duckdb.Error as exc:
            raise TargetError(
                f"applying a CDC batch to {self.describe()} failed: "
                f"{scrub_values(first_line(exc))} (nothing of the batch was kept)"
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
                            file.name, statement.number, first_line(exc), rolled_back=True
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

    # --- dynamic tables ---------------------------------------------------------------------------

    def table_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        return _columns(self.con, schema, table)

    def query_columns(self, sql: str) -> list[tuple[str, str]]:
        try:
            rows = self.con.execute(f"DESCRIBE SELECT * FROM ({_dt_sql(sql)}) AS q").fetchall()
        except duckdb.Error as exc:
            raise TargetError(
                f"the query cannot be bound: {scrub_values(first_line(exc))}"
            ) from None
        return [(str(r[0]), str(r[1])) for r in rows]

    def dynamic_table_inputs(self, sql: str) -> DynamicTableInputs:
        """Parsed by DuckDB (comments, strings, CTEs and aliases are understood): tables in the
        raw and derived schemas are tracked; any other table, and any table function but
        `range`, `generate_series` and `unnest` (files, other databases), is untracked."""
        tables: list[tuple[str, str]] = []
        untracked: list[str] = []
        nodes = self._parse_nodes(sql)
        ctes = {str(key).lower() for node in nodes["cte"] for key in node}
        for node in nodes["BASE_TABLE"]:
            role = _schema_role(node["schema_name"])
            name = str(node["table_name"])
            if role is not None:
                if (role, name) not in tables:
                    tables.append((role, name))
            elif node["schema_name"] or node.get("catalog_name") or name.lower() not in ctes:
                parts = (node.get("catalog_name"), node["schema_name"], name)
                untracked.append(".".join(str(p) for p in parts if p))
        for node in nodes["TABLE_FUNCTION"]:
            function = str((node.get("function") or {}).get("function_name", "?"))
            if function.lower() not in ("range", "generate_series", "unnest"):
                untracked.append(f"{function}(...)")
        return DynamicTableInputs(tuple(tables), tuple(dict.fromkeys(untracked)))

    def _base_tables(self, sql: str) -> list[dict[str, Any]]:
        """The table references of `sql` (DuckDB's parse tree), in order of position."""
        return self._parse_nodes(sql)["BASE_TABLE"]

    def _parse_nodes(self, sql: str) -> dict[str, list[Any]]:
        """DuckDB's parse of a dynamic table's query (`json_serialize_sql`; parsed, never
        bound or run): its BASE_TABLE and TABLE_FUNCTION nodes (in order of position) and the
        names of its CTEs ("cte": one list of names per WITH)."""
        import json

        row = self.con.execute("SELECT json_serialize_sql(?)", [_dt_sql(sql)]).fetchone()
        tree = json.loads(row[0]) if row else {"error": True}
        if tree.get("error"):
            raise TargetError(
                "the query of a dynamic table must be one SELECT statement: "
                f"{scrub_values(str(tree.get('error_message', 'cannot parse it')))}"
            )
        if len(tree.get("statements", [])) != 1:
            raise TargetError("the query of a dynamic table must be exactly one SELECT statement")
        found: dict[str, list[Any]] = {"BASE_TABLE": [], "TABLE_FUNCTION": [], "cte": []}

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                kind = node.get("type")
                if kind == "BASE_TABLE" and "table_name" in node:
                    found["BASE_TABLE"].append(node)
                elif kind == "TABLE_FUNCTION":
                    found["TABLE_FUNCTION"].append(node)
                ctes = node.get("cte_map")
                if isinstance(ctes, dict):
                    found["cte"].append([e.get("key") for e in ctes.get("map", [])])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(tree)
        found["BASE_TABLE"].sort(key=lambda n: int(n.get("query_location") or 0))
        return found

    def _keys_sql(self, work: RefreshWork, key_type: str) -> str:
        """The distinct changed keys of an incremental refresh, typed like the table's key."""
        q = self.dialect.quote_literal
        sources = ", ".join(q(s) for s in work.key_sources) or "NULL"
        return (
            f"SELECT DISTINCT CAST(key_value AS {key_type}) AS k "
            f"FROM {self.control('changed_keys')} WHERE key_column = {q(work.refresh_key)} "
            f"AND table_name IN ({sources}) "
            f"AND lsn > {int(work.from_lsn)} AND lsn <= {int(work.snapshot_lsn)}"
        )

    def _key_type(self, work: RefreshWork) -> str:
        types = dict(self.table_columns(DERIVED_SCHEMA, work.name))
        if work.refresh_key not in types:
            raise TargetError(f"{DERIVED_SCHEMA}.{work.name} has no column {work.refresh_key}")
        return types[work.refresh_key]

    def pending_changes(self, work: RefreshWork) -> PendingChanges:
        key = self.dialect.quote_ident(str(work.refresh_key))
        table = self.dialect.qualify(DERIVED_SCHEMA, work.name)
        keys = self._keys_sql(work, self._key_type(work))
        row = self.con.execute(
            f"WITH k AS ({keys}) SELECT (SELECT count(*) FROM k), "
            f"(SELECT count(*) FROM {table} WHERE {key} IN (SELECT k FROM k) "
            f"OR ({key} IS NULL AND EXISTS (SELECT 1 FROM k WHERE k IS NULL))), "
            f"(SELECT count(*) FROM {table})"
        ).fetchone()
        assert row is not None
        return PendingChanges(int(row[0]), int(row[1]), int(row[2]))

    def refresh_dynamic_table(self, work: RefreshWork) -> RefreshResult:
        """Run one planned refresh in ONE transaction; never leaves a half-refreshed table.

        * INITIALIZATION / FULL: the query's whole result is built as a new table
          (`derived.__clinipipe_new_<name>`), which replaces `derived.<name>` (DROP + RENAME).
        * INCREMENTAL: the changed keys (typed like the table's key column) go to a temporary
          table; the table's rows of those keys are deleted, and the query's rows of those keys
          inserted. The query runs with every raw or derived table it reads narrowed to the
          changed keys (a subquery in its place), which is what makes the work grow with the
          change rather than with the table; that is exact under the refresh-key contract
          (the rows of a key are computed from rows of the same key only). If the narrowed
          query does not bind (a column qualified with a schema, say), only the result is
          filtered. Either way the result is filtered to the changed keys, so rows of other
          keys are never inserted twice.
        * NO_DATA: nothing is rebuilt.

        The history row (SUCCEEDED), the metering row (not for NO_DATA, which used no
        compute), the new high-water mark and definition digest, and the changed keys recorded
        for consumers commit together with the data. On any error the transaction is rolled
        back (the table is exactly as before, its high-water mark unchanged, so the next
        refresh re-derives the same keys and more) and a FAILED row is recorded; the error
        message keeps no quoted values (they may be PHI).
        """
        started = dt.datetime.now(dt.timezone.utc)
        counts: dict[str, int | None] = {"inserted": None, "deleted": None}
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                if work.action in ("INITIALIZATION", "FULL"):
                    counts = self._rebuild(cur, work)
                elif work.action == "INCREMENTAL":
                    counts = self._rederive(cur, work)
                elif work.action != "NO_DATA":
                    raise TargetError(f"unknown refresh action {work.action!r}")
                ended = dt.datetime.now(dt.timezone.utc)
                result = RefreshResult(
                    work.name, "SUCCEEDED", work.action, work.state_message, started, started,
                    ended, work.warehouse, counts["inserted"], counts["deleted"],
                    work.keys_changed, work.trigger,
                )  # fmt: skip
                cur.execute(self.refresh_history_sql(result))
                if work.action != "NO_DATA":
                    cur.execute(self.refresh_metering_sql(result, work))
                cur.execute(self._state_sql(work, started))
                for temp in ("_clinipipe_refresh_keys", "_clinipipe_refresh_old",
                             "_clinipipe_refresh_diff"):  # fmt: skip
                    cur.execute(f"DROP TABLE IF EXISTS temp.{temp}")
                cur.execute("COMMIT")
            except BaseException:
                _rollback(cur)
                raise
        except (duckdb.Error, TargetError) as exc:
            reason = scrub_values(first_line(exc))
            failed = RefreshResult(
                work.name, "FAILED", work.action,
                f"{work.action.lower()} refresh failed, nothing changed: {reason}", None,
                started, dt.datetime.now(dt.timezone.utc), work.warehouse, None, None,
                work.keys_changed, work.trigger,
            )  # fmt: skip
            self.record_refresh(failed)
            return failed
        finally:
            cur.close()
        return result

    def _state_sql(self, work: RefreshWork, started: dt.datetime) -> str:
        q = self.dialect.quote_literal
        state = self.control("dynamic_table_state")
        if work.action in ("INITIALIZATION", "FULL"):
            return (
                f"INSERT OR REPLACE INTO {state} (name, definition_digest, high_water_lsn, "
                f"data_timestamp, built_at) VALUES ({q(work.name)}, {q(work.digest)}, "
                f"{int(work.snapshot_lsn)}, {q(started.isoformat())}, {q(started.isoformat())})"
            )
        return (
            f"UPDATE {state} SET high_water_lsn = {int(work.snapshot_lsn)}, "
            f"data_timestamp = {q(started.isoformat())} WHERE name = {q(work.name)}"
        )

    def _rebuild(self, cur: duckdb.DuckDBPyConnection, work: RefreshWork) -> dict[str, int | None]:
        """Build the whole result under a new name and swap it in (inside the transaction)."""
        q = self.dialect.quote_literal
        table = self.dialect.qualify(DERIVED_SCHEMA, work.name)
        new_name = f"__clinipipe_new_{work.name}"
        new = self.dialect.qualify(DERIVED_SCHEMA, new_name)
        cur.execute(f"CREATE OR REPLACE TABLE {new} AS SELECT * FROM ({_dt_sql(work.sql)}) AS q")
        inserted = _count(cur, f"SELECT count(*) FROM {new}")
        old_columns = _columns(cur, DERIVED_SCHEMA, work.name)
        deleted = _count(cur, f"SELECT count(*) FROM {table}") if old_columns else 0
        if work.consumers:
            if old_columns and old_columns == _columns(cur, DERIVED_SCHEMA, new_name):
                cur.execute(
                    "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_diff AS "
                    f"(SELECT * FROM {table} EXCEPT ALL SELECT * FROM {new}) UNION ALL "
                    f"(SELECT * FROM {new} EXCEPT ALL SELECT * FROM {table})"
                )
                self._record_consumer_keys(cur, work, "temp._clinipipe_refresh_diff", old_columns)
            else:  # nothing to compare with: every consumer is rebuilt from scratch
                names = ", ".join(q(c) for c, _ in work.consumers)
                cur.execute(
                    f"DELETE FROM {self.control('dynamic_table_state')} WHERE name IN ({names})"
                )
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"ALTER TABLE {new} RENAME TO {self.dialect.quote_ident(work.name)}")
        return {"inserted": inserted, "deleted": deleted}

    def _rederive(self, cur: duckdb.DuckDBPyConnection, work: RefreshWork) -> dict[str, int | None]:
        """Delete the rows of the changed keys and insert them anew (inside the transaction)."""
        quote = self.dialect.quote_ident
        key = quote(str(work.refresh_key))
        table = self.dialect.qualify(DERIVED_SCHEMA, work.name)
        keys = "temp._clinipipe_refresh_keys"
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_keys AS "
            f"{self._keys_sql(work, self._key_type(work))}"
        )
        has_null = bool(_count(cur, f"SELECT count(*) FROM {keys} WHERE k IS NULL"))

        def match(column: str) -> str:
            null = f" OR {column} IS NULL" if has_null else ""
            return f"({column} IN (SELECT k FROM {keys}){null})"

        query = self._narrowed_query(work.sql, match(key))
        columns = _columns(cur, DERIVED_SCHEMA, work.name)
        if work.consumers:
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_old AS "
                f"SELECT * FROM {table} WHERE {match(key)}"
            )
        deleted = _count(cur, f"DELETE FROM {table} WHERE {match(key)}")
        inserted = _count(
            cur, f"INSERT INTO {table} SELECT * FROM ({query}) AS q WHERE {match('q.' + key)}"
        )
        if work.consumers:
            old = "temp._clinipipe_refresh_old"
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_diff AS "
                f"(SELECT * FROM {old} EXCEPT ALL SELECT * FROM {table} WHERE {match(key)}) "
                f"UNION ALL (SELECT * FROM {table} WHERE {match(key)} "
                f"EXCEPT ALL SELECT * FROM {old})"
            )
            self._record_consumer_keys(cur, work, "temp._clinipipe_refresh_diff", columns)
        return {"inserted": inserted, "deleted": deleted}

    def _narrowed_query(self, sql: str, condition: str) -> str:
        """`sql` with each raw or derived table it reads replaced by that table narrowed to
        `condition`; `sql` itself when the narrowed form would not bind to the same columns."""
        quote = self.dialect.quote_ident
        nodes = [n for n in self._base_tables(sql) if _schema_role(n["schema_name"])]
        if not nodes:
            return _dt_sql(sql)

        def narrowed(where: str) -> str | None:
            data = _dt_sql(sql).encode()
            out, pos = [], 0
            for node in nodes:
                start = node.get("query_location")
                if not isinstance(start, int) or not pos <= start < len(data):
                    return None
                end = _reference_end(data, start)
                if end <= start:
                    return None
                alias = "" if node.get("alias") else f" AS {quote(str(node['table_name']))}"
                out += [data[pos:start], b"(SELECT * FROM ", data[start:end],
                        f" WHERE {where}){alias}".encode()]  # fmt: skip
                pos = end
            out.append(data[pos:])
            return b"".join(out).decode()

        probe = narrowed("TRUE")
        if probe is None:
            return _dt_sql(sql)
        try:
            if self.query_columns(probe) != self.query_columns(sql):
                return _dt_sql(sql)
        except TargetError:
            return _dt_sql(sql)
        return narrowed(condition) or _dt_sql(sql)

    def _record_consumer_keys(
        self,
        cur: duckdb.DuckDBPyConnection,
        work: RefreshWork,
        changed_rows: str,
        columns: list[tuple[str, str]],
    ) -> None:
        """Record, for each consumer, the values of its key in `changed_rows` as changed keys of
        `derived.<name>` at the snapshot; a consumer that already reflects the snapshot gets
        its high-water mark lowered below it, so that it still sees them."""
        q, quote = self.dialect.quote_literal, self.dialect.quote_ident
        names = {n for n, _ in columns}
        source = changed_keys_source("derived", work.name)
        for key in sorted({k for _, k in work.consumers if k in names}):
            cur.execute(
                f"INSERT INTO {self.control('changed_keys')} (table_name, key_column, key_value, "
                f"lsn) SELECT DISTINCT {q(source)}, {q(key)}, CAST({quote(key)} AS VARCHAR), "
                f"{int(work.snapshot_lsn)} FROM {changed_rows}"
            )
        consumers = ", ".join(q(c) for c, _ in work.consumers)
        cur.execute(
            f"UPDATE {self.control('dynamic_table_state')} "
            f"SET high_water_lsn = {int(work.snapshot_lsn) - 1} "
            f"WHERE name IN ({consumers}) AND high_water_lsn >= {int(work.snapshot_lsn)}"
        )

    def prune_changed_keys(self, names: Sequence[str]) -> int:
        if not names or self.read_only:
            return 0
        q = self.dialect.quote_literal
        listed = ", ".join(q(n) for n in names)
        row = self.con.execute(
            f"DELETE FROM {self.control('changed_keys')} WHERE lsn <= (SELECT min(high_water_lsn) "
            f"FROM {self.control('dynamic_table_state')} WHERE name IN ({listed}))"
        ).fetchone()
        return int(row[0]) if row else 0

    # --- PHI scan (clinipipe.pipeline.scan; SQL in duckdb_scan.py) -------------------------------

    def phi_scan_table_names(self, schema: str) -> list[str]:
        from clinipipe.targets.duckdb_scan import table_names_sql

        return [str(r[0]) for r in self.query(table_names_sql(schema, self.dialect))]

    def phi_scan_primary_key(self, schema: str, table: str) -> list[str]:
        from clinipipe.targets.duckdb_scan import primary_key_sql

        rows = self.query(primary_key_sql(schema, table, self.dialect))
        return [str(c) for c in rows[0][0]] if rows else []

    def phi_scan_candidates(self, query: CandidateQuery) -> pa.Table:
        from clinipipe.targets.duckdb_scan import candidate_sql

        try:
            return self.con.execute(candidate_sql(query, self.dialect)).to_arrow_table()
        except duckdb.Error as exc:
            reason = scrub_values(first_line(exc))
            raise TargetError(
                f"PHI scan of {query.schema}.{query.table} failed: {reason}"
            ) from None

    def upsert_phi_findings(self, findings: Sequence[Finding], seen_at: dt.datetime) -> None:
        import pyarrow as pa

        from clinipipe.targets.duckdb_scan import FINDING_COLUMNS, upsert_findings_sql

        if not findings:
            return
        ts = pa.array([seen_at] * len(findings), pa.timestamp("us", tz="UTC"))
        rows = [f.as_dict() for f in findings]
        fields = {"schema_name": "schema", "table_name": "table", "column_name": "column",
                  "start_offset": "start", "end_offset": "end"}  # fmt: skip
        columns = {c: [r[fields.get(c, c)] for r in rows]
                   for c in FINDING_COLUMNS if c not in ("first_seen", "last_seen")}  # fmt: skip
        table = pa.table({**columns, "first_seen": ts, "last_seen": ts})
        cur = self.con.cursor()
        try:
            cur.register("_clinipipe_phi_findings_in", table)
            cur.execute("BEGIN TRANSACTION")
            try:
                findings_table = self.control("phi_findings")
                cur.execute(upsert_findings_sql(findings_table, "_clinipipe_phi_findings_in"))
                cur.execute("COMMIT")
            except BaseException:
                _rollback(cur)
                raise
        except duckdb.Error as exc:
            reason = scrub_values(first_line(exc))
            raise TargetError(f"recording PHI findings failed: {reason}") from None
        finally:
            cur.close()

    # --- end PHI scan ---------------------------------------------------------------------------

    # --- redaction (clinipipe.pipeline.redact; SQL in duckdb_redact.py) -------------------------

    def redact_sql(self) -> RedactSql:
        from clinipipe.targets.duckdb_redact import RedactSql

        return RedactSql(self.dialect)

    def build_research_tables(
        self,
        builds: Sequence[ResearchBuild],
        key: RedactionKey | None,
        finish: Callable[[dict[str, int]], list[str]],
    ) -> dict[str, int]:
        """One transaction for every table, its state row and `finish`'s statements (see
        `duckdb_redact.build_duckdb_tables`)."""
        from clinipipe.targets.duckdb_redact import build_duckdb_tables

        return build_duckdb_tables(self.con, self.dialect, builds, key, finish)

    # --- end redaction --------------------------------------------------------------------------


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
    if not table.primary_key:  # append-only: the pipeline passes inserts only
        _append_rows(cur, target, batch, changes)
        return
    key_cols = [quote(k) for k in table.primary_key]
    keys = ", ".join(key_cols)
    key_casts = ", ".join(
        f"{duckdb_stream_cast(f'f.{quote(k)}', by_name[k].type)}" for k in table.primary_key
    )
    toast = [c for c in table.columns if f"{c.name}__u" in changes.column_names]
    cur.register("_cdc", changes)
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _cdc_final AS SELECT * FROM _cdc "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _seq DESC) = 1"
    )
    origin_join = ""
    if toast or batch.kept:
        _resolve_origins(cur, target, table, toast, bool(batch.kept), changes.column_names)
        origin_match = " AND ".join(
            f"cur.{quote(k)} = {duckdb_stream_cast(f'o.{quote(_ORIGIN + k)}', by_name[k].type)}"
            for k in table.primary_key
        )
        origin_join = (
            " LEFT JOIN _cdc_origin o ON o._final = f._seq"
            f" LEFT JOIN {raw} cur ON o._origin_op = 'U' AND {origin_match}"
        )

    def value(c: Column) -> str:
        cast = duckdb_stream_cast(f"f.{quote(c.name)}", c.type)
        if c not in toast:
            return f"{cast} AS {quote(c.name)}"
        flag = quote(c.name + "__u")
        resolved = duckdb_stream_cast(f"o.{quote(c.name + '__val')}", c.type)
        return (
            f"CASE WHEN NOT coalesce(f.{flag}, false) THEN {cast} "
            f"WHEN o.{quote(c.name + '__has')} THEN {resolved} "
            f"ELSE cur.{quote(c.name)} END AS {quote(c.name)}"
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
        f"CREATE OR REPLACE TEMP TABLE _cdc_rows AS SELECT {values} FROM _cdc_final f"
        f"{origin_join} WHERE f._op <> 'D'"
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
    for temp in ("_cdc_rows", "_cdc_final", "_cdc_events", "_cdc_links", "_cdc_origin"):
        cur.execute(f"DROP TABLE IF EXISTS {temp}")  # free their memory now


def _append_rows(
    cur: duckdb.DuckDBPyConnection, target: DuckDBTarget, batch: TableBatch, changes: Any
) -> None:
    """Insert the rows of an append-only table's changes (all inserts), in stream order."""
    quote = target.dialect.quote_ident
    values = [
        f"{duckdb_stream_cast(quote(c.name), c.type)} AS {quote(c.name)}"
        for c in batch.table.columns
    ]
    for c in batch.kept:
        fallback = "NULL"
        if c.missing_value is not None:
            fallback = duckdb_stream_cast(target.dialect.quote_literal(c.missing_value), c.type)
        values.append(f"{fallback} AS {quote(c.name)}")
    names = ", ".join(quote(c.name) for c in (*batch.table.columns, *batch.kept))
    cur.register("_cdc", changes)
    cur.execute(
        f"INSERT INTO {target.raw_name(batch.table.name)} ({names}) "
        f"SELECT {', '.join(values)} FROM _cdc WHERE _op = 'I' ORDER BY _seq"
    )
    cur.unregister("_cdc")


_ORIGIN = "__origin__"
"""Prefix of the columns of `_cdc_origin` that hold an origin key (as pgoutput text)."""


def _resolve_origins(
    cur: duckdb.DuckDBPyConnection,
    target: DuckDBTarget,
    table: TableSchema,
    toast: list[Column],
    follow_to_origin: bool,
    change_columns: list[str],
) -> None:
    """Create `_cdc_origin`: for each final non-delete row of `_cdc_final`, where its values not
    sent in the stream come from.

    A row's unchanged TOAST value is the value of the same row just before that change: the
    latest earlier insert or update of its *source key* in the batch (the old key, for an
    update that changed the key; otherwise its own key), or, with none, the raw row under that
    key as it was before the batch. Following these links from the final row back (a chain of
    moves, a key swap through a temporary key) gives, per TOAST column, the nearest value that
    was sent (`<col>__val`, with `<col>__has` true), and the row's origin: the raw row at the
    end of the chain (`_origin_op` 'U' and `__origin__<key>`), or none when the chain starts
    with an insert (`_origin_op` 'I'). The chain stops at the first change that sent every
    TOAST value, unless `follow_to_origin` (columns the stream does not carry at all need the
    origin row).
    """
    quote = target.dialect.quote_ident
    keys = table.primary_key
    moved = all(f"{k}__from" in change_columns for k in keys)
    sources = ", ".join(
        (f"coalesce({quote(k + '__from')}, {quote(k)})" if moved else quote(k))
        + f" AS {quote(_ORIGIN + k)}"
        for k in keys
    )
    toast_columns = "".join(f", {quote(c.name)}, {quote(c.name + '__u')}" for c in toast)
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE _cdc_events AS SELECT _seq, _op, "
        f"{', '.join(quote(k) for k in keys)}, {sources}{toast_columns} "
        "FROM _cdc WHERE _op IN ('I', 'U')"
    )
    same_row = " AND ".join(f"p.{quote(k)} = r.{quote(_ORIGIN + k)}" for k in keys)
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _cdc_links AS "
        "SELECT r._seq, CASE WHEN r._op = 'U' THEN p._seq END AS _pred "
        f"FROM _cdc_events r ASOF LEFT JOIN _cdc_events p ON {same_row} AND r._seq > p._seq"
    )
    if follow_to_origin or not toast:
        needs = "TRUE"
    else:
        needs = " OR ".join(f"coalesce(e.{quote(c.name + '__u')}, false)" for c in toast)
    resolved = "".join(
        f", arg_min_null(e.{quote(c.name)}, ch._depth) FILTER "
        f"(WHERE NOT coalesce(e.{quote(c.name + '__u')}, false)) AS {quote(c.name + '__val')}"
        f", coalesce(bool_or(NOT coalesce(e.{quote(c.name + '__u')}, false)), false) "
        f"AS {quote(c.name + '__has')}"
        for c in toast
    )
    origins = ", ".join(
        f"arg_max(e.{quote(_ORIGIN + k)}, ch._depth) AS {quote(_ORIGIN + k)}" for k in keys
    )
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _cdc_origin AS "
        "WITH RECURSIVE chain(_final, _at, _depth) AS ("
        " SELECT f._seq, f._seq, 0 FROM _cdc_final f WHERE f._op <> 'D'"
        " UNION ALL"
        " SELECT ch._final, l._pred, ch._depth + 1 FROM chain ch"
        " JOIN _cdc_links l ON l._seq = ch._at JOIN _cdc_events e ON e._seq = ch._at"
        f" WHERE l._pred IS NOT NULL AND ({needs}))"
        f" SELECT ch._final{resolved}, arg_max(e._op, ch._depth) AS _origin_op, {origins}"
        " FROM chain ch JOIN _cdc_events e ON e._seq = ch._at GROUP BY ch._final"
    )


# --- dynamic tables (helpers) ---------------------------------------------------------------------


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    """Roll back `cur`'s transaction, if one is still open: a COMMIT that failed has already
    ended it, and the error of a second ROLLBACK must not replace the first error."""
    with contextlib.suppress(duckdb.TransactionException):
        cur.execute("ROLLBACK")


def _dt_sql(sql: str) -> str:
    """A dynamic table's query as written, without trailing semicolons or blanks."""
    return sql.strip().rstrip(";").rstrip()


def _schema_role(schema: object) -> str | None:
    """'raw' or 'derived' when `schema` is the raw or derived schema, else None."""
    name = str(schema or "").lower()
    if name == RAW_SCHEMA.lower():
        return "raw"
    if name == DERIVED_SCHEMA.lower():
        return "derived"
    return None


def _reference_end(data: bytes, start: int) -> int:
    """End (byte offset) of the dotted table name starting at `start` in `data`:
    `name(.name)*`, each part bare or double-quoted, blanks allowed around the dots."""

    def part(i: int) -> int:
        if i < len(data) and data[i : i + 1] == b'"':
            i += 1
            while i < len(data):
                if data[i : i + 1] == b'"':
                    if data[i + 1 : i + 2] == b'"':
                        i += 2
                        continue
                    return i + 1
                i += 1
            return -1
        j = i
        while j < len(data) and (chr(data[j]).isalnum() or data[j] in b"_$" or data[j] >= 0x80):
            j += 1
        return j if j > i else -1

    end = part(start)
    while end > 0:
        i = end
        while i < len(data) and data[i : i + 1].isspace():
            i += 1
        if data[i : i + 1] != b".":
            break
        i += 1
        while i < len(data) and data[i : i + 1].isspace():
            i += 1
        nxt = part(i)
        if nxt < 0:
            break
        end = nxt
    return end


def _count(cur: duckdb.DuckDBPyConnection, sql: str) -> int:
    """Run `sql` and return the single number it yields (a count, or the rows a DML changed)."""
    row = cur.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[str, str]]:
    """(name, type) of each column of `schema.table` as `con` sees it (its transaction)."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return [(str(n), str(t)) for n, t in rows]
