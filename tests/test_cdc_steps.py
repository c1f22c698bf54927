"""The CDC loop's named steps, each on its own (clinipipe.pipeline.cdc): decode, assemble,
apply with checkpoint, after-batch jobs; and the loop with registered jobs end to end."""

from __future__ import annotations

import datetime as dt
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from clinipipe.pipeline.cdc import (
    BatchContext,
    CdcError,
    CdcLoop,
    CdcOptions,
    StopRequested,
)
from clinipipe.pipeline.cdc.after_batch import AfterBatchJobs
from clinipipe.pipeline.cdc.apply import AppliedCheckpoint, BatchApplier
from clinipipe.pipeline.cdc.assemble import BatchAssembler
from clinipipe.pipeline.cdc.decode import TransactionDecoder
from clinipipe.pipeline.schema_evolution import ColumnMap, RecordedColumn
from clinipipe.source.catalog import Column, ColumnType, TableSchema
from clinipipe.source.pgoutput import Relation
from clinipipe.source.postgres import SourceError
from clinipipe.targets.base import CdcBatch, TargetError

# --- a tiny pgoutput encoder (protocol 1), so steps run without a server ----------------------

INT4, TEXT = 23, 25
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def relation(oid: int, name: str, columns: list[tuple[str, int, bool]]) -> bytes:
    body = struct.pack("!I", oid) + b"public\0" + name.encode() + b"\0" + b"d"
    body += struct.pack("!h", len(columns))
    for column, type_oid, key in columns:
        body += (
            bytes([1 if key else 0]) + column.encode() + b"\0" + struct.pack("!Ii", type_oid, -1)
        )
    return b"R" + body


def tuple_data(values: list[str | None]) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        else:
            raw = value.encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


def insert(oid: int, values: list[str | None]) -> bytes:
    return b"I" + struct.pack("!I", oid) + b"N" + tuple_data(values)


def update(oid: int, values: list[str | None]) -> bytes:
    return b"U" + struct.pack("!I", oid) + b"N" + tuple_data(values)


def delete(oid: int, key: list[str | None]) -> bytes:
    return b"D" + struct.pack("!I", oid) + b"K" + tuple_data(key)


def begin(final_lsn: int, xid: int = 7) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, 1_000_000, xid)


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack("!bQQq", 0, commit_lsn, end_lsn, 1_000_000)


# --- layouts without a warehouse ---------------------------------------------------------------

T_INT = ColumnType("int32", "integer")
T_TEXT = ColumnType("text", "text")


def table_schema(name: str, key: bool = True) -> TableSchema:
    columns = (
        Column("patient_id", T_INT, False, attnum=1),
        Column("note", T_TEXT, True, attnum=2),
    )
    return TableSchema("public", name, columns, ("patient_id",) if key else (), 1, 1)


class Layouts:
    """What `BatchAssembler` needs, from a table schema alone (no source, no warehouse)."""

    def __init__(self, *tables: TableSchema) -> None:
        self.maps = {}
        for table in tables:
            recorded = {
                c.attnum: RecordedColumn(c.attnum, c.name, c.type.pg_type, False)
                for c in table.columns
            }
            column_map = ColumnMap(table, {})
            column_map.learn(table, recorded, [])
            self.maps[table.name] = column_map
        self.paused: dict[str, int] = {}
        self.pauses: list[tuple[str, str, int]] = []

    def map_for(self, relation: Relation) -> ColumnMap:
        return self.maps[relation.name]

    def types_of(self, relation: Relation) -> tuple[ColumnType, ...]:
        return tuple(T_INT if oid == INT4 else T_TEXT for oid in relation.type_oids)

    def pause(self, table: str, reason: str, lsn: int) -> None:
        self.paused[table] = 10**9
        self.pauses.append((table, reason, lsn))


COLUMNS = [("patient_id", INT4, True), ("note", TEXT, False)]


def decode_all(decoder: TransactionDecoder, *payloads: bytes) -> None:
    for payload in payloads:
        decoder.decode(payload)


def test_decode_counts_whole_transactions_into_the_pending_batch() -> None:
    decoder = TransactionDecoder(AppliedCheckpoint(100))
    decode_all(decoder, relation(1, "vitals", COLUMNS), begin(200), insert(1, ["1", "a"]))
    assert decoder.in_transaction and not decoder.pending  # not committed yet: no batch
    decode_all(decoder, commit(200, 210), begin(300), insert(1, ["2", "b"]), commit(300, 310))
    assert not decoder.in_transaction
    assert decoder.pending.end_lsn == 310 and len(decoder.pending.commit_times) == 2
    assert decoder.pending.commit_times[0] == PG_EPOCH + dt.timedelta(microseconds=1_000_000)
    assert decoder.pending_rows == 2


