"""Step 5, after the batch: registered jobs (refresh due dynamic tables, publish interactive
tables, and whatever else is registered: a control socket, metrics) run between batches.

Guarantees:

* Jobs run on the loop's thread, in registration order, only between batches (the raw tables
  match the checkpoint; no transaction is open on the target): after every committed batch,
  and when idle at least every `IDLE_SECONDS`. So a job may use the loop's own target
  connection (`BatchContext.target`).
* A job's exception never loses a batch (the batch committed before any job ran) and never
  stops CDC: it is reported (`on_error`: the job's name, the exception type and its first line
  with quoted values scrubbed) and recorded in `CdcStats.job_errors`; the next job runs. The
  exception is `StopRequested`, or a job calling `BatchContext.request_stop()`: the loop then
  stops cleanly (no further batch, a last round of jobs with `stopping` set).
* On a clean stop (a signal or a stop request) every job runs once more with
  `BatchContext.stopping` True: refresh and publish then do whatever is pending, not only what
  is due within their lag.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from clinipipe.pipeline.background import in_background
from clinipipe.pipeline.publish import PublishScheduler
from clinipipe.pipeline.refresh import refresh, refresh_due
from clinipipe.secrets import first_line, scrub_values
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets.base import CdcBatch, Target

if TYPE_CHECKING:
    from clinipipe.pipeline.cdc.model import CdcStats, CdcSummary
    from clinipipe.pipeline.verify import ScheduledVerify, VerifyReport

IDLE_SECONDS = 0.5
"""Jobs run at least this often while CDC is idle."""
REFRESH_CHECK_SECONDS = 1.0
"""How often the refresh and publish jobs look for due tables."""


class StopRequested(Exception):
    """Raised by a job (or set by `BatchContext.request_stop`): stop CDC cleanly."""


@dataclass
class BatchContext:
    """What a job sees. Valid during the `run` call only; do not keep it.

    `batch`: the batch just committed (None for an idle round). `stats`: the loop's stats
    snapshot as of this round. `now`: UTC. `stopping`: the last round before a clean stop."""

    loaded: LoadedSpec
    target: Target
    slot: str
    stats: CdcStats
    now: dt.datetime
    batch: CdcBatch | None = None
    stopping: bool = False
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def request_stop(self) -> None:
        """Stop CDC cleanly after this round of jobs (as SIGTERM does)."""
        self._stop()


@runtime_checkable
class AfterBatchJob(Protocol):
    """A job the loop runs between batches (see the module docstring for when and how)."""

    name: str

    def run(self, context: BatchContext) -> None: ...


class AfterBatchJobs:
    """The registry: jobs in registration order."""

    def __init__(self, on_error: Callable[[str, str], None]) -> None:
        """`on_error(job name, report)`: a job failed (report: type and scrubbed first line)."""
        self.jobs: list[AfterBatchJob] = []
        self._on_error = on_error

    def register(self, job: AfterBatchJob) -> None:
        if not isinstance(job, AfterBatchJob):
            raise TypeError(f"{job!r} has no `name` and `run(context)`")
        self.jobs.append(job)

    def run(self, context: BatchContext) -> bool:
        """Run every job once, in order; True when one asked to stop."""
        stop = False
        for job in self.jobs:
            try:
                job.run(context)
            except StopRequested:
                stop = True
            except Exception as exc:  # reported, never stops CDC
                self._on_error(job.name, f"{type(exc).__name__}: {scrub_values(first_line(exc))}")
        return stop


class RefreshJob:
    """Refresh the dynamic tables due within their target lag (every `REFRESH_CHECK_SECONDS`),
    on the loop's connection and the incremental warehouse, on the process's background thread
    (niced: dashboards first; `clinipipe.pipeline.background`) while the loop waits. When
    stopping: every dynamic table (DuckDB; Snowflake refreshes its own), so what was applied is
    reflected after the exit."""

    name = "refresh"

    def __init__(
        self, summary: CdcSummary, refreshed: Callable[[list[str]], None] = lambda _: None
    ) -> None:
        self.summary = summary
        self._refreshed = refreshed
        self._next = 0.0

    def run(self, context: BatchContext) -> None:
        if context.stopping:
            if context.target.native_dynamic_tables or not context.loaded.spec.dynamic_tables:
                return
            results = in_background(
                lambda: refresh(context.loaded, reason="scheduled", target=context.target)
            )
        else:
            if time.monotonic() < self._next:
                return
            try:
                results = in_background(lambda: refresh_due(context.loaded, context.target))
            finally:
                self._next = time.monotonic() + REFRESH_CHECK_SECONDS
        self.summary.refreshes += len(results)
        done = [r.name for r in results if r.state == "SUCCEEDED"]
        if done:
            self._refreshed(done)


class PublishJob:
    """Publish the interactive tables that are due (every `REFRESH_CHECK_SECONDS`, and when
    stopping). Failures are counted in the summary, never raised (`PublishScheduler`)."""

    name = "publish"

    def __init__(
        self, summary: CdcSummary, published: Callable[[list[str]], None] = lambda _: None
    ) -> None:
        self.summary = summary
        self._published = published
        self._publisher = PublishScheduler()
        self._next = 0.0

    def run(self, context: BatchContext) -> None:
        if not context.stopping and time.monotonic() < self._next:
            return
        try:
            published, failures = self._publisher.step(context.loaded, context.target)
        finally:
            self._next = time.monotonic() + REFRESH_CHECK_SECONDS
        self.summary.publishes += len(published)
        self.summary.publish_failures += [f"{n}: {why}" for n, why in failures]
        if published:
            self._published([p.name for p in published])


class VerifyJob:
    """`verify.every` (issue 19): every `every_seconds` a sampled verify (`sample` percent of
    each table's key ranges) on the loop's target, with `clinipipe verify`'s consistency
    guarantee (`clinipipe.pipeline.verify.ScheduledVerify`). A run never holds CDC back: while
    the warehouse has not reached the run's snapshot, batches go on and the run resumes at a
    later round. Each finished run (recorded in ``_clinipipe.verify_runs``) goes to
    `on_report`, which alerts on differences. A failing run raises (the loop reports it and
    goes on) and the next one starts `every_seconds` later; a clean stop abandons an
    unfinished run (its temporary slot is dropped)."""

    name = "verify"

    def __init__(self, every_seconds: float, sample: float,
                 on_report: Callable[[VerifyReport], None]) -> None:  # fmt: skip
        self.every = every_seconds
        self.sample = sample
        self._on_report = on_report
        self._next = time.monotonic() + every_seconds
        self._run: ScheduledVerify | None = None

    def run(self, context: BatchContext) -> None:
        from clinipipe.pipeline.verify import ScheduledVerify

        if context.stopping:
            if self._run is not None:
                self._run.close()
                self._run = None
            return
        if self._run is None and time.monotonic() < self._next:
            return
        try:
            if self._run is None:
                self._run = ScheduledVerify(context.loaded, self.sample)
            report = self._run.step(context.target, context.stats)
        except BaseException:
            if self._run is not None:
                self._run.close()
            self._run, self._next = None, time.monotonic() + self.every
            raise
        if report is not None:
            self._run, self._next = None, time.monotonic() + self.every
            self._on_report(report)
