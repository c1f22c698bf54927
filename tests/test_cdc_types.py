"""The type matrix of tests/test_types.py, replicated through pgoutput instead of exported.

The CDC path reads pgoutput's text (each type's output function, written by the walsender in
its own session) instead of the backfill's export expressions. Here the matrix table of
`tests.test_types` is copied, after a publication and logical slots exist, into a second table
(odd rows inserted with their values, even rows inserted empty and then updated to them, so both
Insert and Update tuples carry every value). The slot is read directly with psycopg2 and decoded
by `clinipipe.source.pgoutput.Decoder` into `TableChanges.to_arrow()`; DuckDB then creates the
table with `duckdb_type` and inserts ``duckdb_stream_cast(...)`` of the arrow columns, and every
column is compared with PostgreSQL exactly as tests/test_types.py compares the backfill.

The database carries hostile defaults (``ALTER DATABASE ... SET``), which the walsender applies:
`STREAM_SESSION_OPTIONS` must override them. A second slot read without those options proves the
defaults did reach pgoutput's output, and that `duckdb_stream_cast` refuses the texts they produce
instead of misreading them.
"""

from __future__ import annotations

import json
import random
import re
import select
import time
import uuid
from collections.abc import Iterator
from typing import Any

import duckdb
import psycopg2
import psycopg2.errors
import psycopg2.extras
import pyarrow as pa
import pytest

from clinipipe.source.catalog import (
    EXPORT_SESSION_SETTINGS,
    LOGICAL_TYPES,
    ColumnType,
    TableSchema,
)
from clinipipe.source.pgoutput import Change, Decoder, TableChanges
from clinipipe.source.postgres import SourceError
from clinipipe.source.stream_settings import (
    ARRAY_MESSAGE,
    BYTEA_MESSAGE,
    CORE_ARRAY_DELIMITERS,
    INTERVAL_MESSAGE,
    INTERVAL_PATTERN,
    JSON_ARRAY_MESSAGE,
    MONEY_MESSAGE,
    MONEY_PATTERN,
    STREAM_SESSION_OPTIONS,
    STREAM_SETTINGS,
    array_delimiter,
    stream_kind,
    verify_stream_settings,
)
from clinipipe.targets.duckdb.types import duckdb_cast, duckdb_stream_cast, duckdb_type
from clinipipe.targets.snowflake.types import snowflake_cast, snowflake_stream_cast, snowflake_type
from tests.test_types import (
    GOLDEN_TYPES,
    HOSTILE_SETTINGS,
    MATRIX,
    N_ROWS,
    Q,
    T,
    _checksum_sql,
    _compare_floats,
    _execute,
    _introspect,
    _is_float,
    _matrix_sql,
    _per_row_sql,
    con_quote,
    duck_canonical,
    pg_canonical,
    snowflake_cursor,  # noqa: F401  (fixture)
)

COLUMNS = ["id", *MATRIX]

# Arrays beyond the matrix: what the backfill refuses (more dimensions, other lower bounds), what
# it exports as JSON in any shape (interval[], bytea[], money[]), box[] (elements separated by
# ';') and an array of a composite type (delimiter unknown to clinipipe: refused).
ODD_ARRAYS: dict[str, tuple[str, str]] = {
    "int_2d": ("integer[]", "'{{1,2},{3,4}}'"),
    "int_lower_0": ("integer[]", "'[0:1]={1,2}'"),
    "interval_2d": (
        "interval[]",
        '\'[0:1][2:3]={{"1 year -2 days 00:00:01.5",NULL},{"-1 mon","00:00:00"}}\'',
    ),
    "bytea_arr": ("bytea[]", "ARRAY['\\x00ff'::bytea, NULL, '\\x'::bytea]"),
    "money_arr": ("money[]", "'{1.5,-92233720368547758.08,NULL}'"),
    "box_arr": ("box[]", "'{(1,1),(0,0);(3,3),(2,2)}'"),
    "pair_arr": ("pair[]", "ARRAY[ROW(1, 'a,b')::pair, NULL]"),
}


