"""The Snowflake billing model: metered jobs on a warehouse -> running periods -> credits.

Pure functions over arrays of job intervals (epoch seconds); nothing here reads a warehouse.
The rules (`docs/COST_OPTIMIZATION.md`, Snowflake's documentation):

* A warehouse bills `credits_per_hour(size)` (XSMALL 1, doubling per size, X6LARGE 512) for every
  second it runs, per running cluster.
* It starts (resumes) when a job arrives and it is suspended; it keeps running, idle, until
  `auto_suspend` seconds pass with no job (0 = never suspends: it runs to the end of the window).
  Jobs closer together than `auto_suspend` therefore share one running period.
* Each running period bills at least 60 seconds (the minimum at every start or resume).
* A size change: the warehouse runs at the size of the job that started last (a resize applies
  to the warehouse). Resizing up mid-period bills the added credits/hour for at least 60 s.
* Multi-cluster (`max_clusters` > 1): cluster k (0-based) runs while more than
  `k * concurrency` jobs run at once (the standard scaling policy: a cluster starts when queries
  would queue); every cluster is billed like a warehouse of its own (own periods, own auto_suspend,
  own 60 s minimum).

A period still running at `window_end` is billed up to `window_end` (the report's "now"), never
beyond. Results are exact to floating-point rounding; ordering of the input does not matter.

Attribution (`attribute`): a job's credits are the credits billed while it ran, split evenly
among the jobs running at the same moment (Snowflake's CREDITS_ATTRIBUTED_COMPUTE_QUERIES works
the same way); what is billed but attributed to no job is idle cost (suspend waits and minimums).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR

MINIMUM_SECONDS = 60.0
"""Billed at least this long at every start or resume (and for every resize up)."""
DEFAULT_CONCURRENCY = 8
"""Snowflake's default MAX_CONCURRENCY_LEVEL: jobs one cluster runs before the next starts."""

Array = npt.NDArray[np.float64]


def credits_per_hour(size: str) -> float:
    """Credits per hour of one cluster of `size` (a spec size: XSMALL ... X6LARGE)."""
    try:
        return float(WAREHOUSE_CREDITS_PER_HOUR[size.upper()])
    except KeyError:
        raise ValueError(f"unknown warehouse size {size!r}") from None


@dataclass(frozen=True)
class WarehouseBilling:
    """How one warehouse is set up, as far as billing goes."""

    name: str
    auto_suspend: float = 60.0
    """Seconds idle before it suspends; 0 = never suspends."""
    max_clusters: int = 1
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass(frozen=True)
class Charge:
    """A stretch billed at a constant rate (credits/hour), on one cluster."""

    warehouse: str
    cluster: int
    start: float
    end: float
    credits_per_hour: float

    @property
    def credits(self) -> float:
        return self.credits_per_hour * (self.end - self.start) / 3600.0


@dataclass(frozen=True)
class Period:
    """One running period of one cluster: from resume to suspend (or the window's end)."""

    warehouse: str
    cluster: int
    start: float
    busy_end: float
    """When its last job ended."""
    end: float
    """When it is billed to: busy_end + auto_suspend, at least start + 60 s, at most window end
    (but never before start + 60 s)."""
    jobs: int
    charges: tuple[Charge, ...] = field(repr=False)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def credits(self) -> float:
        return sum(c.credits for c in self.charges)


def _busy_intervals(
    starts: Array, ends: Array, cluster: int, concurrency: int
) -> tuple[Array, Array, npt.NDArray[np.int64]]:
    """(starts, ends, jobs) of the stretches during which cluster `cluster` has work: more than
    `cluster * concurrency` jobs run at once. Cluster 0: every job's own interval."""
    if cluster == 0:
        return starts, ends, np.ones(len(starts), dtype=np.int64)
    times = np.concatenate([starts, ends])
    steps = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.lexsort((steps, times))  # at equal times an end (-1) comes before a start
    times, steps = times[order], steps[order]
    running = np.cumsum(steps)
    active = running > cluster * concurrency
    # segment i is [times[i], times[i+1]) with `running[i]` jobs
    seg_start, seg_end, seg_on = times[:-1], times[1:], active[:-1]
    keep = seg_on & (seg_end > seg_start)
    s, e = seg_start[keep], seg_end[keep]
    if len(s) == 0:
        return s, e, np.zeros(0, dtype=np.int64)
    # join touching segments
    new = np.concatenate([[True], s[1:] > e[:-1]])
    ids = np.cumsum(new) - 1
    out_s = s[new]
    out_e = np.maximum.reduceat(e, np.flatnonzero(new))
    jobs = np.bincount(ids).astype(np.int64)
    return out_s, out_e, jobs


def _periods_of(
    starts: Array, ends: Array, auto_suspend: float, window_end: float | None
) -> list[tuple[float, float, float, int]]:
    """Merge busy stretches (sorted by start) into running periods:
    [(start, busy_end, billed_end, stretches)]."""
    if len(starts) == 0:
        return []
    busy_end = np.maximum.accumulate(ends)
    if auto_suspend <= 0:  # never suspends: one period from the first job on
        new = np.zeros(len(starts), dtype=bool)
        new[0] = True
    else:
        new = np.concatenate([[True], starts[1:] > busy_end[:-1] + auto_suspend])
    firsts = np.flatnonzero(new)
    lasts = np.concatenate([firsts[1:] - 1, [len(starts) - 1]])
    out = []
    for f, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
        start, done = float(starts[f]), float(busy_end[last])
        if auto_suspend <= 0:
            end = window_end if window_end is not None else done
        else:
            end = done + auto_suspend
            if window_end is not None:
                end = min(end, window_end)
        end = max(end, done, start + MINIMUM_SECONDS)
        out.append((start, done, end, last - f + 1))
    return out


