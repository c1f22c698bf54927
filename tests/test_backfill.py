"""`clinipipe backfill` against a real PostgreSQL and a real DuckDB file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg2
import pytest

from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.synth import run_synth
from tests.helpers import (
    TABLES,
    assert_target_equals_source,
    cli,
    example_text,
    source_rows,
    write_spec,
)


def test_backfill_copies_the_source_exactly(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill", "--workers", "3",
                         "--range-pages", "8", "--json")  # fmt: skip
    assert code == 0, err
    assert '"status": "loaded"' in out
    warehouse = hospital_project.parent / "warehouse.duckdb"
    assert_target_equals_source(pg_dsn, warehouse)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        run = con.execute("SELECT consistent_point, completed_at FROM _clinipipe.backfill_runs")
        point, completed = run.fetchone()
        assert completed is not None and "/" in point
        metered = con.execute(
            "SELECT count(*), sum(rows_processed) FROM _clinipipe.metering "
            "WHERE warehouse_role = 'initialization'"
        ).fetchone()
        planned = con.execute("SELECT count(*) FROM _clinipipe.backfill_plan").fetchone()
    assert metered[0] == planned[0] and metered[0] > len(TABLES)
    assert metered[1] == sum(len(source_rows(pg_dsn, t)) for t in TABLES)
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT slot_name, plugin FROM pg_replication_slots")
        assert cur.fetchall() == [("clinipipe_slot", "pgoutput")]
    con.close()

    code, out, _ = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 0 and "already complete" in out
    code, out, _ = cli(capsys, "-c", str(hospital_project), "backfill", "--force", "--json")
    assert code == 0 and '"status": "loaded"' in out
    assert_target_equals_source(pg_dsn, warehouse)


def _loading(dsn: str) -> bool:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'clinipipe-backfill'"
        )
        row = cur.fetchone()
    con.close()
    return bool(row and row[0])


def _kill_while_loading(command: list[str], env: dict[str, str], dsn: str, delay: float) -> None:
    """Start the backfill, wait until it is reading ranges, then kill -9 it after `delay`."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not _loading(dsn) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resume_after_kill_9(hospital_project: Path, pg_dsn: str, seed: int) -> None:
    """Kill the backfill mid-load (and its resumptions); --resume ends with an exact copy."""
    warehouse = hospital_project.parent / "warehouse.duckdb"
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    command = [sys.executable, "-m", "clinipipe", "-q", "-c", str(hospital_project), "backfill",
               "--workers", "2", "--range-pages", "2"]  # fmt: skip
    rng = random.Random(seed)
    _kill_while_loading(command, env, pg_dsn, rng.uniform(0.0, 0.4))
    with duckdb.connect(str(warehouse), read_only=True) as con:
        kept = con.execute("SELECT count(*) FROM _clinipipe.backfill_ranges").fetchone()
        planned = con.execute("SELECT count(*) FROM _clinipipe.backfill_plan").fetchone()
    assert planned[0] > 0 and kept[0] < planned[0], "the kill landed after the load finished"
    for _ in range(2):
        _kill_while_loading([*command, "--resume"], env, pg_dsn, rng.uniform(0.0, 0.3))
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_target_equals_source(pg_dsn, warehouse)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        ranges = con.execute(
            "SELECT count(*), count(DISTINCT (table_name, range_no)) "
            "FROM _clinipipe.backfill_ranges"
        ).fetchone()
        planned = con.execute("SELECT count(*) FROM _clinipipe.backfill_plan").fetchone()
        completed = con.execute("SELECT completed_at FROM _clinipipe.backfill_runs").fetchone()
    assert ranges[0] == ranges[1] == planned[0], "a range was recorded twice or is missing"
    assert completed[0] is not None


def _slots(dsn: str) -> list[tuple[str, str]]:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute("SELECT slot_name, confirmed_flush_lsn::text FROM pg_replication_slots")
        rows = cur.fetchall()
    con.close()
    return rows


