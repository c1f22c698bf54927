"""`clinipipe cdc start`: stream changes from the slot into the warehouse, exactly once.

The loop is five named steps, one module each, each with its own guarantees and tests
(tests/test_cdc_steps.py):

1. **read** (`read.SourceReader`): pgoutput messages from the slot; reconnects on loss.
2. **decode** (`decode.TransactionDecoder`): events, whole transactions, the pending batch;
   drops transactions the warehouse already holds.
3. **assemble** (`assemble.BatchAssembler`): buffered changes mapped onto the raw tables
   (Arrow), pauses honoured.
4. **apply with checkpoint** (`apply.BatchApplier`): rows and checkpoint in one warehouse
   transaction, then the LSN is confirmed.
5. **after the batch** (`after_batch`): registered jobs (refresh due dynamic tables, publish
   interactive tables, and e.g. a control socket) between batches and when idle.

`loop.CdcLoop` wires them; `schema.SchemaFollower` keeps the column maps in line with the
stream (evolution, pauses, column fills). `run_cdc` is the entry point that builds a `CdcLoop`
and runs it.

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
* **Overlap.** Batch N commits on a worker thread (`apply.ApplyWorker`; the warehouse releases
  the GIL) while the loop reads and decodes batch N + 1. One batch at most is in flight, so
  memory stays bounded (one batch applying, one decoding) and batches commit one at a time in
  LSN order; the loop waits for it before assembling the next, before staging, schema changes,
  after-batch jobs and reconnecting. Its LSN is confirmed on the loop's thread after its
  COMMIT returned.
* **Slot hygiene.** When nothing is pending, the position the server reports is confirmed, and
  a heartbeat message keeps an idle publication from pinning WAL.
* **Faults.** Every source connection goes through one `RetryPolicy`
  (`clinipipe.source.postgres`): transient failures (restart, network) are retried with
  exponential backoff and one terminal line per attempt; failures retrying cannot fix (a
  missing publication or slot, a missing privilege) stop CDC with a `CdcError` naming the
  command that fixes it.
* **Clean stop.** SIGINT/SIGTERM (or `CdcLoop.request_stop`) finish the batch, refresh and
  publish what is pending, then return.
"""

from __future__ import annotations

from collections.abc import Callable

from clinipipe.pipeline.cdc.after_batch import (
    IDLE_SECONDS,
    REFRESH_CHECK_SECONDS,
    AfterBatchJob,
    BatchContext,
    StopRequested,
)
from clinipipe.pipeline.cdc.loop import (
    CATALOG_CHECK_SECONDS,
    HEARTBEAT_SECONDS,
    STAGE_ROWS,
    CdcLoop,
)
from clinipipe.pipeline.cdc.model import CdcError, CdcOptions, CdcStats, CdcSummary
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets.base import CdcBatch

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Waits between attempts: of a failed batch apply (then `CdcError`), and of the source (then
the last wait again, until `CdcOptions.retry_seconds`)."""

__all__ = [
    "CATALOG_CHECK_SECONDS",
    "HEARTBEAT_SECONDS",
    "IDLE_SECONDS",
    "REFRESH_CHECK_SECONDS",
    "RETRY_DELAYS",
    "STAGE_ROWS",
    "AfterBatchJob",
    "BatchContext",
    "CdcError",
    "CdcLoop",
    "CdcOptions",
    "CdcStats",
    "CdcSummary",
    "StopRequested",
    "run_cdc",
]


def run_cdc(
    loaded: LoadedSpec,
    options: CdcOptions = CdcOptions(),
    *,
    on_batch: Callable[[CdcBatch], None] | None = None,
    on_staged: Callable[[CdcBatch], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> CdcSummary:
    """Entry point: build a `CdcLoop` for `loaded` and run it (see `CdcLoop` for the
    callbacks); returns its summary."""
    loop = CdcLoop(loaded, options, on_batch=on_batch, on_staged=on_staged, on_event=on_event)
    return loop.run()
