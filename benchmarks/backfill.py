"""Benchmark `clinipipe backfill` into DuckDB against the raw read limit, DuckDB's own
PostgreSQL scanner and dlt.

Starts a throwaway PostgreSQL (``clinipipe.source.embedded.EmbeddedPostgres``), generates two tables
with server-side SQL (deterministic: ``setseed`` + ``random()``), runs ``VACUUM ANALYZE``, and
measures, on the same tables and machine, every method **as a process of its own, timed from
spawn to exit (interpreter start-up and imports included)**, with its peak RSS (``os.wait4``
rusage of that child only) and client CPU:

* **raw binary COPY** (the read limit the targets refer to): psycopg2
  ``COPY <t> TO STDOUT (FORMAT binary)`` into a sink that only counts bytes;
* **DuckDB postgres scanner**: ``ATTACH '<dsn>' (TYPE postgres)``, ``CREATE TABLE AS SELECT *``
  and ``CHECKPOINT`` into a fresh DuckDB file, with the extension of the offline wheel
  ``duckdb-extension-postgres==<duckdb version>`` (copied into a private extension directory as
  ``postgres_scanner.duckdb_extension``; auto-install off: nothing is downloaded). Skipped, with
  the reason, when the wheel is not installed;
* **clinipipe backfill** into a fresh DuckDB file through the real CLI
  (``python -m clinipipe -q -c <spec> backfill --tables <t> --workers <n> --json``; one temporary
  project per run, each with its own slot and publication, ``deploy`` run first, untimed);
* **dlt** ``sql_table(..., backend="pyarrow")`` into DuckDB (extract + normalize + load), in a
  separate virtualenv (default ``/tmp/clinipipe-bench-dlt/venv``, created with
  ``pip install "dlt[duckdb,sql_database]" pyarrow sqlalchemy psycopg2-binary`` on first use and
  reused afterwards; dlt is never a clinipipe dependency). If it cannot be installed or fails, the
  reason is printed and the row is skipped;
* with ``--diagnostics``: raw CSV COPY, and clinipipe's export select list as one CSV COPY.

Tables: ``enc(id bigint primary key, patient_id bigint, admit timestamptz, dept text, dx text,
cost numeric(12,2))`` (``--rows``, 2,000,000 by default: the narrow "labs" shape of issue 17)
and a wide ``notes(id bigint primary key, patient_id bigint, note_ts timestamptz, note_text
text)`` with about ``--note-bytes`` (2,000) bytes of sentence-like text per row
(``--note-rows``, 200,000 by default).

Every row count loaded is checked against the source. Methods run round-robin (``--repeat``
rounds, 3 by default, so a burst of load from other processes hits all methods alike); the
report gives each method's best and median seconds, the 1-minute load average when each of its
rounds started, rows/s, and ratios of medians (of bests in brackets) against the raw binary COPY
and the scanner. Targets (issue 17), for the first ``--workers`` value: clinipipe >= 0.5x raw
binary COPY, >= 1.0x the scanner, >= 5x dlt, peak RSS <= 1 GB. Machines are shared and noisy:
compare ratios measured in one run. A script, never part of the test suite::

    python benchmarks/backfill.py [--rows 2000000] [--note-rows 200000] [--workers 4 2]
        [--tables enc notes] [--skip-dlt] [--diagnostics] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import psycopg2
from psycopg2 import sql
from rich.console import Console
from rich.table import Table

from clinipipe.source.catalog import EXPORT_SESSION_SETTINGS, export_select_list, introspect_table
from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.sql.context import RAW_SCHEMA

DEFAULT_DLT_VENV = Path(tempfile.gettempdir()) / "clinipipe-bench-dlt" / "venv"
CLINIPIPE_PYTHON = Path(sys.executable)
"""Runs clinipipe (`--clinipipe-python`)."""
DLT_REQUIREMENTS = ("dlt[duckdb,sql_database]", "pyarrow", "sqlalchemy", "psycopg2-binary")
TARGET_VS_RAW = 0.5
TARGET_VS_DLT = 5.0
TARGET_RSS_BYTES = 1_000_000_000

TARGET_VS_SCANNER = 1.0
DUCKDB_SCANNER = "DuckDB postgres scanner"
RAW_BINARY = "raw COPY binary"
RAW_CSV = "raw COPY csv"
RAW_EXPORT = "raw COPY csv, clinipipe's export"
DLT = "dlt sql_table (pyarrow)"


def clinipipe_method(workers: int) -> str:
    return f"clinipipe backfill, {workers} workers"


# --------------------------------------------------------------------------------------------
# Source data
# --------------------------------------------------------------------------------------------

_ENC_SQL = """
CREATE TABLE enc (
    id bigint PRIMARY KEY,
    patient_id bigint,
    admit timestamptz,
    dept text,
    dx text,
    cost numeric(12, 2)
);
SELECT setseed(0.42);
INSERT INTO enc
SELECT g,
       1 + floor(random() * 200000)::bigint,
       timestamptz '2015-01-01 00:00:00+00' + random() * interval '3650 days',
       (ARRAY['cardiology', 'oncology', 'emergency', 'pediatrics', 'radiology', 'neurology',
              'orthopedics', 'obstetrics', 'psychiatry', 'internal medicine'])
           [1 + floor(random() * 10)::int],
       CASE WHEN random() < 0.05 THEN NULL
            ELSE chr(65 + floor(random() * 26)::int)
                 || lpad(floor(random() * 100)::int::text, 2, '0')
                 || '.' || floor(random() * 10)::int::text END,
       round((random() * 50000)::numeric, 2)
