"""The audit trail: an append-only, hash-chained log in the warehouse (`_clinipipe.audit_log`).

Each entry holds ``seq`` (1, 2, 3, ... without gaps), ``logged_at`` (UTC), ``actor`` (the OS
user that ran clinipipe), ``action`` (e.g. ``redact``), ``object`` (what it acted on, e.g. a
schema), ``detail`` (a JSON document), ``prev_hash`` (the previous entry's hash; 64 zeros for the
first) and ``entry_hash = sha256(prev_hash + canonical record)``, where the canonical record is
the JSON of ``{seq, logged_at, actor, action, object, detail}`` with sorted keys, no blanks and
``logged_at`` as ISO-8601 UTC with microseconds (`canonical_record`).

Guarantees:

* **Tamper-evident, not tamper-proof.** `verify` recomputes every hash from the stored columns:
  changing, deleting or inserting an entry anywhere breaks the chain at that entry (and
  reports the first bad ``seq``). Someone able to rewrite the *whole* table from the altered
  entry on can produce a valid-looking chain; anchoring the latest ``entry_hash`` outside the
  warehouse (the WORM backups of a later issue keep it in their manifests) detects that too.
* **Append-only by construction.** Entries are only ever inserted, one at a time, with the next
  ``seq``; nothing in clinipipe updates or deletes them. ``seq`` is the primary key on DuckDB,
  and the insert is conditional on the chain's head still being the one read, so two writers
  can never fork the chain: one of them fails and retries on the new head.
* **Atomic with the work it records** when the caller passes the statements to its own
  transaction (`entry_statements`); `record` appends one entry on its own.
* **No PHI, no secrets.** `detail` must be JSON of plain values; callers put only names,
  counts, policies and versions in it (a redaction manifest lists columns and treatments, never
  values). `check_detail` refuses anything but JSON scalars, lists and string-keyed objects.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.base import TargetError

if TYPE_CHECKING:
    from clinipipe.targets.base import Target

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "VerifyResult",
    "canonical_record",
    "entries",
    "entry_statements",
    "record",
    "verify",
]

GENESIS_HASH = "0" * 64
TABLE = "audit_log"
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    logged_at: dt.datetime
    actor: str
    action: str
    object: str
    detail: dict[str, Any]
    prev_hash: str
    entry_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "logged_at": _timestamp(self.logged_at),
            "actor": self.actor,
            "action": self.action,
            "object": self.object,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }


@dataclass(frozen=True)
class VerifyResult:
    """`ok` when every entry's hash and link check out; else the first bad entry and why."""

    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str | None = None


def _timestamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def check_detail(detail: Any, path: str = "detail") -> None:
    """Raise ValueError unless `detail` is plain JSON (no objects that could print a value)."""
    if detail is None or isinstance(detail, bool | int | float | str):
        return
    if isinstance(detail, list | tuple):
        for i, item in enumerate(detail):
            check_detail(item, f"{path}[{i}]")
        return
    if isinstance(detail, Mapping):
        for key, item in detail.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: keys must be strings")
            check_detail(item, f"{path}.{key}")
        return
    raise ValueError(f"{path}: {type(detail).__name__} is not plain JSON")


def canonical_record(
    seq: int, logged_at: dt.datetime, actor: str, action: str, obj: str, detail: Any
) -> str:
    """The text an entry's hash covers (see the module docstring)."""
    return _dumps(
        {
            "seq": seq,
            "logged_at": _timestamp(logged_at),
            "actor": actor,
            "action": action,
            "object": obj,
            "detail": detail,
        }
    )


def entry_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd entry)
        return "unknown"


def _require_table(target: Target) -> str:
    if not target.table_exists(CONTROL_SCHEMA, TABLE):
        raise TargetError(
            f"{target.describe()} has no audit log ({CONTROL_SCHEMA}.{TABLE}): run "
            "`clinipipe deploy` first"
        )
    return target.control(TABLE)