def _copy_sql() -> str:
    """tx 1 inserts odd rows with their values and even rows empty; tx 2 updates the even rows
    to their values. ``cdc_odd`` gets one row of the odd arrays and one of NULLs."""
    columns = ", ".join(Q(c) for c in MATRIX)
    sources = ", ".join(f"m.{Q(c)}" for c in MATRIX)
    odd_values = ", ".join(f"({literal})::{pg}" for pg, literal in ODD_ARRAYS.values())
    return (
        "BEGIN;"
        "INSERT INTO cdc_matrix SELECT * FROM type_matrix WHERE id % 2 = 1;"
        "INSERT INTO cdc_matrix (id) SELECT id FROM type_matrix WHERE id % 2 = 0;"
        f"INSERT INTO cdc_odd VALUES (1, {odd_values}), (2{', NULL' * len(ODD_ARRAYS)});"
        "COMMIT;"
        f"UPDATE cdc_matrix c SET ({columns}) = ({sources}) FROM type_matrix m "
        "WHERE m.id = c.id AND c.id % 2 = 0;"
    )


def _expected_changes() -> int:
    return N_ROWS + N_ROWS // 2 + 2  # inserts, updates of the even ids, cdc_odd


def _read_slot(dsn: str, slot: str, options: str | None) -> dict[str, pa.Table]:
    """Every change in `slot` (publication ``cdc_pub``), decoded: table name -> arrow."""
    kwargs = {} if options is None else {"options": options}
    con = psycopg2.connect(
        dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection, **kwargs
    )
    try:
        cur = con.cursor()
        if options == STREAM_SESSION_OPTIONS:
            verify_stream_settings(cur)  # on the replication connection itself
        cur.start_replication(
            slot_name=slot,
            decode=False,
            options={"proto_version": "1", "publication_names": "cdc_pub"},
        )
        decoder = Decoder()
        changes = 0
        deadline = time.monotonic() + 120  # waits for the changes; a hang guard, not a limit
        while changes < _expected_changes():
            assert time.monotonic() < deadline, f"only {changes} changes arrived"
            message = cur.read_message()
            if message is None:
                select.select([cur], [], [], 0.5)
                continue
            if isinstance(decoder.decode(bytes(message.payload)), Change):
                changes += 1
    finally:
        con.close()
    pending = decoder.take()
    buffers = pending.values() if isinstance(pending, dict) else pending
    tables: dict[str, list[pa.Table]] = {}
    for buffer in buffers:
        if isinstance(buffer, TableChanges):
            tables.setdefault(buffer.relation.name, []).append(buffer.to_arrow())
    return {name: pa.concat_tables(parts) for name, parts in tables.items()}


# The last change per key, as the CDC apply takes it (there are no deletes here).
FINAL_ROWS = (
    "SELECT * FROM changes WHERE _op <> 'D' "
    "QUALIFY row_number() OVER (PARTITION BY id ORDER BY _seq DESC) = 1"
)


def _last(changes: pa.Table, column: str, row_id: int) -> str | None:
    """The text of `column` in the last change of row `row_id`."""
    ids = changes["id"].to_pylist()
    return changes[column][len(ids) - 1 - ids[::-1].index(str(row_id))].as_py()


def _load(wh: duckdb.DuckDBPyConnection, table: TableSchema, changes: pa.Table, name: str) -> None:
    """CREATE TABLE raw.<name> with duckdb_type, INSERT ... SELECT duckdb_stream_cast."""
    columns = ", ".join(f"{con_quote(c.name)} {duckdb_type(c.type)}" for c in table.columns)
    casts = ", ".join(duckdb_stream_cast(con_quote(c.name), c.type) for c in table.columns)
    wh.execute("CREATE SCHEMA IF NOT EXISTS raw")
    wh.execute(f"CREATE TABLE raw.{con_quote(name)} ({columns})")
    wh.register("changes", changes)
    wh.execute(f"INSERT INTO raw.{con_quote(name)} SELECT {casts} FROM ({FINAL_ROWS})")
    wh.unregister("changes")


def _mismatches(cur: Any, wh: duckdb.DuckDBPyConnection, table: TableSchema) -> dict[str, object]:
    """Per column: PostgreSQL's ``type_matrix`` against DuckDB's ``raw.type_matrix``, by the
    checksums (floats: bit patterns) of tests/test_types.py; the ids of differing rows."""
    mismatches: dict[str, object] = {}
    for column in table.columns:
        if _is_float(column.type):
            mismatches |= _compare_floats(cur, wh, column)
            continue
        pg_expr = pg_canonical(Q(column.name), column.type)
        duck_expr = duck_canonical(Q(column.name), column.type)
        cur.execute(_checksum_sql("type_matrix", pg_expr))
        pg_sum = cur.fetchone()
        if pg_sum != wh.execute(_checksum_sql("raw.type_matrix", duck_expr)).fetchone():
            cur.execute(_per_row_sql("type_matrix", pg_expr))
            pg_rows = dict(cur.fetchall())
            duck_rows = dict(wh.execute(_per_row_sql("raw.type_matrix", duck_expr)).fetchall())
            mismatches[column.name] = sorted(i for i in pg_rows if pg_rows[i] != duck_rows.get(i))
    return mismatches


