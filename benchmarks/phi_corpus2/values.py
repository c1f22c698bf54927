"""PHI values and their spellings for the independent corpus, from Faker's locales and from
formats written here (no list or rule of ``clinipipe.phi`` is read).

Every function takes the note's ``random.Random`` and returns pieces (:class:`P` for PHI,
:class:`N` for neutral text), so the builder records exact spans. A 4-digit year inside a date is
neutral (Safe Harbor keeps the year) except in the birth date of a patient older than 89.
"""

from __future__ import annotations

import datetime as dt
import random
import string
from dataclasses import dataclass
from functools import cache

from faker import Faker

from .builder import N, P, Piece

#: Locales whose names come out in Latin script (checked offline with the installed Faker).
NAME_LOCALES: tuple[str, ...] = (
    "en_US",
    "en_US",
    "en_US",
    "es_MX",
    "es_ES",
    "en_IE",
    "ga_IE",
    "en_IN",
    "fr_FR",
    "de_DE",
    "pt_BR",
    "it_IT",
    "pl_PL",
    "yo_NG",
    "ig_NG",
    "ha_NG",
    "tw_GH",
    "zu_ZA",
    "sw",
    "vi_VN",
    "tr_TR",
    "ro_RO",
    "nl_NL",
    "fil_PH",
)

#: Names that are also ordinary words, or eponyms' surnames (hard for any list-based detector).
WORD_FIRST = ("Hope", "Faith", "Joy", "Grace", "Will", "Rose", "June", "April", "Summer", "Pat",
              "Sandy", "Dawn", "Crystal", "Destiny", "Lyric", "Bill", "Art", "Major")  # fmt: skip
WORD_LAST = ("Brown", "Green", "White", "Young", "Long", "King", "Hill", "Wood", "Rice", "Bell",
             "Page", "Frost", "Snow", "Banks", "Best", "Love", "Strong", "Sharp", "Church",
             "Mayo", "Parkinson", "Foley", "Gehrig", "Bishop", "Wells", "Hale", "Cross", "Day",
             "Moody", "Price", "Nurse", "Payne", "Hurt", "Coffin")  # fmt: skip
#: Real US places, many also words or eponyms (Austin Flint, Lyme disease, Norwalk virus).
REAL_CITIES = ("Mobile", "Reading", "Normal", "Hope", "Liberty", "Independence", "Commerce",
               "Salem", "Lowell", "Worcester", "Springfield", "Framingham", "Quincy", "Lynn",
               "Chelsea", "Revere", "Marion", "Florence", "Eugene", "Tyler", "Jackson", "Austin",
               "Madison", "Lincoln", "Troy", "Warren", "Clinton", "Lyme", "Norwalk", "Bayamón",
               "Caguas", "Mayagüez", "Holyoke", "Lawrence", "Brockton", "Fall River")  # fmt: skip
STATES = ("MA", "NH", "RI", "CT", "NY", "ME", "VT", "NJ", "PA", "FL", "TX", "CA", "PR",
          "Massachusetts", "New Hampshire", "Rhode Island", "Puerto Rico")  # fmt: skip
EMAIL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "icloud.com", "aol.com", "comcast.net",
                 "hotmail.com", "verizon.net", "protonmail.com", "me.com")  # fmt: skip


@cache
def _faker(locale: str) -> Faker:
    f = Faker(locale)
    for provider in f.providers:
        # Some locales build a list from a set (it_IT's cities): its order, and so the city a
        # seed picks, would depend on PYTHONHASHSEED. Sorted, a note depends on its seed alone.
        for name in ("cities",):
            values = getattr(provider, name, None)
            if isinstance(values, list):
                setattr(provider, name, sorted(values))
    return f


def faker(rng: random.Random, locale: str) -> Faker:
    """The locale's Faker, reseeded from ``rng`` (so a note depends only on its own seed)."""
    f = _faker(locale)
    f.seed_instance(rng.getrandbits(48))
    return f


def _latin(s: str) -> bool:
    return all(ord(c) < 0x250 or c in "ạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹĐđ" for c in s)


