"""De-identification policies: per PHI class and policy, what happens to a column.

This module decides *what* is done to each column (`plan_table`); the SQL that does it lives in
the targets (`targets/duckdb/redact.py`, `targets/snowflake/redact.py`), the order of work in
`pipeline/redact.py`.

Policies (`POLICIES`):

* ``safe_harbor`` — HIPAA Safe Harbor, 45 CFR 164.514(b)(2). Names, contact details, street
  addresses, cities and SSNs are dropped; identifying numbers (MRN, health plan, account,
  license, vehicle, device and other unique ids) become keyed pseudonyms; ZIP -> first three
  digits (restricted prefixes and malformed ZIPs -> ``000``); every date -> its year; ages over
  89 -> 90; a birth date -> its year, suppressed (NULL) when the person is over 89 at the as-of
  date, plus ``<column>_age``: the age at the as-of date with 90 meaning "90 or older".
* ``limited_dataset`` — a Limited Data Set, 45 CFR 164.514(e): the direct identifiers of
  164.514(e)(2) are removed (dropped, or keyed pseudonyms for the identifying numbers) while
  dates, city, county, state, the five-digit ZIP and ages stay. Its use **requires a data use
  agreement**; every table built is labelled so.
* ``shifted`` — **not Safe Harbor** (for a Limited Data Set or an Expert Determination):
  identifiers and geography as under Safe Harbor, ages capped at 90, but dates keep their day:
  each patient's dates move by one secret per-patient offset (a multiple of 7 days within
  +-364 days, never 0), in every table and inside the notes, so intervals and weekdays are
  preserved. Birth dates are shifted too and suppressed for people over 89.

Identifiers that join tables (a column named like the single-column primary key of a spec
table: patient_id, encounter_id, provider_id, ...) are not classified PHI, but an internal id
is a key back into the EHR for anyone who can query it (164.514(c) allows a re-identification
code only when it is not used for anything else). They are therefore **pseudonymized in every
policy**, consistently: the same id gives the same pseudonym in every table and every run with
the same key, so joins still work.

**Fail closed.** A column the spec neither classifies (`source.tables[].columns`) nor releases
(`source.tables[].release`) is never copied as it is, in any policy (`plan_table`):

* text is scrubbed by the PHI detectors, exactly like a ``free_text`` note (record linkage
  with the patient's own identifiers included): treatment ``text``;
* a date or timestamp becomes its year (every date of a patient's records is an identifier
  under 164.514(b)(2)(i)(C)); classify it ``date`` to get the policy's own date treatment
  (kept in a Limited Data Set, shifted under ``shifted``);
* anything else (numbers, booleans, uuids, json, arrays, times...) is dropped: a number may
  be an identifier nobody classified.

Only a column the spec releases explicitly (`release: [column, ...]`: codes, units, lab values,
counts) is copied as it is; the manifest marks it ``released``. Join keys (below) are
pseudonymized whatever the spec says. Whatever a research table ends up holding is scanned by
`clinipipe redact` itself before it calls the dataset de-identified
(`clinipipe.pipeline.redact`).

Pseudonyms are HMAC-SHA256 with a secret key read from the environment (`phi.hmac_key_env`),
over ``<namespace> 0x1F <value as text>``, hex, first 24 digits (96 bits). The namespace is
the join-key column name (``patient_id``) or the PHI class (``mrn``, ``health_plan_id``...), so
equal values of one kind link across tables while an MRN and a claim id never collide. The key
never leaves the data owner's environment: it is passed to the warehouse only for the session
(a temporary table, never in SQL text or logs) and never printed; whoever holds it can
recompute a pseudonym from a known identifier, so it must be kept like a password. Rotating it
changes every pseudonym (the next run rebuilds every table).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clinipipe.spec.model import Spec, TableSpec

POLICY_VERSION = "2"
"""Bumped whenever a treatment changes: it is part of every table's fingerprint and manifest."""

POLICIES: tuple[str, ...] = ("safe_harbor", "limited_dataset", "shifted")

MIN_KEY_LENGTH = 16
"""A shorter HMAC key could be guessed; every pseudonym would then be reversible."""

PSEUDONYM_HEX_DIGITS = 24
SHIFT_NAMESPACE = "date_shift"
SHIFT_STEPS = 52
"""Offsets are 7 * k days, k in -52..-1 and 1..52 (never 0): within +-364 days."""

AGE_CAP = 90
UNIT_SEPARATOR = "\x1f"


