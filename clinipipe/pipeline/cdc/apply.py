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
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
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
    ) -> None:
        """`warehouse`: (name, size) recorded with every batch. `confirm(lsn)`: tell the
        source. `retry_delays()`: the waits between attempts of a failed apply."""
        self.target, self.slot, self.warehouse = target, slot, warehouse
        self._confirm = confirm
        self._retry_delays = retry_delays
        self.on_batch, self.on_staged = on_batch, on_staged
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
        self.staged_changes += part.changes
        if self.on_staged is not None:
            self.on_staged(part)
        return part

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
        started = time.monotonic()
        if self.staged_changes:  # staged parts are gone on failure: no retry, replay instead
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
        seconds = time.monotonic() - started
        self.staged_changes = 0
        lost: SourceError | None = None
        try:
            self._confirm(end_lsn)
        except SourceError as exc:
            lost = exc
        if self.on_batch is not None:
            self.on_batch(batch)
        return Applied(batch, seconds, lost)

    def discard(self) -> None:
        """Forget staged parts (the stream restarts before their batch committed)."""
        self.target.discard_staged_cdc()
        self.staged_changes = 0


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
