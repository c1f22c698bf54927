"""Open-loop load generation and latency summaries.

*Open loop*: request i is due at ``start + i / rate`` whatever happened to the requests before
it, and its latency is measured from that due time, not from when a worker got to it. A slow
server therefore shows up as queueing in the latencies instead of silently lowering the load
(the "coordinated omission" of closed-loop benchmarks).

:func:`run_open_loop` offers the load from threads of the calling process;
:func:`run_processes` offers it from several processes (each runs :func:`run_open_loop` on its
share of the rate, phase-shifted so the merged arrivals stay evenly spaced) and merges what
they measured. Both are what ``clinipipe bench dashboard`` and ``benchmarks/dashboard.py`` use.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ClientFactory",
    "LoadResult",
    "offered_rate",
    "percentiles",
    "run_open_loop",
    "run_processes",
]

Request = tuple[str, Callable[[], object]]
"""A request: its label (latencies are kept per label) and the call that performs it."""

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99, "p99_9": 0.999}


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p95/p99/p99.9 (linear interpolation between closest ranks) and max; None when
    empty. Always ordered: p50 <= p95 <= p99 <= p99_9 <= max."""
    if not values:
        return None
    ordered = sorted(values)

    def at(p: float) -> float:
        position = (len(ordered) - 1) * p
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    found = {name: at(p) for name, p in QUANTILES.items()}
    found["max"] = ordered[-1]
    return found


def offered_rate(
    *, qps: float | None = None, users: int | None = None, think_seconds: float | None = None
) -> float:
    """The arrival rate (requests/s) an offered load states: `qps` directly, or `users`
    people each sending one request every `think_seconds` (open loop: `users / think`).
    ValueError when neither or both are given, or a value is not positive."""
    if (qps is None) == (users is None):
        raise ValueError("state the load as a rate, or as users with a think time, not both")
    if qps is not None:
        if qps <= 0:
            raise ValueError("the rate must be positive")
        return float(qps)
    if not users or users <= 0 or not think_seconds or think_seconds <= 0:
        raise ValueError("users and the think time must be positive")
    return users / think_seconds


@dataclass
class LoadResult:
    """What an open-loop run measured. `latencies_ms[label]`: due time to completion of each
    successful request; `errors[label]`: failed requests; `error_types`: exception type names
    seen (never their messages, which may quote data). `wall_seconds`: from the first due time
    to the last completion (so a backlog that drains after the window lowers the achieved
    rate); `late_submits`: requests handed to a worker more than 10 ms after their due time
    (the generator itself could not keep up: the machine, not the system under test)."""

    rate: float
    seconds: float
    sent: int = 0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_types: set[str] = field(default_factory=set)
    wall_seconds: float = 0.0
    late_submits: int = 0

    @property
    def all_latencies_ms(self) -> list[float]:
        return [v for values in self.latencies_ms.values() for v in values]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.latencies_ms.values())

    @property
    def achieved_rate(self) -> float:
        """Successful requests per second of wall time (0.0 when nothing completed)."""
        return self.completed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def merge(self, other: LoadResult) -> None:
        """Add `other` (another process's share of the same run) into this result."""
        self.sent += other.sent
        for label, values in other.latencies_ms.items():
            self.latencies_ms.setdefault(label, []).extend(values)
        for label, count in other.errors.items():
            self.errors[label] = self.errors.get(label, 0) + count
        self.error_types |= other.error_types
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        self.late_submits += other.late_submits

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate, "seconds": self.seconds, "sent": self.sent,
            "latencies_ms": self.latencies_ms, "errors": self.errors,
            "error_types": sorted(self.error_types), "wall_seconds": self.wall_seconds,
            "late_submits": self.late_submits,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadResult:
        return cls(
            rate=float(d["rate"]), seconds=float(d["seconds"]), sent=int(d["sent"]),
            latencies_ms={k: list(v) for k, v in d["latencies_ms"].items()},
            errors=dict(d["errors"]), error_types=set(d["error_types"]),
            wall_seconds=float(d["wall_seconds"]), late_submits=int(d["late_submits"]),
        )  # fmt: skip


