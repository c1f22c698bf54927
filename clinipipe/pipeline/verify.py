"""`clinipipe verify`: prove that the warehouse's raw tables equal the source tables.

**What is compared.** For every replicated table (or `--tables`), row counts and sums of
60-bit row hashes over ranges of a key position, computed inside each engine on canonical
values (`clinipipe.source.checksum`, `clinipipe.targets.capabilities.verify`). Ranges that
differ are bisected (each level splits a range 16 ways) until they hold at most `LEAF_ROWS`
rows; then the canonical keys and row digests of those ranges are compared, and for each key
present on both sides with different rows, per-column digests name the columns that differ.
Only counts, hash sums, keys and md5 digests leave either engine; the report names table, key
and columns, never a value.

**Consistency while CDC runs (the guarantee).** A run

1. creates a TEMPORARY logical slot exporting its snapshot; its consistent point is S. The
   snapshot holds exactly the transactions committed before S;
2. computes both sides in the process that owns the warehouse: on the CDC loop's thread
   between two batches when `cdc start` runs (through its control socket), else locally. No
   batch commits during the computation, so the warehouse is at one position W: its checkpoint,
   or the position CDC confirmed while idle, if later (everything before it is applied). The
   source side reads under the imported snapshot, i.e. at S. When `cdc start` runs and W < S,
   the run waits (bounded, `wait_seconds`; a marker written to the WAL makes an idle CDC
   confirm past S) and otherwise ends with outcome ``cdc_behind``: nothing is claimed;
3. reads the transactions between the two positions: from the temporary slot for S..W (W ≥ S),
   or by peeking (not consuming) the pipeline's slot for W..S when `cdc start` is not running;
4. every key touched by one of those transactions (old and new keys of updates, deleted keys;
   a whole table when truncated) is excluded: reported as "not checked, re-checked next run".

So a reported difference is a key whose row differs between the source at S and the warehouse
at W although no transaction between S and W touched it: a real divergence, never a race. A
key excluded is not claimed equal. The run holds no lock on the source; the temporary slot
vanishes with the run's connection (a crash included).

**Cost.** Each query runs in both engines at once (the source's on a helper thread), a full
run's contiguous ranges are one scan per table, and the source session hash-aggregates in
memory (`clinipipe.source.checksum.WORK_MEM`). `ScheduledVerify` is the same run inside `cdc
start` (`verify.every`), resumed between batches until the warehouse reaches S.

Exit codes (the CLI): 0 equal, 3 differences, 1 failure (``cdc_behind`` included), 2 usage.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from clinipipe.backup import audit
from clinipipe.notify import WebhookSender, webhook_settings
from clinipipe.pipeline.control import Call
from clinipipe.source.checksum import (
    ChangedKeys,
    ChecksumTable,
    SourceChecksums,
    Span,
    VerifySlot,
    key_text,
    merge_spans,
    peek_changed_keys,
)
from clinipipe.source.pgoutput import lsn_to_int, lsn_to_str
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets.base import Target

LEAF_ROWS = 4096
"""A differing range with at most this many rows on each side is compared key by key."""
RANGE_ROWS = 2048
"""About this many rows per first-level range."""
MAX_KEYS = 1000
"""Differing keys named per table; more are counted."""
MAX_SPANS_PER_QUERY = 64

Notify = Callable[[str, bool], None]
A = TypeVar("A")
B = TypeVar("B")

OUTCOMES = ("equal", "differences", "cdc_behind")


class VerifyError(Exception):
    """verify could not run; `usage` when the request itself was wrong (exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class VerifyOptions:
    tables: tuple[str, ...] = ()
    sample: float | None = None
    """Percent of ranges to check (None: all)."""
    seed: int | None = None
    wait_seconds: float = 60.0
    """How long to wait for a running CDC to reach the snapshot's position."""


@dataclass
class Difference:
    table: str
    key: dict[str, str | None]
    kind: str
    """``missing`` (in the source, not the warehouse), ``extra`` (in the warehouse only),
    ``changed`` (both, different values in `columns`)."""
    columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key, "kind": self.kind, "columns": self.columns}


@dataclass
class TableReport:
    table: str
    rows_checked: int = 0
    ranges: int = 0
    ranges_checked: int = 0
    ranges_differing: int = 0
    differences: list[Difference] = field(default_factory=list)
    not_checked: list[dict[str, str | None]] = field(default_factory=list)
    truncated: bool = False
    more: int = 0
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "rows_checked": self.rows_checked, "ranges": self.ranges,
            "ranges_checked": self.ranges_checked, "ranges_differing": self.ranges_differing,
            "differences": [d.as_dict() for d in self.differences],
            "keys_not_checked": self.not_checked, "truncated_between_positions": self.truncated,
            "more_differences": self.more, "skipped": self.skipped,
        }  # fmt: skip


