"""`clinipipe deploy`: apply the rendered templates in order, idempotently, and record it.

A template runs again only when its rendered text changed since its last successful
deployment (digests kept in `_clinipipe.deployed_templates`), so a second deploy of the same
spec runs no statement at all. Templates that need the raw tables (Snowflake dynamic and
interactive tables) wait until `clinipipe backfill` created them and are reported as deferred.

Fail closed on names: before anything is planned (a dry run included), every column name the
spec writes is checked against the source catalog (`check_source_columns`); an unknown one is a
spec error at its file:line:col with a did-you-mean (exit 2), since a misspelled classification
would leave the real column unclassified.

Source objects are verified, not assumed (`verify_source_objects`): a template recorded as
deployed does not prove that its publication still exists. A publication dropped on the source,
or a spec table missing from it, puts the source templates (idempotent) back into the plan, so
deploy recreates the publication with the spec's tables and says so (`DeployPlan.source_repairs`).
A slot that a backfill created and that is gone (or lost its WAL) cannot be recreated without
skipping changes: deploy names it and the commands that reload (`DeployPlan.source_problems`;
the CLI exits 1 after deploying the rest); it never creates a slot.

Dynamic tables' queries are bound by the warehouse itself before anything is applied
(`bind_dynamic_tables`; DuckDB: DESCRIBE against stand-ins of the raw tables as the backfill will
create them, so this works before the first backfill). A query naming a column or table that
does not exist is a spec error (exit 2) at the `sql` of that dynamic table in the spec, naming
the dynamic table and the column (identifiers are not PHI; binding reads no rows). The target
is left untouched; the source templates (idempotent: checks, the publication) have run. Not done
by `--dry-run`, which opens the warehouse read-only. Snowflake binds a dynamic table's query itself
when deploy creates it.

Drift is planned, not hidden (`DeployPlan.changes`): templates create objects IF NOT EXISTS, so
a changed lag, query, size or retention would re-run as a no-op. The target compares the spec
with the objects it has (`Deployment.plan_changes`: object, attribute, old -> new, the ALTER or
CREATE OR REPLACE that applies it, and which changes rebuild data on which warehouse);
`--dry-run` shows them, deploy applies them after the templates. `check_privileges` (deploy
--check) lists what the deploying and pipeline roles lack, before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clinipipe.backup import audit
from clinipipe.source.catalog import (
    CatalogError,
    ColumnNameClash,
    TableSchema,
    introspect_table,
)
from clinipipe.source.columns_check import SourceColumns, source_columns
from clinipipe.source.objects import inspect_source_objects
from clinipipe.source.postgres import SourceError, apply_source_files, connect
from clinipipe.source.privileges import inspect_source_privileges
from clinipipe.spec.checks import dynamic_table_order
from clinipipe.spec.errors import Problem, SpecError
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.loader import check_source_columns as check_spec_columns
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.render import RenderedFile, confirmations_needed, render
from clinipipe.targets import DeploymentRecord, Target, dialect_of, open_target
from clinipipe.targets.capabilities.deployment import MissingPrivilege, ObjectChange
from clinipipe.targets.capabilities.refresh import QueryBindError


@dataclass(frozen=True)
class SourceRepair:
    """A source object deploy found missing and recreates: `problem` (what is wrong), `fix`
    (what deploy will do) and `fixed` (what it did), for messages; no values."""

    problem: str
    fix: str
    fixed: str


@dataclass
class DeployPlan:
    """What a deployment would do, template by template."""

    target: str
    to_run: list[RenderedFile] = field(default_factory=list)
    up_to_date: list[RenderedFile] = field(default_factory=list)
    deferred: list[tuple[RenderedFile, str]] = field(default_factory=list)
    reference_only: list[RenderedFile] = field(default_factory=list)
    source_repairs: list[SourceRepair] = field(default_factory=list)
    """Missing source objects the source templates recreate (they are in `to_run`)."""
    source_problems: list[str] = field(default_factory=list)
    """Missing source objects deploy must not recreate (a lost slot), each with the fix, and
    privileges the source user lacks (`source.privileges`)."""
    source_warnings: list[str] = field(default_factory=list)
    """Privileges the source user holds beyond need (one line; `source.privileges`)."""
    changes: list[ObjectChange] = field(default_factory=list)
    """Objects that exist and differ from the spec, with what applies each (after `to_run`)."""

    @property
    def statements(self) -> int:
        return sum(len(f.statements) for f in self.to_run) + sum(
            len(c.statements) for c in self.changes if c.applicable
        )

    @property
    def has_work(self) -> bool:
        return bool(self.to_run or self.changes)


class ConfirmationRequired(Exception):
    """The plan holds statements that cannot be undone (e.g. a backup retention lock) and the
    caller did not confirm them; nothing was deployed. `missing`: name -> what it commits to."""

    usage = True

    def __init__(self, missing: dict[str, list[str]]) -> None:
        self.missing = missing
        super().__init__(
            "; ".join(
                f"the spec asks for a {name.replace('-', ' ')}, which cannot be undone "
                f"({'; '.join(why)}): deploy creates it only with --confirm-{name}, or set it "
                "off in the spec (see docs/DEPLOYMENT_GUIDE.md)"
                for name, why in missing.items()
            )
        )


def unconfirmed(plan: DeployPlan, confirmed: frozenset[str]) -> dict[str, list[str]]:
    """What `plan` would commit to irreversibly that `confirmed` does not cover."""
    needed = confirmations_needed(plan.to_run)
    return {name: why for name, why in needed.items() if name not in confirmed}


@dataclass
class DeployResult:
    plan: DeployPlan
    statements_run: int
    deployment_id: str | None


@dataclass(frozen=True)
class ColumnCheck:
    """What `check_source_columns` did: `checked` is False when the source was unreachable
    (`reason` says why, password masked); `tables`/`columns` counted; `skipped`: tables whose
    columns could not be read ("schema.table: why")."""

    checked: bool
    tables: int = 0
    columns: int = 0
    skipped: tuple[str, ...] = ()
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def check_source_columns(loaded: LoadedSpec, *, required: bool = True) -> ColumnCheck:
    """Check every column name of the spec against the source catalog.

    Raises `SpecError` (exit 2; file:line:col of each unknown name, with a did-you-mean) when
    one is not a column of its source table. When the source cannot be reached: raises
    `SourceError` if `required` (deploy), else returns ``checked=False`` with the reason
    (validate). Tables that cannot be introspected are listed in `skipped`, not raised: the
    deploy's source checks name those problems and their fixes. Reads only the catalog.
    """
    spec = loaded.spec
    try:
        found: SourceColumns = source_columns(
            spec.source.dsn,
            [(t.schema_, t.name) for t in spec.source.tables],
            append_only={(t.schema_, t.name) for t in spec.source.tables if t.append_only},
        )
    except ColumnNameClash:
        raise  # the source was reached: a table the warehouse cannot hold
    except SourceError as exc:
        if required:
            raise
        return ColumnCheck(False, reason=str(exc))
    check_spec_columns(loaded, found.columns, found.primary_keys)
    names = sum(
        len(t.columns) + len(t.primary_key) + len(t.release)
        for t in spec.source.tables
        if (t.schema_, t.name) in found.columns
    )
    skipped = tuple(f"{s}.{t}: {why}" for (s, t), why in found.skipped.items())
    return ColumnCheck(True, len(found.columns), names, skipped)


def plan_deployment(loaded: LoadedSpec) -> DeployPlan:
    """Check the spec's column names against the source (`check_source_columns`), then compare
    the rendered templates with what the target last deployed. Changes nothing."""
    check_source_columns(loaded)
    files = render(loaded, dialect_of(loaded.spec.target.type))
    with open_target(loaded, read_only=True).for_deployment() as target:
        deployed = target.deployed_digests()
        missing_raw = target.missing_raw_tables()
        plan = DeployPlan(target=target.describe())
        for f in files:
            if f.runs_on == "none":
                plan.reference_only.append(f)
            elif deployed.get(f.name) == f.digest:
                plan.up_to_date.append(f)
            elif "raw_tables" in f.requires and missing_raw:
                reason = (
                    f"needs the raw tables ({', '.join(missing_raw[:3])}"
                    f"{', ...' if len(missing_raw) > 3 else ''}) that `clinipipe backfill` creates"
                )
                plan.deferred.append((f, reason))
            else:
                plan.to_run.append(f)
        slot_expected = _backfill_owns_slot(target, loaded.spec.source.slot)
        plan.changes = target.plan_changes()
    repairs, problems = verify_source_objects(loaded, slot_expected=slot_expected)
    # Before the first deployment of the source templates nothing is missing: it is to create.
    if any(f.runs_on == "source" and f.name in deployed for f in files):
        plan.source_repairs = repairs
    plan.source_problems = problems
    privileges = inspect_source_privileges(
        loaded.spec.source.dsn, [(t.schema_, t.name) for t in loaded.spec.source.tables]
    )
    plan.source_problems += privileges.errors()
    plan.source_warnings = [w for w in [privileges.warning()] if w]
    if plan.source_repairs:  # the source templates are idempotent: running them again recreates
        redo = [f for f in plan.up_to_date if f.runs_on == "source"]
        plan.up_to_date = [f for f in plan.up_to_date if f not in redo]
        plan.to_run = [f for f in files if f in plan.to_run or f in redo]  # rendered order
    return plan


def stale_templates(loaded: LoadedSpec, target: Target) -> list[str]:
    """The warehouse templates `target` has deployed whose rendering from this spec by this
    clinipipe differs from what was deployed (an upgraded clinipipe, an edited spec): running
    against them would write to control tables of an older shape. Templates never deployed are
    not listed (the commands that need one say so themselves). Changes nothing."""
    deployed = target.deployed_digests()
    return [
        f.name
        for f in render(loaded, target.dialect)
        if f.runs_on == "target" and f.name in deployed and deployed[f.name] != f.digest
    ]


def _backfill_owns_slot(target: Target, slot: str) -> bool:
    """True when a backfill recorded on the target created `slot` (so it must exist)."""
    if not target.table_exists(CONTROL_SCHEMA, "backfill_runs"):
        return False
    run = target.backfill_run(slot)
    return run is not None and run.consistent_point is not None


def verify_source_objects(
    loaded: LoadedSpec, *, slot_expected: bool
) -> tuple[list[SourceRepair], list[str]]:
    """Check that the spec's publication exists and replicates every spec table, and (when
    `slot_expected`, i.e. a backfill created it) that the slot exists with its WAL.

    Returns (repairs the source templates make, problems deploy cannot fix, each naming the
    commands that do). Reads the source catalog only; `SourceError` when it is unreachable.
    """
    spec = loaded.spec
    publication, slot = spec.source.publication, spec.source.slot
    found = inspect_source_objects(spec.source.dsn, publication, slot)
    repairs: list[SourceRepair] = []
    tables = [(t.schema_, t.name) for t in spec.source.tables]
    if not found.publication_exists:
        repairs.append(
            SourceRepair(
                f"publication {publication} does not exist on the source (dropped?)",
                f"recreate it with the spec's {len(tables)} tables",
                f"recreated it with the spec's {len(tables)} tables",
            )
        )
    elif missing := found.missing_tables(tables):
        names = ", ".join(f"{s}.{t}" for s, t in missing)
        repairs.append(
            SourceRepair(
                f"publication {publication} does not replicate {names}",
                "add them to it",
                "added them to it",
            )
        )
    problems: list[str] = []
    reload = "Run `clinipipe cdc reset --yes` and then `clinipipe backfill --force` to reload."
    if slot_expected and not found.slot_exists:
        problems.append(
            f"replication slot {slot} does not exist any more (dropped, or lost in a failover): "
            "the stream position is gone and changes since the last checkpoint cannot be "
            f"recovered; deploy does not create a slot, which would skip them. {reload}"
        )
    elif slot_expected and found.slot_wal_status == "lost":
        problems.append(
            f"replication slot {slot} was invalidated (its WAL was removed, see "
            f"max_slot_wal_keep_size): changes since the last checkpoint are gone. {reload}"
        )
    return repairs, problems


def deploy(
    loaded: LoadedSpec, plan: DeployPlan | None = None, *, confirmed: frozenset[str] = frozenset()
) -> DeployResult:
    """Apply `plan` (default: a fresh plan). Source templates first, then the target's.

    Source-side statements commit in one PostgreSQL transaction; the target applies its
    templates with the guarantees of its `apply_deployment`. A template is recorded as deployed
    only after it fully succeeded, so a failed deploy can simply be run again. A plan holding
    irreversible statements (`-- confirm: <name>`) not in `confirmed` raises
    `ConfirmationRequired` before anything runs.
    """
    plan = plan or plan_deployment(loaded)
    missing = unconfirmed(plan, confirmed)
    if missing:
        raise ConfirmationRequired(missing)
    if not plan.has_work:
        return DeployResult(plan, 0, None)
    source_files = [f for f in plan.to_run if f.runs_on == "source"]
    target_files = [f for f in plan.to_run if f.runs_on == "target"]
    run = apply_source_files(loaded.spec.source.dsn, source_files) if source_files else 0
    record = DeploymentRecord(spec_digest=loaded.digest, target_type=loaded.spec.target.type)
    with open_target(loaded).for_deployment() as target:
        bind_dynamic_tables(loaded, target)  # before anything is applied to the target
        run += target.apply_deployment(
            target_files, record, also_record=source_files, changes=plan.changes
        )
        audit.record_deploy(
            target,
            spec_digest=loaded.digest,
            templates=[f.name for f in plan.to_run],
            statements=run,
            changes=sum(1 for c in plan.changes if c.applicable),
            deployment_id=record.deployment_id,
        )
    return DeployResult(plan, run, record.deployment_id)


def check_privileges(loaded: LoadedSpec) -> list[MissingPrivilege]:
    """What the deploying role and the pipeline role lack for clinipipe's commands (empty
    when nothing is missing, or the target has no roles). Reads only; changes nothing."""
    with open_target(loaded, read_only=True).for_deployment() as target:
        return target.missing_privileges()


def bind_dynamic_tables(loaded: LoadedSpec, target: Target) -> None:
    """Have the warehouse bind every dynamic table's query (refresh order), the raw tables
    taken as the source catalog describes them. Raises `SpecError` (exit 2) at the `sql` of the
    first dynamic table that cannot be bound, naming it and the warehouse's reason (the
    unknown column or table). Changes nothing; reads the source catalog only."""
    spec = loaded.spec
    if not spec.dynamic_tables:
        return
    source = connect(spec.source.dsn, application_name="clinipipe-check")
    try:
        source.set_session(readonly=True)
        raw: list[TableSchema] = []
        for t in spec.source.tables:
            try:
                raw.append(introspect_table(source, t.schema_, t.name, append_only=t.append_only))
            except CatalogError:
                return  # a table missing at the source: the source checks say so, clearly
    finally:
        source.close()
    by_name = {d.name: (i, d) for i, d in enumerate(spec.dynamic_tables)}
    order = dynamic_table_order(spec)
    try:
        target.bind_dynamic_tables([(n, by_name[n][1].sql) for n in order], raw)
    except QueryBindError as exc:
        index = by_name[exc.dynamic_table][0]
        line, col = loaded.positions.of_value(("dynamic_tables", index, "sql"))
        raise SpecError(
            [
                Problem(
                    loaded.filename or str(loaded.path),
                    line,
                    col,
                    f"dynamic_tables[{index}].sql: dynamic table {exc.dynamic_table} cannot be "
                    f"bound by {target.describe()}: {exc.reason}",
                )
            ]
        ) from None
