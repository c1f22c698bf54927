"""Deploying to Snowflake for real (issue 20): the session's role and warehouse, drift planned and
applied (golden per kind of change), and the privilege check.

fakesnow runs what it can (USE ROLE / USE WAREHOUSE are no-ops there, SHOW TABLES works); the
statements it cannot run (warehouses, roles, grants, interactive tables, backups, ALTERs of
dynamic tables) are recorded and skipped. Every statement and query the target sends is
recorded in order, so the tests assert the session Snowflake would see. Golden files are in
tests/golden/snowflake-deploy/ (CLINIPIPE_UPDATE_GOLDEN=1 rewrites them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakesnow
import psycopg2
import pytest
import snowflake.connector

from clinipipe.pipeline.deploy import DeployPlan, deploy, plan_deployment
from clinipipe.spec import load_spec
from clinipipe.sql.render import Statement
from clinipipe.targets.base import TargetError
from clinipipe.targets.snowflake import SnowflakeTarget
from clinipipe.targets.snowflake.deploy import (
    Need,
    compare_privileges,
    grants_from_show,
    privileges_needed,
    warehouses_from_show,
)
from tests.helpers import REPO, cli, example_text, snowflake_text, write_spec

GOLDEN = Path(__file__).parent / "golden" / "snowflake-deploy"
UPDATE = os.environ.get("CLINIPIPE_UPDATE_GOLDEN") == "1"

FAKESNOW_CANNOT = re.compile(
    r"^\s*(CREATE (OR REPLACE )?(WAREHOUSE|ROLE|INTERACTIVE|BACKUP)|GRANT|ALTER WAREHOUSE"
    r"|ALTER DYNAMIC TABLE|ALTER BACKUP|CREATE (OR REPLACE )?SNOWFLAKE\.DATA_PRIVACY"
    r"|CREATE OR REPLACE VIEW .* AS\s+SELECT[^;]*SNOWFLAKE\.ACCOUNT_USAGE"
    r"|SHOW GRANTS|SHOW DYNAMIC|SHOW BACKUP)",
    re.S,
)


def _code(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


def _norm(sql: str) -> str:
    """A statement as sent, without comments and its final semicolon."""
    return _code(sql).strip().rstrip(";").rstrip()


def _line(sql: str) -> str:
    """A statement's first line of code; a record's values (ids, times) cut off."""
    first = _code(sql).strip().split("\n", 1)[0]
    if first.startswith("INSERT INTO"):  # an audit entry is INSERT ... SELECT <time, hashes>
        return first.split(" VALUES", 1)[0].split(" SELECT ", 1)[0]
    return first


@dataclass
class Session:
    """What the target sent, in order, and how it logged in."""

    sent: list[str] = field(default_factory=list)
    logins: list[dict[str, Any]] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.sent)

    def since(self, mark: int) -> list[str]:
        return self.sent[mark:]


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    seen = Session()
    real_execute = SnowflakeTarget._execute
    real_query = SnowflakeTarget.query
    real_records = SnowflakeTarget.query_records

    def execute(self: SnowflakeTarget, statement: Statement) -> None:
        seen.sent.append(_norm(statement.sql))
        if not FAKESNOW_CANNOT.match(_code(statement.sql)):
            real_execute(self, statement)

    def query(self: SnowflakeTarget, sql: str) -> list[tuple[Any, ...]]:
        seen.sent.append(sql)
        return real_query(self, sql)

    def records(self: SnowflakeTarget, sql: str) -> list[dict[str, Any]]:
        seen.sent.append(sql)
        return real_records(self, sql)

    def connect(**kwargs: Any) -> Any:
        seen.logins.append({k: kwargs.get(k) for k in ("user", "role", "warehouse")})
        return fake_connect(**kwargs)

    monkeypatch.setattr(SnowflakeTarget, "_execute", execute)
    monkeypatch.setattr(SnowflakeTarget, "query", query)
    monkeypatch.setattr(SnowflakeTarget, "query_records", records)
    with fakesnow.patch():
        fake_connect = snowflake.connector.connect
        snowflake.connector.connect = connect  # undone before fakesnow restores the real one
        try:
            yield seen
        finally:
            snowflake.connector.connect = fake_connect


@pytest.fixture
def project(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "not-a-real-password")
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute((REPO / "clinipipe/source/sql/hospital_schema.sql").read_text())
    con.close()
    return write_spec(tmp_path, snowflake_text())


RAW_TABLES = (
    "CREATE TABLE CLINIPIPE.RAW.PATIENTS (patient_id INT)",
    "CREATE TABLE CLINIPIPE.RAW.ENCOUNTERS (encounter_id INT, patient_id INT, "
    "admit_ts TIMESTAMP, department VARCHAR)",
    "CREATE TABLE CLINIPIPE.RAW.LABS (lab_id INT, encounter_id INT, patient_id INT, "
    "abnormal_flag VARCHAR, collected_ts TIMESTAMP, test_name VARCHAR, "
    "value_numeric NUMBER(12, 3), unit VARCHAR)",
    *[f"CREATE TABLE CLINIPIPE.RAW.{t} (id INT)"
      for t in ("PROVIDERS", "MEDICATIONS", "CLAIMS", "CLINICAL_NOTES")],
)  # fmt: skip


LOCK = frozenset({"retention-lock"})
"""Deploy's confirmation of a backup retention lock (`deploy --confirm-retention-lock`)."""


