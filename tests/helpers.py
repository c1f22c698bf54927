"""Small helpers shared by tests: writing specs, running the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg2
import pytest

from clinipipe.cli.app import run
from clinipipe.spec import LoadedSpec
from clinipipe.sql.render import render
from clinipipe.targets.base import DeploymentRecord, Target

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


class CliProcess:
    """`python -m clinipipe ARGS` in a child process whose stderr lines are read as they come,
    so a test can wait for an event (a line printed) instead of sleeping."""

    def __init__(self, args: list[str], env: dict[str, str], prelude: str = "") -> None:
        """`prelude`: Python run in the child before the CLI (e.g. to announce an event)."""
        import queue
        import subprocess
        import sys
        import threading

        command = [sys.executable, "-m", "clinipipe", *args]
        if prelude:
            main = "from clinipipe.cli.app import run\nsys.exit(run(sys.argv[1:]))\n"
            command = [sys.executable, "-c", f"import sys\n{prelude}\n{main}", *args]
        self.proc = subprocess.Popen(
            command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.put(line)
            self.lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def wait_for_line(self, pattern: str) -> str:
        """The first stderr line (from now on) matching regex `pattern`; fails if the process
        ends first (or, as a guard against a hang only, after 120 s)."""
        import queue
        import re

        while True:
            try:
                line = self.lines.get(timeout=120)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in 120 s") from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def finish(self) -> tuple[int, str, str]:
        """Wait for the exit; (exit code, stdout, all of stderr)."""
        import subprocess

        assert self.proc.stdout is not None
        try:
            code = self.proc.wait(timeout=120)  # a hang guard only (output is small)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"did not exit:\n{''.join(self.seen)}") from None
        out = self.proc.stdout.read()
        self._pump.join(timeout=30)
        while True:
            line = self.lines.get_nowait() if not self.lines.empty() else None
            if line is None:
                break
            self.seen.append(line)
        return code, out, "".join(self.seen)


def deploy_target_templates(target: Target, loaded: LoadedSpec) -> None:
    """Apply the spec's rendered target templates to `target` without touching the source
    (its templates are only recorded): a deployed warehouse for tests with no PostgreSQL."""
    files = render(loaded, target.dialect)
    record = DeploymentRecord(spec_digest=loaded.digest, target_type=target.type)
    target.apply_deployment(
        [f for f in files if f.runs_on == "target"],
        record,
        also_record=[f for f in files if f.runs_on == "source"],
    )