@pytest.fixture(scope="module")
def streamed(pg_server: Any) -> Iterator[tuple[str, TableSchema, TableSchema, dict, dict]]:
    """(dsn, cdc_matrix schema, cdc_odd schema, changes read with STREAM_SESSION_OPTIONS,
    changes read with the database's hostile defaults but client_encoding UTF8)."""
    name = f"cdc_types_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    try:
        _execute(dsn, _matrix_sql())
        odd_columns = ", ".join(f"{c} {pg}" for c, (pg, _) in ODD_ARRAYS.items())
        _execute(
            dsn,
            "CREATE TABLE cdc_matrix (LIKE type_matrix INCLUDING ALL);"
            f"CREATE TABLE cdc_odd (id integer PRIMARY KEY, {odd_columns});"
            "CREATE PUBLICATION cdc_pub FOR TABLE cdc_matrix, cdc_odd;",
        )
        _execute(
            dsn,
            "SELECT pg_create_logical_replication_slot(s, 'pgoutput') "
            "FROM unnest(ARRAY['with_options', 'db_defaults', 'no_options']) s",
        )
        for setting in HOSTILE_SETTINGS:  # "SET x = v" -> the database's default for x
            _execute(dsn, setting.replace("SET", f"ALTER DATABASE {name} SET", 1))
        _execute(dsn, _copy_sql())
        schemas = _introspect(dsn, "cdc_matrix"), _introspect(dsn, "cdc_odd")
        good = _read_slot(dsn, "with_options", STREAM_SESSION_OPTIONS)
        hostile = _read_slot(dsn, "db_defaults", "-c client_encoding=UTF8")
        yield dsn, *schemas, good, hostile
    finally:
        _drop_slots(dsn)
        pg_server.drop_database(name)


def _drop_slots(dsn: str) -> None:
    """Drop the slots (a database with slots cannot be dropped); a walsender that just failed
    may still hold its slot for a moment."""
    deadline = time.monotonic() + 60  # a hang guard, not a limit
    while True:
        try:
            _execute(
                dsn,
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = current_database()",
            )
            return
        except psycopg2.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# The round trip
# --------------------------------------------------------------------------------------------


def test_every_column_replicates_exactly(streamed: tuple) -> None:
    dsn, table, _, changes, _ = streamed
    stream = changes["cdc_matrix"]
    assert stream.column_names == ["_op", "_seq", *COLUMNS]  # no unchanged-TOAST flags
    assert stream["_op"].to_pylist().count("U") == N_ROWS // 2
    assert table.column_names == COLUMNS

    wh = duckdb.connect()
    wh.execute("SET TimeZone = 'America/Los_Angeles'")  # the casts must not depend on it
    _load(wh, table, stream, "type_matrix")
    assert wh.execute("SELECT count(*) FROM raw.type_matrix").fetchone() == (N_ROWS,)

    pg = psycopg2.connect(dsn)
    pg.autocommit = True
    cur = pg.cursor()
    for statement in EXPORT_SESSION_SETTINGS:  # override the database's hostile defaults
        cur.execute(statement)
    # The replicated table is the matrix (guards the comparison against the wrong table).
    cur.execute(
        "SELECT count(*) FROM type_matrix m FULL JOIN cdc_matrix c USING (id) "
        "WHERE m::text IS DISTINCT FROM c::text"
    )
    assert cur.fetchone() == (0,)
    mismatches = _mismatches(cur, wh, table)
    pg.close()
    assert mismatches == {}, f"columns that did not replicate (row ids): {mismatches}"

    # The texts that differ from the export text really were in the stream.
    first = {c: stream[c][0].as_py() for c in ("c_interval", "c_bytea", "c_money", "c_int_arr")}
    assert first == {
        "c_interval": "1 year 2 mons -3 days +04:05:06.789",
        "c_bytea": "\\x",
        "c_money": "$1,234.56",
        "c_int_arr": "{}",
    }
    row = wh.execute(
        "SELECT c_interval::VARCHAR, c_money, c_text_arr FROM raw.type_matrix WHERE id = 2"
    ).fetchone()
    assert row == (
        "-178000000 years",
        "-92233720368547758.08",
        ["a,b", 'q"uote', None, "", "NULL", "new\nline", "back\\slash", "😀"],
    )
    wh.close()


