"""Benchmark the spec's dashboards against the interactive tables while CDC writes.

Builds a hospital of ``--patients`` patients (``_hospital.py``: patients, encounters, labs;
dynamic tables patient_summary, daily_census, recent_labs with ``--lag``; interactive tables
patient_dashboard, lab_dashboard, census_dashboard; the three dashboards of the issue: a
patient's summary by id, a patient's last 10 labs, a day's census by department), deploys,
backfills and builds it with the real pipeline, then:

1. **Anchor** (same run): with nothing else running, a separate client process offers
   ``--rate`` dashboard queries per second, open loop (``clinipipe.bench.loadgen``), for
   ``--anchor-seconds``, against the published interactive tables.
2. **Under CDC**: ``clinipipe cdc start`` runs in a subprocess (it applies changes, refreshes
   the dynamic tables when their lag is due and publishes new generations of the interactive
   tables), while a writer thread commits ``--events`` changes per second on the source (every
   100 ms one transaction: 30 % new labs for random patients, 70 % updates of random labs and
   encounters), and the client process offers the same load for ``--seconds``.

The client (a separate process, as a dashboard server would be) uses
``clinipipe.dashboards.DashboardRunner``: each query runs on the current published generation
of its table, which it follows as publishes happen. Latency is measured from each request's
due time (open loop), so queueing counts. Reported: p50/p95/p99/max per dashboard and overall,
errors, the publishes that happened during the window and the generations the client saw,
the events CDC applied. Targets (issue 5): p99 <= 20 ms at 200 queries/s and zero errors during
publishes. A verdict is "met" or "missed" only when the client offered 200 queries/s and
delivered them (every due request sent and completed, the rate reached), no query failed (the
warm-up included) and, for the publish target, publishes did happen in the window and the
client read a new generation; otherwise it says NOT JUDGED and why. A script, never a test::

    python benchmarks/dashboard.py [--patients 200000] [--rate 200] [--seconds 60]
        [--events 1000] [--lag "10 seconds"] [--anchor-seconds 15]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
import _hospital

from clinipipe.bench.loadgen import percentiles, run_open_loop
from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.targets.serving_files import read_current, serving_root

DASHBOARDS = ("patient_overview", "recent_labs_of_patient", "census_by_department")


# --- the client process ------------------------------------------------------------------------


def client(spec: str, rate: float, seconds: float, patients: int, days: list[str]) -> None:
    """Run the open-loop dashboard load and print one JSON line with what it measured."""
    from clinipipe.pipeline.dashboards import DashboardRunner
    from clinipipe.spec import load_spec

    rng = random.Random(5)
    generations: dict[str, set[str]] = {}
    with DashboardRunner(load_spec(spec), recheck_seconds=0.1) as runner:

        def request(i: int) -> tuple[str, Any]:
            pick = rng.random()
            if pick < 0.45:
                name, params = DASHBOARDS[0], {"patient_id": rng.randint(1, patients)}
            elif pick < 0.9:
                name, params = DASHBOARDS[1], {"patient_id": rng.randint(1, patients)}
            else:
                name, params = DASHBOARDS[2], {"day": rng.choice(days)}

            def call() -> None:
                result = runner.run(name, params)
                generations.setdefault(name, set()).add(result.generation)

            return name, call

        warm = run_open_loop(request, rate=rate, seconds=2.0)  # open files, warm caches
        generations.clear()
        began = time.perf_counter()
        result = run_open_loop(request, rate=rate, seconds=seconds)
        wall = time.perf_counter() - began
    print(json.dumps({
        "warmup_errors": warm.error_count,
        "warmup_error_types": sorted(warm.error_types),
        "rate": rate,
        "seconds": seconds,
        "wall_seconds": wall,
        "sent": result.sent,
        "latencies_ms": result.latencies_ms,
        "errors": result.errors,
        "error_types": sorted(result.error_types),
        "generations": {k: sorted(v) for k, v in generations.items()},
    }))  # fmt: skip


def run_client(spec: Path, rate: float, seconds: float, patients: int, days: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--client", str(spec), "--rate", str(rate),
           "--seconds", str(seconds), "--patients", str(patients), "--days", *days]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise SystemExit(f"client failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the writer ----------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Commits `events` changes per second on the source, 1/10 of them every 100 ms, on its own
    connection; writer `index` inserts lab ids of its own range."""

    def __init__(self, dsn: str, events: int, patients: int, labs: int, index: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.events, self.patients, self.labs = dsn, events, patients, labs
        self.index = index
        self.stop = threading.Event()
        self.committed = 0

    def run(self) -> None:
        rng = random.Random(9 + self.index)
        per_tick = max(1, self.events // 10)
        inserts = per_tick * 3 // 10
        updates = per_tick - inserts
        next_id = self.labs + 1 + self.index * 1_000_000_000
        con = psycopg2.connect(self.dsn)
        try:
            with con.cursor() as cur:
                cur.execute("SET synchronous_commit = on")
            con.commit()
            tick = time.perf_counter()
            while not self.stop.is_set():
                new = [(next_id + k, rng.randint(1, self.patients)) for k in range(inserts)]
                next_id += inserts
                changed = [rng.randint(1, self.labs) for _ in range(updates // 2)]
                encounters = [rng.randint(1, self.patients * 10) for _ in range(updates // 2)]
                with con.cursor() as cur:
                    cur.execute(
                        "INSERT INTO labs SELECT n.id, e.encounter_id, e.patient_id, '2345-7', "
                        "'Glucose', 99, 'mg/dL', 70, 110, 'H', now() FROM unnest(%s::bigint[], "
                        "%s::bigint[]) n(id, pid) JOIN LATERAL (SELECT encounter_id, patient_id "
                        "FROM encounters WHERE patient_id = n.pid LIMIT 1) e ON true",
                        ([i for i, _ in new], [p for _, p in new]),
                    )
                    inserted = cur.rowcount
                    cur.execute("UPDATE labs SET value_numeric = value_numeric + 1 "
                                "WHERE lab_id = ANY(%s)", (changed,))  # fmt: skip
                    done = inserted + cur.rowcount
                    cur.execute("UPDATE encounters SET department = 'ICU' "
                                "WHERE encounter_id = ANY(%s)", (encounters,))  # fmt: skip
                    done += cur.rowcount
                con.commit()
                self.committed += done
                tick += 0.1
                time.sleep(max(0.0, tick - time.perf_counter()))
        finally:
            con.close()


# --- the benchmark -------------------------------------------------------------------------------


def wait_published(warehouse: Path, names: list[str], after: dict[str, str | None],
                   timeout: float, cdc: subprocess.Popen[str]) -> None:  # fmt: skip
    """Wait until every interactive table in `names` has a generation newer than `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cdc.poll() is not None:
            raise SystemExit(f"cdc start exited ({cdc.returncode}):\n{cdc.stderr.read()[-3000:]}")
        current = {n: read_current(serving_root(warehouse) / n) for n in names}
        if all(current[n] and current[n] != after.get(n) for n in names):
            return
        time.sleep(0.2)
    raise SystemExit(f"interactive tables not published within {timeout:.0f} s")


def summarize(run: dict) -> dict[str, dict[str, float] | None]:
    latencies = run["latencies_ms"]
    summary = {name: percentiles(latencies.get(name, [])) for name in DASHBOARDS}
    summary["all"] = percentiles([v for values in latencies.values() for v in values])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--anchor-seconds", type=float, default=15.0)
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--writers", type=int, default=1, help="source writer threads")
    parser.add_argument("--lag", default="10 seconds")
    parser.add_argument("--client", metavar="SPEC")
    parser.add_argument("--days", nargs="*", default=[])
    args = parser.parse_args()
    if args.client:
        client(args.client, args.rate, args.seconds, args.patients, args.days)
        return

    console = Console()
    with EmbeddedPostgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn
        console.print(f"Building {args.patients:,} patients ...")
        built = _hospital.build(dsn, Path(tmp), args.patients, lag=args.lag)
        loaded = built.loaded
        spec = Path(tmp) / "clinipipe.yaml"
        warehouse = Path(tmp) / "warehouse.duckdb"
        names = [t.name for t in loaded.spec.interactive_tables]
        from clinipipe.pipeline.publish import publish
        from clinipipe.targets import open_target

        with open_target(loaded) as target:
            publish(loaded, target)
            recent = "SELECT DISTINCT census_date FROM derived.daily_census ORDER BY 1 DESC"
            days = [str(r[0]) for r in target.query(recent)[:30]]
        console.print(f"built: {built.seconds}; anchor run ({args.anchor_seconds:.0f} s) ...")
        anchor = run_client(spec, args.rate, args.anchor_seconds, args.patients, days)

        before = {n: read_current(serving_root(warehouse) / n) for n in names}
        cdc = subprocess.Popen(
            [sys.executable, "-m", "clinipipe", "-q", "-c", str(spec), "cdc", "start", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
        )  # fmt: skip
        share = args.events // args.writers
        writers = [Writer(dsn, share, args.patients, built.rows["labs"], i)
                   for i in range(args.writers)]  # fmt: skip
        for writer in writers:
            writer.start()
        started = dt.datetime.now(dt.UTC)
        console.print(f"CDC + {args.events:,} events/s running; waiting for a first publish ...")
        wait_published(warehouse, names, before, 120 + 10 * float(args.lag.split()[0]), cdc)
        console.print(f"measured run ({args.seconds:.0f} s) ...")
        committed_before = sum(w.committed for w in writers)
        window_start = dt.datetime.now(dt.UTC)
        loaded_run = run_client(spec, args.rate, args.seconds, args.patients, days)
        window_end = dt.datetime.now(dt.UTC)
        committed = sum(w.committed for w in writers) - committed_before
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join()
        cdc.send_signal(signal.SIGINT)
        out, err = cdc.communicate(timeout=300)
        if cdc.returncode != 0:
            raise SystemExit(f"cdc start failed ({cdc.returncode}):\n{err[-3000:]}")
        cdc_summary = json.loads(out)
        with open_target(loaded, read_only=True) as target:
            publishes = target.query(
                "SELECT name, count(*), avg(rows) FROM _clinipipe.interactive_publishes "
                f"WHERE published_at BETWEEN '{window_start.isoformat()}' AND "
                f"'{window_end.isoformat()}' GROUP BY name ORDER BY name"
            )
            refreshes = target.query(
                "SELECT name, refresh_action, count(*), median(epoch(refresh_end_time) - "
                "epoch(refresh_start_time)) FROM _clinipipe.dynamic_table_refresh_history "
                f"WHERE refresh_start_time >= '{started.isoformat()}' AND state = 'SUCCEEDED' "
                "GROUP BY ALL ORDER BY 1, 2"
            )

    anchor_summary, run_summary = summarize(anchor), summarize(loaded_run)
    table = Table(title=f"Dashboards at {args.rate:.0f} queries/s offered, open loop, "
                  f"{args.patients:,} patients (ms)")  # fmt: skip
    for column in ("dashboard", "anchor p50", "anchor p99", "CDC p50", "CDC p95", "CDC p99",
                   "CDC max", "queries", "errors"):  # fmt: skip
        table.add_column(column, justify="left" if column == "dashboard" else "right")
    for name in (*DASHBOARDS, "all"):
        a, r = anchor_summary[name], run_summary[name]
        count = (len(loaded_run["latencies_ms"].get(name, [])) if name != "all"
                 else sum(len(v) for v in loaded_run["latencies_ms"].values()))  # fmt: skip
        errors = (loaded_run["errors"].get(name, 0) if name != "all"
                  else sum(loaded_run["errors"].values()))  # fmt: skip
        table.add_row(
            name, *(f"{x:.2f}" if x is not None else "-" for x in (
                a and a["p50"], a and a["p99"], r and r["p50"], r and r["p95"], r and r["p99"],
                r and r["max"])),
            f"{count:,}", str(errors),
        )  # fmt: skip
    console.print(table)
    console.print(f"CDC applied {cdc_summary['changes']:,} changes in total "
                  f"({committed / args.seconds:,.0f} events/s committed on the source during the "
                  f"window); refreshes since start: {refreshes}")  # fmt: skip
    console.print(f"publishes during the window: {publishes}; generations the client read: "
                  f"{ {k: len(v) for k, v in loaded_run['generations'].items()} }")  # fmt: skip
    for label, run in (("anchor", anchor), ("under CDC", loaded_run)):
        if run["error_types"] or run["warmup_errors"]:
            console.print(f"{label}: error types {run['error_types']}; warm-up errors "
                          f"{run['warmup_errors']} {run['warmup_error_types']}")  # fmt: skip
    anchor_p99 = anchor_summary["all"]["p99"] if anchor_summary["all"] else None
    for line in judge(loaded_run, anchor_p99, publishes):
        console.print(line)


TARGET_RATE = 200.0  # queries/s: the load the targets name
TARGET_P99_MS = 20.0


def _load_problems(run: dict) -> list[str]:
    """Why `run` did not deliver the load the targets name (empty when it did)."""
    problems = []
    if run["rate"] < TARGET_RATE:
        problems.append(f"offered {run['rate']:.0f} queries/s, the target names {TARGET_RATE:.0f}")
    expected = int(run["rate"] * run["seconds"])
    completed = sum(len(v) for v in run["latencies_ms"].values()) + sum(run["errors"].values())
    if run["sent"] != expected or completed != run["sent"]:
        problems.append(f"{run['sent']:,} sent and {completed:,} completed of {expected:,} due")
    achieved = run["sent"] / run["wall_seconds"] if run["wall_seconds"] else 0.0
    if achieved < 0.95 * run["rate"]:
        problems.append(f"only {achieved:.0f} queries/s reached (the client fell behind)")
    return problems


def judge(run: dict, anchor_p99: float | None, publishes: list[tuple[Any, ...]]) -> list[str]:
    """One verdict line per target. "met"/"missed" only when the measure is the one the target
    names, the run delivered the offered load and every correctness check passed (no error in
    the window or its warm-up); otherwise "NOT JUDGED" with the reasons."""
    load = _load_problems(run)
    errors = sum(run["errors"].values()) + run["warmup_errors"]
    latencies = [v for values in run["latencies_ms"].values() for v in values]
    p99 = percentiles(latencies)["p99"] if latencies else None
    lines = []
    p99_problems = list(load)
    if p99 is None:
        p99_problems.append("no successful query")
    if errors:
        p99_problems.append(f"{errors} queries failed (warm-up included)")
    shown = "-" if p99 is None else f"{p99:.2f} ms"
    ratio = (
        f" ({p99 / anchor_p99:.2f}x the anchor p99 {anchor_p99:.2f} ms)"
        if (p99 is not None and anchor_p99)
        else ""
    )
    if p99_problems:
        lines.append(
            f"Target p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_RATE:.0f} queries/s: "
            f"{shown}{ratio}: NOT JUDGED ({'; '.join(p99_problems)})"
        )
    else:
        assert p99 is not None
        lines.append(
            f"Target p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_RATE:.0f} queries/s: "
            f"{shown}{ratio}: {'met' if p99 <= TARGET_P99_MS else 'missed'}"
        )
    published = sum(int(row[1]) for row in publishes)
    seen = max((len(v) for v in run["generations"].values()), default=0)
    publish_problems = list(load)
    if published == 0:
        publish_problems.append("no publish happened during the window")
    if seen < 2:
        publish_problems.append("the client never read a second generation of any table")
    if publish_problems:
        lines.append(
            f"Target zero errors during publishes: {errors} errors: NOT JUDGED "
            f"({'; '.join(publish_problems)})"
        )
    else:
        lines.append(
            f"Target zero errors during publishes ({published} publishes, up to {seen} "
            f"generations read): {errors} errors (warm-up included): "
            f"{'met' if errors == 0 else 'missed'}"
        )
    return lines


if __name__ == "__main__":
    main()
