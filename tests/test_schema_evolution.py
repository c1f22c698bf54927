"""Schema changes on the source while CDC runs: add, drop, rename, widen; refuse the rest."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import duckdb
import pytest

from clinipipe.pipeline.backfill import run_backfill
from clinipipe.pipeline.cdc import CdcOptions, run_cdc
from clinipipe.pipeline.schema_evolution import is_widening
from clinipipe.spec import load_spec
from clinipipe.targets.base import SchemaChange
from tests.helpers import assert_target_equals_source, catch_up, execute


def raw_columns(warehouse: Path, table: str) -> list[tuple[str, str]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'raw' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()


def history(warehouse: Path) -> list[tuple[str, str, str]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "SELECT table_name, change, column_name FROM _clinipipe.schema_history "
            "ORDER BY applied_at"
        ).fetchall()


@pytest.fixture
def streaming(hospital_project: Path, pg_dsn: str) -> tuple[Path, str, Path]:
    run_backfill(load_spec(hospital_project))
    execute(pg_dsn, "UPDATE providers SET department = 'Warm' WHERE provider_id = 1")
    catch_up(hospital_project)  # CDC has run once: later DDL is seen mid-stream
    return hospital_project, pg_dsn, hospital_project.parent / "warehouse.duckdb"


def test_add_column_with_default_then_changes(streaming: tuple[Path, str, Path]) -> None:
    spec, dsn, warehouse = streaming
    execute(
        dsn,
        "UPDATE providers SET department = 'Before' WHERE provider_id = 2",
        "ALTER TABLE providers ADD COLUMN pager text DEFAULT 'none'",
        "INSERT INTO providers VALUES (9001, '1234567893', 'A', 'B', 'C', 'D', '555')",
        "UPDATE providers SET pager = '777' WHERE provider_id = 3",
    )
    catch_up(spec)
    assert raw_columns(warehouse, "providers")[-1] == ("pager", "VARCHAR")
    assert ("providers", "add", "pager") in history(warehouse)
    assert_target_equals_source(dsn, warehouse)  # old rows read the default, as in PostgreSQL


def test_add_column_without_any_change_is_found_in_the_catalog(
    streaming: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CDC is already streaming and idle when the column is added, and nothing is written
    after it: neither the start-up check nor the stream can see it, only the idle catalog check
    (every CATALOG_CHECK_SECONDS). The run is stopped (SIGINT) once the change was applied."""
    from clinipipe.targets.duckdb import DuckDBTarget

    spec, dsn, warehouse = streaming
    real = DuckDBTarget.evolve_table
    evolved = threading.Event()

    def spy(self: DuckDBTarget, changes: list[SchemaChange], lsn: int) -> None:
        real(self, changes, lsn)
        if any((c.table, c.kind, c.column) == ("labs", "add", "reviewed") for c in changes):
            evolved.set()

    monkeypatch.setattr(DuckDBTarget, "evolve_table", spy)
    failure: list[BaseException] = []
    altered = threading.Event()

    def driver() -> None:
        try:
            deadline = time.monotonic() + 120  # hang guards only, not limits
            while not _slot_active(dsn):  # streaming (after its start-up catalog check)
                assert time.monotonic() < deadline, "cdc never started streaming"
                time.sleep(0.05)
            execute(dsn, "ALTER TABLE labs ADD COLUMN reviewed boolean")
            altered.set()
            assert evolved.wait(120), "the idle catalog check never found the new column"
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # run_cdc: stop cleanly

    pytest_handler = signal.signal(signal.SIGINT, lambda *_: None)
    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    try:
        summary = run_cdc(load_spec(spec), CdcOptions())
    finally:
        thread.join(timeout=300)
        signal.signal(signal.SIGINT, pytest_handler)
    assert failure == [] and altered.is_set()
    assert summary.schema_changes == 1 and summary.changes == 0  # nothing was streamed
    assert ("reviewed", "BOOLEAN") in raw_columns(warehouse, "labs")
    assert ("labs", "add", "reviewed") in history(warehouse)


def _slot_active(dsn: str) -> bool:
    import psycopg2

    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'clinipipe_slot'")
        row = cur.fetchone()
    con.close()
    return bool(row and row[0])


