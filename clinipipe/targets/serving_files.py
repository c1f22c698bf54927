"""Interactive tables served as local DuckDB files: the publisher's file mechanics and the
dashboards' reader (`ServingReader`). For targets whose interactive tables are not native.

The warehouse file is held open read-write by one process (CDC), and DuckDB lets no other
process open it meanwhile, so the serving layer lives in separate files next to it::

    <warehouse stem>.serving/<name>/000000000007.duckdb   one complete copy per publish
    <warehouse stem>.serving/<name>/CURRENT               "000000000007.duckdb\\n"

The publish guarantees (complete or invisible, never blocks the writer, never pulls a file from
under a reader) are stated in :mod:`clinipipe.pipeline.publish`; the reader's:

* **Whole generations only.** A query runs against exactly one published generation file,
  opened read-only after CURRENT named it; CURRENT only ever names complete files.
* **The file stays while in use.** The reader holds a shared ``flock`` on each generation it
  has open (verified to be the file still at that path, so a file deleted between ``open`` and
  ``flock`` is not used); the publisher deletes only files it can lock exclusively without
  waiting. The reader never takes an exclusive lock, so it never blocks the writer.
* **Fresh within `recheck_seconds`.** CURRENT is re-checked (one ``stat``: inode and mtime) at
  most every `recheck_seconds`; when it names a newer generation the reader opens it (one
  thread, outside the reader's lock: the others keep querying the current generation
  meanwhile), and releases the old one once no query of any thread still runs on it.
* **Thread-safe.** Queries of different threads run concurrently, each on its own cursor of
  the generation's connection.
* **Encrypted like the warehouse.** Interactive tables hold PHI, so when the warehouse is
  encrypted (`target.encryption_key_env`) every generation file is written with the same key
  (DuckDB database encryption), and a reader needs it (`encryption_key`); CURRENT holds only a
  file name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from clinipipe.secrets import first_line, scrub_values
from clinipipe.sql.context import SERVING_SCHEMA
from clinipipe.targets.base import Target, TargetError
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.duckdb.core import open_encrypted

CURRENT = "CURRENT"
"""Name of the pointer file in each interactive table's folder."""

_ALIAS = "clinipipe_publish"

GENERATION_RE = re.compile(r"^(\d{12})\.duckdb$")
"""Generation files: twelve digits, `.duckdb`."""


def serving_root(warehouse: Path) -> Path:
    """The folder holding the serving files of the warehouse file `warehouse`."""
    return warehouse.with_name(f"{warehouse.stem}.serving")


def generation_name(generation: int) -> str:
    """The file name of `generation`."""
    return f"{generation:012d}.duckdb"


