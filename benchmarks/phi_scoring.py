"""Whole-word scoring of free-text redaction, from what the redactor RETURNS. Not a test.

Shared by ``benchmarks/phi_eval.py`` (the project's corpus), ``benchmarks/phi_eval_presidio.py``
(the vendored Presidio-research set) and ``benchmarks/phi_eval_independent.py`` (the independent
generator in ``benchmarks/phi_corpus2``). It knows nothing about how detection works: it compares
each original text with the text ``DetectorSet.redact`` returned.

Guarantees of :func:`score`:

* **Alignment from the output.** The redacted text must be the original with some substrings
  replaced by ``[CATEGORY]`` tags; every original character is then either *kept* (it is still in
  the output, at its place) or *replaced*. If the output is not of that form, the alignment falls
  back to a token diff (``difflib``) and the note is counted in ``alignment_fallbacks``; a token
  the diff cannot match is counted as replaced.
* **Whole words.** A word token is a maximal run of letters and digits (``[^\\W_]+``). A token is
  *gold* when it overlaps a gold span (its category is that span's), *neutral* when it overlaps a
  neutral range (not PHI under Safe Harbor but not worth penalising either, e.g. the year of a
  date: scored neither way), and *other* otherwise.
* A gold token is **recalled** only when none of its characters is kept; a gold **span is leaked**
  when any of its gold tokens keeps a character (a surname left beside ``[NAME]`` is a leak); a
  note **has PHI left** when any of its gold tokens leaked.
* **Precision** = redacted gold tokens / all redacted non-neutral tokens, where a token is
  *redacted* when at least one of its characters was replaced.
* **Over-redaction**: a must-keep term (clinical abbreviation, drug, eponym, measurement) is
  over-redacted when any of its tokens lost a character.
* **Verdicts** (:func:`verdicts`): "met" only when the figure is exactly the one the target names
  and the run completed (at least one gold token scored); otherwise "missed" or "not judged".
"""

from __future__ import annotations

import difflib
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clinipipe.phi import CATEGORIES

TOKEN = re.compile(r"[^\W_]+")
TAG = re.compile(r"\[(?:" + "|".join(CATEGORIES) + r")\]")

#: Targets of issue 11, on every evaluation, judged with and without linkage separately.
TARGET_RECALL = 0.99
TARGET_CATEGORY_RECALL = 0.98
TARGET_LEAK_RATE = 0.01
TARGET_PRECISION = 0.90
TARGET_MB_S = 5.0


@dataclass(frozen=True)
class Span:
    """``text[start:end]``, labelled ``category`` (a clinipipe category for gold spans, a term
    class for must-keep terms); ``kind`` is a finer, optional label for breakdowns."""

    start: int
    end: int
    category: str
    kind: str = ""


@dataclass
class Doc:
    """One text with its gold PHI spans, neutral ranges and must-keep non-PHI terms."""

    text: str
    gold: list[Span] = field(default_factory=list)
    neutral: list[tuple[int, int]] = field(default_factory=list)
    keep: list[Span] = field(default_factory=list)


@dataclass
class Leak:
    """A gold span some token of which survived redaction (``survivors``: the kept tokens)."""

    doc: int
    span: Span
    survivors: tuple[str, ...]