@dataclass
class VerifyReport:
    run_id: str
    started_at: dt.datetime
    outcome: str
    sample_pct: float | None
    source_lsn: str | None
    warehouse_lsn: str | None
    tables: list[TableReport]
    ended_at: dt.datetime | None = None
    cdc_running: bool = False
    message: str | None = None
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return sum(len(t.differences) + t.more for t in self.tables)

    def counts(self) -> dict[str, int]:
        return {
            "tables": sum(1 for t in self.tables if t.skipped is None),
            "rows": sum(t.rows_checked for t in self.tables),
            "differences": self.differences,
            "keys_not_checked": sum(len(t.not_checked) for t in self.tables),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "outcome": self.outcome,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "seconds": round(self.seconds, 3), "sample_pct": self.sample_pct,
            "source_lsn": self.source_lsn, "warehouse_lsn": self.warehouse_lsn,
            "cdc_running": self.cdc_running, "message": self.message, "counts": self.counts(),
            "tables": [t.as_dict() for t in self.tables],
        }  # fmt: skip


# --- one table: ranges, bisection, keys, columns -------------------------------------------------


def _width(span: int, rows: int) -> int:
    ranges = max(1, rows // RANGE_ROWS)
    width = max(1, math.ceil(span / ranges))
    return 1 << (width - 1).bit_length()


def _chunks(spans: Sequence[Span]) -> list[list[Span]]:
    """`spans` merged (a full run's contiguous ranges become one span: one scan per table),
    at most `MAX_SPANS_PER_QUERY` per query."""
    merged = merge_spans(spans)
    return [merged[i : i + MAX_SPANS_PER_QUERY] for i in range(0, len(merged), MAX_SPANS_PER_QUERY)]


def _both(ours: Callable[[], A], theirs: Callable[[], B]) -> tuple[A, B]:
    """`ours` (a source query) on a helper thread while `theirs` (the warehouse's) runs on
    this one: both engines compute at once (psycopg2 and DuckDB release the GIL while a query
    runs). The warehouse connection stays on the calling thread (the CDC loop's, when `cdc
    start` serves the request)."""
    with ThreadPoolExecutor(1, thread_name_prefix="clinipipe-verify-source") as pool:
        future = pool.submit(ours)
        try:
            b = theirs()
        finally:
            a = future.result()
    return a, b


def compare_table(
    src: SourceChecksums, wh: Target, table: ChecksumTable, rows_hint: int,
    sample: float | None, rng: random.Random,
) -> TableReport:  # fmt: skip
    """Compare one table (see the module docstring); differences named, not yet excluded."""
    report = TableReport(table.name)
    if not table.key:
        report.skipped = "no primary key (append_only): not verified"
        return report
    if table.int_position:
        (slo, shi, sn), (wlo, whi, wn) = _both(
            lambda: src.bounds(table), lambda: wh.verify_bounds(table)
        )
        lows = [v for v in (slo, wlo) if v is not None]
        highs = [v for v in (shi, whi) if v is not None]
        if not lows:
            return report
        lo, hi, rows = min(lows), max(highs) + 1, max(sn, wn)
    else:
        lo, hi, rows = 0, 1 << 32, max(rows_hint, 1)
    width = _width(hi - lo, rows)
    count = math.ceil((hi - lo) / width)
    indices = list(range(count))
    if sample is not None and sample < 100:
        indices = sorted(rng.sample(indices, max(1, math.ceil(count * sample / 100))))
    report.ranges, report.ranges_checked = count, len(indices)
    spans = [Span(lo + i * width, lo + (i + 1) * width) for i in indices]
    level: list[tuple[int, int]] = []  # (range start, larger count)
    first = True
    while True:
        src_sums: dict[int, tuple[int, int]] = {}
        wh_sums: dict[int, tuple[int, int]] = {}
        for part in _chunks(spans):
            ours, theirs = _both(partial(src.range_sums, table, lo, width, part),
                                 partial(wh.verify_range_sums, table, lo, width, part))  # fmt: skip
            src_sums |= ours
            wh_sums |= theirs
        if first:
            report.rows_checked = sum(n for n, _ in src_sums.values())
        differing = sorted(i for i in src_sums.keys() | wh_sums.keys()
                           if src_sums.get(i) != wh_sums.get(i))  # fmt: skip
        if first:
            report.ranges_differing = len(differing)
            first = False
        sized = [(lo + i * width, max(src_sums.get(i, (0, 0))[0], wh_sums.get(i, (0, 0))[0]))
                 for i in differing]  # fmt: skip
        leaves = [s for s, n in sized if n <= LEAF_ROWS or width == 1]
        level += [(s, width) for s in leaves]
        bigger = [s for s, n in sized if not (n <= LEAF_ROWS or width == 1)]
        if not bigger:
            break
        spans = [Span(s, s + width) for s in bigger]
        width = max(1, width // 16)
    if level:
        _name_keys(src, wh, table, [Span(s, s + w) for s, w in level], report)
    return report


def _name_keys(
    src: SourceChecksums, wh: Target, table: ChecksumTable, spans: list[Span], report: TableReport
) -> None:
    names = list(table.key)
    changed: list[tuple[str | None, ...]] = []
    found = 0
    for part in _chunks(spans):
        ours, theirs = _both(
            lambda p=part: src.rows(table, p), lambda p=part: wh.verify_rows(table, p)
        )
        for key in sorted(ours.keys() | theirs.keys(), key=lambda k: tuple(str(v) for v in k)):
            a, b = ours.get(key), theirs.get(key)
            if a == b:
                continue
            found += 1
            if found > MAX_KEYS:
                report.more += 1
                continue
            kind = "missing" if b is None else "extra" if a is None else "changed"
            report.differences.append(
                Difference(table.name, dict(zip(names, key, strict=True)), kind)
            )
            if kind == "changed":
                changed.append(key)
    if not changed:
        return
    by_key = {tuple(d.key.values()): d for d in report.differences if d.kind == "changed"}
    columns = [c.name for c in table.columns]
    for i in range(0, len(changed), 500):
        texts = [key_text(k) for k in changed[i : i + 500]]
        for part in _chunks(spans):
            ours, theirs = _both(partial(src.column_hashes, table, part, texts),
                                 partial(wh.verify_column_hashes, table, part, texts))  # fmt: skip
            for key, hashes in ours.items():
                other = theirs.get(key)
                if other is None or key not in by_key:
                    continue
                by_key[key].columns = [
                    c for c, x, y in zip(columns, hashes, other, strict=True) if x != y
                ]


# --- the handler: runs where the warehouse is owned ----------------------------------------------


def compare(loaded: LoadedSpec, target: Target, params: Mapping[str, Any],
            stats: Any = None) -> dict[str, Any]:  # fmt: skip
    """Both sides of every chosen table, on `target` (the warehouse's owner) and the source
    under `params["snapshot"]`. Returns {"behind": True, ...} without comparing when
    `params["wait_for_lsn"]` is set and the warehouse has not reached it."""
    target.require_deployed()
    target.require_verify_runs()
    slot = loaded.spec.source.slot
    checkpoint = target.cdc_checkpoint(slot)
    if checkpoint is None:  # backfilled, no batch applied yet: the backfill's position
        run = target.backfill_run(slot)
        if run is not None and run.completed_at is not None and run.consistent_point:
            checkpoint = lsn_to_int(run.consistent_point)
    if checkpoint is None:
        raise VerifyError("the warehouse has no CDC checkpoint yet: run `clinipipe backfill` "
                          "(and `clinipipe cdc start`) before verify")  # fmt: skip
    position = max(checkpoint, int(getattr(stats, "confirmed_lsn", 0) or 0))
    wanted = params.get("wait_for_lsn")
    if wanted is not None and position < lsn_to_int(str(wanted)):
        return {"behind": True, "warehouse_lsn": lsn_to_str(position)}
    sample = params.get("sample")
    rng = random.Random(params.get("seed"))
    chosen = set(params.get("tables") or ())
    reports = []
    with SourceChecksums(loaded.spec.source.dsn, params.get("snapshot")) as src:
        for spec_table in loaded.spec.source.tables:
            if chosen and spec_table.name not in chosen:
                continue
            schema = src.table(spec_table.schema_, spec_table.name, spec_table.name)
            rows_hint = _rows_hint(src, schema)
            refusal = target.verify_refusal(schema)
            if refusal is not None:  # types this warehouse cannot canonicalize
                report = TableReport(spec_table.name, skipped=f"not verifiable here: {refusal}")
            else:
                report = compare_table(src, target, schema, rows_hint, sample, rng)
            reports.append({"report": report, "table": schema.as_dict()})
    return {
        "behind": False,
        "checkpoint_lsn": lsn_to_str(checkpoint),
        "warehouse_lsn": lsn_to_str(position),
        "tables": [_table_to_json(r["report"]) | {"schema": r["table"]} for r in reports],
    }


def _rows_hint(src: SourceChecksums, table: ChecksumTable) -> int:
    rows = src.query(
        "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = %s::regclass",
        (table.source_relation,),
    )
    return int(rows[0][0]) if rows else 0


def _table_to_json(r: TableReport) -> dict[str, Any]:
    return r.as_dict()


def _table_from_json(d: Mapping[str, Any]) -> TableReport:
    return TableReport(
        d["table"], d["rows_checked"], d["ranges"], d["ranges_checked"], d["ranges_differing"],
        [Difference(x["table"], dict(x["key"]), x["kind"], list(x["columns"]))
         for x in d["differences"]],
        list(d["keys_not_checked"]), bool(d["truncated_between_positions"]),
        int(d["more_differences"]), d["skipped"],
    )  # fmt: skip


def record(loaded: LoadedSpec, target: Target, report: Mapping[str, Any]) -> int | None:
    """Write the run to ``_clinipipe.verify_runs`` and the audit trail; the audit sequence."""
    target.require_verify_runs()
    tables = [t["table"] for t in report.get("tables", [])]
    with audit.audited(target, "verify", spec_digest=loaded.digest,
                       objects=[f"raw.{t}" for t in tables]) as entry:  # fmt: skip
        entry.counts = dict(report.get("counts") or {})
        entry.detail = {"run_id": report["run_id"], "outcome": report["outcome"],
                        "source_lsn": report.get("source_lsn"),
                        "warehouse_lsn": report.get("warehouse_lsn"),
                        "sample_pct": report.get("sample_pct")}  # fmt: skip
        target.record_verify_run(report)
    return getattr(getattr(entry, "entry", None), "seq", None)


def handle_verify(call: Call) -> dict[str, Any]:
    """The control-socket handler ``verify`` (see `compare`)."""
    return compare(call.loaded, call.target, call.params, call.stats)


def handle_verify_record(call: Call) -> dict[str, Any]:
    """The control-socket handler ``verify_record``."""
    return {"audit_seq": record(call.loaded, call.target, call.params["report"])}


HANDLERS = {"verify": handle_verify, "verify_record": handle_verify_record}


# --- the client: what `clinipipe verify` calls ---------------------------------------------------


def verify_now(
    loaded: LoadedSpec, options: VerifyOptions, *, notify: Notify | None = None
) -> VerifyReport:
    """Run one verify (see the module docstring) and record it."""
    from clinipipe.pipeline.operations import ask_running_cdc
    from clinipipe.source.stream import emit_marker
    from clinipipe.targets import open_target

    spec = loaded.spec
    known = {t.name for t in spec.source.tables}
    unknown = [t for t in options.tables if t not in known]
    if unknown:
        raise VerifyError(f"not a table of the spec: {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(known))})", usage=True)  # fmt: skip
    if options.sample is not None and not 0 < options.sample <= 100:
        raise VerifyError("--sample takes a percentage above 0 and at most 100", usage=True)
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    run_id = uuid.uuid4().hex
    seed = options.seed if options.seed is not None else random.randrange(1 << 30)
    with VerifySlot(spec.source.dsn, spec.source.publication) as vslot:
        params = {"snapshot": vslot.snapshot, "tables": list(options.tables),
                  "sample": options.sample, "seed": seed,
                  "wait_for_lsn": vslot.consistent_point}  # fmt: skip
        remote, data = ask_running_cdc(loaded, "verify", params, VerifyError, notify=notify)
        if remote:
            emit_marker(spec.source.dsn)  # an idle CDC confirms past S on seeing it
            deadline = time.monotonic() + options.wait_seconds
            while data.get("behind") and time.monotonic() < deadline:
                time.sleep(0.3)
                _, data = ask_running_cdc(loaded, "verify", params, VerifyError)
            report = _finish(loaded, vslot, data, run_id, started, options, remote=True)
            report.seconds = time.monotonic() - clock
            report.ended_at = dt.datetime.now(dt.UTC)
            ask_running_cdc(loaded, "verify_record", {"report": report.as_dict()}, VerifyError)
            return report
        with open_target(loaded) as target:
            local = {**params, "wait_for_lsn": None}
            data = compare(loaded, target, local)
            report = _finish(loaded, vslot, data, run_id, started, options, remote=False)
            report.seconds = time.monotonic() - clock
            report.ended_at = dt.datetime.now(dt.UTC)
            record(loaded, target, report.as_dict())
            return report


# --- scheduled: `verify.every` inside `cdc start` -------------------------------------------------


class ScheduledVerify:
    """One sampled verify run inside `cdc start` (driven by the after-batch job
    `clinipipe.pipeline.cdc.after_batch.VerifyJob`), with `clinipipe verify`'s guarantee (see
    the module docstring): created with the temporary slot and its snapshot at S, then `step`
    is called between batches on the loop's thread with the loop's target. While the warehouse
    has not reached S, `step` returns None at once and CDC goes on applying batches (a marker
    written at creation makes an idle CDC confirm past S); once it has, `step` compares, reads
    the changes S..W from the temporary slot, records the run (``verify_runs`` and the audit
    trail) and returns the report. After `wait_seconds` it returns a ``cdc_behind`` report
    instead (recorded too). `close` drops the slot (a crash drops it with the connection)."""

    def __init__(self, loaded: LoadedSpec, sample: float | None, *, wait_seconds: float = 60.0
                 ) -> None:  # fmt: skip
        from clinipipe.source.stream import emit_marker

        self.loaded = loaded
        self.options = VerifyOptions(sample=sample, wait_seconds=wait_seconds)
        self.started = dt.datetime.now(dt.UTC)
        self._clock = time.monotonic()
        self.run_id = uuid.uuid4().hex
        self.vslot = VerifySlot(loaded.spec.source.dsn, loaded.spec.source.publication)
        self.params = {"snapshot": self.vslot.snapshot, "tables": [], "sample": sample,
                       "seed": random.randrange(1 << 30),
                       "wait_for_lsn": self.vslot.consistent_point}  # fmt: skip
        try:
            emit_marker(loaded.spec.source.dsn)
        except Exception:
            self.close()
            raise

    def step(self, target: Target, stats: Any) -> VerifyReport | None:
        """Compare if the warehouse reached S (then the recorded report), else None, or a
        recorded ``cdc_behind`` report once `wait_seconds` passed."""
        data = compare(self.loaded, target, self.params, stats)
        if data.get("behind") and time.monotonic() - self._clock < self.options.wait_seconds:
            return None
        try:
            report = _finish(self.loaded, self.vslot, data, self.run_id, self.started,
                             self.options, remote=True)  # fmt: skip
        finally:
            self.close()
        report.seconds = time.monotonic() - self._clock
        report.ended_at = dt.datetime.now(dt.UTC)
        record(self.loaded, target, report.as_dict())
        return report

    def close(self) -> None:
        self.vslot.close()


@dataclass(frozen=True)
class VerifyAlert:
    """A webhook alert for a scheduled verify that found differences (a
    `clinipipe.notify.Notification`): table and column names and counts, never a value nor a
    key (the keys are in ``_clinipipe.verify_runs``, under `run_id`)."""

    pipeline: str
    report: VerifyReport

    @property
    def dedup_key(self) -> str:
        return f"clinipipe-verify-{self.pipeline}-{self.report.run_id[:24]}"

    def tables(self) -> list[dict[str, Any]]:
        out = []
        for t in self.report.tables:
            if t.differences or t.more:
                columns = sorted({c for d in t.differences for c in d.columns})
                kinds = {k: sum(d.kind == k for d in t.differences)
                         for k in ("missing", "extra", "changed")}  # fmt: skip
                out.append({"table": t.table, "differences": len(t.differences) + t.more,
                            **kinds, "columns": columns})  # fmt: skip
        return out

    def summary(self) -> str:
        tables = self.tables()
        names = ", ".join(f"{t['table']} ({t['differences']})" for t in tables[:5])
        more = f" and {len(tables) - 5} more tables" if len(tables) > 5 else ""
        return (f"Verify found {self.report.differences} difference(s) between the source and "
                f"the warehouse: {names}{more} [pipeline {self.pipeline}]")[:1024]  # fmt: skip

    def json_body(self) -> dict[str, Any]:
        r = self.report
        return {
            "source": "clinipipe", "event": "verify_differences", "summary": self.summary(),
            "dedup_key": self.dedup_key, "pipeline": self.pipeline, "run_id": r.run_id,
            "detected_at": (r.ended_at or r.started_at).isoformat(), "sample_pct": r.sample_pct,
            "source_lsn": r.source_lsn, "warehouse_lsn": r.warehouse_lsn,
            "differences": r.differences, "tables": self.tables(),
            "details": f"_clinipipe.verify_runs where run_id = '{r.run_id}'",
        }  # fmt: skip

    def pagerduty_body(self, routing_key: str) -> dict[str, Any]:
        return {
            "routing_key": routing_key, "event_action": "trigger", "dedup_key": self.dedup_key,
            "client": "clinipipe",
            "payload": {"summary": self.summary(), "source": f"clinipipe/{self.pipeline}",
                        "severity": "error",
                        "timestamp": (self.report.ended_at or self.report.started_at).isoformat(),
                        "group": "verify", "class": "verify_differences",
                        "custom_details": self.json_body()},
        }  # fmt: skip


class VerifySender(WebhookSender):
    """Verify alerts to the webhook of `verify.alerts` (delivery: `clinipipe.notify`)."""

    label = "verify alert"
    user_agent = "clinipipe-verify-alerts"
    thread_name = "clinipipe-verify-alerts"


def verify_sender(
    loaded: LoadedSpec, on_event: Callable[[str], None] | None = None
) -> VerifySender | None:
    """The sender of `verify.alerts`, or None when it is not set. Raises
    `clinipipe.notify.AlertConfigError` naming a variable that is not set (never its value)."""
    from clinipipe.secrets import environment

    alerts = loaded.spec.verify.alerts
    if alerts is None:
        return None
    url, routing_key = webhook_settings(environment(loaded.directory), section="verify.alerts",
                                        url_env=alerts.webhook_url_env, format=alerts.format,
                                        routing_key_env=alerts.routing_key_env)  # fmt: skip

    return VerifySender(url, format=alerts.format, routing_key=routing_key,
                        timeout_seconds=alerts.timeout_seconds, retries=alerts.retries,
                        queue_size=alerts.queue_size, on_event=on_event)  # fmt: skip


def _finish(
    loaded: LoadedSpec, vslot: VerifySlot, data: Mapping[str, Any], run_id: str,
    started: dt.datetime, options: VerifyOptions, *, remote: bool,
) -> VerifyReport:  # fmt: skip
    spec = loaded.spec
    s = lsn_to_int(vslot.consistent_point)
    report = VerifyReport(run_id, started, "equal", options.sample, vslot.consistent_point,
                          data.get("warehouse_lsn"), [], cdc_running=remote)  # fmt: skip
    if data.get("behind"):
        report.outcome = "cdc_behind"
        report.message = (
            f"CDC is behind: the warehouse is at {data.get('warehouse_lsn')}, the source "
            f"snapshot at {vslot.consistent_point}, still after {options.wait_seconds:.0f} s. "
            "Nothing was verified."
        )
        return report
    w = lsn_to_int(str(data["warehouse_lsn"]))
    if w >= s:
        changed = vslot.changed_keys(w)
    else:
        changed = peek_changed_keys(spec.source.dsn, spec.source.slot, spec.source.publication,
                                    above=lsn_to_int(str(data["checkpoint_lsn"])),
                                    upto=vslot.consistent_point)  # fmt: skip
    tables = [_table_from_json(t) for t in data["tables"]]
    schemas = {t["table"]: ChecksumTable.from_dict(t["schema"]) for t in data["tables"]}
    _exclude(loaded, tables, schemas, changed)
    report.tables = tables
    if report.differences:
        report.outcome = "differences"
    return report


def _exclude(loaded: LoadedSpec, tables: list[TableReport],
             schemas: Mapping[str, ChecksumTable], changed: ChangedKeys) -> None:  # fmt: skip
    """Move the differences of keys touched between the two positions to `not_checked`."""
    by_name = {t.name: t for t in loaded.spec.source.tables}
    with SourceChecksums(loaded.spec.source.dsn, None) as src:
        for report in tables:
            if report.skipped or not report.differences:
                continue
            spec_table = by_name[report.table]
            where = (spec_table.schema_, spec_table.name)
            table = schemas[report.table]
            if where in changed.truncated:
                report.truncated = True
                report.not_checked += [d.key for d in report.differences]
                report.differences = []
                continue
            texts = sorted(changed.keys.get(where, ()), key=lambda k: tuple(map(str, k)))
            touched = set(src.canonical_keys(table, texts))
            kept = []
            for d in report.differences:
                if tuple(d.key[k] for k in table.key) in touched:
                    report.not_checked.append(d.key)
                else:
                    kept.append(d)
            report.differences = kept
