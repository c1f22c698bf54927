"""CDC into DuckDB: exact equality with the source, TOAST, crash safety, slot hygiene."""

from __future__ import annotations

import json
import os
import random
import signal
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
        before = workload.wait_for(3)  # writing when the backfill starts ...
        run_backfill(load_spec(hospital_project), BackfillOptions(workers=3, pages_per_range=2))
        during = workload.transactions
        workload.wait_for(3)  # ... and still writing after it ended
    finally:
        count = workload.stop()
    assert during > before and count > during
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


TOAST_NOTES = (  # ~3.2 KB of md5 hex per note: incompressible enough to be stored out of line
    "UPDATE clinical_notes SET note_text = (SELECT string_agg(md5(note_id::text || '/' || g), "
    "' ') FROM generate_series(1, 100) g)"
)


def _toast(dsn: str) -> tuple[int, int]:
    """(notes, bytes in clinical_notes' TOAST relation): notes stored out of line fill it."""
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM clinical_notes), pg_relation_size(reltoastrelid) "
            "FROM pg_class WHERE relname = 'clinical_notes'"
        )
        notes, size = cur.fetchone()
    con.close()
    return int(notes), int(size)


def _checkpoint(warehouse: Path) -> int:
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        row = con.execute("SELECT max(lsn) FROM _clinipipe.cdc_checkpoints").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [42, 7, 2026])
def test_kill_9_at_random_moments_loses_and_doubles_nothing(
    hospital_project: Path, pg_dsn: str, seed: int
) -> None:
    """`cdc start` is killed (SIGKILL) mid-stream again and again: each time after it applied
    some batches (its checkpoint moved) and while it still ran (exit -9). The notes are
    TOASTed and the workload updates them without touching note_text, so unchanged-TOAST
    values are in flight at the kills. The final catch-up makes the target equal the source."""
    from clinipipe.source.pgoutput import lsn_to_int
    from tests.helpers import CliProcess

    execute(pg_dsn, TOAST_NOTES)
    notes, toast_bytes = _toast(pg_dsn)
    assert notes > 100 and toast_bytes >= notes * 3000  # every note is stored out of line
    run_backfill(load_spec(hospital_project))
    warehouse = hospital_project.parent / "warehouse.duckdb"
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    args = ["-c", str(hospital_project), "cdc", "start", "--batch-ms", "50", "--batch-rows", "500"]
    rng = random.Random(seed)
    # Note updates (unchanged TOAST) weigh as much as all the other kinds together.
    workload = Workload(pg_dsn, seed=seed, pause=0.005, weights=(30, 40, 15, 5, 3, 90, 1))
    workload.start()
    moved = 0
    try:
        for _ in range(3):
            before = _checkpoint(warehouse)
            child = CliProcess(args, env)
            for _ in range(rng.randint(1, 4)):  # batches applied in this run before the kill
                last = child.wait_for_line(r"^applied [\d,]+ changes .* up to ")
            time.sleep(rng.uniform(0.0, 0.2))  # a random moment after that batch
            child.proc.send_signal(signal.SIGKILL)
            code, _, err = child.finish()
            assert code == -signal.SIGKILL, f"cdc start was not running when killed:\n{err}"
            assert "Traceback" not in err
            after = _checkpoint(warehouse)
            assert after >= lsn_to_int(last.rsplit(" ", 1)[1]) > before  # mid-stream: it moved
            moved += 1
    finally:
        transactions = workload.stop()
    assert moved == 3 and transactions > 50
    assert workload.kinds["note"] > 10  # unchanged TOAST values were streamed
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:  # a last burst after the kills
        for _ in range(20):
            random_transaction(cur, rng)
            con.commit()
    con.close()
    catch_up(hospital_project)
    assert_target_equals_source(pg_dsn, warehouse)