def test_arrays_beyond_the_matrix(streamed: tuple) -> None:
    """Any-shape json arrays are exact; box[] splits at ';'; what the backfill refuses, and
    arrays whose delimiter is unknown, fail loudly (and only for non-NULL values)."""
    dsn, _, odd, changes, _ = streamed
    stream = changes["cdc_odd"]
    types = {c.name: c.type for c in odd.columns}
    assert stream_kind(types["interval_2d"]) == "json_array"
    assert types["box_arr"].element == ColumnType("other", "box")

    wh = duckdb.connect()
    wh.register("changes", stream)
    failing = {"int_2d": ARRAY_MESSAGE, "int_lower_0": ARRAY_MESSAGE, "pair_arr": "pair[]"}
    for name, message in failing.items():
        cast = duckdb_stream_cast(Q(name), types[name])
        assert wh.execute(f"SELECT {cast} FROM changes WHERE id = '2'").fetchone() == (None,)
        with pytest.raises(duckdb.InvalidInputException, match=re.escape(message)):
            wh.execute(f"SELECT {cast} FROM changes")

    exact = ["interval_2d", "bytea_arr", "money_arr", "box_arr"]
    casts = ", ".join(duckdb_stream_cast(Q(c), types[c]) for c in exact)
    got = wh.execute(f"SELECT {casts} FROM changes ORDER BY id").fetchall()
    pg = psycopg2.connect(dsn)
    with pg.cursor() as cur:
        for statement in EXPORT_SESSION_SETTINGS:
            cur.execute(statement)
        cur.execute(  # the backfill's forms: to_json for the json arrays, elements for box[]
            "SELECT to_json(interval_2d)::text, to_json(bytea_arr)::text, "
            "to_json(money_arr)::text, box_arr::text[] FROM cdc_odd ORDER BY id"
        )
        expected = cur.fetchall()
    pg.close()
    assert [tuple(r[:3]) for r in got] == [tuple(r[:3]) for r in expected]
    assert [r[3] for r in got] == [r[3] for r in expected]
    assert json.loads(got[0][0]) == [["1 year -2 days +00:00:01.5", None], ["-1 mons", "00:00:00"]]
    assert got[0][3] == ["(1,1),(0,0)", "(3,3),(2,2)"]
    wh.close()


# --------------------------------------------------------------------------------------------
# The session settings
# --------------------------------------------------------------------------------------------


def test_the_walsender_applies_the_session_options(streamed: tuple) -> None:
    """Without STREAM_SESSION_OPTIONS pgoutput writes with the database's defaults; the
    stream casts refuse those texts where they would misread them."""
    _, table, _, good, hostile = streamed
    ours, theirs = good["cdc_matrix"], hostile["cdc_matrix"]

    def texts(column: str, row_id: int) -> tuple[str, str]:
        return _last(ours, column, row_id), _last(theirs, column, row_id)

    assert texts("c_tstz", 1) == ("2024-03-10 07:30:00+00", "10/03/2024 13:15:00 +0545")
    assert texts("c_date", 1) == ("2024-02-29", "29/02/2024")
    assert texts("c_interval", 1) == (
        "1 year 2 mons -3 days +04:05:06.789",
        "+1-2 -3 +4:05:06.789",
    )
    assert texts("c_bytea", 4) == ("\\xdeadbeef", "\\336\\255\\276\\357")
    assert texts("c_real", 7) == ("1.1754944e-38", "1e-38")  # extra_float_digits
    assert texts("c_date_arr", 1) == (
        '{2024-01-01,"0044-03-15 BC",infinity,NULL}',
        '{01/01/2024,"15/03/0044 BC",infinity,NULL}',
    )

    types = {c.name: c.type for c in table.columns}
    wh = duckdb.connect()
    wh.register("changes", theirs)
    for name, message in [("c_interval", INTERVAL_MESSAGE), ("c_bytea", BYTEA_MESSAGE)]:
        with pytest.raises(duckdb.InvalidInputException, match="clinipipe: ") as caught:
            wh.execute(f"SELECT {duckdb_stream_cast(Q(name), types[name])} FROM changes")
        assert message in str(caught.value)
    wh.close()


