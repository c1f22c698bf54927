"""`clinipipe deploy`: apply the rendered templates in order, idempotently, and record it.

A template runs again only when its rendered text changed since its last successful
deployment (digests kept in `_clinipipe.deployed_templates`), so a second deploy of the same
spec runs no statement at all. Templates that need the raw tables (Snowflake dynamic and
interactive tables) wait until `clinipipe backfill` created them and are reported as deferred.

Fail closed on names: before anything is planned (a dry run included), every column name the
spec writes is checked against the source catalog (`check_source_columns`); an unknown one is a
spec error at its file:line:col with a did-you-mean (exit 2), since a misspelled classification
would leave the real column unclassified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clinipipe.source.catalog import ColumnNameClash
from clinipipe.source.columns_check import SourceColumns, source_columns
from clinipipe.source.postgres import SourceError, apply_source_files
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.loader import check_source_columns as check_spec_columns
from clinipipe.sql.render import RenderedFile, render
from clinipipe.targets import DeploymentRecord, dialect_of, open_target


@dataclass
class DeployPlan:
    """What a deployment would do, template by template."""

    target: str
    to_run: list[RenderedFile] = field(default_factory=list)
    up_to_date: list[RenderedFile] = field(default_factory=list)
    deferred: list[tuple[RenderedFile, str]] = field(default_factory=list)
    reference_only: list[RenderedFile] = field(default_factory=list)

    @property
    def statements(self) -> int:
        return sum(len(f.statements) for f in self.to_run)


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
    check_spec_columns(loaded, found.columns)
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
    with open_target(loaded, read_only=True) as target:
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
    return plan


def deploy(loaded: LoadedSpec, plan: DeployPlan | None = None) -> DeployResult:
    """Apply `plan` (default: a fresh plan). Source templates first, then the target's.

    Source-side statements commit in one PostgreSQL transaction; the target applies its
    templates with the guarantees of its `apply_deployment`. A template is recorded as deployed
    only after it fully succeeded, so a failed deploy can simply be run again.
    """
    plan = plan or plan_deployment(loaded)
    if not plan.to_run:
        return DeployResult(plan, 0, None)
    source_files = [f for f in plan.to_run if f.runs_on == "source"]
    target_files = [f for f in plan.to_run if f.runs_on == "target"]
    run = apply_source_files(loaded.spec.source.dsn, source_files) if source_files else 0
    record = DeploymentRecord(spec_digest=loaded.digest, target_type=loaded.spec.target.type)
    with open_target(loaded) as target:
        run += target.apply_deployment(target_files, record, also_record=source_files)
    return DeployResult(plan, run, record.deployment_id)
