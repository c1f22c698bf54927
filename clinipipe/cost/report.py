"""`clinipipe cost report`: what the metered work costs on Snowflake, and what the same work
would cost on one single warehouse.

Every figure is computed from metering (`clinipipe.cost.metering`) priced by the billing model
(`clinipipe.cost.billing`); on Snowflake the billed credits per warehouse and day come from
ACCOUNT_USAGE.WAREHOUSE_METERING_HISTORY instead (when readable). Nothing is a constant claim.

Definitions (also in docs/COST_OPTIMIZATION.md):

* **One-off** = credits of the initialization warehouse(s) in the window (backfill, full
  refreshes, redaction); **steady** = credits of the incremental and interactive warehouses.
* **Projection**: steady credits per hour of the steady span (from the first steady job to the
  window's end) x 730 h (month) or x 8,760 h (year). The one-off is shown apart, never mixed in;
  "first year" = one-off + a year of steady.
* **Single always-on `SIZE`**: credits/hour(SIZE) x 730 h per month; the backfill's scaled
  duration on SIZE is shown (initialization work assumed to scale perfectly with size).
* **Single right-sized, auto-suspending** (the honest comparison): one warehouse of the
  smallest size on which the measured backfill, scaled perfectly, ends within
  `backfill_hours` (default 24 h); it runs every job with the incremental warehouse's
  auto_suspend. Initialization jobs are stretched by the size ratio around the backfill's
  start; steady jobs keep their measured durations (small jobs do not get faster).
* **Saving** = (single - measured) / single for the steady month and for the first year.
* **Idle share** = (billed - attributed to jobs) / billed, per warehouse.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clinipipe.cost.billing import (
    WarehouseBilling,
    attribute,
    bill_warehouse,
    charges_of,
    credits_between,
    credits_per_hour,
    total_credits,
)
from clinipipe.cost.metering import BilledHour, Metered, job_kind
from clinipipe.spec.model import Spec
from clinipipe.spec.types import WAREHOUSE_SIZES

UTC = dt.timezone.utc
HOURS_PER_MONTH = 730.0
HOURS_PER_YEAR = 8760.0
DAY = 86400.0
ONE_OFF_ROLES = ("initialization",)


@dataclass(frozen=True)
class WarehouseSetup:
    """A warehouse as the spec (or, failing that, metering) describes it."""

    name: str
    role: str
    size: str
    auto_suspend: float
    max_clusters: int = 1

    def billing(self) -> WarehouseBilling:
        return WarehouseBilling(self.name, self.auto_suspend, self.max_clusters)


def warehouse_setups(spec: Spec, metered: Metered) -> dict[str, WarehouseSetup]:
    """By upper-case name: the spec's three warehouses, plus any other name found in metering
    (a warehouse since renamed), with the role and size it was metered with, auto_suspend 60."""
    out: dict[str, WarehouseSetup] = {}
    for role in ("initialization", "incremental", "interactive"):
        wh = getattr(spec.warehouses, role)
        name = wh.name.upper()
        if name not in out:
            clusters = int(getattr(wh, "max_cluster_count", 1) or 1)
            out[name] = WarehouseSetup(name, role, wh.size, float(wh.auto_suspend), clusters)
    for name in np.unique(metered.warehouse).tolist():
        if name not in out:
            mask = metered.warehouse == name
            role = str(metered.role[mask][-1])
            out[name] = WarehouseSetup(name, role, str(metered.size[mask][-1]), 60.0)
    return out


@dataclass
class WarehouseCost:
    name: str
    role: str
    size: str
    auto_suspend: float
    jobs: int
    periods: int
    busy_seconds: float
    billed_seconds: float
    credits: float
    attributed: float
    usd: float

    @property
    def idle_credits(self) -> float:
        return max(self.credits - self.attributed, 0.0)

    @property
    def idle_share(self) -> float:
        return self.idle_credits / self.credits if self.credits > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "idle_credits": self.idle_credits, "idle_share": self.idle_share}


@dataclass(frozen=True)
class DayCost:
    date: str
    warehouse: str
    credits: float
    usd: float


@dataclass(frozen=True)
class JobCost:
    job: str
    warehouse: str
    started_at: str
    seconds: float
    credits: float
    usd: float
    runs: int = 1
    cpu_seconds: float | None = None
    """clinipipe's own CPU for the job(s) (its client threads, not the warehouse's); None
    where not recorded."""


@dataclass(frozen=True)
class SingleWarehouse:
    """One of the two single-warehouse alternatives, for the measured workload."""

    kind: str  # "always-on" | "auto-suspend"
    size: str
    auto_suspend: float | None
    one_off_credits: float
    steady_month_credits: float
    backfill_hours: float
    """How long the measured backfill would take on this size (perfect scaling)."""

    @property
    def first_year_credits(self) -> float:
        return self.one_off_credits + self.steady_month_credits * HOURS_PER_YEAR / HOURS_PER_MONTH

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "first_year_credits": self.first_year_credits}


@dataclass
class CostReport:
    window_start: dt.datetime
    window_end: dt.datetime
    credit_price: float
    source: str
    warehouses: list[WarehouseCost]
    daily: list[DayCost]
    one_off_credits: float
    steady_credits: float
    steady_hours: float
    top_jobs: list[JobCost]
    by_job: list[JobCost]
    singles: list[SingleWarehouse] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def steady_per_hour(self) -> float:
        return self.steady_credits / self.steady_hours if self.steady_hours > 0 else 0.0

    @property
    def month_credits(self) -> float:
        """Projected steady credits per month (the one-off apart)."""
        return self.steady_per_hour * HOURS_PER_MONTH

    @property
    def year_credits(self) -> float:
        return self.steady_per_hour * HOURS_PER_YEAR

    @property
    def first_year_credits(self) -> float:
        return self.one_off_credits + self.year_credits

    def saving(self, single: SingleWarehouse) -> dict[str, float | None]:
        """Saving of the measured setup against `single`, as a percentage (None: no basis)."""

        def pct(ours: float, theirs: float) -> float | None:
            return None if theirs <= 0 else 100.0 * (theirs - ours) / theirs

        return {
            "month_pct": pct(self.month_credits, single.steady_month_credits),
            "first_year_pct": pct(self.first_year_credits, single.first_year_credits),
        }

    @property
    def total_credits(self) -> float:
        return sum(w.credits for w in self.warehouses)

    def as_dict(self) -> dict[str, Any]:
        price = self.credit_price
        return {
            "window": {"start": self.window_start.isoformat(), "end": self.window_end.isoformat()},
            "credit_price_usd": price,
            "source": self.source,
            "total": {"credits": self.total_credits, "usd": self.total_credits * price},
            "warehouses": [w.as_dict() for w in self.warehouses],
            "daily": [asdict(d) for d in self.daily],
            "one_off": {"credits": self.one_off_credits, "usd": self.one_off_credits * price},
            "steady": {
                "credits": self.steady_credits,
                "hours": self.steady_hours,
                "credits_per_hour": self.steady_per_hour,
                "projected_month_credits": self.month_credits,
                "projected_month_usd": self.month_credits * price,
                "projected_year_credits": self.year_credits,
                "projected_year_usd": self.year_credits * price,
            },
            "first_year": {
                "credits": self.first_year_credits,
                "usd": self.first_year_credits * price,
            },
            "comparison": [{**s.as_dict(), "saving": self.saving(s)} for s in self.singles],
            "top_jobs": [asdict(j) for j in self.top_jobs],
            "by_job": [asdict(j) for j in self.by_job],
            "notes": list(self.notes),
        }


def window(days: int, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[midnight UTC `days - 1` days ago, now]: `days` calendar days, today included."""
    now = (now or dt.datetime.now(UTC)).astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - dt.timedelta(days=days - 1), now


