"""`clinipipe redact`, column by column, on a real DuckDB file with hand-made raw rows.

The warehouse is deployed from the real templates (06's macros included); the raw tables are
created with the types backfill gives them and filled with the edge cases: the 17 restricted
ZIP3s, ZIP+4 and malformed ZIPs, ages 89 and 90 at the as-of date, 29 February, NULLs.
End-to-end runs over a synthetic hospital loaded from PostgreSQL are in test_redact.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from clinipipe.backup import audit
from clinipipe.phi.safe_harbor import RedactionKey
from clinipipe.pipeline.redact import RedactError, RedactOptions, redact
from clinipipe.spec import LoadedSpec, load_spec
from clinipipe.spec.model import RESTRICTED_ZIP3
from clinipipe.targets.duckdb import DuckDBTarget
from tests.helpers import REPO, cli, deploy_target_templates, example_text, write_spec

KEY = "test-key-0123456789-abcdefghijklmnop"
OTHER_KEY = "another-key-0123456789-abcdefghijkl"
AS_OF = dt.date(2026, 3, 1)

# The notes table is left out here (test_redact.py covers notes with the detectors).
STRUCTURED = ["patients", "providers", "encounters", "labs", "medications", "claims"]


def _duckdb_ddl() -> str:
    """The source schema in the types backfill gives the raw tables, constraints left out."""
    text = (REPO / "clinipipe/source/sql/hospital_schema.sql").read_text()
    text = re.sub(r"--[^\n]*", "", text)
    text = text.replace("CREATE TABLE IF NOT EXISTS ", "CREATE TABLE raw.")
    text = re.sub(r"\b(?:varchar|char)\(\d+\)", "VARCHAR", text)
    text = re.sub(r"\bnumeric\((\d+),(\d+)\)", r"DECIMAL(\1,\2)", text)
    text = re.sub(r"\btext\b", "VARCHAR", text)
    text = re.sub(r"\b(?:NOT NULL|PRIMARY KEY|UNIQUE)\b", "", text)
    return text.replace("deceased_date   date", "deceased_date   date,\n    age_years INTEGER")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoadedSpec]:
    """A deployed DuckDB warehouse with empty raw tables (no PostgreSQL needed)."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", KEY)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    text = example_text(
        **{"        deceased_date: date\n": "        deceased_date: date\n        age_years: age\n"}
    )
    loaded = load_spec(write_spec(tmp_path, text))
    with DuckDBTarget(loaded) as target:
        deploy_target_templates(target, loaded)
        target.con.execute(_duckdb_ddl())
    yield loaded


def warehouse(loaded: LoadedSpec) -> Path:
    return loaded.directory / "warehouse.duckdb"


def execute(loaded: LoadedSpec, *statements: str) -> None:
    with duckdb.connect(str(warehouse(loaded))) as con:
        for statement in statements:
            con.execute(statement)


def rows(loaded: LoadedSpec, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(warehouse(loaded)), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def patient(pid: int, **values: object) -> str:
    """An INSERT of one patient with sensible defaults (`values` override, None = NULL)."""
    row: dict[str, object] = {
        "patient_id": pid,
        "mrn": f"MRN{pid:08d}",
        "first_name": "Ann",
        "last_name": "Lee",
        "sex": "F",
        "birth_date": dt.date(1970, 5, 6),
        "ssn": "123-45-6789",
        "street_address": "1 Main St",
        "city": "Boston",
        "state": "MA",
        "zip": "02134",
        "phone": "617-555-0100",
        "email": "ann@example.org",
        "insurance_member_id": f"M{pid}",
        "employer": "Acme",
        "emergency_contact_name": "Bob Lee",
        "deceased_date": None,
        "age_years": 40,
        "created_at": dt.datetime(2020, 1, 2, 3, 4, tzinfo=dt.timezone.utc),
    }
    row.update(values)

    def lit(v: object) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, int):
            return str(v)
        return "'" + str(v).replace("'", "''") + "'"

    values = ", ".join(lit(v) for v in row.values())
    return f"INSERT INTO raw.patients ({', '.join(row)}) VALUES ({values})"


