"""`backup ...` and `audit ...`: WORM backups and the tamper-evident audit trail.

Thin: parse, call `clinipipe.backup`, print. Commands that need the warehouse (create,
restore, prune, delete, hold; the audit log) ask a running `cdc start` over its control socket
when one owns the warehouse, and open it themselves otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clinipipe.backup.manifest import BackupError
from clinipipe.backup.store import StoreError
from clinipipe.cli.output import ExitCode, Verbosity, err, info, out, print_json
from clinipipe.cli.state import State

if TYPE_CHECKING:
    from clinipipe.targets.base import Target

backup_app = typer.Typer(help="WORM, hash-chained backups of warehouse tables.",
                         no_args_is_help=True)  # fmt: skip
hold_app = typer.Typer(help="Legal holds: a held backup is never deleted until released.",
                       no_args_is_help=True)  # fmt: skip
audit_app = typer.Typer(help="The tamper-evident, hash-chained audit trail.", no_args_is_help=True)
backup_app.add_typer(hold_app, name="hold")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
    app.add_typer(audit_app, name="audit")


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"error: {exc}", style="red", markup=False)
    usage = bool(getattr(exc, "usage", False))
    return typer.Exit(ExitCode.USAGE if usage else ExitCode.FAILURE)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (BackupError, StoreError) as exc:
        raise _fail(exc) from None


@contextlib.contextmanager
def _bar(enabled: bool = True) -> Iterator[Callable[[str, str, int, int], None]]:
    """A Rich progress bar on stderr fed by (stage, name, done, total) calls."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=True,
                   disable=Verbosity.quiet or not enabled or not err.is_terminal)  # fmt: skip
    tasks: dict[str, Any] = {}

    def update(stage: str, name: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total,
                   description=f"{stage} {name}"[:60])  # fmt: skip

    with bar:
        yield update


def _in_warehouse(
    state: State,
    op: str,
    params: dict[str, Any],
    local: Callable[[Target], Any],
    progress: Callable[[str, str, int, int], None] | None = None,
) -> Any:
    """Run `op` in the running `cdc start` (it owns the warehouse), else `local(target)` on the
    warehouse opened here. Returns the JSON-able result either way."""
    from clinipipe.pipeline.operations import ask_running_cdc
    from clinipipe.targets import open_target

    loaded = state.spec()

    def on_progress(event: dict[str, Any]) -> None:
        if progress is not None:
            progress(str(event.get("stage", "")), str(event.get("name", "")),
                     int(event.get("done", 0)), int(event.get("total", 0)))  # fmt: skip

    remote, data = ask_running_cdc(
        loaded, op, params, BackupError, notify=state.notify, on_progress=on_progress
    )
    if remote:
        return data
    with open_target(loaded) as target:
        return local(target)


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for value in values or () for v in value.split(",") if v.strip())


# --- backup ------------------------------------------------------------------------------------


