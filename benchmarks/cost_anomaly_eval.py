"""Evaluate clinipipe's spend anomaly detector (clinipipe.cost.detect) on labelled series.

No public labelled cost-anomaly data set exists, so the series are generated: daily spend over
90 days and hourly spend over 30 days, each a level (5 to 500 credits a day) with steady growth
(0 to +40 % over the span), weekly seasonality (weekends at 30 to 100 % of weekdays; hourly
series add a business-hours profile), multiplicative noise (5 to 15 %), and injected anomalies
after the warm-up:

* spike: one day x2 to x5 (daily), or 1 to 3 hours x2 to x6 (hourly);
* level shift: from a point on, x1.6 to x3;
* slow drift: a linear rise to x1.6 to x2.5 over 14 to 28 days (daily) or 3 to 6 days (hourly).

About a fifth of the series carry no anomaly. Each series has 0 to 2 anomalies, apart.

Scoring: the detector's flags are grouped into alert events (consecutive flags of one kind);
an event is a true positive when it falls in an injected anomaly's window (spike: its points
and one more; level shift: onset to onset + 14 days / 48 hours; drift: onset to the end of the
ramp + 7 days / 24 hours), else a false positive. Recall per injected type: share of anomalies
with at least one event in their window; delay: first such event minus the onset, in periods.

Two seed splits: `dev` (used while building the detector) and `sealed` (never tuned on: run it
once, report it). Run: python benchmarks/cost_anomaly_eval.py [--split dev|sealed|both] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from clinipipe.cost.detect import DAILY, HOURLY, detect

SPLITS = {"dev": 1_000, "sealed": 7_000_000}
SERIES_PER_GRANULARITY = 120
TYPES = ("spike", "level_shift", "drift")


@dataclass
class Injected:
    kind: str
    onset: int
    end: int
    """Last index of the matching window."""


@dataclass
class Series:
    values: np.ndarray
    hourly: bool
    weekday0: int
    anomalies: list[Injected] = field(default_factory=list)


def generate(seed: int, hourly: bool) -> Series:
    rng = np.random.default_rng(seed)
    n = 30 * 24 if hourly else 90
    days = np.arange(n) / (24 if hourly else 1)
    weekday0 = int(rng.integers(0, 7))
    level = rng.uniform(5, 500) / (24 if hourly else 1)
    growth = 1 + rng.uniform(0, 0.4) * days / days[-1]
    weekday = (weekday0 + days.astype(int)) % 7
    week = rng.uniform(0.9, 1.1, 7)
    week[5:] *= rng.uniform(0.3, 1.0)
    season = week[weekday]
    if hourly:
        hour = np.arange(n) % 24
        amp = rng.uniform(0.2, 0.8)
        season = season * (1 + amp * np.sin(np.pi * np.clip((hour - 7) / 12, 0, 1)))
    noise = np.exp(rng.normal(0, rng.uniform(0.05, 0.15), n))
    base = level * growth * season
    values = base * noise
    warm = HOURLY.warmup if hourly else DAILY.warmup
    series = Series(values, hourly, weekday0)
    count = int(rng.choice([0, 1, 1, 2], p=[0.2, 0.4, 0.2, 0.2]))
    taken_until = warm + 2
    for _ in range(count):
        kind = str(rng.choice(TYPES))
        room = n - taken_until - (30 if not hourly else 100)
        if room <= 0:
            break
        onset = int(taken_until + rng.integers(0, max(room // max(count, 1), 1)))
        if kind == "spike":
            length = 1 if not hourly else int(rng.integers(1, 4))
            values[onset : onset + length] *= rng.uniform(2, 6 if hourly else 5)
            series.anomalies.append(Injected(kind, onset, onset + length))
            taken_until = onset + length + (14 if not hourly else 48)
        elif kind == "level_shift":
            values[onset:] *= rng.uniform(1.6, 3.0)
            window = 14 if not hourly else 48
            series.anomalies.append(Injected(kind, onset, onset + window))
            taken_until = onset + window + (21 if not hourly else 72)
        else:
            ramp = int(rng.integers(14, 29)) if not hourly else int(rng.integers(72, 145))
            top = rng.uniform(1.6, 2.5)
            flat = np.full(max(n - onset - ramp, 0), top)
            rise = np.concatenate([np.linspace(1, top, ramp), flat])
            values[onset:] *= rise[: n - onset]
            after = 7 if not hourly else 24
            series.anomalies.append(Injected(kind, onset, onset + ramp + after))
            taken_until = onset + ramp + after + (21 if not hourly else 72)
    return series


@dataclass
class Score:
    events: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TYPES})
    true_events: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TYPES})
    injected: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TYPES})
    detected: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TYPES})
    same_kind: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TYPES})
    delays: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TYPES})
    series: int = 0

    def as_dict(self) -> dict[str, object]:
        all_events = sum(self.events.values())
        all_true = sum(self.true_events.values())
        out: dict[str, object] = {
            "series": self.series,
            "alerts": all_events,
            "precision": all_true / all_events if all_events else None,
        }
        for t in TYPES:
            d = self.delays[t]
            out[t] = {
                "injected": self.injected[t],
                "recall": self.detected[t] / self.injected[t] if self.injected[t] else None,
                "alerts_of_this_kind": self.events[t],
                "precision_of_this_kind": (
                    self.true_events[t] / self.events[t] if self.events[t] else None
                ),
                "classified_as_this_kind": (
                    self.same_kind[t] / self.injected[t] if self.injected[t] else None
                ),
                "delay_median": float(np.median(d)) if d else None,
                "delay_p90": float(np.percentile(d, 90)) if d else None,
                "within_one_period": (
                    sum(1 for x in d if x <= 1) / self.injected[t] if self.injected[t] else None
                ),
            }
        return out


def events_of(flags: list) -> list[tuple[int, str]]:  # type: ignore[type-arg]
    """(first index, kind) of each run of consecutive flags of one kind."""
    events: list[tuple[int, str]] = []
    last: dict[str, int] = {}
    for f in flags:
        if f.kind in last and f.index - last[f.kind] <= 1:
            last[f.kind] = f.index
            continue
        events.append((f.index, f.kind))
        last[f.kind] = f.index
    return events


def score_series(series: Series, score: Score) -> None:
    settings = HOURLY if series.hourly else DAILY
    flags = detect(series.values, settings, weekday0=series.weekday0, hourly=series.hourly)
    events = events_of(flags)
    score.series += 1
    for index, kind in events:
        score.events[kind] += 1
        if any(a.onset <= index <= a.end for a in series.anomalies):
            score.true_events[kind] += 1
    for a in series.anomalies:
        score.injected[a.kind] += 1
        hits = [(i, k) for i, k in events if a.onset <= i <= a.end]
        if hits:
            score.detected[a.kind] += 1
            score.delays[a.kind].append(hits[0][0] - a.onset)
            if any(k == a.kind for _, k in hits):
                score.same_kind[a.kind] += 1


def evaluate(split: str) -> dict[str, object]:
    base = SPLITS[split]
    result: dict[str, object] = {"split": split}
    for hourly in (False, True):
        score = Score()
        for i in range(SERIES_PER_GRANULARITY):
            score_series(generate(base + 2 * i + int(hourly), hourly), score)
        result["hourly" if hourly else "daily"] = score.as_dict()
    return result


def _fmt(v: object) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["dev", "sealed", "both"], default="dev")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    splits = ["dev", "sealed"] if args.split == "both" else [args.split]
    started = time.perf_counter()
    results = [evaluate(s) for s in splits]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        for gran in ("daily", "hourly"):
            d = r[gran]
            assert isinstance(d, dict)
            print(f"[{r['split']}] {gran}: {d['series']} series, {d['alerts']} alerts, "
                  f"precision {_fmt(d['precision'])}")  # fmt: skip
            for t in TYPES:
                x = d[t]
                print(f"    {t:<12} n={x['injected']:<3} recall {_fmt(x['recall'])}  "
                      f"kind-precision {_fmt(x['precision_of_this_kind'])} "
                      f"(alerts {x['alerts_of_this_kind']})  "
                      f"same-kind {_fmt(x['classified_as_this_kind'])}  "
                      f"delay median {_fmt(x['delay_median'])} p90 {_fmt(x['delay_p90'])}  "
                      f"within 1 period {_fmt(x['within_one_period'])}")  # fmt: skip
    print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
