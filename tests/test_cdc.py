"""CDC into DuckDB: exact equality with the source, TOAST, crash safety, slot hygiene."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.pipeline.cdc import CdcOptions, run_cdc
from clinipipe.spec import load_spec
from tests.helpers import assert_target_equals_source, catch_up, execute, target_rows
from tests.workload import Workload, random_transaction


def test_backfill_under_concurrent_writes_then_cdc_is_exact(
    hospital_project: Path, pg_dsn: str
) -> None:
    """Issue 3's bar: writes run during the whole backfill; backfill + CDC equals the source."""
    workload = Workload(pg_dsn, seed=5)
    workload.start()
    try:
        time.sleep(0.3)
        run_backfill(load_spec(hospital_project), BackfillOptions(workers=3, pages_per_range=2))
        time.sleep(0.3)
    finally:
        count = workload.stop()
    assert count > 5
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_every_kind_of_change(hospital_project: Path, pg_dsn: str) -> None:
    run_backfill(load_spec(hospital_project))
    execute(
        pg_dsn,
        "INSERT INTO providers VALUES (9001, '1234567893', 'Ann', 'Lee', 'Cardiology', 'Heart')",
        "UPDATE providers SET department = 'Moved' WHERE provider_id = 1",
        "UPDATE providers SET provider_id = 9002 WHERE provider_id = 2",
        "DELETE FROM providers WHERE provider_id = 3",
    )
    execute(pg_dsn, "INSERT INTO providers VALUES (3, '1234567893', 'Re', 'Used', 'Oncology', 'X')")
    execute(
        pg_dsn,
        "UPDATE patients SET email = NULL, phone = '' WHERE patient_id = 1",
        "UPDATE patients SET city = 'O''Brien, \"Town\"\nNew' WHERE patient_id = 2",
        "DELETE FROM labs WHERE patient_id = 5",
        "TRUNCATE claims",
        "INSERT INTO claims VALUES (1, 1, 1, 'Aetna', NULL, 10.50, NULL, 'paid', '2026-01-02')",
        "UPDATE encounters SET discharge_ts = admit_ts + interval '2 days'",  # a big transaction
    )
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_unchanged_toast_value_survives(hospital_project: Path, pg_dsn: str) -> None:
    big = "".join(random.Random(3).choice("abcdefghij0123456789 ") for _ in range(300_000))
    execute(pg_dsn, f"UPDATE clinical_notes SET note_text = '{big}' WHERE note_id = 1")
    run_backfill(load_spec(hospital_project))
    execute(
        pg_dsn,
        "UPDATE clinical_notes SET note_type = 'addendum' WHERE note_id = 1",
        "UPDATE clinical_notes SET note_type = 'late' WHERE note_id = 1",
    )
    catch_up(hospital_project)
    rows = {
        r[0]: r for r in target_rows(hospital_project.parent / "warehouse.duckdb", "clinical_notes")
    }
    assert rows[1][4] == "late"
    assert rows[1][6] == big  # never NULL, never a placeholder
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_idle_publication_does_not_pin_wal(hospital_project: Path, pg_dsn: str) -> None:
    run_backfill(load_spec(hospital_project))
    execute(pg_dsn, "CREATE TABLE unpublished (x int)")
    execute(pg_dsn, "INSERT INTO unpublished SELECT generate_series(1, 10000)")
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        after_activity = int(cur.fetchone()[0])
    con.close()
    catch_up(hospital_project)  # no published change at all
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = 'clinipipe_slot'"
        )
        confirmed = int(cur.fetchone()[0])
    con.close()
    assert confirmed >= after_activity


