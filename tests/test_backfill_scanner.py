"""The backfill through DuckDB's own PostgreSQL reader (`clinipipe.targets.duckdb.scanner`,
issue 17): whole tables of allow-listed types read by the postgres extension under the exported
snapshot, exactly (the type matrix), with the values its decoding would alter failing the load,
the rest falling back to the typed COPY reader."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import duckdb
import psycopg2
import pytest

import clinipipe.pipeline.backfill as backfill_module
from clinipipe.pipeline.backfill import run_backfill
from clinipipe.source.catalog import EXPORT_SESSION_SETTINGS
from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.source.range_reader import CopyCancel
from clinipipe.source.scan_source import scan_conninfo
from clinipipe.spec.loader import load_spec
from clinipipe.targets import open_target
from clinipipe.targets.base import RangeWork, TargetError
from clinipipe.targets.capabilities.loading import TableScan
from clinipipe.targets.duckdb import scanner
from tests.helpers import CliProcess, cli, execute, write_spec
from tests.test_cdc_types import _mismatches
from tests.test_types import HOSTILE_SETTINGS, MATRIX, N_ROWS, _execute, _introspect, _matrix_sql

SPEC = """\
version: 1
name: scanned
source:
  dsn: ${{CLINIPIPE_SOURCE_DSN}}
  publication: scan_pub
  slot: scan_slot
  tables:
{tables}
target:
  type: duckdb
  path: warehouse.duckdb