def test_reconnects_after_the_connection_drops(hospital_project: Path, pg_dsn: str) -> None:
    """The walsender is killed mid-stream (as on a source restart), twice: CDC reconnects and
    resumes. Each kill waits for batches to be flowing (events, not times); the run is stopped
    by SIGINT once batches flowed again after the second kill."""
    import threading

    run_backfill(load_spec(hospital_project))
    applied = threading.Semaphore(0)
    failure: list[BaseException] = []
    finished = threading.Event()

    def next_batches(n: int) -> None:
        deadline = time.monotonic() + 120  # a hang guard only
        for _ in range(n):
            while not applied.acquire(timeout=0.1):
                assert not finished.is_set(), "cdc stopped"
                assert time.monotonic() < deadline, "no batch applied"

    def active_pid() -> int | None:
        with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
            cur.execute("SELECT active_pid FROM pg_replication_slots "
                        "WHERE slot_name = 'clinipipe_slot'")  # fmt: skip
            row = cur.fetchone()
        return row[0] if row else None

    def driver() -> None:
        try:
            for _ in range(2):
                next_batches(2)  # streaming (again)
                killed = active_pid()
                while killed is None:  # between two streams: kill the next one
                    assert not finished.is_set(), "cdc stopped"
                    time.sleep(0.05)
                    killed = active_pid()
                execute(pg_dsn, f"SELECT pg_terminate_backend({killed})")
                # Only batches after the reconnect count (batches committed before the kill
                # may still be reported after it: the apply and its report are pipelined).
                deadline = time.monotonic() + 120
                while active_pid() in (None, killed):
                    assert not finished.is_set(), "cdc stopped"
                    assert time.monotonic() < deadline, "no reconnect"
                    time.sleep(0.05)
                while applied.acquire(blocking=False):
                    pass
            next_batches(2)  # applying again after the second kill
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # run_cdc: finish the batch, return

    workload = Workload(pg_dsn, seed=3, pause=0.01)
    workload.start()
    thread = threading.Thread(target=driver, daemon=True)
    # The driver's SIGINT must never reach pytest (should run_cdc have returned already).
    pytest_handler = signal.signal(signal.SIGINT, lambda *_: None)
    thread.start()
    try:
        summary = run_cdc(load_spec(hospital_project), CdcOptions(batch_ms=50),
                          on_batch=lambda _: applied.release())  # fmt: skip
    finally:
        finished.set()
        workload.stop()
        thread.join(timeout=120)
        signal.signal(signal.SIGINT, pytest_handler)
    assert failure == []
    assert summary.reconnects >= 2 and summary.batches >= 6
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
    """The warehouse fails a batch after the first table's changes were written inside the
    batch's transaction (e.g. a lock or a full disk on the second table): the transaction rolls
    back, so nothing of the batch is visible, not even the first table; the same batch is
    applied again and nothing is lost or doubled."""
    import duckdb

    import clinipipe.pipeline.cdc as cdc_module
    import clinipipe.targets.duckdb.changes as duckdb_target
    from clinipipe.pipeline.cdc import CdcError

    run_backfill(load_spec(hospital_project))
    warehouse = hospital_project.parent / "warehouse.duckdb"
    real = duckdb_target._apply_table_changes
    state = {"failures_left": 100, "written_then_failed": 0}

    def fail_after_the_first_table(
        cur: duckdb.DuckDBPyConnection, target: object, batch: object, lsn: int
    ) -> None:
        real(cur, target, batch, lsn)  # type: ignore[arg-type]
        if state["failures_left"]:
            # The first table's rows are in, visible inside the batch's transaction ...
            if batch.table.name == "labs":  # type: ignore[attr-defined]
                written = cur.execute("SELECT count(*) FROM raw.labs WHERE unit = 'µmol/rolled'")
                assert written.fetchone() == (49,)
            state["failures_left"] -= 1
            state["written_then_failed"] += 1
            raise duckdb.IOException("could not write: the disk is full")  # ... then it fails

    monkeypatch.setattr(duckdb_target, "_apply_table_changes", fail_after_the_first_table)
    monkeypatch.setattr(cdc_module, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    with duckdb.connect(str(warehouse), read_only=True) as con:
        before = {t: con.execute(f"SELECT * FROM raw.{t} ORDER BY ALL").fetchall()
                  for t in ("labs", "claims")}  # fmt: skip
        checkpoint = con.execute("SELECT count(*) FROM _clinipipe.cdc_batches").fetchone()
    execute(pg_dsn, "UPDATE labs SET unit = 'µmol/rolled' WHERE lab_id < 50", "DELETE FROM claims")
    with pytest.raises(CdcError, match="applying a batch failed repeatedly"):
        run_cdc(load_spec(hospital_project), CdcOptions(until_caught_up=True))
    assert state["written_then_failed"] == 4  # the first try and three retries
    with duckdb.connect(str(warehouse), read_only=True) as con:
        after = {t: con.execute(f"SELECT * FROM raw.{t} ORDER BY ALL").fetchall()
                 for t in ("labs", "claims")}  # fmt: skip
        assert con.execute("SELECT count(*) FROM _clinipipe.cdc_batches").fetchone() == checkpoint
    assert after == before  # rolled back: nothing of the batch, not even the labs written first
    state["failures_left"] = 2  # now it fails twice, then succeeds
    catch_up(hospital_project)
    assert state["failures_left"] == 0 and state["written_then_failed"] == 6
    assert_target_equals_source(pg_dsn, warehouse)


def test_sigterm_finishes_the_batch_and_exits_0(hospital_project: Path, pg_dsn: str) -> None:
    """SIGTERM arrives while a large transaction (every lab and encounter updated) is being
    applied: the batch is finished, its checkpoint saved and confirmed, and the process exits 0
    with the target equal to the source, with no catch-up run."""
    import duckdb

    from clinipipe.source.pgoutput import lsn_to_int
    from tests.helpers import CliProcess

    run_backfill(load_spec(hospital_project))
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    announce_applies = (
        "import sys\n"
        "from clinipipe.targets.duckdb import DuckDBTarget\n"
        "real = DuckDBTarget.apply_cdc_batch\n"
        "def announced(self, batch):\n"
        "    print(f'test: applying {batch.changes} changes', file=sys.stderr, flush=True)\n"
        "    real(self, batch)\n"
        "DuckDBTarget.apply_cdc_batch = announced\n"
    )
    child = CliProcess(["-c", str(hospital_project), "cdc", "start", "--json"], env,
                       prelude=announce_applies)  # fmt: skip
    child.wait_for_line(r"^Streaming from slot")
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM labs) + (SELECT count(*) FROM encounters)")
        rows = int(cur.fetchone()[0])
        cur.execute("UPDATE labs SET unit = unit || '.'")
        cur.execute("UPDATE encounters SET primary_dx = 'Z00.0'")
    con.close()
    child.wait_for_line(rf"^test: applying {rows} changes")  # the whole transaction, in one
    child.proc.send_signal(signal.SIGTERM)  # ... while it is being applied
    code, out, err = child.finish()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["changes"] == rows and summary["transactions"] == 1, summary
    with duckdb.connect(str(hospital_project.parent / "warehouse.duckdb"), read_only=True) as con:
        [(checkpoint,)] = con.execute("SELECT lsn FROM _clinipipe.cdc_checkpoints").fetchall()
    assert checkpoint == lsn_to_int(summary["end_lsn"]) > lsn_to_int(summary["start_lsn"])
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
            "WHERE slot_name = 'clinipipe_slot'"
        )
        assert lsn_to_int(cur.fetchone()[0]) >= checkpoint
    con.close()
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
    from clinipipe.targets.serving_files import ServingReader

    assert summary.publishes == 3 and summary.publish_failures == []
    with ServingReader(hospital_project.parent / "warehouse.duckdb") as reader:
        served = reader.query("patient_dashboard", "SELECT count(*) FROM patient_dashboard")
    assert served == [(300,)]


