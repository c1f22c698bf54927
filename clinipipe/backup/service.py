"""`clinipipe backup`: create, list, restore, prune, delete and legal holds over a `Store`.

Every function takes the loaded spec; those that change state also take the open target (the
audit log lives there) and append one audit entry after their work. `create_backup` is what
a running `cdc start` calls with its own open target when asked over its control socket
(`REQUESTS` maps each request name to its handler: ``op(loaded, target, params, progress)``
returns JSON-able data).

Guarantees:

* **Consistent.** One backup is one snapshot of the warehouse (`Backup.export_tables`: one
  read-only transaction), including the CDC checkpoint (source LSN) and the audit head. A
  warehouse that backs up natively (`Backup.backs_up_natively`) takes the snapshot itself; the
  manifest then records its backup identifiers, and delete and legal holds act on them too.
* **Crash-safe.** Objects first (each fsync-ed, linked into place, read-only), then the
  manifest, then the audit entry. A crash leaves objects no manifest names (removed by the
  next prune) or a manifest without its audit entry (`verify` notes it); never a manifest
  naming a missing object.
* **Deduplicated.** A table whose fingerprint and columns equal those of the newest backup
  holding it is not exported again: the new manifest names the same object (whose retention
  is extended to the new retain_until). Parquet files differ in bytes from run to run (row
  group order under threads, writer metadata), so dedupe is on the warehouse fingerprint,
  not on the bytes; identical bytes are still stored once (content-addressed names).
* **Retention.** retain_until = created_at + backup.retention_days, written in the manifest
  and so unchangeable. With the lock (`backup.retention_lock`, spelled `lock:` too), nothing
  clinipipe does removes a backup before then, and a spec asking for a shorter retention (or
  no lock) than the newest backup's locked policy is refused. A legal hold blocks deletion
  with no expiry until removed. Refusals raise `BackupError` (exit 1).
* **Restore** never writes over a live table unless asked to replace, and checks the row
  count and fingerprint of every table it loads (all tables in one transaction).
* **Metered.** A backup and a restore into a schema each write one metering row (job
  ``backup:<id>`` / ``restore:<id>``; rows; bytes written or restored; the calling thread's CPU)
  after their audit entry, in their own transaction: the work is in the store, not in a
  warehouse transaction, so a crash between the two leaves a backup without its metering row,
  never the reverse. They are metered on the ``incremental`` warehouse: a backup reads through
  the connection the command (or the CDC loop) already holds, which runs on the incremental
  warehouse (refresh and publish leave it there), not on the initialization warehouse sized
  for the one-off backfill. A restore into a folder uses no warehouse and is not metered.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinipipe import __version__
from clinipipe.backup import audit
from clinipipe.backup.manifest import (
    GENESIS,
    BackupError,
    Chain,
    Manifest,
    Stored,
    TableEntry,
    canonical,
    load_chain,
    manifest_key,
    sha256,
    short_id,
    utc_text,
)
from clinipipe.backup.store import (
    CHUNK,
    HOLDS,
    OBJECTS,
    PRUNED,
    LocalStore,
    Store,
    StoreError,
    object_key,
)
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.capabilities.backup import (
    NativeBackup,
    RestoredTable,
    RestoreFile,
    TableRef,
)
from clinipipe.targets.metering import CpuClock, MeteringRow

if TYPE_CHECKING:
    from clinipipe.targets.base import Target

Progress = Callable[[str, str, int, int], None]
"""Called with (stage, item name, done, total) as work advances (for progress bars)."""


def _noop(stage: str, name: str, done: int, total: int) -> None:
    return None


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def open_store(loaded: LoadedSpec) -> Store:
    """The store `backup.store` names: ``s3://bucket/prefix``, else a local folder (relative
    to the spec)."""
    where = loaded.spec.backup.store
    if where.startswith("s3://"):
        from clinipipe.backup.s3 import S3Store

        return S3Store(where)
    return LocalStore(loaded.resolve(where))


def backup_encryption_key(loaded: LoadedSpec) -> str | None:
    """The key of an encrypted DuckDB warehouse (whose backups are encrypted with a key derived
    from it), or None: no encryption asked, or its variable not set (`verify` then says which
    objects it could not read). Never printed."""
    from clinipipe.secrets import environment

    variable = getattr(loaded.spec.target, "encryption_key_env", None)
    if not variable:
        return None
    return environment(loaded.directory).get(variable) or None


def hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _split(values: Iterable[str] | None) -> list[str]:
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


# --- create ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupOptions:
    schemas: tuple[str, ...] = ()
    """Schemas to back up (default: backup.schemas of the spec)."""
    tables: tuple[str, ...] = ()
    """Only these tables (``name`` or ``schema.name``)."""

    def as_params(self) -> dict[str, Any]:
        return {"schemas": list(self.schemas), "tables": list(self.tables)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BackupOptions:
        return cls(tuple(_split(params.get("schemas"))), tuple(_split(params.get("tables"))))


@dataclass(frozen=True)
class BackupResult:
    backup_id: str
    manifest: str
    """The manifest's key in the store."""
    seq: int
    created_at: str
    retain_until: str
    tables: list[dict[str, Any]]
    """name, rows, bytes, object, reused (True: unchanged since the last backup)."""
    objects_written: int
    bytes_written: int
    """Bytes of new objects plus the manifest: what this backup added to the store."""
    source_lsn: str | None
    audit_seq: int | None
    seconds: float
    store: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackupResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _policy(loaded: LoadedSpec) -> dict[str, Any]:
    b = loaded.spec.backup
    return {"name": b.policy_name, "retention_days": b.retention_days, "lock": b.retention_lock}