"""

# Matrix columns the extension does NOT read exactly (checked against PostgreSQL below, column
# by column, when this list was made): they must stay off the allow-list.
NOT_SCANNED = {
    "c_num_neg_scale",  # numeric(5,-2): the extension's process dies (SIGFPE)
    "c_num_wide",  # numeric(50,10): read as DOUBLE
    "c_numeric",  # numeric: read as DOUBLE
    "c_money",  # text with a currency sign
    "c_num_big_scale",  # numeric(2,5): DECIMAL(2,5), not a valid DuckDB type
    "c_char",  # char(n): padding stripped
    "c_char_arr", "c_interval_arr", "c_inet_arr", "c_int_arr", "c_text_arr", "c_num_arr",
    "c_float_arr", "c_date_arr", "c_tstz_arr", "c_bool_arr", "c_uuid_arr", "c_jsonb_arr",
    "c_enum_arr",  # arrays: dimensions are not checked
    "c_inet", "c_cidr",  # inet's text differs
    "c_composite",  # a STRUCT
    "c_macaddr", "c_range",  # "other" types: not pinned
}  # fmt: skip


def _spec(tmp_path: Path, *tables: str) -> Path:
    lines = "\n".join(f"    - {{name: {t}, primary_key: [id]}}" for t in tables)
    return write_spec(tmp_path, SPEC.format(tables=lines))


def _deploy(tmp_path: Path, dsn: str, capsys: Any, monkeypatch: Any, *tables: str) -> Path:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    spec = _spec(tmp_path, *tables)
    code, out, err = cli(capsys, "-q", "-c", str(spec), "deploy")
    assert code == 0, out + err
    return spec


def test_the_type_matrix_through_the_scanner_is_exact(
    pg_server: EmbeddedPostgres, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """Every allow-listed matrix column, on a database whose session defaults are hostile,
    loaded by the extension: equal to PostgreSQL column by column (floats by bit pattern)."""
    name = "scan_matrix"
    dsn = pg_server.create_database(name)
    try:
        _execute(dsn, _matrix_sql())
        matrix = _introspect(dsn, "type_matrix")
        kept = [c.name for c in matrix.columns if scanner.scanner_exact(c.type)]
        assert set(MATRIX) - set(kept) == NOT_SCANNED  # the allow-list, pinned
        _execute(dsn, f"CREATE TABLE scanned AS SELECT id, {', '.join(kept[1:])} "
                      "FROM type_matrix; ALTER TABLE scanned ADD PRIMARY KEY (id); DROP TABLE "
                      "type_matrix; ALTER TABLE scanned RENAME TO type_matrix")  # fmt: skip
        for setting in HOSTILE_SETTINGS:
            _execute(dsn, setting.replace("SET", f"ALTER DATABASE {name} SET", 1))
        spec = _deploy(tmp_path, dsn, capsys, monkeypatch, "type_matrix")
        summary = run_backfill(load_spec(spec))
        assert summary.tables["type_matrix"].reader == "warehouse scan"
        assert summary.tables["type_matrix"].ranges == 1 and summary.rows == N_ROWS
        table = _introspect(dsn, "type_matrix")
        pg = psycopg2.connect(dsn)
        pg.autocommit = True
        try:
            cur = pg.cursor()
            for statement in EXPORT_SESSION_SETTINGS:
                cur.execute(statement)
            with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
                wh.execute("SET TimeZone = 'America/Los_Angeles'")
                mismatches = _mismatches(cur, wh, table)
        finally:
            pg.close()
        assert mismatches == {}
    finally:
        pg_server.drop_database(name)  # its inactive slots go with it


def test_a_domain_read_as_text_falls_back_to_the_copy_reader(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    execute(
        pg_dsn,
        "CREATE DOMAIN small AS int2 NOT NULL",
        "CREATE TABLE dom (id int PRIMARY KEY, s small)",
        "INSERT INTO dom VALUES (1, -3), (2, 7)",
    )
    spec = _deploy(tmp_path, pg_dsn, capsys, monkeypatch, "dom")
    summary = run_backfill(load_spec(spec))
    assert summary.tables["dom"].reader == "copy"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        assert wh.execute("SELECT id, s, typeof(s) FROM raw.dom ORDER BY id").fetchall() == [
            (1, -3, "SMALLINT"), (2, 7, "SMALLINT"),
        ]  # fmt: skip


def test_without_the_extension_the_copy_reader_loads(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE plain (id int PRIMARY KEY, v text)",
        "INSERT INTO plain VALUES (1, 'a')",
    )
    spec = _deploy(tmp_path, pg_dsn, capsys, monkeypatch, "plain")
    monkeypatch.setattr(scanner, "extension_file", lambda: None)
    target = open_target(load_spec(spec))
    with target:
        reason = target.scan_unsupported(_introspect(pg_dsn, "plain"))
    assert reason is not None and scanner.PACKAGE in reason
    summary = run_backfill(load_spec(spec))
    assert summary.tables["plain"].reader == "copy" and summary.rows == 1


@pytest.mark.parametrize(
    ("column", "value"),
    [("n numeric(12,2)", "'NaN'"), ("ts timestamptz", "'294247-01-10 04:00:54.775807+00'")],
)
def test_values_the_extension_would_alter_fail_the_load(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any, column: str, value: str
) -> None:
    """NaN in numeric(p,s) reads as 0 and the last PostgreSQL microseconds wrap: the guard
    query under the same snapshot fails the load instead, as the text path does."""
    execute(
        pg_dsn,
        f"CREATE TABLE odd (id int PRIMARY KEY, {column})",
        f"INSERT INTO odd VALUES (1, NULL), (2, {value})",
    )
    spec = _deploy(tmp_path, pg_dsn, capsys, monkeypatch, "odd")
    code, out, err = cli(capsys, "-q", "-c", str(spec), "backfill", "--json")
    assert code == 1, out + err
    assert "range 0 failed" in err and column.split()[0] in err and "Traceback" not in err
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        assert wh.execute("SELECT count(*) FROM raw.odd").fetchone() == (0,)
        assert wh.execute("SELECT count(*) FROM _clinipipe.backfill_ranges").fetchone() == (0,)


def test_the_scan_reads_exactly_the_exported_snapshot(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """Rows inserted, deleted and updated after the slot's snapshot (committed before the
    extension's parallel readers connect) are not seen; the table spans several of the
    extension's page tasks, so several connections read it."""
    execute(
        pg_dsn,
        "CREATE TABLE snap (id int8 PRIMARY KEY, v text, at timestamptz)",
        "INSERT INTO snap SELECT g, 'v' || g, now() FROM generate_series(1, 300000) g",
        "ANALYZE snap",
    )
    spec = _deploy(tmp_path, pg_dsn, capsys, monkeypatch, "snap")

    def change(_: object) -> None:
        execute(
            pg_dsn,
            "INSERT INTO snap SELECT g, 'late', now() FROM generate_series(300001, 400000) g",
            "DELETE FROM snap WHERE id % 300 = 0",
            "UPDATE snap SET v = 'changed' WHERE id <= 1000",
        )

    summary = run_backfill(load_spec(spec), on_start=change)
    assert summary.tables["snap"].reader == "warehouse scan"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        count, top, changed, deleted = wh.execute(
            "SELECT count(*), max(id), count(*) FILTER (WHERE v <> 'v' || id), "
            "count(*) FILTER (WHERE id % 300 = 0) FROM raw.snap"
        ).fetchone()
    assert (count, top, changed, deleted) == (300_000, 300_000, 0, 1000)


