"""Regression tests of issue 10: exactness on schemas unlike the example hospital.

Each test builds its own small source schema, deploys, backfills, changes the source, runs
`cdc start --until-caught-up` and compares every column of the warehouse with the source.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg2
import pytest

from tests.helpers import cli, execute

pytestmark = pytest.mark.slow


def toast_text(seed: str, blocks: int = 400) -> str:
    """SQL for an incompressible text of 32 * `blocks` characters (stored out of line)."""
    return f"(SELECT string_agg(md5('{seed}' || x::text), '') FROM generate_series(1, {blocks}) x)"


def project(tmp_path: Path, dsn: str, tables: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spec over `tables` (YAML list items), deployed against `dsn`."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    spec = tmp_path / "clinipipe.yaml"
    spec.write_text(
        "version: 1\nname: exactness\nsource:\n  dsn: ${CLINIPIPE_SOURCE_DSN}\n"
        "  publication: exact_pub\n  slot: exact_slot\n  tables:\n"
        + tables
        + "target:\n  type: duckdb\n  path: warehouse.duckdb\n"
    )
    return spec


def backfilled(
    tmp_path: Path,
    dsn: str,
    tables: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Path:
    """`project(...)`, deployed and backfilled (both must succeed)."""
    spec = project(tmp_path, dsn, tables, monkeypatch)
    assert cli(capsys, "-q", "-c", str(spec), "deploy")[0] == 0
    assert cli(capsys, "-q", "-c", str(spec), "backfill")[0] == 0
    return spec


def warehouse_rows(spec: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(spec.parent / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def source_rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        con.close()


def test_key_update_keeps_unchanged_toast_values(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unchanged-TOAST marker on a key-changing UPDATE refers to the row under its old key:
    a moved row keeps its note, also in a key swap inside one transaction, a chain of moves,
    and a move of a row updated earlier in the same batch."""
    execute(
        pg_dsn,
        "CREATE TABLE t (id int PRIMARY KEY, v int, note text)",
        f"INSERT INTO t SELECT g, 0, {toast_text('n')} || g FROM generate_series(1, 8) g",
    )
    spec = backfilled(
        tmp_path, pg_dsn, "    - name: t\n      primary_key: [id]\n", monkeypatch, capsys
    )
    execute(pg_dsn, "UPDATE t SET id = 102 WHERE id = 2")
    execute(  # a swap of keys 3 and 4 through a temporary key
        pg_dsn,
        "UPDATE t SET id = -1 WHERE id = 3",
        "UPDATE t SET id = 3 WHERE id = 4",
        "UPDATE t SET id = 4 WHERE id = -1",
    )
    execute(  # changed then moved twice, all in one transaction
        pg_dsn,
        "UPDATE t SET v = 5 WHERE id = 5",
        "UPDATE t SET id = 500 WHERE id = 5",
        "UPDATE t SET id = 5000, v = 6 WHERE id = 500",
    )
    execute(  # a new note, then moved: the moved row carries the new note
        pg_dsn,
        f"UPDATE t SET note = {toast_text('m')} WHERE id = 6",
        "UPDATE t SET id = 600 WHERE id = 6",
    )
    execute(pg_dsn, "DELETE FROM t WHERE id = 7", "UPDATE t SET id = 7 WHERE id = 8")
    code, _, err = cli(capsys, "-q", "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, err
    query = "SELECT id, v, md5(note), length(note) FROM {} ORDER BY id"
    expected = source_rows(pg_dsn, query.format("t"))
    assert [r[0] for r in expected] == [1, 3, 4, 7, 102, 600, 5000]
    assert all(r[2] is not None for r in expected)
    assert warehouse_rows(spec, query.format("raw.t")) == expected


KILL_AT_CLOSE = """
import os, signal, sys
from clinipipe.targets.duckdb import DuckDBTarget
close = DuckDBTarget.close
def kill_at_close(self):  # the writer dies before DuckDB can checkpoint
    if self.read_only:
        return close(self)
    os.kill(os.getpid(), signal.SIGKILL)
DuckDBTarget.close = kill_at_close
from clinipipe.cli.app import run
sys.exit(run(sys.argv[1:]))
"""


def run_then_kill(spec: Path, *args: str) -> None:
    """Run `clinipipe ARGS` in a child that is killed (-9) where it would close the warehouse:
    everything it did is in DuckDB's WAL only, never checkpointed."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", KILL_AT_CLOSE, "-q", "-c", str(spec), *args],
        capture_output=True, text=True, cwd=spec.parent, timeout=300,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr


def test_kill_after_every_kind_of_ddl_leaves_a_warehouse_that_opens(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing clinipipe writes into DuckDB's catalog may be unreplayable from its WAL: after a
    kill -9 following each kind of DDL (deploy, raw tables, ADD COLUMN with a timestamptz, date,
    numeric or text default, DROP, RENAME, a widening), the file opens and holds the source."""
    execute(
        pg_dsn,
        "CREATE TABLE t (id int PRIMARY KEY, v int, label varchar(5))",
        "INSERT INTO t SELECT g, g, 'x' || g FROM generate_series(1, 50) g",
    )
    spec = project(tmp_path, pg_dsn, "    - name: t\n      primary_key: [id]\n", monkeypatch)
    run_then_kill(spec, "deploy")
    run_then_kill(spec, "backfill")
    rounds = [
        "ALTER TABLE t ADD COLUMN ts timestamptz DEFAULT '2021-03-04 05:06:07+02'",
        "ALTER TABLE t ADD COLUMN d date DEFAULT '0044-03-15 BC'",
        "ALTER TABLE t ADD COLUMN n numeric(10,2) DEFAULT 12.5",
        "ALTER TABLE t ADD COLUMN s text DEFAULT 'none'",
        "ALTER TABLE t ADD COLUMN plain int",
        "ALTER TABLE t DROP COLUMN s",
        "ALTER TABLE t RENAME COLUMN label TO tag",
        "ALTER TABLE t ALTER COLUMN v TYPE bigint",
        "ALTER TABLE t ALTER COLUMN tag TYPE varchar(50)",
    ]
    columns = "id, v, tag, ts, d, n, plain"
    for i, ddl in enumerate(rounds):
        execute(pg_dsn, ddl, f"UPDATE t SET v = v + 1 WHERE id = {i + 1}")
        run_then_kill(spec, "cdc", "start", "--until-caught-up")
        with duckdb.connect(str(spec.parent / "warehouse.duckdb")) as con:  # replays the WAL
            assert con.execute("SELECT count(*) FROM raw.t").fetchone() == (50,)
    code, _, err = cli(capsys, "-q", "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, err
    query = f"SELECT {columns} FROM {{}} ORDER BY id"
    execute(pg_dsn, "SET TIME ZONE 'UTC'")
    with duckdb.connect(str(spec.parent / "warehouse.duckdb")) as con:
        con.execute("SET TimeZone = 'UTC'")
        actual = con.execute(query.format("raw.t")).fetchall()
    con_pg = psycopg2.connect(pg_dsn)
    try:
        with con_pg.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(query.format("t").replace(" d,", " d::text AS d,"))
            expected = cur.fetchall()
    finally:
        con_pg.close()
    assert [r[:4] + r[5:] for r in actual] == [r[:4] + r[5:] for r in expected]
    assert {str(r[4]) for r in actual} == {"0044-03-15 (BC)"}
    assert {r[4] for r in expected} == {"0044-03-15 BC"}


def test_widening_behind_the_stream_is_not_a_narrowing_and_a_pause_exits_3(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CDC evolves the raw table from the catalog when it starts, so after a restart the raw
    column can already be bigint while changes written as integer are still in the stream:
    those are not a narrowing (no pause, every row exact). A real incompatible change pauses
    the table, and every `cdc start` then exits 3 naming the table and the reason."""
    execute(
        pg_dsn,
        "CREATE TABLE w (id int PRIMARY KEY, v int, k text)",
        "INSERT INTO w SELECT g, g, 'k' || g FROM generate_series(1, 20) g",
    )
    spec = backfilled(
        tmp_path, pg_dsn, "    - name: w\n      primary_key: [id]\n", monkeypatch, capsys
    )
    execute(pg_dsn, "INSERT INTO w VALUES (21, 21, 'before')", "UPDATE w SET v = -v WHERE id < 5")
    execute(pg_dsn, "ALTER TABLE w ALTER COLUMN id TYPE bigint, ALTER COLUMN v TYPE bigint")
    execute(pg_dsn, "INSERT INTO w VALUES (5000000000, 5000000000, 'after')")
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    assert "paused" not in out + err
    query = "SELECT id, v, k FROM {} ORDER BY id"
    assert warehouse_rows(spec, query.format("raw.w")) == source_rows(pg_dsn, query.format("w"))
    assert warehouse_rows(
        spec, "SELECT data_type FROM information_schema.columns WHERE table_name = 'w' "
        "AND column_name = 'v'"
    ) == [("BIGINT",)]  # fmt: skip

    execute(pg_dsn, "ALTER TABLE w ALTER COLUMN k TYPE int USING length(k)")
    execute(pg_dsn, "UPDATE w SET k = 7 WHERE id = 1")
    for _ in range(2):  # every run says it, not only the one that paused
        code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
        assert code == 3, out + err
        assert "table w is paused" in err
        assert "from text to integer, which is not a widening" in err


def test_same_table_name_in_two_schemas_is_refused_at_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`a.t` and `b.t` would both load into raw.t (backfill silently loaded one of them)."""
    spec = project(
        tmp_path,
        "postgresql://nobody@127.0.0.1:1/none",
        "    - name: t\n      schema: a\n      primary_key: [id]\n"
        "    - name: T\n      schema: b\n      primary_key: [id]\n",
        monkeypatch,
    )
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 2
    assert f"{spec}:11:13" in out + err
    assert "b.T and a.t (item 0) would both load into raw.T" in out + err


def test_columns_differing_only_by_case_are_refused_with_a_clear_message(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`"Value"` and `value` would be one column in DuckDB (backfill said "internal error");
    a clash that appears while CDC runs pauses the table instead of dropping values."""
    execute(
        pg_dsn,
        'CREATE TABLE m (id int PRIMARY KEY, "Value" int, value int)',
        'CREATE TABLE n (id int PRIMARY KEY, "Note" text)',
        "INSERT INTO n VALUES (1, 'a')",
    )
    spec = project(tmp_path, pg_dsn, "    - name: m\n      primary_key: [id]\n", monkeypatch)
    for command in ("validate", "deploy"):  # refused before anything is deployed
        code, out, err = cli(capsys, "-c", str(spec), command)
        assert code == 1, (command, out + err)
        assert "internal error" not in out + err
        assert "columns 'Value' and 'value', whose names differ only by case" in err
    assert not (tmp_path / "warehouse.duckdb").exists()

    spec = project(tmp_path, pg_dsn, "    - name: n\n      primary_key: [id]\n", monkeypatch)
    assert cli(capsys, "-q", "-c", str(spec), "deploy")[0] == 0
    assert cli(capsys, "-q", "-c", str(spec), "backfill", "--force")[0] == 0
    execute(pg_dsn, "ALTER TABLE n ADD COLUMN note text", "INSERT INTO n VALUES (2, 'b', 'c')")
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 3, out + err
    assert "table n is paused" in err and "differ only by case" in err


def test_table_without_primary_key_is_replicated_append_only(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An event log without a primary key: refused unless marked `append_only`; deploy wants
    REPLICA IDENTITY FULL (else the source would refuse updates once it is published);
    inserts (duplicate rows included) and truncates are replicated; an update pauses it."""
    execute(
        pg_dsn,
        "CREATE TABLE events (at timestamptz, kind text, n int)",
        "INSERT INTO events SELECT '2024-01-01'::timestamptz + g * interval '1 min', "
        "'k' || (g % 3), g % 2 FROM generate_series(1, 40) g",
        "INSERT INTO events SELECT * FROM events WHERE n = 0",  # identical rows twice
    )
    spec = project(tmp_path, pg_dsn, "    - name: events\n", monkeypatch)
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 2 and "append_only: true" in out + err

    spec = project(tmp_path, pg_dsn, "    - name: events\n      append_only: true\n", monkeypatch)
    code, out, err = cli(capsys, "-c", str(spec), "deploy")
    assert code != 0 and "REPLICA IDENTITY FULL" in out + err
    execute(pg_dsn, "ALTER TABLE events REPLICA IDENTITY FULL")
    assert cli(capsys, "-q", "-c", str(spec), "deploy")[0] == 0
    assert cli(capsys, "-q", "-c", str(spec), "backfill")[0] == 0
    late = "('2025-01-01', 'late', 7)"
    execute(pg_dsn, f"INSERT INTO events VALUES {late}, {late}")
    execute(pg_dsn, "TRUNCATE events", "INSERT INTO events VALUES (NULL, 'after', 1)")
    execute(pg_dsn, "INSERT INTO events SELECT at, kind, n + 1 FROM events")
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    query = 'SELECT "at", kind, n, count(*) FROM {} GROUP BY ALL ORDER BY ALL'
    pg_query = "SELECT at, kind, n, count(*) FROM {} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    assert warehouse_rows(spec, query.format("raw.events")) == source_rows(
        pg_dsn, pg_query.format("events")
    )
    execute(pg_dsn, "INSERT INTO events VALUES (NULL, 'kept', 5)", "UPDATE events SET n = 9")
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 3, out + err
    assert "table events is paused" in err and "append-only" in err
    assert ("kept",) in warehouse_rows(spec, "SELECT kind FROM raw.events")


def test_dropped_names_reused_and_swapped_names(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dropped column stays in the raw table; re-adding its name (with another type), or
    renaming another column to it, moves the dropped one aside instead of reusing it (stale
    values, old type) or failing on the clash; two columns may swap names."""
    execute(
        pg_dsn,
        'CREATE TABLE r (id int PRIMARY KEY, x text, y int, a text, b int, c int, "Col" int)',
        "INSERT INTO r SELECT g, 'old' || g, g, 'a' || g, g, -g, g FROM generate_series(1, 3) g",
    )
    spec = backfilled(
        tmp_path, pg_dsn, "    - name: r\n      primary_key: [id]\n", monkeypatch, capsys
    )
    execute(
        pg_dsn,
        "ALTER TABLE r DROP COLUMN x",
        "ALTER TABLE r ADD COLUMN x int",
        "ALTER TABLE r DROP COLUMN y",
        "ALTER TABLE r RENAME COLUMN a TO y",
        "ALTER TABLE r RENAME COLUMN b TO tmp",
        "ALTER TABLE r RENAME COLUMN c TO b",
        "ALTER TABLE r RENAME COLUMN tmp TO c",
        'ALTER TABLE r RENAME COLUMN "Col" TO col',
        "UPDATE r SET y = 'new' WHERE id = 3",
        "INSERT INTO r (id, y, b, c, col) VALUES (4, 'four', 40, 41, 4)",
    )
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    query = "SELECT id, x, y, b, c, col FROM {} ORDER BY id"
    assert warehouse_rows(spec, query.format("raw.r")) == source_rows(pg_dsn, query.format("r"))
    kept = warehouse_rows(spec, 'SELECT id, "x__dropped_2", "y__dropped_3" FROM raw.r ORDER BY id')
    assert kept[:3] == [(1, "old1", 1), (2, "old2", 2), (3, "old3", 3)]


def test_column_added_with_a_volatile_default_gets_the_source_values(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ADD COLUMN ... DEFAULT random() (or clock_timestamp(), a serial) rewrites the table and
    sends nothing to logical decoding: existing rows' values are copied from the source once
    the stream has passed the change, also after a kill -9 between the ALTER and the copy."""
    execute(
        pg_dsn,
        'CREATE TABLE "Vol" (id int PRIMARY KEY, v int)',
        'INSERT INTO "Vol" SELECT g, g FROM generate_series(1, 30) g',
    )
    spec = backfilled(
        tmp_path, pg_dsn, "    - name: Vol\n      primary_key: [id]\n", monkeypatch, capsys
    )
    execute(pg_dsn, 'UPDATE "Vol" SET v = -v WHERE id = 1')  # old layout, before the ALTER
    execute(
        pg_dsn,
        'ALTER TABLE "Vol" ADD COLUMN r float8 DEFAULT random()',
        'ALTER TABLE "Vol" ADD COLUMN ts timestamptz DEFAULT clock_timestamp()',
        'ALTER TABLE "Vol" ADD COLUMN n serial',
    )
    execute(pg_dsn, 'UPDATE "Vol" SET r = 2 WHERE id = 2', 'DELETE FROM "Vol" WHERE id = 3')
    run_then_kill(spec, "cdc", "start", "--max-seconds", "3")  # may die before the copy
    execute(pg_dsn, 'INSERT INTO "Vol" (id, v) VALUES (100, 100)')
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    query = "SELECT id, v, r, ts, n FROM {} ORDER BY id"
    expected = source_rows(pg_dsn, query.format('"Vol"'))
    assert len({r[2] for r in expected}) > 20  # really one value per row
    assert warehouse_rows(spec, query.format('raw."Vol"')) == expected


KILL_AFTER_FIRST_PART = """
import os, signal, sys
import clinipipe.pipeline.cdc as cdc
from clinipipe.targets.duckdb import DuckDBTarget
cdc.STAGE_ROWS = 500
stage = DuckDBTarget.stage_cdc_changes
def stage_then_die(self, tables, lsn):
    stage(self, tables, lsn)
    os.kill(os.getpid(), signal.SIGKILL)  # a part applied, its batch not committed
DuckDBTarget.stage_cdc_changes = stage_then_die
from clinipipe.cli.app import run
sys.exit(run(sys.argv[1:]))
"""


def test_a_large_transaction_is_applied_in_parts_exactly_once(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A transaction larger than STAGE_ROWS is applied into the open target transaction in
    parts as it streams (bounded memory): moves and unchanged TOAST values resolve across
    parts, nothing is visible before the commit, and a kill -9 after a part loses nothing."""
    import subprocess
    import sys

    import clinipipe.pipeline.cdc as cdc

    execute(
        pg_dsn,
        "CREATE TABLE p (id int PRIMARY KEY, v int, note text)",
        f"INSERT INTO p SELECT g, 0, {toast_text('p', 80)} || g FROM generate_series(1, 2000) g",
    )
    spec = backfilled(
        tmp_path, pg_dsn, "    - name: p\n      primary_key: [id]\n", monkeypatch, capsys
    )
    execute(  # one transaction of about 6,000 changes
        pg_dsn,
        "UPDATE p SET v = v + 1",
        "UPDATE p SET id = id + 10000 WHERE id <= 1000",
        "UPDATE p SET v = -v WHERE id > 10000",
        "UPDATE p SET id = id - 10000 + 5000 WHERE id > 10500",
        "DELETE FROM p WHERE id % 7 = 0",
    )
    done = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_PART, "-q", "-c", str(spec), "cdc", "start",
         "--until-caught-up"],
        capture_output=True, text=True, cwd=spec.parent, timeout=300,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    before = warehouse_rows(spec, "SELECT count(*), sum(v) FROM raw.p")
    assert before == [(2000, 0)]  # the staged part died with its transaction

    monkeypatch.setattr(cdc, "STAGE_ROWS", 500)
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    assert "staged" in err + out
    query = "SELECT id, v, md5(note) FROM {} ORDER BY id"
    expected = source_rows(pg_dsn, query.format("p"))
    assert len(expected) > 1500 and all(r[2] is not None for r in expected)
    assert warehouse_rows(spec, query.format("raw.p")) == expected


def test_add_column_with_default_and_a_widening_in_one_evolve(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ADD COLUMN with a constant default and a widening of the same table applied
    together (DuckDB cannot commit an ALTER after an UPDATE of the same table); and a volatile
    default on an append-only table pauses it (exit 3) instead of leaving NULLs."""
    execute(
        pg_dsn,
        "CREATE TABLE t (id int PRIMARY KEY, label varchar(10))",
        "INSERT INTO t SELECT g, 'l' || g FROM generate_series(1, 3) g",
        "CREATE TABLE e (what text, n int)",
        "ALTER TABLE e REPLICA IDENTITY FULL",
        "INSERT INTO e SELECT 'w' || g, g FROM generate_series(1, 3) g",
    )
    spec = backfilled(
        tmp_path, pg_dsn,
        "    - name: t\n      primary_key: [id]\n    - name: e\n      append_only: true\n",
        monkeypatch, capsys,
    )  # fmt: skip
    execute(
        pg_dsn,
        "ALTER TABLE t ALTER COLUMN label TYPE varchar(50)",
        "ALTER TABLE t ADD COLUMN n int DEFAULT 7",
        "INSERT INTO t VALUES (4, 'a long label over ten', 8)",
    )
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    query = "SELECT id, label, n FROM {} ORDER BY id"
    assert warehouse_rows(spec, query.format("raw.t")) == source_rows(pg_dsn, query.format("t"))

    execute(pg_dsn, "ALTER TABLE e ADD COLUMN r float8 DEFAULT random()")
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 3, out + err
    assert "table e is paused" in err and "volatile default" in err


def test_old_layout_names_are_resolved_as_they_were(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changes written before `DROP COLUMN f8; RENAME num TO f8` arrive in the old layout, in
    which `f8` is the dropped double column: not the renamed numeric one (a false "not a
    widening" pause stopped the table)."""
    execute(
        pg_dsn,
        "CREATE TABLE m (id int PRIMARY KEY, f8 float8, num numeric, v int)",
        "INSERT INTO m SELECT g, g + 0.5, g * 10, g FROM generate_series(1, 3) g",
    )
    spec = backfilled(
        tmp_path, pg_dsn, "    - name: m\n      primary_key: [id]\n", monkeypatch, capsys
    )
    execute(pg_dsn, "UPDATE m SET v = 100, f8 = 1.25 WHERE id = 1")  # old layout, in the slot
    execute(pg_dsn, "ALTER TABLE m DROP COLUMN f8", "ALTER TABLE m RENAME COLUMN num TO f8")
    execute(pg_dsn, "UPDATE m SET v = 200, f8 = 7 WHERE id = 2")
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    query = "SELECT id, CAST(f8 AS text), v FROM {} ORDER BY id"  # numeric: exact text
    assert warehouse_rows(spec, query.format("raw.m")) == source_rows(pg_dsn, query.format("m"))
    assert warehouse_rows(spec, 'SELECT "f8__dropped_2" FROM raw.m WHERE id = 1') == [(1.25,)]


def test_old_layout_of_a_renamed_name_reused_with_the_same_type(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`x` renamed to `y`, then a new `x` of the same type added: a change written before the
    rename (old layout, `x` = today's `y`) goes to `y`, not to the new `x`."""
    execute(
        pg_dsn,
        "CREATE TABLE r2 (id int PRIMARY KEY, x text, v int)",
        "INSERT INTO r2 SELECT g, 'x' || g, g FROM generate_series(1, 3) g",
    )
    spec = backfilled(
        tmp_path, pg_dsn, "    - name: r2\n      primary_key: [id]\n", monkeypatch, capsys
    )
    execute(pg_dsn, "UPDATE r2 SET x = 'old layout' WHERE id = 1")
    execute(pg_dsn, "ALTER TABLE r2 RENAME COLUMN x TO y", "ALTER TABLE r2 ADD COLUMN x text")
    execute(pg_dsn, "UPDATE r2 SET x = 'new x' WHERE id = 2")
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    query = "SELECT id, y, v, x FROM {} ORDER BY id"
    assert warehouse_rows(spec, query.format("raw.r2")) == source_rows(pg_dsn, query.format("r2"))
