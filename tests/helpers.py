"""Small helpers shared by tests: writing specs, running the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinipipe.cli.app import run

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hospital.yaml"


def example_text(**replacements: str) -> str:
    """The example hospital spec, with literal text replacements."""
    text = EXAMPLE.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


SNOWFLAKE_TARGET = "type: snowflake\n  account: acme-hospital\n  user: deployer"
DUCKDB_TARGET = "type: duckdb\n  path: ${CLINIPIPE_DUCKDB_PATH:-warehouse.duckdb}"


def snowflake_text() -> str:
    return example_text(**{DUCKDB_TARGET: SNOWFLAKE_TARGET})


def write_spec(directory: Path, text: str) -> Path:
    path = directory / "clinipipe.yaml"
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `clinipipe ARGS` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