def test_a_failing_attach_never_shows_the_password(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    execute(pg_dsn, "CREATE TABLE t1 (id int PRIMARY KEY)")
    spec = _deploy(tmp_path, pg_dsn, capsys, monkeypatch, "t1")
    secret = "s3cret-Pa55"
    bad = f"postgresql://nobody:{secret}@127.0.0.1:1/nowhere"
    scan = TableScan(
        conninfo=scan_conninfo(bad), snapshot_sql="SELECT 1", guard=lambda: None,
        cancel=CopyCancel(),
    )  # fmt: skip
    with open_target(load_spec(spec)) as target, pytest.raises(TargetError) as raised:
        target.load_scan(
            _introspect(pg_dsn, "t1"), RangeWork("r", 0, False, "W", "initialization", "XSMALL"),
            scan,
        )  # fmt: skip
    assert secret not in str(raised.value) and secret not in repr(scan)
    assert "public.t1" in str(raised.value)


PAUSE_BEFORE_SCAN = (
    "import sys, time\n"
    "import clinipipe.pipeline.backfill as b\n"
    "real = b.snapshot_statement\n"
    "def announced(*args, **kwargs):\n"
    "    print('test: scanning', file=sys.stderr, flush=True)\n"
    "    time.sleep(1.0)\n"
    "    return real(*args, **kwargs)\n"
    "b.snapshot_statement = announced\n"
)


def test_sigint_stops_a_scan_within_2_s_and_keeps_nothing_of_it(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """While the scan's readers wait on a lock on the server, Ctrl-C must still stop the
    backfill promptly, roll the table back and say how to resume."""
    execute(
        pg_dsn,
        "CREATE TABLE big (id int8 PRIMARY KEY, pad text)",
        "INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 400000) g",
        "ANALYZE big",
    )
    spec = _deploy(tmp_path, pg_dsn, capsys, monkeypatch, "big")
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    locker = psycopg2.connect(pg_dsn)
    try:
        child = CliProcess(["-c", str(spec), "backfill"], env, prelude=PAUSE_BEFORE_SCAN)
        child.wait_for_line(r"^test: scanning")
        with locker.cursor() as cur:  # the scan's COPYs wait for it
            cur.execute("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
            time.sleep(2.0)  # the scan has begun and waits
            sent = time.monotonic()
            child.proc.send_signal(signal.SIGINT)
            code, _, err = child.finish()
            elapsed = time.monotonic() - sent
    finally:
        locker.close()
    assert code == 130, err
    assert elapsed < 2.0, f"took {elapsed:.1f} s to stop"
    assert "clinipipe backfill --resume" in err and "Traceback" not in err
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        assert wh.execute("SELECT count(*) FROM raw.big").fetchone() == (0,)
        assert wh.execute("SELECT count(*) FROM _clinipipe.backfill_ranges").fetchone() == (0,)


def test_resume_after_a_killed_scan_loads_the_table_once(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """kill -9 in the middle of a scanned table: nothing of it is recorded; --resume loads it
    whole, exactly once."""
    execute(
        pg_dsn,
        "CREATE TABLE big (id int8 PRIMARY KEY, pad text)",
        "INSERT INTO big SELECT g, repeat('y', 50) FROM generate_series(1, 200000) g",
        "ANALYZE big",
    )
    spec = _deploy(tmp_path, pg_dsn, capsys, monkeypatch, "big")
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    locker = psycopg2.connect(pg_dsn)
    try:
        child = CliProcess(["-c", str(spec), "backfill"], env, prelude=PAUSE_BEFORE_SCAN)
        child.wait_for_line(r"^test: scanning")
        with locker.cursor() as cur:
            cur.execute("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
            time.sleep(2.0)
            child.proc.kill()
            child.finish()
    finally:
        locker.close()
    code, out, err = cli(capsys, "-q", "-c", str(spec), "backfill", "--resume", "--json")
    assert code == 0, out + err
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        assert wh.execute("SELECT count(*), count(DISTINCT id) FROM raw.big").fetchone() == (
            200_000, 200_000,
        )  # fmt: skip
    assert backfill_module.SCAN_MAX_TABLE_BYTES > 0


def _exact(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row with its float (third column) spelled so that NaN, -0 and 0 compare apart."""
    import math

    v = row[2]
    spelled = None if v is None else ("nan" if v != v else (v, math.copysign(1.0, v)))
    return (*row[:2], spelled, *row[3:])


def test_a_foreign_schema_through_the_scanner_then_cdc_is_exact(
    pg_dsn: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """A schema nobody here wrote: a mixed-case schema and table, a composite text key
    (values with commas, quotes and accents), column names with spaces, slashes and dots,
    TOASTed text (100 KB per row), NaN / -0 / infinities in float8. The scanner loads it (not
    the fallback), the warehouse equals the source, and CDC on top (a key update of a row whose
    TOASTed value is unchanged, an update, a delete, an insert) stays exact."""
    import random
    import string

    rng = random.Random(17)
    big = ["".join(rng.choices(string.ascii_letters + " ", k=100_000)) for _ in range(3)]
    execute(
        pg_dsn,
        'CREATE SCHEMA "Ward_Data"',
        'CREATE TABLE "Ward_Data"."LabResults" ("MRN_Code" text, "Seq_No" int, '
        '"Value (mg/dL)" float8, "note.txt" text, PRIMARY KEY ("MRN_Code", "Seq_No"))',
        "INSERT INTO \"Ward_Data\".\"LabResults\" SELECT 'Mé-' || (g % 7) || ',\"x\"', g, "
        "CASE g % 5 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-0'::float8 "
        "WHEN 2 THEN 'Infinity'::float8 ELSE g / 3.0 END, "
        "CASE WHEN g <= 3 THEN NULL ELSE 'n' || g END FROM generate_series(1, 300) g",
        *(f"UPDATE \"Ward_Data\".\"LabResults\" SET \"note.txt\" = '{t}' WHERE \"Seq_No\" = {i + 1}"
          for i, t in enumerate(big)),
    )  # fmt: skip
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    spec = write_spec(tmp_path, SPEC.format(tables=(
        "    - name: LabResults\n      schema: Ward_Data\n"
        "      primary_key: [MRN_Code, Seq_No]")))  # fmt: skip
    code, out, err = cli(capsys, "-q", "-c", str(spec), "deploy")
    assert code == 0, out + err
    summary = run_backfill(load_spec(spec))
    assert summary.tables["LabResults"].reader == "warehouse scan", summary.tables
    query = (
        'SELECT "MRN_Code", "Seq_No", "Value (mg/dL)", md5(coalesce("note.txt", \'-\')), '
        'length("note.txt") FROM {} ORDER BY 2'
    )

    def equal() -> None:
        with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
            cur.execute(query.format('"Ward_Data"."LabResults"'))
            expected = [_exact(r) for r in cur.fetchall()]
        con.close()
        with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
            actual = [_exact(r) for r in wh.execute(query.format('raw."LabResults"')).fetchall()]
        assert len(actual) == 300 and actual == expected

    equal()
    execute(
        pg_dsn,
        'UPDATE "Ward_Data"."LabResults" SET "MRN_Code" = \'moved\' WHERE "Seq_No" = 2',
        'UPDATE "Ward_Data"."LabResults" SET "Value (mg/dL)" = 1 WHERE "Seq_No" = 3',
        'DELETE FROM "Ward_Data"."LabResults" WHERE "Seq_No" = 300',
    )
    code, out, err = cli(capsys, "-q", "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("INSERT INTO \"Ward_Data\".\"LabResults\" VALUES ('new', 300, 2, 'x')")
    con.close()
    code, out, err = cli(capsys, "-q", "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    equal()
