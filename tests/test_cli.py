"""The command tree, its conventions and `init`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clinipipe import __version__
from clinipipe.spec import load_spec
from tests.helpers import cli

LATER = [
    ["backup", "create"], ["backup", "list"], ["backup", "verify"], ["backup", "restore"],
    ["backup", "prune"], ["backup", "hold"], ["audit", "log"], ["audit", "verify"],
    ["cost", "report"], ["cost", "anomalies"], ["bench"], ["demo"],
]  # fmt: skip


@pytest.mark.parametrize("args", LATER, ids=[" ".join(a) for a in LATER])
def test_unbuilt_commands_say_so_and_exit_1(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, *args)
    assert code == 1
    assert "not implemented yet" in err and "Nothing was done" in err
    assert out == ""


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"clinipipe {__version__}"
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for command in ("init", "validate", "render", "deploy", "synth", "backfill", "cdc", "demo"):
        assert command in out


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "deploy", "--no-such-option")
    assert code == 2 and "No such option" in err


def test_init_scaffolds_a_valid_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@127.0.0.1/db")
    code, _, _ = cli(capsys, "init", str(tmp_path / "my-hospital"))
    assert code == 0
    project = tmp_path / "my-hospital"
    assert {p.name for p in project.iterdir()} == {"clinipipe.yaml", ".env.example", ".gitignore"}
    text = (project / "clinipipe.yaml").read_text()
    assert "dsn: ${CLINIPIPE_SOURCE_DSN}" in text
    assert "path: ${CLINIPIPE_DUCKDB_PATH:-warehouse.duckdb}" in text
    assert load_spec(project / "clinipipe.yaml").spec.name == "my_hospital"
    assert ".env" in (project / ".gitignore").read_text().splitlines()

    code, _, err = cli(capsys, "init", str(project))
    assert code == 1 and "already exists" in err
    assert (project / "clinipipe.yaml").read_text() == text


def test_installed_console_script_never_shows_a_traceback(tmp_path: Path) -> None:
    """The real entry point, in a subprocess: a bad spec exits 2 with file:line:col."""
    (tmp_path / "clinipipe.yaml").write_text("version: 1\nname: x\nsource: {dsn: d}\nbogus: 1\n")
    env = {k: v for k, v in os.environ.items() if k != "CLINIPIPE_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "clinipipe", "validate"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "clinipipe.yaml:4:1: (top level): unknown key 'bogus'" in proc.stderr
    assert "clinipipe.yaml:3:9: source: missing required key 'tables'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
