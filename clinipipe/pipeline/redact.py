"""`clinipipe redact`: de-identified research datasets built from the raw tables.

Every table of the spec (or of `--tables`) becomes `<research schema>.<table>`, column by column
as its PHI classification and the policy say (`clinipipe.phi.safe_harbor`). Structured columns
are transformed by SQL inside the warehouse; free-text columns move as Arrow batches through the
detectors (`clinipipe.phi.redact_text`), with each note's own patient's identifiers for record
linkage, or, on Snowflake with `ai_redact`, through AI_REDACT in the warehouse.

Guarantees:

* **Never a raw PHI column.** A research table holds only the plan's output columns; a raw value
  of a classified column reaches it only where the policy keeps that class (a Limited Data Set
  keeps dates, city, ZIP and ages). Notes are read raw only to be redacted in the same step.
* **Atomic.** On DuckDB every rebuilt table, its state row, the README rows, the metering row
  and the audit manifest commit in one transaction: the research schema moves from one complete
  state to the next, never a half-built table recorded as done. (Snowflake: each table is
  built under a temporary name and swapped in atomically; the records follow in one
  transaction; a crash in between makes the next run rebuild that table.)
* **Incremental.** A table is rebuilt only when its fingerprint changed: the policy and its
  version, the table's columns and treatments, the key id (never the key), the as-of date (for
  tables with birth dates), the restricted ZIP3 list (for ZIP3 columns), the notes' settings
  and detector rules, template 06, and a digest of every row of its raw table computed in SQL
  (plus of the patients table for notes, whose identifiers feed record linkage). Rerunning
  with nothing changed rebuilds nothing and records a manifest saying so.
* **Idempotent.** The same raw data, key, policy and as-of date give the same research rows.
* **Auditable.** Each run appends a manifest to `_clinipipe.audit_log` (`clinipipe.backup.
  audit`): policy, version, schema, per table the action, row count, columns and treatments.
  It holds no value and nothing derived from the key but its id.
* **Fail closed.** A column the spec neither classifies nor releases is never copied as it is
  (`clinipipe.phi.safe_harbor.plan_table`): text goes through the detectors like a note, dates
  become their year, other types are dropped. Only `release:` columns are copied as they are,
  and the manifest marks them.
* **Gated by its own scan.** After the build, every row of every research table of the run
  (rebuilt or skipped) is scanned by the PHI scanners (stage 1 in the warehouse, stage 2 the
  detectors; on Snowflake SYSTEM$CLASSIFY too), in each column whose values come from the
  source (`scanned_columns`: released columns and redacted text; pseudonyms, years and ZIP3s
  are generated). Findings of categories the policy keeps (dates, cities, ZIPs and ages of a
  Limited Data Set; shifted dates) are not counted; the others are recorded in
  `_clinipipe.phi_findings` with masked excerpts only. The outcome is appended to the audit log
  (``redact_scan``: counts, never values), the README label of each table says whether it
  passed, and `RedactResult.clean` is False when a finding reaches `phi.fail_on`: the CLI
  then exits 3 and does not call the dataset de-identified.
* **No secrets, no PHI in messages.** The key is read from the environment variable named by
  `phi.hmac_key_env` and only handed to the warehouse session (a temporary table); errors
  name the variable, never the key, and never quote row values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinipipe import __version__
from clinipipe.backup import audit
from clinipipe.phi.safe_harbor import (
    POLICIES,
    POLICY_INFO,
    POLICY_VERSION,
    RedactionKey,
    RedactionKeyError,
    TablePlan,
    Treatment,
    known_identifier_columns,
    patient_table,
    plan_table,
    text_keeps,
)
from clinipipe.phi.scan import Finding
from clinipipe.pipeline.scan import ScanReport, scan_table
from clinipipe.pipeline.scan import TablePlan as ScanTablePlan
from clinipipe.secrets import environment
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import RESEARCH_README_TABLE, schema_names
from clinipipe.targets import open_target
from clinipipe.targets.base import ResearchBuild, Target, TargetError
from clinipipe.targets.metering import CpuClock, MeteringRow
from clinipipe.targets.redact_sql import HELPER_PREFIX, SHIFT_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa

    from clinipipe.phi import DetectorSet
    from clinipipe.targets.redact_sql import RedactSql

__all__ = [
    "FinalScan",
    "RedactError",
    "RedactOptions",
    "RedactResult",
    "TableResult",
    "export_research",
    "final_scan",
    "redact",
]

TEMPLATE = "06-redaction.sql"


class RedactError(Exception):
    """The redaction cannot run; `usage` when the request itself is wrong (exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class RedactOptions:
    policy: str
    schema: str | None = None
    """Output schema (default: the spec's `phi.research_schema`)."""
    tables: Sequence[str] | None = None
    """Only these spec tables (default: all)."""
    surrogates: bool = False
    """Notes: consistent keyed surrogates instead of [CATEGORY] tags."""
    as_of: dt.date | None = None
    """The date ages are computed at (default: today, UTC)."""
    ai_redact: bool = False
    """Snowflake: notes through AI_REDACT in the warehouse (plus the MRN rule)."""


@dataclass(frozen=True)
class TableResult:
    table: str
    action: str  # rebuilt | skipped
    rows: int
    columns: tuple[dict[str, object], ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "table": self.table,
            "action": self.action,
            "rows": self.rows,
            "columns": list(self.columns),
        }


@dataclass(frozen=True)
class RedactResult:
    policy: str
    schema: str
    label: str
    as_of: dt.date
    tables: tuple[TableResult, ...]
    audit_seq: int | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    scan: FinalScan | None = None

    @property
    def clean(self) -> bool:
        """True when the final scan found nothing at or above `phi.fail_on`."""
        return self.scan is not None and not self.scan.report.failed

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "policy_version": POLICY_VERSION,
            "schema": self.schema,
            "label": self.label,
            "as_of": self.as_of.isoformat(),
            "tables": [t.as_dict() for t in self.tables],
            "rebuilt": [t.table for t in self.tables if t.action == "rebuilt"],
            "skipped": [t.table for t in self.tables if t.action == "skipped"],
            "audit_seq": self.audit_seq,
            "clean": self.clean,
            "final_scan": self.scan.as_dict() if self.scan is not None else None,
        }


