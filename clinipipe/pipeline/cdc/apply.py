"""Step 4, apply with checkpoint: a batch and its LSN commit in one warehouse transaction, and
only then is the LSN confirmed to PostgreSQL.

Guarantees:

* **Exactly-once effect.** `BatchApplier.apply` hands the batch to `Target.apply_cdc_batch`,
  which writes its rows and the checkpoint (the end LSN of its last transaction) in one
  transaction; only after it returned is the LSN confirmed through `confirm`. A crash before
  the commit leaves nothing of the batch and the source resends it; a crash after it leaves
  the checkpoint, and `AppliedCheckpoint` skips what the source resends.
* **Retries.** A failed apply rolled back entirely, so it is retried (`RETRY_DELAYS` of the
  `clinipipe.pipeline.cdc` package) and then reported as a `CdcError`. Once parts of a large
  transaction were staged into the open warehouse transaction (`stage`), a failure loses them:
  no retry, the error says to start again (the batch is replayed from the checkpoint).
* **Bounded memory.** `stage` applies what is buffered of a transaction still streaming into
  the open warehouse transaction (not visible, not durable before the batch commits).
* **Overlap.** `ApplyWorker` commits a batch on a worker thread (the warehouse releases the
  GIL) while the loop decodes the next one. At most one batch is in flight; the loop waits for
  it (`ApplyWorker.wait`) before it assembles, stages or applies the next, before schema
  changes and jobs, and before reconnecting. So batches commit one at a time in LSN order, and
  the LSN is confirmed (`BatchApplier.finish`, on the loop's thread, which owns the source
  connection) only after its batch committed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from clinipipe.pipeline.cdc.model import CdcError
from clinipipe.source.postgres import SourceError
from clinipipe.targets.base import CdcBatch, TableBatch, Target, TargetError
from clinipipe.targets.metering import CpuClock


@dataclass(frozen=True)
class AppliedCheckpoint:
    """The warehouse's checkpoint: the end LSN of the last transaction it committed."""

    lsn: int

    def already_applied(self, final_lsn: int) -> bool:
        """Whether the transaction whose commit record is at `final_lsn` is in the warehouse
        (its end LSN, past its commit record, is at or before the checkpoint)."""
        return final_lsn < self.lsn


@dataclass(frozen=True)
class Applied:
    """A committed batch and how long the apply took."""

    batch: CdcBatch
    seconds: float
    lost: SourceError | None = None
    """Set when confirming to the source failed (the connection is gone): the batch is
    committed all the same; the next stream starts after it."""


