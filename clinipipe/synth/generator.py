"""Deterministic, vectorized generator of a synthetic hospital's EHR tables as Arrow batches.

Guarantees
----------
* **Deterministic**: the rows depend only on ``(patients, seed)``, the word lists shipped in
  ``data/`` and NumPy's random streams (stable within a NumPy release series); never on the
  clock, the machine or the batch size. Dates are relative to the fixed
  :data:`REFERENCE_DATE`. Patients are generated in fixed chunks of :data:`CHUNK_PATIENTS`, each
  with its own random stream ``SeedSequence([seed, 1, chunk_index])``, so concatenating the
  batches of one table gives the same rows whatever ``batch_patients`` is.
* **Bounded memory**: only one batch of patients (and their encounters, labs, ...) is held at a
  time; memory grows with ``batch_patients``, not with ``patients``.
* **Vectorized**: columns are built with NumPy and Arrow compute; Python loops run over tables,
  chunks, a handful of categories and note templates, never over rows.
* **Consistent**: every foreign key points at a generated row (encounter -> patient and provider,
  lab/medication/claim/note -> encounter and the encounter's patient); encounters fall between
  the patient's birth (or ten years before the reference date) and death (or the reference date);
  discharge follows admission; lab flags agree with the reference ranges.

The column names and order of every batch are those of ``clinipipe/source/sql/hospital_schema.sql``
(:data:`SCHEMAS`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinipipe.source.loader import HOSPITAL_TABLES
from clinipipe.synth.notes import FieldTable, render_notes
from clinipipe.synth.textfmt import Digits, civil, fixed_text, format_days
from clinipipe.synth.vocab import Vocab, load_vocab

__all__ = [
    "CHUNK_PATIENTS",
    "EXPECTED_PER_PATIENT",
    "PRIMARY_KEYS",
    "REFERENCE_DATE",
    "SCHEMAS",
    "TABLES",
    "expected_rows",
    "generate",
    "provider_count",
]

#: Every date is relative to this instant (never ``now()``), so that data is reproducible.
REFERENCE_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
#: Patients per independently seeded chunk; batches are whole multiples of it.
CHUNK_PATIENTS = 1_000
#: Encounters span this many years before :data:`REFERENCE_DATE`.
HISTORY_YEARS = 10

TABLES: tuple[str, ...] = HOSPITAL_TABLES
PRIMARY_KEYS: dict[str, str] = {
    "providers": "provider_id",
    "patients": "patient_id",
    "encounters": "encounter_id",
    "labs": "lab_id",
    "medications": "medication_id",
    "claims": "claim_id",
    "clinical_notes": "note_id",
}
#: Average rows per patient (the generator calibrates its rates to these means).
EXPECTED_PER_PATIENT: dict[str, float] = {
    "patients": 1.0,
    "encounters": 10.0,
    "labs": 40.0,
    "medications": 5.0,
    "claims": 10.0,
    "clinical_notes": 6.0,
}

_TS = pa.timestamp("s", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "providers": pa.schema(
        [
            ("provider_id", pa.int64()),
            ("npi", pa.string()),
            ("first_name", pa.string()),
            ("last_name", pa.string()),
            ("specialty", pa.string()),
            ("department", pa.string()),
        ]
    ),
    "patients": pa.schema(
        [
            ("patient_id", pa.int64()),
            ("mrn", pa.string()),
            ("first_name", pa.string()),
            ("last_name", pa.string()),
            ("sex", pa.string()),
            ("birth_date", pa.date32()),
            ("ssn", pa.string()),
            ("street_address", pa.string()),
            ("city", pa.string()),
            ("state", pa.string()),
            ("zip", pa.string()),
            ("phone", pa.string()),
            ("email", pa.string()),
            ("insurance_member_id", pa.string()),
            ("employer", pa.string()),
            ("emergency_contact_name", pa.string()),
            ("deceased_date", pa.date32()),
            ("created_at", _TS),
        ]
    ),
    "encounters": pa.schema(
        [
            ("encounter_id", pa.int64()),
            ("patient_id", pa.int64()),
            ("provider_id", pa.int64()),
            ("encounter_type", pa.string()),
            ("department", pa.string()),
            ("admit_ts", _TS),
            ("discharge_ts", _TS),
            ("primary_dx", pa.string()),
            ("account_number", pa.string()),
        ]
    ),
    "labs": pa.schema(
        [
            ("lab_id", pa.int64()),
            ("encounter_id", pa.int64()),
            ("patient_id", pa.int64()),
            ("loinc_code", pa.string()),
            ("test_name", pa.string()),
            ("value_numeric", pa.float64()),
            ("unit", pa.string()),
            ("ref_low", pa.float64()),
            ("ref_high", pa.float64()),
            ("abnormal_flag", pa.string()),
            ("collected_ts", _TS),
        ]
    ),
    "medications": pa.schema(
        [
            ("medication_id", pa.int64()),
            ("encounter_id", pa.int64()),
            ("patient_id", pa.int64()),
            ("rxnorm_code", pa.string()),
            ("drug_name", pa.string()),
            ("dose", pa.string()),
            ("route", pa.string()),
            ("frequency", pa.string()),
            ("start_date", pa.date32()),
            ("end_date", pa.date32()),
        ]
    ),
    "claims": pa.schema(
        [
            ("claim_id", pa.int64()),
            ("encounter_id", pa.int64()),
            ("patient_id", pa.int64()),
            ("payer", pa.string()),
            ("member_id", pa.string()),
            ("billed_amount", pa.float64()),
            ("paid_amount", pa.float64()),
            ("status", pa.string()),
            ("submitted_date", pa.date32()),
        ]
    ),
    "clinical_notes": pa.schema(
        [
            ("note_id", pa.int64()),
            ("encounter_id", pa.int64()),
            ("patient_id", pa.int64()),
            ("provider_id", pa.int64()),
            ("note_type", pa.string()),
            ("note_ts", _TS),
            ("note_text", pa.string()),
        ]
    ),
}

_DAY = 86_400
_YEAR_DAYS = 365.2425
_REF_S = int(REFERENCE_DATE.timestamp())
_REF_DAY = _REF_S // _DAY
_WINDOW_START_S = _REF_S - round(HISTORY_YEARS * _YEAR_DAYS) * _DAY
_TELEHEALTH_FROM_S = int(dt.datetime(2020, 3, 15, tzinfo=dt.timezone.utc).timestamp())
_PROVIDER_STREAM = 0
_CHUNK_STREAM = 1
# Bijections used to derive unique identifiers from ids (multipliers coprime with 10).
_MRN_MOD, _MRN_MUL = 10**8, 61_803_399
_ACCT_MOD, _ACCT_MUL = 10**10, 1_234_567_891

# Encounter types; settings index the per-setting weights of the catalogs.
_ENC_TYPES = ("outpatient", "emergency", "inpatient", "telehealth")
_ENC_TYPE_P = np.array([0.60, 0.15, 0.10, 0.15])
_OUTPATIENT, _EMERGENCY, _INPATIENT, _TELEHEALTH = range(4)
_SETTING_OF_TYPE = np.array([0, 1, 2, 0])

_NOTE_TYPES: tuple[tuple[tuple[str, ...], tuple[float, ...]], ...] = (
    (("Progress Note", "Consult Note", "Telephone Encounter"), (0.7, 0.15, 0.15)),
    (("ED Provider Note", "ED Nursing Note"), (0.8, 0.2)),
    (
        ("History and Physical", "Progress Note", "Discharge Summary", "Consult Note"),
        (0.3, 0.45, 0.15, 0.1),
    ),
    (("Telehealth Visit Note", "Telephone Encounter"), (0.8, 0.2)),
)
# Relations of the emergency contact: (word for a female contact, word for a male contact,
# probability the contact shares the patient's last name).
_RELATIONS: tuple[tuple[str, str, float], ...] = (
    ("mother", "father", 0.9),
    ("grandmother", "grandfather", 0.6),
    ("wife", "husband", 0.8),
    ("daughter", "son", 0.7),
    ("sister", "brother", 0.85),
    ("friend", "friend", 0.0),
)
_MOTHER, _GRANDMOTHER, _SPOUSE, _CHILD, _SIBLING, _FRIEND = range(6)
_RELATION_P_CHILD = np.array([0.85, 0.15, 0.0, 0.0, 0.0, 0.0])
_RELATION_P_ADULT = np.array([0.10, 0.0, 0.50, 0.12, 0.14, 0.14])
_RELATION_P_SENIOR = np.array([0.0, 0.0, 0.42, 0.40, 0.10, 0.08])
_CLAIM_STATUS = ("paid", "denied", "adjusted", "appealed", "pending")
_CLAIM_STATUS_P_OLD = np.array([0.82, 0.07, 0.04, 0.02, 0.05])
_CLAIM_STATUS_P_RECENT = np.array([0.35, 0.05, 0.0, 0.0, 0.60])


def provider_count(patients: int) -> int:
    """Providers of a hospital with ``patients`` patients: about one per 50, at least 20."""
    return max(20, patients // 50)


def expected_rows(patients: int) -> dict[str, int]:
    """Rows each table is expected to get (exact for providers and patients, else a mean)."""
    rows = {"providers": provider_count(patients)}
    rows.update({t: round(m * patients) for t, m in EXPECTED_PER_PATIENT.items()})
    return rows


# --------------------------------------------------------------------------------------------
# small vectorized helpers


def _take(values: pa.Array, idx: np.ndarray) -> pa.Array:
    return values.take(pa.array(idx, pa.int64()))


def _str(values: np.ndarray) -> pa.Array:
    """Integers as decimal strings."""
    return pc.cast(pa.array(values, pa.int64()), pa.string())


def _zpad(values: np.ndarray, width: int) -> pa.Array:
    return fixed_text(len(values), [Digits(values, width)])


def _join(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation of arrays and literal strings (null if any part is null)."""
    args = [pa.scalar(p, pa.string()) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*args, "")


