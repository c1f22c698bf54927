"""CDC faults (issue 13): a dropped publication stops with the fix named, source restarts are
survived exactly, and a clean stop leaves the serving copies fresh."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from clinipipe.pipeline.backfill import run_backfill
from clinipipe.source.postgres import RetryPolicy, RetryStopped, SourceError, is_transient
from clinipipe.spec import load_spec
from tests.helpers import CliProcess, assert_target_equals_source, cli, execute

# --- the one retry policy -----------------------------------------------------------------------


def test_failures_are_classified_transient_or_permanent() -> None:
    transient = [
        psycopg2.OperationalError("FATAL:  the database system is shutting down"),
        psycopg2.OperationalError("connection to server at 127.0.0.1 failed: Connection refused"),
        psycopg2.OperationalError("server closed the connection unexpectedly"),
        psycopg2.InterfaceError("connection already closed"),
        SourceError("x", sqlstate="57P01"),
        SourceError("x", sqlstate="08006"),
        SourceError('replication slot "s" is active for PID 42', sqlstate="55006"),
    ]
    permanent = [
        SourceError('publication "p" does not exist', sqlstate="42704"),
        SourceError("permission denied for table labs", sqlstate="42501"),
        psycopg2.OperationalError('FATAL:  database "nope" does not exist'),
        psycopg2.OperationalError('FATAL:  password authentication failed for user "u"'),
        SourceError("source table public.labs does not exist"),  # a CatalogError's message
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)


def test_retry_policy_backs_off_says_so_and_gives_up_only_when_told() -> None:
    lines: list[str] = []
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise psycopg2.OperationalError("the database system is starting up")
        return "ok"

    policy = RetryPolicy(delays=(0.01, 0.02, 0.04), on_retry=lines.append)
    assert policy.run(flaky, "reading column types") == "ok"
    assert len(attempts) == 4 and len(lines) == 3
    assert [line.rsplit("retrying in ", 1)[1] for line in lines] == [
        "0.0 s (attempt 2)", "0.0 s (attempt 3)", "0.0 s (attempt 4)",
    ]  # fmt: skip
    assert all(
        line.startswith("reading column types failed (the database system") for line in lines
    )
    assert [policy.wait_for(n) for n in range(5)] == [0.01, 0.02, 0.04, 0.04, 0.04]  # capped

    def missing() -> None:
        attempts.append(0)
        raise SourceError('publication "p" does not exist', transient=False)

    attempts.clear()
    with pytest.raises(SourceError, match="does not exist"):
        policy.run(missing, "streaming")
    assert len(attempts) == 1  # permanent: not retried

    stop = threading.Event()
    stop.set()
    waiting = RetryPolicy(delays=(30.0,), stop=stop)
    with pytest.raises(RetryStopped):  # a stop request ends the wait at once
        waiting.run(flaky_forever, "connecting")

    never = RetryPolicy(delays=(0.0,), give_up_after=0.05)
    with pytest.raises(SourceError, match="giving up") as info:
        never.run(flaky_forever, "connecting")
    assert info.value.transient is False


def flaky_forever() -> None:
    raise psycopg2.OperationalError("Connection refused")


# --- dropped publication --------------------------------------------------------------------------


def test_a_dropped_publication_stops_cdc_with_the_fix_named(
    hospital_project: Path, pg_dsn: str
) -> None:
    """The publication is dropped while `cdc start --until-caught-up` streams and a change
    follows: the process exits 1 at once, naming `clinipipe deploy`, instead of reconnecting
    forever in silence."""
    run_backfill(load_spec(hospital_project))
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    announce = (
        "import sys\n"
        "from clinipipe.source.stream import ReplicationStream\n"
        "real = ReplicationStream.open\n"
        "def announced(self):\n"
        "    real(self)\n"
        "    print('test: streaming', file=sys.stderr, flush=True)\n"
        "ReplicationStream.open = announced\n"
    )
    child = CliProcess(["-c", str(hospital_project), "cdc", "start"], env, prelude=announce)
    child.wait_for_line(r"^test: streaming")
    execute(pg_dsn, "DROP PUBLICATION clinipipe_pub")
    execute(pg_dsn, "UPDATE patients SET city = 'Elsewhere' WHERE patient_id = 1")
    code, _, err = child.finish()
    assert code == 1, err
    assert "publication 'clinipipe_pub' does not exist" in err and "clinipipe deploy" in err, err
    assert "Traceback" not in err and "Elsewhere" not in err
    assert err.count("test: streaming") == 1 and "retrying" not in err  # no reconnect storm


def test_a_missing_publication_is_refused_before_streaming(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dropped while CDC was not running (and nothing written since): `cdc start` says so at
    once instead of streaming nothing (an idle stream never reports the missing publication)."""
    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 0, out + err
    execute(pg_dsn, "DROP PUBLICATION clinipipe_pub")
    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "start", "--until-caught-up")
    assert code == 1, out + err
    assert "clinipipe_pub" in err and "clinipipe deploy" in err and "Traceback" not in err