def redact_cli(
    capsys: pytest.CaptureFixture[str], loaded: LoadedSpec, *args: str
) -> tuple[int, str, str]:
    return cli(capsys, "-c", str(loaded.path), "redact", *args)


def run(loaded: LoadedSpec, policy: str = "safe_harbor", **options: object) -> dict[str, object]:
    opts: dict[str, object] = {"tables": STRUCTURED, "as_of": AS_OF}
    opts.update(options)
    return redact(loaded, RedactOptions(policy=policy, **opts)).as_dict()  # type: ignore[arg-type]


# --- Safe Harbor, column by column ---------------------------------------------------------------


def test_zip3_restricted_prefixes_malformed_and_null(project: LoadedSpec) -> None:
    cases = {f"{z}12": "000" for z in RESTRICTED_ZIP3}  # every restricted prefix -> 000
    cases.update(
        {
            "02134": "021",
            "12345-6789": "123",
            "123456789": "123",
            " 02134 ": "021",
            "1234": "000",
            "123456": "000",
            "abcde": "000",
            "": "000",
            "0213A": "000",
        }
    )
    statements = [patient(i, zip=z) for i, z in enumerate(cases, start=1)]
    statements.append(patient(len(cases) + 1, zip=None))
    execute(project, *statements)
    run(project)
    research = rows(project, "SELECT zip FROM research.patients")
    raw = rows(project, "SELECT patient_id, zip FROM raw.patients ORDER BY patient_id")
    key = RedactionKey(KEY.encode())
    by_pseudonym = dict(rows(project, "SELECT patient_id, zip FROM research.patients"))
    for pid, zip_code in raw:
        expected = None if zip_code is None else cases[zip_code]
        assert by_pseudonym[key.pseudonym(pid, "patient_id")] == expected, zip_code
    assert len(research) == len(raw)


def test_birth_year_suppressed_at_90_with_leap_days(project: LoadedSpec) -> None:
    execute(
        project,
        patient(1, birth_date="1936-03-01"),  # turns 90 on the as-of date
        patient(2, birth_date="1936-03-02"),  # 89 until tomorrow
        patient(3, birth_date="1936-02-29"),  # leap day: 90 on 1 March 2026 (and on 28 Feb)
        patient(4, birth_date="1940-02-29"),  # 86
        patient(5, birth_date=None),
        patient(6, birth_date="1900-01-01"),
    )
    key = RedactionKey(KEY.encode())

    def birth(as_of: dt.date) -> dict[int, tuple[object, object]]:
        run(project, as_of=as_of)
        got = {
            p: (y, a)
            for p, y, a in rows(
                project, "SELECT patient_id, birth_date, birth_date_age FROM research.patients"
            )
        }
        return {pid: got[key.pseudonym(pid, "patient_id")] for pid in range(1, 7)}

    assert birth(AS_OF) == {
        1: (None, 90),
        2: (1936, 89),
        3: (None, 90),
        4: (1940, 86),
        5: (None, None),
        6: (None, 90),
    }
    # The day before: patient 1 is still 89; the leap-day patient already counts as 90 on
    # 28 February of a common year (the earlier day, so suppression is never late).
    before = birth(dt.date(2026, 2, 28))
    assert before[1] == (1936, 89) and before[3] == (None, 90) and before[2] == (1936, 89)
    assert birth(dt.date(2026, 2, 27))[3] == (1936, 89)
    # 2028 is a leap year: the leap-day patient turns 88 on 29 February itself.
    assert birth(dt.date(2028, 2, 28))[4] == (1940, 87)
    assert birth(dt.date(2028, 2, 29))[4] == (1940, 88)


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Chatham", "America/St_Johns"])
def test_utc_year_of_timestamptz_equals_the_time_zone_conversion(zone: str) -> None:
    """The year of a timestamp with a zone is taken from its epoch microseconds (cheap); it must
    equal the year of the ICU conversion to UTC for every value, whatever the session's zone:
    NULL, +-infinity, BC, the edges of a year in zones with odd offsets."""
    from clinipipe.targets import dialect_of
    from clinipipe.targets.redact_sql import RedactSql

    year = RedactSql(dialect_of("duckdb")).year("ts", "TIMESTAMP WITH TIME ZONE")
    assert "timezone(" not in year  # the cheap form (about ten times faster than ICU's)
    reference = "CAST(year(CAST(timezone('UTC', ts) AS DATE)) AS INTEGER)"
    with duckdb.connect() as con:
        con.execute(f"SET TimeZone = '{zone}'")
        con.execute(
            "CREATE TABLE t AS SELECT to_timestamp(-210000000000 + range * 23000017) AS ts "
            "FROM range(300000) UNION ALL SELECT CAST(v AS TIMESTAMPTZ) FROM (VALUES "
            "('infinity'), ('-infinity'), (NULL), ('2020-12-31 23:30:00-05'), "
            "('2021-01-01 00:30:00+13:45'), ('1969-12-31 23:59:59.999999+00')) v(v)"
        )
        [(rows, differ, years)] = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE ({year}) IS DISTINCT FROM {reference}), "
            f"count(DISTINCT {year}) FROM t"
        ).fetchall()
    assert rows == 300006 and years > 6000 and differ == 0