def day_edges(start: dt.datetime, end: dt.datetime) -> list[float]:
    """Epoch seconds of every UTC midnight from `start`'s to after `end`."""
    first = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    n = max(1, math.ceil((end.timestamp() - first) / DAY))
    return [first + i * DAY for i in range(n + 1)]


@dataclass
class Billed:
    """The billing model's result for one warehouse."""

    setup: WarehouseSetup
    jobs: Metered
    periods: list[Any]
    attributed: np.ndarray


def bill_all(
    metered: Metered, setups: Mapping[str, WarehouseSetup], window_end: float
) -> dict[str, Billed]:
    """Each warehouse's periods and per-job attributed credits."""
    out: dict[str, Billed] = {}
    for name in np.unique(metered.warehouse).tolist():
        jobs = metered.select(metered.warehouse == name)
        rates = np.array([credits_per_hour(s) for s in jobs.size.tolist()])
        setup = setups[name]
        periods = bill_warehouse(setup.billing(), jobs.start, jobs.end, rates,
                                 window_end=window_end)  # fmt: skip
        out[name] = Billed(setup, jobs, periods, attribute(periods, jobs.start, jobs.end))
    return out


def _cpu_total(values: list[float]) -> float | None:
    """The sum of the recorded (non-NaN) CPU seconds; None when none was recorded."""
    recorded = [v for v in values if v == v]
    return float(sum(recorded)) if recorded else None


