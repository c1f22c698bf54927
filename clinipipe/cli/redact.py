"""`redact`: build or bring up to date a de-identified research dataset."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the research dataset: every table de-identified column by column, by policy.

    Structured columns are transformed in SQL inside the warehouse; notes are redacted by the
    PHI detectors with each patient's own identifiers. Tables whose source did not change since
    the last run are skipped; the others are rebuilt atomically. Each run appends a manifest
    (policy, columns, treatments, row counts; never values) to the audit log. The HMAC key comes
    from the environment variable named by phi.hmac_key_env and is never printed.
    """
    from clinipipe.pipeline.redact import RedactError, RedactOptions
    from clinipipe.pipeline.redact import redact as run_redact

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
    try:
        result = run_redact(loaded, options)
    except RedactError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    if as_json:
        print_json(result.as_dict())
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
    copied = [f"{t.table}.{c['column']}" for t in result.tables for c in t.columns
              if c.get("unclassified_text")]  # fmt: skip
    if copied:
        err.print(
            f"note: {len(copied)} text columns the spec does not classify were copied as they "
            f"are ({', '.join(copied)}); before releasing the schema, run `clinipipe scan "
            f"--schema {result.schema} --full`, and classify any column that may hold PHI "
            "(free_text redacts it like a note)",
            style="yellow",
            markup=False,
        )
    info(result.label)
    info(f"Manifest recorded in the audit log (entry {result.audit_seq}).")