def test_verify_stream_settings_names_what_is_wrong(streamed: tuple) -> None:
    con = psycopg2.connect(
        streamed[0],
        connection_factory=psycopg2.extras.LogicalReplicationConnection,
        options="-c client_encoding=UTF8 -c lc_monetary=C",
    )
    try:
        with pytest.raises(SourceError) as caught:
            verify_stream_settings(con.cursor())
    finally:
        con.close()
    assert str(caught.value) == (
        "the replication session does not use clinipipe's settings (TimeZone is "
        "'Asia/Kathmandu', not 'UTC'; DateStyle is 'SQL, DMY', not 'ISO, YMD'; IntervalStyle is "
        "'sql_standard', not 'postgres'; extra_float_digits is '-15', not '3'; bytea_output is "
        "'escape', not 'hex'): pass STREAM_SESSION_OPTIONS as the connection's options"
    )


def test_without_options_the_stream_follows_the_database_encoding(streamed: tuple) -> None:
    dsn = streamed[0]
    with pytest.raises(psycopg2.Error, match='no equivalent in encoding "LATIN1"'):
        _read_slot(dsn, "no_options", None)


def test_known_array_delimiters_match_the_catalog(streamed: tuple) -> None:
    """Every element type clinipipe splits arrays of has that delimiter in pg_type."""
    con = psycopg2.connect(streamed[0])
    with con.cursor() as cur:
        cur.execute(
            "SELECT pg_catalog.format_type(oid, NULL), typdelim FROM pg_catalog.pg_type "
            "WHERE typnamespace = 'pg_catalog'::regnamespace"
        )
        catalog = dict(cur.fetchall())
    con.close()
    known = CORE_ARRAY_DELIMITERS
    assert {name: catalog.get(name) for name in known} == known
    for name, delimiter in known.items():
        t = ColumnType("array", f"{name}[]", element=ColumnType("other", name))
        assert array_delimiter(t) == delimiter
    bits = ColumnType("array", "bit(3)[]", element=ColumnType("other", "bit(3)"))
    assert array_delimiter(bits) == ","


# --------------------------------------------------------------------------------------------
# Golden SQL
# --------------------------------------------------------------------------------------------

STREAM_KINDS = {"interval": "interval", "bytes": "bytes", "array": "array"}


def test_stream_casts_reuse_the_export_casts_where_the_texts_agree() -> None:
    kinds = {t.logical: stream_kind(t) for t, _, _ in GOLDEN_TYPES}
    assert kinds == {logical: STREAM_KINDS.get(logical, "same") for logical in LOGICAL_TYPES}
    for t, _, _ in GOLDEN_TYPES:
        if stream_kind(t) == "same":
            assert duckdb_stream_cast("v", t) == duckdb_cast("v", t)
            assert snowflake_stream_cast("v", t) == snowflake_cast("v", t)
    assert stream_kind(T("numeric_unbounded", "money")) == "money"
    assert stream_kind(T("json", "interval[]")) == "json_array"
    assert stream_kind(T("json", "jsonb")) == "same"
    pairs = T("array", "pair[]", element=T("other", "pair"))
    assert stream_kind(pairs) == "undecodable_array"


def _abbreviated(sql: str) -> str:
    """`sql` with each regular expression literal written P, ``REGEXP_SUBSTR(v, P, 1, 1, 'e',
    n)`` written Gn and the interval's time sign written S, so golden strings stay readable."""
    for pattern in (INTERVAL_PATTERN, MONEY_PATTERN):
        sql = sql.replace(f"$${pattern}$$", "P")
    for n in range(1, 10):
        sql = sql.replace(f"REGEXP_SUBSTR(v, P, 1, 1, 'e', {n})", f"G{n}")
    return sql.replace("CASE WHEN G5 = '-' THEN -1 ELSE 1 END", "S")


_CHECK = "CASE WHEN v IS NULL THEN NULL WHEN CAST(IFF(COALESCE({}, TRUE), '0', '{}') AS INT) = 0"

