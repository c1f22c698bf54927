"""`clinipipe redact`, column by column, on a real DuckDB file with hand-made raw rows.

The warehouse is deployed from the real templates (06's macros included); the raw tables are
created with the types backfill gives them and filled with the edge cases: the 17 restricted
ZIP3s, ZIP+4 and malformed ZIPs, ages 89 and 90 at the as-of date, 29 February, NULLs.
End-to-end runs over a synthetic hospital loaded from PostgreSQL are in test_redact.py.
"""

from __future__ import annotations

import datetime as dt
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
from clinipipe.sql.render import render
from clinipipe.targets import DeploymentRecord
from clinipipe.targets.duckdb import DuckDBTarget
from tests.helpers import REPO, cli, example_text, write_spec

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
    files = render(loaded, "duckdb")
    record = DeploymentRecord(spec_digest=loaded.digest, target_type="duckdb")
    with DuckDBTarget(loaded) as target:
        target.apply_deployment(
            [f for f in files if f.runs_on == "target"],
            record,
            also_record=[f for f in files if f.runs_on == "source"],
        )
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
        "patient_id": pid, "mrn": f"MRN{pid:08d}", "first_name": "Ann", "last_name": "Lee",
        "sex": "F", "birth_date": dt.date(1970, 5, 6), "ssn": "123-45-6789",
        "street_address": "1 Main St", "city": "Boston", "state": "MA", "zip": "02134",
        "phone": "617-555-0100", "email": "ann@example.org", "insurance_member_id": f"M{pid}",
        "employer": "Acme", "emergency_contact_name": "Bob Lee", "deceased_date": None,
        "age_years": 40, "created_at": dt.datetime(2020, 1, 2, 3, 4, tzinfo=dt.timezone.utc),
    }  # fmt: skip
    row.update(values)

    def lit(v: object) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, int):
            return str(v)
        return "'" + str(v).replace("'", "''") + "'"

    return f"INSERT INTO raw.patients ({', '.join(row)}) VALUES ({', '.join(lit(v) for v in row.values())})"


def run(loaded: LoadedSpec, policy: str = "safe_harbor", **options: object) -> dict[str, object]:
    opts: dict[str, object] = {"tables": STRUCTURED, "as_of": AS_OF}
    opts.update(options)
    return redact(loaded, RedactOptions(policy=policy, **opts)).as_dict()  # type: ignore[arg-type]


# --- Safe Harbor, column by column -----------------------------------------------------------------


def test_zip3_restricted_prefixes_malformed_and_null(project: LoadedSpec) -> None:
    cases = {f"{z}12": "000" for z in RESTRICTED_ZIP3}  # every restricted prefix -> 000
    cases.update({
        "02134": "021", "12345-6789": "123", "123456789": "123", " 02134 ": "021",
        "1234": "000", "123456": "000", "abcde": "000", "": "000", "0213A": "000",
    })  # fmt: skip
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
        got = {p: (y, a) for p, y, a in rows(
            project, "SELECT patient_id, birth_date, birth_date_age FROM research.patients")}  # fmt: skip
        return {pid: got[key.pseudonym(pid, "patient_id")] for pid in range(1, 7)}

    assert birth(AS_OF) == {
        1: (None, 90), 2: (1936, 89), 3: (None, 90), 4: (1940, 86), 5: (None, None),
        6: (None, 90),
    }  # fmt: skip
    # The day before: patient 1 is still 89; the leap-day patient already counts as 90 on
    # 28 February of a common year (the earlier day, so suppression is never late).
    before = birth(dt.date(2026, 2, 28))
    assert before[1] == (1936, 89) and before[3] == (None, 90) and before[2] == (1936, 89)
    assert birth(dt.date(2026, 2, 27))[3] == (1936, 89)
    # 2028 is a leap year: the leap-day patient turns 88 on 29 February itself.
    assert birth(dt.date(2028, 2, 28))[4] == (1940, 87)
    assert birth(dt.date(2028, 2, 29))[4] == (1940, 88)


def test_ages_capped_dates_to_year_and_nulls(project: LoadedSpec) -> None:
    execute(
        project,
        patient(1, age_years=89), patient(2, age_years=90), patient(3, age_years=120),
        patient(4, **{c: None for c in (
            "mrn", "first_name", "last_name", "birth_date", "ssn", "street_address", "city",
            "zip", "phone", "email", "insurance_member_id", "employer",
            "emergency_contact_name", "deceased_date", "age_years", "created_at")}),
        patient(5, deceased_date="2020-02-29"),
        "INSERT INTO raw.encounters VALUES (10, 1, 7, 'inpatient', 'ICU', "
        "'2020-12-31 23:30:00-05', NULL, 'I10', 'ACC1'), (11, 4, 7, 'outpatient', 'ED', "
        "'2016-02-29 12:00:00+00', '2016-03-01 08:00:00+00', 'I10', NULL)",
    )  # fmt: skip
    run(project)
    key = RedactionKey(KEY.encode())
    p = {r[0]: r[1:] for r in rows(
        project, "SELECT patient_id, age_years, deceased_date, created_at, mrn, zip, "
        "birth_date, birth_date_age FROM research.patients")}  # fmt: skip
    assert [p[key.pseudonym(i, "patient_id")][0] for i in (1, 2, 3, 4)] == [89, 90, 90, None]
    assert p[key.pseudonym(5, "patient_id")][1] == 2020  # 29 Feb -> its year
    assert p[key.pseudonym(1, "patient_id")][2] == 2020  # unclassified timestamp: year (by type)
    assert p[key.pseudonym(4, "patient_id")][1:] == (None,) * 6
    e = {r[0]: r[1:] for r in rows(project, "SELECT encounter_id, admit_ts, discharge_ts, "
                                            "account_number FROM research.encounters")}  # fmt: skip
    assert e[key.pseudonym(10, "encounter_id")] == (
        2021,
        None,
        key.pseudonym("ACC1", "account_number"),
    )
    assert e[key.pseudonym(11, "encounter_id")] == (2016, 2016, None)
    columns = [c for c, in rows(project, "SELECT column_name FROM information_schema.columns "
                                         "WHERE table_schema = 'research' AND table_name = 'patients'")]  # fmt: skip
    for dropped in ("first_name", "last_name", "ssn", "street_address", "city", "phone", "email",
                    "employer", "emergency_contact_name"):  # fmt: skip
        assert dropped not in columns
