"""Record linkage: find a row's own known identifiers (from structured columns) in its text.

For every row the known values and their simple variants ("Last, First", initials, phone and ID
spellings, date spellings, street-suffix abbreviations) are searched, ignoring case, in that
row's own slice of the joined batch text (``str.find``: no per-row copy, no regex), as whole
words.

Names are matched column-wise instead: every word of the batch and every word of each row's
known names become ``(row, word)`` integer keys, compared with ``numpy.isin`` (no per-row loop);
a found word takes an initial or "O'" beside it, and words of one name separated by ", ", "and",
"-" merge into one span.

Guarantee: a returned span is an exact occurrence, bounded by non-alphanumeric characters, of a
variant of one of that row's own known values (for names: of a word of one of them, with an
adjacent initial or joining words).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from functools import cache, lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinipipe.phi.categories import CATEGORIES, CATEGORY_OF_PHI_CLASS
from clinipipe.phi.text import JoinedText
from clinipipe.phi.validators import MONTH_NAMES, digits

CONFIDENCE = 0.99
_MIN_LENGTH = 2
_SUFFIXES = {
    "street": "st",
    "avenue": "ave",
    "road": "rd",
    "drive": "dr",
    "lane": "ln",
    "boulevard": "blvd",
    "court": "ct",
    "place": "pl",
    "terrace": "ter",
    "circle": "cir",
    "highway": "hwy",
    "parkway": "pkwy",
    "square": "sq",
    "trail": "trl",
}
_SUFFIX_RE = re.compile(
    r"\b(" + "|".join(list(_SUFFIXES) + list(_SUFFIXES.values())) + r")\b\.?", re.IGNORECASE
)
_ABBREV_TO_FULL = {v: k for k, v in _SUFFIXES.items()}
_UNIT = re.compile(r"[\s,]+(?:apt|apartment|unit|suite|ste|#)\.?\s*#?\s*\w+$", re.IGNORECASE)


def category_of_column(column: str, categories: Mapping[str, str]) -> str:
    """The category of a known column: its mapping (a category or a spec PHI class), else its
    name when that is a category or a PHI class, else ``OTHER_ID``."""
    for candidate in (categories.get(column), column):
        if candidate is None:
            continue
        if candidate.upper() in CATEGORIES:
            return candidate.upper()
        if candidate.lower() in CATEGORY_OF_PHI_CLASS:
            return CATEGORY_OF_PHI_CLASS[candidate.lower()]
    return "OTHER_ID"


def _cases(value: str) -> set[str]:
    """Matching ignores case, so one spelling is enough."""
    return {value}


def _name_variants(value: str) -> set[str]:
    """A multi-word name whole, as given and as "First Last" when given "Last, First" (its
    single words are matched column-wise: :func:`_find_name_words`)."""
    base = value.strip()
    out = _cases(base)
    tokens = [t for t in re.split(r"[\s,]+", base) if t]
    if "," in base and len(tokens) >= 2:
        out.add(" ".join(tokens[1:] + tokens[:1]))
    return out


def _phone_variants(value: str) -> set[str]:
    d = digits(value)
    if len(d) == 11 and d[0] == "1":
        d = d[1:]
    out = {value}
    if len(d) != 10:
        return out
    a, b, c = d[:3], d[3:6], d[6:]
    out |= {
        f"({a}) {b}-{c}",
        f"({a}){b}-{c}",
        f"{a}-{b}-{c}",
        f"{a}.{b}.{c}",
        f"{a} {b} {c}",
        f"{a}/{b}-{c}",
        d,
        f"1-{a}-{b}-{c}",
        f"+1 {a} {b} {c}",
        f"+1-{a}-{b}-{c}",
        f"+1 ({a}) {b}-{c}",
        f"1 ({a}) {b}-{c}",
    }
    return out


def _id_variants(value: str) -> set[str]:
    out = _cases(value)
    d = digits(value)
    if len(d) >= 6:
        out.add(d)
        if d.lstrip("0") and len(d.lstrip("0")) >= 6:
            out.add(d.lstrip("0"))
    return out


def _ssn_variants(value: str) -> set[str]:
    d = digits(value)
    out = {value}
    if len(d) == 9:
        out |= {d, f"{d[:3]}-{d[3:5]}-{d[5:]}", f"{d[:3]} {d[3:5]} {d[5:]}"}
    return out


def _parse_date(value: str) -> date | None:
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        pass
    for fmt in ("%m/%d/%Y", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None


def _date_variants(value: str) -> set[str]:
    d = _parse_date(value.strip())
    if d is None:
        return {value}
    m, dd, y = d.month, d.day, d.year
    month, mon = MONTH_NAMES[m - 1], MONTH_NAMES[m - 1][:3]
    y2 = f"{y % 100:02d}"
    # The generic date detectors find every spelling; linkage adds the common ones.
    forms = {
        value,
        d.isoformat(),
        f"{m}/{dd}/{y}",
        f"{m:02d}/{dd:02d}/{y}",
        f"{m}/{dd}/{y2}",
        f"{month} {dd}, {y}",
        f"{mon} {dd}, {y}",
        f"{dd}-{mon}-{y}",
    }
    return forms


def _address_variants(value: str) -> set[str]:
    base = value.strip()
    out = _cases(base)
    no_unit = _UNIT.sub("", base)
    for v in {base, no_unit}:
        out |= _cases(v)

        def swap(m: re.Match[str]) -> str:
            word = m.group(1).lower()
            alt = _SUFFIXES.get(word) or _ABBREV_TO_FULL.get(word, word)
            return alt.title() if alt in _ABBREV_TO_FULL or alt in _SUFFIXES else alt

        swapped = _SUFFIX_RE.sub(swap, v)
        out |= _cases(swapped)
        out |= _cases(_SUFFIX_RE.sub(lambda m: swap(m) + ".", v))
    return out


def anchor_pairs(values: pa.Array, category: str) -> tuple[np.ndarray, list[str]]:
    """``(rows, anchors)``: lower-case substrings such that every spelling of a row's value
    contains at least one of that row's anchors (name words, last four digits, the year, the
    house number...). Computed column-wise; null values have none."""
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    if category == "NAME":
        parts = pc.split_pattern_regex(lowered, r"[\s,.]+")
        rows = np.asarray(pc.list_parent_indices(parts).to_numpy(zero_copy_only=False))
        keys = pc.list_flatten(parts)
    elif category == "DATE":
        year = pc.struct_field(pc.extract_regex(lowered, r"(?P<y>(?:19|20)\d\d)"), "y")
        year = pc.coalesce(year, lowered)
        short = pc.utf8_slice_codeunits(year, -2)
        n = len(values)
        rows = np.concatenate([np.arange(n), np.arange(n)])
        keys = pa.concat_arrays([year, short])
    else:
        if category == "ADDRESS":
            first = pc.struct_field(pc.extract_regex(lowered, r"^(?P<a>\S+)"), "a")
            keys = pc.coalesce(first, lowered)
        else:
            d = pc.replace_substring_regex(lowered, r"\D", "")
            need = 4 if category in ("PHONE", "FAX", "SSN") else 6
            long_enough = pc.fill_null(pc.greater_equal(pc.utf8_length(d), need), False)
            keys = pc.if_else(long_enough, pc.utf8_slice_codeunits(d, -4), lowered)
        rows = np.arange(len(values))
    keep = np.asarray(
        pc.fill_null(pc.greater(pc.utf8_length(keys), 0), False).to_numpy(zero_copy_only=False)
    )
    return rows[keep], pc.filter(keys, pa.array(keep)).to_pylist()


@lru_cache(maxsize=4096)
def variants(value: str, category: str) -> frozenset[str]:
    """The spellings of a known ``value`` searched for (all at least two characters)."""
    value = value.strip()
    if not value:
        return set()
    make = {
        "NAME": _name_variants,
        "PHONE": _phone_variants,
        "FAX": _phone_variants,
        "SSN": _ssn_variants,
        "DATE": _date_variants,
        "ADDRESS": _address_variants,
        "EMAIL": lambda v: {v, v.lower()},
        "URL": lambda v: {v, v.lower()},
        "IP": lambda v: {v},
    }.get(category, _id_variants)
    return frozenset(v for v in make(value) if len(v.strip()) >= _MIN_LENGTH)


def _string_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A known column as one string array (dates as ISO dates, numbers as digits)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.date32())
    if not pa.types.is_string(column.type):
        column = column.cast(pa.string())
    return column


_WORD_BYTES = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
    _WORD_BYTES[_c] = True
_WORD_BYTES[0x80:] = True  # any non-ASCII character is a letter here (accented names)
_SPLIT_NON_WORD = r"[^A-Za-z0-9\x{80}-\x{10FFFF}]+"
_GLUE = frozenset({"and", "or", "of", "the"})
_INITIAL_BEFORE = re.compile(r"(?:^|(?<=[^A-Za-z]))[A-Z]\. ?$|[A-Za-z]['\u2019]$")
_INITIAL_AFTER = re.compile(r" [A-Z]\.(?![A-Za-z])")


def _tokens(low: str) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """``(start, end, word)`` of every run of letters and digits in ``low`` (character
    offsets; words as an Arrow array), found column-wise over the UTF-8 bytes."""
    data = low.encode("utf-8")
    raw = np.frombuffer(data, dtype=np.uint8)
    is_word = _WORD_BYTES[raw]
    edge = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    b_start = np.flatnonzero(edge == 1)
    b_end = np.flatnonzero(edge == -1)
    if len(b_start) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, pa.array([], pa.string())
    # Arrow strings over the text itself: segments word, gap, word... take every other one.
    bounds = np.empty(2 * len(b_start), dtype=np.int64)
    bounds[0::2], bounds[1::2] = b_start, b_end
    segments = pa.LargeStringArray.from_buffers(
        len(bounds) - 1, pa.py_buffer(bounds.tobytes()), pa.py_buffer(data)
    )
    words = segments.take(pa.array(np.arange(0, len(bounds) - 1, 2)))
    if len(data) == len(low):
        return b_start, b_end, words
    cont = np.flatnonzero((raw & 0xC0) == 0x80)
    return (
        b_start - np.searchsorted(cont, b_start),
        b_end - np.searchsorted(cont, b_end),
        words,
    )


def _find_name_words(
    joined: JoinedText, low: str, known: pa.Table, columns: list[str]
) -> list[tuple[int, int, float]]:
    """Every word (2+ letters) of a row's known names found as a whole word in that row's
    text, column-wise: the note's words and the known names' words are matched as
    ``(row, word)`` integer keys (no per-row loop). A word that is a common English word
    (Will, Rose, Brown) must be capitalized in the text; a word used as an eponym ("Foley
    catheter") is not taken; an initial or an "O'" right before a found word and an initial
    right after it go with it."""
    text = joined.text
    start, end, words = _tokens(low)
    if len(start) == 0:
        return []
    rows_k: list[np.ndarray] = []
    words_k: list[pa.Array] = []
    for column in columns:
        values = pc.utf8_lower(_string_array(known.column(column)))
        parts = pc.split_pattern_regex(values, _SPLIT_NON_WORD)
        rows_k.append(np.asarray(pc.list_parent_indices(parts).to_numpy(zero_copy_only=False)))
        words_k.append(pc.list_flatten(parts).cast(pa.large_string()))
    k_rows = np.concatenate(rows_k)
    k_words = pa.concat_arrays(words_k)
    keep = np.asarray(
        pc.fill_null(pc.greater_equal(pc.utf8_length(k_words), _MIN_LENGTH), False).to_numpy(
            zero_copy_only=False
        )
    )
    keep &= ~np.asarray(pc.is_in(k_words, value_set=_glue_array()).to_numpy(zero_copy_only=False))
    k_rows, k_words = k_rows[keep], k_words.filter(pa.array(keep))
    if len(k_rows) == 0:
        return []
    vocab = pc.unique(k_words)
    k_id = np.asarray(pc.index_in(k_words, value_set=vocab).to_numpy(zero_copy_only=False))
    t_id = pc.index_in(words, value_set=vocab)
    hit = np.flatnonzero(np.asarray(pc.is_valid(t_id).to_numpy(zero_copy_only=False)))
    if len(hit) == 0:
        return []
    t_rows = joined.rows_of(start[hit])
    width = len(vocab) + 1
    t_key = t_rows.astype(np.int64) * width + np.asarray(
        t_id.take(pa.array(hit)).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    k_key = k_rows.astype(np.int64) * width + k_id.astype(np.int64)
    ok = np.isin(t_key, k_key) & joined.valid[t_rows]
    hit = hit[ok]
    if len(hit) == 0:
        return []
    english = np.asarray(
        pc.is_in(words.take(pa.array(hit)), value_set=_english_array()).to_numpy(
            zero_copy_only=False
        )
    )
    cands: list[tuple[int, int, bool]] = []
    for s, e, eng in zip(start[hit].tolist(), end[hit].tolist(), english.tolist(), strict=True):
        if text[e : e + 1] in (" ", "-", "'", "\u2019") and eponym_use(text, s, e):
            continue
        cands.append((s, e, bool(eng) and not text[s].isupper()))
    # An English word in lower case ("rush", "will") counts only next to another of the
    # row's name words ("rush, smith and greer", "will barber").
    out: list[tuple[int, int, float]] = []
    for i, (s, e, weak) in enumerate(cands):
        if weak:
            prev = i > 0 and _adjacent(text, cands[i - 1][1], s)
            nxt = i + 1 < len(cands) and _adjacent(text, e, cands[i + 1][0])
            if not (prev or nxt):
                continue
        m = _INITIAL_BEFORE.search(text, max(0, s - 3), s)
        if m is not None:
            s = m.start()
        m = _INITIAL_AFTER.match(text, e)
        if m is not None:
            e = m.end()
        if out and s - out[-1][1] <= 6 and _GLUE_GAP.fullmatch(text, out[-1][1], s):
            s = out.pop()[0]  # "Rojas, Miller and Beck": the words between go too
        out.append((s, e, CONFIDENCE))
    return out


def _adjacent(text: str, e: int, s: int) -> bool:
    return 0 < s - e <= 6 and _GLUE_GAP.fullmatch(text, e, s) is not None


_GLUE_GAP = re.compile(r"[ ,&-]+(?:and |of |the |de |la |del |van |von |da |di |le )?")


@cache
def _glue_array() -> pa.Array:
    return pa.array(sorted(_GLUE), pa.large_string())


@cache
def _english_array() -> pa.Array:
    return pa.array(sorted(_english_words()), pa.large_string())


def find_known(
    joined: JoinedText, known: pa.Table, categories: Mapping[str, str]
) -> dict[str, list[tuple[int, int, float]]]:
    """Spans (in ``joined.text`` offsets) of each row's known values, by category.

    Matching is case-insensitive, except that a one-word name that is also an English word
    (Will, Rose, Brown) must be capitalized in the text.
    """
    if known.num_rows != joined.n:
        raise ValueError(
            f"known has {known.num_rows} rows but there are {joined.n} texts; they must align"
        )
    text = joined.text
    low = text.lower()
    if len(low) != len(text):  # a character whose lower case is longer: match case as given
        low = text
    n = len(text)
    starts = joined.starts.tolist()
    found: dict[str, list[tuple[int, int, float]]] = {}
    valid = joined.valid
    name_columns = [c for c in known.column_names if category_of_column(c, categories) == "NAME"]
    if name_columns:
        found["NAME"] = _find_name_words(joined, low, known, name_columns)
    for column in known.column_names:
        category = category_of_column(column, categories)
        out = found.setdefault(category, [])
        array = _string_array(known.column(column))
        if category == "NAME":
            continue  # word by word, column-wise, above
        # Cheap test first, one str.find per row: a note holding no anchor of a value cannot
        # hold any spelling of it (most known values are absent from most notes).
        rows, keys = anchor_pairs(array, category)
        present = sorted(
            {
                r
                for r, a in zip(rows.tolist(), keys, strict=True)
                if valid[r] and low.find(a, starts[r], starts[r + 1] - 1) >= 0
            }
        )
        if not present:
            continue
        values = array.take(pa.array(present, pa.int64())).to_pylist()
        shape = _NUMBER_SHAPES.get(category)
        for row, value in zip(present, values, strict=True):
            lo, hi = starts[row], starts[row + 1] - 1
            if shape is not None:
                out.extend(_find_number(text, low, lo, hi, digits(value), shape))
                continue
            for key, needs_capital in _keys(value, category, low is text):
                k = low.find(key, lo, hi)
                while k >= 0:
                    e = k + len(key)
                    if (
                        _whole_word(text, k, e, n)
                        and (not needs_capital or text[k].isupper())
                        and not (category == "NAME" and eponym_use(text, k, e))
                    ):
                        out.append((k, e, CONFIDENCE))
                    k = low.find(key, k + 1, hi)
    return {c: v for c, v in found.items() if v}


# Any spelling of a phone number or SSN ends with its last four digits: find those, then read
# the number written before them and compare digits.
_NUMBER_SHAPES: dict[str, re.Pattern[str]] = {
    "PHONE": re.compile(r"(?:\+?1[\s.-]*)?\(?\d{3}\)?[\s./-]*\d{3}[\s.-]*\d{4}$"),
    "FAX": re.compile(r"(?:\+?1[\s.-]*)?\(?\d{3}\)?[\s./-]*\d{3}[\s.-]*\d{4}$"),
    "SSN": re.compile(r"\d{3}[\s-]?\d{2}[\s-]?\d{4}$"),
}


def _find_number(
    text: str, low: str, lo: int, hi: int, number: str, shape: re.Pattern[str]
) -> list[tuple[int, int, float]]:
    """Spans in ``text[lo:hi]`` of ``number`` (digits) written in any spacing/punctuation."""
    if len(number) == 11 and number[0] == "1":
        number = number[1:]
    if len(number) < 4:
        return []
    out = []
    tail = number[-4:]
    k = low.find(tail, lo, hi)
    while k >= 0:
        e = k + 4
        start = max(lo, k - 24)
        m = shape.search(text, start, e)
        if (
            m is not None
            and digits(m.group()).endswith(number)
            and _whole_word(text, m.start(), e, len(text))
        ):
            out.append((m.start(), e, CONFIDENCE))
        k = low.find(tail, k + 1, hi)
    return out


_HEAD_AFTER = re.compile(r"(?:['\u2019]s)? ([A-Za-z]+)")


def eponym_use(text: str, s: int, e: int) -> bool:
    """A name used as an eponym: "Foley catheter", "Murphy sign", "Wolff-Parkinson-White"."""
    if (s > 0 and text[s - 1] == "-") or text[e : e + 1] == "-":
        return True
    m = _HEAD_AFTER.match(text, e)
    return m is not None and m.group(1).lower() in _eponym_heads()


@cache
def _eponym_heads() -> frozenset[str]:
    from clinipipe.phi.lexicon import read_list

    return frozenset(read_list("eponym_heads.txt"))


def clear_caches() -> None:
    """Forget the spellings computed for known values (benchmarks measure cold batches)."""
    variants.cache_clear()
    _keys.cache_clear()


@lru_cache(maxsize=1 << 14)
def _keys(value: str, category: str, case_sensitive: bool) -> tuple[tuple[str, bool], ...]:
    """The spellings of ``value`` as searched: lower case (unless the text's lower case has
    another length), each with whether it must start with a capital in the text (a one-word
    name that is also an English word: Will, Rose, Brown)."""
    english = _english_words()
    out = []
    for form in variants(value, category):
        key = form if case_sensitive else form.lower()
        if len(key) == len(form):
            out.append((key, key in english))
    return tuple(out)


def _whole_word(text: str, s: int, e: int, n: int) -> bool:
    """``text[s:e]`` does not continue a word or number on either side."""
    if s > 0 and text[s - 1].isalnum() and text[s].isalnum():
        return False
    return not (e < n and text[e].isalnum() and text[e - 1].isalnum())


@cache
def _english_words() -> frozenset[str]:
    from clinipipe.phi.lexicon import read_list

    return frozenset(read_list("english_words.txt"))