SNOWFLAKE_STREAM_CASTS: dict[str, tuple[ColumnType, str]] = {
    "bytes": (
        T("bytes", "bytea"),
        _CHECK.format(r"REGEXP_LIKE(v, $$\\x[0-9a-f]*$$)", BYTEA_MESSAGE)
        + " THEN TO_BINARY(SUBSTR(v, 3), 'HEX') END",
    ),
    "money": (
        T("numeric_unbounded", "money"),
        _CHECK.format("REGEXP_LIKE(v, P)", MONEY_MESSAGE)
        + " THEN COALESCE(G1, '') || REPLACE(G2, ',', '') || '.' || G4 END",
    ),
    "interval": (
        T("interval", "interval"),
        _CHECK.format("REGEXP_LIKE(v, P) AND v <> ''", INTERVAL_MESSAGE) + " THEN OBJECT_CONSTRUCT("
        "'months', CAST(COALESCE(NULLIF(SPLIT_PART(G1, ' ', 1), ''), '0') AS BIGINT) * 12 "
        "+ CAST(COALESCE(NULLIF(SPLIT_PART(G2, ' ', 1), ''), '0') AS BIGINT), "
        "'days', CAST(COALESCE(NULLIF(SPLIT_PART(G3, ' ', 1), ''), '0') AS BIGINT), "
        "'microseconds', S * CAST(COALESCE(NULLIF(G6, ''), '0') AS BIGINT) * 3600000000 "
        "+ S * CAST(COALESCE(NULLIF(G7, ''), '0') AS BIGINT) * 60000000 "
        "+ S * CAST(COALESCE(NULLIF(G8, ''), '0') AS BIGINT) * 1000000 "
        "+ S * CAST(RPAD(COALESCE(SUBSTR(G9, 2), ''), 6, '0') AS BIGINT)) END",
    ),
    "undecodable": (
        T("array", "pair[]", element=T("other", "pair")),
        _CHECK.format(
            "v IS NULL",
            "clinipipe: a pair[] value from the replication stream cannot be decoded: the "
            "element delimiter of composite, extension and user-defined types is not known",
        )
        + " THEN CAST(NULL AS ARRAY) END",
    ),
}

# The JSON text of a PostgreSQL array text, token by token, in Snowflake SQL.
_SF_ARRAY_JSON = (
    "ARRAY_TO_STRING(TRANSFORM(REGEXP_SUBSTR_ALL(SOURCE, "
    r'$$("([^"\\]|\\["\\])*"|[^",\\{}[:space:]]+)|[{},]$$), cp_token VARCHAR -> '
    "CASE cp_token WHEN '{' THEN '[' WHEN '}' THEN ']' WHEN ',' THEN ',' "
    "WHEN 'NULL' THEN 'null' ELSE TO_JSON(TO_VARIANT(IFF(STARTSWITH(cp_token, '\"'), "
    r'REGEXP_REPLACE(SUBSTR(cp_token, 2, LENGTH(cp_token) - 2), $$\\(["\\])$$, $$\1$$), '
    "cp_token))) END), '')"
)
_ONE_DIMENSION = (
    r'$$[{](("([^"\\]|\\["\\])*"|[^",\\{}[:space:]]+)(,("([^"\\]|\\["\\])*"|'
    r'[^",\\{}[:space:]]+))*)?[}]$$'
)
_ANY_DIMENSIONS = (
    r'$$(\[-?[0-9]+:-?[0-9]+\])*=?[{](("([^"\\]|\\["\\])*"|[^",\\{}[:space:]]+)|[{},])*[}]$$'
)
SNOWFLAKE_STREAM_CASTS |= {
    "text[]": (
        T("array", "text[]", element=T("text", "text")),
        _CHECK.format(f"REGEXP_LIKE(v, {_ONE_DIMENSION})", ARRAY_MESSAGE)
        + f" THEN CAST(PARSE_JSON({_SF_ARRAY_JSON.replace('SOURCE', 'v')}) AS ARRAY) END",
    ),
    "interval[]": (
        T("json", "interval[]"),
        _CHECK.format(f"REGEXP_LIKE(v, {_ANY_DIMENSIONS})", JSON_ARRAY_MESSAGE)
        + " THEN PARSE_JSON("
        + _SF_ARRAY_JSON.replace("SOURCE", "SUBSTR(v, POSITION('{' IN v))")
        + ") END",
    ),
}


