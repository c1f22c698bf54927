"""Snowflake SQL checked against Snowflake's grammar, not against fakesnow (issue 20).

* Every rendered Snowflake statement of every spec the tests use parses under sqlglot's
  Snowflake grammar. Statements sqlglot does not understand (it returns them as an opaque
  `Command`, or fails) are listed in `DOCUMENTED` with the page that documents them, and must
  match that page's grammar (a regex of its clauses in order).
* The spec's DuckDB SQL is translated for Snowflake: each golden below was checked by reading
  the Snowflake documentation page named beside it, not copied from sqlglot's output.
* Retention lock is opt-in, the classification profile is never replaced, the refresh history
  reaches back 7 days, `validate` warns about always-on warehouses.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from clinipipe.spec import parse_spec
from clinipipe.spec.checks import cost_warnings, spec_warnings
from clinipipe.spec.errors import SpecError
from clinipipe.sql import render
from clinipipe.sql.render import confirmations_needed
from clinipipe.sql.spec_sql import transpile
from clinipipe.targets import dialect_of
from tests.helpers import cli, example_text, snowflake_text, write_spec

SNOWFLAKE = dialect_of("snowflake")
DOCS = "https://docs.snowflake.com/en/"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:5432/ehr")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)


def _load(text: str):  # type: ignore[no-untyped-def]
    return parse_spec(text, "clinipipe.yaml", Path("/x/clinipipe.yaml"))


# --- every rendered statement parses under Snowflake's grammar ---------------------------------

_ID = r'"[A-Z0-9_]+"'
_QID = rf"{_ID}(?:\.{_ID}){{0,2}}"
_STR = r"'(?:[^']|'')*'"

DOCUMENTED: list[tuple[str, str, re.Pattern[str]]] = [
    # (what, where it is documented, the documented grammar as a regex)
    ("CREATE ROLE", DOCS + "sql-reference/sql/create-role",
     re.compile(rf"CREATE ROLE IF NOT EXISTS {_ID}")),
    ("GRANT ROLE", DOCS + "sql-reference/sql/grant-role",
     re.compile(rf"GRANT ROLE {_ID} TO (ROLE|USER) {_ID}")),
    ("GRANT <privilege> ON ALL|FUTURE <objects> IN SCHEMA",
     DOCS + "sql-reference/sql/grant-privilege (schemaObjectPrivileges; FUTURE and ALL)",
     re.compile(rf"GRANT [A-Z, ]+ ON (ALL|FUTURE) (DYNAMIC |INTERACTIVE )?TABLES IN SCHEMA {_QID}"
                rf" TO ROLE {_ID}")),
    ("GRANT <privilege> ON DYNAMIC TABLE <name>",
     DOCS + "user-guide/dynamic-tables-privileges (specify the object type as DYNAMIC TABLE); "
     + DOCS + "sql-reference/sql/grant-privilege",
     re.compile(rf"GRANT [A-Z, ]+ ON DYNAMIC TABLE {_QID} TO ROLE {_ID}")),
    ("CREATE INTERACTIVE TABLE",
     "snowflake-syntax.md 'Interactive tables and warehouses' (GA 2025-12-11); "
     + DOCS + "sql-reference/sql/create-interactive-table",
     re.compile(rf"CREATE INTERACTIVE TABLE IF NOT EXISTS {_QID}\s+CLUSTER BY \({_ID}(, {_ID})*\)"
                rf"(\s+TARGET_LAG = '\d+ (seconds|minutes|hours|days)')?"
                rf"(\s+WAREHOUSE = {_ID})?\s+AS\s+(?P<query>SELECT\s.+)", re.S)),
    ("CREATE INTERACTIVE WAREHOUSE",
     "snowflake-syntax.md 'Interactive tables and warehouses'; "
     + DOCS + "sql-reference/sql/create-interactive-warehouse",
     re.compile(rf"CREATE INTERACTIVE WAREHOUSE IF NOT EXISTS {_ID}\s+TABLES \({_QID}(, {_QID})*\)"
                r"\s+WITH WAREHOUSE_SIZE = [A-Z0-9]+\s+AUTO_SUSPEND = \d+\s+AUTO_RESUME = TRUE")),
    ("ALTER WAREHOUSE ... ADD TABLES",
     "snowflake-syntax.md 'Interactive tables and warehouses' (ALTER WAREHOUSE <wh> ADD TABLES)",
     re.compile(rf"ALTER WAREHOUSE {_ID} ADD TABLES \({_QID}(, {_QID})*\)")),
    ("CREATE CLASSIFICATION_PROFILE",
     DOCS + "sql-reference/classes/classification_profile/commands/create-classification-profile"
     " (CREATE [ OR REPLACE ] SNOWFLAKE.DATA_PRIVACY.CLASSIFICATION_PROFILE [ IF NOT EXISTS ])",
     re.compile(rf"CREATE SNOWFLAKE\.DATA_PRIVACY\.CLASSIFICATION_PROFILE IF NOT EXISTS {_QID}"
                r"\(\{.*\}\)", re.S)),
    ("CREATE BACKUP POLICY",
     "snowflake-syntax.md 'Backups'; " + DOCS + "sql-reference/sql/create-backup-policy",
     re.compile(rf"CREATE BACKUP POLICY IF NOT EXISTS {_QID}(\s+WITH RETENTION LOCK)?"
                rf"\s+SCHEDULE = {_STR}\s+EXPIRE_AFTER_DAYS = \d+\s+COMMENT = {_STR}")),
    ("CREATE BACKUP SET",
     "snowflake-syntax.md 'Backups'; " + DOCS + "sql-reference/sql/create-backup-set",
     re.compile(rf"CREATE BACKUP SET IF NOT EXISTS {_QID}\s+FOR (SCHEMA|DATABASE|(DYNAMIC )?TABLE) "
                rf"{_QID}\s+WITH BACKUP POLICY {_QID}\s+COMMENT = {_STR}")),
]  # fmt: skip


def _code(sql: str) -> str:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";").strip()


def _specs() -> dict[str, str]:
    """The specs the tests render for Snowflake, plus variants reaching every template branch."""
    locked = snowflake_text().replace("retention_lock: false", "retention_lock: true")
    sql_table = snowflake_text().replace(
        "  - name: census_dashboard\n    from: daily_census\n",
        "  - name: census_dashboard\n    sql: |\n      select cast(admit_ts as date) as "
        "census_date, department, count(*) filter (where encounter_type ilike 'inp%') as "
        "admissions\n"
        "      from raw.encounters group by all\n",
    )
    bare = snowflake_text().split("\ndynamic_tables:")[0] + "\n"
    return {"example": example_text(), "snowflake": snowflake_text(), "locked": locked,
            "interactive_sql": sql_table, "bare": bare}  # fmt: skip


def _unparsed(sql: str) -> bool:
    """True when sqlglot's Snowflake grammar does not understand `sql` (error or Command)."""
    logging.getLogger("sqlglot").setLevel(logging.CRITICAL)
    try:
        return isinstance(sqlglot.parse_one(sql, read="snowflake"), exp.Command)
    except sqlglot.errors.SqlglotError:
        return True


