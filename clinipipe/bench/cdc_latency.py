"""Commit-to-visible latency of CDC, measured from outside the CDC process.

Three parts, each on its own connection and thread, none inside `cdc start`:

* :class:`PacedWriter` commits rows on the source at a constant rate, open loop: every tick
  (`tick` seconds) one transaction of ``rate * tick`` rows (fractions carried over), due at
  ``start + i * tick`` whatever happened before. For each transaction it records when COMMIT
  returned and ``pg_current_wal_insert_lsn()`` read right after it (at or past the commit
  record's end).
* :class:`SlotWatcher` polls the slot's ``confirmed_flush_lsn`` every `interval` seconds.
  clinipipe confirms a position only after the warehouse transaction holding every change up
  to it committed (docs/ARCHITECTURE.md, CDC), so the first poll at or past a transaction's LSN
  is a moment the transaction was visible in the target. The measure is an upper bound: it
  adds the confirmation message and up to one poll interval; an idle stream may confirm the
  server's position a little later than the apply.
* :class:`ServingWatcher` polls a published interactive table (read-only generation files,
  :class:`clinipipe.targets.serving_files.ServingReader`) for the ids the writer inserted: the
  first poll that sees an id is when it became visible there (after CDC, the dynamic table's
  refresh and the publish; so it includes their `target_lag` scheduling).

:func:`visible_latencies` joins the writer's transactions with either watcher's observations.
Nothing here knows the table written: the caller gives the INSERT (see
``clinipipe.pipeline.bench_run`` for the synthetic hospital's ``labs``).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinipipe.source.pgoutput import lsn_to_int
from clinipipe.source.postgres import connect
from clinipipe.targets.serving_files import ServingError, ServingReader

__all__ = [
    "PacedWriter",
    "ServingWatcher",
    "SlotWatcher",
    "Transaction",
    "parse_rate",
    "visible_latencies",
]

InsertRows = Callable[[Any, int, int], int]
"""``insert(cursor, first_id, count)``: insert `count` rows with ids first_id.. on the cursor
(inside the writer's transaction); returns the rows inserted."""


def parse_rate(text: str) -> float:
    """Rows per second from ``N/s``, ``N/min``, ``N/h`` or a bare ``N`` (per second).
    ValueError with the accepted forms otherwise."""
    value = text.strip().lower().replace(",", "").replace("_", "")
    per = {"/s": 1.0, "/sec": 1.0, "/min": 60.0, "/m": 60.0, "/h": 3600.0}
    divisor = 1.0
    for suffix, seconds in per.items():
        if value.endswith(suffix):
            value, divisor = value[: -len(suffix)], seconds
            break
    try:
        rate = float(value) / divisor
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (e.g. 1000/min, 20000/s)") from None
    if rate <= 0:
        raise ValueError(f"the rate must be positive: {text!r}")
    return rate


@dataclass(frozen=True)
class Transaction:
    """One committed writer transaction: ids [first_id, first_id + rows), when it was due and
    when COMMIT returned (``time.monotonic()``), and a source LSN at or past its commit."""

    first_id: int
    rows: int
    due: float
    committed: float
    lsn: int


class PacedWriter(threading.Thread):
    """Commits `rate` rows/s for `seconds` through `insert`, open loop (see the module
    docstring). `transactions` holds what committed; `error` the type name of the exception
    that stopped it (never its message). Stops early when `stop` is set."""

    def __init__(
        self,
        dsn: str,
        insert: InsertRows,
        *,
        rate: float,
        seconds: float,
        first_id: int,
        tick: float | None = None,
    ) -> None:
        super().__init__(daemon=True, name="clinipipe-bench-writer")
        self.dsn, self.insert, self.rate, self.seconds = dsn, insert, rate, seconds
        self.next_id = first_id
        # Single-row transactions while they can keep up; else one transaction per 50 ms.
        self.tick = tick if tick is not None else max(1.0 / rate, 0.05 if rate > 20 else 0.0)
        self.transactions: list[Transaction] = []
        self.stop = threading.Event()
        self.error: str | None = None
        self.started_at = 0.0
        self.ended_at = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.transactions)

    def run(self) -> None:
        try:
            con = connect(self.dsn, application_name="clinipipe-bench")
        except Exception as exc:
            self.error = type(exc).__name__
            return
        try:
            with con.cursor() as cur:
                cur.execute("SET synchronous_commit = on")  # as a production source commits
            con.commit()
            self.started_at = start = time.monotonic()
            ticks = max(1, round(self.seconds / self.tick))
            owed = 0.0
            for i in range(ticks):
                if self.stop.is_set():
                    break
                due = start + i * self.tick
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                owed += self.rate * self.tick
                count = int(owed)
                if count == 0:
                    continue
                owed -= count
                with con.cursor() as cur:
                    inserted = self.insert(cur, self.next_id, count)
                con.commit()
                committed = time.monotonic()
                with con.cursor() as cur:
                    cur.execute("SELECT pg_current_wal_insert_lsn()::text")
                    row = cur.fetchone()
                con.commit()
                assert row is not None
                self.transactions.append(
                    Transaction(self.next_id, inserted, due, committed, lsn_to_int(row[0]))
                )
                self.next_id += count
        except Exception as exc:  # the type only: a message may quote a value
            self.error = type(exc).__name__
            con.rollback()
        finally:
            self.ended_at = time.monotonic()
            con.close()


