"""`clinipipe synth`: the generator (pure, no database) and the load into a real PostgreSQL.

Tolerances: at 2,000 patients the per-patient means (10 encounters, 40 labs, 5 medications,
6 notes) are asserted within +-15% (medications +-20%); the generator calibrates its rates per
chunk of 1,000 patients, so the observed spread is a few percent.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pyarrow as pa
import pytest

from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.source.loader import (
    copy_record_batches,
    create_hospital_schema,
    hospital_schema_sql,
)
from clinipipe.spec.model import RESTRICTED_ZIP3
from clinipipe.synth import (
    PRIMARY_KEYS,
    REFERENCE_DATE,
    SCHEMAS,
    TABLES,
    SynthError,
    SynthSummary,
    generate,
    run_synth,
)
from clinipipe.synth import runner as synth_runner
from clinipipe.synth.vocab import load_vocab

HOSPITAL_PATIENTS = 2_000


def query(dsn: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def scalar(dsn: str, statement: str, params: tuple[object, ...] = ()) -> object:
    return query(dsn, statement, params)[0][0]


EXPECTED_INDEXES = sorted([f"{t}_pkey" for t in TABLES] + ["patients_mrn_key"])


def index_names(dsn: str) -> list[str]:
    rows = query(
        dsn,
        "SELECT indexname FROM pg_indexes WHERE tablename = ANY(%s) ORDER BY 1",
        (list(TABLES),),
    )
    return [str(r[0]) for r in rows]


def checksums(dsn: str) -> dict[str, str]:
    return {
        table: str(
            scalar(
                dsn,
                f"SELECT md5(string_agg(t::text, '|' ORDER BY {PRIMARY_KEYS[table]})) "
                f"FROM {table} t",
            )
        )
        for table in TABLES
    }


def collect(patients: int, seed: int, batch_patients: int) -> dict[str, pa.Table]:
    parts: dict[str, list[pa.RecordBatch]] = {}
    for table, batch in generate(patients, seed, batch_patients=batch_patients):
        parts.setdefault(table, []).append(batch)
    return {t: pa.Table.from_batches(b, schema=SCHEMAS[t]) for t, b in parts.items()}


@pytest.fixture
def other_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A second fresh database next to ``pg_dsn``."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def hospital(pg_server: EmbeddedPostgres) -> Iterator[tuple[str, SynthSummary]]:
    """One database holding a 2,000-patient hospital, shared by the read-only checks."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn, run_synth(dsn, HOSPITAL_PATIENTS, seed=7)
    finally:
        pg_server.drop_database(name)


# --------------------------------------------------------------------------------------------
# the generator alone


def test_generator_is_deterministic_whatever_the_batch_size() -> None:
    small = collect(2_500, seed=11, batch_patients=1_000)
    large = collect(2_500, seed=11, batch_patients=50_000)
    again = collect(2_500, seed=11, batch_patients=1_000)
    other = collect(2_500, seed=12, batch_patients=50_000)
    assert list(small) == list(TABLES)
    for table in TABLES:
        assert small[table].schema == SCHEMAS[table]
        assert small[table].equals(large[table]), table
        assert small[table].equals(again[table]), table
        assert not small[table].equals(other[table]), table
    assert small["patients"].num_rows == 2_500


def test_generator_yields_parents_before_children_in_bounded_batches() -> None:
    order = [(t, b.num_rows) for t, b in generate(2_500, seed=3, batch_patients=1_000)]
    assert order[0] == ("providers", 50)
    patient_batches = [n for t, n in order if t == "patients"]
    assert patient_batches == [1_000, 1_000, 500]
    # each batch of patients comes before its encounters, labs, ...
    tables = [t for t, _ in order[1:]]
    assert tables == list(TABLES[1:]) * 3


def test_schemas_match_the_sql_schema() -> None:
    ddl = hospital_schema_sql()
    for table, schema in SCHEMAS.items():
        body = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\);", ddl, re.S)
        assert body, table
        columns = [
            line.split()[0]
            for line in body.group(1).strip().splitlines()
            if line.strip() and not line.strip().startswith("--")
        ]
        assert columns == schema.names, table


# --------------------------------------------------------------------------------------------
# loading


def test_same_seed_gives_identical_databases(pg_dsn: str, other_dsn: str) -> None:
    first = run_synth(pg_dsn, 1_000, seed=5)
    second = run_synth(other_dsn, 1_000, seed=5)
    assert first.rows == second.rows
    assert checksums(pg_dsn) == checksums(other_dsn)
    run_synth(other_dsn, 1_000, seed=6, drop_existing=True)
    different = checksums(other_dsn)
    assert all(different[t] != checksums(pg_dsn)[t] for t in TABLES if t != "providers")