@pytest.mark.parametrize("spec", sorted(_specs()))
def test_every_rendered_snowflake_statement_parses(spec: str) -> None:
    text = _specs()[spec]
    assert spec != "interactive_sql" or "sql: |\n      select cast(admit_ts" in text
    files = render(_load(text), SNOWFLAKE)
    checked = 0
    for f in files:
        if f.dialect != "snowflake":
            continue  # 02 runs on PostgreSQL
        for st in f.statements:
            sql = _code(st.sql)
            checked += 1
            if not _unparsed(sql):
                continue
            documented = [m for _, _, form in DOCUMENTED if (m := form.fullmatch(sql))]
            for match in documented:  # a query inside a documented statement parses too
                if "query" in match.groupdict():
                    assert not _unparsed(match["query"]), match["query"]
            assert documented, (
                f"{spec}: {f.name} statement {st.number} does not parse under Snowflake's grammar "
                f"(sqlglot) and matches no documented form in DOCUMENTED:\n{sql[:400]}"
            )
    assert checked > (10 if spec == "bare" else 40)


def test_unparsed_statements_are_caught() -> None:
    """The check above can fail: a misspelled statement neither parses nor matches."""
    assert _unparsed("CREATE INTERACTIVE TABEL x CLUSTER BY (a) AS SELECT 1")
    assert not any(d[2].fullmatch('CREATE BACKUP POLICY IF NOT EXISTS "P" SCHEDUL = \'1 HOUR\'')
                   for d in DOCUMENTED)  # fmt: skip
    assert not _unparsed("SELECT COUNT_IF(a > 1) FROM t QUALIFY ROW_NUMBER() OVER (ORDER BY a) = 1")