def test_decode_skips_transactions_the_checkpoint_already_holds() -> None:
    """After a reconnect or a crash the source resends transactions the warehouse committed:
    those ending at or before the checkpoint leave no row and no batch; the next one does."""
    decoder = TransactionDecoder(AppliedCheckpoint(1000))
    decode_all(
        decoder, relation(1, "vitals", COLUMNS),
        begin(900), insert(1, ["1", "old"]), delete(1, ["2", None]), commit(900, 950),
    )  # fmt: skip
    assert decoder.skipped_transactions == 1
    assert decoder.pending_rows == 0 and not decoder.pending and decoder.pending.end_lsn == 1000
    decode_all(decoder, begin(1000), insert(1, ["3", "new"]), commit(1000, 1100))
    assert decoder.skipped_transactions == 1
    assert decoder.pending_rows == 1 and decoder.pending.end_lsn == 1100


def test_assemble_maps_decoded_changes_onto_raw_tables_without_a_warehouse() -> None:
    layouts = Layouts(table_schema("vitals"))
    assembler = BatchAssembler(layouts, {"patient_id", "encounter_id"})
    decoder = TransactionDecoder(AppliedCheckpoint(0))
    decode_all(
        decoder, relation(1, "vitals", COLUMNS), begin(10),
        insert(1, ["1", "a"]), insert(1, ["2", None]), update(1, ["1", "b"]),
        delete(1, ["2", None]), commit(10, 20),
    )  # fmt: skip
    [table] = assembler.tables(decoder.decoder.take(), decoder.pending.end_lsn)
    assert decoder.pending_rows == 0  # taken
    assert table.table.name == "vitals" and table.refresh_keys == ("patient_id",)
    changes = table.changes
    assert changes["_op"].to_pylist() == ["I", "I", "U", "D"]
    assert changes["patient_id"].to_pylist() == ["1", "2", "1", "2"]
    assert changes["note"].to_pylist() == ["a", None, "b", None]


def test_assemble_keeps_a_paused_tables_changes_up_to_the_pause_only() -> None:
    layouts = Layouts(table_schema("vitals"))
    assembler = BatchAssembler(layouts, ())
    decoder = TransactionDecoder(AppliedCheckpoint(0))
    decode_all(
        decoder, relation(1, "vitals", COLUMNS), begin(10),
        insert(1, ["1", "a"]), insert(1, ["2", "b"]), insert(1, ["3", "c"]), commit(10, 20),
    )  # fmt: skip
    layouts.paused["vitals"] = decoder.decoder.seq - 1  # paused before the third change
    [table] = assembler.tables(decoder.decoder.take(), 20)
    assert table.changes["patient_id"].to_pylist() == ["1", "2"]
    layouts.paused["vitals"] = -1  # paused before this stream: nothing at all
    decode_all(decoder, begin(30), insert(1, ["4", "d"]), commit(30, 40))
    assert assembler.tables(decoder.decoder.take(), 40) == []


def test_assemble_pauses_an_append_only_table_at_its_first_update() -> None:
    layouts = Layouts(table_schema("events", key=False))
    assembler = BatchAssembler(layouts, ())
    decoder = TransactionDecoder(AppliedCheckpoint(0))
    decode_all(
        decoder, relation(1, "events", COLUMNS), begin(10),
        insert(1, ["1", "a"]), update(1, ["1", "b"]), insert(1, ["2", "c"]), commit(10, 20),
    )  # fmt: skip
    [table] = assembler.tables(decoder.decoder.take(), 20)
    assert table.changes["_op"].to_pylist() == ["I"]  # only what came before the update
    [(name, reason, lsn)] = layouts.pauses
    assert name == "events" and "append-only" in reason and lsn == 20


# --- apply with checkpoint ----------------------------------------------------------------------