def _head(target: Target) -> tuple[int, str]:
    table = _require_table(target)
    rows = target.query(f"SELECT seq, entry_hash FROM {table} ORDER BY seq DESC LIMIT 1")
    return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)


def entry_statements(
    target: Target, action: str, obj: str, detail: Mapping[str, Any]
) -> tuple[list[str], AuditEntry]:
    """The statements that append one entry after the current head, for the caller's own
    transaction (run them, with its other work, in one transaction). The INSERT adds a row only
    if the head is still the one read now; `record` checks and retries, a caller running them
    itself should check with `head_is` after committing."""
    check_detail(detail)
    seq, prev = _head(target)
    seq += 1
    now = dt.datetime.now(dt.timezone.utc)
    actor = _actor()
    detail = json.loads(_dumps(detail))
    digest = entry_hash(prev, canonical_record(seq, now, actor, action, obj, detail))
    q = target.dialect.quote_literal
    table = target.control(TABLE)
    statement = (
        f"INSERT INTO {table} (seq, logged_at, actor, action, object, detail, prev_hash, "
        f"entry_hash) SELECT {seq}, {q(_timestamp(now))}, {q(actor)}, "
        f"{q(action)}, {q(obj)}, {q(_dumps(detail))}, {q(prev)}, {q(digest)} "
        f"WHERE (SELECT COALESCE(MAX(seq), 0) FROM {table}) = {seq - 1}"
    )
    entry = AuditEntry(seq, now, actor, action, obj, detail, prev, digest)
    return [statement], entry


def head_is(target: Target, entry: AuditEntry) -> bool:
    """True when `entry` is in the log (its seq holds its hash)."""
    rows = target.query(
        f"SELECT entry_hash FROM {target.control(TABLE)} WHERE seq = {int(entry.seq)}"
    )
    return bool(rows) and str(rows[0][0]) == entry.entry_hash


def record(target: Target, action: str, obj: str, detail: Mapping[str, Any]) -> AuditEntry:
    """Append one entry (its own transaction) and return it. Retries when another writer
    appended in between; raises `TargetError` when it cannot."""
    for _ in range(MAX_ATTEMPTS):
        statements, entry = entry_statements(target, action, obj, detail)
        target.execute_atomically(statements)
        if head_is(target, entry):
            return entry
    raise TargetError(f"could not append to the audit log after {MAX_ATTEMPTS} attempts")


def entries(target: Target, *, since: int = 0) -> list[AuditEntry]:
    """Every entry with seq > `since`, in order."""
    table = _require_table(target)
    rows = target.query(
        "SELECT seq, logged_at, actor, action, object, detail, prev_hash, entry_hash "
        f"FROM {table} WHERE seq > {int(since)} ORDER BY seq"
    )
    out = []
    for seq, at, actor, action, obj, detail, prev, digest in rows:
        if isinstance(at, str):
            at = dt.datetime.fromisoformat(at)
        parsed = json.loads(detail) if detail else None
        out.append(AuditEntry(int(seq), at, actor, action, obj, parsed, prev, digest))
    return out


def verify(target: Target) -> VerifyResult:
    """Recompute the chain from the first entry; report the first entry that does not fit."""
    previous, expected_seq = GENESIS_HASH, 1
    listed = entries(target)
    for entry in listed:
        problem = None
        if entry.seq != expected_seq:
            problem = f"expected entry {expected_seq} here, found {entry.seq} (missing entries)"
        elif entry.prev_hash != previous:
            problem = "its prev_hash is not the previous entry's hash (an entry was removed or "
            problem += "changed before it)"
        else:
            canonical = canonical_record(
                entry.seq, entry.logged_at, entry.actor, entry.action, entry.object, entry.detail
            )
            if entry_hash(previous, canonical) != entry.entry_hash:
                problem = "its content does not match its hash (the entry was changed)"
        if problem is not None:
            return VerifyResult(False, len(listed), previous, entry.seq, problem)
        previous, expected_seq = entry.entry_hash, expected_seq + 1
    return VerifyResult(True, len(listed), previous)
