"""Cost anomalies: spend per warehouse against its own seasonal baseline, the month's forecast
against the budget, and runaway jobs while they run. Alerts go out through the same webhook
sender as PHI alerts (`clinipipe.notify`).

* **spike / level_shift / drift**: `clinipipe.cost.detect` over each warehouse's billed credits
  per day (last 90 days) and per hour (last 30 days).
* **budget**: month-to-date credits plus, for each remaining day of the month, the steady
  warehouses' median spend on the same weekday over the last 4 weeks (or their mean day, with
  less history), above `cost.monthly_budget_credits`.
* **runaway**: a backfill run not completed whose projected cost (credits so far / share of
  ranges done; credits so far when none is done yet) passes `cost.max_job_credits`. A run with
  no activity for `STALE_SECONDS` is not running (it was killed), and costs nothing.

An anomaly is **open** when it concerns the current or the previous period (day, hour), a level
shift or drift flagged in the last 3 days, a budget forecast of this month or a running job;
`cost anomalies` exits 3 while one is open. Anomalies carry names and numbers only, never
row values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clinipipe.cost.billing import credits_between, credits_per_hour
from clinipipe.cost.detect import DAILY, HOURLY, DetectorSettings, detect
from clinipipe.cost.metering import Metered, QueryTarget, epoch, load_metering
from clinipipe.cost.report import ONE_OFF_ROLES, bill_all, warehouse_setups
from clinipipe.notify import AlertConfigError, WebhookSender, webhook_settings
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import CostAlertsSpec, Spec

UTC = dt.timezone.utc
HOUR, DAY = 3600.0, 86400.0
DAILY_DAYS, HOURLY_DAYS = 90, 30
STALE_SECONDS = 6 * 3600.0
PAGERDUTY_SEVERITY = {"runaway": "critical", "budget": "error"}


@dataclass(frozen=True)
class Anomaly:
    kind: str
    """spike | level_shift | drift | budget | runaway"""
    warehouse: str | None
    granularity: str
    """day | hour | month | job"""
    at: str
    """ISO start of the period (or the job's start)."""
    actual: float
    expected: float
    score: float
    open: bool
    message: str
    job: str | None = None

    @property
    def key(self) -> str:
        """Stable identity: the same anomaly found again is not a new alert."""
        text = f"{self.kind}|{self.warehouse}|{self.granularity}|{self.at}|{self.job}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}


@dataclass(frozen=True)
class CostAlert:
    """One webhook alert for open cost anomalies (a `clinipipe.notify.Notification`)."""

    pipeline: str
    anomalies: tuple[Anomaly, ...]
    created_at: dt.datetime

    @property
    def dedup_key(self) -> str:
        keys = "\n".join(sorted(a.key for a in self.anomalies))
        return f"clinipipe-cost-{self.pipeline}-{hashlib.sha256(keys.encode()).hexdigest()[:24]}"

    def summary(self) -> str:
        first = self.anomalies[0].message
        more = f" (and {len(self.anomalies) - 1} more)" if len(self.anomalies) > 1 else ""
        return f"Cost anomaly: {first}{more} [pipeline {self.pipeline}]"[:1024]

    def json_body(self) -> dict[str, Any]:
        return {
            "source": "clinipipe",
            "event": "cost_anomaly",
            "summary": self.summary(),
            "dedup_key": self.dedup_key,
            "pipeline": self.pipeline,
            "detected_at": self.created_at.isoformat(),
            "anomalies": [a.as_dict() for a in self.anomalies],
        }

    def pagerduty_body(self, routing_key: str) -> dict[str, Any]:
        kinds = {a.kind for a in self.anomalies}
        severity = "critical" if "runaway" in kinds else "error" if "budget" in kinds else "warning"
        return {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": self.dedup_key,
            "client": "clinipipe",
            "payload": {
                "summary": self.summary(),
                "source": f"clinipipe/{self.pipeline}",
                "severity": severity,
                "timestamp": self.created_at.isoformat(),
                "group": "cost",
                "class": "cost_anomaly",
                "custom_details": self.json_body(),
            },
        }


class CostSender(WebhookSender):
    """Cost alerts to the webhook of `cost.alerts` (delivery: `clinipipe.notify`)."""

    label = "cost alert"
    user_agent = "clinipipe-cost-alerts"
    thread_name = "clinipipe-cost-alerts"

    @classmethod
    def from_spec(cls, spec: CostAlertsSpec, env: Mapping[str, str], **options: Any) -> CostSender:
        """Raises `AlertConfigError` naming a variable that is not set (never its value)."""
        url, routing_key = webhook_settings(env, section="cost.alerts",
                                            url_env=spec.webhook_url_env, format=spec.format,
                                            routing_key_env=spec.routing_key_env)  # fmt: skip
        return cls(url, format=spec.format, routing_key=routing_key,
                   timeout_seconds=spec.timeout_seconds, retries=spec.retries,
                   queue_size=spec.queue_size, **options)  # fmt: skip


__all__ = ["AlertConfigError", "Anomaly", "CostAlert", "CostSender", "CostWatch"]


# --- spend series ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendSeries:
    warehouse: str
    role: str
    granularity: str  # day | hour
    edges: np.ndarray
    """Epoch seconds of each bucket's start, and the end of the last."""
    credits: np.ndarray


def spend_series(spec: Spec, metered: Metered, now: float) -> list[SpendSeries]:
    """Billed credits per warehouse per UTC day (last 90 days) and hour (last 30 days)."""
    setups = warehouse_setups(spec, metered)
    bills = bill_all(metered, setups, now)
    day_end = (now // DAY + 1) * DAY
    hour_end = (now // HOUR + 1) * HOUR
    day_edges = day_end - DAY * np.arange(DAILY_DAYS, -1, -1)
    hour_edges = hour_end - HOUR * np.arange(HOURLY_DAYS * 24, -1, -1)
    out = []
    for name, b in sorted(bills.items()):
        charges = [c for p in b.periods for c in p.charges]
        out.append(SpendSeries(name, b.setup.role, "day", day_edges,
                               credits_between(charges, day_edges)))  # fmt: skip
        out.append(SpendSeries(name, b.setup.role, "hour", hour_edges,
                               credits_between(charges, hour_edges)))  # fmt: skip
    return out


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, UTC).isoformat()


def series_anomalies(series: SpendSeries, threshold: float, now: float) -> list[Anomaly]:
    """The detector over one series, from the warehouse's first active period on."""
    x = series.credits
    active = np.flatnonzero(x > 0)
    if len(active) == 0:
        return []
    first = int(active[0])
    values = x[first:]
    hourly = series.granularity == "hour"
    base: DetectorSettings = HOURLY if hourly else DAILY
    from dataclasses import replace

    settings = replace(base, threshold=threshold + (0.5 if hourly else 0.0),
                       min_delta=0.01 if hourly else 0.1)  # fmt: skip
    start_ts = float(series.edges[first])
    weekday0 = dt.datetime.fromtimestamp(start_ts, UTC).weekday()
    flags = detect(values, settings, weekday0=weekday0, hourly=hourly)
    period = HOUR if hourly else DAY
    current = int((now - start_ts) // period)
    out = []
    for f in flags:
        at = start_ts + f.index * period
        recent = current - f.index <= (1 if f.kind == "spike" else (72 if hourly else 3))
        unit = "hour" if hourly else "day"
        message = (
            f"{series.warehouse}: {f.kind.replace('_', ' ')} of {unit} {_iso(at)[:16]}: "
            f"{f.actual:,.2f} credits, expected {f.expected:,.2f}"
        )
        out.append(Anomaly(f.kind, series.warehouse, series.granularity, _iso(at), f.actual,
                           f.expected, f.score, recent, message))  # fmt: skip
    return out


def budget_anomaly(spec: Spec, series: Sequence[SpendSeries], now: float) -> Anomaly | None:
    """The month's forecast over `cost.monthly_budget_credits`, or None."""
    budget = spec.cost.monthly_budget_credits
    if budget is None:
        return None
    today = dt.datetime.fromtimestamp(now, UTC)
    month_start = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month_start + dt.timedelta(days=32)).replace(day=1)
    days = [s for s in series if s.granularity == "day"]
    if not days:
        return None
    edges = days[0].edges[:-1]
    total = np.sum([s.credits for s in days], axis=0)
    steady_parts = [s.credits for s in days if s.role not in ONE_OFF_ROLES]
    steady = np.sum(steady_parts, axis=0) if steady_parts else np.zeros(len(total))
    in_month = edges >= month_start.timestamp()
    month_to_date = float(total[in_month].sum())
    today_i = len(edges) - 1
    complete = steady[:today_i]
    active = np.flatnonzero(complete > 0)
    first = int(active[0]) if len(active) else len(complete)
    history = complete[first:]
    weekdays = np.array([dt.datetime.fromtimestamp(e, UTC).weekday() for e in edges[first:today_i]],
                        dtype=np.int64)  # fmt: skip
    today_so_far = float(steady[today_i])
    fraction = (now - edges[today_i]) / DAY
    expected_today = today_so_far / fraction if fraction > 0.05 else today_so_far
    forecast = max(expected_today - today_so_far, 0.0)
    day = today.date() + dt.timedelta(days=1)
    while day < next_month.date():
        same = history[weekdays == day.weekday()][-4:]
        if len(history) >= 14 and len(same):
            forecast += float(np.median(same))
        elif len(history):
            forecast += float(np.mean(history[-7:]))
        else:
            forecast += expected_today
        day += dt.timedelta(days=1)
    projected = month_to_date + forecast
    if projected <= budget:
        return None
    return Anomaly(
        "budget", None, "month", month_start.isoformat(), projected, float(budget),
        projected / budget, True,
        f"this month's spend is forecast at {projected:,.1f} credits, over the budget of "
        f"{budget:,.1f} ({month_to_date:,.1f} so far)",
    )  # fmt: skip


# --- runaway jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningJob:
    job: str
    warehouse: str
    size: str
    started_at: float
    progress: float | None
    """Share of the work done (0..1), when known."""

    def credits_so_far(self, now: float) -> float:
        return credits_per_hour(self.size) * max(now - self.started_at, 0.0) / HOUR

    def projected(self, now: float) -> float:
        """Credits when done: so far / progress (so far, when progress is unknown or 0)."""
        so_far = self.credits_so_far(now)
        if self.progress and self.progress > 0:
            return so_far / min(self.progress, 1.0)
        return so_far


def running_backfills(spec: Spec, target: QueryTarget, now: float) -> list[RunningJob]:
    """Backfill runs not completed and active within `STALE_SECONDS`, with the share of their
    planned ranges done. They run on the initialization warehouse."""
    from clinipipe.sql.context import CONTROL_SCHEMA

    if not target.table_exists(CONTROL_SCHEMA, "backfill_runs"):
        return []
    rows = target.query(
        f"SELECT r.run_id, r.started_at, "
        f"(SELECT COUNT(*) FROM {target.control('backfill_plan')} p WHERE p.run_id = r.run_id), "
        f"(SELECT COUNT(*) FROM {target.control('backfill_ranges')} d WHERE d.run_id = r.run_id), "
        f"(SELECT MAX(d.completed_at) FROM {target.control('backfill_ranges')} d "
        f"WHERE d.run_id = r.run_id) "
        f"FROM {target.control('backfill_runs')} r WHERE r.completed_at IS NULL"
    )
    wh = spec.warehouses.initialization
    out = []
    for run_id, started, planned, done, last in rows:
        start = epoch(started)
        active = epoch(last) if last is not None else start
        if now - active > STALE_SECONDS:
            continue
        progress = (int(done) / int(planned)) if planned else None
        out.append(RunningJob(f"backfill:{run_id}", wh.name.upper(), wh.size, start, progress))
    return out


def runaway_anomalies(
    running: Sequence[RunningJob], now: float, max_job_credits: float | None
) -> list[Anomaly]:
    if max_job_credits is None:
        return []
    out = []
    for job in running:
        projected = job.projected(now)
        if projected > max_job_credits:
            done = f"{job.progress:.0%} done" if job.progress is not None else "progress unknown"
            out.append(Anomaly(
                "runaway", job.warehouse, "job", _iso(job.started_at), projected,
                float(max_job_credits), projected / max_job_credits, True,
                f"runaway job {job.job} on {job.warehouse}: projected at {projected:,.1f} "
                f"credits ({job.credits_so_far(now):,.1f} so far, {done}), over "
                f"max_job_credits {max_job_credits:,.1f}",
                job.job,
            ))  # fmt: skip
    return out


# --- the check ------------------------------------------------------------------------------------


def find_anomalies(
    spec: Spec,
    metered: Metered,
    now: float,
    running: Sequence[RunningJob] = (),
) -> list[Anomaly]:
    """Every anomaly of the metered history (open or not), pure: no warehouse, no clock."""
    series = spend_series(spec, metered, now)
    found: list[Anomaly] = []
    for s in series:
        found += series_anomalies(s, spec.cost.anomaly_threshold, now)
    budget = budget_anomaly(spec, series, now)
    if budget is not None:
        found.append(budget)
    found += runaway_anomalies(running, now, spec.cost.max_job_credits)
    return found


def check_cost_anomalies(
    loaded: LoadedSpec, target: QueryTarget, now: dt.datetime | None = None
) -> list[Anomaly]:
    """Every anomaly over the last 90 days of metering on `target` (open ones have `open`
    True). Reads only; a few queries. Safe to run between CDC batches on the loop's target."""
    moment = (now or dt.datetime.now(UTC)).astimezone(UTC)
    since = moment - dt.timedelta(days=DAILY_DAYS + 1)
    metered = load_metering(target, since)
    running = running_backfills(loaded.spec, target, moment.timestamp())
    return find_anomalies(loaded.spec, metered, moment.timestamp(), running)


class CostWatch:
    """An after-batch job for `cdc start` (`clinipipe.pipeline.cdc.after_batch.AfterBatchJob`):
    every `interval_seconds` it runs `check_cost_anomalies` on the loop's target and sends the
    open anomalies not sent before to `sender` (one alert per round). Never raises out of
    `run` for a failed send (the sender is asynchronous); a failing check raises, and the loop
    reports it and goes on."""

    name = "cost-anomalies"

    def __init__(
        self,
        sender: WebhookSender | None,
        *,
        interval_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sender = sender
        self.interval = interval_seconds
        self._clock = clock
        self._last: float | None = None
        self.sent: set[str] = set()
        self.open: list[Anomaly] = []

    def check(self, loaded: LoadedSpec, target: QueryTarget, now: dt.datetime | None = None
              ) -> list[Anomaly]:  # fmt: skip
        """One check now: returns the open anomalies, alerting on the new ones."""
        self.open = [a for a in check_cost_anomalies(loaded, target, now) if a.open]
        new = [a for a in self.open if a.key not in self.sent]
        if new and self.sender is not None:
            alert = CostAlert(loaded.spec.name, tuple(new), dt.datetime.now(UTC))
            if self.sender.send(alert):
                self.sent.update(a.key for a in new)
        return self.open

    def run(self, context: Any) -> None:
        tick = self._clock()
        if self._last is not None and tick - self._last < self.interval:
            return
        self._last = tick
        self.check(context.loaded, context.target, getattr(context, "now", None))


def sender_for(loaded: LoadedSpec, on_event: Callable[[str], None] | None = None
               ) -> CostSender | None:  # fmt: skip
    """The spec's cost alert sender, or None when `cost.alerts` is not set. Raises
    `AlertConfigError` when a variable it names is not set."""
    from clinipipe.secrets import environment

    alerts = loaded.spec.cost.alerts
    if alerts is None:
        return None
    return CostSender.from_spec(alerts, environment(loaded.directory), on_event=on_event)