class Treatment(str, Enum):
    """What a column becomes in the research table."""

    KEEP = "keep"  # copied unchanged
    DROP = "drop"  # not in the research table
    PSEUDONYM = "pseudonym"  # keyed HMAC-SHA256 (24 hex digits)
    YEAR = "year"  # a date or timestamp -> its year (INTEGER)
    BIRTH_YEAR = "birth_year"  # year, NULL when over 89 at the as-of date; + <col>_age
    AGE_CAP = "age_cap"  # ages over 89 -> 90
    ZIP3 = "zip3"  # first three digits; restricted prefixes and malformed -> '000'
    ZIP5 = "zip5"  # five digits (ZIP+4 cut); malformed -> NULL
    SHIFT = "shift"  # date + the patient's offset (a multiple of 7 days)
    SHIFT_BIRTH = "shift_birth"  # shifted, NULL when over 89 at the as-of date; + <col>_age
    TEXT = "text"  # free text: detected PHI replaced by [CATEGORY] tags or surrogates


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    label: str
    safe_harbor: bool
    requires_dua: bool


POLICY_INFO: dict[str, PolicyInfo] = {
    "safe_harbor": PolicyInfo(
        "safe_harbor", "De-identified under HIPAA Safe Harbor, 45 CFR 164.514(b)(2)", True, False
    ),
    "limited_dataset": PolicyInfo(
        "limited_dataset",
        "Limited Data Set, 45 CFR 164.514(e): NOT de-identified; use requires a data use agreement",
        False,
        True,
    ),
    "shifted": PolicyInfo(
        "shifted",
        "Date-shifted, NOT Safe Harbor (dates keep their day, shifted per patient): for a "
        "Limited Data Set under a data use agreement or an Expert Determination",
        False,
        True,
    ),
}

_DIRECT = {
    # dropped in every policy: names, contact details, street addresses, SSNs, web and
    # network identifiers, biometrics and photos (164.514(b)(2) and (e)(2))
    "name": Treatment.DROP,
    "street_address": Treatment.DROP,
    "phone": Treatment.DROP,
    "fax": Treatment.DROP,
    "email": Treatment.DROP,
    "ssn": Treatment.DROP,
    "url": Treatment.DROP,
    "ip_address": Treatment.DROP,
    "biometric": Treatment.DROP,
    "photo": Treatment.DROP,
    # identifying numbers become keyed pseudonyms (they still group rows: claims of one member)
    "mrn": Treatment.PSEUDONYM,
    "health_plan_id": Treatment.PSEUDONYM,
    "account_number": Treatment.PSEUDONYM,
    "license_number": Treatment.PSEUDONYM,
    "vehicle_id": Treatment.PSEUDONYM,
    "device_id": Treatment.PSEUDONYM,
    "unique_id": Treatment.PSEUDONYM,
    "free_text": Treatment.TEXT,
}

TREATMENTS: dict[str, dict[str, Treatment]] = {
    "safe_harbor": {
        **_DIRECT,
        "city": Treatment.DROP,
        "county": Treatment.DROP,
        "zip": Treatment.ZIP3,
        "birth_date": Treatment.BIRTH_YEAR,
        "date": Treatment.YEAR,
        "age": Treatment.AGE_CAP,
    },
    "limited_dataset": {
        **_DIRECT,
        "city": Treatment.KEEP,
        "county": Treatment.KEEP,
        "zip": Treatment.ZIP5,
        "birth_date": Treatment.KEEP,
        "date": Treatment.KEEP,
        "age": Treatment.KEEP,
    },
    "shifted": {
        **_DIRECT,
        "city": Treatment.DROP,
        "county": Treatment.DROP,
        "zip": Treatment.ZIP3,
        "birth_date": Treatment.SHIFT_BIRTH,
        "date": Treatment.SHIFT,
        "age": Treatment.AGE_CAP,
    },
}
"""Policy -> PHI class (`clinipipe.spec.types.PHI_CLASSES`) -> treatment. Class ``none`` (an
unclassified column) has no entry: its treatment depends on its type and on `release`
(`unclassified_treatment`)."""

NEEDS_AS_OF = frozenset({Treatment.BIRTH_YEAR, Treatment.SHIFT_BIRTH})
NEEDS_PATIENT = frozenset({Treatment.SHIFT, Treatment.SHIFT_BIRTH})


def text_keeps(policy: str) -> frozenset[str]:
    """Detection categories left in notes: a Limited Data Set keeps dates, cities, ZIPs and
    ages; `shifted` keeps dates (then shifts them); Safe Harbor keeps nothing."""
    from clinipipe.phi import LIMITED_DATASET_KEEPS

    if policy == "limited_dataset":
        return frozenset(LIMITED_DATASET_KEEPS)
    if policy == "shifted":
        return frozenset({"DATE"})
    return frozenset()


