"""`clinipipe verify` on a live system: `cdc start` runs in a child process (it owns the DuckDB
file: verify computes the warehouse side on its thread, through the control socket) while a
writer thread inserts, updates and deletes on the source. Every run is exit 0 (the keys the
writer touched between the snapshot and the warehouse's position are excluded, not reported),
a difference planted in the warehouse is still found and named while the writer and CDC run,
and a warehouse that cannot reach the snapshot in time gives ``cdc_behind`` (exit 1)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import psycopg2
import pytest

from clinipipe.source.embedded import EmbeddedPostgres
from tests.helpers import CliProcess, cli, execute, write_spec

SPEC = """\
version: 1
name: verify_live
source:
  dsn: ${CLINIPIPE_SOURCE_DSN}
  publication: live_pub
  slot: live_slot
  tables:
    - name: accounts
      primary_key: [id]
    - name: notes
      primary_key: [ward, note_no]
target:
  type: duckdb
  path: warehouse.duckdb
warehouses:
  initialization: {name: INIT_WH, size: XSMALL, auto_suspend: 60}
  incremental: {name: CDC_WH, size: XSMALL, auto_suspend: 60}
  interactive: {name: SERVE_WH, size: XSMALL, auto_suspend: 60}
"""

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(12,2),
                       seen timestamptz, ratio float8, tags text[]);
INSERT INTO accounts SELECT i, 'owner ' || i, i * 1.25,
       timestamptz '2024-01-01' + i * interval '1 h', i / 7.0, ARRAY['a' || i, NULL]
FROM generate_series(1, 6000) i;
CREATE TABLE notes (ward text, note_no int, body text, PRIMARY KEY (ward, note_no));
INSERT INTO notes SELECT 'ward ' || (i % 9), i, 'body ' || i FROM generate_series(1, 3000) i;
"""

PLANTED = 7  # the writer never touches ids below 100 nor note_no below 100
RUNS = 10


@contextlib.contextmanager
def _project(
    pg_server: EmbeddedPostgres, tmp_path: Path, capsys: pytest.CaptureFixture[str], spec_text: str
) -> Iterator[tuple[str, Path, Path]]:
    name = f"vlive_{tmp_path.name[-8:].lower().replace('-', '_')}"
    dsn = pg_server.create_database(name)
    try:
        execute(dsn, SCHEMA)
        os.environ["CLINIPIPE_SOURCE_DSN"] = dsn
        spec = write_spec(tmp_path, spec_text)
        for command in (["deploy"], ["backfill"]):
            code, out, err = cli(capsys, "-q", "-c", str(spec), *command)
            assert code == 0, out + err
        yield dsn, spec, tmp_path / "warehouse.duckdb"
    finally:
        pg_server.drop_database(name)  # its inactive slots go with it


@pytest.fixture
def project(
    pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[tuple[str, Path, Path]]:  # fmt: skip
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "")
    with _project(pg_server, tmp_path, capsys, SPEC) as made:
        yield made


