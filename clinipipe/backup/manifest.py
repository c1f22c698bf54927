"""Backup manifests and their chain.

A manifest is a small JSON document (canonical: sorted keys, no blanks, one trailing newline)
stored as ``manifests/<seq>-<sha256 of its bytes>.json``. It lists the backed-up tables (schema,
name, columns, row count, fingerprint, object hash and size), the source LSN (CDC checkpoint)
and the audit log's head at the snapshot, created_at, the retention policy, retain_until, and
``prev_manifest``: the SHA-256 of the previous manifest's bytes (64 zeros for the first). So:

* flipping any byte of a manifest makes its content disagree with its name;
* replacing a manifest (renamed to its new hash) breaks the next manifest's link;
* removing one from the middle leaves a seq gap that no tombstone explains;
* removing or replacing the newest one disagrees with the audit log, where each backup's
  entry records its manifest's hash (`clinipipe.backup.verify`).

`prune` deletes an expired manifest only after writing its tombstone
(``pruned/<seq>-<sha256>.json``: seq, hash, retain_until, policy, pruned_at), so the chain
stays checkable across pruned backups. Backup ids shown to people are ``<seq>-<12 hex>``;
any unique prefix of a manifest's name is accepted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clinipipe.backup.store import HOLDS, MANIFESTS, PRUNED, Store, StoreError

FORMAT = 1
GENESIS = "0" * 64
_NAME = re.compile(r"^(\d{6,})-([0-9a-f]{64})\.json$")


class BackupError(Exception):
    """A backup command could not do what was asked; the message says why and what to do.
    `usage` marks a wrong request (exit 2); otherwise a refusal or failure (exit 1)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def utc_text(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def canonical(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            + "\n").encode()  # fmt: skip


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TableEntry:
    schema: str
    table: str
    rows: int
    columns: tuple[tuple[str, str], ...]
    fingerprint: str
    fingerprint_method: str
    object: str
    """SHA-256 of the Parquet file's bytes (its key is `store.object_key(object)`)."""
    bytes: int

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "table": self.table, "rows": self.rows,
            "columns": [list(c) for c in self.columns], "fingerprint": self.fingerprint,
            "fingerprint_method": self.fingerprint_method, "object": self.object,
            "bytes": self.bytes,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableEntry:
        return cls(
            str(d["schema"]), str(d["table"]), int(d["rows"]),
            tuple((str(n), str(t)) for n, t in d["columns"]), str(d["fingerprint"]),
            str(d["fingerprint_method"]), str(d["object"]), int(d["bytes"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    seq: int
    created_at: str
    retain_until: str
    prev_manifest: str
    policy: dict[str, Any]
    """name, retention_days, lock."""
    pipeline: str
    target: str
    spec_digest: str
    source_lsn: str | None
    audit_head: dict[str, Any]
    """{"seq": n, "hash": entry_hash} of the audit log when the snapshot was taken."""
    tables: tuple[TableEntry, ...] = ()
    native: tuple[dict[str, Any], ...] = ()
    """Snowflake: the backup set and identifier of each native backup."""
    clinipipe_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "seq": self.seq, "created_at": self.created_at,
            "retain_until": self.retain_until, "prev_manifest": self.prev_manifest,
            "policy": self.policy, "pipeline": self.pipeline, "target": self.target,
            "spec_digest": self.spec_digest, "source_lsn": self.source_lsn,
            "audit_head": self.audit_head, "tables": [t.as_dict() for t in self.tables],
            "native": list(self.native), "clinipipe_version": self.clinipipe_version,
        }  # fmt: skip

    def encode(self) -> bytes:
        return canonical(self.as_dict())

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Raises ValueError when `data` is not a manifest of a known format."""
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("not a clinipipe manifest of format 1")
        return cls(
            int(d["seq"]), str(d["created_at"]), str(d["retain_until"]),
            str(d["prev_manifest"]), dict(d["policy"]), str(d["pipeline"]), str(d["target"]),
            str(d["spec_digest"]), d["source_lsn"], dict(d["audit_head"]),
            tuple(TableEntry.from_dict(t) for t in d["tables"]),
            tuple(dict(n) for n in d.get("native", [])), str(d.get("clinipipe_version", "")),
        )  # fmt: skip

    @property
    def retain_until_at(self) -> dt.datetime:
        return parse_utc(self.retain_until)

    @property
    def locked(self) -> bool:
        return bool(self.policy.get("lock"))


def manifest_key(seq: int, digest: str) -> str:
    return f"{MANIFESTS}{seq:06d}-{digest}.json"


def short_id(seq: int, digest: str) -> str:
    return f"{seq:06d}-{digest[:12]}"


@dataclass(frozen=True)
class Stored:
    """A manifest as found in the store."""

    key: str
    seq: int
    digest: str
    """The hash its name claims (`actual` is the hash of its bytes)."""
    actual: str
    manifest: Manifest | None
    """None when the bytes are not a readable manifest."""

    @property
    def id(self) -> str:
        return short_id(self.seq, self.digest)

    @property
    def stem(self) -> str:
        return self.key.rsplit("/", 1)[1].removesuffix(".json")

    @property
    def intact(self) -> bool:
        return self.actual == self.digest and self.manifest is not None and \
            self.manifest.seq == self.seq  # fmt: skip


@dataclass(frozen=True)
class Tombstone:
    key: str
    seq: int
    digest: str
    data: dict[str, Any]


@dataclass
class Chain:
    """Everything the store holds about its backups, read once."""

    manifests: list[Stored] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Hold records by manifest stem (``<seq>-<sha256>``)."""
    odd_keys: list[str] = field(default_factory=list)
    """Keys under manifests/ or pruned/ whose names are not ``<seq>-<sha256>.json``."""

    @property
    def head_seq(self) -> int:
        seqs = [m.seq for m in self.manifests] + [t.seq for t in self.tombstones]
        return max(seqs, default=0)

    def head(self) -> Stored | Tombstone | None:
        """The newest backup (a manifest, or the tombstone of a pruned one)."""
        seq = self.head_seq
        if seq == 0:
            return None
        live = [m for m in self.manifests if m.seq == seq]
        if live:
            return live[0]
        return next(t for t in self.tombstones if t.seq == seq)

    def intact(self) -> list[Stored]:
        return sorted((m for m in self.manifests if m.intact), key=lambda m: m.seq)

    def held(self, stored: Stored) -> dict[str, Any] | None:
        return self.holds.get(stored.stem)

    def find(self, backup_id: str) -> Stored:
        """The manifest `backup_id` names (a unique prefix of ``<seq>-<sha256>``, or a seq)."""
        wanted = backup_id.strip().removesuffix(".json")
        if wanted.isdigit() and len(wanted) < 6:
            wanted = f"{int(wanted):06d}-"
        matches = [m for m in self.manifests if m.stem.startswith(wanted)]
        if not matches:
            raise BackupError(f"no backup {backup_id!r} (see `clinipipe backup list`)",
                              usage=True)  # fmt: skip
        if len(matches) > 1:
            raise BackupError(f"backup id {backup_id!r} is ambiguous: give more of it",
                              usage=True)  # fmt: skip
        return matches[0]


def load_chain(store: Store) -> Chain:
    """Read every manifest, tombstone and hold record of `store`."""
    chain = Chain()
    for key in sorted(store.list(MANIFESTS)):
        match = _NAME.match(key[len(MANIFESTS) :])
        if match is None:
            chain.odd_keys.append(key)
            continue
        try:
            data = store.get_bytes(key)
        except StoreError:
            continue  # removed meanwhile
        manifest: Manifest | None
        try:
            manifest = Manifest.decode(data)
        except (ValueError, KeyError, TypeError):
            manifest = None
        chain.manifests.append(
            Stored(key, int(match.group(1)), match.group(2), sha256(data), manifest)
        )
    for key in sorted(store.list(PRUNED)):
        match = _NAME.match(key[len(PRUNED) :])
        if match is None:
            chain.odd_keys.append(key)
            continue
        try:
            data = json.loads(store.get_bytes(key))
        except (StoreError, ValueError):
            data = {}
        chain.tombstones.append(Tombstone(key, int(match.group(1)), match.group(2), data))
    for key in sorted(store.list(HOLDS)):
        stem = key[len(HOLDS) :].removesuffix(".json")
        try:
            chain.holds[stem] = json.loads(store.get_bytes(key))
        except (StoreError, ValueError):
            chain.holds[stem] = {"reason": "(unreadable hold record: treated as held)"}
    return chain