@dataclass
class Score:
    """Figures of one run of :func:`score` (see the module docstring for definitions)."""

    notes: int = 0
    gold_tokens: int = 0
    recalled_tokens: int = 0
    tokens_by_category: dict[str, int] = field(default_factory=dict)
    recalled_by_category: dict[str, int] = field(default_factory=dict)
    spans_by_category: dict[str, int] = field(default_factory=dict)
    leaked_spans_by_category: dict[str, int] = field(default_factory=dict)
    spans_by_kind: dict[str, int] = field(default_factory=dict)
    leaked_spans_by_kind: dict[str, int] = field(default_factory=dict)
    redacted_tokens: int = 0
    redacted_gold_tokens: int = 0
    leaking_notes: int = 0
    keep_terms: int = 0
    keep_over_redacted: int = 0
    keep_by_class: dict[str, int] = field(default_factory=dict)
    keep_over_redacted_by_class: dict[str, int] = field(default_factory=dict)
    alignment_fallbacks: int = 0
    leaks: list[Leak] = field(default_factory=list)
    over_redacted: list[tuple[int, Span]] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.recalled_tokens / self.gold_tokens if self.gold_tokens else float("nan")

    @property
    def recall_by_category(self) -> dict[str, float]:
        return {
            c: self.recalled_by_category.get(c, 0) / n for c, n in self.tokens_by_category.items()
        }

    @property
    def precision(self) -> float:
        return self.redacted_gold_tokens / self.redacted_tokens if self.redacted_tokens else 1.0

    @property
    def leak_rate(self) -> float:
        return self.leaking_notes / self.notes if self.notes else float("nan")

    @property
    def over_redaction_rate(self) -> float:
        return self.keep_over_redacted / self.keep_terms if self.keep_terms else 0.0

    def summary(self) -> dict[str, Any]:
        """Every figure as plain JSON-able values (no text, no leaked values)."""
        return {
            "notes": self.notes,
            "gold_tokens": self.gold_tokens,
            "recall": self.recall,
            "recall_by_category": self.recall_by_category,
            "tokens_by_category": self.tokens_by_category,
            "span_leak_rate_by_category": {
                c: self.leaked_spans_by_category.get(c, 0) / n
                for c, n in self.spans_by_category.items()
            },
            "span_leak_rate_by_kind": {
                k: self.leaked_spans_by_kind.get(k, 0) / n for k, n in self.spans_by_kind.items()
            },
            "precision": self.precision,
            "redacted_tokens": self.redacted_tokens,
            "notes_with_phi_left": self.leaking_notes,
            "notes_with_phi_left_rate": self.leak_rate,
            "must_keep_terms": self.keep_terms,
            "must_keep_over_redacted": self.keep_over_redacted,
            "over_redaction_rate": self.over_redaction_rate,
            "over_redaction_by_class": {
                c: self.keep_over_redacted_by_class.get(c, 0) / n
                for c, n in self.keep_by_class.items()
            },
            "alignment_fallbacks": self.alignment_fallbacks,
        }


def kept_mask(original: str, redacted: str) -> bytearray | None:
    """1 for each character of ``original`` still present at its place in ``redacted``, 0 for
    each replaced one; None when ``redacted`` is not ``original`` with substrings replaced by
    ``[CATEGORY]`` tags (each tag replacing at least one character)."""
    pieces: list[str] = []
    pos = 0
    for m in TAG.finditer(redacted):
        pieces.append(redacted[pos : m.start()])
        pos = m.end()
    pieces.append(redacted[pos:])
    mask = bytearray(len(original))
    if len(pieces) == 1:
        if redacted != original:
            return None
        mask[:] = b"\x01" * len(original)
        return mask
    # first piece is a prefix, last a suffix, the others in order, leftmost, with at least one
    # replaced character before each.
    first, last = pieces[0], pieces[-1]
    if not original.startswith(first):
        return None
    cursor = len(first)
    mask[0 : len(first)] = b"\x01" * len(first)
    for piece in pieces[1:-1]:
        at = original.find(piece, cursor + 1)
        if at < 0:
            return None
        mask[at : at + len(piece)] = b"\x01" * len(piece)
        cursor = at + len(piece)
    tail = len(original) - len(last)
    if tail < cursor + 1 or not original.endswith(last):
        return None
    mask[tail:] = b"\x01" * len(last)
    return mask


def kept_mask_diff(original: str, redacted: str) -> bytearray:
    """Fallback alignment: tokens of ``original`` matched by a token diff with ``redacted``
    are kept, everything else counts as replaced."""
    a = [(m.group(), m.start(), m.end()) for m in TOKEN.finditer(original)]
    b = [m.group() for m in TOKEN.finditer(TAG.sub(" ", redacted))]
    mask = bytearray(len(original))
    sm = difflib.SequenceMatcher(None, [t for t, _, _ in a], b, autojunk=False)
    for block in sm.get_matching_blocks():
        for i in range(block.a, block.a + block.size):
            _, s, e = a[i]
            mask[s:e] = b"\x01" * (e - s)
    return mask


def _ranges_mask(n: int, ranges: Iterable[tuple[int, int]]) -> bytearray:
    m = bytearray(n)
    for s, e in ranges:
        m[s:e] = b"\x01" * (e - s)
    return m


