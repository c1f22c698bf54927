"""Fail closed (issue 11): spec column names are checked against the source, a research extract
never copies a column the spec does not classify as it is, and redact's own final scan gates
the "de-identified" claim.

Name checks run against a real PostgreSQL (the hospital's schema); the redaction tests use a
real DuckDB warehouse deployed from the templates, with raw tables made by hand (as in
test_redact_columns.py) plus columns the spec does not mention.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg2
import pytest

from clinipipe.backup import audit
from clinipipe.phi.safe_harbor import POLICIES, RedactionKey, plan_table
from clinipipe.pipeline.redact import NOT_RELEASED_LABEL, RedactOptions, redact
from clinipipe.spec import LoadedSpec, SpecError, load_spec, parse_spec
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.snowflake import SnowflakeDialect
from clinipipe.targets.snowflake.redact import SnowflakeRedactSql
from tests.helpers import (
    REPO,
    cli,
    deploy_target_templates,
    example_text,
    snowflake_text,
    write_spec,
)
from tests.test_redact_columns import _duckdb_ddl, patient

KEY = "fail-closed-key-0123456789-abcdefgh"
AS_OF = dt.date(2026, 3, 1)
SSN = "219-09-9999"

PATIENTS_FIRST_NAME = "        mrn: mrn\n        first_name: name\n"
MISSPELLED = "        mrn: mrn\n        frist_name: name\n"


def create_hospital_tables(dsn: str) -> None:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute((REPO / "clinipipe/source/sql/hospital_schema.sql").read_text())
    con.close()


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first `needle` in `text`."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(needle)


# --- spec column names against the source catalog ----------------------------------------------


@pytest.fixture
def source(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder whose source holds the hospital's (empty) tables."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    create_hospital_tables(pg_dsn)
    return tmp_path


def test_a_misspelled_column_is_refused_at_deploy_and_validate(
    source: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = example_text(**{PATIENTS_FIRST_NAME: MISSPELLED})
    spec = write_spec(source, text)
    line, col = position(text, "frist_name")
    expected = (
        f"{spec}:{line}:{col}: source.tables[0].columns: source table public.patients has no "
        "column 'frist_name' (did you mean 'first_name'?)"
    )
    for args in (["deploy", "--dry-run"], ["deploy"], ["validate"]):
        code, out, err = cli(capsys, "-c", str(spec), *args)
        assert code == 2, (args, out, err)
        assert expected in " ".join(err.split()), (args, err)
        assert "1 problem in the spec" in err and "Traceback" not in out + err
    code, out, _ = cli(capsys, "-c", str(spec), "validate", "--json")
    doc = json.loads(out)
    assert code == 2 and doc["valid"] is False
    [problem] = doc["problems"]
    assert (problem["line"], problem["col"]) == (line, col) and "'first_name'" in problem["message"]
    # Nothing was deployed: no warehouse file, no publication on the source.
    assert not (source / "warehouse.duckdb").exists()
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_publication")
        assert cur.fetchone() == (0,)
    con.close()


def test_primary_key_and_release_names_are_checked_too(
    source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = example_text(
        **{
            "primary_key: [lab_id]": "primary_key: [labid]",
            "release: [sex, state]": "release: [sex, sate]",
        }
    )
    spec = write_spec(source, text)
    code, _, err = cli(capsys, "-c", str(spec), "deploy", "--dry-run")
    flat = " ".join(err.split())
    assert code == 2 and "2 problems in the spec" in flat
    line, col = position(text, "labid")
    assert (
        f":{line}:{col}: source.tables[3].primary_key[0]: source table public.labs has no "
        "column 'labid' (did you mean 'lab_id'?)"
    ) in flat
    line, col = position(text, "sate]")
    assert f":{line}:{col}: source.tables[0].release[1]:" in flat
    assert "has no column 'sate' (did you mean 'state'?)" in flat


def test_a_primary_key_other_than_the_sources_is_refused(
    source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Existing columns, but not the table's key: CDC follows the source's key, so scans and the
    research extract would link rows by the wrong columns."""
    text = example_text(**{"primary_key: [lab_id]": "primary_key: [encounter_id]"})
    spec = write_spec(source, text)
    labs = text.index("name: labs")
    line, col = position(text[labs:], "[encounter_id]")
    line += text[:labs].count("\n")
    for args in (["deploy", "--dry-run"], ["validate"]):
        code, out, err = cli(capsys, "-c", str(spec), *args)
        flat = " ".join(err.split())
        assert code == 2 and "Traceback" not in out + err, (args, out, err)
        assert (
            f":{line}:{col}: source.tables[3].primary_key: source table public.labs has primary "
            "key (lab_id), not (encounter_id): write primary_key: [lab_id]"
        ) in flat, (args, flat)


