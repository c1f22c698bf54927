"""What the other commands ask of the warehouse, answered the same way whether `cdc start` runs
or not.

Each operation (``cdc_status``, ``status``, ``refresh``, ``publish``, ``scan``, ``redact``) is a
handler over an open target (:data:`HANDLERS`) that returns exactly what the command prints
with ``--json``. The functions the CLI calls (:func:`cdc_status`, :func:`pipeline_status`,
:func:`refresh_now`, :func:`publish_now`, :func:`scan_now`, :func:`redact_now`) first look for
the control socket of a running `cdc start` (:mod:`clinipipe.pipeline.control`): when one
answers, the request runs there, on the one connection that owns the warehouse, between
batches; otherwise they open the warehouse themselves, as before. Either way they return the
same result objects (rebuilt from the JSON answer when remote), so `--json` output has the same
shape and the human output is the same.

Errors keep their kind across the socket: a wrong request raises the operation's own error
with ``usage=True`` (exit 2), any other failure its error (exit 1).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinipipe.backup import audit
from clinipipe.backup.service import REQUESTS as BACKUP_REQUESTS
from clinipipe.backup.service import Request as BackupRequest
from clinipipe.pipeline import control
from clinipipe.pipeline.control import Call, ControlError, Handler
from clinipipe.pipeline.publish import (
    InteractiveStatus,
    PublishError,
    PublishRecord,
    PublishResult,
    interactive_status,
)
from clinipipe.pipeline.publish import publish as run_publish
from clinipipe.pipeline.redact import FinalScan, RedactError, RedactOptions, RedactResult
from clinipipe.pipeline.redact import TableResult as RedactTable
from clinipipe.pipeline.redact import redact as run_redact
from clinipipe.pipeline.refresh import (
    DynamicTableStatus,
    MeteredUse,
    RefreshError,
    dynamic_table_status,
)
from clinipipe.pipeline.refresh import refresh as run_refresh
from clinipipe.pipeline.scan import ScanError, ScanOptions, ScanReport, run_scan
from clinipipe.pipeline.scan import TableResult as ScanTable
from clinipipe.pipeline.verify import HANDLERS as VERIFY_HANDLERS
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets.base import RefreshResult, Target, TargetError

if TYPE_CHECKING:
    from clinipipe.cost.inputs import CostInputs

Notify = Callable[[str, bool], None]
"""Called with (message, is_warning): how the CLI hears where a request ran."""

# --- handlers: run on an open target (locally, or on the CDC loop's thread) ----------------------


def cdc_warehouse_status(loaded: LoadedSpec, target: Target) -> dict[str, Any]:
    """The warehouse half of `cdc status`: checkpoint, paused tables, the last batch and the
    commit-to-apply latency percentiles of the last 1,000 batches. Reads only."""
    from clinipipe.source.pgoutput import lsn_to_str

    slot = loaded.spec.source.slot
    target.require_deployed()
    checkpoint = target.cdc_checkpoint(slot)
    paused = target.paused_tables(slot)
    batches = target.query(
        f"SELECT applied_at, changes, latencies_ms FROM {target.control('cdc_batches')} "
        f"WHERE slot = {target.dialect.quote_literal(slot)} ORDER BY applied_at DESC LIMIT 1000"
    )
    # DuckDB returns a list; Snowflake returns its ARRAY as JSON text.
    latencies = sorted(
        float(x)
        for _, _, ls in batches
        for x in (json.loads(ls) if isinstance(ls, str) else ls or [])
    )
    if len(latencies) == 1:
        cuts = latencies * 99
    else:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive") if latencies else []
    run = target.backfill_run(slot)
    return {
        "backfill_completed": run is not None and run.completed_at is not None,
        "checkpoint_lsn": lsn_to_str(checkpoint) if checkpoint is not None else None,
        "last_batch_at": batches[0][0] if batches else None,
        "last_batch_changes": batches[0][1] if batches else None,
        "latency_ms": {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]} if cuts else None,
        "paused_tables": paused,
    }


def live_stats(stats: Any) -> dict[str, Any] | None:
    """The running loop's counters as JSON (names, counts, times; never row values)."""
    if stats is None:
        return None
    if callable(getattr(stats, "as_dict", None)):
        data = stats.as_dict()
    elif dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        data = dataclasses.asdict(stats)
    else:
        data = {k: v for k, v in vars(stats).items() if not k.startswith("_")}
    return dict(json.loads(json.dumps(data, default=str)))


