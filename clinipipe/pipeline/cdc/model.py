"""What the CDC loop is told (`CdcOptions`), what it returns (`CdcSummary`), what it shows while
it runs (`CdcStats`), and how it fails (`CdcError`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class CdcError(Exception):
    """CDC cannot run; the message says what to do."""


@dataclass(frozen=True)
class CdcOptions:
    max_seconds: float | None = None
    until_caught_up: bool = False
    batch_rows: int = 50_000
    batch_ms: int = 1000
    retry_seconds: float = 600.0
    """How long a source that cannot be reached is retried (with backoff, one line per
    attempt) before `cdc start` gives up with exit 1; 0 gives up at the first failure."""


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


_EMPTY: Mapping[str, object] = MappingProxyType({})

STATES = ("starting", "streaming", "reconnecting", "stopping", "stopped")


@dataclass(frozen=True)
class CdcStats:
    """One immutable snapshot of a running CDC loop (`CdcLoop.stats`): safe to read from any
    thread (the loop replaces the whole object after each batch and each state change; it never
    mutates one). Counts are of this run. No row values, ever.

    * `state`: one of `STATES` ('starting', 'streaming', 'reconnecting', 'stopping',
      'stopped').
    * `changes`, `transactions`, `batches`: applied (committed) so far.
    * `last_batch_latency_seconds`: commit on the source of the batch's oldest transaction to
      its commit in the warehouse; `last_batch_apply_seconds`: how long the apply took.
    * `changes_per_second`: applied changes over the last `RATE_WINDOW_SECONDS`.
    * `lag_bytes`: WAL between the server's last reported position and the confirmed one
      (None before the server reported a position).
    * `paused_tables`: table -> why CDC does not apply it.
    * `last_refresh` / `last_publish`: table -> when CDC last refreshed (dynamic table) or
      published (interactive table) it, UTC.
    * `reconnects`: source connection losses recovered from.
    * `job_errors`: after-batch job name -> its last failure (exception type and scrubbed
      first line).
    """

    slot: str = ""
    state: str = "starting"
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    changes: int = 0
    transactions: int = 0
    batches: int = 0
    last_batch_at: dt.datetime | None = None
    last_batch_latency_seconds: float | None = None
    last_batch_apply_seconds: float | None = None
    changes_per_second: float = 0.0
    confirmed_lsn: int = 0
    lag_bytes: int | None = None
    paused_tables: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # type: ignore[arg-type]
    last_refresh: Mapping[str, dt.datetime] = field(default_factory=lambda: _EMPTY)  # type: ignore[arg-type]
    last_publish: Mapping[str, dt.datetime] = field(default_factory=lambda: _EMPTY)  # type: ignore[arg-type]
    reconnects: int = 0
    job_errors: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (datetimes as ISO text)."""

        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "slot": self.slot,
            "state": self.state,
            "started_at": iso(self.started_at),
            "changes": self.changes,
            "transactions": self.transactions,
            "batches": self.batches,
            "last_batch_at": iso(self.last_batch_at),
            "last_batch_latency_seconds": self.last_batch_latency_seconds,
            "last_batch_apply_seconds": self.last_batch_apply_seconds,
            "changes_per_second": self.changes_per_second,
            "confirmed_lsn": self.confirmed_lsn,
            "lag_bytes": self.lag_bytes,
            "paused_tables": dict(self.paused_tables),
            "last_refresh": {k: iso(v) for k, v in self.last_refresh.items()},
            "last_publish": {k: iso(v) for k, v in self.last_publish.items()},
            "reconnects": self.reconnects,
            "job_errors": dict(self.job_errors),
        }


RATE_WINDOW_SECONDS = 10.0