FROM generate_series(1, %(rows)s) AS g;
"""

# Notes are windows of ~2 KB at random offsets into a ~4 MB corpus of sentences built from a
# medical vocabulary, so the text compresses (TOAST, pglz) like prose rather than like random hex.
# The corpus is a materialized CTE (flat in memory): each note is an O(1) bytea slice of it.
_NOTES_SQL = """
CREATE TABLE notes (
    id bigint PRIMARY KEY,
    patient_id bigint,
    note_ts timestamptz,
    note_text text
);
SELECT setseed(0.17);
WITH words AS (
    SELECT string_to_array(
        'patient presents with acute chronic pain fever cough dyspnea chest abdominal nausea '
        'vomiting history of hypertension diabetes mellitus type two hyperlipidemia denies '
        'smoking alcohol use family mother father reports mild moderate severe onset days weeks '
        'ago examination reveals tenderness swelling erythema lungs clear to auscultation '
        'bilaterally heart regular rate rhythm no murmurs assessment plan continue current '
        'medications follow up in clinic labs ordered cbc bmp lipid panel imaging x-ray ct mri '
        'ultrasound discussed risks benefits alternatives consent obtained vital signs stable '
        'blood pressure pulse temperature oxygen saturation room air discharged home with '
        'instructions return precautions reviewed allergies none known penicillin sulfa the a '
        'and is was for on at by left right upper lower extremity headache dizziness fatigue '
        'weight loss gain appetite sleep anxiety depression mg daily twice as needed tablet '
        'insulin metformin lisinopril atorvastatin aspirin', ' ') AS w
), sentences AS (
    SELECT n, string_agg(w[1 + floor(random() * array_length(w, 1))::int], ' ') AS s
    FROM words, generate_series(1, 40000) AS n, generate_series(1, 4 + n %% 13) AS k
    GROUP BY n
), corpus AS MATERIALIZED (
    SELECT convert_to(string_agg(upper(left(s, 1)) || substr(s, 2) || '. ', '' ORDER BY n),
                      'UTF8') AS c
    FROM sentences
)
INSERT INTO notes
SELECT g,
       1 + floor(random() * 200000)::bigint,
       timestamptz '2015-01-01 00:00:00+00' + random() * interval '3650 days',
       convert_from(
           substring((SELECT c FROM corpus)
                     FROM 1 + floor(random() * (octet_length((SELECT c FROM corpus))
                                                - %(note_bytes)s))::int
                     FOR %(note_bytes)s),
           'UTF8')
FROM generate_series(1, %(note_rows)s) AS g;
"""


def create_tables(dsn: str, rows: int, note_rows: int, note_bytes: int) -> None:
    """Create and fill ``enc`` and ``notes`` (deterministically), then ``VACUUM ANALYZE``."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(_ENC_SQL, {"rows": rows})
            cur.execute(_NOTES_SQL, {"note_rows": note_rows, "note_bytes": note_bytes})
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE enc")
            cur.execute("VACUUM ANALYZE notes")
    finally:
        conn.close()