@dataclass(frozen=True)
class FinalScan:
    """Redact's own scan of the research tables it produced. `report.findings` holds only the
    findings the policy does not allow (`ignored`: how many allowed ones were left out, e.g.
    dates in a Limited Data Set); `audit_seq`: its ``redact_scan`` audit entry."""

    report: ScanReport
    ignored: int
    audit_seq: int | None

    def as_dict(self) -> dict[str, object]:
        return {**self.report.as_dict(), "ignored_allowed": self.ignored,
                "audit_seq": self.audit_seq}  # fmt: skip


# --- entry point ---------------------------------------------------------------------------------


def redact(
    loaded: LoadedSpec, options: RedactOptions, *, target: Target | None = None
) -> RedactResult:
    """Build (or bring up to date) the research dataset; see the module docstring."""
    spec = loaded.spec
    if options.policy not in POLICIES:
        raise RedactError(
            f"unknown policy {options.policy!r}; choose one of {', '.join(POLICIES)}", usage=True
        )
    schemas = schema_names(spec)
    schema = options.schema or spec.phi.research_schema
    reserved = {schemas[r].lower() for r in ("raw", "derived", "serving", "control")}
    if schema.lower() in reserved or not schema.replace("_", "a").isalnum():
        raise RedactError(
            f"--to {schema!r}: the research schema must be a plain name other than the raw, "
            "derived, serving and control schemas",
            usage=True,
        )
    tables = _selected_tables(loaded, options.tables)
    if options.ai_redact and spec.target.type != "snowflake":
        raise RedactError("--ai-redact needs a Snowflake target (AI_REDACT)", usage=True)
    if options.ai_redact and options.policy == "shifted":
        raise RedactError(
            "--policy shifted moves the dates inside notes, which AI_REDACT cannot do: leave "
            "the notes out (--tables) or use another policy",
            usage=True,
        )
    if spec.target.type == "snowflake" and not options.ai_redact:
        notes = [
            f"{t.name}.{c}"
            for t in spec.source.tables
            if t.name in tables
            for c, cls in t.columns.items()
            if cls == "free_text"
        ]
        if notes:
            raise RedactError(
                f"free text ({', '.join(notes)}) on Snowflake is redacted in the warehouse: add "
                "--ai-redact, or leave those tables out with --tables",
                usage=True,
            )
    try:
        key = RedactionKey.from_environment(spec.phi.hmac_key_env, environment(loaded.directory))
    except RedactionKeyError as exc:
        raise RedactError(str(exc)) from None
    as_of = options.as_of or dt.datetime.now(dt.timezone.utc).date()
    if target is None:
        with open_target(loaded) as opened:
            return _redact(loaded, opened, options, schema, tables, key, as_of)
    return _redact(loaded, target, options, schema, tables, key, as_of)


