"""`cdc start|status|reset`: change data capture by logical replication."""

from __future__ import annotations

import json
import statistics
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.state import State

if TYPE_CHECKING:
    from clinipipe.pipeline.scan import CdcScanner  # PHI scan
    from clinipipe.spec import LoadedSpec  # PHI scan


def register(app: typer.Typer) -> None:
    cdc = typer.Typer(help="Change data capture by logical replication.", no_args_is_help=True)
    cdc.command("start")(start)
    cdc.command("status")(status)
    cdc.command("reset")(reset)
    app.add_typer(cdc, name="cdc")


def start(
    ctx: typer.Context,
    max_seconds: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
    until_caught_up: Annotated[
        bool, typer.Option("--until-caught-up", help="Stop once everything committed is applied.")
    ] = False,
    batch_rows: Annotated[
        int, typer.Option(min=1, help="Flush a batch at this many changes.")
    ] = 50_000,
    batch_ms: Annotated[int, typer.Option(min=1, help="Flush a batch after this many ms.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Stream changes into the warehouse on the incremental warehouse, exactly once."""
    from clinipipe.pipeline.cdc import CdcError, CdcOptions, run_cdc
    from clinipipe.source.pgoutput import lsn_to_str

    state: State = ctx.obj
    loaded = state.spec()
    options = CdcOptions(max_seconds, until_caught_up, batch_rows, batch_ms)
    scanner = _phi_scanner(loaded)  # PHI scan of every batch

    def on_batch(batch: object) -> None:
        from clinipipe.targets.base import CdcBatch

        assert isinstance(batch, CdcBatch)
        info(f"applied {batch.changes:,} changes ({len(batch.commit_times)} transactions) "
             f"up to {lsn_to_str(batch.end_lsn)}")  # fmt: skip
        found = scanner.on_batch(batch)  # PHI scan: never raises, alerts in the background
        if found:
            err.print(f"PHI found in this batch: {len(found)} finding(s), see "
                      "_clinipipe.phi_findings", style="red", markup=False)  # fmt: skip

    def on_staged(part: object) -> None:
        from clinipipe.targets.base import CdcBatch

        assert isinstance(part, CdcBatch)
        info(f"staged {part.changes:,} changes of a large transaction (committed with its batch)")
        found = scanner.on_batch(part)  # PHI scan: never raises, alerts in the background
        if found:
            err.print(f"PHI found in these changes: {len(found)} finding(s), see "
                      "_clinipipe.phi_findings", style="red", markup=False)  # fmt: skip

    info(f"Streaming from slot {loaded.spec.source.slot}; Ctrl-C stops after the current batch.")
    try:
        summary = run_cdc(loaded, options, on_batch=on_batch, on_staged=on_staged)
    except CdcError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE) from None
    finally:
        phi_stats = _close_phi_scanner(scanner)  # PHI scan
    data = {
        "batches": summary.batches,
        "changes": summary.changes,
        "transactions": summary.transactions,
        "skipped_transactions": summary.skipped_transactions,
        "start_lsn": lsn_to_str(summary.start_lsn),
        "end_lsn": lsn_to_str(summary.end_lsn),
        "seconds": round(summary.seconds, 3),
        "refreshes": summary.refreshes,
        "publishes": summary.publishes,
        "publish_failures": summary.publish_failures,
        "phi_scan": phi_stats,  # PHI scan
        "paused_tables": summary.paused,
    }
    for failure in summary.publish_failures:
        err.print(f"warning: publish of interactive table {failure}", style="yellow", markup=False)
    if as_json:
        print_json(data)
    else:
        out.print(
            f"Applied {summary.changes:,} changes in {summary.batches} batches "
            f"({summary.transactions} transactions) from {data['start_lsn']} to {data['end_lsn']}."
        )
    for table, reason in summary.paused.items():
        err.print(f"error: table {table} is paused, its changes are not applied: {reason}",
                  style="red", markup=False)  # fmt: skip
    if summary.paused:
        raise typer.Exit(ExitCode.FOUND)


# --- PHI scanners on every batch (clinipipe.pipeline.scan) -------------------------------------


def _phi_scanner(loaded: LoadedSpec) -> CdcScanner:
    """The scanner `cdc start` runs on every batch; a configuration problem exits 2 before
    anything streams."""
    from clinipipe.pipeline.scan import CdcScanner, ScanError

    def warn(message: str) -> None:
        err.print(f"warning: {message}", style="yellow", markup=False)

    try:
        scanner = CdcScanner(loaded, on_event=warn)
    except ScanError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    alerts = "no alerts (phi.alerts not set)"
    if scanner.sender is not None:
        alerts = f"alerts to {scanner.sender.endpoint} ({scanner.sender.format})"
    info(f"PHI scan of every batch of {len(scanner.watched)} tables; {alerts}")
    return scanner


def _close_phi_scanner(scanner: CdcScanner) -> dict[str, object]:
    """Stop the scanner (queued alerts get a bounded time to go out); its stats, with a
    warning when alerts failed or were dropped or a batch could not be scanned."""
    stats = scanner.close()
    alerts = stats.alerts or {}
    if alerts.get("failed") or alerts.get("dropped"):
        err.print(
            f"warning: PHI alerts: {alerts.get('sent', 0)} sent, {alerts.get('failed', 0)} "
            f"failed, {alerts.get('dropped', 0)} dropped (last error: "
            f"{alerts.get('last_error') or '-'}); every finding is in _clinipipe.phi_findings",
            style="yellow",
            markup=False,
        )
    if stats.errors:
        err.print(
            f"warning: the PHI scan failed on {stats.errors} batch(es) ({stats.last_error}); "
            "run `clinipipe scan` to cover them",
            style="yellow",
            markup=False,
        )
    return stats.as_dict()


# --- end PHI scanners -------------------------------------------------------------------------


def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Slot, confirmed position, lag, last batch and commit-to-apply latency percentiles."""
    from clinipipe.source.pgoutput import lsn_to_str
    from clinipipe.source.replication import slot_info, slot_lag_bytes
    from clinipipe.targets import open_target

    state: State = ctx.obj
    loaded = state.spec()
    slot = loaded.spec.source.slot
    slot_state = slot_info(loaded.spec.source.dsn, slot)
    lag = slot_lag_bytes(loaded.spec.source.dsn, slot) if slot_state else None
    with open_target(loaded, read_only=True) as target:
        target.require_deployed()
        checkpoint = target.cdc_checkpoint(slot)
        paused = target.paused_tables(slot)
        batches = target.query(
            f"SELECT applied_at, changes, latencies_ms FROM {target.control('cdc_batches')} "
            f"WHERE slot = {target.dialect.quote_literal(slot)} ORDER BY applied_at DESC LIMIT 1000"
        )
    # DuckDB returns a list; Snowflake returns its ARRAY as JSON text.
    latencies = sorted(
        float(x)
        for _, _, ls in batches
        for x in (json.loads(ls) if isinstance(ls, str) else ls or [])
    )
    if len(latencies) == 1:
        cuts = latencies * 99
    else:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive") if latencies else []
    data = {
        "slot": slot,
        "slot_exists": slot_state is not None,
        "slot_status": slot_state.wal_status if slot_state else "missing",
        "slot_active": bool(slot_state and slot_state.active),
        "confirmed_lsn": slot_state.confirmed_flush_lsn if slot_state else None,
        "checkpoint_lsn": lsn_to_str(checkpoint) if checkpoint is not None else None,
        "lag_bytes": lag,
        "lag_warning": lag is not None and lag > loaded.spec.source.lag_warning_mb * 1024 * 1024,
        "last_batch_at": batches[0][0] if batches else None,
        "last_batch_changes": batches[0][1] if batches else None,
        "latency_ms": {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]} if cuts else None,
        "paused_tables": paused,
    }
    if as_json:
        print_json(data)
    else:
        table = Table(title=f"CDC for slot {slot}", show_header=False)
        for key, value in data.items():
            table.add_row(key.replace("_", " "), str(value))
        out.print(table)
    if data["lag_warning"]:
        err.print(
            f"warning: the slot holds back {lag / 1024 / 1024:,.0f} MB of WAL (more than "
            f"source.lag_warning_mb = {loaded.spec.source.lag_warning_mb}); is `clinipipe cdc "
            "start` running?",
            style="yellow",
        )
    if slot_state is None or slot_state.wal_status == "lost":
        err.print(
            f"replication slot {slot!r} is {'missing' if slot_state is None else 'invalidated'}: "
            "run `clinipipe cdc reset --yes` and `clinipipe backfill --force`",
            style="red",
        )
        raise typer.Exit(ExitCode.FAILURE)
    for table, reason in paused.items():
        err.print(f"paused: {table}: {reason}", style="yellow", markup=False)
    if data["lag_warning"] or paused:
        raise typer.Exit(ExitCode.FOUND)


def reset(
    ctx: typer.Context,
    yes: Annotated[
        bool, typer.Option("--yes", help="Really drop the slot and checkpoints.")
    ] = False,
) -> None:
    """Drop the replication slot and the CDC checkpoints (before a fresh backfill)."""
    from clinipipe.source.replication import drop_slot
    from clinipipe.targets import open_target

    if not yes:
        err.print(
            "cdc reset drops the replication slot and forgets every checkpoint: the next step "
            "must be `clinipipe backfill --force`. Run again with --yes to proceed.",
            style="yellow",
        )
        raise typer.Exit(ExitCode.USAGE)
    state: State = ctx.obj
    loaded = state.spec()
    slot = loaded.spec.source.slot
    dropped = drop_slot(loaded.spec.source.dsn, slot)
    with open_target(loaded) as target:
        target.require_deployed()
        target.reset_cdc(slot)
    out.print(
        f"{'Dropped' if dropped else 'No'} replication slot {slot}; checkpoints cleared. "
        "Next: `clinipipe backfill`."
    )
