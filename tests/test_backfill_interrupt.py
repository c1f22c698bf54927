"""Ctrl-C (SIGINT) and SIGTERM stop a backfill within seconds, keep what committed, and say how
to resume; `--resume` then ends exact (issue 13)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import duckdb
import psycopg2
import pytest

from tests.helpers import TABLES, CliProcess, assert_target_equals_source

ANNOUNCE_COMMITS = (
    "import sys\n"
    "from clinipipe.targets.duckdb import DuckDBTarget\n"
    "real = DuckDBTarget.load_range\n"
    "def announced(self, table, work, stream):\n"
    "    rows = real(self, table, work, stream)\n"
    "    print(f'test: range committed {table.name} {work.range_no}', file=sys.stderr, "
    "flush=True)\n"
    "    return rows\n"
    "DuckDBTarget.load_range = announced\n"
)


def _ranges(warehouse: Path) -> tuple[int, int, int, object]:
    """(ranges recorded, distinct ranges recorded, ranges planned, completed_at)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        kept, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (table_name, range_no)) "
            "FROM _clinipipe.backfill_ranges"
        ).fetchone()
        (planned,) = con.execute("SELECT count(*) FROM _clinipipe.backfill_plan").fetchone()
        (completed,) = con.execute("SELECT completed_at FROM _clinipipe.backfill_runs").fetchone()
    return kept, distinct, planned, completed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_backfill_within_2_s_and_resume_is_exact(
    hospital_project: Path, pg_dsn: str, signum: signal.Signals
) -> None:
    """After the first range commits, every source table is locked: the ranges that start
    afterwards hang in their COPY on the server. The signal must cancel those COPYs (no
    waiting for the lock), drop the queued ranges, record none of them, print how to resume
    and exit 130 within 2 s."""
    warehouse = hospital_project.parent / "warehouse.duckdb"
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    child = CliProcess(
        ["-c", str(hospital_project), "backfill", "--workers", "2", "--range-pages", "1"],
        env,
        prelude=ANNOUNCE_COMMITS,
    )
    locker = psycopg2.connect(pg_dsn)
    try:
        child.wait_for_line(r"^test: range committed")
        with locker.cursor() as cur:  # held until the end: new COPYs wait for it
            cur.execute(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE")
        time.sleep(0.3)  # the ranges in flight finish; the next ones block on the lock
        sent = time.monotonic()
        child.proc.send_signal(signum)
        code, _, err = child.finish()
        elapsed = time.monotonic() - sent
    finally:
        locker.close()  # releases the lock (and lets a hung child go on, should it hang)
    assert code == 130, err
    assert elapsed < 2.0, f"took {elapsed:.1f} s to stop"
    assert "clinipipe backfill --resume" in err, err
    assert "Traceback" not in err
    kept, distinct, planned, completed = _ranges(warehouse)
    assert 0 < kept == distinct < planned and completed is None

    resumed = CliProcess(["-c", str(hospital_project), "backfill", "--resume", "--json"], env)
    code, out, err = resumed.finish()
    assert code == 0, err
    assert '"complete": true' in out
    assert_target_equals_source(pg_dsn, warehouse)
    kept, distinct, planned, completed = _ranges(warehouse)
    assert kept == distinct == planned and completed is not None


def test_a_partial_backfill_is_not_complete(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--tables` loads only those tables; the run stays incomplete, `cdc start` refuses
    without a catalog error, and a later `backfill` loads the rest (under a fresh snapshot,
    with changes made meanwhile): CDC then ends exact."""
    import json

    from clinipipe.pipeline.backfill import not_backfilled_message, tables_not_backfilled
    from clinipipe.spec import load_spec
    from clinipipe.targets import open_target
    from tests.helpers import catch_up, cli, execute

    warehouse = hospital_project.parent / "warehouse.duckdb"
    rest = ["providers", "encounters", "medications", "claims", "clinical_notes"]
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill", "--tables",
                         "labs,patients", "--range-pages", "4", "--json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["complete"] is False and data["remaining"] == rest
    assert sorted(data["tables"]) == ["labs", "patients"]
    assert _ranges(warehouse)[3] is None  # completed_at
    loaded = load_spec(hospital_project)
    with open_target(loaded, read_only=True) as target:
        assert tables_not_backfilled(target, loaded) == rest
    assert "clinical_notes" in not_backfilled_message(rest)

    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "start",
                         "--until-caught-up")  # fmt: skip
    assert code == 1, out + err
    assert "clinipipe backfill" in err and "Catalog" not in err and "internal" not in err

    code, out, _ = cli(capsys, "-c", str(hospital_project), "backfill", "--tables", "labs")
    assert code == 0 and "already loaded" in " ".join(out.split())

    execute(
        pg_dsn,
        "UPDATE encounters SET department = 'X' WHERE encounter_id % 3 = 0",
        "DELETE FROM claims WHERE claim_id % 5 = 0",
        "UPDATE labs SET unit = unit || '!' WHERE lab_id % 4 = 0",
    )
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["complete"] is True and data["remaining"] == []
    assert sorted(data["tables"]) == sorted(rest)
    assert _ranges(warehouse)[3] is not None
    with open_target(loaded, read_only=True) as target:
        assert tables_not_backfilled(target, loaded) == []
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, warehouse)
