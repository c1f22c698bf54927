"""The PostgreSQL -> warehouse type matrix, round-tripped for real.

One table with a column of every supported PostgreSQL type goes the backfill's way:
`introspect_table` -> ``COPY (export_select_list) TO STDOUT (FORMAT csv)`` in a session that ran
`EXPORT_SESSION_SETTINGS` (on top of hostile session defaults) -> `read_csv_batches` (string
columns) -> DuckDB ``CREATE TABLE`` with `duckdb_type` and ``INSERT ... SELECT duckdb_cast(...)``
into a DuckDB file. Then every column is compared:

* by checksum for every type but floats: both databases compute, in SQL, a canonical text per
  value (defined per logical type in `pg_canonical` / `duck_canonical`: epoch microseconds for
  timestamps, days since 1970 for dates, months|days|microseconds for intervals, the exact
  text for numerics, strings and json, hex for bytea, per-element digests for arrays), and the
  md5 of the ordered list of per-value md5s must be equal;
* row by row on IEEE-754 bit patterns for real/double and double[] (neither SQL dialect can
  print those bits the same way): PostgreSQL computes ``float4send/float8send`` in SQL, the
  DuckDB values are fetched and packed with `struct`. NaN compares as NaN (PostgreSQL prints
  every NaN as ``NaN``, so sign and payload of a NaN are not kept).

The documented deviations (docs/TYPE_MAPPING.md) are asserted precisely in their own tests.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import struct
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import fakesnow
import psycopg2
import pyarrow as pa
import pytest
import snowflake.connector

from clinipipe.source.catalog import (
    EXPORT_SESSION_SETTINGS,
    LOGICAL_TYPES,
    CatalogError,
    Column,
    ColumnType,
    TableSchema,
    export_expression,
    export_select_list,
    introspect_table,
)
from clinipipe.source.copy_reader import CopyStreamError, read_csv_batches
from clinipipe.sql.dialect import POSTGRES
from clinipipe.targets.duckdb.types import duckdb_cast, duckdb_type
from clinipipe.targets.snowflake.types import snowflake_cast, snowflake_type

Q = POSTGRES.quote_ident

# --------------------------------------------------------------------------------------------
# The matrix: column -> (PostgreSQL type, expected logical type, values as SQL literals).
# Row i holds the i-th value of every column that has one, NULL elsewhere; one more row is all
# NULL. Literals are written for standard_conforming_strings (E'' where escapes are needed).
# --------------------------------------------------------------------------------------------

ONE_MB_TEXT = "repeat(E'1 MB: a,b \"q\" \\n\\r\\t\\\\ 😀 ', 50000)"

MATRIX: dict[str, tuple[str, str, list[str]]] = {
    "c_bool": ("boolean", "bool", ["true", "false"]),
    "c_int2": ("smallint", "int16", ["-32768", "32767", "0"]),
    "c_int4": ("integer", "int32", ["-2147483648", "2147483647", "0"]),
    "c_int8": ("bigint", "int64", ["-9223372036854775808", "9223372036854775807", "0"]),
    "c_num": ("numeric(12,2)", "decimal", ["1234567890.12", "-0.01", "0", "5.1"]),
    "c_num38": (
        "numeric(38,0)",
        "decimal",
        ["99999999999999999999999999999999999999", "-99999999999999999999999999999999999999"],
    ),
    "c_num38s": (
        "numeric(38,38)",
        "decimal",
        ["0.12345678901234567890123456789012345678", "-0.99999999999999999999999999999999999999"],
    ),
    "c_num_neg_scale": ("numeric(5,-2)", "decimal", ["12345.678", "-9999900"]),
    "c_num_big_scale": ("numeric(2,5)", "decimal", ["0.00012", "-0.00099"]),
    "c_num_wide": (
        "numeric(50,10)",
        "decimal",
        ["1234567890123456789012345678901234567890.0123456789", "-1e39", "0"],
    ),
    "c_numeric": (
        "numeric",
        "numeric_unbounded",
        [
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "1.50",
            "repeat('9', 1000)::numeric",
            "1e-1000",
            "-0.000",
        ],
    ),
    "c_money": ("money", "numeric_unbounded", ["1234.56", "'-92233720368547758.08'", "0"]),
    "c_real": (
        "real",
        "float32",
        [
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'-0'",
            "'1.4e-45'",
            "'3.4028235e38'",
            "'1.17549435e-38'",
            "'0.1'",
            "'123456.79'",
            "'-7.006492e-45'",
        ],
    ),
    "c_double": (
        "double precision",
        "float64",
        [
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'-0'",
            "'5e-324'",
            "'1.7976931348623157e308'",
            "'2.2250738585072014e-308'",
            "'0.1'",
            "'1e15'",
            "'1e16'",
            "'-1.2345678901234567e-300'",
            "1::float8 / 3",
        ],
    ),
    "c_text": (
        "text",
        "text",
        [
            "''",
            "'a,b,,c'",
            "E'quote \" and ''single'' \"\"'",
            "E'line1\\nline2\\r\\nline3\\rend\\n'",
            "E'back\\\\slash \\\\N \\\\. tab\\there'",
            "E'\\\\.'",
            "'😀 emoji 👩\u200d👩\u200d👧 family'",
            "'中文字符 日本語 한국어'",
            "E'e\\u0301 combining, \\u2028 line separator'",
            "'שלום עולם مرحبا'",
            "E'\\ufeffstarts with a byte order mark'",
            ONE_MB_TEXT,
            "' '",
            "'NULL'",
        ],
    ),
    "c_varchar": ("varchar(20)", "text", ["'abc'", "''", "'12345678901234567890'"]),
    "c_char": ("char(5)", "text", ["'ab'", "''", "'abcde'", "' a'"]),
    "c_date": (
        "date",
        "date",
        [
            "'2024-02-29'",
            "'0001-01-01'",
            "'4713-01-01 BC'",
            "'0044-03-15 BC'",
            "'0005-02-29 BC'",
            "'5874897-12-31'",
            "'infinity'",
            "'-infinity'",
            "'1970-01-01'",
            "'1969-12-31'",
            "'10000-01-01'",
        ],
    ),
    "c_time": (
        "time",
        "time",
        ["'00:00:00'", "'24:00:00'", "'23:59:59.999999'", "'12:34:56.789'"],
    ),
    "c_timetz": (
        "timetz",
        "timetz",
        [
            "'00:00:00+00'",
            "'24:00:00-15:59'",
            "'12:34:56.789+05:30'",
            "'23:59:59.999999+15:59'",
            "'01:02:03-08'",
            "'12:00:00+05:30:15'",
        ],
    ),
    "c_ts": (
        "timestamp",
        "timestamp",
        [
            "'2024-01-01 12:00:00'",
            "'2024-01-01 12:00:00.123456'",
            "'0044-03-15 12:00:00.5 BC'",
            "'4713-01-01 00:00:00 BC'",
            "'294246-12-31 23:59:59.999999'",
            "'infinity'",
            "'-infinity'",
            "'1969-12-31 23:59:59.999999'",
            "'10000-01-01 00:00:00'",
        ],
    ),
    "c_tstz": (
        "timestamptz",
        "timestamptz",
        [
            "'2024-03-10 02:30:00 America/New_York'",
            "'2024-11-03 01:30:00-04'",
            "'2024-06-01 12:00:00+14'",
            "'2024-06-01 12:00:00-12'",
            "'2000-01-01 00:00:00.000001 Asia/Kolkata'",
            "'1900-01-01 00:00:00 Europe/Amsterdam'",
            "'0044-03-15 12:00:00.5+00 BC'",
            "'infinity'",
            "'-infinity'",
        ],
    ),
    "c_interval": (
        "interval",
        "interval",
        [
            "'1 year 2 months -3 days 04:05:06.789'",
            "'-178000000 years'",
            "'1 mon -1 day'",
            "'-00:00:00.000001'",
            "'100 days 25:00:00'",
            "'0'",
            "'2147483647 months 2147483647 days 2562047788:00:54.775807'",
            "'-2147483648 months -2147483648 days -2562047788:00:54.775807'",
        ],
    ),
    "c_uuid": (
        "uuid",
        "uuid",
        [
            "'00000000-0000-0000-0000-000000000000'",
            "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        ],
    ),
    "c_json": (
        "json",
        "json",
        [
            '\'{"b":1, "a":[1,2.50,1e400], "a":3}\'',
            "E'\"text with \\\\u00e9, \\\\n and \\\\u0000\"'",
            "'null'",
            "'[]'",
            "E'  {\\n \"spaces\" : true }  '",
            "'123456789012345678901234567890'",
        ],
    ),
    "c_jsonb": (
        "jsonb",
        "json",
        [
            '\'{"b":1, "a":[1,2.50], "a":3}\'',
            'E\'{"nested": {"deep": [null, true, "x\\\\"y"]}}\'',
            "'\"emoji 😀\"'",
            "'12345678901234567890.123456789'",
            "'null'",
            "'{}'",
        ],
    ),
    "c_bytea": (
        "bytea",
        "bytes",
        [
            "'\\x'",
            "'\\x00'",
            "'\\x00ff00'",
            "'\\xdeadbeef'",
            "decode(repeat('00ff', 1000), 'hex')",
            "convert_to('héllo', 'UTF8')",
        ],
    ),
    "c_int_arr": (
        "integer[]",
        "array",
        ["'{}'", "'{1,NULL,3}'", "'{-2147483648,2147483647}'", "'{NULL}'"],
    ),
    "c_text_arr": (
        "text[]",
        "array",
        [
            "'{}'",
            "ARRAY['a,b', 'q\"uote', NULL, '', 'NULL', E'new\\nline', E'back\\\\slash', '😀']",
            "'{NULL}'",
            "ARRAY['']",
            "ARRAY[E'\\ufeffbom', '{x}', '[\"y\"]']",
        ],
    ),
    "c_num_arr": ("numeric(12,2)[]", "array", ["'{1.50,NULL,-99.99}'", "'{}'"]),
    "c_float_arr": (
        "double precision[]",
        "array",
        [
            "ARRAY['NaN','Infinity','-Infinity','-0','5e-324','0.1']::float8[]",
            "'{}'",
            "'{NULL}'",
        ],
    ),
    "c_date_arr": (
        "date[]",
        "array",
        ["ARRAY['2024-01-01', '0044-03-15 BC', 'infinity', NULL]::date[]"],
    ),
    "c_tstz_arr": (
        "timestamptz[]",
        "array",
        ["ARRAY['2024-01-01 12:00:00.5+02', '-infinity', NULL]::timestamptz[]"],
    ),
    "c_interval_arr": (
        "interval[]",
        "json",
        ["ARRAY['1 day', '-1 mon 00:00:01']::interval[]", "'{}'"],
    ),
    "c_bool_arr": ("boolean[]", "array", ["'{t,f,NULL}'"]),
    "c_char_arr": ("char(3)[]", "array", ["ARRAY['a', 'ab ', NULL]::char(3)[]"]),
    "c_uuid_arr": (
        "uuid[]",
        "array",
        ["ARRAY['A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', NULL]::uuid[]"],
    ),
    "c_jsonb_arr": (
        "jsonb[]",
        "array",
        ["ARRAY['{\"a\": 1}', 'null', '[1, \"x\"]', NULL]::jsonb[]"],
    ),
    "c_enum": ("mood", "enum", ["'sad'", "'it''s \"complicated\"'", "'😀'"]),
    "c_enum_arr": ("mood[]", "array", ["'{sad,happy,NULL}'"]),
    "c_inet": (
        "inet",
        "inet",
        ["'192.168.1.5'", "'10.0.0.0/8'", "'::1'", "'2001:db8::1/64'", "'192.168.1.5/24'"],
    ),
    "c_cidr": ("cidr", "inet", ["'10.0.0.0/8'", "'2001:db8::/32'"]),
    "c_inet_arr": ("inet[]", "array", ["ARRAY['10.0.0.1', '10.0.0.0/8']::inet[]"]),
    "c_domain": ("short_code", "text", ["'ABC'", "''"]),
    "c_macaddr": ("macaddr", "other", ["'08:00:2b:01:02:03'"]),
    "c_range": ("int4range", "other", ["'[1,10)'", "'empty'", "'(,5]'"]),
    "c_composite": ("pair", "other", ["ROW(1, 'a,\"b\"')::pair", "ROW(NULL, NULL)::pair"]),
}

SETUP_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated"', '😀');
CREATE DOMAIN short_code AS varchar(10) CHECK (VALUE <> 'forbidden');
CREATE TYPE pair AS (n integer, s text);
"""

