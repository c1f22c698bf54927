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
  A failure is recorded by its exception class only (`failure_detail`), never its message.

How state-changing commands record themselves (`audited`, `record_failure`, `AuditNotRecorded`):

* **One entry per run, after the work.** The command checks that the log exists before it
  changes anything (`require`: a warehouse deployed before the log existed is told to run
  `clinipipe deploy`, which adds it, and nothing is done unaudited); its own work commits
  first, then its entry is appended (outcome ``ok``, or ``failed`` when it reports a failure
  itself, e.g. a FAILED refresh).
* **Refusals are not recorded; failures are.** A command refused before it changed anything (a
  usage error, an unknown table, a missing backfill) appends nothing. One that failed or was
  interrupted after it began appends outcome ``failed`` with the error's class and what it
  had done (counts), if the warehouse can still be written; the original error is always the
  one raised (an append that fails then is only warned about).
* **An append that fails after successful work** raises `AuditNotRecorded` (a `TargetError`:
  exit 1) saying the work was done and committed but is not in the audit log. It is never
  silently dropped, and never disguised as a failure of the work itself.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clinipipe.secrets import first_line, scrub_values
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.base import TargetError

if TYPE_CHECKING:
    from clinipipe.targets.base import Target

__all__ = [
    "FAILED",
    "GENESIS_HASH",
    "OK",
    "AuditEntry",
    "AuditNotRecorded",
    "AuditRun",
    "VerifyResult",
    "append",
    "audited",
    "canonical_record",
    "entries",
    "entry_statements",
    "failure_detail",
    "record",
    "record_deploy",
    "record_failure",
    "record_outcome",
    "require",
    "verify",
    "verify_entries",
]

GENESIS_HASH = "0" * 64
TABLE = "audit_log"
MAX_ATTEMPTS = 5
OK = "ok"
FAILED = "failed"

log = logging.getLogger("clinipipe.audit")


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


