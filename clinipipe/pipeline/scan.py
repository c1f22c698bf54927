"""`clinipipe scan` and the scanners `cdc start` runs on every batch: PHI where it must not be.

What is scanned:

* in the raw schema, every text-like column of a source table that the spec does not classify
  as PHI (`source.tables[].columns`; class ``none`` counts as not PHI): a comments column holding
  an SSN is a leak;
* every column of every table in the schemas declared de-identified (`phi.deidentified_schemas`,
  e.g. ``research``): a date of birth there is a leak.

How: stage 1 inside the warehouse (the detectors' prefilter as regex pushdown: only candidate
rows, and only their matching cells, leave it, as Arrow); stage 2 in Python (`DetectorSet.find`
on those cells). On Snowflake, `SYSTEM$CLASSIFY` also classifies the watched raw tables and the
de-identified ones; a column it recognises as an identifier that the spec does not classify is
a column-level finding.

Guarantees: findings are upserted into `_clinipipe.phi_findings` (a finding seen again moves
its `last_seen`, never duplicates) and hold masked excerpts and offsets only; row keys are the
primary key's values or a keyed pseudonym (`clinipipe.phi.scan`). The CDC scanner never stops or
slows CDC beyond its own work on the batch: its errors are counted and reported, and alerts go
out from a background thread (`clinipipe.phi.alerts`).

Audited: `run_scan` (`clinipipe scan`, run here or by a running `cdc start` for it) appends one
``scan`` entry to the audit log when it writes its findings: counts only (tables, candidate
rows, findings by severity), never a finding, a value or a table's content; outcome ``failed``
(with the error's class) when writing them failed. A scan stopped before it writes (bad options,
a missing key, a read error) changed nothing and records nothing. The CDC scanner's per-batch
findings are not recorded one by one (the CDC run is).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from clinipipe.backup import audit
from clinipipe.phi.scan import (
    ROW_DIGEST,
    CandidateQuery,
    Finding,
    ScanKeyError,
    candidates_in_batch,
    dedupe,
    detect,
    is_text_like,
    lazy_row_keys,
    max_severity,
    reaches,
)
from clinipipe.secrets import environment, first_line, scrub_values
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import Spec, TableSpec
from clinipipe.sql.context import CONTROL_SCHEMA, RESEARCH_README_TABLE, schema_names
from clinipipe.targets import open_target
from clinipipe.targets.base import CdcBatch, Target, TargetError
from clinipipe.targets.metering import CpuClock

if TYPE_CHECKING:
    from clinipipe.phi import DetectorSet
    from clinipipe.phi.alerts import AlertSender
    from clinipipe.source.catalog import ColumnType

DEFAULT_SAMPLE = 10_000
"""Rows per table a scan looks at unless --full (or --sample N) says otherwise."""

CDC_TEXT_TYPES = frozenset({"text", "json", "enum", "other"})
"""Logical source types (`ColumnType.logical`) of the columns the CDC scanner reads: those that
land as text in the warehouse (arrays of them too)."""


class ScanError(Exception):
    """The scan cannot run; `usage` is True when the command line or the spec is at fault."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class ScanOptions:
    """`tables`: only these (any schema); `schema`: only this one (raw or de-identified);
    `sample`: rows per table (None: every row); `fail_on`: None means the spec's."""

    tables: tuple[str, ...] = ()
    schema: str | None = None
    sample: int | None = DEFAULT_SAMPLE
    fail_on: str | None = None
    classify: bool = True


@dataclass(frozen=True)
class TablePlan:
    """One table to scan: which columns, and how its rows are named in findings."""

    schema: str
    table: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    pseudonymize: bool
    deidentified: bool
    classified: tuple[str, ...] = ()
    """Columns the spec classifies as PHI (never reported by SYSTEM$CLASSIFY)."""