def table_facts(dsn: str, table: str) -> dict[str, Any]:
    """Row count, heap size and table size (heap + TOAST + maps) of `table`."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT count(*), pg_table_size(%s::regclass), pg_relation_size(%s::regclass)"
                    " FROM {}"
                ).format(sql.Identifier(table)),
                (table, table),
            )
            count, total, heap = cur.fetchone()
    finally:
        conn.close()
    return {"rows": int(count), "heap_bytes": int(heap), "table_bytes": int(total)}


# --------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------


@dataclass
class Measure:
    """One timed run of one method on one table."""

    table: str
    method: str
    rows: int
    seconds: float
    """In-process seconds (for subprocess methods: as the child reports them)."""
    stream_bytes: int | None = None
    """Bytes of the method's own stream (COPY output, clinipipe's CSV), when known."""
    wall_seconds: float | None = None
    """Subprocess methods: from spawn to exit, interpreter start-up included."""
    peak_rss_bytes: int | None = None
    cpu_seconds: float | None = None
    """User + system CPU of the client process (not PostgreSQL's): in-process methods from
    ``time.process_time``, subprocess methods from the child's rusage (start-up included)."""
    detail: str = ""
    runs: list[float] | None = None
    """Seconds of every round (`seconds` is the fastest)."""
    load_averages: list[float] | None = None
    """1-minute load average when each round started."""

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.runs) if self.runs else self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def median_rows_per_second(self) -> float:
        return self.rows / self.median_seconds if self.median_seconds else 0.0

    @property
    def mb_per_second(self) -> float | None:
        if self.stream_bytes is None or not self.seconds:
            return None
        return self.stream_bytes / self.seconds / 1e6


@dataclass
class Skipped:
    """A method that produced no number, and why."""

    table: str
    method: str
    reason: str


@dataclass(frozen=True)
class Method:
    """One way of moving one table, runnable repeatedly."""

    table: str
    name: str
    run: Callable[[], Measure]


def run_rounds(methods: list[Method], rounds: int) -> tuple[list[Measure], list[Skipped]]:
    """Run every method once per round, round-robin (so a burst of load from other processes
    hits all methods alike), and keep each method's fastest run, with the highest peak RSS of
    all its runs. A method that raises `RuntimeError` is skipped from then on, with its reason."""
    runs: dict[tuple[str, str], list[Measure]] = {(m.table, m.name): [] for m in methods}
    failed: dict[tuple[str, str], str] = {}
    for number in range(max(1, rounds)):
        for method in methods:
            key = (method.table, method.name)
            if key in failed:
                continue
            load = os.getloadavg()[0]
            print(
                f"[round {number + 1}] {method.table}: {method.name} (load {load:.2f}) ...",
                file=sys.stderr,
            )
            try:
                runs[key].append(replace(method.run(), load_averages=[load]))
            except RuntimeError as exc:
                failed[key] = str(exc)
    best: list[Measure] = []
    for key, measured in runs.items():
        if measured:
            fastest = min(measured, key=lambda m: m.seconds)
            peaks = [m.peak_rss_bytes for m in measured if m.peak_rss_bytes is not None]
            # Memory is checked against a ceiling: report the highest peak of all rounds.
            best.append(
                replace(
                    fastest,
                    peak_rss_bytes=max(peaks) if peaks else None,
                    runs=[m.seconds for m in measured],
                    load_averages=[x for m in measured for x in (m.load_averages or [])],
                )
            )
            if len(measured) > 1:
                seconds = ", ".join(f"{m.seconds:.2f}" for m in measured)
                print(f"  {key[0]} / {key[1]}: {seconds} s", file=sys.stderr)
    skipped = [Skipped(table, name, reason) for (table, name), reason in failed.items()]
    return best, skipped


