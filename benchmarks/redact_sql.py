"""Benchmark structured Safe Harbor redaction as SQL on DuckDB, against a plain copy.

Creates a DuckDB file with template 06's macros (rendered from examples/hospital.yaml and
deployed through the real target), fills raw tables of the hospital's shape with server-side
SQL (``range()``; no Python per row): ``patients``, ``encounters`` and ``labs`` with ``--rows``
rows each (encounters and labs point to a tenth of the patients: ~10 encounters and ~40 labs
per patient, 4 labs per encounter, 500 providers), and measures in one run, on the same file
and machine, ``--repeat`` rounds interleaved (every method once per round; best and median
printed, each with the 1-minute load average it ran under: the machine is shared):

* **anchor**: ``CREATE OR REPLACE TABLE copy AS SELECT * FROM raw.<table>`` (the same rows
  and bytes moved with no work per value);
* **redaction SQL**: ``CREATE OR REPLACE TABLE research.<table> AS <select>``, the very SELECT
  `clinipipe redact --policy safe_harbor` builds (`RedactSql.select_sql` over `plan_table`):
  keyed HMAC-SHA256 pseudonyms of every id (sha256 twice per value, in SQL), ZIP3, years,
  birth years suppressed over 89, drops;
* **what a cheaper PRF would give** (ceilings, NOT a valid redaction, never what clinipipe
  computes): the same SELECTs with each HMAC replaced by one single-block keyed SHA-256
  (``sha256(<32 hex digits of key> || namespace || 0x1F || value)``), and with no pseudonym
  at all (the value cast to text): the rate no keyed PRF can beat in this SQL;
* **clinipipe redact** end to end, as a user runs it: the command ``clinipipe -c <spec>
  redact --policy safe_harbor --tables patients,encounters,labs`` in its own process
  (Python start-up, template check, SQL fingerprints of the raw tables, the builds above in
  one transaction, state, README, metering, audit manifest, and the final PHI scan of every
  research row), then again with nothing changed (fingerprints and the final scan only).

Prints rows/s and the ratio redaction/copy per table, with the number of HMACs each row costs
(pseudonyms of unique values: the table's own id, MRNs, account numbers; repeated join keys are
pseudonymized once per distinct value and joined back), and the rate of HMAC-SHA256 alone in
DuckDB SQL, which bounds the rest. Target (issue 6): >= 1 M rows/s for the structured redaction
SQL. Machines are shared and noisy: compare the ratios of one run, and read the load average
printed with each figure.

    .venv/bin/python benchmarks/redact_sql.py --rows 2000000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

from clinipipe.phi.safe_harbor import RedactionKey, plan_table  # noqa: E402
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


class SingleBlockSha(RedactSql):
    """A ceiling, NOT a valid clinipipe redaction: each pseudonym as one keyed SHA-256 of one
    64-byte block (a 32-hex-digit key prefix), to show what a cheaper PRF would give."""

    def pseudonym(self, expr: str, namespace: str) -> str:
        q = self.dialect.quote_literal
        return f"left(sha256(k.prefix || {q(namespace)} || chr(31) || {self.text(expr)}), 24)"


class NoPseudonym(RedactSql):
    """A ceiling, NOT a redaction: the value as text where a pseudonym would be (no PRF)."""

    def pseudonym(self, expr: str, namespace: str) -> str:
        return self.text(expr)


def timed(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, float, float]:
    """(wall seconds, 1-minute load average, CPU seconds of this process) of one run of
    `sql`. CPU seconds are less sensitive to other engineers' load than wall time."""
    start, cpu = time.perf_counter(), time.process_time()
    con.execute(sql)
    return time.perf_counter() - start, os.getloadavg()[0], time.process_time() - cpu


