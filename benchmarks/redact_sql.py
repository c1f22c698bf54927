"""Benchmark structured Safe Harbor redaction as SQL on DuckDB, against a plain copy.

Creates a DuckDB file with template 06's macros (rendered from examples/hospital.yaml and
deployed through the real target), fills raw tables of the hospital's shape with server-side
SQL (``range()``; no Python per row): ``patients``, ``encounters`` and ``labs`` with ``--rows``
rows each (encounters and labs point to a tenth of the patients: ~10 encounters and ~40 labs
per patient, 4 labs per encounter, 500 providers), and measures in one run, on the same file
and machine, best of ``--repeat``:

* **anchor**: ``CREATE OR REPLACE TABLE copy AS SELECT * FROM raw.<table>`` (the same rows
  and bytes moved with no work per value);
* **redaction SQL**: ``CREATE OR REPLACE TABLE research.<table> AS <select>``, the very SELECT
  `clinipipe redact --policy safe_harbor` builds (`RedactSql.select_sql` over `plan_table`):
  keyed HMAC-SHA256 pseudonyms of every id (sha256 twice per value, in SQL), ZIP3, years,
  birth years suppressed over 89, drops;
* **clinipipe redact** end to end through `clinipipe.pipeline.redact.redact` (template check,
  SQL fingerprints of the raw tables, the builds above in one transaction, state, README,
  metering, audit manifest), and a second run that finds nothing changed (fingerprints only).

Prints rows/s and the ratio redaction/copy per table, with the number of HMACs each row costs
(pseudonyms of unique values: the table's own id, MRNs, account numbers; repeated join keys are
pseudonymized once per distinct value and joined back), and the rate of HMAC-SHA256 alone in
DuckDB SQL, which bounds the rest. Target (issue 6): >= 1 M rows/s for the structured redaction
SQL. Machines are shared and noisy: compare the ratios of one run.

    .venv/bin/python benchmarks/redact_sql.py --rows 2000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

from clinipipe.phi.safe_harbor import RedactionKey, plan_table  # noqa: E402
from clinipipe.pipeline.redact import RedactOptions, redact  # noqa: E402
from clinipipe.spec import load_spec  # noqa: E402
from clinipipe.sql.render import render  # noqa: E402
from clinipipe.targets import DeploymentRecord, dialect_of  # noqa: E402
from clinipipe.targets.duckdb import DuckDBTarget  # noqa: E402
from clinipipe.targets.redact_sql import RedactSql  # noqa: E402

KEY = "benchmark-key-0123456789-abcdefghijkl"
TABLES = ("patients", "encounters", "labs")


def fill(con: duckdb.DuckDBPyConnection, rows: int) -> None:
    """Raw tables of the hospital's shape (types as backfill makes them), server-side."""
    patients = max(1, rows // 10)  # patients with encounters: ~10 encounters, 40 labs each
    con.execute(f"""
        CREATE OR REPLACE TABLE raw.patients AS SELECT
            range AS patient_id, 'MRN' || lpad(CAST(range AS VARCHAR), 8, '0') AS mrn,
            'First' || (range % 5000) AS first_name, 'Last' || (range % 20000) AS last_name,
            CASE WHEN range % 2 = 0 THEN 'F' ELSE 'M' END AS sex,
            DATE '1925-01-01' + CAST(range % 36000 AS INTEGER) AS birth_date,
            lpad(CAST(range % 900 + 100 AS VARCHAR), 3, '0') || '-45-6789' AS ssn,
            (range % 9999) || ' Main St' AS street_address, 'City' || (range % 500) AS city,
            'MA' AS state, lpad(CAST(range * 7919 % 100000 AS VARCHAR), 5, '0') AS zip,
            '617-555-' || lpad(CAST(range % 10000 AS VARCHAR), 4, '0') AS phone,
            'p' || range || '@example.org' AS email,
            'M' || (range * 31 % 99999999) AS insurance_member_id,
            'Employer' || (range % 300) AS employer,
            'Contact' || (range % 7000) AS emergency_contact_name,
            CASE WHEN range % 50 = 0 THEN DATE '2020-01-01' + CAST(range % 1500 AS INTEGER)
            END AS deceased_date,
            TIMESTAMPTZ '2015-01-01 00:00:00+00' + to_seconds(range * 37 % 300000000)
                AS created_at
        FROM range({rows})
    """)
    con.execute(f"""
        CREATE OR REPLACE TABLE raw.encounters AS SELECT
            range AS encounter_id, range * 7 % {patients} AS patient_id,
            range % 500 AS provider_id,
            CASE range % 3 WHEN 0 THEN 'inpatient' WHEN 1 THEN 'outpatient' ELSE 'emergency'
            END AS encounter_type,
            'Dept' || (range % 20) AS department,
            TIMESTAMPTZ '2015-01-01 00:00:00+00' + to_seconds(range * 61 % 300000000)
                AS admit_ts,
            TIMESTAMPTZ '2015-01-02 00:00:00+00' + to_seconds(range * 61 % 300000000)
                AS discharge_ts,
            'I' || (range % 99) AS primary_dx,
            'ACC' || lpad(CAST(range AS VARCHAR), 10, '0') AS account_number
        FROM range({rows})
    """)
    con.execute(f"""
        CREATE OR REPLACE TABLE raw.labs AS SELECT
            range AS lab_id, range // 4 AS encounter_id,
            (range // 4) * 7 % {patients} AS patient_id,
            (range % 800) || '-' || (range % 9) AS loinc_code, 'Test' || (range % 800) AS test_name,
            CAST(range % 20000 / 100.0 AS DECIMAL(12,3)) AS value_numeric, 'mg/dL' AS unit,
            CAST(10 AS DECIMAL(12,3)) AS ref_low, CAST(150 AS DECIMAL(12,3)) AS ref_high,
            CASE WHEN range % 7 = 0 THEN 'H' END AS abnormal_flag,
            TIMESTAMPTZ '2015-01-01 00:00:00+00' + to_seconds(range * 13 % 300000000)
                AS collected_ts
        FROM range({rows})
    """)


def best(con: duckdb.DuckDBPyConnection, sql: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        con.execute(sql)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per table")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="clinipipe-redact-bench-"))
    try:
        run(folder, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(folder: Path, args: argparse.Namespace) -> None:
    os.environ["CLINIPIPE_SOURCE_DSN"] = "postgresql://clinipipe@127.0.0.1:1/unused"
    os.environ["CLINIPIPE_HMAC_KEY"] = KEY
    os.environ.pop("CLINIPIPE_DUCKDB_PATH", None)
    spec_path = folder / "clinipipe.yaml"
    spec_path.write_text((REPO / "examples" / "hospital.yaml").read_text())
    loaded = load_spec(spec_path)
    files = render(loaded, dialect_of("duckdb"))
    with DuckDBTarget(loaded) as target:
        target.apply_deployment(
            [f for f in files if f.runs_on == "target"],
            DeploymentRecord(loaded.digest, "duckdb"),
            also_record=[f for f in files if f.runs_on == "source"],
        )
        profile = target.use_warehouse("initialization")
        con = target.con
        started = time.perf_counter()
        fill(con, args.rows)
        print(
            f"filled 3 tables x {args.rows:,} rows in {time.perf_counter() - started:.1f} s; "
            f"DuckDB {duckdb.__version__}, {profile}"
        )
        ipad, opad = RedactionKey(KEY.encode()).pads()
        sql = RedactSql(target.dialect)
        con.execute(sql.key_table_sql(), {"ipad": ipad, "opad": opad})
        con.execute("CREATE SCHEMA IF NOT EXISTS research")
        by_name = {t.name: t for t in loaded.spec.source.tables}
        floor = best(
            con,
            "CREATE OR REPLACE TABLE copy AS SELECT "
            + sql.pseudonym("range", "patient_id")
            + f" AS p FROM range({args.rows}) t CROSS JOIN {sql.key_table()} k",
            args.repeat,
        )
        print(
            f"HMAC-SHA256 in DuckDB SQL alone: {args.rows / floor:,.0f} values/s "
            "(4 SHA-256 blocks per value)"
        )
        print(
            f"{'table':<12}{'rows':>12}{'HMAC/row':>9}{'copy rows/s':>14}"
            f"{'redact rows/s':>15}{'ratio':>8}"
        )
        total_rows, total_copy, total_redact = 0, 0.0, 0.0
        for name in TABLES:
            plan = plan_table(
                loaded.spec, by_name[name], "safe_harbor", target.redaction_columns(name)
            )
            select = sql.select_sql(plan, f"raw.{name}", "'2026-03-01'")
            copy = best(
                con, f"CREATE OR REPLACE TABLE copy AS SELECT * FROM raw.{name}", args.repeat
            )
            red = best(con, f"CREATE OR REPLACE TABLE research.{name} AS {select}", args.repeat)
            n = args.rows
            total_rows, total_copy, total_redact = (
                total_rows + n,
                total_copy + copy,
                total_redact + red,
            )
            mapped = {c.name for c in sql.mapped_columns(plan)}
            per_row = sum(
                1 for c in plan.columns if c.treatment.value == "pseudonym" and c.name not in mapped
            )
            print(
                f"{name:<12}{n:>12,}{per_row:>9}{n / copy:>14,.0f}{n / red:>15,.0f}"
                f"{copy / red:>8.2f}"
            )
        print(
            f"{'all':<12}{total_rows:>12,}{'':>9}{total_rows / total_copy:>14,.0f}"
            f"{total_rows / total_redact:>15,.0f}{total_copy / total_redact:>8.2f}"
        )
        con.execute("DROP TABLE copy")
        con.execute("DROP SCHEMA research CASCADE")
    options = RedactOptions("safe_harbor", tables=list(TABLES), as_of=dt.date(2026, 3, 1))
    start = time.perf_counter()
    result = redact(loaded, options)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = redact(loaded, options)
    second = time.perf_counter() - start
    assert len(result.tables) == 3 and not again.as_dict()["rebuilt"]
    print(
        f"clinipipe redact end to end: {total_rows:,} rows in {first:.2f} s "
        f"({total_rows / first:,.0f} rows/s); rerun with nothing changed: {second:.2f} s"
    )


if __name__ == "__main__":
    main()
