"""`clinipipe cdc start`: stream changes from the slot into the warehouse, exactly once.

Guarantees:

* **Exactly-once effect.** A batch holds whole source transactions. Its rows and the
  checkpoint (the end LSN of its last transaction) commit in one target transaction; only then
  is that LSN confirmed to PostgreSQL. A transaction too large to buffer is applied in parts
  into that same open target transaction as it streams (`Target.stage_cdc_changes`), so memory
  stays bounded; none of it is visible or durable before the batch commits. After a crash the
  stream restarts at the confirmed LSN and every transaction at or below the target's
  checkpoint is skipped. Applying is by primary key, so even a replayed transaction converges
  to the same state.
* **Order.** Transactions are applied in commit order; within a batch the last change per key
  wins.
* **Slot hygiene.** When nothing is pending, the position the server reports is confirmed, and
  a heartbeat message keeps an idle publication from pinning WAL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from clinipipe.pipeline.publish import PublishScheduler
from clinipipe.pipeline.refresh import refresh_due
from clinipipe.pipeline.schema_evolution import (
    ColumnMap,
    IncompatibleChange,
    map_changes,
    plan_changes,
)
from clinipipe.source.catalog import (
    EXPORT_SESSION_SETTINGS,
    CatalogError,
    ColumnType,
    TableSchema,
    introspect_table,
    resolve_column_types,
)
from clinipipe.source.pgoutput import (
    Begin,
    Change,
    Commit,
    Decoder,
    LogicalMessage,
    Relation,
    TableChanges,
    lsn_to_int,
    lsn_to_str,
)
from clinipipe.source.postgres import SourceError, connect
from clinipipe.source.range_reader import PageRange, read_range
from clinipipe.source.replication import export_snapshot, slot_info
from clinipipe.source.stream import HEARTBEAT_PREFIX, ReplicationStream, emit_marker
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets import open_target
from clinipipe.targets.base import CdcBatch, TableBatch, TargetError

HEARTBEAT_SECONDS = 10.0
CATALOG_CHECK_SECONDS = 5.0
REFRESH_CHECK_SECONDS = 1.0
STAGE_ROWS = 100_000
"""Buffered changes at which a transaction still streaming is applied into the open target
transaction (targets that stream large transactions): memory stays bounded."""


class CdcError(Exception):
    """CDC cannot run; the message says what to do."""


@dataclass(frozen=True)
class CdcOptions:
    max_seconds: float | None = None
    until_caught_up: bool = False
    batch_rows: int = 50_000
    batch_ms: int = 1000


@dataclass
class CdcSummary:
    batches: int = 0
    changes: int = 0
    transactions: int = 0
    skipped_transactions: int = 0
    start_lsn: int = 0
    end_lsn: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    reconnects: int = 0
    schema_changes: int = 0
    paused_tables: list[str] = field(default_factory=list)
    """Tables this run paused."""
    paused: dict[str, str] = field(default_factory=dict)
    """Every table CDC does not apply at the end of the run (paused now or earlier) -> why."""
    refreshes: int = 0
    publishes: int = 0
    publish_failures: list[str] = field(default_factory=list)
    """One line per failed publish of an interactive table ("name: reason", no values)."""


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the event: the loop finishes its batch and exits cleanly."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_cdc(
    loaded: LoadedSpec,
    options: CdcOptions = CdcOptions(),
    *,
    on_batch: Callable[[CdcBatch], None] | None = None,
    on_staged: Callable[[CdcBatch], None] | None = None,
) -> CdcSummary:
    """Stream and apply changes until stopped (signal, --max-seconds, or --until-caught-up).

    `on_batch` is called with every committed batch; `on_staged` with every part of a large
    transaction applied ahead of its batch's commit (not yet visible, not yet durable)."""
    spec = loaded.spec
    dsn, slot = spec.source.dsn, spec.source.slot
    warehouse = spec.warehouses.incremental
    refresh_columns = {d.refresh_key for d in spec.dynamic_tables if d.refresh_key}
    append_only = {(t.schema_, t.name) for t in spec.source.tables if t.append_only}
    started = time.monotonic()
    summary = CdcSummary()

    with open_target(loaded) as target, _stop_on_signals() as stop:
        target.require_deployed()
        run = target.backfill_run(slot)
        if run is None or run.completed_at is None or run.consistent_point is None:
            raise CdcError(
                "no completed backfill for slot "
                f"{slot!r}: run `clinipipe backfill` (or `--resume`) first"
            )
        info = slot_info(dsn, slot)
        if info is None:
            raise CdcError(
                f"replication slot {slot!r} does not exist any more (dropped, or lost in a "
                "failover): changes since the last checkpoint cannot be recovered. Run `clinipipe "
                "cdc reset --yes` and then `clinipipe backfill --force`."
            )
        if info.wal_status == "lost":
            raise CdcError(
                f"replication slot {slot!r} was invalidated (its WAL was removed, see "
                "max_slot_wal_keep_size). Run `clinipipe cdc reset --yes` and then "
                "`clinipipe backfill --force`."
            )
        target.use_warehouse("incremental")
        checkpoint = target.cdc_checkpoint(slot) or lsn_to_int(run.consistent_point)
        summary.start_lsn = summary.end_lsn = checkpoint

        maps: dict[tuple[str, str], ColumnMap] = {}
        # Tables CDC stopped applying (an incompatible schema change), with the stream
        # sequence number from which their changes are dropped.
        paused: dict[str, int] = {t: -1 for t in target.paused_tables(slot)}

        pending_pause: dict[str, str] = {}
        stream_types: dict[Relation, tuple[ColumnType, ...]] = {}

        def types_of(relation: Relation) -> tuple[ColumnType, ...]:
            """The types the stream writes `relation`'s values in (cached per layout)."""
            if relation not in stream_types:
                source = connect(dsn)
                try:
                    pairs = list(zip(relation.type_oids, relation.type_mods, strict=True))
                    resolved = resolve_column_types(source, pairs)
                finally:
                    source.close()
                stream_types[relation] = tuple(resolved[p] for p in pairs)
            return stream_types[relation]

        def pause(table: str, reason: str, lsn: int) -> None:
            full = (
                f"{reason}; changes to this table after {lsn_to_str(lsn)} are not applied. "
                "Reload with `clinipipe cdc reset --yes` and `clinipipe backfill --force`."
            )
            target.pause_table(slot, table, full, lsn)
            paused[table] = decoder.seq if decoder is not None else -1
            pending_pause.pop(table, None)
            summary.paused_tables.append(table)

        def evolve(keys: list[tuple[str, str]], lsn: int) -> None:
            """Bring the raw tables of `keys` in line with the source catalog.

            An incompatible change is only noted here: the table is paused where the stream
            reaches it (its first change in the new layout), or once CDC is idle.
            """
            nonlocal fills_recorded
            source = connect(dsn)
            try:
                with source.cursor() as cur:  # ADD COLUMN defaults read as the stream writes text
                    for setting in EXPORT_SESSION_SETTINGS:
                        cur.execute(setting)
                catalogs = {}
                for key in keys:
                    try:
                        catalogs[key] = introspect_table(
                            source, *key, append_only=key in append_only
                        )
                    except CatalogError as exc:  # e.g. a column added that clashes by case
                        if key[1] not in paused:
                            pause(key[1], str(exc), lsn)
            finally:
                source.close()
            for key, catalog in catalogs.items():
                if catalog.name in paused:
                    continue
                known = maps.get(key)
                if known is not None and _same_columns(known.catalog, catalog):
                    continue
                try:
                    changes = plan_changes(catalog, target.recorded_columns(catalog.name))
                except IncompatibleChange as exc:
                    pending_pause[catalog.name] = str(exc)
                    changes = []
                unfillable = [c.column for c in changes if c.fill and not catalog.primary_key]
                if unfillable:  # no key to copy the source's values of existing rows by
                    changes = [dataclasses.replace(c, fill=False) for c in changes]
                if changes:
                    target.evolve_table(changes, lsn)
                    summary.schema_changes += len(changes)
                    fills_recorded = True
                if unfillable:
                    pause(
                        catalog.name,
                        f"column(s) {', '.join(unfillable)} of append-only table "
                        f"{catalog.qualified_name} were added with a volatile default: the "
                        "existing rows got values only the source has, and a table without a "
                        "primary key cannot be matched to copy them",
                        lsn,
                    )
                column_map = known or ColumnMap(catalog, {})
                column_map.learn(
                    catalog, target.recorded_columns(catalog.name),
                    target.renamed_columns(catalog.name),
                )  # fmt: skip
                maps[key] = column_map

        def fill_columns() -> None:
            """Copy the values of columns added with a volatile default (see
            `SchemaChange.fill`) from the source, under one snapshot taken now. Runs only once
            the stream passed a marker written after the fill was recorded: every change from
            before it (rows in the old layout, which would otherwise keep no value) is applied,
            and every later change carries the column and is applied after the copy."""
            schemas = {t.name: t.schema_ for t in spec.source.tables}
            for table, attnum in target.pending_column_fills():
                source = connect(dsn)
                try:
                    catalog = introspect_table(
                        source,
                        schemas[table],
                        table,
                        append_only=(schemas[table], table) in append_only,
                    )
                finally:
                    source.close()
                column = next((c for c in catalog.columns if c.attnum == attnum), None)
                if column is None or not catalog.primary_key:
                    target.fill_column(catalog, "", attnum, None)
                    continue
                keys = [c for c in catalog.columns if c.name in catalog.primary_key]
                part = dataclasses.replace(catalog, columns=(*keys, column))
                holder = export_snapshot(dsn)
                try:
                    with read_range(
                        dsn, holder.snapshot_name, part, PageRange(table, 0, 0, None)
                    ) as rows:
                        target.fill_column(part, column.name, attnum, rows)
                finally:
                    holder.close()

        decoder: Decoder | None = None
        fills_recorded = True  # look for pending column fills (at start, after each DDL)
        evolve([(t.schema_, t.name) for t in spec.source.tables], checkpoint)
        # Columns to copy from the source once the stream passes `fill_barrier`.
        fill_barrier: int | None = None
        fills_due = False
        last_catalog_check = time.monotonic()
        next_refresh = 0.0
        publisher = PublishScheduler()
        # --until-caught-up: stop once the stream passed a marker written now.
        stop_at = emit_marker(dsn) if options.until_caught_up else None
        caught_up = False

        stream = ReplicationStream(dsn, slot, spec.source.publication, checkpoint)
        _with_retries(stream.open, SourceError, "connecting to the replication slot")
        decoder = Decoder()
        staging = target.streams_large_transactions
        staged_changes = 0  # changes applied into the open target transaction, not committed
        transaction_lsn = 0
        commit_times: list[dt.datetime] = []
        batch_end = checkpoint
        batch_started: float | None = None
        received_at: dt.datetime | None = None
        in_transaction = skipping = False

        def table_batches() -> list[TableBatch]:
            """The decoder's buffered changes, mapped onto the raw tables (and taken)."""
            tables = []
            for buffer in decoder.take():
                if not isinstance(buffer, TableChanges) or not len(buffer):
                    continue
                relation = buffer.relation
                arrow = buffer.to_arrow()
                if relation.name in paused:  # keep only what came before the pause
                    arrow = arrow.filter(pc.less_equal(arrow["_seq"], paused[relation.name]))
                    if not arrow.num_rows:
                        continue
                column_map = _map_for(maps, relation)
                if not column_map.catalog.primary_key:
                    arrow, problem = _appends_only(arrow, relation)
                    if problem is not None:
                        pause(relation.name, problem, batch_end)
                    if not arrow.num_rows:
                        continue
                targets, schema, kept = column_map.layout(relation.columns, types_of(relation))
                changes = map_changes(arrow, relation.columns, targets)
                keys = tuple(sorted(refresh_columns & set(schema.column_names)))
                tables.append(TableBatch(schema, changes, keys, kept))
            return tables

        def stage(lsn: int) -> None:
            """Apply what is buffered of a large transaction into the open target transaction
            (memory stays bounded whatever the transaction's size); the next flush commits."""
            nonlocal staged_changes
            part = CdcBatch(
                slot, batch_end, tuple(table_batches()), (),
                received_at or dt.datetime.now(dt.timezone.utc), warehouse.name, warehouse.size,
            )  # fmt: skip
            target.stage_cdc_changes(part.tables, lsn)
            staged_changes += part.changes
            if on_staged is not None:
                on_staged(part)

        def flush() -> None:
            nonlocal batch_end, batch_started, received_at, staged_changes
            batch = CdcBatch(
                slot, batch_end, tuple(table_batches()), tuple(commit_times),
                received_at or dt.datetime.now(dt.timezone.utc), warehouse.name, warehouse.size,
                staged_changes,
            )  # fmt: skip
            if staged_changes:  # staged parts are gone on failure: no retry, replay instead
                try:
                    target.apply_cdc_batch(batch)
                except TargetError as exc:
                    raise CdcError(
                        f"{exc}; run `clinipipe cdc start` again: it replays the batch from "
                        "the last checkpoint"
                    ) from None
            else:
                _with_retries(
                    lambda: target.apply_cdc_batch(batch), TargetError, "applying a batch"
                )
            staged_changes = 0
            stream.confirm(batch_end)
            summary.batches += 1
            summary.changes += batch.changes
            summary.transactions += len(commit_times)
            summary.end_lsn = batch_end
            if on_batch is not None:
                on_batch(batch)
            commit_times.clear()
            batch_started = received_at = None

        try:
            while True:
                if stop.is_set() and not in_transaction:
                    break
                elapsed = time.monotonic() - started
                timed_out = options.max_seconds is not None and elapsed >= options.max_seconds
                if timed_out and not in_transaction:
                    break
                try:
                    message = stream.read(timeout=0.05 if commit_times else 0.5)
                except SourceError:
                    # Connection lost (source restart, network): drop what is not applied and
                    # stream again from the last applied position.
                    stream.close()
                    target.discard_staged_cdc()
                    staged_changes = 0
                    decoder = Decoder()
                    paused.update(dict.fromkeys(paused, -1))  # sequence numbers restart
                    commit_times.clear()
                    in_transaction = skipping = False
                    batch_started = received_at = None
                    checkpoint = batch_end = stream.confirmed
                    stream = ReplicationStream(dsn, slot, spec.source.publication, checkpoint)
                    _with_retries(stream.open, SourceError, "reconnecting to the source")
                    summary.reconnects += 1
                    continue
                if message is not None:
                    kind = message.payload[:1]
                    if skipping and kind in (b"I", b"U", b"D", b"T"):
                        continue
                    event = decoder.decode(message.payload)
                    if isinstance(event, Begin):
                        in_transaction = True
                        transaction_lsn = event.final_lsn
                        skipping = event.final_lsn < checkpoint
                        if skipping:
                            summary.skipped_transactions += 1
                    elif isinstance(event, Commit):
                        in_transaction = False
                        if not skipping:
                            batch_end = max(batch_end, event.end_lsn)
                            commit_times.append(event.commit_ts)
                            if batch_started is None:
                                batch_started = time.monotonic()
                                received_at = dt.datetime.now(dt.timezone.utc)
                        skipping = False
                    elif isinstance(event, Relation) and event.name not in paused:
                        column_map = _map_for(maps, event)
                        problem = column_map.incompatibility(event.columns, types_of(event))
                        if problem is not None:
                            pause(event.name, problem, batch_end)
                        elif event.columns != tuple(column_map.catalog.column_names) or any(
                            t.pg_type != c.type.pg_type
                            for t, c in zip(
                                types_of(event), column_map.catalog.columns, strict=False
                            )
                        ):
                            evolve([(event.schema, event.name)], batch_end)
                    elif isinstance(event, LogicalMessage) and not event.transactional:
                        if event.prefix == HEARTBEAT_PREFIX and not commit_times:
                            stream.confirm(event.lsn)  # nothing pending: all before it is applied
                        if stop_at is not None and event.lsn >= stop_at:
                            caught_up = True
                        if fill_barrier is not None and event.lsn >= fill_barrier:
                            fills_due = True
                    elif isinstance(event, Change):
                        if batch_started is None:
                            received_at = received_at or dt.datetime.now(dt.timezone.utc)
                        if staging and decoder.pending_rows >= STAGE_ROWS:
                            stage(transaction_lsn)
                if not in_transaction and commit_times:
                    due = batch_started is not None and (
                        time.monotonic() - batch_started >= options.batch_ms / 1000
                    )
                    if decoder.pending_rows >= options.batch_rows or due or message is None:
                        flush()
                if not in_transaction and not commit_times and message is None:
                    # Idle: everything the server sent is applied; confirm its position.
                    sent = stream.server_sent_lsn
                    if sent > stream.confirmed:
                        stream.confirm(sent)
                    stream.heartbeat(HEARTBEAT_SECONDS)
                    if time.monotonic() - last_catalog_check >= CATALOG_CHECK_SECONDS:
                        # Caught up and idle: a DDL with no change after it yet (ADD COLUMN
                        # and nothing written) is found in the catalog, not in the stream.
                        last_catalog_check = time.monotonic()
                        evolve(list(maps), stream.confirmed)
                        for table, reason in list(pending_pause.items()):
                            pause(table, reason, stream.confirmed)  # all before it is applied
                if not in_transaction and not commit_times and time.monotonic() >= next_refresh:
                    # Between batches the raw tables match the checkpoint: refresh the dynamic
                    # tables whose lag would otherwise pass their target (on this connection).
                    summary.refreshes += len(refresh_due(loaded, target))
                    published, failures = publisher.step(loaded, target)
                    summary.publishes += len(published)
                    summary.publish_failures += [f"{n}: {why}" for n, why in failures]
                    next_refresh = time.monotonic() + REFRESH_CHECK_SECONDS
                if not in_transaction and not commit_times:
                    if fills_due:
                        fill_columns()
                        fill_barrier, fills_due = None, False
                    if fill_barrier is None and fills_recorded:
                        fills_recorded = False
                        if target.pending_column_fills():
                            fill_barrier = emit_marker(dsn)
                if caught_up and not in_transaction and not commit_times and fill_barrier is None:
                    break
            if commit_times and not in_transaction:
                flush()
            summary.paused = target.paused_tables(slot)
        finally:
            stream.close()
    summary.seconds = time.monotonic() - started
    return summary


RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def _with_retries(action: Callable[[], None], errors: type[Exception], what: str) -> None:
    """Run `action`, retrying on `errors` with backoff (about a minute in all), then re-raise.

    Only for idempotent actions: a failed batch was rolled back, a failed connect did nothing.
    """
    for delay in (*RETRY_DELAYS, None):
        try:
            action()
            return
        except errors as exc:
            if delay is None:
                raise CdcError(f"{what} failed repeatedly, giving up: {exc}") from None
            time.sleep(delay)


def _appends_only(changes: pa.Table, relation: Relation) -> tuple[pa.Table, str | None]:
    """The changes of an append-only table (no primary key) before its first update or delete,
    and why the table must pause when there is one: such a change cannot be matched to one
    warehouse row."""
    matchable = pc.is_in(changes["_op"], pa.array(["I", "T"]))
    if pc.all(matchable).as_py():
        return changes, None
    first = pc.min(pc.filter(changes["_seq"], pc.invert(matchable))).as_py()
    return changes.filter(pc.less(changes["_seq"], first)), (
        f"an update or delete reached append-only table {relation.schema}.{relation.name} "
        "(it has no primary key, so the row cannot be matched in the warehouse)"
    )


def _map_for(maps: dict[tuple[str, str], ColumnMap], relation: Relation) -> ColumnMap:
    column_map = maps.get((relation.schema, relation.name))
    if column_map is None:
        raise CdcError(
            f"changes for {relation.schema}.{relation.name}, which is in the publication but not "
            "in the spec: add it to source.tables, or remove it from the publication"
        )
    return column_map


def _same_columns(a: TableSchema, b: TableSchema) -> bool:
    return [(c.attnum, c.name, c.type.pg_type) for c in a.columns] == [
        (c.attnum, c.name, c.type.pg_type) for c in b.columns
    ]