# --- the spec's DuckDB SQL, translated for Snowflake ----------------------------------------------

# Each expected output was checked against the Snowflake page named beside it (docs.snowflake.com
# /en/sql-reference/...): that the function exists with this argument order, and that it means
# what the DuckDB original means (NULL handling, first vs all matches, whole vs partial match).
TRANSLATIONS = [
    # FILTER: COUNT_IF(<condition>) counts rows where it is TRUE (functions/count_if); IFF(c, x,
    # NULL) feeds only matching rows to SUM/AVG, which ignore NULLs (functions/iff).
    ("select count(*) filter (where abnormal_flag is not null) from raw.labs",
     "SELECT COUNT_IF(NOT abnormal_flag IS NULL) FROM raw.labs"),
    ("select sum(value_numeric) filter (where unit = 'mg') from raw.labs",
     "SELECT SUM(IFF(unit = 'mg', value_numeric, NULL)) FROM raw.labs"),
    ("select count(l.lab_id) filter (where l.abnormal_flag is not null) from raw.labs l",
     "SELECT COUNT(IFF(NOT l.abnormal_flag IS NULL, l.lab_id, NULL)) FROM raw.labs AS l"),
    # QUALIFY (constructs/qualify). DuckDB sorts NULLs last in both directions; Snowflake's
    # default is NULLS FIRST for DESC (constructs/order-by), so NULLS LAST is spelled out.
    ("select patient_id from raw.labs qualify row_number() over (partition by patient_id "
     "order by collected_ts desc) <= 10",
     "SELECT patient_id FROM raw.labs QUALIFY ROW_NUMBER() OVER (PARTITION BY patient_id "
     "ORDER BY collected_ts DESC NULLS LAST) <= 10"),
    # Date arithmetic: interval constants INTERVAL '<n> <part>' (data-types-datetime#interval-
    # constants); DATEDIFF(<part>, <start>, <end>) counts part boundaries like DuckDB's
    # date_diff (functions/datediff); DATE_TRUNC('<part>', <expr>) (functions/date_trunc).
    ("select admit_ts + interval 1 day, discharge_ts - interval '3 hours' from raw.encounters",
     "SELECT admit_ts + INTERVAL '1 DAY', discharge_ts - INTERVAL '3 HOURS' FROM raw.encounters"),
    ("select date_diff('day', admit_ts, discharge_ts), date_trunc('month', admit_ts) "
     "from raw.encounters",
     "SELECT DATEDIFF(DAY, admit_ts, discharge_ts), DATE_TRUNC('MONTH', admit_ts) "
     "FROM raw.encounters"),
    ("select date_add(cast(admit_ts as date), interval 30 day) from raw.encounters",
     "SELECT CAST(admit_ts AS DATE) + INTERVAL '30 DAY' FROM raw.encounters"),
    ("select date_part('year', admit_ts) from raw.encounters",
     "SELECT DATE_PART(YEAR, admit_ts) FROM raw.encounters"),
    # <subject> [ NOT ] ILIKE <pattern> (functions/ilike).
    ("select * from raw.labs where test_name ilike '%glucose%' and unit not ilike 'mg%'",
     "SELECT * FROM raw.labs WHERE test_name ILIKE '%glucose%' AND unit NOT ILIKE 'mg%'"),
    # String functions. LOWER/UPPER/LENGTH/TRIM/LEFT/REPLACE/SPLIT_PART: same names and
    # arguments (functions/lower ... functions/split_part). DuckDB strpos(s, x) = CHARINDEX(x, s)
    # (functions/charindex: 0 when absent, like strpos). string_agg = LISTAGG(expr, delimiter)
    # (functions/listagg). DuckDB's concat treats NULL as '', Snowflake's CONCAT returns NULL
    # (functions/concat): COALESCE(.., ''). DuckDB's concat_ws skips NULLs, Snowflake's
    # returns NULL (functions/concat_ws): ARRAY_CONSTRUCT_COMPACT drops NULLs
    # (functions/array_construct_compact), ARRAY_TO_STRING joins (functions/array_to_string).
    ("select lower(first_name), upper(last_name), length(city), trim(city), left(zip, 3), "
     "replace(phone, '-', ''), split_part(email, '@', 2) from raw.patients",
     "SELECT LOWER(first_name), UPPER(last_name), LENGTH(city), TRIM(city), LEFT(zip, 3), "
     "REPLACE(phone, '-', ''), SPLIT_PART(email, '@', 2) FROM raw.patients"),
    ("select strpos(email, '@'), string_agg(test_name, ', '), concat(first_name, last_name), "
     "concat_ws(' ', first_name, last_name) from raw.patients",
     "SELECT CHARINDEX('@', email), LISTAGG(test_name, ', '), "
     "CONCAT(COALESCE(first_name, ''), COALESCE(last_name, '')), "
     "ARRAY_TO_STRING(ARRAY_CONSTRUCT_COMPACT(first_name, last_name), ' ') FROM raw.patients"),
    # Regular expressions: DuckDB regexp_matches finds a match anywhere, Snowflake's REGEXP_LIKE
    # must match the whole subject (functions/regexp_like); REGEXP_INSTR returns 0 when there
    # is no match (functions/regexp_instr). DuckDB's `~` is a whole match: REGEXP_LIKE.
    # DuckDB regexp_replace replaces the first match ('g': all); Snowflake's REGEXP_REPLACE
    # (subject, pattern, replacement, position, occurrence[, parameters]) replaces all when
    # occurrence is 0 (the default), the n-th otherwise (functions/regexp_replace). Backslashes
    # are escapes in Snowflake string literals (sql-reference/data-types-text#escape-sequences).
    ("select regexp_matches(mrn, '^MRN'), mrn ~ '[0-9]+', regexp_replace(phone, '\\d', '#', 'g'), "
     "regexp_replace(phone, '-', '') from raw.patients",
     "SELECT REGEXP_INSTR(mrn, '^MRN') > 0, REGEXP_LIKE(mrn, '[0-9]+'), "
     "REGEXP_REPLACE(phone, '\\\\d', '#', 1, 0), REGEXP_REPLACE(phone, '-', '', 1, 1) "
     "FROM raw.patients"),
    # Dashboard parameters stay session variables ($name; sql-reference/session-variables).
    ("select * from serving.patient_dashboard where patient_id = $patient_id",
     "SELECT * FROM serving.patient_dashboard WHERE patient_id = $patient_id"),
]  # fmt: skip


