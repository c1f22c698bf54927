"""The interface every warehouse implements. Nothing outside `clinipipe.targets` knows a dialect.

Guarantees stated here hold for every implementation:

* `apply_deployment` runs the statements of the given files in order (files in list order,
  statements in file order). A file is recorded as deployed only after all its statements
  succeeded; a failing statement raises `DeployStatementError` naming the file and the
  statement number, and nothing after it runs.
* `deployed_digests` returns, per template, the digest of its last successful deployment.
* Errors never contain secrets (passwords, keys) and never contain row data.
"""

from __future__ import annotations

import datetime as dt
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from clinipipe import __version__
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import RenderedFile


class TargetError(Exception):
    """The warehouse could not be reached or used. The message says what to do."""


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


class Target(ABC):
    """A warehouse clinipipe deploys to and loads into. Use as a context manager."""

    type: ClassVar[str]
    dialect: ClassVar[Dialect]

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        self.loaded = loaded
        self.read_only = read_only

    def __enter__(self) -> Target:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def connect(self) -> None:
        """Open the connection; raises `TargetError` with a clear message when it cannot."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection. Idempotent."""

    @abstractmethod
    def describe(self) -> str:
        """Where this target is, for messages (no secrets)."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    @abstractmethod
    def table_exists(self, schema: str, table: str) -> bool:
        """True when `schema.table` exists (names as written in the spec)."""

    @abstractmethod
    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
    ) -> int:
        """Run `files` and record them (and `also_record`, applied elsewhere) under `record`.

        Returns the number of statements run. See the module docstring for ordering and
        failure guarantees; each implementation states its atomicity.
        """

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

    def control(self, table: str) -> str:
        """The quoted name of a table in clinipipe's control schema."""
        return self.dialect.qualify(CONTROL_SCHEMA, table)

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