def test_cdc_refuses_a_dropped_slot(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The slot is dropped after the backfill: `cdc start` says the changes since cannot be
    recovered and what to run (exit 1), instead of retrying a missing slot or starting anew."""
    import clinipipe.pipeline.cdc as cdc_module
    from tests.helpers import cli

    monkeypatch.setattr(cdc_module, "RETRY_DELAYS", (0.01,))  # a break would fail fast
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 0, out + err
    execute(pg_dsn, "SELECT pg_drop_replication_slot('clinipipe_slot')")
    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "start", "--until-caught-up")
    assert code == 1, out + err
    assert "does not exist any more" in err and "backfill --force" in err, err
    assert "Traceback" not in err and "Applied" not in out
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_replication_slots")
        assert cur.fetchone() == (0,)  # nothing recreated a slot behind the user's back
    con.close()


def test_cdc_refuses_an_invalidated_slot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot's WAL was removed (max_slot_wal_keep_size): `cdc start` exits 1 and says so."""
    import clinipipe.pipeline.cdc as cdc_module
    from clinipipe.source.embedded import EmbeddedPostgres
    from clinipipe.synth import run_synth
    from tests.helpers import cli, example_text, write_spec

    monkeypatch.setattr(cdc_module, "RETRY_DELAYS", (0.01,))
    small_wal = {"max_slot_wal_keep_size": "1MB", "min_wal_size": "32MB", "max_wal_size": "32MB"}
    with EmbeddedPostgres(settings=small_wal) as pg:
        dsn = pg.create_database("invalidated")
        run_synth(dsn, patients=20, seed=1)
        monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
        spec = write_spec(tmp_path, example_text())
        for command in (["deploy"], ["backfill"]):
            code, out, err = cli(capsys, "-q", "-c", str(spec), *command)
            assert code == 0, out + err
        con = psycopg2.connect(dsn)
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("UPDATE patients SET city = 'Lost' WHERE patient_id = 1")
            cur.execute("CREATE TABLE filler (g int, pad text)")
            for _ in range(4):  # far more WAL than the slot may keep, in finished segments
                cur.execute("INSERT INTO filler SELECT g, repeat(md5(g::text), 4) "
                            "FROM generate_series(1, 20000) g")  # fmt: skip
                cur.execute("SELECT pg_switch_wal()")
            cur.execute("CHECKPOINT")
            cur.execute("SELECT wal_status FROM pg_replication_slots")
            assert cur.fetchall() == [("lost",)]
        con.close()
        code, out, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
        assert code == 1, out + err
        assert "was invalidated" in err and "backfill --force" in err, err
        assert "Traceback" not in err and "Applied" not in out


def test_cdc_refuses_a_warehouse_deployed_from_other_templates(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A warehouse whose control tables were deployed from other templates (an upgraded
    clinipipe: here template 08's metering table as an older version left it) would fail every
    batch's metering insert; `cdc start` names the templates and says to deploy (exit 1,
    nothing applied, nothing audited), and after `clinipipe deploy` CDC runs."""
    import duckdb

    from tests.helpers import cli

    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 0, out + err
    warehouse = hospital_project.parent / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("ALTER TABLE _clinipipe.metering DROP COLUMN cpu_seconds")  # an older shape
        con.execute("UPDATE _clinipipe.deployed_templates SET template_digest = 'older' "
                    "WHERE template = '08-cost-monitoring.sql'")  # fmt: skip
        audited = con.execute("SELECT count(*) FROM _clinipipe.audit_log").fetchone()
    execute(pg_dsn, "UPDATE patients SET first_name = first_name || 'x' WHERE patient_id = 1")
    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "start", "--until-caught-up")
    assert code == 1, out + err
    assert "08-cost-monitoring.sql" in err and "clinipipe deploy" in err, err
    assert "Traceback" not in err and "Applied" not in out
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM _clinipipe.audit_log").fetchone() == audited
    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy")
    assert code == 0, out + err
    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    assert_target_equals_source(pg_dsn, warehouse)
