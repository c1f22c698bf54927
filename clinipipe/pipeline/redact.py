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
* **No secrets, no PHI in messages.** The key is read from the environment variable named by
  `phi.hmac_key_env` and only handed to the warehouse session (a temporary table); errors
  name the variable, never the key, and never quote row values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from clinipipe.secrets import environment
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import RESEARCH_README_TABLE, schema_names
from clinipipe.targets import open_target
from clinipipe.targets.base import Target, TargetError
from clinipipe.targets.duckdb_redact import HELPER_PREFIX, SHIFT_COLUMN, ResearchBuild

if TYPE_CHECKING:
    import pyarrow as pa

    from clinipipe.targets.duckdb_redact import RedactSql

__all__ = ["RedactError", "RedactOptions", "RedactResult", "TableResult", "redact"]

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
        }


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

    rendered = next(f for f in render(loaded, target.type) if f.name == TEMPLATE)
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
    notes = any("free_text" in by_name[t].columns.values() for t in tables)
    known = known_identifier_columns(spec) if notes else {}
    plans: dict[str, TablePlan] = {}
    raw_fingerprints: dict[str, str] = {}

    def raw_fingerprint(name: str) -> str:
        if name not in raw_fingerprints:
            columns = [n for n, _ in target.redaction_columns(name)]
            raw_fingerprints[name] = target.redaction_fingerprint(name, columns)
        return raw_fingerprints[name]

    builds: list[ResearchBuild] = []
    fingerprints: dict[str, str] = {}
    for name in tables:
        plan = plan_table(spec, by_name[name], options.policy, target.redaction_columns(name))
        plans[name] = plan
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
                "patients": raw_fingerprint(patients.name) if patients and known else None,
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
            _metering_sql(target, loaded, schema, sum(counts.values()), started, ended),
            *statements,
        ]

    target.prepare_research_schema(schema, RESEARCH_README_TABLE)
    target.build_research_tables(builds, key, finish)
    entry = holder["entry"]
    if not audit.head_is(target, entry):
        raise TargetError("the audit log moved while redacting: run `clinipipe redact` again")
    return RedactResult(
        options.policy,
        schema,
        info.label,
        as_of,
        tuple(holder["results"]),
        entry.seq,
        holder["manifest"],
    )


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


def _metering_sql(
    target: Target,
    loaded: LoadedSpec,
    schema: str,
    rows: int,
    started: dt.datetime,
    ended: dt.datetime,
) -> str:
    q = target.dialect.quote_literal
    warehouse = loaded.spec.warehouses.initialization
    return (
        f"INSERT INTO {target.control('metering')} (job_id, job, warehouse, warehouse_role, "
        "size, started_at, ended_at, rows_processed, bytes_processed) VALUES "
        f"({q(uuid.uuid4().hex)}, {q(f'redact:{schema}')}, {q(warehouse.name)}, "
        f"'initialization', {q(warehouse.size)}, {q(started.isoformat())}, "
        f"{q(ended.isoformat())}, {int(rows)}, NULL)"
    )


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