class BatchApplier:
    """The apply-with-checkpoint step for one slot on one open target."""

    def __init__(
        self,
        target: Target,
        slot: str,
        warehouse: tuple[str, str],
        confirm: Callable[[int], None],
        *,
        retry_delays: Callable[[], Sequence[float]],
        on_batch: Callable[[CdcBatch], None] | None = None,
        on_staged: Callable[[CdcBatch], None] | None = None,
        notify: Callable[[Callable[[CdcBatch], None], CdcBatch], None] | None = None,
    ) -> None:
        """`warehouse`: (name, size) recorded with every batch. `confirm(lsn)`: tell the
        source. `retry_delays()`: the waits between attempts of a failed apply."""
        self.target, self.slot, self.warehouse = target, slot, warehouse
        self._confirm = confirm
        self._retry_delays = retry_delays
        self.on_batch, self.on_staged = on_batch, on_staged
        self._notify = notify or (lambda callback, batch: callback(batch))
        """How `on_batch` / `on_staged` are called (`Callbacks.call`: on a thread of their own)."""
        self.staged_changes = 0
        """Changes applied into the open warehouse transaction, not committed yet."""

    def batch(
        self,
        tables: Sequence[TableBatch],
        end_lsn: int,
        commit_times: Sequence[dt.datetime],
        received_at: dt.datetime | None,
        staged: int = 0,
        cpu: CpuClock | None = None,
    ) -> CdcBatch:
        name, size = self.warehouse
        return CdcBatch(
            self.slot, end_lsn, tuple(tables), tuple(commit_times),
            received_at or dt.datetime.now(dt.UTC), name, size, staged, cpu or CpuClock(),
        )  # fmt: skip

    def stage(
        self,
        tables: Sequence[TableBatch],
        end_lsn: int,
        transaction_lsn: int,
        received_at: dt.datetime | None,
    ) -> CdcBatch:
        """Apply buffered changes of the transaction at `transaction_lsn` (still streaming) into
        the open warehouse transaction; the next `apply` commits them."""
        part = self.batch(tables, end_lsn, (), received_at)
        self.target.stage_cdc_changes(part.tables, transaction_lsn)
        self.staged(part)
        return part

    def staged(self, part: CdcBatch) -> None:
        """`part` was staged (`Target.stage_cdc_changes`): count it, call `on_staged`."""
        self.staged_changes += part.changes
        if self.on_staged is not None:
            self._notify(self.on_staged, part)

    def apply(
        self,
        tables: Sequence[TableBatch],
        end_lsn: int,
        commit_times: Sequence[dt.datetime],
        received_at: dt.datetime | None,
        cpu: CpuClock | None = None,
    ) -> Applied:
        """Commit the batch with its checkpoint `end_lsn`, confirm `end_lsn` to the source, then
        call `on_batch`. A failed confirm is returned in `Applied.lost`, not raised. `cpu`:
        started at the batch's first change in this thread (metered with the batch)."""
        batch = self.batch(tables, end_lsn, commit_times, received_at, self.staged_changes, cpu)
        return self.finish(batch, self.commit(batch))

    def commit(self, batch: CdcBatch) -> float:
        """Commit `batch` with its checkpoint (any thread; nothing is confirmed); the seconds
        it took."""
        started = time.monotonic()
        if batch.staged_changes:  # staged parts are gone on failure: no retry, replay instead
            try:
                self.target.apply_cdc_batch(batch)
            except TargetError as exc:
                raise CdcError(
                    f"{exc}; run `clinipipe cdc start` again: it replays the batch from "
                    "the last checkpoint"
                ) from None
        else:
            _with_retries(
                lambda: self.target.apply_cdc_batch(batch),
                TargetError,
                "applying a batch",
                self._retry_delays(),
            )
        return time.monotonic() - started

    def finish(self, batch: CdcBatch, seconds: float) -> Applied:
        """After `commit(batch)` returned: confirm its end LSN to the source and call
        `on_batch` (on the thread that owns the source connection)."""
        self.staged_changes = 0
        lost: SourceError | None = None
        try:
            self._confirm(batch.end_lsn)
        except SourceError as exc:
            lost = exc
        if self.on_batch is not None:
            self._notify(self.on_batch, batch)
        return Applied(batch, seconds, lost)

    def discard(self) -> None:
        """Forget staged parts (the stream restarts before their batch committed)."""
        self.target.discard_staged_cdc()
        self.staged_changes = 0


class _MeasuredCpu(CpuClock):
    """The CPU of a batch decoded on one thread and committed on another: the decoding
    thread's seconds (measured there) plus this thread's from its creation on."""

    def __init__(self, decoded: float | None) -> None:
        super().__init__()
        self.decoded = decoded

    def seconds(self) -> float | None:
        here = super().seconds()
        if self.decoded is None or here is None:
            return None
        return self.decoded + here


