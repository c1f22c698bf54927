"""Dynamic tables: refresh (`clinipipe refresh`), status (`clinipipe status`), scheduling.

On **Snowflake** the warehouse maintains dynamic tables itself: `refresh` issues
`ALTER DYNAMIC TABLE ... REFRESH` and `status` reads Snowflake's refresh history.

On **DuckDB** clinipipe is the engine. Guarantees:

* **Exact.** After a successful refresh a dynamic table equals its query evaluated over its
  inputs at that moment (its raw tables, and the dynamic tables it reads, themselves refreshed
  first), provided the query honours the *refresh-key contract*: every row of the result
  carries the `refresh_key` column, and the rows of key value k are computed only from input
  rows whose `refresh_key` is k (joins on the key, aggregates grouped by it, windows
  partitioned by it; every input table carries the column). A query that does not is refreshed
  fully (`auto`) or refused (`incremental`), with the reason, whenever clinipipe can tell: a
  missing key column in an input or in the result, or an input outside the raw and derived
  schemas, whose changes nobody records. Joins through other columns (labs to encounters by
  encounter_id, say) are the author's promise that those rows share the key.
* **Atomic.** Each refresh of each table is one DuckDB transaction: the new rows, the refresh
  history row, the metering row, the high-water mark and the changed keys recorded for
  downstream tables commit together or not at all. A failed refresh leaves the table and its
  high-water mark as they were and records a FAILED row; its downstream tables are SKIPPED.
* **Nothing missed, nothing twice.** CDC records, in the transaction of each batch, the values
  of every refresh-key column in the rows a batch replaces or deletes (pre-images) and writes
  (post-images), at the batch's LSN (`_clinipipe.changed_keys`). A table's *high-water mark* is
  the position its content reflects: an incremental refresh re-derives the keys recorded after
  it for the tables it reads, up to the snapshot position (the CDC checkpoint), and moves the
  mark there in the same transaction. Re-deriving a key is idempotent, so a superset is
  harmless; a key is never skipped because the mark moves only with the data it covers.
* **Work grows with the change.** An incremental refresh re-derives only the changed keys,
  reading every input narrowed to them; an input read only through counts (`count(l.col)` of
  a joined table, the other aggregates duplicate-insensitive) is read through counts kept per
  refresh key and join value, maintained in the same transaction from the keys that input
  changed, so a change elsewhere does not read it at all
  (`clinipipe.targets.duckdb.refresh.Factored`; exact, or not used).
* **Dynamic tables reading dynamic tables** are refreshed in dependency order (`derived.<name>`
  references in the SQL; a cycle is a spec error). A refresh records, for each table that reads
  it, the values of that table's refresh key in the rows it changed (old and new), as changed
  keys of `derived.<name>` at the snapshot position, exactly as CDC does for raw tables. A
  consumer whose mark already reached that position gets it lowered by one, so it cannot miss
  them. A consumer of a table rebuilt with different columns (or built for the first time) is
  rebuilt too.
* **Rebuilds.** A table is initialized (built anew from its query, under a temporary name, and
  swapped in within the transaction) when it does not exist, when its definition digest
  changed (its SQL, its refresh key, the columns of any input, the definition of an upstream
  dynamic table, or the backfill run that loaded the raw tables), on `--full`, for
  `refresh_mode: full`, and when `auto` finds the change too large (more than
  `AUTO_FULL_REFRESH_FRACTION` of the table, see `plan`). Initializations and full refreshes
  run on the *initialization* warehouse profile; incremental ones on the *incremental* profile.
* **Small bookkeeping.** After every run, changed keys that every dynamic table of the spec
  already reflects are deleted.

DuckDB admits one writing process, so `clinipipe refresh` cannot run while `cdc start` holds
the file; inside `cdc start` the scheduler (`refresh_due`) refreshes between batches on the
same connection, so CDC and refreshes never interleave.

**Audited: manual refreshes only.** `refresh(..., audited=True)`, which is what `clinipipe
refresh` runs (here or, through `clinipipe.pipeline.operations`, in a running `cdc start`),
appends one ``refresh`` (or ``refresh --full``) entry to the audit log after its refreshes
committed: the tables, counts by state, rows, outcome ``failed`` when one FAILED
(`clinipipe.backup.audit.audited`). Scheduled refreshes (the CDC loop's, every few seconds, and
its last round on a clean stop) are not recorded one by one: they would flood the log with
routine work; the CDC run that does them is (``cdc start`` / ``cdc stop``), and every refresh is
in `_clinipipe.dynamic_table_refresh_history`. A refusal (`RefreshError`: unknown table, --full
on Snowflake, no raw tables yet) records nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from clinipipe.backup import audit
from clinipipe.spec.checks import dynamic_table_order, dynamic_table_upstreams
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import DynamicTable
from clinipipe.sql.context import CONTROL_SCHEMA, DERIVED_SCHEMA, schema_names
from clinipipe.targets import open_target
from clinipipe.targets.base import (
    DynamicTableInputs,
    DynamicTableState,
    RefreshResult,
    RefreshWork,
    Target,
    TargetError,
    changed_keys_source,
)

__all__ = [
    "AUTO_FULL_REFRESH_FRACTION",
    "DynamicTableStatus",
    "RefreshError",
    "RefreshResult",
    "due_tables",
    "dynamic_table_status",
    "refresh",
    "refresh_due",
]

AUTO_FULL_REFRESH_FRACTION = 0.2
"""`refresh_mode: auto` refreshes fully (on the initialization warehouse) instead of
incrementally when the changed keys, or the table rows those keys own if more, exceed this
fraction of the table's rows: past that point deleting and re-inserting by key costs about as
much as rebuilding, and a rebuild also compacts the table."""

SCHEDULER_HORIZON_SECONDS = 1.0
"""`due_tables` refreshes a table this much (plus its last refresh's duration) before its lag
would reach its target: about the time between two looks of the scheduler."""


class RefreshError(Exception):
    """The refresh cannot start; the message says why. `usage`: the request itself is wrong
    (an unknown table, an option the target does not offer), not the warehouse's state."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


# --- refresh ---------------------------------------------------------------------------------


def refresh(
    loaded: LoadedSpec,
    name: str | None = None,
    *,
    full: bool = False,
    reason: str = "manual",
    target: Target | None = None,
    full_refresh_fraction: float = AUTO_FULL_REFRESH_FRACTION,
    audited: bool = False,
) -> list[RefreshResult]:
    """Refresh dynamic table `name` (with the dynamic tables it reads, first), or all of them.

    `full` rebuilds the named table (or every table) instead of refreshing incrementally
    (not on Snowflake, which decides that itself). `reason` is recorded as the refresh trigger
    (MANUAL, SCHEDULED, ...). With `target` (an open target, as inside `cdc start`) that
    connection is used and left on the incremental warehouse; else the spec's target is opened
    and closed. Returns one result per table refreshed, in the order they ran; a FAILED result
    is returned, not raised (see the module docstring). Raises `RefreshError` for an unknown
    name or an undeployed target. `audited` (a refresh asked for by hand) records the run in
    the audit log (see the module docstring; `AuditNotRecorded` when its entry cannot be
    appended after the work).
    """
    spec = loaded.spec
    known = {d.name.lower(): d.name for d in spec.dynamic_tables}
    if name is not None and name.lower() not in known:
        listed = ", ".join(sorted(known.values())) or "(none)"
        raise RefreshError(
            f"no dynamic table named {name!r} in the spec; dynamic tables: {listed}", usage=True
        )
    names = None if name is None else [known[name.lower()]]
    if target is None:
        with open_target(loaded) as opened:
            return _refresh_audited(
                loaded, opened, names, full, reason, full_refresh_fraction, audited
            )
    return _refresh_audited(loaded, target, names, full, reason, full_refresh_fraction, audited)


def _refresh_audited(
    loaded: LoadedSpec,
    target: Target,
    names: list[str] | None,
    full: bool,
    reason: str,
    fraction: float,
    audited: bool,
) -> list[RefreshResult]:
    """`_refresh`, recorded in the audit log when `audited` (see the module docstring)."""
    if not audited or not loaded.spec.dynamic_tables:
        return _refresh(loaded, target, names, full, reason, fraction)
    target.require_deployed()
    command = "refresh --full" if full else "refresh"
    chosen = names or dynamic_table_order(loaded.spec)
    with audit.audited(
        target, command, spec_digest=loaded.digest,
        objects=[f"{DERIVED_SCHEMA}.{n}" for n in chosen],
        refused=lambda exc: isinstance(exc, RefreshError),
    ) as entry:  # fmt: skip
        results = _refresh(loaded, target, names, full, reason, fraction)
        entry.objects = [f"{DERIVED_SCHEMA}.{r.name}" for r in results]
        states = [r.state for r in results]
        entry.counts = {
            "tables": len(results),
            "succeeded": states.count("SUCCEEDED"),
            "failed": states.count("FAILED"),
            "skipped": states.count("SKIPPED"),
            "rows_inserted": sum(r.rows_inserted or 0 for r in results),
            "rows_deleted": sum(r.rows_deleted or 0 for r in results),
        }
        entry.detail = {"actions": {r.name: r.refresh_action for r in results}}
        if "FAILED" in states:
            entry.outcome = audit.FAILED
    return results


def refresh_due(
    loaded: LoadedSpec, target: Target, *, now: dt.datetime | None = None
) -> list[RefreshResult]:
    """The scheduler's step: refresh every dynamic table `due_tables` names (reason SCHEDULED)
    on the open `target`, each once, upstream first. Returns [] quickly when none is due."""
    due = due_tables(loaded, target, now=now)
    if not due:
        return []
    return _refresh(loaded, target, due, False, "scheduled", AUTO_FULL_REFRESH_FRACTION)


def _refresh(
    loaded: LoadedSpec,
    target: Target,
    names: list[str] | None,
    full: bool,
    reason: str,
    fraction: float,
) -> list[RefreshResult]:
    spec = loaded.spec
    if not spec.dynamic_tables:
        return []
    target.require_deployed()
    trigger = reason.upper()
    if target.native_dynamic_tables:
        if full:
            raise RefreshError(
                "--full is not available on Snowflake: it decides between incremental and "
                "full refreshes itself (REFRESH_MODE); to rebuild a dynamic table, redeploy it "
                "with CREATE OR REPLACE",
                usage=True,
            )
        target.use_warehouse("incremental")  # the session's warehouse reads the history
        chosen = names or dynamic_table_order(spec)
        return [target.refresh_dynamic_table_now(n) for n in chosen]
    if not target.table_exists(CONTROL_SCHEMA, "dynamic_table_state"):
        raise RefreshError(
            f"{target.describe()} was deployed before dynamic-table refreshes existed: run "
            "`clinipipe deploy` (it adds _clinipipe.dynamic_table_state)"
        )
    missing = target.missing_raw_tables()
    if missing:
        raise RefreshError(
            f"raw tables {', '.join(missing)} do not exist yet: run `clinipipe backfill` first"
        )
    upstreams = dynamic_table_upstreams(spec)
    order = dynamic_table_order(spec)
    selected = set(order) if names is None else _with_upstreams(names, upstreams)
    by_name = {d.name: d for d in spec.dynamic_tables}
    snapshot = target.refresh_snapshot_lsn(spec.source.slot)
    run = target.backfill_run(spec.source.slot)
    planner = _Planner(loaded, target, snapshot, run.run_id if run else None, fraction, trigger)
    failed: set[str] = set()
    results: list[RefreshResult] = []
    try:
        for dt_name in (n for n in order if n in selected):
            table = by_name[dt_name]
            broken = [u for u in upstreams[dt_name] if u in failed]
            if broken:
                now = _now()
                skipped = RefreshResult(
                    dt_name, "SKIPPED", "NO_DATA",
                    f"not refreshed: upstream dynamic table {', '.join(broken)} failed", None,
                    now, now, None, refresh_trigger=trigger,
                )  # fmt: skip
                target.record_refresh(skipped)
                results.append(skipped)
                failed.add(dt_name)
                continue
            forced = full and (names is None or dt_name in names)
            result = planner.run(table, forced)
            results.append(result)
            if result.state != "SUCCEEDED":
                failed.add(dt_name)
        target.prune_changed_keys([d.name for d in spec.dynamic_tables])
        target.drop_unused_refresh_state([d.name for d in spec.dynamic_tables])
    finally:
        target.use_warehouse("incremental")
    return results


def _with_upstreams(names: Sequence[str], upstreams: dict[str, list[str]]) -> set[str]:
    chosen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in chosen:
            chosen.add(name)
            pending.extend(upstreams[name])
    return chosen


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Planner:
    """Chooses and runs each table's refresh (DuckDB engine), within one `refresh` call."""

    def __init__(
        self,
        loaded: LoadedSpec,
        target: Target,
        snapshot: int,
        backfill_run: str | None,
        fraction: float,
        trigger: str,
    ) -> None:
        self.spec = loaded.spec
        self.target = target
        self.snapshot = snapshot
        self.backfill_run = backfill_run
        self.fraction = fraction
        self.trigger = trigger
        self.raw_schema = schema_names(self.spec)["raw"]
        self.digests: dict[str, str] = {}
        upstreams = dynamic_table_upstreams(self.spec)
        self.consumers = {
            d.name: tuple(
                (c.name, c.refresh_key)
                for c in self.spec.dynamic_tables
                if d.name in upstreams[c.name] and c.refresh_key and c.refresh_mode != "full"
            )
            for d in self.spec.dynamic_tables
        }
        self.served_by_key = {
            i.from_
            for i in self.spec.interactive_tables
            for d in self.spec.dynamic_tables
            if d.name == i.from_ and d.refresh_key == i.cluster_by[0]
        }

    def run(self, table: DynamicTable, forced: bool) -> RefreshResult:
        """Plan the refresh of `table` and run it; a planning error is a FAILED refresh."""
        started = _now()
        try:
            work = self.plan(table, forced)
        except TargetError as exc:
            failed = RefreshResult(
                table.name, "FAILED", "NO_DATA", f"cannot refresh: {exc}", None, started, _now(),
                None, refresh_trigger=self.trigger,
            )  # fmt: skip
            self.target.record_refresh(failed)
            return failed
        if isinstance(work, RefreshResult):
            self.target.record_refresh(work)
            return work
        self.target.use_warehouse(work.warehouse_role)
        return self.target.refresh_dynamic_table(work)

    def plan(self, table: DynamicTable, forced: bool) -> RefreshWork | RefreshResult:
        """What to do for `table`: a `RefreshWork`, or a FAILED result when `refresh_mode:
        incremental` is impossible (then nothing runs)."""
        target = self.target
        inputs = self._canonical(target.dynamic_table_inputs(table.sql))
        digest = self._digest(table, inputs)
        self.digests[table.name] = digest
        why_not = self._why_not_incremental(table, inputs)
        if table.refresh_mode == "incremental" and why_not:
            now = _now()
            return RefreshResult(
                table.name, "FAILED", "NO_DATA",
                f"refresh_mode incremental is not possible: {why_not}. An incremental refresh "
                f"re-derives only the rows of changed {table.refresh_key} values, so the result "
                "and every table the query reads must carry that column, and only raw and "
                "derived tables record their changes. With refresh_mode: auto this table "
                "would be refreshed fully (on the initialization warehouse) each time instead.",
                None, now, now, None, refresh_trigger=self.trigger,
            )  # fmt: skip
        state = target.dynamic_table_states().get(table.name)
        exists = target.table_exists(DERIVED_SCHEMA, table.name)
        action, message = "INCREMENTAL", None
        if not exists or state is None:
            action = "INITIALIZATION"
            if not exists:
                message = "first build" if state is None else "the table was missing; rebuilt"
            else:
                message = (
                    "rebuilt: nothing records what the table reflects (a table it reads was "
                    "rebuilt with other columns, or it was built by other means)"
                )
        elif state.definition_digest != digest:
            action = "INITIALIZATION"
            message = (
                "definition changed since the last build (its SQL, refresh key, the columns "
                "of a table it reads, an upstream definition, or the backfill): rebuilt"
            )
        elif forced:
            action, message = "FULL", "full refresh requested"
        elif table.refresh_mode == "full":
            action = "FULL"
        elif why_not:
            action, message = "FULL", f"auto: not incremental because {why_not}; refreshed fully"
        keys_changed = None
        work = self._work(table, action, message, digest, inputs, state)
        if action == "INCREMENTAL":
            pending = target.pending_changes(work)
            keys_changed = pending.keys
            affected = max(pending.keys, pending.affected_rows)
            if pending.keys == 0:
                action = "NO_DATA"
            elif table.refresh_mode == "auto" and affected > self.fraction * pending.total_rows:
                action = "FULL"
                message = (
                    f"auto: {pending.keys} changed keys own {pending.affected_rows} of "
                    f"{pending.total_rows} rows, more than {self.fraction:.0%} of the table; "
                    "refreshed fully"
                )
            work = self._work(table, action, message, digest, inputs, state, keys_changed)
        return work

    def _work(
        self,
        table: DynamicTable,
        action: str,
        message: str | None,
        digest: str,
        inputs: DynamicTableInputs,
        state: DynamicTableState | None,
        keys_changed: int | None = None,
    ) -> RefreshWork:
        role = "incremental" if action in ("INCREMENTAL", "NO_DATA") else "initialization"
        warehouse = getattr(self.spec.warehouses, role)
        return RefreshWork(
            name=table.name,
            sql=table.sql,
            action=action,
            digest=digest,
            snapshot_lsn=max(self.snapshot, state.high_water_lsn if state else 0),
            warehouse=warehouse.name,
            warehouse_role=role,
            size=warehouse.size,
            trigger=self.trigger,
            state_message=message,
            refresh_key=table.refresh_key,
            key_sources=tuple(changed_keys_source(s, t) for s, t in inputs.tables),
            from_lsn=state.high_water_lsn if state else 0,
            keys_changed=keys_changed,
            consumers=self.consumers[table.name],
            keep_recent_rows=table.name in self.served_by_key,
        )

    def _canonical(self, inputs: DynamicTableInputs) -> DynamicTableInputs:
        """Input names spelled as in the spec (SQL names are case-insensitive; CDC records
        changed keys under the spec's spelling)."""
        spelled = {
            "raw": {t.name.lower(): t.name for t in self.spec.source.tables},
            "derived": {d.name.lower(): d.name for d in self.spec.dynamic_tables},
        }
        tables: list[tuple[str, str]] = []
        for role, name in inputs.tables:
            canonical = (role, spelled[role].get(name.lower(), name))
            if canonical not in tables:
                tables.append(canonical)
        return DynamicTableInputs(tuple(tables), inputs.untracked)

    def _digest(self, table: DynamicTable, inputs: DynamicTableInputs) -> str:
        """Identifies what the table is built from; a change means rebuild."""
        described = []
        for schema_role, name in inputs.tables:
            schema = self.raw_schema if schema_role == "raw" else DERIVED_SCHEMA
            upstream = self.digests.get(name) if schema_role == "derived" else None
            described.append([schema, name, self.target.table_columns(schema, name), upstream])
        payload = {
            "sql": table.sql.strip(),
            "refresh_key": table.refresh_key,
            "inputs": described,
            "untracked": list(inputs.untracked),
            "backfill_run": self.backfill_run,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _why_not_incremental(self, table: DynamicTable, inputs: DynamicTableInputs) -> str | None:
        """Why `table` cannot be refreshed by key (None when it can)."""
        key = table.refresh_key
        if key is None:
            return "it has no refresh_key"
        if inputs.untracked:
            return (
                f"it reads {', '.join(inputs.untracked)}, whose changes clinipipe does not "
                f"record (only {self.raw_schema}.* and {DERIVED_SCHEMA}.* tables)"
            )
        if not inputs.tables:
            return f"it reads no {self.raw_schema}.* or {DERIVED_SCHEMA}.* table"
        for schema_role, name in inputs.tables:
            schema = self.raw_schema if schema_role == "raw" else DERIVED_SCHEMA
            columns = self.target.table_columns(schema, name)
            if not columns:
                return f"{schema}.{name} does not exist yet"
            if key not in {c for c, _ in columns}:
                return f"{schema}.{name} has no column {key}"
        if key not in {c for c, _ in self.target.query_columns(table.sql)}:
            return f"its result has no column {key}"
        return None


# --- scheduling --------------------------------------------------------------------------------


def due_tables(
    loaded: LoadedSpec,
    target: Target,
    *,
    now: dt.datetime | None = None,
    horizon_seconds: float = SCHEDULER_HORIZON_SECONDS,
) -> list[str]:
    """The dynamic tables (in refresh order) whose lag would exceed their target lag before the
    scheduler looks again: never built, or `lag + last refresh duration + horizon_seconds >=
    target_lag` (`downstream` tables are refreshed with the tables that read them, as
    `refresh` includes upstream tables). A table whose last refresh failed waits one target
    lag before it is tried again (no retry storm). Reads only; cheap enough to call between CDC
    batches (a few small queries). [] on Snowflake, which schedules its own refreshes.
    """
    spec = loaded.spec
    if target.native_dynamic_tables or not spec.dynamic_tables:
        return []
    now = now or _now()
    states = target.dynamic_table_states()
    due = []
    for name in dynamic_table_order(spec):
        table = next(d for d in spec.dynamic_tables if d.name == name)
        lag_target = table.target_lag.seconds
        if lag_target is None:  # DOWNSTREAM: refreshed with the tables that read it
            continue
        history = target.dynamic_table_history(name, 1)
        last = history[0] if history else None
        if last is not None and last.state != "SUCCEEDED":
            tried = last.refresh_end_time or last.refresh_start_time
            if (now - tried).total_seconds() < lag_target:
                continue
        state = states.get(name)
        if state is None:
            due.append(name)
            continue
        took = last.seconds if last is not None and last.state == "SUCCEEDED" else 0.0
        lag = (now - state.data_timestamp).total_seconds()
        if lag + (took or 0.0) + horizon_seconds >= lag_target:
            due.append(name)
    return due


# --- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DynamicTableStatus:
    """One dynamic table's freshness: `lag_seconds` is now minus the data timestamp of its last
    successful refresh (None if it never succeeded); `behind` when that exceeds the target lag,
    when it was never built, or when its last refresh failed. `target_lag_seconds` is None for
    `target_lag: downstream` (refreshed when a table reading it is)."""

    name: str
    refresh_mode: str
    refresh_key: str | None
    target_lag_seconds: float | None
    lag_seconds: float | None
    behind: bool
    last: RefreshResult | None
    last_success: RefreshResult | None
    metered: dict[str, MeteredUse] = field(default_factory=dict)
    """Metered refreshes of the last `METERING_WINDOW` by warehouse (DuckDB engine; Snowflake
    bills its own refreshes, see `clinipipe cost`)."""

    def as_dict(self) -> dict[str, object]:
        def result(r: RefreshResult | None) -> dict[str, object] | None:
            if r is None:
                return None
            data = r.as_dict()
            data.pop("name")
            return data

        return {
            "name": self.name,
            "refresh_mode": self.refresh_mode,
            "refresh_key": self.refresh_key,
            "target_lag_seconds": self.target_lag_seconds,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "behind": self.behind,
            "last_refresh": result(self.last),
            "last_success": result(self.last_success),
            "metered_24h": {
                wh: {"refreshes": use.jobs, "seconds": round(use.seconds, 3)}
                for wh, use in self.metered.items()
            },
        }


@dataclass(frozen=True)
class MeteredUse:
    """Jobs metered on one warehouse and their busy time (seconds)."""

    jobs: int
    seconds: float


METERING_WINDOW = dt.timedelta(hours=24)


def _metered_refreshes(target: Target, now: dt.datetime) -> dict[str, dict[str, MeteredUse]]:
    """Dynamic table -> warehouse -> refreshes metered since `now - METERING_WINDOW`."""
    if target.native_dynamic_tables or not target.table_exists(CONTROL_SCHEMA, "metering"):
        return {}
    since = target.dialect.quote_literal((now - METERING_WINDOW).isoformat())
    rows = target.query(
        f"SELECT job, warehouse, started_at, ended_at FROM {target.control('metering')} "
        f"WHERE job LIKE 'refresh:%' AND started_at >= {since}"
    )
    totals: dict[str, dict[str, MeteredUse]] = {}
    for job, warehouse, started, ended in rows:
        name = str(job).split(":")[1]
        use = totals.setdefault(name, {}).get(warehouse, MeteredUse(0, 0.0))
        seconds = use.seconds + (ended - started).total_seconds()
        totals[name][warehouse] = MeteredUse(use.jobs + 1, seconds)
    return totals


def dynamic_table_status(
    loaded: LoadedSpec, target: Target, *, now: dt.datetime | None = None
) -> list[DynamicTableStatus]:
    """Each dynamic table's lag against its target and its last refreshes (reads only; works
    on a read-only target)."""
    now = now or _now()
    metered = _metered_refreshes(target, now)
    statuses = []
    for table in loaded.spec.dynamic_tables:
        history = target.dynamic_table_history(table.name, 200)
        last = history[0] if history else None
        success = next((r for r in history if r.state == "SUCCEEDED"), None)
        lag = None
        if success is not None and success.data_timestamp is not None:
            lag = max(0.0, (now - success.data_timestamp).total_seconds())
        lag_target = table.target_lag.seconds  # None: DOWNSTREAM, no lag of its own
        behind = lag is None or (lag_target is not None and lag > lag_target)
        behind = behind or (last is not None and last.state != "SUCCEEDED")
        status = DynamicTableStatus(
            table.name, table.refresh_mode, table.refresh_key, table.target_lag.seconds,
            lag, behind, last, success, metered.get(table.name, {}),
        )  # fmt: skip
        statuses.append(status)
    return statuses