def score(docs: Sequence[Doc], redacted: Sequence[str | None], keep_leaks: int = 0) -> Score:
    """Score ``redacted`` (what the redactor returned, aligned with ``docs``). ``keep_leaks``
    limits how many :class:`Leak` and over-redacted terms are kept for display."""
    if len(docs) != len(redacted):
        raise ValueError(f"{len(docs)} documents but {len(redacted)} redacted texts")
    s = Score(notes=len(docs))
    for i, (doc, out) in enumerate(zip(docs, redacted, strict=True)):
        text = doc.text
        kept = kept_mask(text, out or "")
        if kept is None:
            s.alignment_fallbacks += 1
            kept = kept_mask_diff(text, out or "")
        neutral = _ranges_mask(len(text), doc.neutral)
        # character -> index of its gold span (+1), 0 for none
        owner = [0] * len(text)
        for j, sp in enumerate(doc.gold):
            for c in range(sp.start, sp.end):
                if not owner[c]:
                    owner[c] = j + 1
        span_tokens: dict[int, list[tuple[str, bool]]] = {}
        note_leaks = False
        for m in TOKEN.finditer(text):
            a, b = m.start(), m.end()
            if any(neutral[a:b]):
                continue
            n_kept = sum(kept[a:b])
            replaced_any = n_kept < b - a
            gold = next((owner[c] for c in range(a, b) if owner[c]), 0)
            if replaced_any:
                s.redacted_tokens += 1
            if not gold:
                continue
            cat = doc.gold[gold - 1].category
            s.gold_tokens += 1
            s.tokens_by_category[cat] = s.tokens_by_category.get(cat, 0) + 1
            if replaced_any:
                s.redacted_gold_tokens += 1
            if n_kept == 0:
                s.recalled_tokens += 1
                s.recalled_by_category[cat] = s.recalled_by_category.get(cat, 0) + 1
            else:
                note_leaks = True
            span_tokens.setdefault(gold - 1, []).append((m.group(), n_kept > 0))
        for j, toks in span_tokens.items():
            sp = doc.gold[j]
            leaked = any(k for _, k in toks)
            kind = sp.kind or sp.category
            s.spans_by_category[sp.category] = s.spans_by_category.get(sp.category, 0) + 1
            s.spans_by_kind[kind] = s.spans_by_kind.get(kind, 0) + 1
            if leaked:
                s.leaked_spans_by_category[sp.category] = (
                    s.leaked_spans_by_category.get(sp.category, 0) + 1
                )
                s.leaked_spans_by_kind[kind] = s.leaked_spans_by_kind.get(kind, 0) + 1
                if len(s.leaks) < keep_leaks:
                    s.leaks.append(Leak(i, sp, tuple(t for t, k in toks if k)))
        if note_leaks:
            s.leaking_notes += 1
        for term in doc.keep:
            s.keep_terms += 1
            s.keep_by_class[term.category] = s.keep_by_class.get(term.category, 0) + 1
            if any(
                sum(kept[m.start() + term.start : m.end() + term.start]) < m.end() - m.start()
                for m in TOKEN.finditer(text[term.start : term.end])
            ):
                s.keep_over_redacted += 1
                s.keep_over_redacted_by_class[term.category] = (
                    s.keep_over_redacted_by_class.get(term.category, 0) + 1
                )
                if len(s.over_redacted) < keep_leaks:
                    s.over_redacted.append((i, term))
    return s


@dataclass(frozen=True)
class Verdict:
    """One target: what was measured, the threshold, and "met" / "missed" / "not judged"."""

    target: str
    value: float | None
    verdict: str


def verdicts(s: Score | None, completed: bool = True) -> list[Verdict]:
    """The four quality targets of issue 11 for one run. ``s`` None (no run, e.g. linkage not
    applicable) or an incomplete run or no gold token gives "not judged" for every target."""
    judged = s is not None and completed and s.gold_tokens > 0
    rows: list[tuple[str, float | None, bool]] = []
    if s is not None and judged:
        cats = s.recall_by_category
        rows = [
            (f"token recall >= {TARGET_RECALL:.0%}", s.recall, s.recall >= TARGET_RECALL),
            (
                f"every category token recall >= {TARGET_CATEGORY_RECALL:.0%}",
                min(cats.values()),
                min(cats.values()) >= TARGET_CATEGORY_RECALL,
            ),
            (
                f"notes with any PHI left <= {TARGET_LEAK_RATE:.0%}",
                s.leak_rate,
                s.leak_rate <= TARGET_LEAK_RATE,
            ),
            (
                f"token precision >= {TARGET_PRECISION:.0%}",
                s.precision,
                s.precision >= TARGET_PRECISION,
            ),
        ]
        return [Verdict(t, v, "met" if ok else "missed") for t, v, ok in rows]
    names = (
        f"token recall >= {TARGET_RECALL:.0%}",
        f"every category token recall >= {TARGET_CATEGORY_RECALL:.0%}",
        f"notes with any PHI left <= {TARGET_LEAK_RATE:.0%}",
        f"token precision >= {TARGET_PRECISION:.0%}",
    )
    return [Verdict(t, None, "not judged") for t in names]