def read_current(folder: Path) -> str | None:
    """The generation file name CURRENT points to in `folder`, or None before the first publish."""
    try:
        text = (folder / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return text if GENERATION_RE.match(text) else None


def _generations(folder: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            m = GENERATION_RE.match(entry.name)
            if m:
                found[int(m.group(1))] = entry
    return found


def next_generation(folder: Path) -> int:
    numbers = set(_generations(folder))
    current = read_current(folder)
    if current:
        numbers.add(int(current[:12]))
    return max(numbers, default=0) + 1


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) while the block runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_current(folder: Path, file_name: str) -> None:
    """Point CURRENT in `folder` at `file_name`, atomically and durably."""
    tmp = folder / f".{CURRENT}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as fh:
        fh.write(file_name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / CURRENT)
    fsync_path(folder, directory=True)


def cleanup(folder: Path) -> list[str]:
    """Delete every file of `folder` except CURRENT's generation that no reader holds.

    A generation file is deleted only while this process holds a non-blocking exclusive flock
    on it (readers hold a shared one), so an open generation is never removed; files whose
    lock is refused stay for a later cleanup. Leftover temporary CURRENT files and DuckDB WAL
    files of abandoned generations go too. Never blocks.
    """
    current = read_current(folder)
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name in (CURRENT, current, f"{current}.wal"):
            continue
        if name.startswith(f".{CURRENT}.") and name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                age = time.time() - entry.stat().st_mtime
                if age > 60:  # not a temporary file a concurrent publish is about to rename
                    entry.unlink()
                    removed.append(name)
            continue
        base = name.removesuffix(".wal")
        if not GENERATION_RE.match(base):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a reader (or a publish in progress) holds it
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(name)
        finally:
            os.close(fd)
    return removed


def serving_root_of(target: Target) -> Path | None:
    """Where `target` keeps its serving files, or None when its interactive tables are native
    (Snowflake: CREATE INTERACTIVE TABLE) and there is nothing to publish."""
    return serving_root(target.path) if isinstance(target, DuckDBTarget) else None


def write_generation(
    target: Target,
    path: Path,
    name: str,
    source_sql: str,
    cluster_by: Sequence[str],
    *,
    index: bool = False,
) -> int:
    """Write the new generation file `path`: table `serving.<name>` = the rows of `source_sql`
    ordered by `cluster_by` (plus an ART index on them with `index`), checkpointed and detached.
    Returns its rows. Not yet fsynced nor named by CURRENT: the caller does both. Raises
    `TargetError` (no values in the message); a partial file is left for `cleanup`."""
    assert isinstance(target, DuckDBTarget)
    q = target.dialect.quote_ident
    order = ", ".join(q(c) for c in cluster_by)
    key = target.encryption_key()
    options = "" if key is None else f" (ENCRYPTION_KEY {target.dialect.quote_literal(key)})"
    cur = target.cursor()
    try:
        target.use_warehouse("interactive")
        cur.execute(f"ATTACH {target.dialect.quote_literal(str(path))} AS {q(_ALIAS)}{options}")
        served = f"{q(_ALIAS)}.{q(SERVING_SCHEMA)}.{q(name)}"
        try:
            cur.execute(f"CREATE SCHEMA {q(_ALIAS)}.{q(SERVING_SCHEMA)}")
            cur.execute(f"CREATE TABLE {served} AS {source_sql} ORDER BY {order}")
            if index:
                cur.execute(f"CREATE INDEX {q(name + '_cluster')} ON {served} ({order})")
            rows = int(cur.execute(f"SELECT count(*) FROM {served}").fetchall()[0][0])
            cur.execute(f"CHECKPOINT {q(_ALIAS)}")
        finally:
            cur.execute(f"DETACH {q(_ALIAS)}")
    except duckdb.Error as exc:
        raise TargetError(
            f"publishing {name} failed (readers keep the previous generation; the partial file "
            f"is removed by the next publish): {scrub_values(first_line(exc))}"
        ) from None
    finally:
        cur.close()
    return rows


_SEARCH_PATH = f"SET search_path = '{SERVING_SCHEMA},main'"


class ServingError(Exception):
    """An interactive table has no published generation (yet)."""


class _Generation:
    """One open generation file: its shared flock, its read-only connection, its users, and
    the statements each new cursor runs first (search path; the catalog when encrypted)."""

    def __init__(self, path: Path, fd: int, threads: int, key: str | None = None) -> None:
        self.path = path
        self.fd = fd
        self.setup = [_SEARCH_PATH]
        if key is None:
            self.con = duckdb.connect(str(path), read_only=True, config={"threads": threads})
        else:
            try:
                self.con, use = open_encrypted(path, key, read_only=True, alias=_ALIAS)
            except duckdb.Error as exc:
                raise ServingError(
                    f"cannot open {path.name} (encrypted): {scrub_values(first_line(exc))}"
                ) from None
            self.con.execute(f"SET threads = {int(threads)}")
            self.setup = [use, f"SET search_path = '{_ALIAS}.{SERVING_SCHEMA},{_ALIAS}.main'"]
        self.users = 0
        self.retired = False

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            os.close(self.fd)  # releases the shared flock


def _lock_shared(path: Path) -> int | None:
    """An fd holding a shared flock on the file at `path`, or None if it was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # The publisher may have deleted the file between our open and our flock.
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            return None
    except FileNotFoundError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Table:
    """The state of one interactive table inside a reader."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current: _Generation | None = None
        self.stamp: tuple[int, int] | None = None
        self.checked = 0.0
        self.checking = False
        """A thread is looking for a newer generation (outside the reader's lock)."""


class ServingReader:
    """Query published interactive tables of the DuckDB warehouse file `warehouse`.

    `recheck_seconds` bounds how long a reader keeps answering from a generation after a newer
    one was published (plus the time of one open). `threads` is DuckDB's parallelism *per
    query*: dashboards run many small queries side by side (one per request thread), so one
    thread each is the default; raise it for a reader that runs few large scans. Use as a
    context manager or call :meth:`close`.
    """

    def __init__(
        self,
        warehouse: Path | str,
        *,
        recheck_seconds: float = 0.1,
        threads: int = 1,
        encryption_key: str | None = None,
    ) -> None:
        self.root = serving_root(Path(warehouse))
        self.recheck_seconds = recheck_seconds
        self.threads = threads
        self._key = encryption_key
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}
        self._closed = False

    def __enter__(self) -> ServingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generation(self, name: str) -> str:
        """The generation file name queries of `name` currently run on (opening it if needed)."""
        gen = self._acquire(name)
        try:
            return gen.path.name
        finally:
            self._release(gen)

    def query(
        self, name: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run `sql` (reading table `name`, as `serving.<name>` or `<name>`) with `params`
        (positional `?` or named `$x`) on the current generation of `name`."""
        return self.execute(name, sql, params)[1]

    def execute(
        self, name: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]], str]:
        """As `query`, also returning the result's column names and the generation file name
        the query ran on."""
        gen = self._acquire(name)
        try:
            cur = gen.con.cursor()
            try:
                # Queries name `serving.<table>`; bare names resolve there too (the setting
                # belongs to the cursor's own connection).
                for statement in gen.setup:
                    cur.execute(statement)
                cur.execute(sql, params if params is not None else [])
                columns = [d[0] for d in cur.description or []]
                return columns, cur.fetchall(), gen.path.name
            finally:
                cur.close()
        finally:
            self._release(gen)

    def close(self) -> None:
        """Close every generation (those still in use close when their last query ends)."""
        with self._lock:
            self._closed = True
            for table in self._tables.values():
                if table.current is not None:
                    self._retire(table.current)
                    table.current = None

    # --- internals -------------------------------------------------------------------------

    def _acquire(self, name: str) -> _Generation:
        with self._lock:
            if self._closed:
                raise ServingError("the serving reader is closed")
            table = self._tables.get(name)
            if table is None:
                table = self._tables[name] = _Table(self.root / name)
            now = time.monotonic()
            if table.current is None:  # first use: nothing to serve meanwhile, open it here
                self._install(
                    table, self._find_newer(table.folder, None, None, self.threads, self._key)
                )
                table.checked = now
            elif now - table.checked < self.recheck_seconds or table.checking:
                return self._use(table)
            table.checking = True
            table.checked = now
            current, stamp = table.current, table.stamp
        # Look for (and open) a newer generation without the lock: queries of other threads
        # keep running on the current one meanwhile.
        try:
            found = self._find_newer(table.folder, current, stamp, self.threads, self._key)
        except BaseException:
            with self._lock:
                table.checking = False
            raise
        with self._lock:
            table.checking = False
            self._install(table, found)
            return self._use(table)

    def _use(self, table: _Table) -> _Generation:
        if self._closed or table.current is None:
            raise ServingError("the serving reader is closed")
        table.current.users += 1
        return table.current

    def _install(self, table: _Table, found: tuple[_Generation | None, tuple[int, int]]) -> None:
        """Make a found generation current (lock held); retire the previous one."""
        gen, stamp = found
        table.stamp = stamp
        if gen is None:
            return
        if self._closed:  # closed while it was being opened
            self._retire(gen)
            return
        old, table.current = table.current, gen
        if old is not None:
            self._retire(old)

    def _release(self, gen: _Generation) -> None:
        with self._lock:
            gen.users -= 1
            if gen.retired and gen.users == 0:
                gen.close()

    def _retire(self, gen: _Generation) -> None:
        gen.retired = True
        if gen.users == 0:
            gen.close()

    @staticmethod
    def _find_newer(
        folder: Path,
        current: _Generation | None,
        stamp: tuple[int, int] | None,
        threads: int,
        key: str | None = None,
    ) -> tuple[_Generation | None, tuple[int, int]]:
        """The generation CURRENT names in `folder`, opened, if it is not `current`
        ((None, stamp) when unchanged). Touches no reader state, so it runs without the lock."""
        for _ in range(100):
            try:
                st = os.stat(folder / CURRENT)
            except FileNotFoundError:
                st = None
            if st is None:
                if current is not None and stamp is not None:
                    return None, stamp  # keep serving what we have
                raise ServingError(f"interactive table {folder.name!r} is not published")
            new_stamp = (st.st_ino, st.st_mtime_ns)
            if current is not None and new_stamp == stamp:
                return None, new_stamp
            file_name = read_current(folder)
            if file_name is None:
                raise ServingError(f"{folder / CURRENT} names no generation")
            if current is not None and current.path.name == file_name:
                return None, new_stamp
            path = folder / file_name
            fd = _lock_shared(path)
            if fd is None:
                continue  # superseded and deleted meanwhile: read CURRENT again
            try:
                return _Generation(path, fd, threads, key), new_stamp
            except BaseException:
                os.close(fd)
                raise
        raise ServingError(f"could not open a generation of {folder.name!r}")
