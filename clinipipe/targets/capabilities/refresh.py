"""Refresh: dynamic tables, kept fresh by clinipipe's refresh engine or by the warehouse."""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.core import TargetCore, TargetError
from clinipipe.targets.metering import MeteringRow

if TYPE_CHECKING:
    from clinipipe.source.catalog import TableSchema

REFRESH_ACTIONS = ("INITIALIZATION", "FULL", "INCREMENTAL", "NO_DATA")
"""What a refresh did, as Snowflake names it: built from scratch because the table was new or
its definition changed (INITIALIZATION), recomputed everything (FULL), re-derived the changed
keys only (INCREMENTAL), or found nothing to do (NO_DATA)."""


def changed_keys_source(schema_role: str, table: str) -> str:
    """`_clinipipe.changed_keys.table_name` of a table's changes: the bare name for a raw
    table (as CDC writes it), `derived.<name>` for a dynamic table (as refreshes write it)."""
    from clinipipe.spec.checks import DERIVED_SCHEMA_NAME

    return f"{DERIVED_SCHEMA_NAME}.{table}" if schema_role == "derived" else table


class QueryBindError(TargetError):
    """A dynamic table's query cannot be bound by the warehouse. `reason` is the warehouse's
    binder message, which names identifiers (columns, tables) and no row values: binding reads
    no data."""

    def __init__(self, dynamic_table: str, reason: str) -> None:
        self.dynamic_table = dynamic_table
        self.reason = reason
        super().__init__(f"dynamic table {dynamic_table} cannot be bound: {reason}")


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
    * `keep_recent_rows`: an interactive table serves this one by its refresh key, so an
      incremental refresh also keeps the rows it re-derived for the next incremental publish
      (DuckDB: `clinipipe.targets.duckdb.recent_rows`).
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
    keep_recent_rows: bool = False


class Refresh(TargetCore):
    """Dynamic tables: their state, their refresh history, and running refreshes.

    Two engines. DuckDB has no dynamic tables: clinipipe's refresh engine
    (`clinipipe.pipeline.refresh`) plans each refresh and the target runs it
    (`refresh_dynamic_table`). Snowflake refreshes its own (`native_dynamic_tables`): clinipipe
    only asks it to (`refresh_dynamic_table_now`). Each dialect's `cannot.py` lists the half
    it does not have.

    * **Atomicity.** `refresh_dynamic_table` runs one planned refresh in ONE transaction: the
      table's new rows, its history row, its metering row, its new high-water mark and
      definition digest, and the changed keys recorded for its consumers commit together. On
      failure (or a crash, kill -9 included) the table, its high-water mark and its consumers
      are exactly as before; a failure is recorded as a FAILED history row on its own.
    * **Ordering / exactness.** After a SUCCEEDED refresh the table reflects every change in
      `_clinipipe.changed_keys` with lsn <= its high-water mark (`DynamicTableState`); the
      next incremental refresh re-derives the keys after it. Consumers of a refreshed table
      see the keys it changed as changed keys of `derived.<name>` at the snapshot.
    * **Idempotency.** Refreshing again with nothing changed is NO_DATA (history only);
      `prune_changed_keys` deletes only keys every named table already reflects.
    * `dynamic_table_states`, `dynamic_table_history`, `table_columns`, `query_columns`,
      `dynamic_table_inputs` and `pending_changes` never write. Messages keep no row values.
    """

    @property
    def native_dynamic_tables(self) -> bool:
        """True when the warehouse maintains dynamic tables itself (Snowflake)."""
        return False

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

    @abstractmethod
    def table_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(name, type) of each column of `schema.table` in order; [] when it does not exist."""

    @abstractmethod
    def query_columns(self, sql: str) -> list[tuple[str, str]]:
        """(name, type) of each column `sql` returns (binds it; runs nothing).

        Raises `TargetError` when the query cannot be bound (a missing table or column).
        """

    def bind_dynamic_tables(
        self, queries: Sequence[tuple[str, str]], raw_tables: Sequence[TableSchema]
    ) -> dict[str, list[tuple[str, str]]]:
        """Bind each dynamic table's query, `(name, sql)` in refresh order, the way a refresh
        will run it, and return each one's result columns (name, type). Runs no query and
        changes nothing. Raw tables of `raw_tables` that do not exist yet are taken as
        `create_raw_table` would create them, and a dynamic table not built yet as the result
        of its query, so this works before the first backfill. Raises `QueryBindError`
        (naming the dynamic table and what cannot be bound) at the first query that fails.

        This default binds nothing and returns {}: a warehouse with native dynamic tables
        binds their queries itself when deploy creates them.
        """
        return {}

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

    @abstractmethod
    def pending_changes(self, work: RefreshWork) -> PendingChanges:
        """How much an incremental refresh of `work` would re-derive (reads only)."""

    @abstractmethod
    def refresh_dynamic_table(self, work: RefreshWork) -> RefreshResult:
        """Run one planned refresh (clinipipe's engine); see the class docstring."""

    @abstractmethod
    def refresh_dynamic_table_now(self, name: str) -> RefreshResult:
        """Ask a warehouse that maintains dynamic tables itself to refresh `name` now."""

    @abstractmethod
    def prune_changed_keys(self, names: Sequence[str]) -> int:
        """Delete the changed keys every dynamic table of `names` already reflects (those at
        or below the lowest high-water mark among them); returns the rows deleted."""

    def drop_unused_refresh_state(self, names: Sequence[str]) -> list[str]:
        """Drop what the refresh engine keeps per dynamic table (DuckDB: count summaries and
        recent rows in `_clinipipe`) for every dynamic table not in `names`, the spec's: it
        left the spec. Returns the tables dropped; a warehouse that keeps none drops none."""
        return []

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

    def refresh_metering_sql(
        self, result: RefreshResult, work: RefreshWork, cpu_seconds: float | None = None
    ) -> str:
        """The metering row of a refresh that ran on `work.warehouse`; `cpu_seconds`: the
        refreshing (calling) thread's CPU."""
        ended = result.refresh_end_time or result.refresh_start_time
        return self.metering_insert_sql(
            MeteringRow(
                job=f"refresh:{work.name}:{work.action.lower()}",
                warehouse=work.warehouse,
                warehouse_role=work.warehouse_role,
                size=work.size,
                started_at=result.refresh_start_time,
                ended_at=ended,
                rows=(result.rows_inserted or 0) + (result.rows_deleted or 0),
                nbytes=None,
                cpu_seconds=cpu_seconds,
            )
        )
