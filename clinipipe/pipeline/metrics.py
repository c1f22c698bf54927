"""`cdc start --metrics-port N`: the running loop's counters in the Prometheus text format.

An HTTP endpoint (``/metrics``; loopback unless `--metrics-host` says otherwise) served by
`prometheus-client` from a thread of its own. It reads only the latest immutable `CdcStats`
snapshot the loop published (:class:`StatsBoard`), never the warehouse, so a scrape can never
block or slow a batch. Names, counts and times only: no row values, no identifiers but table
names.

Metrics (all prefixed ``clinipipe_``):

=============================================  =========  ====================================
``cdc_up``                                     gauge      1 while the loop streams
``cdc_state{state}``                           gauge      1 for the loop's current state
``cdc_lag_bytes``                              gauge      WAL not yet confirmed by CDC
``cdc_confirmed_lsn``                          gauge      the confirmed position (as a number)
``cdc_changes_total``                          counter    changes applied (this run)
``cdc_transactions_total``                     counter    source transactions applied
``cdc_batches_total``                          counter    batches committed
``cdc_changes_per_second``                     gauge      recent apply rate
``cdc_batch_latency_seconds``                  histogram  source commit to warehouse commit
``cdc_reconnects_total``                       counter    source connections re-established
``cdc_paused_tables``                          gauge      tables CDC does not apply
``cdc_table_paused{table}``                    gauge      1 per paused table
``cdc_job_errors``                             gauge      after-batch jobs whose last run failed
``dynamic_table_last_refresh_timestamp_seconds{table}``  gauge  last refresh by CDC (Unix time)
``interactive_table_last_publish_timestamp_seconds{table}``  gauge  last publish by CDC
``phi_findings_total``                         counter    PHI findings of the CDC scanner
=============================================  =========  ====================================
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
STATES = ("starting", "streaming", "reconnecting", "stopping", "stopped")
PREFIX = "clinipipe_"


def _epoch(value: object) -> float | None:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


@dataclass
class StatsBoard:
    """The latest stats snapshot of the loop, handed from the loop's thread to the scrapers.

    `publish(stats)` is called on the loop's thread (by :class:`MetricsJob`); readers get the
    last snapshot published. A batch's latency is observed once per batch (by its count)."""

    latency: Histogram
    phi_findings: Callable[[], int] | None = None
    _stats: Any = None
    _batches_seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, stats: Any) -> None:
        with self._lock:
            batches = int(getattr(stats, "batches", 0) or 0)
            latency = getattr(stats, "last_batch_latency_seconds", None)
            if batches > self._batches_seen and latency is not None:
                self.latency.observe(max(0.0, float(latency)))
            self._batches_seen = max(self._batches_seen, batches)
            self._stats = stats

    @property
    def stats(self) -> Any:
        with self._lock:
            return self._stats


class _Collector(Collector):
    def __init__(self, board: StatsBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        s = self.board.stats
        state = str(getattr(s, "state", "starting")) if s is not None else "starting"
        yield _gauge("cdc_up", "1 while the CDC loop streams changes.", state == "streaming")
        states = GaugeMetricFamily(PREFIX + "cdc_state", "The CDC loop's state.", labels=["state"])
        for name in STATES:
            states.add_metric([name], 1.0 if name == state else 0.0)
        yield states
        lag = getattr(s, "lag_bytes", None)
        yield _gauge(
            "cdc_lag_bytes",
            "WAL bytes between the source and CDC's confirmed position (NaN before the source "
            "reported one).",
            float("nan") if lag is None else lag,
        )
        yield _gauge("cdc_confirmed_lsn", "Position confirmed to the source (an LSN as a number).",
                     getattr(s, "confirmed_lsn", 0) or 0)  # fmt: skip
        for name, attr, text in (
            ("cdc_changes", "changes", "Changes applied to the warehouse by this run."),
            ("cdc_transactions", "transactions", "Source transactions applied by this run."),
            ("cdc_batches", "batches", "Batches committed by this run."),
            ("cdc_reconnects", "reconnects", "Source connections re-established by this run."),
        ):
            yield CounterMetricFamily(PREFIX + name, text, value=getattr(s, attr, 0) or 0)
        yield _gauge("cdc_changes_per_second", "Changes applied per second, recently.",
                     getattr(s, "changes_per_second", 0.0) or 0.0)  # fmt: skip
        paused: Mapping[str, str] = getattr(s, "paused_tables", None) or {}
        yield _gauge("cdc_paused_tables", "Tables whose changes CDC does not apply.", len(paused))
        per_table = GaugeMetricFamily(PREFIX + "cdc_table_paused", "1 for each paused table.",
                                      labels=["table"])  # fmt: skip
        for table in sorted(paused):
            per_table.add_metric([table], 1.0)
        yield per_table
        errors: Mapping[str, str] = getattr(s, "job_errors", None) or {}
        yield _gauge("cdc_job_errors", "After-batch jobs whose last run failed.", len(errors))
        for name, attr, text in (
            ("dynamic_table_last_refresh_timestamp_seconds", "last_refresh",
             "When CDC last refreshed each dynamic table (Unix time)."),
            ("interactive_table_last_publish_timestamp_seconds", "last_publish",
             "When CDC last published each interactive table (Unix time)."),
        ):  # fmt: skip
            family = GaugeMetricFamily(PREFIX + name, text, labels=["table"])
            for table, when in sorted((getattr(s, attr, None) or {}).items()):
                stamp = _epoch(when)
                if stamp is not None:
                    family.add_metric([table], stamp)
            yield family
        found = self.board.phi_findings() if self.board.phi_findings is not None else 0
        text = "PHI findings of the CDC scanner (this run; see _clinipipe.phi_findings)."
        yield CounterMetricFamily(PREFIX + "phi_findings", text, value=found)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, text, value=float(value))


class MetricsJob:
    """After-batch job: hands the loop's latest `stats` to the endpoint (cheap, no I/O)."""

    name = "metrics"

    def __init__(self, board: StatsBoard) -> None:
        self.board = board

    def run(self, context: Any) -> None:
        self.board.publish(context.stats)


class MetricsServer:
    """The `/metrics` endpoint; `port` 0 picks a free one (see `port` after `start`)."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        phi_findings: Callable[[], int] | None = None,
    ) -> None:
        self.host, self.requested_port = host, port
        self.registry = CollectorRegistry(auto_describe=True)
        latency = Histogram(
            PREFIX + "cdc_batch_latency_seconds",
            "Source commit of a batch's oldest transaction to the batch's warehouse commit.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.board = StatsBoard(latency, phi_findings)
        self.registry.register(_Collector(self.board))
        self.job = MetricsJob(self.board)
        self._server: Any = None
        self.port = port

    def start(self) -> None:
        """Listen (raises OSError when the port is taken)."""
        server, _thread = start_http_server(self.requested_port, self.host, self.registry)
        self._server = server
        self.port = int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"
