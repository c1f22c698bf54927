"""The CDC loop: read → decode → assemble batch → apply with checkpoint → after the batch.

`CdcLoop` wires the steps (one module each) and owns what they share: the open target, the
stop event, the stats. See the package docstring for the guarantees of the whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from clinipipe.backup import audit
from clinipipe.pipeline.backfill import not_backfilled_message, tables_not_backfilled
from clinipipe.pipeline.cdc.after_batch import (
    IDLE_SECONDS,
    AfterBatchJob,
    AfterBatchJobs,
    BatchContext,
    PublishJob,
    RefreshJob,
)
from clinipipe.pipeline.cdc.apply import AppliedCheckpoint, ApplyWorker, BatchApplier, Callbacks
from clinipipe.pipeline.cdc.assemble import BatchAssembler
from clinipipe.pipeline.cdc.decode import TransactionDecoder
from clinipipe.pipeline.cdc.model import (
    RATE_WINDOW_SECONDS,
    CdcError,
    CdcOptions,
    CdcStats,
    CdcSummary,
)
from clinipipe.pipeline.cdc.read import SourceReader
from clinipipe.pipeline.cdc.schema import SchemaFollower
from clinipipe.pipeline.deploy import stale_templates
from clinipipe.source.pgoutput import Change, LogicalMessage, Relation, lsn_to_int, lsn_to_str
from clinipipe.source.postgres import (
    RetryPolicy,
    RetryStopped,
    SourceError,
    is_transient,
    publication_exists,
)
from clinipipe.source.replication import slot_info
from clinipipe.source.stream import HEARTBEAT_PREFIX, emit_marker
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import schema_names
from clinipipe.targets import open_target
from clinipipe.targets.base import CdcBatch, Target, TargetError

log = logging.getLogger("clinipipe.cdc")

HEARTBEAT_SECONDS = 10.0
MESSAGES_PER_READ = 1_000
"""Messages taken from the stream per read (those already received; fewer when it is idle)."""
CATALOG_CHECK_SECONDS = 5.0
STAGE_ROWS = 50_000
"""Buffered changes at which a transaction still streaming is applied into the open target
transaction (targets that stream large transactions): memory stays bounded."""
"""How long CDC keeps retrying an unreachable source before it exits 1."""


def _tunable(name: str) -> Any:
    """A tunable of the package (`clinipipe.pipeline.cdc.RETRY_DELAYS`, `.STAGE_ROWS`), read
    when used, so setting it on the package takes effect (as tests do)."""
    from clinipipe.pipeline import cdc

    return getattr(cdc, name)


def _retry_delays() -> Sequence[float]:
    return tuple(_tunable("RETRY_DELAYS"))


class CdcLoop:
    """One CDC service run for a spec: `run()` streams and applies until stopped (a signal,
    `request_stop()`, `--max-seconds`, or `--until-caught-up`).

    Thread safety: `stats` and `request_stop()` may be used from any thread; `register()`
    before `run()`; everything else runs on the thread that called `run()`.
    """

    def __init__(
        self,
        loaded: LoadedSpec,
        options: CdcOptions = CdcOptions(),
        *,
        on_batch: Callable[[CdcBatch], None] | None = None,
        on_staged: Callable[[CdcBatch], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        """`on_batch`: called with every committed batch (after its checkpoint was confirmed);
        `on_staged`: with every part of a large transaction applied ahead of its batch's commit
        (not yet visible, not yet durable); `on_event`: one line for the terminal (a retry and
        its wait, a failed after-batch job; no values, no secrets)."""
        self.loaded, self.options = loaded, options
        self.on_batch, self.on_staged = on_batch, on_staged
        self.on_event = on_event or log.warning
        self.summary = CdcSummary()
        self._stop = threading.Event()
        self._clean_stop = False
        self._lock = threading.Lock()
        self._stats = CdcStats(slot=loaded.spec.source.slot)
        self._rate: deque[tuple[float, int]] = deque()
        self._jobs = AfterBatchJobs(self._job_failed)
        self._jobs.register(RefreshJob(self.summary, lambda n: self._record("last_refresh", n)))
        self._jobs.register(PublishJob(self.summary, lambda n: self._record("last_publish", n)))
        self._tracker: TransactionDecoder | None = None
        self._unreported: CdcBatch | None = None
        """The last batch committed since the after-batch jobs last ran."""
        self._next_jobs = 0.0
        self._pauses_seen = 0
        self._audit_started = False

    # -- the interface for other threads and jobs -----------------------------------------------

    def register(self, job: AfterBatchJob) -> None:
        """Run `job` after every committed batch and when idle (after the built-in refresh and
        publish jobs, in registration order); see `clinipipe.pipeline.cdc.after_batch`."""
        self._jobs.register(job)

    @property
    def stats(self) -> CdcStats:
        """The latest immutable snapshot (safe from any thread)."""
        return self._stats

    def request_stop(self) -> None:
        """Stop cleanly, as SIGTERM does: finish the batch, refresh and publish what is pending,
        return. Safe from any thread and from a signal handler."""
        self._clean_stop = True
        self._stop.set()

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._stats = dataclasses.replace(self._stats, **changes)

    def _record(self, field: str, names: list[str]) -> None:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            seen = {**getattr(self._stats, field), **dict.fromkeys(names, now)}
            self._stats = dataclasses.replace(self._stats, **{field: seen})

    def _job_failed(self, name: str, report: str) -> None:
        with self._lock:
            errors = {**self._stats.job_errors, name: report}
            self._stats = dataclasses.replace(self._stats, job_errors=errors)
        self.on_event(f"warning: after-batch job {name} failed: {report}; CDC goes on")

    # -- run ------------------------------------------------------------------------------------

    def run(self) -> CdcSummary:
        """Stream and apply until stopped; the summary of this run. `CdcError` (with what to
        do) when CDC cannot go on. Recorded in the audit log: ``cdc start`` once it can start,
        ``cdc stop`` when it ends (`_audit_start`, `_audit_stop`); the CDC loop's own scheduled
        refreshes and publishes are not recorded one by one."""
        started = time.monotonic()
        spec = self.loaded.spec
        # Arrow's default allocator (mimalloc) keeps what a batch freed for reuse, per thread;
        # with batches built on one thread and applied on another that adds up to ~35 MB of
        # RSS on a 1 M-row transaction. The system allocator returns large blocks at once.
        pa.set_memory_pool(pa.system_memory_pool())
        retry = RetryPolicy(
            delays=_retry_delays(),
            give_up_after=self.options.retry_seconds,
            on_retry=lambda line: self.on_event(f"source: {line}"),
            stop=self._stop,
        )
        try:
            with open_target(self.loaded) as target, _stop_on_signals(self.request_stop):
                try:
                    self._run(target, retry, started)
                except BaseException as exc:  # recorded (when it started), never masked
                    self._audit_stop(target, started, exc)
                    raise
                self._audit_stop(target, started, None)
        except RetryStopped:
            pass  # stopped before streaming, while the source was away: nothing to finish
        except SourceError as exc:
            raise CdcError(explain(exc, spec.source.slot, spec.source.publication)) from None
        finally:
            self._update(state="stopped")
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _audit_start(self, target: Target, checkpoint: int) -> None:
        """Append the ``cdc start`` audit entry, before CDC changes anything: the raw tables it
        applies to, the slot and the starting position. A start refused before this (no
        backfill, slot or publication gone) records nothing; a log that cannot be written stops
        CDC here (`CdcError`), so CDC never runs unrecorded."""
        spec = self.loaded.spec
        raw = schema_names(spec)["raw"]
        try:
            audit.append(
                target, "cdc start", objects=[f"{raw}.{t.name}" for t in spec.source.tables],
                spec_digest=self.loaded.digest,
                detail={"slot": spec.source.slot, "start_lsn": lsn_to_str(checkpoint)},
            )  # fmt: skip
        except TargetError as exc:
            raise CdcError(f"CDC did not start: its start could not be recorded in the audit "
                           f"log ({exc})") from None  # fmt: skip
        self._audit_started = True

    def _audit_stop(self, target: Target, started: float, error: BaseException | None) -> None:
        """Append the ``cdc stop`` audit entry of a run whose start was recorded: counts (batches,
        changes, transactions, refreshes, publishes, reconnects), positions and paused tables;
        outcome ``ok`` for a clean stop, ``failed`` with the error's class otherwise (never its
        message; the error itself is raised by the caller). A clean stop that cannot be
        recorded raises `AuditNotRecorded`; a failure that cannot be recorded is only reported
        (`on_event`). A process killed outright leaves a ``cdc start`` without its stop."""
        if not self._audit_started:
            return
        self._audit_started = False
        spec, s = self.loaded.spec, self.summary
        raw = schema_names(spec)["raw"]
        counts = {"batches": s.batches, "changes": s.changes, "transactions": s.transactions,
                  "skipped_transactions": s.skipped_transactions, "refreshes": s.refreshes,
                  "publishes": s.publishes, "publish_failures": len(s.publish_failures),
                  "reconnects": s.reconnects, "schema_changes": s.schema_changes,
                  "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
        detail = {"slot": spec.source.slot, "start_lsn": lsn_to_str(s.start_lsn),
                  "end_lsn": lsn_to_str(s.end_lsn),
                  "paused_tables": sorted(set(s.paused) | set(s.paused_tables))}  # fmt: skip
        objects = [f"{raw}.{t.name}" for t in spec.source.tables]
        if error is None or isinstance(error, RetryStopped):  # a clean stop
            audit.record_outcome(target, "cdc stop", objects=objects, counts=counts,
                                 spec_digest=self.loaded.digest, detail=detail)  # fmt: skip
        else:
            audit.record_failure(target, "cdc stop", error, objects=objects, counts=counts,
                                 spec_digest=self.loaded.digest, detail=detail,
                                 warn=self.on_event)  # fmt: skip

    def _run(self, target: Target, retry: RetryPolicy, started: float) -> None:
        spec, options, summary = self.loaded.spec, self.options, self.summary
        dsn, slot, publication = spec.source.dsn, spec.source.slot, spec.source.publication
        warehouse = spec.warehouses.incremental
        target.require_deployed()
        stale = stale_templates(self.loaded, target)
        if stale:
            raise CdcError(
                f"{target.describe()} was deployed from other templates than this spec and "
                f"clinipipe render ({', '.join(stale)}; an edited spec or an upgraded "
                "clinipipe): run `clinipipe deploy` (`--dry-run` shows what changes), then "
                "`clinipipe cdc start` again"
            )
        checkpoint = _start_checkpoint(target, self.loaded, dsn, slot, publication, retry)
        self._audit_start(target, checkpoint)
        summary.start_lsn = summary.end_lsn = checkpoint
        self._update(confirmed_lsn=checkpoint, paused_tables=target.paused_tables(slot))

        schema = SchemaFollower(
            self.loaded, target, retry, summary,
            lambda: self._tracker.decoder.seq if self._tracker is not None else -1,
        )  # fmt: skip
        schema.evolve([(t.schema_, t.name) for t in spec.source.tables], checkpoint)
        last_catalog_check = time.monotonic()
        # --until-caught-up: stop once the stream passed a marker written now.
        stop_at = None
        if options.until_caught_up:
            stop_at = retry.run(lambda: emit_marker(dsn), "writing a marker to the source")
        caught_up = False

        reader = SourceReader(dsn, slot, publication, checkpoint, retry)
        assembler = BatchAssembler(
            schema, {d.refresh_key for d in spec.dynamic_tables if d.refresh_key}
        )
        callbacks = Callbacks()  # on_batch / on_staged (the PHI scan) never stall the stream
        applier = BatchApplier(
            target, slot, (warehouse.name, warehouse.size), reader.confirm,
            retry_delays=_retry_delays, on_batch=self.on_batch, on_staged=self.on_staged,
            notify=callbacks.call,
        )  # fmt: skip
        staging = target.streams_large_transactions
        stage_rows = int(_tunable("STAGE_ROWS"))
        worker = ApplyWorker(applier)  # commits batch N while this thread decodes N + 1
        self._next_jobs, self._unreported = 0.0, None
        try:
            reader.open()
            # From here on no source read waits with the stream open: a transient failure
            # closes the stream and reconnects with backoff (`_reconnect`).
            schema.retry = retry.in_stream()
            tracker = self._tracker = TransactionDecoder(AppliedCheckpoint(checkpoint))
            self._update(state="streaming")
            while True:
                if self._stop.is_set() and not tracker.in_transaction:
                    break
                elapsed = time.monotonic() - started
                timed_out = options.max_seconds is not None and elapsed >= options.max_seconds
                if timed_out and not tracker.in_transaction:
                    break
                try:
                    if worker.done:  # the batch in flight committed: confirm it, count it
                        self._collect(worker, reader)
                    # Jobs first, while the apply thread is free (under a steady stream it is
                    # free only between collecting a batch and starting the next).
                    self._jobs_when_free(target, reader, worker)
                    waiting = bool(tracker.pending.commit_times) or worker.busy
                    payloads = reader.read_many(0.05 if waiting else 0.5, MESSAGES_PER_READ)
                    for payload in payloads:
                        event = tracker.decode(payload)
                        if event is None:
                            continue
                        if type(event) is Change:
                            if staging and tracker.pending_rows >= stage_rows:
                                end = tracker.pending.end_lsn
                                self._collect(worker, reader)
                                part = applier.batch(
                                    assembler.tables(tracker.decoder.take(), end),
                                    end, (), tracker.pending.received_at,
                                )  # fmt: skip
                                worker.submit_stage(part, tracker.transaction_lsn)
                            continue
                        end = tracker.pending.end_lsn
                        if isinstance(event, Relation) and event.name not in schema.paused:
                            self._collect(worker, reader)
                            schema.on_relation(event, end)
                        elif isinstance(event, LogicalMessage) and not event.transactional:
                            self._collect(worker, reader)
                            if (
                                event.prefix == HEARTBEAT_PREFIX
                                and not tracker.pending.commit_times
                            ):
                                reader.confirm(event.lsn)  # nothing pending: all before it
                            if stop_at is not None and event.lsn >= stop_at:
                                caught_up = True
                            schema.passed(event.lsn)
                        elif not tracker.in_transaction and tracker.pending.commit_times:
                            self._maybe_flush(tracker, assembler, worker, reader, idle=False)
                    message = payloads[-1] if payloads else None
                    if message is None and tracker.pending.commit_times:
                        self._maybe_flush(tracker, assembler, worker, reader, idle=True)
                    if (
                        not tracker.in_transaction
                        and not tracker.pending.commit_times
                        and message is None
                    ):
                        # Idle: everything the server sent is applied; confirm its position.
                        self._collect(worker, reader)
                        reader.idle(HEARTBEAT_SECONDS)
                        if time.monotonic() - last_catalog_check >= CATALOG_CHECK_SECONDS:
                            last_catalog_check = time.monotonic()
                            schema.idle_check(reader.confirmed)
                except RetryStopped:
                    raise
                except SourceError as exc:
                    self._reconnect(exc, reader, tracker, worker, schema)
                    continue
                self._jobs_when_free(target, reader, worker)
                if (
                    not tracker.in_transaction
                    and not tracker.pending.commit_times
                    and not worker.busy
                ):
                    try:
                        schema.between_batches()  # column fills (source reads)
                    except RetryStopped:
                        raise
                    except SourceError as exc:
                        self._reconnect(exc, reader, tracker, worker, schema)
                        continue
                    if caught_up and schema.fill_barrier is None:
                        break
            try:
                if tracker.pending.commit_times and not tracker.in_transaction:
                    self._flush(tracker, assembler, worker, reader)
                self._collect(worker, reader)
            except SourceError as exc:  # the source went away: streamed again next run
                if not is_transient(exc):
                    raise
            callbacks.drain()
        except RetryStopped:  # stopped while the source was away: what is not committed
            self._collect(worker, reader, raise_lost=False)  # streams again next run
            callbacks.drain()
        finally:
            # Failing: a batch in flight still commits (or fails) and, when it committed, is
            # counted and reported like every other (the failure being raised matters more).
            with contextlib.suppress(Exception):
                self._collect(worker, reader, raise_lost=False)
            worker.close()
            callbacks.close()
            reader.close()
        if self._clean_stop:  # a signal or a stop request: refresh and publish what is pending
            self._update(state="stopping")
            self._run_jobs(target, reader, None, stopping=True)
        summary.paused = target.paused_tables(slot)

    def _jobs_when_free(self, target: Target, reader: SourceReader, worker: ApplyWorker) -> None:
        """Run the after-batch jobs when a batch committed since they last ran (with the latest
        such batch), else every `IDLE_SECONDS` — only while nothing is in flight and nothing
        is staged: the raw tables then match the checkpoint and no transaction is open on the
        target (what is decoded and not applied is in memory only), so the jobs may use it
        (refresh, publish, requests of a control socket)."""
        if worker.busy or worker.applier.staged_changes:
            return
        if self._unreported is None and time.monotonic() < self._next_jobs:
            return
        batch, self._unreported = self._unreported, None
        self._run_jobs(target, reader, batch)
        self._next_jobs = time.monotonic() + IDLE_SECONDS

    def _maybe_flush(
        self,
        tracker: TransactionDecoder,
        assembler: BatchAssembler,
        worker: ApplyWorker,
        reader: SourceReader,
        *,
        idle: bool,
    ) -> CdcBatch | None:
        """Between transactions: start applying the pending batch when it is full, due
        (`batch_ms`) or the stream is `idle`. While a batch is being applied, decoding goes on
        (the batch grows) unless it is full or the stream is idle."""
        if tracker.in_transaction or not tracker.pending.commit_times:
            return None
        pending, options = tracker.pending, self.options
        full = tracker.pending_rows >= options.batch_rows
        if not (full or idle):
            due = pending.started is not None and (
                time.monotonic() - pending.started >= options.batch_ms / 1000
            )
            if not due or (worker.busy and not worker.done):
                return None
        return self._flush(tracker, assembler, worker, reader)

    def _flush(
        self,
        tracker: TransactionDecoder,
        assembler: BatchAssembler,
        worker: ApplyWorker,
        reader: SourceReader,
    ) -> CdcBatch | None:
        """Wait for the batch in flight (and count it), then assemble the pending batch and
        start applying it; the batch that was in flight (None: there was none)."""
        previous = self._collect(worker, reader)
        pending = tracker.pending
        tables = assembler.tables(tracker.decoder.take(), pending.end_lsn)
        applier = worker.applier
        batch = applier.batch(
            tables, pending.end_lsn, pending.commit_times, pending.received_at,
            applier.staged_changes, pending.cpu,
        )  # fmt: skip
        pending.taken()
        worker.submit(batch)
        return previous

    def _collect(
        self, worker: ApplyWorker, reader: SourceReader, *, raise_lost: bool = True
    ) -> CdcBatch | None:
        """Wait for the batch in flight (None: there is none): it is committed, confirmed to
        the source and counted. A lost connection found while confirming it is raised after
        the batch was counted (it is committed)."""
        applied = worker.wait()
        if applied is None:
            return None
        batch = self._unreported = applied.batch
        summary = self.summary
        summary.batches += 1
        summary.changes += batch.changes
        summary.transactions += len(batch.commit_times)
        summary.end_lsn = batch.end_lsn
        now = time.monotonic()
        self._rate.append((now, batch.changes))
        while self._rate and self._rate[0][0] < now - RATE_WINDOW_SECONDS:
            self._rate.popleft()
        applied_at = dt.datetime.now(dt.UTC)
        oldest = min(batch.commit_times) if batch.commit_times else None
        self._update(
            changes=summary.changes,
            transactions=summary.transactions,
            batches=summary.batches,
            last_batch_at=applied_at,
            last_batch_latency_seconds=(applied_at - oldest).total_seconds() if oldest else None,
            last_batch_apply_seconds=applied.seconds,
            changes_per_second=sum(c for _, c in self._rate) / RATE_WINDOW_SECONDS,
            confirmed_lsn=reader.confirmed,
        )
        if applied.lost is not None and raise_lost:
            raise applied.lost
        return batch

    def _reconnect(
        self,
        failure: SourceError,
        reader: SourceReader,
        tracker: TransactionDecoder,
        worker: ApplyWorker,
        schema: SchemaFollower,
    ) -> None:
        """The source connection broke: let the batch in flight commit, drop what is not
        applied and stream again from the last applied position (waiting, with backoff). A
        failure retrying cannot fix is raised."""
        if not is_transient(failure):
            raise failure
        self._update(state="reconnecting")
        self._collect(worker, reader, raise_lost=False)
        worker.applier.discard()
        schema.restarted()  # sequence numbers restart
        confirmed = reader.reopen(failure)
        tracker.restart(AppliedCheckpoint(confirmed))
        self.summary.reconnects += 1
        self._update(state="streaming", reconnects=self.summary.reconnects)

    def _run_jobs(
        self,
        target: Target,
        reader: SourceReader,
        batch: CdcBatch | None,
        *,
        stopping: bool = False,
    ) -> None:
        sent = reader.server_sent_lsn
        changes: dict[str, Any] = {
            "confirmed_lsn": reader.confirmed,
            "lag_bytes": max(0, sent - reader.confirmed) if sent else None,
        }
        if len(self.summary.paused_tables) != self._pauses_seen:  # a table paused since
            self._pauses_seen = len(self.summary.paused_tables)
            changes["paused_tables"] = target.paused_tables(self.loaded.spec.source.slot)
        if not self._rate or self._rate[-1][0] < time.monotonic() - RATE_WINDOW_SECONDS:
            changes["changes_per_second"] = 0.0
        self._update(**changes)
        context = BatchContext(
            self.loaded, target, self.loaded.spec.source.slot, self._stats,
            dt.datetime.now(dt.UTC), batch, stopping, self.request_stop,
        )  # fmt: skip
        if self._jobs.run(context):
            self.request_stop()


def _start_checkpoint(
    target: Target, loaded: LoadedSpec, dsn: str, slot: str, publication: str, retry: RetryPolicy
) -> int:
    """Where this run starts; `CdcError` when it cannot start (no backfill, slot or
    publication gone)."""
    run = target.backfill_run(slot)
    if run is not None and run.consistent_point is not None and run.completed_at is None:
        missing = tables_not_backfilled(target, loaded)
        if missing:
            raise CdcError(not_backfilled_message(missing))
    if run is None or run.completed_at is None or run.consistent_point is None:
        raise CdcError(
            f"no completed backfill for slot {slot!r}: run `clinipipe backfill` (or `--resume`) "
            "first"
        )
    info = retry.run(lambda: slot_info(dsn, slot), "reading the replication slot")
    if info is None:
        raise CdcError(_slot_missing(slot))
    if info.wal_status == "lost":
        raise CdcError(
            f"replication slot {slot!r} was invalidated (its WAL was removed, see "
            "max_slot_wal_keep_size). Run `clinipipe cdc reset --yes` and then "
            "`clinipipe backfill --force`."
        )
    if not retry.run(lambda: publication_exists(dsn, publication), "reading the publication"):
        raise CdcError(_publication_missing(publication))
    target.use_warehouse("incremental")
    return target.cdc_checkpoint(slot) or lsn_to_int(run.consistent_point)


def _slot_missing(slot: str) -> str:
    return (
        f"replication slot {slot!r} does not exist any more (dropped, or lost in a "
        "failover): changes since the last checkpoint cannot be recovered. Run `clinipipe "
        "cdc reset --yes` and then `clinipipe backfill --force`."
    )


def _publication_missing(publication: str) -> str:
    return (
        f"publication {publication!r} does not exist on the source (dropped?): run "
        "`clinipipe deploy` (it recreates the publication), then `clinipipe cdc start` again"
    )


def explain(exc: SourceError, slot: str, publication: str) -> str:
    """The message for a source failure CDC stops on: what happened and the command that fixes
    it (identifiers only, never values)."""
    text = str(exc)
    low = text.lower()
    if "publication" in low and "does not exist" in low:
        return f"{text}. {_publication_missing(publication)}"
    if "replication slot" in low and "does not exist" in low:
        return f"{text}. {_slot_missing(slot)}"
    if (
        exc.sqlstate == "42501"
        or "permission denied" in low
        or "must be superuser" in low
        or "must have replication" in low
    ):
        return (
            f"{text}. The source role lacks a privilege CDC needs (REPLICATION, SELECT on the "
            "published tables): grant it, run `clinipipe deploy` (it checks the source "
            "objects), then `clinipipe cdc start` again"
        )
    if exc.sqlstate == "42P01" or ("relation" in low and "does not exist" in low):
        return (
            f"{text}. A published table is gone on the source: recreate it, or remove it from "
            "source.tables and run `clinipipe deploy`; then `clinipipe cdc start` again"
        )
    if "giving up" in low:
        return (
            f"{text}. Is the source running and reachable? `clinipipe cdc start` resumes from "
            "the last checkpoint"
        )
    return (
        f"{text}. Retrying cannot fix this: fix it on the source, then run `clinipipe cdc "
        "start` again (it resumes from the last checkpoint)"
    )


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call `stop`: the loop finishes its batch and exits cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: stop())
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
