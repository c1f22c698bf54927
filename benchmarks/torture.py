"""The long torture run of issue 10: a generated foreign schema, a random workload with DDL,
``kill -9`` of ``cdc start`` 1-3 times a round, and an exact comparison after every round.

Starts a throwaway PostgreSQL (``clinipipe.source.embedded.EmbeddedPostgres``), then for each seed a
fresh database and project directory, and runs `tests.torture.run_torture` (the same code as
the CI test ``tests/test_torture.py``, with more rounds and bigger transactions). Prints each
round as it ends and, at the end, rounds, kills, transactions, row changes, DDL and mismatches,
with every mismatch as table, key, column, source and warehouse value. Exit 3 when any round
found a mismatch (or ``cdc start --until-caught-up`` did not exit 0), else 0.

A script, never part of the test suite::

    python benchmarks/torture.py [--rounds 20] [--kills-per-round 1-3] [--seed 1 [--seed 2]]
        [--duration SECONDS_PER_ROUND] [--transactions 60] [--large-rows 20000]
        [--no-append-only] [--no-volatile-defaults] [--no-readd] [--strict-zero-sign]
        [--case-twins] [--same-name] [--keep] [--stop-on-mismatch]

The issue's bar: >= 20 rounds with >= 40 kills and zero mismatches.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clinipipe.source.embedded import EmbeddedPostgres
from tests.torture import RoundResult, TortureOptions, TortureResult, run_torture


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per seed")
    parser.add_argument("--kills-per-round", type=_range, default=(1, 3), help="N or LOW-HIGH")
    parser.add_argument("--seed", type=int, action="append", help="repeatable; default 1")
    parser.add_argument("--duration", type=float, help="seconds of workload per round (at "
                        "least --transactions transactions)")  # fmt: skip
    parser.add_argument("--transactions", type=int, default=60, help="per round (minimum)")
    parser.add_argument("--ddl-per-round", type=_range, default=(0, 3), help="N or LOW-HIGH")
    parser.add_argument("--large-rows", type=int, default=20_000, help="rows of a large tx")
    parser.add_argument("--no-append-only", action="store_true",
                        help="no table without primary key (append_only)")  # fmt: skip
    parser.add_argument("--case-twins", action="store_true",
                        help='columns "Value" and value (refused by design)')  # fmt: skip
    parser.add_argument("--same-name", action="store_true",
                        help="same table in two schemas (refused by design)")  # fmt: skip
    parser.add_argument("--no-readd", action="store_true",
                        help="no re-add of, or rename to, a dropped name (F3, F4)")  # fmt: skip
    parser.add_argument("--no-volatile-defaults", action="store_true",
                        help="no ADD COLUMN ... DEFAULT random() (finding F2)")  # fmt: skip
    parser.add_argument("--strict-zero-sign", action="store_true",
                        help="-0 differs from 0 (F1: DuckDB may drop the sign)")  # fmt: skip
    parser.add_argument("--stop-on-mismatch", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the project directories")
    args = parser.parse_args(argv)
    options = TortureOptions(
        large_tx_rows=args.large_rows,
        no_pk_table=not args.no_append_only,
        case_twins=args.case_twins,
        same_name_two_schemas=args.same_name,
        strict_zero_sign=args.strict_zero_sign,
        volatile_defaults=not args.no_volatile_defaults,
        readd_dropped=not args.no_readd,
    )
    results: list[TortureResult] = []
    started = time.monotonic()
    with EmbeddedPostgres() as server:
        for seed in args.seed or [1]:
            dsn = server.create_database(f"torture_{seed}")
            workdir = Path(tempfile.mkdtemp(prefix=f"torture-{seed}-"))

            def show(r: RoundResult, seed: int = seed) -> None:
                print(f"seed {seed} round {r.round}: {r.transactions} tx, {r.changes} changes, "
                      f"{r.kills} kills, {len(r.ddl)} DDL, catch-up exit {r.catch_up_exit}, "
                      f"{len(r.mismatches)} mismatches "
                      f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
                for line in r.ddl:
                    print(f"    {line}", flush=True)
                if r.catch_up_exit:
                    print(f"    CATCH-UP STDERR {r.catch_up_stderr.strip()[-1500:]}", flush=True)
                for m in r.mismatches[:10]:
                    print(f"    MISMATCH {m}", flush=True)

            result = run_torture(
                dsn, workdir, seed, rounds=args.rounds, kills_per_round=args.kills_per_round,
                transactions_per_round=args.transactions, ddl_per_round=args.ddl_per_round,
                duration=args.duration, options=options, on_round=show,
                stop_on_mismatch=args.stop_on_mismatch,
            )  # fmt: skip
            results.append(result)
            if result.failed:
                print(result.report(), flush=True)
                print(f"project kept in {workdir}", flush=True)
            elif not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
                server.drop_database(f"torture_{seed}")
    rounds = sum(len([r for r in x.rounds if r.round]) for x in results)
    kills = sum(x.kills for x in results)
    mismatches = sum(len(x.mismatches) for x in results)
    bad_exits = sum(1 for x in results for r in x.rounds if r.catch_up_exit)
    ddl = sum(len(r.ddl) for x in results for r in x.rounds)
    print(f"\nseeds {[x.seed for x in results]}: {rounds} rounds, {kills} kills, "
          f"{sum(x.transactions for x in results)} transactions, "
          f"{sum(x.changes for x in results)} row changes, {ddl} DDL, "
          f"{mismatches} mismatches, {bad_exits} catch-up runs not exiting 0, "
          f"{sum(1 for x in results if x.setup_error)} setup failures, "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    kinds: dict[str, int] = {}
    for x in results:
        for k, n in x.kinds.items():
            kinds[k] = kinds.get(k, 0) + n
    print(f"operations and DDL kinds: {dict(sorted(kinds.items()))}")
    return 3 if any(x.failed for x in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