def test_drop_column_is_kept_and_no_longer_filled(streaming: tuple[Path, str, Path]) -> None:
    spec, dsn, warehouse = streaming
    with duckdb.connect(str(warehouse), read_only=True) as con:
        before = con.execute("SELECT specialty FROM raw.providers WHERE provider_id = 4").fetchone()
    execute(
        dsn,
        "ALTER TABLE providers DROP COLUMN specialty",
        "UPDATE providers SET department = 'After' WHERE provider_id = 4",
        "INSERT INTO providers VALUES (9002, '1234567893', 'N', 'Ew', 'Dept')",
    )
    catch_up(spec)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        kept = con.execute(
            "SELECT specialty, department FROM raw.providers WHERE provider_id = 4"
        ).fetchone()
        new = con.execute("SELECT specialty FROM raw.providers WHERE provider_id = 9002").fetchone()
    assert kept == (before[0], "After") and new == (None,)
    assert ("providers", "drop", "specialty") in history(warehouse)


def test_rename_column(streaming: tuple[Path, str, Path]) -> None:
    spec, dsn, warehouse = streaming
    execute(
        dsn,
        "UPDATE patients SET employer = 'Before Inc' WHERE patient_id = 1",
        "ALTER TABLE patients RENAME COLUMN employer TO employer_name",
        "UPDATE patients SET employer_name = 'After Inc' WHERE patient_id = 2",
    )
    catch_up(spec)
    names = [name for name, _ in raw_columns(warehouse, "patients")]
    assert "employer_name" in names and "employer" not in names
    assert ("patients", "rename", "employer") in history(warehouse)
    assert_target_equals_source(dsn, warehouse)


def test_widening(streaming: tuple[Path, str, Path]) -> None:
    spec, dsn, warehouse = streaming
    execute(
        dsn,
        "ALTER TABLE patients ALTER COLUMN mrn TYPE varchar(40)",
        "ALTER TABLE labs ALTER COLUMN value_numeric TYPE numeric(20,3)",
        "UPDATE patients SET mrn = 'MRN-A-VERY-LONG-IDENTIFIER-00001' WHERE patient_id = 1",
        "UPDATE labs SET value_numeric = 12345678901234.125 WHERE lab_id = 1",
    )
    catch_up(spec)
    assert ("value_numeric", "DECIMAL(20,3)") in raw_columns(warehouse, "labs")
    assert_target_equals_source(dsn, warehouse)


def test_incompatible_change_pauses_only_that_table(
    streaming: tuple[Path, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import cli

    spec, dsn, warehouse = streaming
    execute(dsn, "UPDATE claims SET payer = 'Before' WHERE claim_id = 1")
    execute(
        dsn,
        "ALTER TABLE claims ALTER COLUMN status TYPE integer USING length(status)",
        "UPDATE claims SET status = 3 WHERE claim_id = 2",
        "UPDATE providers SET department = 'Still flowing' WHERE provider_id = 5",
    )
    catch_up(spec)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        payer = con.execute("SELECT payer FROM raw.claims WHERE claim_id = 1").fetchone()
        department = con.execute(
            "SELECT department FROM raw.providers WHERE provider_id = 5"
        ).fetchone()
        status = con.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'claims' AND column_name = 'status'"
        ).fetchone()
    assert payer == ("Before",) and department == ("Still flowing",) and status == ("VARCHAR",)
    assert not [h for h in history(warehouse) if h[0] == "claims"]
    execute(dsn, "UPDATE providers SET department = 'Later' WHERE provider_id = 5")
    catch_up(spec)  # a restart keeps the table paused and the rest flowing
    code, out, err = cli(capsys, "-c", str(spec), "cdc", "status", "--json")
    assert code == 3 and '"claims"' in out and "not a widening" in err


@pytest.mark.parametrize(
    ("old", "new", "widening"),
    [
        ("integer", "bigint", True), ("bigint", "integer", False),
        ("character varying(10)", "character varying(20)", True),
        ("character varying(20)", "character varying(10)", False),
        ("character varying(10)", "text", True), ("numeric(12,2)", "numeric(14,2)", True),
        ("numeric(12,2)", "numeric(12,3)", False), ("numeric(12,2)", "numeric", True),
        ("text", "integer", False), ("real", "double precision", True),
    ],
)  # fmt: skip
def test_is_widening(old: str, new: str, widening: bool) -> None:
    assert is_widening(old, new) is widening
