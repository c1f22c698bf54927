"""`demo`: the whole pipeline on this machine in one command (thin: clinipipe.pipeline.demo)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from clinipipe.cli.output import ExitCode, Verbosity, err, out, print_json


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    patients: Annotated[
        int, typer.Option("--patients", min=100, help="Synthetic patients.")
    ] = 20_000,
    seconds: Annotated[
        float, typer.Option("--seconds", min=5, help="Seconds of live clinical traffic under CDC.")
    ] = 60.0,
    keep: Annotated[
        Path | None,
        typer.Option(
            "--keep",
            help="Leave the project (spec, warehouse, backups) in this folder.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run every part of the pipeline on an embedded PostgreSQL and a local DuckDB, then print
    one summary. Nothing needs to be running; everything is cleaned up (also on Ctrl-C).

    Synthesizes a hospital, deploys, backfills, streams live clinical traffic through CDC (with
    an ADD COLUMN and a planted PHI leak mid-run), refreshes and publishes, raises the PHI
    alert, builds the Safe Harbor research schema, takes and verifies a backup, benchmarks CDC
    and the dashboards, and reports credits and dollars per warehouse. About 3 minutes at the
    defaults on 2 cores. Exit 3 when a check in the summary failed (rows loaded differ from
    the source, the planted leak not found, the backup not verified, ...), 130 on Ctrl-C.

    Examples:

      clinipipe demo

      clinipipe demo --patients 2000 --seconds 20

      clinipipe demo --keep ./demo-project   # then: cd demo-project && clinipipe status"""
    from clinipipe.pipeline.demo import DemoError, DemoOptions, run_demo

    started = time.monotonic()
    show = not Verbosity.quiet  # progress goes to stderr, also with --json
    status = err.status("starting", spinner="dots") if show else None

    def on_step(name: str, detail: str) -> None:
        if not show:
            return
        elapsed = time.monotonic() - started
        if detail:
            err.print(f"[{elapsed:5.0f} s] {name}: {detail}", markup=False, highlight=False)
        elif status is not None:
            status.update(f"{name} ...")

    options = DemoOptions(patients=patients, seconds=seconds, keep=keep)
    try:
        if status is not None:
            with status:
                summary = run_demo(options, on_step)
        else:
            summary = run_demo(options, on_step)
    except DemoError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    except KeyboardInterrupt:
        err.print("interrupted: PostgreSQL stopped, CDC stopped, temporary files removed",
                  style="yellow", markup=False)  # fmt: skip
        raise typer.Exit(130) from None
    if as_json:
        print_json(summary)
    else:
        print_summary(summary)
    if not healthy(summary):
        raise typer.Exit(ExitCode.FOUND)


