"""What the SQL templates see: the spec, flattened into names a DBA would recognise."""

from __future__ import annotations

from typing import Any

from clinipipe.spec.model import Spec
from clinipipe.spec.schemas import (
    CONTROL_SCHEMA,
    DERIVED_SCHEMA,
    RAW_SCHEMA,
    RESEARCH_README_TABLE,
    SERVING_SCHEMA,
    schema_names,
    snowflake_settings,
)
from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR


def template_context(spec: Spec, dialect: str) -> dict[str, Any]:
    """The variables every template of `dialect` is rendered with. Deterministic."""
    snowflake = snowflake_settings(spec) if dialect == "snowflake" else None
    warehouses = [
        {
            "role": role,
            "name": wh.name,
            "size": wh.size,
            "auto_suspend": wh.auto_suspend,
            "credits_per_hour": WAREHOUSE_CREDITS_PER_HOUR[wh.size],
        }
        for role, wh in (
            ("initialization", spec.warehouses.initialization),
            ("incremental", spec.warehouses.incremental),
            ("interactive", spec.warehouses.interactive),
        )
    ]
    phi_columns = [
        {"schema": t.schema_, "table": t.name, "column": c, "phi_class": cls}
        for t in spec.source.tables
        for c, cls in sorted(t.columns.items())
    ]
    return {
        "dialect": dialect,
        "pipeline": spec.name,
        "database": snowflake.database if snowflake else None,
        "role": snowflake.role if snowflake else None,
        "admin_role": snowflake.admin_role if snowflake else None,
        "schemas": schema_names(spec, dialect),
        "source_tables": spec.source.tables,
        "publication": spec.source.publication,
        "slot": spec.source.slot,
        "warehouses": warehouses,
        "wh": {w["role"]: w for w in warehouses},
        "phi_columns": phi_columns,
        "dynamic_tables": spec.dynamic_tables,
        "interactive_tables": spec.interactive_tables,
        "restricted_zip3": spec.phi.restricted_zip3,
        "phi": spec.phi,
        "backup": spec.backup,
        "cost": spec.cost,
        "dashboards": spec.dashboards,
        "credit_rates": WAREHOUSE_CREDITS_PER_HOUR,
    }


__all__ = [
    "CONTROL_SCHEMA",
    "DERIVED_SCHEMA",
    "RAW_SCHEMA",
    "RESEARCH_README_TABLE",
    "SERVING_SCHEMA",
    "schema_names",
    "snowflake_settings",
    "template_context",
]