# --- source restarts ------------------------------------------------------------------------------


def _outage(pg: object, down_seconds: float) -> None:
    """`pg_ctl stop -m fast`, a pause, and a start on the same data directory and port."""
    from clinipipe.source.embedded import EmbeddedPostgres, _pick_unprivileged_user

    assert isinstance(pg, EmbeddedPostgres)
    proc = pg._proc
    assert proc is not None
    proc.send_signal(signal.SIGINT)  # fast shutdown: every connection is terminated
    proc.wait(timeout=60)
    time.sleep(down_seconds)
    run_as = _pick_unprivileged_user() if os.geteuid() == 0 else None
    pg._launch(pg.bin_dir, pg.data_dir, pg.port, run_as)


class Writer(threading.Thread):
    """Writes random transactions until stopped, riding out outages (reconnects)."""

    def __init__(self, dsn: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rng = dsn, random.Random(seed)
        self.stop = threading.Event()
        self.committed = 0
        self.failures = 0

    def run(self) -> None:
        from tests.workload import random_transaction

        con = None
        while not self.stop.is_set():
            try:
                if con is None or con.closed:
                    con = psycopg2.connect(self.dsn, connect_timeout=5)
                with con.cursor() as cur:
                    random_transaction(cur, self.rng)
                con.commit()
                self.committed += 1
                time.sleep(0.01)
            except psycopg2.Error:
                self.failures += 1
                if con is not None:
                    con.close()
                con = None
                time.sleep(0.2)
        if con is not None:
            con.close()


def test_cdc_survives_source_restarts_and_ends_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six fast shutdowns of the source at random moments (some right after a batch) while a
    writer keeps writing: the CDC loop rides out every one (reconnecting, and retrying every
    connection it opens besides the stream) and the warehouse ends equal to the source."""
    from clinipipe.pipeline.cdc import CdcLoop, CdcOptions
    from clinipipe.source.embedded import EmbeddedPostgres
    from clinipipe.synth import run_synth
    from tests.helpers import catch_up, example_text, write_spec

    rng = random.Random(13)
    with EmbeddedPostgres() as pg:
        dsn = pg.create_database("restarts")
        run_synth(dsn, patients=200, seed=3)
        monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
        monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
        spec = write_spec(tmp_path, example_text())
        for command in (["deploy"], ["backfill"]):
            assert cli_run(spec, *command) == 0
        applied = threading.Semaphore(0)
        events: list[str] = []
        loop = CdcLoop(load_spec(spec), CdcOptions(batch_ms=100),
                       on_batch=lambda _: applied.release(), on_event=events.append)  # fmt: skip
        result: list[object] = []

        def run() -> None:
            try:
                result.append(loop.run())
            except BaseException as exc:  # reported below
                result.append(exc)

        def next_batch() -> None:
            deadline = time.monotonic() + 180  # a hang guard only
            while not applied.acquire(timeout=0.1):
                assert cdc.is_alive(), f"CDC ended: {result} {events}"
                assert time.monotonic() < deadline, f"no batch: {events}"

        def recovered(outages_so_far: int) -> None:
            deadline = time.monotonic() + 180  # a hang guard only
            while loop.stats.reconnects < outages_so_far or loop.stats.state != "streaming":
                assert cdc.is_alive(), f"CDC ended: {result} {events}"
                assert time.monotonic() < deadline, f"not streaming again: {events}"
                time.sleep(0.05)

        cdc = threading.Thread(target=run, daemon=True)
        writer = Writer(dsn, seed=7)
        writer.start()
        cdc.start()
        outages = 6
        try:
            for n in range(outages + 1):
                recovered(n)  # streaming again after the previous outage ...
                while applied.acquire(blocking=False):
                    pass
                for _ in range(rng.randint(1, 3)):  # ... and applying batches
                    next_batch()
                if n == outages:
                    break
                if n % 2:
                    time.sleep(rng.uniform(0.0, 1.5))  # some at a random moment, some at once
                _outage(pg, rng.uniform(1.0, 4.0))
        finally:
            writer.stop.set()
            writer.join(timeout=60)
            loop.request_stop()
            cdc.join(timeout=300)
        assert not cdc.is_alive()
        [summary] = result
        assert not isinstance(summary, BaseException), summary
        assert summary.reconnects >= outages, (summary, events)  # type: ignore[attr-defined]
        assert writer.committed > 50 and writer.failures >= 1  # writes went on around outages
        assert any("retrying in" in e for e in events)  # the waits were said
        catch_up(spec)
        assert_target_equals_source(dsn, tmp_path / "warehouse.duckdb")


def cli_run(spec: Path, *args: str) -> int:
    from clinipipe.cli.app import run

    return run(["-q", "-c", str(spec), *args])


# --- clean stop -----------------------------------------------------------------------------------


def test_sigterm_refreshes_and_publishes_before_exit(hospital_project: Path, pg_dsn: str) -> None:
    """SIGTERM after a batch was applied: before exiting 0 the dynamic tables are refreshed
    and the interactive tables published, so dashboards show the last applied batch (their
    target lag of a minute had not come yet)."""
    import duckdb

    from clinipipe.targets.serving_files import ServingReader

    run_backfill(load_spec(hospital_project))
    warehouse = hospital_project.parent / "warehouse.duckdb"
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    child = CliProcess(["-c", str(hospital_project), "cdc", "start", "--json"], env)
    child.wait_for_line(r"^Streaming from slot")
    deadline = time.monotonic() + 120  # a hang guard only
    while True:  # the first build and publish of the serving copies
        try:
            with ServingReader(warehouse) as reader:
                served = reader.query("patient_dashboard", "SELECT count(*) FROM patient_dashboard")
            if served == [(300,)]:
                break
        except Exception:  # not published yet
            pass
        assert time.monotonic() < deadline and child.proc.poll() is None, "never published"
        time.sleep(0.2)
    execute(
        pg_dsn,
        "INSERT INTO patients (patient_id, mrn, first_name, last_name, sex, birth_date, "
        "street_address, city, state, zip, created_at) VALUES (9001, 'M9001', 'A', 'B', 'F', "
        "'1980-01-01', 'x', 'y', 'NY', '10001', now())",
    )
    child.wait_for_line(r"applied 1 changes")
    child.proc.send_signal(signal.SIGTERM)
    code, out, err = child.finish()
    assert code == 0, err
    assert json.loads(out)["changes"] == 1
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM derived.patient_summary").fetchone() == (301,)
    with ServingReader(warehouse) as reader:
        assert reader.query(
            "patient_dashboard", "SELECT count(*) FROM patient_dashboard WHERE patient_id = 9001"
        ) == [(1,)]