@dataclass
class TableResult:
    schema: str
    table: str
    columns: int
    candidate_rows: int = 0
    findings: int = 0
    classified_columns: int = 0
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ScanReport:
    """What one `clinipipe scan` did and found."""

    fail_on: str
    sample: int | None
    tables: list[TableResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """True when a finding reaches `fail_on` (the command exits 3)."""
        return reaches(self.findings, self.fail_on)

    def counts(self) -> dict[str, dict[str, int]]:
        by: dict[str, dict[str, int]] = {"category": {}, "severity": {}}
        for f in self.findings:
            by["category"][f.category] = by["category"].get(f.category, 0) + 1
            by["severity"][f.severity] = by["severity"].get(f.severity, 0) + 1
        return by

    def as_dict(self) -> dict[str, Any]:
        return {
            "fail_on": self.fail_on,
            "failed": self.failed,
            "sample": self.sample,
            "seconds": round(self.seconds, 3),
            "max_severity": max_severity(self.findings),
            "counts": self.counts(),
            "tables": [t.as_dict() for t in self.tables],
            "findings": [f.as_dict() for f in self.findings],
            "notes": self.notes,
        }


# --- which tables and columns --------------------------------------------------------------------


def classified_columns(table: TableSpec) -> set[str]:
    """Columns the spec classifies as PHI (any class but ``none``)."""
    return {c for c, cls in table.columns.items() if cls != "none"}


def hmac_key(loaded: LoadedSpec) -> bytes | None:
    """The HMAC key for row-key pseudonyms (None when `phi.hmac_key_env` is not set)."""
    value = environment(loaded.directory).get(loaded.spec.phi.hmac_key_env, "")
    return value.encode() if value else None


def watched_tables(spec: Spec) -> list[TableSpec]:
    """The source tables `cdc start` scans: `phi.watch`, else all (a table without an
    unclassified text column yields no candidates). Raises `ScanError` (usage) for a watched
    name that is not a source table."""
    by_name = {t.name: t for t in spec.source.tables}
    if spec.phi.watch is None:
        return list(spec.source.tables)
    unknown = [n for n in spec.phi.watch if n not in by_name]
    if unknown:
        raise ScanError(
            f"phi.watch names {', '.join(repr(n) for n in unknown)}, which "
            f"{'is not a source table' if len(unknown) == 1 else 'are not source tables'}; "
            f"source tables: {', '.join(sorted(by_name))}",
            usage=True,
        )
    return [by_name[n] for n in spec.phi.watch]


def plan_scan(loaded: LoadedSpec, target: Target, options: ScanOptions) -> list[TablePlan]:
    """The tables and columns `options` asks for, as the warehouse has them now."""
    spec = loaded.spec
    raw = schema_names(spec)["raw"]
    deidentified = list(dict.fromkeys(spec.phi.deidentified_schemas))
    schemas = [raw, *deidentified]
    if options.schema is not None:
        wanted = options.schema.lower()
        if wanted == "raw":
            wanted = raw.lower()
        matches = [s for s in schemas if s.lower() == wanted]
        if not matches:
            raise ScanError(
                f"schema {options.schema!r} is neither the raw schema ({raw}) nor declared "
                f"de-identified (phi.deidentified_schemas: {', '.join(deidentified) or 'none'})",
                usage=True,
            )
        schemas = matches[:1]
    wanted_tables = {t.lower() for t in options.tables}
    plans: list[TablePlan] = []
    for schema in schemas:
        if schema == raw:
            for t in spec.source.tables:
                if wanted_tables and t.name.lower() not in wanted_tables:
                    continue
                types = target.phi_scan_columns(raw, t.name)
                if not types:
                    continue  # not loaded yet: reported by the caller
                phi = classified_columns(t)
                columns = tuple(n for n, ty in types if n not in phi and is_text_like(ty))
                pseudo = any(k in phi for k in t.primary_key)
                plans.append(TablePlan(raw, t.name, columns, tuple(t.primary_key), pseudo, False,
                                       tuple(sorted(phi))))  # fmt: skip
        else:
            for name in target.phi_scan_table_names(schema):
                if wanted_tables and name.lower() not in wanted_tables:
                    continue
                if name == RESEARCH_README_TABLE:  # clinipipe's own label table, no data
                    continue
                types = target.phi_scan_columns(schema, name)
                key = tuple(target.phi_scan_primary_key(schema, name))
                plans.append(TablePlan(schema, name, tuple(n for n, _ in types), key,
                                       not key, True))  # fmt: skip
    found = {p.table.lower() for p in plans}
    missing = sorted(wanted_tables - found)
    if missing:
        raise ScanError(
            f"no table {', '.join(repr(m) for m in missing)} to scan in "
            f"{', '.join(schemas)} (a source table must be loaded first: `clinipipe backfill`)",
            usage=True,
        )
    return plans


# --- on demand -----------------------------------------------------------------------------------


def _require_findings_table(target: Target) -> None:
    target.require_deployed()
    if not target.table_exists(CONTROL_SCHEMA, "phi_findings"):
        raise TargetError(
            f"{target.describe()} has no {CONTROL_SCHEMA}.phi_findings table: run "
            "`clinipipe deploy` (template 05-phi-scanners)"
        )


def scan_table(
    target: Target,
    detectors: DetectorSet,
    plan: TablePlan,
    *,
    sample: int | None,
    key: bytes | None,
    key_env: str,
    found_by: str = "scan",
    excused: Callable[[Finding, str], bool] | None = None,
) -> tuple[list[Finding], int]:
    """Stage 1 (in the warehouse) and stage 2 of one table: (findings, candidate rows).

    `excused(finding, span text)` drops a finding that is not a leak in the caller's eyes
    (redact: a date the policy keeps)."""
    if not plan.columns:
        return [], 0
    query = CandidateQuery(plan.schema, plan.table, plan.columns, plan.key_columns,
                           detectors.prefilter(), sample)  # fmt: skip
    rows = target.phi_scan_candidates(query)
    if not rows.num_rows:
        return [], 0
    if plan.key_columns:
        named = pa.table({k: rows[f"k{i}"] for i, k in enumerate(plan.key_columns)})
        keys = lazy_row_keys(named, plan.key_columns, pseudonymize=plan.pseudonymize,
                             hmac_key=key, hmac_key_env=key_env)  # fmt: skip
    else:
        keys = lazy_row_keys(rows.select([ROW_DIGEST]), [ROW_DIGEST], pseudonymize=True,
                             hmac_key=key, hmac_key_env=key_env)  # fmt: skip
    cells = {c: rows[f"c{i}"] for i, c in enumerate(plan.columns)}
    findings = detect(detectors, schema=plan.schema, table=plan.table, keys=keys, cells=cells,
                      found_by=found_by)  # fmt: skip
    if excused is not None and findings:
        # every finding's key has been read (by `detect`): only those rows are looked up
        index = {k: i for i, k in sorted(keys.read().items())}

        def span(f: Finding) -> str:
            cell = cells[f.column][index[f.row_key]].as_py()
            return "" if cell is None or f.start is None else str(cell)[f.start : f.end]

        findings = [f for f in findings if not excused(f, span(f))]
    return findings, rows.num_rows


def run_scan(
    loaded: LoadedSpec,
    options: ScanOptions = ScanOptions(),
    *,
    on_table: Callable[[str, int, int], None] | None = None,
    target: Target | None = None,
) -> ScanReport:
    """Scan, record the findings, and report them. `on_table(name, done, total)` reports
    progress. With `target` (an open target, as inside `cdc start`) that connection is used
    and left on the incremental warehouse; else the spec's target is opened and closed. Raises
    `ScanError` (usage) for bad options, `TargetError` when the warehouse cannot be used."""
    from clinipipe.phi import DetectorSet

    started = time.monotonic()
    spec = loaded.spec
    fail_on = options.fail_on or spec.phi.fail_on
    report = ScanReport(fail_on, options.sample)
    detectors = DetectorSet.load(spec.phi)
    key = hmac_key(loaded)
    watched = {t.name for t in watched_tables(spec)}
    with open_target(loaded) if target is None else contextlib.nullcontext(target) as target:
        _require_findings_table(target)
        audit.require(target)
        target.use_warehouse("incremental")
        plans = plan_scan(loaded, target, options)
        raw = schema_names(spec)["raw"]
        loaded_raw = {p.table for p in plans if p.schema == raw}
        if options.schema in (None, "raw", raw):
            for t in spec.source.tables:
                wanted = not options.tables or t.name.lower() in {x.lower() for x in options.tables}
                if wanted and t.name not in loaded_raw:
                    report.notes.append(f"{raw}.{t.name} is not loaded yet; not scanned")
        if any(p.pseudonymize and p.columns for p in plans) and key is None:
            raise ScanError(
                f"set {spec.phi.hmac_key_env} (in the environment or .env next to the spec): "
                "some tables have a PHI key column or no primary key, and their findings name "
                "rows by a keyed pseudonym",
                usage=True,
            )
        now = dt.datetime.now(dt.timezone.utc)
        cpu = CpuClock()  # this thread runs the scan (stage 2 in Python)
        # A scan of every row of every watched table covers every CDC batch applied before it
        # began: it moves the CDC scan mark there (see `CdcScanner`).
        covers_cdc = (
            options.sample is None
            and options.schema in (None, "raw", raw)
            and watched <= {p.table for p in plans if p.schema == raw}
        )
        applied = target.cdc_checkpoint(spec.source.slot) if covers_cdc else None
        for i, plan in enumerate(plans):
            if on_table is not None:
                on_table(f"{plan.schema}.{plan.table}", i, len(plans))
            result = TableResult(plan.schema, plan.table, len(plan.columns))
            try:
                findings, candidates = scan_table(
                    target, detectors, plan, sample=options.sample, key=key,
                    key_env=spec.phi.hmac_key_env,
                )  # fmt: skip
            except ScanKeyError as exc:
                raise ScanError(str(exc), usage=True) from None
            result.candidate_rows = candidates
            if (
                options.classify
                and target.phi_classifies
                and (plan.deidentified or plan.table in watched)
            ):
                try:
                    classified = target.phi_classify(plan.schema, plan.table, plan.classified)
                except TargetError as exc:
                    report.notes.append(f"SYSTEM$CLASSIFY of {plan.schema}.{plan.table}: {exc}")
                    classified = []
                result.classified_columns = len(classified)
                findings += classified
            findings = dedupe(findings)
            result.findings = len(findings)
            report.findings += findings
            report.tables.append(result)
        if on_table is not None:
            on_table("", len(plans), len(plans))
        candidates = sum(t.candidate_rows for t in report.tables)
        with audit.audited(
            target, "scan", spec_digest=loaded.digest,
            objects=[f"{CONTROL_SCHEMA}.phi_findings"], require_log=False,
        ) as entry:  # fmt: skip
            severities = sorted(report.counts()["severity"].items())
            entry.counts = {"tables": len(report.tables), "candidate_rows": candidates,
                            "findings": len(report.findings),
                            **{f"findings_{s}": n for s, n in severities}}  # fmt: skip
            entry.detail = {"fail_on": fail_on, "sample": options.sample,
                            "threshold_reached": report.failed}  # fmt: skip
            if report.findings:
                target.upsert_phi_findings(report.findings, now)
            target.record_phi_scan(now, dt.datetime.now(dt.timezone.utc), candidates, cpu.seconds())
        if applied is not None and target.table_exists(CONTROL_SCHEMA, "phi_scan_marks"):
            target.mark_phi_scanned(spec.source.slot, applied)
    report.seconds = time.monotonic() - started
    return report


# --- continuous: on every CDC batch --------------------------------------------------------------


def _text_like(column_type: ColumnType) -> bool:
    if column_type.logical == "array" and column_type.element is not None:
        return column_type.element.logical in CDC_TEXT_TYPES
    return column_type.logical in CDC_TEXT_TYPES


@dataclass
class CdcScanStats:
    """What the scanners did during one `cdc start`."""

    batches_scanned: int = 0
    candidate_rows: int = 0
    findings: int = 0
    alerts_queued: int = 0
    errors: int = 0
    last_error: str | None = None
    alerts: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CdcScanner:
    """Scans each applied CDC batch of the watched tables (`on_batch`): stage 1 over the
    batch's Arrow columns, stage 2 on the candidates, findings upserted (own connection to the
    warehouse, opened on the first finding), and an alert queued for the background sender.

    `on_batch` never raises: a failure is counted in `stats` and reported through `on_event`
    (type and scrubbed message only). Construct it before CDC starts: configuration problems
    (an unknown watched table, a missing HMAC key or webhook variable) raise `ScanError` there.

    **No batch goes unscanned silently.** CDC confirms a batch before it is scanned (the scan
    never holds the stream back), so a crash in between leaves applied batches unscanned. The
    scanner records how far its scans got (`PhiScan.mark_phi_scanned`, at most once a second
    and at `close`), only ever over an unbroken run of scanned batches: after a failed scan,
    or when `start` found batches applied after the mark, it stops moving the mark. `start`
    reports those batches (with what to run: `clinipipe scan --full`, which moves the mark
    over everything applied when it began).
    """

    def __init__(
        self,
        loaded: LoadedSpec,
        *,
        on_event: Callable[[str], None] | None = None,
        sender: AlertSender | None = None,
    ) -> None:
        from clinipipe.phi import DetectorSet
        from clinipipe.phi.alerts import AlertConfigError
        from clinipipe.phi.alerts import AlertSender as Sender

        self.loaded = loaded
        spec = loaded.spec
        self._on_event = on_event
        self.stats = CdcScanStats()
        self.tables: dict[str, TableSpec] = {t.name: t for t in watched_tables(spec)}
        self.detectors = DetectorSet.load(spec.phi)
        self.prefilter = self.detectors.prefilter()
        self.key = hmac_key(loaded)
        self.schema = schema_names(spec)["raw"]
        needs_key = [t.name for t in self.tables.values()
                     if any(k in classified_columns(t) for k in t.primary_key)]  # fmt: skip
        if needs_key and self.key is None:
            raise ScanError(
                f"set {spec.phi.hmac_key_env}: the primary key of {', '.join(needs_key)} is "
                "classified as PHI, so CDC scan findings name its rows by a keyed pseudonym",
                usage=True,
            )
        self.sender = sender
        if self.sender is None and spec.phi.alerts is not None:
            try:
                self.sender = Sender.from_spec(
                    spec.phi.alerts, environment(loaded.directory), on_event=on_event
                )
            except AlertConfigError as exc:
                raise ScanError(str(exc), usage=True) from None
        self._target: Target | None = None
        self.slot = spec.source.slot
        self._marking = False  # True once `start` found no unscanned batch, until a failure
        self._mark: int | None = None  # scanned through here, not written yet
        self._mark_written = 0.0

    def start(self) -> tuple[int, int | None, int | None]:
        """Before CDC streams: (count, first LSN, last LSN) of the batches applied after the
        scan mark, i.e. never scanned; (0, None, None) when there are none (or nothing is
        watched). Raises `TargetError` when the warehouse lacks the marks table (deploy)."""
        if not self.tables:
            return 0, None, None
        gap = self._warehouse().unscanned_batches(self.slot)
        self._marking = gap[0] == 0
        return gap

    def _scanned(self, lsn: int, *, final: bool) -> None:
        """Every batch through `lsn` was scanned: move the mark (at most once a second)."""
        if not self._marking:
            return
        self._mark = lsn
        if final or time.monotonic() - self._mark_written >= 1.0:
            self._warehouse().mark_phi_scanned(self.slot, lsn)
            self._mark, self._mark_written = None, time.monotonic()

    @property
    def watched(self) -> list[str]:
        return sorted(self.tables)

    def _event(self, message: str) -> None:
        if self._on_event is not None:
            self._on_event(message)

    def _warehouse(self) -> Target:
        if self._target is None:
            target = open_target(self.loaded)
            target.__enter__()
            try:
                _require_findings_table(target)
            except Exception:
                target.__exit__(None, None, None)
                raise
            self._target = target
        return self._target

    def scan_batch(self, batch: CdcBatch) -> list[Finding]:
        """Stage 1 and 2 over the watched tables of `batch` (no writes, no alerts)."""
        findings: list[Finding] = []
        for part in batch.tables:
            table = self.tables.get(part.table.name)
            if table is None:
                continue
            phi = classified_columns(table)
            columns = [c.name for c in part.table.columns
                       if c.name not in phi and _text_like(c.type)]  # fmt: skip
            found = candidates_in_batch(part.changes, columns, self.prefilter)
            if not found:
                continue
            rows = found.pop("__rows__")
            key_columns = list(part.table.primary_key or table.primary_key)
            named = part.changes.take(rows).select(key_columns)
            keys = lazy_row_keys(
                named,
                key_columns,
                pseudonymize=any(k in phi for k in key_columns),
                hmac_key=self.key,
                hmac_key_env=self.loaded.spec.phi.hmac_key_env,
            )
            self.stats.candidate_rows += len(rows)
            findings += detect(self.detectors, schema=self.schema, table=table.name, keys=keys,
                               cells=found, found_by="cdc")  # fmt: skip
        return dedupe(findings)

    def on_batch(self, batch: CdcBatch, *, committed: bool = True) -> list[Finding]:
        """Scan `batch`, record its findings, queue an alert, and (a `committed` batch, not a
        part of a large transaction staged ahead of its batch) move the scan mark. Never
        raises."""
        from clinipipe.phi.alerts import alert_for

        try:
            findings = self.scan_batch(batch)
            self.stats.batches_scanned += 1
            if not findings:
                if committed:
                    self._scanned(batch.end_lsn, final=False)
                return []
            self.stats.findings += len(findings)
            alerts = self.loaded.spec.phi.alerts
            if self.sender is not None and alerts is not None:
                from clinipipe.source.pgoutput import lsn_to_str

                alert = alert_for(
                    findings, self.loaded.spec.name, alerts.min_severity, found_by="cdc",
                    context={"slot": batch.slot, "end_lsn": lsn_to_str(batch.end_lsn),
                             "transactions": len(batch.commit_times)},
                )  # fmt: skip
                if alert is not None:
                    self.stats.alerts_queued += 1
                    self.sender.send(alert)  # before the write: an alert must not wait on it
            self._warehouse().upsert_phi_findings(findings, dt.datetime.now(dt.timezone.utc))
            if committed:
                self._scanned(batch.end_lsn, final=False)
            return findings
        except Exception as exc:
            self._marking = False  # this batch stays after the mark: reported next start
            self.stats.errors += 1
            reason = scrub_values(first_line(exc))
            self.stats.last_error = f"{type(exc).__name__}: {reason}"[:300]
            self._event(f"PHI scan of a CDC batch failed ({self.stats.last_error}); CDC goes on")
            return []

    def close(self) -> CdcScanStats:
        """Let queued alerts go out (bounded wait), close the connection; the final stats."""
        if self.sender is not None:
            self.stats.alerts = self.sender.close().as_dict()
        if self._mark is not None:
            try:
                self._scanned(self._mark, final=True)
            except Exception as exc:  # the batches after the old mark are reported next start
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {scrub_values(first_line(exc))}"
        if self._target is not None:
            self._target.__exit__(None, None, None)
            self._target = None
        return self.stats
