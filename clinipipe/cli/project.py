"""`init`, `validate`, `render`, `deploy`: the project and its SQL."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.state import State
from clinipipe.pipeline.deploy import (
    ConfirmationRequired,
    DeployPlan,
    check_privileges,
    check_source_columns,
    deploy,
    plan_deployment,
    unconfirmed,
)
from clinipipe.secrets import mask_dsn
from clinipipe.spec.checks import spec_warnings
from clinipipe.spec.dsn import PLACEHOLDER_PASSWORD
from clinipipe.spec.errors import SpecError
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.render import (
    available_dialects,
    render,
    write_rendered,
)
from clinipipe.targets import dialect_of

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

ENV_EXAMPLE = f"""\
# Copy to .env next to clinipipe.yaml (never commit .env) or export these variables.
# The source PostgreSQL (logical replication needs wal_level = logical).
CLINIPIPE_SOURCE_DSN=postgresql://clinipipe:{PLACEHOLDER_PASSWORD}@localhost:5432/ehr
# The DuckDB warehouse file (relative to the spec).
CLINIPIPE_DUCKDB_PATH=warehouse.duckdb
# Key for keyed pseudonyms (HMAC-SHA256) in research extracts: a long random secret, e.g.
# the output of: python -c 'import secrets; print(secrets.token_hex(32))'
CLINIPIPE_HMAC_KEY=
# For a Snowflake target:
# SNOWFLAKE_PASSWORD=
"""

GITIGNORE = ".env\n*.duckdb\n*.duckdb.wal\n*.serving/\n*.cdc.sock\n.clinipipe/\nbackups/\nsql/\n"


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("validate")(validate)
    app.command("render")(render_command)
    app.command("deploy")(deploy_command)


def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
) -> None:
    """Scaffold a project: clinipipe.yaml (the example hospital), .env.example, .gitignore.

    Examples:

      clinipipe init my-hospital

      clinipipe init my-hospital && cd my-hospital && cp .env.example .env"""
    spec_path = directory / "clinipipe.yaml"
    if spec_path.exists():
        err.print(f"{spec_path} already exists; nothing was changed.", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE)
    name = re.sub(r"[^A-Za-z0-9_]", "_", directory.resolve().name) or "hospital"
    if name[0].isdigit():
        name = f"p_{name}"
    example = resources.files("clinipipe").joinpath("_examples/hospital.yaml").read_text()
    spec_text = re.sub(r"(?m)^name: .*$", f"name: {name}", example, count=1)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(spec_text, encoding="utf-8")
        for filename, text in ((".env.example", ENV_EXAMPLE), (".gitignore", GITIGNORE)):
            path = directory / filename
            if not path.exists():
                path.write_text(text, encoding="utf-8")
    except OSError as exc:
        err.print(
            f"error: cannot create the project in {directory}: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}. Choose a folder this user can "
            "write to, or fix its permissions.",
            style="red",
            markup=False,
        )
        raise typer.Exit(ExitCode.FAILURE) from None
    info(f"Created {spec_path}, .env.example and .gitignore in {directory}.")
    info(
        "Next: cp .env.example .env and set CLINIPIPE_SOURCE_DSN and CLINIPIPE_HMAC_KEY in it (or "
        "export them); `clinipipe synth` to fill the source with the example hospital; then "
        "`clinipipe validate` and `clinipipe deploy` (see the README's Using it)."
    )


def validate(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Check the spec; print every problem as file:line:col (exit 2), or a summary (exit 0).

    When the source is reachable, every column name of the spec is also checked against its
    catalog (unknown names are problems); when it is not, the summary says that check was
    skipped (`deploy` always makes it). The spec's queries are translated to the target's SQL
    (an untranslatable construct is a problem); costs the spec implies but does not show (a
    warehouse that never suspends) are warnings, with estimates.

    Examples:

      clinipipe validate

      clinipipe -c hospital.yaml validate --json"""
    state: State = ctx.obj
    try:
        loaded = state.spec()
        render(loaded, dialect_of(loaded.spec.target.type))
        columns = check_source_columns(loaded, required=False)
    except SpecError as exc:
        if not as_json:
            raise
        print_json({"valid": False, "problems": [p.__dict__ for p in exc.problems]})
        raise typer.Exit(ExitCode.USAGE) from None
    spec = loaded.spec
    warnings = spec_warnings(loaded.spec, loaded.positions, loaded.filename or str(loaded.path))
    summary = {
        "valid": True,
        "spec": str(loaded.path),
        "name": spec.name,
        "source": mask_dsn(spec.source.dsn),
        "source_tables": len(spec.source.tables),
        "target": spec.target.type,
        "dynamic_tables": len(spec.dynamic_tables),
        "interactive_tables": len(spec.interactive_tables),
        "dashboards": len(spec.dashboards),
        "source_columns": columns.as_dict(),
        "warnings": [str(w) for w in warnings],
    }
    if as_json:
        print_json(summary)
        return
    for warning in warnings:
        err.print(f"warning: {warning}", style="yellow", markup=False)
    out.print(
        f"[green]✓[/green] {loaded.path.name} is valid: pipeline {spec.name}, "
        f"{len(spec.source.tables)} source tables from {mask_dsn(spec.source.dsn)}, "
        f"target {spec.target.type}, {len(spec.dynamic_tables)} dynamic and "
        f"{len(spec.interactive_tables)} interactive tables."
    )
    if columns.checked and columns.tables:
        out.print(
            f"[green]✓[/green] {columns.columns} column names of {columns.tables} tables "
            "checked against the source catalog."
        )
    elif columns.checked:
        err.print(
            "note: column names not checked: no table of the spec could be read on the source "
            "(see below); `clinipipe deploy` checks them once the tables exist.",
            style="yellow",
            markup=False,
        )
    else:
        note = (
            "note: column names not checked against the source (it could not be reached); "
            "`clinipipe deploy` checks them."
        )
        if columns.reason:
            note += f" {mask_dsn(columns.reason)}"
        err.print(note, style="yellow", markup=False)
    for skipped in columns.skipped:
        err.print(f"note: columns not checked: {mask_dsn(skipped)}", style="yellow", markup=False)