def _clean(name: str) -> str:
    return name.replace(".", "").strip()


@dataclass(frozen=True)
class Person:
    """A person's names (``middle`` may be empty) and the locale they came from."""

    first: str
    middle: str
    last: str
    locale: str
    sex: str


def person(rng: random.Random, locale: str | None = None) -> Person:
    """A person from a random Latin-script locale; sometimes a word-like or eponym name."""
    loc = locale or rng.choice(NAME_LOCALES)
    f = faker(rng, loc)
    sex = rng.choice("FM")
    for _ in range(20):
        first = _clean(f.first_name_female() if sex == "F" else f.first_name_male())
        last = _clean(f.last_name())
        middle = _clean(f.first_name()) if rng.random() < 0.45 else ""
        if all(_latin(x) and x and " " not in x for x in (first, last)) and _latin(middle):
            break
    if rng.random() < 0.08:
        first = rng.choice(WORD_FIRST)
    if rng.random() < 0.10:
        last = rng.choice(WORD_LAST)
    if " " in middle:
        middle = middle.split()[0]
    return Person(first, middle, last, loc, sex)


def name_variants(rng: random.Random, p: Person, kind: str) -> Piece:
    """A spelling of ``p``'s name, each word its own NAME span."""

    def n(x: str) -> P:
        return P(x, "NAME", kind)

    style = rng.randrange(6)
    if style == 0:  # Last, First Middle
        out: list[Piece] = [n(p.last), ", ", n(p.first)]
        if p.middle:
            out += [" ", n(p.middle)]
        return out
    if style == 1:  # LAST, FIRST
        return [n(p.last.upper()), ",", n(p.first.upper())]
    if style == 2 and p.middle:  # First M. Last
        return [n(p.first), " ", n(p.middle[0]), ". ", n(p.last)]
    if style == 3:
        return [n(p.first), " ", n(p.last)]
    if style == 4 and p.middle:
        return [n(p.first), " ", n(p.middle), " ", n(p.last)]
    return [n(p.first), " ", n(p.last)]


def first_last(p: Person, kind: str) -> Piece:
    return [P(p.first, "NAME", kind), " ", P(p.last, "NAME", kind)]


def clinician(rng: random.Random) -> Piece:
    """A clinician's name in one of several signature spellings (NAME, kind clinician)."""
    p = person(rng, rng.choice(("en_US", "en_US", "en_IN", "es_MX", "en_IE", "de_DE", "yo_NG")))
    k = "clinician"
    creds = rng.choice(("MD", "DO", "NP", "PA-C", "RN", "MD, PhD", "FNP-BC"))
    style = rng.randrange(5)
    if style == 0:
        return ["Dr. ", P(p.last, "NAME", k)]
    if style == 1:
        return [P(p.first, "NAME", k), " ", P(p.last, "NAME", k), ", " + creds]
    if style == 2:
        return [P(p.last, "NAME", k), ", ", P(p.first, "NAME", k), " " + creds]
    if style == 3:
        return [P(p.first[0], "NAME", k), ". ", P(p.last, "NAME", k), " " + creds]
    return [P(p.first, "NAME", k), " ", P(p.last, "NAME", k)]


# --- dates --------------------------------------------------------------------------------------

DATE_FORMATS = ("%m/%d/%Y", "%-m/%-d/%y", "%Y-%m-%d", "%d-%b-%Y", "%B %-d, %Y", "%b %-d %Y",
                "%-d %B %Y", "%m/%d", "%B %-d", "%d.%m.%Y", "%Y%m%d", "%-m-%-d-%Y",
                "%b. %-d, %Y", "%A, %B %-d")  # fmt: skip
DATETIME_FORMATS = ("%m/%d/%Y %H:%M", "%Y-%m-%dT%H:%M:%S", "%m/%d/%Y @ %H%M",
                    "%-m/%-d/%y %-I:%M %p", "%d-%b-%Y %H:%M", "%B %-d, %Y at %-I:%M %p",
                    "%Y-%m-%d %H:%M")  # fmt: skip