def check_policy(chain: Chain, policy: Mapping[str, Any]) -> None:
    """Refuse a spec whose retention would shorten the newest backup's locked policy."""
    head = chain.head()
    if head is None:
        return
    if isinstance(head, Stored):
        if head.manifest is None or not head.intact:
            raise BackupError(
                f"the newest backup's manifest {head.key} is damaged: run `clinipipe backup "
                "verify`; no backup was taken (it would chain onto a damaged manifest)"
            )
        previous = head.manifest.policy
        name = head.id
    else:
        previous = dict(head.data.get("policy") or {})
        name = short_id(head.seq, head.digest)
    if not previous.get("lock"):
        return
    days = int(previous.get("retention_days", 0))
    if not policy.get("lock"):
        raise BackupError(
            f"backup.retention_lock is off in the spec, but backup {name} was taken under a "
            f"locked retention of {days} days: a retention lock cannot be lifted (set "
            "retention_lock: true)"
        )
    if int(policy["retention_days"]) < days:
        raise BackupError(
            f"backup.retention_days is {policy['retention_days']} in the spec, but backup {name} "
            f"was taken under a locked retention of {days} days: a locked retention cannot be "
            f"shortened (set retention_days to {days} or more)"
        )


def _select_tables(target: Target, options: BackupOptions, default_schemas: Sequence[str]
                   ) -> list[TableRef]:  # fmt: skip
    schemas = list(options.schemas or default_schemas)
    wanted = list(options.tables)
    if wanted:
        schemas = sorted({*schemas, *(w.split(".", 1)[0] for w in wanted if "." in w)})
    found = target.exportable_tables(schemas)
    if not wanted:
        if not found:
            raise BackupError(
                f"nothing to back up: schema{'s' if len(schemas) != 1 else ''} "
                f"{', '.join(schemas)} hold no tables (deploy and load first, or pass --schemas)",
                usage=True,
            )
        return found
    chosen = []
    for w in wanted:
        hits = [r for r in found if str(r) == w or ("." not in w and r.table == w)]
        if not hits:
            raise BackupError(f"no table {w!r} in schema(s) {', '.join(schemas)}", usage=True)
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen)


def _reuse(chain: Chain, store: Store, method: str) -> dict[TableRef, TableEntry]:
    """The newest backed-up entry of each table whose object is still in the store."""
    present = store.list(OBJECTS)
    out: dict[TableRef, TableEntry] = {}
    for stored in chain.intact():
        assert stored.manifest is not None
        for entry in stored.manifest.tables:
            if entry.fingerprint_method == method and present.get(object_key(entry.object)) \
                    == entry.bytes:  # fmt: skip
                out[TableRef(entry.schema, entry.table)] = entry
    return out


