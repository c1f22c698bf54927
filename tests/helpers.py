"""Small helpers shared by tests: writing specs, running the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg2
import pytest

from clinipipe.cli.app import run
from clinipipe.spec import LoadedSpec

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


TABLES = ("providers", "patients", "encounters", "labs", "medications", "claims", "clinical_notes")
KEYS = {
    "providers": "provider_id", "patients": "patient_id", "encounters": "encounter_id",
    "labs": "lab_id", "medications": "medication_id", "claims": "claim_id",
    "clinical_notes": "note_id",
}  # fmt: skip


def source_rows(dsn: str, table: str) -> list[tuple[object, ...]]:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute(f"SELECT * FROM {table} ORDER BY {KEYS[table]}")
        rows = cur.fetchall()
    con.close()
    return rows


def target_rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(f"SELECT * FROM raw.{table} ORDER BY {KEYS[table]}").fetchall()


def assert_target_equals_source(dsn: str, warehouse: Path) -> None:
    for table in TABLES:
        expected = source_rows(dsn, table)
        actual = target_rows(warehouse, table)
        assert len(actual) == len(expected), table
        assert actual == expected, f"{table} differs"


def execute(dsn: str, *statements: str) -> None:
    """Run `statements` on the source PostgreSQL in one committed transaction."""
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    con.close()


def catch_up(spec: Path | LoadedSpec) -> None:
    """Run CDC until everything committed on the source is applied."""
    from clinipipe.pipeline.cdc import CdcOptions, run_cdc
    from clinipipe.spec import load_spec

    loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec)
    run_cdc(loaded, CdcOptions(until_caught_up=True, max_seconds=120))
