"""Snowflake's own classifier (SYSTEM$CLASSIFY) merged into clinipipe's findings.

`SYSTEM$CLASSIFY` / `SYSTEM$GET_CLASSIFICATION_RESULT` return, per column, a recommended
SEMANTIC_CATEGORY and PRIVACY_CATEGORY (IDENTIFIER, QUASI_IDENTIFIER, SENSITIVE). A column the
spec does not classify as PHI that Snowflake recognises as a Safe Harbor identifier is a leak at
column level: one `Finding` with row key ``*`` and no offsets. Snowflake has no medical-record
-number category; clinipipe's own detectors cover MRNs.

Two result shapes are read: the current one (``{"classification_result": {COL: {"recommendation":
{...}, "alternates": [...], "valid_value_ratio": r}}}``) and the older EXTRACT_SEMANTIC_CATEGORIES
one (``{COL: {"semantic_category": ..., "privacy_category": ..., "extra_info": {"probability":
p}}}``). Guarantee: a finding built here carries category names and figures only, never a value
(classification results hold none).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from clinipipe.phi.scan import Finding

DETECTOR = "snowflake:SYSTEM$CLASSIFY"

SEMANTIC_TO_CATEGORY: dict[str, str] = {
    "NAME": "NAME",
    "EMAIL": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "US_SSN": "SSN",
    "NATIONAL_IDENTIFIER": "SSN",
    "DATE_OF_BIRTH": "DATE",
    "AGE": "AGE",
    "STREET_ADDRESS": "ADDRESS",
    "LAT_LONG": "ADDRESS",
    "LATITUDE": "ADDRESS",
    "LONGITUDE": "ADDRESS",
    "CITY": "CITY",
    "COUNTY": "CITY",
    "POSTAL_CODE": "ZIP",
    "US_POSTAL_CODE": "ZIP",
    "IP_ADDRESS": "IP",
    "URL": "URL",
    "PAYMENT_CARD": "ACCOUNT",
    "BANK_ACCOUNT": "ACCOUNT",
    "IBAN": "ACCOUNT",
    "DRIVERS_LICENSE": "LICENSE",
    "PASSPORT": "LICENSE",
    "TAX_IDENTIFIER": "OTHER_ID",
    "VIN": "VEHICLE",
    "IMEI": "DEVICE",
    "MEDICARE_NUMBER": "HEALTH_PLAN",
    "NATIONAL_HEALTH_NUMBER": "HEALTH_PLAN",
}
"""Snowflake semantic categories that are Safe Harbor identifiers. Others (GENDER, US_STATE,
COUNTRY, OCCUPATION, SALARY, YEAR_OF_BIRTH, ...) are not identifiers under Safe Harbor and are
not findings, unless Snowflake calls them an IDENTIFIER (then OTHER_ID)."""

PRIVACY_SEVERITY = {"IDENTIFIER": "high", "QUASI_IDENTIFIER": "medium", "SENSITIVE": "low"}
CONFIDENCE = {"HIGH": 0.9, "MEDIUM": 0.6, "LOW": 0.3}


class ClassificationResultError(ValueError):
    """The classification result is not JSON of a known shape."""


def parse_result(result: str | Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Column (upper case) -> {semantic_category, privacy_category, confidence, coverage}, for
    each column with a recommendation, from either result shape."""
    if result is None or result == "":
        return {}
    data: Any = result
    if isinstance(result, str):
        try:
            data = json.loads(result)
        except json.JSONDecodeError:
            raise ClassificationResultError("the classification result is not JSON") from None
    if not isinstance(data, Mapping):
        raise ClassificationResultError("the classification result is not a JSON object")
    columns = data.get("classification_result", data)
    if not isinstance(columns, Mapping):
        raise ClassificationResultError("classification_result is not a JSON object")
    parsed: dict[str, dict[str, Any]] = {}
    for column, entry in columns.items():
        if not isinstance(entry, Mapping):
            continue
        if isinstance(entry.get("recommendation"), Mapping):
            rec = entry["recommendation"]
            confidence = CONFIDENCE.get(str(rec.get("confidence", "")).upper(), 0.5)
            coverage = rec.get("coverage")
        elif "semantic_category" in entry:  # EXTRACT_SEMANTIC_CATEGORIES
            rec = entry
            extra = entry.get("extra_info") or {}
            try:
                confidence = float(extra.get("probability", 0.5))
            except (TypeError, ValueError):
                confidence = 0.5
            coverage = None
        else:
            continue
        semantic = str(rec.get("semantic_category") or "").upper()
        privacy = str(rec.get("privacy_category") or "").upper().replace("-", "_")
        if not semantic:
            continue
        parsed[str(column).upper()] = {
            "semantic_category": semantic,
            "privacy_category": privacy,
            "confidence": confidence,
            "coverage": coverage,
        }
    return parsed


def classification_findings(
    schema: str,
    table: str,
    result: str | Mapping[str, Any] | None,
    *,
    classified: Iterable[str] = (),
) -> list[Finding]:
    """Findings for the columns of `schema.table` that Snowflake classifies as a Safe Harbor
    identifier and the spec does not classify as PHI (`classified`: column names, any case).
    Column names come back lower case (as the spec writes them)."""
    skip = {c.upper() for c in classified}
    findings = []
    for column, rec in sorted(parse_result(result).items()):
        if column in skip:
            continue
        semantic, privacy = rec["semantic_category"], rec["privacy_category"]
        category = SEMANTIC_TO_CATEGORY.get(semantic)
        if category is None:
            if privacy != "IDENTIFIER":
                continue
            category = "OTHER_ID"
        severity = PRIVACY_SEVERITY.get(privacy, "medium")
        if category in ("SSN", "NAME", "EMAIL", "PHONE", "ADDRESS", "HEALTH_PLAN"):
            severity = "high"  # a direct identifier, whatever Snowflake's privacy category
        coverage = rec["coverage"]
        cover = f", coverage {float(coverage):.0%}" if isinstance(coverage, (int, float)) else ""
        note = (
            f"column classified by Snowflake as {semantic} "
            f"({privacy or 'no privacy category'}{cover})"
        )
        findings.append(
            Finding(
                schema, table, column.lower(), "*", category, severity,
                float(rec["confidence"]), DETECTOR, note, None, None, "classify",
            )
        )  # fmt: skip
    return findings
