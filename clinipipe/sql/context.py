"""What the SQL templates see: the spec, flattened into names a DBA would recognise."""

from __future__ import annotations

from typing import Any

from clinipipe.spec.checks import access_role_names
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
        "access": _access(spec, dialect),
    }


def _access(spec: Spec, dialect: str) -> list[dict[str, Any]] | None:
    """Per persona: its role name, the schema names it reads and writes, single tables as
    (schema name, table, object kind) and warehouse names. None when the spec has no access."""
    if spec.access is None:
        return None
    schemas = schema_names(spec, dialect)
    names = access_role_names(spec)
    whs = {
        "initialization": spec.warehouses.initialization.name,
        "incremental": spec.warehouses.incremental.name,
        "interactive": spec.warehouses.interactive.name,
    }
    out = []
    for persona, r in spec.access.roles.items():
        tables = []
        for ref in r.tables:
            schema, _, table = ref.partition(".")
            kind = "DYNAMIC TABLE" if schema == "derived" else "TABLE"
            tables.append((schemas[schema], table, kind))
        out.append(
            {
                "persona": persona,
                "role": names[persona],
                "read": [schemas[s] for s in dict.fromkeys(r.read)],
                "write": [schemas[s] for s in dict.fromkeys(r.write)],
                "tables": tables,
                "usage": sorted({schemas[s] for s in [*r.read, *r.write]} | {t[0] for t in tables}),
                "warehouses": [whs[w] for w in dict.fromkeys(r.warehouses)],
                "deploy": r.deploy,
                "phi_visible": r.phi_visible,
            }
        )
    return out


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
