"""`clinipipe bench`: the measurements of clinipipe.bench run against a project's pipeline.

* :func:`bench_dashboard`: the spec's dashboards, open loop, from separate processes, against
  the published interactive tables (parameters drawn from the data those tables serve).
* :func:`bench_cdc`: rows inserted at a constant rate into the synthetic hospital's ``labs``
  on the source, and when each became visible in the target (the slot's confirmed position,
  observed from outside the CDC process) and in an interactive table serving ``lab_id``.
  Uses the running ``cdc start`` when there is one, else runs one as a child process for the
  measurement. The rows it inserted are deleted from the source afterwards (and that delete is
  replicated) unless `keep_rows`.
* :func:`bench_backfill`: a fresh backfill of the source's tables into a throwaway warehouse,
  on a slot of its own (dropped afterwards): rows/s and MB/s.

Every function returns one section of the JSON document `docs/BENCH_JSON.md` describes
(:func:`document` adds the header) and writes a metering row (job ``bench:<kind>``) into the
project's warehouse when it can open it; while `cdc start` holds the warehouse the row cannot
be written from here and the section says so (`metering.recorded` false, with the reason).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clinipipe import __version__
from clinipipe.bench.cdc_latency import (
    PacedWriter,
    ServingWatcher,
    SlotWatcher,
    visible_latencies,
)
from clinipipe.bench.histogram import histogram
from clinipipe.bench.loadgen import LoadResult, percentiles, run_processes
from clinipipe.pipeline import control
from clinipipe.pipeline.dashboards import DashboardRunner
from clinipipe.source.postgres import connect
from clinipipe.source.replication import drop_slot, slot_info
from clinipipe.spec.checks import dashboard_table
from clinipipe.spec.loader import LoadedSpec, load_spec
from clinipipe.spec.model import DuckDBTarget
from clinipipe.targets import open_target
from clinipipe.targets.base import TargetError
from clinipipe.targets.duckdb.core import encryption_key_of
from clinipipe.targets.metering import CpuClock, MeteringRow
from clinipipe.targets.serving_files import ServingError

SCHEMA_VERSION = 1
"""Version of the `--json` document (docs/BENCH_JSON.md); raised on any incompatible change."""

BENCH_TEST_NAME = "clinipipe bench"
"""`labs.test_name` of the rows `bench cdc` inserts (how they are found and deleted)."""

Progress = Callable[[str], None]


class BenchError(Exception):
    """A benchmark cannot run as asked. `usage`: the request or the spec is wrong (exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def _quiet(_: str) -> None:
    pass


# --- the document ---------------------------------------------------------------------------------


def document(command: str, sections: dict[str, Any], load_before: tuple[float, ...]) -> dict:
    """The `--json` document: header (schema version, machine, load average before and after)
    and one section per benchmark run."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "clinipipe_version": __version__,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count() or 1,
            "platform": platform.platform(terse=True),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        **sections,
    }


def latency_summary(values_ms: list[float]) -> dict[str, Any]:
    """count, p50/p95/p99/p99_9/max (null when nothing was measured) and the histogram."""
    cuts = percentiles(values_ms)
    keys = ("p50", "p95", "p99", "p99_9", "max")
    return {
        "count": len(values_ms),
        **{k: (round(cuts[k], 3) if cuts else None) for k in keys},
        "histogram": [b.as_dict() for b in histogram(values_ms)],
    }


def meter(
    loaded: LoadedSpec,
    job: str,
    role: str,
    started: dt.datetime,
    rows: int | None,
    nbytes: int | None,
    cpu: CpuClock,
) -> dict[str, Any]:
    """One metering row for a benchmark run (job `bench:<kind>`, on the warehouse of `role`),
    in its own transaction. Returns {recorded, job_id, note}: not recorded when `cdc start`
    holds the warehouse, or the warehouse was never deployed (never raises)."""
    wh = getattr(loaded.spec.warehouses, role)
    row = MeteringRow(job=job, warehouse=wh.name, warehouse_role=role, size=wh.size,
                      started_at=started, ended_at=dt.datetime.now(dt.timezone.utc), rows=rows,
                      nbytes=nbytes, cpu_seconds=cpu.seconds())  # fmt: skip
    if control.hello(loaded) is not None:
        return {"recorded": False, "job_id": None,
                "note": "cdc start holds the warehouse: run the benchmark with CDC stopped to "
                "meter it"}  # fmt: skip
    try:
        with open_target(loaded) as target:
            if not target.table_exists("_clinipipe", "metering"):
                return {"recorded": False, "job_id": None, "note": "warehouse not deployed"}
            target.execute_atomically([target.metering_insert_sql(row)])
    except TargetError as exc:
        return {"recorded": False, "job_id": None, "note": str(exc).splitlines()[0][:200]}
    return {"recorded": True, "job_id": row.job_id, "note": None}


# --- dashboards -----------------------------------------------------------------------------------

_COMPARED = r"(\w+)\s*(?:=|<=|>=|<|>)\s*\${name}\b"


def param_pools(loaded: LoadedSpec, runner: DashboardRunner, size: int = 1000) -> dict:
    """For each dashboard, for each parameter: up to `size` distinct values taken from the
    interactive table it reads, from the column the query compares the parameter with
    (``col = $param``), else the column named like the parameter. BenchError when a table is
    not published or holds no value."""
    pools: dict[str, dict[str, list[Any]]] = {}
    for board in loaded.spec.dashboards:
        table = dashboard_table(loaded.spec, board.sql)
        assert table is not None  # the spec checks guarantee it
        pools[board.name] = {}
        for param in board.params:
            found = re.search(_COMPARED.replace("{name}", re.escape(param)), board.sql)
            column = found.group(1) if found else param
            sql = (f'SELECT DISTINCT "{column}" FROM serving."{table}" WHERE "{column}" IS NOT '
                   f'NULL ORDER BY hash("{column}") LIMIT {int(size)}')  # fmt: skip
            try:
                values = [r[0] for r in runner.reader.query(table, sql)]
            except ServingError:
                raise BenchError(
                    f"interactive table {table} is not published yet: run `clinipipe publish` "
                    "(or `clinipipe cdc start`, which publishes) first"
                ) from None
            except Exception as exc:  # the column is not there: say which
                raise BenchError(
                    f"cannot draw values for ${param} of dashboard {board.name} from "
                    f"{table}.{column} ({type(exc).__name__}); name the parameter like the "
                    "column it is compared with",
                    usage=True,
                ) from None
            if not values:
                raise BenchError(f"{table} holds no {column} value to draw ${param} from")
            pools[board.name][param] = values
    return pools


def _dashboard_client(argument: tuple[str, dict, int]) -> tuple[Callable, Callable[[], None]]:
    """The client of one load process: its own DashboardRunner (module level: pickled by name
    into spawned processes)."""
    spec_path, pools, seed = argument
    runner = DashboardRunner(load_spec(spec_path), recheck_seconds=0.1)
    rng = random.Random(seed)
    names = sorted(pools)

    def next_request(_: int) -> tuple[str, Callable[[], object]]:
        name = rng.choice(names)
        params = {p: rng.choice(values) for p, values in pools[name].items()}
        return name, lambda: runner.run(name, params)

    return next_request, runner.close


def bench_dashboard(
    loaded: LoadedSpec,
    *,
    rate: float,
    seconds: float,
    processes: int = 1,
    warmup: float = 1.0,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """The `dashboard` section (docs/BENCH_JSON.md)."""
    if not isinstance(loaded.spec.target, DuckDBTarget):
        raise BenchError("bench dashboard runs against a DuckDB warehouse's published "
                         "interactive tables", usage=True)  # fmt: skip
    if not loaded.spec.dashboards:
        raise BenchError("the spec has no dashboards: to benchmark (add them under dashboards:)",
                         usage=True)  # fmt: skip
    began = dt.datetime.now(dt.timezone.utc)
    cpu = CpuClock()
    with DashboardRunner(loaded) as runner:
        pools = param_pools(loaded, runner)
    cdc_running = control.hello(loaded) is not None
    progress(f"dashboards: {rate:g} requests/s for {seconds:g} s from {processes} process(es)"
             + (" while cdc start runs" if cdc_running else ""))  # fmt: skip
    result: LoadResult = run_processes(
        _dashboard_client, (str(loaded.path), pools, 17), rate=rate, seconds=seconds,
        processes=processes, warmup=warmup,
    )  # fmt: skip
    latencies = result.all_latencies_ms
    return {
        "offered_rate": round(rate, 3),
        "achieved_rate": round(result.achieved_rate, 3),
        "seconds": seconds,
        "wall_seconds": round(result.wall_seconds, 3),
        "processes": processes,
        "requests": result.sent,
        "completed": result.completed,
        "errors": result.error_count,
        "error_types": sorted(result.error_types),
        "late_submits": result.late_submits,
        "cdc_running": cdc_running,
        "latency_ms": latency_summary(latencies),
        "dashboards": {
            name: {
                **latency_summary(result.latencies_ms.get(name, [])),
                "errors": result.errors.get(name, 0),
            }
            for name in sorted(pools)
        },
        "metering": meter(
            loaded, "bench:dashboard", "interactive", began, result.completed, None, cpu
        ),
    }


# --- CDC ------------------------------------------------------------------------------------------

_POOL_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS clinipipe_bench_pool AS "
    "SELECT (row_number() OVER () - 1)::bigint AS k, encounter_id, patient_id "
    "FROM (SELECT encounter_id, patient_id FROM encounters ORDER BY random() LIMIT 5000) s"
)


def _labs_insert(cur: Any, first_id: int, count: int) -> int:
    """Insert `count` bench lab results (ids first_id..) for sampled encounters, server-side."""
    cur.execute(_POOL_SQL)
    cur.execute(
        "INSERT INTO labs (lab_id, encounter_id, patient_id, loinc_code, test_name, "
        "value_numeric, unit, ref_low, ref_high, abnormal_flag, collected_ts) "
        "SELECT g, p.encounter_id, p.patient_id, '2345-7', %s, 99, 'mg/dL', 70, 110, NULL, "
        "clock_timestamp() FROM generate_series(%s::bigint, %s::bigint) g "
        "JOIN clinipipe_bench_pool p ON p.k = g %% (SELECT count(*) FROM clinipipe_bench_pool)",
        (BENCH_TEST_NAME, first_id, first_id + count - 1),
    )
    return int(cur.rowcount)


def _require_labs(loaded: LoadedSpec) -> None:
    if not any(t.name == "labs" for t in loaded.spec.source.tables):
        raise BenchError("bench cdc writes lab results into the synthetic hospital's labs table "
                         "(clinipipe synth); this spec does not replicate a table named labs",
                         usage=True)  # fmt: skip


def _source_value(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    con = connect(dsn, application_name="clinipipe-bench")
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        con.close()


@contextlib.contextmanager
def cdc_process(loaded: LoadedSpec, *, timeout: float = 120.0) -> Iterator[int | None]:
    """A `cdc start` for the duration of the block: the running one when there is one (yields
    None), else a child process (yields its pid) started here, waited for until its slot is
    active, and stopped with SIGINT at the end (it finishes its batch, refreshes and
    publishes); killed if it does not stop within `timeout`."""
    if control.hello(loaded) is not None:
        yield None
        return
    cmd = [sys.executable, "-m", "clinipipe", "-q", "-c", str(loaded.path), "cdc", "start"]
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in finally; not a pipe: a full pipe would stall CDC)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True,
                            cwd=loaded.directory)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            info = slot_info(loaded.spec.source.dsn, loaded.spec.source.slot)
            if info is not None and info.active and control.hello(loaded) is not None:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().strip().splitlines()[-1:] or ["(no output)"]
                raise BenchError(f"cdc start did not start streaming (exit {proc.poll()}): "
                                 f"{tail[0][:300]}")  # fmt: skip
            time.sleep(0.1)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _serving_lab_table(loaded: LoadedSpec, wait: float) -> str | None:
    """An interactive table whose published rows carry `lab_id` (None when none does), waiting
    up to `wait` seconds for tables not published yet (a `cdc start` that just began)."""
    from clinipipe.targets.serving_files import ServingReader

    target = loaded.spec.target
    if not isinstance(target, DuckDBTarget):
        return None
    deadline = time.monotonic() + wait
    with ServingReader(loaded.resolve(target.path),
                       encryption_key=encryption_key_of(loaded)) as reader:  # fmt: skip
        while True:
            unpublished = False
            for table in loaded.spec.interactive_tables:
                sql = f'SELECT * FROM serving."{table.name}" LIMIT 0'
                try:
                    columns = reader.execute(table.name, sql, {})[0]
                except ServingError:
                    unpublished = True
                    continue
                if "lab_id" in columns:
                    return table.name
            if not unpublished or time.monotonic() > deadline:
                return None
            time.sleep(0.25)


def bench_cdc(
    loaded: LoadedSpec,
    *,
    rate: float,
    seconds: float,
    settle: float = 60.0,
    serving_wait: float = 30.0,
    keep_rows: bool = False,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """The `cdc` section (docs/BENCH_JSON.md). `settle`: how long to wait after the writer
    stopped for the last row to become visible in the target; `serving_wait`: in the
    interactive table."""
    _require_labs(loaded)
    dsn, slot = loaded.spec.source.dsn, loaded.spec.source.slot
    began = dt.datetime.now(dt.timezone.utc)
    cpu = CpuClock()
    if slot_info(dsn, slot) is None:
        raise BenchError(f"replication slot {slot} does not exist: run `clinipipe backfill` "
                         "first (CDC streams from the slot the backfill creates)")  # fmt: skip
    first_id = int(_source_value(dsn, "SELECT coalesce(max(lab_id), 0) FROM labs")) + 10**9
    serving_table = None
    own: int | None = None
    with cdc_process(loaded) as pid:
        own = pid
        serving_table = _serving_lab_table(loaded, serving_wait)
        watcher = SlotWatcher(dsn, slot)
        watcher.start()
        serving = None
        if serving_table is not None:
            assert isinstance(loaded.spec.target, DuckDBTarget)
            serving = ServingWatcher(loaded.resolve(loaded.spec.target.path), serving_table,
                                     "lab_id", first_id,
                                     encryption_key=encryption_key_of(loaded))  # fmt: skip
            serving.start()
        writer = PacedWriter(dsn, _labs_insert, rate=rate, seconds=seconds, first_id=first_id)
        progress(
            f"cdc: inserting {rate:,.0f} rows/s into labs for {seconds:g} s"
            + ("" if own is None else " (cdc start started for the measurement)")
        )
        writer.start()
        try:
            while writer.is_alive():
                writer.join(timeout=0.2)
        except BaseException:
            writer.stop.set()
            writer.join()
            raise
        last = writer.transactions[-1].lsn if writer.transactions else 0
        applied_all = watcher.wait_for(last, settle) if writer.transactions else True
        if serving is not None:
            deadline = time.monotonic() + serving_wait
            wanted = {t.first_id for t in writer.transactions}
            while time.monotonic() < deadline and not wanted <= set(serving.first_seen):
                time.sleep(0.2)
            serving.stop.set()
            serving.join()
        reported = None
        with contextlib.suppress(Exception):
            from clinipipe.pipeline.operations import cdc_status

            reported = cdc_status(loaded).get("latency_ms")
        removed = 0
        if not keep_rows:
            con = connect(dsn, application_name="clinipipe-bench")
            try:
                with con.cursor() as cur:
                    cur.execute("DELETE FROM labs WHERE lab_id >= %s AND test_name = %s",
                                (first_id, BENCH_TEST_NAME))  # fmt: skip
                    removed = cur.rowcount
                    con.commit()
                    cur.execute("SELECT pg_current_wal_insert_lsn()::text")
                    row = cur.fetchone()
                con.commit()
            finally:
                con.close()
            from clinipipe.source.pgoutput import lsn_to_int

            if row:
                watcher.wait_for(lsn_to_int(row[0]), settle)
        watcher.stop.set()
        watcher.join()
    if writer.error:
        raise BenchError(f"the bench writer failed ({writer.error})")
    txs = writer.transactions
    target_ms, target_missing = visible_latencies(txs, positions=watcher.seen)
    section: dict[str, Any] = {
        "offered_rate": round(rate, 3),
        "achieved_rate": round(writer.rows / max(writer.ended_at - writer.started_at, 1e-9), 3),
        "seconds": seconds,
        "rows": writer.rows,
        "transactions": len(txs),
        "rows_per_transaction": round(writer.rows / len(txs), 2) if txs else 0,
        "cdc_process": "started" if own is not None else "running",
        "applied_all": bool(applied_all and target_missing == 0),
        "writer_lag_ms": latency_summary([(t.committed - t.due) * 1000 for t in txs]),
        "target": {**latency_summary(target_ms), "unseen_transactions": target_missing,
                   "observer": "slot confirmed_flush_lsn polled every 5 ms (upper bound)"},
        "interactive": None,
        "cdc_reported_ms": reported,
        "rows_deleted_after": removed,
    }  # fmt: skip
    if serving is not None:
        served_ms, unseen = visible_latencies(txs, first_seen=serving.first_seen)
        section["interactive"] = {
            "table": serving_table, **latency_summary(served_ms), "unseen_transactions": unseen,
            "generations_seen": len(serving.generations),
            "observer": "published generation files polled every 0.2 s",
        }  # fmt: skip
    section["metering"] = meter(loaded, "bench:cdc", "incremental", began, writer.rows, None, cpu)
    return section


# --- backfill -------------------------------------------------------------------------------------


def bench_backfill(
    loaded: LoadedSpec, *, workers: int = 4, progress: Progress = _quiet
) -> dict[str, Any]:
    """The `backfill` section (docs/BENCH_JSON.md): deploy + backfill of every spec table into
    a throwaway DuckDB warehouse on a slot of its own (`<slot>_bench`), both removed after."""
    from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
    from clinipipe.pipeline.deploy import deploy

    spec = loaded.spec
    if not isinstance(spec.target, DuckDBTarget):
        raise BenchError("bench backfill loads into a throwaway DuckDB warehouse; the spec's "
                         "target must be duckdb", usage=True)  # fmt: skip
    began = dt.datetime.now(dt.timezone.utc)
    cpu = CpuClock()
    slot = f"{spec.source.slot}_bench"[:63]
    tmp = Path(tempfile.mkdtemp(prefix="clinipipe-bench-backfill-"))
    bench_spec = spec.model_copy(update={
        "source": spec.source.model_copy(update={"slot": slot}),
        "target": spec.target.model_copy(update={"path": str(tmp / "bench.duckdb")}),
    })  # fmt: skip
    fresh = dataclasses.replace(loaded, spec=bench_spec)
    try:
        drop_slot(spec.source.dsn, slot)  # a leftover of an interrupted run
        progress("backfill: deploying a throwaway warehouse")
        deploy(fresh)
        progress(f"backfill: loading every table with {workers} workers")
        summary = run_backfill(fresh, BackfillOptions(workers=workers))
    finally:
        with contextlib.suppress(Exception):
            drop_slot(spec.source.dsn, slot)
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = max(summary.seconds, 1e-9)
    return {
        "rows": summary.rows,
        "bytes": summary.bytes,
        "seconds": round(summary.seconds, 3),
        "rows_per_second": round(summary.rows / seconds, 1),
        "mb_per_second": round(summary.bytes / 1e6 / seconds, 3),
        "workers": workers,
        "tables": {
            t.table: {
                "rows": t.rows,
                "bytes": t.bytes,
                "rows_per_second": round(t.rows / t.seconds, 1) if t.seconds else None,
            }
            for t in summary.tables.values()
        },
        "metering": meter(
            loaded, "bench:backfill", "initialization", began, summary.rows, summary.bytes, cpu
        ),
    }