def test_interrupted_backfill_needs_resume_or_force(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that died mid-load is neither silently resumed nor silently reloaded."""
    from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
    from clinipipe.spec import load_spec

    class Interrupted(Exception):
        pass

    def interrupt(_schemas: object) -> None:
        raise Interrupted  # after the plan and the slot exist, before any range is loaded

    with pytest.raises(Interrupted):
        run_backfill(load_spec(hospital_project), BackfillOptions(workers=1), on_start=interrupt)
    warehouse = hospital_project.parent / "warehouse.duckdb"
    slots_before = _slots(pg_dsn)
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 1, out + err
    assert "did not finish" in err and "--resume" in err and "--force" in err
    assert "Traceback" not in err
    assert _slots(pg_dsn) == slots_before  # the slot of the unfinished run is kept
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM _clinipipe.backfill_ranges").fetchone() == (0,)
        assert con.execute("SELECT completed_at FROM _clinipipe.backfill_runs").fetchone() == (
            None,
        )
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill", "--resume", "--json")
    assert code == 0 and '"status": "resumed"' in out, out + err
    assert_target_equals_source(pg_dsn, warehouse)


def test_a_slot_of_another_pipeline_is_not_taken_over(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The spec's slot exists but this target never ran a backfill: refuse, keep the slot."""
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT pg_create_logical_replication_slot('clinipipe_slot', 'pgoutput')")
    con.close()
    slots_before = _slots(pg_dsn)
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 1, out + err
    assert "another pipeline" in err and "--force" in err and "Traceback" not in err
    assert _slots(pg_dsn) == slots_before  # not dropped, not recreated
    warehouse = hospital_project.parent / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM _clinipipe.backfill_runs").fetchone() == (0,)


def test_a_lost_slot_is_not_reported_as_a_complete_backfill(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a completed backfill the slot is dropped (or lost in a failover): `backfill` says
    the changes since cannot be streamed instead of "already complete"."""
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 0, out + err
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot('clinipipe_slot')")
    con.close()
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 1, out + err
    assert "is gone" in err and "backfill --force" in err and "already complete" not in out
    assert _slots(pg_dsn) == []
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill", "--force", "--json")
    assert code == 0 and '"status": "loaded"' in out, out + err
    assert [s for s, _ in _slots(pg_dsn)] == ["clinipipe_slot"]


def test_table_disappearing_mid_load_keeps_completed_ranges(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from clinipipe.pipeline.backfill import BackfillError, BackfillOptions, run_backfill
    from clinipipe.spec import load_spec

    def drop_labs(_schemas: object) -> None:
        with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
            cur.execute("DROP TABLE labs")
        con.close()

    with pytest.raises(BackfillError) as info:
        run_backfill(load_spec(hospital_project), BackfillOptions(workers=1, pages_per_range=4),
                     on_start=drop_labs)  # fmt: skip
    message = str(info.value)
    assert "labs" in message and "--resume" in message
    warehouse = hospital_project.parent / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT completed_at FROM _clinipipe.backfill_runs").fetchone() == (
            None,
        )
        loaded = con.execute("SELECT count(*) FROM _clinipipe.backfill_ranges "
                             "WHERE table_name = 'labs'").fetchone()  # fmt: skip
    assert loaded == (0,)
    code, _, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 1 and "source table public.labs does not exist" in err


def test_wal_level_not_logical(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with EmbeddedPostgres(settings={"wal_level": "replica"}) as pg:
        dsn = pg.create_database("plain")
        run_synth(dsn, patients=20, seed=1)
        monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
        spec = write_spec(tmp_path, example_text())
        code, _, err = cli(capsys, "-c", str(spec), "deploy")
        assert code == 1 and "wal_level = logical" in err and "restart" in err


def test_role_without_replication(hospital_project: Path, pg_dsn: str, pg_server: EmbeddedPostgres,
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("CREATE ROLE reader LOGIN NOREPLICATION")
        cur.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    con.close()
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn.replace("clinipipe@", "reader@"))
    code, _, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 1
    assert "REPLICATION" in err and "Traceback" not in err


def _limit_file_size(limit: int) -> None:
    """In the child: files can grow to `limit` bytes, then writes fail (like a full disk)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_target_disk_full_leaves_no_range_half_done(hospital_project: Path, pg_dsn: str) -> None:
    warehouse = hospital_project.parent / "warehouse.duckdb"
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    command = [sys.executable, "-m", "clinipipe", "-c", str(hospital_project), "backfill",
               "--workers", "2", "--range-pages", "4"]  # fmt: skip
    full = subprocess.run(command, env=env, capture_output=True, text=True,
                          preexec_fn=lambda: _limit_file_size(600_000))  # fmt: skip
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr and "error:" in full.stderr, full.stderr
    assert "--resume" in full.stderr, full.stderr
    with duckdb.connect(str(warehouse), read_only=True) as con:
        completed = con.execute("SELECT completed_at FROM _clinipipe.backfill_runs").fetchone()
        recorded = con.execute(
            "SELECT table_name, sum(rows_loaded) FROM _clinipipe.backfill_ranges GROUP BY ALL"
        ).fetchall()
        for table, rows in recorded:  # every range recorded as done is fully there
            assert con.execute(f"SELECT count(*) FROM raw.{table}").fetchone()[0] == rows
    assert completed in (None, (None,))
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_target_equals_source(pg_dsn, warehouse)


def test_unreachable_source_is_a_clear_error(
    hospital_project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u:topsecret@127.0.0.1:9/none")
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 1 and "cannot connect to the source PostgreSQL" in err
    assert "topsecret" not in out + err and "Traceback" not in out + err
