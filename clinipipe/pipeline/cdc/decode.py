"""Step 2, decode: pgoutput messages into events, whole transactions, and the pending batch.

Guarantees:

* Row changes go into the decoder's Arrow-bound buffers (`Decoder`), never one Python object
  per row kept; a transaction is counted into the pending batch only at its Commit, so a
  batch always holds whole source transactions, in commit order.
* A transaction the warehouse already holds (`AppliedCheckpoint.already_applied`: it ended
  at or before the checkpoint, e.g. replayed after a reconnect or a crash) is dropped here:
  none of its row changes reach a batch. Its Relation messages still pass (schema changes stay
  ordered by the stream).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from clinipipe.pipeline.cdc.apply import AppliedCheckpoint
from clinipipe.source.pgoutput import Begin, Change, Commit, Decoder
from clinipipe.targets.metering import CpuClock

_ROW_KINDS = (b"I", b"U", b"D", b"T")
Event = object
"""What `Decoder.decode` returns: Begin, Commit, Relation, Change, Truncate, LogicalMessage."""


@dataclass
class PendingBatch:
    """Committed source transactions decoded and not yet applied."""

    end_lsn: int
    """End LSN of the last transaction in the batch (the checkpoint it will save)."""
    commit_times: list[dt.datetime] = field(default_factory=list)
    started: float | None = None
    """time.monotonic() at the first transaction's Commit (the batch's age starts there)."""
    received_at: dt.datetime | None = None
    cpu: CpuClock | None = None
    """Started at the batch's first change (this thread's CPU for the batch: metering)."""

    def __bool__(self) -> bool:
        return bool(self.commit_times)

    def taken(self) -> None:
        """The batch was applied: start an empty one (from the same end LSN)."""
        self.commit_times.clear()
        self.started = self.received_at = self.cpu = None


class TransactionDecoder:
    """The decode step: feed it payloads (`decode`) in stream order."""

    def __init__(self, checkpoint: AppliedCheckpoint) -> None:
        self.checkpoint = checkpoint
        self.decoder = Decoder()
        self.pending = PendingBatch(checkpoint.lsn)
        self.in_transaction = False
        self.skipping = False
        self.transaction_lsn = 0
        """Final LSN of the transaction being decoded (parts of it are staged under it)."""
        self.skipped_transactions = 0

    def decode(self, payload: bytes) -> Event | None:
        """The event of one pgoutput message (None: a row of an already-applied transaction,
        or a message without an event)."""
        if self.skipping and payload[:1] in _ROW_KINDS:
            return None
        event = self.decoder.decode(payload)
        if type(event) is Change:  # the common case first: one check per row
            pending = self.pending
            if pending.started is None and (pending.received_at is None or pending.cpu is None):
                pending.received_at = pending.received_at or dt.datetime.now(dt.UTC)
                pending.cpu = pending.cpu or CpuClock()
            return event
        if isinstance(event, Begin):
            self.in_transaction = True
            self.transaction_lsn = event.final_lsn
            self.skipping = self.checkpoint.already_applied(event.final_lsn)
            if self.skipping:
                self.skipped_transactions += 1
        elif isinstance(event, Commit):
            self.in_transaction = False
            if not self.skipping:
                pending = self.pending
                pending.end_lsn = max(pending.end_lsn, event.end_lsn)
                pending.commit_times.append(event.commit_ts)
                if pending.started is None:
                    pending.started = time.monotonic()
                    pending.received_at = dt.datetime.now(dt.UTC)
                    pending.cpu = pending.cpu or CpuClock()
            self.skipping = False
        return event

    @property
    def between_transactions(self) -> bool:
        return not self.in_transaction

    @property
    def pending_rows(self) -> int:
        return self.decoder.pending_rows

    def restart(self, checkpoint: AppliedCheckpoint) -> None:
        """The stream restarts at `checkpoint` (a reconnect): forget everything not applied."""
        self.checkpoint = checkpoint
        self.decoder = Decoder()
        self.pending = PendingBatch(checkpoint.lsn)
        self.in_transaction = self.skipping = False
