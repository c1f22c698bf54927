"""Quality and speed of PHI detection and free-text redaction (`clinipipe.phi`). Not a test.

Quality, on the labelled synthetic corpus of :func:`phi_corpus.generate_corpus`
(``--notes`` notes, every Safe Harbor category that text can hold), scored by
``benchmarks/phi_scoring.py`` (shared with ``phi_eval_presidio.py`` and
``phi_eval_independent.py``):

* scoring is **whole words, from what ``DetectorSet.redact`` RETURNS** (not from detected spans):
  a labelled word token is recalled only when none of its characters is left at its place in
  the redacted text; a labelled span is **leaked** when any of its tokens survives (a surname
  left beside ``[NAME]`` is a leak); precision is the share of redacted tokens that were
  labelled; every label of this corpus is scored strictly (no neutral years);
* **notes with any PHI left**: the share of notes in which at least one labelled token survives;
* two runs, **reported and judged separately**: with record linkage (each note's patient
  identifiers from structured columns, as ``clinipipe redact`` passes them) and without.

Honest reading: the corpus generator and the detectors were written by the same person, so
these figures flatter the detectors; ``benchmarks/phi_eval_independent.py`` (an independently
written generator, with a sealed split) and ``benchmarks/phi_eval_presidio.py`` (a public set)
are the evaluations to believe. Real notes score lower still (published systems lose 10-20
points out of domain).

Speed: ``DetectorSet.redact`` over all notes (tags; with and without linkage), this process
pinned to one core, wall time of ``--repeat`` runs with cold per-value caches, best and median;
MB = UTF-8 bytes of note text. The speed target is judged on the median with linkage. The
in-run anchor is a plain ``re.sub`` of one trivial pattern over the same text joined into one
string, so the ratio is comparable across machines.

    python benchmarks/phi_eval.py [--notes 2000] [--seed 0] [--repeat 3] [--json] [--misses 20]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import phi_scoring as ps
import pyarrow as pa
from phi_corpus import Corpus, generate_corpus

from clinipipe.phi import DetectorSet


def docs_of(corpus: Corpus) -> list[ps.Doc]:
    """The corpus's notes and labelled spans as scorer documents (no neutral ranges)."""
    texts = corpus.texts.to_pylist()
    docs = [ps.Doc(t or "") for t in texts]
    for r in corpus.spans.to_pylist():
        docs[r["row"]].gold.append(ps.Span(r["start"], r["end"], r["category"]))
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--misses",
        type=int,
        default=0,
        help="also print this many leaked spans and their survivors (synthetic values)",
    )
    args = parser.parse_args()
    ps.pin_one_core()

    corpus = generate_corpus(args.notes, args.seed)
    docs = docs_of(corpus)
    texts: pa.Array = corpus.texts
    detectors = DetectorSet.load()
    detectors.redact(texts[:5], corpus.known.slice(0, 5), corpus.known_categories)  # warm-up

    linked_out = detectors.redact(texts, corpus.known, corpus.known_categories).to_pylist()
    plain_out = detectors.redact(texts).to_pylist()
    with_link = ps.score(docs, linked_out, keep_leaks=args.misses)
    without = ps.score(docs, plain_out, keep_leaks=args.misses)

    megabytes = sum(len(d.text.encode()) for d in docs) / 1e6
    joined = "\n".join(d.text for d in docs)
    trivial = re.compile("ZQXJ")
    anchor = ps.measure(lambda: trivial.sub("", joined), megabytes, args.repeat)
    linked = ps.measure(
        lambda: detectors.redact(texts, corpus.known, corpus.known_categories),
        megabytes,
        args.repeat,
    )
    plain = ps.measure(lambda: detectors.redact(texts), megabytes, args.repeat)
    speed = {
        "megabytes": megabytes,
        "redact_linkage_mb_s_best": linked.best_mb_s,
        "redact_linkage_mb_s_median": linked.median_mb_s,
        "redact_no_linkage_mb_s_best": plain.best_mb_s,
        "redact_no_linkage_mb_s_median": plain.median_mb_s,
        "redact_linkage_mb_s_cpu_median": linked.cpu_median_mb_s,
        "anchor_re_sub_mb_s_best": anchor.best_mb_s,
        "ratio_linkage_vs_anchor": linked.best_mb_s / anchor.best_mb_s,
        "ratio_no_linkage_vs_anchor": plain.best_mb_s / anchor.best_mb_s,
    }
    v_with, v_without = ps.verdicts(with_link), ps.verdicts(without)
    v_speed = ps.speed_verdict(linked)

    if args.json:
        print(
            json.dumps(
                {
                    "notes": len(docs),
                    "seed": args.seed,
                    "with_linkage": with_link.summary(),
                    "without_linkage": without.summary(),
                    "speed": speed,
                    "verdicts": {
                        "with_linkage": [v.__dict__ for v in v_with],
                        "without_linkage": [v.__dict__ for v in v_without],
                        "speed": v_speed.__dict__,
                    },
                },
                indent=2,
            )
        )
        return 0
    styles = sorted(set(corpus.styles.to_pylist()))
    print(
        f"PHI evaluation (the project's own corpus; see the docstring): {len(docs)} notes "
        f"({', '.join(styles)}), seed {args.seed}, {corpus.spans.num_rows} labelled spans, "
        f"{megabytes:.2f} MB of text"
    )
    ps.print_score("With record linkage (known identifiers of each note's patient):", with_link)
    ps.print_score("Without record linkage (generic detectors only):", without)
    print(f"\nFree-text redaction, one core, {args.repeat} runs (best / median):")
    print(
        f"  with linkage     {linked.best_mb_s:7.2f} / {linked.median_mb_s:7.2f} MB/s  "
        f"({speed['ratio_linkage_vs_anchor']:.4f} x anchor, best)"
    )
    print(
        f"  without linkage  {plain.best_mb_s:7.2f} / {plain.median_mb_s:7.2f} MB/s  "
        f"({speed['ratio_no_linkage_vs_anchor']:.4f} x anchor, best)"
    )
    print(f"  anchor: re.sub of one trivial pattern {anchor.best_mb_s:.0f} MB/s")
    print(f"  with linkage: {linked.describe()}")
    ps.print_verdicts("with record linkage", v_with)
    ps.print_verdicts("without record linkage", v_without)
    print(f"  {v_speed.target}: {v_speed.verdict}")
    if args.misses:
        for title, s in (("with linkage", with_link), ("without linkage", without)):
            print(f"\nLeaked spans {title} (category, surviving tokens, context):")
            for leak in s.leaks:
                sp, text = leak.span, docs[leak.doc].text
                ctx = text[max(0, sp.start - 30) : sp.end + 30].replace("\n", " | ")
                print(f"  {sp.category:<11} kept {list(leak.survivors)}  …{ctx}…")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