class NullSink:
    """A write-only file that counts what it is given and keeps nothing."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def raw_copy(dsn: str, table: str, rows: int, method: str, statement: str) -> Measure:
    """`statement` (a COPY ... TO STDOUT) read by psycopg2 into a `NullSink`, timed from the
    statement to its end, after the export session settings (clinipipe's readers use them)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            for setting in EXPORT_SESSION_SETTINGS:
                cur.execute(setting)
            sink = NullSink()
            cpu_started = time.process_time()
            started = time.perf_counter()
            cur.copy_expert(statement, sink)
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
        conn.rollback()
    finally:
        conn.close()
    return Measure(table, method, rows, seconds, stream_bytes=sink.bytes, cpu_seconds=cpu)


_RAW_SCRIPT = textwrap.dedent(
    """\
    import json, sys, time

    import psycopg2

    dsn, statement, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


    class Sink:
        bytes = 0

        def write(self, data):
            self.bytes += len(data)
            return len(data)


    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        for setting in settings:
            cur.execute(setting)
        sink = Sink()
        started = time.perf_counter()
        cur.copy_expert(statement, sink)
        seconds = time.perf_counter() - started
    conn.close()
    print(json.dumps({"bytes": sink.bytes, "seconds": seconds}))
    """
)


def raw_copy_child(
    dsn: str, table: str, rows: int, method: str, statement: str, work_dir: Path
) -> Measure:
    """`raw_copy` in a process of its own: seconds are its wall time, start-up included."""
    settings = json.dumps(list(EXPORT_SESSION_SETTINGS))
    child = run_child(
        [sys.executable, "-c", _RAW_SCRIPT, dsn, statement, settings],
        env=dict(os.environ),
        cwd=work_dir,
    )
    if child.returncode != 0:
        raise RuntimeError(f"{method} failed (exit {child.returncode}):\n{_tail(child.stderr)}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return Measure(
        table, method, rows, child.wall_seconds, stream_bytes=int(result["bytes"]),
        wall_seconds=child.wall_seconds, peak_rss_bytes=child.peak_rss_bytes,
        cpu_seconds=child.cpu_seconds, detail=f"COPY itself {result['seconds']:.2f} s",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# DuckDB's postgres extension (the scanner)
# --------------------------------------------------------------------------------------------

_SCANNER_SCRIPT = textwrap.dedent(
    """\
    import json, sys, time

    import duckdb

    cfg = json.loads(sys.argv[1])
    con = duckdb.connect(cfg["path"], config={
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "extension_directory": cfg["extension_directory"],
    })
    con.execute("SET enable_progress_bar = false")
    con.execute("LOAD postgres_scanner")
    started = time.perf_counter()
    con.execute("ATTACH " + repr(cfg["dsn"]) + " AS pg (TYPE postgres, READ_ONLY)")
    con.execute(f'CREATE TABLE "{cfg["table"]}" AS SELECT * FROM pg.public."{cfg["table"]}"')
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - started
    rows = con.execute(f'SELECT count(*) FROM "{cfg["table"]}"').fetchone()[0]
    con.close()
    print(json.dumps({"seconds": seconds, "rows": rows}))
    """
)


def scanner_extension_directory(work_dir: Path) -> Path | str:
    """A DuckDB extension directory holding the postgres extension of the offline wheel
    ``duckdb-extension-postgres`` (nothing downloaded), or why not."""
    try:
        import duckdb_extension_postgres  # type: ignore[import-not-found]
    except ImportError:
        return (
            f"the duckdb-extension-postgres=={duckdb.__version__} wheel is not installed "
            f"(pip install duckdb-extension-postgres=={duckdb.__version__})"
        )
    version = f"v{duckdb.__version__}"
    found = Path(duckdb_extension_postgres.__file__).parent / "extensions" / version
    source = found / "postgres.duckdb_extension"
    if not source.exists():
        return f"no {source}"
    folder = work_dir / "duckdb_extensions" / version / "linux_amd64"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / "postgres_scanner.duckdb_extension")
    return work_dir / "duckdb_extensions"


def scanner_load(dsn: str, table: str, rows: int, extensions: Path, work_dir: Path) -> Measure:
    """``ATTACH ... (TYPE postgres)``, ``CREATE TABLE AS SELECT *``, ``CHECKPOINT`` into a
    fresh DuckDB file, in a process of its own: seconds are its wall time, start-up included."""
    path = work_dir / f"scanner_{table}_{time.monotonic_ns() % 10**9}.duckdb"
    cfg = {"path": str(path), "dsn": dsn, "table": table,
           "extension_directory": str(extensions)}  # fmt: skip
    try:
        child = run_child(
            [sys.executable, "-c", _SCANNER_SCRIPT, json.dumps(cfg)],
            env=dict(os.environ),
            cwd=work_dir,
        )
        if child.returncode != 0:
            raise RuntimeError(
                f"the DuckDB scanner failed (exit {child.returncode}):\n{_tail(child.stderr)}"
            )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        if result["rows"] != rows:
            raise RuntimeError(f"the DuckDB scanner loaded {result['rows']:,} rows of {rows:,}")
        return Measure(
            table, DUCKDB_SCANNER, rows, child.wall_seconds, wall_seconds=child.wall_seconds,
            peak_rss_bytes=child.peak_rss_bytes, cpu_seconds=child.cpu_seconds,
            detail=f"in-process {result['seconds']:.2f} s",
        )  # fmt: skip
    finally:
        for leftover in (path, path.with_name(path.name + ".wal")):
            leftover.unlink(missing_ok=True)


def export_statement(dsn: str, table: str) -> str:
    """clinipipe's COPY of the whole table (its export select list, one stream)."""
    conn = psycopg2.connect(dsn)
    try:
        schema = introspect_table(conn, "public", table)
    finally:
        conn.close()
    return (
        f'COPY (SELECT {export_select_list(schema)} FROM public."{table}") TO STDOUT (FORMAT csv)'
    )


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss_bytes: int
    cpu_seconds: float


def run_child(cmd: list[str], *, env: dict[str, str], cwd: Path) -> ChildResult:
    """Run `cmd`; its wall time and its own peak RSS (``os.wait4`` rusage of that child only)."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=cwd)
        assert proc.stdout is not None
        output = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    return ChildResult(
        proc.returncode,
        output.decode(errors="replace"),
        stderr,
        wall,
        usage.ru_maxrss * 1024,
        usage.ru_utime + usage.ru_stime,
    )


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# clinipipe
# --------------------------------------------------------------------------------------------

_SPEC = """\
version: 1
name: bench_{tag}
source:
  dsn: ${{CLINIPIPE_SOURCE_DSN}}
  slot: bench_slot_{tag}
  publication: bench_pub_{tag}
  tables:
    - {{name: {table}, primary_key: [id]{columns}}}
target: {{type: duckdb, path: bench.duckdb}}
"""

_PHI_COLUMNS = {"notes": {"note_text": "free_text"}}


def clinipipe_backfill(dsn: str, table: str, rows: int, workers: int, work_dir: Path) -> Measure:
    """Deploy a one-table project (untimed), then time the CLI's backfill in a subprocess; the
    loaded row count is checked, the slot and publication dropped, the project removed."""
    tag = f"{table}_w{workers}_{time.monotonic_ns() % 10**9}"
    project = work_dir / f"clinipipe_{tag}"
    project.mkdir()
    columns = _PHI_COLUMNS.get(table)
    phi = (
        ", columns: {" + ", ".join(f"{c}: {k}" for c, k in columns.items()) + "}" if columns else ""
    )
    spec = project / "clinipipe.yaml"
    spec.write_text(_SPEC.format(tag=tag, table=table, columns=phi))
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": dsn}
    base = [str(CLINIPIPE_PYTHON), "-m", "clinipipe", "-q", "-c", str(spec)]
    try:
        deployed = run_child([*base, "deploy"], env=env, cwd=project)
        if deployed.returncode != 0:
            raise RuntimeError(f"clinipipe deploy failed:\n{_tail(deployed.stderr)}")
        cmd = [*base, "backfill", "--tables", table, "--workers", str(workers), "--json"]
        child = run_child(cmd, env=env, cwd=project)
        if child.returncode != 0:
            raise RuntimeError(
                f"clinipipe backfill failed (exit {child.returncode}):\n{_tail(child.stderr)}"
            )
        summary = json.loads(child.stdout)
        with duckdb.connect(str(project / "bench.duckdb"), read_only=True) as con:
            row = con.execute(f'SELECT count(*) FROM "{RAW_SCHEMA}"."{table}"').fetchone()
        loaded = int(row[0]) if row else -1
        if loaded != rows or summary["rows"] != rows:
            raise RuntimeError(
                f"clinipipe loaded {loaded:,} rows (reported {summary['rows']:,}) of {rows:,}"
            )
        ranges = summary["tables"][table]["ranges"]
        return Measure(
            table,
            clinipipe_method(workers),
            rows,
            child.wall_seconds,
            stream_bytes=int(summary["bytes"]),
            wall_seconds=child.wall_seconds,
            peak_rss_bytes=child.peak_rss_bytes,
            cpu_seconds=child.cpu_seconds,
            detail=f"{ranges} ranges, in-process {float(summary['seconds']):.2f} s",
        )
    finally:
        _drop_replication(dsn, f"bench_slot_{tag}", f"bench_pub_{tag}")
        shutil.rmtree(project, ignore_errors=True)


def _drop_replication(dsn: str, slot: str, publication: str) -> None:
    """Drop the run's replication slot (it would hold WAL back) and publication."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )
            cur.execute(
                sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication))
            )
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# dlt
# --------------------------------------------------------------------------------------------