class FakeTarget:
    """Records what the apply step asks of the warehouse; fails the first `failures` applies."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[str] = []
        self.committed: list[CdcBatch] = []

    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        self.calls.append("apply")
        if self.failures:
            self.failures -= 1
            raise TargetError("the disk is full")
        self.committed.append(batch)

    def stage_cdc_changes(self, tables: Any, lsn: int) -> None:
        self.calls.append(f"stage {lsn}")

    def discard_staged_cdc(self) -> None:
        self.calls.append("discard")


def applier(target: FakeTarget, log: list[str], **kwargs: Any) -> BatchApplier:
    return BatchApplier(
        target,  # type: ignore[arg-type]
        "slot",
        ("WH", "XSMALL"),
        lambda lsn: log.append(f"confirm {lsn}"),
        retry_delays=lambda: (0.0, 0.0),
        **kwargs,
    )


def test_apply_confirms_only_after_the_commit_and_retries_a_rolled_back_batch() -> None:
    target, log = FakeTarget(failures=2), []
    step = applier(target, log, on_batch=lambda b: log.append(f"on_batch {b.end_lsn}"))
    now = dt.datetime.now(dt.UTC)
    applied = step.apply([], 500, [now], now)
    assert target.calls == ["apply", "apply", "apply"]  # two failures, then the commit
    assert [b.end_lsn for b in target.committed] == [500]
    assert log == ["confirm 500", "on_batch 500"]  # confirmed after the commit only
    assert applied.lost is None and applied.batch.commit_times == (now,)
    target.failures = 3  # more failures than retries: a clear error, nothing confirmed
    with pytest.raises(CdcError, match="applying a batch failed repeatedly"):
        step.apply([], 600, [now], now)
    assert log == ["confirm 500", "on_batch 500"]


def test_apply_does_not_retry_once_parts_were_staged() -> None:
    """Staged parts of a large transaction die with a failed commit: no retry (it would
    commit a batch without them); the error says the batch is replayed."""
    target, log = FakeTarget(failures=1), []
    step = applier(target, log)
    step.stage([], 0, 450, None)
    step.staged_changes = 5  # as if a part of 5 changes had been staged
    with pytest.raises(CdcError, match="replays the batch"):
        step.apply([], 500, [dt.datetime.now(dt.UTC)], None)
    assert target.calls == ["stage 450", "apply"] and log == []


def test_apply_keeps_the_batch_when_confirming_finds_the_connection_gone() -> None:
    target = FakeTarget()
    seen: list[int] = []

    def confirm(lsn: int) -> None:
        raise SourceError("server closed the connection unexpectedly", transient=True)

    step = BatchApplier(
        target, "slot", ("WH", "XSMALL"), confirm,  # type: ignore[arg-type]
        retry_delays=lambda: (), on_batch=lambda b: seen.append(b.end_lsn),
    )  # fmt: skip
    applied = step.apply([], 700, [dt.datetime.now(dt.UTC)], None)
    assert [b.end_lsn for b in target.committed] == [700] and seen == [700]
    assert applied.lost is not None and applied.lost.transient


# --- after the batch -----------------------------------------------------------------------------


class Job:
    def __init__(self, name: str, log: list[str], fail: BaseException | None = None) -> None:
        self.name, self.log, self.fail = name, log, fail

    def run(self, context: BatchContext) -> None:
        self.log.append(self.name)
        if self.fail is not None:
            raise self.fail


def context() -> BatchContext:
    return BatchContext(None, None, "slot", None, dt.datetime.now(dt.UTC))  # type: ignore[arg-type]


def test_after_batch_jobs_run_in_registration_order_and_a_failure_stops_nothing() -> None:
    log: list[str] = []
    errors: list[tuple[str, str]] = []
    jobs = AfterBatchJobs(lambda name, report: errors.append((name, report)))
    jobs.register(Job("first", log))
    jobs.register(Job("broken", log, ValueError("invalid value 'Jane Doe' in row")))
    jobs.register(Job("last", log))
    assert jobs.run(context()) is False  # no stop
    assert log == ["first", "broken", "last"]
    assert errors == [("broken", "ValueError: invalid value '…' in row")]  # no values
    with pytest.raises(TypeError):
        jobs.register(object())  # type: ignore[arg-type]


def test_after_batch_job_can_ask_to_stop() -> None:
    log: list[str] = []
    jobs = AfterBatchJobs(lambda *_: None)
    jobs.register(Job("stopper", log, StopRequested()))
    jobs.register(Job("after", log))
    assert jobs.run(context()) is True and log == ["stopper", "after"]


def test_scheduled_refreshes_and_publishes_run_niced_on_the_background_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Readers first: the refreshes the CDC loop schedules (and publishes) run on the one
    background thread, nicer than the loop's thread, which waits for them; a background call
    made from the background thread runs at once."""
    import os
    import threading

    from clinipipe.pipeline import background
    from clinipipe.pipeline.cdc import after_batch
    from clinipipe.pipeline.cdc.model import CdcSummary

    seen: list[tuple[str, int]] = []

    def refresh_due(loaded: object, target: object) -> list[object]:
        me = threading.get_native_id()
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, me)))
        assert background.in_background(lambda: 42) == 42  # nested: no deadlock
        return []

    monkeypatch.setattr(after_batch, "refresh_due", refresh_due)
    usual = background.NICE
    background.set_niceness(5)
    try:
        after_batch.RefreshJob(CdcSummary()).run(context())
    finally:
        background.set_niceness(usual)
    loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    [(thread, niceness)] = seen
    assert thread.startswith("clinipipe-background")
    assert niceness == min(19, loop_niceness + 5)


