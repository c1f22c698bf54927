"""`clinipipe backfill`: the consistent, parallel, resumable initial load.

Guarantees:

* **Exact join with CDC.** A fresh backfill creates the replication slot first; the slot exports
  a snapshot and every range is read under it; the slot's consistent point is recorded as the
  CDC start. Rows committed before that point are loaded once; later changes are streamed.
* **Resumable.** Each range commits together with its `_clinipipe.backfill_ranges` row, so a
  crash (kill -9 included) loses at most the ranges in flight, never records a partial one. A
  resumed backfill (`--resume`) keeps completed ranges and reads the rest under a fresh snapshot,
  replacing rows by primary key; CDC, which replays from the slot's confirmed position and applies
  by key, then converges the target to the source.
* **Bounded memory.** Ranges stream from COPY through Arrow batches; nothing holds a table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from clinipipe.source.catalog import TableSchema, introspect_table
from clinipipe.source.postgres import SourceError, connect
from clinipipe.source.range_reader import PageRange, plan_ranges, read_range
from clinipipe.source.replication import (
    SnapshotHolder,
    create_slot_exporting_snapshot,
    drop_slot,
    export_snapshot,
    slot_info,
)
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets import open_target
from clinipipe.targets.base import BackfillRun, RangeWork, Target, TargetError

ProgressCallback = Callable[[str, int, int], None]
"""on_progress(table, rows_delta, bytes_delta), called from worker threads."""


class BackfillError(Exception):
    """The backfill cannot start or did not finish; the message says what to do next."""


@dataclass
class TableSummary:
    table: str
    ranges: int
    ranges_skipped: int = 0
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class BackfillSummary:
    """What a backfill did. `status` is 'loaded', 'resumed' or 'already-complete'."""

    status: str
    slot: str
    consistent_point: str
    warehouse: str
    tables: dict[str, TableSummary] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables.values())


@dataclass(frozen=True)
class BackfillOptions:
    tables: tuple[str, ...] = ()
    workers: int = 4
    resume: bool = False
    force: bool = False
    pages_per_range: int | None = None


def run_backfill(
    loaded: LoadedSpec,
    options: BackfillOptions = BackfillOptions(),
    *,
    on_start: Callable[[dict[str, TableSchema]], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> BackfillSummary:
    """Run (or resume) the backfill described by `loaded`; see the module docstring."""
    spec = loaded.spec
    wanted = _select_tables(loaded, options.tables)
    dsn, slot = spec.source.dsn, spec.source.slot
    started = time.monotonic()

    source = connect(dsn)
    try:
        schemas = {
            t.name: introspect_table(source, t.schema_, t.name, append_only=t.append_only)
            for t in wanted
        }
    finally:
        source.close()

    with open_target(loaded) as target:
        target.require_deployed()
        warehouse = target.use_warehouse("initialization")
        run = target.backfill_run(slot)
        existing_slot = slot_info(dsn, slot)
        resume = _decide(run, existing_slot is not None, options, slot)
        if resume is None:
            assert run is not None
            return BackfillSummary("already-complete", slot, run.consistent_point or "", warehouse)

        holder: SnapshotHolder
        if resume:
            assert run is not None
            holder = export_snapshot(dsn)
            plan = [
                PageRange(t, n, a, b)
                for t, n, a, b in target.planned_ranges(run.run_id)
                if t in schemas
            ]
            done = target.completed_ranges(run.run_id)
            _refuse_inexact_resume(schemas, plan, done)
        else:
            run = BackfillRun(
                run_id=uuid.uuid4().hex,
                slot=slot,
                consistent_point=None,
                tables=tuple(schemas),
                started_at=dt.datetime.now(dt.timezone.utc),
            )
            target.begin_backfill_run(run)
            if existing_slot is not None:
                drop_slot(dsn, slot)
            for schema in schemas.values():
                target.create_raw_table(schema, replace=True)
            holder = create_slot_exporting_snapshot(dsn, slot)
            assert holder.consistent_point is not None
            run = dataclasses.replace(run, consistent_point=holder.consistent_point)
            plan = [
                r
                for schema in schemas.values()
                for r in plan_ranges(schema, options.pages_per_range or _pages_per_range(schema))
            ]
            target.plan_backfill_run(
                run.run_id,
                holder.consistent_point,
                [(r.table, r.number, r.start_page, r.end_page) for r in plan],
            )
            done = set()

        summary = BackfillSummary(
            "resumed" if resume else "loaded", slot, run.consistent_point or "", warehouse
        )
        for name in schemas:
            ranges = [r for r in plan if r.table == name]
            skipped = sum(1 for r in ranges if (name, r.number) in done)
            summary.tables[name] = TableSummary(name, len(ranges), skipped)
        if on_start is not None:
            on_start(schemas)
        todo = [r for r in plan if (r.table, r.number) not in done]
        try:
            _load_ranges(
                loaded, target, run, schemas, todo, holder, resume, options.workers, summary,
                on_progress,
            )  # fmt: skip
        finally:
            holder.close()
        target.finish_backfill_run(run.run_id)
    summary.seconds = time.monotonic() - started
    return summary


def _refuse_inexact_resume(
    schemas: dict[str, TableSchema], plan: list[PageRange], done: set[tuple[str, int]]
) -> None:
    """A resume reads the missing ranges under a new snapshot and relies on CDC replaying by
    key; a table without a primary key cannot be matched, so its rows inserted since the
    first snapshot would arrive twice."""
    unfinished = sorted(
        {
            r.table
            for r in plan
            if (r.table, r.number) not in done and not schemas[r.table].primary_key
        }
    )
    if unfinished:
        raise BackfillError(
            f"cannot resume exactly: append-only table(s) {', '.join(unfinished)} (no primary "
            "key) were not fully loaded, and rows inserted since the first snapshot would be "
            "loaded twice. Run `clinipipe backfill --force` to load from scratch."
        )


def _decide(
    run: BackfillRun | None, slot_exists: bool, options: BackfillOptions, slot: str
) -> bool | None:
    """True to resume, False to load from scratch, None when already complete."""
    if options.force:
        return False
    if run is None:
        if slot_exists:
            raise BackfillError(
                f"replication slot {slot!r} exists but this target has no record of a backfill "
                "(the slot may belong to another pipeline). Run `clinipipe backfill --force` to "
                "drop it and load from scratch."
            )
        if options.resume:
            raise BackfillError(
                "there is no interrupted backfill to resume; run `clinipipe backfill`"
            )
        return False
    if run.consistent_point is None:
        return False  # died while creating its slot: nothing was loaded, start again
    if not slot_exists:
        raise BackfillError(
            f"replication slot {slot!r} is gone (dropped, or lost in a failover), so changes since "
            "the backfill cannot be streamed. Run `clinipipe backfill --force` to reload."
        )
    if run.completed_at is not None:
        return None
    if not options.resume:
        raise BackfillError(
            f"a backfill started {run.started_at:%Y-%m-%d %H:%M} UTC did not finish. Run "
            "`clinipipe backfill --resume` to keep its completed ranges, or `--force` to reload."
        )
    return True


def _select_tables(loaded: LoadedSpec, names: tuple[str, ...]):
    tables = loaded.spec.source.tables
    if not names:
        return tables
    known = {t.name for t in tables}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BackfillError(
            f"not a source table of the spec: {', '.join(unknown)} "
            f"(tables: {', '.join(sorted(known))})"
        )
    return [t for t in tables if t.name in names]


ROWS_PER_RANGE = 2 * 122_880
"""Two of DuckDB's row groups: a range that fills whole row groups is written as it commits,
instead of leaving a partial group for the final checkpoint."""
MAX_PAGES_PER_RANGE = 4096  # 32 MiB of heap
BYTES_PER_RANGE = 96 * 1024 * 1024
"""Table data (out-of-line TOAST values included) per range: what a range in flight holds in
memory, several times over (text, Arrow, typed values). Wide rows make ranges of fewer rows."""


def _pages_per_range(schema: TableSchema) -> int:
    if schema.pages <= 0 or schema.estimated_rows <= 0:
        return MAX_PAGES_PER_RANGE
    rows_per_page = schema.estimated_rows / schema.pages
    rows = ROWS_PER_RANGE
    if schema.table_bytes > 0:
        rows = min(
            rows, max(1, round(BYTES_PER_RANGE * schema.estimated_rows / schema.table_bytes))
        )
    return max(1, min(MAX_PAGES_PER_RANGE, round(rows / rows_per_page)))


def _load_ranges(
    loaded: LoadedSpec,
    target: Target,
    run: BackfillRun,
    schemas: dict[str, TableSchema],
    todo: list[PageRange],
    holder: SnapshotHolder,
    replace_keys: bool,
    workers: int,
    summary: BackfillSummary,
    on_progress: ProgressCallback | None,
) -> None:
    warehouse = loaded.spec.warehouses.initialization
    lock = threading.Lock()
    stop = threading.Event()

    def load(page_range: PageRange) -> None:
        if stop.is_set():
            return
        schema = schemas[page_range.table]
        work = RangeWork(
            run.run_id, page_range.number, replace_keys, warehouse.name, "initialization",
            warehouse.size,
        )  # fmt: skip
        began = time.monotonic()
        with read_range(loaded.spec.source.dsn, holder.snapshot_name, schema, page_range) as stream:
            rows = target.load_range(schema, work, stream)
            nbytes = stream.bytes_read
        with lock:
            table = summary.tables[page_range.table]
            table.rows += rows
            table.bytes += nbytes
            table.seconds += time.monotonic() - began
        if on_progress is not None:
            on_progress(page_range.table, rows, nbytes)

    # Largest tables first, so the slowest range does not start last.
    todo = sorted(todo, key=lambda r: (-schemas[r.table].pages, r.table, r.number))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="backfill") as pool:
        futures = [pool.submit(load, r) for r in todo]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            stop.set()
            for f in futures:
                f.cancel()
            wait(futures)
            error = failed[0].exception()
            assert error is not None
            if isinstance(error, SourceError | BackfillError | TargetError):
                raise BackfillError(
                    f"{error} Completed ranges are kept: fix the cause and run "
                    "`clinipipe backfill --resume`."
                ) from None
            raise error
