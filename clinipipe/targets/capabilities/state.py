"""Pipeline state: clinipipe's own progress in the control schema (`_clinipipe.*`), a store apart
from the data writes (backfill runs and ranges, CDC checkpoints, schema history, pauses)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.core import TargetCore, TargetError


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


@dataclass(frozen=True)
class RecordedColumn:
    """What the target knows of a source column (`_clinipipe.source_columns`)."""

    attnum: int
    target_column: str
    pg_type: str
    dropped: bool


class PipelineState(TargetCore):
    """The pipeline's durable progress: runs, ranges, checkpoints, schema history, pauses.

    Written here only by small DML through `execute_atomically` (generic SQL over the control
    tables, the same for every dialect); the data writes that must commit together with a
    state row (a loaded range, a CDC batch's checkpoint, a schema change) write it themselves,
    in their own transaction (`Loading`, `ChangeApply`).

    * **Atomicity.** Every writing method is one transaction: all of its rows or none. A crash
      (kill -9) leaves the state before or after the call, never between.
    * **Ordering.** A backfill run is recorded (`begin_backfill_run`, no consistent point)
      before its replication slot exists, then planned (`plan_backfill_run`: consistent point
      and ranges together), then finished; a crash between them is recognisable from the run
      row alone (no consistent point: nothing loaded, the slot is ours to drop).
    * **Idempotency.** `begin_backfill_run` replaces every earlier run of the slot (its ranges,
      plan and pauses); `reset_cdc` and `finish_backfill_run` may be repeated. `pause_table`
      adds a row per call.
    * The reading methods never write.
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

    def cdc_checkpoint(self, slot: str) -> int | None:
        """The LSN up to which changes of `slot` are applied (None before the first batch)."""
        rows = self.query(
            f"SELECT lsn FROM {self.control('cdc_checkpoints')} "
            f"WHERE slot = {self.dialect.quote_literal(slot)}"
        )
        return int(rows[0][0]) if rows else None

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