# --- the key -------------------------------------------------------------------------------------


class RedactionKeyError(Exception):
    """The HMAC key is missing or too short; the message names the variable, never the key."""


class RedactionKey:
    """The secret of keyed pseudonyms and date shifts. Never printed (`repr` hides it)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "RedactionKey(****)"

    @classmethod
    def from_environment(cls, variable: str, env: Mapping[str, str] | None = None) -> RedactionKey:
        """Read the key from `variable` (the environment, or `env`, e.g. `.env` overlaid)."""
        value = (env if env is not None else os.environ).get(variable, "")
        if not value:
            raise RedactionKeyError(
                f"set {variable} (in the environment or .env next to the spec) to a long random "
                "secret: keyed pseudonyms (HMAC-SHA256) need it, and a plain hash is not allowed"
            )
        if len(value) < MIN_KEY_LENGTH:
            raise RedactionKeyError(
                f"{variable} is shorter than {MIN_KEY_LENGTH} characters: pseudonyms made with a "
                "short key can be reversed by guessing it; use a long random secret"
            )
        return cls(value.encode())

    @property
    def raw(self) -> bytes:
        return self._key

    def pads(self) -> tuple[bytes, bytes]:
        """HMAC-SHA256's inner and outer padded keys (RFC 2104), so that a warehouse with only
        SHA-256 computes HMAC as sha256(opad || sha256(ipad || message))."""
        key = self._key if len(self._key) <= 64 else hashlib.sha256(self._key).digest()
        key = key.ljust(64, b"\0")
        return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)

    @property
    def key_id(self) -> str:
        """An identifier of the key (HMAC of a constant): tells runs with different keys apart
        without revealing anything about the key."""
        return hmac.new(self._key, b"clinipipe key id", hashlib.sha256).hexdigest()[:16]

    def pseudonym(self, value: object, namespace: str) -> str | None:
        """The pseudonym the warehouse computes for `value` (reference implementation)."""
        if value is None:
            return None
        message = f"{namespace}{UNIT_SEPARATOR}{value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_DIGITS]

    def shift_days(self, patient: object) -> int | None:
        """The patient's date offset in days (reference implementation of the SQL)."""
        digest = self.pseudonym(patient, SHIFT_NAMESPACE)
        return None if digest is None else shift_from_hex(digest[:8])


def shift_from_hex(prefix: str) -> int:
    """7 * k with k in -52..-1, 1..52, from the first 8 hex digits of the shift pseudonym."""
    k = int(prefix, 16) % (2 * SHIFT_STEPS)
    return 7 * (k - SHIFT_STEPS if k < SHIFT_STEPS else k - SHIFT_STEPS + 1)


# --- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnPlan:
    """One raw column and what it becomes. `namespace`: of a pseudonym. `data_type`: the raw
    column's type as the target reports it. `released`: the spec releases it as it is;
    `unclassified`: neither classified, released nor a join key, so treated fail-closed (text
    scrubbed, dates to the year, other types dropped)."""

    name: str
    phi_class: str
    treatment: Treatment
    data_type: str
    namespace: str | None = None
    join_key: bool = False
    date_by_type: bool = False
    released: bool = False
    unclassified: bool = False

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "column": self.name,
            "class": self.phi_class,
            "treatment": self.treatment.value,
        }
        if self.released:
            out["released"] = True
        if self.unclassified:
            out["unclassified"] = True
        if self.join_key:
            out["join_key"] = True
        if self.date_by_type:
            out["date_by_type"] = True
        if self.treatment in NEEDS_AS_OF:
            out["adds"] = f"{self.name}_age"
        return out


@dataclass(frozen=True)
class TablePlan:
    """What one research table is built from. `patient_key`: the column of this table holding
    the patient's id (for date shifts and the notes' record linkage), if any."""

    name: str
    policy: str
    columns: tuple[ColumnPlan, ...]
    patient_key: str | None
    notes: tuple[str, ...] = field(default=())
    primary_key: tuple[str, ...] = field(default=())

    @property
    def output(self) -> tuple[ColumnPlan, ...]:
        """The columns the research table holds, in raw order (dropped ones left out)."""
        return tuple(c for c in self.columns if c.treatment is not Treatment.DROP)

    @property
    def needs_as_of(self) -> bool:
        return any(c.treatment in NEEDS_AS_OF for c in self.columns)

    @property
    def needs_key(self) -> bool:
        return any(
            c.treatment in (Treatment.PSEUDONYM, *NEEDS_PATIENT) for c in self.columns
        ) or bool(self.notes)


