"""Record linkage: find a row's own known identifiers (from structured columns) in its text.

For every row the known values and their simple variants ("Last, First", initials, phone and ID
spellings, date spellings, street-suffix abbreviations) are searched, ignoring case, in that
row's own slice of the joined batch text (``str.find``: no per-row copy, no regex), as whole
words.

Guarantee: a returned span is an exact occurrence, bounded by non-alphanumeric characters, of a
variant of one of that row's own known values.
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
    tokens = [t for t in re.split(r"[\s,]+", value.strip()) if t]
    out = _cases(value.strip())
    if not tokens:
        return out
    if "," in value and len(tokens) >= 2:  # "Last, First" given: add "First Last"
        tokens = tokens[1:] + tokens[:1]
    if len(tokens) == 1:
        return out
    # Each word is searched on its own (spans of adjacent words merge downstream); only the
    # forms with an initial need their own spelling.
    first, last = tokens[0], tokens[-1]
    out |= {f"{first[0]}. {last}", f"{first} {last[0]}."}
    for t in tokens:
        t = t.strip(".")
        if len(t) >= _MIN_LENGTH:
            out.add(t)
    if len(tokens) >= 2:
        out.add(".".join(t[0].upper() for t in tokens) + ".")
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
    for column in known.column_names:
        category = category_of_column(column, categories)
        out = found.setdefault(category, [])
        array = _string_array(known.column(column))
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