def healthy(summary: dict[str, Any]) -> bool:
    """Everything the demo shows worked: rows loaded = source rows, the planted leak found,
    the backup verified, the added column replicated, no request failed."""
    b = summary["backfill"]
    return bool(
        b["loaded_rows"] == b["source_rows"]
        and summary["phi"]["planted_leak_found"]
        and summary["backup"]["verified"]
        and summary["added_column"]["in_warehouse"]
        and summary["dashboard_bench"]["errors"] == 0
        and summary["cdc_bench"]["applied_all"]
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _lag(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"


def print_summary(s: dict[str, Any]) -> None:
    table = Table(
        title=f"clinipipe demo: {s['patients']:,} patients, {s['seconds']:.0f} s",
        show_header=False,
        title_justify="left",
    )
    table.add_column("what", style="bold")
    table.add_column("result")
    b = s["backfill"]
    same = "= source counts" if b["loaded_rows"] == b["source_rows"] else "≠ SOURCE COUNTS"
    table.add_row(
        "rows loaded",
        f"{b['rows']:,} ({same}) in {b['seconds']:.1f} s: "
        f"{b['rows_per_second']:,} rows/s, {b['mb_per_second']:,} MB/s",
    )
    t = s["traffic"]
    table.add_row(
        "live traffic",
        f"{t['admissions']:,} admissions, {t['lab_results']:,} lab "
        f"results, {t['discharges']:,} discharges, {t['note_edits']:,} note edits",
    )
    c = s["cdc_bench"]
    table.add_row(
        "CDC latency",
        f"commit -> target p50 {_ms(c['target']['p50'])}, p99 "
        f"{_ms(c['target']['p99'])} ({c['rows']:,} rows at {c['achieved_rate']:,.0f}/s)",
    )
    if c["interactive"]:
        i = c["interactive"]
        table.add_row(
            "", f"commit -> interactive {i['table']} p50 {_ms(i['p50'])}, p99 {_ms(i['p99'])}"
        )
    d = s["dashboard_bench"]
    table.add_row(
        "dashboard latency",
        f"p50 {_ms(d['latency_ms']['p50'])}, p99 "
        f"{_ms(d['latency_ms']['p99'])} at {d['achieved_rate']:,.0f}/s of "
        f"{d['offered_rate']:,.0f}/s offered, {d['errors']} errors",
    )
    for dyn in s["dynamic_tables"]:
        table.add_row(
            f"dynamic {dyn['name']}",
            f"lag {_lag(dyn['lag_seconds'])} (target "
            f"{_lag(dyn['target_lag_seconds'])}), {dyn['refreshes']} refreshes",
        )
    for inter in s["interactive_tables"]:
        table.add_row(
            f"interactive {inter['name']}",
            f"lag {_lag(inter['lag_seconds'])}, generation {inter['generation']}",
        )
    a = s["added_column"]
    table.add_row(
        "schema change",
        f"{a['table']}.{a['column']} added mid-run: "
        + ("in the warehouse" if a["in_warehouse"] else "NOT in the warehouse"),
    )
    p = s["phi"]
    table.add_row(
        "PHI",
        f"{p['findings']:,} findings {p['by_severity']}; planted leak in "
        f"medications.frequency: "
        + (
            "found " + ", ".join(p["planted_leak"]["categories"])
            if p["planted_leak_found"]
            else "NOT FOUND"
        )
        + f"; {p['alerts_received']} webhook alert(s) received",
    )
    r = s["redact"]
    table.add_row(
        "research schema",
        f"{r['schema']}: {r['tables']} tables, {r['rows']:,} rows, "
        "Safe Harbor, final scan "
        + ("clean" if r["clean"] else "FOUND PHI")
        + (
            f" ({', '.join(r['left_out'])} left out at this size: run `clinipipe redact "
            "--policy safe_harbor` in a --keep project)"
            if r["left_out"]
            else ""
        ),
    )
    bk = s["backup"]
    table.add_row(
        "backup",
        f"{bk['id']}: {bk['tables']} tables, "
        + ("verified (every object re-read)" if bk["verified"] else "VERIFY FAILED"),
    )
    cost = s["cost"]
    price = cost["credit_price_usd"]
    for w in cost["warehouses"]:
        table.add_row(
            f"cost {w['role']}",
            f"{w['name']} ({w['size']}): {w['credits']:,.3f} credits, ${w['usd']:,.2f}",
        )
    table.add_row(
        "cost total",
        f"{cost['total_credits']:,.3f} credits, ${cost['total_usd']:,.2f} "
        f"(at ${price:g}/credit); first year {cost['first_year_credits']:,.0f} credits",
    )
    for single in cost["single_warehouse"]:
        saving = single["saving_first_year_pct"]
        table.add_row(
            f"vs single {single['kind']}",
            f"{single['size']}: first year "
            f"{single['first_year_credits']:,.0f} credits" + _saving_text(saving),
        )
    table.add_row("project", s["project"] or "removed (use --keep DIR to keep it)")
    out.print(table)


def _saving_text(saving: float | None) -> str:
    """What the dual-warehouse setup saves against one warehouse, or what it costs more."""
    if saving is None:
        return ""
    if saving < 0:
        return f" (dual costs {-saving:,.0f}% more)"
    return f" (dual saves {saving:,.0f}%)"