def export_research(loaded: LoadedSpec, schema: str, path: Path) -> dict[str, int]:
    """`redact --export FILE`: copy the research schema `schema`, and nothing else, into a new
    DuckDB file at `path` (atomically replaced), so a researcher can be given a file with no
    PHI in it: DuckDB has no roles, its access boundary is the file. The CLI calls this only
    after a clean final scan. DuckDB targets only (on Snowflake, grant the research schema to
    a role: `access.roles`); the warehouse must not be held by a running `cdc start`.
    Returns rows per exported table."""
    if loaded.spec.target.type != "duckdb":
        raise RedactError(
            "--export writes a DuckDB file and needs a DuckDB target; on Snowflake give "
            "researchers a role that reads only the research schema (access.roles)",
            usage=True,
        )
    if path.suffix != ".duckdb":
        raise RedactError(f"--export {path}: the file name must end in .duckdb", usage=True)
    warehouse = loaded.resolve(loaded.spec.target.path)  # type: ignore[union-attr]
    if path.resolve() == warehouse.resolve():
        raise RedactError("--export must name a new file, not the warehouse itself", usage=True)
    if not path.parent.is_dir():
        raise RedactError(f"--export {path}: folder {path.parent} does not exist", usage=True)
    from clinipipe.targets.duckdb.redact import DuckDBRedaction

    try:
        # read-write: DuckDB attaches the new file with the warehouse's access mode
        with open_target(loaded) as target:
            assert isinstance(target, DuckDBRedaction)
            return target.export_schema(schema, path)
    except TargetError as exc:
        raise RedactError(str(exc)) from None


def _selected_tables(loaded: LoadedSpec, wanted: Sequence[str] | None) -> list[str]:
    known = {t.name.lower(): t.name for t in loaded.spec.source.tables}
    if not wanted:
        return list(known.values())
    names = [n.strip() for w in wanted for n in w.split(",") if n.strip()]
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise RedactError(
            f"no table named {', '.join(map(repr, unknown))} in the spec; tables: "
            f"{', '.join(known.values())}",
            usage=True,
        )
    return list(dict.fromkeys(known[n.lower()] for n in names))


