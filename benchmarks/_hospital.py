"""A big synthetic hospital for the refresh and dashboard benchmarks, built fast.

`clinipipe synth` renders clinical notes and every table, which takes minutes at 200 k
patients; the dynamic tables measured here read only patients, encounters and labs. So those
three tables of the real hospital schema (``clinipipe/source/sql/hospital_schema.sql``) are
filled by server-side SQL (``generate_series``): ``patients`` patients, 10 encounters and 40
labs per patient on average (spread unevenly: the patient of encounter e is a hash of e), one
lab in seven flagged abnormal, admissions over two years. Then the real pipeline runs:
``deploy``, ``backfill`` and the first build of the dynamic tables, in this process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.pipeline.deploy import deploy
from clinipipe.pipeline.refresh import refresh
from clinipipe.source.loader import create_hospital_schema
from clinipipe.spec import LoadedSpec, load_spec

DEPARTMENTS = (
    "Cardiology", "Emergency", "Oncology", "Neurology", "Pediatrics", "Orthopedics",
    "Internal Medicine", "Surgery", "Obstetrics", "Psychiatry", "Radiology", "ICU",
)  # fmt: skip

# The patient of encounter e: a fixed permutation-like hash, so encounters of a patient are
# scattered over the table as they are in a real one (not clustered by patient).
PATIENT_OF = "(1 + ((e::bigint * 7919) % {p}))"


def fill_source(dsn: str, patients: int) -> dict[str, int]:
    """Create the hospital tables and fill patients, encounters and labs; return row counts."""
    create_hospital_schema(dsn, drop_existing=True)
    encounters, labs = patients * 10, patients * 40
    depts = "ARRAY[" + ", ".join(f"'{d}'" for d in DEPARTMENTS) + "]"
    patient_of = PATIENT_OF.format(p=patients)
    statements = [
        f"""INSERT INTO patients SELECT i, 'M' || lpad(i::text, 9, '0'), 'First' || (i % 997),
            'Last' || (i % 1009), CASE WHEN i % 2 = 0 THEN 'F' ELSE 'M' END,
            date '1935-01-01' + (i % 30000)::int, NULL, i || ' Main St', 'Springfield', 'MA',
            lpad((10000 + i % 89999)::text, 5, '0'), NULL, NULL, NULL, NULL, NULL, NULL, now()
            FROM generate_series(1::bigint, {patients}) i""",
        f"""INSERT INTO encounters SELECT e, {patient_of}, 1 + e % 500, 'inpatient',
            ({depts})[1 + (e % {len(DEPARTMENTS)})::int],
            timestamptz '2024-12-01 00:00+00' + ((e * 104729) % 63072000) * interval '1 second',
            NULL, 'I10', 'A' || e FROM generate_series(1::bigint, {encounters}) e""",
        f"""INSERT INTO labs SELECT l, e, {patient_of}, '2345-7', 'Glucose',
            (70 + l % 90)::numeric, 'mg/dL', 70, 110, CASE WHEN l % 7 = 0 THEN 'H' END,
            timestamptz '2024-12-01 00:00+00' + ((e * 104729) % 63072000 + l % 3600)
              * interval '1 second'
            FROM (SELECT l, 1 + (l - 1) / 4 AS e FROM generate_series(1::bigint, {labs}) l) s""",
        "ANALYZE patients",
        "ANALYZE encounters",
        "ANALYZE labs",
    ]
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    con.close()
    return {"patients": patients, "encounters": encounters, "labs": labs}


SPEC = """\
version: 1
name: bench_hospital
source:
  dsn: {dsn}
  publication: clinipipe_pub
  slot: clinipipe_slot
  tables:
    - {{name: patients, primary_key: [patient_id]}}
    - {{name: encounters, primary_key: [encounter_id]}}
    - {{name: labs, primary_key: [lab_id]}}
target: {{type: duckdb, path: warehouse.duckdb}}
dynamic_tables:
  - name: patient_summary
    target_lag: {lag}
    refresh_mode: auto
    refresh_key: patient_id
    sql: |
      select p.patient_id,
             count(distinct e.encounter_id) as encounters,
             max(e.admit_ts) as last_admit,
             count(l.lab_id) filter (where l.abnormal_flag is not null) as abnormal_labs
      from raw.patients p
      left join raw.encounters e on e.patient_id = p.patient_id
      left join raw.labs l on l.encounter_id = e.encounter_id
      group by p.patient_id
  - name: daily_census
    target_lag: {lag}
    refresh_mode: full
    sql: |
      select cast(admit_ts as date) as census_date, department, count(*) as admissions
      from raw.encounters
      group by cast(admit_ts as date), department
  - name: recent_labs
    target_lag: {lag}
    refresh_mode: auto
    refresh_key: patient_id
    sql: |
      select patient_id, lab_id, collected_ts, test_name, value_numeric, unit, abnormal_flag
      from raw.labs
      qualify row_number() over (
        partition by patient_id order by collected_ts desc, lab_id desc) <= 10
interactive_tables:
  - {{name: patient_dashboard, from: patient_summary, cluster_by: [patient_id]}}
  - {{name: lab_dashboard, from: recent_labs, cluster_by: [patient_id, collected_ts]}}
  - {{name: census_dashboard, from: daily_census, cluster_by: [census_date, department]}}
"""

DASHBOARDS = """\
dashboards:
  - name: patient_overview
    params: {patient_id: bigint}
    sql: select * from serving.patient_dashboard where patient_id = $patient_id
  - name: recent_labs_of_patient
    params: {patient_id: bigint}
    sql: |
      select collected_ts, test_name, value_numeric, unit, abnormal_flag
      from serving.lab_dashboard where patient_id = $patient_id
      order by collected_ts desc, lab_id desc limit 10
  - name: census_by_department
    params: {day: date}
    sql: |
      select department, admissions from serving.census_dashboard
      where census_date = $day order by admissions desc, department
"""


@dataclass
class Built:
    loaded: LoadedSpec
    rows: dict[str, int]
    seconds: dict[str, float]


def build(dsn: str, folder: Path, patients: int, *, lag: str = "1 day") -> Built:
    """Fill the source, write the spec (dynamic tables with `lag`), deploy, backfill and build
    the dynamic tables; returns the loaded spec and how long each step took."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = fill_source(dsn, patients)
    seconds["source"] = time.perf_counter() - t0
    spec_path = folder / "clinipipe.yaml"
    spec_path.write_text(SPEC.format(dsn=dsn, lag=lag) + DASHBOARDS)
    loaded = load_spec(spec_path)
    t0 = time.perf_counter()
    deploy(loaded)
    run_backfill(loaded, BackfillOptions())
    seconds["backfill"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    refresh(loaded)
    seconds["first build"] = time.perf_counter() - t0
    return Built(loaded, rows, seconds)


def execute(dsn: str, statement: str) -> int:
    """Run one statement on the source (autocommitted); its row count."""
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(statement)
        count = cur.rowcount
    con.close()
    return count
