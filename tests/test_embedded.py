"""The embedded PostgreSQL: real servers, no mocks (except where the environment must lack
binaries, which a test machine cannot otherwise provide)."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest

from clinipipe.source import embedded
from clinipipe.source.embedded import (
    PG_BIN_ENV,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_postgres_bin_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0

# Starts a server, reports what it sees, stops it. Run in child processes.
REPORT_SCRIPT = """
import json, psycopg2
from clinipipe.source.embedded import EmbeddedPostgres
with EmbeddedPostgres() as pg:
    conn = psycopg2.connect(pg.dsn)
    with conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        wal_level = cur.fetchone()[0]
    conn.close()
    status = open(f"/proc/{pg.pid}/status").read()
    uid = int(status.split("Uid:")[1].split()[0])
    print(json.dumps({"wal_level": wal_level, "postmaster_uid": uid, "run_as": pg.run_as,
                      "data_dir": str(pg.data_dir), "pid": pg.pid}))
"""

# Starts a server inside `with`, reports it, then waits to be interrupted or killed.
SLEEP_SCRIPT = """
import json, signal, sys, time
from clinipipe.source.embedded import EmbeddedPostgres
# As in a terminal, even when this test runs in a background job whose shell ignores SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)
with EmbeddedPostgres(base_dir=sys.argv[1] or None) as pg:
    print(json.dumps({"data_dir": str(pg.data_dir), "pid": pg.pid}), flush=True)
    time.sleep(120)