_DLT_SCRIPT = textwrap.dedent(
    """\
    import json, sys, time

    import dlt
    from dlt.sources.sql_database import sql_table

    cfg = json.loads(sys.argv[1])
    pipeline = dlt.pipeline(
        pipeline_name=cfg["name"],
        pipelines_dir=cfg["pipelines_dir"],
        destination=dlt.destinations.duckdb(cfg["path"]),
        dataset_name="bench",
    )
    started = time.perf_counter()
    pipeline.run(sql_table(credentials=cfg["url"], table=cfg["table"], backend="pyarrow"))
    seconds = time.perf_counter() - started
    with pipeline.sql_client() as client:
        rows = client.execute_sql(f'SELECT count(*) FROM "{cfg["table"]}"')[0][0]
    import duckdb
    print(json.dumps({"seconds": seconds, "rows": rows, "dlt": dlt.__version__,
                      "duckdb": duckdb.__version__}))
    """
)


def ensure_dlt_venv(venv: Path) -> Path | str:
    """The venv's python, creating the venv and installing dlt on first use; or why not."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import dlt, duckdb, pyarrow, sqlalchemy, psycopg2"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    print(f"installing dlt into {venv} (once) ...", file=sys.stderr)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            capture_output=True,
            check=True,
            timeout=300,
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *DLT_REQUIREMENTS],
            capture_output=True,
            check=True,
            timeout=1200,
        )
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or b"").decode(errors="replace")
        return f"installing dlt failed: {_tail(output, 5)}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"installing dlt failed: {exc}"
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return "dlt was installed but cannot be imported"
    return python


def dlt_load(
    python: Path, pg: EmbeddedPostgres, database: str, table: str, rows: int, work_dir: Path
) -> Measure:
    """dlt ``sql_table(backend="pyarrow")`` into a fresh DuckDB file, in a subprocess."""
    run_dir = work_dir / f"dlt_{table}_{time.monotonic_ns() % 10**9}"
    run_dir.mkdir()
    script = run_dir / "dlt_run.py"
    script.write_text(_DLT_SCRIPT)
    url = f"postgresql+psycopg2://{pg.user}@{pg.host}:{pg.port}/{database}"
    cfg = {
        "name": f"bench_{table}",
        "pipelines_dir": str(run_dir / "pipelines"),
        "path": str(run_dir / "dlt.duckdb"),
        "url": url,
        "table": table,
    }
    env = {
        **os.environ,
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "DLT_DATA_DIR": str(run_dir / "data"),
        "PGTZ": "UTC",
    }
    try:
        child = run_child([str(python), str(script), json.dumps(cfg)], env=env, cwd=run_dir)
        if child.returncode != 0:
            raise RuntimeError(f"dlt failed (exit {child.returncode}):\n{_tail(child.stderr)}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        if result["rows"] != rows:
            raise RuntimeError(f"dlt loaded {result['rows']:,} rows of {rows:,}")
        return Measure(
            table,
            DLT,
            rows,
            child.wall_seconds,
            wall_seconds=child.wall_seconds,
            peak_rss_bytes=child.peak_rss_bytes,
            cpu_seconds=child.cpu_seconds,
            detail=f"dlt {result['dlt']}, duckdb {result['duckdb']}",
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    table: str
    check: str
    value: float | None
    target: str
    passed: bool | None  # None: could not be measured


def _ratio(m: Measure, base: Measure | None, *, median: bool = True) -> float | None:
    if base is None:
        return None
    if median:
        return m.median_rows_per_second / base.median_rows_per_second
    return m.rows_per_second / base.rows_per_second


def verdicts(measures: list[Measure], tables: list[str], workers: int) -> list[Verdict]:
    """The issue's targets, per table, for clinipipe at `workers` workers (medians)."""
    found: list[Verdict] = []
    for table in tables:
        by_method = {m.method: m for m in measures if m.table == table}
        clinipipe = by_method.get(clinipipe_method(workers))
        if clinipipe is None:
            continue
        vs_raw = _ratio(clinipipe, by_method.get(RAW_BINARY))
        vs_scanner = _ratio(clinipipe, by_method.get(DUCKDB_SCANNER))
        vs_dlt = _ratio(clinipipe, by_method.get(DLT))
        rss = clinipipe.peak_rss_bytes / 1e9 if clinipipe.peak_rss_bytes is not None else None
        found += [
            Verdict(table, "clinipipe vs raw binary COPY (median)", vs_raw,
                    f">= {TARGET_VS_RAW}x", None if vs_raw is None else vs_raw >= TARGET_VS_RAW),
            Verdict(table, "clinipipe vs DuckDB scanner (median)", vs_scanner,
                    f">= {TARGET_VS_SCANNER}x",
                    None if vs_scanner is None else vs_scanner >= TARGET_VS_SCANNER),
            Verdict(table, "clinipipe vs dlt (median)", vs_dlt, f">= {TARGET_VS_DLT}x",
                    None if vs_dlt is None else vs_dlt >= TARGET_VS_DLT),
            Verdict(table, "clinipipe peak RSS (GB)", rss,
                    f"<= {TARGET_RSS_BYTES / 1e9:g} GB",
                    None if rss is None else rss * 1e9 <= TARGET_RSS_BYTES),
        ]  # fmt: skip
    return found


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def print_report(
    console: Console,
    header: dict[str, Any],
    facts: dict[str, dict[str, Any]],
    measures: list[Measure],
    skipped: list[Skipped],
    found: list[Verdict],
) -> None:
    console.print(
        f"clinipipe backfill benchmark (commit {header['clinipipe_commit']}, working tree as is): "
        f"PostgreSQL {header['postgres']}, duckdb {header['duckdb']}, {header['cpus']} CPUs, "
        f"{header['repeat']} interleaved round(s), total run {header['run_seconds']:.0f} s"
    )
    console.print(
        "load average (1/5/15 min) before "
        + "/".join(f"{x:.1f}" for x in header["load_average_before"])
        + ", after "
        + "/".join(f"{x:.1f}" for x in header["load_average_after"])
        + " (a shared machine: compare ratios within this run)"
    )
    sizes = Table(title="Source tables")
    for column in ("table", "rows", "heap MB", "heap+TOAST MB", "CSV MB", "binary MB"):
        sizes.add_column(column, justify="left" if column == "table" else "right")
    for table, f in facts.items():
        sizes.add_row(
            table, f"{f['rows']:,}", f"{f['heap_bytes'] / 1e6:,.1f}",
            f"{f['table_bytes'] / 1e6:,.1f}", _fmt(f.get("csv_mb"), ",.1f"),
            _fmt(f.get("binary_mb"), ",.1f"),
        )  # fmt: skip
    console.print(sizes)
    results = Table(
        title="Results: wall time of each method's own process, start-up included; best and "
        "median of the rounds; ratios of medians (of bests in brackets)"
    )
    columns = ("table", "method", "rows", "best s", "median s", "rows/s (median)",
               "vs raw binary", "vs scanner", "peak RSS MB", "client CPU s", "load avg",
               "note")  # fmt: skip
    for column in columns:
        results.add_column(
            column, justify="left" if column in ("table", "method", "note") else "right"
        )
    for m in measures:
        same = {x.method: x for x in measures if x.table == m.table}
        raw, scanner = same.get(RAW_BINARY), same.get(DUCKDB_SCANNER)

        def both(base: Measure | None, m: Measure = m) -> str:
            if base is None:
                return "—"
            return f"{_ratio(m, base):.2f}x ({_ratio(m, base, median=False):.2f}x)"

        rss = m.peak_rss_bytes / 1e6 if m.peak_rss_bytes is not None else None
        loads = m.load_averages or []
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "—"
        results.add_row(
            m.table, m.method, f"{m.rows:,}", f"{m.seconds:.2f}", f"{m.median_seconds:.2f}",
            f"{m.median_rows_per_second:,.0f}", both(raw), both(scanner), _fmt(rss, ",.0f"),
            _fmt(m.cpu_seconds, ".2f"), load, m.detail,
        )  # fmt: skip
    for s in skipped:
        reason = s.reason.splitlines()[0] if s.reason else ""
        results.add_row(s.table, s.method, *["—"] * 9, f"skipped: {reason} (details above)")
    console.print(results)
    targets = Table(title=f"Targets (clinipipe, {header['target_workers']} workers)")
    for column in ("table", "check", "measured", "target", "result"):
        targets.add_column(column, justify="right" if column == "measured" else "left")
    for v in found:
        result = {True: "[green]pass[/]", False: "[red]miss[/]", None: "not measured"}[v.passed]
        targets.add_row(v.table, v.check, _fmt(v.value, ".2f"), v.target, result)
    console.print(targets)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def table_methods(
    pg: EmbeddedPostgres,
    dsn: str,
    database: str,
    table: str,
    rows: int,
    workers: list[int],
    python_dlt: Path | None,
    scanner: Path | None,
    work_dir: Path,
    diagnostics: bool,
) -> list[Method]:
    """The methods measured on `table`, in the order they run in each round. Every timed
    method runs in a process of its own, timed from spawn to exit."""
    binary = f"COPY {table} TO STDOUT (FORMAT binary)"
    methods = [
        Method(table, RAW_BINARY,
               partial(raw_copy_child, dsn, table, rows, RAW_BINARY, binary, work_dir)),
    ]  # fmt: skip
    if diagnostics:
        csv = f"COPY {table} TO STDOUT (FORMAT csv)"
        export = export_statement(dsn, table)
        methods += [
            Method(table, RAW_CSV,
                   partial(raw_copy_child, dsn, table, rows, RAW_CSV, csv, work_dir)),
            Method(table, RAW_EXPORT,
                   partial(raw_copy_child, dsn, table, rows, RAW_EXPORT, export, work_dir)),
        ]  # fmt: skip
    if scanner is not None:
        load = partial(scanner_load, dsn, table, rows, scanner, work_dir)
        methods.append(Method(table, DUCKDB_SCANNER, load))
    for n in workers:
        run = partial(clinipipe_backfill, dsn, table, rows, n, work_dir)
        methods.append(Method(table, clinipipe_method(n), run))
    if python_dlt is not None:
        run = partial(dlt_load, python_dlt, pg, database, table, rows, work_dir)
        methods.append(Method(table, DLT, run))
    return methods


