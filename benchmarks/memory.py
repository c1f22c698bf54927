"""Peak memory of `cdc start` and `backfill` on the loads issue 10 names (a script, not a test).

Each measured command runs as its own process (`python -m clinipipe ...`); its peak RSS is the
child's ``ru_maxrss`` read by this parent through ``os.wait4`` (an observer outside the process
under test). For reference, the same interpreter importing clinipipe and doing nothing.

Loads:

1. **one big transaction**: ``UPDATE big SET cost = cost + 1`` over ``--big-rows`` rows
   (1,000,000) in ONE source transaction, then ``cdc start --until-caught-up``;
2. **a backlog**: two transactions of ``--backlog-rows`` (60,000) updates of rows holding
   TOASTed notes (2 KB, stored out of line; the updates leave the notes unchanged), then
   ``cdc start --until-caught-up``;
3. **backfill of notes**: ``--note-rows`` (200,000) rows of 2 KB notes, ``backfill``.

Targets (issue 10): ``cdc start`` <= 500 MB whatever the transaction size, backfill <= 1 GB
for any table. Every run also checks that the warehouse equals the source afterwards (row
count and a checksum); a verdict is "met" only when that check passed.

    python benchmarks/memory.py [--big-rows 1000000] [--backlog-rows 60000]
        [--note-rows 200000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psycopg2

from clinipipe.source.embedded import EmbeddedPostgres

CDC_TARGET = 500_000_000
BACKFILL_TARGET = 1_000_000_000

SPEC = """\
version: 1
name: memory_bench
source:
  dsn: ${CLINIPIPE_SOURCE_DSN}
  publication: mem_pub
  slot: mem_slot
  tables:
    - name: big
      primary_key: [id]
    - name: notes
      primary_key: [id]
target:
  type: duckdb
  path: warehouse.duckdb
"""


LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""
"""A small process (no site packages) that forks the measured command and reports its peak
RSS. Linux keeps a process's peak RSS across exec and a (v)forked child starts with its
parent's: measured straight from this script (hundreds of MB of libraries and query results)
every figure would include this script's own size."""


def measure(folder: Path, env: dict[str, str], *argv: str) -> tuple[int, float, int, str]:
    """Run `python ARGV` through the launcher: (exit code, seconds, peak RSS bytes, stderr)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *argv],
        cwd=folder, env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.monotonic() - started
    code, rss = (int(x) for x in done.stdout.split()[-2:])
    return code, seconds, rss, done.stderr


def run(folder: Path, dsn: str, *args: str) -> tuple[int, float, int]:
    """Run `clinipipe ARGS` in a child: (exit code, seconds, peak RSS bytes)."""
    env = dict(os.environ, CLINIPIPE_SOURCE_DSN=dsn)
    spec = str(folder / "clinipipe.yaml")
    code, seconds, rss, stderr = measure(folder, env, "-m", "clinipipe", "-q", "-c", spec, *args)
    if code != 0:
        sys.exit(f"clinipipe {' '.join(args)} failed ({code}): {stderr}")
    return code, seconds, rss


def idle_rss() -> int:
    """Peak RSS of the interpreter importing what `clinipipe` imports, doing nothing."""
    _, _, rss, _ = measure(Path.cwd(), dict(os.environ), "-c", "import clinipipe.cli.app")
    return rss


def execute(dsn: str, *statements: str) -> None:
    con = psycopg2.connect(dsn)
    try:
        with con, con.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        con.close()


def checksum_source(dsn: str, table: str, columns: str) -> tuple[int, str]:
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute(
                f"SELECT count(*), md5(string_agg(md5(concat_ws('|', {columns})), '' ORDER BY id)) "
                f"FROM {table}"
            )
            count, digest = cur.fetchone()
            return int(count), str(digest)
    finally:
        con.close()


def checksum_warehouse(folder: Path, table: str, columns: str) -> tuple[int, str]:
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as con:
        count, digest = con.execute(
            f"SELECT count(*), md5(string_agg(md5(concat_ws('|', {columns})), '' ORDER BY id)) "
            f"FROM raw.{table}"
        ).fetchone()
        return int(count), str(digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--backlog-rows", type=int, default=60_000)
    parser.add_argument("--note-rows", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()
    results: dict[str, dict[str, object]] = {}
    with EmbeddedPostgres() as server, tempfile.TemporaryDirectory() as tmp:
        dsn = server.create_database("memory_bench")
        folder = Path(tmp)
        (folder / "clinipipe.yaml").write_text(SPEC)
        execute(
            dsn,
            "CREATE TABLE big (id int PRIMARY KEY, cost int, label text)",
            "INSERT INTO big SELECT g, g, 'label ' || g "
            f"FROM generate_series(1, {args.big_rows}) g",
            "CREATE TABLE notes (id int PRIMARY KEY, v int, note text)",
            "INSERT INTO notes SELECT g, 0, (SELECT string_agg(md5(g::text || x::text), '') "
            f"FROM generate_series(1, 64) x) FROM generate_series(1, {args.note_rows}) g",
        )
        run(folder, dsn, "deploy")
        _, seconds, rss = run(folder, dsn, "backfill")
        same = checksum_source(dsn, "notes", "id, v, note") == checksum_warehouse(
            folder, "notes", "id, v, note"
        )
        results["backfill"] = {
            "rows": args.big_rows + args.note_rows, "seconds": seconds, "peak_rss": rss,
            "equal": same, "target": BACKFILL_TARGET,
        }  # fmt: skip

        execute(dsn, "UPDATE big SET cost = cost + 1")
        _, seconds, rss = run(folder, dsn, "cdc", "start", "--until-caught-up")
        same = checksum_source(dsn, "big", "id, cost, label") == checksum_warehouse(
            folder, "big", "id, cost, label"
        )
        results["cdc_one_big_transaction"] = {"changes": args.big_rows, "seconds": seconds,
                                              "peak_rss": rss, "equal": same,
                                              "target": CDC_TARGET}  # fmt: skip

        for _ in range(2):
            execute(dsn, f"UPDATE notes SET v = v + 1 WHERE id <= {args.backlog_rows}")
        _, seconds, rss = run(folder, dsn, "cdc", "start", "--until-caught-up")
        same = checksum_source(dsn, "notes", "id, v, note") == checksum_warehouse(
            folder, "notes", "id, v, note"
        )
        results["cdc_backlog_toast"] = {"changes": 2 * args.backlog_rows, "seconds": seconds,
                                        "peak_rss": rss, "equal": same,
                                        "target": CDC_TARGET}  # fmt: skip
    baseline = idle_rss()
    if args.json:
        print(json.dumps({"load_average": load, "idle_rss": baseline, "results": results}))
        return
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"interpreter + libraries, idle: {baseline / 1e6:.0f} MB")
    for name, r in results.items():
        verdict = "met" if r["equal"] and r["peak_rss"] <= r["target"] else "missed"  # type: ignore[operator]
        print(
            f"{name:26} peak RSS {r['peak_rss'] / 1e6:7.0f} MB (target {r['target'] / 1e6:.0f} MB)"  # type: ignore[operator]
            f"  {r['seconds']:.1f} s  warehouse equals source: {'yes' if r['equal'] else 'NO'}"
            f"  -> {verdict}"
        )


if __name__ == "__main__":
    main()
