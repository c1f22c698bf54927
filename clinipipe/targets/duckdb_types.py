"""DuckDB column types for source columns, and the SQL that turns their transport text back
into typed values.

`duckdb_cast(expr, t)` takes a VARCHAR expression holding the text that
`clinipipe.source.catalog.export_expression` wrote for a column of type `t` (NULL for NULL)
and returns a DuckDB expression of type `duckdb_type(t)`. A value that does not fit fails the
statement (DuckDB conversion error); nothing is silently replaced by NULL. The mapping and its
exactness are documented in ``docs/TYPE_MAPPING.md`` and pinned by ``tests/test_types.py``.

This module must not import `clinipipe.targets.duckdb` (which imports it).
"""

from __future__ import annotations

from clinipipe.source.catalog import ColumnType
from clinipipe.sql.dialect import Dialect

MAX_DECIMAL_WIDTH = 38
"""The widest DuckDB DECIMAL; wider PostgreSQL numerics land as VARCHAR (exact text)."""

_QUOTE = Dialect()  # DuckDB quotes identifiers exactly like the base dialect
_ELEMENT = _QUOTE.quote_ident("__clinipipe_element")  # the lambda parameter of array casts

_SIMPLE: dict[str, str] = {
    "bool": "BOOLEAN",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "numeric_unbounded": "VARCHAR",
    "text": "VARCHAR",
    "date": "DATE",
    "time": "TIME",
    "timetz": "TIMETZ",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "interval": "INTERVAL",
    "uuid": "UUID",
    "json": "JSON",
    "bytes": "BLOB",
    "enum": "VARCHAR",
    "inet": "VARCHAR",
    "other": "VARCHAR",
}

# Types whose transport text is already the stored value.
_AS_TEXT = frozenset({"numeric_unbounded", "text", "enum", "inet", "other"})


def duckdb_type(t: ColumnType) -> str:
    """The DuckDB column type for a source column of type `t` (see docs/TYPE_MAPPING.md)."""
    if t.logical == "decimal":
        width, scale = t.decimal_width()
        return "VARCHAR" if width > MAX_DECIMAL_WIDTH else f"DECIMAL({width},{scale})"
    if t.logical == "array":
        assert t.element is not None
        return f"{duckdb_type(t.element)}[]"
    return _SIMPLE[t.logical]


def _before_christ(expr: str) -> str:
    """PostgreSQL's ``0044-03-15[ 12:00:00+00] BC`` as DuckDB's ``0044-03-15 (BC)[ ...]``.

    DuckDB's date parser ignores a trailing `` BC`` (it would read 44 BC as AD 44) and its
    timestamp parser rejects it; DuckDB's own era marker follows the date part. BC years have
    at most four digits in PostgreSQL, so the date part is always ten characters.
    """
    return (
        f"CASE WHEN suffix({expr}, ' BC') "
        f"THEN substr({expr}, 1, 10) || ' (BC)' || substr({expr}, 11, length({expr}) - 13) "
        f"ELSE {expr} END"
    )


def duckdb_cast(expr: str, t: ColumnType) -> str:
    """A DuckDB expression turning the VARCHAR `expr` (a column's transport text) into a value
    of `duckdb_type(t)`; NULL stays NULL, a value that does not fit raises.

    `expr` is evaluated more than once for dates, timestamps and arrays: pass a column
    reference, not a volatile expression.
    """
    logical = t.logical
    if logical in _AS_TEXT or (logical == "decimal" and duckdb_type(t) == "VARCHAR"):
        return expr
    if logical == "bytes":
        return f"unhex({expr})"
    if logical in ("date", "timestamp", "timestamptz"):
        return f"CAST({_before_christ(expr)} AS {duckdb_type(t)})"
    if logical == "array":
        assert t.element is not None
        as_list = f"CAST(CAST({expr} AS JSON) AS VARCHAR[])"
        element = duckdb_cast(_ELEMENT, t.element)
        if element == _ELEMENT:
            return as_list
        return f"list_transform({as_list}, lambda {_ELEMENT}: {element})"
    return f"CAST({expr} AS {duckdb_type(t)})"
