"""Snowflake staging tables: rows travel as text (write_pandas: Parquet -> PUT -> COPY INTO)
into transient VARCHAR tables in the control schema, before any transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.render import Statement
from clinipipe.targets.core import TargetError
from clinipipe.targets.snowflake.core import SnowflakeCore

if TYPE_CHECKING:
    import pandas as pd


class SnowflakeStaging(SnowflakeCore):
    """Staging tables shared by loading, change apply and redaction. `write_pandas` creates a
    temporary stage (DDL, which commits an open transaction): never stage inside one."""

    def stage_name(self, name: str) -> str:
        """A staging table in the control schema."""
        return self.dialect.qualify(self.spec.database, CONTROL_SCHEMA, name)

    def _create_stage(self, stage: str, columns: Sequence[tuple[str, str]]) -> None:
        """(Re)create a transient staging table (no Fail-safe; no Time Travel to pay for)."""
        definition = ", ".join(f"{self.dialect.quote_ident(n)} {t}" for n, t in columns)
        self._execute(Statement(0, (
            f"CREATE OR REPLACE TRANSIENT TABLE {stage} ({definition}) "
            "DATA_RETENTION_TIME_IN_DAYS = 0"
        )))  # fmt: skip

    def _write_stage(self, name: str, frame: pd.DataFrame) -> int:
        """Append `frame` to staging table `name` (control schema) with write_pandas; returns
        the rows loaded. Runs DDL (a temporary stage): never call it inside a transaction."""
        from snowflake.connector.pandas_tools import write_pandas

        frame.columns = [c.upper() for c in frame.columns]
        success, _, rows, _ = write_pandas(
            self._session(), frame, name.upper(), database=self.spec.database.upper(),
            schema=CONTROL_SCHEMA.upper(), quote_identifiers=True, compression="snappy",
        )  # fmt: skip
        if not success or int(rows) != len(frame):
            raise TargetError(
                f"staging into {name} loaded {rows} of {len(frame)} rows; nothing was applied"
            )
        return len(frame)

    def _drop_stage(self, stage: str) -> None:
        with contextlib.suppress(Exception):  # best effort: the next load replaces it anyway
            self._execute(Statement(0, f"DROP TABLE IF EXISTS {stage}"))
