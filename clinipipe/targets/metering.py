"""One metering row: what a unit of work used (`_clinipipe.metering`, template 08).

Every unit of work clinipipe runs (a backfill range, a CDC batch, a refresh, a publish, a PHI
scan, a redaction, a backup or restore, a benchmark) is metered by exactly one `MeteringRow`,
written with `TargetCore.metering_insert_sql` in the same transaction as the work wherever the
work is a warehouse transaction (so a row exists if and only if the work committed).

`cpu_seconds` is the CPU time of the clinipipe thread that did the work (`time.thread_time()`,
user + system, measured with a `CpuClock` started when the work began): clinipipe's client CPU,
not the warehouse's. DuckDB's own worker threads and Snowflake's compute are not in it (the
warehouse's time is `ended_at - started_at`, which is what Snowflake bills).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass, field

METERING_TABLE = "metering"


@dataclass(frozen=True)
class CpuClock:
    """The CPU time of the thread that creates it, from its creation on.

    `seconds()` answers only in that thread (thread CPU time means nothing elsewhere): from
    another thread it returns None, which is recorded as NULL ("not measured").
    """

    thread: int = field(default_factory=threading.get_ident)
    start: float = field(default_factory=time.thread_time)

    def seconds(self) -> float | None:
        """CPU seconds this thread used since the clock started (None from another thread)."""
        if threading.get_ident() != self.thread:
            return None
        return max(0.0, time.thread_time() - self.start)


@dataclass(frozen=True)
class MeteringRow:
    """One row of `_clinipipe.metering`.

    `job` names the work (`backfill:<table>:<range>`, `cdc:batch`, `refresh:<name>:<action>`,
    `publish:<name>`, `phi-scan`, `redact:<schema>`, `backup:<id>`, `restore:<id>`); `warehouse`
    / `warehouse_role` / `size` the compute it ran on; `rows` / `nbytes` what it processed
    (None: not known); `cpu_seconds` clinipipe's own CPU for it (see the module docstring).
    `job_id` is unique per row (a fresh UUID unless given).
    """

    job: str
    warehouse: str
    warehouse_role: str
    size: str
    started_at: dt.datetime
    ended_at: dt.datetime
    rows: int | None
    nbytes: int | None
    cpu_seconds: float | None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
