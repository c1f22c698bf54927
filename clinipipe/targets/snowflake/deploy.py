"""Snowflake deployment: DDL auto-commits, so each template is recorded after its last statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from clinipipe.sql.render import Statement
from clinipipe.targets.capabilities.deployment import (
    Deployment,
    DeploymentRecord,
    DeployStatementError,
)
from clinipipe.targets.snowflake.core import SnowflakeCore

if TYPE_CHECKING:
    from clinipipe.sql.render import RenderedFile


class SnowflakeDeployment(SnowflakeCore, Deployment):
    """`Deployment` on Snowflake. Not atomic: each template is recorded right after its last
    statement succeeded, and a re-run resumes with the first template not recorded (every
    template statement is idempotent)."""

    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
    ) -> int:
        import snowflake.connector

        run = 0
        for file in files:
            for statement in file.statements:
                try:
                    self._execute(statement)
                except snowflake.connector.errors.Error as exc:
                    reason = getattr(exc, "raw_msg", None) or str(exc)
                    raise DeployStatementError(
                        file.name, statement.number, str(reason), rolled_back=False
                    ) from None
                run += 1
            self._execute(Statement(0, self.template_record_sql(record, file)))
        for file in also_record:
            self._execute(Statement(0, self.template_record_sql(record, file)))
        self._execute(Statement(0, self.deployment_record_sql(record, run)))
        return run
