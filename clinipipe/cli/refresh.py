"""`refresh` and `status`: dynamic tables, refreshed now or watched against their target lag."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.state import State


def register(app: typer.Typer) -> None:
    app.command("refresh")(refresh)
    app.command("status")(status)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def refresh(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            help="The dynamic table to refresh (default: all of them).", show_default=False
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Rebuild on the initialization warehouse instead of changed keys only."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Refresh a dynamic table now (changed keys only, or --full). Exit 1 if any refresh failed.

    The tables it reads are refreshed first. On DuckDB each table's refresh is one transaction:
    a failed one changes nothing and is recorded as FAILED in
    _clinipipe.dynamic_table_refresh_history.

    Examples:

      clinipipe refresh

      clinipipe refresh patient_summary --full"""
    from clinipipe.pipeline.operations import refresh_now
    from clinipipe.pipeline.refresh import RefreshError

    state: State = ctx.obj
    loaded = state.spec()
    if not loaded.spec.dynamic_tables:
        info("The spec has no dynamic tables; nothing to refresh.")
        if as_json:
            print_json([])
        return
    try:
        results = refresh_now(loaded, name, full=full, notify=state.notify)
    except RefreshError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    if as_json:
        print_json([r.as_dict() for r in results])
    else:
        table = Table(title="Dynamic table refreshes", box=box.SIMPLE_HEAD)
        table.add_column("table", no_wrap=True)
        table.add_column("refresh", overflow="fold")
        for column in ("rows", "keys", "time"):
            table.add_column(column, no_wrap=True, justify="right")
        table.add_column("warehouse", overflow="fold")
        for r in results:
            rows = "-"
            if r.rows_inserted is not None or r.rows_deleted is not None:
                rows = f"+{r.rows_inserted or 0:,} -{r.rows_deleted or 0:,}"
            keys = "-" if r.keys_changed is None else f"{r.keys_changed:,}"
            done = r.refresh_action if r.state == "SUCCEEDED" else r.state
            if r.state == "FAILED":
                done = f"FAILED ({r.refresh_action})"
            style = {"FAILED": "red", "SKIPPED": "yellow"}.get(r.state)
            table.add_row(
                r.name, done, rows, keys, _seconds(r.seconds), r.warehouse or "-", style=style
            )
        out.print(table)
        for r in results:
            if r.state_message:
                colour = "red" if r.state == "FAILED" else "dim"
                err.print(f"{r.name}: {r.state_message}", style=colour, markup=False)
    if any(r.state == "FAILED" for r in results):
        raise typer.Exit(ExitCode.FAILURE)


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show each dynamic table's lag against its target and its last refresh, and each
    interactive table's last publish.

    Lag is now minus the data timestamp of the table's last successful refresh (the moment up
    to which it reflects its inputs); for an interactive table, of the data it serves. Exit 3
    when a table is behind: its lag exceeds its target_lag, it was never built or published,
    or its last refresh failed (`cdc start` keeps tables within their lag; `clinipipe refresh`
    and `clinipipe publish` catch up by hand). While `cdc start` runs it answers; otherwise
    the warehouse is opened read-only.

    Examples:

      clinipipe status

      clinipipe status --json"""
    from clinipipe.pipeline.operations import pipeline_status
    from clinipipe.sql.context import DERIVED_SCHEMA

    state: State = ctx.obj
    loaded = state.spec()
    report = pipeline_status(loaded, notify=state.notify)
    statuses, served = report.dynamic_tables, report.interactive_tables
    if as_json:
        print_json(report.as_dict())
    else:
        # 80 columns: the state goes under the lag, the warehouse under the last refresh.
        table = Table(title="Dynamic tables", box=box.SIMPLE_HEAD, pad_edge=False)
        # The name and the last refresh (action, time, warehouse: short lines) never wrap; the
        # others wrap between words, so the table always fits 80 columns (with every column
        # unwrappable, Rich prints "..." once their sum passes the width).
        table.add_column("table", no_wrap=True)
        table.add_column("lag / target")
        table.add_column("last refresh", no_wrap=True)  # a warehouse name stays whole
        table.add_column("changes")
        table.add_column("metered 24 h")
        for s in statuses:
            last = s.last
            flag = "ok"
            if last is None:
                flag = "never built"
            elif last.state != "SUCCEEDED":
                flag = last.state
            elif s.behind:
                flag = "BEHIND"
            cells = ["-", "-"]
            if last is not None:
                started = f"{last.refresh_start_time.astimezone():%H:%M:%S}"
                rows = "-"
                if last.rows_inserted is not None or last.rows_deleted is not None:
                    rows = f"+{last.rows_inserted or 0:,} -{last.rows_deleted or 0:,}"
                keys = ""
                if last.keys_changed is not None:
                    keys = f"\n{last.keys_changed:,} key{'s' if last.keys_changed != 1 else ''}"
                cells = [f"{last.refresh_action}\n{started}, {_seconds(last.seconds)}\n"
                         f"{last.warehouse or '-'}", rows + keys]  # fmt: skip
            runs = sum(use.jobs for use in s.metered.values())
            busy = sum(use.seconds for use in s.metered.values())
            metered = f"{runs} × {_seconds(busy)}" if runs else ""  # noqa: RUF001
            table.add_row(
                s.name, f"{_lag(s.lag_seconds, s.target_lag_seconds)}\n{flag}", *cells,
                metered or "-", style="yellow" if s.behind else None,
            )  # fmt: skip
        out.print(table)
        for s in statuses:
            if s.last is not None and s.last.state != "SUCCEEDED" and s.last.state_message:
                err.print(f"{s.name}: {s.last.state_message}", style="red", markup=False)
        if served:
            serving = Table(title="Interactive tables", box=box.SIMPLE_HEAD, pad_edge=False)
            serving.add_column("table", no_wrap=True)
            serving.add_column("source", no_wrap=True)
            serving.add_column("lag / target")
            serving.add_column("published")
            serving.add_column("rows", justify="right", no_wrap=True)
            for i in served:
                last_publish = i.last
                state = "never published" if last_publish is None else (
                    "BEHIND" if i.behind else "ok")  # fmt: skip
                serving.add_row(
                    i.name, i.source.removeprefix(f"{DERIVED_SCHEMA}."),
                    f"{_lag(i.lag_seconds, i.target_lag_seconds, '-')}\n{state}",
                    "-" if last_publish is None else f"gen {last_publish.generation}, "
                    f"{last_publish.published_at.astimezone():%H:%M:%S}",
                    "-" if last_publish is None else f"{last_publish.rows:,}",
                    style="yellow" if i.behind else None,
                )  # fmt: skip
            out.print(serving)
    if any(s.behind for s in statuses) or any(i.behind for i in served):
        raise typer.Exit(ExitCode.FOUND)


def _lag(lag: float | None, target: float | None, no_target: str = "downstream") -> str:
    return f"{_seconds(lag)} / {no_target if target is None else _seconds(target)}"
