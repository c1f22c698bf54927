"""Snowflake verify: its checksum SQL pinned by golden files and parsed under sqlglot's
Snowflake grammar; what fakesnow can execute run there and compared with PostgreSQL (the same
canonical text per value, the same md5 row and column digests); the types it refuses are
reported as a skipped table with a clear reason, never as differences.

fakesnow (Snowflake SQL on DuckDB) cannot run some of it although Snowflake can
(`FAKESNOW_CANNOT`); those parts are pinned by the golden file only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakesnow
import psycopg2
import pytest
import snowflake.connector
import sqlglot
from sqlglot import exp

from clinipipe.source.catalog import (
    EXPORT_SESSION_SETTINGS,
    Column,
    ColumnType,
    export_expression,
    introspect_table,
)
from clinipipe.source.checksum import PG_SQL, ChecksumTable, Span, key_text
from clinipipe.spec import load_spec
from clinipipe.targets.snowflake import SnowflakeTarget
from clinipipe.targets.snowflake.types import snowflake_cast, snowflake_type
from clinipipe.targets.snowflake.verify import snowflake_canonical
from tests.helpers import snowflake_text, write_spec

GOLDEN = Path(__file__).parent / "golden" / "snowflake-verify" / "checksums.sql"
UPDATE = os.environ.get("CLINIPIPE_UPDATE_GOLDEN") == "1"

T = ColumnType

# Every logical type Snowflake verify accepts (json, timetz and arrays are refused).
COLUMNS: list[tuple[str, ColumnType]] = [
    ("id", T("int32", "integer")),
    ("c_bool", T("bool", "boolean")),
    ("c_int2", T("int16", "smallint")),
    ("c_int8", T("int64", "bigint")),
    ("c_real", T("float32", "real")),
    ("c_double", T("float64", "double precision")),
    ("c_num", T("decimal", "numeric(12,2)", 12, 2)),
    ("c_num_small", T("decimal", "numeric(5,5)", 5, 5)),
    ("c_num_wide", T("decimal", "numeric(50,2)", 50, 2)),
    ("c_numeric", T("numeric_unbounded", "numeric")),
    ("c_money", T("numeric_unbounded", "money")),
    ("c_text", T("text", "text")),
    ("c_char", T("text", "character(4)", length=4)),
    ("c_date", T("date", "date")),
    ("c_time", T("time", "time without time zone")),
    ("c_ts", T("timestamp", "timestamp without time zone")),
    ("c_tstz", T("timestamptz", "timestamp with time zone")),
    ("c_interval", T("interval", "interval")),
    ("c_uuid", T("uuid", "uuid")),
    ("c_bytea", T("bytes", "bytea")),
    ("c_enum", T("enum", "mood")),
    ("c_inet", T("inet", "inet")),
    ("c_range", T("other", "int4range")),
]

MATRIX = ChecksumTable(
    "matrix", '"public"."matrix"', tuple(Column(n, t, n != "id") for n, t in COLUMNS), ("id",)
)
VISITS = ChecksumTable(
    "visits",
    '"public"."visits"',
    (
        Column("site", T("text", "text"), False),
        Column("visit_no", T("int32", "integer"), False),
        Column("note", T("text", "text"), True),
    ),
    ("site", "visit_no"),
)


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnowflakeTarget:
    """A Snowflake target (not connected: only its SQL is used)."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:5432/ehr")
    return SnowflakeTarget(load_spec(write_spec(tmp_path, snowflake_text())))


def _statements(target: SnowflakeTarget) -> list[tuple[str, str]]:
    sql = target.checksum_sql()
    spans = [Span(1, 2049), Span(4097, 6145)]
    hashed = [Span(0, 1 << 28), Span(3 << 28, 4 << 28)]
    return [
        ("bounds of an integer key", sql.bounds_sql(MATRIX)),
        ("range sums, integer key", sql.range_sums_sql(MATRIX, 1, 2048, spans)),
        ("range sums, wide integer positions", sql.range_sums_sql(MATRIX, -(2**63), 2**62, [])),
        ("row digests, integer key", sql.rows_sql(MATRIX, spans)),
        ("column digests, integer key", sql.column_hashes_sql(MATRIX, spans, ["2:17"])),
        ("range sums, composite text key", sql.range_sums_sql(VISITS, 0, 1 << 28, hashed)),
        ("row digests, composite text key", sql.rows_sql(VISITS, hashed)),
        (
            "column digests, composite text key",
            sql.column_hashes_sql(VISITS, hashed, [key_text(["site 'a'", "7"])]),
        ),
    ]


