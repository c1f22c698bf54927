"""`backfill`: the initial load on the initialization warehouse."""

from __future__ import annotations

import threading
from typing import Annotated

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


def register(app: typer.Typer) -> None:
    app.command("backfill")(backfill)


def backfill(
    ctx: typer.Context,
    tables: Annotated[
        str | None, typer.Option(help="Comma-separated source tables (default: all in the spec).")
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
    """Load history from PostgreSQL under the replication slot's exported snapshot."""
    from clinipipe.pipeline.backfill import BackfillError, BackfillOptions, run_backfill

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
        "tables": {
            t.table: {"rows": t.rows, "bytes": t.bytes, "ranges": t.ranges,
                      "ranges_kept": t.ranges_skipped}
            for t in summary.tables.values()
        },
    }  # fmt: skip
    if as_json:
        print_json(data)
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
    out.print(
        f"{summary.rows:,} rows in {summary.seconds:.1f} s "
        f"({data['rows_per_second']:,} rows/s). CDC starts at {summary.consistent_point}."
    )