@pytest.mark.parametrize("name", sorted(SNOWFLAKE_STREAM_CASTS))
def test_golden_snowflake_stream_casts(name: str) -> None:
    t, expected = SNOWFLAKE_STREAM_CASTS[name]
    sql = snowflake_stream_cast("v", t)
    assert _abbreviated(sql) == expected
    assert "TRY_" not in sql


def test_golden_duckdb_stream_casts() -> None:
    assert duckdb_stream_cast("v", T("bytes", "bytea")) == (
        r"CASE WHEN v IS NULL THEN NULL WHEN regexp_full_match(v, '\\x[0-9a-f]*') "
        f"THEN unhex(SUBSTR(v, 3)) ELSE error('{BYTEA_MESSAGE}') END"
    )
    ints = duckdb_stream_cast("v", T("array", "integer[]", element=T("int32", "integer")))
    assert ints.endswith(
        'lambda "__clinipipe_element": CAST("__clinipipe_element" AS INTEGER)) '
        f"ELSE error('{ARRAY_MESSAGE}') END"
    )


# --------------------------------------------------------------------------------------------
# Snowflake stream casts executed on fakesnow
# --------------------------------------------------------------------------------------------

# pgoutput texts (under STREAM_SESSION_OPTIONS) and the value Snowflake must hold.
SNOWFLAKE_STREAM_SAMPLES: list[tuple[ColumnType, str, object]] = [
    (
        T("interval", "interval"),
        "1 year 2 mons -3 days +04:05:06.789",
        {"months": 14, "days": -3, "microseconds": 14706789000},
    ),
    (
        T("interval", "interval"),
        "178956970 years 7 mons 2147483647 days 2562047788:00:54.775807",
        {"months": 2147483647, "days": 2147483647, "microseconds": 9223372036854775807},
    ),
    (T("interval", "interval"), "-00:00:00.000001", {"months": 0, "days": 0, "microseconds": -1}),
    (T("numeric_unbounded", "money"), "-$92,233,720,368,547,758.08", "-92233720368547758.08"),
    (T("numeric_unbounded", "money"), "$0.00", "0.00"),
    (T("bytes", "bytea"), "\\x00ff00", b"\x00\xff\x00"),
    (T("bytes", "bytea"), "\\x", b""),
    (
        T("array", "text[]", element=T("text", "text")),
        '{"a,b","q\\"uote",NULL,"","NULL","new\nline","back\\\\slash",😀}',
        ["a,b", 'q"uote', None, "", "NULL", "new\nline", "back\\slash", "😀"],
    ),
    (T("array", "text[]", element=T("text", "text")), "{}", []),
    (
        T("array", "box[]", element=T("other", "box")),
        "{(1,1),(0,0);(3,3),(2,2)}",
        ["(1,1),(0,0)", "(3,3),(2,2)"],
    ),
    (
        T("json", "interval[]"),
        '[0:1][2:3]={{"1 day",NULL},{"-1 mons",00:00:00}}',
        [["1 day", None], ["-1 mons", "00:00:00"]],
    ),
]

SNOWFLAKE_STREAM_FAILURES: list[tuple[ColumnType, str, str]] = [
    (T("interval", "interval"), "+1-2 -3 +4:05:06.789", INTERVAL_MESSAGE),
    (T("interval", "interval"), "infinity", INTERVAL_MESSAGE),
    (T("numeric_unbounded", "money"), "1234.56", MONEY_MESSAGE),
    (T("bytes", "bytea"), "\\000", BYTEA_MESSAGE),
    (T("array", "text[]", element=T("text", "text")), "{{a},{b}}", ARRAY_MESSAGE),
    (T("array", "text[]", element=T("text", "text")), "[0:0]={a}", ARRAY_MESSAGE),
    (T("array", "pair[]", element=T("other", "pair")), '{"(1,a)"}', "pair[] value"),
]


