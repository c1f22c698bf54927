"""Reader side of the interactive tables on DuckDB (a dashboard process's handle).

See :mod:`clinipipe.pipeline.publish` for the layout. Guarantees of :class:`ServingReader`:

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
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from clinipipe.pipeline.publish import CURRENT, read_current, serving_root
from clinipipe.sql.context import SERVING_SCHEMA

_SEARCH_PATH = f"SET search_path = '{SERVING_SCHEMA},main'"


class ServingError(Exception):
    """An interactive table has no published generation (yet)."""


class _Generation:
    """One open generation file: its shared flock, its read-only connection, its users."""

    def __init__(self, path: Path, fd: int, threads: int) -> None:
        self.path = path
        self.fd = fd
        self.con = duckdb.connect(str(path), read_only=True, config={"threads": threads})
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
        self, warehouse: Path | str, *, recheck_seconds: float = 0.1, threads: int = 1
    ) -> None:
        self.root = serving_root(Path(warehouse))
        self.recheck_seconds = recheck_seconds
        self.threads = threads
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
                cur.execute(_SEARCH_PATH)
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
                self._install(table, self._find_newer(table.folder, None, None, self.threads))
                table.checked = now
            elif now - table.checked < self.recheck_seconds or table.checking:
                return self._use(table)
            table.checking = True
            table.checked = now
            current, stamp = table.current, table.stamp
        # Look for (and open) a newer generation without the lock: queries of other threads
        # keep running on the current one meanwhile.
        try:
            found = self._find_newer(table.folder, current, stamp, self.threads)
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
        folder: Path, current: _Generation | None, stamp: tuple[int, int] | None, threads: int
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
                return _Generation(path, fd, threads), new_stamp
            except BaseException:
                os.close(fd)
                raise
        raise ServingError(f"could not open a generation of {folder.name!r}")
