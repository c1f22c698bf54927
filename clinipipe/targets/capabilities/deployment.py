"""Deployment: run the rendered templates and record what is deployed (`_clinipipe.deployments`,
`_clinipipe.deployed_templates`)."""

from __future__ import annotations

import datetime as dt
import uuid
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from clinipipe import __version__
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.core import TargetCore, TargetError

if TYPE_CHECKING:
    from clinipipe.sql.render import RenderedFile


class DeployStatementError(TargetError):
    """A statement of a template failed; names the file and the 1-based statement number."""

    def __init__(self, template: str, number: int, reason: str, *, rolled_back: bool) -> None:
        self.template = template
        self.number = number
        self.reason = reason
        self.rolled_back = rolled_back
        after = (
            "Nothing of this deployment was kept (it ran in one transaction)."
            if rolled_back
            else "Templates before it stay deployed; fix the cause and run deploy again "
            "(it resumes with this template; every statement is idempotent)."
        )
        super().__init__(
            f"statement {number} of template {template} failed: {reason.strip()}. {after}"
        )


@dataclass(frozen=True)
class DeploymentRecord:
    """What `_clinipipe.deployments` keeps about one deployment."""

    spec_digest: str
    target_type: str
    deployment_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deployed_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    clinipipe_version: str = __version__


@dataclass(frozen=True)
class ObjectChange:
    """One difference between the spec and an object the target already has, like a line of
    `terraform plan`: `kind` and `name` of the object, `attribute`, `old` -> `new` (text; no row
    values, only definitions). `statements` apply it (empty when nothing runs: applied by
    another change of the same object, or not applicable, see `applicable`). `rebuilds_on`
    names the warehouse that rebuilds the object's data (None: no data is rebuilt). `source`
    says where `old` came from: "reported" (the target answered, e.g. SHOW WAREHOUSES) or
    "recorded" (the state the last deployment recorded). `note` explains, for people."""

    kind: str
    name: str
    attribute: str
    old: str | None
    new: str | None
    statements: tuple[str, ...] = ()
    rebuilds_on: str | None = None
    source: str = "recorded"
    note: str = ""
    applicable: bool = True
    """False: deploy does not apply it (the note says why and what to do by hand)."""

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "statements": list(self.statements)}


@dataclass(frozen=True)
class MissingPrivilege:
    """A privilege a role needs for `needed_for` and does not hold (directly or through the
    roles granted to it); `fix` is the statement that grants it and who can run it."""

    role: str
    privilege: str
    on: str
    needed_for: str
    fix: str

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Deployment(TargetCore):
    """Deploys rendered templates and answers what is deployed.

    * **Ordering.** `apply_deployment` runs the statements of the given files in order (files
      in list order, statements in file order). A failing statement raises
      `DeployStatementError` naming the file and the statement number; nothing after it runs.
    * **Atomicity.** A file is recorded as deployed only after all its statements succeeded.
      Each dialect states how much more is atomic: DuckDB runs the whole deployment in one
      transaction (a failure or a crash, kill -9 included, leaves the file as before); in
      Snowflake DDL auto-commits, so each template is recorded right after its last statement
      and a failure or crash leaves the templates before it deployed and recorded.
    * **Idempotency.** Every template statement is idempotent, so running deploy again resumes
      with the first template not recorded (or whose digest changed).
    * **Drift.** Templates create objects IF NOT EXISTS, so re-running one does not change an
      object that exists. `plan_changes` lists what differs between the spec and the objects
      the target has (what the target reports, else what the last deployment recorded), each
      with the statements that apply it; `apply_deployment` runs those statements after the
      files, in the order given, and only then records the new state, so a failure or crash
      before that leaves the old state recorded and the next plan shows the change again
      (re-applying it is safe: ALTERs set values, a rebuild builds again).
    * `deployed_digests`, `missing_raw_tables`, `require_deployed`, `plan_changes` and
      `missing_privileges` only read.
    """

    def for_deployment(self) -> Self:
        """Open sessions (on the next `connect`) as the role that deploys. Returns self.

        Default: nothing changes (a warehouse without roles). Snowflake: the spec's admin
        role, since the pipeline role does not exist before the first deployment."""
        return self

    @abstractmethod
    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
        changes: Sequence[ObjectChange] = (),
    ) -> int:
        """Run `files`, then the statements of the applicable `changes`, and record them (and
        `also_record`, applied elsewhere) under `record`.

        Returns the number of statements run.
        """

    def plan_changes(self) -> list[ObjectChange]:
        """What differs between the spec and the objects that exist (see Drift above), in the
        order to apply. Reads only.

        Default: none. DuckDB needs none: its templates register definitions with INSERT OR
        REPLACE / MERGE (re-run whenever their text changes), clinipipe's refresh engine
        rebuilds a dynamic table whose definition digest changed, and a warehouse is a compute
        profile read from `_clinipipe.warehouses` at each use."""
        return []

    def missing_privileges(self) -> list[MissingPrivilege]:
        """The privileges the deploying role and the pipeline role lack for what clinipipe
        does (`deploy --check`). Reads only. Default: none (a warehouse without roles)."""
        return []

    def deployed_digests(self) -> dict[str, str]:
        """Template name -> digest of its last successful deployment ({} before the first)."""
        if not self.table_exists(CONTROL_SCHEMA, "deployed_templates"):
            return {}
        table = self.control("deployed_templates")
        rows = self.query(
            f"SELECT template, template_digest FROM {table} "
            "QUALIFY ROW_NUMBER() OVER (PARTITION BY template ORDER BY deployed_at DESC) = 1"
        )
        return {str(name): str(digest) for name, digest in rows}

    def missing_raw_tables(self) -> list[str]:
        """Source tables of the spec that do not exist yet in the raw schema."""
        from clinipipe.sql.context import schema_names

        raw = schema_names(self.loaded.spec)["raw"]
        return [
            t.name for t in self.loaded.spec.source.tables if not self.table_exists(raw, t.name)
        ]

    def require_deployed(self) -> None:
        """Raise `TargetError` unless `clinipipe deploy` created the control tables."""
        if not self.table_exists(CONTROL_SCHEMA, "backfill_ranges"):
            raise TargetError(
                f"{self.describe()} has no clinipipe control tables: run `clinipipe deploy` first"
            )

    def template_record_sql(self, record: DeploymentRecord, file: RenderedFile) -> str:
        """INSERT that records `file` as deployed under `record` (values quoted by the dialect)."""
        q = self.dialect.quote_literal
        return (
            f"INSERT INTO {self.control('deployed_templates')} "
            "(deployment_id, template, template_digest, statements, deployed_at) VALUES "
            f"({q(record.deployment_id)}, {q(file.name)}, {q(file.digest)}, "
            f"{len(file.statements)}, {q(record.deployed_at.isoformat())})"
        )

    def deployment_record_sql(self, record: DeploymentRecord, statements_run: int) -> str:
        """INSERT of the deployment's own row."""
        q = self.dialect.quote_literal
        return (
            f"INSERT INTO {self.control('deployments')} (deployment_id, deployed_at, spec_digest, "
            "clinipipe_version, target_type, statements_run) VALUES "
            f"({q(record.deployment_id)}, {q(record.deployed_at.isoformat())}, "
            f"{q(record.spec_digest)}, {q(record.clinipipe_version)}, {q(record.target_type)}, "
            f"{statements_run})"
        )
