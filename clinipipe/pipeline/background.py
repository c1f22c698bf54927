"""Readers first: the work of a process that can wait runs on one lower-priority thread.

Publishes (`clinipipe.pipeline.publish`) and the refreshes `cdc start` schedules between
batches (`clinipipe.pipeline.cdc.after_batch.RefreshJob`) run on this process's *background
thread* (`in_background`), niced `NICE` more than the process. Linux nice values are per
thread: the CDC loop's own thread, which applies changes, keeps its priority, and dashboard
processes on the same cores get the CPU before this work (measured by
benchmarks/dashboard.py). DuckDB's own worker threads, used by a warehouse profile of more than
one thread, keep the process's priority; the incremental and interactive profiles run on one
thread, the caller's.

Guarantees: the caller waits and gets the call's result or its exception; calls run one at a
time, in the order they were made; a call made on the background thread itself runs at once
(no deadlock).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

NICE = int(os.environ.get("CLINIPIPE_BACKGROUND_NICE", "10"))
"""How much nicer than the process the background thread runs (`CLINIPIPE_BACKGROUND_NICE`;
0 = as the process)."""

_T = TypeVar("_T")
_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()
_on_worker = threading.local()


def _lower_priority() -> None:
    _on_worker.yes = True
    with contextlib.suppress(OSError, AttributeError, ValueError):
        tid = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, niceness + NICE))


def in_background(call: Callable[[], _T]) -> _T:
    """Run `call` on the background thread (created once) and return its result or raise its
    exception; the caller waits."""
    global _worker
    if getattr(_on_worker, "yes", False):
        return call()
    with _worker_lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(1, "clinipipe-background", initializer=_lower_priority)
        worker = _worker
    return worker.submit(call).result()


def set_niceness(nice: int) -> None:
    """Run later background work `nice` more than the process (a new thread; benchmarks)."""
    global _worker, NICE
    with _worker_lock:
        if _worker is not None:
            _worker.shutdown(wait=True)
            _worker = None
        NICE = nice
