"""Warehouses behind one interface (`base.Target`): DuckDB (embedded default) and Snowflake.

`Target` is a small core (`core.TargetCore`) plus one interface per capability
(`capabilities/`: deployment, loading, change apply, pipeline state, refresh, redaction, PHI
scan), each stating its guarantees. A dialect is a package (`duckdb/`, `snowflake/`): a core
class, one mixin per capability, and `cannot.py` saying what it does not do. A new warehouse
is one new package here (registered in `TARGETS`) plus one template folder; a new capability
is one new interface in `capabilities/`, added to `Target`, with one mixin per dialect.
"""

from __future__ import annotations

from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.dialect import Dialect
from clinipipe.targets.base import DeploymentRecord, DeployStatementError, Target, TargetError
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.snowflake import SnowflakeTarget

TARGETS: dict[str, type[Target]] = {"duckdb": DuckDBTarget, "snowflake": SnowflakeTarget}


def dialect_of(name: str) -> Dialect:
    """The quoting rules of target `name`."""
    return TARGETS[name].dialect


def open_target(loaded: LoadedSpec, *, read_only: bool = False) -> Target:
    """The target the spec names (not yet connected: use it as a context manager).

    `read_only` targets never create or change anything (used for plans and status).
    """
    return TARGETS[loaded.spec.target.type](loaded, read_only=read_only)


__all__ = [
    "TARGETS",
    "DeployStatementError",
    "DeploymentRecord",
    "Target",
    "TargetError",
    "dialect_of",
    "open_target",
]