def test_ages_capped_dates_to_year_and_nulls(project: LoadedSpec) -> None:
    execute(
        project,
        patient(1, age_years=89),
        patient(2, age_years=90),
        patient(3, age_years=120),
        patient(
            4,
            **{
                c: None
                for c in (
                    "mrn",
                    "first_name",
                    "last_name",
                    "birth_date",
                    "ssn",
                    "street_address",
                    "city",
                    "zip",
                    "phone",
                    "email",
                    "insurance_member_id",
                    "employer",
                    "emergency_contact_name",
                    "deceased_date",
                    "age_years",
                    "created_at",
                )
            },
        ),
        patient(5, deceased_date="2020-02-29"),
        "INSERT INTO raw.encounters VALUES (10, 1, 7, 'inpatient', 'ICU', "
        "'2020-12-31 23:30:00-05', NULL, 'I10', 'ACC1'), (11, 4, 7, 'outpatient', 'ED', "
        "'2016-02-29 12:00:00+00', '2016-03-01 08:00:00+00', 'I10', NULL)",
    )
    run(project)
    key = RedactionKey(KEY.encode())
    p = {
        r[0]: r[1:]
        for r in rows(
            project,
            "SELECT patient_id, age_years, deceased_date, created_at, mrn, zip, "
            "birth_date, birth_date_age FROM research.patients",
        )
    }
    assert [p[key.pseudonym(i, "patient_id")][0] for i in (1, 2, 3, 4)] == [89, 90, 90, None]
    assert p[key.pseudonym(5, "patient_id")][1] == 2020  # 29 Feb -> its year
    assert p[key.pseudonym(1, "patient_id")][2] == 2020  # unclassified timestamp: year (by type)
    assert p[key.pseudonym(4, "patient_id")][1:] == (None,) * 6
    e = {
        r[0]: r[1:]
        for r in rows(
            project,
            "SELECT encounter_id, admit_ts, discharge_ts, account_number FROM research.encounters",
        )
    }
    assert e[key.pseudonym(10, "encounter_id")] == (
        2021,
        None,
        key.pseudonym("ACC1", "account_number"),
    )
    assert e[key.pseudonym(11, "encounter_id")] == (2016, 2016, None)
    columns = [
        c
        for (c,) in rows(
            project,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'research' AND table_name = 'patients'",
        )
    ]
    for dropped in (
        "first_name",
        "last_name",
        "ssn",
        "street_address",
        "city",
        "phone",
        "email",
        "employer",
        "emergency_contact_name",
    ):
        assert dropped not in columns


# --- pseudonyms ----------------------------------------------------------------------------------


