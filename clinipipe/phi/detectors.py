"""PHI detectors: small rule objects loaded from data, and the set that runs them over a batch.

The built-in rules live in ``data/detectors.yaml``; a spec adds its own under ``phi.patterns``.
:class:`DetectorSet` runs every rule once over a whole batch joined into one string (see
:mod:`clinipipe.phi.text`), adds name-list and record-linkage spans, and merges overlaps.

Guarantees of :meth:`DetectorSet.find` / :meth:`DetectorSet.redact`:

* spans are character offsets into their row's text (end exclusive), lie within one row, do not
  overlap, and are sorted by row then start; null texts give no span;
* a span that several detectors found is reported once, labelled by the highest-priority
  detector and covering the union of what they matched, so redaction removes every character
  any detector found;
* no PHI value is ever logged or put into an exception message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from clinipipe.phi.categories import CATEGORIES, SEVERITIES
from clinipipe.phi.fakes import surrogate
from clinipipe.phi.lexicon import NameContext, NameLexicon, name_neighbours, read_list
from clinipipe.phi.linkage import find_known
from clinipipe.phi.text import (
    UNANCHORED,
    JoinedText,
    Utf8Text,
    as_string_array,
    assemble,
    compile_re2,
    join_texts,
    re2_spans,
    resolve_overlaps,
    without_groups,
)
from clinipipe.phi.validators import VALIDATORS

if TYPE_CHECKING:
    from clinipipe.spec.model import PhiSpec

__all__ = ["FINDINGS_SCHEMA", "Detector", "DetectorSet", "mask_excerpt"]

FINDINGS_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("category", pa.string()),
        ("detector", pa.string()),
        ("severity", pa.string()),
        ("confidence", pa.float64()),
    ]
)

_FRAGMENT = re.compile(r"\{\{([A-Z0-9_]+|FILE:[\w.-]+)\}\}")
LINKAGE_PRIORITY = 90
LINKAGE_CONFIDENCE = 0.99


@dataclass(frozen=True)
class Detector:
    """One detection rule.

    ``pattern`` is a Python regex; when it has a group named ``phi`` only that group is the PHI
    span (the rest is context, e.g. ``MRN:``). ``prefilter`` is an RE2 regex (valid for DuckDB
    ``regexp_matches`` and Snowflake ``REGEXP_LIKE``) that matches every text in which
    ``pattern`` finds something. A match counts when ``validator`` (a name in
    :data:`clinipipe.phi.validators.VALIDATORS`) accepts the span and, if ``context_required``,
    one of the ``context`` words occurs within ``context_window`` characters before it (after
    ``blockers`` words, which cancel it). Context found raises the confidence by
    ``context_boost``. ``priority`` decides the label when spans of two detectors overlap.
    ``bounded``: the span may not touch a letter or digit on either side; ``not_after``: a
    regex that must not match right after the match (what a lookahead would say, kept out of
    the pattern so that RE2 can run it).

    Speed hints that never change what one detector finds on its own: detectors of one
    ``family`` share one RE2 pass (an alternation by priority: where two match at the same
    position only the higher-priority one is tried); ``anchor`` (a cheap regex) and
    ``anchor_window`` (characters before, after) restrict a Python-only pattern to windows
    around the anchor's matches.

    ``kind`` is ``pattern`` or ``names`` (census name lists, :mod:`clinipipe.phi.lexicon`;
    ``pattern`` is then the word shape, ``titles``/``cues``/``after_cues`` the context, and
    ``lower_cues``/``lower_stop`` the extra rules for notes typed all in lower case).
    """

    name: str
    category: str
    severity: str
    confidence: float
    pattern: str
    prefilter: str
    validator: str | None = None
    context: tuple[str, ...] = ()
    context_required: bool = False
    context_window: int = 40
    context_boost: float = 0.1
    blockers: tuple[str, ...] = ()
    ignore_case: bool = False
    priority: int = 0
    kind: str = "pattern"
    family: str | None = None
    bounded: bool = True
    not_after: str | None = None
    anchor: str | None = None
    anchor_window: tuple[int, int] = (64, 64)
    titles: tuple[str, ...] = ()
    cues: tuple[str, ...] = ()
    after_cues: tuple[str, ...] = ()
    lower_cues: tuple[str, ...] = ()
    lower_stop: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"detector {self.name}: unknown category {self.category!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"detector {self.name}: unknown severity {self.severity!r}")
        if not 0.0 < self.confidence <= 1.0:
            raise ValueError(f"detector {self.name}: confidence must be in (0, 1]")
        if self.validator is not None and self.validator not in VALIDATORS:
            raise ValueError(f"detector {self.name}: unknown validator {self.validator!r}")
        if self.kind not in ("pattern", "names"):
            raise ValueError(f"detector {self.name}: unknown kind {self.kind!r}")
        if self.context_required and not self.context:
            raise ValueError(f"detector {self.name}: context_required needs context words")
        try:
            self.regex  # noqa: B018 - compile now so a bad rule fails at load
        except re.error as exc:
            raise ValueError(f"detector {self.name}: bad pattern: {exc}") from None

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)

    @cached_property
    def _group(self) -> int | str:
        return "phi" if "phi" in self.regex.groupindex else 0

    @cached_property
    def _context_re(self) -> re.Pattern[str] | None:
        if not self.context:
            return None
        words = "|".join(re.escape(w) for w in sorted(self.context, key=len, reverse=True))
        return re.compile(rf"(?i:(?<![a-z])(?:{words})(?![a-z]))")

    @cached_property
    def _blocker_re(self) -> re.Pattern[str] | None:
        if not self.blockers:
            return None
        words = "|".join(re.escape(w) for w in sorted(self.blockers, key=len, reverse=True))
        return re.compile(rf"(?i:(?<![a-z])(?:{words})(?![a-z]))")

    @cached_property
    def _validate(self) -> Callable[[str], bool] | None:
        return VALIDATORS[self.validator] if self.validator else None

    @cached_property
    def _not_after_re(self) -> re.Pattern[str] | None:
        return re.compile(self.not_after) if self.not_after else None

    @cached_property
    def _anchor_re(self) -> re.Pattern[str] | None:
        return re.compile(self.anchor) if self.anchor else None

    @cached_property
    def fast_regex(self) -> Any | None:
        """The pattern compiled by RE2 (scanned over UTF-8 bytes), or None when RE2 is missing
        or the pattern uses a feature RE2 lacks (it then runs on Python's engine)."""
        if self.anchor or self.ignore_case or self.kind != "pattern":
            return None
        return compile_re2(without_groups(self.pattern))

    def scan(self, text: str) -> list[tuple[int, int, float]]:
        """Spans ``(start, end, confidence)`` this detector finds in ``text`` (which may be a
        joined batch: context never reaches across a row separator)."""
        if self.kind == "names":
            lower = [(0, len(text))] if text.islower() else []
            return self.lexicon.find(text, lower)
        return self.judge(text, self.candidates(text))

    @cached_property
    def lexicon(self) -> NameLexicon:
        return NameLexicon(
            NameContext(
                self.titles,
                self.cues,
                self.after_cues,
                self.cues + self.lower_cues,
                self.lower_stop,
            )
        )

    def candidates(self, text: str) -> list[tuple[int, int, int]]:
        """Raw regex matches as ``(span start, span end, match end)`` (the span is the ``phi``
        group when there is one), before validation and context."""
        anchor = self._anchor_re
        if anchor is None:
            return self._spans_of(self.regex.finditer(text))
        before, after = self.anchor_window
        out: list[tuple[int, int, int]] = []
        hi = -1
        lo = 0
        for a in anchor.finditer(text):
            s, e = a.start() - before, a.end() + after
            if s <= hi:
                hi = max(hi, e)
                continue
            if hi >= 0:
                out.extend(self._window(text, lo, hi))
            lo, hi = s, e
        if hi >= 0:
            out.extend(self._window(text, lo, hi))
        return out

    def _spans_of(self, matches: Any) -> list[tuple[int, int, int]]:
        group = self._group
        return [(*m.span(group), m.end()) for m in matches]

    def _window(self, text: str, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Matches within ``text[lo:hi]``, the window widened back to a whitespace so that a
        match is never cut at its start."""
        lo = max(0, lo)
        while lo > 0 and not text[lo - 1].isspace() and text[lo - 1] != "\x00":
            lo -= 1
        return self._spans_of(self.regex.finditer(text, lo, min(len(text), hi)))

    def spans_at(
        self, text: str, starts: Sequence[int], ends: Sequence[int]
    ) -> list[tuple[int, int, int]]:
        """Candidates from match positions found by the RE2 engine: the ``phi`` group is read
        by re-matching with Python's engine at each start (same pattern, same match)."""
        if self._group == 0:
            return [(s, e, e) for s, e in zip(starts, ends, strict=True)]
        out = []
        match = self.regex.match
        for s in starts:
            m = match(text, s)
            if m is not None:
                out.append((*m.span("phi"), m.end()))
        return out

    def judge(
        self, text: str, candidates: Sequence[tuple[int, int, int]]
    ) -> list[tuple[int, int, float]]:
        """Keep the candidates that pass ``bounded``, ``not_after``, the validator and the
        context rule, with their confidence."""
        out: list[tuple[int, int, float]] = []
        validate, ctx, not_after = self._validate, self._context_re, self._not_after_re
        trims = getattr(validate, "trims", False)
        window, bounded, n = self.context_window, self.bounded, len(text)
        for s, e, me in candidates:
            if s >= e:
                continue
            if bounded and ((s > 0 and text[s - 1].isalnum()) or (e < n and text[e].isalnum())):
                continue
            if not_after is not None and not_after.match(text, me):
                continue
            if validate is not None:
                verdict = validate(text[s:e])
                if not verdict:
                    continue
                if trims:
                    e = s + int(verdict)
            conf = self.confidence
            if ctx is not None:
                found = self._context_found(text, s, window, ctx)
                if not found:
                    if self.context_required:
                        continue
                else:
                    conf = min(0.99, conf + self.context_boost)
            out.append((s, e, conf))
        return out

    def _context_found(self, text: str, s: int, window: int, ctx: re.Pattern[str]) -> bool:
        before = text[max(0, s - window) : s]
        cut = before.rfind("\x00")
        if cut >= 0:
            before = before[cut + 1 :]
        found = None
        for found in ctx.finditer(before):  # noqa: B007 - keep the last one
            pass
        if found is None:
            return False
        blockers = self._blocker_re
        return blockers is None or blockers.search(before, found.end()) is None

    def find(self, text: str) -> list[tuple[int, int, float]]:
        """This detector alone over one text (for tests and explanations)."""
        return self.scan(text)


def _expand(text: str, fragments: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("FILE:"):
            return _file_alternation(name[5:])
        return fragments[name]

    return _FRAGMENT.sub(sub, text)


@cache
def _file_alternation(name: str) -> str:
    """A data list as a regex alternation (each entry as written and in upper case), longest
    first."""
    words = {w for line in read_list(name) for w in (line, line.upper())}
    return "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))


def _fragments(raw: Mapping[str, str]) -> dict[str, str]:
    """Expand ``{{NAME}}`` references between fragments (in file order)."""
    done: dict[str, str] = {}
    for key, value in raw.items():
        done[key] = _expand(str(value), done)
    return done


def _detector(entry: Mapping[str, Any], fragments: Mapping[str, str]) -> Detector:
    values = dict(entry)
    for key in ("pattern", "prefilter"):
        if key in values:
            values[key] = _expand(str(values[key]), fragments)
    for key in (
        "context",
        "blockers",
        "titles",
        "cues",
        "after_cues",
        "lower_cues",
        "lower_stop",
        "anchor_window",
    ):
        if key in values:
            values[key] = tuple(values[key])
            if key != "anchor_window" and not all(isinstance(w, str) for w in values[key]):
                raise ValueError(
                    f"detector {values.get('name')}: {key} must be strings (quote 'on')"
                )
    return Detector(**values)


@cache
def builtin_detectors() -> tuple[Detector, ...]:
    """The rules in ``data/detectors.yaml``, in file order."""
    text = resources.files("clinipipe.phi.data").joinpath("detectors.yaml").read_text("utf-8")
    doc = yaml.safe_load(text)
    fragments = _fragments(doc.get("fragments", {}))
    return tuple(_detector(entry, fragments) for entry in doc["detectors"])


def spec_detectors(phi: PhiSpec | None) -> tuple[Detector, ...]:
    """The spec's custom patterns (``phi.patterns``) as detectors: ``regex`` becomes the
    pattern, and the prefilter defaults to the regex itself."""
    out = []
    for p in getattr(phi, "patterns", None) or []:
        values = p.model_dump() if hasattr(p, "model_dump") else dict(p)
        values["pattern"] = values.pop("regex", values.get("pattern"))
        values = {k: v for k, v in values.items() if v is not None and v != []}
        values.setdefault("prefilter", values["pattern"])
        values.setdefault("priority", 60)
        out.append(_detector(values, {}))
    return tuple(out)


def _lower_case_rows(
    texts: pa.Array | pa.ChunkedArray | Sequence[str | None], joined: JoinedText
) -> np.ndarray:
    """``(start, end)`` in the joined text of the rows typed all in lower case, one row of an
    ``(n, 2)`` array each."""
    arr = as_string_array(texts)
    lower = pc.fill_null(pc.utf8_is_lower(arr), False)
    rows = np.flatnonzero(np.asarray(lower.to_numpy(zero_copy_only=False)))
    starts = joined.starts
    return np.stack([starts[rows], starts[rows + 1] - 1], axis=1).astype(np.int64)


class _ScanUnit:
    """One scan over the batch for one or several patterns (see ``DetectorSet._scan_units``)."""

    def __init__(self, branches: list[tuple[Detector, list[int]]]) -> None:
        self.branches = branches
        self._fast: Any | None = None
        self._python: re.Pattern[str] | None = None
        if len(branches) > 1:
            self._fast = compile_re2(
                "|".join(f"(?:{without_groups(d.pattern)})" for d, _ in branches)
            )
            self._python = re.compile(
                "|".join(
                    f"(?P<b{k}>{d.pattern.replace('(?P<phi>', f'(?P<b{k}_phi>')})"
                    for k, (d, _) in enumerate(branches)
                )
            )

    def candidates(self, text: str, utf8: Utf8Text) -> list[tuple[int, list[tuple[int, int, int]]]]:
        """``(branch, candidates)`` pairs: raw matches of each branch's pattern."""
        if self._fast is None:
            first = self.branches[0][0]
            fast = first.fast_regex
            if fast is None:
                cands = first.candidates(text)
            else:
                found = re2_spans(fast, utf8.data)
                if not found:
                    return []
                at, to = utf8.chars([f[0] for f in found]), utf8.chars([f[1] for f in found])
                cands = first.spans_at(text, at, to)
            return [(0, cands)] if cands else []
        assert self._python is not None
        match = self._python.match
        groups = self._python.groupindex
        data = utf8.data
        end = len(data)
        by_branch: dict[int, list[tuple[int, int, int]]] = {}
        low = getattr(self._fast, "_regexp", None)
        if low is None:  # pragma: no cover - another re2 binding
            search = self._fast.search

            def next_start(pos: int) -> int:
                found = search(data, pos)
                return -1 if found is None else found.start()
        else:
            low_match = low.Match

            def next_start(pos: int) -> int:
                return low_match(UNANCHORED, data, pos, end)[0][0]

        pos = 0
        while pos <= end:
            found = next_start(pos)
            if found < 0:
                break
            s = utf8.char(found)
            m = match(text, s)
            if m is None or m.lastgroup is None:  # RE2 and Python disagree: skip a character
                pos = utf8.byte(s + 1)
                continue
            name = m.lastgroup
            phi = f"{name}_phi"
            span = m.span(phi) if phi in groups else m.span(name)
            by_branch.setdefault(int(name[1:]), []).append((*span, m.end()))
            # Resume at the PHI span, not after the match: another branch may start there or
            # in the context after it ("to: dr. armstrong": the cue branch's rejected word
            # "dr" starts the title branch; "Springfield, MA 01103": the city's context "MA"
            # starts the ZIP's match).
            pos = utf8.byte(span[0] if span[0] > s else max(span[1], s + 1))
        return list(by_branch.items())


@dataclass(frozen=True)
class Spans:
    """Resolved spans over a joined batch (offsets into ``joined.text``)."""

    joined: JoinedText
    start: np.ndarray
    end: np.ndarray
    label: np.ndarray  # index into DetectorSet labels
    confidence: np.ndarray


@dataclass(frozen=True)
class DetectorSet:
    """An ordered set of detectors run together (see the module docstring)."""

    detectors: tuple[Detector, ...]
    _labels: tuple[tuple[str, str, str, int], ...] = field(init=False, repr=False, compare=False)
    _excerpt_spans: dict[str, list[tuple[int, int, str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise ValueError("detector names must be unique")
        labels = [(d.name, d.category, d.severity, d.priority) for d in self.detectors]
        labels += [("linkage", c, "high", LINKAGE_PRIORITY) for c in CATEGORIES]
        object.__setattr__(self, "_labels", tuple(labels))

    @classmethod
    def load(cls, phi: PhiSpec | None = None) -> DetectorSet:
        """The built-in rules plus the spec's custom patterns (a custom pattern whose name is a
        built-in detector's replaces it)."""
        custom = spec_detectors(phi)
        replaced = {d.name for d in custom}
        builtin = tuple(d for d in builtin_detectors() if d.name not in replaced)
        return cls(builtin + custom)

    def prefilter(self) -> str:
        """One RE2 regex: a text it does not match has no finding from any detector of this set
        (record linkage aside, which depends on the row's known values)."""
        parts = sorted({d.prefilter for d in self.detectors})
        return "|".join(f"(?:{p})" for p in parts)

    @cached_property
    def _scan_units(self) -> list[_ScanUnit]:
        """How the pattern detectors run: detectors with an identical pattern share one scan;
        RE2-compilable patterns of one ``family`` share one RE2 pass (an alternation, branches
        by priority: at one position the first branch that matches wins)."""
        groups: dict[tuple[str, bool, str | None, tuple[int, int]], list[int]] = {}
        for i, d in enumerate(self.detectors):
            if d.kind == "pattern":
                key = (d.pattern, d.ignore_case, d.anchor, d.anchor_window)
                groups.setdefault(key, []).append(i)
        families: dict[str, list[tuple[Detector, list[int]]]] = {}
        units: list[_ScanUnit] = []
        for members in groups.values():
            first = self.detectors[members[0]]
            if first.family and first.fast_regex is not None:
                families.setdefault(first.family, []).append((first, members))
            else:
                units.append(_ScanUnit([(first, members)]))
        for branches in families.values():
            branches.sort(key=lambda b: -max(self.detectors[i].priority for i in b[1]))
            units.append(_ScanUnit(branches))
        return units

    def spans(
        self,
        texts: pa.Array | pa.ChunkedArray | Sequence[str | None],
        known: pa.Table | None = None,
        known_categories: Mapping[str, str] | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> Spans:
        """Every detected span over the joined batch, overlaps resolved. A merged span takes
        a category in ``keep`` only when every span merged into it has one."""
        joined = join_texts(texts)
        text = joined.text
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        confs: list[np.ndarray] = []

        def add(found: list[tuple[int, int, float]], label: int) -> None:
            if found:
                arr = np.asarray(found, dtype=np.float64)
                starts.append(arr[:, 0].astype(np.int64))
                ends.append(arr[:, 1].astype(np.int64))
                labels.append(np.full(len(found), label, dtype=np.int64))
                confs.append(arr[:, 2])

        utf8 = Utf8Text(text)
        for unit in self._scan_units:
            for branch, cands in unit.candidates(text, utf8):
                for i in unit.branches[branch][1]:
                    add(self.detectors[i].judge(text, cands), i)
        for i, d in enumerate(self.detectors):
            if d.kind == "names":
                add(d.lexicon.find(text, _lower_case_rows(texts, joined)), i)
        if known is not None and known.num_columns:
            cats = dict(known_categories or {})
            base = len(self.detectors)
            for category, found in find_known(joined, known, cats).items():
                add(found, base + CATEGORIES.index(category))
        if not starts:
            empty = np.zeros(0, dtype=np.int64)
            return Spans(joined, empty, empty, empty, np.zeros(0))
        s, e = np.concatenate(starts), np.concatenate(ends)
        lab, conf = np.concatenate(labels), np.concatenate(confs)
        # A match may not cross a row separator (a pattern like [^x] could).
        same_row = joined.rows_of(s) == joined.rows_of(e - 1)
        s, e, lab, conf = s[same_row], e[same_row], lab[same_row], conf[same_row]
        rank = np.asarray([self._labels[k][3] for k in lab], dtype=np.int64) * 1000 + (
            conf * 999
        ).astype(np.int64)
        if keep:  # a group of overlapping spans is kept only if all of its members are
            kept = np.asarray([self._labels[k][1] in keep for k in lab], dtype=bool)
            rank = rank - kept * (1 << 40)
        g_start, g_end, winner = resolve_overlaps(s, e, rank)
        extra = self._name_neighbours(text, g_start, g_end, lab[winner])
        if extra is not None:
            xs, xe, xl = extra
            s, e = np.concatenate([s, xs]), np.concatenate([e, xe])
            lab, conf = np.concatenate([lab, xl]), np.concatenate([conf, np.full(len(xs), 0.7)])
            rank = np.concatenate([rank, np.zeros(len(xs), dtype=np.int64)])
            g_start, g_end, winner = resolve_overlaps(s, e, rank)
        return Spans(joined, g_start, g_end, lab[winner], conf[winner])

    @cached_property
    def _name_labels(self) -> tuple[np.ndarray, int]:
        """Which labels are NAME, and the label given to a name's neighbour word (the
        name-list detector's, else record linkage's)."""
        is_name = np.asarray([c == "NAME" for _, c, _, _ in self._labels], dtype=bool)
        lexicon = [i for i, d in enumerate(self.detectors) if d.kind == "names"]
        label = lexicon[0] if lexicon else len(self.detectors) + CATEGORIES.index("NAME")
        return is_name, label

    def _name_neighbours(
        self, text: str, start: np.ndarray, end: np.ndarray, label: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Spans of the words that complete a detected name (:func:`name_neighbours`), or
        None when there are none."""
        is_name, new_label = self._name_labels
        names = is_name[label]
        if not names.any():
            return None
        found = name_neighbours(text, start[names].tolist(), end[names].tolist())
        if not found:
            return None
        arr = np.asarray(found, dtype=np.int64)
        xs, xe = arr[:, 0], arr[:, 1]
        ok = np.asarray([text.find("\x00", a, b) < 0 for a, b in found], dtype=bool)
        return xs[ok], xe[ok], np.full(int(ok.sum()), new_label, dtype=np.int64)

    def cell_spans(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, category)`` of every span detected in one text; the last few
        hundred texts are remembered (a scan masks several findings of one cell)."""
        cache = self._excerpt_spans
        found = cache.get(text)
        if found is None:
            sp = self.spans([text])
            labels = self._labels
            found = [
                (int(s), int(e), labels[int(k)][1])
                for s, e, k in zip(sp.start, sp.end, sp.label, strict=True)
            ]
            if len(cache) >= 512:
                cache.pop(next(iter(cache)))
            cache[text] = found
        return found

    def find(
        self,
        texts: pa.Array | pa.ChunkedArray | Sequence[str | None],
        known: pa.Table | None = None,
        known_categories: Mapping[str, str] | None = None,
    ) -> pa.Table:
        """One row per detected span (schema :data:`FINDINGS_SCHEMA`), sorted by row, start.

        ``known`` (aligned row for row with ``texts``) holds each row's patient's identifiers,
        one per column; ``known_categories`` maps a column to its category (or spec PHI class;
        unmapped columns named like one count as it, others as ``OTHER_ID``). Those values and
        their usual spellings are found in their own row (detector ``linkage``,
        :mod:`clinipipe.phi.linkage`)."""
        sp = self.spans(texts, known, known_categories)
        rows = sp.joined.rows_of(sp.start)
        offset = sp.joined.starts[rows]
        labels = self._labels
        return pa.table(
            {
                "row": pa.array(rows, pa.int64()),
                "start": pa.array(sp.start - offset, pa.int64()),
                "end": pa.array(sp.end - offset, pa.int64()),
                "category": pa.array([labels[k][1] for k in sp.label], pa.string()),
                "detector": pa.array([labels[k][0] for k in sp.label], pa.string()),
                "severity": pa.array([labels[k][2] for k in sp.label], pa.string()),
                "confidence": pa.array(sp.confidence, pa.float64()),
            },
            schema=FINDINGS_SCHEMA,
        )

    def redact(
        self,
        texts: pa.Array | pa.ChunkedArray | Sequence[str | None],
        known: pa.Table | None = None,
        known_categories: Mapping[str, str] | None = None,
        *,
        surrogates: bool = False,
        key: bytes | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> pa.Array:
        """``texts`` (same length and nulls, ``string`` type) with each detected span whose
        category is not in ``keep`` replaced by ``[CATEGORY]``, or with ``surrogates=True`` by a
        realistic surrogate derived from HMAC-SHA256(``key``, category + normalized value):
        the same value gets the same surrogate in every row and run. Overlapping detections
        are kept only if all of them are in ``keep`` (a date overlapping a name goes)."""
        if surrogates and not key:
            raise ValueError("surrogates need a secret key (HMAC-SHA256)")
        sp = self.spans(texts, known, known_categories, keep)
        categories = [self._labels[k][1] for k in sp.label]
        keep_mask = np.asarray([c in keep for c in categories], dtype=bool)
        start, end = sp.start[~keep_mask], sp.end[~keep_mask]
        cats = [c for c, k in zip(categories, keep_mask, strict=True) if not k]
        if surrogates:
            assert key is not None
            text = sp.joined.text
            reps = [
                surrogate(c, text[s:e], key)
                for c, s, e in zip(cats, start.tolist(), end.tolist(), strict=True)
            ]
        else:
            reps = [f"[{c}]" for c in cats]
        return assemble(sp.joined, start, end, reps)


def mask_excerpt(
    text: str, start: int, end: int, category: str, *, detectors: DetectorSet, width: int = 24
) -> str:
    """``…context [CATEGORY] context…``: ``width`` characters each side of ``text[start:end]``,
    with that span replaced by ``[category]`` and every other detected span that touches the
    window replaced by its own tag. Whitespace runs become one space. The result never contains
    a detected value (spans cut by the window edge are replaced whole)."""
    lo, hi = max(0, start - width), min(len(text), end + width)
    pieces: list[str] = []
    pos = lo
    spans = [
        (s, e, cat)
        for s, e, cat in detectors.cell_spans(text)
        if e > lo and s < hi and (s, e) != (start, end)
    ]
    spans.append((start, end, category))
    spans.sort()
    for s, e, cat in spans:
        if e <= pos:
            continue
        if s >= pos or not pieces:
            pieces.append(text[pos:s] if s > pos else "")
            pieces.append(f"[{cat}]")
        pos = e
    if pos < hi:
        pieces.append(text[pos:hi])
    body = re.sub(r"\s+", " ", "".join(pieces)).strip()
    return ("…" if lo > 0 else "") + body + ("…" if hi < len(text) else "")
