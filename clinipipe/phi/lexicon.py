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

import re
from collections.abc import Iterable, Sequence
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
    stop_after: tuple[str, ...] = ()


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
    stop = re.compile(rf"(?:{_alternation(context.stop_after)})\b") if context.stop_after else None
    return titles, cues, stop or re.compile(r"(?!)")


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch in "'\u2019"


def _find(text: str, context: NameContext) -> list[tuple[int, int, float]]:
    names, ambiguous, eponyms, heads, english = _lists()
    titles_re, cues_re, _stop = _context_res(context)
    n = len(text)
    # 1. Name words found by the automaton, whole words only.
    hits: list[tuple[int, int]] = []
    for end_idx, length in _automaton().iter_long(text):
        start, end = end_idx - length + 1, end_idx + 1
        if start > 0 and _is_word_char(text[start - 1]):
            continue
        if (
            end < n
            and (text[end].isalnum() or text[end] == "-")
            and not (text[end] in "'\u2019" and text[end + 1 : end + 2] in ("s", ""))
        ):
            continue
        hits.append((start, end))
    spans: list[tuple[int, int, float]] = []
    i = 0
    while i < len(hits):
        start, end = hits[i]
        # 2. Grow a run of adjacent capitalized words around the hit.
        run = [(start, end)]
        pos = end
        j = i + 1
        while True:
            nxt = _next_word(text, pos)
            if nxt is None:
                break
            ws, we = nxt
            run.append((ws, we))
            pos = we
            if j < len(hits) and hits[j][0] == ws:
                j += 1
        pre = _prev_word(text, start)
        while pre is not None:
            run.insert(0, pre)
            pre = _prev_word(text, pre[0])
        decided = _decide(text, run, names, ambiguous, eponyms, heads, english, titles_re, cues_re)
        spans.extend(decided)
        i = j
        # skip hits already inside this run
        last = run[-1][1]
        while i < len(hits) and hits[i][0] < last:
            i += 1
    return spans


_GAP = re.compile(r"(?: |, | [A-Z]\. |\. | [A-Z] )")


def _next_word(text: str, pos: int) -> tuple[int, int] | None:
    """The capitalized word right after ``pos`` (one space, ", " or a middle initial between)."""
    m = _GAP.match(text, pos)
    if m is None:
        return None
    w = _CAP.match(text, m.end())
    if w is None or (w.end() < len(text) and text[w.end()].isalnum()):
        return None
    if m.group() == ". " and not _looks_initial(text, pos):
        return None
    return w.start(), w.end()


def _looks_initial(text: str, pos: int) -> bool:
    return pos >= 2 and text[pos - 1].isupper() and not text[pos - 2].isalpha()


def _prev_word(text: str, start: int) -> tuple[int, int] | None:
    """The capitalized word right before ``start`` ("Last, First", "First Last")."""
    window = text[max(0, start - 40) : start]
    m = re.search(
        r"(?<![A-Za-z'\u2019-])([A-Z][A-Za-z'\u2019]*(?:-[A-Z][A-Za-z'\u2019]*)*)(?: |, )$", window
    )
    if m is None:
        return None
    offset = start - len(window)
    return offset + m.start(1), offset + m.end(1)


def _decide(
    text: str,
    run: Sequence[tuple[int, int]],
    names: frozenset[str],
    ambiguous: frozenset[str],
    eponyms: frozenset[str],
    heads: frozenset[str],
    english: frozenset[str],
    titles_re: re.Pattern[str],
    cues_re: re.Pattern[str],
) -> list[tuple[int, int, float]]:
    """Which words of a run of capitalized words are a name."""
    kinds: list[str] = []  # strong, weak, epo, unknown, word
    for k, (s, e) in enumerate(run):
        word = text[s:e]
        low = (
            word.lower().rstrip("s").rstrip("'\u2019")
            if word[-2:] in ("'s", "\u2019s")
            else word.lower()
        )
        if word.isupper() and len(word) < 3:
            kinds.append("word")
            continue
        after = re.match(r"(?:['\u2019]s)?[ -]([a-z]+)", text[e : e + 30])
        eponym_use = after is not None and after.group(1) in heads
        if low in eponyms or (eponym_use and k == len(run) - 1):
            kinds.append("epo")
        elif low in names:
            kinds.append("weak" if low in ambiguous else "strong")
        elif low in english or len(word) < 2:
            kinds.append("word")
        else:
            kinds.append("unknown")
    head = text[max(0, run[0][0] - 40) : run[0][0]]
    cut = head.rfind("\x00")
    if cut >= 0:
        head = head[cut + 1 :]
    titled = titles_re.search(head) is not None
    cued = titled or cues_re.search(head) is not None
    out: list[tuple[int, int, float]] = []
    # Split the run at plain English words; judge each piece.
    piece: list[int] = []
    for k in [*range(len(run)), -1]:
        if k >= 0 and kinds[k] != "word":
            piece.append(k)
            continue
        if piece:
            ks = [kinds[p] for p in piece]
            strong = ks.count("strong")
            named = strong + ks.count("weak")
            first_piece = piece[0] == 0
            ok = (
                strong > 0
                or named >= 2
                or (first_piece and cued and ks[0] in ("weak", "unknown", "strong"))
                or (first_piece and titled)
            )
            if ok:
                conf = 0.9 if (strong and (named >= 2 or cued)) else 0.75 if strong else 0.7
                keep = [p for p in piece if kinds[p] != "epo" or (titled and p == 0)]
                if keep:
                    out.append((run[keep[0]][0], run[keep[-1]][1], conf))
        piece = []
    return out


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
    if low in eponyms:
        return False
    return low in names or low not in english


def is_place_word(text: str) -> bool:
    """A capitalized place name, not a month, weekday or determiner-like first word."""
    first = text.split()[0].lower() if text.split() else ""
    return bool(first) and first not in _NOT_PLACES