def test_snowflake_stream_casts_run_on_fakesnow(snowflake_cursor: Any) -> None:  # noqa: F811
    cur = snowflake_cursor
    cur.execute("CREATE TABLE stage (n INT, v VARCHAR)")
    samples = SNOWFLAKE_STREAM_SAMPLES + [(t, v, None) for t, v, _ in SNOWFLAKE_STREAM_FAILURES]
    for n, (_, text, _) in enumerate(samples):
        cur.execute("INSERT INTO stage VALUES (%s, %s)", (n, text))
    cur.execute("INSERT INTO stage VALUES (-1, NULL)")
    for n, (t, _, expected) in enumerate(SNOWFLAKE_STREAM_SAMPLES):
        cur.execute(f"CREATE OR REPLACE TABLE t (v {snowflake_type(t)})")
        cast = snowflake_stream_cast("v", t)
        cur.execute(f"INSERT INTO t SELECT {cast} FROM stage WHERE n IN ({n}, -1) ORDER BY n")
        cur.execute("SELECT v FROM t")
        null, value = (r[0] for r in cur.fetchall())
        assert null is None, t.pg_type
        if t.logical in ("interval", "array", "json"):
            value = json.loads(value)
        assert value == expected, (t.pg_type, value)
    first_failure = len(SNOWFLAKE_STREAM_SAMPLES)
    for n, (t, _, message) in enumerate(SNOWFLAKE_STREAM_FAILURES, start=first_failure):
        cast = snowflake_stream_cast("v", t)
        cur.execute(f"SELECT {cast} FROM stage WHERE n = -1")  # NULL is fine
        with pytest.raises(Exception, match="clinipipe: ") as caught:
            cur.execute(f"SELECT {cast} FROM stage WHERE n = {n}")
        assert message in str(caught.value)


# --------------------------------------------------------------------------------------------
# The parsers on random values
# --------------------------------------------------------------------------------------------


def test_random_intervals_money_and_text_arrays_parse_exactly(pg_dsn: str) -> None:
    """The output functions write the same text in any session with the same settings: random
    values printed by a plain session under STREAM_SETTINGS, read by duckdb_stream_cast."""
    interval, money = T("interval", "interval"), T("numeric_unbounded", "money")
    texts = T("array", "text[]", element=T("text", "text"))
    pieces = [*'a ,"\\{}\n\t\x0bNULl', "😀", "[:]="]  # what quoting and NULL depend on
    rng = random.Random(5)
    lists = [
        [
            rng.choice([None, "NULL", "null", ""])
            if rng.random() < 0.2
            else "".join(rng.choices(pieces, k=rng.randint(1, 6)))
            for _ in range(rng.randint(0, 5))
        ]
        for _ in range(1000)
    ]
    con = psycopg2.connect(pg_dsn)
    with con.cursor() as cur:
        for name, value in STREAM_SETTINGS.items():
            cur.execute(f"SET {name} = %s", (value,))
        cur.execute(
            "SELECT setseed(0.5); SELECT i::text, "
            f"{pg_canonical('i', interval)} FROM (SELECT "
            "make_interval(0, (random() * 4e9 - 2e9)::int4, 0, (random() * 4e9 - 2e9)::int4) "
            "+ (random() * 1.8e19 - 9e18)::int8 * interval '1 microsecond' * (random() < 0.7)::int "
            "AS i FROM generate_series(1, 3000)) s"
        )
        intervals = cur.fetchall()
        cur.execute(
            "SELECT m::text, m::numeric::text FROM (SELECT ((random() * 1.8e17 - 9e16)::int8 "
            "/ 100.0)::numeric::money AS m FROM generate_series(1, 2000)) s"
        )
        amounts = cur.fetchall()
        arrays = psycopg2.extras.execute_values(
            cur,
            "SELECT v::text FROM (VALUES %s) AS t(n, v) ORDER BY n",
            list(enumerate(lists)),
            template="(%s, %s::text[])",
            page_size=len(lists),
            fetch=True,
        )
    con.close()

    wh = duckdb.connect()
    for t, rows, expected in [
        (interval, intervals, None),
        (money, amounts, None),
        (texts, [(a, None) for (a,) in arrays], lists),
    ]:
        columns = list(zip(*rows, strict=True))
        wh.register("s", pa.table({"n": range(len(rows)), "v": columns[0], "expected": columns[1]}))
        cast = duckdb_stream_cast("v", t)
        if expected is None:
            got = duck_canonical(cast, t) if t.logical == "interval" else cast
            wrong = wh.execute(f"SELECT count(*) FROM s WHERE {got} IS DISTINCT FROM expected")
            assert wrong.fetchone() == (0,), t.pg_type
        else:
            assert [r[0] for r in wh.execute(f"SELECT {cast} FROM s ORDER BY n").fetchall()] == (
                expected
            )
    wh.close()
