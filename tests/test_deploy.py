"""`clinipipe deploy` against a real PostgreSQL source and a real DuckDB file."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import psycopg2
import pytest

from clinipipe.source.postgres import SourceCheckFailed
from tests.helpers import REPO, cli, example_text, write_spec

HOSPITAL_DDL = (REPO / "clinipipe" / "source" / "sql" / "hospital_schema.sql").read_text()


def create_hospital_tables(dsn: str) -> None:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(HOSPITAL_DDL)
    con.close()


def catalog(path: Path) -> list[tuple[object, ...]]:
    """Everything deploy can change in the DuckDB file: objects and control-table contents."""
    with duckdb.connect(str(path), read_only=True) as con:
        objects = con.execute(
            "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() "
            "UNION ALL SELECT schema_name, view_name, NULL FROM duckdb_views() WHERE NOT internal "
            "UNION ALL SELECT schema_name, function_name, NULL FROM duckdb_functions() "
            "WHERE schema_name = '_clinipipe' ORDER BY ALL"
        ).fetchall()
        deployments = con.execute("SELECT * FROM _clinipipe.deployments ORDER BY ALL").fetchall()
        templates = con.execute(
            "SELECT * FROM _clinipipe.deployed_templates ORDER BY ALL"
        ).fetchall()
    return [*objects, *deployments, *templates]


def source_objects(dsn: str) -> tuple[list[object], ...]:
    """What deploy could create on the source: publications (with their tables), replication
    slots, and every relation, function and schema outside the system catalogs."""
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        found = []
        for sql in (
            "SELECT pubname, puballtables FROM pg_publication ORDER BY 1",
            "SELECT slot_name FROM pg_replication_slots ORDER BY 1",
            "SELECT pubname, tablename FROM pg_publication_tables ORDER BY 1, 2",
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', "
            "'information_schema', 'pg_toast') ORDER BY 1, 2",
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            "SELECT nspname FROM pg_namespace ORDER BY 1",
        ):
            cur.execute(sql)
            found.append(cur.fetchall())
    con.close()
    return tuple(found)


@pytest.fixture
def project(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    return write_spec(tmp_path, example_text())


def test_deploy_is_idempotent(
    project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    create_hospital_tables(pg_dsn)
    warehouse = project.parent / "warehouse.duckdb"

    before = source_objects(pg_dsn)
    code, out, _ = cli(capsys, "-c", str(project), "deploy", "--dry-run")
    assert code == 0 and "would run; nothing was changed" in out
    assert "CREATE PUBLICATION" in out.upper()  # the plan shows what would run on the source
    code, out, _ = cli(capsys, "-c", str(project), "deploy", "--dry-run", "--json")
    assert code == 0 and '"dry_run": true' in out
    assert not warehouse.exists(), "a dry run must not create the warehouse file"
    assert source_objects(pg_dsn) == before, "a dry run changed the source"
    assert before[:2] == ([], [])  # ... which has no publication and no slot

    code, out, err = cli(capsys, "-c", str(project), "deploy", "--json")
    assert code == 0, err
    assert '"statements_run": 0' not in out
    first = catalog(warehouse)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM _clinipipe.deployments").fetchone() == (1,)
        roles = con.execute("SELECT role, size FROM _clinipipe.warehouses ORDER BY 1").fetchall()
        assert roles == [("incremental", "XSMALL"), ("initialization", "X6LARGE"),
                         ("interactive", "XSMALL")]  # fmt: skip
        assert con.execute("SELECT _clinipipe.safe_harbor_zip3('03601')").fetchone() == ("000",)
        assert con.execute("SELECT _clinipipe.safe_harbor_zip3('10001')").fetchone() == ("100",)
        assert con.execute("SELECT _clinipipe.safe_harbor_age(93)").fetchone() == (90,)
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'clinipipe_pub'")
        assert cur.fetchone() == (7,)
    con.close()

    code, out, _ = cli(capsys, "-c", str(project), "deploy")
    assert code == 0 and "Nothing to deploy" in out
    assert catalog(warehouse) == first, "a second deploy changed the warehouse"


def test_changed_template_is_redeployed_alone(
    project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    create_hospital_tables(pg_dsn)
    assert cli(capsys, "-c", str(project), "deploy")[0] == 0
    write_spec(project.parent, example_text(**{"size: X6LARGE": "size: X4LARGE"}))
    code, out, _ = cli(capsys, "-c", str(project), "deploy", "--json")
    assert code == 0
    assert '"apply": [\n    "01-setup-environment.sql",\n    "03-dynamic-tables.sql"\n  ]' in out
    with duckdb.connect(str(project.parent / "warehouse.duckdb"), read_only=True) as con:
        size = con.execute("SELECT size FROM _clinipipe.warehouses WHERE role='initialization'")
        assert size.fetchone() == ("X4LARGE",)


def test_failing_statement_leaves_nothing_half_done(
    project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    create_hospital_tables(pg_dsn)
    warehouse = project.parent / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:  # a conflicting object the deploy cannot fix
        con.execute("CREATE SCHEMA _clinipipe")
        con.execute("CREATE TABLE _clinipipe.warehouses (role VARCHAR PRIMARY KEY)")
    code, out, err = cli(capsys, "-c", str(project), "deploy")
    assert code == 1
    assert re.search(r"statement \d+ of template 01-setup-environment.sql failed", err)
    assert "Nothing of this deployment was kept" in err and "Traceback" not in out + err
    with duckdb.connect(str(warehouse), read_only=True) as con:
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
        assert "raw" not in schemas and "research" not in schemas
        tables = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        assert tables == [("warehouses",)]


def test_source_prerequisites_are_checked_before_anything_changes(
    project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    create_hospital_tables(pg_dsn)
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("ALTER TABLE labs DROP CONSTRAINT labs_pkey")
    con.close()
    code, _, err = cli(capsys, "-c", str(project), "deploy")
    assert code == 1
    assert "no primary key" in err and "public.labs" in err
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_publication")
        assert cur.fetchone() == (0,)
    con.close()
    assert not (project.parent / "warehouse.duckdb").exists()


def test_check_failure_type(project: Path, pg_dsn: str) -> None:
    from clinipipe.pipeline.deploy import deploy
    from clinipipe.spec import load_spec

    with pytest.raises(SourceCheckFailed) as info:
        deploy(load_spec(project))  # the hospital tables do not exist yet
    assert info.value.template == "02-postgres-cdc-setup.sql" and info.value.number == 2
    assert "public.patients" in info.value.problems


def test_unreachable_source_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u:topsecret@127.0.0.1:9/none")
    spec = write_spec(tmp_path, example_text())
    code, out, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 1
    assert "cannot connect to the source PostgreSQL" in err
    assert "topsecret" not in out + err and "Traceback" not in out + err


def test_missing_warehouse_folder(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.setenv("CLINIPIPE_DUCKDB_PATH", str(tmp_path / "no" / "such" / "w.duckdb"))
    spec = write_spec(tmp_path, example_text())
    code, _, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 1 and "does not exist" in err