def test_snowflake_checksum_sql_is_golden_and_parses(target: SnowflakeTarget) -> None:
    """The rendered checksum queries are pinned (CLINIPIPE_UPDATE_GOLDEN=1 rewrites) and each
    parses under sqlglot's Snowflake grammar as a SELECT, not an opaque command."""
    text = "".join(f"-- {what}\n{sql};\n\n" for what, sql in _statements(target))
    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "tests/golden/snowflake-verify/checksums.sql differs"
    for what, sql in _statements(target):
        tree = sqlglot.parse_one(sql, read="snowflake")
        assert isinstance(tree, exp.Select), what
        assert not list(tree.find_all(exp.Command)), what
    # Snowflake's spellings, not DuckDB's or PostgreSQL's.
    assert "TO_NUMBER(SUBSTR(MD5(" in text and "'XXXXXXXXXXXXXXX'" in text
    assert "DATE_PART(EPOCH_MICROSECOND, " in text and "HEX_ENCODE(" in text
    assert '"CLINIPIPE"."RAW"."MATRIX"' in text
    for foreign in ("::int8", "::bit(", "epoch_us(", "list_transform", "isnan("):
        assert foreign not in text, foreign


def test_refused_types_skip_the_table_with_a_reason(target: SnowflakeTarget) -> None:
    assert target.verify_refusal(MATRIX) is None
    refused = ChecksumTable(
        "events",
        '"public"."events"',
        (
            Column("id", T("int64", "bigint"), False),
            Column("payload", T("json", "jsonb"), True),
            Column("at", T("timetz", "time with time zone"), True),
            Column("codes", T("array", "text[]", element=T("text", "text")), True),
        ),
        ("id",),
    )
    why = target.verify_refusal(refused)
    assert why is not None
    assert "payload (jsonb), at (time with time zone), codes (text[])" in why
    assert "VARIANT" in why and "DuckDB" in why
    for _, t in (c for c in [(c.name, c.type) for c in refused.columns[1:]]):
        with pytest.raises(ValueError, match="no canonical Snowflake text"):
            snowflake_canonical('"x"', t)


# --- executed on fakesnow, compared with PostgreSQL ---------------------------------------------

FAKESNOW_CANNOT = {
    "c_real": "fakesnow's LTRIM(x, '0') removes nothing (the float rule trims zeros)",
    "c_double": "fakesnow's LTRIM(x, '0') removes nothing (the float rule trims zeros)",
    "c_time": "fakesnow cannot DATE_PART a TIME",
    "c_num_wide": "fakesnow casts strings to NUMBER through INT64 (wide values fail)",
    "hash60/hash32": "fakesnow has no TO_NUMBER(..., 'XXX...') (hex format): range sums and "
    "text-key positions run on Snowflake only",
}

