"""Speed of free-text PHI redaction (`DetectorSet.redact`), one core. Not a test.

Redacts the notes of :func:`phi_corpus.generate_corpus` (``--notes`` notes) with and
without record linkage, pinned to one core with Arrow on one thread, caches of per-value work
cleared before each run (a new batch holds new patients); reports the best of ``--repeat`` in
MB/s (UTF-8 bytes of note text) of **process CPU time** (``time.process_time``): on a machine
shared with other work, wall time measures the neighbours too. ``--profile`` prints the top
functions of one linked run.

    python benchmarks/phi_speed.py [--notes 2000] [--seed 0] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from phi_corpus import generate_corpus

from clinipipe.phi import DetectorSet
from clinipipe.phi.linkage import clear_caches
from clinipipe.phi.validators import real_date

TARGET_MB_S = 5.0


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    pa.set_cpu_count(1)


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        clear_caches()
        real_date.cache_clear()
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    _pin_one_core()
    corpus = generate_corpus(args.notes, args.seed)
    ds = DetectorSet.load()
    ds.redact(corpus.texts.slice(0, 5), corpus.known.slice(0, 5), corpus.known_categories)
    texts, known, cats = corpus.texts, corpus.known, corpus.known_categories
    mb = sum(len(t.encode()) for t in texts.to_pylist()) / 1e6
    if args.profile:
        clear_caches()
        prof = cProfile.Profile()
        prof.enable()
        ds.redact(texts, known, cats)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    linked = mb / _best(lambda: ds.redact(texts, known, cats), args.repeat)
    plain = mb / _best(lambda: ds.redact(texts), args.repeat)
    print(f"{args.notes} notes, {mb:.2f} MB, one core, best of {args.repeat}")
    print(f"  with linkage     {linked:6.2f} MB/s")
    print(f"  without linkage  {plain:6.2f} MB/s")
    verdict = "met" if linked >= TARGET_MB_S else "NOT met"
    print(f"  target >= {TARGET_MB_S} MB/s per core with linkage: {verdict}")


if __name__ == "__main__":
    main()