def _rate_charges(
    warehouse: str,
    cluster: int,
    start: float,
    end: float,
    change_times: Array,
    change_rates: Array,
) -> list[Charge]:
    """Charges of [start, end) under the rate step function (rate = the size of the job that
    started last; before the period's first job, that job's), plus the 60 s minimum of every
    resize up."""
    i0 = max(int(np.searchsorted(change_times, start, side="right")) - 1, 0)
    i1 = int(np.searchsorted(change_times, end, side="left"))
    times = [start] + [float(t) for t in change_times[i0 + 1 : i1] if t > start]
    rates = [float(change_rates[i0])] + [
        float(r) for t, r in zip(change_times[i0 + 1 : i1], change_rates[i0 + 1 : i1], strict=True)
        if t > start
    ]  # fmt: skip
    # collapse equal consecutive rates
    points: list[tuple[float, float]] = []
    for t, r in zip(times, rates, strict=True):
        if points and points[-1][1] == r:
            continue
        points.append((t, r))
    charges: list[Charge] = []
    for j, (t, r) in enumerate(points):
        t_next = points[j + 1][0] if j + 1 < len(points) else end
        if t_next > t:
            charges.append(Charge(warehouse, cluster, t, t_next, r))
        if j > 0 and r > points[j - 1][1]:  # a resize up: the added part bills >= 60 s
            lower = points[j - 1][1]
            stay = end - t
            for t2, r2 in points[j + 1 :]:
                if r2 < r:
                    stay = t2 - t
                    break
            if stay < MINIMUM_SECONDS:
                charges.append(Charge(warehouse, cluster, t + stay, t + MINIMUM_SECONDS, r - lower))
    return charges


def bill_warehouse(
    config: WarehouseBilling,
    starts: Sequence[float] | Array,
    ends: Sequence[float] | Array,
    rates: Sequence[float] | Array,
    *,
    window_end: float | None = None,
) -> list[Period]:
    """The running periods (with their charges) of warehouse `config` for jobs that ran from
    `starts[i]` to `ends[i]` (epoch seconds) at `rates[i]` credits/hour (the job's size).
    Periods are ordered by cluster, then start."""
    s = np.asarray(starts, dtype=np.float64)
    e = np.asarray(ends, dtype=np.float64)
    r = np.asarray(rates, dtype=np.float64)
    if not (len(s) == len(e) == len(r)):
        raise ValueError("starts, ends and rates differ in length")
    if len(s) == 0:
        return []
    e = np.maximum(e, s)
    order = np.argsort(s, kind="stable")
    s, e, r = s[order], e[order], r[order]
    periods: list[Period] = []
    for cluster in range(max(config.max_clusters, 1)):
        bs, be, jobs = _busy_intervals(s, e, cluster, max(config.concurrency, 1))
        if len(bs) == 0:
            break
        for start, done, end, count in _periods_of(bs, be, config.auto_suspend, window_end):
            lo = int(np.searchsorted(bs, start, side="left"))
            n_jobs = int(jobs[lo : lo + count].sum())
            charges = _rate_charges(config.name, cluster, start, end, s, r)
            periods.append(Period(config.name, cluster, start, done, end, n_jobs, tuple(charges)))
    return periods


def total_credits(periods: Sequence[Period]) -> float:
    return float(sum(p.credits for p in periods))


def charges_of(periods: Sequence[Period]) -> list[Charge]:
    return [c for p in periods for c in p.charges]


def credits_between(charges: Sequence[Charge], edges: Sequence[float] | Array) -> Array:
    """Credits billed in each bucket [edges[j], edges[j+1]) (len(edges) - 1 values). Charges
    that straddle an edge are split by time. O((charges + edges) log charges)."""
    t = np.asarray(edges, dtype=np.float64)
    if len(charges) == 0:
        return np.zeros(max(len(t) - 1, 0))
    cs = np.array([c.start for c in charges])
    ce = np.array([c.end for c in charges])
    cr = np.array([c.credits_per_hour for c in charges]) / 3600.0
    cum = _linear_integral(cs, cr, t) - _linear_integral(ce, cr, t)
    return np.diff(cum)


def _linear_integral(points: Array, weights: Array, t: Array) -> Array:
    """sum over i with points[i] < t of weights[i] * (t - points[i]), for every t."""
    order = np.argsort(points)
    p, w = points[order], weights[order]
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cwp = np.concatenate([[0.0], np.cumsum(w * p)])
    k = np.searchsorted(p, t, side="left")
    return t * cw[k] - cwp[k]


def attribute(
    periods: Sequence[Period],
    starts: Sequence[float] | Array,
    ends: Sequence[float] | Array,
) -> Array:
    """Credits attributed to each job: what was billed while it ran, split evenly among the
    jobs running at that moment (idle time and minimums are attributed to no job). The jobs
    are the ones the periods were billed for, in the caller's order."""
    s = np.asarray(starts, dtype=np.float64)
    e = np.maximum(np.asarray(ends, dtype=np.float64), s)
    if len(s) == 0:
        return np.zeros(0)
    charges = charges_of(periods)
    times = np.unique(np.concatenate([s, e]))
    if len(times) < 2:
        return np.zeros(len(s))
    # jobs running in each elementary segment [times[i], times[i+1])
    running = np.searchsorted(np.sort(s), times[:-1], side="right") - np.searchsorted(
        np.sort(e), times[:-1], side="right"
    )
    billed = credits_between(charges, times)  # all clusters: attribution covers them all
    per_job = np.where(running > 0, billed / np.maximum(running, 1), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(per_job)])
    return cum[np.searchsorted(times, e)] - cum[np.searchsorted(times, s)]
