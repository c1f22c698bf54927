"""A throwaway local PostgreSQL for tests and the demo.

:class:`EmbeddedPostgres` runs ``initdb`` into a fresh temporary directory and starts a private
PostgreSQL (>= 14) on a free loopback port, configured for logical replication
(``wal_level=logical``) and for speed (``fsync``, ``synchronous_commit`` and
``full_page_writes`` off: the data is disposable, never use this for data you want to keep).

Guarantees:

* The server listens on ``127.0.0.1`` only; its Unix socket lives inside its own data directory.
  Authentication is ``trust`` for loopback TCP and that private socket, and nothing else.
* PostgreSQL refuses to run as root. When the caller is root, ``initdb`` and the server run as
  an existing unprivileged user (``postgres`` if it exists, else ``nobody``); the data directory is
  chowned to that user.
* Starting never hangs: it times out with an error that includes the tail of the server log.
* The server is always stopped (fast shutdown, then SIGKILL after a timeout) and its data
  directory removed: by :meth:`EmbeddedPostgres.stop` (idempotent), on leaving a ``with`` block
  (including on ``KeyboardInterrupt``), and at interpreter exit (``atexit``). The postmaster runs in
  its own session, so a terminal Ctrl-C reaches Python first and cleanup runs in order.
* Only the process that started a server stops it: a forked child calling :meth:`stop` (or
  exiting through ``atexit``) leaves its parent's server alone.
* Leftovers of a process that died without cleanup (SIGKILL, power loss) are reaped by the next
  :meth:`EmbeddedPostgres.start` in the same temporary directory: each live server's directory
  holds a lock on an owner file, and a directory whose lock is free has no owner left.

Binaries are found by :func:`find_postgres_bin_dir`. Messages never contain credentials (there
are none: trust authentication on loopback).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import grp
import importlib.util
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

__all__ = [
    "MIN_SERVER_MAJOR",
    "PG_BIN_ENV",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "find_postgres_bin_dir",
]

log = logging.getLogger(__name__)

#: Environment variable naming a PostgreSQL ``bin`` directory to use (checked first).
PG_BIN_ENV = "CLINIPIPE_PG_BIN"
#: Oldest PostgreSQL major version accepted (TID range scans, pgoutput streaming features).
MIN_SERVER_MAJOR = 14
#: Superuser created by ``initdb``.
SUPERUSER = "clinipipe"
#: Users tried, in order, to run the server when the caller is root.
UNPRIVILEGED_USERS = ("postgres", "nobody")

_LOOPBACK = "127.0.0.1"
_DIR_PREFIX = "clinipipe-pg-"
_OWNER_FILE = "clinipipe-owner.json"
_LOG_FILE = "clinipipe-server.log"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin.
_PORT_ATTEMPTS = 5

_INSTALL_HINT = (
    "No PostgreSQL server binaries (version >= {min}) were found. Install the bundled "
    "PostgreSQL 16 wheel with: pip install 'clinipipe[embedded]'  (the 'pgserver' package), "
    "or install your distribution's PostgreSQL server packages (e.g. apt-get install "
    "postgresql), or set {env} to a PostgreSQL bin directory."
)


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be found, started or used."""


# --------------------------------------------------------------------------------------------
# Finding binaries
# --------------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _require(value: _T | None, what: str) -> _T:
    if value is None:
        raise EmbeddedPostgresError(f"EmbeddedPostgres.{what} is not known before start().")
    return value


_version_cache: dict[Path, tuple[int, int] | None] = {}


def _postgres_version(bin_dir: Path) -> tuple[int, int] | None:
    """(major, minor) of ``bin_dir/postgres``, or None when it cannot be run or parsed."""
    key = bin_dir.resolve()
    if key in _version_cache:
        return _version_cache[key]
    version: tuple[int, int] | None = None
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0:
        match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out.stdout)
        if match:
            version = (int(match.group(1)), int(match.group(2) or 0))
    _version_cache[key] = version
    return version


def _has_server_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("postgres", "initdb"))


def _usable(bin_dir: Path) -> bool:
    """True when ``bin_dir`` has ``postgres`` and ``initdb`` of a supported version."""
    if not _has_server_binaries(bin_dir):
        return False
    version = _postgres_version(bin_dir)
    return version is not None and version[0] >= MIN_SERVER_MAJOR


def _version_sort_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def _pgserver_bin_dir() -> Path | None:
    """``<pgserver package>/pginstall/bin`` without importing pgserver (it has import-time side
    effects); None when the optional ``pgserver`` wheel is not installed."""
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if candidate.is_dir():
            return candidate
    return None


