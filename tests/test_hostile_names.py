"""Bad input: names that would break out of quoting.

Spec names (tables, columns, keys, schemas...) are plain identifiers: anything else is refused
at load. Names that come from the source catalog (columns the spec does not list) can be
anything PostgreSQL allows: they are quoted by every statement builder, so the SQL parses and
the name comes back as one identifier, and a table with such columns backfills and streams
exactly."""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg2
import pytest
import sqlglot
from pydantic import TypeAdapter, ValidationError
from sqlglot import exp

from clinipipe.spec.types import Identifier
from clinipipe.sql.dialect import POSTGRES
from clinipipe.synth import run_synth
from clinipipe.targets.duckdb import DuckDBDialect
from clinipipe.targets.snowflake.core import SnowflakeDialect
from tests.helpers import cli, example_text, execute, write_spec

HOSTILE = [
    'a"b',
    'x"; DROP TABLE patients; --',
    "semi;colon",
    "back\\slash",
    "it's",
    "new\nline",
    "tab\tbed",
    "with space",
    "select",  # a plain identifier (the spec accepts it), but a reserved word
    "naïve",
    "\u0440\u0430tient_id",  # Cyrillic er and a: looks like patient_id
    "patient\u200bid",  # zero-width space
    "\uff50\uff41\uff54\uff49\uff45\uff4e\uff54",  # fullwidth "patient"
    "$1",
    "*/ x /*",
    "n" * 63,  # PostgreSQL's longest name (the spec accepts it too)
]
PLAIN = ("select", "n" * 63)

SPEC_ONLY = ["patients\n", "n" * 64, "", "1abc", "a-b", "a.b"]


@pytest.mark.parametrize("name", [n for n in HOSTILE if n not in PLAIN] + SPEC_ONLY)
def test_the_spec_refuses_every_non_plain_identifier(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        TypeAdapter(Identifier).validate_python(name)
    assert "not a plain SQL identifier" in str(raised.value)


@pytest.mark.parametrize("plain", ["patients", "_x", "A1_b", "n" * 63, "select"])
def test_plain_identifiers_are_accepted(plain: str) -> None:
    assert TypeAdapter(Identifier).validate_python(plain) == plain


DIALECTS = [(POSTGRES, "postgres"), (DuckDBDialect(), "duckdb"), (SnowflakeDialect(), "snowflake")]


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize(("dialect", "grammar"), DIALECTS, ids=lambda d: getattr(d, "name", d))
def test_quoted_names_parse_as_one_identifier(dialect: object, grammar: str, name: str) -> None:
    """quote_ident / qualify: a SELECT, an INSERT and a DDL built with the name parse into
    exactly the expected statement, and the name round-trips as one identifier."""
    quote = dialect.quote_ident  # type: ignore[attr-defined]
    qualify = dialect.qualify  # type: ignore[attr-defined]
    expected = name.upper() if grammar == "snowflake" else name
    col, table = quote(name), qualify("raw", name)
    statements = [
        f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL",
        f"INSERT INTO {table} ({col}) VALUES (1)",
        f"CREATE TABLE {table} ({col} INTEGER)",
        f"ALTER TABLE {table} ADD COLUMN {col} TEXT",
    ]
    for sql in statements:
        trees = sqlglot.parse(sql, read=grammar)
        assert len(trees) == 1 and trees[0] is not None, sql
        identifiers = [i.this for i in trees[0].find_all(exp.Identifier)]
        assert identifiers.count(expected) >= 2, (sql, identifiers)
        assert set(identifiers) <= {expected, "raw", "RAW"}, (sql, identifiers)
        assert not list(trees[0].find_all(exp.Drop)), sql


# --- end to end: a source table whose column names are hostile ------------------------------

SOURCE_COLUMNS = [n for n in HOSTILE if n != "select"] + ["select"]


def test_hostile_source_columns_backfill_and_stream_exactly(
    tmp_path: Path,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_synth(pg_dsn, patients=30, seed=4)
    columns = ", ".join(f"{POSTGRES.quote_ident(c)} text" for c in SOURCE_COLUMNS)
    values = ", ".join(f"'v{i}' || g" for i in range(len(SOURCE_COLUMNS)))
    execute(
        pg_dsn,
        f"CREATE TABLE public.odd (id integer PRIMARY KEY, {columns})",
        f"INSERT INTO public.odd SELECT g, {values} FROM generate_series(1, 50) g",
    )
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    text = example_text(**{"  tables:\n": "  tables:\n    - name: odd\n      primary_key: [id]\n"})
    spec = write_spec(tmp_path, text)
    for command in (["deploy"], ["backfill"]):
        code, _, err = cli(capsys, "-c", str(spec), *command)
        assert code == 0, (command, err)
    first, last = POSTGRES.quote_ident(SOURCE_COLUMNS[0]), POSTGRES.quote_ident(SOURCE_COLUMNS[-1])
    execute(
        pg_dsn,
        f"UPDATE public.odd SET {first} = 'changed', {last} = NULL WHERE id <= 5",
        "DELETE FROM public.odd WHERE id > 45",
        f"INSERT INTO public.odd (id, {first}) VALUES (100, 'new')",
    )
    code, _, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, err

    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT * FROM public.odd ORDER BY id")
        expected = cur.fetchall()
        source_names = [d[0] for d in cur.description]
    con.close()
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        cursor = wh.execute("SELECT * FROM raw.odd ORDER BY id")
        actual = cursor.fetchall()
        target_names = [d[0] for d in cursor.description]
    assert target_names[: len(source_names)] == source_names
    assert [row[: len(source_names)] for row in actual] == expected
    assert len(expected) == 46 and ("changed" in expected[0])