@pytest.mark.parametrize(("duckdb", "snowflake"), TRANSLATIONS)
def test_spec_sql_is_translated_for_snowflake(duckdb: str, snowflake: str) -> None:
    out = transpile(duckdb, SNOWFLAKE)
    assert " ".join(out.split()).replace("( ", "(").replace(" )", ")") == snowflake
    sqlglot.parse_one(out, read="snowflake")  # and Snowflake's grammar reads it back
    assert transpile(duckdb, dialect_of("duckdb")) == duckdb  # DuckDB gets it as written


def test_the_example_reaches_snowflake_without_filter() -> None:
    """The example's patient_summary uses FILTER, which Snowflake does not document."""
    files = {f.name: f.text for f in render(_load(example_text()), SNOWFLAKE)}
    dts = files["03-dynamic-tables.sql"]
    assert "filter (where" in example_text() and "FILTER" not in dts.upper().replace(
        "FILTER (WHERE ...)", ""
    )
    assert "COUNT(IFF(NOT l.abnormal_flag IS NULL, l.lab_id, NULL)) AS abnormal_labs" in dts
    board = files["09-sample-queries.sql"]
    assert "patient_id = $patient_id" in board and ":patient_id" not in board
    duck = {f.name: f.text for f in render(_load(example_text()), dialect_of("duckdb"))}
    assert (
        "count(l.lab_id) filter (where l.abnormal_flag is not null)"
        in duck["03-dynamic-tables.sql"]
    )  # DuckDB keeps the spec's text


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("select age(admit_ts) from raw.encounters", "calls age()"),
        ("select try_cast(mrn as int) from raw.patients", "try_cast"),
        ("select patient_id // 2 from raw.patients", "the // operator"),
        ("select regexp_extract(mrn, '[0-9]+') from raw.patients", "regexp_extract"),
        ("select from raw.patients where", "not valid DuckDB SQL"),
    ],
)
def test_untranslatable_sql_fails_at_render_with_the_spec_position(query: str, reason: str) -> None:
    text = snowflake_text().replace(
        "select cast(admit_ts as date) as census_date, department, count(*) as admissions\n"
        "      from raw.encounters\n      group by cast(admit_ts as date), department",
        query,
    )
    loaded = _load(text)
    with pytest.raises(SpecError) as caught:
        render(loaded, SNOWFLAKE)
    (problem,) = caught.value.problems
    line, col = loaded.positions.of_value(("dynamic_tables", 1, "sql"))
    assert (problem.file, problem.line, problem.col) == ("clinipipe.yaml", line, col)
    assert "dynamic_tables[1].sql: dynamic table daily_census" in problem.message
    assert reason in problem.message
    render(loaded, dialect_of("duckdb"))  # on DuckDB it is the spec's own dialect


