"""Benchmark `clinipipe cdc start` (PostgreSQL → DuckDB) against the raw pgoutput read rate.

Starts a throwaway PostgreSQL (``source.embedded.EmbeddedPostgres``), creates ``enc``
(``--rows``, the table the workloads write) and ``big`` (1,000 rows, receives the big
transaction) with server-side SQL, writes a one-project spec (and a copy with ``phi.watch: []``),
runs ``clinipipe deploy`` and ``clinipipe backfill`` through the real CLI in subprocesses (so the
slot exists), and then measures, in one run on the same machine:

1. **Apply throughput, judged on wall time including start-up.** With CDC stopped, a mixed
   workload of ``--changes`` changes (60 % INSERT, 30 % UPDATE, 10 % DELETE; ``--tx-changes``
   per transaction, server-side SQL) is written to ``enc``. Before it, the CDC slot is copied
   (``pg_copy_logical_replication_slot``) so every method reads the very same stream. Then, per
   condition — **quiet**, and **busy** (one CPU-burner process per core, started by this
   script, running during every method of the condition) — ``--repeat`` (3) interleaved rounds
   of, each as its own process, timed from spawn to exit (wall, start-up included), CPU and peak
   RSS from ``os.wait4``:

   * **raw pgoutput read** (the limit): psycopg2 only (``python -c``, no clinipipe),
     ``start_replication(decode=False, proto_version 1)`` in a ``read_message`` loop that only
     counts messages until every workload transaction's Commit arrived;
   * **clinipipe**: ``python -m clinipipe -q -c <spec> cdc start --until-caught-up --json`` with
     the default spec (it scans every batch for PHI), and with ``phi.watch: []`` (no scan; shows
     what the scan costs). Before each run the DuckDB file and the slot are restored to their
     state before the workload; after it the target's ``enc`` is compared with the source.

   Reported per method and condition: best and median wall, changes/s, the ratio raw wall ÷
   method wall (best and median), the in-process time, client CPU seconds, peak RSS and the
   1-minute load average at the start of each run (min-max). The target is judged on the median.
2. **End-to-end latency** (source commit → visible in the target). ``cdc start`` runs in a
   subprocess (default options) while paced, open-loop writers write to ``enc``: single-row
   INSERT transactions at 1,000 events/min for ``--latency-seconds``, then ``--burst-tx-rows``-
   change transactions of the same 60/30/10 mix at ``--burst-rate`` events/s for
   ``--burst-seconds`` from ``--burst-writers`` threads (``synchronous_commit = on``, as a
   production source; ``--async-commit`` keeps the embedded server's ``off``). **The observer**
   is independent of clinipipe: a thread of this script polls the slot's
   ``confirmed_flush_lsn`` every ~5 ms. clinipipe confirms a position only after the DuckDB
   COMMIT holding every change up to it returned (the loop confirms a batch only once its
   commit, on the apply thread, is collected), so the first poll past a transaction's LSN
   (read just before its COMMIT) is a moment its rows were visible to any new reader of the
   target; latency = that poll - the moment COMMIT was sent. It is an upper bound (it adds the
   feedback message and the polling interval). A separate reader cannot open the DuckDB file
   itself while CDC holds it read-write (DuckDB allows one writer process, no concurrent
   readers), and a query through the control socket would be answered by the CDC loop itself
   (between batches), i.e. not independent. clinipipe's own figure
   (``_clinipipe.cdc_batches.latencies_ms``, taken just before its COMMIT) is shown beside it.
3. **One big INSERT transaction** of ``--big-rows`` (1,000,000) rows into ``big``, written while
   ``cdc start`` streams: its peak RSS and commit → visible by the same observer; then the same
   transaction replayed (slot and warehouse restored) by ``cdc start --until-caught-up`` (peak
   RSS, time) and by the raw read, and the peak RSS of ``cdc start`` with nothing to apply.

Targets (issue 17 and before): ≥ 100 k changes/s and ≥ 0.8x the raw read (median wall, quiet
and busy); p99 ≤ 1 s at 1 k events/min and ≤ 5 s at 20 k events/s (outside observer, judged
only when the offered rate was reached and every transaction confirmed and applied); peak RSS
≤ 500 MB with the 1 M-row transaction.

Machines are shared and noisy: compare ratios within one run, read the load averages. A
script, never part of the test suite::

    python benchmarks/cdc.py [--changes 1000000] [--rows 200000] [--big-rows 1000000]
        [--repeat 3] [--quiet-only] [--latency-seconds 60] [--burst-seconds 15]
        [--async-commit] [--json]
    python benchmarks/cdc.py --quick     # small sizes, a sanity run
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import duckdb
import psycopg2
import psycopg2.errors
import psycopg2.extras
from rich.console import Console
from rich.table import Table

from clinipipe.bench.loadgen import percentiles
from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.sql.context import CONTROL_SCHEMA, RAW_SCHEMA

SLOT = "clinipipe_slot"
PUBLICATION = "clinipipe_pub"
SAVED_SLOT = "bench_saved"
TARGET_CHANGES_PER_SECOND = 100_000
TARGET_VS_RAW = 0.8
TARGET_STEADY_P99_MS = 1_000.0
TARGET_BURST_P99_MS = 5_000.0
TARGET_RSS_BYTES = 500_000_000
STEADY_EVENTS_PER_SECOND = 1_000 / 60
BURST_EVENTS_PER_SECOND = 20_000.0
TARGET_RSS_ROWS = 1_000_000  # the RSS target names a 1 M-row transaction
NAMED_RATES = {TARGET_STEADY_P99_MS: STEADY_EVENTS_PER_SECOND,
               TARGET_BURST_P99_MS: BURST_EVENTS_PER_SECOND}  # fmt: skip
"""The offered rate each latency target names (events/s), by its p99 bound."""
CHILD_TIMEOUT_SECONDS = 1_800.0
BIG_BATCH_ROWS = 200_000

# --------------------------------------------------------------------------------------------
# Source
# --------------------------------------------------------------------------------------------

_CREATE_SQL = """
CREATE TABLE {table} (
    id bigint PRIMARY KEY,
    patient_id bigint,
    admit timestamptz,
    dept text,
    dx text,
    cost numeric(12, 2)
)
"""

_ROWS_SELECT = """
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
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""