def _deploy_everything(spec: Path, *, confirmed: frozenset[str] = frozenset()) -> None:
    """First deploy, the raw tables a backfill would create, then the deferred templates."""
    deploy(load_spec(spec), confirmed=confirmed)
    with SnowflakeTarget(load_spec(spec)) as target:
        for ddl in RAW_TABLES:
            target.query(ddl)
    assert [f.name for f in deploy(load_spec(spec)).plan.to_run] == [
        "03-dynamic-tables.sql",
        "04-interactive-tables.sql",
    ]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs (CLINIPIPE_UPDATE_GOLDEN=1 rewrites)"


# -- 1. role and warehouse -----------------------------------------------------------------------


def test_deploy_session_sets_role_and_warehouse_in_order(project: Path, session: Session) -> None:
    loaded = load_spec(project)
    deploy(loaded)
    sent = session.sent
    # Deploy logs in as the admin role (the pipeline role does not exist yet), with a warehouse.
    assert session.logins and all(
        login == {"user": "deployer", "role": "SYSADMIN", "warehouse": "CLINIPIPE_CDC_WH"}
        for login in session.logins
    ), session.logins
    executed = [s for s in sent if not s.startswith(("SHOW ", "SELECT "))]
    assert executed[0] == 'USE ROLE "SYSADMIN"'
    assert 'GRANT ROLE "CLINIPIPE_ROLE" TO ROLE "SYSADMIN"' in executed
    switch = executed.index('USE ROLE "CLINIPIPE_ROLE"')
    assert executed[switch + 1] == 'USE WAREHOUSE "CLINIPIPE_CDC_WH"'
    # Everything inside the database is created by (owned by) the pipeline role ...
    creates = [i for i, s in enumerate(executed) if s.startswith(("CREATE TABLE", "CREATE OR "))]
    assert creates and min(creates) > switch
    # ... and the account-level objects and grants by the admin role, before the switch.
    account = [i for i, s in enumerate(executed)
               if s.startswith(("CREATE DATABASE", "CREATE SCHEMA", "CREATE WAREHOUSE",
                                "CREATE ROLE", "GRANT"))]  # fmt: skip
    assert account and max(account) < switch
    # The first MERGE and the first template record run with a warehouse.
    merge = next(i for i, s in enumerate(executed) if s.startswith("MERGE"))
    record = next(i for i, s in enumerate(executed) if "DEPLOYED_TEMPLATES" in s and "INSERT" in s)
    assert switch < merge and switch < record
    # Future grants cover dynamic tables too, for both reader roles.
    for schema, reader in (("SERVING", "ANALYST"), ("RESEARCH", "RESEARCHER")):
        assert (
            f'GRANT SELECT ON FUTURE DYNAMIC TABLES IN SCHEMA "CLINIPIPE"."{schema}" '
            f'TO ROLE "CLINIPIPE_ROLE_{reader}"' in executed
        )

    # Once the raw tables exist, a deploy that does not run 01 sets the pipeline session first.
    with SnowflakeTarget(loaded) as target:
        for ddl in RAW_TABLES:
            target.query(ddl)
    # Every other command logs in as the pipeline role.
    assert session.logins[-1] == {
        "user": "deployer", "role": "CLINIPIPE_ROLE", "warehouse": "CLINIPIPE_CDC_WH"
    }  # fmt: skip
    mark = session.mark()
    assert deploy(loaded).plan.to_run[0].name == "03-dynamic-tables.sql"
    executed = [s for s in session.since(mark) if not s.startswith(("SHOW ", "SELECT "))]
    assert executed[:3] == [
        'USE ROLE "CLINIPIPE_ROLE"',
        'USE WAREHOUSE "CLINIPIPE_CDC_WH"',
        'USE DATABASE "CLINIPIPE"',
    ]
    _golden("first-deploy.sql", "\n".join(_line(s) for s in sent) + "\n")


