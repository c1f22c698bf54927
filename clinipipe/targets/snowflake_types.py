"""Snowflake column types for source columns, and the SQL that turns their transport text back
into typed values.

`snowflake_cast(expr, t)` takes a VARCHAR expression holding the text that
`clinipipe.source.catalog.export_expression` wrote for a column of type `t` (NULL for NULL)
and returns a Snowflake expression of type `snowflake_type(t)`. No TRY_ function is used: a
value that does not convert fails the statement. Date and time texts are parsed with explicit
formats, so the account's DATE/TIME/TIMESTAMP_INPUT_FORMAT settings do not matter. The mapping
and what is not exact (Snowflake has no interval, time-with-zone or float32 type, dates before
year 1 or after 9999, or infinities) are documented in ``docs/TYPE_MAPPING.md``.

This module must not import `clinipipe.targets.snowflake` (which imports it).
"""

from __future__ import annotations

from clinipipe.source.catalog import ColumnType

MAX_DECIMAL_WIDTH = 38
"""The widest Snowflake NUMBER; wider PostgreSQL numerics land as VARCHAR (exact text)."""

_ELEMENT = "cp_element"  # the lambda parameter of array casts (Snowflake upper-cases it)

_SIMPLE: dict[str, str] = {
    "bool": "BOOLEAN",
    "int16": "NUMBER(5,0)",
    "int32": "NUMBER(10,0)",
    "int64": "NUMBER(19,0)",
    "float32": "FLOAT",
    "float64": "FLOAT",
    "numeric_unbounded": "VARCHAR",
    "text": "VARCHAR",
    "date": "DATE",
    "time": "TIME(6)",
    "timetz": "VARCHAR",
    "timestamp": "TIMESTAMP_NTZ(6)",
    "timestamptz": "TIMESTAMP_TZ(6)",
    "interval": "OBJECT",
    "uuid": "VARCHAR(36)",
    "json": "VARIANT",
    "bytes": "BINARY",
    "array": "ARRAY",
    "enum": "VARCHAR",
    "inet": "VARCHAR(43)",
    "other": "VARCHAR",
}

_AS_TEXT = frozenset({"numeric_unbounded", "text", "timetz", "uuid", "enum", "inet", "other"})


def snowflake_type(t: ColumnType) -> str:
    """The Snowflake column type for a source column of type `t` (see docs/TYPE_MAPPING.md)."""
    if t.logical == "decimal":
        width, scale = t.decimal_width()
        return "VARCHAR" if width > MAX_DECIMAL_WIDTH else f"NUMBER({width},{scale})"
    if t.logical == "text" and t.length is not None:
        return f"VARCHAR({t.length})"
    return _SIMPLE[t.logical]


def _with_fraction(expr: str, before: str = "") -> str:
    """`expr` with ``.0`` added when PostgreSQL left out a zero fraction of seconds, so one
    explicit ``...SS.FF`` format reads every value (inserted before `before`, the offset)."""
    added = f"REPLACE({expr}, '{before}', '.0{before}')" if before else f"{expr} || '.0'"
    return f"IFF(CONTAINS({expr}, '.'), {expr}, {added})"


def snowflake_cast(expr: str, t: ColumnType) -> str:
    """A Snowflake expression turning the VARCHAR `expr` (a column's transport text) into a
    value of `snowflake_type(t)`; NULL stays NULL, a value that does not convert raises.

    `expr` is evaluated more than once for some types: pass a column reference.
    """
    logical = t.logical
    if logical in _AS_TEXT or (logical == "decimal" and snowflake_type(t) == "VARCHAR"):
        return expr
    if logical == "bool":
        return f"TO_BOOLEAN({expr})"
    if logical in ("int16", "int32", "int64", "decimal"):
        return f"CAST({expr} AS {snowflake_type(t)})"
    if logical in ("float32", "float64"):
        # Snowflake spells the infinities 'inf' / '-inf'; 'NaN' and '-0' read as they are.
        return (
            f"CAST(CASE {expr} WHEN 'Infinity' THEN 'inf' WHEN '-Infinity' THEN '-inf' "
            f"ELSE {expr} END AS FLOAT)"
        )
    if logical == "date":
        return f"TO_DATE({expr}, 'YYYY-MM-DD')"
    if logical == "time":
        return f"TO_TIME({_with_fraction(expr)}, 'HH24:MI:SS.FF')"
    if logical == "timestamp":
        return f"TO_TIMESTAMP_NTZ({_with_fraction(expr)}, 'YYYY-MM-DD HH24:MI:SS.FF')"
    if logical == "timestamptz":
        # Exported in UTC, so the offset is always '+00'.
        return f"TO_TIMESTAMP_TZ({_with_fraction(expr, '+')}, 'YYYY-MM-DD HH24:MI:SS.FFTZH')"
    if logical == "interval":
        # '<months> months <days> days <microseconds> microseconds' -> the three exact fields.
        return (
            f"IFF({expr} IS NULL, NULL, OBJECT_CONSTRUCT("
            f"'months', CAST(SPLIT_PART({expr}, ' ', 1) AS NUMBER(10,0)), "
            f"'days', CAST(SPLIT_PART({expr}, ' ', 3) AS NUMBER(10,0)), "
            f"'microseconds', CAST(SPLIT_PART({expr}, ' ', 5) AS NUMBER(19,0))))"
        )
    if logical == "json":
        return f"PARSE_JSON({expr})"
    if logical == "bytes":
        return f"TO_BINARY({expr}, 'HEX')"
    if logical == "array":
        assert t.element is not None
        as_array = f"CAST(PARSE_JSON({expr}) AS ARRAY)"
        text = f"CAST({_ELEMENT} AS VARCHAR)"
        element = snowflake_cast(text, t.element)
        if element == text:  # elements stay strings
            return as_array
        return f"TRANSFORM({as_array}, {_ELEMENT} VARIANT -> {element})"
    raise ValueError(f"no Snowflake mapping for logical type {logical!r}")
