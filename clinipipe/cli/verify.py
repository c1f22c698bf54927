"""`clinipipe verify`: does the warehouse hold the same data as the source?"""

from __future__ import annotations

from typing import Annotated

import typer

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.state import State


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(
    ctx: typer.Context,
    tables: Annotated[
        list[str] | None,
        typer.Option("--tables", help="Only these tables (repeat or comma-separate)."),
    ] = None,
    sample: Annotated[
        float | None,
        typer.Option(
            "--sample",
            metavar="PCT",
            help="Check a random PCT % of each table's key ranges (a cheap, frequent run).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", min=0, help="Seconds to wait for a running CDC to reach the source snapshot."
        ),
    ] = 60.0,
) -> None:
    """Compare every replicated table with the source: row counts and checksums over key
    ranges computed inside PostgreSQL and the warehouse, differing ranges bisected down to the
    keys, and the columns that differ named (never their values). Consistent while `cdc
    start` runs: keys changed between the two positions are reported as not checked. Exit 0
    equal, 3 differences found, 1 not verified (failure, or CDC behind), 2 usage.

    --json prints {run_id, outcome (equal|differences|cdc_behind), started_at, ended_at,
    seconds, sample_pct, source_lsn, warehouse_lsn, cdc_running, message, counts {tables,
    rows, differences, keys_not_checked}, tables [{table, rows_checked, ranges,
    ranges_checked, ranges_differing, differences [{table, key {column: canonical text},
    kind (missing|extra|changed), columns}], keys_not_checked [key], truncated_between_positions,
    more_differences, skipped}]}.

    Examples:

      clinipipe verify

      clinipipe verify --json"""
    from clinipipe.pipeline.verify import VerifyError, VerifyOptions, verify_now

    state: State = ctx.obj
    loaded = state.spec()
    names = tuple(n.strip() for t in tables or () for n in t.split(",") if n.strip())
    try:
        report = verify_now(loaded, VerifyOptions(names, sample, wait_seconds=wait),
                            notify=state.notify)  # fmt: skip
    except VerifyError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    data = report.as_dict()
    if as_json:
        print_json(data)
    else:
        _print(data)
    if report.outcome == "cdc_behind":
        raise typer.Exit(ExitCode.FAILURE)
    if report.outcome == "differences":
        raise typer.Exit(ExitCode.FOUND)


def _print(data: dict) -> None:  # type: ignore[type-arg]
    counts = data["counts"]
    for t in data["tables"]:
        if t["skipped"]:
            info(f"{t['table']}: skipped ({t['skipped']})")
            continue
        found = len(t["differences"]) + t["more_differences"]
        state = "equal" if not found else f"{found} difference{'s' if found != 1 else ''}"
        info(f"{t['table']}: {t['rows_checked']} rows in {t['ranges_checked']}/{t['ranges']} "
             f"ranges, {state}")  # fmt: skip
        for d in t["differences"]:
            key = ", ".join(f"{k}={v}" for k, v in d["key"].items())
            what = {
                "missing": "missing in the warehouse",
                "extra": "only in the warehouse",
                "changed": "differs in " + ", ".join(d["columns"] or ["?"]),
            }[d["kind"]]
            out.print(f"  {t['table']} [{key}]: {what}", markup=False)
        if t["more_differences"]:
            out.print(f"  ... and {t['more_differences']} more", markup=False)
        if t["keys_not_checked"]:
            info(
                f"  {len(t['keys_not_checked'])} key(s) changed while verifying: not checked, "
                "re-checked next run"
            )
    if data["outcome"] == "cdc_behind":
        err.print(data["message"], style="yellow", markup=False)
        return
    verdict = "equal" if data["outcome"] == "equal" else f"{counts['differences']} difference(s)"
    info(
        f"verify {data['run_id'][:12]}: {counts['tables']} tables, {counts['rows']} rows, "
        f"{verdict} (source {data['source_lsn']}, warehouse {data['warehouse_lsn']}, "
        f"{data['seconds']:.1f} s)"
    )
