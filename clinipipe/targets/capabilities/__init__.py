"""One interface per capability of a warehouse, each over `clinipipe.targets.core.TargetCore`.

Each interface states its guarantees (ordering, atomicity, idempotency, what a crash leaves)
in its class docstring, holds the generic SQL both dialects share as default methods, and
declares abstract what each dialect must write itself. `clinipipe.targets.base.Target` is all
of them together; a dialect (`clinipipe.targets.duckdb`, `clinipipe.targets.snowflake`) is a
small core class plus one mixin per capability, and a module `cannot.py` saying what it does
not do. No module here imports a dialect.
"""

from __future__ import annotations

from clinipipe.targets.capabilities.backup import Backup
from clinipipe.targets.capabilities.changes import ChangeApply
from clinipipe.targets.capabilities.deployment import Deployment
from clinipipe.targets.capabilities.loading import Loading
from clinipipe.targets.capabilities.phi_scan import PhiScan
from clinipipe.targets.capabilities.redaction import Redaction
from clinipipe.targets.capabilities.refresh import Refresh
from clinipipe.targets.capabilities.state import PipelineState
from clinipipe.targets.capabilities.verify import Verify

CAPABILITIES = (
    Deployment,
    Loading,
    ChangeApply,
    PipelineState,
    Refresh,
    Redaction,
    PhiScan,
    Backup,
    Verify,
)
"""Every capability interface, in the order `Target` composes them."""

__all__ = [
    "CAPABILITIES",
    "Backup",
    "ChangeApply",
    "Deployment",
    "Loading",
    "PhiScan",
    "PipelineState",
    "Redaction",
    "Refresh",
    "Verify",
]