def _clip(charges: list[Any], start: float, end: float) -> float:
    return float(credits_between(charges, [start, end])[0])


def single_always_on(size: str, backfill_work: float) -> SingleWarehouse:
    """One warehouse of `size`, never suspended. `backfill_work`: the backfill's busy
    credit-hours (seconds x credits/hour / 3600), constant under perfect scaling."""
    rate = credits_per_hour(size)
    return SingleWarehouse("always-on", size, None, 0.0, rate * HOURS_PER_MONTH,
                           backfill_work / rate)  # fmt: skip


def _stretch(jobs: Metered, factor: float) -> tuple[np.ndarray, np.ndarray]:
    if len(jobs) == 0:
        return jobs.start, jobs.end
    origin = float(jobs.start.min())
    return origin + (jobs.start - origin) * factor, origin + (jobs.end - origin) * factor


def single_auto_suspend(
    size: str,
    one_off_jobs: Metered,
    steady_jobs: Metered,
    auto_suspend: float,
    steady_hours: float,
    window_end: float,
) -> SingleWarehouse:
    """The measured work on one warehouse of `size` that auto-suspends (see module doc)."""
    rate = credits_per_hour(size)
    wh = WarehouseBilling(f"SINGLE_{size}", auto_suspend)
    one_rates = np.array([credits_per_hour(s) for s in one_off_jobs.size.tolist()])
    factor = one_rates / rate if len(one_rates) else np.zeros(0)
    # the backfill timeline stretched as a whole (its ranges keep running side by side)
    f = float(np.median(factor)) if len(factor) else 1.0
    s1, e1 = _stretch(one_off_jobs, f)
    one_off = total_credits(bill_warehouse(wh, s1, e1, np.full(len(s1), rate)))
    backfill_hours = float(((e1.max() - s1.min()) / 3600.0) if len(s1) else 0.0)
    steady = bill_warehouse(wh, steady_jobs.start, steady_jobs.end,
                            np.full(len(steady_jobs), rate), window_end=window_end)  # fmt: skip
    per_hour = total_credits(steady) / steady_hours if steady_hours > 0 else 0.0
    return SingleWarehouse("auto-suspend", size, auto_suspend, one_off,
                           per_hour * HOURS_PER_MONTH, backfill_hours)  # fmt: skip


def right_size(backfill_work: float, backfill_hours: float) -> str:
    """The smallest size on which `backfill_work` credit-hours end within `backfill_hours`."""
    for size in WAREHOUSE_SIZES:
        if backfill_work / credits_per_hour(size) <= backfill_hours:
            return size
    return WAREHOUSE_SIZES[-1]


