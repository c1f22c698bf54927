"""Name detection from word lists: census first and last names, found with an Aho-Corasick
automaton over a whole batch, then accepted or rejected by their neighbours.

Rules (the lists and context words are data, see ``data/README.md`` and ``data/detectors.yaml``):

* A capitalized word (Title Case, or upper case of 3+ letters) that is a census name is a
  *strong* name unless it is also a common English word (``name_words.txt``: Will, Rose, Hope,
  Dean, Brown...), a medical eponym (``eponyms.txt``: Parkinson, Foley...), or followed by an
  eponym head word ("Murphy sign", "Graves' disease"): those are *weak*.
* Adjacent capitalized words ("First Last", "Last, First", "First M. Last") form one run; a
  run is a name when it holds a strong word, or two name words, or follows a title (Dr., Mrs.)
  or a relation/label word (wife, son, "Patient:"). Unknown capitalized words that are not
  English words join an accepted run ("Dr. Okonkwo", "Jaylen Smith").
* Eponyms count only after a title ("Dr. Foley").

Guarantee: every returned span starts and ends on a word boundary and lies within one row.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import ahocorasick

_DATA = "clinipipe.phi.data"


def read_list(name: str) -> list[str]:
    """The non-comment, non-blank lines of a data file, stripped."""
    text = resources.files(_DATA).joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


_CAP = re.compile(r"[A-Z][A-Za-z'\u2019]*(?:-[A-Z][A-Za-z'\u2019]*)*")
_INITIAL = re.compile(r"[A-Z]\.?")


@dataclass(frozen=True)
class NameContext:
    """Context words of the name detector (from ``detectors.yaml``)."""

    titles: tuple[str, ...] = ()
    cues: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    """Regexes that, right after a word, make it a name ("Mark is a 63 y/o")."""


@dataclass(frozen=True)
class NameLexicon:
    """Census name lists, ambiguous words, eponyms and English words, plus the context cues."""

    context: NameContext = field(default_factory=NameContext)

    @property
    def names(self) -> frozenset[str]:
        return _lists()[0]

    def words(self) -> frozenset[str]:
        return _lists()[1]

    def find(self, text: str) -> list[tuple[int, int, float]]:
        """Name spans ``(start, end, confidence)`` in ``text`` (a joined batch or one note)."""
        return _find(text, self.context)


_Sets = tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str], frozenset[str]]


@cache
def _lists() -> _Sets:
    names = frozenset(n.lower() for n in read_list("first_names.txt") + read_list("last_names.txt"))
    ambiguous = frozenset(read_list("name_words.txt"))
    eponyms = frozenset(e.lower() for e in read_list("eponyms.txt"))
    heads = frozenset(read_list("eponym_heads.txt"))
    english = frozenset(read_list("english_words.txt"))
    return names, ambiguous, eponyms, heads, english


@cache
def _first_names() -> frozenset[str]:
    return frozenset(n.lower() for n in read_list("first_names.txt"))


@cache
def _automaton() -> ahocorasick.Automaton:
    """Every census name in Title Case and upper case (plus Mc/O' spellings)."""
    auto = ahocorasick.Automaton()
    for name in _lists()[0]:
        forms = {name.title(), name.upper()}
        if name.startswith("mc") and len(name) > 3:
            forms.add("Mc" + name[2:].title())
        if name.startswith("o") and len(name) > 3 and name[1] not in "aeiou":
            forms.add("O'" + name[1:].title())
        for form in forms:
            auto.add_word(form, len(form))
    auto.make_automaton()
    return auto


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


@cache
def _context_res(context: NameContext) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    titles = re.compile(rf"(?:^|[^A-Za-z])(?:{_alternation(context.titles)})\.?\s+$")
    cues = re.compile(rf"(?i:(?:^|[^a-z])(?:{_alternation(context.cues)})[:,]?\s+$)")
    after = "|".join(f"(?:{a})" for a in context.after) or "(?!)"
    return titles, cues, re.compile(after)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch in "'\u2019"


_STRONG, _WEAK, _EPONYM_USE = 2, 1, 0
_INITIAL_GAP = re.compile(r" [A-Z]\.? ")
_NEXT_CAP = re.compile(r"(?: |, )([A-Z][a-z'\u2019]+(?:-[A-Z][a-z'\u2019]+)?)(?![A-Za-z0-9])")
_PREV_CAP = re.compile(
    r"(?<![A-Za-z'\u2019-])([A-Z][a-z'\u2019]+(?:-[A-Z][a-z'\u2019]+)?)(?: |, )$"
)
_HEAD_WORD = re.compile(r"(?:['\u2019]s)?[ -]([A-Za-z]+)")


#: Abbreviations that the census lists hold as names but notes use otherwise.
ABBREVIATIONS = frozenset(
    [
        "dr",
        "mr",
        "mrs",
        "ms",
        "mx",
        "rm",
        "pt",
        "st",
        "mt",
        "ft",
        "jr",
        "sr",
        "md",
        "rn",
        "np",
        "pa",
        "do",
        "dds",
        "phd",
        "lpn",
        "cna",
        "pcp",
        "er",
        "or",
        "icu",
        "ed",
        "ct",
        "mri",
        "dea",
        "npi",
    ]
)


@cache
def _phrases() -> ahocorasick.Automaton:
    auto = ahocorasick.Automaton()
    for phrase in read_list("not_names.txt"):
        auto.add_word(phrase, len(phrase))
    auto.make_automaton()
    return auto


def _not_name_spans(text: str) -> tuple[list[int], list[int]]:
    """Start and end offsets of the ``not_names.txt`` phrases in ``text``."""
    starts, ends = [], []
    for end_idx, length in _phrases().iter_long(text):
        starts.append(end_idx - length + 1)
        ends.append(end_idx + 1)
    return starts, ends


def _find(text: str, context: NameContext) -> list[tuple[int, int, float]]:
    """See the module docstring. One pass of the automaton; Python work per name hit only."""
    _names, ambiguous, eponyms, heads, english = _lists()
    res = _context_res(context)
    n = len(text)
    skip_starts, skip_ends = _not_name_spans(text)
    firsts = _first_names()
    starts: list[int] = []
    ends: list[int] = []
    kinds: list[int] = []
    for end_idx, length in _automaton().iter_long(text):
        s, e = end_idx - length + 1, end_idx + 1
        if s > 0 and _is_word_char(text[s - 1]):
            continue
        if e < n:
            nxt = text[e]
            if (nxt.isalnum() or nxt == "-") or (
                nxt in "'\u2019" and text[e + 1 : e + 2] not in ("s", " ", "")
            ):
                continue
        word = text[s:e]
        low = word.lower()
        if low in ABBREVIATIONS or (length < 3 and word.isupper()):
            continue
        if skip_starts:
            k = bisect.bisect_right(skip_starts, s) - 1
            if k >= 0 and skip_ends[k] >= e:
                continue
        weak = low in ambiguous or low in eponyms or (length <= 3 and word.isupper())
        kind = _WEAK if weak else _STRONG
        if e < n and text[e] in " -'\u2019":
            m = _HEAD_WORD.match(text, e)
            if m is not None and m.group(1).lower() in heads:
                kind = _EPONYM_USE
        starts.append(s)
        ends.append(e)
        kinds.append(kind)
    count = len(starts)
    # Which hits touch the next one: "First Last", "Last, First", "First M. Last".
    joined = [False] * (count + 1)
    for i in range(count - 1):
        gap = text[ends[i] : starts[i + 1]]
        joined[i] = gap in (" ", ", ") or _INITIAL_GAP.fullmatch(gap) is not None
    conf: list[float] = [0.0] * count
    for i in range(count):
        conf[i] = _judge_hit(text, i, starts, ends, kinds, joined, conf, firsts, res)
    # Backwards: a weak "Last," or first name right before an accepted name ("Ward, Maria MD").
    for i in range(count - 2, -1, -1):
        if not conf[i] and kinds[i] == _WEAK and joined[i] and conf[i + 1]:
            comma = text[ends[i]] == ","
            nxt = text[starts[i + 1] : ends[i + 1]].lower()
            if (nxt in firsts) if comma else text[starts[i] : ends[i]].lower() in firsts:
                conf[i] = 0.75
    out: list[tuple[int, int, float]] = []
    for i in range(count):
        if not conf[i]:
            continue
        s, e = starts[i], ends[i]
        prev_named = i > 0 and joined[i - 1] and conf[i - 1] > 0
        next_named = joined[i] and conf[i + 1] > 0
        if not next_named:  # an unknown, non-English capitalized word after: "Dana Okafor"
            m = _NEXT_CAP.match(text, e)
            if m is not None and m.group(1).lower() not in english:
                e = m.end(1)
        if not prev_named:
            m = _PREV_CAP.search(text, max(0, s - 30), s)
            if m is not None and m.group(1).lower() not in english:
                s = m.start(1)
        if prev_named and out:  # one span for "First M. Last"
            out[-1] = (out[-1][0], e, max(out[-1][2], conf[i]))
        else:
            out.append((s, e, conf[i]))
    return out


def _judge_hit(
    text: str,
    i: int,
    starts: list[int],
    ends: list[int],
    kinds: list[int],
    joined: list[bool],
    conf: list[float],
    firsts: frozenset[str],
    res: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]],
) -> float:
    """Confidence that name hit ``i`` is a name (0: it is not), given the hits before it."""
    s, e, kind = starts[i], ends[i], kinds[i]
    prev_named = i > 0 and joined[i - 1] and kinds[i - 1] != _EPONYM_USE
    next_named = joined[i] and kinds[i + 1] != _EPONYM_USE
    if kind == _STRONG:
        return 0.9 if prev_named or next_named else 0.8
    if kind == _WEAK:
        # A weak word counts after an accepted name ("John Brown"), or before a name as a first
        # name or as "Last," before a first name ("Will Smith", "Brown, John"); two weak
        # words make a name as "First Last" ("Mark Young"), not as "Oak Street" or "Call Jane".
        if prev_named and conf[i - 1] > 0:
            return 0.8
        if next_named:
            comma = text[e] == ","
            nxt = text[starts[i + 1] : ends[i + 1]].lower()
            if (not comma and text[s:e].lower() in firsts) or (
                comma and kinds[i + 1] == _STRONG and nxt in firsts
            ):
                return 0.8
    titles_re, cues_re, after_re = res
    head = text[max(0, s - 40) : s]
    cut = head.rfind("\x00")
    if cut >= 0:
        head = head[cut + 1 :]
    if titles_re.search(head) is not None:
        return 0.85
    if kind == _WEAK and (cues_re.search(head) is not None or after_re.match(text, e) is not None):
        return 0.75
    return 0.0


_NOT_PLACES = frozenset(
    [
        "the",
        "a",
        "an",
        "this",
        "that",
        "his",
        "her",
        "their",
        "our",
        "my",
        "your",
        "assisted",
        "skilled",
        "nursing",
        "senior",
        "group",
        "home",
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ]
)


def is_name_token(word: str) -> bool:
    """A census name, or a word that is not an English word (for names after a cue word)."""
    names, _ambiguous, eponyms, _heads, english = _lists()
    low = word.lower()
    if low in eponyms or low in ABBREVIATIONS or len(word) < 2:
        return False
    return low in names or low not in english


def is_place_word(text: str) -> bool:
    """A capitalized place name, not a month, weekday or determiner-like first word."""
    first = text.split()[0].lower() if text.split() else ""
    return bool(first) and first not in _NOT_PLACES
