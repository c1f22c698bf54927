"""Consistent, keyed surrogates for detected PHI.

``surrogate(category, value, key)`` derives everything from HMAC-SHA256(key, category + a
normalized value): the same value (up to case, spacing and punctuation; digits only for numbers)
gets the same surrogate in every row and every run with the same key, and nobody without the key
can recompute it from a candidate value. Surrogates are chosen not to be real identifiers where
a rule allows it: phones in the 555-01xx fiction range, SSNs with area 9xx (never issued), IPs
from the documentation ranges, e-mails at example.org. Names come from the census lists.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import cache

from clinipipe.phi.lexicon import read_list
from clinipipe.phi.validators import MONTH_NAMES

_MONTHS = tuple(m[:3] for m in MONTH_NAMES)
_STREETS = ("St", "Ave", "Rd", "Ln", "Dr", "Way", "Ct", "Pl")
_NORMALIZE_DIGITS = frozenset(
    {"PHONE", "FAX", "SSN", "MRN", "ACCOUNT", "HEALTH_PLAN", "IP", "ZIP", "AGE"}
)


@cache
def _names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    ambiguous = set(read_list("name_words.txt"))
    first = tuple(n for n in read_list("first_names.txt")[:1000] if n.lower() not in ambiguous)
    last = tuple(n for n in read_list("last_names.txt")[:2000] if n.lower() not in ambiguous)
    return first, last


def normalize(category: str, value: str) -> str:
    """The form of ``value`` whose surrogate is shared: digits only for numeric identifiers,
    else lower case with punctuation and spacing removed."""
    if category in _NORMALIZE_DIGITS and any(c.isdigit() for c in value):
        return re.sub(r"\D", "", value)
    return re.sub(r"[\W_]+", "", value.casefold())


class _Stream:
    """Deterministic numbers from one HMAC digest (extended by counter when used up)."""

    def __init__(self, key: bytes, message: bytes) -> None:
        self._key, self._message, self._counter, self._pool = key, message, 0, b""

    def below(self, n: int) -> int:
        if len(self._pool) < 4:
            self._pool += hmac.new(
                self._key, self._message + self._counter.to_bytes(4, "big"), hashlib.sha256
            ).digest()
            self._counter += 1
        v, self._pool = int.from_bytes(self._pool[:4], "big"), self._pool[4:]
        return v % n


def _shape(value: str, rnd: _Stream) -> str:
    """Same layout: every digit replaced by a digit, every letter by a letter of the same case."""
    out = []
    for ch in value:
        if ch.isdigit():
            out.append(str(rnd.below(10)))
        elif ch.isalpha():
            letter = chr(ord("A") + rnd.below(26))
            out.append(letter if ch.isupper() else letter.lower())
        else:
            out.append(ch)
    return "".join(out)


def _date(value: str, rnd: _Stream) -> str:
    """A date in the same layout: "4th" -> "17th", "03/04/2021" -> "11/17/2021", a written
    month -> "Nov 17, 2021"; the year (which Safe Harbor keeps) is kept when present."""
    year = re.search(r"(?:19|20)\d\d", value)
    month, day = 1 + rnd.below(12), 1 + rnd.below(28)
    if re.fullmatch(r"\d{1,2}(?:st|nd|rd|th)", value.strip()):
        return (
            f"{day}{'th' if 11 <= day <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"
        )
    numeric = re.fullmatch(r"\d{1,4}([/.-])\d{1,2}(?:[/.-](\d{2,4}))?", value.strip())
    if numeric:
        sep, tail = numeric.group(1), numeric.group(2)
        if value[:4].isdigit():  # ISO order
            return f"{value[:4]}-{month:02d}-{day:02d}"
        if tail is None:
            return f"{month}{sep}{day}"
        return f"{month:02d}{sep}{day:02d}{sep}{tail}"
    y = year.group() if year else None
    return f"{_MONTHS[month - 1]} {day}, {y}" if y else f"{_MONTHS[month - 1]} {day}"


def surrogate(category: str, value: str, key: bytes) -> str:
    """A realistic replacement for ``value`` of ``category`` (see the module docstring)."""
    rnd = _Stream(key, f"{category}\x1f{normalize(category, value)}".encode())
    first, last = _names()
    if category == "NAME":
        words = [w for w in re.split(r"[\s,]+", value) if w]
        surname = last[rnd.below(len(last))]
        if len(words) <= 1:
            return surname if value[:1].isupper() or not value else surname.lower()
        given = first[rnd.below(len(first))]
        return f"{surname}, {given}" if "," in value else f"{given} {surname}"
    if category == "DATE":
        return _date(value, rnd)
    if category == "AGE":
        return "90+"
    if category in ("PHONE", "FAX"):
        return f"({200 + rnd.below(800)}) 555-01{rnd.below(100):02d}"
    if category == "SSN":
        return f"9{rnd.below(100):02d}-{rnd.below(100):02d}-{rnd.below(10000):04d}"
    if category == "EMAIL":
        return f"{first[rnd.below(len(first))].lower()}{rnd.below(1000)}@example.org"
    if category == "URL":
        return f"https://example.org/{rnd.below(10**6)}"
    if category == "IP":
        if ":" in value:
            return f"2001:db8::{rnd.below(65536):x}"
        return f"192.0.2.{1 + rnd.below(254)}"
    if category == "ADDRESS":
        street = last[rnd.below(len(last))]
        return f"{1 + rnd.below(9999)} {street} {_STREETS[rnd.below(len(_STREETS))]}"
    if category == "CITY":
        return last[rnd.below(len(last))] + ("ville", "ton", "field", "burg")[rnd.below(4)]
    return _shape(value, rnd)