# --- the loop with registered jobs, against PostgreSQL and DuckDB ------------------------------


class Recorder:
    """A registered job: what it saw, on which thread."""

    name = "recorder"

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.threads: set[int] = set()
        self.stopping = 0
        self.states: set[str] = set()

    def run(self, context: BatchContext) -> None:
        self.threads.add(threading.get_ident())
        self.states.add(context.stats.state)
        if context.batch is not None:
            self.batches.append(context.batch.changes)
            assert context.stats.changes >= context.batch.changes
            # Between batches: the loop's own connection is free for a job to use.
            assert context.target.cdc_checkpoint(context.slot) == context.batch.end_lsn
        if context.stopping:
            self.stopping += 1


class Failing:
    name = "failing"

    def __init__(self) -> None:
        self.runs = 0

    def run(self, context: BatchContext) -> None:
        self.runs += 1
        raise RuntimeError("exporter down at 'host'")


def test_loop_runs_registered_jobs_and_a_failing_job_loses_no_batch(
    hospital_project: Path, pg_dsn: str
) -> None:
    from clinipipe.pipeline.backfill import run_backfill
    from clinipipe.spec import load_spec
    from tests.helpers import assert_target_equals_source, execute

    run_backfill(load_spec(hospital_project))
    execute(pg_dsn, "UPDATE labs SET unit = unit || '.' WHERE lab_id < 40")
    execute(pg_dsn, "DELETE FROM claims WHERE claim_id < 5")
    recorder, failing = Recorder(), Failing()
    events: list[str] = []
    loop = CdcLoop(load_spec(hospital_project), CdcOptions(until_caught_up=True),
                   on_event=events.append)  # fmt: skip
    loop.register(failing)
    loop.register(recorder)
    summary = loop.run()
    assert failing.runs >= 1 and sum(recorder.batches) == summary.changes > 0
    assert recorder.threads == {threading.get_ident()}  # the loop's thread
    assert recorder.states == {"streaming"} and recorder.stopping == 0
    assert loop.stats.state == "stopped" and loop.stats.changes == summary.changes
    assert loop.stats.batches == summary.batches and loop.stats.job_errors["failing"]
    assert "'host'" not in loop.stats.job_errors["failing"]
    assert any("after-batch job failing failed" in e for e in events)
    assert set(loop.stats.last_refresh) == {"daily_census", "patient_summary", "recent_labs"}
    assert summary.refreshes >= 3 and summary.publishes == 3
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_a_job_can_stop_the_loop_cleanly(hospital_project: Path, pg_dsn: str) -> None:
    """A job's stop request (as a control socket's `stop`) ends the run like SIGTERM: a last
    round of jobs with `stopping` set, and the loop returns."""
    from clinipipe.pipeline.backfill import run_backfill
    from clinipipe.spec import load_spec

    run_backfill(load_spec(hospital_project))

    class StopAtOnce:
        name = "stop"

        def run(self, context: BatchContext) -> None:
            if not context.stopping:
                context.request_stop()

    recorder = Recorder()
    loop = CdcLoop(load_spec(hospital_project), CdcOptions())  # would run forever
    loop.register(StopAtOnce())
    loop.register(recorder)
    summary = loop.run()
    assert recorder.stopping == 1 and "streaming" in recorder.states
    assert loop.stats.state == "stopped" and summary.paused == {}
