"""``run_synth``: generate the synthetic hospital and load it into PostgreSQL in one transaction.

Guarantees
----------
* **Atomic**: schema creation (or replacement), every COPY and the index builds run in one
  transaction, committed at the end. If anything fails (or the process is interrupted), the
  database is left as it was: no half-loaded hospital, and with ``drop_existing`` the old one is
  still there.
* **No mixing**: if the tables already hold rows and ``drop_existing`` is false, nothing is
  written and :class:`SynthError` is raised.
* **Deterministic**: the same ``(patients, seed)`` loads the same rows (see
  :func:`clinipipe.synth.generator.generate`).
* **Bounded memory**: batches of :data:`RUN_BATCH_PATIENTS` patients; generation runs one or two
  batches ahead of loading in a background thread, so the generator and the PostgreSQL server
  work at the same time.
* Serialized: concurrent ``run_synth`` calls against one database wait for each other (a
  transaction-scoped advisory lock).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from clinipipe.source.hospital_load import HospitalPopulated, load_hospital
from clinipipe.source.loader import analyze_tables
from clinipipe.synth.generator import CHUNK_PATIENTS, TABLES, expected_rows, generate

__all__ = ["RUN_BATCH_PATIENTS", "SynthError", "SynthSummary", "run_synth"]

#: Patients per generated batch during a load (small, so loading starts early and progress is
#: smooth; the data does not depend on it).
RUN_BATCH_PATIENTS = CHUNK_PATIENTS
#: (table, batch) items generated ahead of the one being loaded: two batches of patients.
_PREFETCH = 2 * (len(TABLES) - 1)
#: Advisory lock key serializing synth runs on one database ("clinisyn" in ASCII).
_LOCK_KEY = 0x636C696E6973796E

#: Rough relative cost of analyzing a row of each table, to analyze the largest first.
_ROW_WIDTH = {"patients": 20, "clinical_notes": 8}

T = TypeVar("T")


class SynthError(RuntimeError):
    """The synthetic load cannot proceed (e.g. the source already holds data)."""


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`run_synth` loaded."""

    rows: dict[str, int]
    """Rows loaded per table, in load order."""
    seconds: float
    """Wall time of the whole run (connect, generate, COPY, commit, ANALYZE)."""
    bytes: int
    """CSV bytes sent to PostgreSQL."""

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class _Prefetcher(Generic[T]):
    """Runs an iterator in a daemon thread, ``depth`` items ahead of the consumer."""

    _END = object()

    def __init__(self, items: Iterator[T], depth: int) -> None:
        self._items = items
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="synth-generate", daemon=True)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put(_Failure(exc))

    def __iter__(self) -> Iterator[T]:
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is self._END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item  # type: ignore[misc]
        finally:
            self._stop.set()
            self._thread.join()


def run_synth(
    dsn: str,
    patients: int,
    seed: int = 7,
    *,
    drop_existing: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> SynthSummary:
    """Generate a hospital of ``patients`` patients and load it into the PostgreSQL at ``dsn``.

    Creates the tables of ``hospital_schema.sql`` if needed (``drop_existing`` drops and
    recreates them first), loads every table with ``COPY ... FROM STDIN (FORMAT csv, FREEZE)``
    into the tables stripped of their indexes, rebuilds the indexes, all in a single
    transaction, commits, then runs ``ANALYZE`` (after the commit: if only ``ANALYZE`` fails,
    the data is loaded and the error still propagates). ``on_progress(table, rows_done,
    rows_expected)`` is called after each batch (``rows_expected`` is the documented mean, never
    below ``rows_done``) and once per table at the end with ``rows_done == rows_expected``.

    Raises :class:`SynthError` if the tables already hold rows and ``drop_existing`` is false;
    ``ValueError`` for ``patients < 1``; ``SourceError`` for database failures. In every
    failure case nothing is committed.
    """
    if patients < 1:
        raise ValueError("patients must be >= 1")
    started = time.perf_counter()
    expected = expected_rows(patients)
    rows = dict.fromkeys(TABLES, 0)
    stats = {"bytes": 0}
    batches = _Prefetcher(generate(patients, seed, batch_patients=RUN_BATCH_PATIENTS), _PREFETCH)

    def loaded(table: str, count: int) -> None:
        rows[table] += count
        if on_progress is not None:
            on_progress(table, rows[table], max(rows[table], expected[table]))

    try:
        load_hospital(
            dsn,
            TABLES,
            batches,
            drop_existing=drop_existing,
            lock_key=_LOCK_KEY,
            on_loaded=loaded,
            stats=stats,
        )
    except HospitalPopulated as exc:
        raise SynthError(
            f"source already holds {exc.patients:,} patients{exc.detail}; "
            "use --replace to drop and regenerate"
        ) from None
    # Statistics for the planner, two tables at a time (the server has cores to spare now).
    analyze_tables(dsn, sorted(TABLES, key=lambda t: -rows[t] * _ROW_WIDTH.get(t, 1)), workers=2)
    if on_progress is not None:
        for table in TABLES:
            on_progress(table, rows[table], rows[table])
    return SynthSummary(rows=rows, seconds=time.perf_counter() - started, bytes=stats["bytes"])