def _hospital_rows(loaded: LoadedSpec) -> None:
    execute(
        loaded,
        patient(1, insurance_member_id="M-77"),
        patient(2),
        patient(3, mrn="3"),
        "INSERT INTO raw.providers VALUES (7, '1234567893', 'Greg', 'House', 'Dx', 'Med')",
        "INSERT INTO raw.encounters VALUES (10, 1, 7, 'inpatient', 'ICU', "
        "'2021-03-01 10:00:00+00', '2021-03-09 16:30:00+00', 'I10', 'ACC1'), "
        "(11, 2, 7, 'outpatient', 'ED', '2021-12-30 08:00:00+00', NULL, 'I10', 'ACC2')",
        "INSERT INTO raw.labs VALUES (100, 10, 1, '1-1', 'Na', 140, 'mmol/L', 135, 145, NULL, "
        "'2021-03-02 06:00:00+00')",
        "INSERT INTO raw.medications VALUES (200, 10, 1, '1', 'x', '1', 'po', 'qd', "
        "'2021-03-01', '2021-03-31')",
        "INSERT INTO raw.claims VALUES (300, 10, 1, 'Payer', 'M-77', 10.5, NULL, 'paid', "
        "'2021-04-01')",
    )


def test_pseudonyms_are_keyed_consistent_across_tables_runs_and_namespaces(
    project: LoadedSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hospital_rows(project)
    run(project)
    key = RedactionKey(KEY.encode())
    p1 = key.pseudonym(1, "patient_id")
    assert p1 == key.pseudonym("1", "patient_id") and len(p1) == 24
    for table in ("patients", "encounters", "labs", "medications", "claims"):
        ids = {r[0] for r in rows(project, f"SELECT patient_id FROM research.{table}")}
        assert p1 in ids, table
    assert rows(project, "SELECT provider_id FROM research.encounters LIMIT 1") == [
        (key.pseudonym(7, "provider_id"),)
    ]
    # Equal values of one class link across tables (a member id in claims and in patients)...
    member = key.pseudonym("M-77", "health_plan_id")
    assert rows(project, "SELECT member_id FROM research.claims") == [(member,)]
    assert (member,) in rows(project, "SELECT insurance_member_id FROM research.patients")
    # ...while the same text in two namespaces does not (MRN '3' vs patient_id 3).
    p3 = key.pseudonym(3, "patient_id")
    mrn3 = rows(project, f"SELECT mrn FROM research.patients WHERE patient_id = '{p3}'")
    assert mrn3 == [(key.pseudonym("3", "mrn"),)] and mrn3[0][0] != p3
    first = rows(project, "SELECT * FROM research.encounters ORDER BY ALL")

    run(project, schema="research_again")  # a second, independent build: same pseudonyms
    assert rows(project, "SELECT * FROM research_again.encounters ORDER BY ALL") == first

    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", OTHER_KEY)  # another key: other pseudonyms
    result = run(project)
    assert set(result["rebuilt"]) == set(STRUCTURED)  # the key id is in every fingerprint
    other = {r[0] for r in rows(project, "SELECT patient_id FROM research.patients")}
    assert p1 not in other and RedactionKey(OTHER_KEY.encode()).pseudonym(1, "patient_id") in other


@pytest.mark.parametrize("value", [None, "", "short-key"], ids=["unset", "empty", "short"])
def test_missing_or_short_key_is_a_clear_error(
    project: LoadedSpec,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str | None,
) -> None:
    if value is None:
        monkeypatch.delenv("CLINIPIPE_HMAC_KEY")
    else:
        monkeypatch.setenv("CLINIPIPE_HMAC_KEY", value)
    code, out, err = redact_cli(capsys, project, "--policy", "safe_harbor")
    assert code == 1 and out == ""
    assert "CLINIPIPE_HMAC_KEY" in err and "Traceback" not in err
    if value:
        assert value not in err
    assert rows(project, "SELECT count(*) FROM _clinipipe.audit_log") == [(0,)]


# --- Limited Data Set and shifted dates ----------------------------------------------------------


def test_limited_dataset_keeps_dates_city_zip5_and_is_labelled(project: LoadedSpec) -> None:
    _hospital_rows(project)
    execute(
        project,
        patient(4, zip="02134-1234", city="Salem", age_years=95),
        patient(5, zip="0213", birth_date="1920-01-01"),
    )
    result = run(project, "limited_dataset", schema="lds")
    assert result["label"].startswith("Limited Data Set")
    key = RedactionKey(KEY.encode())
    got = {
        r[0]: r[1:]
        for r in rows(
            project,
            "SELECT patient_id, city, zip, birth_date, age_years, created_at, mrn "
            "FROM lds.patients",
        )
    }
    four = got[key.pseudonym(4, "patient_id")]
    assert four[:3] == ("Salem", "02134", dt.date(1970, 5, 6)) and four[3] == 95
    # created_at is not classified: fail closed, its year even in a Limited Data Set (classify
    # it `date` to keep the day)
    assert four[4] == 2020
    assert four[5] == key.pseudonym("MRN00000004", "mrn")
    assert got[key.pseudonym(5, "patient_id")][1:3] == (None, dt.date(1920, 1, 1))
    columns = {
        c
        for (c,) in rows(
            project,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'lds' AND table_name = 'patients'",
        )
    }
    assert not columns & {
        "first_name",
        "last_name",
        "ssn",
        "street_address",
        "phone",
        "email",
        "employer",
        "emergency_contact_name",
    }
    assert rows(project, "SELECT admit_ts FROM lds.encounters ORDER BY admit_ts LIMIT 1") == [
        (dt.datetime(2021, 3, 1, 10, tzinfo=dt.timezone.utc),)
    ]
    # labelled: table comment, README row, manifest
    comment = rows(
        project,
        "SELECT comment FROM duckdb_tables() WHERE schema_name = 'lds' AND table_name = 'patients'",
    )[0][0]
    assert "data use agreement" in comment
    readme = dict(rows(project, "SELECT table_name, label FROM lds._readme"))
    assert set(readme) == set(STRUCTURED) and all(
        "data use agreement" in v for v in readme.values()
    )
    with DuckDBTarget(project, read_only=True) as target:
        manifest = [e for e in audit.entries(target) if e.action == "redact"][-1].detail
    assert manifest["requires_data_use_agreement"] is True and manifest["safe_harbor"] is False
    # the final scan ignores what a Limited Data Set may keep (dates, city, ZIP): clean
    assert result["clean"] is True


def test_shifted_dates_keep_intervals_and_weekdays_per_patient(project: LoadedSpec) -> None:
    _hospital_rows(project)
    execute(project, patient(6, birth_date="1930-06-01"))
    run(project, "shifted", schema="shifted")
    key = RedactionKey(KEY.encode())
    for pid in (1, 2):
        days = key.shift_days(pid)
        assert days is not None and days % 7 == 0 and 0 < abs(days) <= 364
    d1 = dt.timedelta(days=key.shift_days(1))  # type: ignore[arg-type]
    p1 = key.pseudonym(1, "patient_id")
    admit, discharge = rows(
        project, f"SELECT admit_ts, discharge_ts FROM shifted.encounters WHERE patient_id = '{p1}'"
    )[0]
    real_admit = dt.datetime(2021, 3, 1, 10, tzinfo=dt.timezone.utc)
    assert admit == real_admit + d1 and admit.weekday() == real_admit.weekday()
    assert discharge - admit == dt.timedelta(days=8, hours=6, minutes=30)  # interval kept
    assert rows(project, f"SELECT collected_ts FROM shifted.labs WHERE patient_id = '{p1}'") == [
        (dt.datetime(2021, 3, 2, 6, tzinfo=dt.timezone.utc) + d1,)
    ]
    assert rows(
        project,
        "SELECT start_date, end_date, submitted_date FROM shifted.medications m "
        "JOIN shifted.claims c USING (patient_id)",
    ) == [(dt.date(2021, 3, 1) + d1, dt.date(2021, 3, 31) + d1, dt.date(2021, 4, 1) + d1)]
    birth = dict(rows(project, "SELECT patient_id, birth_date FROM shifted.patients"))
    assert birth[p1] == dt.date(1970, 5, 6) + d1
    assert birth[key.pseudonym(6, "patient_id")] is None  # over 89: suppressed
    p2 = key.pseudonym(2, "patient_id")
    assert rows(project, f"SELECT admit_ts FROM shifted.encounters WHERE patient_id = '{p2}'") == [
        (
            dt.datetime(2021, 12, 30, 8, tzinfo=dt.timezone.utc)
            + dt.timedelta(days=key.shift_days(2)),
        )  # type: ignore[arg-type]
    ]
    assert rows(project, "SELECT DISTINCT zip FROM shifted.patients") == [("021",)]


# --- runs: subsets, incremental, atomic, audited -------------------------------------------------


def test_tables_subset_and_unknown_table(
    project: LoadedSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    _hospital_rows(project)
    code, out, err = redact_cli(
        capsys,
        project,
        "--policy",
        "safe_harbor",
        "--tables",
        "labs,claims",
        "--json",
    )
    assert code == 0, err
    assert [t["table"] for t in json.loads(out)["tables"]] == ["labs", "claims"]
    tables = {
        t
        for (t,) in rows(
            project,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'research'",
        )
    }
    assert tables == {"labs", "claims", "_readme"}
    code, _, err = redact_cli(
        capsys,
        project,
        "--policy",
        "safe_harbor",
        "--tables",
        "labs",
        "--tables",
        "nope",
    )
    assert code == 2 and "'nope'" in err and "clinical_notes" in err


def test_rerun_skips_unchanged_tables_and_rebuilds_changed_ones(project: LoadedSpec) -> None:
    _hospital_rows(project)
    first = run(project)
    assert first["rebuilt"] == STRUCTURED and first["skipped"] == []
    again = run(project)
    assert again["rebuilt"] == [] and again["skipped"] == STRUCTURED
    execute(project, "UPDATE raw.labs SET value_numeric = 141 WHERE lab_id = 100")
    assert run(project)["rebuilt"] == ["labs"]
    execute(project, "DELETE FROM raw.claims")
    changed = run(project)
    assert changed["rebuilt"] == ["claims"]
    assert rows(project, "SELECT count(*) FROM research.claims") == [(0,)]
    # Birth dates depend on the as-of date: only patients is rebuilt when it moves.
    assert run(project, as_of=dt.date(2026, 3, 2))["rebuilt"] == ["patients"]
    execute(project, "DROP TABLE research.labs")  # gone from the research schema: rebuilt
    assert run(project, as_of=dt.date(2026, 3, 2))["rebuilt"] == ["labs"]
    with DuckDBTarget(project, read_only=True) as target:
        entries = audit.entries(target)
        assert audit.verify(target).ok
    # one manifest per run, each followed by its final scan's entry
    assert [e.action for e in entries] == ["redact", "redact_scan"] * 6
    assert all(e.detail["clean"] for e in entries if e.action == "redact_scan")
    manifest = entries[-2].detail
    assert manifest["policy"] == "safe_harbor" and manifest["policy_version"]
    labs = next(t for t in manifest["tables"] if t["table"] == "labs")
    assert labs["action"] == "rebuilt" and labs["rows"] == 1
    assert {
        "column": "patient_id",
        "class": "none",
        "treatment": "pseudonym",
        "join_key": True,
    } in labs["columns"]
    assert KEY not in str(manifest) and "140" not in str(labs)


def test_a_failed_run_changes_nothing(project: LoadedSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    _hospital_rows(project)
    run(project)
    before = rows(project, "SELECT * FROM research.labs ORDER BY ALL")
    states = rows(project, "SELECT * FROM _clinipipe.redaction_state ORDER BY ALL")
    execute(
        project, "UPDATE raw.labs SET value_numeric = 141", "UPDATE raw.claims SET paid_amount = 1"
    )
    from clinipipe.targets.duckdb import redact as duckdb_redact

    real = duckdb_redact.RedactSql.select_sql

    def failing(self: duckdb_redact.RedactSql, plan: object, raw: str, as_of: str | None) -> str:
        sql = real(self, plan, raw, as_of)  # type: ignore[arg-type]
        return sql + " WHERE error('boom')" if "claims" in raw else sql

    monkeypatch.setattr(duckdb_redact.RedactSql, "select_sql", failing)
    with pytest.raises(Exception, match="nothing was changed"):
        run(project)
    assert rows(project, "SELECT * FROM research.labs ORDER BY ALL") == before
    assert rows(project, "SELECT * FROM _clinipipe.redaction_state ORDER BY ALL") == states
    assert rows(project, "SELECT count(*) FROM _clinipipe.audit_log") == [(2,)]  # run 1 + scan
    leftovers = rows(
        project,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_name LIKE '__clinipipe_new_%'",
    )
    assert leftovers == []


def test_policies_are_not_mixed_in_one_schema(
    project: LoadedSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    _hospital_rows(project)
    run(project)
    with pytest.raises(RedactError, match="must not be mixed") as info:
        run(project, "limited_dataset")
    assert info.value.usage
    code, _, err = redact_cli(capsys, project, "--policy", "shifted")
    assert code == 2 and "--to" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "nope"], "unknown policy"),
        (["--policy", "safe_harbor", "--as-of", "2026-13-01"], "not a date"),
        (["--policy", "safe_harbor", "--to", "raw"], "research schema must be"),
        (["--policy", "safe_harbor", "--ai-redact"], "Snowflake"),
        ([], "--policy"),
    ],
)
def test_usage_errors_exit_2(
    project: LoadedSpec, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = redact_cli(capsys, project, *args)
    assert code == 2 and message in err and "Traceback" not in err and out == ""


def test_json_output(project: LoadedSpec, capsys: pytest.CaptureFixture[str]) -> None:
    _hospital_rows(project)
    code, out, _ = redact_cli(
        capsys,
        project,
        "--policy",
        "safe_harbor",
        "--tables",
        ",".join(STRUCTURED),
        "--as-of",
        "2026-03-01",
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["policy"] == "safe_harbor" and doc["schema"] == "research"
    assert doc["as_of"] == "2026-03-01" and doc["audit_seq"] == 1
    assert doc["rebuilt"] == STRUCTURED
    patients = next(t for t in doc["tables"] if t["table"] == "patients")
    assert patients["rows"] == 3
    treatments = {c["column"]: c["treatment"] for c in patients["columns"]}
    assert treatments["zip"] == "zip3" and treatments["ssn"] == "drop"
    assert treatments["birth_date"] == "birth_year" and treatments["created_at"] == "year"
    assert "MRN0000" not in out and "Boston" not in out
    # Released columns are copied as they are and say so; unclassified ones fail closed.
    released = {c["column"] for c in patients["columns"] if c.get("released")}
    assert released == {"sex", "state"}
    assert {c["column"] for c in patients["columns"] if c.get("unclassified")} == {"created_at"}
    assert doc["clean"] is True and doc["final_scan"]["failed"] is False
    assert {t["table"] for t in doc["final_scan"]["tables"]} == set(STRUCTURED)
    code, _, err = redact_cli(capsys, project, "--policy", "safe_harbor", "--tables", "patients")
    flat = " ".join(err.split())
    assert (
        code == 0 and "Released as they are (spec `release`): patients.sex, patients.state" in flat
    )
    assert "patients.created_at (year)" in flat and "De-identified under HIPAA Safe Harbor" in flat


def test_the_key_is_never_stored(project: LoadedSpec) -> None:
    """Neither the key nor its HMAC pads reach the database file (or its WAL)."""
    _hospital_rows(project)
    run(project)
    ipad, opad = RedactionKey(KEY.encode()).pads()
    for path in warehouse(project).parent.glob("warehouse.duckdb*"):
        data = path.read_bytes()
        assert KEY.encode() not in data and ipad not in data and opad not in data, path.name
        assert KEY.encode().hex().encode() not in data
