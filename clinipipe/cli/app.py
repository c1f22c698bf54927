"""The `clinipipe` command: global options, the command tree, and error → exit-code mapping."""

from __future__ import annotations

import inspect
import sys
import traceback
from typing import Annotated

import typer
from typer.core import TyperOption

from clinipipe import __version__
from clinipipe.cli import backup as backup_cli
from clinipipe.cli import bench as bench_cli
from clinipipe.cli import cdc, later, load, project, serve, source
from clinipipe.cli import cost as cost_cli
from clinipipe.cli import demo as demo_cli
from clinipipe.cli import redact as redact_cli
from clinipipe.cli import refresh as refresh_cli
from clinipipe.cli import scan as scan_cli
from clinipipe.cli import verify as verify_cli
from clinipipe.cli.output import ExitCode, Verbosity, err
from clinipipe.cli.state import State
from clinipipe.secrets import mask_dsn, scrub_values
from clinipipe.source.postgres import SourceError
from clinipipe.spec.errors import SpecError
from clinipipe.sql.render import RenderError
from clinipipe.targets.base import TargetError


def _hide_flag_types() -> None:
    """Show no value type for on/off flags in --help (`--json` takes no value; Typer would
    print `<bool>` next to it, which reads as if it wanted one). Other options keep their
    type (`<int>`, `<str>`...). Only the help rendering changes; tests/test_cli.py checks it."""
    show = getattr(TyperOption, "display_type_rich", None)
    if show is None or getattr(show, "_clinipipe", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return show(self, ctx)

    display_type_rich._clinipipe = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()

app = typer.Typer(
    name="clinipipe",
    help="Move a hospital's EHR data from PostgreSQL into an analytical warehouse and keep it "
    "there: fast, exact, cheap and compliant.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clinipipe {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Pipeline spec (default: $CLINIPIPE_CONFIG, else ./clinipipe.yaml).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and data.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    Verbosity.quiet = quiet
    Verbosity.verbose = verbose
    ctx.obj = State(config=config)


project.register(app)
source.register(app)
load.register(app)
cdc.register(app)
refresh_cli.register(app)
redact_cli.register(app)
scan_cli.register(app)
serve.register(app)
backup_cli.register(app)
cost_cli.register(app)
verify_cli.register(app)
bench_cli.register(app)
demo_cli.register(app)
later.register(app)


def _reflowed(doc: str) -> str:
    """A docstring whose prose paragraphs are one line each, so the terminal wraps them (Rich
    help keeps single newlines, which gave ragged lines). Indented lines (examples) stay."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        p if p.startswith(" ") else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


def _reflow_help(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None and command.callback.__doc__ and command.help is None:
            command.callback.__doc__ = _reflowed(command.callback.__doc__)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv`; return the exit code. Known errors never show a traceback."""
    try:
        app(args=argv, prog_name="clinipipe")  # standalone: usage errors exit 2 by themselves
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else ExitCode.FAILURE)
    except SpecError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        count = len(exc.problems)
        err.print(f"{count} problem{'s' if count != 1 else ''} in the spec", style="red")
        return ExitCode.USAGE
    except (TargetError, SourceError, RenderError) as exc:
        err.print(f"error: {mask_dsn(str(exc))}", style="red", markup=False)
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except OSError as exc:  # the machine, not clinipipe: a folder not writable, a disk full
        if Verbosity.verbose:
            err.print(scrubbed_traceback(exc), style="red", markup=False, end="")
        err.print(f"error: {environment_error(exc)}", style="red", markup=False)
        return ExitCode.FAILURE
    except Exception as exc:  # a bug: say so plainly, traceback only with --verbose
        if Verbosity.verbose:
            err.print(scrubbed_traceback(exc), style="red", markup=False, end="")
        err.print(
            f"internal error: {type(exc).__name__}: {_safe(str(exc))}\n"
            + (
                "Please report it with the traceback above."
                if Verbosity.verbose
                else "Run again with --verbose for the traceback, and please report it."
            ),
            style="red",
            markup=False,
        )
        return ExitCode.FAILURE
    return ExitCode.OK


def environment_error(exc: OSError) -> str:
    """One line for an operating-system failure (permission denied, no space left, a missing
    folder): what failed, on which path, and what to check. Paths are shown (they are not
    secret), other text is scrubbed as `_safe` does."""
    what = exc.strerror or _safe(str(exc)) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f" ({' -> '.join(paths)})" if paths else ""
    advice = (
        "check that the path exists and is writable by this user, and that the disk has space"
        if paths
        else "check the machine's resources and its network"
    )
    return f"{what}{where}. The operating system refused, not a clinipipe bug: {advice}."


def _safe(text: str) -> str:
    """`text` with passwords masked and quoted values (which may be patient data) replaced."""
    return scrub_values(mask_dsn(text))


def scrubbed_traceback(exc: BaseException) -> str:
    """The traceback of `exc` and of the exceptions it was raised from, as Python prints it,
    except that every exception message and note is passed through `mask_dsn` and
    `scrub_values`: an unexpected error (a conversion error quoting a value) never prints a
    patient value or a password, even with --verbose. Frames show code lines, never locals."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    parts: list[str] = []
    for i, item in enumerate(reversed(chain)):
        if i:
            earlier = chain[len(chain) - i]  # printed just before `item`
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if item.__cause__ is earlier
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        message = _safe(str(item))
        parts.append(f"{name}: {message}\n" if message else f"{name}\n")
        for note in getattr(item, "__notes__", None) or ():
            parts.append(f"{_safe(str(note))}\n")
    return "".join(parts)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
