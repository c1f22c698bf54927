"""The interface every warehouse implements. Nothing outside `clinipipe.targets` knows a dialect.

Guarantees stated here hold for every implementation:

* `apply_deployment` runs the statements of the given files in order (files in list order,
  statements in file order). A file is recorded as deployed only after all its statements
  succeeded; a failing statement raises `DeployStatementError` naming the file and the
  statement number, and nothing after it runs.
* `deployed_digests` returns, per template, the digest of its last successful deployment.
* Errors never contain secrets (passwords, keys) and never contain row data.
"""

from __future__ import annotations

import datetime as dt
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from clinipipe import __version__
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import RenderedFile

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    from clinipipe.phi.safe_harbor import RedactionKey  # redact
    from clinipipe.phi.scan import CandidateQuery, Finding  # PHI scan
    from clinipipe.source.catalog import Column, ColumnType, TableSchema
    from clinipipe.targets.duckdb_redact import RedactionState, RedactSql, ResearchBuild  # redact


class TargetError(Exception):
    """The warehouse could not be reached or used. The message says what to do."""


class DeployStatementError(TargetError):
    """A statement of a template failed; names the file and the 1-based statement number."""

    def __init__(self, template: str, number: int, reason: str, *, rolled_back: bool) -> None:
        self.template = template
        self.number = number
        self.reason = reason
        self.rolled_back = rolled_back
        after = (
            "Nothing of this deployment was kept (it ran in one transaction)."
            if rolled_back
            else "Templates before it stay deployed; fix the cause and run deploy again "
            "(it resumes with this template; every statement is idempotent)."
        )
        super().__init__(
            f"statement {number} of template {template} failed: {reason.strip()}. {after}"
        )


@dataclass(frozen=True)
class DeploymentRecord:
    """What `_clinipipe.deployments` keeps about one deployment."""

    spec_digest: str
    target_type: str
    deployment_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deployed_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    clinipipe_version: str = __version__


@dataclass(frozen=True)
class BackfillRun:
    """The backfill that owns a replication slot; `consistent_point` is where CDC starts.

    A run is recorded (with no consistent point) before its slot is created, so a crash in
    between is recognised: such a run loaded nothing and its slot is ours to drop.
    """

    run_id: str
    slot: str
    consistent_point: str | None
    tables: tuple[str, ...]
    started_at: dt.datetime
    completed_at: dt.datetime | None = None


class BatchStream(Protocol):
    """Arrow batches with every column as strings, and the source bytes they came from."""

    @property
    def batches(self) -> Iterator[pa.RecordBatch]: ...

    @property
    def bytes_read(self) -> int: ...


@dataclass(frozen=True)
class RangeWork:
    """One range to load: which run, which range, and how to meter it."""

    run_id: str
    range_no: int
    replace_keys: bool
    warehouse: str
    warehouse_role: str
    size: str


@dataclass(frozen=True)
class TableBatch:
    """The changes of one table in a CDC batch, as `TableChanges.to_arrow()` built them.

    `table` describes the columns of `changes` under their raw-table names. `kept` are raw
    columns the changes do not carry (dropped at the source, or added after these changes were
    written): an updated row keeps its current value, a new row gets the column's
    `missing_value` (the ADD COLUMN default) or NULL.
    """

    table: TableSchema
    changes: pa.Table
    refresh_keys: tuple[str, ...] = ()
    kept: tuple[Column, ...] = ()


@dataclass(frozen=True)
class RecordedColumn:
    """What the target knows of a source column (`_clinipipe.source_columns`)."""

    attnum: int
    target_column: str
    pg_type: str
    dropped: bool


@dataclass(frozen=True)
class SchemaChange:
    """One change of a source table's columns, applied to its raw table.

    kind: 'add' (`column` added with `column_type`), 'drop' (kept in the target, no longer
    filled), 'rename' (`column` renamed to `new_name`), 'retype' (widened to `column_type`).
    An 'add' with `fill` also records that the values of existing rows must be copied from
    the source (`pending_column_fills`, `fill_column`).
    """

    table: str
    kind: str
    attnum: int
    column: str
    column_type: ColumnType | None = None
    new_name: str | None = None
    missing_value: str | None = None
    fill: bool = False


@dataclass(frozen=True)
class CdcBatch:
    """Complete source transactions to apply together, ending at `end_lsn`."""

    slot: str
    end_lsn: int
    tables: tuple[TableBatch, ...]
    commit_times: tuple[dt.datetime, ...]
    received_at: dt.datetime
    warehouse: str
    size: str
    staged_changes: int = 0
    """Changes of this batch already passed to `Target.stage_cdc_changes`."""

    @property
    def changes(self) -> int:
        return self.staged_changes + sum(t.changes.num_rows for t in self.tables)


