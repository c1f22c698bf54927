"""Commands whose work is not built yet. They say so and exit 1; they never pretend to work."""

from __future__ import annotations

import typer

from clinipipe.cli.output import ExitCode, err

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
NOT_IMPLEMENTED = "(Not implemented yet: exits 1 and does nothing.)"
"""Said in the --help of every command (and group) this module registers."""


def _not_implemented(command: str, what: str) -> None:
    err.print(
        f"clinipipe {command}: not implemented yet ({what}). Nothing was done.",
        style="yellow",
        markup=False,
    )
    raise typer.Exit(ExitCode.FAILURE)


def _stub(parent: typer.Typer, name: str, full_name: str, what: str, help_text: str) -> None:
    def command(ctx: typer.Context) -> None:
        _not_implemented(full_name, what)

    # Plain text, not "[...]": the help is Rich markup, where brackets are tags and vanish.
    command.__doc__ = f"{help_text} {NOT_IMPLEMENTED}"
    parent.command(name, context_settings=_PASS_THROUGH)(command)


def register(app: typer.Typer) -> None:
    """Add every command of the tree that later work fills in."""
    top: list[tuple[str, str, str]] = []
    for name, what, help_text in top:
        _stub(app, name, name, what, help_text)

    groups = {
    }  # fmt: skip
    for group, (help_text, what, commands) in groups.items():
        sub = typer.Typer(help=f"{help_text} {NOT_IMPLEMENTED}", no_args_is_help=True)
        for name, sub_help in commands:
            _stub(sub, name, f"{group} {name}", what, sub_help)
        app.add_typer(sub, name=group)
