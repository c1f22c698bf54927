"""Speed of free-text PHI redaction (`DetectorSet.redact`), one core. Not a test.

Redacts the notes of :func:`phi_corpus.generate_corpus` (``--notes`` notes) with and
without record linkage, pinned to one core with Arrow on one thread, caches of per-value work
cleared before each run (a new batch holds new patients); reports the best of ``--repeat`` in
MB/s (UTF-8 bytes of note text) of **process CPU time** (``time.process_time``): on a machine
shared with other work, wall time measures the neighbours too. ``--profile`` prints the top
functions of one linked run.

``--synth PATIENTS`` measures instead what ``clinipipe redact`` does to the ``clinical_notes``
of ``clinipipe synth --patients PATIENTS`` (about 6 notes a patient): ``redact_notes`` in
batches of 8,192 rows (the DuckDB redaction stream's batch), with record linkage from the
patient's identifying columns of the example hospital spec; notes/s of CPU and of wall time,
best and median of ``--repeat``, with the load average. Not pinned (the redaction runs in one
thread anyway), and the first run of a process (lexicon load included) reported apart.

    python benchmarks/phi_speed.py [--notes 2000] [--seed 0] [--repeat 3] [--profile]
    python benchmarks/phi_speed.py --synth 5000 [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
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


def _synth_notes(patients: int) -> tuple[pa.Array, pa.Table, dict[str, str]]:
    """The synthetic hospital's notes, each row's patient's identifiers, and their
    categories (what `clinipipe redact` links a note with)."""
    from importlib import resources

    from clinipipe.phi.safe_harbor import known_identifier_columns
    from clinipipe.spec.loader import parse_spec
    from clinipipe.synth.generator import generate

    os.environ.setdefault("CLINIPIPE_SOURCE_DSN", "postgresql://bench@localhost/bench")
    text = resources.files("clinipipe").joinpath("_examples/hospital.yaml").read_text()
    categories = known_identifier_columns(parse_spec(text, "hospital.yaml").spec)
    batches: dict[str, list[pa.RecordBatch]] = {"patients": [], "clinical_notes": []}
    for table, batch in generate(patients):
        if table in batches:
            batches[table].append(batch)
    people = pa.Table.from_batches(batches["patients"])
    notes = pa.Table.from_batches(batches["clinical_notes"]).select(
        ["note_id", "patient_id", "note_text"]
    )
    linked = notes.join(people.select(["patient_id", *categories]), "patient_id")
    linked = linked.sort_by("note_id")
    known = pa.table({c: linked[c].cast(pa.string()) for c in categories})
    return linked["note_text"].combine_chunks(), known, categories


def synth_main(args: argparse.Namespace) -> None:
    """``--synth``: notes/s of ``redact_notes`` on the synthetic hospital's notes."""
    from clinipipe.phi.redact_text import redact_notes

    notes, known, categories = _synth_notes(args.synth)
    batch = 8192

    def run() -> None:
        ds = DetectorSet.load()
        for i in range(0, len(notes), batch):
            redact_notes(ds, notes.slice(i, batch), known.slice(i, batch), categories)

    wall, cpu = time.perf_counter(), time.process_time()
    run()
    first = (time.perf_counter() - wall, time.process_time() - cpu, os.getloadavg()[0])
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    walls, cpus = [], []
    for _ in range(args.repeat):
        clear_caches()
        real_date.cache_clear()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    n, mb = len(notes), sum(len(t.encode()) for t in notes.to_pylist() if t) / 1e6
    print(f"{n:,} synthetic clinical notes ({args.synth:,} patients, {mb:.1f} MB), linked, "
          f"batches of {batch:,}")  # fmt: skip
    print(f"  first run (lexicon load included): {n / first[0]:7,.0f} notes/s wall, "
          f"{n / first[1]:7,.0f} notes/s CPU (load {first[2]:.1f})")  # fmt: skip
    print(f"  {args.repeat} runs, best / median: {n / min(walls):7,.0f} / "
          f"{n / statistics.median(walls):7,.0f} notes/s wall, {n / min(cpus):7,.0f} / "
          f"{n / statistics.median(cpus):7,.0f} notes/s CPU")  # fmt: skip
    print(f"  load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--synth", type=int, metavar="PATIENTS", help="synthetic hospital notes")
    args = parser.parse_args()
    if args.synth:
        synth_main(args)
        return
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
    print(f"{args.notes} notes, {mb:.2f} MB, one core, best of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"  with linkage     {linked:6.2f} MB/s")
    print(f"  without linkage  {plain:6.2f} MB/s")
    verdict = "met" if linked >= TARGET_MB_S else "NOT met"
    print(f"  target >= {TARGET_MB_S} MB/s per core with linkage: {verdict}")


if __name__ == "__main__":
    main()
