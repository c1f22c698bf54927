"""Name detection from word lists: census first and last names, judged by their neighbours,
computed column-wise over a whole batch (no Python loop over words).

The joined batch text is split once into capitalized words and the gaps between them
(``re.split``, in C); every rule below is then an Arrow/numpy operation over those arrays. The
lists and context words are data (see ``data/README.md`` and ``data/detectors.yaml``).

* A capitalized word (Title Case, or upper case of 3+ letters) that is a census name is a
  *strong* name, unless it is also a common English word (``name_words.txt``: Will, Rose, Hope,
  Dean, Brown...), a medical eponym (``eponyms.txt``: Parkinson, Foley...), or upper case of 3
  letters: those are *weak*. Followed by an eponym head ("Murphy sign", "Graves disease") it is
  no name unless a title precedes it; titles, credentials and lab analytes
  (``abbreviations.txt``) and words inside known non-name phrases (``not_names.txt``: Blue
  Cross, Glasgow Coma Scale) never are.
* A weak word is a name next to an accepted name: after it ("John Brown"), before it as a first
  name ("Will Smith"), as "Last," before a first name ("Brown, John"), two weak words as
  "First Last" ("Mark Young"); or after a title ("Dr."), a cue word ("wife", "Patient:") or
  before an after-cue ("is a 63 y/o", ", MD").
* Capitalized words that are neither census names nor English words join an accepted name
  next to them ("Jaylen Smith", "Dana Okafor"). Adjacent accepted words ("First Last",
  "Last, First", "First M. Last") make one span.

Guarantee: every returned span starts and ends on a word boundary and lies within one row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import repeat

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DATA = "clinipipe.phi.data"


def read_list(name: str) -> list[str]:
    """The non-comment, non-blank lines of a data file, stripped."""
    text = resources.files(_DATA).joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@dataclass(frozen=True)
class NameContext:
    """Context words of the name detector (from ``detectors.yaml``)."""

    titles: tuple[str, ...] = ()
    cues: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    """Regexes that, right after a word, make it a name ("Mark is a 63 y/o")."""
    lower: tuple[str, ...] = ()
    """Cue words before a name in text typed all in lower case ("from: tony black")."""
    lower_stop: tuple[str, ...] = ()
    """Function words never taken for a name after a cue in lower-case text ("my son will")."""


@dataclass(frozen=True)
class NameLexicon:
    """Census name lists, ambiguous words, eponyms and English words, plus the context cues."""

    context: NameContext = field(default_factory=NameContext)

    def find(
        self, text: str, lower_case: Sequence[tuple[int, int]] = ()
    ) -> list[tuple[int, int, float]]:
        """Name spans ``(start, end, confidence)`` in ``text`` (a joined batch or one note);
        ``lower_case``: ranges of ``text`` typed all in lower case, where lower-case words
        are judged too (:func:`_find_lower`)."""
        found = _find(text, self.context)
        for lo, hi in lower_case:
            found.extend(_find_lower(text, lo, hi, self.context))
        return found


@dataclass(frozen=True)
class _Lists:
    names: pa.Array
    firsts: pa.Array
    ambiguous: pa.Array
    eponyms: pa.Array
    heads: pa.Array
    english: pa.Array
    abbreviations: pa.Array


def _lower_array(words: Iterable[str]) -> pa.Array:
    return pa.array(sorted({w.lower() for w in words}), pa.string())


@cache
def _lists() -> _Lists:
    firsts = read_list("first_names.txt")
    return _Lists(
        names=_lower_array(firsts + read_list("last_names.txt")),
        firsts=_lower_array(firsts),
        ambiguous=_lower_array(read_list("name_words.txt")),
        eponyms=_lower_array(read_list("eponyms.txt")),
        heads=_lower_array(read_list("eponym_heads.txt")),
        english=_lower_array(read_list("english_words.txt")),
        abbreviations=_lower_array(read_list("abbreviations.txt")),
    )


_NAME, _FIRST, _AMBIGUOUS, _EPONYM, _ENGLISH, _ABBREV = 1, 2, 4, 8, 16, 32


@cache
def _flags() -> dict[str, int]:
    """Every listed word (lower case) -> bit flags of the lists holding it."""
    lists = _lists()
    flags: dict[str, int] = {}
    for bit, array in (
        (_NAME, lists.names),
        (_FIRST, lists.firsts),
        (_AMBIGUOUS, lists.ambiguous),
        (_EPONYM, lists.eponyms),
        (_ENGLISH, lists.english),
        (_ABBREV, lists.abbreviations),
    ):
        for word in array.to_pylist():
            flags[word] = flags.get(word, 0) | bit
    return flags


@cache
def _sets() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """names, eponyms, English words and abbreviations as Python sets (for single words)."""
    lists = _lists()
    return tuple(  # type: ignore[return-value]
        frozenset(a.to_pylist())
        for a in (lists.names, lists.eponyms, lists.english, lists.abbreviations)
    )


@cache
def _phrases() -> ahocorasick.Automaton:
    auto = ahocorasick.Automaton()
    for phrase in read_list("not_names.txt"):
        auto.add_word(phrase, len(phrase))
    auto.make_automaton()
    return auto


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


# A capitalized word of two letters or more (O'Brien, Smith-Jones); initials stay in the gaps.
_WORD = re.compile(r"([A-Z][A-Za-z]*[a-zA-Z](?:['\u2019][A-Z][A-Za-z]+)?(?:-[A-Z][A-Za-z]+)*)")
_JOIN = r"^(?: |, | [A-Z]\.? )$"
_HEAD = "^(?:['\u2019]s)?[ -](?P<w>[A-Za-z]+)"  # Arrow's RE2 wants the character itself


def _in(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    return np.asarray(pc.is_in(values, value_set=value_set).to_numpy(zero_copy_only=False))


def _match(values: pa.Array, pattern: str, ignore_case: bool = False) -> np.ndarray:
    return np.asarray(
        pc.fill_null(pc.match_substring_regex(values, pattern, ignore_case=ignore_case), False)
        .to_numpy(zero_copy_only=False)
        .astype(bool)
    )


def _shift(a: np.ndarray, by: int, fill: bool = False) -> np.ndarray:
    """``a`` moved by ``by`` places (``out[i] = a[i - by]``), padded with ``fill``."""
    out = np.full_like(a, fill)
    if by > 0:
        out[by:] = a[:-by]
    elif by < 0:
        out[:by] = a[-by:]
    return out


def _find(text: str, context: NameContext) -> list[tuple[int, int, float]]:
    """See the module docstring."""
    parts = _WORD.split(text)
    count = len(parts) // 2
    if count == 0:
        return []
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    starts = offsets[1::2][:count]
    ends = starts + lengths[1::2]
    gaps = pa.array(parts[0::2], pa.string())  # gaps[i] is before word i, gaps[i + 1] after
    before, after = gaps[:count], gaps[1:]
    lists = _lists()
    keys = [w.lower().partition("-")[0] for w in parts[1::2]]  # Smith-Jones -> smith
    flags = np.fromiter(map(_flags().get, keys, repeat(0)), dtype=np.int64, count=count)
    length = lengths[1::2]
    upper = np.fromiter(map(str.isupper, parts[1::2]), dtype=bool, count=count)
    abbrev = (flags & _ABBREV) > 0
    named = ((flags & _NAME) > 0) & ~abbrev & ~(upper & (length < 3))
    named &= ~_inside_phrases(text, starts, ends)
    first = (flags & _FIRST) > 0
    weak = named & (((flags & (_AMBIGUOUS | _EPONYM)) > 0) | (upper & (length <= 3)))
    strong = named & ~weak
    unknown = ~named & ((flags & _ENGLISH) == 0) & ~abbrev & (length >= 3)
    joined = _match(after, _JOIN)  # word i touches word i + 1
    comma = _match(after, r"^,")

    # Context rules run on the few words they can change, not on every capitalized word.
    def on(mask: np.ndarray, rule: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        out = np.zeros(count, dtype=bool)
        idx = np.flatnonzero(mask)
        if len(idx):
            out[idx] = rule(idx)
        return out

    key_arr = pa.array(keys, pa.string())
    next_keys = pa.concat_arrays([key_arr[1:], pa.array([""], pa.string())])
    prev_keys = pa.concat_arrays([pa.array([""], pa.string()), key_arr[:-1]])

    def eponym_rule(idx: np.ndarray) -> np.ndarray:
        # The word after: in the gap ("Murphy sign") or the next capitalized word ("Beck
        # Depression").
        take = pa.array(idx)
        gap = after.take(take)
        head = pc.utf8_lower(pc.struct_field(pc.extract_regex(gap, _HEAD), "w"))
        head = pc.if_else(_match(gap, "^(?:['\u2019]s)?[ -]$"), next_keys.take(take), head)
        return _in(pc.fill_null(head, ""), lists.heads)

    titles = _lower_array(context.titles)

    def title_rule(idx: np.ndarray) -> np.ndarray:
        take = pa.array(idx)
        return _in(prev_keys.take(take), titles) & _match(before.take(take), r"^\.? +$")

    cue_re = rf"(?:^|[^a-z])(?:{_alternation(context.cues)})[:,]? +$" if context.cues else "(?!)"
    after_re = (
        "^(?:" + "|".join(f"(?:{a})" for a in context.after) + ")" if context.after else "(?!)"
    )

    def cue_rule(idx: np.ndarray) -> np.ndarray:
        prev_words = pa.array([parts[2 * i - 1] if i > 0 else "" for i in idx], pa.string())
        lead = pc.binary_join_element_wise(prev_words, before.take(pa.array(idx)), "")
        nxt_words = pa.array([parts[2 * i + 3] if i + 1 < count else "" for i in idx])
        trail = pc.binary_join_element_wise(after.take(pa.array(idx)), nxt_words, "")
        return _match(lead, cue_re, ignore_case=True) | _match(trail, after_re)

    eponym_use = on(named, eponym_rule)
    titled = on(named, title_rule)
    cued = on(weak & ~eponym_use, cue_rule)

    strong_ok = strong & ~eponym_use
    weak_ok = weak & ~eponym_use
    nxt = _shift(named & ~eponym_use, -1)
    nxt_strong_first = _shift(strong_ok & first, -1)
    nxt_first = _shift(first, -1)
    accepted = strong_ok | (named & titled)
    accepted |= weak_ok & cued
    accepted |= weak_ok & joined & ~comma & first & nxt  # Will Smith, Mark Young
    accepted |= weak_ok & joined & comma & nxt_strong_first  # Brown, John
    for _ in range(3):  # weak words chained after accepted ones: Dr. Victor Smith
        accepted |= weak_ok & _shift(accepted & joined, 1)
        # "Ward, Maria MD": a weak "Last," or first name before an accepted word
        accepted |= weak_ok & joined & _shift(accepted, -1) & np.where(comma, nxt_first, first)
    accepted |= unknown & ((_shift(accepted & joined, 1)) | (joined & _shift(accepted, -1)))
    if not accepted.any():
        return []

    near = (joined & _shift(accepted, -1)) | _shift(accepted & joined, 1)
    conf = np.where(strong_ok, np.where(near, 0.9, 0.8), np.where(titled, 0.85, 0.75))
    run_start = accepted & ~_shift(accepted & joined, 1)
    run_end = accepted & ~(joined & _shift(accepted, -1))
    s_idx, e_idx = np.flatnonzero(run_start), np.flatnonzero(run_end)
    run_id = np.cumsum(run_start) - 1
    best = np.zeros(len(s_idx))
    np.maximum.at(best, run_id[accepted], conf[accepted])
    return list(zip(starts[s_idx].tolist(), ends[e_idx].tolist(), best.tolist(), strict=True))


# Letters glued to digits ("6b98baca46ab", a pseudonym or a hash) are not a word.
_LOWER_WORD = re.compile(r"(?<![A-Za-z0-9])[a-z][a-z'\u2019]+(?:-[a-z]+)*(?![A-Za-z0-9])")


def _find_lower(text: str, lo: int, hi: int, context: NameContext) -> list[tuple[int, int, float]]:
    """Names in a stretch typed all in lower case (few notes, so a plain loop): a frequent
    census name that is no English word ("kara", "stephen"); after a cue word ("thanks,",
    "my son") a name that is no common English word, or any name followed by such a name
    ("crystal mccarthy"); any name right after an accepted one ("tony black", "tony d.
    black"). Never an eponym before its head word ("murphy sign") or a word of a non-name
    phrase ("toyota camry")."""
    cues = frozenset(c.lower() for c in (*context.lower, *context.titles))
    stop = frozenset(context.lower_stop)
    firsts = _first_names_lower()
    heads = _heads()
    skip = _lower_phrase_spans(text, lo, hi)
    words = [
        m
        for m in _LOWER_WORD.finditer(text, lo, hi)
        if not any(s <= m.start() and m.end() <= e for s, e in skip)
    ]
    count = len(words)
    strong = _names_only()
    flags = _flags()
    out: list[tuple[int, int, float]] = []
    accepted_prev = False
    for i, m in enumerate(words):
        word = m.group()
        gap = text[words[i - 1].end() : m.start()] if i else ""
        adjacent = i > 0 and (gap in (" ", ", ") or _INITIAL_LOWER.fullmatch(gap) is not None)
        prev_word = words[i - 1].group() if i else ""
        prev2 = words[i - 2].group() if i > 1 else ""
        after_cue = (
            i > 0
            and gap.strip(" :,.\n\t-") == ""
            and (prev_word in cues or f"{prev2} {prev_word}" in cues)
        )
        nxt = words[i + 1].group() if i + 1 < count else ""
        nxt_gap = text[m.end() : words[i + 1].start()] if i + 1 < count else ""
        bits = flags.get(word, 0)
        named = bool(bits & _NAME) and not bits & _ABBREV
        eponym = nxt in heads and nxt_gap == " "
        # as is_name_token(word, strict=True), from the flags
        unambiguous = (named and not bits & (_AMBIGUOUS | _EPONYM)) or (
            not bits & (_NAME | _ENGLISH | _ABBREV) and len(word) > 1
        )
        accept = not eponym and (
            word in strong
            or (after_cue and unambiguous)
            or (after_cue and word in firsts and word not in stop)
            or (after_cue and named and nxt_gap == " " and nxt in strong)
            or (accepted_prev and adjacent and (named or unambiguous))
        )
        if accept:
            if accepted_prev and adjacent:
                out[-1] = (out[-1][0], m.end(), 0.7)
            else:
                out.append((m.start(), m.end(), 0.7))
        accepted_prev = accept
    return out


def _lower_phrase_spans(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """Spans of the lower-case ``not_names.txt`` phrases in ``text[lo:hi]``."""
    return [
        (lo + end - length + 1, lo + end + 1)
        for end, length in _lower_phrases().iter_long(text[lo:hi])
    ]


@cache
def _lower_phrases() -> ahocorasick.Automaton:
    auto = ahocorasick.Automaton()
    for phrase in read_list("not_names.txt"):
        auto.add_word(phrase.lower(), len(phrase))
    auto.make_automaton()
    return auto


@cache
def _first_names_lower() -> frozenset[str]:
    return frozenset(_lists().firsts.to_pylist())


@cache
def _heads() -> frozenset[str]:
    return frozenset(_lists().heads.to_pylist())


_INITIAL_LOWER = re.compile(r" [a-z]\. ")


@cache
def _names_only() -> frozenset[str]:
    """Frequent census names (all first names, the 10,000 commonest surnames) that are no
    English word at all and at least four letters long: safe to find in lower case."""
    _names, _eponyms, english, abbrevs = _sets()
    frequent = read_list("first_names.txt") + read_list("last_names.txt")[:10_000]
    return frozenset(
        n.lower()
        for n in frequent
        if n.lower() not in english and n.lower() not in abbrevs and len(n) > 3
    )


def _inside_phrases(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which words lie inside a ``not_names.txt`` phrase."""
    p_start, p_end = [], []
    for end_idx, length in _phrases().iter_long(text):
        p_start.append(end_idx - length + 1)
        p_end.append(end_idx + 1)
    if not p_start:
        return np.zeros(len(starts), dtype=bool)
    k = np.searchsorted(np.asarray(p_start), starts, side="right") - 1
    inside = k >= 0
    inside[inside] = np.asarray(p_end)[k[inside]] >= ends[inside]
    return inside


_NOT_PLACES = frozenset(
    re.findall(
        r"\w+",
        "the a an this that his her their our my your assisted skilled nursing senior group home "
        "january february march april may june july august september october november december "
        "monday tuesday wednesday thursday friday saturday sunday",
    )
)


def abbreviations() -> frozenset[str]:
    """Abbreviations the census lists hold as names but notes use otherwise (Dr, Rm, Na...)."""
    return _sets()[3]


def is_name_token(word: str, strict: bool = False) -> bool:
    """A census name, or a word that is not an English word (for names after a cue word).
    ``strict``: a census name that is also a common English word (will, rose) does not count."""
    names, eponyms, english, abbrevs = _sets()
    low = word.lower()
    if low in eponyms or low in abbrevs or len(word) < 2:
        return False
    if strict and low in names:
        return low not in _ambiguous()
    return low in names or low not in english


@cache
def _ambiguous() -> frozenset[str]:
    return frozenset(_lists().ambiguous.to_pylist())


def is_place_word(text: str) -> bool:
    """A capitalized place name, not a month, weekday or determiner-like first word."""
    first = text.split()[0].lower() if text.split() else ""
    return bool(first) and first not in _NOT_PLACES
