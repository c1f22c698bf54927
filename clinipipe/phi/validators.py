"""Validators: pure checks that a matched string is a real identifier of its kind.

Each validator takes the matched text (the PHI span only, never its context) and returns a bool;
a *trimming* validator (attribute ``trims``) returns how many leading characters to keep (0:
reject).
They never raise on bad input and never log the value. :data:`VALIDATORS` names them for the
detector rules (``validator: ssn`` in ``data/detectors.yaml`` or a spec pattern).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from typing import Any

from clinipipe.spec.types import PHI_VALIDATOR_NAMES

_NON_DIGIT = re.compile(r"\D")
MONTH_NAMES: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
"""English month names, January first (the other PHI modules share this one list)."""
_MONTHS = {
    m: i
    for i, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for m in names
}


def digits(text: str) -> str:
    """The digits of ``text``, in order."""
    return _NON_DIGIT.sub("", text)


def luhn(number: str) -> bool:
    """The Luhn (mod 10) check over the digits of ``number`` (at least 2 digits)."""
    ds = digits(number)
    if len(ds) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(ds)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def ssn(text: str) -> bool:
    """SSA rules: 9 digits; area not 000, 666 or 900-999; group not 00; serial not 0000."""
    ds = digits(text)
    if len(ds) != 9:
        return False
    area, group, serial = ds[:3], ds[3:5], ds[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def npi(text: str) -> bool:
    """A National Provider Identifier: 10 digits starting 1 or 2, Luhn over ``80840`` + them."""
    ds = digits(text)
    return len(ds) == 10 and ds[0] in "12" and luhn("80840" + ds)


def dea(text: str) -> bool:
    """A DEA registration number: 2 letters + 7 digits whose last is the check digit
    ((d1+d3+d5) + 2*(d2+d4+d6)) mod 10."""
    t = text.strip().upper()
    if len(t) != 9 or (not t[:2].isalpha() and not (t[0].isalpha() and t[1] == "9")):
        return False
    ds = t[2:]
    if not ds.isdigit():
        return False
    d = [int(c) for c in ds]
    return (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10 == d[6]


def nanp_phone(text: str) -> bool:
    """A North American number: 10 digits (an optional leading 1), area code and exchange
    starting 2-9, neither of the form N11, and not the 555-01xx fiction range."""
    ds = digits(text.split("x")[0].split("X")[0])
    if len(ds) == 11 and ds[0] == "1":
        ds = ds[1:]
    if len(ds) != 10:
        return False
    area, exchange = ds[:3], ds[3:6]
    if area[0] in "01" or exchange[0] in "01":
        return False
    if exchange == "555" and ds[6:8] == "01":
        return False
    return area[1:] != "11" and exchange[1:] != "11"


def ipv4(text: str) -> bool:
    """A dotted-quad IPv4 address (four octets 0-255, no leading zeros)."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def ipv6(text: str) -> bool:
    """An IPv6 address as Python's ``ipaddress`` parses it, with at least two colons."""
    if text.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_VIN_VALUES = {
    **{str(i): i for i in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin(text: str) -> bool:
    """A 17-character vehicle identification number (no I, O, Q) whose 9th character is the
    ISO 3779 / 49 CFR 565 check digit."""
    t = text.upper()
    if len(t) != 17 or any(c not in _VIN_VALUES for c in t):
        return False
    if not any(c.isdigit() for c in t) or not any(c.isalpha() for c in t):
        return False
    total = sum(_VIN_VALUES[c] * w for c, w in zip(t, _VIN_WEIGHTS, strict=True))
    check = total % 11
    return t[8] == ("X" if check == 10 else str(check))


def imei(text: str) -> bool:
    """A 15-digit IMEI with its Luhn check digit."""
    ds = digits(text)
    return len(ds) == 15 and luhn(ds)


def _year(text: str) -> int:
    y = int(text)
    if len(text) <= 2:
        y += 2000 if y <= 30 else 1900
    return y


def _month(text: str) -> int:
    t = text.lower().rstrip(".")
    return _MONTHS[t] if t in _MONTHS else int(t)


_NUMERIC_DATE = re.compile(r"^(\d{1,4})[-/.](\d{1,2})(?:[-/.](\d{2,4}))?$")
_WORDS = re.compile(r"[A-Za-z]+|\d+")


_TIME_SUFFIX = re.compile(
    r"(?:(?:T| |, | @ ?| at )\d{1,2}:\d{2}\S*(?: ?[AaPp]\.?[Mm]\.?)?| ?@ ?\d{4})$"
)


def split_time(text: str) -> tuple[str, str]:
    """``(date, time suffix)`` of a date-time ("2021-03-04T10:22:00", "03/04/2021 10:22 AM");
    the suffix is empty when there is none."""
    m = _TIME_SUFFIX.search(text)
    return (text, "") if m is None else (text[: m.start()], text[m.start() :])


@lru_cache(maxsize=1 << 16)
def real_date(text: str) -> bool:
    """A calendar date in one of the usual spellings (3/4/2021, 2021-03-04, 4-Mar-21,
    March 4th, 2021, 4 March 2021, Mar 4, 03/04): the day exists in that month (29 February
    only in a leap year; a date without a year may be 29 February) and the year is 1900-2099."""
    t = split_time(text.strip())[0]
    m = _NUMERIC_DATE.match(t)
    try:
        if m:
            a, b, c = m.groups()
            if len(a) == 4:  # ISO order
                if c is None:
                    return False
                y, mo, d = int(a), int(b), int(c)
            else:
                mo, d = int(a), int(b)
                y = _year(c) if c else 2000
                if mo > 12 and d <= 12 and c and "." in t:  # day first: 15.04.2021
                    mo, d = d, mo
            return 1900 <= y <= 2099 and _valid(y, mo, d)
        tokens = _WORDS.findall(t)
        month = next((tok for tok in tokens if tok.lower() in _MONTHS), None)
        if month is None:
            return False
        nums = [tok for tok in tokens if tok.isdigit()]
        rest = [tok for tok in tokens if tok.isalpha() and tok is not month]
        if any(r.lower() not in ("st", "nd", "rd", "th", "of") for r in rest):
            return False
        mo = _month(month)
        day_part = [n for n in nums if len(n) <= 2]
        year_part = [n for n in nums if len(n) == 4]
        if len(nums) == 2 and not year_part:  # 4-Mar-21: day, then two-digit year
            return _valid(_year(nums[1]), mo, int(nums[0]))
        if len(day_part) > 1 or len(year_part) > 1 or not nums:
            return False
        y = int(year_part[0]) if year_part else 2000
        if not 1900 <= y <= 2099:
            return False
        return _valid(y, mo, int(day_part[0])) if day_part else True
    except (ValueError, KeyError):
        return False


def _valid(y: int, mo: int, d: int) -> bool:
    try:
        date(y, mo, d)
    except ValueError:
        return False
    return True


def age_over_89(text: str) -> bool:
    """The first number in ``text`` is an age of 90 or more (up to 125)."""
    m = re.search(r"\d+", text)
    return m is not None and 90 <= int(m.group()) <= 125


_MBI = re.compile(
    r"^[1-9][AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y\d]\d[AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y\d]\d"
    r"[AC-HJKMNP-RT-Y]{2}\d{2}$"
)


def mbi(text: str) -> bool:
    """A Medicare Beneficiary Identifier (11 characters in CMS's fixed letter/digit layout;
    dashes allowed)."""
    return _MBI.match(text.replace("-", "").upper()) is not None


def has_digit(text: str) -> bool:
    """At least two digits (an identifier, not a word)."""
    return sum(c.isdigit() for c in text) >= 2


def any_digit(text: str) -> bool:
    """At least one digit (a licence plate such as 5E-PPPX)."""
    return any(c.isdigit() for c in text)


def phone_shape(text: str) -> bool:
    """A number written like a phone number: 10 digits (11 starting 1, or 13 starting 001)
    before any extension, not all one digit. Unlike :func:`nanp_phone` the area code and
    exchange are not checked (test data and foreign-issued numbers break those rules)."""
    ds = digits(re.split(r"[xX]|ext", text)[0])
    if len(ds) == 13 and ds.startswith("001"):
        ds = ds[3:]
    if len(ds) == 11 and ds[0] == "1":
        ds = ds[1:]
    return len(ds) == 10 and len(set(ds)) > 1


def code_token(text: str) -> bool:
    """An identifier-like code of 5+ characters: it holds a digit, or it is all capitals
    and no English word (JCBP1Y, VKOMJS; not PENDING)."""
    if len(text) < 5:
        return False
    if any(c.isdigit() for c in text):
        return True
    from clinipipe.phi.lexicon import english_word

    return text.isupper() and not english_word(text.lower())


def date_compact(text: str) -> bool:
    """YYYYMMDD that is a real calendar date, 1900-2099."""
    return len(text) == 8 and text.isdigit() and real_date(f"{text[:4]}-{text[4:6]}-{text[6:]}")


def seven_digits(text: str) -> bool:
    """7 to 15 digits in all (a phone number of some country), not all one digit."""
    ds = digits(text)
    return 7 <= len(ds) <= 15 and len(set(ds)) > 1


VALIDATORS: dict[str, Callable[[str], Any]] = {
    "seven_digits": seven_digits,
    "date_compact": date_compact,
    "code_token": code_token,
    "phone_shape": phone_shape,
    "any_digit": any_digit,
    "ssn": ssn,
    "luhn": luhn,
    "npi": npi,
    "dea": dea,
    "nanp_phone": nanp_phone,
    "ipv4": ipv4,
    "ipv6": ipv6,
    "vin": vin,
    "imei": imei,
    "date": real_date,
    "age_over_89": age_over_89,
    "mbi": mbi,
    "has_digit": has_digit,
}


def name_token(text: str) -> bool:
    """A census name, or a capitalized word that is not an English word (Jaylen, Okonkwo)."""
    from clinipipe.phi.lexicon import is_name_token

    return is_name_token(text)


def place_name(text: str) -> bool:
    """A place name after "lives in": not a month, weekday or a determiner-like word."""
    from clinipipe.phi.lexicon import is_place_word

    return is_place_word(text)


def name_tokens(text: str) -> int:
    """Length of the longest leading run of name words in ``text`` (0: none): census names
    that are not common English words, words that are no English word at all, and initials
    between them ("anthony gomez", "tony d. black" -> "tony d."; "george thinks" -> "george").
    A *trimming* validator: the span is cut to that length."""
    from clinipipe.phi.lexicon import is_name_token

    length = 0
    for m in re.finditer(r"\S+", text):
        word = m.group().rstrip(".")
        if len(word) == 1 and word.isalpha() and m.group().endswith("."):
            continue  # an initial: kept only if a name word follows
        # The first word must be an unambiguous name; after it a surname may be a word
        # too ("carolyn miller", "tony black").
        if not is_name_token(word, strict=length == 0):
            break
        length = m.end()
    return length


name_tokens.trims = True  # type: ignore[attr-defined]


def name_words(text: str) -> bool:
    """Every word of ``text`` (initials aside) is a name word: a listed name or a capitalized
    word that is no English word, and none is a clinical term ("Okafor, Chidi A.", "Xu
    Wen-Li"); "Pain, Chest" is not."""
    from clinipipe.phi.lexicon import is_name_token

    words = [w for w in re.split(r"[\s,]+", text) if w and not re.fullmatch(r"[A-Z]\.?", w)]
    return bool(words) and all(is_name_token(w.rstrip(".")) for w in words)


def relation_name(text: str) -> bool:
    """Words before a relation word ("Wolf-Dietrich Cross, husband"; "Crystal (father)") are a
    name unless one is a clinical term, a title or a note word (Patient, Hospital...)."""
    from clinipipe.phi.lexicon import not_name_word

    return not any(not_name_word(w) for w in text.split())


def street_words(text: str) -> bool:
    """A house number and street words none of which is a clinical term, a title or a unit
    ("8201 Meadowbrook", "6866 Highland"; not "120 Units")."""
    words = text.split()
    if len(words) < 2 or not words[0].isdigit():
        return False
    last = words[-1].lower()
    if last in _NOT_STREET_WORDS:
        return False
    from clinipipe.phi.lexicon import not_name_word

    # the field end or ", City, ST" after it is the evidence; the words only must not be
    # clinical or a unit ("120 Units |")
    return not any(not_name_word(w) for w in words[1:])


_NOT_STREET_WORDS = frozenset(
    re.findall(
        r"\w+",
        "units unit mg mcg tablets tablet days day weeks week hours hour years year months "
        "month minutes times patients beats breaths percent points cm mm kg lbs ml ounces doses",
    )
)


def credential_name(text: str) -> bool:
    """Words before a credential ("Salami, Ajani RN", "Adaeze Obi, RN") are a name when none
    is a clinical, title or note word and at least one is a listed name or no English
    word."""
    from clinipipe.phi.lexicon import is_name_token, not_name_word

    words = [w for w in re.split(r"[\s,]+", text) if w and not re.fullmatch(r"[A-Z]\.?", w)]
    return (
        bool(words)
        and not any(w.isupper() and len(w) <= 3 for w in words)
        and not any(not_name_word(w) for w in words)
        and any(is_name_token(w) for w in words)
    )


VALIDATORS["name_token"] = name_token
VALIDATORS["credential_name"] = credential_name
VALIDATORS["relation_name"] = relation_name
VALIDATORS["street_words"] = street_words
VALIDATORS["name_words"] = name_words
VALIDATORS["name_tokens"] = name_tokens
VALIDATORS["place_name"] = place_name

if set(VALIDATORS) != PHI_VALIDATOR_NAMES:  # the spec validates names against PHI_VALIDATOR_NAMES
    raise ImportError(
        "clinipipe.spec.types.PHI_VALIDATOR_NAMES and phi.validators.VALIDATORS differ: "
        f"{sorted(set(VALIDATORS) ^ PHI_VALIDATOR_NAMES)}"
    )