def _handle_cdc_status(call: Call) -> dict[str, Any]:
    data = cdc_warehouse_status(call.loaded, call.target)
    data["running"] = {"pid": os.getpid(), "stats": live_stats(call.stats)}
    return data


def _handle_status(call: Call) -> dict[str, Any]:
    call.target.require_deployed()
    statuses = dynamic_table_status(call.loaded, call.target)
    served = interactive_status(call.loaded, call.target)
    return PipelineStatus(statuses, served, True).as_dict()


def _handle_refresh(call: Call) -> list[dict[str, Any]]:
    name = call.params.get("name")
    results = run_refresh(call.loaded, name, full=bool(call.params.get("full")),
                          target=call.target, audited=True)  # fmt: skip
    return [r.as_dict() for r in results]


def _handle_publish(call: Call) -> list[dict[str, Any]]:
    call.target.require_deployed()
    names = call.params.get("names") or None
    full = bool(call.params.get("full"))
    return [r.as_dict() for r in run_publish(call.loaded, call.target, names, audited=True,
                                             full=full)]  # fmt: skip


def _handle_scan(call: Call) -> dict[str, Any]:
    p = call.params
    options = ScanOptions(
        tables=tuple(p.get("tables") or ()),
        schema=p.get("schema"),
        sample=p.get("sample"),
        fail_on=p.get("fail_on"),
        classify=bool(p.get("classify", True)),
    )

    def on_table(name: str, done: int, total: int) -> None:
        call.progress({"name": name, "done": done, "total": total})

    return run_scan(call.loaded, options, on_table=on_table, target=call.target).as_dict()


def _handle_redact(call: Call) -> dict[str, Any]:
    p = call.params
    as_of = p.get("as_of")
    options = RedactOptions(
        policy=str(p.get("policy")),
        schema=p.get("schema"),
        tables=p.get("tables"),
        surrogates=bool(p.get("surrogates")),
        as_of=dt.date.fromisoformat(as_of) if as_of else None,
        ai_redact=bool(p.get("ai_redact")),
    )
    return run_redact(call.loaded, options, target=call.target).as_dict()


def _handle_cost_inputs(call: Call) -> dict[str, Any]:
    from clinipipe.cost.inputs import gather_cost_inputs  # numpy billing: only when asked

    now = dt.datetime.fromisoformat(str(call.params["now"]))
    return gather_cost_inputs(call.loaded, call.target, int(call.params["days"]), now).as_dict()


def _backup_handler(request: BackupRequest) -> Handler:
    return lambda call: request(call.loaded, call.target, call.params, call.progress)


HANDLERS: dict[str, Handler] = {
    "cdc_status": _handle_cdc_status,
    "status": _handle_status,
    "refresh": _handle_refresh,
    "publish": _handle_publish,
    "scan": _handle_scan,
    "redact": _handle_redact,
    "cost_inputs": _handle_cost_inputs,
    **{op: _backup_handler(request) for op, request in BACKUP_REQUESTS.items()},
    **VERIFY_HANDLERS,
}
"""What a running `cdc start` answers on its control socket (besides `hello`)."""


# --- what the CLI calls: remote when `cdc start` runs, else local ---------------------------------


