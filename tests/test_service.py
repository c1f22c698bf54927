"""`cdc start` as a service: while it runs it owns the DuckDB file, and every other command
reaches the warehouse through its control socket; metrics in the Prometheus text format."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinipipe import targets
from clinipipe.pipeline import control
from clinipipe.pipeline.control import ControlError, ControlRequests, ControlServer
from clinipipe.pipeline.metrics import MetricsServer
from clinipipe.pipeline.operations import HANDLERS, pipeline_status, refresh_now
from clinipipe.spec import LoadedSpec, load_spec
from tests.helpers import CliProcess, cli, execute

# --- the whole service, in a child process ---------------------------------------------------


def _backfilled(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "-q", "-c", str(spec), "backfill")
    assert code == 0, out + err


def _run(capsys: pytest.CaptureFixture[str], spec: Path, *args: str) -> tuple[int, Any, str]:
    """`clinipipe -c SPEC ARGS --json` in this process: (exit code, parsed JSON, stderr)."""
    code, out, err = cli(capsys, "-c", str(spec), *args, "--json")
    assert "Traceback" not in err and "internal error" not in err, err
    try:
        return code, json.loads(out), err
    except ValueError:
        raise AssertionError(f"{args}: exit {code}, no JSON:\n{out}{err}") from None


COMMANDS: dict[str, tuple[str, ...]] = {  # in this order: status after refresh and publish
    "refresh": ("refresh",),
    "publish": ("publish",),
    "status": ("status",),
    "cdc status": ("cdc", "status"),
    "scan": ("scan", "--tables", "providers,encounters", "--sample", "200"),
    "cost report": ("cost", "report", "--days", "1"),
    "backup create": ("backup", "create", "--tables", "providers"),
    "audit log": ("audit", "log"),
}


def _keys(data: Any) -> Any:
    """The keys of a JSON document: of the object, or of the objects of the list, and of the
    objects in their lists (values may be null in one run and an object in another; a list of
    plain values may be empty in one run, e.g. the partitions an incremental publish rewrote)."""
    if isinstance(data, list):
        return sorted({repr(_keys(item)) for item in data if isinstance(item, (dict, list))})
    if isinstance(data, dict):
        return {k: _keys(v) if isinstance(v, list) else None for k, v in data.items()}
    return None


def _start(spec: Path, env: dict[str, str], *extra: str) -> tuple[CliProcess, Path]:
    child = CliProcess(["-c", str(spec), "cdc", "start", "--batch-ms", "50", *extra], env)
    line = child.wait_for_line(r"^Control socket ")
    path = Path(re.match(r"^Control socket (.+?): ", line).group(1))  # type: ignore[union-attr]
    child.wait_for_line(r"^Streaming from slot")
    return child, path


def test_every_command_works_while_cdc_start_runs(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cdc start` runs in a child process (it holds the DuckDB file: no other process may
    open it); `cdc status`, `status`, `refresh`, `publish`, `scan`, `cost report`, `backup
    create` and `audit log` succeed meanwhile with
    the exit codes and JSON keys they have when CDC does not run, and the metrics endpoint
    answers. SIGTERM: exit 0, socket gone."""
    _backfilled(hospital_project, capsys)
    alone = {name: _run(capsys, hospital_project, *args) for name, args in COMMANDS.items()}
    assert alone["cdc status"][1]["running"] is None
    assert alone["status"][1]["cdc_running"] is False
    assert alone["refresh"][0] == 0 and alone["publish"][0] == 0

    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    child, sock = _start(hospital_project, env, "--metrics-port", "0")
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.is_socket()
        metrics_url = next(re.search(r"Metrics at (\S+)", line).group(1)  # type: ignore[union-attr]
                           for line in child.seen if "Metrics at" in line)  # fmt: skip
        execute(pg_dsn, "UPDATE labs SET unit = unit || '.' WHERE lab_id <= 25")
        child.wait_for_line(r"^applied 25 changes ")
        served = {name: _run(capsys, hospital_project, *args) for name, args in COMMANDS.items()}
        for name, (code, data, err) in served.items():
            assert "`cdc start` owns the warehouse: asked it" in err, (name, err)
            assert code == alone[name][0], (name, code, err)
            assert _keys(data) == _keys(alone[name][1]) or name == "cdc status", name
        status = served["cdc status"][1]
        assert set(status) == set(alone["cdc status"][1])
        assert status["running"]["pid"] == child.proc.pid
        assert status["running"]["stats"]["changes"] >= 25
        assert status["last_batch_changes"] == 25  # read from the warehouse, via the socket
        assert served["status"][1]["cdc_running"] is True
        assert [r["name"] for r in served["refresh"][1]] == [r["name"] for r in alone["refresh"][1]]
        assert all(r["state"] == "SUCCEEDED" for r in served["refresh"][1])
        generations = {p["name"]: p["generation"] for p in alone["publish"][1]}
        assert all(p["generation"] > generations[p["name"]] for p in served["publish"][1])
        with urllib.request.urlopen(metrics_url, timeout=30) as response:
            text = response.read().decode()
        for name in (
            "clinipipe_cdc_lag_bytes",
            "clinipipe_cdc_changes_total",
            "clinipipe_cdc_changes_per_second",
            "clinipipe_cdc_batch_latency_seconds",
            "clinipipe_cdc_paused_tables",
            "clinipipe_dynamic_table_last_refresh_timestamp_seconds",
            "clinipipe_interactive_table_last_publish_timestamp_seconds",
            "clinipipe_phi_findings_total",
        ):
            assert f"\n# TYPE {name} " in text, name
        changes = re.search(r"^clinipipe_cdc_changes_total (\S+)$", text, re.M)
        assert changes is not None and float(changes.group(1)) >= 25
        batches = re.search(r"^clinipipe_cdc_batch_latency_seconds_count (\S+)$", text, re.M)
        assert batches is not None and float(batches.group(1)) >= 1
    finally:
        child.proc.send_signal(signal.SIGTERM)
        code, _, err = child.finish()
    assert code == 0, err
    assert not sock.exists()


