"""DuckDB deployment: the whole deployment in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import duckdb

from clinipipe.secrets import first_line
from clinipipe.targets.capabilities.deployment import (
    Deployment,
    DeploymentRecord,
    DeployStatementError,
    ObjectChange,
)
from clinipipe.targets.duckdb.core import DuckDBCore, transaction

if TYPE_CHECKING:
    from clinipipe.sql.render import RenderedFile


class DuckDBDeployment(DuckDBCore, Deployment):
    """`Deployment` on DuckDB: DDL is transactional, so a deployment is all or nothing."""

    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
        changes: Sequence[ObjectChange] = (),
    ) -> int:
        """Atomic: every statement and the deployment record commit in one transaction.

        On any failure the transaction is rolled back and the file is as before. `changes`
        is always empty on DuckDB (see `Deployment.plan_changes`).
        """
        if changes:
            raise ValueError("DuckDB applies spec changes through its templates, not changes")
        con = self.con
        run = 0
        with transaction(con):
            for file in files:
                for statement in file.statements:
                    try:
                        con.execute(statement.sql)
                    except duckdb.Error as exc:
                        raise DeployStatementError(
                            file.name, statement.number, first_line(exc), rolled_back=True
                        ) from None
                    run += 1
                con.execute(self.template_record_sql(record, file))
            for file in also_record:
                con.execute(self.template_record_sql(record, file))
            con.execute(self.deployment_record_sql(record, run))
        return run