def create_backup(
    loaded: LoadedSpec,
    target: Target,
    options: BackupOptions | None = None,
    *,
    progress: Progress | None = None,
    now: dt.datetime | None = None,
    store: Store | None = None,
) -> BackupResult:
    """Take one backup of the chosen tables of `target` (see the module docstring). Safe to
    call from the CDC loop's thread with its open target, between batches."""
    options = options or BackupOptions()
    progress = progress or _noop
    store = store or open_store(loaded)
    spec = loaded.spec
    started = time.monotonic()
    began, cpu = now_utc(), CpuClock()
    policy = _policy(loaded)
    if not target.table_exists("_clinipipe", audit.TABLE):
        raise BackupError(f"{target.describe()} has no audit log: run `clinipipe deploy` first")
    with store.lock():
        chain = load_chain(store)
        check_policy(chain, policy)
        head = chain.head()
        prev = GENESIS if head is None else head.digest
        seq = chain.head_seq + 1
        created = now or now_utc()
        retain_until = created + dt.timedelta(days=int(policy["retention_days"]))
        lock = bool(policy["lock"])
        q = target.dialect.quote_literal
        reads = [f"SELECT seq, entry_hash FROM {target.control(audit.TABLE)} "
                 "ORDER BY seq DESC LIMIT 1"]  # fmt: skip
        has_checkpoint = target.table_exists("_clinipipe", "cdc_checkpoints")
        if has_checkpoint:
            reads.append(f"SELECT lsn FROM {target.control('cdc_checkpoints')} "
                         f"WHERE slot = {q(spec.source.slot)}")  # fmt: skip
        entries: list[TableEntry] = []
        table_rows: list[dict[str, Any]] = []
        written = bytes_written = 0
        native: tuple[dict[str, Any], ...] = ()
        if target.backs_up_natively():
            answers = [target.query(sql) for sql in reads]
            native = _native_backups(loaded, target, options)
        else:
            tables = _select_tables(target, options, spec.backup.schemas)
            reuse = _reuse(chain, store, target.backup_fingerprint_method())
            known = {ref: e.fingerprint for ref, e in reuse.items()}
            with store.staging() as folder:
                snap = target.export_tables(
                    tables, folder, reuse=known, reads=reads,
                    on_table=lambda name, done, total: progress("snapshot", name, done, total),
                )  # fmt: skip
                answers = snap.reads
                for i, t in enumerate(snap.tables):
                    ref = t.ref
                    if t.path is None:  # same fingerprint (rows and layout) as before
                        old = reuse[ref]
                        digest, size, reused = old.object, old.bytes, True
                        if lock:
                            store.extend_retention(object_key(digest), retain_until)
                    else:
                        path = t.path
                        digest, size = hash_file(path)
                        reused = False
                        if store.put_file(object_key(digest), path, retain_until=retain_until,
                                          lock=lock):  # fmt: skip
                            written += 1
                            bytes_written += size
                        elif lock:
                            store.extend_retention(object_key(digest), retain_until)
                    entries.append(TableEntry(ref.schema, ref.table, t.rows, t.columns,
                                              t.fingerprint, snap.fingerprint_method, digest,
                                              size))  # fmt: skip
                    table_rows.append({"name": str(ref), "rows": t.rows, "bytes": size,
                                       "object": digest, "reused": reused})  # fmt: skip
                    progress("store", str(ref), i + 1, len(snap.tables))
        audit_rows = answers[0] if answers else []
        audit_head = ({"seq": int(audit_rows[0][0]), "hash": str(audit_rows[0][1])}
                      if audit_rows else {"seq": 0, "hash": audit.GENESIS_HASH})  # fmt: skip
        lsn = None
        if has_checkpoint and len(answers) > 1 and answers[1] and answers[1][0][0] is not None:
            from clinipipe.source.pgoutput import lsn_to_str

            lsn = lsn_to_str(int(answers[1][0][0]))
        manifest = Manifest(
            seq=seq, created_at=utc_text(created), retain_until=utc_text(retain_until),
            prev_manifest=prev, policy=policy, pipeline=spec.name, target=target.type,
            spec_digest=loaded.digest, source_lsn=lsn, audit_head=audit_head,
            tables=tuple(entries), native=native, clinipipe_version=__version__,
        )  # fmt: skip
        data = manifest.encode()
        digest = sha256(data)
        key = manifest_key(seq, digest)
        if not store.put_bytes(key, data, retain_until=retain_until, lock=lock):
            raise BackupError(f"manifest {key} exists already (another backup ran at once?)")
        bytes_written += len(data)
    backup_id = short_id(seq, digest)
    entry = audit.append(
        target, "backup create", objects=[backup_id],
        counts={"tables": len(entries), "rows": sum(e.rows for e in entries),
                "objects_written": written, "bytes_written": bytes_written},
        spec_digest=loaded.digest,
        detail={"manifest": digest, "key": key, "store": store.describe(),
                "tables": [r["name"] for r in table_rows],
                "retain_until": manifest.retain_until},
    )  # fmt: skip
    _meter(target, f"backup:{backup_id}", began, sum(e.rows for e in entries), bytes_written, cpu)
    return BackupResult(
        backup_id, key, seq, manifest.created_at, manifest.retain_until, table_rows, written,
        bytes_written, lsn, entry.seq, round(time.monotonic() - started, 3), store.describe(),
    )  # fmt: skip