"""

# Starts a server without `with` and exits normally: atexit must clean up.
ATEXIT_SCRIPT = """
import json
from clinipipe.source.embedded import EmbeddedPostgres
pg = EmbeddedPostgres().start()
print(json.dumps({"data_dir": str(pg.data_dir), "pid": pg.pid}), flush=True)
"""


def _query(dsn: str, query: str, params: tuple[object, ...] = ()) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
            assert row is not None
            return str(row[0])
    finally:
        conn.close()


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("Uid:")[1].split()[0])


def _process_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (or is only a zombie awaiting an unrelated reaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


def _pgserver_bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.submodule_search_locations, (
        "the pgserver wheel (a dev dependency: pip install -e '.[dev]') is not installed"
    )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


# --------------------------------------------------------------------------------------------
# 1. The session server
# --------------------------------------------------------------------------------------------


def test_session_server_is_logical_and_loopback_only(pg_server: EmbeddedPostgres) -> None:
    dsn = pg_server.dsn
    assert dsn == f"postgresql://clinipipe@127.0.0.1:{pg_server.port}/postgres"
    assert _query(dsn, "SHOW wal_level") == "logical"
    assert pg_server.server_version_num >= 140000
    assert int(_query(dsn, "SHOW server_version_num")) == pg_server.server_version_num
    assert _query(dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert _query(dsn, "SELECT host(inet_server_addr())") == "127.0.0.1"
    assert int(_query(dsn, "SHOW port")) == pg_server.port
    assert int(_query(dsn, "SHOW max_replication_slots")) >= 10
    assert int(_query(dsn, "SHOW max_wal_senders")) >= 10
    for setting in ("fsync", "synchronous_commit", "full_page_writes"):
        assert _query(dsn, f"SHOW {setting}") == "off"
    assert _query(dsn, "SHOW unix_socket_directories") == str(pg_server.data_dir)
    assert _query(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "True"
    # Logical decoding really works (a temporary slot vanishes with the session).
    assert (
        _query(
            dsn,
            "SELECT slot_name FROM pg_create_logical_replication_slot('t_slot', 'pgoutput', true)",
        )
        == "t_slot"
    )


def test_pg_dsn_is_a_fresh_database(pg_server: EmbeddedPostgres, pg_dsn: str) -> None:
    name = _query(pg_dsn, "SELECT current_database()")
    assert name.startswith("t_")
    assert pg_dsn == pg_server.dsn_for(name)
    assert _query(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


def test_create_and_drop_database_quote_names(pg_server: EmbeddedPostgres) -> None:
    name = 'odd "name"; -- x'
    dsn = pg_server.create_database(name)
    assert _query(dsn, "SELECT current_database()") == name
    held = psycopg2.connect(dsn)  # WITH (FORCE) must not be blocked by a live connection
    try:
        pg_server.drop_database(name)
    finally:
        held.close()
    count = _query(pg_server.dsn, "SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
    assert count == "0"


def test_drop_database_takes_its_inactive_logical_replication_slots_along(
    pg_server: EmbeddedPostgres,
) -> None:
    """DROP DATABASE drops the database's inactive logical slots itself (PostgreSQL >= 10):
    the tests that stream from a database of their own rely on it in their clean-up."""
    name = 'slot "db"'
    dsn = pg_server.create_database(name)
    con = psycopg2.connect(dsn)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("SELECT pg_create_logical_replication_slot('t_slot_drop', 'pgoutput')")
    con.close()
    pg_server.drop_database(name)
    assert _query(pg_server.dsn, "SELECT count(*) FROM pg_database WHERE datname = %s",
                  (name,)) == "0"  # fmt: skip
    assert _query(pg_server.dsn, "SELECT count(*) FROM pg_replication_slots "
                  "WHERE slot_name = 't_slot_drop'") == "0"  # fmt: skip


# --------------------------------------------------------------------------------------------
# 2./3. Root and non-root callers
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="the suite is not running as root")
def test_root_caller_runs_postmaster_unprivileged(pg_server: EmbeddedPostgres) -> None:
    uid = _uid_of(pg_server.pid)
    assert uid != 0
    assert pg_server.run_as is not None
    assert uid == pwd.getpwnam(pg_server.run_as).pw_uid
    assert pg_server.data_dir.stat().st_uid == uid


def _interpreter_for(
    user: str, env: dict[str, str], home: str
) -> tuple[str, dict[str, str]] | None:
    """A Python interpreter ``user`` can run with clinipipe and psycopg2 importable, and the
    environment that makes them importable; None when there is none."""
    site = str(Path(psycopg2.__file__).resolve().parents[1])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    seen: set[str] = set()
    for exe in (
        sys.executable,
        getattr(sys, "_base_executable", ""),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ):
        if not exe or exe in seen or not Path(exe).exists():
            continue
        seen.add(exe)
        for extra_path in ("", site):
            probe_env = dict(env)
            if extra_path:
                probe_env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], extra_path])
            try:
                probe = subprocess.run(
                    [exe, "-c", "import psycopg2, clinipipe.source.embedded"],
                    env=probe_env,
                    user=user,
                    cwd=home,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            except OSError:  # e.g. the interpreter lives under /root
                continue
            if probe.returncode == 0:
                return exe, probe_env
    return None


def _run_in_fork_as(user: str, home: str, code: str) -> str:
    """Fallback when no interpreter is readable by ``user`` (e.g. a venv under /root): fork this
    process, drop to ``user`` and run ``code`` with the modules already loaded."""
    entry = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.environ["HOME"] = home
            os.chdir(home)
            out = os.fdopen(write_fd, "w")
            sys.stdout = out
            exec(compile(code, "<report>", "exec"), {"__name__": "__main__"})
            out.flush()
            status = 0
        except BaseException as exc:  # report anything to the parent
            os.write(write_fd, f"ERROR {exc!r}".encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as reader:
        output = reader.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, output
    return output


@pytest.mark.timeout(120)
def test_non_root_caller_starts_server() -> None:
    if not IS_ROOT:
        pytest.skip("the suite runs as non-root, so every other test covers a non-root caller")
    user = "nobody"
    home = tempfile.mkdtemp(prefix="clinipipe-nobody-home-")
    try:
        entry = pwd.getpwnam(user)
        os.chmod(home, 0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        env = _child_env(HOME=home, TMPDIR="/tmp")
        found = _interpreter_for(user, env, home)
        if found is not None:
            exe, env = found
            result = subprocess.run(
                [exe, "-c", REPORT_SCRIPT],
                env=env,
                user=user,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            output = result.stdout
        else:
            output = _run_in_fork_as(user, home, REPORT_SCRIPT)
        report = json.loads(output.strip().splitlines()[-1])
        assert report["wal_level"] == "logical"
        assert report["run_as"] is None  # not root: the caller's own user runs the server
        assert report["postmaster_uid"] == entry.pw_uid
        assert not Path(report["data_dir"]).exists()
        assert _process_gone(report["pid"])
    finally:
        subprocess.run(["rm", "-rf", home], check=False)


# --------------------------------------------------------------------------------------------
# 4. The pgserver wheel
# --------------------------------------------------------------------------------------------


def test_pgserver_wheel_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _pgserver_bin_dir()
    monkeypatch.setenv(PG_BIN_ENV, str(bin_dir))
    assert find_postgres_bin_dir() == bin_dir
    with EmbeddedPostgres() as pg:
        assert pg.bin_dir == bin_dir
        assert pg.server_version_num // 10000 == 16
        assert _query(pg.dsn, "SHOW wal_level") == "logical"
        assert (
            _query(
                pg.dsn,
                "SELECT slot_name FROM pg_create_logical_replication_slot('w', 'pgoutput', true)",
            )
            == "w"
        )
        if IS_ROOT:
            assert _uid_of(pg.pid) != 0


# --------------------------------------------------------------------------------------------
# 5. Cleanup
# --------------------------------------------------------------------------------------------


def test_stop_removes_everything_and_is_idempotent() -> None:
    pg = EmbeddedPostgres()
    pg.start()
    data_dir, port, pid = pg.data_dir, pg.port, pg.pid
    assert pg.running and data_dir.is_dir() and _accepts(port)
    assert pg.start() is pg  # already running: a no-op
    assert pg.pid == pid
    pg.stop()
    assert not pg.running
    assert not data_dir.exists()
    assert not _accepts(port)
    assert _process_gone(pid)
    pg.stop()  # idempotent


def _start_child(script: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own terminal-like process group, for killpg below
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        pytest.fail(f"child failed to start a server: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


@pytest.mark.timeout(90)
def test_ctrl_c_in_with_block_cleans_up() -> None:
    proc, info = _start_child(SLEEP_SCRIPT, "")
    data_dir, pid = Path(str(info["data_dir"])), int(str(info["pid"]))
    assert data_dir.is_dir() and not _process_gone(pid)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the foreground group
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in stderr
    assert _process_gone(pid)
    assert not data_dir.exists()


@pytest.mark.timeout(90)
def test_interpreter_exit_cleans_up_via_atexit() -> None:
    proc, info = _start_child(ATEXIT_SCRIPT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert _process_gone(int(str(info["pid"])))
    assert not Path(str(info["data_dir"])).exists()


@pytest.mark.timeout(90)
def test_next_start_reaps_a_killed_owners_server() -> None:
    base = Path(tempfile.mkdtemp(prefix="clinipipe-reap-"))
    base.chmod(0o755)  # the unprivileged server user must traverse it
    try:
        proc, info = _start_child(SLEEP_SCRIPT, str(base))
        data_dir, pid = Path(str(info["data_dir"])), int(str(info["pid"]))
        proc.kill()  # SIGKILL: no cleanup runs; the postmaster survives in its own session
        proc.communicate(timeout=30)
        assert data_dir.is_dir() and not _process_gone(pid)
        with EmbeddedPostgres(base_dir=base) as pg:
            assert pg.data_dir.parent == base
            deadline = time.monotonic() + 120  # waits for the event; a hang guard, not a limit
            while not _process_gone(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _process_gone(pid)
            assert not data_dir.exists()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


# --------------------------------------------------------------------------------------------
# 6. Missing binaries
# --------------------------------------------------------------------------------------------


def test_missing_bin_dir_from_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PG_BIN_ENV, "/nonexistent")
    with pytest.raises(EmbeddedPostgresError) as raised:
        find_postgres_bin_dir()
    message = str(raised.value)
    assert "/nonexistent" in message and PG_BIN_ENV in message
    assert "clinipipe[embedded]" in message
    with pytest.raises(EmbeddedPostgresError, match="/nonexistent"), EmbeddedPostgres():
        pass


def test_no_binaries_anywhere_suggests_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has PostgreSQL installed, so the search itself is emptied for this test.
    monkeypatch.delenv(PG_BIN_ENV, raising=False)
    monkeypatch.setattr(embedded, "_candidate_bin_dirs", lambda: iter(()))
    with pytest.raises(EmbeddedPostgresError) as raised:
        find_postgres_bin_dir()
    message = str(raised.value)
    assert "pip install 'clinipipe[embedded]'" in message
    assert "PostgreSQL server packages" in message