class Target(ABC):
    """A warehouse clinipipe deploys to and loads into. Use as a context manager."""

    type: ClassVar[str]
    dialect: ClassVar[Dialect]

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        self.loaded = loaded
        self.read_only = read_only

    def __enter__(self) -> Target:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def connect(self) -> None:
        """Open the connection; raises `TargetError` with a clear message when it cannot."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection. Idempotent."""

    @abstractmethod
    def describe(self) -> str:
        """Where this target is, for messages (no secrets)."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    @abstractmethod
    def table_exists(self, schema: str, table: str) -> bool:
        """True when `schema.table` exists (names as written in the spec)."""

    @abstractmethod
    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
    ) -> int:
        """Run `files` and record them (and `also_record`, applied elsewhere) under `record`.

        Returns the number of statements run. See the module docstring for ordering and
        failure guarantees; each implementation states its atomicity.
        """

    def deployed_digests(self) -> dict[str, str]:
        """Template name -> digest of its last successful deployment ({} before the first)."""
        if not self.table_exists(CONTROL_SCHEMA, "deployed_templates"):
            return {}
        table = self.control("deployed_templates")
        rows = self.query(
            f"SELECT template, template_digest FROM {table} "
            "QUALIFY ROW_NUMBER() OVER (PARTITION BY template ORDER BY deployed_at DESC) = 1"
        )
        return {str(name): str(digest) for name, digest in rows}

    def missing_raw_tables(self) -> list[str]:
        """Source tables of the spec that do not exist yet in the raw schema."""
        from clinipipe.sql.context import schema_names

        raw = schema_names(self.loaded.spec)["raw"]
        return [
            t.name for t in self.loaded.spec.source.tables if not self.table_exists(raw, t.name)
        ]

    # --- backfill -----------------------------------------------------------------------------

    def require_deployed(self) -> None:
        """Raise `TargetError` unless `clinipipe deploy` created the control tables."""
        if not self.table_exists(CONTROL_SCHEMA, "backfill_ranges"):
            raise TargetError(
                f"{self.describe()} has no clinipipe control tables: run `clinipipe deploy` first"
            )

    @abstractmethod
    def use_warehouse(self, role: str) -> str:
        """Run what follows on warehouse `role` (initialization, incremental, interactive).

        Returns a description of the compute used (for progress output).
        """

    @abstractmethod
    def create_raw_table(self, table: TableSchema, *, replace: bool) -> None:
        """Create the raw table for `table` (types mapped by this target).

        `replace` drops an existing one first.
        """

    @abstractmethod
    def load_range(self, table: TableSchema, work: RangeWork, stream: BatchStream) -> int:
        """Load one range and record it as done, atomically; returns the rows loaded.

        The rows, the `_clinipipe.backfill_ranges` row and the metering row commit in one
        transaction: a range is recorded as done if and only if all its rows are in. With
        `work.replace_keys`, rows whose primary key is already present are replaced (used when
        a resumed backfill reads under a newer snapshot). Safe to call from several threads.
        """

    def backfill_run(self, slot: str) -> BackfillRun | None:
        """The latest backfill run that owns `slot`, or None."""
        rows = self.query(
            f"SELECT run_id, slot, consistent_point, tables, started_at, completed_at "
            f"FROM {self.control('backfill_runs')} WHERE slot = {self.dialect.quote_literal(slot)} "
            "ORDER BY started_at DESC LIMIT 1"
        )
        if not rows:
            return None
        run_id, slot_name, point, tables, started, completed = rows[0]
        return BackfillRun(run_id, slot_name, point, tuple(tables.split(",")), started, completed)

    def completed_ranges(self, run_id: str) -> set[tuple[str, int]]:
        """(table, range number) of every range of `run_id` already loaded."""
        rows = self.query(
            f"SELECT table_name, range_no FROM {self.control('backfill_ranges')} "
            f"WHERE run_id = {self.dialect.quote_literal(run_id)}"
        )
        return {(str(t), int(n)) for t, n in rows}

    def planned_ranges(self, run_id: str) -> list[tuple[str, int, int, int | None]]:
        """(table, range number, start page, end page) planned for `run_id`."""
        rows = self.query(
            "SELECT table_name, range_no, start_page, end_page "
            f"FROM {self.control('backfill_plan')} "
            f"WHERE run_id = {self.dialect.quote_literal(run_id)} ORDER BY table_name, range_no"
        )
        return [(str(t), int(n), int(a), None if b is None else int(b)) for t, n, a, b in rows]

    def begin_backfill_run(self, run: BackfillRun) -> None:
        """Record a new run of `run.slot` (before its slot exists), replacing earlier runs."""
        q = self.dialect.quote_literal
        statements = [
            f"DELETE FROM {self.control(t)} WHERE run_id IN (SELECT run_id FROM "
            f"{self.control('backfill_runs')} WHERE slot = {q(run.slot)})"
            for t in ("backfill_ranges", "backfill_plan")
        ]
        statements.append(f"DELETE FROM {self.control('backfill_runs')} WHERE slot = {q(run.slot)}")
        statements.append(
            f"DELETE FROM {self.control('cdc_paused_tables')} WHERE slot = {q(run.slot)}"
        )
        statements.append(
            f"INSERT INTO {self.control('backfill_runs')} (run_id, slot, consistent_point, tables, "
            f"started_at, completed_at) VALUES ({q(run.run_id)}, {q(run.slot)}, NULL, "
            f"{q(','.join(run.tables))}, {q(run.started_at.isoformat())}, NULL)"
        )
        self.execute_atomically(statements)

    def plan_backfill_run(
        self, run_id: str, consistent_point: str, plan: list[tuple[str, int, int, int | None]]
    ) -> None:
        """Record the slot's consistent point and the range plan, atomically."""
        q = self.dialect.quote_literal
        statements = [
            f"UPDATE {self.control('backfill_runs')} SET consistent_point = {q(consistent_point)} "
            f"WHERE run_id = {q(run_id)}"
        ]
        if plan:
            values = ", ".join(f"({q(run_id)}, {q(t)}, {n}, {a}, {q(b)})" for t, n, a, b in plan)
            statements.append(
                f"INSERT INTO {self.control('backfill_plan')} "
                f"(run_id, table_name, range_no, start_page, end_page) VALUES {values}"
            )
        self.execute_atomically(statements)

    def finish_backfill_run(self, run_id: str) -> None:
        """Mark the run complete (all its ranges are loaded)."""
        q = self.dialect.quote_literal
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        self.execute_atomically(
            [
                f"UPDATE {self.control('backfill_runs')} SET completed_at = {q(now)} "
                f"WHERE run_id = {q(run_id)}"
            ]
        )

    def range_done_sql(
        self,
        table: TableSchema,
        work: RangeWork,
        rows: int,
        nbytes: int,
        started: dt.datetime,
        ended: dt.datetime,
    ) -> list[str]:
        """The INSERTs that record a loaded range and meter it; run them in the range's
        transaction."""
        q = self.dialect.quote_literal
        start, end = q(started.isoformat()), q(ended.isoformat())
        return [
            f"INSERT INTO {self.control('backfill_ranges')} (run_id, table_name, range_no, "
            f"rows_loaded, bytes_read, started_at, completed_at) VALUES ({q(work.run_id)}, "
            f"{q(table.name)}, {work.range_no}, {rows}, {nbytes}, {start}, {end})",
            f"INSERT INTO {self.control('metering')} (job_id, job, warehouse, warehouse_role, "
            "size, started_at, ended_at, rows_processed, bytes_processed) VALUES "
            f"({q(uuid.uuid4().hex)}, {q(f'backfill:{table.name}:{work.range_no}')}, "
            f"{q(work.warehouse)}, {q(work.warehouse_role)}, {q(work.size)}, {start}, {end}, "
            f"{rows}, {nbytes})",
        ]

    # --- change data capture --------------------------------------------------------------------

    def cdc_checkpoint(self, slot: str) -> int | None:
        """The LSN up to which changes of `slot` are applied (None before the first batch)."""
        rows = self.query(
            f"SELECT lsn FROM {self.control('cdc_checkpoints')} "
            f"WHERE slot = {self.dialect.quote_literal(slot)}"
        )
        return int(rows[0][0]) if rows else None

    @abstractmethod
    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        """Apply `batch` and move the slot's checkpoint to `batch.end_lsn`, atomically.

        Per table: the last change per primary key wins; rows are replaced by key (so applying
        a batch twice has the effect of applying it once); unchanged TOAST values keep the
        target's current value; a truncate removes what came before it in the batch. The
        changed keys, the batch record and its metering commit in the same transaction,
        together with every part staged before it (`stage_cdc_changes`). On failure nothing
        of the batch, staged parts included, is kept.
        """

    streams_large_transactions: ClassVar[bool] = False
    """True when `stage_cdc_changes` applies parts as they come (bounded memory)."""

    def stage_cdc_changes(self, tables: Sequence[TableBatch], lsn: int) -> None:
        """Apply the changes of a transaction still streaming (a large one), in stream order,
        inside the target transaction the next `apply_cdc_batch` commits: nothing staged is
        visible or durable before that commit, and a failure, `discard_staged_cdc` or a crash
        drops all of it. Later parts and the batch see the rows staged before them. `lsn`
        (the transaction's commit position) dates the changed keys. Only targets with
        `streams_large_transactions`."""
        raise TargetError(f"{self.describe()} does not stage CDC changes")

    def discard_staged_cdc(self) -> None:
        """Roll back every staged part (the stream restarts from the checkpoint). Idempotent."""
        return  # a target without `streams_large_transactions` never has staged parts

    def recorded_columns(self, table: str) -> dict[int, RecordedColumn]:
        """The source columns of `table` the raw table was built or evolved from, by attnum."""
        rows = self.query(
            f"SELECT attnum, target_column, pg_type, dropped FROM {self.control('source_columns')} "
            f"WHERE table_name = {self.dialect.quote_literal(table)}"
        )
        return {int(a): RecordedColumn(int(a), str(c), str(t), bool(d)) for a, c, t, d in rows}

    def renamed_columns(self, table: str) -> list[tuple[str, str]]:
        """(old name, new name) of every rename CDC applied to `table`, oldest first."""
        rows = self.query(
            f"SELECT column_name, detail FROM {self.control('schema_history')} "
            f"WHERE table_name = {self.dialect.quote_literal(table)} AND change = 'rename' "
            "ORDER BY applied_at"
        )
        return [(str(a), str(b)) for a, b in rows]

    @abstractmethod
    def evolve_table(self, changes: Sequence[SchemaChange], lsn: int) -> None:
        """Apply schema changes to raw tables and record them (`source_columns`,
        `schema_history`), atomically. Idempotent: a change already applied is skipped."""

    def pending_column_fills(self) -> list[tuple[str, int]]:
        """(table, attnum) of columns whose existing rows still need their source values (see
        `SchemaChange.fill`), oldest first."""
        if not self.table_exists(CONTROL_SCHEMA, "column_fills"):
            raise TargetError(
                f"{self.describe()} was deployed by an earlier clinipipe: run `clinipipe deploy` "
                "to add its new control tables"
            )
        rows = self.query(
            f"SELECT table_name, attnum FROM {self.control('column_fills')} ORDER BY lsn, attnum"
        )
        return [(str(t), int(a)) for t, a in rows]

    def fill_column(
        self, table: TableSchema, column: str, attnum: int, stream: BatchStream | None
    ) -> int:
        """Set `column` of the raw table of `table` (its primary key and that column) from
        `stream` (the source's rows, export text, under one snapshot), matching rows by key,
        and forget the pending fill of `attnum` — atomically. With no stream (the column is
        gone from the source) only the pending fill is forgotten. Returns the rows read.
        Idempotent: filling again from a later snapshot gives the later values."""
        raise TargetError(f"{self.describe()} cannot copy a column's values from the source")

    def paused_tables(self, slot: str) -> dict[str, str]:
        """Tables whose changes CDC no longer applies (table -> reason)."""
        rows = self.query(
            f"SELECT table_name, reason FROM {self.control('cdc_paused_tables')} "
            f"WHERE slot = {self.dialect.quote_literal(slot)}"
        )
        return {str(t): str(r) for t, r in rows}

    def pause_table(self, slot: str, table: str, reason: str, lsn: int) -> None:
        """Record that CDC stopped applying `table` at `lsn` (other tables keep flowing)."""
        q = self.dialect.quote_literal
        now = q(dt.datetime.now(dt.timezone.utc).isoformat())
        self.execute_atomically(
            [
                f"INSERT INTO {self.control('cdc_paused_tables')} (slot, table_name, reason, lsn, "
                f"paused_at) VALUES ({q(slot)}, {q(table)}, {q(reason)}, {lsn}, {now})"
            ]
        )

    def reset_cdc(self, slot: str) -> None:
        """Forget the checkpoints and the backfill of `slot` (before a fresh backfill)."""
        q = self.dialect.quote_literal
        self.execute_atomically(
            [
                f"DELETE FROM {self.control('cdc_checkpoints')} WHERE slot = {q(slot)}",
                f"DELETE FROM {self.control('cdc_paused_tables')} WHERE slot = {q(slot)}",
                f"DELETE FROM {self.control('backfill_ranges')} WHERE run_id IN (SELECT run_id "
                f"FROM {self.control('backfill_runs')} WHERE slot = {q(slot)})",
                f"DELETE FROM {self.control('backfill_plan')} WHERE run_id IN (SELECT run_id "
                f"FROM {self.control('backfill_runs')} WHERE slot = {q(slot)})",
                f"DELETE FROM {self.control('backfill_runs')} WHERE slot = {q(slot)}",
            ]
        )

    @abstractmethod
    def execute_atomically(self, statements: Sequence[str]) -> None:
        """Run `statements` in one transaction (all or nothing)."""

    def control(self, table: str) -> str:
        """The quoted name of a table in clinipipe's control schema."""
        return self.dialect.qualify(CONTROL_SCHEMA, table)

    def template_record_sql(self, record: DeploymentRecord, file: RenderedFile) -> str:
        """INSERT that records `file` as deployed under `record` (values quoted by the dialect)."""
        q = self.dialect.quote_literal
        return (
            f"INSERT INTO {self.control('deployed_templates')} "
            "(deployment_id, template, template_digest, statements, deployed_at) VALUES "
            f"({q(record.deployment_id)}, {q(file.name)}, {q(file.digest)}, "
            f"{len(file.statements)}, {q(record.deployed_at.isoformat())})"
        )

    def deployment_record_sql(self, record: DeploymentRecord, statements_run: int) -> str:
        """INSERT of the deployment's own row."""
        q = self.dialect.quote_literal
        return (
            f"INSERT INTO {self.control('deployments')} (deployment_id, deployed_at, spec_digest, "
            "clinipipe_version, target_type, statements_run) VALUES "
            f"({q(record.deployment_id)}, {q(record.deployed_at.isoformat())}, "
            f"{q(record.spec_digest)}, {q(record.clinipipe_version)}, {q(record.target_type)}, "
            f"{statements_run})"
        )

    # --- dynamic tables -------------------------------------------------------------------------
    #
    # DuckDB has no dynamic tables: clinipipe's refresh engine (`clinipipe.pipeline.refresh`)
    # plans each refresh and the target runs it (`refresh_dynamic_table`). Snowflake refreshes
    # its own (`native_dynamic_tables`): clinipipe only asks it to (`refresh_dynamic_table_now`).

    @property
    def native_dynamic_tables(self) -> bool:
        """True when the warehouse maintains dynamic tables itself (Snowflake)."""
        return False

    def _no_refresh_engine(self) -> TargetError:
        return TargetError(f"{self.describe()} has no clinipipe dynamic-table refresh engine")

    def dynamic_table_states(self) -> dict[str, DynamicTableState]:
        """What each built dynamic table reflects (`_clinipipe.dynamic_table_state`).

        Empty before the first refresh and when the control table does not exist yet (a
        deployment older than it: `clinipipe deploy` adds it). Never writes.
        """
        if not self.table_exists(CONTROL_SCHEMA, "dynamic_table_state"):
            return {}
        rows = self.query(
            "SELECT name, definition_digest, high_water_lsn, data_timestamp, built_at "
            f"FROM {self.control('dynamic_table_state')}"
        )
        return {
            str(n): DynamicTableState(str(n), str(d), int(h), ts, built)
            for n, d, h, ts, built in rows
        }

    def dynamic_table_history(
        self, name: str | None = None, limit: int = 100
    ) -> list[RefreshResult]:
        """Refreshes of `name` (or of every dynamic table), newest first, at most `limit`."""
        if not self.table_exists(CONTROL_SCHEMA, "dynamic_table_refresh_history"):
            return []
        where = f"WHERE name = {self.dialect.quote_literal(name)} " if name is not None else ""
        rows = self.query(
            "SELECT name, state, refresh_action, state_message, data_timestamp, "
            "refresh_start_time, refresh_end_time, warehouse, rows_inserted, rows_deleted, "
            f"keys_changed, refresh_trigger FROM {self.control('dynamic_table_refresh_history')} "
            f"{where}ORDER BY refresh_start_time DESC LIMIT {int(limit)}"
        )
        return [RefreshResult(*row) for row in rows]

    def refresh_snapshot_lsn(self, slot: str) -> int:
        """The stream position a refresh starting now reflects: the CDC checkpoint of `slot`,
        else the backfill's consistent point, and never less than a recorded changed key."""
        from clinipipe.source.pgoutput import lsn_to_int

        positions = [0]
        checkpoint = self.cdc_checkpoint(slot)
        if checkpoint is not None:
            positions.append(checkpoint)
        run = self.backfill_run(slot)
        if run is not None and run.consistent_point:
            positions.append(lsn_to_int(run.consistent_point))
        rows = self.query(f"SELECT max(lsn) FROM {self.control('changed_keys')}")
        if rows and rows[0][0] is not None:
            positions.append(int(rows[0][0]))
        return max(positions)

    def table_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(name, type) of each column of `schema.table` in order; [] when it does not exist."""
        raise self._no_refresh_engine()

    def query_columns(self, sql: str) -> list[tuple[str, str]]:
        """(name, type) of each column `sql` returns (binds it; runs nothing).

        Raises `TargetError` when the query cannot be bound (a missing table or column).
        """
        raise self._no_refresh_engine()

    def dynamic_table_inputs(self, sql: str) -> DynamicTableInputs:
        """The tables a dynamic table's query reads: those whose changes clinipipe tracks (raw
        tables, dynamic tables) and any other. This default is lexical
        (`spec.checks.table_references`) and cannot see other tables; engines parse."""
        from clinipipe.spec.checks import DERIVED_SCHEMA_NAME, table_references
        from clinipipe.sql.context import schema_names

        raw = schema_names(self.loaded.spec)["raw"]
        tables = [(raw, t) for t in table_references(sql, raw)]
        tables += [(DERIVED_SCHEMA_NAME, t) for t in table_references(sql, DERIVED_SCHEMA_NAME)]
        return DynamicTableInputs(tuple(tables), ())

    def pending_changes(self, work: RefreshWork) -> PendingChanges:
        """How much an incremental refresh of `work` would re-derive (reads only)."""
        raise self._no_refresh_engine()

    def refresh_dynamic_table(self, work: RefreshWork) -> RefreshResult:
        """Run one planned refresh; see `DuckDBTarget.refresh_dynamic_table` for guarantees."""
        raise self._no_refresh_engine()

    def refresh_dynamic_table_now(self, name: str) -> RefreshResult:
        """Ask a warehouse that maintains dynamic tables itself to refresh `name` now."""
        raise self._no_refresh_engine()

    def prune_changed_keys(self, names: Sequence[str]) -> int:
        """Delete the changed keys every dynamic table of `names` already reflects (those at
        or below the lowest high-water mark among them); returns the rows deleted."""
        raise self._no_refresh_engine()

    def record_refresh(self, result: RefreshResult) -> None:
        """Add `result` to the refresh history on its own (a refresh that ran nothing)."""
        self.execute_atomically([self.refresh_history_sql(result)])

    def refresh_history_sql(self, result: RefreshResult) -> str:
        """The INSERT of one `_clinipipe.dynamic_table_refresh_history` row."""
        q = self.dialect.quote_literal

        def ts(value: dt.datetime | None) -> str:
            return q(value.isoformat() if value is not None else None)

        return (
            f"INSERT INTO {self.control('dynamic_table_refresh_history')} (name, state, "
            "state_message, refresh_action, data_timestamp, refresh_start_time, "
            "refresh_end_time, warehouse, rows_inserted, rows_deleted, keys_changed, "
            f"refresh_trigger) VALUES ({q(result.name)}, {q(result.state)}, "
            f"{q(result.state_message)}, {q(result.refresh_action)}, "
            f"{ts(result.data_timestamp)}, {ts(result.refresh_start_time)}, "
            f"{ts(result.refresh_end_time)}, {q(result.warehouse or '')}, "
            f"{q(result.rows_inserted)}, {q(result.rows_deleted)}, {q(result.keys_changed)}, "
            f"{q(result.refresh_trigger)})"
        )

    def refresh_metering_sql(self, result: RefreshResult, work: RefreshWork) -> str:
        """The metering row of a refresh that ran on `work.warehouse`."""
        q = self.dialect.quote_literal
        ended = result.refresh_end_time or result.refresh_start_time
        return (
            f"INSERT INTO {self.control('metering')} (job_id, job, warehouse, warehouse_role, "
            "size, started_at, ended_at, rows_processed, bytes_processed) VALUES "
            f"({q(uuid.uuid4().hex)}, {q(f'refresh:{work.name}:{work.action.lower()}')}, "
            f"{q(work.warehouse)}, {q(work.warehouse_role)}, {q(work.size)}, "
            f"{q(result.refresh_start_time.isoformat())}, {q(ended.isoformat())}, "
            f"{(result.rows_inserted or 0) + (result.rows_deleted or 0)}, NULL)"
        )

    # --- redaction (clinipipe.pipeline.redact; dialect SQL in <target>_redact.py) ---------------
    #
    # Guarantees for every implementation of `build_research_tables`: a research table is
    # recorded in `_clinipipe.redaction_state` only together with (DuckDB: in the same
    # transaction as) its complete new content; a failure leaves the previous table and its
    # state row as they were. Messages never contain row values or the key.

    def redact_sql(self) -> RedactSql:
        """The builder of this dialect's redaction SQL."""
        raise TargetError(f"{self.describe()} cannot build research datasets")

    def redaction_states(self, schema: str) -> dict[str, RedactionState]:
        """What each research table of `schema` was last built from ({} before the first)."""
        from clinipipe.targets.duckdb_redact import RedactionState

        if not self.table_exists(CONTROL_SCHEMA, "redaction_state"):
            return {}
        rows = self.query(
            "SELECT table_name, policy, fingerprint, rows_written, built_at FROM "
            f"{self.control('redaction_state')} "
            f"WHERE schema_name = {self.dialect.quote_literal(schema)}"
        )
        return {str(t): RedactionState(schema, str(t), str(p), str(f), int(n), b)
                for t, p, f, n, b in rows}  # fmt: skip

    def redaction_columns(self, table: str) -> list[tuple[str, str]]:
        """(name, type) of each column of raw table `table`, in order."""
        from clinipipe.sql.context import schema_names

        return self.table_columns(schema_names(self.loaded.spec)["raw"], table)

    def research_table(self, schema: str, table: str) -> str:
        """The quoted name of `schema.table` in the output (research) schema."""
        return self.dialect.qualify(schema, table)

    def prepare_research_schema(self, schema: str, readme: str) -> None:
        """Create the research schema and its README table (policy label per table) if absent."""
        self.query(f"CREATE SCHEMA IF NOT EXISTS {self.dialect.quote_ident(schema)}")
        self.query(
            f"CREATE TABLE IF NOT EXISTS {self.research_table(schema, readme)} (table_name "
            "VARCHAR NOT NULL, policy VARCHAR NOT NULL, label VARCHAR NOT NULL, policy_version "
            "VARCHAR NOT NULL, rows_written BIGINT NOT NULL, built_at TIMESTAMPTZ NOT NULL)"
        )

    def redaction_fingerprint(self, table: str, columns: Sequence[str]) -> str:
        """A digest of every row of raw table `table` (order-independent, computed in SQL)."""
        raw = self.raw_name(table)  # type: ignore[attr-defined]  # every target names raw tables
        row = self.query(self.redact_sql().fingerprint_sql(raw, columns))[0]
        return "/".join(str(v) for v in row)

    def build_research_tables(
        self,
        builds: Sequence[ResearchBuild],
        key: RedactionKey | None,
        finish: Callable[[dict[str, int]], list[str]],
    ) -> dict[str, int]:
        """Build every table of `builds` (rows written per table); then run the statements
        `finish` returns for those counts (state rows, README rows, the audit manifest)."""
        raise TargetError(f"{self.describe()} cannot build research datasets")

    # --- end redaction --------------------------------------------------------------------------

    # --- PHI scan (clinipipe.pipeline.scan; dialect SQL in <target>_scan.py) ----------------------
    #
    # Guarantees for every implementation: stage 1 returns only candidate rows, and of those
    # only the cells matching the prefilter (others NULL); findings are upserted by finding_id
    # (first_seen kept, last_seen moved); nothing here logs or raises with a row value.

    phi_classifies: ClassVar[bool] = False
    """True when the warehouse has its own column classifier (Snowflake's SYSTEM$CLASSIFY)."""

    def phi_scan_table_names(self, schema: str) -> list[str]:
        """The base tables of `schema` (for de-identified schemas, scanned in full)."""
        raise TargetError(f"{self.describe()} cannot list tables for a PHI scan")

    def phi_scan_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(name, warehouse type) of each column of `schema.table`; [] when it does not exist."""
        return self.table_columns(schema, table)

    def phi_scan_primary_key(self, schema: str, table: str) -> list[str]:
        """The primary-key columns `schema.table` declares in the warehouse ([] if none)."""
        return []

    def phi_scan_candidates(self, query: CandidateQuery) -> pa.Table:
        """Stage 1 of a scan inside the warehouse (see `CandidateQuery` for the columns)."""
        raise TargetError(f"{self.describe()} cannot run a PHI scan")

    def upsert_phi_findings(self, findings: Sequence[Finding], seen_at: dt.datetime) -> None:
        """Insert new findings into `_clinipipe.phi_findings` and move `last_seen` (and the
        latest severity, confidence, excerpt) of those seen before; atomically."""
        raise TargetError(f"{self.describe()} cannot record PHI findings")

    def phi_classify(self, schema: str, table: str, classified: Sequence[str]) -> list[Finding]:
        """The warehouse's own classifier's findings for `schema.table`, leaving out the
        `classified` columns (the spec's PHI columns). [] where there is no classifier."""
        return []

    def record_phi_scan(self, started: dt.datetime, ended: dt.datetime, rows: int) -> None:
        """Meter a scan (job ``phi-scan``, `rows` candidate rows) on the incremental warehouse."""
        q = self.dialect.quote_literal
        wh = self.loaded.spec.warehouses.incremental
        self.execute_atomically(
            [
                f"INSERT INTO {self.control('metering')} (job_id, job, warehouse, warehouse_role, "
                "size, started_at, ended_at, rows_processed, bytes_processed) VALUES "
                f"({q(uuid.uuid4().hex)}, 'phi-scan', {q(wh.name)}, 'incremental', {q(wh.size)}, "
                f"{q(started.isoformat())}, {q(ended.isoformat())}, {rows}, NULL)"
            ]
        )

    # --- end PHI scan ---------------------------------------------------------------------------


# --- dynamic tables ---------------------------------------------------------------------------

REFRESH_ACTIONS = ("INITIALIZATION", "FULL", "INCREMENTAL", "NO_DATA")
"""What a refresh did, as Snowflake names it: built from scratch because the table was new or
its definition changed (INITIALIZATION), recomputed everything (FULL), re-derived the changed
keys only (INCREMENTAL), or found nothing to do (NO_DATA)."""


def changed_keys_source(schema_role: str, table: str) -> str:
    """`_clinipipe.changed_keys.table_name` of a table's changes: the bare name for a raw
    table (as CDC writes it), `derived.<name>` for a dynamic table (as refreshes write it)."""
    from clinipipe.spec.checks import DERIVED_SCHEMA_NAME

    return f"{DERIVED_SCHEMA_NAME}.{table}" if schema_role == "derived" else table


@dataclass(frozen=True)
class RefreshResult:
    """One refresh of a dynamic table: a row of `_clinipipe.dynamic_table_refresh_history`.

    state: SUCCEEDED, FAILED, or SKIPPED (an upstream dynamic table failed, nothing ran).
    data_timestamp: the table reflects every change applied to its inputs before this moment
    (set for SUCCEEDED refreshes only).
    """

    name: str
    state: str
    refresh_action: str
    state_message: str | None
    data_timestamp: dt.datetime | None
    refresh_start_time: dt.datetime
    refresh_end_time: dt.datetime | None
    warehouse: str | None
    rows_inserted: int | None = None
    rows_deleted: int | None = None
    keys_changed: int | None = None
    refresh_trigger: str | None = None

    @property
    def seconds(self) -> float | None:
        if self.refresh_end_time is None:
            return None
        return (self.refresh_end_time - self.refresh_start_time).total_seconds()

    def as_dict(self) -> dict[str, object]:
        """For `--json` output."""
        return {
            "name": self.name,
            "state": self.state,
            "action": self.refresh_action,
            "message": self.state_message,
            "trigger": self.refresh_trigger,
            "data_timestamp": self.data_timestamp,
            "start": self.refresh_start_time,
            "end": self.refresh_end_time,
            "seconds": self.seconds,
            "warehouse": self.warehouse,
            "rows_inserted": self.rows_inserted,
            "rows_deleted": self.rows_deleted,
            "keys_changed": self.keys_changed,
        }


@dataclass(frozen=True)
class DynamicTableState:
    """A built dynamic table: every `changed_keys` row with lsn <= `high_water_lsn` is reflected;
    `definition_digest` identifies what it was built from (a different one means rebuild)."""

    name: str
    definition_digest: str
    high_water_lsn: int
    data_timestamp: dt.datetime
    built_at: dt.datetime


@dataclass(frozen=True)
class DynamicTableInputs:
    """What a dynamic table's query reads: `tables` whose changes clinipipe tracks, as
    (schema role 'raw' | 'derived', table name), and `untracked` other tables by name."""

    tables: tuple[tuple[str, str], ...]
    untracked: tuple[str, ...]


@dataclass(frozen=True)
class PendingChanges:
    """For an incremental refresh: distinct changed keys, the table's rows those keys own, and
    the table's rows in all."""

    keys: int
    affected_rows: int
    total_rows: int


@dataclass(frozen=True)
class RefreshWork:
    """One refresh as planned by `clinipipe.pipeline.refresh`, for the target to run.

    * `action`: INITIALIZATION / FULL (build the whole result anew), INCREMENTAL (re-derive
      the keys changed in `key_sources` with `from_lsn < lsn <= snapshot_lsn`), NO_DATA (only
      move the high-water mark and record the refresh).
    * `snapshot_lsn` becomes the table's high-water mark; `digest` its definition digest.
    * `consumers`: (dynamic table, its refresh key) of the dynamic tables that read this one;
      the values of those keys in rows this refresh changes are recorded as changed keys of
      `derived.<name>` at `snapshot_lsn`, so that the consumers re-derive them in turn.
    """

    name: str
    sql: str
    action: str
    digest: str
    snapshot_lsn: int
    warehouse: str
    warehouse_role: str
    size: str
    trigger: str = "MANUAL"
    state_message: str | None = None
    refresh_key: str | None = None
    key_sources: tuple[str, ...] = ()
    from_lsn: int = 0
    keys_changed: int | None = None
    consumers: tuple[tuple[str, str], ...] = ()
