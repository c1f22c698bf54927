"""`Target`: every capability of a warehouse together. Nothing outside `clinipipe.targets` knows
a dialect.

The interface is split: `clinipipe.targets.core.TargetCore` (connection, statements,
transactions, compute) and one interface per capability in `clinipipe.targets.capabilities`,
each stating its guarantees (ordering, atomicity, idempotency, what a crash leaves):

==============  ===========================================================================
Deployment      run rendered templates, record what is deployed
Loading         raw tables and backfill ranges (bulk data writes)
ChangeApply     CDC batches with their checkpoint, schema changes, column fills
PipelineState   backfill runs/ranges, checkpoints, recorded/renamed columns, pauses, reset
Refresh         dynamic tables: state, history, refresh (clinipipe's engine or the warehouse's)
Redaction       research (de-identified) tables
PhiScan         stage 1 of the PHI scan in the warehouse, the findings store
Backup          table export to Parquet and restore, or the warehouse's native backups
Verify          checksums of raw tables for `clinipipe verify`, and its run records
==============  ===========================================================================

Code that needs only some capabilities should say so in its annotations (`target: Refresh`);
`open_target` returns a `Target`, which has them all. Errors never contain secrets (passwords,
keys) and never contain row data.

The names below are re-exported so that `from clinipipe.targets.base import X` keeps working.
"""

from __future__ import annotations

from clinipipe.targets.capabilities.backup import Backup
from clinipipe.targets.capabilities.changes import CdcBatch, ChangeApply, SchemaChange, TableBatch
from clinipipe.targets.capabilities.deployment import (
    Deployment,
    DeploymentRecord,
    DeployStatementError,
)
from clinipipe.targets.capabilities.loading import BatchStream, Loading, RangeWork
from clinipipe.targets.capabilities.phi_scan import PhiScan
from clinipipe.targets.capabilities.redaction import Redaction, RedactionState, ResearchBuild
from clinipipe.targets.capabilities.refresh import (
    REFRESH_ACTIONS,
    DynamicTableInputs,
    DynamicTableState,
    PendingChanges,
    Refresh,
    RefreshResult,
    RefreshWork,
    changed_keys_source,
)
from clinipipe.targets.capabilities.state import BackfillRun, PipelineState, RecordedColumn
from clinipipe.targets.capabilities.verify import Verify
from clinipipe.targets.core import TargetCore, TargetError


class Target(
    Deployment, Loading, ChangeApply, PipelineState, Refresh, Redaction, PhiScan, Backup, Verify
):
    """A warehouse clinipipe deploys to and loads into: the core and every capability.

    Defines nothing of its own. A dialect is a core class plus one mixin per capability
    (`clinipipe.targets.duckdb`, `clinipipe.targets.snowflake`) composed over this class.
    """


__all__ = [
    "REFRESH_ACTIONS",
    "BackfillRun",
    "Backup",
    "BatchStream",
    "CdcBatch",
    "ChangeApply",
    "DeployStatementError",
    "Deployment",
    "DeploymentRecord",
    "DynamicTableInputs",
    "DynamicTableState",
    "Loading",
    "PendingChanges",
    "PhiScan",
    "PipelineState",
    "RangeWork",
    "RecordedColumn",
    "Redaction",
    "RedactionState",
    "Refresh",
    "RefreshResult",
    "RefreshWork",
    "ResearchBuild",
    "SchemaChange",
    "TableBatch",
    "Target",
    "TargetCore",
    "TargetError",
    "changed_keys_source",
]