def rate(rows: int, runs: list[tuple[float, float, float]]) -> str:
    """'best/median rows/s (load lo-hi), median rows per CPU second' of runs of `rows` rows."""
    times = [t for t, _, _ in runs]
    loads = [load for _, load, _ in runs]
    cpu = statistics.median(c for _, _, c in runs)
    return (
        f"{rows / min(times) / 1e6:5.2f}/{rows / statistics.median(times) / 1e6:5.2f} M "
        f"(load {min(loads):.1f}-{max(loads):.1f}); {rows / cpu / 1e6:5.2f} M per CPU-s"
    )


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
        prefix = hashlib.sha256(b"ceiling" + KEY.encode()).hexdigest()[:32]
        con.execute(f"ALTER TABLE {sql.key_table()} ADD COLUMN prefix VARCHAR DEFAULT '{prefix}'")
        con.execute("CREATE SCHEMA IF NOT EXISTS research")
        by_name = {t.name: t for t in loaded.spec.source.tables}
        builders = {
            "copy": None,
            "redact (HMAC-SHA256)": sql,
            "ceiling: 1-block SHA-256": SingleBlockSha(target.dialect),
            "ceiling: no PRF": NoPseudonym(target.dialect),
        }
        hmac_only = (
            "CREATE OR REPLACE TABLE copy AS SELECT "
            + sql.pseudonym("range", "patient_id")
            + f" AS p FROM range({args.rows}) t CROSS JOIN {sql.key_table()} k"
        )
        plans = {
            name: plan_table(
                loaded.spec, by_name[name], "safe_harbor", target.redaction_columns(name)
            )
            for name in TABLES
        }
        runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        hmac_runs = []
        for _ in range(args.repeat):  # interleaved: every method and table once per round
            hmac_runs.append(timed(con, hmac_only))
            for name in TABLES:
                for method, builder in builders.items():
                    select = (
                        f"SELECT * FROM raw.{name}"
                        if builder is None
                        else builder.select_sql(plans[name], f"raw.{name}", "'2026-03-01'")
                    )
                    runs.setdefault((method, name), []).append(
                        timed(con, f"CREATE OR REPLACE TABLE research.{name}_b AS {select}")
                    )
        print(
            f"HMAC-SHA256 in DuckDB SQL alone: {rate(args.rows, hmac_runs)} values/s "
            "(4 SHA-256 blocks per value), best/median"
        )
        print(f"rows/s best/median, {args.rows:,} rows per table, {args.repeat} rounds")
        print(f"{'method':<28}{'table':<12}{'HMAC/row':>9}  rows/s")
        for method in builders:
            for name in TABLES:
                mapped = {c.name for c in sql.mapped_columns(plans[name])}
                per_row = sum(
                    1
                    for c in plans[name].columns
                    if c.treatment.value == "pseudonym" and c.name not in mapped
                )
                print(
                    f"{method:<28}{name:<12}{per_row:>9}  {rate(args.rows, runs[(method, name)])}"
                )
            # all tables: the sum of each round's three builds
            rounds = [
                (
                    sum(runs[(method, n)][i][0] for n in TABLES),
                    max(runs[(method, n)][i][1] for n in TABLES),
                    sum(runs[(method, n)][i][2] for n in TABLES),
                )
                for i in range(args.repeat)
            ]
            print(f"{method:<28}{'all':<12}{'':>9}  {rate(len(TABLES) * args.rows, rounds)}")
        total_rows = len(TABLES) * args.rows
        redact_median = statistics.median(
            sum(runs[("redact (HMAC-SHA256)", n)][i][0] for n in TABLES) for i in range(args.repeat)
        )
        verdict = "met" if total_rows / redact_median >= 1e6 else "missed"
        print(
            f"Target: structured redaction SQL >= 1 M rows/s (median, all tables): "
            f"{total_rows / redact_median / 1e6:.2f} M ({verdict})"
        )
        con.execute("DROP TABLE copy")
        con.execute("DROP SCHEMA research CASCADE")
    command = [
        str(Path(sys.executable).with_name("clinipipe")), "-c", str(spec_path), "redact",
        "--policy", "safe_harbor", "--tables", ",".join(TABLES), "--as-of", "2026-03-01",
    ]  # fmt: skip
    total_rows = len(TABLES) * args.rows
    for label in ("first run", "rerun, nothing changed"):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        print(
            f"clinipipe redact (CLI, start-up and final PHI scan included), {label}: "
            f"{total_rows:,} rows in {wall:.2f} s ({total_rows / wall:,.0f} rows/s), "
            f"load {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
