"""`bench dashboard|cdc|backfill|all`: measure the pipeline on this machine (thin: the work is
clinipipe.pipeline.bench_run, the JSON document is docs/BENCH_JSON.md)."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import typer
from rich.table import Table

from clinipipe.cli.output import ExitCode, Verbosity, err, info, out, print_json
from clinipipe.cli.state import State

bench_app = typer.Typer(
    help="Measure the pipeline on this machine: dashboard latency under an open-loop load, "
    "CDC commit-to-visible latency, backfill throughput. Rich tables, or one JSON document "
    "with --json (schema: docs/BENCH_JSON.md); every run is metered (job bench:<kind>).\n\n"
    "Examples:\n\n"
    "  clinipipe bench dashboard --qps 200 --duration 60 --processes 2\n\n"
    "  clinipipe bench dashboard --users 1000 --think-time 5s --duration 30\n\n"
    "  clinipipe bench cdc --rate 1000/min --duration 60\n\n"
    "  clinipipe bench cdc --rate 20000/s --duration 15 --json\n\n"
    "  clinipipe bench backfill --json\n\n"
    "  clinipipe bench all --json > bench.json",
    no_args_is_help=True,
)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (docs/BENCH_JSON.md).")
]
DurationOpt = Annotated[
    str, typer.Option("--duration", help="How long to offer the load: 60, 60s, 2m.")
]


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


def seconds_of(text: str, option: str) -> float:
    """Seconds from `60`, `60s`, `1.5m`, `500ms`; a usage error naming `option` otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*", text.lower())
    if not found or float(found.group(1)) <= 0:
        raise typer.BadParameter(f"not a duration: {text!r} (e.g. 60, 60s, 2m)", param_hint=option)
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[found.group(2)]
    return float(found.group(1)) * scale


def _run(state: State, command: str, as_json: bool, sections: dict[str, Any]) -> None:
    from clinipipe.pipeline.bench_run import document

    data = document(command, sections, state.load_before)  # type: ignore[attr-defined]
    if as_json:
        print_json(data)
    else:
        _print(data)


def _progress(as_json: bool) -> Any:
    def say(message: str) -> None:
        if not as_json:
            info(message)

    return say


def _errors(exc: Exception) -> typer.Exit:
    err.print(f"error: {exc}", style="red", markup=False)
    return typer.Exit(ExitCode.USAGE if getattr(exc, "usage", False) else ExitCode.FAILURE)


@bench_app.callback()
def _bench(ctx: typer.Context) -> None:
    ctx.obj.load_before = os.getloadavg()