def _template_digest(loaded: LoadedSpec, target: Target) -> str:
    """The digest of template 06 as rendered now; the target must have it deployed (the
    macros/functions the SQL calls come from it)."""
    from clinipipe.sql.render import render

    rendered = next(f for f in render(loaded, target.dialect) if f.name == TEMPLATE)
    if target.deployed_digests().get(TEMPLATE) != rendered.digest:
        raise TargetError(
            f"{target.describe()} does not have the current redaction functions ({TEMPLATE}): "
            "run `clinipipe deploy` first"
        )
    return rendered.digest


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _redact(
    loaded: LoadedSpec,
    target: Target,
    options: RedactOptions,
    schema: str,
    tables: list[str],
    key: RedactionKey,
    as_of: dt.date,
) -> RedactResult:
    spec = loaded.spec
    info = POLICY_INFO[options.policy]
    target.require_deployed()
    template = _template_digest(loaded, target)
    states = target.redaction_states(schema)
    others = sorted({s.policy for s in states.values()} - {options.policy})
    if others:
        raise RedactError(
            f"schema {schema!r} holds a {others[0]} dataset; a {options.policy} dataset must "
            "not be mixed into it: write it to another schema (--to) or drop that one first",
            usage=True,
        )
    absent = set(target.missing_raw_tables())
    missing = [t for t in tables if t in absent]
    if missing:
        raise RedactError(
            f"raw table(s) {', '.join(missing)} do not exist yet: run `clinipipe backfill` first"
        )
    target.use_warehouse("initialization")
    sql = target.redact_sql()
    patients = patient_table(spec)
    by_name = {t.name: t for t in spec.source.tables}
    plans: dict[str, TablePlan] = {
        name: plan_table(spec, by_name[name], options.policy, target.redaction_columns(name))
        for name in tables
    }
    if target.type == "snowflake" and not options.ai_redact:
        text = [f"{n}.{c}" for n, p in plans.items() for c in p.notes]
        if text:
            raise RedactError(
                f"text columns the spec neither classifies nor releases ({', '.join(text)}) are "
                "scrubbed like notes, which on Snowflake happens in the warehouse: add "
                "--ai-redact, release the columns that hold no PHI (`release:` in the spec), "
                "or leave those tables out with --tables",
                usage=True,
            )
    notes = any(p.notes for p in plans.values())
    known = known_identifier_columns(spec) if notes else {}
    raw_fingerprints: dict[str, str] = {}

    def raw_fingerprint(name: str) -> str:
        if name not in raw_fingerprints:
            columns = [n for n, _ in target.redaction_columns(name)]
            raw_fingerprints[name] = target.redaction_fingerprint(name, columns)
        return raw_fingerprints[name]

    builds: list[ResearchBuild] = []
    fingerprints: dict[str, str] = {}
    for name in tables:
        plan = plans[name]
        inputs: dict[str, object] = {
            "policy": options.policy,
            "version": POLICY_VERSION,
            "template": template,
            "columns": [
                (c.name, c.phi_class, c.treatment.value, c.data_type) for c in plan.columns
            ],
            "key_id": key.key_id,
            "raw": raw_fingerprint(name),
        }
        if plan.needs_as_of:
            inputs["as_of"] = as_of.isoformat()
        if any(c.treatment is Treatment.ZIP3 for c in plan.columns):
            inputs["restricted_zip3"] = list(spec.phi.restricted_zip3)
        if plan.notes:
            inputs["notes"] = {
                "surrogates": options.surrogates,
                "ai_redact": options.ai_redact,
                "rules": spec.phi.model_dump(mode="json"),
                "clinipipe": __version__,
                "patients": (
                    raw_fingerprint(patients.name)
                    if patients and known and plan.patient_key is not None
                    else None
                ),
            }
        fingerprint = _digest(inputs)
        fingerprints[name] = fingerprint
        state = states.get(name)
        if (
            state is not None
            and state.fingerprint == fingerprint
            and target.table_exists(schema, name)
        ):
            continue
        raw_table = target.raw_name(name)  # type: ignore[attr-defined]
        comment = f"clinipipe redact --policy {options.policy}: {info.label}"
        if not plan.notes:
            builds.append(
                ResearchBuild(
                    schema, name, sql.select_sql(plan, raw_table, _as_of(sql, as_of)), comment
                )
            )
            continue
        if options.ai_redact:
            builds.append(
                ResearchBuild(
                    schema,
                    name,
                    sql.ai_redact_sql(plan, raw_table, _as_of(sql, as_of)),  # type: ignore[attr-defined]
                    comment,
                )
            )
            continue
        linked = patients is not None and plan.patient_key is not None and bool(known)
        reader = sql.reader_sql(
            plan,
            raw_table,
            _as_of(sql, as_of),
            target.raw_name(patients.name) if linked and patients else None,  # type: ignore[attr-defined]
            patients.primary_key[0] if linked and patients else None,
            known if linked else {},
            shift_text=options.policy == "shifted",
        )
        transform = _notes_transform(loaded, plan, known if linked else {}, options, key)
        builds.append(ResearchBuild(schema, name, reader, comment, transform))

    started = dt.datetime.now(dt.timezone.utc)
    cpu = CpuClock()  # this thread builds the research tables (`finish` runs in it too)
    warehouse = loaded.spec.warehouses.initialization
    rebuilt = {b.table for b in builds}
    holder: dict[str, Any] = {}

    def finish(counts: dict[str, int]) -> list[str]:
        results = []
        for name in tables:
            rows = counts[name] if name in counts else states[name].rows
            results.append(
                TableResult(
                    name,
                    "rebuilt" if name in rebuilt else "skipped",
                    rows,
                    tuple(c.as_dict() for c in plans[name].columns),
                )
            )
        manifest = {
            "policy": options.policy,
            "policy_version": POLICY_VERSION,
            "label": info.label,
            "requires_data_use_agreement": info.requires_dua,
            "safe_harbor": info.safe_harbor,
            "clinipipe": __version__,
            "schema": schema,
            "as_of": as_of.isoformat(),
            "key_id": key.key_id,
            "surrogates": options.surrogates,
            "ai_redact": options.ai_redact,
            "tables": [r.as_dict() for r in results],
        }
        statements, entry = audit.entry_statements(target, "redact", schema, manifest)
        holder.update(results=results, manifest=manifest, entry=entry)
        ended = dt.datetime.now(dt.timezone.utc)
        return [
            *_state_sql(target, schema, options.policy, counts, fingerprints, ended),
            *_readme_sql(target, schema, options.policy, info.label, counts, ended),
            target.metering_insert_sql(
                MeteringRow(
                    job=f"redact:{schema}",
                    warehouse=warehouse.name,
                    warehouse_role="initialization",
                    size=warehouse.size,
                    started_at=started,
                    ended_at=ended,
                    rows=sum(counts.values()),
                    nbytes=None,
                    cpu_seconds=cpu.seconds(),
                )
            ),
            *statements,
        ]

    target.prepare_research_schema(schema, RESEARCH_README_TABLE)
    target.build_research_tables(builds, key, finish)
    entry = holder["entry"]
    if not audit.head_is(target, entry):
        raise TargetError("the audit log moved while redacting: run `clinipipe redact` again")
    scanned = {name: scanned_columns(plan, surrogates=options.surrogates)
               for name, plan in plans.items()}  # fmt: skip
    scan = final_scan(
        loaded, target, schema, tables, options.policy, key, scanned, manifest_seq=entry.seq
    )
    return RedactResult(
        options.policy,
        schema,
        info.label,
        as_of,
        tuple(holder["results"]),
        entry.seq,
        holder["manifest"],
        scan,
    )


