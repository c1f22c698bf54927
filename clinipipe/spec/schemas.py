"""The warehouse schemas clinipipe uses, by role, as a spec names them (no SQL here)."""

from __future__ import annotations

from clinipipe.spec.model import SnowflakeTarget, Spec

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
