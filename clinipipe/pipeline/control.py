"""The control socket of a running `cdc start`: how the other commands reach a warehouse that
CDC owns.

DuckDB lets one process open a database file read-write and no other process open it at all
meanwhile. While `clinipipe cdc start` runs it owns the warehouse; `status`, `cdc status`,
`refresh`, `publish`, `scan` and `redact` then send their request to it over a local Unix
socket instead of opening the file, and it runs them on its own connection between batches.

Protocol (version 1): JSON lines over a Unix stream socket, one request per connection. The
client sends one line ``{"v": 1, "op": NAME, "params": {...}}`` and reads lines until the final
one; zero or more ``{"event": "progress", ...}`` and ``{"event": "waiting", "seconds": N}``
(the request is still queued) lines come first, then either
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": MESSAGE, "kind": "usage"|"failure",
"type": EXCEPTION CLASS}``; then the server closes the connection. ``op: "hello"`` is answered
at once by the server thread (pid, start time, spec digest) and never touches the warehouse.

Guarantees:

* **Owner only.** The socket file (:func:`socket_path`) is created with mode 0600: it is bound
  inside a private 0700 folder, chmod-ed, listening, and only then renamed into place, so no
  other user can connect at any moment. The server also reads the peer's uid (SO_PEERCRED,
  Linux) and refuses any other user.
* **Stale files are harmless.** A socket file nobody listens on (left by a killed process)
  refuses connections: clients treat CDC as not running and open the warehouse themselves;
  the next `cdc start` replaces the file. A starting server refuses to replace a live one.
* **One thread touches the warehouse.** Server threads only read requests and write answers.
  Requests wait in a queue; the :class:`ControlRequests` after-batch job runs them one at a
  time, in arrival order, on the CDC loop's thread and target connection, between batches
  (never inside one): a request sees the warehouse as of the last committed batch. A long
  request (a full scan, a redaction) delays the next batch by its duration; no change is lost
  (the replication slot keeps them).
* **No request hangs.** Requests still queued when the server stops are answered with an
  error. A client whose server dies mid-request gets :class:`ControlError`.
* **No row values.** Requests carry names and options only; answers carry exactly what the
  commands print with ``--json`` (statuses, results, masked findings); error messages of
  unexpected exceptions are scrubbed of quoted values.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import queue
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clinipipe.secrets import first_line, mask_dsn, scrub_values
from clinipipe.spec.loader import LoadedSpec

if TYPE_CHECKING:
    from clinipipe.targets.base import Target

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 1 << 20
"""A request line longer than this is refused (requests hold names and options only)."""
MAX_SOCKET_PATH = 100
"""Bytes of a Unix socket path (the kernel allows 107 on Linux, 103 on macOS)."""
SOCKET_SUFFIX = ".cdc.sock"
WAITING_NOTICE_SECONDS = 5.0
"""A request not started after this long gets a ``{"event": "waiting"}`` line (and again after
as long): the loop is busy with a batch, a long request, or a source outage."""


class ControlError(Exception):
    """Talking to the running `cdc start` failed (it stopped, refused, or answered garbage).
    `usage` is True when the request itself was wrong; `kind`/`type` as the server sent them."""

    def __init__(self, message: str, *, usage: bool = False, type_name: str = "") -> None:
        super().__init__(message)
        self.usage = usage
        self.type_name = type_name


# --- where the socket lives ----------------------------------------------------------------------


def socket_path(loaded: LoadedSpec) -> Path:
    """The control socket of the warehouse `loaded` names: ``<warehouse file>.cdc.sock`` next to
    a DuckDB warehouse, else ``<spec folder>/.clinipipe/<slot>.cdc.sock``. When that path is too
    long for a Unix socket, a file named by its hash in :func:`runtime_dir` instead. The same
    spec always gives the same path, in every process."""
    spec = loaded.spec
    if spec.target.type == "duckdb":
        warehouse = loaded.resolve(getattr(spec.target, "path", "warehouse.duckdb")).resolve()
        path = warehouse.with_name(warehouse.name + SOCKET_SUFFIX)
    else:
        path = loaded.directory.resolve() / ".clinipipe" / f"{spec.source.slot}{SOCKET_SUFFIX}"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:24]
    return runtime_dir() / f"{digest}{SOCKET_SUFFIX}"


def runtime_dir() -> Path:
    """A folder only this user can enter, for sockets whose natural path is too long:
    ``$XDG_RUNTIME_DIR/clinipipe`` or ``<tmp>/clinipipe-<uid>`` (mode 0700, refused when it
    exists but belongs to someone else or others can enter it)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = (
        Path(base) / "clinipipe"
        if base and os.path.isdir(base)
        else Path(tempfile.gettempdir()) / f"clinipipe-{os.getuid()}"
    )
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
        raise ControlError(f"{folder} is not a folder of this user: remove it and try again")
    if info.st_mode & 0o077:
        raise ControlError(f"{folder} can be entered by other users: chmod 700 {folder}")
    return folder


