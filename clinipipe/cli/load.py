"""`backfill`: the initial load on the initialization warehouse."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from clinipipe.cli.output import ExitCode, Verbosity, err, out, print_json
from clinipipe.cli.state import State
from clinipipe.source.catalog import TableSchema

if TYPE_CHECKING:
    from clinipipe.pipeline.backfill import BackfillSummary


def register(app: typer.Typer) -> None:
    app.command("backfill")(backfill)


def backfill(
    ctx: typer.Context,
    tables: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated source tables to load now (default: all in the spec). The "
            "backfill is complete, and CDC can start, once every spec table is loaded."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Parallel range readers.")] = 4,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted backfill, keeping its ranges.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Reload from scratch (drops the slot and raw tables).")
    ] = False,
    range_pages: Annotated[
        int | None,
        typer.Option(min=1, help="Heap pages (8 KiB) per range; default: automatic, ≤ 64 MiB."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Load history from PostgreSQL under the replication slot's exported snapshot.

    Examples:

      clinipipe backfill

      clinipipe backfill --workers 8 --json

      clinipipe backfill --resume"""
    from clinipipe.pipeline.backfill import (
        BackfillError,
        BackfillInterrupted,
        BackfillOptions,
        run_backfill,
    )

    state: State = ctx.obj
    loaded = state.spec()
    if resume and force:
        raise typer.BadParameter("--resume and --force exclude each other", param_hint="--force")
    options = BackfillOptions(
        tables=tuple(t.strip() for t in tables.split(",") if t.strip()) if tables else (),
        workers=workers,
        resume=resume,
        force=force,
        pages_per_range=range_pages,
    )
    progress = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TextColumn("{task.completed:>12,.0f} rows"),
        TextColumn("{task.fields[mb]:>9,.1f} MB"),
        TextColumn("{task.fields[rate]:>7,.1f} MB/s"),
        TimeRemainingColumn(),
        console=err,
        disable=Verbosity.quiet or as_json,
    )
    tasks: dict[str, TaskID] = {}
    megabytes: dict[str, float] = {}
    lock = threading.Lock()

    def on_start(schemas: dict[str, TableSchema]) -> None:
        # Totals are PostgreSQL's row estimates (reltuples): the bar is a guide, not a count.
        for name, schema in schemas.items():
            megabytes[name] = 0.0
            tasks[name] = progress.add_task(
                name, total=schema.estimated_rows or None, mb=0.0, rate=0.0
            )

    def on_progress(table: str, row_delta: int, byte_delta: int) -> None:
        with lock:
            megabytes[table] += byte_delta / 1e6
            elapsed = progress.tasks[tasks[table]].elapsed or 0.0
            rate = megabytes[table] / elapsed if elapsed else 0.0
            progress.update(tasks[table], advance=row_delta, mb=megabytes[table], rate=rate)

    try:
        with progress:
            summary = run_backfill(loaded, options, on_start=on_start, on_progress=on_progress)
    except BackfillInterrupted as exc:  # SIGINT/SIGTERM: the shell's code for an interrupt
        err.print(str(exc), style="yellow", markup=False)
        raise typer.Exit(130) from None
    except BackfillError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE) from None
    data = {
        "status": summary.status,
        "slot": summary.slot,
        "consistent_point": summary.consistent_point,
        "warehouse": summary.warehouse,
        "seconds": round(summary.seconds, 3),
        "rows": summary.rows,
        "bytes": summary.bytes,
        "rows_per_second": round(summary.rows / summary.seconds) if summary.seconds else 0,
        "complete": summary.complete,
        "remaining": summary.remaining,
        "tables": {
            t.table: {"rows": t.rows, "bytes": t.bytes, "ranges": t.ranges,
                      "ranges_kept": t.ranges_skipped}
            for t in summary.tables.values()
        },
    }  # fmt: skip
    if as_json:
        print_json(data)
        return
    left = (
        f"Not complete: {len(summary.remaining)} table(s) still to load "
        f"({', '.join(summary.remaining)}); CDC starts only when every table is loaded. Run "
        "`clinipipe backfill --resume` to load them."
    )
    if summary.status == "nothing-to-load":
        out.print(f"The tables asked for are already loaded. {left}")
        return
    if summary.status == "already-complete":
        out.print(
            f"The backfill for slot {summary.slot} is already complete (CDC starts at "
            f"{summary.consistent_point}). Nothing was reloaded; use --force to reload."
        )
        return
    table = Table(title=f"Backfill ({summary.status}) on {summary.warehouse}")
    for column in ("table", "rows", "MB", "ranges", "kept", "rows/s"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for t in summary.tables.values():
        rate = t.rows / t.seconds if t.seconds else 0
        table.add_row(t.table, f"{t.rows:,}", f"{t.bytes / 1e6:,.1f}", str(t.ranges),
                      str(t.ranges_skipped), f"{rate:,.0f}")  # fmt: skip
    out.print(table)
    out.print(f"{_loaded_line(summary)} CDC starts at {summary.consistent_point}.")
    if summary.remaining:
        out.print(left, style="yellow")


def _loaded_line(summary: BackfillSummary) -> str:
    """What this run loaded. A resumed run says how many ranges it kept from the interrupted
    run and what it loaded now (never a bare "0 rows", which reads as "nothing was loaded")."""
    rate = f"{summary.rows / summary.seconds:,.0f} rows/s" if summary.seconds else "-"
    loaded = f"{summary.rows:,} rows in {summary.seconds:.1f} s ({rate})"
    if summary.status != "resumed":
        return f"{loaded}."
    ranges = sum(t.ranges for t in summary.tables.values())
    kept = sum(t.ranges_skipped for t in summary.tables.values())
    if kept >= ranges:
        return (
            f"Resumed: all {ranges:,} ranges were already loaded by the interrupted run and were "
            f"kept; nothing was left to load ({summary.seconds:.1f} s)."
        )
    return (
        f"Resumed: {kept:,} of {ranges:,} ranges were already loaded by the interrupted run and "
        f"were kept; the other {ranges - kept:,} loaded now: {loaded}."
    )