def scanned_columns(plan: TablePlan, *, surrogates: bool = False) -> list[str]:
    """The research columns of `plan` whose values come from the source and so could hold PHI:
    released columns and redacted text. Not the values redact generates (pseudonyms, years,
    ages, ZIP3s: fixed formats), not classified columns a policy keeps on purpose (the city,
    ZIP and dates of a Limited Data Set), and not text redacted with `surrogates` (realistic
    fakes by design, which any scan would report)."""
    return [
        c.name
        for c in plan.output
        if c.released or (c.treatment is Treatment.TEXT and not surrogates)
    ]


def _scan_research_table(
    target: Target,
    detectors: DetectorSet,
    allowed: DetectorSet | None,
    plan: ScanTablePlan,
    key: RedactionKey,
    key_env: str,
) -> tuple[list[Finding], int]:
    """`clinipipe.pipeline.scan.scan_table` over every row (stage 1 in the warehouse, stage 2
    here), then, when the policy keeps categories in text (`allowed`: their detectors), a
    finding whose whole span those detectors find too is left out: a date the policy keeps
    (shifted, or in a Limited Data Set) that another detector also claims ("October 8, 2026"
    read as a name) is the kept date, not a leak. (findings, candidate rows)."""
    excused = None
    if allowed is not None:
        categories = {d.category for d in allowed.detectors}

        def excused(finding: Finding, span: str) -> bool:
            return finding.category not in categories and bool(span) and _covered(allowed, span)

    return scan_table(
        target, detectors, plan, sample=None, key=key.raw, key_env=key_env, found_by="redact",
        excused=excused,
    )  # fmt: skip


