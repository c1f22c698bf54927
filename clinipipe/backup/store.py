"""Where backups live: a write-once key/value store of files (`Store`), on a local directory
(`LocalStore`) or on S3 with Object Lock (`clinipipe.backup.s3.S3Store`).

Keys (the same on every store; the layout of a restic repository, simplified)::

    objects/<2 hex>/<sha256>          Parquet files, named by the SHA-256 of their bytes
    manifests/<seq>-<sha256>.json     one per backup, named by the SHA-256 of its bytes
    pruned/<seq>-<sha256>.json        a tombstone for each manifest prune deleted
    holds/<seq>-<sha256>.json         legal holds (the only keys that change or go away at will)

Guarantees of every store:

* **Write-once.** `put_file` / `put_bytes(once=True)` create a key that does not exist and never
  replace one: if the key exists the call does nothing (content-addressed keys hold the same
  bytes by construction). Objects and manifests are never modified afterwards.
* **Durable before visible.** A key appears whole or not at all: local files are written to
  `tmp/`, fsync-ed, hard-linked into place (which fails if the name exists) and the folder
  fsync-ed; S3 makes an object visible only when its upload completes. `clinipipe.backup`
  writes a manifest only after every object it names is stored, so a crash leaves at worst
  objects that no manifest names (`prune` removes them later), never a manifest naming a
  missing object.
* **Retention** (`retain_until`, `lock`): on S3 with `lock`, Object Lock in COMPLIANCE mode
  makes S3 itself refuse deleting or overwriting the object before that date (no user, not
  the root account, can shorten it). A local directory cannot enforce anything against its
  owner or root: files are made read-only (0444) and clinipipe refuses deletes before
  `retain_until`, but the local store is tamper-*evident* (`backup verify` names any removed
  or altered file), not tamper-proof. Use S3 Object Lock where a regulator asks for WORM.
* `lock()` serialises the writers of one local store (flock); S3 has no lock: run one
  `backup create` / `prune` at a time per bucket prefix (verify detects a fork).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

OBJECTS = "objects/"
MANIFESTS = "manifests/"
PRUNED = "pruned/"
HOLDS = "holds/"
CHUNK = 1 << 20


class StoreError(Exception):
    """The store could not be used, or refused an operation. The message says what to do."""


def object_key(digest: str) -> str:
    return f"{OBJECTS}{digest[:2]}/{digest}"


class Store(ABC):
    """A write-once store of files (see the module docstring)."""

    kind: str = ""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is (no secrets)."""

    @abstractmethod
    def list(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix`, with its size in bytes."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The size of `key`, or None when it does not exist."""

    @abstractmethod
    def put_file(self, key: str, path: Path, *, retain_until: dt.datetime | None,
                 lock: bool) -> bool:  # fmt: skip
        """Store local file `path` as `key` (write-once; `path` may be consumed). True when
        it was written, False when `key` already existed."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, retain_until: dt.datetime | None = None,
                  lock: bool = False, once: bool = True) -> bool:  # fmt: skip
        """Store `data` as `key`: write-once (`once`), or replaced atomically (holds)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The content of `key` (raises StoreError naming it when missing)."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A stream of `key`'s bytes (raises StoreError naming it when missing)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` (every version of it). Callers check retention first; S3 also refuses
        a locked object. Deleting a missing key does nothing."""

    def local_path(self, key: str) -> Path | None:
        """The file of `key` when the store is a local directory (else None)."""
        return None

    def extend_retention(self, key: str, until: dt.datetime) -> None:  # noqa: B027
        """Make `key` retained at least until `until` (S3: Object Lock). Never shortens."""

    def set_legal_hold(self, key: str, on: bool) -> None:  # noqa: B027
        """S3: place or lift the Object Lock legal hold of `key`. Local: nothing to do (the
        hold is the record under holds/, which clinipipe checks)."""

    @abstractmethod
    def staging(self) -> contextlib.AbstractContextManager[Path]:
        """A private empty folder for files about to be stored (removed afterwards)."""

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive writer lock over the store (see the module docstring)."""
        return contextlib.nullcontext()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    """A local directory. Objects and manifests are written once and made read-only."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"local store {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _ensure(self) -> None:
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the backup store {self.root}: {exc.strerror} (check "
                "backup.store in the spec and the folder's permissions)"
            ) from None

    def list(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        out = {}
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    out[path.relative_to(self.root).as_posix()] = path.stat().st_size
        return out

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def _place(self, key: str, src: Path) -> bool:
        """fsync `src` (in tmp/), link it to `key` unless that exists, fsync the folder."""
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(src, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        _fsync_file(src)
        try:
            os.link(src, dst)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                src.unlink()
        _fsync_dir(dst.parent)
        return True

    def _tmp(self) -> Path:
        self._ensure()
        return self.root / "tmp" / f".tmp-{uuid.uuid4().hex}"

    def put_file(self, key: str, path: Path, *, retain_until: dt.datetime | None,
                 lock: bool) -> bool:  # fmt: skip
        if self.size(key) is not None:
            return False
        tmp = self._tmp()
        try:
            os.link(path, tmp)  # same file system (staging is under tmp/): no copy
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copyfile(path, tmp)
        return self._place(key, tmp)

    def put_bytes(self, key: str, data: bytes, *, retain_until: dt.datetime | None = None,
                  lock: bool = False, once: bool = True) -> bool:  # fmt: skip
        tmp = self._tmp()
        with open(tmp, "wb") as f:
            f.write(data)
        if once:
            return self._place(key, tmp)
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _fsync_file(tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
        return True

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{key} is missing from {self.describe()}") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError(f"{key} is missing from {self.describe()}") from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        self._ensure()
        folder = Path(tempfile.mkdtemp(prefix="stage-", dir=self.root / "tmp"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self._ensure()
        with open(self.root / "tmp" / "lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"another clinipipe process is writing to {self.describe()} (a backup or "
                    "prune); wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