def date_piece(d: dt.date | dt.datetime, fmt: str, kind: str, year_is_phi: bool = False) -> P:
    """``d`` formatted; a 4-digit year inside is neutral unless ``year_is_phi``."""
    text = d.strftime(fmt)
    neutral: list[tuple[int, int]] = []
    y = str(d.year)
    at = text.find(y)
    if not year_is_phi and at >= 0 and "%Y%m%d" not in fmt:
        neutral.append((at, at + 4))
    if "%A" in fmt:  # a weekday alone identifies no one
        day = d.strftime("%A")
        neutral.append((text.find(day), text.find(day) + len(day)))
    return P(text, "DATE", kind, tuple(neutral))


def some_date(rng: random.Random, start: int = 2018, end: int = 2025) -> dt.date:
    return dt.date(start, 1, 1) + dt.timedelta(days=rng.randrange((end - start) * 365))


def some_datetime(rng: random.Random) -> dt.datetime:
    d = some_date(rng)
    return dt.datetime(
        d.year, d.month, d.day, rng.randrange(24), rng.randrange(60), rng.randrange(60)
    )


def a_date(rng: random.Random, kind: str = "date") -> P:
    return date_piece(some_date(rng), rng.choice(DATE_FORMATS), kind)


def a_datetime(rng: random.Random) -> P:
    return date_piece(some_datetime(rng), rng.choice(DATETIME_FORMATS), "datetime")


# --- numbers ------------------------------------------------------------------------------------


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def alnum(
    rng: random.Random, n: int, alphabet: str = string.ascii_uppercase + string.digits
) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def phone_digits(rng: random.Random) -> str:
    return (
        str(rng.randint(2, 9))
        + digits(rng, 2)
        + str(rng.randint(2, 9))
        + digits(rng, 2)
        + digits(rng, 4)
    )


def phone_text(rng: random.Random, d: str) -> tuple[str, str]:
    """A spelling of the 10 digits ``d`` and its kind."""
    a, b, c = d[:3], d[3:6], d[6:]
    forms = (
        (f"({a}) {b}-{c}", "phone_paren"),
        (f"{a}-{b}-{c}", "phone_dash"),
        (f"{a}.{b}.{c}", "phone_dot"),
        (d, "phone_bare10"),
        (f"+1-{a}-{b}-{c}", "phone_plus1"),
        (f"+1 {a} {b} {c}", "phone_plus1"),
        (f"+1{d}", "phone_plus1"),
        (f"1-{a}-{b}-{c}", "phone_1dash"),
        (f"{a} {b} {c}", "phone_spaces"),
        (f"{a}-{b}-{c} x{rng.randint(10, 9999)}", "phone_ext"),
        (f"({a}){b}-{c}", "phone_paren"),
    )
    return rng.choice(forms)


def phone(rng: random.Random, d: str | None = None, category: str = "PHONE") -> P:
    text, kind = phone_text(rng, d or phone_digits(rng))
    return P(text, category, kind if category == "PHONE" else "fax_" + kind.split("_", 1)[1])


def ssn_digits(rng: random.Random) -> str:
    area = rng.choice([x for x in range(1, 900) if x != 666])
    return f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"


def ssn(rng: random.Random, d: str) -> P:
    forms = (
        (f"{d[:3]}-{d[3:5]}-{d[5:]}", "ssn_dash"),
        (f"{d[:3]} {d[3:5]} {d[5:]}", "ssn_space"),
        (d, "ssn_bare"),
        (d[5:], "ssn_last4"),
    )
    text, kind = rng.choice(forms)
    return P(text, "SSN", kind)


def mrn(rng: random.Random) -> str:
    return rng.choice((digits(rng, 8), "E" + digits(rng, 7), digits(rng, 7), "00" + digits(rng, 6)))