def _with_nulls(values: pa.Array, null_mask: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(null_mask), pa.scalar(None, values.type), values)


def _days(day: np.ndarray) -> pa.Array:
    return pa.array(day.astype(np.int32), pa.date32())


def _ts(seconds: np.ndarray, null_mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(seconds.astype(np.int64), _TS, mask=null_mask)


_MONTHS = pa.array(
    [
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
    ]
)


def _long_date(day: np.ndarray) -> pa.Array:
    """'March 4, 2021'."""
    year, month, dom = civil(day)
    return _join(_take(_MONTHS, month - 1), " ", _str(dom), ", ", _str(year))


def _clock(seconds: np.ndarray) -> pa.Array:
    """'14:05' (UTC)."""
    sod = seconds % _DAY
    return fixed_text(len(seconds), [Digits(sod // 3600, 2), ":", Digits(sod % 3600 // 60, 2)])


def _choice(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    return rng.choice(len(p), size=size, p=p)


def _choice_by_group(
    rng: np.random.Generator, group: np.ndarray, probabilities: list[np.ndarray]
) -> np.ndarray:
    """For each row, an index drawn from ``probabilities[group[row]]``."""
    out = np.zeros(len(group), dtype=np.int64)
    for g, p in enumerate(probabilities):
        rows = np.flatnonzero(group == g)
        if len(rows):
            out[rows] = _choice(rng, p, len(rows))
    return out


def _rank_in_group(counts: np.ndarray) -> np.ndarray:
    """[2, 3] -> [0, 1, 0, 1, 2]: position of each repeated row inside its group."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


def _npi(rng: np.random.Generator, n: int) -> pa.Array:
    """Valid NPIs: 9 digits starting 1 or 2, plus the Luhn check digit over '80840' + them."""
    digits = rng.integers(0, 10, size=(n, 9))
    digits[:, 0] = rng.integers(1, 3, size=n)
    # Luhn over the 15-digit string 80840 d1..d9 c: the 9 digits sit at positions where, counting
    # from the check digit, d9 is doubled, d8 not, ... The prefix 80840 contributes 24.
    doubled = digits[:, 8::-2]
    plain = digits[:, 7::-2]
    dbl = doubled * 2
    dbl = np.where(dbl > 9, dbl - 9, dbl)
    total = 24 + dbl.sum(axis=1) + plain.sum(axis=1)
    check = (10 - total % 10) % 10
    number = digits @ (10 ** np.arange(9, 0, -1)) + check
    return _zpad(number, 10)


# --------------------------------------------------------------------------------------------
# providers


@dataclass(frozen=True)
class _Providers:
    batch: pa.RecordBatch
    first: pa.Array
    last: pa.Array
    specialty: pa.Array
    department: pa.Array
    #: provider index pools: primary care adult/children, emergency, inpatient, other specialists
    pools: dict[str, np.ndarray]


def _providers(v: Vocab, n: int, seed: int) -> _Providers:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _PROVIDER_STREAM])))
    # The first providers cover the specialties (most common first), so every pool is staffed.
    n_spec = len(v.specialty)
    spec = np.concatenate(
        [np.arange(min(n, n_spec)), _choice(rng, v.specialty_p, max(0, n - n_spec))]
    )
    female = rng.random(n) < 0.5
    first_all = pa.concat_arrays([v.male_first, v.female_first])
    fi = np.where(
        female,
        len(v.male_first) + _choice(rng, v.female_p, n),
        _choice(rng, v.male_p, n),
    )
    first = _take(first_all, fi)
    last = _take(v.last, _choice(rng, v.last_p, n))
    specialty = _take(v.specialty, spec)
    department = _take(v.specialty_department, spec)
    batch = pa.record_batch(
        [
            pa.array(np.arange(1, n + 1, dtype=np.int64)),
            _npi(rng, n),
            first,
            last,
            specialty,
            department,
        ],
        schema=SCHEMAS["providers"],
    )
    names = np.array(specialty.to_pylist(), dtype=object)  # n providers, not rows
    everyone = np.arange(n)

    def pool(*wanted: str, exclude: bool = False) -> np.ndarray:
        hit = np.isin(names, list(wanted))
        found = everyone[~hit] if exclude else everyone[hit]
        return found if len(found) else everyone

    pools = {
        "primary": pool("Internal Medicine", "Family Medicine", "Geriatric Medicine"),
        "pediatric": pool("Pediatrics", "Family Medicine"),
        "emergency": pool("Emergency Medicine"),
        "inpatient": pool(
            "Hospital Medicine",
            "Internal Medicine",
            "Critical Care Medicine",
            "General Surgery",
            "Orthopedic Surgery",
            "Cardiology",
            "Obstetrics and Gynecology",
        ),
        "specialist": pool(
            "Internal Medicine",
            "Family Medicine",
            "Pediatrics",
            "Emergency Medicine",
            "Hospital Medicine",
            "Critical Care Medicine",
            "Neonatology",
            exclude=True,
        ),
    }
    return _Providers(batch, first, last, specialty, department, pools)


# --------------------------------------------------------------------------------------------
# one chunk of patients


@dataclass
class _NextIds:
    encounter: int = 1
    lab: int = 1
    medication: int = 1
    claim: int = 1
    note: int = 1


def _calibrated_poisson(
    rng: np.random.Generator, weight: np.ndarray, mean: float, unit: np.ndarray | float = 1.0
) -> np.ndarray:
    """Poisson counts whose rates are proportional to ``weight`` and whose expected total of
    ``counts * unit`` averages ``mean`` per row (so the chunk hits the documented mean)."""
    expected = float((weight * unit).sum())
    if expected <= 0:
        return np.zeros(len(weight), dtype=np.int64)
    return rng.poisson(weight * (mean * len(weight) / expected)).astype(np.int64)


def _chunk(
    v: Vocab, prov: _Providers, seed: int, chunk_index: int, first_id: int, n: int, ids: _NextIds
) -> dict[str, pa.RecordBatch]:
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, _CHUNK_STREAM, chunk_index]))
    )
    out: dict[str, pa.RecordBatch] = {}

    # ---- patients --------------------------------------------------------------------------
    pid = first_id + np.arange(n, dtype=np.int64)
    female = rng.random(n) < 0.51
    age_years = np.where(rng.random(n) < 0.03, rng.random(n), rng.beta(1.5, 1.7, size=n) * 100.5)
    age_days = np.maximum(1, (age_years * _YEAR_DAYS).astype(np.int64))
    birth_day = _REF_DAY - age_days
    age_now = age_days / _YEAR_DAYS
    first_all = pa.concat_arrays([v.male_first, v.female_first])
    first_idx = np.where(
        female, len(v.male_first) + _choice(rng, v.female_p, n), _choice(rng, v.male_p, n)
    )
    first = _take(first_all, first_idx)
    last_idx = _choice(rng, v.last_p, n)
    last = _take(v.last, last_idx)

    window_lo_s = np.maximum(_WINDOW_START_S, birth_day * _DAY)
    p_dead = 0.004 + 0.06 * np.clip((age_now - 60.0) / 40.0, 0.0, 1.0)
    dead = rng.random(n) < p_dead
    lo_day = window_lo_s // _DAY
    death_day = lo_day + (rng.random(n) * (_REF_DAY - lo_day)).astype(np.int64)
    death_day = np.where(dead, np.minimum(death_day, _REF_DAY - 1), 0)
    window_hi_s = np.where(dead, (death_day + 1) * _DAY - 1, _REF_S)
    created_s = np.maximum(
        birth_day * _DAY, window_lo_s - (rng.random(n) * 2 * _YEAR_DAYS * _DAY).astype(np.int64)
    )

    mrn_number = (pid * _MRN_MUL + (seed * 2_654_435_761) % _MRN_MOD) % _MRN_MOD
    mrn_digits = _zpad(mrn_number, 8)
    mrn = fixed_text(n, ["MRN", Digits(mrn_number, 8)])
    sex = pa.array(np.where(female, "F", "M"))

    area = rng.integers(1, 899, size=n)
    area = area + (area >= 666)
    group, serial = rng.integers(1, 100, n), rng.integers(1, 10000, n)
    ssn = fixed_text(n, [Digits(area, 3), "-", Digits(group, 2), "-", Digits(serial, 4)])
    ssn_null = rng.random(n) < np.where(age_now < 1, 0.6, 0.09)
    ssn = _with_nulls(ssn, ssn_null)
    ssn_last4 = _with_nulls(_zpad(serial, 4), ssn_null)

    house = np.exp(rng.uniform(0, math.log(4000), n)).astype(np.int64)
    street = _take(v.streets, _choice(rng, v.streets_p, n))
    plain_address = _join(_str(house), " ", street)
    apartment = _join(
        plain_address,
        " Apt ",
        _str(rng.integers(1, 40, n)),
        _take(pa.array(["", "A", "B", "C"]), rng.integers(0, 4, n)),
    )
    address = pc.if_else(pa.array(rng.random(n) < 0.18), apartment, plain_address)
    city_idx = _choice(rng, v.city_p, n)

    exchange = rng.integers(200, 1000, n)
    exchange = exchange + (exchange % 100 == 11)
    area_code = np.where(
        rng.random(n) < 0.85,
        v.area_code[city_idx],
        rng.integers(2, 10, n) * 100 + rng.integers(0, 100, n),
    )
    area_code = area_code + (area_code % 100 == 11)
    line = rng.integers(0, 10000, n)
    phone_null = rng.random(n) < 0.04
    phone = fixed_text(
        n, ["(", Digits(area_code, 3), ") ", Digits(exchange, 3), "-", Digits(line, 4)]
    )
    phone = _with_nulls(phone, phone_null)
    phone_dash = fixed_text(
        n, [Digits(area_code, 3), "-", Digits(exchange, 3), "-", Digits(line, 4)]
    )
    phone_dash = _with_nulls(phone_dash, phone_null)

    def handle(names: pa.Array) -> pa.Array:
        lowered = pc.utf8_lower(names)
        return pc.replace_substring_regex(lowered, pattern="[^a-z]", replacement="")

    suffix = pc.if_else(
        pa.array(rng.random(n) < 0.45), _str(rng.integers(1, 100, n)), pa.scalar("")
    )
    separator = _take(pa.array([".", "", "_"]), _choice(rng, np.array([0.5, 0.3, 0.2]), n))
    email = _join(
        handle(first),
        separator,
        handle(last),
        suffix,
        "@",
        _take(v.email_domain, _choice(rng, v.email_domain_p, n)),
    )
    email = _with_nulls(email, (rng.random(n) < 0.18) | (age_now < 13))

    payer_idx = np.where(
        age_now >= 65,
        _choice(rng, v.payer_p_65plus, n),
        _choice(rng, v.payer_p_under65, n),
    )
    member_id = _join(_take(v.payer_prefix, payer_idx), _zpad(rng.integers(0, 10**9, n), 9))

    working = v.employer_working[rng.integers(0, len(v.employer_working), n)]
    st = v.employer_status
    adult_status = np.array(
        [st["Self-employed"], st["Homemaker"], st["Disabled"], st["Unemployed"]]
    )
    u = rng.random(n)
    employer_idx = np.select(
        [
            age_now < 16,
            (age_now < 23) & (u < 0.5),
            (age_now >= 67) & (u < 0.7),
            (age_now >= 67) & (u < 0.85),
            (age_now >= 16) & (age_now < 67) & (u < 0.12),
            (age_now >= 16) & (age_now < 67) & (u < 0.2),
        ],
        [-1, st["Student"], st["Retired"], -1, adult_status[rng.integers(0, 4, n)], -1],
        default=working,
    )
    employer = _with_nulls(_take(v.employers, np.maximum(employer_idx, 0)), employer_idx < 0)
    workplace = _with_nulls(employer, ~np.isin(employer_idx, v.employer_working))

    relation = np.where(
        age_now < 18,
        _choice(rng, _RELATION_P_CHILD, n),
        np.where(
            age_now < 60, _choice(rng, _RELATION_P_ADULT, n), _choice(rng, _RELATION_P_SENIOR, n)
        ),
    )
    contact_female = np.select(
        [relation == _MOTHER, relation == _GRANDMOTHER, relation == _SPOUSE],
        [rng.random(n) < 0.8, rng.random(n) < 0.8, ~female ^ (rng.random(n) < 0.05)],
        default=rng.random(n) < 0.5,
    )
    relation_words = pa.array([w for r in _RELATIONS for w in r[:2]])
    relation_word = _take(relation_words, relation * 2 + (~contact_female).astype(np.int64))
    same_last = rng.random(n) < np.array([r[2] for r in _RELATIONS])[relation]
    ec_first = _take(
        first_all,
        np.where(
            contact_female,
            len(v.male_first) + _choice(rng, v.female_p, n),
            _choice(rng, v.male_p, n),
        ),
    )
    ec_last = _take(v.last, np.where(same_last, last_idx, _choice(rng, v.last_p, n)))
    no_contact = rng.random(n) < 0.12
    ec_first = _with_nulls(ec_first, no_contact)
    ec_name = _with_nulls(_join(ec_first, " ", ec_last), no_contact)
    relation_word = _with_nulls(relation_word, no_contact)

    out["patients"] = pa.record_batch(
        [
            pa.array(pid),
            mrn,
            first,
            last,
            sex,
            _days(birth_day),
            ssn,
            address,
            _take(v.city, city_idx),
            _take(v.state, city_idx),
            _take(v.zip, city_idx),
            phone,
            email,
            member_id,
            employer,
            ec_name,
            pa.array(death_day.astype(np.int32), pa.date32(), mask=~dead),
            _ts(created_s),
        ],
        schema=SCHEMAS["patients"],
    )

    # ---- encounters ------------------------------------------------------------------------
    window_days = (window_hi_s - window_lo_s) / _DAY
    activity = (
        (0.5 + age_now / 60.0) * np.clip(window_days / 730.0, 0.1, 1.0) * np.where(dead, 1.5, 1.0)
    )
    lam = 9.0 * activity / activity.mean()
    r = 1.2
    n_enc = 1 + np.minimum(rng.negative_binomial(r, r / (r + lam)), 150)
    e_pat = np.repeat(np.arange(n), n_enc)
    n_e = len(e_pat)
    etype = _choice(rng, _ENC_TYPE_P, n_e)
    lo_s, hi_s = window_lo_s[e_pat], window_hi_s[e_pat]
    t = lo_s + (rng.random(n_e) * (hi_s - lo_s)).astype(np.int64)
    etype = np.where((etype == _TELEHEALTH) & (t < _TELEHEALTH_FROM_S), _OUTPATIENT, etype)
    day = t // _DAY
    scheduled = (etype == _OUTPATIENT) | (etype == _TELEHEALTH)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    day = np.where(scheduled & (weekday >= 5), day - (weekday - 4), day)
    clinic_time = 8 * 3600 + rng.integers(0, 36, n_e) * 900  # 08:00-16:45, quarter hours
    admit = np.where(scheduled, day * _DAY + clinic_time, t)
    admit = np.clip(admit, lo_s, hi_s - 1)
    order = np.lexsort((admit, e_pat))
    etype, admit, lo_s, hi_s = etype[order], admit[order], lo_s[order], hi_s[order]
    # e_pat is already sorted, so ordering by it is a no-op for e_pat itself.
    minutes = np.select(
        [etype == _OUTPATIENT, etype == _TELEHEALTH, etype == _EMERGENCY],
        [
            rng.integers(15, 91, n_e) * 60,
            rng.integers(10, 41, n_e) * 60,
            (np.exp(rng.normal(math.log(4.0), 0.6, n_e)) * 3600).astype(np.int64),
        ],
        default=(np.clip(np.exp(rng.normal(math.log(3.5), 0.7, n_e)), 0.25, 60) * _DAY).astype(
            np.int64
        ),
    )
    discharge = np.minimum(admit + np.maximum(minutes, 300), hi_s)
    still_here = discharge >= _REF_S
    setting = _SETTING_OF_TYPE[etype]

    pools = prov.pools
    primary = np.where(
        age_now < 18,
        pools["pediatric"][rng.integers(0, len(pools["pediatric"]), n)],
        pools["primary"][rng.integers(0, len(pools["primary"]), n)],
    )
    e_prov = np.select(
        [
            etype == _EMERGENCY,
            etype == _INPATIENT,
            rng.random(n_e) < 0.6,
        ],
        [
            pools["emergency"][rng.integers(0, len(pools["emergency"]), n_e)],
            pools["inpatient"][rng.integers(0, len(pools["inpatient"]), n_e)],
            primary[e_pat],
        ],
        default=pools["specialist"][rng.integers(0, len(pools["specialist"]), n_e)],
    )
    enc_ids = ids.encounter + np.arange(n_e, dtype=np.int64)
    ids.encounter += n_e
    age_at_visit = (admit // _DAY - birth_day[e_pat]) / _YEAR_DAYS
    group = np.where(
        age_at_visit < 1, 0, np.where(age_at_visit < 18, 1, np.where(female[e_pat], 2, 3))
    )
    dx = _choice_by_group(rng, setting * 4 + group, list(v.icd_p.reshape(12, -1)))
    department = pc.if_else(
        pa.array(etype == _EMERGENCY),
        pa.scalar("Emergency Department"),
        _take(prov.department, e_prov),
    )
    account = fixed_text(n_e, ["ACC", Digits((enc_ids * _ACCT_MUL + 7 * seed) % _ACCT_MOD, 10)])
    out["encounters"] = pa.record_batch(
        [
            pa.array(enc_ids),
            pa.array(pid[e_pat]),
            pa.array(e_prov + 1),
            _take(pa.array(_ENC_TYPES), etype),
            department,
            _ts(admit),
            _ts(discharge, still_here),
            _take(v.icd_code, dx),
            account,
        ],
        schema=SCHEMAS["encounters"],
    )
    # how long an encounter lasts, for timing labs and notes inside it
    span = np.where(still_here, _REF_S - admit, discharge - admit)
    los_days = np.maximum(span / _DAY, 0.1)

    # ---- labs --------------------------------------------------------------------------------
    lab = v.labs
    panel_weight = np.select(
        [etype == _OUTPATIENT, etype == _TELEHEALTH, etype == _EMERGENCY],
        [0.9, 0.03, 2.2],
        default=1.2 * np.minimum(los_days, 14) + 1.0,
    )
    mean_size = np.array([float(p @ lab.panel_size) for p in lab.panel_p])[setting]
    n_pan = _calibrated_poisson(rng, panel_weight, EXPECTED_PER_PATIENT["labs"] / 10.0, mean_size)
    pan_enc = np.repeat(np.arange(n_e), n_pan)
    panel = _choice_by_group(rng, setting[pan_enc], list(lab.panel_p))
    pan_ts = admit[pan_enc] + (rng.random(len(pan_enc)) * span[pan_enc]).astype(np.int64)
    pan_order = np.lexsort((pan_ts, pan_enc))
    pan_enc, panel, pan_ts = pan_enc[pan_order], panel[pan_order], pan_ts[pan_order]
    sizes = lab.panel_size[panel]
    test = np.repeat(lab.panel_start[panel], sizes) + _rank_in_group(sizes)
    l_enc = np.repeat(pan_enc, sizes)
    n_l = len(test)
    z = rng.standard_normal(n_l) * np.where(rng.random(n_l) < 0.12, 2.5, 1.0)
    p1, p2 = lab.p1[test], lab.p2[test]
    value = np.where(lab.lognormal[test], p1 * np.exp(p2 * z), p1 + p2 * z)
    value = np.clip(value, lab.lo[test], lab.hi[test])
    scale = 10.0 ** lab.decimals[test]
    value = np.round(value * scale) / scale
    value_null = rng.random(n_l) < 0.005
    ref_low, ref_high = lab.ref_low[test], lab.ref_high[test]
    with np.errstate(invalid="ignore"):
        high = ~value_null & (value > ref_high)
        low = ~value_null & (value < ref_low)
    flag = np.select([high, low], [1, 2], default=0)
    lab_ids = ids.lab + np.arange(n_l, dtype=np.int64)
    ids.lab += n_l
    out["labs"] = pa.record_batch(
        [
            pa.array(lab_ids),
            pa.array(enc_ids[l_enc]),
            pa.array(pid[e_pat[l_enc]]),
            _take(lab.loinc, test),
            _take(lab.name, test),
            pa.array(value, pa.float64(), mask=value_null),
            _take(lab.unit, test),
            pa.array(ref_low, pa.float64(), mask=np.isnan(ref_low)),
            pa.array(ref_high, pa.float64(), mask=np.isnan(ref_high)),
            _take(pa.array([None, "H", "L"], pa.string()), flag),
            _ts(np.repeat(pan_ts, sizes)),
        ],
        schema=SCHEMAS["labs"],
    )

    # ---- medications -----------------------------------------------------------------------
    med_weight = np.select(
        [etype == _OUTPATIENT, etype == _TELEHEALTH, etype == _EMERGENCY],
        [0.45, 0.45, 0.6],
        default=1.0 + 0.25 * np.minimum(los_days, 14),
    )
    n_med = _calibrated_poisson(rng, med_weight, EXPECTED_PER_PATIENT["medications"] / 10.0)
    m_enc = np.repeat(np.arange(n_e), n_med)
    n_m = len(m_enc)
    acute = (etype[m_enc] == _EMERGENCY) | (etype[m_enc] == _INPATIENT)
    drug = np.where(
        acute,
        _choice(rng, v.drug_p_acute, n_m),
        _choice(rng, v.drug_p_ambulatory, n_m),
    )
    start_day = (admit[m_enc] + (rng.random(n_m) * span[m_enc] * acute).astype(np.int64)) // _DAY
    chronic = v.drug_chronic[drug]
    duration = np.where(chronic, rng.integers(30, 366, n_m), rng.integers(1, 15, n_m))
    open_ended = chronic & (rng.random(n_m) < 0.7)
    med_ids = ids.medication + np.arange(n_m, dtype=np.int64)
    ids.medication += n_m
    out["medications"] = pa.record_batch(
        [
            pa.array(med_ids),
            pa.array(enc_ids[m_enc]),
            pa.array(pid[e_pat[m_enc]]),
            _take(v.drug_code, drug),
            _take(v.drug_name, drug),
            _take(v.drug_dose, drug),
            _take(v.drug_route, drug),
            _take(v.drug_frequency, drug),
            _days(start_day),
            pa.array((start_day + duration).astype(np.int32), pa.date32(), mask=open_ended),
        ],
        schema=SCHEMAS["medications"],
    )

    # ---- claims (one per encounter) --------------------------------------------------------
    median = np.select(
        [etype == _OUTPATIENT, etype == _TELEHEALTH, etype == _EMERGENCY],
        [220.0, 110.0, 2200.0],
        default=9000.0 * np.maximum(los_days, 1.0) ** 0.8,
    )
    sigma = np.select([etype == _TELEHEALTH, etype == _INPATIENT], [0.3, 0.5], default=0.65)
    billed = np.round(np.clip(median * np.exp(sigma * rng.standard_normal(n_e)), 25, 5e6), 2)
    end_day = np.where(still_here, admit, discharge) // _DAY
    submitted = np.minimum(end_day + rng.integers(1, 22, n_e), _REF_DAY - 1)
    submitted = np.where(still_here, admit // _DAY, np.maximum(submitted, end_day))
    recent = (_REF_DAY - submitted) < 60
    status = np.where(
        recent, _choice(rng, _CLAIM_STATUS_P_RECENT, n_e), _choice(rng, _CLAIM_STATUS_P_OLD, n_e)
    )
    status = np.where(still_here, _CLAIM_STATUS.index("pending"), status)
    c_payer = payer_idx[e_pat]
    self_pay = v.payer_prefix.is_null().to_numpy(zero_copy_only=False)[c_payer]
    paid_ratio = np.select(
        [status == 0, status == 2],
        [
            np.where(self_pay, rng.uniform(0.1, 1.0, n_e), rng.uniform(0.35, 0.9, n_e)),
            rng.uniform(0.2, 0.6, n_e),
        ],
        default=0.0,
    )
    paid = np.round(billed * paid_ratio, 2)
    claim_ids = ids.claim + np.arange(n_e, dtype=np.int64)
    ids.claim += n_e
    out["claims"] = pa.record_batch(
        [
            pa.array(claim_ids),
            pa.array(enc_ids),
            pa.array(pid[e_pat]),
            _take(v.payer, c_payer),
            _take(member_id, e_pat),
            pa.array(billed),
            pa.array(paid, pa.float64(), mask=(status == 3) | (status == 4)),
            _take(pa.array(_CLAIM_STATUS), status),
            _days(submitted),
        ],
        schema=SCHEMAS["claims"],
    )

    # ---- clinical notes --------------------------------------------------------------------
    note_weight = np.select(
        [etype == _OUTPATIENT, etype == _TELEHEALTH, etype == _EMERGENCY],
        [0.5, 0.35, 0.8],
        default=1.0 + 0.3 * np.minimum(los_days, 14),
    )
    n_note = _calibrated_poisson(rng, note_weight, EXPECTED_PER_PATIENT["clinical_notes"] / 10.0)
    k_enc = np.repeat(np.arange(n_e), n_note)
    n_k = len(k_enc)
    k_type = etype[k_enc]
    note_type_idx = np.zeros(n_k, dtype=np.int64)
    note_type_names: list[str] = []
    for et, (names, probs) in enumerate(_NOTE_TYPES):
        rows = np.flatnonzero(k_type == et)
        if len(rows):
            note_type_idx[rows] = len(note_type_names) + _choice(rng, np.array(probs), len(rows))
        note_type_names.extend(names)
    note_type = _take(pa.array(note_type_names), note_type_idx)
    discharge_summary = note_type_idx == note_type_names.index("Discharge Summary")
    k_ts = admit[k_enc] + (
        rng.random(n_k) * span[k_enc] * np.where(discharge_summary, 1.0, 0.9)
    ).astype(np.int64)
    k_ts = np.where(discharge_summary & ~still_here[k_enc], discharge[k_enc], k_ts)
    k_order = np.lexsort((k_ts, k_enc))
    k_enc, k_ts = k_enc[k_order], k_ts[k_order]
    note_type, note_type_idx = note_type.take(pa.array(k_order)), note_type_idx[k_order]
    k_prov = np.where(
        rng.random(n_k) < 0.85, e_prov[k_enc], rng.integers(0, prov.batch.num_rows, n_k)
    )
    k_pat = e_pat[k_enc]
    text = _note_text(
        v,
        prov,
        rng,
        n_k,
        k_pat,
        k_enc,
        k_prov,
        k_ts,
        note_type,
        patient={
            "first": first,
            "last": last,
            "mrn": mrn,
            "mrn_digits": mrn_digits,
            "street": address,
            "city": _take(v.city, city_idx),
            "state": _take(v.state, city_idx),
            "zip": _take(v.zip, city_idx),
            "phone": phone,
            "phone_dash": phone_dash,
            "email": email,
            "ssn": ssn,
            "ssn_last4": ssn_last4,
            "workplace": workplace,
            "relation": relation_word,
            "ec_name": ec_name,
            "ec_first": ec_first,
        },
        female=female,
        birth_day=birth_day,
        admit=admit,
        discharge=discharge,
        still_here=still_here,
        dx=dx,
        account=account,
        department=department,
    )
    note_ids = ids.note + np.arange(n_k, dtype=np.int64)
    ids.note += n_k
    out["clinical_notes"] = pa.record_batch(
        [
            pa.array(note_ids),
            pa.array(enc_ids[k_enc]),
            pa.array(pid[k_pat]),
            pa.array(k_prov + 1),
            note_type,
            _ts(k_ts),
            text,
        ],
        schema=SCHEMAS["clinical_notes"],
    )
    return out


def _note_text(
    v: Vocab,
    prov: _Providers,
    rng: np.random.Generator,
    n: int,
    k_pat: np.ndarray,
    k_enc: np.ndarray,
    k_prov: np.ndarray,
    k_ts: np.ndarray,
    note_type: pa.Array,
    *,
    patient: dict[str, pa.Array],
    female: np.ndarray,
    birth_day: np.ndarray,
    admit: np.ndarray,
    discharge: np.ndarray,
    still_here: np.ndarray,
    dx: np.ndarray,
    account: pa.Array,
    department: pa.Array,
) -> pa.Array:
    """Free text for ``n`` notes; all randomness is drawn here, up front, in a fixed order."""
    visit_day = admit[k_enc] // _DAY
    note_day = k_ts // _DAY
    age = ((visit_day - birth_day[k_pat]) / _YEAR_DAYS).astype(np.int64)
    fem = female[k_pat]
    pat = pa.array(k_pat, pa.int64())
    enc = pa.array(k_enc, pa.int64())
    n_prov = prov.batch.num_rows
    draws = {
        "days": rng.integers(1, 15, n),
        "weeks": rng.integers(1, 13, n),
        "prev": rng.integers(14, 400, n),
        "lab_back": rng.integers(0, 4, n),
        "complaint": rng.integers(0, len(v.complaints), n),
        "eponym": rng.integers(0, len(v.eponyms), n),
        "eponym2": rng.integers(1, len(v.eponyms), n),
        "pmh1": rng.integers(0, len(v.history_terms), n),
        "pmh2": rng.integers(1, len(v.history_terms), n),
        "drug": rng.integers(0, len(v.drug_name), n),
        "ref": rng.integers(0, n_prov, n),
        "sbp": rng.integers(98, 178, n),
        "dbp": rng.integers(55, 100, n),
        "hr": rng.integers(52, 118, n),
        "temp": rng.integers(970, 1020, n),
        "rr": rng.integers(12, 24, n),
        "spo2": rng.integers(90, 101, n),
        "weight": rng.integers(95, 320, n),
        "na": rng.integers(128, 147, n),
        "k": rng.integers(31, 56, n),
        "cr": rng.integers(6, 30, n),
        "hgb": rng.integers(85, 170, n),
        "wbc": rng.integers(35, 180, n),
        "a1c": rng.integers(50, 120, n),
        "quit": rng.integers(1, 40, n),
        "father_age": rng.integers(48, 95, n),
    }
    followup_day = visit_day + 7 * draws["weeks"]

    def tenths(x: np.ndarray) -> pa.Array:
        return _join(_str(x // 10), ".", _str(x % 10))

    def p(name: str) -> pa.Array:
        return patient[name].take(pat)

    builders = {
        "note_type": lambda: note_type,
        "first": lambda: p("first"),
        "last": lambda: p("last"),
        "first_uc": lambda: pc.utf8_upper(p("first")),
        "last_uc": lambda: pc.utf8_upper(p("last")),
        "mrn": lambda: p("mrn"),
        "mrn_digits": lambda: p("mrn_digits"),
        "dob_iso": lambda: format_days(birth_day[k_pat], "iso"),
        "dob_mdy": lambda: format_days(birth_day[k_pat], "mdy"),
        "age": lambda: _str(age),
        "sex_word": lambda: pa.array(np.where(fem, "female", "male")),
        "title": lambda: pa.array(np.where(fem, "Ms.", "Mr.")),
        "pronoun": lambda: pa.array(np.where(fem, "She", "He")),
        "pronoun_lc": lambda: pa.array(np.where(fem, "she", "he")),
        **{
            k: (lambda k=k: p(k))
            for k in (
                "street",
                "city",
                "state",
                "zip",
                "phone",
                "phone_dash",
                "email",
                "ssn",
                "ssn_last4",
                "workplace",
                "relation",
                "ec_name",
                "ec_first",
            )
        },
        "visit_mdy": lambda: format_days(visit_day, "mdy"),
        "visit_iso": lambda: format_days(visit_day, "iso"),
        "visit_dmy": lambda: format_days(visit_day, "dmy"),
        "visit_long": lambda: _long_date(visit_day),
        "admit_time": lambda: _clock(admit[k_enc]),
        "discharge_mdy": lambda: _with_nulls(
            format_days(discharge[k_enc] // _DAY, "mdy"), still_here[k_enc]
        ),
        "onset_mdy": lambda: format_days(visit_day - draws["days"], "mdy"),
        "onset_long": lambda: _long_date(visit_day - draws["days"]),
        "prev_mdy": lambda: format_days(visit_day - draws["prev"], "mdy"),
        "prev_year": lambda: format_days(visit_day - 365 * draws["prev"] // 40, "year"),
        "lab_mdy": lambda: format_days(visit_day - draws["lab_back"], "mdy"),
        "followup_mdy": lambda: format_days(followup_day, "mdy"),
        "followup_long": lambda: _long_date(followup_day),
        "note_mdy": lambda: format_days(note_day, "mdy"),
        "note_iso": lambda: format_days(note_day, "iso"),
        "note_time": lambda: _clock(k_ts),
        "dx_code": lambda: _take(v.icd_code, dx[k_enc]),
        "dx_desc": lambda: _take(v.icd_desc, dx[k_enc]),
        "account": lambda: account.take(enc),
        "dept": lambda: department.take(enc),
        "complaint": lambda: _take(v.complaints, draws["complaint"]),
        "eponym": lambda: _take(v.eponyms, draws["eponym"]),
        "eponym2": lambda: _take(v.eponyms, (draws["eponym"] + draws["eponym2"]) % len(v.eponyms)),
        "pmh1": lambda: _take(v.history_terms, draws["pmh1"]),
        "pmh2": lambda: _take(
            v.history_terms, (draws["pmh1"] + draws["pmh2"]) % len(v.history_terms)
        ),
        "drug": lambda: _take(v.drug_name, draws["drug"]),
        "days": lambda: _str(draws["days"]),
        "weeks": lambda: _str(draws["weeks"]),
        "quit_years": lambda: _str(draws["quit"]),
        "father_age": lambda: _str(draws["father_age"]),
        "prov_first": lambda: _take(prov.first, k_prov),
        "prov_last": lambda: _take(prov.last, k_prov),
        "prov_specialty": lambda: _take(prov.specialty, k_prov),
        "ref_last": lambda: _take(prov.last, draws["ref"]),
        "ref_specialty": lambda: _take(prov.specialty, draws["ref"]),
        "sbp": lambda: _str(draws["sbp"]),
        "dbp": lambda: _str(draws["dbp"]),
        "hr": lambda: _str(draws["hr"]),
        "temp": lambda: tenths(draws["temp"]),
        "rr": lambda: _str(draws["rr"]),
        "spo2": lambda: _str(draws["spo2"]),
        "weight_lb": lambda: _str(draws["weight"]),
        "na": lambda: _str(draws["na"]),
        "k": lambda: tenths(draws["k"]),
        "cr": lambda: tenths(draws["cr"]),
        "hgb": lambda: tenths(draws["hgb"]),
        "wbc": lambda: tenths(draws["wbc"]),
        "a1c": lambda: tenths(draws["a1c"]),
    }
    return render_notes(v.templates, FieldTable(n, builders), rng)


# --------------------------------------------------------------------------------------------
# public entry point


def _concat(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches, schema=schema).combine_chunks()
    combined = table.to_batches()
    return combined[0] if combined else pa.RecordBatch.from_pylist([], schema=schema)


def generate(
    patients: int, seed: int = 7, batch_patients: int = 50_000
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Yield ``(table, batch)`` pairs of a synthetic hospital with ``patients`` patients.

    ``providers`` comes first (one batch); then, for each batch of ``batch_patients`` patients
    (rounded up to a multiple of :data:`CHUNK_PATIENTS`), one batch each of ``patients``,
    ``encounters``, ``labs``, ``medications``, ``claims`` and ``clinical_notes``, in that order,
    so that a consumer loading them in order never sees a row before the rows it references.

    Deterministic for ``(patients, seed)`` whatever ``batch_patients`` is; memory is bounded by
    one batch. Per patient on average: 10 encounters, 40 labs, 5 medications, 10 claims and 6
    clinical notes (:data:`EXPECTED_PER_PATIENT`).
    """
    if patients < 0:
        raise ValueError("patients must be >= 0")
    if batch_patients < 1:
        raise ValueError("batch_patients must be >= 1")
    vocab = load_vocab()
    providers = _providers(vocab, provider_count(patients), seed)
    yield "providers", providers.batch
    chunks_per_batch = max(1, math.ceil(batch_patients / CHUNK_PATIENTS))
    n_chunks = math.ceil(patients / CHUNK_PATIENTS)
    ids = _NextIds()
    for first_chunk in range(0, n_chunks, chunks_per_batch):
        parts: dict[str, list[pa.RecordBatch]] = {t: [] for t in TABLES[1:]}
        for c in range(first_chunk, min(first_chunk + chunks_per_batch, n_chunks)):
            lo = c * CHUNK_PATIENTS
            hi = min(lo + CHUNK_PATIENTS, patients)
            for table, batch in _chunk(vocab, providers, seed, c, lo + 1, hi - lo, ids).items():
                parts[table].append(batch)
        for table in TABLES[1:]:
            yield table, _concat(parts[table], SCHEMAS[table])