def test_table_exists_does_not_swallow_errors(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = SnowflakeTarget(load_spec(project))

    def fail(errno: int, msg: str) -> Any:
        def records(sql: str) -> list[dict[str, Any]]:
            raise snowflake.connector.errors.ProgrammingError(msg=msg, errno=errno)

        return records

    missing = "SQL compilation error: Schema 'CLINIPIPE.RAW' does not exist or not authorized."
    monkeypatch.setattr(target, "query_records", fail(2003, missing))
    assert target.table_exists("raw", "patients") is False
    for errno, msg in (
        (606, "No active warehouse selected in the current session."),
        (3001, "Insufficient privileges to operate on schema 'RAW'"),
    ):
        monkeypatch.setattr(target, "query_records", fail(errno, msg))
        with pytest.raises(TargetError, match=re.escape(msg.split(" '")[0])):
            target.table_exists("raw", "patients")


# -- 3. drift: a plan, applied ------------------------------------------------------------------

NEW_IT = """    target_lag: 10 minutes
  - name: admissions_dashboard
    from: patient_summary
    cluster_by: [last_admit]
"""

CHANGES = {
    "dt-sql": {"count(*) as admissions": "count(distinct patient_id) as admissions"},
    "dt-lag": {"target_lag: 5 minutes": "target_lag: 15 minutes"},
    "warehouse-size": {
        "incremental: {name: CLINIPIPE_CDC_WH, size: XSMALL, auto_suspend: 60}":
        "incremental: {name: CLINIPIPE_CDC_WH, size: SMALL, auto_suspend: 60}"
    },
    "backup-retention": {"retention_days: 2555": "retention_days: 365"},
    "new-interactive-table": {"    target_lag: 10 minutes\n": NEW_IT},
}  # fmt: skip


def _plan_text(plan: DeployPlan) -> str:
    lines = []
    for c in plan.changes:
        lines.append(
            f"{c.kind} {c.name} | {c.attribute} | {c.old} -> {c.new} | "
            f"rebuilds on: {c.rebuilds_on or '-'} | {c.source} | "
            f"{'applied' if c.applicable else 'not applied'}"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("kind", list(CHANGES))
def test_changed_spec_is_planned_and_applied(
    kind: str, project: Path, session: Session, tmp_path: Path
) -> None:
    _deploy_everything(project)
    assert plan_deployment(load_spec(project)).changes == []  # nothing drifted yet

    text = project.read_text()
    for old, new in CHANGES[kind].items():
        assert old in text, old
        text = text.replace(old, new, 1)
    project.write_text(text)
    loaded = load_spec(project)

    mark = session.mark()
    plan = plan_deployment(loaded)
    assert plan.changes, "the change is planned"
    assert not [s for s in session.since(mark) if not s.startswith(("SHOW ", "SELECT "))], (
        "planning changes nothing"
    )
    mark = session.mark()
    deploy(loaded, plan)
    sent = [s for s in session.since(mark) if not s.startswith(("SHOW ", "SELECT "))]
    plan_sql = [sql for c in plan.changes for sql in c.statements]
    for sql in plan_sql:  # every plan statement was sent, after the templates' statements
        assert sql in sent
    if plan_sql:
        templates = [i for i, s in enumerate(sent) if s in {
            _norm(st.sql) for f in plan.to_run for st in f.statements}]  # fmt: skip
        assert not templates or max(templates) < sent.index(plan_sql[0])
    _golden(
        f"change-{kind}.sql",
        f"-- plan\n{_plan_text(plan)}\n-- deploy sends\n"
        + "\n".join(_line(s) for s in sent)
        + "\n-- plan statements\n"
        + "".join(f"{sql};\n" for sql in plan_sql),
    )
    # Applied and recorded: the next plan is empty, and a second deploy runs nothing.
    again = plan_deployment(load_spec(project))
    assert again.changes == [] and again.to_run == []


def test_dry_run_prints_the_plan_and_changes_nothing(
    project: Path, session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    _deploy_everything(project)
    project.write_text(project.read_text().replace("target_lag: 5 minutes", "target_lag: 2 hours"))
    mark = session.mark()
    code, out, _ = cli(capsys, "-c", str(project), "deploy", "--dry-run")
    assert code == 0
    assert "Changes to existing objects" in out and "target_lag" in out
    assert "target_lag: '5 minutes' → '2 hours'" in out and "in place" in out
    assert "ALTER DYNAMIC TABLE" in out and "TARGET_LAG = '2 hours'" in out
    assert not [s for s in session.since(mark) if not s.startswith(("SHOW ", "SELECT "))]
    assert len(plan_deployment(load_spec(project)).changes) == 1  # still to apply


def test_locked_retention_is_not_shortened(project: Path, session: Session) -> None:
    text = project.read_text().replace("retention_lock: false", "retention_lock: true")
    project.write_text(text)
    _deploy_everything(project, confirmed=LOCK)
    project.write_text(text.replace("retention_days: 2555", "retention_days: 30"))
    plan = plan_deployment(load_spec(project))
    (change,) = plan.changes
    assert (change.attribute, change.old, change.new) == ("retention_days", "2555", "30")
    assert not change.applicable and change.statements == () and "retention lock" in change.note
    deploy(load_spec(project), plan, confirmed=LOCK)
    # Still not applied: the recorded retention stays the old one, so the plan keeps saying so.
    assert [c.attribute for c in plan_deployment(load_spec(project)).changes] == ["retention_days"]


# -- 6. privileges ------------------------------------------------------------------------------

SHOW_GRANTS = {
    'SHOW GRANTS TO ROLE "SYSADMIN"': [
        {"privilege": "CREATE DATABASE", "granted_on": "ACCOUNT", "name": "ACME"},
        {"privilege": "CREATE WAREHOUSE", "granted_on": "ACCOUNT", "name": "ACME"},
        {"privilege": "USAGE", "granted_on": "ROLE", "name": "CLINIPIPE_ROLE"},
        {"privilege": "USAGE", "granted_on": "ROLE", "name": "ROLE_MAKER"},
    ],
    'SHOW GRANTS TO ROLE "ROLE_MAKER"': [
        {"privilege": "CREATE ROLE", "granted_on": "ACCOUNT", "name": "ACME"},
    ],
    'SHOW GRANTS TO ROLE "CLINIPIPE_ROLE"': [
        {"privilege": "USAGE", "granted_on": "DATABASE", "name": "CLINIPIPE"},
        {"privilege": "USAGE", "granted_on": "DATABASE_ROLE", "name": "SNOWFLAKE.USAGE_VIEWER"},
    ],
}


def test_missing_privileges_from_show_grants(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fakesnow has no SHOW GRANTS: the SQL sent is pinned, the comparison runs on recorded rows
    (grants inherited through granted roles count)."""
    target = SnowflakeTarget(load_spec(project))
    sent: list[str] = []

    def records(sql: str) -> list[dict[str, Any]]:
        sent.append(sql)
        return SHOW_GRANTS[sql]

    monkeypatch.setattr(target, "query_records", records)
    missing = target.missing_privileges()
    assert sent == [
        'SHOW GRANTS TO ROLE "SYSADMIN"',
        'SHOW GRANTS TO ROLE "CLINIPIPE_ROLE"',
        'SHOW GRANTS TO ROLE "ROLE_MAKER"',
        'SHOW GRANTS TO ROLE "CLINIPIPE_ROLE"',
    ]
    assert [(m.role, m.privilege, m.on) for m in missing] == [
        ("SYSADMIN", "MANAGE GRANTS", "ACCOUNT"),
        ("CLINIPIPE_ROLE", "USAGE", "DATABASE ROLE SNOWFLAKE.CLASSIFICATION_ADMIN"),
    ]
    assert missing[0].fix == 'GRANT MANAGE GRANTS ON ACCOUNT TO ROLE "SYSADMIN"; -- as ACCOUNTADMIN'


def test_privilege_comparison_units(project: Path) -> None:
    target = SnowflakeTarget(load_spec(project))
    needs = privileges_needed(target)
    everything = {(n.any_of[0][0], n.any_of[0][1], "X" if n.any_of[0][2] == "*" else n.any_of[0][2])
                  for n in needs}  # fmt: skip
    assert compare_privileges(needs, {"SYSADMIN": everything, "CLINIPIPE_ROLE": everything}) == []
    # Before the first deploy the pipeline role does not exist: only what 01 cannot grant.
    missing = compare_privileges(needs, {"SYSADMIN": everything, "CLINIPIPE_ROLE": None})
    assert {m.on for m in missing} == {
        "DATABASE ROLE SNOWFLAKE.USAGE_VIEWER", "DATABASE ROLE SNOWFLAKE.CLASSIFICATION_ADMIN"
    } and all("after the first deploy" in m.fix for m in missing)  # fmt: skip
    # Owning the database stands for CREATE DATABASE.
    need = Need(
        "SYSADMIN",
        "CREATE DATABASE",
        "ACCOUNT",
        "x",
        "y",
        (("CREATE DATABASE", "ACCOUNT", "*"), ("OWNERSHIP", "DATABASE", "CLINIPIPE")),
    )
    assert compare_privileges([need], {"SYSADMIN": {("OWNERSHIP", "DATABASE", "CLINIPIPE")}}) == []
    assert len(compare_privileges([need], {"SYSADMIN": {("OWNERSHIP", "DATABASE", "OTHER")}})) == 1
    assert grants_from_show([{"privilege": "usage", "granted_on": "ROLE", "name": '"Ab"'}]) == [
        ("USAGE", "ROLE", "AB")
    ]
    assert warehouses_from_show(
        [
            {"name": "CLINIPIPE_CDC_WH", "size": "X-Small", "auto_suspend": 60},
            {"name": "W2", "size": "6X-Large", "auto_suspend": None},
        ]
    ) == {"CLINIPIPE_CDC_WH": {"size": "XSMALL", "auto_suspend": "60"}, "W2": {"size": "X6LARGE"}}


def test_deploy_check_cli(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def records(self: SnowflakeTarget, sql: str) -> list[dict[str, Any]]:
        return SHOW_GRANTS[sql]

    monkeypatch.setattr(SnowflakeTarget, "connect", lambda self: None)
    monkeypatch.setattr(SnowflakeTarget, "query_records", records)
    code, out, _ = cli(capsys, "-c", str(project), "deploy", "--check")
    assert code == 3 and "MANAGE GRANTS" in out and "nothing was changed" in out
    code, out, _ = cli(capsys, "-c", str(project), "deploy", "--check", "--json")
    assert code == 3 and '"privilege": "MANAGE GRANTS"' in out


def test_deploy_check_on_duckdb_has_nothing_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:5432/ehr")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    spec = write_spec(tmp_path, example_text())
    code, out, _ = cli(capsys, "-c", str(spec), "deploy", "--check")
    assert code == 0 and "no roles or privileges to check" in out
