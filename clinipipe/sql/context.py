"""What the SQL templates see: the spec, flattened into names a DBA would recognise."""

from __future__ import annotations

from typing import Any

from clinipipe.spec.model import SnowflakeTarget, Spec
from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR

CONTROL_SCHEMA = "_clinipipe"
DERIVED_SCHEMA = "derived"
SERVING_SCHEMA = "serving"
RAW_SCHEMA = "raw"
RESEARCH_README_TABLE = "_readme"
"""clinipipe's label table in a research schema (policy, version, rows and build time of each
table); metadata, not data: `clinipipe scan` does not scan it."""


def snowflake_settings(spec: Spec) -> SnowflakeTarget:
    """The spec's Snowflake target, or Snowflake's defaults when rendering another spec for it."""
    if isinstance(spec.target, SnowflakeTarget):
        return spec.target
    return SnowflakeTarget(type="snowflake", account="<account>", user="<user>")


def schema_names(spec: Spec, dialect: str | None = None) -> dict[str, str]:
    """The warehouse schemas clinipipe uses, by role, for `dialect` (default: the target's)."""
    dialect = dialect or spec.target.type
    raw = snowflake_settings(spec).schema_ if dialect == "snowflake" else RAW_SCHEMA
    return {
        "raw": raw,
        "derived": DERIVED_SCHEMA,
        "serving": SERVING_SCHEMA,
        "research": spec.phi.research_schema,
        "control": CONTROL_SCHEMA,
    }


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