def join_keys(spec: Spec) -> dict[str, str]:
    """Column name -> table, for every single-column primary key of the spec's tables."""
    return {t.primary_key[0]: t.name for t in spec.source.tables if len(t.primary_key) == 1}


def patient_table(spec: Spec) -> TableSpec | None:
    """The table of patients: the one classifying an MRN (else a birth date) column, with a
    single-column primary key. None when the spec has none."""
    for wanted in ("mrn", "birth_date"):
        for table in spec.source.tables:
            if wanted in table.columns.values() and len(table.primary_key) == 1:
                return table
    return None


def is_text(data_type: str) -> bool:
    """True for a character type (as DuckDB or Snowflake report it); arrays of text are not."""
    t = data_type.upper()
    return t.startswith(("VARCHAR", "TEXT", "STRING", "CHAR")) and "[" not in t


def is_temporal(data_type: str) -> bool:
    """True for a date or timestamp type (as DuckDB or Snowflake report it)."""
    t = data_type.upper()
    return (t == "DATE" or t.startswith(("TIMESTAMP", "DATETIME"))) and "[" not in t


def unclassified_treatment(data_type: str) -> Treatment:
    """What a column the spec neither classifies nor releases becomes, in every policy: text
    is scrubbed by the detectors, a date or timestamp becomes its year, anything else is
    dropped."""
    if is_text(data_type):
        return Treatment.TEXT
    if is_temporal(data_type):
        return Treatment.YEAR
    return Treatment.DROP


def plan_table(
    spec: Spec, table: TableSpec, policy: str, raw_columns: Sequence[tuple[str, str]]
) -> TablePlan:
    """Decide every column of `table` (as it exists in the raw schema: `raw_columns`, name and
    type) under `policy`. Fails closed:

    * a classified column gets its class's treatment under the policy (`TREATMENTS`);
    * a join key (named like the single-column primary key of a spec table) is pseudonymized;
    * a column listed in the table's `release` is copied as it is (and only such a column,
      or a class the policy keeps, such as dates in a Limited Data Set);
    * any other column is treated by its type (`unclassified_treatment`): text scrubbed like
      a note, dates to the year, anything else dropped.

    Dates of a table with no column linking it to a patient cannot be shifted per patient:
    under `shifted` they become the year."""
    treatments = TREATMENTS[policy]
    keys = join_keys(spec)
    released_names = set(table.release)
    patients = patient_table(spec)
    patient_key = patients.primary_key[0] if patients is not None else None
    names = {n for n, _ in raw_columns}
    linked = patient_key if patient_key in names else None
    columns = []
    for name, data_type in raw_columns:
        phi_class = table.columns.get(name, "none")
        namespace = None
        join_key = released = unclassified = by_type = False
        if phi_class != "none":
            treatment = treatments[phi_class]
            namespace = phi_class if treatment is Treatment.PSEUDONYM else None
        elif name in keys:
            join_key = True
            treatment, namespace = Treatment.PSEUDONYM, name
        elif name in released_names:
            released = True
            treatment = Treatment.KEEP
        else:
            unclassified = True
            treatment = unclassified_treatment(data_type)
            by_type = treatment is Treatment.YEAR
        if treatment in NEEDS_PATIENT and linked is None:
            treatment = Treatment.YEAR if treatment is Treatment.SHIFT else Treatment.BIRTH_YEAR
        columns.append(
            ColumnPlan(
                name, phi_class, treatment, data_type, namespace, join_key, by_type, released,
                unclassified,
            )
        )  # fmt: skip
    notes = tuple(c.name for c in columns if c.treatment is Treatment.TEXT)
    return TablePlan(table.name, policy, tuple(columns), linked, notes, tuple(table.primary_key))


def known_identifier_columns(spec: Spec) -> dict[str, str]:
    """The patient table's identifying columns a note is searched for (record linkage):
    column -> detection category (every classified column but dates, ages and free text)."""
    from clinipipe.phi import CATEGORY_OF_PHI_CLASS

    patients = patient_table(spec)
    if patients is None:
        return {}
    return {
        column: CATEGORY_OF_PHI_CLASS[phi_class]
        for column, phi_class in patients.columns.items()
        if phi_class not in ("none", "free_text", "date", "birth_date", "age")
    }