def ask_running_cdc(
    loaded: LoadedSpec,
    op: str,
    params: Mapping[str, Any],
    error: Callable[..., Exception],
    *,
    notify: Notify | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[bool, Any]:
    """(True, result) when a running `cdc start` answered `op`; (False, None) when none runs.
    A failure raises `error(message, usage=...)`."""
    try:
        client = control.connect(loaded)
    except ControlError as exc:
        raise error(str(exc), usage=False) from None
    if client is None:
        return False, None
    if notify is not None:
        notify(f"`cdc start` owns the warehouse: asked it ({client.path})", False)

    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "waiting":
            if notify is not None:
                notify(f"still queued after {event.get('seconds')} s: `cdc start` runs requests "
                       "between batches (a long batch, request or source outage holds them)",
                       False)  # fmt: skip
        elif on_progress is not None:
            on_progress(event)

    try:
        result = client.call(op, params, on_progress=progress)
    except ControlError as exc:
        raise error(str(exc), usage=exc.usage) from None
    if notify is not None and client.spec_digest and client.spec_digest != loaded.digest:
        notify(
            "the running `cdc start` was started with another version of the spec and answered "
            "with that one; restart it to use the spec as it is now",
            True,
        )
    return True, result


def _target_error(message: str, *, usage: bool = False) -> Exception:
    return TargetError(message)


def cdc_status(loaded: LoadedSpec, *, notify: Notify | None = None) -> dict[str, Any]:
    """`cdc status --json`: the slot (read from the source directly) and the warehouse half
    (asked of the running `cdc start`, else read from the warehouse opened read-only); key
    `running` holds the live counters when CDC runs, None otherwise."""
    from clinipipe.source.replication import slot_info, slot_lag_bytes
    from clinipipe.targets import open_target

    spec = loaded.spec
    slot = spec.source.slot
    slot_state = slot_info(spec.source.dsn, slot)
    lag = slot_lag_bytes(spec.source.dsn, slot) if slot_state else None
    remote, part = ask_running_cdc(loaded, "cdc_status", {}, _target_error, notify=notify)
    if not remote:
        with open_target(loaded, read_only=True) as target:
            part = cdc_warehouse_status(loaded, target)
        part["running"] = None
    return {
        "slot": slot,
        "slot_exists": slot_state is not None,
        "slot_status": slot_state.wal_status if slot_state else "missing",
        "slot_active": bool(slot_state and slot_state.active),
        "confirmed_lsn": slot_state.confirmed_flush_lsn if slot_state else None,
        "checkpoint_lsn": part["checkpoint_lsn"],
        "lag_bytes": lag,
        "lag_warning": lag is not None and lag > spec.source.lag_warning_mb * 1024 * 1024,
        "last_batch_at": _ts(part["last_batch_at"]),
        "last_batch_changes": part["last_batch_changes"],
        "latency_ms": part["latency_ms"],
        "paused_tables": part["paused_tables"],
        "backfill_completed": part["backfill_completed"],
        "running": part["running"],
    }


@dataclass(frozen=True)
class PipelineStatus:
    """`status`: each dynamic table's and interactive table's freshness, and whether `cdc
    start` answered (it keeps them fresh)."""

    dynamic_tables: list[DynamicTableStatus]
    interactive_tables: list[InteractiveStatus]
    cdc_running: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "dynamic_tables": [s.as_dict() for s in self.dynamic_tables],
            "interactive_tables": [s.as_dict() for s in self.interactive_tables],
            "cdc_running": self.cdc_running,
        }


def pipeline_status(loaded: LoadedSpec, *, notify: Notify | None = None) -> PipelineStatus:
    """What `status` shows; opens the warehouse read-only when `cdc start` does not run."""
    from clinipipe.targets import open_target

    remote, data = ask_running_cdc(loaded, "status", {}, _target_error, notify=notify)
    if remote:
        return PipelineStatus(
            [_dynamic_status(d) for d in data["dynamic_tables"]],
            [_interactive_status(d) for d in data["interactive_tables"]],
            True,
        )
    with open_target(loaded, read_only=True) as target:
        target.require_deployed()
        return PipelineStatus(
            dynamic_table_status(loaded, target), interactive_status(loaded, target), False
        )


def refresh_now(
    loaded: LoadedSpec, name: str | None = None, *, full: bool = False, notify: Notify | None = None
) -> list[RefreshResult]:
    """`refresh`: see :func:`clinipipe.pipeline.refresh.refresh` (reason MANUAL)."""
    remote, data = ask_running_cdc(loaded, "refresh", {"name": name, "full": full}, RefreshError,
                           notify=notify)  # fmt: skip
    if remote:
        return [_refresh_result(d) for d in data]
    return run_refresh(loaded, name, full=full, audited=True)