def _candidate_bin_dirs() -> Iterator[Path]:
    """Candidate bin directories after the environment variable, in search order."""
    for name in ("pg_ctl", "postgres"):
        found = shutil.which(name)
        if found:
            # Debian-style symlinks in /usr/local/bin point into the real bin directory.
            yield Path(found).resolve().parent
            yield Path(found).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                yield Path(out.stdout.strip())
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        for found in sorted(glob.glob(pattern), key=_version_sort_key, reverse=True):
            yield Path(found)
    pgserver = _pgserver_bin_dir()
    if pgserver is not None:
        yield pgserver


def find_postgres_bin_dir() -> Path:
    """Return a directory holding ``postgres`` and ``initdb`` of PostgreSQL >= 14.

    Search order: the ``CLINIPIPE_PG_BIN`` environment variable (used as-is; an error if it has
    no usable ``postgres``), ``pg_ctl``/``postgres`` on ``PATH``, ``pg_config --bindir``,
    ``/usr/lib/postgresql/*/bin`` and ``/usr/pgsql-*/bin`` (highest version first), and finally
    the optional ``pgserver`` wheel (PostgreSQL 16). Older versions are skipped.

    Raises:
        EmbeddedPostgresError: nothing usable was found; the message says how to install it.
    """
    override = os.environ.get(PG_BIN_ENV, "").strip()
    if override:
        bin_dir = Path(override).expanduser()
        if not (bin_dir / "postgres").is_file():
            raise EmbeddedPostgresError(
                f"{PG_BIN_ENV}={override} does not contain a 'postgres' executable. Point it at "
                "a PostgreSQL bin directory (e.g. /usr/lib/postgresql/16/bin), or unset it and "
                "pip install 'clinipipe[embedded]' to use the bundled PostgreSQL 16."
            )
        if not _has_server_binaries(bin_dir):
            raise EmbeddedPostgresError(
                f"{PG_BIN_ENV}={override} lacks an executable 'postgres' or 'initdb'."
            )
        version = _postgres_version(bin_dir)
        if version is None:
            raise EmbeddedPostgresError(f"{bin_dir / 'postgres'} --version failed.")
        if version[0] < MIN_SERVER_MAJOR:
            raise EmbeddedPostgresError(
                f"{PG_BIN_ENV}={override} is PostgreSQL {version[0]}; clinipipe needs "
                f">= {MIN_SERVER_MAJOR}."
            )
        return bin_dir
    seen: set[Path] = set()
    for candidate in _candidate_bin_dirs():
        if candidate in seen:
            continue
        seen.add(candidate)
        if _usable(candidate):
            return candidate
    raise EmbeddedPostgresError(_INSTALL_HINT.format(min=MIN_SERVER_MAJOR, env=PG_BIN_ENV))


# --------------------------------------------------------------------------------------------
# Running as an unprivileged user when root
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged identity the server runs as (only when the caller is root)."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        """Arguments for :mod:`subprocess` that drop root (groups, then gid, then uid)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _pick_unprivileged_user() -> _RunAs:
    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    raise EmbeddedPostgresError(
        "PostgreSQL refuses to run as root and none of the users "
        f"{', '.join(UNPRIVILEGED_USERS)} exists to run it instead. Create a 'postgres' user "
        "or run as a non-root user."
    )


def _can_traverse(path: Path, who: _RunAs) -> bool:
    """Whether ``who`` can search every directory from ``/`` down to ``path`` (mode bits only)."""
    try:
        groups = {who.gid} | {g.gr_gid for g in grp.getgrall() if who.name in g.gr_mem}
    except OSError:
        groups = {who.gid}
    current = path.resolve()
    for directory in [current, *current.parents]:
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid == who.uid:
            bit = 0o100
        elif st.st_gid in groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


