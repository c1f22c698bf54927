"""The command tree, its conventions and `init`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clinipipe import __version__
from clinipipe.spec import load_spec
from tests.helpers import cli

BUILT = [["bench"], ["demo"]]
"""Commands clinipipe.cli.later registered as stubs until they were built; it registers none now."""


@pytest.mark.parametrize("args", BUILT, ids=[" ".join(a) for a in BUILT])
def test_formerly_stubbed_commands_are_built(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, *args, "--help")
    assert code == 0 and "Examples" in out
    assert "Not implemented yet" not in " ".join(out.split())


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


def test_top_level_help_marks_no_command_unbuilt(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0
    assert "Not implemented yet" not in text  # every command is built


@pytest.mark.parametrize(
    "args", [[], ["backfill"], ["cdc", "start"], ["scan"], ["deploy"], ["bench"]], ids=str
)
def test_flags_show_no_bool_label_in_help(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, *args, "--help")
    assert code == 0 and "--help" in out
    assert "<bool>" not in out and "bool" not in out.lower().replace("boolean", "")
    if args == ["backfill"]:
        assert "<int range>" in out  # options that take a value keep their type


def test_the_scaffolded_spec_explains_the_initialization_warehouse_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`init` picks X6LARGE for the backfill: the YAML says why, what it costs per hour (the
    same figures the cost model uses) and how to choose another size."""
    from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@127.0.0.1/db")
    assert cli(capsys, "init", str(tmp_path / "h"))[0] == 0
    text = (tmp_path / "h" / "clinipipe.yaml").read_text()
    lines = text.splitlines()
    at = lines.index("warehouses:")
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.startswith("#"):
            break
        comment.insert(0, line.lstrip("# "))
    explained = " ".join(comment)
    size = load_spec(tmp_path / "h" / "clinipipe.yaml").spec.warehouses.initialization.size
    assert size == "X6LARGE"
    assert f"{size} {WAREHOUSE_CREDITS_PER_HOUR[size]}" in explained  # "X6LARGE 512"
    listed = dict(re.findall(r"\b(X?[A-Z0-9]*(?:SMALL|MEDIUM|LARGE)) (\d+)\b", explained))
    assert {k: int(v) for k, v in listed.items()} == WAREHOUSE_CREDITS_PER_HOUR
    assert "512 credits" in explained and "set a smaller size" in explained


def test_the_quickstart_writes_outside_the_repository() -> None:
    """Its default project folder is not inside the checkout (nothing left untracked), and
    `quickstart/` (a `--dir` someone might pick) is git-ignored."""
    import importlib.util

    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("quickstart", repo / "examples/quickstart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = Path(module.DEFAULT_DIR).resolve()
    assert not default.is_relative_to(repo), default
    assert "--dir" not in (repo / "scripts/quickstart").read_text()  # the default is used
    assert "/quickstart/" in (repo / ".gitignore").read_text().splitlines()