def build_report(
    spec: Spec,
    metered: Metered,
    *,
    start: dt.datetime,
    end: dt.datetime,
    compare: str = "MEDIUM",
    backfill_hours: float = 24.0,
    billed: Sequence[BilledHour] | None = None,
    top: int = 10,
) -> CostReport:
    """The report for the jobs of `metered` billed within [start, end]. `billed`: Snowflake's
    WAREHOUSE_METERING_HISTORY rows, which then replace the model's credits per warehouse and
    day (the comparison and top jobs stay modelled: account usage knows no jobs)."""
    price = spec.cost.credit_price_usd
    t0, t1 = start.timestamp(), end.timestamp()
    setups = warehouse_setups(spec, metered)
    bills = bill_all(metered, setups, t1)
    # clipped to the window, so the days add up to the warehouse totals (a 60 s minimum that
    # runs past `end` is billed to `end`, as in `_clip`)
    edges = np.clip(np.asarray(day_edges(start, end), dtype=np.float64), t0, t1)
    notes: list[str] = []

    warehouses: list[WarehouseCost] = []
    daily: list[DayCost] = []
    job_rows: list[JobCost] = []
    kinds: dict[tuple[str, str], list[float]] = {}
    kind_cpu: dict[tuple[str, str], list[float]] = {}
    for name, b in sorted(bills.items()):
        charges = charges_of(b.periods)
        credits = _clip(charges, t0, t1)
        in_window = (b.jobs.end >= t0) & (b.jobs.start <= t1)
        attributed = float(b.attributed[in_window].sum())
        busy = float(np.minimum(b.jobs.end, t1)[in_window].sum()
                     - np.maximum(b.jobs.start, t0)[in_window].sum())  # fmt: skip
        billed_seconds = float(sum(min(p.end, t1) - max(p.start, t0) for p in b.periods
                                   if p.end > t0 and p.start < t1))  # fmt: skip
        warehouses.append(WarehouseCost(
            name, b.setup.role, b.setup.size, b.setup.auto_suspend, int(in_window.sum()),
            sum(1 for p in b.periods if p.end > t0 and p.start < t1), busy, billed_seconds,
            credits, min(attributed, credits), credits * price,
        ))  # fmt: skip
        per_day = credits_between(charges, edges)
        for j, c in enumerate(per_day.tolist()):
            if c > 0:
                day = dt.datetime.fromtimestamp(edges[j], UTC).date().isoformat()
                daily.append(DayCost(day, name, c, c * price))
        idx = np.flatnonzero(in_window)
        for i in idx.tolist():
            kind = (job_kind(str(b.jobs.job[i])), name)
            kinds.setdefault(kind, []).append(float(b.attributed[i]))
            kind_cpu.setdefault(kind, []).append(float(b.jobs.cpu[i]))
        order = idx[np.argsort(-b.attributed[idx], kind="stable")][:top]
        for i in order.tolist():
            job_rows.append(JobCost(
                str(b.jobs.job[i]), name,
                dt.datetime.fromtimestamp(float(b.jobs.start[i]), UTC).isoformat(),
                float(b.jobs.end[i] - b.jobs.start[i]), float(b.attributed[i]),
                float(b.attributed[i]) * price, 1, _cpu_total([float(b.jobs.cpu[i])]),
            ))  # fmt: skip

    source = "metering priced by the Snowflake billing model"
    if billed is not None:
        source = "SNOWFLAKE.ACCOUNT_USAGE.WAREHOUSE_METERING_HISTORY"
        warehouses, daily = _from_account_usage(warehouses, billed, edges, t0, t1, price)

    top_jobs = sorted(job_rows, key=lambda j: -j.credits)[:top]
    by_job = sorted(
        (JobCost(kind, wh, "", 0.0, sum(v), sum(v) * price, len(v),
                 _cpu_total(kind_cpu[(kind, wh)]))
         for (kind, wh), v in kinds.items()),
        key=lambda j: -j.credits,
    )  # fmt: skip

    one_off = sum(w.credits for w in warehouses if w.role in ONE_OFF_ROLES)
    steady = sum(w.credits for w in warehouses if w.role not in ONE_OFF_ROLES)
    steady_mask = ~np.isin(metered.role, ONE_OFF_ROLES) & (metered.end >= t0)
    steady_start = float(metered.start[steady_mask].min()) if steady_mask.any() else t1
    steady_hours = max(t1 - max(steady_start, t0), 0.0) / 3600.0
    if steady_mask.any() and steady_hours < 24:
        notes.append(
            f"the steady figures are projected from {steady_hours:.2f} h of incremental "
            "work: run CDC for a day or more for a projection you can plan with"
        )

    one_mask = np.isin(metered.role, ONE_OFF_ROLES) & (metered.end >= t0)
    one_jobs, steady_jobs = metered.select(one_mask), metered.select(steady_mask)
    one_rates = np.array([credits_per_hour(s) for s in one_jobs.size.tolist()])
    work = float(((one_jobs.end - one_jobs.start) * one_rates).sum() / 3600.0)
    singles = [single_always_on(compare, work)]
    size = right_size(work, backfill_hours)
    auto = float(spec.warehouses.incremental.auto_suspend) or 60.0
    singles.append(single_auto_suspend(size, one_jobs, steady_jobs, auto, steady_hours, t1))
    if len(one_jobs) and work / credits_per_hour(compare) > HOURS_PER_MONTH:
        notes.append(
            f"on one {compare} warehouse the measured backfill alone would take "
            f"{work / credits_per_hour(compare):,.0f} h, more than a month"
        )
    if not len(metered):
        notes.append("nothing was metered in this window")
    return CostReport(start, end, price, source, warehouses, daily, one_off, steady,
                      steady_hours, top_jobs, by_job, singles, notes)  # fmt: skip