def test_cdc_requires_a_completed_backfill(
    hospital_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import cli

    code, _, err = cli(capsys, "-c", str(hospital_project), "cdc", "start", "--until-caught-up")
    assert code == 1 and "clinipipe backfill" in err


def test_status_and_reset(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import cli

    run_backfill(load_spec(hospital_project))
    execute(pg_dsn, "UPDATE providers SET department = 'X' WHERE provider_id = 1")
    catch_up(hospital_project)
    code, out, _ = cli(capsys, "-c", str(hospital_project), "cdc", "status", "--json")
    assert code == 0 and '"slot_exists": true' in out and '"p99"' in out
    execute(  # about 20 MB of WAL that no running CDC confirms
        pg_dsn,
        "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 4) AS pad "
        "FROM generate_series(1, 100000) g",
    )
    spec_text = hospital_project.read_text().replace(
        "  slot: clinipipe_slot", "  slot: clinipipe_slot\n  lag_warning_mb: 1"
    )
    hospital_project.write_text(spec_text)
    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "status", "--json")
    assert code == 3 and '"lag_warning": true' in out and "holds back" in err, out + err
    code, _, err = cli(capsys, "-c", str(hospital_project), "cdc", "reset")
    assert code == 2 and "--yes" in err
    code, out, _ = cli(capsys, "-c", str(hospital_project), "cdc", "reset", "--yes")
    assert code == 0 and "Dropped replication slot" in out
    code, _, err = cli(capsys, "-c", str(hospital_project), "cdc", "status")
    assert code == 1 and "missing" in err


@pytest.mark.slow
@pytest.mark.parametrize("seed", [42, 7, 2026])
def test_kill_9_at_random_moments_loses_and_doubles_nothing(
    hospital_project: Path, pg_dsn: str, seed: int
) -> None:
    run_backfill(load_spec(hospital_project))
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    command = [sys.executable, "-m", "clinipipe", "-q", "-c", str(hospital_project), "cdc", "start",
               "--batch-ms", "50", "--batch-rows", "500"]  # fmt: skip
    rng = random.Random(seed)
    workload = Workload(pg_dsn, seed=seed, pause=0.005)
    workload.start()
    try:
        for _ in range(6):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)  # fmt: skip
            time.sleep(rng.uniform(1.5, 3.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        transactions = workload.stop()
    assert transactions > 50
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:  # a last burst after the kills
        for _ in range(20):
            random_transaction(cur, rng)
            con.commit()
    con.close()
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_reconnects_after_the_connection_drops(hospital_project: Path, pg_dsn: str) -> None:
    """The walsender is killed mid-stream (as on a source restart): CDC reconnects, resumes."""
    import threading

    run_backfill(load_spec(hospital_project))
    result: dict[str, object] = {}

    def cdc() -> None:
        try:
            result["summary"] = run_cdc(load_spec(hospital_project), CdcOptions(max_seconds=8))
        except BaseException as exc:
            result["error"] = exc

    workload = Workload(pg_dsn, seed=3, pause=0.01)
    workload.start()
    thread = threading.Thread(target=cdc)
    thread.start()
    try:
        for _ in range(2):
            time.sleep(2)
            execute(
                pg_dsn,
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = 'clinipipe_slot' AND active_pid IS NOT NULL",
            )
    finally:
        workload.stop()
        thread.join(timeout=120)
    assert "error" not in result, result.get("error")
    assert result["summary"].reconnects >= 1  # type: ignore[attr-defined]
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_large_transaction_is_compacted_into_arrow(
    hospital_project: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction far larger than the compaction size (and TOAST flags in some chunks
    only) applies exactly."""
    import clinipipe.source.pgoutput as pgoutput

    monkeypatch.setattr(pgoutput, "COMPACT_ROWS", 500)
    big = "x" * 300_000
    execute(pg_dsn, f"UPDATE clinical_notes SET note_text = '{big}' || note_id WHERE note_id < 5")
    run_backfill(load_spec(hospital_project))
    execute(
        pg_dsn,
        "UPDATE labs SET unit = unit || '.'",  # ~10k rows in one transaction
        "UPDATE clinical_notes SET note_type = 'bulk'",  # unchanged TOAST for notes 1-4 only
        "DELETE FROM medications WHERE medication_id % 3 = 0",
    )
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_a_failing_target_is_retried(
    hospital_project: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warehouse refuses a batch twice (e.g. a lock held by a reader): the same batch is
    applied again (it was rolled back) and nothing is lost or doubled."""
    import clinipipe.pipeline.cdc as cdc_module
    from clinipipe.targets.base import TargetError
    from clinipipe.targets.duckdb import DuckDBTarget

    run_backfill(load_spec(hospital_project))
    real = DuckDBTarget.apply_cdc_batch
    failures = {"left": 2}

    def flaky(self: DuckDBTarget, batch: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise TargetError("the warehouse is busy")
        real(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(DuckDBTarget, "apply_cdc_batch", flaky)
    monkeypatch.setattr(cdc_module, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    execute(pg_dsn, "UPDATE labs SET unit = 'mmol/L' WHERE lab_id < 50", "DELETE FROM claims")
    catch_up(hospital_project)
    assert failures["left"] == 0
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_sigterm_finishes_the_batch_and_exits_0(hospital_project: Path, pg_dsn: str) -> None:
    run_backfill(load_spec(hospital_project))
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinipipe", "-q", "-c", str(hospital_project), "cdc", "start"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    workload = Workload(pg_dsn, seed=4, pause=0.01)
    workload.start()
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    workload.stop()
    assert proc.returncode == 0, err
    assert "Applied" in out
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_cdc_start_builds_and_refreshes_dynamic_tables_on_schedule(
    hospital_project: Path, pg_dsn: str
) -> None:
    import duckdb

    run_backfill(load_spec(hospital_project))
    summary = run_cdc(load_spec(hospital_project), CdcOptions(until_caught_up=True))
    assert summary.refreshes >= 3  # every dynamic table was due (never built)
    with duckdb.connect(str(hospital_project.parent / "warehouse.duckdb"), read_only=True) as con:
        built = con.execute(
            "SELECT name, refresh_action, warehouse FROM _clinipipe.dynamic_table_refresh_history "
            "WHERE state = 'SUCCEEDED' ORDER BY name"
        ).fetchall()
        rows = con.execute("SELECT count(*) FROM derived.patient_summary").fetchone()
    assert [b[0] for b in built] == ["daily_census", "patient_summary", "recent_labs"]
    assert {b[1] for b in built} == {"INITIALIZATION"} and rows == (300,)
    # ... and the interactive tables reading them were published for dashboards.
    from clinipipe.serving import ServingReader

    assert summary.publishes == 3 and summary.publish_failures == []
    with ServingReader(hospital_project.parent / "warehouse.duckdb") as reader:
        served = reader.query("patient_dashboard", "SELECT count(*) FROM patient_dashboard")
    assert served == [(300,)]
