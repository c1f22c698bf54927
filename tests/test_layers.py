"""The layers of docs/ARCHITECTURE.md hold: `lint-imports` checks the import-linter contracts of
pyproject.toml (layers without circles; only `targets` imports a warehouse driver; only `source`
imports a PostgreSQL driver) on the installed source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = (
    "Layers: a package imports only from the layers below it",
    "Only clinipipe.targets talks to a warehouse (duckdb, snowflake, fakesnow)",
    "Only clinipipe.source talks to PostgreSQL (psycopg2, pgserver)",
)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run(
        [exe, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_import_contract_is_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in result.stdout


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    """The contracts bite: the same tree with one upward import (sql -> targets) fails."""
    shutil.copytree(ROOT / "clinipipe", tmp_path / "clinipipe")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    dialect = tmp_path / "clinipipe" / "sql" / "dialect.py"
    dialect.write_text(
        dialect.read_text() + "\n\ndef _upward():\n    from clinipipe.targets import dialect_of\n"
    )
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{CONTRACTS[0]} BROKEN" in result.stdout
    assert "clinipipe.sql.dialect -> clinipipe.targets" in result.stdout
