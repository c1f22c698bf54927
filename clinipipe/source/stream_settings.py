"""The replication session's settings, and the text pgoutput sends under them.

pgoutput writes every changed column as the type's *output function* text (tuple value kind
``'t'``), produced inside the walsender with that session's settings. `STREAM_SESSION_OPTIONS`
fixes every setting an output function in clinipipe's type mapping depends on; pass it as
``options=`` to ``psycopg2.connect(..., connection_factory=LogicalReplicationConnection)``
(startup-packet options outrank ``ALTER DATABASE/ROLE ... SET`` defaults and apply to what the
walsender's output plugin writes; ``tests/test_cdc_types.py`` proves both).

Under these settings the output text is the backfill's export text
(`clinipipe.source.catalog.export_expression`) for every logical type but the ones below,
described here once for both warehouses (`clinipipe.targets.duckdb.types.duckdb_stream_cast`,
`clinipipe.targets.snowflake.types.snowflake_stream_cast`):

===================  ==========================================  ============================
kind                 pgoutput text                               export text
===================  ==========================================  ============================
``interval``         ``1 year 2 mons -3 days +04:05:06.789``     ``14 months -3 days
                     (IntervalStyle postgres)                    14706789000 microseconds``
``money``            ``-$1,234.56`` (lc_monetary C)              ``-1234.56``
``bytes``            ``\\x00ff`` (bytea_output hex)              ``00ff``
``array``            ``{1,NULL,"a,b","x\\"y"}``                  ``["1",null,"a,b","x\\"y"]``
``json_array``       ``[0:1]={{"1 day",NULL},{...}}``            ``[["1 day",null],[...]]``
===================  ==========================================  ============================

The patterns below describe those texts. They use capturing groups and bracket expressions only,
so they mean the same to RE2 (DuckDB) and to POSIX ERE (Snowflake), and they are unambiguous:
the first match in a text that matches as a whole is the whole text. Every value is matched in
full before it is converted; a value that does not match fails the statement with one of the
``*_MESSAGE`` texts (never a silently different value).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from clinipipe.source.catalog import ColumnType
from clinipipe.source.postgres import SourceError

STREAM_SETTINGS: dict[str, str] = {
    # pgoutput converts every text to the client encoding.
    "client_encoding": "UTF8",
    # timestamptz as '2024-01-01 12:00:00+00'.
    "TimeZone": "UTC",
    # Dates and timestamps as the backfill exports them ('YYYY-MM-DD[ BC]').
    "DateStyle": "ISO, YMD",
    # As in the backfill's session, so intervals inside interval[] (exported as JSON) and inside
    # composites and ranges print the same in both paths.
    "IntervalStyle": "postgres",
    # The shortest text that reads back to the same float bits.
    "extra_float_digits": "3",
    "bytea_output": "hex",
    # money as '-$1,234.56', two fraction digits.
    "lc_monetary": "C",
}
"""Every setting an output function in clinipipe's type mapping depends on, as ``SHOW``
prints it."""

STREAM_SESSION_OPTIONS: str = " ".join(
    "-c " + name + "=" + value.replace(" ", "\\ ") for name, value in STREAM_SETTINGS.items()
)
"""`STREAM_SETTINGS` as libpq ``options`` for the replication connection:
``-c client_encoding=UTF8 -c TimeZone=UTC -c DateStyle=ISO,\\ YMD -c IntervalStyle=postgres
-c extra_float_digits=3 -c bytea_output=hex -c lc_monetary=C`` (libpq splits options at
spaces that are not backslash-escaped)."""


def verify_stream_settings(cursor: Any) -> None:
    """Raise `SourceError` unless the session of `cursor` (a psycopg2 cursor, also of a
    ``LogicalReplicationConnection`` before ``start_replication``) runs with `STREAM_SETTINGS`.

    For most types a wrong setting would not fail the load but change values silently (floats
    rounded, day and month swapped): check before streaming.
    """
    wrong = []
    for name, value in STREAM_SETTINGS.items():
        cursor.execute(f"SHOW {name}")
        row = cursor.fetchone()
        if row is None or row[0] != value:
            wrong.append(f"{name} is {row[0] if row else None!r}, not {value!r}")
    if wrong:
        raise SourceError(
            "the replication session does not use clinipipe's settings ("
            + "; ".join(wrong)
            + "): pass STREAM_SESSION_OPTIONS as the connection's options"
        )


# --------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------

INTERVAL_PATTERN = (
    r"([+-]?[0-9]+ years? ?)?([+-]?[0-9]+ mons? ?)?([+-]?[0-9]+ days? ?)?"
    r"(([+-]?)([0-9]+):([0-9]{2}):([0-9]{2})([.][0-9]{1,6})?)?"
)
"""IntervalStyle postgres: ``[±y year[s]] [±m mon[s]] [±d day[s]] [±]H:MM:SS[.ffffff]``; each
part only when not zero, ``00:00:00`` for a zero interval, a ``+`` on a positive part after a
negative one, one sign for the whole time part. Groups (nine at most: DuckDB's limit): 1 years,
2 months, 3 days (each with its unit), 5 time sign, 6 hours (any number of digits), 7 minutes,
8 seconds, 9 fraction with its dot."""

INTERVAL_MESSAGE = (
    "clinipipe: an interval from the replication stream is not in IntervalStyle postgres "
    "form (infinite intervals cannot be loaded; check STREAM_SESSION_OPTIONS)"
)

MONEY_PATTERN = r"(-?)[$]([0-9]{1,3}(,[0-9]{3})*)[.]([0-9]{2})"
"""lc_monetary C: ``$1,234.56``, ``-$92,233,720,368,547,758.08``, ``$0.00``. Groups: 1 sign,
2 integer digits with thousands separators, 4 cents."""

MONEY_MESSAGE = (
    "clinipipe: a money value from the replication stream is not in lc_monetary C form "
    "(check STREAM_SESSION_OPTIONS)"
)

BYTEA_PATTERN = r"\\x[0-9a-f]*"
"""bytea_output hex: ``\\x`` and two lower-case hex digits per byte."""

BYTEA_MESSAGE = (
    "clinipipe: a bytea value from the replication stream is not in bytea_output hex form "
    "(check STREAM_SESSION_OPTIONS)"
)


def interval_fields(group: Callable[[int], str]) -> tuple[str, str, str]:
    """SQL for the three stored fields (months, days, microseconds; BIGINT) of an interval
    text matching `INTERVAL_PATTERN`; `group(n)` is the dialect's SQL for group n ('' or NULL
    when the group did not take part). Plain SQL that DuckDB and Snowflake read alike.

    Every partial sum lies between 0 and the result, so no intermediate value overflows.
    """

    def number(text: str) -> str:  # absent -> 0
        return f"CAST(COALESCE(NULLIF({text}, ''), '0') AS BIGINT)"

    def part(n: int) -> str:  # '-3 days ' -> -3
        return number(f"SPLIT_PART({group(n)}, ' ', 1)")

    sign = f"CASE WHEN {group(5)} = '-' THEN -1 ELSE 1 END"
    fraction = f"CAST(RPAD(COALESCE(SUBSTR({group(9)}, 2), ''), 6, '0') AS BIGINT)"
    months = f"{part(1)} * 12 + {part(2)}"
    micros = (
        f"{sign} * {number(group(6))} * 3600000000 + {sign} * {number(group(7))} * 60000000 "
        f"+ {sign} * {number(group(8))} * 1000000 + {sign} * {fraction}"
    )
    return months, part(3), micros


def money_text(group: Callable[[int], str]) -> str:
    """SQL for the export text of money (``col::numeric``: ``-1234.56``) from a text matching
    `MONEY_PATTERN`."""
    return f"COALESCE({group(1)}, '') || REPLACE({group(2)}, ',', '') || '.' || {group(4)}"


def bytea_text(expr: str) -> str:
    """SQL for the export text of bytea (hex without ``\\x``) from a text matching
    `BYTEA_PATTERN`."""
    return f"SUBSTR({expr}, 3)"


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------
#
# array_out writes '{' elements separated by the element type's delimiter '}', NULL elements as
# the bare word NULL, and puts an element in double quotes, with '"' and '\' backslash-escaped,
# when it is empty, equals NULL in any case, or contains '"', '\', '{', '}', the delimiter or
# white space (space, \t, \n, \r, \v, \f). A lower bound other than 1 adds a '[lo:hi]...='
# prefix; more dimensions nest braces.

ARRAY_UNESCAPE_PATTERN = r'\\(["\\])'
"""A backslash escape inside a quoted element; replace with group 1."""

_QUOTED = r'"([^"\\]|\\["\\])*"'


def _element(delimiter: str) -> str:
    """One element, quoted or bare. `delimiter` is ',' or ';' (plain characters in every
    regular expression dialect, also inside brackets)."""
    return f'({_QUOTED}|[^"{delimiter}\\\\{{}}[:space:]]+)'


def array_token_pattern(delimiter: str) -> str:
    """One element (quoted or bare) or one of ``{``, ``}``, `delimiter`: the tokens of an array
    text from its first ``{`` on."""
    return f"{_element(delimiter)}|[{{}}{delimiter}]"


def array_pattern(delimiter: str) -> str:
    """A one-dimensional array with lower bound 1 (the only arrays the backfill exports typed)."""
    element = _element(delimiter)
    return f"[{{]({element}({delimiter}{element})*)?[}}]"


def any_array_pattern(delimiter: str) -> str:
    """An array of any dimensions and bounds (``json_array``: exported with ``to_json``)."""
    return r"(\[-?[0-9]+:-?[0-9]+\])*=?[{](" + array_token_pattern(delimiter) + r")*[}]"


ARRAY_MESSAGE = (
    "clinipipe: an array from the replication stream is not one-dimensional with lower bound 1 "
    "(only such arrays are supported, as in the backfill)"
)

JSON_ARRAY_MESSAGE = "clinipipe: an array from the replication stream is not an array text"

# Element types of kind "other" whose array delimiter is known: PostgreSQL's own types
# (pg_catalog, shown unqualified by format_type). Every one uses ',' but box (';'). Composite,
# extension and other user-defined types may declare any delimiter, which ColumnType does not
# record: their arrays are refused rather than split at the wrong character.
CORE_ARRAY_DELIMITERS: dict[str, str] = {
    name: "," for name in (
        "aclitem", "bit", "bit varying", '"char"', "cid", "circle", "datemultirange",
        "daterange", "gtsvector", "int4multirange", "int4range", "int8multirange", "int8range",
        "jsonpath", "line", "lseg", "macaddr", "macaddr8", "nummultirange", "numrange", "path",
        "pg_lsn", "pg_snapshot", "point", "polygon", "refcursor", "regclass", "regcollation",
        "regconfig", "regdictionary", "regnamespace", "regoper", "regoperator", "regproc",
        "regprocedure", "regrole", "regtype", "tid", "tsmultirange", "tsquery", "tsrange",
        "tstzmultirange", "tstzrange", "tsvector", "txid_snapshot", "xid", "xid8", "xml",
    )
} | {"box": ";"}  # fmt: skip


def array_delimiter(t: ColumnType) -> str | None:
    """The delimiter between the elements of an ``array`` (or ``json_array``) column's text,
    or None when it is not known (arrays of composite, extension and user-defined types)."""
    if t.logical == "json":  # interval[], bytea[], money[]: all ','
        return ","
    assert t.element is not None
    if t.element.logical != "other":
        return ","  # every built-in, enum and citext type
    return CORE_ARRAY_DELIMITERS.get(re.sub(r"\(.*\)", "", t.element.pg_type))


def undecodable_array_message(t: ColumnType) -> str:
    shown = re.sub(r"[^A-Za-z0-9_ .()\[\]-]", "", t.pg_type)
    return (
        f"clinipipe: a {shown} value from the replication stream cannot be decoded: the "
        "element delimiter of composite, extension and user-defined types is not known"
    )


def stream_kind(t: ColumnType) -> str:
    """How pgoutput's text of a `t` value relates to the export text: ``same`` (identical
    under `STREAM_SESSION_OPTIONS`), ``interval``, ``money``, ``bytes``, ``array`` (a typed
    array), ``json_array`` (interval[], bytea[], money[]: exported as ``to_json``) or
    ``undecodable_array``."""
    if t.logical in ("interval", "bytes"):
        return t.logical
    if t.logical == "numeric_unbounded" and t.pg_type == "money":
        return "money"
    if t.logical == "json" and t.pg_type.endswith("[]"):
        return "json_array"
    if t.logical == "array":
        return "array" if array_delimiter(t) is not None else "undecodable_array"
    return "same"