def _from_account_usage(
    modelled: list[WarehouseCost],
    billed: Sequence[BilledHour],
    edges: Sequence[float],
    t0: float,
    t1: float,
    price: float,
) -> tuple[list[WarehouseCost], list[DayCost]]:
    """Warehouse totals and days from Snowflake's billed hours (idle = compute - attributed)."""
    by_name = {w.name: w for w in modelled}
    totals: dict[str, list[float]] = {}
    days: dict[tuple[str, str], float] = {}
    for h in billed:
        if not t0 - 3600 < h.start <= t1:
            continue
        tot = totals.setdefault(h.warehouse, [0.0, 0.0])
        tot[0] += h.credits
        tot[1] += h.compute - h.idle
        j = int(np.searchsorted(edges, h.start, side="right")) - 1
        day = dt.datetime.fromtimestamp(edges[max(j, 0)], UTC).date().isoformat()
        days[(day, h.warehouse)] = days.get((day, h.warehouse), 0.0) + h.credits
    out: list[WarehouseCost] = []
    for name, (credits, attributed) in sorted(totals.items()):
        m = by_name.get(name)
        out.append(WarehouseCost(
            name, m.role if m else "?", m.size if m else "?", m.auto_suspend if m else 0.0,
            m.jobs if m else 0, m.periods if m else 0, m.busy_seconds if m else 0.0,
            m.billed_seconds if m else 0.0, credits, attributed, credits * price,
        ))  # fmt: skip
    daily = [DayCost(d, w, c, c * price) for (d, w), c in sorted(days.items())]
    return out, daily


def daily_totals(report: CostReport) -> list[tuple[str, float]]:
    """(date, credits) of every day of the window, zero days included, oldest first."""
    per: dict[str, float] = {}
    for d in report.daily:
        per[d.date] = per.get(d.date, 0.0) + d.credits
    day = report.window_start.astimezone(UTC).date()
    out = []
    while day <= report.window_end.astimezone(UTC).date():
        out.append((day.isoformat(), per.get(day.isoformat(), 0.0)))
        day += dt.timedelta(days=1)
    return out
