"""`synth`: synthetic EHR data into the source PostgreSQL."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from clinipipe.cli.output import ExitCode, Verbosity, err, out, print_json
from clinipipe.cli.state import State


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


def synth(
    ctx: typer.Context,
    patients: Annotated[int, typer.Option(min=1, help="How many patients to generate.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 7,
    replace: Annotated[
        bool, typer.Option("--replace", help="Drop the hospital tables first if they hold data.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Create the example hospital's tables in the source PostgreSQL and fill them (COPY).

    Examples:

      clinipipe synth --patients 10000 --seed 7

      clinipipe synth --patients 200000 --replace"""
    from clinipipe.synth import SynthError, run_synth

    state: State = ctx.obj
    loaded = state.spec()
    tasks: dict[str, TaskID] = {}
    progress = Progress(
        TextColumn("{task.description:<15}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=Verbosity.quiet or as_json,
    )

    def on_progress(table: str, done: int, expected: int) -> None:
        if table not in tasks:
            tasks[table] = progress.add_task(table, total=expected)
        progress.update(tasks[table], completed=done, total=max(expected, done))

    try:
        with progress:
            summary = run_synth(
                loaded.spec.source.dsn,
                patients,
                seed,
                drop_existing=replace,
                on_progress=on_progress,
            )
    except SynthError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE) from None
    rate = summary.total_rows / summary.seconds if summary.seconds else 0.0
    if as_json:
        print_json(
            {"patients": patients, "seed": seed, "rows": summary.rows,
             "total_rows": summary.total_rows, "seconds": round(summary.seconds, 3),
             "rows_per_second": round(rate), "bytes": summary.bytes}
        )  # fmt: skip
        return
    table = Table(title=f"Synthetic hospital (seed {seed})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in summary.rows.items():
        table.add_row(name, f"{rows:,}")
    table.add_row("[bold]total[/bold]", f"[bold]{summary.total_rows:,}[/bold]")
    out.print(table)
    out.print(f"{summary.total_rows:,} rows in {summary.seconds:.1f} s ({rate:,.0f} rows/s)")
