"""Sizing advice from measured work: the initialization size and the incremental auto_suspend.

* **Initialization size.** Backfill throughput (bytes per second of range time) is measured per
  size from the metered `backfill:*` ranges. With two sizes measured, throughput is modelled as
  rate^alpha (alpha = log(throughput ratio) / log(credits/hour ratio); 1 = perfect scaling);
  with one, alpha = 1 is assumed and said. For each size the backfill's duration and credits
  follow; the advice is the smallest size that ends within `deadline_hours` (a bigger one costs
  the same at best, and more when alpha < 1).
* **Incremental auto_suspend.** The measured incremental jobs are billed again with auto_suspend
  30, 60, 120, 300, 600 and 1800 s; the advice is the cheapest (ties: the longer, fewer
  resumes), with its credits per month projected from the measured span.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clinipipe.cost.billing import WarehouseBilling, bill_warehouse, credits_per_hour, total_credits
from clinipipe.cost.metering import Metered
from clinipipe.spec.model import Spec
from clinipipe.spec.types import WAREHOUSE_SIZES

AUTO_SUSPEND_CANDIDATES = (30, 60, 120, 300, 600, 1800)
HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class SizeOption:
    size: str
    hours: float
    credits: float


@dataclass(frozen=True)
class SuspendOption:
    auto_suspend: int
    resumes: int
    month_credits: float


@dataclass(frozen=True)
class SizingAdvice:
    initialization_size: str | None
    initialization_hours: float | None
    initialization_credits: float | None
    scaling_alpha: float | None
    scaling_measured: bool
    sizes: list[SizeOption]
    auto_suspend: int | None
    auto_suspend_month_credits: float | None
    suspend_options: list[SuspendOption]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _throughput(metered: Metered) -> dict[str, tuple[float, float]]:
    """size -> (bytes per second of wall time, total bytes) of the backfill ranges at that
    size (ranges run side by side: wall time is first start to last end)."""
    is_backfill = np.char.startswith(metered.job.astype(str), "backfill:")
    out: dict[str, tuple[float, float]] = {}
    for size in np.unique(metered.size[is_backfill]).tolist():
        m = is_backfill & (metered.size == size)
        seconds = float(metered.end[m].max() - metered.start[m].min())
        nbytes = float(np.nansum(metered.bytes[m]))
        if seconds > 0 and nbytes > 0:
            out[size] = (nbytes / seconds, nbytes)
    return out


def advise(
    spec: Spec, metered: Metered, *, deadline_hours: float = 24.0, span_hours: float = 0.0
) -> SizingAdvice:
    notes: list[str] = []
    measured = _throughput(metered)
    sizes: list[SizeOption] = []
    alpha: float | None = None
    choice: SizeOption | None = None
    if measured:
        by_rate = sorted(measured, key=credits_per_hour)
        lo, hi = by_rate[0], by_rate[-1]
        if lo != hi:
            ratio = measured[hi][0] / measured[lo][0]
            alpha = math.log(max(ratio, 1e-9)) / math.log(
                credits_per_hour(hi) / credits_per_hour(lo)
            )
        else:
            alpha = 1.0
            notes.append(
                f"backfill measured at one size ({lo}) only: perfect scaling assumed; run a "
                "backfill at a second initialization size to measure it"
            )
        # the whole backfill's bytes (the largest measured run), at each size
        total = max(v[1] for v in measured.values())
        ref_tp, ref_rate = measured[hi][0], credits_per_hour(hi)
        for size in WAREHOUSE_SIZES:
            rate = credits_per_hour(size)
            tp = ref_tp * (rate / ref_rate) ** alpha
            hours = total / tp / 3600.0
            sizes.append(SizeOption(size, hours, hours * rate))
        fitting = [s for s in sizes if s.hours <= deadline_hours]
        choice = fitting[0] if fitting else sizes[-1]
        if not fitting:
            notes.append(f"no size ends the measured backfill within {deadline_hours:g} h")
    else:
        notes.append("no backfill was metered: no initialization advice")

    inc = spec.warehouses.incremental
    steady = metered.select(metered.role == "incremental")
    options: list[SuspendOption] = []
    best: SuspendOption | None = None
    if len(steady) and span_hours > 0:
        rate = credits_per_hour(inc.size)
        for seconds in AUTO_SUSPEND_CANDIDATES:
            periods = bill_warehouse(
                WarehouseBilling(inc.name, seconds), steady.start, steady.end,
                np.full(len(steady), rate),
            )  # fmt: skip
            month = total_credits(periods) / span_hours * HOURS_PER_MONTH
            options.append(SuspendOption(seconds, len(periods), month))
        best = min(options, key=lambda o: (round(o.month_credits, 6), -o.auto_suspend))
    else:
        notes.append("no incremental work was metered: no auto_suspend advice")
    return SizingAdvice(
        choice.size if choice else None, choice.hours if choice else None,
        choice.credits if choice else None, alpha, bool(measured) and len(measured) > 1,
        sizes, best.auto_suspend if best else None, best.month_credits if best else None,
        options, notes,
    )  # fmt: skip