def _covered(allowed: DetectorSet, span: str) -> bool:
    """True when the detectors `allowed` find spans covering every letter and digit of
    `span` (looked at on its own)."""
    found = allowed.find([span])
    covered = [False] * len(span)
    for start, end in zip(found["start"].to_pylist(), found["end"].to_pylist(), strict=True):
        covered[start:end] = [True] * (end - start)
    return all(c or not ch.isalnum() for ch, c in zip(span, covered, strict=True))


NOT_RELEASED_LABEL = (
    "NOT de-identified: redact's final PHI scan found PHI in this table (see "
    "_clinipipe.phi_findings); fix the spec and run clinipipe redact again"
)
"""The README label of a research table whose final scan failed."""


def final_scan(
    loaded: LoadedSpec,
    target: Target,
    schema: str,
    tables: Sequence[str],
    policy: str,
    key: RedactionKey,
    columns: Mapping[str, Sequence[str]] | None = None,
    *,
    manifest_seq: int | None = None,
) -> FinalScan:
    """Scan every row of every column of `schema.<table>` for each of `tables` (what redact
    just produced), as `clinipipe scan --schema <schema> --full` would, and record the outcome.

    `columns[table]`: the columns to scan (default: all; `scanned_columns` gives those whose
    values come from the source: the others hold values redact generated, such as pseudonyms
    and years), except that Snowflake's classifier looks at the whole table. Findings of
    the categories `policy` keeps in text (`text_keeps`) are left out; the others are upserted
    into `_clinipipe.phi_findings` (masked excerpts, rows named by keyed pseudonyms),
    each table's README label says whether it passed (`NOT_RELEASED_LABEL` if not), and a
    ``redact_scan`` audit entry records the counts (never a value)."""
    from clinipipe.phi import DetectorSet
    from clinipipe.phi.scan import dedupe, reaches
    from clinipipe.pipeline.scan import TablePlan as ScanPlan
    from clinipipe.pipeline.scan import TableResult as ScanTable

    started_clock = time.monotonic()
    spec = loaded.spec
    allowed = text_keeps(policy)
    report = ScanReport(spec.phi.fail_on, None)
    detectors = DetectorSet.load(spec.phi)
    allowed_detectors = (
        DetectorSet(tuple(d for d in detectors.detectors if d.category in allowed))
        if allowed
        else None
    )
    target.use_warehouse("incremental")
    started = dt.datetime.now(dt.timezone.utc)
    cpu = CpuClock()
    candidates = ignored = 0
    for name in tables:
        present = [n for n, _ in target.phi_scan_columns(schema, name)]
        wanted = set(present if columns is None else columns.get(name, ()))
        scan_columns = tuple(n for n in present if n in wanted)
        skip = tuple(n for n in present if n not in wanted)
        primary_key = tuple(target.phi_scan_primary_key(schema, name))
        plan = ScanPlan(schema, name, scan_columns, primary_key, not primary_key, True)
        result = ScanTable(schema, name, len(scan_columns))
        findings, result.candidate_rows = _scan_research_table(
            target, detectors, allowed_detectors, plan, key, spec.phi.hmac_key_env
        )
        candidates += result.candidate_rows
        if target.phi_classifies:
            try:
                classified = target.phi_classify(schema, name, skip)
            except TargetError as exc:
                report.notes.append(f"SYSTEM$CLASSIFY of {schema}.{name}: {exc}")
                classified = []
            result.classified_columns = len(classified)
            findings += classified
        counted = [f for f in dedupe(findings) if f.category not in allowed]
        ignored += len(findings) - len(counted)
        result.findings = len(counted)
        report.findings += counted
        report.tables.append(result)
    ended = dt.datetime.now(dt.timezone.utc)
    if report.findings:
        target.upsert_phi_findings(report.findings, ended)
    target.record_phi_scan(started, ended, candidates, cpu.seconds())
    failed_tables = sorted({f.table for f in report.findings if reaches([f], report.fail_on)})
    label = POLICY_INFO[policy].label
    q = target.dialect.quote_literal
    readme = target.research_table(schema, RESEARCH_README_TABLE)
    target.execute_atomically(
        [
            f"UPDATE {readme} SET label = "
            f"{q(NOT_RELEASED_LABEL if name in failed_tables else label)} "
            f"WHERE table_name = {q(name)}"
            for name in tables
        ]
    )
    counts = report.counts()
    entry = audit.record(
        target,
        "redact_scan",
        schema,
        {
            "policy": policy,
            "manifest_seq": manifest_seq,
            "tables": list(tables),
            "fail_on": report.fail_on,
            "clean": not report.failed,
            "findings": len(report.findings),
            "by_category": counts["category"],
            "by_severity": counts["severity"],
            "failed_tables": failed_tables,
            "ignored_allowed": ignored,
            "scanned_columns": {t.table: t.columns for t in report.tables},
            "candidate_rows": candidates,
        },
    )
    report.seconds = time.monotonic() - started_clock
    return FinalScan(report, ignored, entry.seq)


