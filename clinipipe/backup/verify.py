"""`clinipipe backup verify` (and the store half of `audit verify`): check everything a backup
store holds, and name exactly what is wrong.

Checks, each problem naming the key (or audit entry) at fault:

* every manifest: its bytes hash to the name it has, it parses, its seq matches its name, and
  its ``prev_manifest`` equals the hash of the manifest (or tombstone) one seq below; a seq
  with no manifest and no tombstone is a removed manifest; two manifests with one seq are a
  fork;
* every object a manifest names: present, of the recorded size, and (``read_data``) its bytes
  hash to its name; the Parquet footer's row count equals the manifest's (read from the local
  file, or from the bytes read with ``read_data``); an encrypted object (an encrypted DuckDB
  warehouse's backup) is counted by decrypting it with the warehouse key: without the key,
  ``read_data`` reports it as a problem and a plain verify notes it as not counted;
* against the audit log (when its entries are given): the entry each manifest recorded as the
  audit head still has that hash (a rewritten log no longer matches the backups), and every
  ``backup create`` entry's manifest is in the store or was pruned (the newest manifest cannot
  vanish unnoticed).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinipipe.backup.audit import AuditEntry
from clinipipe.backup.manifest import GENESIS, Chain, Stored, load_chain, manifest_key
from clinipipe.backup.store import CHUNK, OBJECTS, Store, StoreError, object_key
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.backup import encrypted_parquet_rows, key_id_of

Progress = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class Problem:
    kind: str
    """manifest_damaged, manifest_unreadable, manifest_missing, manifest_link, fork,
    object_missing, object_size, object_damaged, object_unreadable, row_count,
    audit_mismatch, audit_missing, stray_key."""
    key: str
    """The store key (or ``_clinipipe.audit_log seq N``) at fault."""
    message: str
    backups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "message": self.message,
                "backups": list(self.backups)}  # fmt: skip


@dataclass
class VerifyReport:
    backups: int = 0
    objects: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    read_data: bool = False
    audit_checked: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "backups": self.backups, "objects": self.objects,
            "bytes_read": self.bytes_read, "seconds": self.seconds, "read_data": self.read_data,
            "audit_checked": self.audit_checked,
            "problems": [p.as_dict() for p in self.problems], "notes": list(self.notes),
        }  # fmt: skip


def _noop(stage: str, name: str, done: int, total: int) -> None:
    return None


def check_chain(chain: Chain) -> list[Problem]:
    """Manifests and their links (see the module docstring)."""
    problems: list[Problem] = []
    for key in chain.odd_keys:
        problems.append(Problem("stray_key", key, f"{key} is not a manifest or tombstone name "
                                "clinipipe writes (placed by hand?)"))  # fmt: skip
    by_seq: dict[int, list[Stored]] = defaultdict(list)
    for m in chain.manifests:
        by_seq[m.seq].append(m)
        if m.actual != m.digest:
            problems.append(Problem("manifest_damaged", m.key,
                                    f"manifest {m.key} was changed: its bytes no longer hash to "
                                    "its name", (m.id,)))  # fmt: skip
        elif m.manifest is None:
            problems.append(
                Problem(
                    "manifest_unreadable",
                    m.key,
                    f"manifest {m.key} is not a readable manifest",
                    (m.id,),
                )
            )
        elif m.manifest.seq != m.seq:
            problems.append(
                Problem(
                    "manifest_damaged",
                    m.key,
                    f"manifest {m.key} says seq {m.manifest.seq}",
                    (m.id,),
                )
            )
    tomb = {t.seq: t for t in chain.tombstones}
    for seq, group in sorted(by_seq.items()):
        if len(group) > 1:
            names = ", ".join(g.key for g in group)
            problems.append(Problem("fork", group[1].key,
                                    f"two manifests have seq {seq} ({names}): the chain forked",
                                    tuple(g.id for g in group)))  # fmt: skip
    for seq, group in sorted(by_seq.items()):
        for m in group:
            if m.manifest is None or m.actual != m.digest:
                continue
            link = m.manifest.prev_manifest
            if seq == 1:
                if link != GENESIS:
                    problems.append(Problem("manifest_link", m.key,
                                            f"manifest {m.key} is the first but links to a "
                                            "previous manifest", (m.id,)))  # fmt: skip
                continue
            below = by_seq.get(seq - 1, [])
            if below:
                if link not in {b.digest for b in below}:
                    problems.append(
                        Problem(
                            "manifest_link",
                            below[0].key,
                            f"manifest {below[0].key} is not the one {m.key} was chained to "
                            f"(expected hash {link[:16]}…): it was replaced",
                            (m.id, below[0].id),
                        )
                    )
                continue
            t = tomb.get(seq - 1)
            if t is not None and t.digest == link:
                continue
            missing = manifest_key(seq - 1, link)
            problems.append(Problem(
                "manifest_missing", missing,
                f"manifest {missing} is missing: {m.key} links to it and no prune recorded "
                "its deletion", (m.id,)))  # fmt: skip
    return problems


def _rows_in_parquet(path: Path, method: str = "", key: str | None = None) -> int:
    """Rows of the object at `path` (fingerprint method `method`; an encrypted one is read
    with the warehouse key `key`, `TargetError` naming the key id it needs without it)."""
    if key_id_of(method) is not None:
        return encrypted_parquet_rows(path, key, method)
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def verify_store(
    store: Store,
    *,
    backup_id: str | None = None,
    read_data: bool = False,
    audit_entries: Sequence[AuditEntry] | None = None,
    progress: Progress | None = None,
    encryption_key: str | None = None,
) -> VerifyReport:
    """Check the store (every backup, or `backup_id` and its link) and return what is wrong.
    `encryption_key`: the warehouse key, to count the rows of encrypted objects."""
    progress = progress or _noop
    started = time.monotonic()
    report = VerifyReport(read_data=read_data)
    chain = load_chain(store)
    problems = check_chain(chain)
    chosen = chain.manifests
    if backup_id is not None:
        one = chain.find(backup_id)
        chosen = [one]
        problems = [p for p in problems if one.id in p.backups or p.key == one.key]
    report.backups = len(chosen)
    # objects: each checked once, problems name every backup that uses it
    uses: dict[str, list[tuple[str, int, int, str, str]]] = defaultdict(list)
    for m in chosen:
        if m.manifest is None or not m.intact:
            continue
        for t in m.manifest.tables:
            uses[t.object].append((m.id, t.bytes, t.rows, t.name, t.fingerprint_method))
    listing = store.list(OBJECTS)
    skipped_encrypted = 0
    total = len(uses)
    for i, (digest, users) in enumerate(sorted(uses.items())):
        key = object_key(digest)
        backups = tuple(sorted({u[0] for u in users}))
        tables = ", ".join(sorted({u[3] for u in users}))
        size, rows, method = users[0][1], users[0][2], users[0][4]
        progress("verify", tables, i, total)
        found = listing.get(key)
        if found is None:
            problems.append(
                Problem("object_missing", key, f"object {key} ({tables}) is missing", backups)
            )
            continue
        if found != size:
            problems.append(Problem("object_size", key,
                                    f"object {key} ({tables}) has {found:,} bytes, the manifest "
                                    f"says {size:,}", backups))  # fmt: skip
            continue
        local = store.local_path(key)
        if read_data:
            problem, read = _check_bytes(store, key, digest, rows, tables, backups, local,
                                         method, encryption_key)  # fmt: skip
            report.bytes_read += read
            if problem is not None:
                problems.append(problem)
        elif local is not None and key_id_of(method) is not None and encryption_key is None:
            skipped_encrypted += 1
        elif local is not None:
            try:
                n = _rows_in_parquet(local, method, encryption_key)
            except TargetError as exc:
                problems.append(Problem("object_unreadable", key, f"object {key} ({tables}): "
                                        f"{exc}", backups))  # fmt: skip
                continue
            except Exception:
                problems.append(Problem("object_unreadable", key,
                                        f"object {key} ({tables}) is not a readable Parquet "
                                        "file", backups))  # fmt: skip
                continue
            if n != rows:
                problems.append(Problem("row_count", key,
                                        f"object {key} ({tables}) holds {n:,} rows, the manifest "
                                        f"says {rows:,}", backups))  # fmt: skip
    progress("verify", "", total, total)
    report.objects = total
    if skipped_encrypted:
        report.notes.append(f"{skipped_encrypted} encrypted object(s) not row-counted: no key "
                            "(set the spec's target.encryption_key_env variable)")  # fmt: skip
    if not read_data and store.local_path(OBJECTS) is None:
        report.notes.append("objects checked for presence and size only: --read-data rehashes "
                            "them and checks their row counts")  # fmt: skip
    if audit_entries is not None:
        report.audit_checked = True
        a_problems, a_notes = cross_check(chain, audit_entries)
        problems.extend(a_problems)
        report.notes.extend(a_notes)
    report.problems = problems
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _check_bytes(store: Store, key: str, digest: str, rows: int, tables: str,
                 backups: tuple[str, ...], local: Path | None, method: str = "",
                 encryption_key: str | None = None) -> tuple[Problem | None, int]:  # fmt: skip
    """Rehash `key` and count its Parquet rows (S3: through a temporary copy)."""
    h = hashlib.sha256()
    read = 0
    with tempfile.TemporaryDirectory(prefix="clinipipe-verify-") as tmp:
        copy = Path(tmp) / "object"
        try:
            with store.open(key) as src, contextlib.ExitStack() as stack:
                sink = None if local is not None else stack.enter_context(open(copy, "wb"))
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    read += len(chunk)
                    if sink is not None:
                        sink.write(chunk)
        except StoreError:
            return Problem("object_missing", key, f"object {key} ({tables}) is missing",
                           backups), read  # fmt: skip
        if h.hexdigest() != digest:
            return Problem("object_damaged", key,
                           f"object {key} ({tables}) is damaged: its bytes no longer hash to "
                           "its name", backups), read  # fmt: skip
        try:
            n = _rows_in_parquet(local if local is not None else copy, method, encryption_key)
        except TargetError as exc:
            return Problem("object_unreadable", key, f"object {key} ({tables}): {exc}",
                           backups), read  # fmt: skip
        except Exception:
            return Problem("object_unreadable", key,
                           f"object {key} ({tables}) is not a readable Parquet file",
                           backups), read  # fmt: skip
    if n != rows:
        return Problem("row_count", key, f"object {key} ({tables}) holds {n:,} rows, the "
                       f"manifest says {rows:,}", backups), read  # fmt: skip
    return None, read


def cross_check(chain: Chain, entries: Sequence[AuditEntry]) -> tuple[list[Problem], list[str]]:
    """Backups against the audit log: (problems, notes). See the module docstring."""
    problems: list[Problem] = []
    notes: list[str] = []
    by_seq = {e.seq: e for e in entries}
    for m in chain.manifests:
        if m.manifest is None or not m.intact:
            continue
        head = m.manifest.audit_head
        seq = int(head.get("seq", 0))
        if seq == 0:
            continue
        entry = by_seq.get(seq)
        where = f"_clinipipe.audit_log seq {seq}"
        if entry is None:
            problems.append(Problem("audit_missing", where,
                                    f"audit entry {seq}, the log's head when backup {m.id} was "
                                    "taken, is gone: the audit log was cut or rewritten",
                                    (m.id,)))  # fmt: skip
        elif entry.entry_hash != head.get("hash"):
            problems.append(
                Problem(
                    "audit_mismatch",
                    where,
                    f"audit entry {seq} no longer has the hash backup {m.id} "
                    "recorded: the audit log was rewritten",
                    (m.id,),
                )
            )
    in_store = {m.digest for m in chain.manifests} | {t.digest for t in chain.tombstones}
    logged = set()
    for e in entries:
        if e.action != "backup create" or not isinstance(e.detail, dict):
            continue
        digest = str(e.detail.get("manifest", ""))
        logged.add(digest)
        if digest and digest not in in_store:
            key = str(e.detail.get("key") or digest)
            problems.append(
                Problem(
                    "manifest_missing",
                    key,
                    f"manifest {key} is missing: audit entry {e.seq} recorded "
                    "the backup and no prune recorded its deletion",
                )
            )
    for m in chain.manifests:
        if m.digest not in logged and m.intact:
            notes.append(
                f"backup {m.id} has no `backup create` entry in the audit log (a crash "
                "right after it was written, or taken with another warehouse)"
            )
    return problems, notes


def verify_chain_only(store: Store) -> list[Problem]:
    """The manifest chain alone (no objects): cheap, for `audit verify`."""
    return check_chain(load_chain(store))