class Writer(threading.Thread):
    """Inserts, updates and deletes on both tables, a transaction every few milliseconds
    (some touching several rows), never on the planted keys; counts its transactions."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(19)
        next_id = 100_000
        try:
            con = psycopg2.connect(self.dsn)
            with con.cursor() as cur:
                while not self.stop.is_set():
                    for _ in range(rng.randint(1, 4)):
                        op, i = rng.random(), rng.randint(100, 6000)
                        if op < 0.5:
                            cur.execute(
                                "UPDATE accounts SET balance = balance + 1, ratio = ratio * -1.5,"
                                " seen = now(), tags = tags || 'x'::text WHERE id = %s",
                                (i,),
                            )
                        elif op < 0.65:
                            cur.execute("DELETE FROM accounts WHERE id = %s", (i,))
                        elif op < 0.8:
                            next_id += 1
                            cur.execute(
                                "INSERT INTO accounts VALUES (%s, 'new', 1, now(), 0.5, '{}')",
                                (next_id,),
                            )
                        elif op < 0.95:
                            cur.execute(
                                "UPDATE notes SET body = body || '.' WHERE note_no = %s", (i // 2,)
                            )
                        else:  # a key update: the old and the new key both change
                            cur.execute(
                                "UPDATE notes SET note_no = note_no + 100000 "
                                "WHERE note_no = %s AND note_no >= 100",
                                (i // 2,),
                            )
                    con.commit()
                    self.transactions += 1
                    time.sleep(0.004)
            con.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _start_cdc(spec: Path, dsn: str, batch_ms: int) -> CliProcess:
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": dsn}
    child = CliProcess(["-c", str(spec), "cdc", "start", "--batch-ms", str(batch_ms)], env)
    child.wait_for_line(r"^Control socket ")
    child.wait_for_line(r"^Streaming from slot")
    return child


def _stop_cdc(child: CliProcess) -> None:
    child.proc.send_signal(signal.SIGTERM)
    code, _, err = child.finish()
    assert code == 0, err


def _verify(capsys: pytest.CaptureFixture[str], spec: Path, *args: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    code, out, err = cli(capsys, "-c", str(spec), "verify", "--json", *args)
    assert "Traceback" not in err, err
    return code, json.loads(out), err


def _differences(report: dict) -> dict[str, list[tuple[tuple, str, list[str]]]]:  # type: ignore[type-arg]
    return {
        t["table"]: [(tuple(d["key"].values()), d["kind"], d["columns"]) for d in t["differences"]]
        for t in report["tables"]
        if t["differences"]
    }


def test_no_false_difference_under_writes_then_a_planted_one_is_found(
    project: tuple[str, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, spec, warehouse = project
    writer = Writer(dsn)
    child = _start_cdc(spec, dsn, 50)
    writer.start()
    try:
        excluded = 0
        for run in range(RUNS):
            code, report, err = _verify(capsys, spec)
            assert "`cdc start` owns the warehouse: asked it" in err
            assert report["cdc_running"] is True
            assert code == 0, (run, _differences(report))
            assert report["outcome"] == "equal"
            counts = report["counts"]
            assert counts["tables"] == 2 and counts["rows"] >= 8000
            excluded += counts["keys_not_checked"]
        # The writer really raced the runs: keys changed between S and W were excluded.
        assert writer.transactions > 100
        assert excluded > 0

        # Plant a difference the source's stream cannot see: in the warehouse, with CDC
        # stopped (it owns the file). The writer stops first: with its backlog, the restarted
        # CDC could catch up past the next write before verify asks (seen on a loaded machine).
        writer.stop.set()
        writer.join(timeout=30)
        _stop_cdc(child)
        with duckdb.connect(str(warehouse)) as con:
            con.execute(f"UPDATE raw.accounts SET owner = 'planted' WHERE id = {PLANTED}")
            [(runs,)] = con.execute("SELECT count(*) FROM _clinipipe.verify_runs").fetchall()
        assert runs == RUNS
        # A slow batch (10 s, long beside the time verify takes to ask, also on a loaded
        # machine): right after a write, the warehouse cannot reach the snapshot.
        child = _start_cdc(spec, dsn, 10000)
        execute(dsn, "UPDATE accounts SET balance = balance + 1 WHERE id = 100")
        code, report, err = _verify(capsys, spec, "--wait", "0")
        assert code == 1 and report["outcome"] == "cdc_behind", report
        assert report["message"].startswith("CDC is behind")
        assert report["counts"]["differences"] == 0
        # Given time, it catches up past the snapshot; only the planted difference is named.
        code, report, err = _verify(capsys, spec)
        assert code == 3, report
        assert _differences(report) == {"accounts": [((str(PLANTED),), "changed", ["owner"])]}
        assert report["cdc_running"] is True and "planted" not in json.dumps(report)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
        if child.proc.poll() is None:
            _stop_cdc(child)
    assert writer.error is None, writer.error
    assert re.search(r"Control socket", "".join(child.seen))


# --- verify.every: a scheduled, sampled verify inside `cdc start`, alerting on a difference ------

SCHEDULED = (
    SPEC
    + """\
verify:
  every: 1 second
  sample: 100
  alerts: {webhook_url_env: VERIFY_HOOK}
"""
)


@dataclasses.dataclass
class Hook:
    url: str = ""
    bodies: list[bytes] = dataclasses.field(default_factory=list)
    arrived: threading.Event = dataclasses.field(default_factory=threading.Event)


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A loopback webhook that records every body and answers 200."""
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            state.arrived.set()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0K3N"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_verify_every_runs_inside_cdc_start_and_alerts_on_a_difference(
    pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], hook: Hook,
) -> None:  # fmt: skip
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "")
    with _project(pg_server, tmp_path, capsys, SCHEDULED) as (dsn, spec, warehouse):
        # Before CDC starts: a difference CDC cannot see (the warehouse edited behind its back).
        with duckdb.connect(str(warehouse)) as con:
            con.execute(f"UPDATE raw.accounts SET owner = 'planted' WHERE id = {PLANTED}")
        env = {**os.environ, "CLINIPIPE_SOURCE_DSN": dsn, "VERIFY_HOOK": hook.url}
        child = CliProcess(["-c", str(spec), "cdc", "start", "--batch-ms", "50"], env)
        try:
            child.wait_for_line(r"^Verify of 100% of the key ranges every 1 second; alerts to "
                                r"http://127\.0\.0\.1:\d+$")  # fmt: skip
            execute(dsn, "UPDATE accounts SET balance = 0 WHERE id BETWEEN 200 AND 260")
            child.wait_for_line(r"^verify \w+: 1 difference\(s\) between the source and the "
                                r"warehouse")  # fmt: skip
            assert hook.arrived.wait(30), "no verify alert arrived"
        finally:
            child.proc.send_signal(signal.SIGTERM)
            code, _, err = child.finish()
        assert code == 0, err
        assert "T0K3N" not in err
        body = json.loads(hook.bodies[0])
        assert body["event"] == "verify_differences" and body["differences"] == 1
        assert body["tables"] == [
            {"table": "accounts", "differences": 1, "missing": 0, "extra": 0, "changed": 1,
             "columns": ["owner"]}
        ]  # fmt: skip
        assert "planted" not in hook.bodies[0].decode()
        with duckdb.connect(str(warehouse), read_only=True) as con:
            runs = con.execute(
                "SELECT outcome, sample_pct, differences FROM _clinipipe.verify_runs "
                "ORDER BY started_at"
            ).fetchall()
        assert runs and all(r == ("differences", 100.0, 1) for r in runs), runs
