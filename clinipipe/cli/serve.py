"""`publish` and `dashboard`: the serving layer (interactive tables) and the spec's dashboards."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.state import State


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("dashboard")(dashboard)


def publish(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Interactive tables to publish (default: all).", show_default=False),
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Rewrite every partition of each table (a generation without delta) instead "
            "of writing only the rows of the keys changed since the last publish.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Publish a new generation of interactive tables for dashboards (DuckDB).

    A generation is a set of files sorted by cluster_by: range partitions of its first column
    and, after an incremental publish, a delta holding the current rows of the keys changed
    since (a table served from a dynamic table refreshed by that column is published
    incrementally when it can; others in full). Readers switch to it atomically: dashboard
    processes never block and never see a half-written table. `--full` rewrites every partition
    (new partition bounds, no delta), e.g. after many incremental publishes or to check that
    a table equals its source. `cdc start` publishes on its own schedule; this command
    publishes now (while `cdc start` runs, it asks it to). Snowflake keeps its interactive
    tables fresh itself.

    Exit codes: 0 published, 1 a table could not be published (it keeps its previous
    generation; the tables before it are published), 2 an unknown table or a target without
    local serving.

    Examples:

      clinipipe publish

      clinipipe publish patient_dashboard

      clinipipe publish --full lab_dashboard"""
    from clinipipe.pipeline.operations import publish_now
    from clinipipe.pipeline.publish import PublishError

    state: State = ctx.obj
    loaded = state.spec()
    if not loaded.spec.interactive_tables:
        info("The spec has no interactive tables; nothing to publish.")
        if as_json:
            print_json([])
        return
    try:
        results = publish_now(loaded, names or None, notify=state.notify, full=full)
    except PublishError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    if as_json:
        print_json([r.as_dict() for r in results])
        return
    table = Table(title="Published interactive tables", box=box.SIMPLE_HEAD)
    for column in ("table", "generation", "kind", "rows", "written", "time"):
        table.add_column(column, justify="left" if column in ("table", "kind") else "right")
    for r in results:
        kind = f"incremental ({r.changed_keys:,} keys)" if r.incremental else "full"
        table.add_row(r.name, str(r.generation), kind, f"{r.rows:,}", f"{r.bytes / 1e6:.1f} MB",
                      f"{r.seconds:.2f} s")  # fmt: skip
    out.print(table)


def dashboard(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="The dashboard to run (default: list them).", show_default=False),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="A parameter as name=value (repeat for more)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one of the spec's dashboards against the published interactive tables (DuckDB).

    Reads only the published serving files, never the warehouse: it works while `cdc start`
    runs. Without a name, lists the dashboards and their parameters.

    Examples:

      clinipipe dashboard patient_overview -p patient_id=42

      clinipipe dashboard census_by_department -p day=2026-11-27 --json"""
    from clinipipe.pipeline.dashboards import DashboardError, DashboardRunner
    from clinipipe.targets.serving_files import ServingError

    state: State = ctx.obj
    loaded = state.spec()
    if name is None:
        boards = loaded.spec.dashboards
        if as_json:
            print_json([{"name": b.name, "params": b.params, "description": b.description}
                        for b in boards])  # fmt: skip
            return
        listing = Table(title="Dashboards", box=box.SIMPLE_HEAD)
        for column in ("dashboard", "parameters", "description"):
            listing.add_column(column, overflow="fold")
        for b in boards:
            params = ", ".join(f"{k}: {v}" for k, v in b.params.items()) or "-"
            listing.add_row(b.name, params, b.description or "")
        out.print(listing)
        return
    given: dict[str, str] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            err.print(f"error: --param takes name=value, got {key.strip() or '(empty)'!r}...",
                      style="red", markup=False)  # fmt: skip
            raise typer.Exit(ExitCode.USAGE)
        given[key.strip()] = value
    try:
        with DashboardRunner(loaded) as runner:
            result = runner.run(name, given)
    except DashboardError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    except ServingError as exc:
        err.print(f"error: {exc}: run `clinipipe publish` (or `cdc start`) first",
                  style="red", markup=False)  # fmt: skip
        raise typer.Exit(ExitCode.FAILURE) from None
    if as_json:
        print_json({"dashboard": result.name, "generation": result.generation,
                    "milliseconds": round(result.milliseconds, 3), "columns": result.columns,
                    "rows": [list(r) for r in result.rows]})  # fmt: skip
        return
    table = Table(title=f"{result.name} ({result.milliseconds:.1f} ms)", box=box.SIMPLE_HEAD)
    for column in result.columns:
        table.add_column(column, overflow="fold")
    for row in result.rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)