def publish_now(
    loaded: LoadedSpec,
    names: Sequence[str] | None = None,
    *,
    notify: Notify | None = None,
    full: bool = False,
) -> list[PublishResult]:
    """`publish`: see :func:`clinipipe.pipeline.publish.publish` (`full`: every partition)."""
    from clinipipe.targets import open_target

    wanted = list(names) if names else None
    remote, data = ask_running_cdc(
        loaded, "publish", {"names": wanted, "full": full}, PublishError, notify=notify
    )
    if remote:
        return [_publish_result(d) for d in data]
    with open_target(loaded) as target:
        target.require_deployed()
        return run_publish(loaded, target, wanted, audited=True, full=full)


def scan_now(
    loaded: LoadedSpec,
    options: ScanOptions,
    *,
    on_table: Callable[[str, int, int], None] | None = None,
    notify: Notify | None = None,
) -> ScanReport:
    """`scan`: see :func:`clinipipe.pipeline.scan.run_scan`."""

    def progress(event: dict[str, Any]) -> None:
        if on_table is not None:
            on_table(str(event.get("name", "")), int(event.get("done", 0)),
                     int(event.get("total", 0)))  # fmt: skip

    params = {"tables": list(options.tables), "schema": options.schema,
              "sample": options.sample, "fail_on": options.fail_on,
              "classify": options.classify}  # fmt: skip
    remote, data = ask_running_cdc(
        loaded, "scan", params, ScanError, notify=notify, on_progress=progress
    )
    if remote:
        return scan_report(data)
    return run_scan(loaded, options, on_table=on_table)


def redact_now(
    loaded: LoadedSpec, options: RedactOptions, *, notify: Notify | None = None
) -> RedactResult:
    """`redact`: see :func:`clinipipe.pipeline.redact.redact`."""
    params = {
        "policy": options.policy,
        "schema": options.schema,
        "tables": list(options.tables) if options.tables is not None else None,
        "surrogates": options.surrogates,
        "as_of": options.as_of.isoformat() if options.as_of else None,
        "ai_redact": options.ai_redact,
    }
    remote, data = ask_running_cdc(loaded, "redact", params, RedactError, notify=notify)
    if remote:
        return _redact_result(data)
    return run_redact(loaded, options)


# --- JSON answers back into result objects (exact round trips of their as_dict) ---------------


def _ts(value: object) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _refresh_result(d: Mapping[str, Any], name: str | None = None) -> RefreshResult:
    start = _ts(d["start"])
    assert start is not None
    return RefreshResult(
        name=str(d["name"] if name is None else name),
        state=d["state"],
        refresh_action=d["action"],
        state_message=d["message"],
        data_timestamp=_ts(d["data_timestamp"]),
        refresh_start_time=start,
        refresh_end_time=_ts(d["end"]),
        warehouse=d["warehouse"],
        rows_inserted=d["rows_inserted"],
        rows_deleted=d["rows_deleted"],
        keys_changed=d["keys_changed"],
        refresh_trigger=d["trigger"],
    )


def _dynamic_status(d: Mapping[str, Any]) -> DynamicTableStatus:
    name = d["name"]
    last, success = d["last_refresh"], d["last_success"]
    return DynamicTableStatus(
        name, d["refresh_mode"], d["refresh_key"], d["target_lag_seconds"], d["lag_seconds"],
        d["behind"], None if last is None else _refresh_result(last, name),
        None if success is None else _refresh_result(success, name),
        {wh: MeteredUse(u["refreshes"], u["seconds"]) for wh, u in d["metered_24h"].items()},
    )  # fmt: skip


def _interactive_status(d: Mapping[str, Any]) -> InteractiveStatus:
    record = None
    if d["generation"] is not None:
        published = _ts(d["published_at"])
        assert published is not None
        record = PublishRecord(d["name"], d["generation"], d["rows"], published,
                               _ts(d["source_data_timestamp"]))  # fmt: skip
    return InteractiveStatus(d["name"], d["source"], d["target_lag_seconds"], record,
                             d["lag_seconds"], d["behind"])  # fmt: skip


