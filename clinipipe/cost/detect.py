"""Robust, seasonal anomaly detection on a spend series (credits per day or per hour).

Online: the judgment of point t uses only points before t (and t itself), so running it over a
history gives the alerts one would have had at each moment. For each point:

1. **Seasonal factors** (weekday for daily series; weekday/weekend x hour of day for hourly):
   the median, over the last few cycles, of each point's ratio to the centred rolling median of
   one cycle around it (only ratios whose window lies entirely in the past are used).
2. **Level**: the median of the last `level_window` deseasonalized points (robust to spikes).
   Expected value = level x the point's seasonal factor.
3. **Scale**: 1.4826 x MAD of the recent relative residuals (points already flagged excluded),
   floored at `min_scale` (a flat series does not make every wiggle an anomaly).
4. **Spike**: robust z-score (x / expected - 1) / scale above `threshold` (5 daily, 5.5
   hourly: Iglewicz-Hoaglin's 3.5 raised, as the baseline is itself an estimate) and at least
   `min_delta` credits above expected.
5. **Level shift**: the mean z-score of the last `shift_points` points, against the level
   from before them, above `shift_threshold`, none of them below half of it: a sustained rise.
6. **Drift**: the level now against the level `drift_lag` points ago, less the growth the
   longer history shows, above 3 standard errors and `drift_min` (relative).

Only rises are flagged (spend falling is not what a cost alert is for). After a level-shift or
drift alarm the same kind is quiet for `cooldown` points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DetectorSettings:
    cycle: int
    """Points per seasonal cycle (7 for daily, 24 for hourly)."""
    history_cycles: int
    """Cycles of ratios behind each seasonal factor."""
    level_window: int
    scale_window: int
    warmup: int
    shift_points: int
    drift_lag: int
    cooldown: int
    threshold: float = 5.0
    shift_threshold: float = 3.0
    drift_min: float = 0.25
    min_scale: float = 0.03
    min_delta: float = 0.0


DAILY = DetectorSettings(cycle=7, history_cycles=6, level_window=7, scale_window=42, warmup=21,
                         shift_points=3, drift_lag=14, cooldown=14)  # fmt: skip
HOURLY = DetectorSettings(cycle=24, history_cycles=6, level_window=24, scale_window=168,
                          warmup=168, shift_points=4, drift_lag=72, cooldown=48, threshold=5.5,
                          shift_threshold=3.5, drift_min=0.3)  # fmt: skip
"""Thresholds chosen on the `dev` split of benchmarks/cost_anomaly_eval.py (hourly spend is
noisier around its estimated day-and-hour profile, so its thresholds are higher)."""


@dataclass(frozen=True)
class Flag:
    index: int
    kind: str  # spike | level_shift | drift
    actual: float
    expected: float
    score: float


def _weekdays(n_days: int, weekday0: int) -> npt.NDArray[np.int64]:
    return (weekday0 + np.arange(n_days)) % 7


def _day_factors(daily: Array, weekday0: int, weeks: int) -> Array:
    """Weekday factors (7) from complete past days: the median, per weekday over the last
    `weeks` weeks, of each day's ratio to the median of the days within 3 of it (clipped to
    the days there are)."""
    n = len(daily)
    factors = np.ones(7)
    if n < 3:
        return factors
    ratios = np.full(n, np.nan)
    for d in range(max(n - 7 * weeks, 0), n):
        around = daily[max(d - 3, 0) : min(d + 4, n)]
        m = float(np.nanmedian(around)) if np.isfinite(around).any() else 0.0
        if m > 0:
            ratios[d] = daily[d] / m
    wd = _weekdays(n, weekday0)
    for k in range(7):
        r = ratios[(wd == k) & ~np.isnan(ratios)]
        if len(r):
            factors[k] = float(np.median(r))
    return np.where(factors > 0, factors, 1.0)


def _seasonal(x: Array, upto: int, weekday0: int, hourly: bool, weeks: int) -> Array:
    """The seasonal factor of every point of `x`, estimated from points before `upto` only
    (daily: weekday; hourly: weekday x hour-of-day profile, weekdays and weekends apart)."""
    n = len(x)
    if not hourly:
        f = _day_factors(x[:upto], weekday0, weeks)
        return f[_weekdays(n, weekday0)]
    days = upto // 24
    past = x[: days * 24].reshape(days, 24)
    f_day = _day_factors(past.sum(axis=1), weekday0, weeks)
    wd = _weekdays(days, weekday0)
    weekend = wd >= 5
    profile = np.ones((2, 24))
    with np.errstate(divide="ignore", invalid="ignore"):
        shape = past / past.mean(axis=1, keepdims=True)
    recent = np.arange(days) >= days - 14
    for c in (0, 1):
        rows = shape[(weekend == bool(c)) & recent & np.isfinite(shape).all(axis=1)]
        if len(rows):
            profile[c] = np.median(rows, axis=0)
    if not (weekend & recent).any():
        profile[1] = profile[0]
    profile = np.where(profile > 0, profile, 1.0)
    t = np.arange(n)
    wd_all = (weekday0 + t // 24) % 7
    return f_day[wd_all] * profile[(wd_all >= 5).astype(np.int64), t % 24]


def detect(
    values: Array | list[float],
    settings: DetectorSettings,
    *,
    weekday0: int = 0,
    hourly: bool = False,
    start: int | None = None,
) -> list[Flag]:
    """Anomalies of `values` (oldest first). `weekday0`: weekday (Monday 0) of the first point.
    `start`: first index to judge (default: `settings.warmup`)."""
    x = np.asarray(values, dtype=np.float64)
    s = settings
    n = len(x)
    flags: list[Flag] = []
    flagged = np.zeros(n, dtype=bool)
    resid = np.full(n, np.nan)
    level_at = np.full(n, np.nan)
    last_shift = -(10**9)
    last_drift = -(10**9)
    first = s.warmup if start is None else start
    season = np.ones(n)
    for t in range(1, n):
        if t % s.cycle == 0 or t == first:  # re-estimated once a cycle, from the past only
            season = _seasonal(np.where(flagged, np.nan, x), t, weekday0, hourly,
                               s.history_cycles) if t >= s.cycle else np.ones(n)  # fmt: skip
        hist = slice(max(t - s.level_window, 0), t)
        y_hist = x[hist] / season[hist]
        keep = ~flagged[hist]
        level = float(np.median(y_hist[keep] if keep.sum() >= 3 else y_hist))
        level_at[t] = level
        expected = level * season[t]
        rel = x[t] / expected - 1.0 if expected > 0 else (np.inf if x[t] > 0 else 0.0)
        resid[t] = rel
        past = resid[max(t - s.scale_window, 1) : t]
        past = past[~np.isnan(past) & ~flagged[max(t - s.scale_window, 1) : t]]
        if len(past) >= 5:
            scale = 1.4826 * float(np.median(np.abs(past - np.median(past))))
        else:
            scale = np.inf
        scale = max(scale, s.min_scale)
        if t < first:
            continue
        z = rel / scale
        if z > s.threshold and x[t] - expected > s.min_delta:
            flags.append(Flag(t, "spike", float(x[t]), float(expected), float(z)))
            flagged[t] = True
            continue
        # level shift: the last points against the level before them
        m = s.shift_points
        if t - last_shift > s.cooldown and t - m - s.level_window >= 0:
            ref_slice = slice(t - m + 1 - s.level_window, t - m + 1)
            ref = x[ref_slice] / season[ref_slice]
            ref_keep = ~flagged[ref_slice]
            ref_level = float(np.median(ref[ref_keep] if ref_keep.sum() >= 3 else ref))
            win = slice(t - m + 1, t + 1)
            if ref_level > 0:
                zs = (x[win] / (ref_level * season[win]) - 1.0) / scale
                delta = float(np.sum(x[win] - ref_level * season[win]))
                sustained = float(zs.min()) > s.shift_threshold / 2
                if float(np.mean(zs)) > s.shift_threshold and sustained and delta > s.min_delta:
                    expected = float(ref_level * season[t])
                    flags.append(Flag(t, "level_shift", float(x[t]), expected, float(np.mean(zs))))
                    last_shift = t
                    continue
        # drift: level now vs drift_lag ago, less the growth before that
        lag = s.drift_lag
        if (
            t - last_drift > s.cooldown
            and t - last_shift > 3 * lag  # the levels compared straddle no level shift
            and t - 3 * lag >= first  # nor the warm-up
            and not np.isnan(level_at[t - lag])
            and not np.isnan(level_at[t - 3 * lag])
        ):
            now_l, then_l, before_l = level_at[t], level_at[t - lag], level_at[t - 3 * lag]
            if then_l > 0 and before_l > 0:
                growth = now_l / then_l - 1.0
                normal = (then_l / before_l) ** 0.5 - 1.0  # per `lag`, from the two lags before
                excess = growth - max(normal, 0.0)
                stderr = 1.25 * scale * np.sqrt(2.0 / s.level_window)
                if excess > max(3.0 * stderr, s.drift_min):
                    flags.append(Flag(t, "drift", float(x[t]), float(expected), float(excess)))
                    last_drift = t
    return flags