def test_synth_command_through_the_cli(
    pg_dsn: str,
    other_dsn: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`clinipipe synth` passes --patients and --seed through (the same data as the API with
    the same arguments), reports the rows it wrote, refuses to mix, and --replace replaces."""
    from tests.helpers import cli, example_text, write_spec

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    spec = str(write_spec(tmp_path, example_text()))
    code, out, err = cli(capsys, "-c", spec, "synth", "--patients", "300", "--seed", "5",
                         "--json")  # fmt: skip
    assert code == 0, out + err
    data = json.loads(out)
    assert (data["patients"], data["seed"]) == (300, 5)
    counts = {t: scalar(pg_dsn, f"SELECT count(*) FROM {t}") for t in TABLES}
    assert data["rows"] == counts and data["total_rows"] == sum(counts.values())
    assert counts["patients"] == 300
    run_synth(other_dsn, 300, seed=5)
    assert checksums(pg_dsn) == checksums(other_dsn)  # the CLI's seed is the API's seed

    code, out, err = cli(capsys, "-c", spec, "synth", "--patients", "300", "--seed", "6")
    assert code == 1 and "use --replace" in err, out + err
    assert checksums(pg_dsn) == checksums(other_dsn)  # refused: nothing changed

    code, out, err = cli(capsys, "-c", spec, "synth", "--patients", "120", "--seed", "6",
                         "--replace")  # fmt: skip
    assert code == 0, out + err
    assert "Synthetic hospital (seed 6)" in out and "rows in" in out
    assert scalar(pg_dsn, "SELECT count(*) FROM patients") == 120


def test_refuses_to_mix_and_replaces_on_request(pg_dsn: str) -> None:
    run_synth(pg_dsn, 500, seed=1)
    with pytest.raises(SynthError, match=r"already holds 500 patients; use --replace"):
        run_synth(pg_dsn, 500, seed=2)
    replaced = run_synth(pg_dsn, 700, seed=2, drop_existing=True)
    assert scalar(pg_dsn, "SELECT count(*) FROM patients") == 700
    assert replaced.rows["patients"] == 700


def test_a_failed_load_leaves_nothing(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_generate = synth_runner.generate

    def failing(*args: object, **kwargs: object) -> Iterator[tuple[str, pa.RecordBatch]]:
        for i, item in enumerate(real_generate(*args, **kwargs)):  # type: ignore[arg-type]
            if i == 5:
                raise RuntimeError("generator broke")
            yield item

    monkeypatch.setattr(synth_runner, "generate", failing)
    with pytest.raises(RuntimeError, match="generator broke"):
        run_synth(pg_dsn, 500, seed=1)
    assert scalar(pg_dsn, "SELECT to_regclass('patients')") is None


def test_a_failed_replace_keeps_the_old_data(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_synth(pg_dsn, 300, seed=1)
    before = checksums(pg_dsn)

    def failing(*args: object, **kwargs: object) -> Iterator[tuple[str, pa.RecordBatch]]:
        raise RuntimeError("generator broke")
        yield  # pragma: no cover

    monkeypatch.setattr(synth_runner, "generate", failing)
    with pytest.raises(RuntimeError):
        run_synth(pg_dsn, 300, seed=2, drop_existing=True)
    assert checksums(pg_dsn) == before


def test_loads_with_keys_in_place_when_another_table_depends_on_them(pg_dsn: str) -> None:
    create_hospital_schema(pg_dsn)
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE referrals (id bigint PRIMARY KEY, "
                "patient_id bigint REFERENCES patients (patient_id))"
            )
    finally:
        conn.close()
    summary = run_synth(pg_dsn, 300, seed=1)
    assert scalar(pg_dsn, "SELECT count(*) FROM patients") == summary.rows["patients"] == 300
    assert index_names(pg_dsn) == EXPECTED_INDEXES


def test_progress_reports_every_table(pg_dsn: str) -> None:
    calls: list[tuple[str, int, int]] = []
    summary = run_synth(pg_dsn, 1_500, seed=4, on_progress=lambda *a: calls.append(a))
    for table in TABLES:
        mine = [(done, expected) for t, done, expected in calls if t == table]
        assert mine, table
        dones = [d for d, _ in mine]
        assert dones == sorted(dones)
        assert all(d <= e for d, e in mine)
        assert mine[-1] == (summary.rows[table], summary.rows[table])
    assert summary.total_rows == sum(summary.rows.values())
    assert summary.bytes > 0 and summary.seconds > 0


def test_copy_quotes_identifiers_and_keeps_null_apart_from_empty(pg_dsn: str) -> None:
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                'CREATE TABLE "Odd Table" ("a b" text, "c""d" bigint, ts timestamptz, d date)'
            )
        batch = pa.record_batch(
            [
                pa.array(['x, "y"\nz', "", None, "Zoë"]),
                pa.array([1, None, 3, 4], pa.int64()),
                pa.array([0, 1_700_000_000, None, -86_400], pa.timestamp("s", tz="UTC")),
                pa.array([0, None, 20_000, -1], pa.date32()),
            ],
            names=["a b", 'c"d', "ts", "d"],
        )
        assert copy_record_batches(conn, "Odd Table", [batch, batch.slice(0, 2)]) == 6
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(
                'SELECT "a b", "c""d", ts::text, d::text FROM "Odd Table" ORDER BY ctid LIMIT 4'
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    assert rows == [
        ('x, "y"\nz', 1, "1970-01-01 00:00:00+00", "1970-01-01"),
        ("", None, "2023-11-14 22:13:20+00", None),
        (None, 3, None, "2024-10-04"),
        ("Zoë", 4, "1969-12-31 00:00:00+00", "1969-12-31"),
    ]


# --------------------------------------------------------------------------------------------
# the loaded hospital


def test_row_counts_match_the_scale(hospital: tuple[str, SynthSummary]) -> None:
    dsn, summary = hospital
    counts = {t: int(scalar(dsn, f"SELECT count(*) FROM {t}")) for t in TABLES}  # type: ignore[arg-type]
    assert counts == summary.rows
    assert index_names(dsn) == EXPECTED_INDEXES  # keys rebuilt after the bulk load
    assert counts["patients"] == HOSPITAL_PATIENTS
    assert counts["providers"] == max(20, HOSPITAL_PATIENTS // 50)
    assert all(n > 0 for n in counts.values())
    per_patient = {t: n / HOSPITAL_PATIENTS for t, n in counts.items()}
    assert 8.5 <= per_patient["encounters"] <= 11.5
    assert 34 <= per_patient["labs"] <= 46
    assert 4 <= per_patient["medications"] <= 6
    assert 5.1 <= per_patient["clinical_notes"] <= 6.9
    assert counts["claims"] == counts["encounters"]
    # skewed: some patients with a single encounter, some with 40 or more
    spread = query(
        dsn,
        "SELECT min(n), max(n) FROM (SELECT count(*) n FROM encounters GROUP BY patient_id) x",
    )[0]
    assert spread[0] == 1 and int(spread[1]) >= 40  # type: ignore[arg-type]


def test_referential_integrity(hospital: tuple[str, SynthSummary]) -> None:
    dsn, _ = hospital
    orphans = {
        "encounter without patient": "SELECT count(*) FROM encounters e "
        "WHERE NOT EXISTS (SELECT 1 FROM patients p WHERE p.patient_id = e.patient_id)",
        "encounter without provider": "SELECT count(*) FROM encounters e "
        "WHERE NOT EXISTS (SELECT 1 FROM providers p WHERE p.provider_id = e.provider_id)",
        "note without provider": "SELECT count(*) FROM clinical_notes n "
        "WHERE NOT EXISTS (SELECT 1 FROM providers p WHERE p.provider_id = n.provider_id)",
        "patient without encounter": "SELECT count(*) FROM patients p "
        "WHERE NOT EXISTS (SELECT 1 FROM encounters e WHERE e.patient_id = p.patient_id)",
        "encounter without claim": "SELECT count(*) FROM encounters e "
        "WHERE NOT EXISTS (SELECT 1 FROM claims c WHERE c.encounter_id = e.encounter_id)",
        "discharge not after admit": "SELECT count(*) FROM encounters "
        "WHERE discharge_ts <= admit_ts",
        "encounter outside the patient's life": "SELECT count(*) FROM encounters e "
        "JOIN patients p USING (patient_id) WHERE e.admit_ts < p.birth_date "
        "OR e.admit_ts >= coalesce(p.deceased_date + 1, date '2026-01-01') "
        "OR p.created_at > e.admit_ts",
    }
    for child in ("labs", "medications", "claims", "clinical_notes"):
        orphans[f"{child} without encounter or with another patient"] = (
            f"SELECT count(*) FROM {child} c WHERE NOT EXISTS (SELECT 1 FROM encounters e "
            "WHERE e.encounter_id = c.encounter_id AND e.patient_id = c.patient_id)"
        )
    orphans["lab collected outside its encounter"] = (
        "SELECT count(*) FROM labs l JOIN encounters e USING (encounter_id) "
        "WHERE l.collected_ts < e.admit_ts "
        "OR l.collected_ts > coalesce(e.discharge_ts, timestamptz '2026-01-01 00:00+00')"
    )
    found = {what: scalar(dsn, sql) for what, sql in orphans.items()}
    assert found == dict.fromkeys(orphans, 0)


def _npi_valid(npi: str) -> bool:
    digits = [int(c) for c in "80840" + npi]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return total % 10 == 0


def test_patients_look_real(hospital: tuple[str, SynthSummary]) -> None:
    dsn, _ = hospital
    rows = query(
        dsn,
        "SELECT mrn, zip, ssn, phone, email, birth_date, deceased_date, sex, state FROM patients",
    )
    n = len(rows)
    mrns = [r[0] for r in rows]
    assert len(set(mrns)) == n and all(re.fullmatch(r"MRN\d{8}", str(m)) for m in mrns)
    zips = [str(r[1]) for r in rows]
    assert all(re.fullmatch(r"\d{5}", z) for z in zips)
    restricted = sum(z[:3] in RESTRICTED_ZIP3 for z in zips)
    assert 0.01 * n <= restricted <= 0.15 * n
    ssns = [str(r[2]) for r in rows if r[2] is not None]
    assert 0.80 * n <= len(ssns) <= 0.95 * n
    for ssn in ssns:
        area, group, serial = ssn.split("-")
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", ssn)
        assert area not in ("000", "666") and not area.startswith("9")
        assert group != "00" and serial != "0000"
    phones = [str(r[3]) for r in rows if r[3] is not None]
    assert len(phones) >= 0.9 * n
    nanp = re.compile(r"\(([2-9]\d\d)\) ([2-9]\d\d)-\d{4}")
    for phone in phones:
        match = nanp.fullmatch(phone)
        assert match, phone
        assert not match.group(1).endswith("11") and not match.group(2).endswith("11")
    emails = [str(r[4]) for r in rows if r[4] is not None]
    assert emails and all(re.fullmatch(r"[a-z._]+\d*@[a-z]+\.[a-z]+", e) for e in emails)
    reference = REFERENCE_DATE.date()
    ages = [(reference - r[5]).days / 365.2425 for r in rows]  # type: ignore[operator]
    assert all(0 <= a <= 101 for a in ages)
    assert 0.01 * n <= sum(a >= 90 for a in ages) <= 0.10 * n
    assert sum(a < 18 for a in ages) >= 0.1 * n
    deceased = [(r[5], r[6]) for r in rows if r[6] is not None]
    assert deceased and all(b <= d < reference for b, d in deceased)  # type: ignore[operator]
    assert {r[7] for r in rows} == {"F", "M"}
    assert len({r[8] for r in rows}) >= 5
    npis = [str(r[0]) for r in query(dsn, "SELECT npi FROM providers")]
    assert all(len(x) == 10 and x[0] in "12" and _npi_valid(x) for x in npis)


def test_encounters_span_ten_years(hospital: tuple[str, SynthSummary]) -> None:
    dsn, _ = hospital
    by_year = dict(
        query(dsn, "SELECT extract(year FROM admit_ts)::int, count(*) FROM encounters GROUP BY 1")
    )
    total = sum(by_year.values())  # type: ignore[arg-type]
    assert sorted(by_year) == list(range(2016, 2026))
    assert all(n > 0.05 * total for n in by_year.values())  # type: ignore[operator]
    types = dict(query(dsn, "SELECT encounter_type, count(*) FROM encounters GROUP BY 1"))
    assert set(types) == {"outpatient", "emergency", "inpatient", "telehealth"}
    assert scalar(dsn, "SELECT min(admit_ts) >= timestamptz '2016-01-01 00:00+00' FROM encounters")
    assert scalar(dsn, "SELECT count(*) FROM encounters WHERE primary_dx !~ '^[A-Z][0-9]'") == 0
    assert scalar(dsn, "SELECT count(DISTINCT account_number) = count(*) FROM encounters")


def test_labs_are_plausible_and_flags_agree(hospital: tuple[str, SynthSummary]) -> None:
    dsn, _ = hospital
    catalog = load_vocab().labs
    limits = {
        code: (lo, hi)
        for code, lo, hi in zip(
            catalog.loinc.to_pylist(), catalog.lo.tolist(), catalog.hi.tolist(), strict=True
        )
    }
    ranges = query(
        dsn,
        "SELECT loinc_code, min(value_numeric)::float, max(value_numeric)::float, count(*) "
        "FROM labs GROUP BY 1",
    )
    assert len(ranges) >= 30
    for code, low, high, _count in ranges:
        lo, hi = limits[str(code)]
        assert lo <= low and high <= hi, code  # type: ignore[operator]
    inconsistent = scalar(
        dsn,
        "SELECT count(*) FROM labs WHERE "
        "coalesce(abnormal_flag = 'H', false) <> coalesce(value_numeric > ref_high, false) "
        "OR coalesce(abnormal_flag = 'L', false) <> coalesce(value_numeric < ref_low, false) "
        "OR (abnormal_flag IS NOT NULL AND abnormal_flag NOT IN ('H', 'L'))",
    )
    assert inconsistent == 0
    abnormal = float(scalar(dsn, "SELECT avg((abnormal_flag IS NOT NULL)::int) FROM labs"))  # type: ignore[arg-type]
    assert 0.05 <= abnormal <= 0.35
    glucose = query(
        dsn,
        "SELECT test_name, unit, ref_low::float, ref_high::float FROM labs "
        "WHERE loinc_code = '2345-7' LIMIT 1",
    )
    assert glucose == [("Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70.0, 99.0)]


def test_claims_and_medications_are_sane(hospital: tuple[str, SynthSummary]) -> None:
    dsn, _ = hospital
    assert scalar(dsn, "SELECT count(*) FROM claims WHERE paid_amount > billed_amount") == 0
    assert scalar(dsn, "SELECT count(*) FROM claims WHERE billed_amount <= 0") == 0
    statuses = {r[0] for r in query(dsn, "SELECT DISTINCT status FROM claims")}
    assert {"paid", "denied", "pending"} <= statuses
    assert scalar(dsn, "SELECT count(*) FROM medications WHERE end_date < start_date") == 0
    assert scalar(dsn, "SELECT count(DISTINCT rxnorm_code) FROM medications") >= 30  # type: ignore[operator]


def test_notes_mention_phi_like_real_notes(hospital: tuple[str, SynthSummary]) -> None:
    dsn, _ = hospital
    stats = query(
        dsn,
        """
        SELECT
          avg((position(p.last_name IN n.note_text) > 0
               OR position(substr(p.mrn, 4) IN n.note_text) > 0
               OR position(p.phone IN n.note_text) > 0
               OR position(to_char(p.birth_date, 'MM/DD/YYYY') IN n.note_text) > 0
               OR position(p.birth_date::text IN n.note_text) > 0)::int)::float,
          avg((position(substr(p.mrn, 4) IN n.note_text) > 0)::int)::float,
          avg((p.emergency_contact_name IS NOT NULL
               AND position(p.emergency_contact_name IN n.note_text) > 0)::int)::float,
          avg((n.note_text ~ '\\m(wife|husband|daughter|son|mother|father|sister|brother)\\M')
              ::int)::float,
          avg((n.note_text ~ '\\d{2}/\\d{2}/\\d{4}|\\d{4}-\\d{2}-\\d{2}')::int)::float,
          avg((position(p.street_address IN n.note_text) > 0)::int)::float,
          avg((n.note_text ~ '\\m(Parkinson|Foley|Apgar|Murphy|Babinski|Hodgkin|Crohn)')
              ::int)::float,
          min(length(n.note_text)), max(length(n.note_text))
        FROM clinical_notes n JOIN patients p USING (patient_id)
        """,
    )[0]
    own_phi, mrn, contact, relative, dated, street, eponym, shortest, longest = stats
    assert own_phi >= 0.6  # type: ignore[operator]
    assert mrn >= 0.2  # type: ignore[operator]
    assert contact >= 0.03  # type: ignore[operator]
    assert relative >= 0.15  # type: ignore[operator]
    assert dated >= 0.9  # type: ignore[operator]
    assert street >= 0.05  # type: ignore[operator]
    assert eponym >= 0.05  # type: ignore[operator]
    assert shortest >= 300 and longest <= 1500  # type: ignore[operator]
    # ages over 89 are written out, as in real notes
    assert scalar(dsn, r"SELECT count(*) FROM clinical_notes WHERE note_text ~ '\m9[0-9] (yo|y/o)'")
