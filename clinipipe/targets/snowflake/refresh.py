"""Snowflake refresh: Snowflake maintains its dynamic tables itself; clinipipe asks it to refresh
and reads its history (clinipipe's own refresh engine is not used: `cannot.py`)."""

from __future__ import annotations

import datetime as dt

from clinipipe.sql.render import Statement
from clinipipe.targets.capabilities.refresh import Refresh, RefreshResult
from clinipipe.targets.core import TargetError
from clinipipe.targets.snowflake.core import SnowflakeCore

HISTORY_DAYS = 7
"""How far back the refresh history reaches: all that INFORMATION_SCHEMA keeps."""


class SnowflakeRefresh(SnowflakeCore, Refresh):
    """`Refresh` on Snowflake: native dynamic tables (`ALTER DYNAMIC TABLE ... REFRESH`)."""

    @property
    def native_dynamic_tables(self) -> bool:
        """Snowflake refreshes dynamic tables itself, on their own warehouses."""
        return True

    def dynamic_table_name(self, name: str) -> str:
        """The qualified, quoted name of dynamic table `name` (`"DB"."DERIVED"."NAME"`)."""
        from clinipipe.sql.context import DERIVED_SCHEMA

        return self.dialect.qualify(self.spec.database, DERIVED_SCHEMA, name)

    def dynamic_table_refresh_sql(self, name: str) -> str:
        """A manual refresh. Snowflake refreshes the upstream dynamic tables first if needed,
        runs it on the table's own warehouses (INITIALIZATION_WAREHOUSE for a
        reinitialization) and returns when it is done."""
        return f"ALTER DYNAMIC TABLE {self.dynamic_table_name(name)} REFRESH"

    def dynamic_table_history_sql(self, name: str, limit: int) -> str:
        """The refreshes of `name` of the last 7 days, newest first, from the Information Schema
        table function (it keeps 7 days; ACCOUNT_USAGE keeps a year, with up to 3 hours' delay).
        DATA_TIMESTAMP_START is given: without it the function returns the last day only."""
        from clinipipe.sql.context import DERIVED_SCHEMA

        qualified = ".".join(p.upper() for p in (self.spec.database, DERIVED_SCHEMA, name))
        return (
            "SELECT NAME, STATE, REFRESH_ACTION, STATE_MESSAGE, DATA_TIMESTAMP, "
            "REFRESH_START_TIME, REFRESH_END_TIME, STATISTICS, REFRESH_TRIGGER FROM TABLE("
            f"{self.dialect.quote_ident(self.spec.database)}.INFORMATION_SCHEMA."
            "DYNAMIC_TABLE_REFRESH_HISTORY(DATA_TIMESTAMP_START => "
            f"DATEADD('day', -{HISTORY_DAYS}, CURRENT_TIMESTAMP()), "
            f"NAME => {self.dialect.quote_string(qualified)}, "
            f"RESULT_LIMIT => {int(limit)})) ORDER BY REFRESH_START_TIME DESC"
        )

    def dynamic_table_history(
        self, name: str | None = None, limit: int = 100
    ) -> list[RefreshResult]:
        """Snowflake's own refresh history of `name` (rows inserted/deleted from STATISTICS;
        the warehouse and the changed keys are not reported there)."""
        import json

        if name is None:
            raise TargetError("Snowflake's refresh history is read per dynamic table")
        rows = self.query(self.dynamic_table_history_sql(name, limit))
        results = []
        for table, state, action, message, data_ts, start, end, stats, trigger in rows:
            figures = json.loads(stats) if isinstance(stats, str) and stats else stats or {}
            result = RefreshResult(
                str(table).lower(), str(state), str(action or ""), message, data_ts, start,
                end, None, figures.get("numInsertedRows"), figures.get("numDeletedRows"),
                None, trigger,
            )  # fmt: skip
            results.append(result)
        return results

    def refresh_dynamic_table_now(self, name: str) -> RefreshResult:
        """`ALTER DYNAMIC TABLE ... REFRESH`, then the refresh as Snowflake recorded it. A
        refresh Snowflake rejects comes back FAILED with its (scrubbed) message."""
        import snowflake.connector

        started = dt.datetime.now(dt.timezone.utc)
        try:
            self._execute(Statement(0, self.dynamic_table_refresh_sql(name)))
        except snowflake.connector.errors.Error as exc:
            return RefreshResult(
                name, "FAILED", "", f"ALTER DYNAMIC TABLE ... REFRESH failed: {self._reason(exc)}",
                None, started, dt.datetime.now(dt.timezone.utc), None, refresh_trigger="MANUAL",
            )  # fmt: skip
        history = self.dynamic_table_history(name, 1)
        if history:
            return history[0]
        return RefreshResult(
            name, "SUCCEEDED", "", None, None, started, dt.datetime.now(dt.timezone.utc), None,
            refresh_trigger="MANUAL",
        )  # fmt: skip