def test_a_stale_socket_after_kill_9_does_not_break_commands(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 leaves the socket file behind: commands notice nobody listens and open the
    warehouse themselves; the next `cdc start` replaces the file and answers again."""
    _backfilled(hospital_project, capsys)
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    child, sock = _start(hospital_project, env)
    child.proc.send_signal(signal.SIGKILL)
    code, _, _ = child.finish()
    assert code == -signal.SIGKILL and sock.is_socket()  # left behind
    code, data, err = _run(capsys, hospital_project, "cdc", "status")
    assert code == 0 and data["running"] is None, err
    code, data, err = _run(capsys, hospital_project, "refresh")
    assert code == 0 and "asked it" not in err
    child, sock = _start(hospital_project, env)
    try:
        code, data, err = _run(capsys, hospital_project, "cdc", "status")
        assert code == 0 and data["running"]["pid"] == child.proc.pid, err
        second = CliProcess(["-c", str(hospital_project), "cdc", "start"], env)
        code, _, err = second.finish()
        assert code == 1 and "already running" in err and f"pid {child.proc.pid}" in err
    finally:
        child.proc.send_signal(signal.SIGTERM)
        code, _, err = child.finish()
    assert code == 0, err


# --- the socket and the job, in this process --------------------------------------------------


class _Loop:
    """Stands in for the CDC loop: a thread that owns the open target and runs the
    `ControlRequests` job every few milliseconds (as the loop does between batches)."""

    def __init__(self, loaded: LoadedSpec, server: ControlServer) -> None:
        self.loaded = loaded
        self.job = ControlRequests(server, HANDLERS)
        self.threads: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with targets.open_target(self.loaded) as target:
            context = type("Context", (), {"loaded": self.loaded, "target": target,
                                           "stats": None})()  # fmt: skip
            while not self.stop.wait(0.01):
                self.job.run(context)  # type: ignore[arg-type]
                self.threads.add(threading.get_ident())


@pytest.fixture
def served(hospital_project: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[_Loop]:
    _backfilled(hospital_project, capsys)
    loaded = load_spec(hospital_project)
    with control.serving(loaded) as server:
        loop = _Loop(loaded, server)
        loop.thread.start()
        try:
            yield loop
        finally:
            loop.stop.set()
            loop.thread.join(timeout=60)


def test_requests_run_on_the_owner_thread_and_answer_like_local_calls(
    served: _Loop, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a server up, the commands never open the warehouse themselves (open_target would
    fail), the requests ran on the loop's thread, and a wrong request keeps its exit code."""
    loaded = served.loaded

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("opened the warehouse although cdc start owns it")

    monkeypatch.setattr(targets, "open_target", forbidden)
    report = pipeline_status(loaded)
    assert report.cdc_running and [s.name for s in report.dynamic_tables] == [
        d.name for d in loaded.spec.dynamic_tables
    ]
    results = refresh_now(loaded)
    assert [r.state for r in results] == ["SUCCEEDED"] * len(loaded.spec.dynamic_tables)
    assert served.job.served == 2 and served.thread.ident in served.threads
    code, out, err = cli(capsys, "-c", str(loaded.path), "refresh", "no_such_table")
    assert code == 2 and "no dynamic table named 'no_such_table'" in err
    code, out, err = cli(capsys, "-c", str(loaded.path), "status")
    assert code in (0, 3) and "patient_summary" in out and "asked it" in err
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", "test-only-hmac-key-0123456789abcdef")
    code, out, err = cli(capsys, "-c", str(loaded.path), "redact", "--policy", "safe_harbor",
                         "--tables", "providers,labs", "--json")  # fmt: skip
    result = json.loads(out)
    assert code == 0 and result["clean"] and result["rebuilt"] == ["providers", "labs"], err
    assert result["final_scan"]["tables"] and served.job.served == 5


def test_the_socket_is_the_owners_only_and_one_server_per_warehouse(served: _Loop) -> None:
    path = control.socket_path(served.loaded)
    assert path.name == "warehouse.duckdb.cdc.sock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ControlError, match="already running"):
        ControlServer(served.loaded).start()
    info = control.hello(served.loaded)
    assert info is not None and info.pid == os.getpid()


def test_queued_requests_are_answered_when_the_server_stops(
    hospital_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody runs the job: the request waits (the client hears it is still queued); closing
    the server answers it with an error instead of leaving it hanging."""
    monkeypatch.setattr(control, "WAITING_NOTICE_SECONDS", 0.2)
    loaded = load_spec(hospital_project)
    server = ControlServer(loaded)
    server.start()
    failures: list[BaseException] = []
    notes: list[str] = []
    waiting = threading.Event()

    def note(message: str, warning: bool) -> None:
        notes.append(message)
        if "still queued" in message:
            waiting.set()

    def ask() -> None:
        try:
            refresh_now(loaded, notify=note)
        except Exception as exc:
            failures.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    assert waiting.wait(timeout=60), notes
    server.close()
    asking.join(timeout=30)
    assert len(failures) == 1 and "stopped before running this request" in str(failures[0])
    assert not control.socket_path(loaded).exists()


def test_a_socket_nobody_listens_on_is_stale(hospital_project: Path) -> None:
    loaded = load_spec(hospital_project)
    path = control.socket_path(loaded)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, as after kill -9
    assert path.is_socket() and control.connect(loaded) is None
    with control.serving(loaded) as server:  # replaced
        assert server.path == path and control.hello(loaded) is not None
    assert not path.exists()


def test_a_long_warehouse_path_gets_a_private_socket_folder(
    tmp_path: Path, hospital_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("CLINIPIPE_DUCKDB_PATH", str(deep / "warehouse.duckdb"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = control.socket_path(load_spec(hospital_project))
    assert path.parent == tmp_path / "clinipipe" and len(os.fsencode(path)) <= 107
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_metrics_endpoint_serves_the_latest_stats() -> None:
    from clinipipe.pipeline.cdc.model import CdcStats

    metrics = MetricsServer(0)
    metrics.start()
    try:
        assert metrics.url.startswith("http://127.0.0.1:")
        stats = CdcStats(slot="s", state="streaming", changes=40, batches=2, lag_bytes=1234,
                         last_batch_latency_seconds=0.3, paused_tables={"labs": "why"})  # fmt: skip
        metrics.job.run(type("Context", (), {"stats": stats})())
        metrics.job.run(type("Context", (), {"stats": stats})())  # same batch: observed once
        with urllib.request.urlopen(metrics.url, timeout=30) as response:
            text = response.read().decode()
    finally:
        metrics.close()
    assert "clinipipe_cdc_up 1.0" in text
    assert "clinipipe_cdc_changes_total 40.0" in text
    assert "clinipipe_cdc_lag_bytes 1234.0" in text
    assert 'clinipipe_cdc_table_paused{table="labs"} 1.0' in text
    assert "clinipipe_cdc_batch_latency_seconds_count 1.0" in text
    assert 'clinipipe_cdc_batch_latency_seconds_bucket{le="0.5"} 1.0' in text


def test_status_outputs_read_well_and_reset_says_one_next_step(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A fresh project's `cdc status` points to `backfill` (not reset + --force); latency is
    printed as text, not a Python dict; `status` fits 80 columns without breaking words;
    `cdc reset` names the same next step before and after."""
    from tests.helpers import catch_up

    monkeypatch.setenv("COLUMNS", "80")
    spec = str(hospital_project)
    code, out, err = cli(capsys, "-c", spec, "cdc", "status")
    assert code == 1 and "Run `clinipipe backfill`" in err and "--force" not in err, err
    _backfilled(hospital_project, capsys)
    execute(pg_dsn, "UPDATE labs SET unit = unit || '.' WHERE lab_id <= 5")
    catch_up(hospital_project)
    code, out, err = cli(capsys, "-c", spec, "cdc", "status")
    assert code == 0 and "not running" in out and "5 changes" in out, out + err
    assert re.search(r"latency +p50 [\d.,]+ ms · p95 [\d.,]+ ms · p99 [\d.,]+ ms", out), out
    assert "{" not in out
    for args in (("refresh",), ("publish",), ("status",)):
        code, out, err = cli(capsys, "-c", spec, *args)
        assert code == 0, out + err
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for word in ("patient_summary", "INCREMENTAL", "CLINIPIPE_CDC_WH", "CLINIPIPE_INIT_WH",
                 "daily_census", "patient_dashboard"):  # fmt: skip
        assert word in out, (word, out)
    code, _, before = cli(capsys, "-c", spec, "cdc", "reset")
    code, after, _ = cli(capsys, "-c", spec, "cdc", "reset", "--yes")
    assert code == 0
    for text in (before, after):
        assert "`clinipipe backfill`" in text and "--force" not in text, text