def test_validate_checks_names_when_it_can_and_says_so_when_it_cannot(
    source: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(source, example_text())
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 0 and "checked against the source catalog" in out, err
    code, out, _ = cli(capsys, "-c", str(spec), "validate", "--json")
    checked = json.loads(out)["source_columns"]
    assert code == 0 and checked["checked"] is True and checked["tables"] == 7
    assert checked["columns"] > 40

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u:pw-s3cret@127.0.0.1:9/none")
    write_spec(source, example_text(**{PATIENTS_FIRST_NAME: MISSPELLED}))
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    flat = " ".join(err.split())
    assert code == 0 and "is valid" in out  # unreachable: the check is skipped, not an error
    assert "column names not checked against the source" in flat and "deploy" in flat
    assert "pw-s3cret" not in out + err
    code, out, _ = cli(capsys, "-c", str(spec), "validate", "--json")
    assert code == 0 and json.loads(out)["source_columns"]["checked"] is False
    # deploy always checks: an unreachable source is a runtime error there
    code, _, err = cli(capsys, "-c", str(spec), "deploy", "--dry-run")
    assert code == 1 and "cannot connect to the source PostgreSQL" in err


@pytest.mark.parametrize(
    ("release", "fragment"),
    [
        ("release: [sex, state, ssn]", "classified as 'ssn' under columns and also released"),
        ("release: [sex, state, patient_id]", "is a join key"),
        ("release: [sex, state, sex]", "released twice"),
    ],
)
def test_release_must_not_contradict_the_classification(
    release: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@127.0.0.1:9/none")
    text = example_text(**{"release: [sex, state]": release})
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "clinipipe.yaml")
    [problem] = caught.value.problems
    assert fragment in problem.message and "source.tables[0].release[2]" in problem.message
    assert problem.line == position(text, release)[0]


# --- research extracts fail closed ----------------------------------------------------------------

EXTRA_COLUMNS = (
    "ALTER TABLE raw.encounters ADD COLUMN comments VARCHAR",  # unclassified text
    "ALTER TABLE raw.encounters ADD COLUMN follow_up DATE",  # unclassified date
    "ALTER TABLE raw.encounters ADD COLUMN callback_ts TIMESTAMPTZ",  # unclassified timestamp
    "ALTER TABLE raw.encounters ADD COLUMN badge_no BIGINT",  # unclassified number
    "ALTER TABLE raw.encounters ADD COLUMN bed VARCHAR",  # explicitly `none`: like unlisted
    "ALTER TABLE raw.encounters ADD COLUMN ward_code VARCHAR",  # released as it is
)
ENCOUNTERS = (
    "        account_number: account_number\n"
    "      release: [encounter_type, department, primary_dx]\n"
)
ENCOUNTERS_HERE = (
    "        account_number: account_number\n"
    "        bed: none\n"
    "      release: [encounter_type, department, primary_dx, ward_code]\n"
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoadedSpec]:
    """A deployed DuckDB warehouse (no PostgreSQL) whose raw.encounters has columns the spec
    does not classify, with one patient's own name and an SSN typed into free comments."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", KEY)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    text = example_text(**{ENCOUNTERS: ENCOUNTERS_HERE})
    loaded = load_spec(write_spec(tmp_path, text))
    with DuckDBTarget(loaded) as target:
        deploy_target_templates(target, loaded)
        target.con.execute(_duckdb_ddl())
        for statement in EXTRA_COLUMNS:
            target.con.execute(statement)
        target.con.execute(patient(1, first_name="Rosalind", last_name="Quackenbush"))
        target.con.execute(patient(2))
        target.con.execute(
            "INSERT INTO raw.encounters VALUES "
            "(10, 1, 7, 'inpatient', 'ICU', '2021-03-01 10:00:00+00', NULL, 'I10', 'ACC1', "
            f"'Rosalind Quackenbush called, SSN {SSN}', DATE '2021-05-06', "
            "'2021-05-07 08:30:00+00', 4242, 'bed 12 Quackenbush', 'W1'), "
            "(11, 2, 7, 'outpatient', 'ED', '2021-12-30 08:00:00+00', NULL, 'I10', 'ACC2', "
            "'no show', NULL, NULL, 77, NULL, 'W2')"
        )
    yield loaded


def research(loaded: LoadedSpec, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(loaded.directory / "warehouse.duckdb"), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def columns_of(loaded: LoadedSpec, schema: str, table: str) -> list[str]:
    return [
        c
        for (c,) in research(
            loaded,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            f"'{schema}' AND table_name = '{table}' ORDER BY ordinal_position",
        )
    ]


@pytest.mark.parametrize("policy", POLICIES)
def test_unclassified_columns_never_reach_research_as_they_are(
    project: LoadedSpec, policy: str
) -> None:
    schema = f"r_{policy}"
    result = redact(
        project,
        RedactOptions(policy, schema=schema, tables=["patients", "encounters"], as_of=AS_OF),
    )
    assert result.clean
    key = RedactionKey(KEY.encode())
    got = {
        r[0]: r[1:]
        for r in research(
            project,
            f"SELECT encounter_id, comments, follow_up, callback_ts, bed, ward_code "
            f"FROM {schema}.encounters",
        )
    }
    comments, follow_up, callback, bed, ward = got[key.pseudonym(10, "encounter_id")]
    # text: scrubbed by the detectors (the patient's own name found by record linkage)
    assert isinstance(comments, str) and "[SSN]" in comments
    for planted in (SSN, SSN.replace("-", ""), "Rosalind", "Quackenbush"):
        assert planted not in comments and planted not in str(bed)
    assert got[key.pseudonym(11, "encounter_id")][0] == "no show"
    # dates and timestamps: the year, in every policy (even a Limited Data Set)
    assert (follow_up, callback) == (2021, 2021)
    assert got[key.pseudonym(11, "encounter_id")][1:3] == (None, None)
    # released: copied as it is
    assert ward == "W1"
    # other types: dropped
    assert "badge_no" not in columns_of(project, schema, "encounters")
    treatments = {
        c["column"]: c for c in next(t for t in result.tables if t.table == "encounters").columns
    }
    assert treatments["comments"] == {"column": "comments", "class": "none",
                                      "treatment": "text", "unclassified": True}  # fmt: skip
    assert treatments["bed"]["treatment"] == "text" and treatments["bed"]["unclassified"]
    assert (
        treatments["follow_up"]["treatment"] == "year" and treatments["follow_up"]["unclassified"]
    )
    assert treatments["badge_no"]["treatment"] == "drop" and treatments["badge_no"]["unclassified"]
    assert treatments["ward_code"] == {"column": "ward_code", "class": "none",
                                       "treatment": "keep", "released": True}  # fmt: skip
    # the manifest in the audit log says the same (and holds no value)
    with DuckDBTarget(project, read_only=True) as target:
        entries = audit.entries(target)
    manifest = [e for e in entries if e.action == "redact"][-1].detail
    encounters = next(t for t in manifest["tables"] if t["table"] == "encounters")
    assert {"column": "ward_code", "class": "none", "treatment": "keep", "released": True} in (
        encounters["columns"]
    )
    assert "Quackenbush" not in json.dumps(manifest) and SSN not in json.dumps(manifest)
    assert entries[-1].action == "redact_scan" and entries[-1].detail["clean"] is True


def test_the_final_scan_gates_a_released_column_holding_phi(
    project: LoadedSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    """A column released as it is that does hold PHI reaches research (the spec said so), but
    redact's own scan finds it: exit 3, no de-identified claim, findings masked."""
    with duckdb.connect(str(project.directory / "warehouse.duckdb")) as con:
        con.execute(f"UPDATE raw.encounters SET ward_code = 'W1 SSN {SSN}' WHERE encounter_id = 10")
    code, out, err = cli(capsys, "-c", str(project.path), "redact", "--policy", "safe_harbor",
                         "--tables", "patients,encounters")  # fmt: skip
    flat = " ".join((out + err).split())
    assert code == 3, flat
    assert "found PHI" in flat and "NOT de-identified" in flat
    assert "De-identified under HIPAA Safe Harbor" not in flat
    assert "research.encounters.ward_code" in flat and "[SSN]" in flat  # masked finding
    assert SSN not in out + err and SSN.replace("-", "") not in out + err
    readme = dict(research(project, "SELECT table_name, label FROM research._readme"))
    assert readme["encounters"] == NOT_RELEASED_LABEL
    assert readme["patients"].startswith("De-identified under HIPAA Safe Harbor")
    findings = research(
        project,
        "SELECT schema_name, table_name, column_name, category, masked_excerpt, found_by "
        "FROM _clinipipe.phi_findings",
    )
    assert ("research", "encounters", "ward_code", "SSN", "W1 SSN [SSN]", "redact") in findings
    assert SSN not in str(findings)
    with DuckDBTarget(project, read_only=True) as target:
        scan = audit.entries(target)[-1]
    assert scan.action == "redact_scan" and scan.detail["clean"] is False
    assert scan.detail["failed_tables"] == ["encounters"] and scan.detail["by_category"]["SSN"]
    assert SSN not in json.dumps(scan.detail)

    # JSON says the same, and the gate holds on a rerun that rebuilds nothing.
    code, out, _ = cli(capsys, "-c", str(project.path), "redact", "--policy", "safe_harbor",
                       "--tables", "patients,encounters", "--json")  # fmt: skip
    doc = json.loads(out)
    assert code == 3 and doc["rebuilt"] == [] and doc["clean"] is False
    assert doc["final_scan"]["failed"] is True and SSN not in out

    # Fixed at the source: clean again, and the claim is made.
    with duckdb.connect(str(project.directory / "warehouse.duckdb")) as con:
        con.execute("UPDATE raw.encounters SET ward_code = 'W1' WHERE encounter_id = 10")
    code, out, err = cli(capsys, "-c", str(project.path), "redact", "--policy", "safe_harbor",
                         "--tables", "patients,encounters")  # fmt: skip
    assert code == 0 and "De-identified under HIPAA Safe Harbor" in " ".join(err.split())
    readme = dict(research(project, "SELECT table_name, label FROM research._readme"))
    assert readme["encounters"].startswith("De-identified under HIPAA Safe Harbor")


# --- Snowflake: the same rules in the rendered SQL ----------------------------------------------


def test_snowflake_sql_follows_the_same_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@127.0.0.1:9/none")
    loaded = parse_spec(
        snowflake_text().replace(ENCOUNTERS, ENCOUNTERS_HERE), "c.yaml", Path("/x/c.yaml")
    )
    table = next(t for t in loaded.spec.source.tables if t.name == "encounters")
    raw = [("encounter_id", "NUMBER"), ("patient_id", "NUMBER"), ("department", "TEXT"),
           ("comments", "TEXT"), ("follow_up", "DATE"), ("callback_ts", "TIMESTAMP_TZ"),
           ("badge_no", "NUMBER"), ("bed", "TEXT"), ("ward_code", "TEXT"),
           ("tags", "ARRAY"), ("attrs", "VARIANT")]  # fmt: skip
    sql = SnowflakeRedactSql(SnowflakeDialect(), database="CLINIPIPE")
    for policy in POLICIES:
        plan = plan_table(loaded.spec, table, policy, raw)
        assert plan.notes == ("comments", "bed")  # unclassified text: redacted like notes
        text = sql.ai_redact_sql(plan, '"CLINIPIPE"."RAW"."ENCOUNTERS"', "'2026-03-01'")
        select = text[text.rindex(" SELECT ") :]
        for dropped in ("BADGE_NO", "TAGS", "ATTRS"):
            assert f'"{dropped}"' not in text
        assert 't."WARD_CODE" AS "WARD_CODE"' in select and 't."DEPARTMENT" AS' in select
        assert 't."COMMENTS" AS' not in select and 't."BED" AS' not in select
        assert '"__CLINIPIPE_COMMENTS".redacted AS "COMMENTS"' in select
        assert re.search(r'"__CLINIPIPE_COMMENTS" AS \(SELECT d\.v, LISTAGG\(AI_REDACT\(', text)
        assert 'SELECT DISTINCT "COMMENTS" AS v' in text  # one AI_REDACT call per value
        assert 'CAST(year(CAST(t."FOLLOW_UP" AS DATE)) AS INTEGER) AS "FOLLOW_UP"' in select
        assert (
            "CAST(year(CAST(CONVERT_TIMEZONE('UTC', t.\"CALLBACK_TS\") AS DATE)) AS INTEGER)"
        ) in select
