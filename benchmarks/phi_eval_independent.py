"""PHI redaction on the independently written corpus (``benchmarks/phi_corpus2``). Not a test.

Scores what ``DetectorSet.redact`` RETURNS, whole words (``benchmarks/phi_scoring.py``), with
record linkage (each note's patient record, canonical spellings) and without, reported and
judged separately against the targets of issue 11; then the speed of redaction with linkage on
one core (this process pinned, wall time, best and median of ``--repeat`` runs, cold caches).

Splits: ``dev`` (default) is for working on detectors. ``sealed`` is generated only with an
explicit ``--split sealed``, is never written to disk, and prints figures only (no per-kind
breakdown, no leaked values): it is run ONCE, by the lead, for the closing note of issue 11.
Never run it while changing detectors.

    python benchmarks/phi_eval_independent.py [--notes 2000] [--repeat 3] [--json]
        [--kinds] [--show-leaks 20]              # dev split: diagnostics allowed
    python benchmarks/phi_eval_independent.py --split sealed --notes 2000   # closing note only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import phi_corpus2
import phi_scoring as ps
import pyarrow as pa

from clinipipe.phi import DetectorSet


def _show(title: str, corpus: phi_corpus2.Corpus2, s: ps.Score) -> None:
    print(f"\n{title}")
    for leak in s.leaks:
        sp, text = leak.span, corpus.docs[leak.doc].text
        ctx = text[max(0, sp.start - 30) : sp.end + 30].replace("\n", " | ")
        print(f"  {sp.category:<11} {sp.kind:<22} kept {list(leak.survivors)}  …{ctx}…")
    for i, term in s.over_redacted:
        print(f"  over-redacted {term.category:<10} {corpus.docs[i].text[term.start : term.end]!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--split", choices=("dev", "sealed"), default="dev")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--kinds", action="store_true", help="span leak rate per kind (dev only)")
    parser.add_argument(
        "--show-leaks", type=int, default=0, help="print this many leaks (dev only; synthetic)"
    )
    args = parser.parse_args()
    if args.split == "sealed" and (args.kinds or args.show_leaks):
        print("--kinds and --show-leaks are refused on the sealed split", file=sys.stderr)
        return 2
    ps.pin_one_core()

    corpus = phi_corpus2.generate(args.notes, args.split, sealed_ok=args.split == "sealed")
    texts = pa.array(corpus.texts, pa.string())
    detectors = DetectorSet.load()
    detectors.redact(texts[:5], corpus.known.slice(0, 5), corpus.known_categories)  # warm-up

    linked_out = detectors.redact(texts, corpus.known, corpus.known_categories).to_pylist()
    plain_out = detectors.redact(texts).to_pylist()
    keep = args.show_leaks
    with_link = ps.score(corpus.docs, linked_out, keep_leaks=keep)
    without = ps.score(corpus.docs, plain_out, keep_leaks=keep)

    megabytes = sum(len(t.encode()) for t in corpus.texts) / 1e6
    speed = ps.measure(
        lambda: detectors.redact(texts, corpus.known, corpus.known_categories),
        megabytes,
        args.repeat,
    )
    v_with, v_without = ps.verdicts(with_link), ps.verdicts(without)
    v_speed = ps.speed_verdict(speed)

    if args.json:
        out: dict[str, Any] = {
            "corpus": "phi_corpus2",
            "split": args.split,
            "notes": len(corpus),
            "faker": corpus.faker_version,
            "megabytes": megabytes,
            "with_linkage": with_link.summary(),
            "without_linkage": without.summary(),
            "speed_with_linkage_mb_s": {
                "best": speed.best_mb_s,
                "median": speed.median_mb_s,
                "runs_s": speed.seconds,
                "cpu_median": speed.cpu_median_mb_s,
            },
            "verdicts": {
                "with_linkage": [v.__dict__ for v in v_with],
                "without_linkage": [v.__dict__ for v in v_without],
                "speed": v_speed.__dict__,
            },
        }
        if args.split == "sealed":
            for k in ("with_linkage", "without_linkage"):
                out[k].pop("span_leak_rate_by_kind")
        print(json.dumps(out, indent=2))
        return 0

    print(
        f"Independent PHI corpus (benchmarks/phi_corpus2), split {args.split}: {len(corpus)} "
        f"notes in {len(set(corpus.styles))} styles, "
        f"{sum(len(d.gold) for d in corpus.docs)} gold spans, "
        f"{sum(len(d.keep) for d in corpus.docs)} must-keep terms, {megabytes:.2f} MB, "
        f"Faker {corpus.faker_version}"
    )
    kinds = args.kinds and args.split == "dev"
    ps.print_score("With record linkage (each note's patient record):", with_link, kinds)
    ps.print_score("Without record linkage (generic detectors only):", without, kinds)
    if keep:
        _show("Leaks with linkage (synthetic values):", corpus, with_link)
        _show("Leaks without linkage (synthetic values):", corpus, without)
    ps.print_verdicts("with record linkage", v_with)
    ps.print_verdicts("without record linkage", v_without)
    print(f"\nSpeed, redact() with linkage, one core, {args.repeat} runs: {speed.describe()}")
    print(f"  {v_speed.target}: {v_speed.verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