# --- the client ----------------------------------------------------------------------------------


@dataclass
class ServerInfo:
    """What a live server says of itself (`hello`)."""

    pid: int
    started_at: str
    spec_digest: str
    path: str


class ControlClient:
    """A connection to a live control server (see :func:`connect`); one request per client."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        self.spec_digest: str | None = None
        """The digest of the spec the server runs with (set by `call`)."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        op: str,
        params: Mapping[str, Any] | None = None,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send `op` and return its result; progress lines go to `on_progress`. Raises
        :class:`ControlError` with the server's message when it failed (or stopped)."""
        line = json.dumps({"v": PROTOCOL_VERSION, "op": op, "params": dict(params or {})})
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(line.encode() + b"\n")
            reader = self._sock.makefile("rb")
            try:
                for raw in reader:
                    message = json.loads(raw)
                    if "event" in message:
                        if on_progress is not None:
                            on_progress(message)
                        continue
                    self.spec_digest = message.get("spec_digest")
                    if message.get("ok"):
                        return message.get("result")
                    raise ControlError(
                        str(message.get("error") or "the request failed"),
                        usage=message.get("kind") == "usage",
                        type_name=str(message.get("type") or ""),
                    )
            finally:
                reader.close()
        except (OSError, ValueError) as exc:
            raise ControlError(
                f"lost the connection to the running `cdc start` ({self.path}) before it "
                f"answered ({type(exc).__name__}); is it still running? Try again"
            ) from None
        finally:
            self.close()
        raise ControlError(
            f"the running `cdc start` ({self.path}) stopped before it answered; try again"
        )


def connect(loaded: LoadedSpec) -> ControlClient | None:
    """A connection to the `cdc start` that owns this spec's warehouse, or None when none runs
    (no socket file, or a stale one left by a killed process: connecting is refused). Raises
    :class:`ControlError` when a server runs but this user may not talk to it."""
    path = socket_path(loaded)
    try:
        if not path.is_socket():
            return None
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None  # stale: nobody listens
    except PermissionError:
        sock.close()
        owner = _owner(path)
        raise ControlError(
            f"`cdc start` owns this warehouse and runs as another user ({owner}); run this "
            "command as that user"
        ) from None
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot reach the running `cdc start` at {path}: {exc}") from None
    return ControlClient(sock, path)


def hello(loaded: LoadedSpec) -> ServerInfo | None:
    """The live server's self-description, or None when `cdc start` does not run."""
    client = connect(loaded)
    if client is None:
        return None
    data = client.call("hello", timeout=10)
    return ServerInfo(data["pid"], data["started_at"], data["spec_digest"], data["path"])


def _owner(path: Path) -> str:
    try:
        import pwd

        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError, ImportError):
        return "unknown"


# --- the server ----------------------------------------------------------------------------------


@dataclass(eq=False)
class PendingRequest:
    """One request waiting for (or being run by) the CDC loop's thread."""

    op: str
    params: dict[str, Any]
    _answers: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue, repr=False)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    started: bool = False
    """Set when the loop's thread began running it."""
    done: bool = False

    def progress(self, data: Mapping[str, Any]) -> None:
        """Send a progress line (names and counts only) to the client."""
        if not self.done:
            self._answers.put({"event": "progress", **data})

    def answer(self, result: Any) -> None:
        if not self.done:
            self.done = True
            self._answers.put({"ok": True, "result": result})

    def fail(self, message: str, *, usage: bool = False, type_name: str = "") -> None:
        if not self.done:
            self.done = True
            kind = "usage" if usage else "failure"
            self._answers.put({"ok": False, "error": message, "kind": kind, "type": type_name})


