"""`scan`: PHI where it must not be (non-PHI columns, de-identified schemas)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from clinipipe.cli.output import ExitCode, Verbosity, err, info, out, print_json
from clinipipe.cli.state import State

SEVERITY_STYLE = {"high": "red", "medium": "yellow", "low": "dim"}
SHOWN = 100
"""Groups of findings listed in the table (all findings are in --json and in the table)."""


def register(app: typer.Typer) -> None:
    app.command("scan")(scan)


def _split(values: list[str] | None) -> tuple[str, ...]:
    """`--tables a,b --tables c` -> ('a', 'b', 'c')."""
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


def scan(
    ctx: typer.Context,
    tables: Annotated[
        list[str] | None,
        typer.Option(
            "--tables", help="Only these tables (repeat, or comma-separated).", show_default=False
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema",
            help="Only this schema: raw, or one of phi.deidentified_schemas (e.g. research).",
            show_default=False,
        ),
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample", min=1, help="Rows per table to look at (a random sample; default 10000)."
        ),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Look at every row.")] = False,
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Exit 3 when a finding has this severity or higher: low, medium, high "
            "(default: the spec's phi.fail_on, else low).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Find PHI where it must not be: unclassified columns, and de-identified schemas.

    Stage 1 runs inside the warehouse (regex pushdown: only candidate rows leave it); stage 2
    validates them with clinipipe's detectors. Findings are recorded in _clinipipe.phi_findings
    (a re-scan updates last_seen) with masked excerpts only: the PHI itself is never stored or
    printed. On Snowflake, SYSTEM$CLASSIFY's column classification is merged in. Exit 3 when a
    finding reaches --fail-on.

    Examples:

      clinipipe scan --fail-on medium

      clinipipe scan --schema research --full --json"""
    from clinipipe.phi.categories import SEVERITIES
    from clinipipe.pipeline.operations import scan_now
    from clinipipe.pipeline.scan import DEFAULT_SAMPLE, ScanError, ScanOptions

    if full and sample is not None:
        err.print("error: give --sample N or --full, not both", style="red")
        raise typer.Exit(ExitCode.USAGE)
    if fail_on is not None and fail_on.lower() not in SEVERITIES:
        err.print(
            f"error: --fail-on must be one of {', '.join(SEVERITIES)} (got {fail_on!r})",
            style="red",
            markup=False,
        )
        raise typer.Exit(ExitCode.USAGE)
    state: State = ctx.obj
    loaded = state.spec()
    options = ScanOptions(
        tables=_split(tables),
        schema=schema,
        sample=None if full else (sample or DEFAULT_SAMPLE),
        fail_on=fail_on.lower() if fail_on else None,
    )
    show_progress = not (as_json or Verbosity.quiet) and err.is_terminal
    progress = Progress(
        TextColumn("scanning {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show_progress,
        transient=True,
    )
    task = progress.add_task("", total=None)

    def on_table(name: str, done: int, total: int) -> None:
        progress.update(task, description=name, completed=done, total=total)

    try:
        with progress:
            report = scan_now(loaded, options, on_table=on_table, notify=state.notify)
    except ScanError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    for note in report.notes:
        err.print(f"note: {note}", style="yellow", markup=False)
    if report.failed:
        raise typer.Exit(ExitCode.FOUND)


def _print_report(report: object) -> None:
    from clinipipe.phi.scan import Finding
    from clinipipe.pipeline.scan import ScanReport

    assert isinstance(report, ScanReport)
    scope = "every row" if report.sample is None else f"a sample of {report.sample:,} rows/table"
    tables = Table(title=f"PHI scan ({scope})", box=box.SIMPLE_HEAD)
    tables.add_column("table", no_wrap=True)
    for column in ("columns", "candidate rows", "findings"):
        tables.add_column(column, justify="right", no_wrap=True)
    for t in report.tables:
        style = "red" if t.findings else None
        tables.add_row(
            f"{t.schema}.{t.table}",
            str(t.columns),
            f"{t.candidate_rows:,}",
            f"{t.findings:,}",
            style=style,
        )
    out.print(tables)
    if report.findings:
        # One line per place and masked excerpt: a categorical column repeats the same finding
        # in many rows (all of them are in --json and in _clinipipe.phi_findings).
        groups: dict[tuple[str, ...], list[Finding]] = {}
        for f in report.findings:
            place = (f.severity, f.category, f"{f.schema}.{f.table}.{f.column}", f.masked_excerpt)
            groups.setdefault(place, []).append(f)
        found = Table(title="Findings (masked)", box=box.SIMPLE_HEAD)
        for column in ("severity", "category", "where", "rows", "excerpt"):
            found.add_column(column, overflow="fold", no_wrap=column == "where")
        rank = {"high": 0, "medium": 1, "low": 2}
        ordered = sorted(groups.items(), key=lambda g: (rank[g[0][0]], -len(g[1]), g[0][2]))
        for (severity, category, where, excerpt), members in ordered[:SHOWN]:
            first = members[0]
            at = "column" if first.start is None else f"at {first.start}"
            more = f" and {len(members) - 1:,} more" if len(members) > 1 else ""
            found.add_row(
                severity,
                category,
                Text(where),
                Text(f"{first.row_key} ({at}){more}"),
                Text(excerpt),
                style=SEVERITY_STYLE[severity],
            )
        out.print(found)
        if len(ordered) > SHOWN:
            info(f"... and {len(ordered) - SHOWN:,} more groups (see --json or phi_findings)")
    verdict = "at or above" if report.failed else "below"
    counts = ", ".join(f"{n:,} {s}" for s, n in sorted(report.counts()["severity"].items()))
    out.print(
        Text(
            f"{len(report.findings):,} finding{'s' if len(report.findings) != 1 else ''}"
            f"{f' ({counts})' if counts else ''} in {len(report.tables)} tables, "
            f"{report.seconds:.1f} s; {verdict} --fail-on {report.fail_on}."
        )
    )