def run_open_loop(
    next_request: Callable[[int], Request],
    *,
    rate: float,
    seconds: float,
    workers: int = 16,
    start_at: float | None = None,
    phase: float = 0.0,
) -> LoadResult:
    """Offer `rate` requests per second for `seconds`: request i is `next_request(i)`, started
    on one of `workers` threads at its due time ``start + (i + phase) / rate``. `start_at`
    (``time.time()`` seconds) lets several processes share one start; default: now. Returns
    when every request finished."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    result = LoadResult(rate=rate, seconds=seconds)
    lock = threading.Lock()
    total = max(1, int(rate * seconds))
    last_done = [0.0]

    def perform(label: str, call: Callable[[], object], due: float) -> None:
        try:
            call()
        except Exception as exc:  # counted and typed, never re-raised: the load goes on
            with lock:
                result.errors[label] = result.errors.get(label, 0) + 1
                result.error_types.add(type(exc).__name__)
                last_done[0] = max(last_done[0], time.perf_counter())
            return
        now = time.perf_counter()
        with lock:
            result.latencies_ms.setdefault(label, []).append((now - due) * 1000)
            last_done[0] = max(last_done[0], now)

    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter()
        for i in range(total):
            due = start + (i + phase) / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.010:
                result.late_submits += 1
            label, call = next_request(i)
            pool.submit(perform, label, call, due)
            result.sent += 1
    result.wall_seconds = max(last_done[0] - start, seconds)
    return result


# --- several processes --------------------------------------------------------------------------

ClientFactory = Callable[[Any], tuple[Callable[[int], Request], Callable[[], None]]]
"""Called in each client process with its argument: returns (next_request, close). Must be a
module-level function (it is pickled by name into the process)."""


def _client_main(
    factory: ClientFactory,
    argument: Any,
    rate: float,
    seconds: float,
    start_at: float,
    phase: float,
    warmup: float,
    workers: int,
    results: Any,
) -> None:
    try:
        next_request, close = factory(argument)
        try:
            if warmup > 0:  # open files, warm caches: not measured
                run_open_loop(next_request, rate=rate, seconds=warmup, workers=workers)
            measured = run_open_loop(next_request, rate=rate, seconds=seconds, workers=workers,
                                     start_at=start_at, phase=phase)  # fmt: skip
        finally:
            close()
        results.put(("ok", measured.as_dict()))
    except BaseException as exc:  # reported to the parent by type only (no data)
        results.put(("error", type(exc).__name__))


def run_processes(
    factory: ClientFactory,
    argument: Any,
    *,
    rate: float,
    seconds: float,
    processes: int = 1,
    warmup: float = 1.0,
    workers: int = 16,
    start_timeout: float = 60.0,
) -> LoadResult:
    """Offer `rate` requests/s for `seconds` from `processes` fresh (spawned) processes, each
    building its client with ``factory(argument)`` and offering ``rate / processes`` open loop,
    after an unmeasured `warmup`. All start measuring at one wall-clock instant, set far enough
    ahead for the processes to start and warm up (a process that is later starts when it is
    ready); arrivals of process k are shifted by k/processes of one interval. The merged result
    holds every latency; `start_timeout` bounds the wait for results after the window.
    A process that fails raises RuntimeError naming the exception type; every process is
    joined (or terminated) before this returns or raises."""
    if processes < 1:
        raise ValueError("processes must be >= 1")
    ctx = multiprocessing.get_context("spawn")  # no inherited threads, locks or connections
    results = ctx.Queue()
    share = rate / processes
    # Start-up of a spawned interpreter plus the warm-up: the shared start is that far ahead.
    start_at = time.time() + 3.0 + warmup + 0.5 * processes
    procs = [
        ctx.Process(
            target=_client_main,
            args=(
                factory,
                argument,
                share,
                seconds,
                start_at,
                k / processes,
                warmup,
                workers,
                results,
            ),
            daemon=True,
        )
        for k in range(processes)
    ]
    merged = LoadResult(rate=rate, seconds=seconds)
    failures: list[str] = []
    try:
        for p in procs:
            p.start()
        deadline = start_at + seconds + start_timeout
        for _ in procs:
            try:
                kind, payload = results.get(timeout=max(1.0, deadline - time.time()))
            except queue.Empty:
                failures.append("Timeout")
                break
            if kind == "ok":
                merged.merge(LoadResult.from_dict(payload))
            else:
                failures.append(str(payload))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    if failures:
        raise RuntimeError(f"load client process failed: {', '.join(sorted(set(failures)))}")
    return merged
