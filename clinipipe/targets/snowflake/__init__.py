"""Snowflake: the production target and distributed engine (snowflake-connector-python).

`SnowflakeTarget` is the core (`core.py`: one session per thread, statements, transactions,
warehouses) plus staging tables (`staging.py`) and one mixin per capability, each in its own
module; what Snowflake's target cannot do is in `cannot.py`. Column types and casts are in
`types.py`.

Loading (backfill ranges and CDC batches) follows one pattern:

1. **Stage, outside any transaction.** The rows go, as text, into a transient VARCHAR staging
   table with `write_pandas` (Parquet -> PUT -> COPY INTO). `write_pandas` creates a temporary
   stage (DDL), and DDL in Snowflake commits the open transaction, so staging must happen
   before BEGIN, never inside it.
2. **Apply, in one transaction.** ``BEGIN TRANSACTION``; the typed INSERT ... SELECT (backfill)
   or one MERGE per table (CDC), typed per column (`snowflake_cast` reads the backfill's export
   text, `snowflake_stream_cast` pgoutput's text); the bookkeeping rows (range record or
   checkpoint, batch record, metering); ``COMMIT``. Only DML runs in between.

A failure rolls the transaction back: the staged text is either dropped (backfill) or replaced
by the next batch (CDC), never half applied.
"""

from __future__ import annotations

from clinipipe.targets.base import Target
from clinipipe.targets.snowflake.backup import SnowflakeBackup
from clinipipe.targets.snowflake.cannot import SnowflakeCannot
from clinipipe.targets.snowflake.changes import SnowflakeChangeApply, StagedChanges
from clinipipe.targets.snowflake.core import BEGIN, SnowflakeCore, SnowflakeDialect
from clinipipe.targets.snowflake.deploy import SnowflakeDeployment
from clinipipe.targets.snowflake.loading import SnowflakeLoading
from clinipipe.targets.snowflake.redact import SnowflakeRedaction
from clinipipe.targets.snowflake.refresh import SnowflakeRefresh
from clinipipe.targets.snowflake.scan import SnowflakePhiScan
from clinipipe.targets.snowflake.staging import SnowflakeStaging
from clinipipe.targets.snowflake.verify import SnowflakeVerify


class SnowflakeTarget(
    SnowflakeCannot,
    SnowflakeDeployment,
    SnowflakeLoading,
    SnowflakeChangeApply,
    SnowflakeRefresh,
    SnowflakeRedaction,
    SnowflakePhiScan,
    SnowflakeBackup,
    SnowflakeStaging,
    SnowflakeVerify,
    SnowflakeCore,
    Target,
):
    """A Snowflake account (see `SnowflakeCore` for sessions and threads)."""


__all__ = ["BEGIN", "SnowflakeDialect", "SnowflakeTarget", "StagedChanges"]