@backup_app.command("create")
def create(
    ctx: typer.Context,
    schemas: Annotated[list[str] | None, typer.Option(
        "--schemas", help="Schemas to back up (default: backup.schemas of the spec).")] = None,
    tables: Annotated[list[str] | None, typer.Option(
        "--tables", help="Only these tables (name or schema.name; repeat or comma-separate).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Take a backup of the warehouse's tables.

    One consistent snapshot of the tables, as Parquet (zstd) objects named by their SHA-256
    in the store of backup.store, and a manifest chained to the previous one. Unchanged
    tables are not written again. Retained for backup.retention_days (locked with
    backup.retention_lock); recorded in the audit log.

    Examples:

      clinipipe backup create

      clinipipe backup create --schemas raw,research --json"""
    from clinipipe.backup.service import BackupOptions, BackupResult, create_backup

    state: State = ctx.obj
    options = BackupOptions(_split(schemas), _split(tables))
    with _errors(), _bar(not as_json) as progress:
        data = _in_warehouse(
            state, "backup_create", options.as_params(),
            lambda target: create_backup(state.spec(), target, options,
                                         progress=progress).as_dict(),
            progress,
        )  # fmt: skip
    result = BackupResult.from_dict(data)
    if as_json:
        print_json(result.as_dict())
        return
    reused = sum(1 for t in result.tables if t["reused"])
    rows = sum(int(t["rows"]) for t in result.tables)
    out.print(f"Backup {result.backup_id}: {len(result.tables)} tables, {rows:,} rows "
              f"({reused} unchanged, not written again); {_mb(result.bytes_written)} added to "
              f"{result.store} in {result.seconds:.1f} s. Retained until "
              f"{result.retain_until[:10]}.", markup=False)  # fmt: skip
    if result.source_lsn:
        info(f"Source position (CDC checkpoint): {result.source_lsn}.")
    info(f"Recorded in the audit log (entry {result.audit_seq}).")


def _mb(n: int) -> str:
    if n >= 100_000:
        return f"{n / 1e6:,.1f} MB"
    return f"{n / 1e3:,.1f} kB" if n >= 1000 else f"{n} B"


@backup_app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the backups in the store, oldest first, with retention and legal holds.

    Examples:

      clinipipe backup list

      clinipipe backup list --json"""
    from clinipipe.backup.service import list_backups

    state: State = ctx.obj
    with _errors():
        backups = list_backups(state.spec())
    if as_json:
        print_json([b.as_dict() for b in backups])
        return
    if not backups:
        info("No backups yet: `clinipipe backup create` takes one.")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("backup", "created (UTC)", "tables", "rows", "size", "added", "kept until"):
        table.add_column(name, no_wrap=True, justify="left" if name[0] in "bck" else "right")
    table.add_column("hold", overflow="fold")
    for b in backups:
        until = (b.retain_until or "?")[:10] + (" lock" if b.locked else "")
        if b.expired:
            until += " (expired)"
        created = (b.created_at or "damaged")[:16].replace("T", " ")
        table.add_row(b.backup_id, created, str(b.tables), f"{b.rows:,}", _mb(b.bytes),
                      _mb(b.new_bytes), until, b.hold_reason or "",
                      style=None if b.intact else "red")  # fmt: skip
    out.print(table)


def _audit_entries(state: State) -> tuple[list[Any] | None, str | None]:
    """The audit log's entries (None and why, when the warehouse cannot be read)."""
    from clinipipe.backup import audit
    from clinipipe.pipeline.operations import ask_running_cdc
    from clinipipe.targets import open_target
    from clinipipe.targets.base import TargetError

    loaded = state.spec()
    try:
        remote, data = ask_running_cdc(loaded, "audit_entries", {}, BackupError,
                                       notify=state.notify)  # fmt: skip
        if remote:
            return [_entry(d) for d in data], None
        with open_target(loaded, read_only=True) as target:
            return audit.entries(target), None
    except (BackupError, TargetError) as exc:
        return None, str(exc)


def _entry(d: dict[str, Any]) -> Any:
    from clinipipe.backup.audit import AuditEntry

    at = dt.datetime.fromisoformat(str(d["logged_at"]).replace("Z", "+00:00"))
    return AuditEntry(int(d["seq"]), at, d["actor"], d["action"], d["object"], d["detail"],
                      d["prev_hash"], d["entry_hash"])  # fmt: skip


@backup_app.command("verify")
def verify(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(
        help="One backup (id or unique prefix); default: every backup.", show_default=False)
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every backup (the default).")] = False,
    read_data: Annotated[bool, typer.Option(
        "--read-data", help="Read every object: rehash it and count its rows.")] = False,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Verify the backups: chain, objects, row counts, audit log. Exit 3 on any problem.

    Checks every manifest's chain link, every object's presence and size (--read-data: its
    SHA-256 and row count) and the backups against the audit log. Exit 3 naming each problem.

    Examples:

      clinipipe backup verify

      clinipipe backup verify 000001 --read-data"""
    from clinipipe.backup.service import backup_encryption_key, open_store
    from clinipipe.backup.verify import verify_store

    state: State = ctx.obj
    if all_ and backup_id:
        err.print("error: give a BACKUP_ID or --all, not both", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE)
    entries, why = _audit_entries(state)
    with _errors(), _bar(not as_json) as progress:
        report = verify_store(open_store(state.spec()), backup_id=backup_id,
                              read_data=read_data, audit_entries=entries,
                              progress=progress,
                              encryption_key=backup_encryption_key(state.spec()))  # fmt: skip
    if why is not None:
        report.notes.append(f"not checked against the audit log: {why}")
    if as_json:
        print_json(report.as_dict())
    else:
        for p in report.problems:
            err.print(f"problem: {p.message}", style="red", markup=False)
        for note in report.notes:
            err.print(f"note: {note}", style="yellow", markup=False)
        rate = report.bytes_read / report.seconds / 1e6 if report.seconds else 0.0
        read = f", {_mb(report.bytes_read)} read ({rate:,.0f} MB/s)" if read_data else ""
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        out.print(f"{report.backups} backup(s), {report.objects} object(s) checked{read}: "
                  f"{verdict}.", markup=False)  # fmt: skip
    if not report.ok:
        raise typer.Exit(ExitCode.FOUND)


@backup_app.command("restore")
def restore(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="The backup (id or unique prefix).")],
    to: Annotated[str, typer.Option(
        "--to", help="A new schema, or a folder for Parquet files (a path: contains '/').",
        show_default=False)],
    tables: Annotated[list[str] | None, typer.Option(
        "--tables", help="Only these tables (repeat or comma-separate).")] = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace the rows of tables that exist (needs --yes).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm --replace.")] = False,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Restore a backup into a new schema or a Parquet folder.

    Into a new schema (all tables in one transaction, each checked against
    its row count and fingerprint) or a Parquet folder (each file's hash checked). Never writes
    over an existing table unless --replace --yes.

    Examples:

      clinipipe backup restore 000001 --to ./restored"""
    from clinipipe.backup.service import RestoreResult, is_folder, restore_backup

    state: State = ctx.obj
    if replace and not yes:
        err.print("error: --replace writes over live tables: add --yes to confirm",
                  style="red", markup=False)  # fmt: skip
        raise typer.Exit(ExitCode.USAGE)
    picked = list(_split(tables))
    params = {"backup_id": backup_id, "to": to, "tables": picked, "replace": replace}
    loaded = state.spec()
    with _errors(), _bar(not as_json) as progress:

        def local(target: Target | None) -> Any:
            return restore_backup(loaded, target, backup_id, to, tables=picked,
                                  replace=replace, progress=progress).as_dict()  # fmt: skip

        data = _in_warehouse(state, "backup_restore", params, local, progress)
    result = RestoreResult.from_dict(data)
    if as_json:
        print_json(result.as_dict())
        return
    rows = sum(int(t["rows"]) for t in result.tables)
    where = f"folder {to}" if is_folder(to) else f"schema {to}"
    out.print(f"Restored backup {result.backup_id} into {where}: {len(result.tables)} tables, "
              f"{rows:,} rows, checked, in {result.seconds:.1f} s.", markup=False)  # fmt: skip


@backup_app.command("prune")
def prune_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Delete the backups that retention and legal holds allow to go.

    Deletes the backups whose retention has passed and that no legal hold holds, then the
    objects no remaining backup needs. Deletes nothing retention does not allow.

    Examples:

      clinipipe backup prune

      clinipipe backup prune --json"""
    from clinipipe.backup.service import PruneResult, prune

    state: State = ctx.obj
    loaded = state.spec()
    with _errors():
        data = _in_warehouse(state, "backup_prune", {},
                             lambda target: prune(loaded, target).as_dict())  # fmt: skip
    result = PruneResult.from_dict(data)
    if as_json:
        print_json(result.as_dict())
        return
    for k in result.kept:
        info(f"kept {k['backup_id']}: {k['why']}")
    out.print(
        f"Pruned {len(result.deleted)} backup(s), {result.objects_deleted} object(s) "
        f"({_mb(result.bytes_freed)}); kept {len(result.kept)}.",
        markup=False,
    )


@backup_app.command("delete")
def delete(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="The backup (id or unique prefix).")],
    force: Annotated[bool, typer.Option(
        "--force", help="Before retain_until, when the backup's policy is not locked.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm the deletion.")] = False,
) -> None:  # fmt: skip
    """Delete one backup, if its retention and legal holds allow.

    Refused under a legal hold, and before its retain_until when it was
    taken with the retention lock (without the lock, --force deletes it early).

    Examples:

      clinipipe backup delete 000001"""
    from clinipipe.backup.service import delete_backup

    state: State = ctx.obj
    if not yes:
        err.print("error: deleting a backup needs --yes", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE)
    loaded = state.spec()
    with _errors():
        data = _in_warehouse(
            state, "backup_delete", {"backup_id": backup_id, "force": force},
            lambda target: delete_backup(loaded, target, backup_id, force=force),
        )  # fmt: skip
    out.print(f"Deleted backup {data['backup_id']} ({data['objects_deleted']} object(s) no "
              "other backup needed).", markup=False)  # fmt: skip


def _hold(ctx: typer.Context, backup_id: str, reason: str, on: bool) -> None:
    from clinipipe.backup.service import set_hold

    state: State = ctx.obj
    loaded = state.spec()
    with _errors():
        data = _in_warehouse(
            state, "backup_hold", {"backup_id": backup_id, "on": on, "reason": reason},
            lambda target: set_hold(loaded, target, backup_id, on, reason),
        )  # fmt: skip
    verb = "placed on" if on else "removed from"
    out.print(f"Legal hold {verb} backup {data['backup_id']}.", markup=False)


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).",
                                        show_default=False)]  # fmt: skip
IdArg = Annotated[str, typer.Argument(help="The backup (id or unique prefix).")]


@hold_app.command("add")
def hold_add(ctx: typer.Context, backup_id: IdArg, reason: ReasonOpt) -> None:
    """Place a legal hold on a backup.

    The backup is kept, whatever its retention, until the hold is
    removed (S3: Object Lock legal hold on its manifest and objects).

    Examples:

      clinipipe backup hold add 000001 --reason 'litigation hold 2026-17'"""
    _hold(ctx, backup_id, reason, True)


@hold_app.command("remove")
def hold_remove(ctx: typer.Context, backup_id: IdArg, reason: ReasonOpt) -> None:
    """Remove a legal hold (its retention still applies).

    Examples:

      clinipipe backup hold remove 000001 --reason 'hold released'"""
    _hold(ctx, backup_id, reason, False)


# --- audit -------------------------------------------------------------------------------------


def _since(value: str | None) -> tuple[int, dt.datetime | None]:
    if value is None:
        return 0, None
    if value.isdigit():
        return int(value), None
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither an entry number nor a date "
                                 "(YYYY-MM-DD[THH:MM])") from None  # fmt: skip
    return 0, at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)


@audit_app.command("log")
def audit_log(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(
        "--since", help="Entries after this entry number, or from this date (YYYY-MM-DD).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Show the audit log: who ran what, when, on which objects, with what outcome.

    Examples:

      clinipipe audit log

      clinipipe audit log --since 7d --json"""
    state: State = ctx.obj
    after, at = _since(since)
    entries, why = _audit_entries(state)
    if entries is None:
        err.print(f"error: {why}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE)
    entries = [e for e in entries if e.seq > after and (at is None or e.logged_at >= at)]
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("seq", "logged at (UTC)", "user", "action", "object", "outcome"):
        table.add_column(name, no_wrap=name not in ("object",), overflow="fold")
    for e in entries:
        outcome = e.detail.get("outcome", "") if isinstance(e.detail, dict) else ""
        table.add_row(str(e.seq), e.logged_at.astimezone(dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S"), e.actor, e.action, e.object, str(outcome))  # fmt: skip
    out.print(table)


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Verify the audit log's hash chain. Exit 3 naming the first bad entry.

    Recomputes the chain, and checks it against the audit heads the backups
    recorded (a rewritten or cut log no longer matches them). Exit 3 naming the first bad
    entry.

    Examples:

      clinipipe audit verify"""
    from clinipipe.backup import audit
    from clinipipe.backup.manifest import load_chain
    from clinipipe.backup.service import open_store
    from clinipipe.backup.verify import cross_check

    state: State = ctx.obj
    entries, why = _audit_entries(state)
    if entries is None:
        err.print(f"error: {why}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE)
    result = audit.verify_entries(entries)
    problems: list[dict[str, Any]] = []
    if not result.ok:
        problems.append({"kind": "audit_chain", "key": f"_clinipipe.audit_log seq "
                         f"{result.first_bad_seq}", "message": f"audit entry "
                         f"{result.first_bad_seq}: {result.reason}"})  # fmt: skip
    notes: list[str] = []
    with _errors():
        chain = load_chain(open_store(state.spec()))
    found, _ = cross_check(chain, entries)
    problems.extend(p.as_dict() for p in found if p.kind.startswith("audit"))
    if not chain.manifests:
        notes.append("no backups to check the log against")
    if as_json:
        print_json({"ok": not problems, "entries": result.entries, "head_hash": result.head_hash,
                    "backups_checked": len(chain.manifests), "problems": problems,
                    "notes": notes})  # fmt: skip
    else:
        for p in problems:
            err.print(f"problem: {p['message']}", style="red", markup=False)
        for note in notes:
            err.print(f"note: {note}", style="yellow", markup=False)
        verdict = "chain intact" if not problems else f"{len(problems)} problem(s)"
        out.print(f"{result.entries} audit entries, checked against "
                  f"{len(chain.manifests)} backup(s): {verdict}.", markup=False)  # fmt: skip
    if problems:
        raise typer.Exit(ExitCode.FOUND)
