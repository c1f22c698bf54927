"""Benchmark `clinipipe verify` (issue 19): a full verify of ``enc`` (2 M rows) and ``notes``
(200 k rows of ~2 KB text) against a plain ``COPY ... TO STDOUT`` read of the same tables.

Starts a throwaway PostgreSQL (``clinipipe.source.embedded.EmbeddedPostgres``), creates the two
tables of ``benchmarks/backfill.py`` (same generator, deterministic), deploys a DuckDB project
and backfills it (untimed). Then, interleaved for ``--repeat`` rounds (3 by default), each as a
process of its own timed from spawn to exit (interpreter start-up and imports included):

* **COPY read**: psycopg2 ``COPY enc TO STDOUT`` then ``COPY notes TO STDOUT`` (text format)
  into a sink that only counts bytes: what merely reading the tables out of PostgreSQL costs;
* **clinipipe verify**: ``python -m clinipipe -q -c <spec> verify --json`` (every range of both
  tables, exit 0 required).

The report gives best and median seconds of each, the 1-minute load average at the start of
each round, and the ratio verify / COPY (target <= 1.0x: the checksums run where the data is,
and only sums leave either engine). Finally one column of one row of ``enc`` is changed in the
warehouse and verify must exit 3 naming exactly that table, key and column (timed too).

A script, never part of the test suite::

    python benchmarks/verify.py [--rows 2000000] [--note-rows 200000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).parent))
from backfill import _tail, create_tables, run_child

from clinipipe.source.embedded import EmbeddedPostgres

TARGET_RATIO = 1.0

_SPEC = """\
version: 1
name: bench_verify
source:
  dsn: ${CLINIPIPE_SOURCE_DSN}
  slot: bench_verify_slot
  publication: bench_verify_pub
  tables:
    - {name: enc, primary_key: [id]}
    - {name: notes, primary_key: [id]}