def _dashboard(ctx: typer.Context, qps: float | None, users: int | None, think: str | None,
               duration: str, processes: int, as_json: bool) -> dict[str, Any]:  # fmt: skip
    from clinipipe.bench.loadgen import offered_rate
    from clinipipe.pipeline.bench_run import BenchError, bench_dashboard

    if users is None and think is not None:
        raise typer.BadParameter("--think-time goes with --users", param_hint="--think-time")
    try:
        rate = offered_rate(
            qps=None if users is not None else (qps if qps is not None else 200.0),
            users=users,
            think_seconds=seconds_of(think or "5s", "--think-time") if users else None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--qps/--users") from None
    state: State = ctx.obj
    try:
        return bench_dashboard(state.spec(), rate=rate, seconds=seconds_of(duration, "--duration"),
                               processes=processes, progress=_progress(as_json))  # fmt: skip
    except (BenchError, RuntimeError) as exc:
        raise _errors(exc) from None


@bench_app.command("dashboard")
def dashboard(
    ctx: typer.Context,
    qps: Annotated[
        float | None,
        typer.Option("--qps", min=0.001, help="Offered requests per second (default 200)."),
    ] = None,
    users: Annotated[
        int | None,
        typer.Option(
            "--users",
            min=1,
            help="Offered load as users, each sending one request per --think-time.",
        ),
    ] = None,
    think: Annotated[
        str | None,
        typer.Option("--think-time", help="With --users: time between one user's requests (5s)."),
    ] = None,
    duration: DurationOpt = "60",
    processes: Annotated[
        int, typer.Option("--processes", min=1, max=64, help="Client processes sharing the load.")
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """The spec's dashboards under an open-loop load, from separate processes, against the
    published interactive tables (CDC may be running).

    Requests arrive at a constant rate whatever the answers do (latency counts from each
    request's due time: no coordinated omission); parameters are drawn from the values the
    interactive tables hold. Reports achieved vs offered rate, p50/p95/p99/p99.9/max, errors
    and a latency histogram.

    Examples:

      clinipipe bench dashboard --qps 200 --duration 60 --processes 2

      clinipipe bench dashboard --users 1000 --think-time 5s --json"""
    if qps is not None and users is not None:
        raise typer.BadParameter("give --qps or --users, not both", param_hint="--users")
    section = _dashboard(ctx, qps, users, think, duration, processes, as_json)
    _run(ctx.obj, "bench dashboard", as_json, {"dashboard": section})
    _verdict({"dashboard": section})


def _cdc(ctx: typer.Context, rate: str, duration: str, keep_rows: bool, as_json: bool) -> dict:
    from clinipipe.bench.cdc_latency import parse_rate
    from clinipipe.pipeline.bench_run import BenchError, bench_cdc

    try:
        per_second = parse_rate(rate)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rate") from None
    state: State = ctx.obj
    try:
        return bench_cdc(state.spec(), rate=per_second, seconds=seconds_of(duration, "--duration"),
                         keep_rows=keep_rows, progress=_progress(as_json))  # fmt: skip
    except BenchError as exc:
        raise _errors(exc) from None


@bench_app.command("cdc")
def cdc(
    ctx: typer.Context,
    rate: Annotated[
        str, typer.Option("--rate", help="Rows inserted per unit of time: 1000/min, 20000/s.")
    ] = "1000/min",
    duration: DurationOpt = "60",
    keep_rows: Annotated[
        bool,
        typer.Option(
            "--keep-rows",
            help="Leave the inserted rows in the source (default: deleted afterwards).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Commit-to-visible latency of CDC: lab results inserted at a constant rate on the source,
    observed from outside the CDC process.

    Visible in the target = the replication slot confirmed the row's commit (clinipipe confirms
    only after the warehouse commit; an upper bound); visible in the interactive table = first
    seen in a published generation. Uses the running `cdc start`, else runs one for the
    measurement. Needs the synthetic hospital's labs table (clinipipe synth).

    Examples:

      clinipipe bench cdc --rate 1000/min --duration 60

      clinipipe bench cdc --rate 20000/s --duration 15 --json"""
    section = _cdc(ctx, rate, duration, keep_rows, as_json)
    _run(ctx.obj, "bench cdc", as_json, {"cdc": section})
    _verdict({"cdc": section})


def _backfill(ctx: typer.Context, workers: int, as_json: bool) -> dict[str, Any]:
    from clinipipe.pipeline.backfill import BackfillError
    from clinipipe.pipeline.bench_run import BenchError, bench_backfill

    state: State = ctx.obj
    try:
        return bench_backfill(state.spec(), workers=workers, progress=_progress(as_json))
    except (BenchError, BackfillError) as exc:
        raise _errors(exc) from None


@bench_app.command("backfill")
def backfill(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Parallel range readers.")] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Rows/s and MB/s of a fresh backfill of the source into a throwaway warehouse (its own
    slot, dropped afterwards; the project's warehouse and slot are not touched).

    Examples:

      clinipipe synth --patients 20000 && clinipipe bench backfill

      clinipipe bench backfill --workers 2 --json"""
    section = _backfill(ctx, workers, as_json)
    _run(ctx.obj, "bench backfill", as_json, {"backfill": section})


@bench_app.command("all")
def all_(
    ctx: typer.Context,
    duration: Annotated[
        str, typer.Option("--duration", help="Duration of the dashboard and CDC runs.")
    ] = "30",
    qps: Annotated[
        float, typer.Option("--qps", min=0.001, help="Dashboard requests per second.")
    ] = 200.0,
    rate: Annotated[str, typer.Option("--rate", help="CDC rows per unit of time.")] = "1000/min",
    as_json: JsonOpt = False,
) -> None:
    """backfill, then cdc, then dashboard, in one document.

    Examples:

      clinipipe bench all

      clinipipe bench all --duration 10 --json > bench.json"""
    sections = {"backfill": _backfill(ctx, 4, as_json)}
    sections["cdc"] = _cdc(ctx, rate, duration, False, as_json)
    sections["dashboard"] = _dashboard(ctx, qps, None, None, duration, 1, as_json)
    _run(ctx.obj, "bench all", as_json, sections)
    _verdict(sections)


def _verdict(sections: dict[str, Any]) -> None:
    """Exit 3 when a request failed or CDC did not apply every row (the run found problems)."""
    board = sections.get("dashboard")
    cdc_section = sections.get("cdc")
    if (board and board["errors"]) or (cdc_section and not cdc_section["applied_all"]):
        raise typer.Exit(ExitCode.FOUND)


# --- printing -------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _latency_row(table: Table, label: str, s: dict[str, Any], *extra: str) -> None:
    table.add_row(
        label,
        f"{s['count']:,}",
        *(_ms(s[k]) for k in ("p50", "p95", "p99", "p99_9", "max")),
        *extra,
    )


def _latency_table(title: str, first: str, extra: tuple[str, ...] = ()) -> Table:
    table = Table(title=title)
    for column in (first, "n", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms", *extra):
        table.add_column(column, justify="left" if column == first else "right", overflow="fold")
    return table


def _histogram(title: str, buckets: list[dict[str, Any]]) -> None:
    from clinipipe.bench.histogram import Bucket, render_bars

    if not buckets:
        return
    table = Table(title=title, show_edge=False)
    for column in ("latency", "count", "cum.", ""):
        table.add_column(column, justify="left" if column in ("latency", "") else "right")
    for row in render_bars([Bucket(**b) for b in buckets], width=36):
        table.add_row(*row)
    out.print(table)


def _print(data: dict[str, Any]) -> None:
    board = data.get("dashboard")
    if board:
        table = _latency_table(
            f"Dashboards: offered {board['offered_rate']:,.1f}/s, achieved "
            f"{board['achieved_rate']:,.1f}/s, {board['processes']} process(es), open loop"
            + (", CDC running" if board["cdc_running"] else ""),
            "dashboard",
            ("errors",),
        )
        for name, s in board["dashboards"].items():
            _latency_row(table, name, s, str(s["errors"]))
        _latency_row(table, "all", board["latency_ms"], str(board["errors"]))
        out.print(table)
        _histogram("Dashboard latency (all)", board["latency_ms"]["histogram"])
    c = data.get("cdc")
    if c:
        table = _latency_table(
            f"CDC commit -> visible: offered {c['offered_rate']:,.1f} rows/s, achieved "
            f"{c['achieved_rate']:,.1f} rows/s, {c['rows']:,} rows in {c['transactions']:,} "
            "transactions",
            "where",
            ("unseen tx",),
        )
        _latency_row(table, "target (raw)", c["target"], str(c["target"]["unseen_transactions"]))
        if c["interactive"]:
            i = c["interactive"]
            _latency_row(table, f"interactive {i['table']}", i, str(i["unseen_transactions"]))
        out.print(table)
        _histogram("CDC latency to the target", c["target"]["histogram"])
        if c["cdc_reported_ms"]:
            r = c["cdc_reported_ms"]
            info(f"clinipipe's own commit-to-apply figures (cdc status): p50 {_ms(r['p50'])} ms, "
                 f"p99 {_ms(r['p99'])} ms")  # fmt: skip
    b = data.get("backfill")
    if b:
        table = Table(title=f"Fresh backfill with {b['workers']} workers")
        for column in ("table", "rows", "MB", "rows/s"):
            table.add_column(column, justify="left" if column == "table" else "right")
        for name, t in b["tables"].items():
            table.add_row(name, f"{t['rows']:,}", f"{t['bytes'] / 1e6:,.1f}",
                          "-" if t["rows_per_second"] is None
                          else f"{t['rows_per_second']:,.0f}")  # fmt: skip
        table.add_row(
            "total", f"{b['rows']:,}", f"{b['bytes'] / 1e6:,.1f}", f"{b['rows_per_second']:,.0f}"
        )
        out.print(table)
        out.print(f"{b['rows']:,} rows in {b['seconds']:.1f} s: "
                  f"{b['rows_per_second']:,.0f} rows/s, "
                  f"{b['mb_per_second']:,.1f} MB/s")  # fmt: skip
    machine = data["machine"]
    for name in ("dashboard", "cdc", "backfill"):
        section = data.get(name)
        if section and not Verbosity.quiet:
            m = section["metering"]
            info(f"{name}: " + (f"metered (job bench:{name}, {m['job_id'][:12]})" if m["recorded"]
                                else f"not metered: {m['note']}"))  # fmt: skip
    info(f"{machine['cpus']} CPUs, load average before "
         + "/".join(f"{x:.1f}" for x in machine["load_average_before"]) + ", after "
         + "/".join(f"{x:.1f}" for x in machine["load_average_after"]))  # fmt: skip