def _as_of(sql: RedactSql, as_of: dt.date) -> str:
    return sql.dialect.quote_literal(as_of.isoformat())


def _state_sql(
    target: Target,
    schema: str,
    policy: str,
    counts: dict[str, int],
    fingerprints: dict[str, str],
    at: dt.datetime,
) -> list[str]:
    q = target.dialect.quote_literal
    table = target.control("redaction_state")
    out = []
    for name, rows in counts.items():
        out.append(
            f"DELETE FROM {table} WHERE schema_name = {q(schema)} AND table_name = {q(name)}"
        )
        out.append(
            f"INSERT INTO {table} (schema_name, table_name, policy, fingerprint, rows_written, "
            f"built_at) VALUES ({q(schema)}, {q(name)}, {q(policy)}, {q(fingerprints[name])}, "
            f"{int(rows)}, {q(at.isoformat())})"
        )
    return out


def _readme_sql(
    target: Target, schema: str, policy: str, label: str, counts: dict[str, int], at: dt.datetime
) -> list[str]:
    q = target.dialect.quote_literal
    table = target.research_table(schema, RESEARCH_README_TABLE)
    out = []
    for name, rows in counts.items():
        out.append(f"DELETE FROM {table} WHERE table_name = {q(name)}")
        out.append(
            f"INSERT INTO {table} (table_name, policy, label, policy_version, rows_written, "
            f"built_at) VALUES ({q(name)}, {q(policy)}, {q(label)}, {q(POLICY_VERSION)}, "
            f"{int(rows)}, {q(at.isoformat())})"
        )
    return out


# --- notes ---------------------------------------------------------------------------------


def _notes_transform(
    loaded: LoadedSpec,
    plan: TablePlan,
    known: dict[str, str],
    options: RedactOptions,
    key: RedactionKey,
) -> Any:
    """The per-batch function that replaces each raw note column by its redacted text and
    leaves the helper columns out."""
    import pyarrow as pa

    from clinipipe.phi import DetectorSet
    from clinipipe.phi.redact_text import redact_notes

    detectors = DetectorSet.load(loaded.spec.phi)
    keep = text_keeps(options.policy)
    shift = options.policy == "shifted"

    def transform(batch: pa.RecordBatch) -> pa.RecordBatch:
        names = batch.schema.names
        known_table = None
        if known:
            known_table = pa.table({c: batch.column(names.index(HELPER_PREFIX + c)) for c in known})
        days = batch.column(names.index(SHIFT_COLUMN)) if shift and SHIFT_COLUMN in names else None
        # shifted, but no patient link: dates cannot be shifted, so they are tagged
        kept = keep - {"DATE"} if shift and days is None else keep
        columns, fields = [], []
        for i, name in enumerate(names):
            if name.startswith(HELPER_PREFIX):
                continue
            column = batch.column(i)
            if name in plan.notes:
                column = redact_notes(
                    detectors,
                    column,
                    known_table,
                    known,
                    surrogates=options.surrogates,
                    key=key.raw,
                    keep=kept,
                    shift_days=days,
                ).cast(pa.string())
            columns.append(column)
            fields.append(pa.field(name, column.type))
        return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))

    return transform
