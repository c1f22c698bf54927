"""`clinipipe deploy`: apply the rendered templates in order, idempotently, and record it.

A template runs again only when its rendered text changed since its last successful
deployment (digests kept in `_clinipipe.deployed_templates`), so a second deploy of the same
spec runs no statement at all. Templates that need the raw tables (Snowflake dynamic and
interactive tables) wait until `clinipipe backfill` created them and are reported as deferred.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clinipipe.source.postgres import apply_source_files
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.render import RenderedFile, render
from clinipipe.targets import DeploymentRecord, open_target


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


def plan_deployment(loaded: LoadedSpec) -> DeployPlan:
    """Compare the rendered templates with what the target last deployed. Changes nothing."""
    files = render(loaded)
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
