"""DuckDB: the embedded default target, a real warehouse in one local file.

`DuckDBTarget` is the core (`core.py`: connection, transactions, compute profiles) plus one
mixin per capability, each in its own module; what DuckDB cannot do is in `cannot.py`. Column
types and casts are in `types.py`.
"""

from __future__ import annotations

from clinipipe.targets.base import Target
from clinipipe.targets.duckdb.backup import DuckDBBackup
from clinipipe.targets.duckdb.cannot import DuckDBCannot
from clinipipe.targets.duckdb.changes import DuckDBChangeApply
from clinipipe.targets.duckdb.core import GIB, DuckDBCore, DuckDBDialect, compute_profile
from clinipipe.targets.duckdb.deploy import DuckDBDeployment
from clinipipe.targets.duckdb.loading import DuckDBLoading
from clinipipe.targets.duckdb.redact import DuckDBRedaction
from clinipipe.targets.duckdb.refresh import DuckDBRefresh
from clinipipe.targets.duckdb.scan import DuckDBPhiScan
from clinipipe.targets.duckdb.verify import DuckDBVerify


class DuckDBTarget(
    DuckDBCannot,
    DuckDBDeployment,
    DuckDBLoading,
    DuckDBChangeApply,
    DuckDBRefresh,
    DuckDBRedaction,
    DuckDBPhiScan,
    DuckDBBackup,
    DuckDBVerify,
    DuckDBCore,
    Target,
):
    """A DuckDB database file. One process may open it read-write at a time."""


__all__ = ["GIB", "DuckDBDialect", "DuckDBTarget", "compute_profile"]
