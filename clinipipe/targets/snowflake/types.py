"""Snowflake column types for source columns, and the SQL that turns their transport text back
into typed values.

`snowflake_cast(expr, t)` takes a VARCHAR expression holding the text that
`clinipipe.source.catalog.export_expression` wrote for a column of type `t` (NULL for NULL)
and returns a Snowflake expression of type `snowflake_type(t)`. No TRY_ function is used: a
value that does not convert fails the statement. Date and time texts are parsed with explicit
formats, so the account's DATE/TIME/TIMESTAMP_INPUT_FORMAT settings do not matter. The mapping
and what is not exact (Snowflake has no interval, time-with-zone or float32 type, dates before
year 1 or after 9999, or infinities) are documented in ``docs/TYPE_MAPPING.md``.

`snowflake_stream_cast(expr, t)` does the same for CDC, from pgoutput's text of the value (its
output function text under `clinipipe.source.stream_settings.STREAM_SESSION_OPTIONS`):
`snowflake_cast` itself where that text is the export text, else a checked rewrite into it
first.

It imports no other module of the Snowflake target (they import it).
"""

from __future__ import annotations

from clinipipe.source.catalog import ColumnType
from clinipipe.source.stream_settings import (
    ARRAY_MESSAGE,
    ARRAY_UNESCAPE_PATTERN,
    BYTEA_MESSAGE,
    BYTEA_PATTERN,
    INTERVAL_MESSAGE,
    INTERVAL_PATTERN,
    JSON_ARRAY_MESSAGE,
    MONEY_MESSAGE,
    MONEY_PATTERN,
    any_array_pattern,
    array_delimiter,
    array_pattern,
    array_token_pattern,
    bytea_text,
    interval_fields,
    money_text,
    stream_kind,
    undecodable_array_message,
)

MAX_DECIMAL_WIDTH = 38
"""The widest Snowflake NUMBER; wider PostgreSQL numerics land as VARCHAR (exact text)."""

_ELEMENT = "cp_element"  # the lambda parameter of array casts (Snowflake upper-cases it)
_TOKEN = "cp_token"  # ... and of array text parsing

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


def _interval_object(months: str, days: str, micros: str) -> str:
    """The OBJECT an interval lands as, from SQL for its three stored fields."""
    return f"OBJECT_CONSTRUCT('months', {months}, 'days', {days}, 'microseconds', {micros})"


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
        months, days, micros = (
            f"CAST(SPLIT_PART({expr}, ' ', {n}) AS NUMBER({width},0))"
            for n, width in ((1, 10), (3, 10), (5, 19))
        )
        return f"IFF({expr} IS NULL, NULL, {_interval_object(months, days, micros)})"
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


# --------------------------------------------------------------------------------------------
# CDC: pgoutput's text
# --------------------------------------------------------------------------------------------


def snowflake_stream_cast(expr: str, t: ColumnType) -> str:
    """A Snowflake expression turning the VARCHAR `expr`, pgoutput's text of a value of type
    `t` (its output function text under `STREAM_SESSION_OPTIONS`), into a value of
    `snowflake_type(t)`: the same value `snowflake_cast` makes of the backfill's export text.

    Where the two texts differ (`stream_kind`), the value is first checked against the form
    `clinipipe.source.stream_settings` describes and rewritten into the export text (for an
    interval: into its fields), then read as `snowflake_cast` reads the export text; a value
    not in that form fails the statement (see `_checked`). NULL stays NULL. `expr` is
    evaluated more than once: pass a column reference.
    """
    kind = stream_kind(t)
    if kind == "same":
        return snowflake_cast(expr, t)
    if kind == "interval":
        pattern = _raw(INTERVAL_PATTERN)
        fields = interval_fields(lambda n: f"REGEXP_SUBSTR({expr}, {pattern}, 1, 1, 'e', {n})")
        valid = f"REGEXP_LIKE({expr}, {pattern}) AND {expr} <> ''"
        return _checked(expr, valid, _interval_object(*fields), INTERVAL_MESSAGE)
    if kind == "money":
        pattern = _raw(MONEY_PATTERN)
        text = money_text(lambda n: f"REGEXP_SUBSTR({expr}, {pattern}, 1, 1, 'e', {n})")
        valid = f"REGEXP_LIKE({expr}, {pattern})"
        return _checked(expr, valid, snowflake_cast(text, t), MONEY_MESSAGE)
    if kind == "bytes":
        valid = f"REGEXP_LIKE({expr}, {_raw(BYTEA_PATTERN)})"
        return _checked(expr, valid, snowflake_cast(bytea_text(expr), t), BYTEA_MESSAGE)
    if kind == "array":
        delimiter = array_delimiter(t)
        assert delimiter is not None
        valid = f"REGEXP_LIKE({expr}, {_raw(array_pattern(delimiter))})"
        json = _array_as_json(expr, delimiter)
        return _checked(expr, valid, snowflake_cast(json, t), ARRAY_MESSAGE)
    if kind == "json_array":
        valid = f"REGEXP_LIKE({expr}, {_raw(any_array_pattern(','))})"
        json = _array_as_json(f"SUBSTR({expr}, POSITION('{{' IN {expr}))", ",")
        return _checked(expr, valid, snowflake_cast(json, t), JSON_ARRAY_MESSAGE)
    assert kind == "undecodable_array"
    nothing = f"CAST(NULL AS {snowflake_type(t)})"
    return _checked(expr, f"{expr} IS NULL", nothing, undecodable_array_message(t))


def _raw(text: str) -> str:
    """A dollar-quoted literal: backslashes stay as they are (regular expressions)."""
    assert "$$" not in text and not text.endswith("$"), text
    return f"$${text}$$"


def _checked(expr: str, valid: str, value: str, message: str) -> str:
    """`value` where `valid` holds, NULL for NULL, else the statement fails.

    Snowflake has no function that raises an error. A failed check casts `message` to a
    number instead, which fails with "Numeric value '<message>' is not recognized". The cast
    sees '0' wherever the check passes (or the value is NULL), so the statement cannot fail
    because of it even if Snowflake evaluates it on every row.
    """
    assert "'" not in message and "\\" not in message
    return (
        f"CASE WHEN {expr} IS NULL THEN NULL "
        f"WHEN CAST(IFF(COALESCE({valid}, TRUE), '0', '{message}') AS INT) = 0 THEN {value} END"
    )


def _array_as_json(source: str, delimiter: str) -> str:
    """The export's JSON text of the array text `source` (from its first ``{``): braces become
    brackets, NULL null, every element a JSON string of its unescaped text."""
    tokens = f"REGEXP_SUBSTR_ALL({source}, {_raw(array_token_pattern(delimiter))})"
    unquoted = (
        f"REGEXP_REPLACE(SUBSTR({_TOKEN}, 2, LENGTH({_TOKEN}) - 2), "
        f"{_raw(ARRAY_UNESCAPE_PATTERN)}, $$\\1$$)"
    )
    element = f"TO_JSON(TO_VARIANT(IFF(STARTSWITH({_TOKEN}, '\"'), {unquoted}, {_TOKEN})))"
    each = (
        f"CASE {_TOKEN} WHEN '{{' THEN '[' WHEN '}}' THEN ']' WHEN '{delimiter}' THEN ',' "
        f"WHEN 'NULL' THEN 'null' ELSE {element} END"
    )
    return f"ARRAY_TO_STRING(TRANSFORM({tokens}, {_TOKEN} VARCHAR -> {each}), '')"
