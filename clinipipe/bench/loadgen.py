"""Open-loop load generation and latency summaries.

*Open loop*: request i is due at ``start + i / rate`` whatever happened to the requests before
it, and its latency is measured from that due time, not from when a worker got to it. A slow
server therefore shows up as queueing in the latencies instead of silently lowering the load
(the "coordinated omission" of closed-loop benchmarks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

__all__ = ["LoadResult", "percentiles", "run_open_loop"]

Request = tuple[str, Callable[[], object]]
"""A request: its label (latencies are kept per label) and the call that performs it."""


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p95/p99 (linear interpolation between closest ranks) and max; None when empty."""
    if not values:
        return None
    ordered = sorted(values)

    def at(p: float) -> float:
        position = (len(ordered) - 1) * p
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


@dataclass
class LoadResult:
    """What an open-loop run measured. `latencies_ms[label]`: due time to completion of each
    successful request; `errors[label]`: failed requests; `error_types`: exception type names
    seen (never their messages, which may quote data)."""

    rate: float
    seconds: float
    sent: int = 0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_types: set[str] = field(default_factory=set)

    @property
    def all_latencies_ms(self) -> list[float]:
        return [v for values in self.latencies_ms.values() for v in values]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_open_loop(
    next_request: Callable[[int], Request],
    *,
    rate: float,
    seconds: float,
    workers: int = 16,
) -> LoadResult:
    """Offer `rate` requests per second for `seconds`: request i is `next_request(i)`, started
    on one of `workers` threads at its due time. Returns when every request finished."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    result = LoadResult(rate=rate, seconds=seconds)
    lock = threading.Lock()
    total = int(rate * seconds)

    def perform(label: str, call: Callable[[], object], due: float) -> None:
        try:
            call()
        except Exception as exc:  # counted and typed, never re-raised: the load goes on
            with lock:
                result.errors[label] = result.errors.get(label, 0) + 1
                result.error_types.add(type(exc).__name__)
            return
        elapsed = (time.perf_counter() - due) * 1000
        with lock:
            result.latencies_ms.setdefault(label, []).append(elapsed)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            label, call = next_request(i)
            pool.submit(perform, label, call, due)
            result.sent += 1
    return result