def _native_backups(loaded: LoadedSpec, target: Target, options: BackupOptions
                    ) -> tuple[dict[str, Any], ...]:  # fmt: skip
    if options.tables:
        raise BackupError(
            f"{target.describe()} backs up whole schemas natively (backup sets): --tables is "
            "not supported there",
            usage=True,
        )
    schemas = list(options.schemas or loaded.spec.backup.schemas)
    return tuple(b.as_dict() for b in target.add_native_backups(schemas))


def _natives(m: Manifest) -> list[NativeBackup]:
    """The warehouse's own backups a manifest records (none for a Parquet backup)."""
    return [NativeBackup.from_dict(n) for n in m.native]


def _warehouse(target: Target | None, stored: Stored, doing: str) -> Target:
    """`target`, which a backup the warehouse keeps itself needs for `doing`."""
    if target is None:
        raise BackupError(f"backup {stored.id} is kept by the warehouse itself: {doing} needs "
                          "the warehouse")  # fmt: skip
    return target


# --- list ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupInfo:
    backup_id: str
    key: str
    seq: int
    created_at: str | None
    retain_until: str | None
    expired: bool
    locked: bool
    held: bool
    hold_reason: str | None
    tables: int
    rows: int
    bytes: int
    new_bytes: int
    """Bytes of the objects this backup introduced (not in an earlier backup)."""
    source_lsn: str | None
    intact: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_backups(loaded: LoadedSpec, *, now: dt.datetime | None = None,
                 store: Store | None = None) -> list[BackupInfo]:  # fmt: skip
    """Every backup in the store, oldest first (damaged manifests too, marked not intact)."""
    store = store or open_store(loaded)
    now = now or now_utc()
    chain = load_chain(store)
    seen: set[str] = set()
    out = []
    for stored in sorted(chain.manifests, key=lambda m: (m.seq, m.digest)):
        m = stored.manifest if stored.intact else None
        hold = chain.held(stored)
        if m is None:
            out.append(BackupInfo(stored.id, stored.key, stored.seq, None, None, False, False,
                                  hold is not None, (hold or {}).get("reason"), 0, 0, 0, 0,
                                  None, False))  # fmt: skip
            continue
        new = sum(t.bytes for t in m.tables if t.object not in seen)
        seen.update(t.object for t in m.tables)
        out.append(BackupInfo(
            stored.id, stored.key, stored.seq, m.created_at, m.retain_until,
            m.retain_until_at <= now, m.locked, hold is not None, (hold or {}).get("reason"),
            len(m.tables) or len(m.native), sum(t.rows for t in m.tables),
            sum(t.bytes for t in m.tables), new, m.source_lsn, True,
        ))  # fmt: skip
    return out


# --- restore ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    to: str
    kind: str
    """"schema" or "folder"."""
    tables: list[dict[str, Any]]
    seconds: float
    audit_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RestoreResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def is_folder(to: str) -> bool:
    """`--to` names a Parquet folder (a path: contains '/', or starts with '.' or '~');
    otherwise a schema."""
    return "/" in to or to.startswith((".", "~")) or os.sep in to