target: {type: duckdb, path: bench.duckdb}
"""

_COPY_SCRIPT = textwrap.dedent(
    """\
    import json, sys, time

    import psycopg2


    class Sink:
        bytes = 0

        def write(self, data):
            self.bytes += len(data)
            return len(data)


    conn = psycopg2.connect(sys.argv[1])
    sink = Sink()
    started = time.perf_counter()
    with conn.cursor() as cur:
        for table in sys.argv[2:]:
            cur.copy_expert(f"COPY {table} TO STDOUT", sink)
    print(json.dumps({"bytes": sink.bytes, "seconds": time.perf_counter() - started}))
    conn.close()
    """
)


def _load() -> float:
    return os.getloadavg()[0]


def copy_read(dsn: str, work: Path) -> dict[str, Any]:
    load = _load()
    child = run_child(
        [sys.executable, "-c", _COPY_SCRIPT, dsn, "enc", "notes"], env=dict(os.environ), cwd=work
    )
    if child.returncode != 0:
        raise RuntimeError(f"COPY read failed:\n{_tail(child.stderr)}")
    result = json.loads(child.stdout)
    return {"seconds": child.wall_seconds, "load": load, "bytes": result["bytes"],
            "inner_seconds": result["seconds"], "cpu": child.cpu_seconds}  # fmt: skip


def verify(spec: Path, env: dict[str, str], work: Path, *, expect: int) -> dict[str, Any]:
    load = _load()
    cmd = [sys.executable, "-m", "clinipipe", "-q", "-c", str(spec), "verify", "--json"]
    child = run_child(cmd, env=env, cwd=work)
    if child.returncode != expect:
        raise RuntimeError(
            f"verify exited {child.returncode}, expected {expect}:\n{_tail(child.stderr)}"
        )
    report = json.loads(child.stdout)
    return {"seconds": child.wall_seconds, "load": load, "report": report,
            "inner_seconds": report["seconds"], "cpu": child.cpu_seconds}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--note-rows", type=int, default=200_000)
    parser.add_argument("--note-bytes", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clinipipe-bench-verify-") as tmp, \
            EmbeddedPostgres() as pg:  # fmt: skip
        work = Path(tmp)
        dsn = pg.create_database("bench_verify")
        started = time.perf_counter()
        create_tables(dsn, args.rows, args.note_rows, args.note_bytes)
        print(f"tables created in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        spec = work / "clinipipe.yaml"
        spec.write_text(_SPEC)
        env = {**os.environ, "CLINIPIPE_SOURCE_DSN": dsn}
        base = [sys.executable, "-m", "clinipipe", "-q", "-c", str(spec)]
        for step in (["deploy"], ["backfill", "--json"]):
            child = run_child([*base, *step], env=env, cwd=work)
            if child.returncode != 0:
                raise RuntimeError(f"{step[0]} failed:\n{_tail(child.stderr)}")
            print(f"{step[0]}: {child.wall_seconds:.1f} s", file=sys.stderr)

        copies: list[dict[str, Any]] = []
        verifies: list[dict[str, Any]] = []
        for round_ in range(args.repeat):
            first, second = (copy_read, verify) if round_ % 2 == 0 else (verify, copy_read)
            for method in (first, second):
                if method is copy_read:
                    copies.append(copy_read(dsn, work))
                    m = copies[-1]
                    print(f"round {round_ + 1} COPY read   {m['seconds']:6.2f} s "
                          f"(load {m['load']:.2f})", file=sys.stderr)  # fmt: skip
                else:
                    verifies.append(verify(spec, env, work, expect=0))
                    m = verifies[-1]
                    print(f"round {round_ + 1} verify      {m['seconds']:6.2f} s "
                          f"(load {m['load']:.2f}, in-process {m['inner_seconds']:.2f} s)",
                          file=sys.stderr)  # fmt: skip
            report = verifies[-1]["report"]
            assert report["outcome"] == "equal", report
            assert report["counts"]["rows"] == args.rows + args.note_rows, report["counts"]

        # A planted single-column difference in one row of `enc`.
        key = args.rows // 2 + 17
        with duckdb.connect(str(work / "bench.duckdb")) as con:
            con.execute(f"UPDATE raw.enc SET dept = dept || '!' WHERE id = {key}")
        planted = verify(spec, env, work, expect=3)
        diffs = [(t["table"], d["key"], d["kind"], d["columns"])
                 for t in planted["report"]["tables"] for d in t["differences"]]  # fmt: skip
        found = diffs == [("enc", {"id": str(key)}, "changed", ["dept"])]

    def stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
        seconds = [r["seconds"] for r in runs]
        return {"best": min(seconds), "median": statistics.median(seconds),
                "runs": [round(s, 3) for s in seconds],
                "load": [round(r["load"], 2) for r in runs]}  # fmt: skip

    c, v = stats(copies), stats(verifies)
    result = {
        "rows": args.rows, "note_rows": args.note_rows, "note_bytes": args.note_bytes,
        "copy_read": c, "verify": v,
        "ratio_median": v["median"] / c["median"], "ratio_best": v["best"] / c["best"],
        "copy_bytes": copies[-1]["bytes"], "target_ratio": TARGET_RATIO,
        "planted": {"found": found, "differences": diffs,
                    "seconds": round(planted["seconds"], 3), "load": round(planted["load"], 2)},
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.rows:,} rows + {args.note_rows:,} notes, {os.cpu_count()} CPUs")
        for name, s in (("COPY read (psycopg2, null sink)", c), ("clinipipe verify", v)):
            print(
                f"  {name:34} best {s['best']:6.2f} s  median {s['median']:6.2f} s  "
                f"runs {s['runs']}  load at start {s['load']}"
            )
        print(
            f"  verify / COPY: median {result['ratio_median']:.2f}x, "
            f"best {result['ratio_best']:.2f}x (target <= {TARGET_RATIO:.1f}x)"
        )
        print(
            f"  planted difference: {'found' if found else 'NOT FOUND'} {diffs} in "
            f"{planted['seconds']:.2f} s (load {planted['load']:.2f})"
        )
        print(f"  load average at the end: {result['loadavg_end']}")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
