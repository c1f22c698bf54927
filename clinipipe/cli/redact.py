"""`redact`: build or bring up to date a de-identified research dataset."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.scan import _print_report
from clinipipe.cli.state import State


def register(app: typer.Typer) -> None:
    app.command("redact")(redact)


def _date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


def redact(
    ctx: typer.Context,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="safe_harbor (HIPAA 164.514(b)(2)), limited_dataset (164.514(e), needs a data "
            "use agreement) or shifted (dates shifted per patient; NOT Safe Harbor).",
            show_default=False,
        ),
    ],
    to: Annotated[
        str | None,
        typer.Option("--to", help="Output schema (default: phi.research_schema of the spec)."),
    ] = None,
    tables: Annotated[
        list[str] | None,
        typer.Option("--tables", help="Only these tables (repeat, or comma-separated)."),
    ] = None,
    surrogates: Annotated[
        bool,
        typer.Option(
            "--surrogates", help="Notes: consistent keyed surrogates instead of [CATEGORY] tags."
        ),
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Date ages are computed at (YYYY-MM-DD; default today, UTC).",
            show_default=False,
        ),
    ] = None,
    ai_redact: Annotated[
        bool,
        typer.Option(
            "--ai-redact", help="Snowflake: redact notes with AI_REDACT in the warehouse."
        ),
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="DuckDB: after a clean final scan, also write the research schema alone to "
            "this new .duckdb file (no raw, derived, serving or control table): the file to "
            "give a researcher.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the research dataset: every table de-identified column by column, by policy.

    Structured columns are transformed in SQL inside the warehouse; notes are redacted by the
    PHI detectors with each patient's own identifiers. Fails closed: a column the spec neither
    classifies nor releases (`release:`) is scrubbed (text), cut to the year (dates) or dropped.
    Tables whose source did not change since the last run are skipped; the others are rebuilt
    atomically. Then every research table of the run is scanned in full: exit 3 when the scan
    finds PHI (the dataset is then not called de-identified). Each run appends a manifest
    (policy, columns, treatments, row counts) and the scan's counts to the audit log, never
    values. The HMAC key comes from the variable named by phi.hmac_key_env, never printed.

    Examples:

      clinipipe redact --policy safe_harbor

      clinipipe redact --policy limited_dataset --tables patients,encounters"""
    from clinipipe.pipeline.operations import redact_now
    from clinipipe.pipeline.redact import RedactError, RedactOptions, export_research

    state: State = ctx.obj
    options = RedactOptions(
        policy=policy,
        schema=to,
        tables=tables,
        surrogates=surrogates,
        as_of=_date(as_of),
        ai_redact=ai_redact,
    )
    loaded = state.spec()
    if export is not None and loaded.spec.target.type != "duckdb":
        err.print(
            "error: --export writes a DuckDB file and needs a DuckDB target; on Snowflake give "
            "researchers a role that reads only the research schema (access.roles)",
            style="red",
            markup=False,
        )
        raise typer.Exit(ExitCode.USAGE)
    try:
        result = redact_now(loaded, options, notify=state.notify)
        exported = (
            export_research(loaded, result.schema, export)
            if export is not None and result.clean
            else None
        )
    except RedactError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    if as_json:
        data = result.as_dict()
        if export is not None:
            data["export"] = {"file": str(export), "tables": exported}
        print_json(data)
        if not result.clean:
            raise typer.Exit(ExitCode.FOUND)
        return
    table = Table(title=f"Research schema {result.schema} ({result.policy})", box=box.SIMPLE_HEAD)
    table.add_column("table", no_wrap=True)
    table.add_column("action")
    table.add_column("rows", justify="right")
    table.add_column("columns", overflow="fold")
    for t in result.tables:
        kept = sum(1 for c in t.columns if c["treatment"] != "drop")
        changed = [
            f"{c['column']}: {c['treatment']}" for c in t.columns if c["treatment"] != "keep"
        ]
        summary = f"{kept} of {len(t.columns)} kept; " + ", ".join(changed)
        style = None if t.action == "rebuilt" else "dim"
        table.add_row(t.table, t.action, f"{t.rows:,}", summary, style=style)
    out.print(table)
    unclassified = [f"{t.table}.{c['column']} ({c['treatment']})" for t in result.tables
                    for c in t.columns if c.get("unclassified")]  # fmt: skip
    if unclassified:
        err.print(
            f"note: {len(unclassified)} column{'s' if len(unclassified) != 1 else ''} the spec "
            f"neither classifies nor releases {'were' if len(unclassified) != 1 else 'was'} "
            f"treated as PHI (text scrubbed by the detectors, dates to the year, others "
            f"dropped): {', '.join(unclassified)}. Release those that hold no PHI with "
            "`release: [column, ...]` under their table in the spec.",
            style="yellow",
            markup=False,
        )
    released = [f"{t.table}.{c['column']}" for t in result.tables for c in t.columns
                if c.get("released")]  # fmt: skip
    if released:
        info(f"Released as they are (spec `release`): {', '.join(released)}.")
    scan = result.scan
    assert scan is not None
    if scan.report.findings:
        _print_report(scan.report)
    for note in scan.report.notes:
        err.print(f"note: {note}", style="yellow", markup=False)
    columns = sum(t.columns for t in scan.report.tables)
    scanned = (
        f"{len(scan.report.tables)} tables, every row of the {columns} columns whose values "
        "come from the source"
    )
    if not result.clean:
        err.print(
            f"The final PHI scan of {result.schema} ({scanned}) found PHI at or above "
            f"{scan.report.fail_on}: the research schema is NOT de-identified and must not be "
            "released. Findings (masked) are in _clinipipe.phi_findings; classify the columns "
            "they name, or take them out of `release`, then run redact again.",
            style="red",
            markup=False,
        )
        info(f"Manifest and scan recorded in the audit log (entries {result.audit_seq}, "
             f"{scan.audit_seq}).")  # fmt: skip
        if export is not None:
            err.print(f"Not exported to {export}.", style="red", markup=False)
        raise typer.Exit(ExitCode.FOUND)
    extra = f" ({scan.ignored} findings the policy allows)" if scan.ignored else ""
    info(f"Final PHI scan of {result.schema} ({scanned}): clean{extra}.")
    info(result.label)
    info(f"Manifest and scan recorded in the audit log (entries {result.audit_seq}, "
         f"{scan.audit_seq}).")  # fmt: skip
    if exported is not None:
        info(f"Exported schema {result.schema} alone ({len(exported)} tables, "
             f"{sum(exported.values()):,} rows) to {export}: a file with no raw, derived, "
             "serving or control table.")  # fmt: skip