def _copy_checked(store: Store, entry: TableEntry, dest: Path) -> None:
    """Copy the object of `entry` to `dest`, checking its SHA-256 on the way."""
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".part")
    with store.open(object_key(entry.object)) as src, open(tmp, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != entry.object:
        tmp.unlink()
        raise BackupError(
            f"object {object_key(entry.object)} of {entry.name} is damaged (its bytes do not "
            "match its name): nothing was restored from it; run `clinipipe backup verify`"
        )
    os.replace(tmp, dest)


def _chosen(m: Manifest, tables: Sequence[str]) -> list[TableEntry]:
    wanted = _split(tables)
    if not wanted:
        return list(m.tables)
    out = []
    for w in wanted:
        hits = [t for t in m.tables if t.name == w or ("." not in w and t.table == w)]
        if not hits:
            raise BackupError(f"backup has no table {w!r}", usage=True)
        out.extend(h for h in hits if h not in out)
    return out


def restore_backup(
    loaded: LoadedSpec,
    target: Target | None,
    backup_id: str,
    to: str,
    *,
    tables: Sequence[str] = (),
    replace: bool = False,
    progress: Progress | None = None,
    store: Store | None = None,
) -> RestoreResult:
    """Restore `backup_id` into schema `to` of `target`, or into Parquet folder `to` (see
    `is_folder`). A folder must be new or empty; every object's hash is checked as it is
    copied. A schema restore loads every table in one transaction and refuses existing tables
    unless `replace`. Appends a ``backup restore`` audit entry when `target` is given."""
    progress = progress or _noop
    store = store or open_store(loaded)
    started = time.monotonic()
    began, cpu = now_utc(), CpuClock()
    chain = load_chain(store)
    stored = chain.find(backup_id)
    if not stored.intact or stored.manifest is None:
        raise BackupError(f"manifest {stored.key} is damaged: run `clinipipe backup verify`")
    m = stored.manifest
    done: list[dict[str, Any]] = []
    if m.native:  # the warehouse keeps this backup: it restores it (or says how to)
        done = _restored(_warehouse(target, stored, "restoring it").restore_native_backups(
            _natives(m), to))  # fmt: skip
        kind = "schema"
    elif is_folder(to):
        chosen = _chosen(m, tables)
        folder = Path(to).expanduser()
        if folder.exists() and any(folder.iterdir()):
            raise BackupError(f"{folder} is not empty: restore writes only into a new or "
                              "empty folder", usage=True)  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        for i, entry in enumerate(chosen):
            _copy_checked(store, entry, folder / f"{entry.schema}.{entry.table}.parquet")
            done.append({"name": entry.name, "rows": entry.rows, "to": str(folder)})
            progress("restore", entry.name, i + 1, len(chosen))
        kind = "folder"
    else:
        if target is None:
            raise BackupError("restoring into a schema needs the warehouse")
        if target.backs_up_natively():
            raise BackupError(
                f"{target.describe()} backs up natively and restores no Parquet backup: "
                f"restore backup {stored.id} into a folder instead (--to ./folder)"
            )
        chosen = _chosen(m, tables)
        with tempfile.TemporaryDirectory(prefix="clinipipe-restore-") as tmp:
            files = []
            for i, entry in enumerate(chosen):
                local = store.local_path(object_key(entry.object))
                path = Path(tmp) / f"{i:04d}.parquet"
                if local is not None:
                    digest, _ = hash_file(local) if local.exists() else ("", 0)
                    if digest != entry.object:
                        raise BackupError(
                            f"object {object_key(entry.object)} of {entry.name} is missing or "
                            "damaged: nothing was restored; run `clinipipe backup verify`"
                        )
                    path = local
                else:
                    _copy_checked(store, entry, path)
                files.append(RestoreFile(TableRef(entry.schema, entry.table), path,
                                         entry.columns, entry.rows, entry.fingerprint,
                                         entry.fingerprint_method))  # fmt: skip
                progress("fetch", entry.name, i + 1, len(chosen))
            restored = target.restore_tables(
                files, to, replace=replace,
                on_table=lambda name, n, total: progress("restore", name, n, total),
            )  # fmt: skip
        done = _restored(restored)
        kind = "schema"
    seq = None
    if target is not None:
        seq = audit.append(
            target, "backup restore", objects=[stored.id],
            counts={"tables": len(done), "rows": sum(int(d["rows"]) for d in done)},
            spec_digest=loaded.digest,
            detail={"to": to if kind == "schema" else "(folder)", "kind": kind,
                    "replace": replace, "tables": [d["name"] for d in done]},
        ).seq  # fmt: skip
        if kind == "schema":
            restored_bytes = sum(e.bytes for e in m.tables if e.name in {d["name"] for d in done})
            _meter(target, f"restore:{stored.id}", began, sum(int(d["rows"]) for d in done),
                   restored_bytes or None, cpu)  # fmt: skip
    return RestoreResult(stored.id, to, kind, done, round(time.monotonic() - started, 3), seq)


def _meter(
    target: Target, job: str, began: dt.datetime, rows: int, nbytes: int | None, cpu: CpuClock
) -> None:
    """One metering row for a backup or restore (see the module docstring), in its own
    transaction. Nothing when the warehouse has no metering table (never deployed)."""
    if not target.table_exists(CONTROL_SCHEMA, "metering"):
        return
    wh = target.loaded.spec.warehouses.incremental
    row = MeteringRow(
        job=job,
        warehouse=wh.name,
        warehouse_role="incremental",
        size=wh.size,
        started_at=began,
        ended_at=now_utc(),
        rows=rows,
        nbytes=nbytes,
        cpu_seconds=cpu.seconds(),
    )
    target.execute_atomically([target.metering_insert_sql(row)])


def _restored(restored: Sequence[RestoredTable]) -> list[dict[str, Any]]:
    return [{"name": f"{r.schema}.{r.table}", "rows": r.rows, "replaced": r.replaced,
             "fingerprint_checked": r.fingerprint_checked} for r in restored]  # fmt: skip


# --- prune, delete, hold ------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    deleted: list[str]
    kept: list[dict[str, Any]]
    """id and why it was kept (retained until ..., legal hold)."""
    objects_deleted: int
    bytes_freed: int
    audit_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _why_kept(chain: Chain, stored: Stored, now: dt.datetime) -> str | None:
    """Why `stored` may not be deleted now (None: it may)."""
    hold = chain.held(stored)
    if hold is not None:
        return f"legal hold ({hold.get('reason', '')})"
    m = stored.manifest
    if m is None or not stored.intact:
        return "manifest damaged (run backup verify)"
    if m.retain_until_at > now:
        return f"retained until {m.retain_until}" + (" (locked)" if m.locked else "")
    return None


def _tombstone(store: Store, stored: Stored, now: dt.datetime, why: str) -> None:
    assert stored.manifest is not None
    m = stored.manifest
    data = canonical({"seq": stored.seq, "manifest": stored.digest, "retain_until":
                      m.retain_until, "policy": m.policy, "pruned_at": utc_text(now),
                      "why": why})  # fmt: skip
    retain = now + dt.timedelta(days=int(m.policy.get("retention_days", 1)))
    store.put_bytes(f"{PRUNED}{stored.seq:06d}-{stored.digest}.json", data, retain_until=retain,
                    lock=m.locked)  # fmt: skip


def _sweep(store: Store, chain: Chain, removed: set[str], now: dt.datetime) -> tuple[int, int]:
    """Delete objects no remaining manifest names. An object S3 still locks is kept."""
    referenced: set[str] = set()
    for stored in chain.manifests:
        if stored.key in removed:
            continue
        if stored.manifest is None:
            return 0, 0  # a damaged manifest may name anything: delete no object
        referenced.update(t.object for t in stored.manifest.tables)
    count = freed = 0
    for key, size in store.list(OBJECTS).items():
        if key.rsplit("/", 1)[1] in referenced:
            continue
        try:
            store.delete(key)
        except StoreError:
            continue  # still locked on S3: a later prune removes it
        count += 1
        freed += size
    return count, freed


def prune(loaded: LoadedSpec, target: Target | None, *, now: dt.datetime | None = None,
          store: Store | None = None) -> PruneResult:  # fmt: skip
    """Delete every backup whose retention has passed and that no legal hold holds (a
    tombstone first, then the manifest), then every object no remaining backup names."""
    store = store or open_store(loaded)
    now = now or now_utc()
    with store.lock():
        chain = load_chain(store)
        deleted, kept, removed = [], [], set()
        for stored in sorted(chain.manifests, key=lambda m: m.seq):
            why = _why_kept(chain, stored, now)
            if why is not None:
                kept.append({"backup_id": stored.id, "why": why})
                continue
            _tombstone(store, stored, now, "prune: retention passed")
            store.delete(stored.key)
            removed.add(stored.key)
            deleted.append(stored.id)
        count, freed = _sweep(store, chain, removed, now)
    seq = None
    if target is not None:
        seq = audit.append(target, "backup prune", objects=deleted,
                           counts={"deleted": len(deleted), "kept": len(kept),
                                   "objects_deleted": count, "bytes_freed": freed},
                           spec_digest=loaded.digest).seq  # fmt: skip
    return PruneResult(deleted, kept, count, freed, seq)


def delete_backup(loaded: LoadedSpec, target: Target | None, backup_id: str, *,
                  force: bool = False, now: dt.datetime | None = None,
                  store: Store | None = None) -> dict[str, Any]:  # fmt: skip
    """Delete one backup. Refused under a legal hold; before retain_until refused when the
    backup was taken with the lock, and without `force` otherwise. A backup the warehouse
    keeps itself (native) is deleted there first (`target.delete_native_backups`, which the
    warehouse refuses under its own retention lock or hold); its manifest goes only after."""
    store = store or open_store(loaded)
    now = now or now_utc()
    with store.lock():
        chain = load_chain(store)
        stored = chain.find(backup_id)
        hold = chain.held(stored)
        if hold is not None:
            raise BackupError(f"refused: backup {stored.id} is under a legal hold "
                              f"({hold.get('reason', '')}); remove the hold first")  # fmt: skip
        m = stored.manifest
        if m is None or not stored.intact:
            raise BackupError(f"refused: manifest {stored.key} is damaged; run backup verify")
        if m.retain_until_at > now:
            if m.locked:
                raise BackupError(
                    f"refused: backup {stored.id} is under a locked retention until "
                    f"{m.retain_until}; nothing can delete it before then"
                )
            if not force:
                raise BackupError(
                    f"refused: backup {stored.id} is retained until {m.retain_until}; its "
                    "policy is not locked, so --force deletes it early"
                )
        if m.native:
            _warehouse(target, stored, "deleting it").delete_native_backups(_natives(m))
        _tombstone(store, stored, now, "delete" + (" --force" if force else ""))
        store.delete(stored.key)
        count, freed = _sweep(store, chain, {stored.key}, now)
    seq = None
    if target is not None:
        seq = audit.append(target, "backup delete", objects=[stored.id],
                           counts={"objects_deleted": count, "bytes_freed": freed},
                           spec_digest=loaded.digest, detail={"force": force}).seq  # fmt: skip
    return {"backup_id": stored.id, "objects_deleted": count, "bytes_freed": freed,
            "audit_seq": seq}  # fmt: skip


def set_hold(loaded: LoadedSpec, target: Target | None, backup_id: str, on: bool, reason: str,
             *, store: Store | None = None) -> dict[str, Any]:  # fmt: skip
    """Place (`on`) or remove a legal hold on `backup_id`. A held backup is kept by prune and
    refused by delete until the hold is removed. On S3 the manifest and each of its objects
    also get Object Lock's legal hold (lifted from an object only when no other held backup
    names it). A backup the warehouse keeps itself (native) gets the warehouse's legal hold
    too (`target.set_native_legal_hold`), before the hold is recorded in the store; when the
    warehouse refuses, nothing is recorded."""
    if not reason.strip():
        raise BackupError("--reason is required (it is kept in the audit log)", usage=True)
    store = store or open_store(loaded)
    with store.lock():
        chain = load_chain(store)
        stored = chain.find(backup_id)
        key = f"{HOLDS}{stored.stem}.json"
        objects = [t.object for t in (stored.manifest.tables if stored.manifest else ())]
        natives = _natives(stored.manifest) if stored.manifest is not None else []
        if on:
            if natives and chain.held(stored) is None:  # held already: so is the warehouse's
                _warehouse(target, stored, "its legal hold").set_native_legal_hold(natives, True)
            record = canonical({"reason": reason, "by": _user(), "at": utc_text(now_utc())})
            store.put_bytes(key, record, once=False)
            if stored.manifest is not None and stored.manifest.locked:
                for k in [stored.key, *(object_key(o) for o in objects)]:
                    store.set_legal_hold(k, True)
        else:
            if chain.held(stored) is None:
                raise BackupError(f"backup {stored.id} has no legal hold", usage=True)
            if natives:
                _warehouse(target, stored, "its legal hold").set_native_legal_hold(natives, False)
            other = {o for s in chain.manifests if s.key != stored.key and chain.held(s)
                     and s.manifest for o in (t.object for t in s.manifest.tables)}  # fmt: skip
            if stored.manifest is not None and stored.manifest.locked:
                store.set_legal_hold(stored.key, False)
                for o in objects:
                    if o not in other:
                        store.set_legal_hold(object_key(o), False)
            store.delete(key)
    seq = None
    if target is not None:
        seq = audit.append(target, "backup hold " + ("add" if on else "remove"),
                           objects=[stored.id], spec_digest=loaded.digest,
                           detail={"reason": reason}).seq  # fmt: skip
    return {"backup_id": stored.id, "held": on, "reason": reason, "audit_seq": seq}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


# --- the requests a running `cdc start` answers -------------------------------------------------


Request = Callable[[LoadedSpec, "Target", Mapping[str, Any], Callable[[Mapping[str, Any]], None]],
                   Any]  # fmt: skip


def _progress_events(send: Callable[[Mapping[str, Any]], None]) -> Progress:
    def progress(stage: str, name: str, done: int, total: int) -> None:
        send({"stage": stage, "name": name, "done": done, "total": total})

    return progress


def _req_create(loaded: LoadedSpec, target: Target, params: Mapping[str, Any],
                send: Callable[[Mapping[str, Any]], None]) -> Any:  # fmt: skip
    return create_backup(loaded, target, BackupOptions.from_params(params),
                         progress=_progress_events(send)).as_dict()  # fmt: skip


def _req_restore(loaded: LoadedSpec, target: Target, params: Mapping[str, Any],
                 send: Callable[[Mapping[str, Any]], None]) -> Any:  # fmt: skip
    return restore_backup(loaded, target, str(params["backup_id"]), str(params["to"]),
                          tables=_split(params.get("tables")),
                          replace=bool(params.get("replace")),
                          progress=_progress_events(send)).as_dict()  # fmt: skip


def _req_prune(loaded: LoadedSpec, target: Target, params: Mapping[str, Any],
               send: Callable[[Mapping[str, Any]], None]) -> Any:  # fmt: skip
    return prune(loaded, target).as_dict()


def _req_delete(loaded: LoadedSpec, target: Target, params: Mapping[str, Any],
                send: Callable[[Mapping[str, Any]], None]) -> Any:  # fmt: skip
    return delete_backup(loaded, target, str(params["backup_id"]), force=bool(params.get("force")))


def _req_hold(loaded: LoadedSpec, target: Target, params: Mapping[str, Any],
              send: Callable[[Mapping[str, Any]], None]) -> Any:  # fmt: skip
    return set_hold(loaded, target, str(params["backup_id"]), bool(params["on"]),
                    str(params.get("reason") or ""))  # fmt: skip


def _req_audit(loaded: LoadedSpec, target: Target, params: Mapping[str, Any],
               send: Callable[[Mapping[str, Any]], None]) -> Any:  # fmt: skip
    return [e.as_dict() for e in audit.entries(target, since=int(params.get("since") or 0))]


REQUESTS: dict[str, Request] = {
    "backup_create": _req_create,
    "backup_restore": _req_restore,
    "backup_prune": _req_prune,
    "backup_delete": _req_delete,
    "backup_hold": _req_hold,
    "audit_entries": _req_audit,
}
"""Backup requests for the control socket of a running `cdc start`. Wire each as a handler:
``lambda call: REQUESTS[op](call.loaded, call.target, call.params, call.progress)``."""