class ApplyWorker:
    """Commits batches of a `BatchApplier` on one worker thread, one at a time (see the module
    docstring). `submit` and `wait` are called from the loop's thread only."""

    def __init__(self, applier: BatchApplier) -> None:
        self.applier = applier
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future[float] | None = None
        self._batch: CdcBatch | None = None
        self._staging = False

    @property
    def busy(self) -> bool:
        """A batch is in flight (submitted, not yet collected by `wait`)."""
        return self._future is not None

    @property
    def done(self) -> bool:
        """The batch in flight finished (committed or failed): `wait` will not block."""
        return self._future is not None and self._future.done()

    def submit(self, batch: CdcBatch) -> None:
        """Start committing `batch`. The previous one must have been collected (`wait`)."""
        if self._future is not None:
            raise RuntimeError("a batch is already being applied")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="clinipipe-apply")
        decoded = batch.cpu.seconds() if batch.cpu is not None else None
        applier = self.applier

        def commit() -> float:
            measured = _MeasuredCpu(decoded)  # created on the worker thread
            return applier.commit(dataclasses.replace(batch, cpu=measured))

        self._batch, self._staging = batch, False
        self._future = self._executor.submit(commit)

    def submit_stage(self, part: CdcBatch, transaction_lsn: int) -> None:
        """Start staging `part` (changes of the transaction at `transaction_lsn`, still
        streaming) into the open warehouse transaction; the next batch commits it. The previous
        work must have been collected (`wait`)."""
        if self._future is not None:
            raise RuntimeError("a batch is already being applied")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="clinipipe-apply")
        target = self.applier.target

        def stage() -> float:
            started = time.monotonic()
            target.stage_cdc_changes(part.tables, transaction_lsn)
            return time.monotonic() - started

        self._batch, self._staging = part, True
        self._future = self._executor.submit(stage)

    def wait(self) -> Applied | None:
        """Wait for the work in flight. A committed batch: confirm it and call `on_batch` here
        (`BatchApplier.finish`), and return it; a staged part: count it and call `on_staged`
        (None); nothing in flight: None. A failure is raised here."""
        future, batch, staging = self._future, self._batch, self._staging
        if future is None or batch is None:
            return None
        try:
            seconds = future.result()
        finally:
            self._future = self._batch = None
        if staging:
            self.applier.staged(batch)
            return None
        return self.applier.finish(batch, seconds)

    def close(self) -> None:
        """Wait for the worker to end (a batch in flight commits or fails first; its result is
        dropped: the caller stops)."""
        self._future = self._batch = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class Callbacks:
    """Calls `on_batch` / `on_staged` (e.g. the PHI scan of every batch) in order on a thread
    of their own, so a slow callback never holds up reading, decoding or committing: each is
    called after its batch committed and was confirmed, as before, just not before the next
    batch may start. At most `max_changes` changes wait for their callback (then `call`
    waits), so memory stays bounded. A callback's exception is raised on the caller's thread
    by the next `call` or by `drain`."""

    def __init__(self, max_changes: int = 50_000) -> None:
        self.max_changes = max_changes
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: deque[tuple[Future[None], int]] = deque()

    def call(self, callback: Callable[[CdcBatch], None], batch: CdcBatch) -> None:
        self._harvest(block=False)
        while self._waiting and (
            sum(n for _, n in self._waiting) + batch.changes > self.max_changes
        ):
            self._harvest(block=True)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="clinipipe-callbacks")
        self._waiting.append((self._executor.submit(callback, batch), batch.changes))

    def _harvest(self, *, block: bool) -> None:
        """Forget the callbacks that returned (the oldest one, waiting for it, when `block`);
        raise the first failure."""
        while self._waiting and (block or self._waiting[0][0].done()):
            future, _ = self._waiting.popleft()
            future.result()
            block = False

    def drain(self) -> None:
        """Wait for every callback; raise the first failure."""
        while self._waiting:
            self._harvest(block=True)

    def close(self) -> None:
        """Wait for the callbacks (their failures dropped: the caller is failing already)."""
        while self._waiting:
            future, _ = self._waiting.popleft()
            future.exception()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _with_retries(
    action: Callable[[], None], errors: type[Exception], what: str, delays: Sequence[float]
) -> None:
    """Run `action`, retrying on `errors` after each of `delays`, then `CdcError`.

    Only for idempotent actions: a failed batch was rolled back.
    """
    for delay in (*delays, None):
        try:
            action()
            return
        except errors as exc:
            if delay is None:
                raise CdcError(f"{what} failed repeatedly, giving up: {exc}") from None
            time.sleep(delay)
