"""PHI categories (the Safe Harbor identifiers that can appear in text or columns) and severities.

Guarantees: every spec PHI class except ``none`` and ``free_text`` maps to exactly one category;
every category is one of :data:`CATEGORIES`; :data:`LIMITED_DATASET_KEEPS` holds only categories.
"""

from __future__ import annotations

from clinipipe.spec.types import PHI_CATEGORIES as CATEGORIES
from clinipipe.spec.types import PHI_CLASSES

SEVERITIES: tuple[str, ...] = ("low", "medium", "high")

#: Spec PHI class (``clinipipe.spec.types.PHI_CLASSES``) -> detection category.
CATEGORY_OF_PHI_CLASS: dict[str, str] = {
    "name": "NAME",
    "street_address": "ADDRESS",
    "city": "CITY",
    "county": "CITY",
    "zip": "ZIP",
    "birth_date": "DATE",
    "date": "DATE",
    "age": "AGE",
    "phone": "PHONE",
    "fax": "FAX",
    "email": "EMAIL",
    "ssn": "SSN",
    "mrn": "MRN",
    "health_plan_id": "HEALTH_PLAN",
    "account_number": "ACCOUNT",
    "license_number": "LICENSE",
    "vehicle_id": "VEHICLE",
    "device_id": "DEVICE",
    "url": "URL",
    "ip_address": "IP",
    "biometric": "BIOMETRIC",
    "photo": "BIOMETRIC",
    "unique_id": "OTHER_ID",
}

#: What a Limited Data Set (45 CFR 164.514(e)(2)) may keep: dates, town or city, state, five-digit
#: ZIP and ages (the rule lists only direct identifiers to remove; everything else stays). State is
#: never detected (Safe Harbor keeps it too), so it needs no category here.
LIMITED_DATASET_KEEPS: frozenset[str] = frozenset({"DATE", "CITY", "ZIP", "AGE"})

_missing = set(PHI_CLASSES) - {"none", "free_text"} - set(CATEGORY_OF_PHI_CLASS)
if _missing or not set(CATEGORY_OF_PHI_CLASS.values()) <= set(CATEGORIES):
    raise RuntimeError(f"PHI class mapping out of date: {sorted(_missing)}")


def severity_rank(severity: str) -> int:
    """0 for low, 1 for medium, 2 for high (ValueError for anything else)."""
    return SEVERITIES.index(severity)
