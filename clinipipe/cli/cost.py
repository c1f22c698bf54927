"""`cost report` and `cost anomalies`: what the pipeline costs on Snowflake, and spend alerts."""

from __future__ import annotations

import csv
import datetime as dt
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.state import State

if TYPE_CHECKING:
    from clinipipe.cost.anomalies import Anomaly
    from clinipipe.cost.report import CostReport

UTC = dt.timezone.utc
BY = ("warehouse", "day", "job")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="What the pipeline costs on Snowflake, and spend anomalies.",
                        no_args_is_help=True)  # fmt: skip
    group.command("report")(report)
    group.command("anomalies")(anomalies)
    app.add_typer(group, name="cost")


def _compare_size(value: str) -> str:
    from pydantic import TypeAdapter, ValidationError

    from clinipipe.spec.types import WarehouseSize

    kind, _, size = value.partition(":")
    if kind.strip().lower() != "single" or not size:
        err.print("error: --compare takes single:SIZE (e.g. single:MEDIUM)", style="red")
        raise typer.Exit(ExitCode.USAGE)
    try:
        return str(TypeAdapter(WarehouseSize).validate_python(size))
    except ValidationError as exc:
        err.print(f"error: --compare: {exc.errors()[0]['msg']}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE) from None


def report(
    ctx: typer.Context,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Days to report.")] = 30,
    by: Annotated[
        str, typer.Option("--by", help="Rows of the main table: warehouse, day or job.")
    ] = "warehouse",
    compare: Annotated[
        str,
        typer.Option("--compare", help="The single warehouse to compare with (single:SIZE)."),
    ] = "single:MEDIUM",
    backfill_hours: Annotated[
        float,
        typer.Option(
            "--backfill-hours",
            min=0.01,
            help="Deadline for the backfill on the right-sized single warehouse.",
        ),
    ] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the --by rows as CSV.")] = False,
) -> None:
    """Credits and dollars per warehouse and day, one-off vs steady, projected month and year,
    the comparison with a single warehouse, idle share, top jobs, spend anomalies and sizing
    advice. Every figure comes from metering (on Snowflake, billed credits from
    ACCOUNT_USAGE.WAREHOUSE_METERING_HISTORY).

    Examples:

      clinipipe cost report --days 30

      clinipipe cost report --by job --compare single:LARGE --json"""
    from clinipipe.cost.anomalies import find_anomalies
    from clinipipe.cost.report import build_report
    from clinipipe.cost.sizing import advise
    from clinipipe.pipeline.operations import cost_inputs

    if by not in BY:
        err.print(f"error: --by takes one of {', '.join(BY)}", style="red")
        raise typer.Exit(ExitCode.USAGE)
    if as_json and as_csv:
        err.print("error: --json and --csv exclude each other", style="red")
        raise typer.Exit(ExitCode.USAGE)
    size = _compare_size(compare)
    state: State = ctx.obj
    loaded = state.spec()
    now = dt.datetime.now(UTC)
    got = cost_inputs(loaded, days, now, notify=state.notify)
    rep = build_report(loaded.spec, got.metered, start=got.start, end=got.end,
                       compare=size, backfill_hours=backfill_hours,
                       billed=got.billed)  # fmt: skip
    if got.note:
        rep.notes.append(got.note)
    found = find_anomalies(loaded.spec, got.metered, now.timestamp(), got.running)
    advice = advise(loaded.spec, got.metered, span_hours=rep.steady_hours)
    if as_json:
        print_json({**rep.as_dict(), "anomalies": [a.as_dict() for a in found],
                    "sizing": advice.as_dict()})  # fmt: skip
        return
    if as_csv:
        _csv(rep, by)
        return
    _print_report(rep, by)
    _print_sizing(advice)
    _print_anomalies([a for a in found if a.open], title="Open spend anomalies")


def _csv(rep: CostReport, by: str) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if by == "warehouse":
        writer.writerow(["warehouse", "role", "size", "credits", "usd", "idle_share", "jobs"])
        for w in rep.warehouses:
            writer.writerow([w.name, w.role, w.size, f"{w.credits:.6f}", f"{w.usd:.4f}",
                             f"{w.idle_share:.4f}", w.jobs])  # fmt: skip
    elif by == "day":
        writer.writerow(["date", "warehouse", "credits", "usd"])
        for d in rep.daily:
            writer.writerow([d.date, d.warehouse, f"{d.credits:.6f}", f"{d.usd:.4f}"])
    else:
        writer.writerow(["job", "warehouse", "runs", "credits", "usd", "cpu_seconds"])
        for j in rep.by_job:
            cpu = "" if j.cpu_seconds is None else f"{j.cpu_seconds:.3f}"
            writer.writerow([j.job, j.warehouse, j.runs, f"{j.credits:.6f}", f"{j.usd:.4f}", cpu])


def _c(credits: float) -> str:
    return f"{credits:,.2f}" if abs(credits) >= 0.01 or credits == 0 else f"{credits:.4f}"


def _usd(value: float) -> str:
    return f"${value:,.2f}"


def _print_report(rep: CostReport, by: str) -> None:
    from clinipipe.cost.report import daily_totals

    price = rep.credit_price
    out.print(f"Cost {rep.window_start:%Y-%m-%d} .. {rep.window_end:%Y-%m-%d %H:%M} UTC "
              f"at ${price:g}/credit ({rep.source})")  # fmt: skip
    if by == "warehouse":
        t = Table(title="Per warehouse", box=box.SIMPLE_HEAD)
        for col in ("warehouse", "role", "size", "jobs", "credits", "USD", "idle"):
            right = col in ("jobs", "credits", "USD", "idle")
            t.add_column(col, justify="right" if right else "left", overflow="fold",
                         no_wrap=col == "warehouse")  # fmt: skip
        for w in rep.warehouses:
            t.add_row(w.name, w.role, w.size, f"{w.jobs:,}", _c(w.credits), _usd(w.usd),
                      f"{w.idle_share:.0%}")  # fmt: skip
        out.print(t)
    elif by == "day":
        t = Table(title="Per day", box=box.SIMPLE_HEAD)
        for col in ("date", "warehouse", "credits", "USD"):
            t.add_column(
                col, justify="right" if col in ("credits", "USD") else "left", overflow="fold"
            )
        for d in rep.daily:
            t.add_row(d.date, d.warehouse, _c(d.credits), _usd(d.usd))
        out.print(t)
    else:
        t = Table(
            title="Per job",
            caption="CPU s: clinipipe's own CPU for the jobs, not the warehouse's",
            box=box.SIMPLE_HEAD,
        )
        for col in ("job", "warehouse", "runs", "credits", "USD", "CPU s"):
            t.add_column(
                col,
                justify="right" if col in ("runs", "credits", "USD", "CPU s") else "left",
                overflow="fold",
            )
        for j in rep.by_job:
            cpu = "-" if j.cpu_seconds is None else f"{j.cpu_seconds:,.2f}"
            t.add_row(j.job, j.warehouse, f"{j.runs:,}", _c(j.credits), _usd(j.usd), cpu)
        out.print(t)

    s = Table(title="One-off, steady, projected", box=box.SIMPLE_HEAD)
    for col in ("", "credits", "USD"):
        s.add_column(col, justify="left" if not col else "right")
    s.add_row(
        "initialization (one-off)", _c(rep.one_off_credits), _usd(rep.one_off_credits * price)
    )
    s.add_row(f"steady ({rep.steady_hours:,.1f} h measured)", _c(rep.steady_credits),
              _usd(rep.steady_credits * price))  # fmt: skip
    s.add_row("steady, projected month", _c(rep.month_credits), _usd(rep.month_credits * price))
    s.add_row("steady, projected year", _c(rep.year_credits), _usd(rep.year_credits * price))
    s.add_row("first year (one-off + year)", _c(rep.first_year_credits),
              _usd(rep.first_year_credits * price))  # fmt: skip
    out.print(s)

    c = Table(title="Against one single warehouse (same measured work)", box=box.SIMPLE_HEAD)
    for col in ("single warehouse", "month", "first year", "saving/month", "saving/1st yr",
                "backfill on it"):  # fmt: skip
        c.add_column(col, justify="left" if col == "single warehouse" else "right", overflow="fold")
    for single in rep.singles:
        saving = rep.saving(single)
        label = f"{single.size} always on"
        if single.kind != "always-on":
            label = f"{single.size} auto-suspend {single.auto_suspend:g} s (right-sized)"
        c.add_row(
            label, _c(single.steady_month_credits), _c(single.first_year_credits),
            "-" if saving["month_pct"] is None else f"{saving['month_pct']:.0f} %",
            "-" if saving["first_year_pct"] is None else f"{saving['first_year_pct']:.0f} %",
            f"{single.backfill_hours:,.2f} h",
        )  # fmt: skip
    out.print(c)

    if rep.top_jobs:
        j = Table(title="Top jobs", box=box.SIMPLE_HEAD)
        for col in ("job", "warehouse", "started (UTC)", "seconds", "credits", "USD"):
            j.add_column(
                col,
                justify="right" if col in ("seconds", "credits", "USD") else "left",
                overflow="fold",
            )
        for job in rep.top_jobs:
            j.add_row(job.job, job.warehouse, job.started_at[:19], f"{job.seconds:,.1f}",
                      _c(job.credits), _usd(job.usd))  # fmt: skip
        out.print(j)

    days = daily_totals(rep)
    top = max((v for _, v in days), default=0.0)
    out.print("Daily spend (credits)")
    width = 40
    for day, value in days:
        bar = "█" * (round(width * value / top) if top > 0 else 0)
        if value > 0 and not bar:
            bar = "▏"
        out.print(f"  {day}  {bar:<{width}} {_c(value)}", markup=False)
    for note in rep.notes:
        info(f"note: {note}")


def _print_sizing(advice: Any) -> None:
    t = Table(title="Sizing advice", box=box.SIMPLE_HEAD)
    t.add_column("", justify="left")
    t.add_column("advice", justify="left")
    if advice.initialization_size:
        scaling = (f"scaling measured, alpha {advice.scaling_alpha:.2f}" if advice.scaling_measured
                   else "perfect scaling assumed")  # fmt: skip
        t.add_row("initialization size",
                  f"{advice.initialization_size}: {advice.initialization_hours:,.2f} h, "
                  f"{_c(advice.initialization_credits)} credits ({scaling})")  # fmt: skip
    if advice.auto_suspend is not None:
        t.add_row("incremental auto_suspend",
                  f"{advice.auto_suspend} s: {_c(advice.auto_suspend_month_credits)} "
                  "credits/month")  # fmt: skip
    out.print(t)
    for note in advice.notes:
        info(f"note: {note}")


def _print_anomalies(found: list[Anomaly], *, title: str) -> None:
    if not found:
        out.print(f"{title}: none")
        return
    t = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("kind", "warehouse", "when", "actual", "expected", "open"):
        t.add_column(
            col, justify="right" if col in ("actual", "expected") else "left", overflow="fold"
        )
    for a in found:
        style = "red" if a.open else None
        t.add_row(a.kind, a.warehouse or "-", f"{a.granularity} {a.at[:16]}", _c(a.actual),
                  _c(a.expected), "OPEN" if a.open else "", style=style)  # fmt: skip
    out.print(t)


def anomalies(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the anomalies as JSON.")] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Also list the anomalies of the past (not open).")
    ] = False,
) -> None:
    """Spend anomalies: daily and hourly spend per warehouse against its seasonal baseline
    (spikes, level shifts, drifts), the month's forecast against cost.monthly_budget_credits,
    and running jobs over cost.max_job_credits. Open anomalies go to the cost.alerts webhook
    when set. Exit 3 when an anomaly is open.

    Examples:

      clinipipe cost anomalies

      clinipipe cost anomalies --json"""
    from clinipipe.cost.anomalies import AlertConfigError, CostAlert, find_anomalies, sender_for
    from clinipipe.pipeline.operations import cost_inputs

    state: State = ctx.obj
    loaded = state.spec()
    try:
        sender = sender_for(loaded, on_event=lambda m: err.print(f"warning: {m}", markup=False))
    except AlertConfigError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE) from None
    now = dt.datetime.now(UTC)
    got = cost_inputs(loaded, 1, now, notify=state.notify)
    found = find_anomalies(loaded.spec, got.metered, now.timestamp(), got.running)
    open_ = [a for a in found if a.open]
    if sender is not None:
        if open_:
            sender.send(CostAlert(loaded.spec.name, tuple(open_), now))
        stats = sender.close()
        if open_ and stats.sent == 0:
            err.print(f"warning: the cost alert was not delivered ({stats.last_error})",
                      style="yellow", markup=False)  # fmt: skip
    shown = found if all_ else open_
    if as_json:
        print_json({"anomalies": [a.as_dict() for a in shown], "open": len(open_),
                    "snowflake_anomalies_daily": got.snowflake_anomalies})  # fmt: skip
    else:
        _print_anomalies(shown, title="Spend anomalies" if all_ else "Open spend anomalies")
        if got.snowflake_anomalies is not None:
            t = Table(title="Snowflake's own detector (ACCOUNT_USAGE.ANOMALIES_DAILY)",
                      box=box.SIMPLE_HEAD)  # fmt: skip
            for col in ("date", "anomaly", "actual", "forecast", "upper bound"):
                t.add_column(col)
            for row in got.snowflake_anomalies:
                t.add_row(str(row[0]), "yes" if row[1] else "", str(row[2]), str(row[3]),
                          str(row[5]))  # fmt: skip
            out.print(t)
        if got.note:
            info(f"note: {got.note}")
    if open_:
        raise typer.Exit(ExitCode.FOUND)
