"""Free-text redaction for research datasets, on top of the detection library.

`redact_notes` is what `clinipipe redact` runs on each Arrow batch of a notes column:

* every span `DetectorSet.find` reports (record linkage included: each row's own patient's
  identifiers are passed as `known`) whose category the policy does not keep becomes
  ``[CATEGORY]`` or, with `surrogates`, a consistent keyed surrogate (`clinipipe.phi.fakes`);
* under the `shifted` policy (`shift_days` given) a DATE span becomes the same date moved by
  its row's offset, written in the spelling it had (``03/04/2021``, ``2021-03-04``,
  ``4-Mar-21``, ``March 4th, 2021``, ``Mar 4``...). A date span that cannot be read as a full
  day (a bare year, "the 4th"), or a row without an offset, becomes ``[DATE]``: a true date is
  never left next to shifted ones.

Guarantees: the output has the input's length and nulls; no character a detector flagged in a
non-kept category survives; the work is per batch (one joined string, numpy offsets), with
Python only per detected span.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from clinipipe.phi import DetectorSet
from clinipipe.phi.fakes import surrogate
from clinipipe.phi.text import assemble, join_texts
from clinipipe.phi.validators import split_time

__all__ = ["redact_notes", "shift_date_text"]

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")  # fmt: skip
_TOKEN = re.compile(r"[A-Za-z]+\.?|\d+|[^A-Za-z\d]+")
_ORDINAL = ("st", "nd", "rd", "th")
_NO_YEAR = 2000  # a leap year, so that "Feb 29" without a year can be read and shifted


def _month_of(word: str) -> int | None:
    w = word.lower().rstrip(".")
    if len(w) < 3:
        return None
    for i, name in enumerate(_MONTHS):
        if name.startswith(w) or (w == "sept" and i == 8):
            return i + 1
    return None


def _month_word(month: int, like: str) -> str:
    """Month `month` spelled like `like` (full or abbreviated, case, trailing dot)."""
    dot = "." if like.endswith(".") else ""
    bare = like.rstrip(".")
    name = _MONTHS[month - 1]
    if len(bare) < len(_MONTHS[(_month_of(bare) or 1) - 1]):
        name = name[: max(3, len(bare))] if bare.lower() != "sept" else name[:3]
    if bare.isupper():
        name = name.upper()
    elif bare[:1].isupper():
        name = name.capitalize()
    return name + dot


def _suffix(day: int, like: str) -> str:
    s = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return s.upper() if like.isupper() else s


def _number(value: int, like: str) -> str:
    return str(value).zfill(len(like)) if like.startswith("0") else str(value)


def shift_date_text(text: str, days: int) -> str | None:
    """`text` (one detected date, possibly with a time of day: "2021-03-04T10:22", "03/04/2021
    10:22") moved by `days`, in its own spelling, the time kept; None when it is not a full
    calendar day this function can read (the caller then writes ``[DATE]``)."""
    date_part, time_part = split_time(text)
    if time_part:
        moved = shift_date_text(date_part, days)
        return None if moved is None else moved + time_part
    tokens = _TOKEN.findall(text)
    nums = [i for i, t in enumerate(tokens) if t.isdigit()]
    words = [i for i, t in enumerate(tokens) if t[:1].isalpha()]
    month_ix = next((i for i in words if _month_of(tokens[i]) is not None), None)
    day_ix = year_ix = num_month_ix = None
    suffix_ix = None
    if month_ix is not None:
        for i in words:
            if i != month_ix and tokens[i].lower() in _ORDINAL:
                suffix_ix = i
            elif i != month_ix and tokens[i].lower() != "of":
                return None
        small = [i for i in nums if len(tokens[i]) <= 2]
        big = [i for i in nums if len(tokens[i]) == 4]
        if len(nums) == 2 and not big:  # 4-Mar-21
            day_ix, year_ix = nums
        elif len(small) == 1 and len(big) <= 1 and len(nums) == len(small) + len(big):
            day_ix, year_ix = small[0], (big[0] if big else None)
        else:
            return None
    else:
        if words or len(nums) not in (2, 3):
            return None
        if len(tokens[nums[0]]) == 4:  # ISO order
            if len(nums) != 3:
                return None
            year_ix, num_month_ix, day_ix = nums
        else:  # US order: month/day[/year]
            num_month_ix, day_ix = nums[0], nums[1]
            year_ix = nums[2] if len(nums) == 3 else None
    try:
        month = (
            _month_of(tokens[month_ix]) if month_ix is not None else int(tokens[num_month_ix])  # type: ignore[index]
        )
        day = int(tokens[day_ix])  # type: ignore[index]
        if year_ix is None:
            year = _NO_YEAR
        else:
            year = int(tokens[year_ix])
            if len(tokens[year_ix]) == 2:
                year += 2000 if year <= 30 else 1900
            elif len(tokens[year_ix]) != 4:
                return None
        assert month is not None
        moved = dt.date(year, month, day) + dt.timedelta(days=days)
    except (ValueError, OverflowError, AssertionError):
        return None
    out = list(tokens)
    parts = [i for i in (day_ix, num_month_ix) if i is not None]
    iso = year_ix is not None and year_ix < (day_ix or 0) and month_ix is None
    padded = any(len(tokens[i]) == 2 and tokens[i].startswith("0") for i in parts)
    pad = "00" if iso or padded else ""
    out[day_ix] = _number(moved.day, pad or tokens[day_ix])  # type: ignore[index]
    if suffix_ix is not None:
        out[suffix_ix] = _suffix(moved.day, tokens[suffix_ix])
    if month_ix is not None:
        out[month_ix] = _month_word(moved.month, tokens[month_ix])
    else:
        out[num_month_ix] = _number(moved.month, pad or tokens[num_month_ix])  # type: ignore[index]
    if year_ix is not None:
        width = len(tokens[year_ix])
        out[year_ix] = str(moved.year)[-2:] if width == 2 else str(moved.year)
    return "".join(out)


def redact_notes(
    detectors: DetectorSet,
    texts: pa.Array | pa.ChunkedArray,
    known: pa.Table | None = None,
    known_categories: Mapping[str, str] | None = None,
    *,
    surrogates: bool = False,
    key: bytes | None = None,
    keep: frozenset[str] = frozenset(),
    shift_days: pa.Array | pa.ChunkedArray | None = None,
) -> pa.Array:
    """`texts` de-identified (see the module docstring). Without `shift_days` this is
    `DetectorSet.redact`; with it, DATE spans are shifted per row whatever `keep` says."""
    if shift_days is None:
        return detectors.redact(
            texts, known, known_categories, surrogates=surrogates, key=key, keep=keep
        )
    if surrogates and not key:
        raise ValueError("surrogates need a secret key (HMAC-SHA256)")
    found = detectors.find(texts, known, known_categories)
    joined = join_texts(texts)
    rows = found.column("row").to_numpy()
    offset = joined.starts[rows] if len(rows) else np.zeros(0, dtype=np.int64)
    start = found.column("start").to_numpy() + offset
    end = found.column("end").to_numpy() + offset
    categories = found.column("category").to_pylist()
    shifts = shift_days.to_pylist()
    text = joined.text
    keep_other = keep - {"DATE"}
    chosen_start, chosen_end, replacements = [], [], []
    for row, s, e, category in zip(rows.tolist(), start.tolist(), end.tolist(), categories,
                                   strict=True):  # fmt: skip
        if category in keep_other:
            continue
        value = text[s:e]
        if category == "DATE":
            days = shifts[row]
            moved = None if days is None else shift_date_text(value, int(days))
            replacement = moved if moved is not None else "[DATE]"
        elif surrogates:
            assert key is not None
            replacement = surrogate(category, value, key)
        else:
            replacement = f"[{category}]"
        chosen_start.append(s)
        chosen_end.append(e)
        replacements.append(replacement)
    return assemble(
        joined,
        np.asarray(chosen_start, dtype=np.int64),
        np.asarray(chosen_end, dtype=np.int64),
        replacements,
    )
