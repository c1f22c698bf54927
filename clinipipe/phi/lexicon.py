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
* Broader lists (Census 2010 surnames, Census 2020 first names, every Latin-script Faker
  locale read at run time) add names that are no English word and no clinical term; they
  count in Title Case only. Words are Unicode (Florența, Nguyễn, D'Arcy).
* Rules that need no list: a first name (or a name word no list holds) makes the capitalized
  word after it a surname ("Mary Walker"); a word after a cue ("Report for", "this is",
  "met with"...) or before an after-cue (" has had", ", husband") is a name even if no list
  holds it; a name word before an eponym ("Lou Gehrig disease"), before a dose ("Ella 30
  mg") or listed next to a drug ("Valium, Zofran, Ella") is not.

:func:`name_neighbours` extends names found by *any* detector (record linkage included) over
an adjacent surname, name word or initial, so that no part of a name is left beside a tag.

Guarantee: every returned span starts and ends on a word boundary and lies within one row.

The lists are built once per process (about a second of CPU: the Faker locales, the
inflection check of 225,000 names) and kept in a cache file (:func:`lexicon_cache_file`,
Arrow IPC, public word lists only, never text that was scanned) that later processes read in a
few milliseconds. Its name is a digest of everything the build reads (this module's source, the
data files, the Faker, Python and pyarrow versions), so a changed input is a new file and a
stale one is never read; a cache that cannot be read or written is rebuilt or skipped, never
an error.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import repeat
from pathlib import Path

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DATA = "clinipipe.phi.data"


def read_list(name: str) -> list[str]:
    """The non-comment, non-blank lines of a data file, stripped (read once per process)."""
    return list(_read_lines(name))


@cache
def _read_lines(name: str) -> tuple[str, ...]:
    text = resources.files(_DATA).joinpath(name).read_text(encoding="utf-8")
    return tuple(s for line in text.splitlines() if (s := line.strip()) and line[0] != "#")


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
        self, text: str, lower_case: Sequence[tuple[int, int]] | np.ndarray = ()
    ) -> list[tuple[int, int, float]]:
        """Name spans ``(start, end, confidence)`` in ``text`` (a joined batch or one note);
        ``lower_case``: ranges of ``text`` typed all in lower case, where lower-case words
        are judged too (:func:`_find_lower`)."""
        found = _find(text, self.context)
        for lo, hi, breaks in _stretches(text, lower_case):
            found.extend(_find_lower(text, lo, hi, self.context, breaks))
        return found


def _stretches(
    text: str, ranges: Sequence[tuple[int, int]] | np.ndarray
) -> list[tuple[int, int, list[int]]]:
    """``ranges`` (sorted, disjoint) with the ones only a row separator apart joined into one
    stretch ``(lo, hi, breaks)``, ``breaks`` the separators' offsets: a batch of short
    lower-case values (a specimen column: "venous blood") is one call, not one per row."""
    bounds = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    if not len(bounds):
        return []
    lo, hi = bounds[:, 0], bounds[:, 1]
    glued = np.zeros(len(bounds), dtype=bool)
    glued[1:] = lo[1:] == hi[:-1] + 1
    for k in np.flatnonzero(glued).tolist():  # only a row separator may join two rows
        glued[k] = text[int(hi[k - 1])] == "\x00"
    first = np.flatnonzero(~glued)
    last = np.append(first[1:], len(bounds)) - 1
    his = hi.tolist()
    return [
        (int(lo[f]), his[e], his[f:e]) for f, e in zip(first.tolist(), last.tolist(), strict=True)
    ]


@dataclass(frozen=True)
class _Lists:
    names: pa.Array
    extra: pa.Array
    firsts: pa.Array
    ambiguous: pa.Array
    eponyms: pa.Array
    heads: pa.Array
    stop: pa.Array
    english: pa.Array
    abbreviations: pa.Array


def _lower_array(words: Iterable[str]) -> pa.Array:
    """The distinct lower-case forms of ``words``, sorted (Arrow sorts UTF-8 bytes, which is
    code point order, as Python sorts strings)."""
    arr = pa.array(list({w.lower() for w in words}), pa.string())
    return arr.take(pc.array_sort_indices(arr))


_LATIN_NAME = re.compile(r"^[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017f'\u2019-]{2,}$")


@cache
def faker_names() -> tuple[frozenset[str], frozenset[str]]:
    """``(first names, last names)``, lower case, of every Faker locale written in Latin
    letters, read from the installed Faker package (MIT licence) at run time; accented names
    also in their unaccented spelling. Empty when Faker is not installed."""
    try:
        import importlib
        import pkgutil

        import faker.providers.person as person
    except ImportError:  # pragma: no cover - Faker is a declared dependency
        return frozenset(), frozenset()
    firsts: set[str] = set()
    lasts: set[str] = set()
    for mod in pkgutil.iter_modules(person.__path__):
        try:
            provider = importlib.import_module(f"{person.__name__}.{mod.name}").Provider
        except (ImportError, AttributeError):  # pragma: no cover - a broken locale
            continue
        for attr, out in (
            ("first_names", firsts),
            ("first_names_male", firsts),
            ("first_names_female", firsts),
            ("first_names_nonbinary", firsts),
            ("last_names", lasts),
            ("last_names_male", lasts),
            ("last_names_female", lasts),
        ):
            values = getattr(provider, attr, ())
            if isinstance(values, dict):
                values = values.keys()
            elif not isinstance(values, (list, tuple, set, frozenset)):
                continue
            for v in values:
                for part in str(v).split():
                    if _LATIN_NAME.match(part):
                        low = part.lower()
                        out.add(low)
                        if not low.isascii():  # an ASCII word folds to itself
                            out.add(_fold(low))
    return frozenset(firsts), frozenset(lasts)


def _fold(word: str) -> str:
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _english_forms(words: Sequence[str], english: pa.Array) -> np.ndarray:
    """Which of ``words`` (lower case) are an English word of ``english`` or a regular
    inflection of one (routed, wheezes): one Arrow pass per inflection over the whole list."""
    arr = pa.array(words, pa.string())
    out = np.array(_in(arr, english), dtype=bool)
    length = pc.utf8_length(arr)
    for suffix, add in _INFLECTIONS:
        stem = len(suffix)
        maybe = pc.and_(pc.ends_with(arr, suffix), pc.greater_equal(length, stem + 3))
        idx = np.flatnonzero(maybe.to_numpy(zero_copy_only=False))
        if not len(idx):
            continue
        stems = pc.utf8_slice_codeunits(arr.take(pa.array(idx)), 0, -stem)
        if add:
            stems = pc.binary_join_element_wise(stems, add, "")
        out[idx] |= _in(stems, english)
    return out


_INFLECTIONS = (("s", ""), ("es", ""), ("ed", ""), ("ed", "e"), ("d", ""), ("ing", ""),
                ("ing", "e"), ("ly", ""), ("er", ""), ("ers", ""), ("ness", ""))  # fmt: skip


@cache
def _lists() -> _Lists:
    cached = _cached()
    if cached is not None:
        return cached[0]
    lists = _build_lists()
    _store(lists, _build_flags(lists))
    return lists


def _build_lists() -> _Lists:
    firsts = read_list("first_names.txt")
    census = {w.lower() for w in firsts + read_list("last_names.txt")}
    english_words = read_list("english_words.txt")
    english = {w.lower() for w in english_words}
    never = {w.lower() for w in read_list("abbreviations.txt") + read_list("clinical_words.txt")}
    # Nationality and religion words are names only in context (Dr. Joan French, Christian
    # Sherman): listed as names, but ambiguous ones.
    demonyms = {w.lower() for w in read_list("demonyms.txt")}
    census |= demonyms
    f_first, f_last = faker_names()
    new_firsts = {w.lower() for w in read_list("first_names_2020.txt")} | f_first
    new = new_firsts | {w.lower() for w in read_list("surnames_2010.txt")} | f_last
    # Broader lists add only words that are no English word and no clinical term: a name that
    # is also a word stays what the 1990 lists and name_words.txt make of it.
    pool = [w for w in new if len(w) >= 3 and w not in never and w not in census]
    english_array = pa.array(list(english), pa.string())
    extra = [w for w, e in zip(pool, _english_forms(pool, english_array), strict=True) if not e]
    return _Lists(
        names=_lower_array(census),
        extra=_lower_array(extra),
        firsts=_lower_array(set(firsts) | (new_firsts - english - never)),
        ambiguous=_lower_array(read_list("name_words.txt") + read_list("demonyms.txt")),
        eponyms=_lower_array(read_list("eponyms.txt")),
        heads=_lower_array(read_list("eponym_heads.txt")),
        stop=_lower_array(read_list("eponym_heads.txt") + read_list("not_surnames.txt")),
        english=_lower_array(english_words),
        abbreviations=_lower_array(
            read_list("abbreviations.txt") + read_list("clinical_words.txt")
        ),
    )


_NAME, _FIRST, _AMBIGUOUS, _EPONYM, _ENGLISH, _ABBREV = 1, 2, 4, 8, 16, 32
_EXTRA, _CLINICAL = 64, 128  # broader name lists; clinical_words.txt


@cache
def _flags() -> dict[str, int]:
    """Every listed word (lower case) -> bit flags of the lists holding it."""
    lists = _lists()
    cached = _cached()
    words, bits = cached[1] if cached is not None else _build_flags(lists)
    return dict(zip(words.to_pylist(), bits.to_pylist(), strict=True))


def _build_flags(lists: _Lists) -> tuple[pa.Array, pa.Array]:
    """``(words, bits)`` of `_flags` (each list holds a word once, so the sum of its lists'
    bits is their union)."""
    parts = (
        (_NAME, lists.names),
        (_FIRST, lists.firsts),
        (_AMBIGUOUS, lists.ambiguous),
        (_EPONYM, lists.eponyms),
        (_ENGLISH, lists.english),
        (_ABBREV, lists.abbreviations),
        (_EXTRA, lists.extra),
        (_CLINICAL, _lower_array(read_list("clinical_words.txt"))),
    )
    table = pa.table(
        {
            "word": pa.concat_arrays([array for _, array in parts]),
            "bit": np.concatenate([np.full(len(array), bit, np.int64) for bit, array in parts]),
        }
    )
    summed = table.group_by("word", use_threads=False).aggregate([("bit", "sum")])
    return summed["word"].combine_chunks(), summed["bit_sum"].combine_chunks()


# --- the cache file ------------------------------------------------------------------------------

_LIST_FIELDS = tuple(_Lists.__dataclass_fields__)
_FLAGS = len(_LIST_FIELDS)  # the ``part`` of the flags' rows in the cache file


def lexicon_cache_file() -> Path:
    """Where the built lists are cached: ``$XDG_CACHE_HOME/clinipipe`` (default
    ``~/.cache/clinipipe``), in a file named by the digest of every input of the build."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    for name in sorted(n.name for n in resources.files(_DATA).iterdir()):
        if name.endswith(".txt"):
            digest.update(name.encode() + b"\0")
            digest.update(resources.files(_DATA).joinpath(name).read_bytes())
    try:
        from importlib.metadata import version

        faker_version = version("faker")
    except Exception:  # not installed: the lists are built without it
        faker_version = "none"
    digest.update(f"{faker_version} {sys.version} {pa.__version__}".encode())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clinipipe" / f"lexicon-{digest.hexdigest()[:32]}.arrow"


@cache
def _cached() -> tuple[_Lists, tuple[pa.Array, pa.Array]] | None:
    """The lists and flags from the cache file, or None (no file, or one that cannot be read)."""
    try:
        path = lexicon_cache_file()
        if not path.is_file():
            return None
        with pa.OSFile(str(path), "rb") as source:
            table = pa.ipc.open_file(source).read_all()
        part = table["part"].to_numpy()
        if len(part) and (np.diff(part) < 0).any():
            return None
        bounds = np.searchsorted(part, np.arange(_FLAGS + 2))
        words = table["word"].combine_chunks()

        def rows(k: int) -> slice:
            return slice(int(bounds[k]), int(bounds[k + 1]))

        lists = _Lists(**{f: words[rows(k)] for k, f in enumerate(_LIST_FIELDS)})
        flags = rows(_FLAGS)
        return lists, (words[flags], table["bits"].combine_chunks()[flags])
    except Exception:  # a bad cache is rebuilt, never an error
        return None


def _store(lists: _Lists, flags: tuple[pa.Array, pa.Array]) -> None:
    """Write the cache file (atomically: a temporary file renamed); silently skipped when the
    cache folder cannot be written."""
    arrays = [getattr(lists, f) for f in _LIST_FIELDS] + [flags[0]]
    part = np.concatenate([np.full(len(a), k, np.int8) for k, a in enumerate(arrays)])
    bits = np.zeros(len(part), np.int16)
    bits[len(part) - len(flags[1]) :] = np.asarray(flags[1], np.int16)
    table = pa.table({"part": part, "word": pa.concat_arrays(arrays), "bits": bits})
    try:
        path = lexicon_cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
        for old in path.parent.glob("lexicon-*.arrow"):  # built from other inputs
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        return


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
_UP = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0100-\u024f\u1e00-\u1eff"
_AL = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
_WORD = re.compile(
    rf"([{_UP}](?:[{_AL}]+|(?=['\u2019][{_UP}]))(?:['\u2019][{_UP}][{_AL}]+)?"
    rf"(?:-[{_UP}][{_AL}]+)*)"
)
_JOIN = r"^(?: |, | [A-ZÀ-ÖØ-Þ]\.? )$"
_HEAD = "^(?:['\u2019]s)?[ -](?P<w>[A-Za-z]+)"  # Arrow's RE2 wants the character itself


_DOSE = (
    r"^ \d+(?:\.\d+)? ?(?:mg|mcg|g|mL|ml|units?|%|tabs?|caps?)\b|^ (?:tablets?|capsules?|po|PO|bid|"
    r"BID|tid|TID|qid|QID|qhs|QHS|prn|PRN|injection|inhaler|patch|cream|ointment|ER|XR|XL|SR|CR|"
    r"perles|drops|solution|suspension|spray|monthly|weekly|nightly)\b"
)
_PRONOUNS = pa.array(
    ["he", "she", "they", "we", "it", "this", "that", "who", "there", "here", "you", "one"],
    pa.string(),
)


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
    # Broader lists (Census 2010/2020, Faker) count in Title Case only: "PHOS", "ECHO" stay.
    named = (((flags & _NAME) > 0) | (((flags & _EXTRA) > 0) & ~upper)) & ~abbrev
    named &= ~(upper & (length < 3))
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

    def dose_rule(idx: np.ndarray) -> np.ndarray:
        return _match(after.take(pa.array(idx)), _DOSE)

    eponym_use = on(named, eponym_rule)
    titled = on(named, title_rule)
    # A word followed by a dose or a drug form is a drug ("Ella 30 mg", "Allegra 180 mg"), and
    # so is a word listed next to a drug ("Valium, Zofran, Ella"; "Lyrica and Ella").
    eponym_use |= on(named & ~titled, dose_rule)
    clinical = (flags & _CLINICAL) > 0
    listed = _match(after, r"^(?:, | and |, and | or |/)$")
    eponym_use |= named & ~titled & ((listed & _shift(clinical, -1)) | _shift(listed & clinical, 1))
    # A name word right before an eponym is part of it: "Lou Gehrig disease".
    spaced = _match(after, r"^[ -]$")
    for _ in range(2):
        eponym_use |= named & ~titled & spaced & _shift(eponym_use, -1)
    pronoun = _in(key_arr, _PRONOUNS)
    cued = on((weak | unknown) & ~eponym_use & ~pronoun, cue_rule)

    strong_ok = strong & ~eponym_use
    weak_ok = weak & ~eponym_use
    nxt = _shift(named & ~eponym_use, -1)
    nxt_strong_first = _shift(strong_ok & first, -1)
    nxt_first = _shift(first, -1)
    accepted = strong_ok | (named & titled)
    accepted |= weak_ok & cued
    accepted |= unknown & cued  # "Reports Hồng has had", "Patient: Xquilab"
    accepted |= weak_ok & joined & ~comma & first & nxt  # Will Smith, Mark Young
    accepted |= weak_ok & joined & comma & nxt_strong_first  # Brown, John
    for _ in range(3):  # weak words chained after accepted ones: Dr. Victor Smith
        accepted |= weak_ok & _shift(accepted & joined, 1)
        # "Ward, Maria MD": a weak "Last," or first name before an accepted word
        accepted |= weak_ok & joined & _shift(accepted, -1) & np.where(comma, nxt_first, first)
    # A first name makes the capitalized word after it a surname, even a word ("Mary Walker",
    # "Ama Bridge"), unless that word is clinical or an institution ("John Hospital").
    stop = _in(key_arr, lists.stop)
    after_first = _shift(accepted & first & joined & ~comma, 1)
    accepted |= after_first & ~abbrev & ~eponym_use & ~stop & ~upper
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


@cache
def _lower_cues(context: NameContext) -> tuple[frozenset[str], frozenset[str]]:
    """The cue words and stop words of :func:`_find_lower`, as sets."""
    cues = frozenset(c.lower() for c in (*context.lower, *context.titles))
    return cues, frozenset(context.lower_stop)


def _find_lower(
    text: str, lo: int, hi: int, context: NameContext, breaks: Sequence[int] = ()
) -> list[tuple[int, int, float]]:
    """Names in a stretch typed all in lower case (a plain loop over its words): a frequent
    census name that is no English word ("kara", "stephen"); after a cue word ("thanks,",
    "my son") a name that is no common English word, or any name followed by such a name
    ("crystal mccarthy"); any name right after an accepted one ("tony black", "tony d.
    black"). Never an eponym before its head word ("murphy sign") or a word of a non-name
    phrase ("toyota camry"). ``breaks``: offsets of the row separators inside the stretch
    (several rows in one call); no rule reaches across one."""
    cues, stop = _lower_cues(context)
    firsts = _first_names_lower()
    heads = _heads()
    skip = _lower_phrase_spans(text, lo, hi)  # sorted, disjoint
    skip_starts = [s for s, _ in skip]
    words = []
    for m in _LOWER_WORD.finditer(text, lo, hi):
        k = bisect.bisect_right(skip_starts, m.start()) - 1
        if k < 0 or m.end() > skip[k][1]:
            words.append(m)
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
        if breaks and prev2:  # "my" ending one row is no cue for the next one's "son tony"
            b = bisect.bisect_left(breaks, words[i - 2].end())
            if b < len(breaks) and breaks[b] < words[i - 1].start():
                prev2 = ""
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


def not_name_word(word: str) -> bool:
    """``word`` is never part of a person's name: a title, credential, clinical term or a
    note/institution word (``abbreviations.txt``, ``clinical_words.txt``,
    ``not_surnames.txt``, eponym heads)."""
    low = word.lower().strip(".,")
    return low in _sets()[3] or low in _stop_words() or low in _titles_lower()


def english_word(word: str) -> bool:
    """``word`` (lower case) is a common English word (``english_words.txt``)."""
    return word in _sets()[2]


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
    """A capitalized place name, not a month, weekday or determiner-like first word, and
    no word of it a clinical term or abbreviation ("MS Contin, CO 4.2 L/min")."""
    words = text.split()
    first = words[0].lower() if words else ""
    abbrevs = _sets()[3]
    return (
        bool(first)
        and first not in _NOT_PLACES
        and not any(w.lower().strip(",.") in abbrevs for w in words)
    )


_NEXT_WORD = re.compile(rf"(?: [{_UP}]\.)? ([{_UP}][{_AL}'\u2019-]*[{_AL}])(?![{_AL}\d])")
_PREV_WORD = re.compile(rf"(?<![{_AL}\d])([{_UP}][{_AL}'\u2019-]*[{_AL}]) (?:[{_UP}]\. )?$")
_PREV_INITIAL = re.compile(rf"(?<![{_AL}\d.])[{_UP}]\. ?$")


def _neighbour_ok(word: str, after_first: bool) -> bool:
    """Whether a capitalized word next to a detected name is part of it (see
    :func:`name_neighbours`)."""
    if word.isupper() and len(word) <= 3:
        return False
    low = word.lower()
    key = low.partition("-")[0]
    bits = _flags().get(key, 0)
    if bits & _ABBREV or key in _stop_words() or key in _titles_lower():
        return False
    if bits & (_NAME | _EXTRA):
        return not (bits & _AMBIGUOUS) or after_first
    if bits & _ENGLISH:
        return after_first
    return len(key) >= 3 or (len(key) == 2 and not word.isupper())


@cache
def _stop_words() -> frozenset[str]:
    return frozenset(_lists().stop.to_pylist())


@cache
def _titles_lower() -> frozenset[str]:
    return frozenset(
        w.lower()
        for w in ("Dr", "Mr", "Mrs", "Ms", "Mx", "Miss", "Prof", "Rev", "Sister", "Nurse", "Dra")
    )


def name_neighbours(text: str, starts: Sequence[int], ends: Sequence[int]) -> list[tuple[int, int]]:
    """Words next to already detected name spans (by any detector, record linkage included)
    that complete the name: the capitalized word right after a name (a surname left beside a
    removed first name: any word but a clinical, institution or calendar word when the name
    ends in a first name; a listed or non-English name word otherwise), a name word right
    before it (never an English word, a title or a clinical term) and an initial right before
    it ("B. Lopez"). Each returned span ``(start, end)`` reaches one character into the name
    it completes, so that it merges with it; Python runs per detected name, not per word."""
    firsts = _first_names_lower()
    out: list[tuple[int, int]] = []
    pending = list(zip(starts, ends, strict=True))
    for _ in range(2):
        found: list[tuple[int, int]] = []
        for s, e in pending:
            m = _NEXT_WORD.match(text, e)
            if m is not None:
                last = text[s:e].rsplit(None, 1)[-1].strip(".,").lower()
                # after a first name, or a name word no list holds ("Dương Bishop"), the next
                # capitalized word is the surname even if it is an English word
                first_like = last in firsts or not (_flags().get(last, 0) & (_ENGLISH | _NAME))
                if _neighbour_ok(m.group(1), first_like) and not eponym_use_at(
                    text, m.start(1), m.end(1)
                ):
                    found.append((m.start(1), m.end(1)))
                    out.append((e - 1, m.end(1)))
            i = _PREV_INITIAL.search(text, max(0, s - 4), s)
            if i is not None:  # "B. Lopez", "C. Hale RN"
                out.append((i.start(), s + 1))
                continue
            p = _PREV_WORD.search(text, max(0, s - 48), s)
            if p is not None and _neighbour_ok(p.group(1), False):
                found.append((p.start(1), p.end(1)))
                out.append((p.start(1), s + 1))
        pending = found
        if not found:
            break
    return out


def eponym_use_at(text: str, s: int, e: int) -> bool:
    """The word ``text[s:e]`` is followed by an eponym head ("Gehrig disease")."""
    m = re.compile(r"(?:['\u2019]s)? ([A-Za-z]+)").match(text, e)
    return m is not None and m.group(1).lower() in _heads()