def test_validate_and_render_report_untranslatable_sql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, snowflake_text().replace("count(*) as admissions", "age(x) as a"))
    for command in (["validate"], ["render"]):
        code, _, err = cli(capsys, "-c", str(spec), *command)
        assert code == 2, err
        assert re.search(r"clinipipe\.yaml:\d+:\d+: dynamic_tables\[1\]\.sql: dynamic table "
                         r"daily_census: .*calls age\(\)", err), err  # fmt: skip


# --- retention lock: opt-in, confirmed at deploy -------------------------------------------------


def test_retention_lock_is_off_by_default_and_in_the_example() -> None:
    no_backup_section = snowflake_text().split("\nbackup:")[0] + "\n"
    for text in (example_text(), snowflake_text(), no_backup_section):
        files = {f.name: f for f in render(_load(text), SNOWFLAKE)}
        backups = files["07-backups.sql"]
        assert not [s for s in backups.statements if "WITH RETENTION LOCK" in _code(s.sql)]
        assert confirmations_needed(list(files.values())) == {}


def test_retention_lock_needs_the_spec_and_a_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = snowflake_text().replace("retention_lock: false", "retention_lock: true")
    files = render(_load(text), SNOWFLAKE)
    (policy,) = [s for f in files for s in f.statements if "WITH RETENTION LOCK" in _code(s.sql)]
    assert policy.confirm == "retention-lock"
    assert confirmations_needed(files) == {
        "retention-lock": ["07-backups.sql: 2555 days of backups of raw that nobody can delete"]
    }
    # deploy refuses before anything runs unless --confirm-retention-lock is given; the real
    # pipeline.deploy runs, up to the warehouse (the source and the target are stand-ins)
    import contextlib

    import clinipipe.cli.project as project
    import clinipipe.pipeline.deploy as pipeline_deploy
    from clinipipe.pipeline.deploy import DeployPlan

    ran: list[object] = []

    class Applying:
        def apply_deployment(self, files: object, *_: object, **__: object) -> int:
            ran.append(files)
            return 0

    class Target:
        def for_deployment(self) -> contextlib.nullcontext[Applying]:
            return contextlib.nullcontext(Applying())

    monkeypatch.setattr(project, "plan_deployment", lambda loaded: DeployPlan("snowflake", files))
    monkeypatch.setattr(pipeline_deploy, "apply_source_files", lambda dsn, files: 0)
    monkeypatch.setattr(pipeline_deploy, "open_target", lambda loaded: Target())
    monkeypatch.setattr(pipeline_deploy, "bind_dynamic_tables", lambda loaded, target: None)
    monkeypatch.setattr(pipeline_deploy.audit, "record_deploy", lambda target, **_: None)
    spec = write_spec(tmp_path, text)
    code, _, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 2 and ran == []
    assert "retention lock, which cannot be undone" in err and "--confirm-retention-lock" in err
    code, _, err = cli(capsys, "-c", str(spec), "deploy", "--dry-run")
    assert code == 0 and ran == [] and "note: the spec asks for a retention lock" in err
    code, _, err = cli(capsys, "-c", str(spec), "deploy", "--confirm-retention-lock")
    assert code == 0 and len(ran) == 1, err
    # without the lock in the spec, no flag is needed
    unlocked = render(_load(snowflake_text()), SNOWFLAKE)
    monkeypatch.setattr(
        project, "plan_deployment", lambda loaded: DeployPlan("snowflake", unlocked)
    )
    write_spec(tmp_path, snowflake_text())
    code, _, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 0 and len(ran) == 2, err