# One round trip per transaction: the change, then the WAL insert position before COMMIT.
_INSERT_WITH_LSN = (
    "INSERT INTO enc " + _ROWS_SELECT + "; SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
)

_MIXED_TX = (
    "DELETE FROM enc WHERE id >= %(del_first)s AND id < %(del_end)s; "
    "UPDATE enc SET cost = cost + 1, admit = admit + interval '1 hour' "
    "WHERE id >= %(upd_first)s AND id < %(upd_end)s; "
    "INSERT INTO enc "
    + _ROWS_SELECT.replace("%(first)s", "%(ins_first)s").replace("%(last)s", "%(ins_last)s")
)

_MIXED_WITH_LSN = _MIXED_TX + "; SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"


def execute(dsn: str, statement: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> Any:
    """Run one statement in autocommit mode; the first column of its first row, if any."""
    con = psycopg2.connect(dsn)
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(statement, params or None)
            if cur.description is None:
                return None
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        con.close()


def create_tables(dsn: str, rows: int, big_rows: int) -> None:
    con = psycopg2.connect(dsn)
    try:
        with con, con.cursor() as cur:
            cur.execute("SELECT setseed(0.42)")
            for table, count in (("enc", rows), ("big", big_rows)):
                cur.execute(_CREATE_SQL.format(table=table))
                cur.execute(f"INSERT INTO {table} " + _ROWS_SELECT, {"first": 1, "last": count})
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("VACUUM ANALYZE enc")
            cur.execute("VACUUM ANALYZE big")
    finally:
        con.close()


def current_lsn(dsn: str) -> int:
    return int(execute(dsn, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))


def copy_slot(dsn: str, source: str, copy: str) -> None:
    execute(dsn, "SELECT pg_copy_logical_replication_slot(%s, %s)", (source, copy))


def drop_slot(dsn: str, slot: str, timeout: float = 30.0) -> None:
    """Drop `slot` if it exists, waiting for its walsender to go (it exits shortly after its
    client disconnects)."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            execute(
                dsn,
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )
            return
        except psycopg2.errors.ObjectInUse:
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.1)


def table_fingerprint(dsn: str, table: str) -> tuple[int, int, str]:
    """(rows, sum of ids, sum of costs) of a source table."""
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute(
                f"SELECT count(*), coalesce(sum(id), 0), coalesce(sum(cost), 0) FROM {table}"
            )
            count, ids, cost = cur.fetchone()
    finally:
        con.close()
    return int(count), int(ids), f"{cost:.2f}"


def target_fingerprint(path: Path, table: str) -> tuple[int, int, str]:
    """The same from the DuckDB target (opened read-only: no CDC process may hold it)."""
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute(
            f"SELECT count(*), coalesce(sum(id), 0)::HUGEINT, coalesce(sum(cost), 0) "
            f'FROM "{RAW_SCHEMA}"."{table}"'
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), f"{row[2]:.2f}"


@dataclass
class Workload:
    """The mixed workload as written to the source."""

    transactions: int = 0
    changes: int = 0
    updates: int = 0
    inserts: int = 0
    deletes: int = 0
    seconds: float = 0.0
    wal_bytes: int = 0


@dataclass
class IdSpace:
    """Live ids of `enc` are exactly [low, high): inserts append at the top, deletes remove from
    the bottom, updates sweep the live range."""

    low: int
    high: int
    cursor: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, count: int) -> int:
        """`count` fresh ids above every live one; returns the first."""
        with self.lock:
            first = self.high
            self.high += count
            return first

    def mixed(self, size: int) -> dict[str, int]:
        """The parameters of `_MIXED_TX` for `size` changes, 60 % INSERT / 30 % UPDATE /
        10 % DELETE (thread-safe)."""
        inserts = round(size * 0.6)
        updates = round(size * 0.3)
        deletes = size - updates - inserts
        with self.lock:
            if self.high - self.low < updates + deletes + 1:
                raise SystemExit("--rows is too small for --tx-changes")
            del_first = self.low
            self.low += deletes
            if self.cursor < self.low or self.cursor + updates > self.high:
                self.cursor = self.low
            upd_first = self.cursor
            self.cursor += updates
            ins_first = self.high
            self.high += inserts
        return {"del_first": del_first, "del_end": del_first + deletes,
                "upd_first": upd_first, "upd_end": upd_first + updates,
                "ins_first": ins_first, "ins_last": ins_first + inserts - 1}  # fmt: skip


def mixed_workload(dsn: str, ids: IdSpace, changes: int, per_tx: int) -> Workload:
    """`changes` changes, 60 % INSERT / 30 % UPDATE / 10 % DELETE, `per_tx` per transaction."""
    work = Workload()
    before = current_lsn(dsn)
    con = psycopg2.connect(dsn)
    try:
        started = time.perf_counter()
        with con.cursor() as cur:
            while work.changes < changes:
                size = min(per_tx, changes - work.changes)
                inserts = round(size * 0.6)
                updates = round(size * 0.3)
                deletes = size - updates - inserts
                if ids.high - ids.low < updates + deletes + 1:
                    raise SystemExit("--rows is too small for --tx-changes")
                del_first = ids.low
                ids.low += deletes
                if ids.cursor < ids.low or ids.cursor + updates > ids.high:
                    ids.cursor = ids.low
                upd_first = ids.cursor
                ids.cursor += updates
                ins_first = ids.take(inserts)
                cur.execute(_MIXED_TX, {
                    "del_first": del_first, "del_end": del_first + deletes,
                    "upd_first": upd_first, "upd_end": upd_first + updates,
                    "ins_first": ins_first, "ins_last": ins_first + inserts - 1,
                })  # fmt: skip
                con.commit()
                work.transactions += 1
                work.changes += size
                work.updates += updates
                work.inserts += inserts
                work.deletes += deletes
        work.seconds = time.perf_counter() - started
    finally:
        con.close()
    work.wal_bytes = current_lsn(dsn) - before
    return work


# --------------------------------------------------------------------------------------------
# clinipipe in subprocesses
# --------------------------------------------------------------------------------------------


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss_bytes: int
    cpu_seconds: float


@dataclass
class Child:
    """A started subprocess whose stdout and stderr go to temporary files."""

    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]
    started: float


def spawn(cmd: list[str], env: dict[str, str], cwd: Path) -> Child:
    out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by reap
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by reap
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
    return Child(proc, out, err, started)


def reap(child: Child, timeout: float) -> ChildResult:
    """Wait for `child` (killing it after `timeout` s); its own rusage from ``os.wait4``."""
    proc = child.proc
    deadline = time.perf_counter() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - child.started
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
    outputs = []
    for handle in (child.out, child.err):
        handle.seek(0)
        outputs.append(handle.read().decode(errors="replace"))
        handle.close()
    return ChildResult(
        proc.returncode,
        outputs[0],
        outputs[1],
        wall,
        usage.ru_maxrss * 1024,
        usage.ru_utime + usage.ru_stime,
    )


def run_child(cmd: list[str], env: dict[str, str], cwd: Path) -> ChildResult:
    return reap(spawn(cmd, env, cwd), CHILD_TIMEOUT_SECONDS)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class Project:
    dsn: str
    directory: Path
    saved: Path

    @property
    def spec(self) -> Path:
        return self.directory / "clinipipe.yaml"

    @property
    def warehouse(self) -> Path:
        return self.directory / "bench.duckdb"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CLINIPIPE_SOURCE_DSN": self.dsn}

    @property
    def no_scan_spec(self) -> Path:
        """The same project with `phi.watch: []`: CDC scans no batch for PHI."""
        return self.directory / "clinipipe-noscan.yaml"

    def command(self, *args: str, spec: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "clinipipe", "-q", "-c", str(spec or self.spec), *args]

    def run(self, *args: str, spec: Path | None = None) -> ChildResult:
        child = run_child(self.command(*args, spec=spec), self.env, self.directory)
        if child.returncode != 0:
            raise RuntimeError(
                f"clinipipe {' '.join(args)} failed (exit {child.returncode}):\n"
                f"{_tail(child.stderr)}"
            )
        return child

    def save_warehouse(self) -> None:
        """Copy the DuckDB file (no process may have it open)."""
        self.saved.mkdir(exist_ok=True)
        for suffix in ("", ".wal"):
            source = Path(f"{self.warehouse}{suffix}")
            kept = self.saved / source.name
            kept.unlink(missing_ok=True)
            if source.exists():
                shutil.copy2(source, kept)

    def restore_warehouse(self) -> None:
        for suffix in ("", ".wal"):
            current = Path(f"{self.warehouse}{suffix}")
            kept = self.saved / current.name
            current.unlink(missing_ok=True)
            if kept.exists():
                shutil.copy2(kept, current)


_SPEC = f"""\
version: 1
name: bench_cdc
source:
  dsn: ${{CLINIPIPE_SOURCE_DSN}}
  publication: {PUBLICATION}
  slot: {SLOT}
  tables:
    - {{name: enc, primary_key: [id]}}
    - {{name: big, primary_key: [id]}}
target: {{type: duckdb, path: bench.duckdb}}
"""


@dataclass
class CdcRun:
    label: str
    changes: int
    transactions: int
    batches: int
    seconds: float
    wall_seconds: float
    peak_rss_bytes: int
    cpu_seconds: float
    check: str = ""

    @property
    def changes_per_second(self) -> float:
        return self.changes / self.seconds if self.seconds else 0.0


def catch_up(project: Project, label: str, *options: str, spec: Path | None = None) -> CdcRun:
    """`cdc start --until-caught-up --json` in a subprocess (with `spec`, else the project's)."""
    child = project.run("cdc", "start", "--until-caught-up", "--json", *options, spec=spec)
    summary = json.loads(child.stdout)
    return CdcRun(
        label,
        int(summary["changes"]),
        int(summary["transactions"]),
        int(summary["batches"]),
        float(summary["seconds"]),
        child.wall_seconds,
        child.peak_rss_bytes,
        child.cpu_seconds,
    )


def check_table(project: Project, table: str) -> str:
    source = table_fingerprint(project.dsn, table)
    target = target_fingerprint(project.warehouse, table)
    if source != target:
        raise RuntimeError(f"{table}: the target {target} differs from the source {source}")
    return f"{table} = source ({source[0]:,} rows)"


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------


RAW_CHILD = r"""
import json, select, sys, time
import psycopg2, psycopg2.extras
dsn, slot, publication, transactions, timeout = sys.argv[1:6]
transactions, timeout = int(transactions), float(timeout)
started = time.perf_counter()
con = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
cur = con.cursor()
messages = changes = commits = in_tx = payload_bytes = 0
cur.start_replication(slot_name=slot, decode=False,
                      options={"proto_version": "1", "publication_names": publication})
while commits < transactions:
    message = cur.read_message()
    if message is None:
        if time.perf_counter() - started > timeout:
            sys.exit(f"raw read: {commits} of {transactions} commits in time")
        select.select([cur], [], [], 1.0)
        continue
    payload = message.payload
    messages += 1
    payload_bytes += len(payload)
    kind = payload[:1]
    if kind in (b"I", b"U", b"D"):
        in_tx += 1
    elif kind == b"C":
        if in_tx:
            commits += 1
        changes += in_tx
        in_tx = 0
con.close()
print(json.dumps({"messages": messages, "changes": changes, "transactions": commits,
                  "payload_bytes": payload_bytes, "seconds": time.perf_counter() - started}))
"""
"""The raw pgoutput read as its own process (psycopg2 only: no clinipipe, no duckdb), so it
pays its own interpreter start-up as clinipipe does."""


@dataclass
class Measured:
    """One timed run of one method (raw read or a clinipipe variant) in one condition."""

    method: str
    condition: str
    round: int
    changes: int
    wall_seconds: float
    """From spawning the process to its exit: interpreter start-up included."""
    inside_seconds: float
    """The process's own figure (clinipipe: the JSON summary's `seconds`)."""
    cpu_seconds: float
    peak_rss_bytes: int
    load_average: tuple[float, float, float]
    batches: int = 0
    check: str = ""


def raw_child(project: Project, slot: str, transactions: int, condition: str,
              number: int) -> Measured:  # fmt: skip
    load = os.getloadavg()
    cmd = [sys.executable, "-c", RAW_CHILD, project.dsn, slot, PUBLICATION, str(transactions),
           "900"]  # fmt: skip
    child = run_child(cmd, project.env, project.directory)
    if child.returncode != 0:
        raise RuntimeError(f"raw read failed: {_tail(child.stderr)}")
    found = json.loads(child.stdout)
    return Measured(RAW_METHOD, condition, number, int(found["changes"]), child.wall_seconds,
                    float(found["seconds"]), child.cpu_seconds, child.peak_rss_bytes, load,
                    check=f"{found['messages']:,} messages, "
                          f"{found['payload_bytes'] / 1e6:,.0f} MB")  # fmt: skip


RAW_METHOD = "raw pgoutput read (psycopg2, own process)"
CLINIPIPE_METHOD = "clinipipe cdc start --until-caught-up (default spec)"
NO_SCAN_METHOD = "clinipipe, phi.watch: [] (no PHI scan of batches)"


def start_burners() -> list[subprocess.Popen[bytes]]:
    """One CPU-bound process per core (the "both cores busy" condition)."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]


def stop_burners(burners: list[subprocess.Popen[bytes]]) -> None:
    for proc in burners:
        proc.kill()
    for proc in burners:
        proc.wait()


def throughput(
    project: Project, ids: IdSpace, changes: int, per_tx: int, repeat: int,
    conditions: list[str],
) -> tuple[Workload, list[Measured]]:  # fmt: skip
    """The mixed workload with CDC stopped, then per condition ("quiet", "busy": a CPU burner
    per core) `repeat` rounds of: the raw read and each clinipipe variant, interleaved; every
    method replays the same stream from a copy of the slot saved before the workload."""
    dsn = project.dsn
    copy_slot(dsn, SLOT, SAVED_SLOT)
    project.save_warehouse()
    print(f"writing {changes:,} changes ...", file=sys.stderr)
    work = mixed_workload(dsn, ids, changes, per_tx)
    print(
        f"  {work.transactions:,} transactions in {work.seconds:.1f} s, "
        f"{work.wal_bytes / 1e6:,.0f} MB of WAL",
        file=sys.stderr,
    )
    measured: list[Measured] = []
    variants = {CLINIPIPE_METHOD: project.spec, NO_SCAN_METHOD: project.no_scan_spec}
    for condition in conditions:
        burners = start_burners() if condition == "busy" else []
        try:
            if burners:
                time.sleep(2.0)  # let the burners take their share
            for number in range(max(1, repeat)):
                print(f"[{condition} {number + 1}] raw pgoutput read ...", file=sys.stderr)
                copy = f"bench_raw_{condition}_{number}"
                copy_slot(dsn, SAVED_SLOT, copy)
                try:
                    raw = raw_child(project, copy, work.transactions, condition, number)
                finally:
                    drop_slot(dsn, copy)
                if raw.changes != work.changes:
                    raise RuntimeError(f"raw read saw {raw.changes:,} of {work.changes:,}")
                measured.append(raw)
                for label, spec in variants.items():
                    print(f"[{condition} {number + 1}] {label} ...", file=sys.stderr)
                    drop_slot(dsn, SLOT)
                    copy_slot(dsn, SAVED_SLOT, SLOT)
                    project.restore_warehouse()
                    load = os.getloadavg()
                    run = catch_up(project, label, spec=spec)
                    if run.changes != work.changes:
                        raise RuntimeError(
                            f"{label}: applied {run.changes:,} of {work.changes:,} changes"
                        )
                    measured.append(Measured(
                        label, condition, number, run.changes, run.wall_seconds, run.seconds,
                        run.cpu_seconds, run.peak_rss_bytes, load, run.batches,
                        check_table(project, "enc"),
                    ))  # fmt: skip
        finally:
            stop_burners(burners)
    drop_slot(dsn, SAVED_SLOT)
    return work, measured


@dataclass
class MethodSummary:
    """Best and median of one method's rounds in one condition; ratios are of wall times
    (start-up included) against the raw read's in the same condition."""

    method: str
    condition: str
    rounds: int
    changes: int
    best_wall: float
    median_wall: float
    median_inside: float
    median_cpu: float
    peak_rss_bytes: int
    load_1min: tuple[float, float]
    vs_raw_best: float
    vs_raw_median: float
    batches: int = 0
    check: str = ""

    @property
    def best_rate(self) -> float:
        return self.changes / self.best_wall

    @property
    def median_rate(self) -> float:
        return self.changes / self.median_wall


def summarize(measured: list[Measured]) -> list[MethodSummary]:
    import statistics

    found = []
    for condition in dict.fromkeys(m.condition for m in measured):
        runs = [m for m in measured if m.condition == condition]
        raw = [m.wall_seconds for m in runs if m.method == RAW_METHOD]
        for method in dict.fromkeys(m.method for m in runs):
            mine = [m for m in runs if m.method == method]
            walls = [m.wall_seconds for m in mine]
            loads = [m.load_average[0] for m in mine]
            found.append(MethodSummary(
                method, condition, len(mine), mine[0].changes, min(walls),
                statistics.median(walls), statistics.median(m.inside_seconds for m in mine),
                statistics.median(m.cpu_seconds for m in mine),
                max(m.peak_rss_bytes for m in mine), (min(loads), max(loads)),
                min(raw) / min(walls), statistics.median(raw) / statistics.median(walls),
                mine[0].batches, mine[-1].check,
            ))  # fmt: skip
    return found


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


class ConfirmPoller(threading.Thread):
    """Polls the slot's confirmed_flush_lsn; keeps (time, lsn) each time it advances."""

    def __init__(self, dsn: str, slot: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.slot = slot
        self.interval = interval
        self.times: list[float] = []
        self.lsns: list[int] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            con = psycopg2.connect(self.dsn)
            con.autocommit = True
            with con.cursor() as cur:
                while not self.stopping.is_set():
                    cur.execute(
                        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
                        "WHERE slot_name = %s",
                        (self.slot,),
                    )
                    row = cur.fetchone()
                    seen = time.perf_counter()
                    lsn = int(row[0]) if row and row[0] is not None else 0
                    if not self.lsns or lsn > self.lsns[-1]:
                        self.times.append(seen)
                        self.lsns.append(lsn)
                    time.sleep(self.interval)
            con.close()
        except BaseException as exc:
            self.error = exc

    @property
    def confirmed(self) -> int:
        return self.lsns[-1] if self.lsns else 0

    def confirmed_past(self, lsn: int) -> float | None:
        """When the slot was first seen confirmed beyond `lsn` (None: not yet)."""
        index = bisect.bisect_right(self.lsns, lsn)
        return self.times[index] if index < len(self.times) else None


@dataclass
class Tx:
    rows: int
    lsn_before_commit: int
    commit_sent: float
    commit_done: float


@dataclass(frozen=True)
class Stage:
    name: str
    events_per_second: float
    rows_per_tx: int
    seconds: float
    writers: int
    target_p99_ms: float
    synchronous_commit: bool = True
    mixed: bool = False
    """Transactions of 60 % INSERT / 30 % UPDATE / 10 % DELETE (else INSERT only)."""


def paced_writer(
    dsn: str, stage: Stage, number: int, t0: float, ids: IdSpace, out: list[Tx]
) -> None:
    """Open loop: transaction i of writer `number` is due at t0 + (i + number / writers) *
    interval, whether or not the previous ones were slow (a late one goes at once)."""
    interval = stage.rows_per_tx / stage.events_per_second * stage.writers
    end = t0 + stage.seconds
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute(f"SET synchronous_commit = {'on' if stage.synchronous_commit else 'off'}")
            con.commit()
            i = 0
            while True:
                due = t0 + (i + number / stage.writers) * interval
                if due >= end:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if stage.mixed:
                    cur.execute(_MIXED_WITH_LSN, ids.mixed(stage.rows_per_tx))
                else:
                    first = ids.take(stage.rows_per_tx)
                    cur.execute(
                        _INSERT_WITH_LSN, {"first": first, "last": first + stage.rows_per_tx - 1}
                    )
                row = cur.fetchone()
                assert row is not None
                sent = time.perf_counter()
                con.commit()
                out.append(Tx(stage.rows_per_tx, int(row[0]), sent, time.perf_counter()))
                i += 1
    finally:
        con.close()


@dataclass
class LatencyResult:
    stage: str
    offered_events_per_second: float
    achieved_events_per_second: float
    transactions: int
    events: int
    batches: int
    applied_transactions: int
    clinipipe_ms: dict[str, float] | None
    independent_ms: dict[str, float] | None
    unconfirmed: int
    target_p99_ms: float
    in_clinipipe_ms: dict[str, float] | None
    """Per batch: first change received -> applied (the part of the latency inside clinipipe)."""


@dataclass
class StageWindow:
    stage: Stage
    start_lsn: int
    end_lsn: int
    txs: list[Tx]
    independent_ms: list[float]
    unconfirmed: int


def wait_streaming(dsn: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("cdc start exited before streaming")
        active = execute(
            dsn, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
        )
        if active:
            return
        time.sleep(0.1)
    raise RuntimeError("cdc start did not start streaming in time")


def run_stage(dsn: str, stage: Stage, ids: IdSpace, poller: ConfirmPoller) -> StageWindow:
    print(f"latency: {stage.name} for {stage.seconds:g} s ...", file=sys.stderr)
    start_lsn = current_lsn(dsn)
    outputs: list[list[Tx]] = [[] for _ in range(stage.writers)]
    t0 = time.perf_counter() + 0.2
    threads = [
        threading.Thread(target=paced_writer, args=(dsn, stage, n, t0, ids, outputs[n]))
        for n in range(stage.writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    txs = sorted((tx for out in outputs for tx in out), key=lambda tx: tx.commit_sent)
    last = max((tx.lsn_before_commit for tx in txs), default=0)
    deadline = time.perf_counter() + 120
    while poller.confirmed <= last and time.perf_counter() < deadline:
        if poller.error is not None:
            raise RuntimeError(f"polling the slot failed: {poller.error}")
        time.sleep(0.05)
    time.sleep(1.0)
    end_lsn = current_lsn(dsn)
    independent, unconfirmed = [], 0
    for tx in txs:
        seen = poller.confirmed_past(tx.lsn_before_commit)
        if seen is None:
            unconfirmed += 1
        else:
            independent.append((seen - tx.commit_sent) * 1000)
    return StageWindow(stage, start_lsn, end_lsn, txs, independent, unconfirmed)


@dataclass
class LatencyRun:
    results: list[LatencyResult]
    peak_rss_bytes: int
    cpu_seconds: float
    wall_seconds: float


def latency(project: Project, ids: IdSpace, stages: list[Stage]) -> LatencyRun:
    """`cdc start` (default options) in a subprocess while the stages run one after another."""
    dsn = project.dsn
    child = spawn(project.command("cdc", "start"), project.env, project.directory)
    proc = child.proc
    windows: list[StageWindow] = []
    poller = ConfirmPoller(dsn, SLOT)
    try:
        wait_streaming(dsn, proc)
        time.sleep(1.0)
        poller.start()
        for stage in stages:
            windows.append(run_stage(dsn, stage, ids, poller))
    finally:
        poller.stopping.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # finishes its batch and exits cleanly
        result = reap(child, 120)
    if result.returncode != 0:
        raise RuntimeError(f"cdc start failed (exit {result.returncode}):\n{_tail(result.stderr)}")
    poller.join(5)
    with duckdb.connect(str(project.warehouse), read_only=True) as con:
        batches = con.execute(
            "SELECT lsn, transactions, changes, latencies_ms, "
            "(epoch_us(applied_at) - epoch_us(received_at)) / 1000.0 "
            f'FROM "{CONTROL_SCHEMA}".cdc_batches WHERE slot = ? ORDER BY lsn',
            [SLOT],
        ).fetchall()
    results = []
    for window in windows:
        inside = [b for b in batches if window.start_lsn < b[0] <= window.end_lsn]
        latencies = [float(x) for b in inside for x in (b[3] or [])]
        events = sum(tx.rows for tx in window.txs)
        span = window.txs[-1].commit_done - window.txs[0].commit_sent if window.txs else 0.0
        results.append(
            LatencyResult(
                window.stage.name,
                window.stage.events_per_second,
                events / span if span else 0.0,
                len(window.txs),
                events,
                len(inside),
                sum(int(b[1]) for b in inside),
                percentiles(latencies),
                percentiles(window.independent_ms),
                window.unconfirmed,
                window.stage.target_p99_ms,
                percentiles([float(b[4]) for b in inside]),
            )
        )
    return LatencyRun(results, result.peak_rss_bytes, result.cpu_seconds, result.wall_seconds)


# --------------------------------------------------------------------------------------------
# One big transaction
# --------------------------------------------------------------------------------------------


@dataclass
class BigTransaction:
    rows: int
    kind: str
    write_seconds: float
    wal_bytes: int
    raw: Measured
    idle: CdcRun
    run: CdcRun
    visible_ms: float | None
    """Outside observer: the source COMMIT returned -> the slot seen confirmed past it (which
    clinipipe does only after the DuckDB COMMIT), with `cdc start` streaming all along."""
    streaming_rss_bytes: int
    """Peak RSS of that streaming `cdc start` (it applied the transaction as it arrived)."""


_BIG_INSERT = _INSERT_WITH_LSN.replace("INSERT INTO enc", "INSERT INTO big")


def big_transaction(project: Project, rows: int, first_id: int) -> BigTransaction:
    """One `rows`-row INSERT transaction into `big`, written while `cdc start` streams (peak
    RSS of that process, commit -> visible by the slot observer); then the same transaction
    replayed from a saved copy of the slot by `cdc start --until-caught-up` (peak RSS, time)
    and by the raw read."""
    dsn = project.dsn
    print("big transaction: idle baseline ...", file=sys.stderr)
    idle = catch_up(project, "clinipipe, nothing to apply")
    copy_slot(dsn, SLOT, "bench_big_saved")
    project.save_warehouse()
    child = spawn(project.command("cdc", "start"), project.env, project.directory)
    poller = ConfirmPoller(dsn, SLOT)
    visible_ms: float | None = None
    try:
        wait_streaming(dsn, child.proc)
        poller.start()
        before = current_lsn(dsn)
        con = psycopg2.connect(dsn)
        try:
            with con.cursor() as cur:
                cur.execute("SET synchronous_commit = on")
                started = time.perf_counter()
                cur.execute(_BIG_INSERT, {"first": first_id, "last": first_id + rows - 1})
                lsn = int(cur.fetchone()[0])
                sent = time.perf_counter()
                con.commit()
                write_seconds = time.perf_counter() - started
        finally:
            con.close()
        wal_bytes = current_lsn(dsn) - before
        print(f"  INSERT of {rows:,} rows: {write_seconds:.1f} s; waiting for CDC ...",
              file=sys.stderr)  # fmt: skip
        deadline = time.perf_counter() + 900
        while poller.confirmed <= lsn and time.perf_counter() < deadline:
            if child.proc.poll() is not None:
                raise RuntimeError("cdc start exited during the big transaction")
            time.sleep(0.02)
        seen = poller.confirmed_past(lsn)
        visible_ms = None if seen is None else (seen - sent) * 1000
    finally:
        poller.stopping.set()
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGINT)
        streaming = reap(child, 300)
    if streaming.returncode not in (0,):
        raise RuntimeError(f"cdc start failed (exit {streaming.returncode}):\n"
                           f"{_tail(streaming.stderr)}")  # fmt: skip
    check_table(project, "big")
    # Replay: the same transaction from the saved slot, into the warehouse as it was before.
    print("  replay: raw read and cdc start --until-caught-up ...", file=sys.stderr)
    copy_slot(dsn, "bench_big_saved", "bench_big_raw")
    try:
        raw = raw_child(project, "bench_big_raw", 1, "quiet", 0)
    finally:
        drop_slot(dsn, "bench_big_raw")
    drop_slot(dsn, SLOT)
    copy_slot(dsn, "bench_big_saved", SLOT)
    drop_slot(dsn, "bench_big_saved")
    project.restore_warehouse()
    run = catch_up(project, "clinipipe, default options")
    if run.changes != rows:
        raise RuntimeError(f"big transaction: applied {run.changes:,} of {rows:,} changes")
    run.check = check_table(project, "big")
    return BigTransaction(rows, "INSERT", write_seconds, wal_bytes, raw, idle, run, visible_ms,
                          streaming.peak_rss_bytes)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    check: str
    value: float | None
    target: str
    passed: bool | None
    """True/False only when judged; None: not judged (see `reasons`)."""
    reasons: list[str] = field(default_factory=list)
    """Why it was not judged: the measure is missing, the offered load was not delivered, or a
    correctness check failed."""


def latency_verdict(result: LatencyResult) -> Verdict:
    """The latency target names the time from the source COMMIT until the change is visible
    in the target, so it is judged on the outside observer (the slot confirmed past the
    transaction, which clinipipe does only after its DuckDB COMMIT, minus the moment COMMIT was
    sent), never on clinipipe's own figure (taken before its COMMIT, a lower bound). Judged
    only when the stage reached its offered rate, every transaction was seen confirmed and
    every one was applied."""
    observed = result.independent_ms["p99"] if result.independent_ms else None
    reasons = []
    if observed is None:
        reasons.append("no outside measurement")
    named = NAMED_RATES.get(result.target_p99_ms)
    if named is not None and result.offered_events_per_second < 0.999 * named:
        reasons.append(f"offered {result.offered_events_per_second:,.1f} events/s, the target "
                       f"names {named:,.1f}")  # fmt: skip
    if result.achieved_events_per_second < 0.95 * result.offered_events_per_second:
        reasons.append(
            f"offered {result.offered_events_per_second:,.1f} events/s, reached only "
            f"{result.achieved_events_per_second:,.1f}"
        )
    if result.unconfirmed:
        reasons.append(f"{result.unconfirmed:,} transactions never seen confirmed")
    if result.applied_transactions != result.transactions:
        reasons.append(
            f"{result.applied_transactions:,} transactions applied of {result.transactions:,}"
        )
    passed = None if reasons or observed is None else observed <= result.target_p99_ms
    return Verdict(
        f"latency p99 (ms, commit -> visible, outside observer), {result.stage}",
        observed,
        f"<= {result.target_p99_ms:,.0f} ms",
        passed,
        reasons,
    )


def verdicts(summaries: list[MethodSummary], lat: LatencyRun, big: BigTransaction) -> list[Verdict]:
    found = []
    for s in summaries:
        if s.method != CLINIPIPE_METHOD:
            continue
        found.append(Verdict(
            f"throughput, mixed workload, median wall incl. start-up ({s.condition}), changes/s",
            s.median_rate, f">= {TARGET_CHANGES_PER_SECOND:,}",
            s.median_rate >= TARGET_CHANGES_PER_SECOND))  # fmt: skip
        found.append(Verdict(
            f"vs raw pgoutput read, median wall incl. start-up ({s.condition})",
            s.vs_raw_median, f">= {TARGET_VS_RAW}x", s.vs_raw_median >= TARGET_VS_RAW))  # fmt: skip
    found.extend(latency_verdict(result) for result in lat.results)
    rss = max(big.run.peak_rss_bytes, big.streaming_rss_bytes)
    small = big.rows < TARGET_RSS_ROWS
    found.append(
        Verdict(f"peak RSS (MB), one {big.rows:,}-row transaction", rss / 1e6,
                f"<= {TARGET_RSS_BYTES / 1e6:,.0f} MB", None if small else rss <= TARGET_RSS_BYTES,
                [f"the target names a {TARGET_RSS_ROWS:,}-row transaction"] if small else [])
    )  # fmt: skip
    return found


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _ms(values: dict[str, float] | None) -> list[str]:
    if values is None:
        return ["—"] * 4
    return [f"{values[k]:,.0f}" for k in ("p50", "p95", "p99", "max")]


def print_report(
    console: Console,
    header: dict[str, Any],
    work: Workload,
    summaries: list[MethodSummary],
    lat: LatencyRun,
    big: BigTransaction,
    found: list[Verdict],
) -> None:
    console.print(
        f"clinipipe CDC benchmark (commit {header['clinipipe_commit']}; the working tree as is): "
        f"PostgreSQL {header['postgres']}, duckdb {header['duckdb']}, {header['cpus']} CPUs, "
        f"best of {header['repeat']} round(s), total run {header['run_seconds']:.0f} s"
        + (" [--quick]" if header["quick"] else "")
    )
    console.print(
        "load average (1/5/15 min) before "
        + "/".join(f"{x:.1f}" for x in header["load_average_before"])
        + ", after "
        + "/".join(f"{x:.1f}" for x in header["load_average_after"])
        + " (a shared machine: compare ratios within this run)"
    )
    console.print(
        f"setup: enc {header['rows']:,} rows, big 1,000 rows (+ the {header['big_rows']:,}-row "
        f"INSERT of the last stage); "
        f"deploy {header['deploy_seconds']:.1f} s, backfill {header['backfill_seconds']:.1f} s"
    )
    console.print(
        f"workload: {work.changes:,} changes ({work.updates:,} updates, {work.inserts:,} inserts, "
        f"{work.deletes:,} deletes) in {work.transactions:,} transactions, written in "
        f"{work.seconds:.1f} s ({work.changes / work.seconds:,.0f} changes/s), "
        f"{work.wal_bytes / 1e6:,.0f} MB of WAL"
    )
    table = Table(
        title="Apply throughput, best and median of the interleaved rounds (wall s: the process "
        "from spawn to exit, start-up included; the ratio is raw wall / method wall in the same "
        "condition; busy: one CPU burner per core running)"
    )
    for column in ("method", "condition", "rounds", "best wall s", "median wall s",
                   "best changes/s", "median changes/s", "vs raw (best)", "vs raw (median)",
                   "median inside s", "median client CPU s", "peak RSS MB", "load 1 min",
                   "note"):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("method", "condition", "note") else "right"
        )
    for m in summaries:
        table.add_row(
            m.method, m.condition, str(m.rounds), f"{m.best_wall:.2f}", f"{m.median_wall:.2f}",
            f"{m.best_rate:,.0f}", f"{m.median_rate:,.0f}", f"{m.vs_raw_best:.2f}x",
            f"{m.vs_raw_median:.2f}x", f"{m.median_inside:.2f}", f"{m.median_cpu:.2f}",
            f"{m.peak_rss_bytes / 1e6:,.0f}", f"{m.load_1min[0]:.1f}-{m.load_1min[1]:.1f}",
            (f"{m.batches} batches; " if m.batches else "") + m.check,
        )  # fmt: skip
    console.print(table)
    table = Table(
        title="End-to-end latency, source commit -> applied in DuckDB, ms (clinipipe: its own "
        "cdc_batches.latencies_ms; independent: slot confirmed_flush_lsn polled, an upper bound)"
    )
    for column in ("stage", "offered ev/s", "achieved ev/s", "tx", "events", "batches",
                   "clinipipe p50", "p95", "p99", "max", "independent p50", "p95 ", "p99 ",
                   "max ", "note"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("stage", "note") else "right")
    for r in lat.results:
        note = f"{r.applied_transactions:,} tx in cdc_batches"
        if r.in_clinipipe_ms:
            note += f"; batch recv->applied p50 {r.in_clinipipe_ms['p50']:,.0f} ms"
        if r.unconfirmed:
            note += f"; {r.unconfirmed} never seen confirmed"
        table.add_row(
            r.stage, f"{r.offered_events_per_second:,.1f}",
            f"{r.achieved_events_per_second:,.1f}", f"{r.transactions:,}", f"{r.events:,}",
            f"{r.batches:,}", *_ms(r.clinipipe_ms), *_ms(r.independent_ms), note,
        )  # fmt: skip
    console.print(table)
    console.print(
        "latency writers: synchronous_commit = "
        + ("on" if header["writers_synchronous_commit"] else "off (embedded default)")
        + "; a reader cannot poll the DuckDB file while CDC holds it read-write, hence the "
        "source-side independent check"
    )
    console.print(
        f"cdc start during the latency stages: peak RSS {lat.peak_rss_bytes / 1e6:,.0f} MB, "
        f"client CPU {lat.cpu_seconds:.1f} s over {lat.wall_seconds:.1f} s wall"
    )
    table = Table(title=f"One {big.rows:,}-row {big.kind} transaction (written in "
                  f"{big.write_seconds:.1f} s, {big.wal_bytes / 1e6:,.0f} MB of WAL)")  # fmt: skip
    for column in ("method", "changes", "inside s", "wall s", "client CPU s", "peak RSS MB",
                   "note"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("method", "note") else "right")
    table.add_row(
        "cdc start, streaming while the transaction was written", f"{big.rows:,}", "—", "—",
        "—", f"{big.streaming_rss_bytes / 1e6:,.0f}",
        "commit -> visible (slot observer): " + _fmt(big.visible_ms, ",.0f", " ms"),
    )  # fmt: skip
    table.add_row(
        big.raw.method, f"{big.raw.changes:,}", f"{big.raw.inside_seconds:.2f}",
        f"{big.raw.wall_seconds:.2f}", f"{big.raw.cpu_seconds:.2f}",
        f"{big.raw.peak_rss_bytes / 1e6:,.0f}", big.raw.check,
    )  # fmt: skip
    for run in (big.run, big.idle):
        table.add_row(
            f"{run.label} (replayed)" if run is big.run else run.label, f"{run.changes:,}",
            f"{run.seconds:.2f}", f"{run.wall_seconds:.2f}", f"{run.cpu_seconds:.2f}",
            f"{run.peak_rss_bytes / 1e6:,.0f}", run.check or "baseline",
        )  # fmt: skip
    console.print(table)
    table = Table(title="Targets (clinipipe, default options)")
    for column in ("check", "measured", "target", "result"):
        table.add_column(column, justify="right" if column == "measured" else "left")
    for v in found:
        result = {True: "[green]met[/]", False: "[red]missed[/]", None: "NOT JUDGED"}[v.passed]
        if v.reasons:
            result += f" ({'; '.join(v.reasons)})"
        table.add_row(v.check, _fmt(v.value, ",.2f"), v.target, result)
    console.print(table)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    """Output of a read-only git command in this repository ('' if git fails)."""
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],  # never rewrites the index
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def _git_head() -> str:
    """The commit, with "+ uncommitted changes" when tracked files differ from it."""
    head = _git("rev-parse", "--short", "HEAD") or "?"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head} + uncommitted changes" if dirty else head


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark clinipipe CDC against the raw pgoutput read (see the docstring)."
    )
    parser.add_argument("--changes", type=int, default=1_000_000, help="mixed workload size")
    parser.add_argument("--tx-changes", type=int, default=1_000, help="changes per transaction")
    parser.add_argument("--rows", type=int, default=200_000, help="initial rows of enc")
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="rows of the big tx")
    parser.add_argument(
        "--latency-seconds", type=float, default=60.0, help="duration at 1 k events/min"
    )
    parser.add_argument("--burst-seconds", type=float, default=15.0, help="duration of the burst")
    parser.add_argument("--burst-rate", type=float, default=20_000.0, help="burst events/s")
    parser.add_argument("--burst-tx-rows", type=int, default=200, help="rows per burst tx")
    parser.add_argument("--burst-writers", type=int, default=2, help="burst writer threads")
    parser.add_argument(
        "--async-commit", action="store_true",
        help="latency writers keep the embedded server's synchronous_commit = off",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="rounds of the throughput methods per condition (interleaved); best and median",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-only", action="store_true",
        help="skip the 'busy' condition (a CPU burner per core during the throughput rounds)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="a sanity run: 100 k changes, 50 k + 100 k rows, 10 s + 5 s of latency",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.changes, args.rows, args.big_rows = 100_000, 50_000, 100_000
        args.latency_seconds, args.burst_seconds = 10.0, 5.0
    return args


def main() -> None:
    args = parse_args()
    run_started = time.perf_counter()
    load_before = os.getloadavg()
    # A larger max_wal_size: no checkpoint storm in the middle of a measure.
    with (
        EmbeddedPostgres(settings={"max_wal_size": "8GB"}) as pg,
        tempfile.TemporaryDirectory(prefix="clinipipe-bench-cdc-") as tmp,
    ):
        dsn = pg.create_database("bench")
        version = str(execute(dsn, "SHOW server_version"))
        started = time.perf_counter()
        create_tables(dsn, args.rows, 1_000)  # `big` receives the --big-rows INSERT later
        print(f"generated the tables in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        project = Project(dsn, Path(tmp) / "project", Path(tmp) / "saved")
        project.directory.mkdir()
        project.spec.write_text(_SPEC)
        project.no_scan_spec.write_text(_SPEC + "phi: {watch: []}\n")
        deploy = project.run("deploy")
        backfill = project.run("backfill", "--json")
        print(f"deploy + backfill in {deploy.wall_seconds + backfill.wall_seconds:.1f} s",
              file=sys.stderr)  # fmt: skip
        ids = IdSpace(low=1, high=args.rows + 1)

        conditions = ["quiet", "busy"] if not args.quiet_only else ["quiet"]
        work, measured = throughput(
            project, ids, args.changes, args.tx_changes, args.repeat, conditions
        )
        summaries = summarize(measured)
        stages = [
            Stage("1 k events/min, 1-row tx", STEADY_EVENTS_PER_SECOND, 1, args.latency_seconds,
                  1, TARGET_STEADY_P99_MS, not args.async_commit),
            Stage(f"{args.burst_rate / 1000:g} k events/s, {args.burst_tx_rows}-row tx",
                  args.burst_rate, args.burst_tx_rows, args.burst_seconds, args.burst_writers,
                  TARGET_BURST_P99_MS, not args.async_commit, mixed=True),
        ]  # fmt: skip
        lat = latency(project, ids, stages)
        check_table(project, "enc")
        big = big_transaction(project, args.big_rows, 1_001)

    found = verdicts(summaries, lat, big)
    header = {
        "postgres": version,
        "duckdb": duckdb.__version__,
        "clinipipe_commit": _git_head(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": args.rows,
        "big_rows": args.big_rows,
        "changes": args.changes,
        "tx_changes": args.tx_changes,
        "repeat": args.repeat,
        "quick": args.quick,
        "writers_synchronous_commit": not args.async_commit,
        "deploy_seconds": deploy.wall_seconds,
        "backfill_seconds": backfill.wall_seconds,
        "run_seconds": time.perf_counter() - run_started,
    }
    if args.json:
        document = {
            **header,
            "workload": asdict(work),
            "runs": [asdict(m) for m in measured],
            "summaries": [
                {**asdict(m), "best_rate": m.best_rate, "median_rate": m.median_rate}
                for m in summaries
            ],
            "latency": asdict(lat),
            "big_transaction": asdict(big),
            "targets": [asdict(v) for v in found],
        }
        print(json.dumps(document, indent=2))
        return
    print_report(Console(width=260), header, work, summaries, lat, big, found)


if __name__ == "__main__":
    main()