# Hostile session defaults: the export settings must override every one of them. (Run as SET
# statements: psycopg2 itself resets DateStyle to ISO when connecting.)
HOSTILE_SETTINGS = (
    "SET TimeZone = 'Asia/Kathmandu'",
    "SET DateStyle = 'SQL, DMY'",
    "SET IntervalStyle = 'sql_standard'",
    "SET extra_float_digits = -15",
    "SET bytea_output = 'escape'",
    "SET client_encoding = 'LATIN1'",
    "SET search_path = public, pg_catalog",
)

N_ROWS = max(len(values) for _, _, values in MATRIX.values()) + 1  # + the all-NULL row


def _matrix_sql() -> str:
    columns = ", ".join(f"{name} {pg}" for name, (pg, _, _) in MATRIX.items())
    rows = []
    for i in range(N_ROWS):
        values = [str(i + 1)]
        for pg, _, literals in MATRIX.values():
            values.append(f"({literals[i]})::{pg}" if i < len(literals) else "NULL")
        rows.append("(" + ", ".join(values) + ")")
    return (
        f"{SETUP_SQL}\nCREATE TABLE type_matrix (id integer PRIMARY KEY, {columns});\n"
        f"INSERT INTO type_matrix VALUES {', '.join(rows)};\nANALYZE type_matrix;"
    )


