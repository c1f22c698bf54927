"""DuckDB column types for source columns, and the SQL that turns their transport text back
into typed values.

`duckdb_cast(expr, t)` takes a VARCHAR expression holding the text that
`clinipipe.source.catalog.export_expression` wrote for a column of type `t` (NULL for NULL)
and returns a DuckDB expression of type `duckdb_type(t)`. A value that does not fit fails the
statement (DuckDB conversion error); nothing is silently replaced by NULL. The mapping and its
exactness are documented in ``docs/TYPE_MAPPING.md`` and pinned by ``tests/test_types.py``.

`duckdb_stream_cast(expr, t)` does the same for CDC, from pgoutput's text of the value (its output
function text under `clinipipe.source.stream_settings.STREAM_SESSION_OPTIONS`): `duckdb_cast`
itself where that text is the export text, else a checked rewrite into it first.

It imports no other module of the DuckDB target (they import it).
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
from clinipipe.sql.dialect import Dialect

MAX_DECIMAL_WIDTH = 38
"""The widest DuckDB DECIMAL; wider PostgreSQL numerics land as VARCHAR (exact text)."""

_QUOTE = Dialect()  # DuckDB quotes identifiers exactly like the base dialect
_ELEMENT = _QUOTE.quote_ident("__clinipipe_element")  # the lambda parameter of array casts
_TOKEN = _QUOTE.quote_ident("__clinipipe_token")  # ... and of array text parsing

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


def duckdb_typed_value(expr: str, t: ColumnType, form: str, overflow: str | None = None) -> str:
    """A DuckDB expression of type `duckdb_type(t)` for a column of the backfill's typed
    transport (`clinipipe.source.binary_reader`): `form` ``typed`` is the Arrow value itself
    (its Arrow type is the column's DuckDB type); ``guarded`` is the Arrow value, else the
    export text in the column `overflow` read by `duckdb_cast` (infinite and very large dates
    and timestamps); ``scaled`` is a ``numeric(p, s)`` as the BIGINT ``value * 10^s``;
    ``text`` is the export text read by `duckdb_cast`, as on the CSV path."""
    if form == "typed":
        return expr
    if form == "guarded":
        assert overflow is not None
        return f"COALESCE({expr}, {duckdb_cast(overflow, t)})"
    if form == "scaled":
        # `expr` is the BIGINT value * 10^scale: scaled back in exact decimal arithmetic.
        width, scale = t.decimal_width()
        if scale == 0:
            return f"CAST({expr} AS DECIMAL({width},0))"
        unit = f"0.{'0' * (scale - 1)}1"
        return (
            f"CAST(CAST({expr} AS DECIMAL(18,0)) * CAST('{unit}' AS DECIMAL(18,{scale})) "
            f"AS DECIMAL({width},{scale}))"
        )
    return duckdb_cast(expr, t)


# --------------------------------------------------------------------------------------------
# CDC: pgoutput's text
# --------------------------------------------------------------------------------------------


def duckdb_stream_cast(expr: str, t: ColumnType) -> str:
    """A DuckDB expression turning the VARCHAR `expr`, pgoutput's text of a value of type `t`
    (its output function text under `STREAM_SESSION_OPTIONS`), into a value of
    `duckdb_type(t)`: the same value `duckdb_cast` makes of the backfill's export text.

    Where the two texts differ (`stream_kind`), the value is first checked against the form
    `clinipipe.source.stream_settings` describes and rewritten into the export text, then
    `duckdb_cast` reads it; a value not in that form fails the statement with a message that
    says why (it never contains the value). NULL stays NULL. `expr` is evaluated more than
    once: pass a column reference.
    """
    kind = stream_kind(t)
    if kind == "same":
        return duckdb_cast(expr, t)
    if kind == "interval":
        pattern = _QUOTE.quote_string(INTERVAL_PATTERN)
        months, days, micros = interval_fields(lambda n: f"regexp_extract({expr}, {pattern}, {n})")
        text = (
            f"CAST({months} AS VARCHAR) || ' months ' || CAST({days} AS VARCHAR) || ' days ' "
            f"|| CAST({micros} AS VARCHAR) || ' microseconds'"
        )
        valid = f"regexp_full_match({expr}, {pattern}) AND {expr} <> ''"
        return _checked(expr, valid, duckdb_cast(text, t), INTERVAL_MESSAGE)
    if kind == "money":
        pattern = _QUOTE.quote_string(MONEY_PATTERN)
        text = money_text(lambda n: f"regexp_extract({expr}, {pattern}, {n})")
        valid = f"regexp_full_match({expr}, {pattern})"
        return _checked(expr, valid, duckdb_cast(text, t), MONEY_MESSAGE)
    if kind == "bytes":
        valid = f"regexp_full_match({expr}, {_QUOTE.quote_string(BYTEA_PATTERN)})"
        return _checked(expr, valid, duckdb_cast(bytea_text(expr), t), BYTEA_MESSAGE)
    if kind == "array":
        delimiter = array_delimiter(t)
        assert delimiter is not None
        valid = f"regexp_full_match({expr}, {_QUOTE.quote_string(array_pattern(delimiter))})"
        json = _array_as_json(expr, delimiter)
        return _checked(expr, valid, duckdb_cast(json, t), ARRAY_MESSAGE)
    if kind == "json_array":
        valid = f"regexp_full_match({expr}, {_QUOTE.quote_string(any_array_pattern(','))})"
        json = _array_as_json(f"substr({expr}, strpos({expr}, '{{'))", ",")
        return _checked(expr, valid, duckdb_cast(json, t), JSON_ARRAY_MESSAGE)
    assert kind == "undecodable_array"
    nothing = f"CAST(NULL AS {duckdb_type(t)})"
    return _checked(expr, f"{expr} IS NULL", nothing, undecodable_array_message(t))


def _checked(expr: str, valid: str, value: str, message: str) -> str:
    """`value` where `valid` holds, NULL for NULL, else the statement fails with `message`."""
    return (
        f"CASE WHEN {expr} IS NULL THEN NULL WHEN {valid} THEN {value} "
        f"ELSE error({_QUOTE.quote_string(message)}) END"
    )


def _array_as_json(source: str, delimiter: str) -> str:
    """The export's JSON text of the array text `source` (from its first ``{``): braces become
    brackets, NULL null, every element a JSON string of its unescaped text."""
    tokens = f"regexp_extract_all({source}, {_QUOTE.quote_string(array_token_pattern(delimiter))})"
    unquoted = (
        f"regexp_replace(substr({_TOKEN}, 2, length({_TOKEN}) - 2), "
        f"{_QUOTE.quote_string(ARRAY_UNESCAPE_PATTERN)}, '\\1', 'g')"
    )
    element = (
        f"CAST(to_json(CASE WHEN starts_with({_TOKEN}, '\"') THEN {unquoted} ELSE {_TOKEN} END) "
        "AS VARCHAR)"
    )
    each = (
        f"CASE {_TOKEN} WHEN '{{' THEN '[' WHEN '}}' THEN ']' "
        f"WHEN {_QUOTE.quote_string(delimiter)} THEN ',' WHEN 'NULL' THEN 'null' "
        f"ELSE {element} END"
    )
    return f"array_to_string(list_transform({tokens}, lambda {_TOKEN}: {each}), '')"