def append(
    target: Target,
    command: str,
    *,
    objects: Sequence[str] = (),
    counts: Mapping[str, int | float] | None = None,
    outcome: str = "ok",
    spec_digest: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Record that `command` (e.g. ``"deploy"``, ``"cdc start"``, ``"backup prune"``) ran: the
    objects it changed (schemas, tables, backup ids), its counts, its outcome and the digest of
    the spec it ran with. Time and OS user are added by `record`. One call per state-changing
    command, after its work committed (or failed: ``outcome="failed"``). Names and numbers
    only, never row values (`check_detail` refuses anything but plain JSON)."""
    body: dict[str, Any] = {"outcome": outcome, "objects": list(objects)}
    if counts:
        body["counts"] = dict(counts)
    if spec_digest is not None:
        body["spec_digest"] = spec_digest
    if detail:
        body.update(detail)
    obj = ", ".join(objects)
    if len(obj) > 200:
        obj = obj[:197] + "..."
    return record(target, command, obj, body)


def head(target: Target) -> tuple[int, str]:
    """(seq, entry_hash) of the newest entry; (0, GENESIS_HASH) for an empty log."""
    return _head(target)


# --- recording a command's run (see "How state-changing commands record themselves") --------


class AuditNotRecorded(TargetError):
    """A command's work is done and committed, but its audit entry could not be appended.
    The message says what was done and why it is not in the log (exit 1, as a `TargetError`)."""


def require(target: Target) -> None:
    """Raise `TargetError` (naming `clinipipe deploy`, which adds the table) unless the audit
    log exists. A state-changing command calls it before it changes anything."""
    _require_table(target)


def failure_detail(error: BaseException) -> dict[str, Any]:
    """What an entry says about a failure: the exception's class only (its message could quote
    a value)."""
    return {"error": type(error).__name__}


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {scrub_values(first_line(exc))}"


def record_outcome(
    target: Target,
    command: str,
    *,
    objects: Sequence[str] = (),
    counts: Mapping[str, int | float] | None = None,
    outcome: str = OK,
    spec_digest: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """`append` for a command whose work has committed. Raises `AuditNotRecorded` (saying the
    work was done but is not audited) when the entry cannot be appended."""
    try:
        return append(target, command, objects=objects, counts=counts, outcome=outcome,
                      spec_digest=spec_digest, detail=detail)  # fmt: skip
    except Exception as exc:
        raise AuditNotRecorded(
            f"`{command}` finished (outcome {outcome}) and its work is committed, but it could "
            f"not be recorded in the audit log ({_why(exc)}): this run is NOT in "
            f"{CONTROL_SCHEMA}.{TABLE}. Fix the cause (`clinipipe deploy` adds a missing audit "
            "log); the work itself need not be run again"
        ) from None


def record_failure(
    target: Target,
    command: str,
    error: BaseException,
    *,
    objects: Sequence[str] = (),
    counts: Mapping[str, int | float] | None = None,
    spec_digest: str | None = None,
    detail: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> AuditEntry | None:
    """Append outcome ``failed`` (with `error`'s class, `failure_detail`) for `command`, which
    raised `error` after it began changing state. Never raises, so the caller re-raises
    `error` unchanged: when the entry cannot be appended (the warehouse may be what failed) it
    warns (`warn`, else the ``clinipipe.audit`` logger) and returns None."""
    body = {**(detail or {}), **failure_detail(error)}
    try:
        return append(target, command, objects=objects, counts=counts, outcome=FAILED,
                      spec_digest=spec_digest, detail=body)  # fmt: skip
    except Exception as exc:
        message = (
            f"warning: `{command}` failed ({type(error).__name__}) and the failure could not be "
            f"recorded in the audit log either ({_why(exc)})"
        )
        (warn or log.warning)(message)
        return None


@dataclass
class AuditRun:
    """What `audited` records, filled in by the command as it runs."""

    objects: list[str] = field(default_factory=list)
    counts: dict[str, int | float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    outcome: str = OK
    """``ok``, or ``failed`` when the command reports a failure without raising."""
    began: bool = True
    """False while the command only checks: an exception then is a refusal (nothing recorded).
    Set it True before the first change."""
    entry: AuditEntry | None = None
    """The entry appended, once the block is left."""


@contextmanager
def audited(
    target: Target,
    command: str,
    *,
    spec_digest: str | None = None,
    objects: Sequence[str] = (),
    began: bool = True,
    refused: Callable[[BaseException], bool] = lambda _: False,
    require_log: bool = True,
    warn: Callable[[str], None] | None = None,
) -> Iterator[AuditRun]:
    """Record one run of `command` on `target` when the block is left:

    * first (`require_log`) the log must exist, before the block changes anything;
    * the block completes: one entry with the `AuditRun`'s objects, counts, detail and outcome,
      after the block's work (which must have committed); `AuditNotRecorded` if it cannot be
      appended (`record_outcome`);
    * the block raises: when it had begun changing state (`AuditRun.began`) and the error is not
      a refusal (`refused(error)` False), one ``failed`` entry with what the run had filled in
      and the error's class (`record_failure`: never masks the error); then the error goes on.
    """
    if require_log:
        require(target)
    run = AuditRun(list(objects), began=began)
    try:
        yield run
    except GeneratorExit:
        raise
    except BaseException as exc:
        if run.began and not refused(exc):
            run.entry = record_failure(
                target, command, exc, objects=run.objects, counts=run.counts,
                spec_digest=spec_digest, detail=run.detail, warn=warn,
            )  # fmt: skip
        raise
    run.entry = record_outcome(
        target, command, objects=run.objects, counts=run.counts, outcome=run.outcome,
        spec_digest=spec_digest, detail=run.detail,
    )  # fmt: skip


def record_deploy(
    target: Target,
    *,
    spec_digest: str,
    templates: Sequence[str],
    statements: int,
    changes: int = 0,
    deployment_id: str | None = None,
) -> AuditEntry:
    """The ``deploy`` entry: the templates applied (names), the statements run and the object
    changes applied, under the spec's digest. `clinipipe.pipeline.deploy.deploy` calls it on
    its open target right after `apply_deployment` (which creates the log on a first deploy,
    so it exists here). A deploy with nothing to do changes nothing and records nothing; a
    failed deploy is not recorded (on a first deploy there is no log yet). `AuditNotRecorded`
    when the append fails."""
    return record_outcome(
        target, "deploy", objects=list(templates), spec_digest=spec_digest,
        counts={"templates": len(templates), "statements": statements, "changes": changes},
        detail={"deployment_id": deployment_id} if deployment_id else None,
    )  # fmt: skip


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
    return verify_entries(entries(target))


def verify_entries(listed: Sequence[AuditEntry]) -> VerifyResult:
    """`verify` over entries already read (in seq order)."""
    previous, expected_seq = GENESIS_HASH, 1
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