class ControlServer:
    """Listens on :func:`socket_path`; queues requests for :class:`ControlRequests`.

    Use as a context manager (or `start` / `close`). `start` raises :class:`ControlError` when
    another live server owns the path. `close` stops listening, removes the socket file (if it
    is still this server's) and fails every request not yet answered."""

    def __init__(self, loaded: LoadedSpec, *, path: Path | None = None) -> None:
        self.loaded = loaded
        self.path = path or socket_path(loaded)
        self.started_at = dt.datetime.now(dt.UTC)
        self._requests: queue.Queue[PendingRequest] = queue.Queue()
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open: set[PendingRequest] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- lifecycle --

    def start(self) -> None:
        live = _live(self.path)
        if live:
            raise ControlError(
                f"`cdc start` is already running for this warehouse (control socket {self.path}"
                f"{', pid ' + str(live) if isinstance(live, int) and live > 0 else ''}); stop it "
                "first"
            )
        parent = self.path.parent
        if parent.name == ".clinipipe":  # the project's state folder (not a warehouse folder)
            parent.mkdir(mode=0o700, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=".clinipipe-sock-", dir=parent))  # mode 0700
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bound = private / "s"
            sock.bind(str(bound))
            os.chmod(bound, 0o600)
            sock.listen(16)
            os.replace(bound, self.path)  # atomic; a stale file is replaced
        except BaseException:
            sock.close()
            raise
        finally:
            with contextlib.suppress(OSError):
                for leftover in private.iterdir():
                    leftover.unlink()
            with contextlib.suppress(OSError):
                private.rmdir()
        info = self.path.stat()
        self._inode = (info.st_dev, info.st_ino)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="clinipipe-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            info = self.path.stat()
            if (info.st_dev, info.st_ino) == self._inode:
                self.path.unlink()
        for request in self.take():
            request.fail("`cdc start` stopped before running this request; run it again")
        with self._lock:
            still = list(self._open)
        for request in still:
            request.fail("`cdc start` stopped while running this request; run it again")

    # -- for the loop's thread --

    def take(self) -> list[PendingRequest]:
        """Every queued request, in arrival order (does not wait)."""
        taken = []
        while True:
            try:
                taken.append(self._requests.get_nowait())
            except queue.Empty:
                return taken

    @property
    def pending(self) -> int:
        return self._requests.qsize()

    # -- server threads --

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="clinipipe-control-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            conn.settimeout(30)
            if not _same_user(conn):
                refused = "refused: `cdc start` answers its own user only"
                _send(conn, {"ok": False, "kind": "failure", "type": "ControlError",
                             "error": refused})  # fmt: skip
                return
            try:
                request = _read_request(conn)
            except ControlError as exc:
                _send(conn, {"ok": False, "kind": "usage", "type": "ControlError",
                             "error": str(exc)})  # fmt: skip
                return
            if request.op == "hello":
                _send(conn, {"ok": True, "result": self._hello()})
                return
            with self._lock:
                self._open.add(request)
            self._requests.put(request)
            conn.settimeout(None)
            queued_at = time.monotonic()
            told = 0.0
            try:
                while True:
                    try:
                        message = request._answers.get(timeout=0.5)
                    except queue.Empty:
                        if self._stop.is_set() and request.done:
                            return
                        waited = time.monotonic() - queued_at
                        if not request.started and waited - told >= WAITING_NOTICE_SECONDS:
                            told = waited
                            if not _send(conn, {"event": "waiting", "seconds": round(waited)}):
                                request.cancelled.set()
                        continue
                    final = "event" not in message
                    if final:
                        message = {**message, "spec_digest": self.loaded.digest}
                    if not _send(conn, message):
                        request.cancelled.set()  # the client went away
                    if final:
                        return
            finally:
                with self._lock:
                    self._open.discard(request)

    def _hello(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": self.started_at.isoformat(),
            "spec_digest": self.loaded.digest,
            "path": str(self.path),
            "pending": self.pending,
        }


def _live(path: Path) -> int | bool:
    """Whether a server listens on `path` (its pid when it says, else True)."""
    if not path.is_socket():
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # there, but not ours to talk to
    client = ControlClient(sock, path)
    try:
        return int(client.call("hello", timeout=5)["pid"])
    except (ControlError, KeyError, TypeError, ValueError):
        return True


