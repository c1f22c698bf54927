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
  Into DuckDB a range in flight also holds the row group being filled (122,880 rows), so
  tables with wide rows load fewer ranges at once than `--workers` (`IN_FLIGHT_BYTES`).
* **Typed where exact.** Into a target that takes typed batches (`Loading.typed_ranges`:
  DuckDB) ranges are read as COPY BINARY decoded into typed Arrow columns
  (`clinipipe.source.binary_reader`), the types the driver cannot carry exactly as their export
  text; into the others as CSV text (`clinipipe.source.range_reader`).
* **The warehouse's own reader where proven exact.** A table that the target reads from
  PostgreSQL itself (a `TableScanning` target whose `Loading.scan_unsupported` is None:
  DuckDB's postgres extension, every column of a type on its allow-list,
  `clinipipe.targets.duckdb.scanner`) and that is at most `SCAN_MAX_TABLE_BYTES` is planned as
  ONE range, the whole table, loaded by `TableScanning.load_scan` in one transaction under the
  same exported snapshot (the extension reads it with parallel binary COPYs), with
  `clinipipe.source.scan_source.check_guard` run alongside to fail the load on the values its
  decoding would alter (numeric NaN, timestamps beyond DuckDB's range), as the text path
  fails. Resumability is then per table: a crash loses the table in flight, never records part
  of it. One scanned table loads at a time (it uses every DuckDB thread); other tables' ranges
  load alongside. If the target finds at run time that it cannot read the table exactly
  (`ScanUnavailable`), the range is read by the readers above.
* **Interruptible.** SIGINT or SIGTERM during the load cancels the queued ranges and the running
  COPYs (the server-side query is cancelled; the range's target transaction rolls back and is
  never recorded as done) within about a second, keeps the committed ranges and raises
  `BackfillInterrupted`, which says to run `clinipipe backfill --resume`.
* **Complete means every table.** What a run loaded is its plan (`_clinipipe.backfill_plan`)
  and its completed ranges: a table is loaded when it has planned ranges and all of them are
  done. `--tables` loads only the tables named; the run stays incomplete (and `cdc start`
  refuses, see `tables_not_backfilled`) until every table of the spec is loaded, by a later
  `clinipipe backfill` (or `--resume`, or `--resume --tables ...`), which reads the tables not
  loaded yet under a fresh snapshot exactly as a resume does. Append-only tables (no primary
  key) can only be loaded exactly under the slot's own snapshot: a first `--tables` run must
  include them.
* **Audited.** Each run appends one ``backfill`` entry to the audit log when it ends: the raw
  tables it loads, rows, bytes, ranges planned and kept, status, whether the backfill is
  complete; outcome ``failed`` (with the error's class and the ranges kept) when it failed or
  was interrupted after it began changing the warehouse. A refusal before that (a backfill to
  resume, a slot that is gone, an append-only table left out) records nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field

from clinipipe.backup import audit
from clinipipe.source.catalog import TableSchema, introspect_table
from clinipipe.source.postgres import SourceError, connect
from clinipipe.source.range_reader import CopyCancel, PageRange, plan_ranges
from clinipipe.source.replication import (
    SnapshotHolder,
    create_slot_exporting_snapshot,
    drop_slot,
    export_snapshot,
    slot_info,
)
from clinipipe.source.scan_source import ScanSession, check_guard, snapshot_statement
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import schema_names
from clinipipe.targets import open_target
from clinipipe.targets.base import BackfillRun, RangeWork, Target, TargetError
from clinipipe.targets.capabilities.loading import ScanUnavailable, TableScan, TableScanning

ProgressCallback = Callable[[str, int, int], None]
"""on_progress(table, rows_delta, bytes_delta), called from worker threads."""


class BackfillError(Exception):
    """The backfill cannot start or did not finish; the message says what to do next."""


class BackfillInterrupted(BackfillError):
    """SIGINT/SIGTERM stopped the load; committed ranges are kept (`ranges_kept` of
    `ranges_planned`). The message names `clinipipe backfill --resume`."""

    def __init__(self, message: str, ranges_kept: int, ranges_planned: int) -> None:
        super().__init__(message)
        self.ranges_kept = ranges_kept
        self.ranges_planned = ranges_planned


@dataclass
class TableSummary:
    table: str
    ranges: int
    ranges_skipped: int = 0
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reader: str = ""
    """How the table was read: 'warehouse scan' (`TableScanning.load_scan`) or 'copy' (ranges)."""


@dataclass
class BackfillSummary:
    """What a backfill did. `status` is 'loaded', 'resumed', 'already-complete' (every spec
    table was loaded before) or 'nothing-to-load' (the tables asked for were loaded before,
    others are not). `remaining`: spec tables still to load; the backfill is complete (and
    CDC may start) only when it is empty."""

    status: str
    slot: str
    consistent_point: str
    warehouse: str
    tables: dict[str, TableSummary] = field(default_factory=dict)
    seconds: float = 0.0
    remaining: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.remaining

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
    dsn = spec.source.dsn
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
        raw = schema_names(spec)["raw"]
        with audit.audited(
            target, "backfill", spec_digest=loaded.digest,
            objects=[f"{raw}.{name}" for name in schemas], began=False,
        ) as entry:  # fmt: skip
            summary = _backfill_on(
                loaded, options, target, schemas, entry, started, on_start, on_progress
            )
    summary.seconds = time.monotonic() - started
    return summary


def _backfill_on(
    loaded: LoadedSpec,
    options: BackfillOptions,
    target: Target,
    schemas: dict[str, TableSchema],
    entry: audit.AuditRun,
    started: float,
    on_start: Callable[[dict[str, TableSchema]], None] | None,
    on_progress: ProgressCallback | None,
) -> BackfillSummary:
    """`run_backfill` on the open, deployed `target`; fills the audit `entry` (`began` from the
    first change on: a refusal before it records nothing)."""
    dsn, slot = loaded.spec.source.dsn, loaded.spec.source.slot
    raw = schema_names(loaded.spec)["raw"]
    warehouse = target.use_warehouse("initialization")
    run = target.backfill_run(slot)
    existing_slot = slot_info(dsn, slot)
    resume = _decide(run, existing_slot is not None, options, slot)
    if resume:
        assert run is not None
        status = _table_status(target, run.run_id)
        todo = {n for n in schemas if status.get(n) != "loaded"}
        if not todo:
            remaining = _remaining(loaded, status)
            state = "nothing-to-load" if remaining else "already-complete"
            if not remaining and run.completed_at is None:
                target.finish_backfill_run(run.run_id)
            summary = BackfillSummary(
                state, slot, run.consistent_point or "", warehouse, remaining=remaining
            )
            _describe(entry, summary, started, raw)
            return summary
        interrupted = sorted(n for n in todo if status.get(n) == "partial")
        if interrupted and not options.resume:
            raise BackfillError(
                f"a backfill started {run.started_at:%Y-%m-%d %H:%M} UTC did not finish "
                f"({', '.join(interrupted)} partly loaded). Run `clinipipe backfill "
                "--resume` to keep its completed ranges, or `--force` to reload."
            )
        schemas = {n: s for n, s in schemas.items() if n in todo}
    else:
        _refuse_partial_without_append_only(loaded, schemas)

    holder: SnapshotHolder
    if resume:
        assert run is not None and run.consistent_point is not None
        holder = export_snapshot(dsn)
        try:
            planned = target.planned_ranges(run.run_id)
            plan = [PageRange(t, n, a, b) for t, n, a, b in planned if t in schemas]
            done = target.completed_ranges(run.run_id)
            new_tables = [n for n in schemas if not any(r.table == n for r in plan)]
            _refuse_inexact_resume(schemas, plan, done, new_tables)
            entry.began = True
            fresh = _plan_new_tables(target, schemas, new_tables, options)
            if fresh:
                target.plan_backfill_run(
                    run.run_id,
                    run.consistent_point,
                    [(r.table, r.number, r.start_page, r.end_page) for r in fresh],
                )
                plan += fresh
        except BaseException:
            holder.close()
            raise
    else:
        run = BackfillRun(
            run_id=uuid.uuid4().hex,
            slot=slot,
            consistent_point=None,
            tables=tuple(schemas),
            started_at=dt.datetime.now(dt.timezone.utc),
        )
        entry.began = True
        target.begin_backfill_run(run)
        if existing_slot is not None:
            drop_slot(dsn, slot)
        for schema in schemas.values():
            target.create_raw_table(schema, replace=True)
        holder = create_slot_exporting_snapshot(dsn, slot)
        assert holder.consistent_point is not None
        run = dataclasses.replace(run, consistent_point=holder.consistent_point)
        plan = [r for schema in schemas.values() for r in _plan_table(target, schema, options)]
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
    todo_ranges = [r for r in plan if (r.table, r.number) not in done]
    summary.remaining = _remaining(loaded, _table_status(target, run.run_id))  # before the load
    try:
        _load_ranges(
            loaded, target, run, schemas, todo_ranges, holder, resume, options.workers,
            summary, on_progress, scanned=_scan_tables(target, schemas, plan, options),
        )  # fmt: skip
    finally:
        holder.close()
        _describe(entry, summary, started, raw)  # also when the load failed or was stopped
    summary.remaining = _remaining(loaded, _table_status(target, run.run_id))
    if not summary.remaining:
        target.finish_backfill_run(run.run_id)
    _describe(entry, summary, started, raw)
    return summary


def _describe(entry: audit.AuditRun, summary: BackfillSummary, started: float, raw: str) -> None:
    """The backfill's audit entry: the raw tables this run loads, rows, bytes, ranges (planned,
    kept from an interrupted run), status and whether the backfill is complete. No values."""
    tables = summary.tables.values()
    planned = sum(t.ranges for t in tables)
    kept = sum(t.ranges_skipped for t in tables)
    entry.counts = {
        "tables": len(summary.tables),
        "rows": summary.rows,
        "bytes": summary.bytes,
        "ranges_planned": planned,
        "ranges_kept": kept,
        "seconds": round(time.monotonic() - started, 3),
    }
    entry.objects = [f"{raw}.{name}" for name in summary.tables]
    entry.detail = {"status": summary.status, "slot": summary.slot,
                    "readers": {t.table: t.reader for t in tables if t.reader},
                    "consistent_point": summary.consistent_point, "warehouse": summary.warehouse,
                    "complete": summary.complete, "remaining": list(summary.remaining)}  # fmt: skip


def tables_not_backfilled(target: Target, loaded: LoadedSpec) -> list[str]:
    """Spec tables (in spec order) that the backfill of the spec's slot has not fully loaded:
    all of them when there is no backfill with a consistent point. CDC may start only when
    this is empty; `clinipipe backfill --resume` loads the rest. Reads only the target."""
    run = target.backfill_run(loaded.spec.source.slot)
    if run is None or run.consistent_point is None:
        return [t.name for t in loaded.spec.source.tables]
    return _remaining(loaded, _table_status(target, run.run_id))


def not_backfilled_message(tables: list[str]) -> str:
    """What `cdc start` says when `tables_not_backfilled` is not empty."""
    return (
        f"the backfill has not loaded {len(tables)} table(s) of the spec: {', '.join(tables)}. "
        "CDC can start only when every table is loaded: run `clinipipe backfill --resume` "
        f"(or `clinipipe backfill --resume --tables {','.join(tables)}`)."
    )


def _table_status(target: Target, run_id: str) -> dict[str, str]:
    """Per planned table of `run_id`: 'loaded' (every planned range done) or 'partial'."""
    planned: dict[str, int] = {}
    for table, _, _, _ in target.planned_ranges(run_id):
        planned[table] = planned.get(table, 0) + 1
    done: dict[str, int] = {}
    for table, _ in target.completed_ranges(run_id):
        done[table] = done.get(table, 0) + 1
    return {t: "loaded" if done.get(t, 0) >= n else "partial" for t, n in planned.items()}


def _remaining(loaded: LoadedSpec, status: dict[str, str]) -> list[str]:
    return [t.name for t in loaded.spec.source.tables if status.get(t.name) != "loaded"]


def _plan_new_tables(
    target: Target,
    schemas: dict[str, TableSchema],
    names: list[str],
    options: BackfillOptions,
) -> list[PageRange]:
    """Create (empty) the raw tables of `names`, which this run has not loaded yet, and plan
    their ranges. A crash before the plan is recorded leaves them unplanned: the next run
    replaces them again."""
    plan: list[PageRange] = []
    for name in names:
        schema = schemas[name]
        target.create_raw_table(schema, replace=True)
        plan += _plan_table(target, schema, options)
    return plan


SCAN_MAX_TABLE_BYTES = 16 * 1024**3
"""Tables up to this size (heap and TOAST) that the target can scan itself load as one range
(resumability per table); larger ones load in ranges, for finer resumability."""


def _scanned(target: Target, schema: TableSchema, options: BackfillOptions) -> bool:
    """Whether `schema` is loaded whole by the target's own reader (`TableScanning.load_scan`)."""
    return (
        options.pages_per_range is None
        and isinstance(target, TableScanning)
        and schema.table_bytes <= SCAN_MAX_TABLE_BYTES
        and target.scan_unsupported(schema) is None
    )


def _plan_table(target: Target, schema: TableSchema, options: BackfillOptions) -> list[PageRange]:
    if _scanned(target, schema, options):
        return [PageRange(schema.name, 0, 0, None)]
    return plan_ranges(schema, options.pages_per_range or _pages_per_range(schema))


def _refuse_partial_without_append_only(
    loaded: LoadedSpec, schemas: dict[str, TableSchema]
) -> None:
    """A table without a primary key can be loaded exactly only under the slot's own snapshot
    (a later snapshot would load its rows inserted meanwhile a second time, through CDC)."""
    tables = loaded.spec.source.tables
    left_out = [t.name for t in tables if t.append_only and t.name not in schemas]
    if left_out:
        raise BackfillError(
            f"append-only table(s) {', '.join(left_out)} (no primary key) can only be loaded "
            "exactly by the first backfill of a slot, under its snapshot: add them to --tables "
            "(or leave --tables out)."
        )


def _refuse_inexact_resume(
    schemas: dict[str, TableSchema],
    plan: list[PageRange],
    done: set[tuple[str, int]],
    new_tables: list[str] = (),  # type: ignore[assignment]
) -> None:
    """A resume reads the missing ranges (and `new_tables`, not planned yet) under a new
    snapshot and relies on CDC replaying by key; a table without a primary key cannot be
    matched, so its rows inserted since the first snapshot would arrive twice."""
    unfinished = sorted(
        {
            r.table
            for r in plan
            if (r.table, r.number) not in done and not schemas[r.table].primary_key
        }
        | {n for n in new_tables if not schemas[n].primary_key}
    )
    if unfinished:
        raise BackfillError(
            f"cannot resume exactly: append-only table(s) {', '.join(unfinished)} (no primary "
            "key) were not fully loaded, and rows inserted since the first snapshot would be "
            "loaded twice. Run `clinipipe backfill --force` to load from scratch."
        )


def _decide(
    run: BackfillRun | None, slot_exists: bool, options: BackfillOptions, slot: str
) -> bool:
    """True to continue `run` (the caller decides from its tables what is left to load and
    whether that needs --resume), False to load from scratch."""
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


ROW_GROUP_ROWS = 122_880
"""Rows of one DuckDB row group."""
ROWS_PER_RANGE = int(2.75 * ROW_GROUP_ROWS)
"""Rows a range aims at: whole row groups plus three quarters of one. A range of at least one
row group is written straight to the file as it commits (a smaller one goes through the WAL
and is written again at the checkpoint); ending each range three quarters into a row group
keeps any two neighbouring partial row groups larger than one, so the checkpoint has nothing
to merge (vacuum) and rewrite, whatever the order ranges commit in, within a quarter of a row
group of error in the row estimate."""
MAX_PAGES_PER_RANGE = 1 << 20  # 8 GiB of heap: ranges are sized by rows and bytes
BYTES_PER_RANGE = 96 * 1024 * 1024
"""Table data (out-of-line TOAST values included) a range aims at; wide rows make ranges of
fewer rows, but never fewer than `MIN_ROWS_PER_RANGE`."""
MIN_ROWS_PER_RANGE = int(1.75 * ROW_GROUP_ROWS)
IN_FLIGHT_BYTES = 512 * 1024 * 1024
"""Estimated table data of the row groups being filled at once (one per range in flight: the
warehouse holds a row group until it is full, the reader one batch): wide rows load fewer
ranges at once than `--workers`."""


def _row_bytes(schema: TableSchema) -> float:
    if schema.table_bytes <= 0 or schema.estimated_rows <= 0:
        return 0.0
    return schema.table_bytes / schema.estimated_rows


def _pages_per_range(schema: TableSchema) -> int:
    if schema.pages <= 0 or schema.estimated_rows <= 0:
        return MAX_PAGES_PER_RANGE
    rows_per_page = schema.estimated_rows / schema.pages
    rows = ROWS_PER_RANGE
    width = _row_bytes(schema)
    if width > 0:
        fitting = BYTES_PER_RANGE / width  # whole row groups that fit, plus three quarters
        groups = max(MIN_ROWS_PER_RANGE, (fitting // ROW_GROUP_ROWS + 0.75) * ROW_GROUP_ROWS)
        rows = min(rows, int(groups))
    return max(1, min(MAX_PAGES_PER_RANGE, round(rows / rows_per_page)))


def _ranges_at_once(schema: TableSchema, workers: int) -> int:
    """How many ranges of `schema` may load at once: `workers`, fewer for wide rows."""
    width = _row_bytes(schema)
    if width <= 0:
        return workers
    return max(1, min(workers, int(IN_FLIGHT_BYTES // (width * ROW_GROUP_ROWS))))


def _scan_tables(
    target: Target, schemas: dict[str, TableSchema], plan: list[PageRange],
    options: BackfillOptions,
) -> set[str]:  # fmt: skip
    """Tables planned as one whole-table range that the target scans itself."""
    whole = {
        r.table for r in plan
        if r.start_page == 0 and r.end_page is None
        and sum(1 for x in plan if x.table == r.table) == 1
    }  # fmt: skip
    return {n for n in whole if _scanned(target, schemas[n], options)}


@contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM set `stop` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
    stop: threading.Event | None = None,
    scanned: set[str] | None = None,
) -> None:
    """Load `todo` on `workers` threads; the tables of `scanned` (one whole-table range each)
    through `TableScanning.load_scan`, one at a time. A failing range stops the others
    (completed ones are kept) and raises `BackfillError`; `stop` being set (SIGINT/SIGTERM
    while loading) cancels the queued ranges and the running COPYs and raises
    `BackfillInterrupted`."""
    warehouse = loaded.spec.warehouses.initialization
    lock = threading.Lock()
    stop = stop or threading.Event()
    cancel = CopyCancel()
    committed = 0

    limits = {
        name: threading.BoundedSemaphore(_ranges_at_once(schema, max(1, workers)))
        for name, schema in schemas.items()
    }

    scanned = scanned or set()
    scan_slot = threading.Lock()  # a scan uses every DuckDB thread: one at a time

    def load(page_range: PageRange) -> None:
        if page_range.table in scanned:
            with scan_slot:
                if load_scanned(page_range):
                    return
        with limits[page_range.table]:
            load_one(page_range)

    def load_scanned(page_range: PageRange) -> bool:
        """The whole table by the target's reader; False when it cannot (read it in ranges)."""
        nonlocal committed
        if cancel.cancelled:
            return True
        schema = schemas[page_range.table]
        work = RangeWork(
            run.run_id, page_range.number, replace_keys, warehouse.name, "initialization",
            warehouse.size,
        )  # fmt: skip
        dsn = loaded.spec.source.dsn
        reported = [0]

        def on_rows(delta: int) -> None:
            reported[0] += delta
            if on_progress is not None:
                on_progress(page_range.table, delta, 0)

        session = ScanSession(dsn)

        def guard() -> None:
            try:
                check_guard(dsn, holder.snapshot_name, schema, cancel, page_range.number)
            except BaseException:
                session.cancel()  # stop the scan's readers: the range fails anyway
                raise

        scan = TableScan(
            conninfo=session.conninfo,
            snapshot_sql=snapshot_statement(holder.snapshot_name),
            guard=guard,
            cancel=cancel,
            on_rows=on_rows,
        )
        began = time.monotonic()
        assert isinstance(target, TableScanning)
        cancel._enter(session)  # a cancel also cancels the readers on the server
        try:
            rows = target.load_scan(schema, work, scan)
        except ScanUnavailable:
            return False
        finally:
            cancel._leave(session)
        with lock:
            committed += 1
            table = summary.tables[page_range.table]
            table.rows += rows
            table.bytes += schema.table_bytes
            table.seconds += time.monotonic() - began
            table.reader = "warehouse scan"
        if on_progress is not None:
            on_progress(page_range.table, max(0, rows - reported[0]), schema.table_bytes)
        return True

    def load_one(page_range: PageRange) -> None:
        nonlocal committed
        if cancel.cancelled:
            return
        schema = schemas[page_range.table]
        work = RangeWork(
            run.run_id, page_range.number, replace_keys, warehouse.name, "initialization",
            warehouse.size,
        )  # fmt: skip
        began = time.monotonic()
        dsn = loaded.spec.source.dsn
        if target.typed_ranges:  # imported here: a scan-only load never imports pyarrow
            from clinipipe.source.binary_reader import read_range_typed as reader
        else:
            from clinipipe.source.range_reader import read_range as reader
        with reader(dsn, holder.snapshot_name, schema, page_range, cancel) as stream:
            rows = target.load_range(schema, work, stream)
            nbytes = stream.bytes_read
        with lock:
            committed += 1
            table = summary.tables[page_range.table]
            table.rows += rows
            table.bytes += nbytes
            table.seconds += time.monotonic() - began
            table.reader = table.reader or "copy"
        if on_progress is not None:
            on_progress(page_range.table, rows, nbytes)

    # Largest tables first, so the slowest range does not start last.
    todo = sorted(todo, key=lambda r: (-schemas[r.table].pages, r.table, r.number))
    failed: list[Future[None]] = []
    with (
        _signals_stop(stop),
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="backfill") as pool,
    ):
        futures = [pool.submit(load, r) for r in todo]
        pending: set[Future[None]] = set(futures)
        while pending and not stop.is_set():
            finished, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
            failed = [f for f in finished if f.exception() is not None]
            if failed:
                break
        if stop.is_set() or failed:
            cancel.cancel()  # running COPYs end in CopyCancelled; their ranges roll back
            for f in futures:
                f.cancel()
            wait(futures)
    if stop.is_set():
        kept = sum(t.ranges_skipped for t in summary.tables.values()) + committed
        planned = sum(t.ranges for t in summary.tables.values())
        raise BackfillInterrupted(
            f"backfill interrupted: {kept} of {planned} ranges are loaded and kept (ranges "
            "in flight were rolled back). Run `clinipipe backfill --resume` to load the rest.",
            kept,
            planned,
        )
    if failed:
        error = failed[0].exception()
        assert error is not None
        if isinstance(error, SourceError | BackfillError | TargetError):
            raise BackfillError(
                f"{error} Completed ranges are kept: fix the cause and run "
                "`clinipipe backfill --resume`."
            ) from None
        raise error
