"""Benchmark incremental dynamic-table refreshes against full ones (DuckDB engine).

Builds a hospital of ``--patients`` patients (10 encounters and 40 labs each, see
``_hospital.py``) in a throwaway PostgreSQL, deploys, backfills and builds the dynamic tables
with the real pipeline, then measures ``patient_summary`` (patients ⟕ encounters ⟕ labs,
aggregated per patient):

* **full**: ``refresh(patient_summary, full=True)``, ``--repeat`` times;
* **incremental after k changed patients**, k in ``--changes`` (default 1,000 and 10,000):
  one encounter of each of k random patients is updated on the source, ``cdc start
  --until-caught-up`` applies it (not timed; CDC records the changed keys), then
  ``refresh(patient_summary)`` runs; ``--repeat`` times with fresh changes each time.

The time is the refresh's own (its history row: start to end of its transaction, i.e. finding
the changed keys, deleting and re-inserting their rows, recording history/metering/state).
Each incremental result is checked against a full recomputation (EXCEPT ALL both ways). The
ratio printed is the median incremental time over the median full time measured in the same
run; the issue's target is <= 2 % for 1,000 changed patients. A script, never a test::

    python benchmarks/refresh.py [--patients 200000] [--changes 1000 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
import _hospital

from clinipipe.embedded import EmbeddedPostgres
from clinipipe.pipeline.cdc import CdcOptions, run_cdc
from clinipipe.pipeline.refresh import refresh
from clinipipe.targets import open_target

TABLE = "patient_summary"


def change_patients(dsn: str, patients: int, k: int, rng: random.Random) -> None:
    """Update one encounter of each of `k` distinct random patients (one transaction)."""
    chosen = ",".join(str(p) for p in rng.sample(range(1, patients + 1), k))
    _hospital.execute(
        dsn,
        "UPDATE encounters SET admit_ts = admit_ts + interval '1 minute' WHERE encounter_id IN "
        f"(SELECT min(encounter_id) FROM encounters WHERE patient_id IN ({chosen}) "
        "GROUP BY patient_id)",
    )


def matches_full_recompute(built: _hospital.Built) -> bool:
    sql = next(d.sql for d in built.loaded.spec.dynamic_tables if d.name == TABLE)
    with open_target(built.loaded, read_only=True) as target:
        [(diff,)] = target.query(
            f"SELECT count(*) FROM ((SELECT * FROM derived.{TABLE} EXCEPT ALL ({sql})) "
            f"UNION ALL (({sql}) EXCEPT ALL SELECT * FROM derived.{TABLE}))"
        )
    return diff == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--changes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    console = Console()
    rng = random.Random(args.seed)

    with EmbeddedPostgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn
        console.print(f"Building {args.patients:,} patients ...")
        built = _hospital.build(dsn, Path(tmp), args.patients)
        console.print(
            f"source {built.seconds['source']:.1f} s, backfill {built.seconds['backfill']:.1f} s,"
            f" first build {built.seconds['first build']:.1f} s; rows {built.rows}"
        )
        full = []
        for _ in range(args.repeat):
            [result] = [r for r in refresh(built.loaded, TABLE, full=True) if r.name == TABLE]
            assert result.state == "SUCCEEDED" and result.refresh_action == "FULL", result
            full.append(result.seconds or 0.0)
        rows: list[tuple[str, float, str, int, bool]] = []
        for k in args.changes:
            times, keys, exact = [], 0, True
            for _ in range(args.repeat):
                change_patients(dsn, args.patients, k, rng)
                run_cdc(built.loaded, CdcOptions(until_caught_up=True))
                [result] = [r for r in refresh(built.loaded, TABLE) if r.name == TABLE]
                assert result.state == "SUCCEEDED", result.state_message
                times.append(result.seconds or 0.0)
                keys = result.keys_changed or 0
                exact = exact and matches_full_recompute(built)
                action = result.refresh_action
            rows.append((f"incremental, {k:,} changed patients ({action})",
                         statistics.median(times), f"{keys:,}", len(times), exact))  # fmt: skip

    full_median = statistics.median(full)
    sizes = f"{built.rows['encounters']:,} encounters, {built.rows['labs']:,} labs"
    table = Table(title=f"{TABLE} refresh, {args.patients:,} patients ({sizes})")
    for column in ("refresh", "median s", "keys", "runs", "vs full", "exact"):
        table.add_column(column, justify="left" if column == "refresh" else "right")
    table.add_row("full", f"{full_median:.3f}", "-", str(len(full)), "1.00", "-")
    for label, seconds, keys, runs, exact in rows:
        ratio = seconds / full_median if full_median else float("nan")
        table.add_row(label, f"{seconds:.3f}", keys, str(runs), f"{ratio:.1%}",
                      "yes" if exact else "NO")  # fmt: skip
    console.print(table)
    first = rows[0][1] / full_median if rows and full_median else float("nan")
    verdict = "met" if first <= 0.02 else "missed"
    console.print(f"Target: incremental after {args.changes[0]:,} changed patients <= 2 % of "
                  f"full: {first:.1%} ({verdict}).")  # fmt: skip


if __name__ == "__main__":
    main()