def _same_user(conn: socket.socket) -> bool:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: the file mode (0600) is the guard
        return True
    try:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option, 12))
    except OSError:
        return False
    return uid == os.getuid()


def _read_request(conn: socket.socket) -> PendingRequest:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = conn.recv(65536)
        except OSError:
            raise ControlError("no request received") from None
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ControlError("request too long")
    try:
        message = json.loads(data)
    except ValueError:
        raise ControlError("a request is one JSON line") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ControlError('a request is {"v": 1, "op": NAME, "params": {...}}')
    if message.get("v") != PROTOCOL_VERSION:
        raise ControlError(
            f"protocol version {message.get('v')!r} is not {PROTOCOL_VERSION}: the running "
            "`cdc start` is another clinipipe version; restart it"
        )
    params = message.get("params") or {}
    if not isinstance(params, dict):
        raise ControlError("params must be an object")
    return PendingRequest(message["op"], params)


def _send(conn: socket.socket, message: Mapping[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(message, default=str).encode() + b"\n")
        return True
    except OSError:
        return False


# --- the after-batch job ---------------------------------------------------------------------


class BatchContextLike(Protocol):
    """What :class:`ControlRequests` uses of the CDC loop's `BatchContext`."""

    @property
    def loaded(self) -> LoadedSpec: ...

    @property
    def target(self) -> Target: ...

    @property
    def stats(self) -> Any: ...


@dataclass(frozen=True)
class Call:
    """One request as a handler sees it: the loop's spec and open target, the request's
    parameters, a progress callback, and the loop's live counters (None when run locally)."""

    loaded: LoadedSpec
    target: Target
    params: Mapping[str, Any]
    progress: Callable[[Mapping[str, Any]], None]
    stats: Any = None


Handler = Callable[[Call], Any]
"""Runs one request on an open target; returns what the client gets (JSON-able). Raises an
exception with `.usage = True` for a wrong request; any other exception is a failure."""


class ControlRequests:
    """The after-batch job that answers control requests on the CDC loop's thread.

    `run` takes every request queued so far and runs each with `handlers[op]` on
    `context.target`; an exception fails that request only (never the loop). After each
    request the connection is put back on the incremental warehouse."""

    name = "control-requests"

    def __init__(self, server: ControlServer, handlers: Mapping[str, Handler]) -> None:
        self.server = server
        self.handlers = dict(handlers)
        self.served = 0

    def run(self, context: BatchContextLike) -> None:
        for request in self.server.take():
            if request.cancelled.is_set():
                request.fail("cancelled")
                continue
            self.serve(request, context.loaded, context.target, getattr(context, "stats", None))

    def serve(
        self, request: PendingRequest, loaded: LoadedSpec, target: Target, stats: Any
    ) -> None:
        request.started = True
        handler = self.handlers.get(request.op)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            request.fail(f"unknown request {request.op!r} (known: {known})", usage=True)
            return
        try:
            result = handler(Call(loaded, target, request.params, request.progress, stats))
        except Exception as exc:  # a failed request never stops CDC
            message, usage, type_name = describe_failure(exc)
            request.fail(message, usage=usage, type_name=type_name)
        else:
            request.answer(json.loads(json.dumps(result, default=str)))
        finally:
            self.served += 1
            with contextlib.suppress(Exception):
                target.use_warehouse("incremental")


def describe_failure(exc: BaseException) -> tuple[str, bool, str]:
    """(message, usage, type name) of a handler's exception, as sent to the client. clinipipe's
    own errors keep their message (they name identifiers, never values; passwords masked);
    anything else is reported by type with quoted values scrubbed."""
    name = type(exc).__name__
    usage = bool(getattr(exc, "usage", False))
    if type(exc).__module__.startswith("clinipipe."):
        return mask_dsn(str(exc)), usage, name
    return f"{name}: {scrub_values(mask_dsn(first_line(exc)))}", usage, name


@contextlib.contextmanager
def serving(loaded: LoadedSpec) -> Iterator[ControlServer]:
    """A started :class:`ControlServer` for `loaded`, closed on exit."""
    server = ControlServer(loaded)
    server.start()
    try:
        yield server
    finally:
        server.close()