def health_plan(rng: random.Random) -> str:
    mbi = (
        str(rng.randint(1, 9)) + rng.choice("ACDEFGHJKMNPQRTUVWXY") + alnum(rng, 1)
        + str(rng.randint(0, 9)) + "-" + rng.choice("ACDEFGHJKMNPQRTUVWXY") + alnum(rng, 1)
        + str(rng.randint(0, 9)) + "-" + rng.choice("ACDEFGHJKMNPQRTUVWXY") * 2 + digits(rng, 2)
    )  # fmt: skip
    return rng.choice((
        alnum(rng, 3, string.ascii_uppercase) + digits(rng, 9),
        mbi,
        "W" + digits(rng, 9),
        digits(rng, 9) + rng.choice("ABCD"),
        f"{digits(rng, 4)}-{digits(rng, 5)}-{digits(rng, 2)}",
    ))  # fmt: skip


def account(rng: random.Random) -> str:
    return rng.choice((digits(rng, 10), f"{digits(rng, 4)}-{digits(rng, 4)}-{digits(rng, 4)}",
                       "HAR" + digits(rng, 9), digits(rng, 12)))  # fmt: skip


def drivers_license(rng: random.Random) -> str:
    return rng.choice((
        "S" + digits(rng, 8),
        rng.choice(string.ascii_uppercase) + digits(rng, 7),
        f"{digits(rng, 3)} {digits(rng, 3)} {digits(rng, 3)}",
        f"{rng.choice(string.ascii_uppercase)}{digits(rng, 3)}-{digits(rng, 4)}-{digits(rng, 4)}",
    ))  # fmt: skip


VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def vin(rng: random.Random) -> str:
    return alnum(rng, 17, VIN_CHARS)


def plate(rng: random.Random) -> str:
    return rng.choice((
        f"{rng.randint(1, 9)}{alnum(rng, 3, string.ascii_uppercase)}{digits(rng, 3)}",
        f"{alnum(rng, 3, string.ascii_uppercase)}-{digits(rng, 4)}",
        f"{digits(rng, 3)} {alnum(rng, 3, string.ascii_uppercase)}",
        f"{rng.randint(1, 9)}{alnum(rng, 2, string.ascii_uppercase)}{digits(rng, 3)}",
    ))  # fmt: skip


def device_serial(rng: random.Random) -> str:
    return rng.choice((
        alnum(rng, 3, string.ascii_uppercase) + digits(rng, 6) + rng.choice("SHGR"),
        f"{digits(rng, 4)}-{digits(rng, 4)}-{digits(rng, 2)}",
        "NG" + digits(rng, 7) + "H",
        alnum(rng, 6),
        digits(rng, 9),
    ))  # fmt: skip


def udi(rng: random.Random) -> str:
    return f"(01){digits(rng, 14)}(17){digits(rng, 6)}(21){alnum(rng, 9)}"


def ipv4(rng: random.Random) -> str:
    return ".".join(str(x) for x in (rng.randint(11, 223), rng.randint(0, 255),
                                     rng.randint(0, 255), rng.randint(1, 254)))  # fmt: skip


def ipv6(rng: random.Random) -> str:
    return "2001:" + ":".join(f"{rng.randrange(0x10000):x}" for _ in range(7))


def email(rng: random.Random, p: Person) -> str:
    first = _ascii(p.first).lower()
    last = _ascii(p.last).lower()
    local = rng.choice((
        f"{first}.{last}", f"{first[0]}{last}{rng.randint(1, 99)}", f"{last}{first}",
        f"{first}_{last}{rng.randint(1950, 2005)}", f"{first}{rng.randint(100, 999)}",
    ))  # fmt: skip
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def _ascii(s: str) -> str:
    import unicodedata

    out = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return "".join(c for c in out if c.isalnum()) or "x"


def personal_url(rng: random.Random, p: Person) -> str:
    f, last = _ascii(p.first).lower(), _ascii(p.last).lower()
    return rng.choice((
        f"https://www.caringbridge.org/visit/{f}{last}",
        f"facebook.com/{f}.{last}.{rng.randint(1, 999)}",
        f"https://{last}family.blogspot.com",
        f"http://www.gofundme.com/f/help-{f}-{last}",
        f"https://drive.google.com/file/d/{alnum(rng, 20, string.ascii_letters)}/view",
        f"www.{f}{last}{rng.randint(1, 99)}.net",
    ))  # fmt: skip


