"""`clinipipe deploy` verifies the source objects it relies on (issue 13): a dropped
publication, or a table dropped from it, is recreated and said so; a lost slot is named with
the commands that reload, never silently recreated."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest

from tests.helpers import TABLES, cli, execute


def published(dsn: str) -> list[str]:
    """Tables in clinipipe's publication (empty when it does not exist)."""
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'clinipipe_pub' ORDER BY 1"
        )
        rows = [r[0] for r in cur.fetchall()]
    con.close()
    return rows


def slots(dsn: str) -> list[str]:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute("SELECT slot_name FROM pg_replication_slots ORDER BY 1")
        rows = [r[0] for r in cur.fetchall()]
    con.close()
    return rows


def test_dropped_publication_is_recreated_and_said_so(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert published(pg_dsn) == sorted(TABLES)
    execute(pg_dsn, "DROP PUBLICATION clinipipe_pub")

    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy", "--dry-run")
    assert code == 0, err
    out = " ".join(out.split())  # Rich wraps at the terminal width
    assert "publication clinipipe_pub does not exist" in out and "deploy will recreate" in out
    assert published(pg_dsn) == []  # a dry run changes nothing

    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy")
    assert code == 0, err
    out = " ".join(out.split())
    assert "Nothing to deploy" not in out
    assert "Source repaired: publication clinipipe_pub does not exist" in out
    assert "recreated it with the spec's 7 tables" in out
    assert published(pg_dsn) == sorted(TABLES)

    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy")
    assert code == 0 and "Nothing to deploy" in out and "repaired" not in out, out + err


def test_table_dropped_from_the_publication_is_added_back(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execute(pg_dsn, "ALTER PUBLICATION clinipipe_pub DROP TABLE labs, claims")
    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source_repairs"] == [
        {
            "problem": "publication clinipipe_pub does not replicate public.labs, public.claims",
            "fix": "add them to it",
        }
    ]
    assert data["source_problems"] == []
    assert data["apply"] == ["02-postgres-cdc-setup.sql"]  # the source template, again
    assert published(pg_dsn) == sorted(TABLES)


def test_a_lost_slot_is_named_and_not_recreated(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "-c", str(hospital_project), "backfill")
    assert code == 0, err
    execute(pg_dsn, "SELECT pg_drop_replication_slot('clinipipe_slot')")
    execute(pg_dsn, "DROP PUBLICATION clinipipe_pub")

    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy")
    assert code == 1, out + err
    err = " ".join(err.split())
    assert "replication slot clinipipe_slot does not exist any more" in err
    assert "clinipipe backfill --force" in err and "Traceback" not in err
    assert slots(pg_dsn) == []  # never a slot that would skip the changes made meanwhile
    assert published(pg_dsn) == sorted(TABLES)  # what deploy can fix, it fixed


def test_no_slot_is_expected_before_a_backfill(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy")
    assert code == 0 and "up to date" in out, out + err
    assert slots(pg_dsn) == []


def _project(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch, **replace: str) -> Path:
    from clinipipe.synth import run_synth
    from tests.helpers import example_text, write_spec

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    run_synth(dsn, patients=50, seed=3)
    return write_spec(tmp_path, example_text(**replace))


def test_a_dynamic_table_naming_a_missing_column_fails_deploy(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bound by DuckDB at deploy (before any backfill created the raw tables): a spec error at
    the dynamic table's sql, naming the table and the column, and nothing deployed."""
    query = "select patient_id, lab_id, collected_ts, test_name, value_numeric,"
    spec = _project(tmp_path, pg_dsn, monkeypatch, **{query: query.replace("numeric", "numerc")})
    code, out, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 2, out + err
    err = " ".join(err.split())
    assert "dynamic_tables[2].sql: dynamic table recent_labs cannot be bound" in err
    assert '"value_numerc" not found' in err and "Traceback" not in err
    assert "clinipipe.yaml:122:" in err  # file:line:col of the query in the spec
    warehouse = tmp_path / "warehouse.duckdb"
    if warehouse.exists():  # the stand-ins the query was bound against were rolled back
        import duckdb

        with duckdb.connect(str(warehouse), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)

    spec.write_text(spec.read_text().replace("value_numerc", "value_numeric"))
    code, out, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 0, out + err


def test_dynamic_tables_reading_dynamic_tables_are_bound_in_order(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dynamic table reading another one (not built yet) binds against its query's result;
    a missing column of it is named."""
    reader = "interactive_tables:\n  - name: patient_dashboard\n"
    chained = (
        "  - name: busy_patients\n"
        "    target_lag: 5 minutes\n"
        "    refresh_mode: full\n"
        "    sql: select patient_id, encounters from derived.patient_summary where encounters > 2\n"
        "\n" + reader
    )
    spec = _project(tmp_path, pg_dsn, monkeypatch, **{reader: chained})
    code, out, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 0, out + err

    spec.write_text(spec.read_text().replace("encounters > 2", "admissions > 2"))
    code, out, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 2, out + err
    err = " ".join(err.split())
    assert "dynamic table busy_patients cannot be bound" in err and '"admissions"' in err