# --- classification profile, refresh history ------------------------------------------------------


def test_classification_profile_is_created_once_never_replaced() -> None:
    files = {f.name: f for f in render(_load(snowflake_text()), SNOWFLAKE)}
    statements = [_code(s.sql) for s in files["05-phi-scanners.sql"].statements]
    profile = [s for s in statements if "CLASSIFICATION_PROFILE" in s]
    assert len(profile) == 1
    assert profile[0].startswith(
        "CREATE SNOWFLAKE.DATA_PRIVACY.CLASSIFICATION_PROFILE IF NOT EXISTS "
        '"CLINIPIPE"."_CLINIPIPE"'
    )
    assert not [s for s in statements if "OR REPLACE" in s]


def test_refresh_history_reaches_back_seven_days() -> None:
    files = {f.name: f.text for f in render(_load(snowflake_text()), SNOWFLAKE)}
    assert (
        "DYNAMIC_TABLE_REFRESH_HISTORY(\n    DATA_TIMESTAMP_START => DATEADD('day', -7, "
        "CURRENT_TIMESTAMP()), RESULT_LIMIT => 100))" in files["09-sample-queries.sql"]
    )


# --- costs the spec hides ----------------------------------------------------------------------


def test_validate_warns_about_always_on_warehouses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = _load(snowflake_text())
    warnings = spec_warnings(loaded.spec, loaded.positions, "clinipipe.yaml")
    messages = [w.message for w in warnings]
    line, col = loaded.positions.of_value(("dynamic_tables", 0, "target_lag"))
    assert (warnings[0].line, warnings[0].col) == (line, col)
    assert messages[0].startswith(
        "dynamic_tables[0].target_lag: target_lag 1 minute of patient_summary keeps the "
        "incremental warehouse CLINIPIPE_CDC_WH (XSMALL, 1 credits/hour) running nearly always"
    )
    assert "≈ 720 credits a month (30 days; ≈ 2,160 USD at 3 USD a credit)" in messages[0]
    assert messages[1].startswith(
        "warehouses.interactive: the interactive warehouse CLINIPIPE_SERVE_WH (XSMALL) bills "
        "at least 24 hours"
    )
    assert "≥ 24 credits per resume" in messages[1] and "≈ 720 credits a month" in messages[1]
    assert len(messages) == 2

    # A 10-minute lag lets a 60 s auto-suspend work: no warning for it.
    relaxed = snowflake_text().replace("target_lag: 1 minute", "target_lag: 10 minutes")
    assert [p for p, _ in cost_warnings(_load(relaxed).spec)] == [("warehouses", "interactive")]
    # auto_suspend 0 on X6LARGE never suspends: 512 credits/hour.
    never = snowflake_text().replace(
        "size: X6LARGE, auto_suspend: 60", "size: X6LARGE, auto_suspend: 0"
    )
    first = next(cost_warnings(_load(never).spec))
    assert first[0] == ("warehouses", "initialization", "auto_suspend")
    assert "≈ 368,640 credits a month" in first[1]
    # A lock on an edition without it; DuckDB bills nothing.
    locked = snowflake_text().replace("retention_lock: false", "retention_lock: true")
    assert ("backup", "retention_lock") in [p for p, _ in cost_warnings(_load(locked).spec)]
    assert list(cost_warnings(_load(example_text()).spec)) == []

    spec = write_spec(tmp_path, snowflake_text())
    code, _, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 0
    assert re.search(r"warning: \S*clinipipe\.yaml:\d+:\d+: dynamic_tables\[0\]\.target_lag: .*"
                     r"≈ 720 credits a month", err), err  # fmt: skip