SOURCE = """
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE matrix (
  id integer PRIMARY KEY, c_bool boolean, c_int2 smallint, c_int8 bigint, c_real real,
  c_double double precision, c_num numeric(12,2), c_num_small numeric(5,5),
  c_num_wide numeric(50,2), c_numeric numeric, c_money money, c_text text, c_char character(4),
  c_date date, c_time time, c_ts timestamp, c_tstz timestamptz, c_interval interval,
  c_uuid uuid, c_bytea bytea, c_enum mood, c_inet inet, c_range int4range);
INSERT INTO matrix VALUES
  (1, true, -32768, 9223372036854775807, 0.1, -1.5e-05, -1.50, 0.00012, 1.25, 1.230, 12.5,
   'a''b "q" é', 'ab', '2024-02-29', '12:34:56.789', '2024-01-01 12:00:00.000001',
   '2024-01-01 12:00:00.5+02', '14 months -3 days 04:05:06.789', gen_random_uuid(),
   '\\x00ff00', 'sad', '10.0.0.0/8', '[1,10)'),
  (2, false, 0, -1, 'NaN', '-0', 0, -0.5, -3, 0.000, -1, '', '', '1970-01-01', '00:00',
   '1969-12-31 23:59:59.999999', '2000-01-01 00:00+00', '-1 mon 2 days', gen_random_uuid(),
   '\\x', 'ok', '::1', 'empty'),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""


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


def test_snowflake_canonical_values_and_digests_equal_postgres_on_fakesnow(
    pg_dsn: str, snowflake_cursor: Any, target: SnowflakeTarget
) -> None:
    """The source table is loaded the backfill's way (export text -> `snowflake_cast`); then
    for every column fakesnow can run, Snowflake's canonical text of every value equals
    PostgreSQL's, and so do the md5 row digests and per-column digests of the shared
    queries (on the columns fakesnow can run)."""
    cur = snowflake_cursor
    with psycopg2.connect(pg_dsn) as con, con.cursor() as pg:
        pg.execute(SOURCE)
        for setting in EXPORT_SESSION_SETTINGS:
            pg.execute(setting)
        pg.execute("SET lc_monetary = 'C'")
        schema = introspect_table(con, "public", "matrix")
        assert [(c.name, c.type.logical) for c in schema.columns] == [
            (n, t.logical) for n, t in COLUMNS
        ]
        exports = ", ".join(  # as text: concat() keeps char(n) padding, ::text would not
            f"CASE WHEN num_nonnulls({e}) = 0 THEN NULL ELSE concat({e}) END"
            for e in map(export_expression, schema.columns)
        )
        pg.execute(f"SELECT {exports} FROM matrix ORDER BY id")  # the backfill's texts
        texts = pg.fetchall()
        canon = ", ".join(PG_SQL.canonical(f'"{c.name}"', c.type) for c in schema.columns)
        pg.execute(f"SELECT {canon} FROM matrix ORDER BY id")
        expected = pg.fetchall()
        runnable = [c for c in schema.columns if c.name not in FAKESNOW_CANNOT]
        table = ChecksumTable("matrix", '"public"."matrix"', tuple(runnable), ("id",))
        pg.execute(PG_SQL.rows_sql(table, [Span(0, 10)]))
        pg_rows = dict((r[:1], r[1]) for r in pg.fetchall())
        keys = [key_text([str(i)]) for i in (1, 2, 3)]
        pg.execute(PG_SQL.column_hashes_sql(table, [Span(0, 10)], keys))
        pg_columns = {r[:1]: r[1:] for r in pg.fetchall()}
    con.close()

    columns = ", ".join(f"c{i} VARCHAR" for i in range(len(COLUMNS)))
    cur.execute(f"CREATE TABLE stage ({columns})")
    holes = ", ".join(["%s"] * len(COLUMNS))
    for row in texts:
        cur.execute(f"INSERT INTO stage VALUES ({holes})", row)
    sql = target.checksum_sql()
    sql_ident = sql.quote_ident
    typed = ", ".join(f"{sql_ident(n)} {snowflake_type(t)}" for n, t in COLUMNS)
    cur.execute(f"CREATE TABLE matrix ({typed})")
    casts = ", ".join(
        "NULL" if n == "c_num_wide" else snowflake_cast(f"c{i}", t)
        for i, (n, t) in enumerate(COLUMNS)
    )
    cur.execute(f"INSERT INTO matrix SELECT {casts} FROM stage")

    compared = 0
    for i, (name, t) in enumerate(COLUMNS):
        if name in FAKESNOW_CANNOT:
            continue
        value = sql_ident(name)
        cur.execute(
            f"SELECT {snowflake_canonical(value, t)} FROM matrix ORDER BY {sql_ident('id')}"
        )
        got = [r[0] for r in cur.fetchall()]
        assert got == [row[i] for row in expected], (name, t.pg_type)
        compared += 1
    assert compared == len(COLUMNS) - 4

    relation = sql.relation(table)
    assert relation == '"CLINIPIPE"."RAW"."MATRIX"'
    cur.execute(sql.rows_sql(table, [Span(0, 10)]).replace(relation, "matrix"))
    assert {tuple(map(str, r[:1])): r[1] for r in cur.fetchall()} == pg_rows
    cur.execute(sql.column_hashes_sql(table, [Span(0, 10)], keys).replace(relation, "matrix"))
    assert {tuple(map(str, r[:1])): tuple(r[1:]) for r in cur.fetchall()} == pg_columns