def print_score(title: str, s: Score, kinds: bool = False) -> None:
    """A per-category table (token recall, span leak rate) and the overall figures."""
    print(f"\n{title}")
    print(f"  {'category':<12} {'tokens':>7} {'recall':>8} {'spans':>6} {'leaked':>7}")
    for c in CATEGORIES:
        n = s.tokens_by_category.get(c)
        if not n:
            continue
        r = s.recalled_by_category.get(c, 0) / n
        ns = s.spans_by_category.get(c, 0)
        print(
            f"  {c:<12} {n:>7} {r:8.2%} {ns:>6} "
            f"{s.leaked_spans_by_category.get(c, 0) / ns if ns else 0:7.2%}"
        )
    print(
        f"  token recall {s.recall:.2%}  precision {s.precision:.2%} "
        f"({s.redacted_tokens} tokens redacted)  notes with PHI left {s.leak_rate:.2%} "
        f"({s.leaking_notes} of {s.notes})"
    )
    if s.keep_terms:
        per = ", ".join(
            f"{c} {s.keep_over_redacted_by_class.get(c, 0)}/{n}"
            for c, n in sorted(s.keep_by_class.items())
        )
        print(
            f"  over-redaction of must-keep terms {s.over_redaction_rate:.2%} "
            f"({s.keep_over_redacted} of {s.keep_terms}: {per})"
        )
    if s.alignment_fallbacks:
        print(f"  alignment fell back to a token diff on {s.alignment_fallbacks} notes")
    if kinds:
        print("  span leak rate by kind (leaked/spans):")
        for k in sorted(s.spans_by_kind):
            n = s.spans_by_kind[k]
            leaked = s.leaked_spans_by_kind.get(k, 0)
            print(f"    {k:<28} {leaked:>5}/{n:<5} {leaked / n:7.2%}")


def print_verdicts(title: str, vs: list[Verdict]) -> None:
    """One line per target: value and verdict."""
    print(f"\nTargets, {title}:")
    for v in vs:
        val = "-" if v.value is None else f"{v.value:.2%}"
        print(f"  {v.target:<40} {val:>8}  {v.verdict}")


def pin_one_core() -> None:
    """Measure one core: pin the process and keep Arrow to one thread."""
    import pyarrow as pa

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    pa.set_cpu_count(1)


def cold_caches() -> None:
    """Clear clinipipe's per-value caches (a new batch holds new patients, so caches warmed by a
    previous run would flatter a speed figure). Tolerates caches that no longer exist."""
    try:
        from clinipipe.phi.linkage import clear_caches

        clear_caches()
    except ImportError:
        pass
    try:
        from clinipipe.phi.validators import real_date

        real_date.cache_clear()
    except (ImportError, AttributeError):
        pass


@dataclass(frozen=True)
class Speed:
    """Wall-time throughput of ``runs`` repetitions over ``megabytes`` of UTF-8 text."""

    megabytes: float
    seconds: tuple[float, ...]
    cpu_seconds: tuple[float, ...] = ()

    @property
    def best_mb_s(self) -> float:
        return self.megabytes / min(self.seconds)

    @property
    def median_mb_s(self) -> float:
        return self.megabytes / statistics.median(self.seconds)

    @property
    def cpu_median_mb_s(self) -> float:
        """Throughput per second of this process's CPU time (context on a shared machine; the
        verdict uses wall time)."""
        return self.megabytes / statistics.median(self.cpu_seconds) if self.cpu_seconds else 0.0

    def describe(self) -> str:
        runs = ", ".join(f"{t:.2f}" for t in self.seconds)
        return (
            f"best {self.best_mb_s:.2f} MB/s, median {self.median_mb_s:.2f} MB/s wall "
            f"(runs {runs} s); median {self.cpu_median_mb_s:.2f} MB/s of process CPU time"
        )


def measure(fn: Callable[[], Any], megabytes: float, repeat: int = 3) -> Speed:
    """Run ``fn`` ``repeat`` times in this process, each after :func:`cold_caches`; wall time
    and process CPU time of each run."""
    times, cpu = [], []
    for _ in range(repeat):
        cold_caches()
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return Speed(megabytes, tuple(times), tuple(cpu))


def speed_verdict(sp: Speed | None) -> Verdict:
    """>= 5 MB/s per core with linkage, judged on the MEDIAN of the runs (not the best)."""
    name = f"redaction >= {TARGET_MB_S:g} MB/s per core with linkage (median)"
    if sp is None or not sp.seconds:
        return Verdict(name, None, "not judged")
    return Verdict(name, sp.median_mb_s, "met" if sp.median_mb_s >= TARGET_MB_S else "missed")
