"""The Snowflake deploy path, executed through fakesnow (Snowflake itself is unreachable here).

fakesnow runs Snowflake SQL on DuckDB. It cannot execute some of our DDL (warehouses, roles,
grants, interactive tables, backup policies and sets, classification profiles, views over
SNOWFLAKE.ACCOUNT_USAGE); those statements are pinned by the golden render tests instead.
Everything else runs for real here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import fakesnow
import psycopg2
import pytest

from clinipipe.pipeline.deploy import deploy, plan_deployment
from clinipipe.spec import load_spec
from clinipipe.sql.render import Statement
from clinipipe.targets.base import TargetError
from clinipipe.targets.snowflake import SnowflakeTarget
from tests.helpers import REPO, snowflake_text, write_spec

FAKESNOW_CANNOT = re.compile(
    r"^\s*(CREATE WAREHOUSE|CREATE ROLE|GRANT|CREATE INTERACTIVE|CREATE BACKUP"
    r"|CREATE (OR REPLACE )?SNOWFLAKE\.DATA_PRIVACY|CREATE OR REPLACE VIEW .* AS\s+SELECT[^;]*"
    r"SNOWFLAKE\.ACCOUNT_USAGE)",
    re.S,
)


def _code(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


@pytest.fixture
def fake_snowflake(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Patch the connector with fakesnow; statements fakesnow cannot run are collected."""
    skipped: list[str] = []
    real_execute = SnowflakeTarget._execute

    def execute(self: SnowflakeTarget, statement: Statement) -> None:
        code = _code(statement.sql)
        if FAKESNOW_CANNOT.match(code):
            skipped.append(code.split("\n", 1)[0])
            return
        real_execute(self, statement)

    monkeypatch.setattr(SnowflakeTarget, "_execute", execute)
    with fakesnow.patch():
        yield skipped


@pytest.fixture
def project(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "not-a-real-password")
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute((REPO / "clinipipe/source/sql/hospital_schema.sql").read_text())
    con.close()
    return write_spec(tmp_path, snowflake_text())


def test_snowflake_deploy_through_fakesnow(project: Path, fake_snowflake: list[str]) -> None:
    loaded = load_spec(project)
    plan = plan_deployment(loaded)
    # Before backfill the raw tables do not exist: dynamic and interactive tables wait.
    assert [f.name for f, _ in plan.deferred] == [
        "03-dynamic-tables.sql",
        "04-interactive-tables.sql",
    ]
    result = deploy(loaded, plan)
    assert result.statements_run > 20
    kinds = {s.split(" IF ")[0].split(" ON ")[0] for s in fake_snowflake}
    assert kinds <= {
        "CREATE WAREHOUSE", "CREATE ROLE", "GRANT USAGE", "GRANT ALL", "GRANT USAGE, OPERATE",
        "GRANT SELECT", "CREATE BACKUP POLICY", "CREATE BACKUP SET",
        "GRANT USAGE, OPERATE, MODIFY, MONITOR", "GRANT CREATE WAREHOUSE",  # 01: owner role
        *(f'GRANT ROLE "CLINIPIPE_ROLE{r}" TO ROLE "SYSADMIN";'
          for r in ("", "_ANALYST", "_RESEARCHER")),
        "CREATE OR REPLACE SNOWFLAKE.DATA_PRIVACY.CLASSIFICATION_PROFILE "
        '"CLINIPIPE"."_CLINIPIPE"."CLINIPIPE_CLASSIFICATION"({',
        "CREATE SNOWFLAKE.DATA_PRIVACY.CLASSIFICATION_PROFILE",  # IF NOT EXISTS: never replaced
        'CREATE OR REPLACE VIEW "CLINIPIPE"."_CLINIPIPE"."WAREHOUSE_DAILY_CREDITS" AS',
        'CREATE OR REPLACE VIEW "CLINIPIPE"."_CLINIPIPE"."SNOWFLAKE_DAILY_ANOMALIES" AS',
    }, kinds  # fmt: skip

    with SnowflakeTarget(loaded) as target:
        rows = target.query("SELECT role, size FROM CLINIPIPE._CLINIPIPE.WAREHOUSES ORDER BY 1")
        assert rows == [("incremental", "XSMALL"), ("initialization", "X6LARGE"),
                        ("interactive", "XSMALL")]  # fmt: skip
        classes = target.query(
            "SELECT phi_class FROM CLINIPIPE._CLINIPIPE.PHI_COLUMN_CLASSES "
            "WHERE table_name = 'patients' AND column_name = 'ssn'"
        )
        assert classes == [("ssn",)]
        deployed = target.deployed_digests()
    assert "01-setup-environment.sql" in deployed and "03-dynamic-tables.sql" not in deployed

    # A second deploy runs nothing but what is still deferred.
    again = plan_deployment(loaded)
    assert again.to_run == [] and len(again.deferred) == 2

    # Once backfill created the raw tables, the dynamic tables deploy (fakesnow runs CREATE
    # DYNAMIC TABLE as a plain table), and then nothing is left.
    with SnowflakeTarget(loaded) as target:
        for ddl in (
            "CREATE TABLE CLINIPIPE.RAW.PATIENTS (patient_id INT)",
            "CREATE TABLE CLINIPIPE.RAW.ENCOUNTERS (encounter_id INT, patient_id INT, "
            "admit_ts TIMESTAMP, department VARCHAR)",
            "CREATE TABLE CLINIPIPE.RAW.LABS (lab_id INT, encounter_id INT, patient_id INT, "
            "abnormal_flag VARCHAR, collected_ts TIMESTAMP, test_name VARCHAR, "
            "value_numeric NUMBER(12, 3), unit VARCHAR)",
            *[f"CREATE TABLE CLINIPIPE.RAW.{t} (id INT)"
              for t in ("PROVIDERS", "MEDICATIONS", "CLAIMS", "CLINICAL_NOTES")],
        ):  # fmt: skip
            target.query(ddl)
    final = deploy(loaded)
    assert [f.name for f in final.plan.to_run] == [
        "03-dynamic-tables.sql",
        "04-interactive-tables.sql",
    ]
    with SnowflakeTarget(loaded) as target:
        assert target.table_exists("derived", "patient_summary")
    assert plan_deployment(loaded).to_run == []


def test_missing_password_is_a_clear_error(
    project: Path, monkeypatch: pytest.MonkeyPatch, fake_snowflake: list[str]
) -> None:
    monkeypatch.delenv("SNOWFLAKE_PASSWORD")
    with pytest.raises(TargetError, match="set SNOWFLAKE_PASSWORD in the environment"):
        SnowflakeTarget(load_spec(project)).connect()


def test_unreachable_account_names_the_account(project: Path) -> None:
    """Without fakesnow the real connector tries to reach the account and fails clearly."""
    import snowflake.connector

    loaded = load_spec(project)
    target = SnowflakeTarget(loaded)
    original = snowflake.connector.connect

    def refuse(**kwargs: object) -> None:
        assert kwargs["password"] == "not-a-real-password"
        raise snowflake.connector.errors.OperationalError(
            msg="Could not connect to Snowflake backend"
        )

    snowflake.connector.connect = refuse  # type: ignore[assignment]
    try:
        with pytest.raises(TargetError) as info:
            target.connect()
    finally:
        snowflake.connector.connect = original
    message = str(info.value)
    assert "'acme-hospital'" in message and "account identifier" in message
    assert "not-a-real-password" not in message