def _git_head() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark clinipipe backfill against raw COPY and dlt (see the docstring)."
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of enc")
    parser.add_argument("--note-rows", type=int, default=200_000, help="rows of notes")
    parser.add_argument("--note-bytes", type=int, default=2_000, help="note_text bytes per row")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[4, 2],
        help="clinipipe --workers values to run; the first one is checked against the targets",
    )  # fmt: skip
    parser.add_argument("--tables", nargs="+", choices=["enc", "notes"], default=["enc", "notes"])
    parser.add_argument("--skip-dlt", action="store_true", help="do not run (or install) dlt")
    parser.add_argument(
        "--diagnostics", action="store_true",
        help="also time raw CSV COPY and clinipipe's export query as CSV",
    )  # fmt: skip
    parser.add_argument("--dlt-venv", type=Path, default=DEFAULT_DLT_VENV)
    parser.add_argument(
        "--clinipipe-python",
        type=Path,
        default=Path(sys.executable),
        help="the interpreter that runs clinipipe (default: this one). A venv with clinipipe's "
        "own dependencies only (`pip install -e .`) is what a user runs; a dev venv also holds "
        "pandas (from the test tools), which DuckDB's client imports on the first query with "
        "parameters (0.25-0.5 s of start-up)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="rounds of every method (round-robin); best and median are reported",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    global CLINIPIPE_PYTHON
    CLINIPIPE_PYTHON = args.clinipipe_python
    print(f"clinipipe runs on {CLINIPIPE_PYTHON}", file=sys.stderr)

    run_started = time.perf_counter()
    load_before = os.getloadavg()
    skipped: list[Skipped] = []
    python_dlt: Path | None = None
    if args.skip_dlt:
        skipped += [Skipped(t, DLT, "--skip-dlt") for t in args.tables]
    else:
        found_dlt = ensure_dlt_venv(args.dlt_venv)
        if isinstance(found_dlt, str):
            skipped += [Skipped(t, DLT, found_dlt) for t in args.tables]
        else:
            python_dlt = found_dlt

    facts: dict[str, dict[str, Any]] = {}
    with EmbeddedPostgres() as pg, tempfile.TemporaryDirectory(prefix="clinipipe-bench-") as tmp:
        work_dir = Path(tmp)
        database = "bench"
        dsn = pg.create_database(database)
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                row = cur.fetchone()
                version = str(row[0]) if row else "?"
        finally:
            conn.close()
        started = time.perf_counter()
        create_tables(dsn, args.rows, args.note_rows, args.note_bytes)
        print(f"generated the tables in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        scanner: Path | None = None
        found_scanner = scanner_extension_directory(work_dir)
        if isinstance(found_scanner, str):
            skipped += [Skipped(t, DUCKDB_SCANNER, found_scanner) for t in args.tables]
        else:
            scanner = found_scanner
        methods: list[Method] = []
        for table in args.tables:
            facts[table] = table_facts(dsn, table)
            rows = facts[table]["rows"]
            # Untimed warm-up: the table into shared buffers / the page cache.
            raw_copy(dsn, table, rows, "warm-up", f"COPY {table} TO STDOUT (FORMAT binary)")
            methods += table_methods(
                pg, dsn, database, table, rows, args.workers, python_dlt, scanner, work_dir,
                args.diagnostics,
            )  # fmt: skip
        measures, failed = run_rounds(methods, args.repeat)
        skipped += failed

    for m in measures:
        if m.method in (RAW_BINARY, RAW_CSV):
            key = "binary_mb" if m.method == RAW_BINARY else "csv_mb"
            facts[m.table][key] = (m.stream_bytes or 0) / 1e6
    target_workers = args.workers[0]
    found = verdicts(measures, args.tables, target_workers)
    header = {
        "postgres": version,
        "duckdb": duckdb.__version__,
        "clinipipe_commit": _git_head(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": args.rows,
        "note_rows": args.note_rows,
        "note_bytes": args.note_bytes,
        "repeat": args.repeat,
        "target_workers": target_workers,
        "run_seconds": time.perf_counter() - run_started,
    }
    if args.json:
        document = {
            **header,
            "tables": facts,
            "measures": [
                {
                    **asdict(m),
                    "rows_per_second": m.rows_per_second,
                    "mb_per_second": m.mb_per_second,
                }
                for m in measures
            ],
            "skipped": [asdict(s) for s in skipped],
            "targets": [asdict(v) for v in found],
        }
        print(json.dumps(document, indent=2))
        return
    for s in skipped:
        print(f"skipped {s.table} / {s.method}:\n{s.reason}\n", file=sys.stderr)
    print_report(Console(width=200), header, facts, measures, skipped, found)


if __name__ == "__main__":
    main()