def _check_runnable_as(bin_dir: Path, who: _RunAs) -> None:
    """Fail clearly when ``who`` cannot execute the binaries (e.g. a venv under /root)."""
    try:
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd="/",
            **who.popen_kwargs(),
        )
        ok = result.returncode == 0
        detail = (result.stderr or result.stdout).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        ok, detail = False, str(exc)
    if not ok:
        raise EmbeddedPostgresError(
            f"Running as root, so PostgreSQL must run as the unprivileged user '{who.name}', "
            f"but '{who.name}' cannot execute {bin_dir / 'postgres'} ({detail or 'no output'}). "
            "Make that directory readable by all users, install PostgreSQL server packages "
            f"system-wide, or set {PG_BIN_ENV} to a bin directory that user can read."
        )


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def _process_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (Linux /proc), to tell a process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie awaiting its (possibly absent) reaper."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)
    return stat[stat.rindex(")") + 2 :].split()[:1] != ["Z"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


def _child_env() -> dict[str, str]:
    """The caller's environment without libpq/server ``PG*`` variables, in the C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _reap_orphans(base_dir: Path) -> None:
    """Stop and remove servers left behind by processes that died without cleaning up.

    A live owner holds an exclusive ``flock`` on its directory's owner file for its whole life
    (the kernel releases it when the owner dies, however it dies), so a directory whose lock can
    be taken has no owner. Directories without an owner file (still being set up) are skipped.
    """
    for owner_file in base_dir.glob(f"{_DIR_PREFIX}*/{_OWNER_FILE}"):
        try:
            with owner_file.open("r+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                info = json.loads(handle.read() or "{}")
                pid = int(info.get("postmaster_pid", 0))
                started = info.get("postmaster_start")
                if pid > 0 and _pid_alive(pid) and _process_start_time(pid) == started:
                    log.warning("Stopping orphaned embedded PostgreSQL (pid %d)", pid)
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                    deadline = time.monotonic() + 5
                    while _pid_alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                shutil.rmtree(owner_file.parent, ignore_errors=True)
        except (OSError, ValueError, TypeError):
            continue


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A private, disposable PostgreSQL server on a free ``127.0.0.1`` port.

    Use as a context manager (``with EmbeddedPostgres() as pg: ... pg.dsn``) or call
    :meth:`start` and :meth:`stop`. See the module docstring for the guarantees.

    Args:
        bin_dir: PostgreSQL bin directory; default :func:`find_postgres_bin_dir` at start.
        base_dir: where the temporary data directory is created (default: the system temp dir).
        start_timeout: seconds to wait for the server to accept connections.
        stop_timeout: seconds to wait for a fast shutdown before SIGKILL.
        settings: extra ``postgresql.conf`` settings (they override the defaults, except
            ``listen_addresses``, ``port`` and ``unix_socket_directories``).
        files: files to write into the data directory before the server starts (name ->
            content), owned by the server's user with mode 0600; e.g. ``server.crt`` and
            ``server.key`` for ``settings={"ssl": True, "ssl_cert_file": "server.crt", ...}``
            (relative paths in settings are relative to the data directory).
    """

    host: str = _LOOPBACK
    user: str = SUPERUSER

    def __init__(
        self,
        bin_dir: str | os.PathLike[str] | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        settings: Mapping[str, str | int | bool] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        self._requested_bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._extra_settings = dict(settings or {})
        self._extra_files = dict(files or {})
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_handle: IO[str] | None = None
        self._owner_pid: int | None = None
        self._atexit_registered = False
        self._bin_dir: Path | None = None
        self._data_dir: Path | None = None
        self._port: int | None = None
        self._server_version_num: int | None = None
        self._pid: int | None = None
        self.run_as: str | None = None
        """Name of the unprivileged user running the server (None: the caller's own user)."""

    # -- attributes -----------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The PostgreSQL bin directory in use."""
        return _require(self._bin_dir, "bin_dir")

    @property
    def data_dir(self) -> Path:
        """The temporary data directory (removed by :meth:`stop`; the path stays readable)."""
        return _require(self._data_dir, "data_dir")

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1."""
        return _require(self._port, "port")

    @property
    def server_version_num(self) -> int:
        """``server_version_num``, e.g. 150018 or 160002."""
        return _require(self._server_version_num, "server_version_num")

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return _require(self._pid, "pid")

    @property
    def dsn(self) -> str:
        """libpq URI of the ``postgres`` database, e.g. ``postgresql://clinipipe@127.0.0.1:5433/postgres``."""
        return self.dsn_for("postgres")

    @property
    def running(self) -> bool:
        """True while this object's postmaster process is alive."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The server log (inside the data directory, so it is removed by :meth:`stop`)."""
        return self.data_dir / _LOG_FILE

    def dsn_for(self, dbname: str) -> str:
        """libpq URI of database ``dbname`` on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    # -- databases ------------------------------------------------------------------------

    def _admin_connection(self) -> Any:
        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", connect_timeout=10
        )
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        """Create database ``name`` (an identifier, quoted safely) and return its DSN."""
        conn = self._admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, terminating its connections (``WITH (FORCE)``)."""
        conn = self._admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        finally:
            conn.close()

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedPostgres:
        """Initialise a fresh data directory and start the server; a no-op when running.

        On any failure (including ``KeyboardInterrupt``) everything already created is removed
        before the exception propagates.

        Raises:
            EmbeddedPostgresError: no binaries, cannot run as an unprivileged user, ``initdb``
                failed, or the server did not accept connections within ``start_timeout``.
        """
        with self._lock:
            if self.running:
                return self
            self.stop()  # removes what a crashed earlier run left behind
            self._reset()
            try:
                self._start()
            except BaseException:
                self.stop()
                raise
            return self

    def _reset(self) -> None:
        self._proc = None
        self._pid = None
        self._data_dir = None
        self._port = None
        self._server_version_num = None

    def _start(self) -> None:
        bin_dir = self._requested_bin_dir or find_postgres_bin_dir()
        if not _has_server_binaries(bin_dir):
            raise EmbeddedPostgresError(f"{bin_dir} lacks an executable 'postgres' or 'initdb'.")
        self._bin_dir = bin_dir
        run_as: _RunAs | None = None
        if os.geteuid() == 0:
            run_as = _pick_unprivileged_user()
            _check_runnable_as(bin_dir, run_as)
        self.run_as = run_as.name if run_as else None

        base_dir = self._choose_base_dir(run_as)
        _reap_orphans(base_dir)
        self._owner_pid = os.getpid()
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        data_dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base_dir))
        self._data_dir = data_dir
        if run_as is not None:
            os.chown(data_dir, run_as.uid, run_as.gid)
        self._initdb(bin_dir, data_dir, run_as)
        self._write_config(data_dir)
        self._write_files(data_dir, run_as)

        last_error: EmbeddedPostgresError | None = None
        for _attempt in range(_PORT_ATTEMPTS):
            port = _free_port()
            try:
                self._launch(bin_dir, data_dir, port, run_as)
                return
            except _PortInUse as exc:
                last_error = exc
                log.debug("port %d was taken before the server bound it; retrying", port)
        assert last_error is not None
        raise last_error

    def _choose_base_dir(self, run_as: _RunAs | None) -> Path:
        candidates = [self._base_dir] if self._base_dir else [Path(tempfile.gettempdir())]
        if self._base_dir is None and run_as is not None:
            candidates.append(Path("/tmp"))
        for candidate in candidates:
            if run_as is None or _can_traverse(candidate, run_as):
                return candidate
        raise EmbeddedPostgresError(
            f"The unprivileged user '{run_as.name if run_as else ''}' cannot reach "
            f"{candidates[0]}; set TMPDIR (or base_dir) to a world-traversable directory."
        )

    def _initdb(self, bin_dir: Path, data_dir: Path, run_as: _RunAs | None) -> None:
        cmd = [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]
        try:
            result = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=max(self.start_timeout, 60.0),
                check=False,
                env=_child_env(),
                cwd=str(data_dir),
                **(run_as.popen_kwargs() if run_as else {}),
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(f"initdb did not finish within {exc.timeout:.0f}s") from exc
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise EmbeddedPostgresError(
                f"initdb failed (exit {result.returncode}) in {data_dir}:\n{output}"
            )

    def _write_config(self, data_dir: Path) -> None:
        socket_ok = len(str(data_dir)) + len("/.s.PGSQL.65535.lock") <= _MAX_SOCKET_PATH
        settings: dict[str, str | int | bool] = {
            "wal_level": "logical",
            "max_replication_slots": 20,
            "max_wal_senders": 20,
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
            "logging_collector": False,
            "log_destination": "stderr",
            **self._extra_settings,
            "listen_addresses": _LOOPBACK,
            # Inside the data dir (private, 0700); disabled if the path is too long for a socket.
            "unix_socket_directories": str(data_dir) if socket_ok else "",
        }
        lines = ["", "# --- clinipipe embedded PostgreSQL ---"]
        for key, value in settings.items():
            if isinstance(value, bool):
                rendered = "on" if value else "off"
            elif isinstance(value, int):
                rendered = str(value)
            else:
                rendered = _quote_conf(str(value))
            lines.append(f"{key} = {rendered}")
        with (data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")
        (data_dir / "pg_hba.conf").write_text(
            "# clinipipe embedded PostgreSQL: trust on loopback and the private socket only.\n"
            "local   all          all                 trust\n"
            "local   replication  all                 trust\n"
            "host    all          all  127.0.0.1/32   trust\n"
            "host    replication  all  127.0.0.1/32   trust\n"
        )

    def _write_files(self, data_dir: Path, run_as: _RunAs | None) -> None:
        for name, content in self._extra_files.items():
            path = data_dir / Path(name).name
            path.write_bytes(content)
            path.chmod(0o600)
            if run_as is not None:
                os.chown(path, run_as.uid, run_as.gid)

    def _launch(self, bin_dir: Path, data_dir: Path, port: int, run_as: _RunAs | None) -> None:
        log_path = data_dir / _LOG_FILE
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=str(data_dir),
                env=_child_env(),
                start_new_session=True,  # a terminal Ctrl-C must reach Python, not the server
                **(run_as.popen_kwargs() if run_as else {}),
            )
        self._proc = proc
        self._pid = proc.pid
        self._port = port
        self._write_owner_file(data_dir, proc.pid)
        self._wait_ready(proc, log_path)

    def _write_owner_file(self, data_dir: Path, postmaster_pid: int) -> None:
        """Create the owner file under a temporary name, lock it, then rename it into place,
        so a concurrent reaper never sees it unlocked."""
        if self._owner_handle is not None:
            self._owner_handle.close()
            self._owner_handle = None
        staging = data_dir / f".{_OWNER_FILE}.{os.getpid()}"
        handle = staging.open("w")
        fcntl.flock(handle, fcntl.LOCK_EX)
        json.dump(
            {
                "owner_pid": os.getpid(),
                "postmaster_pid": postmaster_pid,
                "postmaster_start": _process_start_time(postmaster_pid),
            },
            handle,
        )
        handle.flush()
        staging.rename(data_dir / _OWNER_FILE)
        self._owner_handle = handle

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        while True:
            code = proc.poll()
            if code is not None:
                tail = _tail(log_path)
                if "could not bind" in tail or "Address already in use" in tail:
                    self._proc = None
                    raise _PortInUse(f"port {self._port} is in use:\n{tail}")
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited with code {code} during startup. Server log tail:\n{tail}"
                )
            try:
                conn = psycopg2.connect(
                    host=self.host,
                    port=self._port,
                    user=self.user,
                    dbname="postgres",
                    connect_timeout=5,
                )
            except psycopg2.OperationalError:
                if time.monotonic() >= deadline:
                    raise EmbeddedPostgresError(
                        f"PostgreSQL did not accept connections on {self.host}:{self._port} "
                        f"within {self.start_timeout:.0f}s. Server log tail:\n{_tail(log_path)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.25)
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute("SHOW server_version_num")
                    row = cur.fetchone()
                    self._server_version_num = int(row[0]) if row else 0
            finally:
                conn.close()
            return

    def stop(self) -> None:
        """Fast-shutdown the server and remove its data directory. Idempotent; never raises
        for an already stopped server. Does nothing in a forked child of the owning process."""
        with self._lock:
            if self._owner_pid is not None and self._owner_pid != os.getpid():
                return  # a forked child: the server belongs to the parent
            proc, self._proc = self._proc, None
            if proc is not None:
                self._terminate(proc)
            data_dir = self._data_dir
            if data_dir is not None and data_dir.exists():
                shutil.rmtree(data_dir, ignore_errors=True)
                if data_dir.exists():
                    log.warning("Could not fully remove %s", data_dir)
            if self._owner_handle is not None:  # released last: reapers skip us until now
                with contextlib.suppress(OSError):
                    self._owner_handle.close()
                self._owner_handle = None
            if self._atexit_registered:
                atexit.unregister(self._stop_at_exit)
                self._atexit_registered = False

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(timeout=self.stop_timeout)
                return  # a clean shutdown: the postmaster has already waited for its children
            except subprocess.TimeoutExpired:
                log.warning("PostgreSQL (pid %d) ignored fast shutdown; killing it", proc.pid)
            # Still unreaped, so its pid cannot have been reused: the postmaster leads its own
            # process group, and this also takes every backend.
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception:  # at exit, never mask the real exit status with a cleanup error
            log.exception("Embedded PostgreSQL cleanup failed")

    def __repr__(self) -> str:
        state = f"port={self._port} pid={self._pid}" if self.running else "stopped"
        return f"<EmbeddedPostgres {state}>"


class _PortInUse(EmbeddedPostgresError):
    """The chosen port was taken between picking it and the server binding it."""