# --------------------------------------------------------------------------------------------
# Helpers: export, read, load
# --------------------------------------------------------------------------------------------


def _execute(dsn: str, sql: str) -> None:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(sql)
    con.close()


def _introspect(dsn: str, table: str) -> TableSchema:
    con = psycopg2.connect(dsn)
    try:
        return introspect_table(con, "public", table)
    finally:
        con.close()


def _export_csv(dsn: str, table: TableSchema, where: str = "") -> bytes:
    """The backfill's COPY, in a session with hostile defaults overridden by the settings."""
    con = psycopg2.connect(dsn)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            for statement in (*HOSTILE_SETTINGS, *EXPORT_SESSION_SETTINGS):
                cur.execute(statement)
            relation = POSTGRES.qualify(table.schema, table.name)
            sink = io.BytesIO()
            cur.copy_expert(
                f"COPY (SELECT {export_select_list(table)} FROM {relation} {where}) "
                "TO STDOUT (FORMAT csv)",
                sink,
            )
            return sink.getvalue()
    finally:
        con.close()


class _ShortReads:
    """A pipe-like stream: every read returns at most `most` bytes."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data = io.BytesIO(data)
        self._most = most

    def read(self, size: int = -1) -> bytes:
        return self._data.read(self._most if size < 0 else min(size, self._most))


def _load_duckdb(
    con: duckdb.DuckDBPyConnection, table: TableSchema, csv: bytes, block_size: int
) -> int:
    """CREATE TABLE raw.<t> with duckdb_type, INSERT ... SELECT duckdb_cast per batch."""
    quote = con_quote
    columns = ", ".join(f"{quote(c.name)} {duckdb_type(c.type)}" for c in table.columns)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(f"CREATE TABLE raw.{quote(table.name)} ({columns})")
    casts = ", ".join(duckdb_cast(quote(c.name), c.type) for c in table.columns)
    batches = 0
    for batch in read_csv_batches(_ShortReads(csv, 65536), table, block_size=block_size):
        assert batch.schema.names == table.column_names
        assert all(f.type == pa.string() for f in batch.schema)
        con.register("batch", batch)
        con.execute(f"INSERT INTO raw.{quote(table.name)} SELECT {casts} FROM batch")
        con.unregister("batch")
        batches += 1
    return batches


def con_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------
# Canonical text per value, computed in SQL by each database
# --------------------------------------------------------------------------------------------


def pg_canonical(x: str, t: ColumnType) -> str:
    """PostgreSQL: the canonical text of value `x` of type `t` (NULL for NULL)."""
    logical = t.logical
    if logical in ("date",):
        return f"CASE WHEN isfinite({x}) THEN ({x} - DATE '1970-01-01')::text ELSE {x}::text END"
    if logical in ("timestamp", "timestamptz"):
        return (
            f"CASE WHEN isfinite({x}) THEN (EXTRACT(EPOCH FROM {x}) * 1000000)::int8::text "
            f"ELSE {x}::text END"
        )
    if logical == "time":
        return f"(EXTRACT(EPOCH FROM {x}) * 1000000)::int8::text"
    if logical == "timetz":
        return (
            f"((EXTRACT(HOUR FROM {x}) * 3600 + EXTRACT(MINUTE FROM {x}) * 60) * 1000000 "
            f"+ EXTRACT(MICROSECONDS FROM {x}))::int8::text || '@' "
            f"|| EXTRACT(TIMEZONE FROM {x})::int8::text"
        )
    if logical == "interval":
        # justify-free fields: months, days, microseconds as PostgreSQL stores them.
        return (
            f"(EXTRACT(YEAR FROM {x}) * 12 + EXTRACT(MONTH FROM {x}))::text || '|' "
            f"|| EXTRACT(DAY FROM {x})::text || '|' || ((EXTRACT(HOUR FROM {x}) * 3600 "
            f"+ EXTRACT(MINUTE FROM {x}) * 60) * 1000000 + EXTRACT(MICROSECONDS FROM {x}))::text"
        )
    if logical == "bytes":
        return f"encode({x}, 'hex')"
    if t.pg_type == "money":
        return f"{x}::numeric::text"
    if logical == "bool":
        return f"{x}::text"
    if logical == "json" and t.pg_type.endswith("[]"):
        return f"to_json({x})::text"
    if logical == "array":
        assert t.element is not None
        inner = pg_canonical("e", t.element)
        return (
            f"CASE WHEN {x} IS NULL THEN NULL ELSE cardinality({x})::text || ':' || "
            f"COALESCE((SELECT string_agg(COALESCE(md5({inner}), 'null'), ',' ORDER BY n) "
            f"FROM unnest({x}) WITH ORDINALITY AS u(e, n)), '') END"
        )
    # The type's output text (concat() keeps char(n) padding and inet's own spelling).
    # num_nonnulls, not IS NULL: a composite whose fields are all NULL "IS NULL" but is a value.
    return f"CASE WHEN num_nonnulls({x}) = 0 THEN NULL ELSE concat({x}) END"


def duck_canonical(x: str, t: ColumnType) -> str:
    """DuckDB: the canonical text of value `x` of type `t` (NULL for NULL)."""
    logical = t.logical
    if logical == "date":
        return (
            f"CASE WHEN isfinite({x}) THEN CAST(datediff('day', DATE '1970-01-01', {x}) "
            f"AS VARCHAR) ELSE CAST({x} AS VARCHAR) END"
        )
    if logical in ("timestamp", "timestamptz"):
        return (
            f"CASE WHEN isfinite({x}) THEN CAST(epoch_us({x}) AS VARCHAR) "
            f"ELSE CAST({x} AS VARCHAR) END"
        )
    if logical == "time":
        return f"CAST(epoch_us({x}) AS VARCHAR)"
    if logical == "timetz":
        return (
            f"CAST((datepart('hour', {x}) * 3600 + datepart('minute', {x}) * 60)::BIGINT "
            f"* 1000000 + datepart('microseconds', {x}) AS VARCHAR) || '@' "
            f"|| CAST(datepart('timezone', {x}) AS VARCHAR)"
        )
    if logical == "interval":
        return (
            f"CAST(datepart('year', {x}) * 12 + datepart('month', {x}) AS VARCHAR) || '|' "
            f"|| CAST(datepart('day', {x}) AS VARCHAR) || '|' || CAST((datepart('hour', {x}) "
            f"* 3600 + datepart('minute', {x}) * 60)::HUGEINT * 1000000 "
            f"+ datepart('microseconds', {x}) AS VARCHAR)"
        )
    if logical == "bytes":
        return f"lower(hex({x}))"
    if logical == "decimal" and t.precision is not None and t.decimal_width()[0] <= 38:
        # DuckDB prints DECIMAL(5,5) as '.00012': put PostgreSQL's leading zero back.
        return f"regexp_replace(CAST({x} AS VARCHAR), '^(-?)[.]', '\\10.')"
    if logical == "array":
        assert t.element is not None
        inner = duck_canonical('"e"', t.element)
        return (
            f"CASE WHEN {x} IS NULL THEN NULL ELSE CAST(len({x}) AS VARCHAR) || ':' || "
            f'array_to_string(list_transform({x}, lambda "e": COALESCE(md5({inner}), '
            f"'null')), ',') END"
        )
    return f"CAST({x} AS VARCHAR)"


def _is_float(t: ColumnType) -> bool:
    return t.logical in ("float32", "float64") or (
        t.element is not None and t.element.logical in ("float32", "float64")
    )


def _checksum_sql(table: str, expr: str) -> str:
    return (
        f"SELECT md5(string_agg(COALESCE(md5({expr}), 'null'), ',' ORDER BY id)), count(*) "
        f"FROM {table}"
    )


def _per_row_sql(table: str, expr: str) -> str:
    return f"SELECT id, md5({expr}) FROM {table} ORDER BY id"


def _float_bits(value: float | None, single: bool) -> str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    return struct.pack(">f" if single else ">d", value).hex()


def _pg_float_bits_sql(x: str, single: bool) -> str:
    send = "float4send" if single else "float8send"
    return f"CASE WHEN {x} = 'NaN' THEN 'NaN' ELSE encode({send}({x}), 'hex') END"


# --------------------------------------------------------------------------------------------
# The round trip
# --------------------------------------------------------------------------------------------


@pytest.fixture
def matrix(pg_dsn: str) -> Iterator[tuple[str, TableSchema, bytes]]:
    _execute(pg_dsn, _matrix_sql())
    table = _introspect(pg_dsn, "type_matrix")
    yield pg_dsn, table, _export_csv(pg_dsn, table)


def test_introspection_of_every_type(matrix: tuple[str, TableSchema, bytes]) -> None:
    _, table, _ = matrix
    assert table.column_names == ["id", *MATRIX]
    assert table.primary_key == ("id",)
    assert table.pages >= 1
    assert table.estimated_rows == N_ROWS
    found = {c.name: c.type.logical for c in table.columns}
    assert found == {"id": "int32"} | {name: logical for name, (_, logical, _) in MATRIX.items()}
    by_name = {c.name: c for c in table.columns}
    assert not by_name["id"].nullable and by_name["c_text"].nullable
    assert by_name["c_num"].type == ColumnType("decimal", "numeric(12,2)", 12, 2)
    assert by_name["c_num_neg_scale"].type.scale == -2
    assert by_name["c_varchar"].type.length == 20
    assert by_name["c_char"].type == ColumnType("text", "character(5)", length=5)
    assert by_name["c_domain"].type == ColumnType("text", "character varying(10)", length=10)
    assert by_name["c_enum"].type.pg_type == "mood"
    assert by_name["c_num_arr"].type.element == ColumnType("decimal", "numeric(12,2)", 12, 2)
    assert by_name["c_char_arr"].type.element == ColumnType("text", "character(3)", length=3)
    assert by_name["c_enum_arr"].type.element == ColumnType("enum", "mood")
    assert by_name["c_interval_arr"].type == ColumnType("json", "interval[]")


def test_every_column_round_trips_exactly(
    matrix: tuple[str, TableSchema, bytes], tmp_path: Path
) -> None:
    dsn, table, csv = matrix
    assert len(csv) > 1_000_000  # the 1 MB text travelled

    wh = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    wh.execute("SET TimeZone = 'America/Los_Angeles'")  # the casts must not depend on it
    batches = _load_duckdb(wh, table, csv, block_size=2 * 1024 * 1024)
    assert batches >= 1
    assert wh.execute("SELECT count(*) FROM raw.type_matrix").fetchone() == (N_ROWS,)

    pg = psycopg2.connect(dsn)
    pg.autocommit = True
    cur = pg.cursor()
    cur.execute("SET extra_float_digits = 3")
    mismatches: dict[str, object] = {}
    for column in table.columns:
        q = Q(column.name)
        if _is_float(column.type):
            mismatches |= _compare_floats(cur, wh, column)
            continue
        pg_expr = pg_canonical(q, column.type)
        duck_expr = duck_canonical(q, column.type)
        cur.execute(_checksum_sql("type_matrix", pg_expr))
        pg_sum = cur.fetchone()
        duck_sum = wh.execute(_checksum_sql("raw.type_matrix", duck_expr)).fetchone()
        if pg_sum != duck_sum:
            cur.execute(_per_row_sql("type_matrix", pg_expr))
            pg_rows = dict(cur.fetchall())
            duck_rows = dict(wh.execute(_per_row_sql("raw.type_matrix", duck_expr)).fetchall())
            mismatches[column.name] = sorted(i for i in pg_rows if pg_rows[i] != duck_rows.get(i))
    pg.close()
    assert mismatches == {}, f"columns that did not round-trip (row ids): {mismatches}"

    # A few spot checks that the comparison itself sees what matters.
    row = wh.execute(
        "SELECT c_char, c_text, c_date::VARCHAR, c_interval::VARCHAR, c_jsonb::VARCHAR "
        "FROM raw.type_matrix WHERE id = 1"
    ).fetchone()
    assert row == (
        "ab   ",
        "",
        "2024-02-29",
        "1 year 2 months -3 days 04:05:06.789",
        '{"a": 3, "b": 1}',
    )
    assert wh.execute(
        "SELECT c_date::VARCHAR, c_ts::VARCHAR FROM raw.type_matrix WHERE id = 4"
    ).fetchone() == ("0044-03-15 (BC)", "4713-01-01 (BC) 00:00:00")
    assert (
        wh.execute("SELECT length(c_text) FROM raw.type_matrix WHERE id = 12").fetchone()[0]
        > 1_000_000
    )
    wh.close()


def _compare_floats(cur: Any, wh: duckdb.DuckDBPyConnection, column: Column) -> dict[str, object]:
    q = Q(column.name)
    t = column.type
    single = (t.element or t).logical == "float32"
    if t.logical == "array":
        cur.execute(
            f"SELECT id, CASE WHEN {q} IS NULL THEN NULL ELSE ARRAY(SELECT "
            f"{_pg_float_bits_sql('e', single)} FROM unnest({q}) WITH ORDINALITY AS u(e, n) "
            f"ORDER BY n) END FROM type_matrix ORDER BY id"
        )
        pg_rows = cur.fetchall()
        duck_rows = [
            (i, None if v is None else [_float_bits(e, single) for e in v])
            for i, v in wh.execute(f"SELECT id, {q} FROM raw.type_matrix ORDER BY id").fetchall()
        ]
    else:
        cur.execute(f"SELECT id, {_pg_float_bits_sql(q, single)} FROM type_matrix ORDER BY id")
        pg_rows = cur.fetchall()
        duck_rows = [
            (i, _float_bits(v, single))
            for i, v in wh.execute(f"SELECT id, {q} FROM raw.type_matrix ORDER BY id").fetchall()
        ]
    if pg_rows == duck_rows:
        return {}
    return {column.name: [a for a, b in zip(pg_rows, duck_rows, strict=True) if a != b]}


def test_float_specials_are_really_in_the_matrix(matrix: tuple[str, TableSchema, bytes]) -> None:
    """Guards the comparison: the special values exist on the PostgreSQL side."""
    dsn, _, _ = matrix
    con = psycopg2.connect(dsn)
    with con.cursor() as cur:
        cur.execute(
            "SELECT count(*) FILTER (WHERE c_double = 'NaN'), "
            "count(*) FILTER (WHERE c_double = '-Infinity'), "
            "count(*) FILTER (WHERE c_double = 0 AND encode(float8send(c_double), 'hex') "
            "LIKE '8%'), count(*) FILTER (WHERE c_real = 0 AND encode(float4send(c_real), "
            "'hex') LIKE '8%') FROM type_matrix"
        )
        assert cur.fetchone() == (1, 1, 1, 1)
    con.close()


# --------------------------------------------------------------------------------------------
# Documented deviations: each fails loudly, with a clear message, instead of corrupting data
# --------------------------------------------------------------------------------------------


def _one_column(dsn: str, pg_type: str, literal: str) -> tuple[TableSchema, bytes]:
    _execute(
        dsn,
        f"CREATE TABLE odd (id integer PRIMARY KEY, v {pg_type}); "
        f"INSERT INTO odd VALUES (1, {literal});",
    )
    table = _introspect(dsn, "odd")
    return table, _export_csv(dsn, table)


def test_numeric_nan_in_a_constrained_numeric_fails_loudly(pg_dsn: str) -> None:
    table, csv = _one_column(pg_dsn, "numeric(10,2)", "'NaN'")
    assert csv == b"1,NaN\n"
    wh = duckdb.connect()
    with pytest.raises(duckdb.ConversionException, match=r"NaN.*DECIMAL\(10,2\)"):
        _load_duckdb(wh, table, csv, 1 << 20)


def test_timestamp_beyond_duckdb_range_fails_loudly(pg_dsn: str) -> None:
    table, csv = _one_column(pg_dsn, "timestamp", "'294276-12-31 23:59:59'")
    wh = duckdb.connect()
    with pytest.raises(duckdb.ConversionException, match="out of range"):
        _load_duckdb(wh, table, csv, 1 << 20)


@pytest.mark.parametrize(
    "literal",
    ["'{{1,2},{3,4}}'::int[]", "'[0:1]={1,2}'::int[]"],
    ids=["two-dimensional", "lower-bound-0"],
)
def test_arrays_that_are_not_plain_lists_fail_the_export(pg_dsn: str, literal: str) -> None:
    with pytest.raises(psycopg2.Error, match=r"cannot export column v: only one-dimensional"):
        _one_column(pg_dsn, "int[]", literal)


def test_snowflake_golden_deviations_are_explicit() -> None:
    """Snowflake has no interval, timetz or float32 type: the documented stand-ins."""
    assert snowflake_type(ColumnType("interval", "interval")) == "OBJECT"
    assert snowflake_type(ColumnType("timetz", "time with time zone")) == "VARCHAR"
    assert snowflake_type(ColumnType("float32", "real")) == "FLOAT"


# --------------------------------------------------------------------------------------------
# The CSV reader on its own
# --------------------------------------------------------------------------------------------


def _two_text_columns() -> TableSchema:
    text = ColumnType("text", "text")
    return TableSchema(
        "public", "t", (Column("a", text, True), Column("b", text, True)), ("a",), 0, 0
    )


def test_csv_options_keep_null_empty_and_special_characters() -> None:
    data = (
        '\ufeffbom first,"a,b"\n'  # a BOM at the start of the stream is data, not a file BOM
        "2,\n"  # NULL
        '3,""\n'  # empty string
        ",\n"  # a row of NULLs
        '"q""\n\r\nx",\\.\n'  # quotes, newlines, a backslash-dot
        '"\ttab",\\N\n'
    ).encode()
    rows: list[dict[str, str | None]] = []
    for batch in read_csv_batches(_ShortReads(data, 3), _two_text_columns(), block_size=16):
        rows.extend(batch.to_pylist())
    assert rows == [
        {"a": "\ufeffbom first", "b": "a,b"},
        {"a": "2", "b": None},
        {"a": "3", "b": ""},
        {"a": None, "b": None},
        {"a": 'q"\n\r\nx', "b": "\\."},
        {"a": "\ttab", "b": "\\N"},
    ]


def test_csv_reader_keeps_the_empty_lines_of_a_one_column_select() -> None:
    one = TableSchema("public", "t", (Column("a", ColumnType("text", "text"), True),), ("a",), 0, 0)
    rows = [r for b in read_csv_batches(io.BytesIO(b"\n1\n\n"), one) for r in b.to_pylist()]
    assert rows == [{"a": None}, {"a": "1"}, {"a": None}]
    assert list(read_csv_batches(io.BytesIO(b""), one)) == []


def test_csv_reader_streams_in_blocks() -> None:
    row = b'1,"' + b"x" * 1000 + b'"\n'
    batches = list(read_csv_batches(io.BytesIO(row * 1000), _two_text_columns(), block_size=8192))
    assert sum(b.num_rows for b in batches) == 1000
    assert len(batches) > 100  # about one batch per block, never the whole stream at once


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'1,"' + b"secret" * 100 + b'"\n', "longer than the CSV block size"),
        (b"1,secret,3\n", "a row of 3 fields where 2 were expected"),
        (b"1,secret\xff\n", "invalid UTF-8 in column b"),
    ],
)
def test_csv_reader_errors_never_contain_row_data(data: bytes, message: str) -> None:
    with pytest.raises(CopyStreamError, match=message) as caught:
        list(read_csv_batches(io.BytesIO(data), _two_text_columns(), block_size=256))
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --------------------------------------------------------------------------------------------
# Introspection errors and corner cases
# --------------------------------------------------------------------------------------------


def test_catalog_errors_are_clear(pg_dsn: str) -> None:
    _execute(
        pg_dsn,
        "CREATE TABLE no_pk (a int); CREATE TABLE secret (id int PRIMARY KEY); "
        "CREATE VIEW a_view AS SELECT 1 AS x; CREATE ROLE nobody;",
    )
    con = psycopg2.connect(pg_dsn)
    try:
        with pytest.raises(CatalogError, match=r"^source table public\.missing does not exist"):
            introspect_table(con, "public", "missing")
        with pytest.raises(CatalogError, match=r"public\.no_pk has no primary key"):
            introspect_table(con, "public", "no_pk")
        with pytest.raises(CatalogError, match=r"public\.a_view is a view"):
            introspect_table(con, "public", "a_view")
        with con.cursor() as cur:
            cur.execute("SET ROLE nobody")
        with pytest.raises(
            CatalogError, match=r"no SELECT privilege on source table public\.secret"
        ):
            introspect_table(con, "public", "secret")
    finally:
        con.rollback()
        con.close()
    _execute(pg_dsn, "GRANT SELECT (id) ON secret TO nobody")
    con = psycopg2.connect(pg_dsn)
    with con.cursor() as cur:
        cur.execute("SET ROLE nobody")
    assert introspect_table(con, "public", "secret").column_names == ["id"]  # column grants do
    con.close()


def test_introspection_corner_cases(pg_dsn: str) -> None:
    odd_name = Q('Odd "Name"')
    _execute(
        pg_dsn,
        f"""
        CREATE DOMAIN code AS varchar(8) NOT NULL;
        CREATE DOMAIN amount AS numeric(10,2);
        CREATE DOMAIN amounts AS amount[];
        CREATE TABLE {odd_name} (
            "Key" int, k2 text, c code, a amount, aa amounts, da amount[], m money[],
            PRIMARY KEY (k2, "Key"));
        ALTER TABLE {odd_name} DROP COLUMN m;
        CREATE TABLE parted (id int, part int, v text, PRIMARY KEY (id, part))
            PARTITION BY LIST (part);
        CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
        CREATE TABLE parted_2 PARTITION OF parted FOR VALUES IN (2);
        INSERT INTO parted SELECT g, 1 + g % 2, repeat('x', 100) FROM generate_series(1, 2000) g;
        ANALYZE parted;
        """,
    )
    odd = _introspect(pg_dsn, 'Odd "Name"')
    assert odd.primary_key == ("k2", "Key")
    assert odd.column_names == ["Key", "k2", "c", "a", "aa", "da"]
    by_name = {c.name: c for c in odd.columns}
    assert by_name["c"] == Column("c", ColumnType("text", "character varying(8)", length=8), False)
    decimal = ColumnType("decimal", "numeric(10,2)", 10, 2)
    assert by_name["a"].type == decimal
    assert by_name["aa"].type == ColumnType("array", "amount[]", element=decimal)
    assert by_name["da"].type.element == decimal
    assert 'AS "Key"' in export_select_list(odd)

    parted = _introspect(pg_dsn, "parted")
    assert parted.estimated_rows == 2000
    assert parted.pages >= 2


# --------------------------------------------------------------------------------------------
# Golden mappings (DuckDB and Snowflake)
# --------------------------------------------------------------------------------------------

T = ColumnType
GOLDEN_TYPES: list[tuple[ColumnType, str, str]] = [
    (T("bool", "boolean"), "BOOLEAN", "BOOLEAN"),
    (T("int16", "smallint"), "SMALLINT", "NUMBER(5,0)"),
    (T("int32", "integer"), "INTEGER", "NUMBER(10,0)"),
    (T("int64", "bigint"), "BIGINT", "NUMBER(19,0)"),
    (T("float32", "real"), "FLOAT", "FLOAT"),
    (T("float64", "double precision"), "DOUBLE", "FLOAT"),
    (T("decimal", "numeric(12,2)", 12, 2), "DECIMAL(12,2)", "NUMBER(12,2)"),
    (T("decimal", "numeric(38,38)", 38, 38), "DECIMAL(38,38)", "NUMBER(38,38)"),
    (T("decimal", "numeric(5,-2)", 5, -2), "DECIMAL(7,0)", "NUMBER(7,0)"),
    (T("decimal", "numeric(2,5)", 2, 5), "DECIMAL(5,5)", "NUMBER(5,5)"),
    (T("decimal", "numeric(50,10)", 50, 10), "VARCHAR", "VARCHAR"),
    (T("numeric_unbounded", "numeric"), "VARCHAR", "VARCHAR"),
    (T("text", "text"), "VARCHAR", "VARCHAR"),
    (T("text", "character(5)", length=5), "VARCHAR", "VARCHAR(5)"),
    (T("date", "date"), "DATE", "DATE"),
    (T("time", "time without time zone"), "TIME", "TIME(6)"),
    (T("timetz", "time with time zone"), "TIMETZ", "VARCHAR"),
    (T("timestamp", "timestamp without time zone"), "TIMESTAMP", "TIMESTAMP_NTZ(6)"),
    (T("timestamptz", "timestamp with time zone"), "TIMESTAMPTZ", "TIMESTAMP_TZ(6)"),
    (T("interval", "interval"), "INTERVAL", "OBJECT"),
    (T("uuid", "uuid"), "UUID", "VARCHAR(36)"),
    (T("json", "jsonb"), "JSON", "VARIANT"),
    (T("bytes", "bytea"), "BLOB", "BINARY"),
    (T("array", "integer[]", element=T("int32", "integer")), "INTEGER[]", "ARRAY"),
    (T("enum", "mood"), "VARCHAR", "VARCHAR"),
    (T("inet", "inet"), "VARCHAR", "VARCHAR(43)"),
    (T("other", "macaddr"), "VARCHAR", "VARCHAR"),
]


def test_golden_types_cover_every_logical_type() -> None:
    assert {t.logical for t, _, _ in GOLDEN_TYPES} == set(LOGICAL_TYPES)


@pytest.mark.parametrize(
    ("t", "duck", "snow"), GOLDEN_TYPES, ids=lambda v: getattr(v, "pg_type", "")
)
def test_golden_types(t: ColumnType, duck: str, snow: str) -> None:
    assert (duckdb_type(t), snowflake_type(t)) == (duck, snow)


SNOWFLAKE_CASTS: dict[str, str] = {
    "bool": "TO_BOOLEAN(v)",
    "int16": "CAST(v AS NUMBER(5,0))",
    "int64": "CAST(v AS NUMBER(19,0))",
    "float64": (
        "CAST(CASE v WHEN 'Infinity' THEN 'inf' WHEN '-Infinity' THEN '-inf' ELSE v END AS FLOAT)"
    ),
    "decimal": "CAST(v AS NUMBER(12,2))",
    "numeric_unbounded": "v",
    "text": "v",
    "date": "TO_DATE(v, 'YYYY-MM-DD')",
    "time": "TO_TIME(IFF(CONTAINS(v, '.'), v, v || '.0'), 'HH24:MI:SS.FF')",
    "timetz": "v",
    "timestamp": (
        "TO_TIMESTAMP_NTZ(IFF(CONTAINS(v, '.'), v, v || '.0'), 'YYYY-MM-DD HH24:MI:SS.FF')"
    ),
    "timestamptz": (
        "TO_TIMESTAMP_TZ(IFF(CONTAINS(v, '.'), v, REPLACE(v, '+', '.0+')), "
        "'YYYY-MM-DD HH24:MI:SS.FFTZH')"
    ),
    "interval": (
        "IFF(v IS NULL, NULL, OBJECT_CONSTRUCT('months', CAST(SPLIT_PART(v, ' ', 1) AS "
        "NUMBER(10,0)), 'days', CAST(SPLIT_PART(v, ' ', 3) AS NUMBER(10,0)), 'microseconds', "
        "CAST(SPLIT_PART(v, ' ', 5) AS NUMBER(19,0))))"
    ),
    "uuid": "v",
    "json": "PARSE_JSON(v)",
    "bytes": "TO_BINARY(v, 'HEX')",
    "enum": "v",
    "inet": "v",
    "other": "v",
}

DUCKDB_CASTS: dict[str, str] = {
    "bool": "CAST(v AS BOOLEAN)",
    "int16": "CAST(v AS SMALLINT)",
    "float32": "CAST(v AS FLOAT)",
    "decimal": "CAST(v AS DECIMAL(12,2))",
    "numeric_unbounded": "v",
    "text": "v",
    "date": (
        "CAST(CASE WHEN suffix(v, ' BC') THEN substr(v, 1, 10) || ' (BC)' || "
        "substr(v, 11, length(v) - 13) ELSE v END AS DATE)"
    ),
    "time": "CAST(v AS TIME)",
    "timetz": "CAST(v AS TIMETZ)",
    "interval": "CAST(v AS INTERVAL)",
    "uuid": "CAST(v AS UUID)",
    "json": "CAST(v AS JSON)",
    "bytes": "unhex(v)",
    "enum": "v",
    "inet": "v",
    "other": "v",
}


def _golden_type(logical: str) -> ColumnType:
    return next(t for t, _, _ in GOLDEN_TYPES if t.logical == logical)


@pytest.mark.parametrize("logical", sorted(SNOWFLAKE_CASTS))
def test_golden_snowflake_casts(logical: str) -> None:
    assert snowflake_cast("v", _golden_type(logical)) == SNOWFLAKE_CASTS[logical]
    assert "TRY_" not in snowflake_cast("v", _golden_type(logical))


@pytest.mark.parametrize("logical", sorted(DUCKDB_CASTS))
def test_golden_duckdb_casts(logical: str) -> None:
    assert duckdb_cast("v", _golden_type(logical)) == DUCKDB_CASTS[logical]


def test_golden_array_casts() -> None:
    ints = T("array", "integer[]", element=T("int32", "integer"))
    texts = T("array", "text[]", element=T("text", "text"))
    assert duckdb_cast("v", ints) == (
        'list_transform(CAST(CAST(v AS JSON) AS VARCHAR[]), lambda "__clinipipe_element": '
        'CAST("__clinipipe_element" AS INTEGER))'
    )
    assert duckdb_cast("v", texts) == "CAST(CAST(v AS JSON) AS VARCHAR[])"
    assert snowflake_cast("v", texts) == "CAST(PARSE_JSON(v) AS ARRAY)"
    assert snowflake_cast("v", ints) == (
        "TRANSFORM(CAST(PARSE_JSON(v) AS ARRAY), cp_element VARIANT -> "
        "CAST(CAST(cp_element AS VARCHAR) AS NUMBER(10,0)))"
    )
    assert export_expression(Column("v", ints, True)) == (
        'CASE WHEN pg_catalog.array_ndims("v") > 1 OR pg_catalog.array_lower("v", 1) <> 1 '
        "THEN ('clinipipe cannot export column v: only one-dimensional arrays with lower bound 1 "
        'are supported, found dimensions \' || pg_catalog.array_dims("v"))::pg_catalog.int4'
        '::pg_catalog.text ELSE pg_catalog.to_json("v"::pg_catalog.text[])::pg_catalog.text END'
    )


# --------------------------------------------------------------------------------------------
# Snowflake casts executed on fakesnow (Snowflake SQL translated to DuckDB)
# --------------------------------------------------------------------------------------------

# Transport texts real Snowflake must accept, and the value it must hold afterwards.
SNOWFLAKE_SAMPLES: list[tuple[ColumnType, str, object]] = [
    (T("bool", "boolean"), "t", True),
    (T("int16", "smallint"), "-32768", -32768),
    (T("int32", "integer"), "2147483647", 2147483647),
    (T("int64", "bigint"), "9223372036854775807", 9223372036854775807),
    (T("float32", "real"), "0.1", 0.1),
    (T("float64", "double precision"), "NaN", "NaN"),
    (T("float64", "double precision"), "-Infinity", float("-inf")),
    (T("float64", "double precision"), "0.1", 0.1),
    (T("decimal", "numeric(12,2)", 12, 2), "-1234567890.12", Decimal("-1234567890.12")),
    (T("numeric_unbounded", "numeric"), "NaN", "NaN"),
    (T("text", "text"), 'a,b "q"\n😀', 'a,b "q"\n😀'),
    (T("date", "date"), "2024-02-29", dt.date(2024, 2, 29)),
    (T("time", "time"), "12:34:56", dt.time(12, 34, 56)),
    (T("time", "time"), "12:34:56.789", dt.time(12, 34, 56, 789000)),
    (T("timestamp", "timestamp"), "2024-01-01 12:00:00", dt.datetime(2024, 1, 1, 12)),
    (
        T("timestamp", "timestamp"),
        "2024-01-01 12:00:00.000001",
        dt.datetime(2024, 1, 1, 12, 0, 0, 1),
    ),
    (
        T("timestamptz", "timestamptz"),
        "2024-01-01 12:00:00+00",
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc),
    ),
    (
        T("timestamptz", "timestamptz"),
        "2024-01-01 12:00:00.5+00",
        dt.datetime(2024, 1, 1, 12, 0, 0, 500000, tzinfo=dt.timezone.utc),
    ),
    (T("timetz", "timetz"), "12:34:56+05:30", "12:34:56+05:30"),
    (
        T("uuid", "uuid"),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    (T("json", "jsonb"), '{"a": [1, "x"]}', {"a": [1, "x"]}),
    (T("bytes", "bytea"), "00ff00", b"\x00\xff\x00"),
    (T("array", "text[]", element=T("text", "text")), '["a",null,"b"]', ["a", None, "b"]),
    (T("enum", "mood"), "sad", "sad"),
    (T("inet", "inet"), "10.0.0.0/8", "10.0.0.0/8"),
    (T("other", "int4range"), "[1,10)", "[1,10)"),
    (
        T("interval", "interval"),
        "14 months -3 days 14706789000 microseconds",
        {"months": 14, "days": -3, "microseconds": 14706789000},
    ),
]

# What fakesnow (0.11.18, on DuckDB) cannot run although Snowflake can; pinned by the golden
# strings above instead.
FAKESNOW_CANNOT = {
    "TRANSFORM(...) of arrays of non-text elements": "fakesnow has no TRANSFORM",
    "NUMBER(38,s) from more than 18 digits": "fakesnow casts strings to NUMBER through INT64",
}


def test_fakesnow_samples_cover_every_logical_type() -> None:
    assert {t.logical for t, _, _ in SNOWFLAKE_SAMPLES} == set(LOGICAL_TYPES)


@pytest.fixture
def snowflake_cursor() -> Iterator[Any]:
    with fakesnow.patch():
        con = snowflake.connector.connect(database="db", schema="s")
        cur = con.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS db")
        cur.execute("CREATE SCHEMA IF NOT EXISTS db.s")
        cur.execute("USE SCHEMA db.s")
        yield cur
        con.close()


def test_snowflake_casts_run_on_fakesnow(snowflake_cursor: Any) -> None:
    cur = snowflake_cursor
    cur.execute("CREATE TABLE stage (n INT, v VARCHAR)")
    for n, (_, text, _) in enumerate(SNOWFLAKE_SAMPLES):
        cur.execute("INSERT INTO stage VALUES (%s, %s)", (n, text))
    cur.execute("INSERT INTO stage VALUES (%s, NULL)", (len(SNOWFLAKE_SAMPLES),))
    for n, (t, _, expected) in enumerate(SNOWFLAKE_SAMPLES):
        table = f"t{n}"
        cur.execute(f"CREATE TABLE {table} (v {snowflake_type(t)})")
        cur.execute(f"INSERT INTO {table} SELECT {snowflake_cast('v', t)} FROM stage WHERE n = {n}")
        cur.execute(
            f"INSERT INTO {table} SELECT {snowflake_cast('v', t)} FROM stage "
            f"WHERE n = {len(SNOWFLAKE_SAMPLES)}"
        )
        cur.execute(f"SELECT v FROM {table}")
        got = [r[0] for r in cur.fetchall()]
        assert got[1] is None, (t.logical, "NULL must stay NULL")
        value = got[0]
        if t.logical in ("json", "array", "interval"):
            value = json.loads(value)
        if expected == "NaN" and t.logical.startswith("float"):
            assert math.isnan(value), t.logical
            continue
        if isinstance(expected, dt.datetime) and expected.tzinfo is not None:
            assert value == expected and value.utcoffset() == dt.timedelta(0), t.logical
        else:
            assert value == expected, (t.logical, value)

    # A value Snowflake cannot hold fails the statement (no TRY_ casts).
    cur.execute("CREATE TABLE bad (v DATE)")
    cur.execute("INSERT INTO stage VALUES (99, 'not a date')")
    with pytest.raises(snowflake.connector.errors.Error):
        cast = snowflake_cast("v", T("date", "date"))
        cur.execute(f"INSERT INTO bad SELECT {cast} FROM stage WHERE n = 99")