def _publish_result(d: Mapping[str, Any]) -> PublishResult:
    published = _ts(d["published_at"])
    assert published is not None
    return PublishResult(d["name"], d["generation"], Path(d["path"]), d["rows"], d["bytes"],
                         published, _ts(d["source_data_timestamp"]), d["seconds"], (),
                         incremental=bool(d.get("incremental")),
                         partitions=int(d.get("partitions") or 1),
                         rewritten=tuple(d.get("rewritten_partitions") or ()),
                         delta_rows=int(d.get("delta_rows") or 0),
                         changed_keys=int(d.get("changed_keys") or 0),
                         cpu_seconds=d.get("cpu_seconds"))  # fmt: skip


def scan_report(d: Mapping[str, Any]) -> ScanReport:
    """A :class:`ScanReport` from its `as_dict` (what `scan --json` prints)."""
    from clinipipe.phi.scan import Finding

    fields = {f.name for f in dataclasses.fields(Finding)}
    return ScanReport(
        d["fail_on"],
        d["sample"],
        tables=[ScanTable(**t) for t in d["tables"]],
        findings=[Finding(**{k: v for k, v in f.items() if k in fields}) for f in d["findings"]],
        notes=list(d["notes"]),
        seconds=float(d["seconds"]),
    )


def _redact_result(d: Mapping[str, Any]) -> RedactResult:
    final = d["final_scan"]
    scan = None
    if final is not None:
        scan = FinalScan(scan_report(final), final["ignored_allowed"], final["audit_seq"])
    return RedactResult(
        policy=d["policy"],
        schema=d["schema"],
        label=d["label"],
        as_of=dt.date.fromisoformat(d["as_of"]),
        tables=tuple(
            RedactTable(t["table"], t["action"], t["rows"], tuple(t["columns"]))
            for t in d["tables"]
        ),
        audit_seq=d["audit_seq"],
        scan=scan,
    )


def cdc_reset(loaded: LoadedSpec) -> bool:
    """`cdc reset`: drop the replication slot, then forget the CDC checkpoints, pauses and the
    backfill's record on the target (`Target.reset_cdc`); True when a slot was dropped. The
    caller has made sure `cdc start` does not run (it owns the warehouse).

    The target is checked first (deployed, audit log present), so nothing is dropped that
    could not be recorded. Then one ``cdc reset`` audit entry: the slot and control tables, the
    slot dropped or not; ``failed`` (the error's class) when dropping the slot or forgetting
    the state failed (the error is raised unchanged)."""
    from clinipipe.source.replication import drop_slot
    from clinipipe.sql.context import CONTROL_SCHEMA
    from clinipipe.targets import open_target

    slot = loaded.spec.source.slot
    tables = ("cdc_checkpoints", "cdc_paused_tables", "backfill_runs", "backfill_ranges",
              "backfill_plan")  # fmt: skip
    with open_target(loaded) as target:
        target.require_deployed()
        with audit.audited(
            target, "cdc reset", spec_digest=loaded.digest,
            objects=[f"replication slot {slot}", *(f"{CONTROL_SCHEMA}.{t}" for t in tables)],
        ) as entry:  # fmt: skip
            entry.detail = {"slot": slot}
            dropped = drop_slot(loaded.spec.source.dsn, slot)
            entry.counts = {"slots_dropped": int(dropped)}
            target.reset_cdc(slot)
    return dropped


def cost_inputs(
    loaded: LoadedSpec, days: int, now: dt.datetime, *, notify: Notify | None = None
) -> CostInputs:
    """What `cost report` / `cost anomalies` read (`clinipipe.cost.inputs`), asked of the
    running `cdc start` when it owns the warehouse, else read from it opened read-only."""
    from clinipipe.cost.inputs import CostInputs, gather_cost_inputs
    from clinipipe.targets import open_target

    params = {"days": days, "now": now.isoformat()}
    remote, data = ask_running_cdc(loaded, "cost_inputs", params, _target_error, notify=notify)
    if remote:
        return CostInputs.from_dict(data)
    with open_target(loaded, read_only=True) as target:
        return gather_cost_inputs(loaded, target, days, now)