class SlotWatcher(threading.Thread):
    """Polls `slot`'s confirmed_flush_lsn every `interval` s until `stop` is set; `seen` holds
    (monotonic time, lsn) each time the position moved."""

    def __init__(self, dsn: str, slot: str, *, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="clinipipe-bench-slot")
        self.dsn, self.slot, self.interval = dsn, slot, interval
        self.seen: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.error: str | None = None

    def position(self) -> int | None:
        return self.seen[-1][1] if self.seen else None

    def run(self) -> None:
        try:
            con = connect(self.dsn, application_name="clinipipe-bench-observer")
        except Exception as exc:
            self.error = type(exc).__name__
            return
        con.autocommit = True
        try:
            with con.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                        "WHERE slot_name = %s",
                        (self.slot,),
                    )
                    row = cur.fetchone()
                    now = time.monotonic()
                    if row and row[0]:
                        lsn = lsn_to_int(row[0])
                        if not self.seen or lsn > self.seen[-1][1]:
                            self.seen.append((now, lsn))
                    time.sleep(self.interval)
        except Exception as exc:
            self.error = type(exc).__name__
        finally:
            con.close()

    def wait_for(self, lsn: int, timeout: float) -> bool:
        """Wait until the slot confirmed `lsn`; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.position()
            if current is not None and current >= lsn:
                return True
            if not self.is_alive():
                return False
            time.sleep(0.01)
        return False


class ServingWatcher(threading.Thread):
    """Polls interactive table `table` (column `id_column`) of the DuckDB warehouse at
    `warehouse` every `interval` s for ids >= `first_id`; `first_seen[id]` is the monotonic
    time of the first poll that saw it; `generations` the generation files read."""

    def __init__(
        self,
        warehouse: Path,
        table: str,
        id_column: str,
        first_id: int,
        *,
        interval: float = 0.2,
        encryption_key: str | None = None,
    ) -> None:
        super().__init__(daemon=True, name="clinipipe-bench-serving")
        self.warehouse, self.table, self.id_column = warehouse, table, id_column
        self.first_id, self.interval, self.encryption_key = first_id, interval, encryption_key
        self.first_seen: dict[int, float] = {}
        self.polls = 0
        self.generations: set[str] = set()
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        sql = (
            f'SELECT "{self.id_column}" FROM serving."{self.table}" '
            f'WHERE "{self.id_column}" >= {int(self.first_id)}'
        )
        try:
            with ServingReader(self.warehouse, recheck_seconds=0.05,
                               encryption_key=self.encryption_key) as reader:  # fmt: skip
                while not self.stop.is_set():
                    try:
                        rows = reader.query(self.table, sql)
                        self.generations.add(reader.generation(self.table))
                    except ServingError:
                        rows = []  # not published yet
                    now = time.monotonic()
                    self.polls += 1
                    for (key,) in rows:
                        self.first_seen.setdefault(int(key), now)
                    time.sleep(self.interval)
        except Exception as exc:
            self.error = type(exc).__name__


def visible_latencies(
    transactions: Sequence[Transaction],
    *,
    positions: Sequence[tuple[float, int]] | None = None,
    first_seen: dict[int, float] | None = None,
) -> tuple[list[float], int]:
    """Commit-to-visible latency (ms) of each transaction seen, one value per row, and how many
    transactions were never seen. With `positions` (a SlotWatcher's): visible at the first
    position at or past the transaction's LSN. With `first_seen` (a ServingWatcher's): visible
    when the first of its ids was seen."""
    latencies: list[float] = []
    missing = 0
    if positions is not None:
        lsns = [lsn for _, lsn in positions]
        for tx in transactions:
            at = bisect.bisect_left(lsns, tx.lsn)
            if at == len(lsns):
                missing += 1
                continue
            ms = max(0.0, (positions[at][0] - tx.committed) * 1000)
            latencies.extend([ms] * tx.rows)
    elif first_seen is not None:
        for tx in transactions:
            seen = [first_seen[i] for i in range(tx.first_id, tx.first_id + tx.rows)
                    if i in first_seen]  # fmt: skip
            if not seen:
                missing += 1
                continue
            latencies.extend([max(0.0, (min(seen) - tx.committed) * 1000)] * tx.rows)
    return latencies, missing