def render_command(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Dialect to render (default: the spec's target)."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write NN-name.sql files into this folder.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Render the numbered SQL templates for a target (to stdout, or files with --out).

    Examples:

      clinipipe render --target snowflake --out sql/

      clinipipe render --target duckdb"""
    state: State = ctx.obj
    if target is not None and target not in available_dialects():
        raise typer.BadParameter(
            f"unknown target '{target}'; choose one of {', '.join(available_dialects())}",
            param_hint="--target",
        )
    loaded = state.spec()
    files = render(loaded, dialect_of(target or loaded.spec.target.type))
    if out_dir is not None:
        try:
            written = write_rendered(files, out_dir)
        except OSError as exc:
            err.print(
                f"error: cannot write the SQL files into {out_dir}: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}. Choose another --out folder "
                "or make this one writable.",
                style="red",
                markup=False,
            )
            raise typer.Exit(ExitCode.FAILURE) from None
        if as_json:
            print_json(
                [{"file": str(p), "digest": f.digest} for p, f in zip(written, files, strict=True)]
            )
        else:
            info(f"Wrote {len(written)} files to {out_dir}/")
        return
    if as_json:
        print_json([{"file": f.name, "runs_on": f.runs_on, "sql": f.text} for f in files])
        return
    for f in files:
        out.print(f"-- ===== {f.name} =====", markup=False)
        out.print(f.text, markup=False)


def _plan_table(plan: DeployPlan) -> Table:
    table = Table(title=f"Deployment plan for {plan.target}")
    table.add_column("template")
    table.add_column("runs on")
    table.add_column("statements", justify="right")
    table.add_column("action")
    rows = [(f, "[yellow]apply[/yellow]") for f in plan.to_run]
    rows += [(f, "[green]up to date[/green]") for f in plan.up_to_date]
    rows += [(f, f"[cyan]deferred[/cyan]: {why}") for f, why in plan.deferred]
    rows += [(f, "reference only (not executed)") for f in plan.reference_only]
    for f, action in sorted(rows, key=lambda r: r[0].name):
        table.add_row(f.name, f.runs_on, str(len(f.statements)), action)
    return table


def _plan_json(plan: DeployPlan) -> dict[str, object]:
    return {
        "target": plan.target,
        "apply": [f.name for f in plan.to_run],
        "up_to_date": [f.name for f in plan.up_to_date],
        "deferred": [{"template": f.name, "reason": why} for f, why in plan.deferred],
        "reference_only": [f.name for f in plan.reference_only],
        "statements": plan.statements,
        "source_repairs": [{"problem": r.problem, "fix": r.fix} for r in plan.source_repairs],
        "source_problems": plan.source_problems,
        "source_warnings": plan.source_warnings,
        "changes": [c.as_dict() for c in plan.changes],
    }


def _print_changes(plan: DeployPlan, *, with_sql: bool) -> None:
    """The objects that exist and differ from the spec, like `terraform plan`: per object,
    attribute: old → new, and how deploy applies it (in place, or a rebuild of the data on a
    named warehouse, or not at all and why); with their SQL in a dry run."""
    if not plan.changes:
        return
    out.print("[bold]Changes to existing objects[/bold] (~ change in place, "
              "± rebuild, ! not applied by deploy):")  # fmt: skip
    shown: str | None = None
    for c in plan.changes:
        mark = "!" if not c.applicable else "±" if c.rebuilds_on else "~"
        if f"{c.kind} {c.name}" != shown:
            shown = f"{c.kind} {c.name}"
            out.print(f"  {mark} {shown}", markup=False)
        reported = " (as Snowflake reports it)" if c.source == "reported" else ""
        out.print(f"      {c.attribute}: {_short(c.old)}{reported} → {_short(c.new)}", markup=False)
        if not c.applicable:
            how = f"not applied: {c.note}"
        elif c.rebuilds_on and c.statements:
            how = f"rebuilds its data on {c.rebuilds_on}: {c.note}"
        elif c.statements:
            how = "in place" + (f": {c.note}" if c.note else "")
        else:
            how = c.note
        if how:
            out.print(f"        {how}", style="yellow" if c.rebuilds_on else "dim", markup=False)
    if with_sql:
        for c in plan.changes:
            for sql in c.statements if c.applicable else ():
                out.print(f"-- plan · {c.kind} {c.name} · {c.attribute}", style="dim")
                out.print(f"{sql};", markup=False)


def _short(value: str | None, width: int = 60) -> str:
    if value is None:
        return "(none)"
    return value if len(value) <= width else value[: width - 1] + "…"


def _check(loaded: LoadedSpec, as_json: bool) -> None:
    """`deploy --check`: what the roles lack, before anything changes (exit 3 when any)."""
    missing = check_privileges(loaded)
    if as_json:
        print_json({"missing_privileges": [m.as_dict() for m in missing]})
    elif not missing:
        roles = (
            "the deploying and pipeline roles hold every privilege clinipipe needs"
            if loaded.spec.target.type == "snowflake"
            else f"a {loaded.spec.target.type} target has no roles or privileges to check"
        )
        out.print(f"[green]✓[/green] Nothing missing: {roles}.")
    else:
        table = Table(title="Missing privileges (nothing was changed)")
        for column in ("role", "privilege", "on", "needed for", "fix"):
            table.add_column(column)
        for m in missing:
            table.add_row(m.role, m.privilege, m.on, m.needed_for, m.fix)
        out.print(table)
    if missing:
        raise typer.Exit(ExitCode.FOUND)


def _print_source_checks(plan: DeployPlan, *, done: bool) -> None:
    """What deploy found missing on the source: recreated (or, in a dry run, to recreate) and
    what it cannot fix (a lost slot), each with the command that does."""
    for r in plan.source_repairs:
        if done:
            out.print(f"[yellow]Source repaired:[/yellow] {r.problem}; {r.fixed}.")
        else:
            out.print(f"[yellow]Source:[/yellow] {r.problem}; deploy will {r.fix}.")
    for warning in plan.source_warnings:
        err.print(f"warning: {warning}", style="yellow", markup=False)
    for problem in plan.source_problems:
        err.print(f"error: {problem}", style="red", markup=False)


def deploy_command(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan and its SQL; change nothing.")
    ] = False,
    as_json: JsonOption = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Report the privileges the deploying and pipeline roles lack (SHOW GRANTS); "
            "change nothing. Exit 3 when one is missing.",
        ),
    ] = False,
    confirm_retention_lock: Annotated[
        bool,
        typer.Option(
            "--confirm-retention-lock",
            help="Allow the backup retention lock the spec asks for (backup.retention_lock): "
            "irreversible, nobody can delete the backups before they expire.",
        ),
    ] = False,
) -> None:
    """Apply the rendered templates in order; a second run of the same spec changes nothing.

    Examples:

      clinipipe deploy --dry-run

      clinipipe deploy

      clinipipe deploy --check   # Snowflake: missing privileges"""
    state: State = ctx.obj
    loaded = state.spec()
    if check:
        _check(loaded, as_json)
        return
    plan = plan_deployment(loaded)
    confirmed = frozenset({"retention-lock"} if confirm_retention_lock else ())
    if dry_run and unconfirmed(plan, confirmed):
        note = ConfirmationRequired(unconfirmed(plan, confirmed))
        err.print(f"note: {note}", style="yellow", markup=False)
    if dry_run:
        if as_json:
            print_json({**_plan_json(plan), "dry_run": True})
            return
        out.print(_plan_table(plan))
        for f in plan.to_run:
            for st in f.statements:
                out.print(f"-- {f.name} · statement {st.number} ({f.runs_on})", style="dim")
                out.print(st.sql, markup=False)
        _print_changes(plan, with_sql=True)
        _print_source_checks(plan, done=False)
        out.print(f"Dry run: {plan.statements} statements would run; nothing was changed.")
        return
    try:
        result = deploy(loaded, plan, confirmed=confirmed)
    except ConfirmationRequired as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE) from None
    if as_json:
        print_json(
            {**_plan_json(plan), "statements_run": result.statements_run,
             "deployment_id": result.deployment_id}
        )  # fmt: skip
        if plan.source_problems:
            raise typer.Exit(ExitCode.FAILURE)
        return
    out.print(_plan_table(plan))
    _print_changes(plan, with_sql=False)
    _print_source_checks(plan, done=True)
    if result.deployment_id is None:
        out.print("[green]Nothing to deploy:[/green] the target is up to date.")
    else:
        applied = sum(1 for c in plan.changes if c.applicable and c.statements)
        out.print(
            f"[green]Deployed[/green] {len(plan.to_run)} templates"
            f"{f' and {applied} changes' if applied else ''} "
            f"({result.statements_run} statements), deployment {result.deployment_id}."
        )
    if plan.source_problems:
        raise typer.Exit(ExitCode.FAILURE)
