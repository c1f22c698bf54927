"""Word lists and catalogs for the synthetic hospital, loaded once from ``data/*.txt``.

Each list is plain text, one item per line, tab-separated fields, ``#`` comment lines. Lists are
turned into Arrow string arrays (for vectorized ``take``) and NumPy probability vectors (for
``Generator.choice``); nothing here runs per generated row.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pyarrow as pa

__all__ = ["LabCatalog", "Template", "Vocab", "load_vocab"]

#: Fields of note templates that may be NULL for a patient (the section's first template,
#: its fallback, must use none of them).
NULLABLE_NOTE_FIELDS = frozenset(
    {
        "ssn",
        "ssn_last4",
        "email",
        "workplace",
        "relation",
        "ec_name",
        "ec_first",
        "phone",
        "phone_dash",
        "discharge_mdy",
    }
)


def _rows(name: str, fields: int) -> list[list[str]]:
    """The non-comment lines of ``data/<name>``, split on tabs into exactly ``fields`` fields."""
    text = resources.files("clinipipe.synth").joinpath("data").joinpath(name).read_text("utf-8")
    rows: list[list[str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != fields:
            raise ValueError(f"data/{name}:{lineno}: expected {fields} tab-separated fields")
        rows.append(parts)
    if not rows:
        raise ValueError(f"data/{name} is empty")
    return rows


def _column(rows: Sequence[Sequence[str]], i: int) -> list[str]:
    return [r[i] for r in rows]


def _strings(values: Sequence[str]) -> pa.StringArray:
    return pa.array(list(values), pa.string())


def _normalize(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    if total <= 0:
        raise ValueError("weights must not all be zero")
    return w / total


def rank_weights(n: int, offset: float = 8.0) -> np.ndarray:
    """Zipf-like probabilities for a list sorted most-frequent first."""
    return _normalize(1.0 / (np.arange(n, dtype=np.float64) + offset))


def _floats(values: Sequence[str]) -> np.ndarray:
    return np.array([float(v) if v.strip() else np.nan for v in values], dtype=np.float64)


@dataclass(frozen=True)
class Template:
    """One note sentence: literal text interleaved with field names.

    ``parts`` alternates literal strings and field references, the latter as 1-tuples
    ``(field_name,)``.
    """

    section: str
    text: str
    parts: tuple[str | tuple[str], ...]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(p[0] for p in self.parts if isinstance(p, tuple))

    @classmethod
    def parse(cls, section: str, text: str) -> Template:
        text = text.replace("\\n", "\n")
        parts: list[str | tuple[str]] = []
        for literal, field, spec, conv in string.Formatter().parse(text):
            if spec or conv:
                raise ValueError(f"note template {text!r}: format specs are not supported")
            if literal:
                parts.append(literal)
            if field is not None:
                if not field.isidentifier():
                    raise ValueError(f"note template {text!r}: bad field {field!r}")
                parts.append((field,))
        return cls(section=section, text=text, parts=tuple(parts))


@dataclass(frozen=True)
class LabCatalog:
    """LOINC tests sorted by panel; ``panel_start``/``panel_size`` index into the test arrays."""

    loinc: pa.StringArray
    name: pa.StringArray
    unit: pa.StringArray
    ref_low: np.ndarray  # NaN where open
    ref_high: np.ndarray  # NaN where open
    decimals: np.ndarray
    lognormal: np.ndarray  # bool
    p1: np.ndarray
    p2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    panels: tuple[str, ...]
    panel_start: np.ndarray
    panel_size: np.ndarray
    #: probabilities over panels for the settings outpatient/telehealth, emergency, inpatient
    panel_p: tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Vocab:
    """Every list the generator draws from (immutable, shared, loaded once)."""

    male_first: pa.StringArray
    male_p: np.ndarray
    female_first: pa.StringArray
    female_p: np.ndarray
    last: pa.StringArray
    last_p: np.ndarray
    streets: pa.StringArray
    streets_p: np.ndarray
    city: pa.StringArray
    state: pa.StringArray
    zip: pa.StringArray
    area_code: np.ndarray  # int
    city_p: np.ndarray
    employers: pa.StringArray
    employer_status: dict[str, int]  # "Retired", "Student", ... -> index into employers
    employer_working: np.ndarray  # indices of real employers
    specialty: pa.StringArray
    specialty_department: pa.StringArray
    specialty_p: np.ndarray
    payer: pa.StringArray
    payer_prefix: pa.StringArray  # null for self-pay
    payer_p_under65: np.ndarray
    payer_p_65plus: np.ndarray
    icd_code: pa.StringArray
    icd_desc: pa.StringArray
    #: probabilities over codes, shape (setting, group, code): settings outpatient/telehealth,
    #: emergency, inpatient; groups infant (< 1 year), child, adult woman, adult man
    icd_p: np.ndarray
    labs: LabCatalog
    drug_code: pa.StringArray
    drug_name: pa.StringArray
    drug_dose: pa.StringArray
    drug_route: pa.StringArray
    drug_frequency: pa.StringArray
    drug_chronic: np.ndarray  # bool
    drug_p_ambulatory: np.ndarray  # no IV drugs
    drug_p_acute: np.ndarray
    email_domain: pa.StringArray
    email_domain_p: np.ndarray
    complaints: pa.StringArray
    eponyms: pa.StringArray
    history_terms: pa.StringArray
    templates: dict[str, tuple[Template, ...]]


#: Which patient groups (0 infant, 1 child, 2 adult woman, 3 adult man) a diagnosis fits.
_ICD_GROUPS: dict[str, tuple[int, ...]] = {
    "any": (0, 1, 2, 3),
    "infant": (0,),
    "child": (0, 1),
    "adult": (2, 3),
    "female": (2,),
    "male": (3,),
}

_EMPLOYER_STATUSES = ("Retired", "Student", "Homemaker", "Disabled", "Unemployed", "Self-employed")


def _single(name: str) -> list[str]:
    return [r[0].strip() for r in _rows(name, 1)]


def _load_labs() -> LabCatalog:
    panel_rows = _rows("lab_panels.txt", 5)
    panels = tuple(r[0] for r in panel_rows)
    order = {p: i for i, p in enumerate(panels)}
    rows = _rows("labs.txt", 12)
    for r in rows:
        if r[11] not in order:
            raise ValueError(f"data/labs.txt: unknown panel {r[11]!r} for {r[0]}")
        if r[6] not in ("n", "ln"):
            raise ValueError(f"data/labs.txt: unknown distribution {r[6]!r} for {r[0]}")
    rows.sort(key=lambda r: order[r[11]])  # stable: keeps file order within a panel
    panel_of = [order[r[11]] for r in rows]
    size = np.bincount(panel_of, minlength=len(panels))
    if (size == 0).any():
        empty = [p for p, s in zip(panels, size, strict=True) if s == 0]
        raise ValueError(f"data/lab_panels.txt: panels without tests: {empty}")
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    weights = np.array([[float(x) for x in r[2:5]] for r in panel_rows])
    return LabCatalog(
        loinc=_strings(_column(rows, 0)),
        name=_strings(_column(rows, 1)),
        unit=_strings(_column(rows, 2)),
        ref_low=_floats(_column(rows, 3)),
        ref_high=_floats(_column(rows, 4)),
        decimals=np.array([int(r[5]) for r in rows]),
        lognormal=np.array([r[6] == "ln" for r in rows]),
        p1=_floats(_column(rows, 7)),
        p2=_floats(_column(rows, 8)),
        lo=_floats(_column(rows, 9)),
        hi=_floats(_column(rows, 10)),
        panels=panels,
        panel_start=start.astype(np.int64),
        panel_size=size.astype(np.int64),
        panel_p=(
            _normalize(weights[:, 0]),
            _normalize(weights[:, 1]),
            _normalize(weights[:, 2]),
        ),
    )


def _load_templates() -> dict[str, tuple[Template, ...]]:
    by_section: dict[str, list[Template]] = {}
    for section, text in _rows("note_templates.txt", 2):
        by_section.setdefault(section, []).append(Template.parse(section, text))
    for section, templates in by_section.items():
        bad = templates[0].fields & NULLABLE_NOTE_FIELDS
        if bad:
            raise ValueError(
                f"data/note_templates.txt: the first {section!r} template is the fallback and "
                f"must not use nullable fields {sorted(bad)}"
            )
    return {s: tuple(t) for s, t in by_section.items()}


@functools.lru_cache(maxsize=1)
def load_vocab() -> Vocab:
    """Load and validate every list (cached: the result is shared and must not be mutated)."""
    male = _single("first_names_male.txt")
    female = _single("first_names_female.txt")
    last = _single("last_names.txt")
    streets = _single("streets.txt")
    cities = _rows("cities.txt", 5)
    for r in cities:
        if not (len(r[2]) == 5 and r[2].isdigit() and len(r[1]) == 2 and len(r[3]) == 3):
            raise ValueError(f"data/cities.txt: bad row {r}")
    employers = _single("employers.txt")
    missing = [s for s in _EMPLOYER_STATUSES if s not in employers]
    if missing:
        raise ValueError(f"data/employers.txt lacks {missing}")
    status = {s: employers.index(s) for s in _EMPLOYER_STATUSES}
    working = np.array([i for i, e in enumerate(employers) if e not in status], dtype=np.int64)
    specialties = _rows("specialties.txt", 3)
    specialties.sort(key=lambda r: -float(r[2]))  # stable; most common first
    payers = _rows("payers.txt", 5)
    icd = _rows("icd10.txt", 6)
    icd_w = np.array([[float(x) for x in r[3:6]] for r in icd])
    unknown = {r[2] for r in icd} - set(_ICD_GROUPS)
    if unknown:
        raise ValueError(f"data/icd10.txt: unknown 'who' values {sorted(unknown)}")
    eligible = np.array([[g in _ICD_GROUPS[r[2]] for g in range(4)] for r in icd])
    icd_p = np.empty((3, 4, len(icd)))
    for setting in range(3):
        for group in range(4):
            w = icd_w[:, setting] * eligible[:, group]
            if w.sum() <= 0:
                raise ValueError(f"data/icd10.txt: no code for setting {setting} group {group}")
            icd_p[setting, group] = w / w.sum()
    drugs = _rows("drugs.txt", 7)
    drug_w = np.array([float(r[5]) for r in drugs])
    iv = np.array([r[3] == "IV" for r in drugs])
    domains = _rows("email_domains.txt", 2)
    return Vocab(
        male_first=_strings(male),
        male_p=rank_weights(len(male)),
        female_first=_strings(female),
        female_p=rank_weights(len(female)),
        last=_strings(last),
        last_p=rank_weights(len(last), offset=15.0),
        streets=_strings(streets),
        streets_p=rank_weights(len(streets), offset=30.0),
        city=_strings(_column(cities, 0)),
        state=_strings(_column(cities, 1)),
        zip=_strings(_column(cities, 2)),
        area_code=np.array([int(r[3]) for r in cities], dtype=np.int64),
        city_p=_normalize([float(r[4]) for r in cities]),
        employers=_strings(employers),
        employer_status=status,
        employer_working=working,
        specialty=_strings(_column(specialties, 0)),
        specialty_department=_strings(_column(specialties, 1)),
        specialty_p=_normalize([float(r[2]) for r in specialties]),
        payer=_strings(_column(payers, 0)),
        payer_prefix=pa.array([r[1] or None for r in payers], pa.string()),
        payer_p_under65=_normalize([float(r[3]) for r in payers]),
        payer_p_65plus=_normalize([float(r[4]) for r in payers]),
        icd_code=_strings(_column(icd, 0)),
        icd_desc=_strings(_column(icd, 1)),
        icd_p=icd_p,
        labs=_load_labs(),
        drug_code=_strings(_column(drugs, 0)),
        drug_name=_strings(_column(drugs, 1)),
        drug_dose=_strings(_column(drugs, 2)),
        drug_route=_strings(_column(drugs, 3)),
        drug_frequency=_strings(_column(drugs, 4)),
        drug_chronic=np.array([r[6] == "1" for r in drugs]),
        drug_p_ambulatory=_normalize(np.where(iv, 0.0, drug_w)),
        drug_p_acute=_normalize(drug_w),
        email_domain=_strings(_column(domains, 0)),
        email_domain_p=_normalize([float(r[1]) for r in domains]),
        complaints=_strings(_single("complaints.txt")),
        eponyms=_strings(_single("eponyms.txt")),
        history_terms=_strings(_single("history_terms.txt")),
        templates=_load_templates(),
    )