# --- places -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """An address: ``street`` lines (one ADDRESS piece list), city, state, zip; ``kind`` says
    which street style it is."""

    street: str
    city: str
    state: str
    zip: str
    kind: str


URBANIZATIONS = ("Villa Carolina", "Las Gladiolas", "Santa Rosa", "El Conquistador")
RARE_SUFFIXES = ("Run", "Crossing", "Commons", "Way", "Landing", "Chase", "Bend")
NO_SUFFIX_STREETS = ("Broadway", "Old Mill", "The Fenway", "Meadowbrook", "Highland",
                     "Ocean View", "Harborside")  # fmt: skip


def address(rng: random.Random) -> Address:
    """A US address in one of several street styles, many with no usual street suffix."""
    f = faker(rng, "en_US")
    n = rng.randint(1, 9999)
    style = rng.randrange(10)
    if style == 0:
        street, kind = f.street_address(), "addr_faker_us"
    elif style == 1:
        street, kind = f"{n} State Route {rng.randint(1, 299)}", "addr_route"
    elif style == 2:
        street, kind = f"{n} County Road {rng.choice(['K', '12', '118', 'NN'])}", "addr_route"
    elif style == 3:
        street, kind = f"RR {rng.randint(1, 9)} Box {rng.randint(1, 999)}", "addr_rural_box"
    elif style == 4:
        es = faker(rng, "es_MX")
        street = (
            f"Calle {rng.choice([es.last_name(), es.first_name(), str(rng.randint(1, 40))])} {n}"
        )
        kind = "addr_calle"
    elif style == 5:
        street = (
            f"Urb. {rng.choice(URBANIZATIONS)}, "
            f"Calle {rng.randint(1, 30)} {rng.choice('ABCDEFG')}-{rng.randint(1, 40)}"
        )
        kind = "addr_pr_urb"
    elif style == 6:
        street, kind = (
            f"{n} {f.last_name()} {rng.choice(RARE_SUFFIXES)}",
            "addr_us_other_suffix",
        )
    elif style == 7:
        street = f"{n} {rng.choice(NO_SUFFIX_STREETS)}"
        kind = "addr_no_suffix"
    elif style == 8:
        street, kind = f"PO Box {rng.randint(1, 99999)}", "addr_po_box"
    else:
        unit = f"{rng.choice(['Apt', 'Unit', '#', 'Apt.'])} {rng.randint(1, 40)}{rng.choice('BC ')}"
        street = f"{n} {f.street_name()}, {unit.strip()}"
        kind = "addr_unit"
    city = rng.choice(REAL_CITIES) if rng.random() < 0.5 else f.city()
    zipc = f"{rng.randint(1000, 99999):05d}" + (f"-{digits(rng, 4)}" if rng.random() < 0.25 else "")
    return Address(street, city, rng.choice(STATES), zipc, kind)


def address_pieces(a: Address, one_line: bool = True) -> Piece:
    sep = ", " if one_line else "\n"
    return [P(a.street, "ADDRESS", a.kind), sep, P(a.city, "CITY", "city"), ", ",
            N(a.state), " ", P(a.zip, "ZIP", "zip")]  # fmt: skip


def foreign_address(rng: random.Random) -> Piece:
    """An address abroad (the patient's other home), in that locale's own format."""
    loc = rng.choice(("es_MX", "pt_BR", "de_DE", "it_IT", "pl_PL", "fr_FR", "en_IE"))
    f = faker(rng, loc)
    street = " ".join(f.street_address().split())
    city = " ".join(f.city().split())
    return [P(street, "ADDRESS", "addr_foreign_" + loc), ", ", P(city, "CITY", "city_foreign"),
            ", ", P(f.postcode(), "ZIP", "zip_foreign")]  # fmt: skip
