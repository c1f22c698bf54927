"""Value types of the pipeline spec: identifiers, warehouse sizes, durations, PHI classes."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer
from pydantic_core import PydanticCustomError

IDENTIFIER_MAX = 63  # PostgreSQL's NAMEDATALEN - 1; the tightest of our engines
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """`" (did you mean 'x'?)"` for the closest choice, or `""` when nothing is close."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean '{lowered[close[0]]}'?)" if close else ""


def _check_identifier(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("identifier", "expected an identifier (a string)")
    # fullmatch: `$` would also match before a trailing newline ("patients\n").
    if not _IDENTIFIER.fullmatch(value) or len(value) > IDENTIFIER_MAX:
        raise PydanticCustomError(
            "identifier",
            "'{value}' is not a plain SQL identifier: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters",
            {"value": value[:80].encode("unicode_escape").decode("ascii")},
        )
    return value


Identifier = Annotated[str, BeforeValidator(_check_identifier)]
"""A plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`). Quoted by `clinipipe.sql.quote` anyway."""


# Snowflake's standard warehouse sizes and credits per hour (reference/cost-model.md).
WAREHOUSE_CREDITS_PER_HOUR: dict[str, int] = {
    "XSMALL": 1,
    "SMALL": 2,
    "MEDIUM": 4,
    "LARGE": 8,
    "XLARGE": 16,
    "XXLARGE": 32,
    "XXXLARGE": 64,
    "X4LARGE": 128,
    "X5LARGE": 256,
    "X6LARGE": 512,
}
WAREHOUSE_SIZES = tuple(WAREHOUSE_CREDITS_PER_HOUR)
_SIZE_HINTS = {
    "XS": "XSMALL",
    "X-SMALL": "XSMALL",
    "S": "SMALL",
    "M": "MEDIUM",
    "L": "LARGE",
    "XL": "XLARGE",
    "X-LARGE": "XLARGE",
    "XXL": "XXLARGE",
    "2XL": "XXLARGE",
    "2XLARGE": "XXLARGE",
    "X2LARGE": "XXLARGE",
    "XXXL": "XXXLARGE",
    "3XL": "XXXLARGE",
    "3XLARGE": "XXXLARGE",
    "X3LARGE": "XXXLARGE",
    "4XL": "X4LARGE",
    "4XLARGE": "X4LARGE",
    "5XL": "X5LARGE",
    "5XLARGE": "X5LARGE",
    "6XL": "X6LARGE",
    "6XLARGE": "X6LARGE",
}


def _check_size(value: Any) -> str:
    text = str(value).strip().upper()
    if text in WAREHOUSE_CREDITS_PER_HOUR:
        return text
    hint = _SIZE_HINTS.get(text)
    suggestion = f" (did you mean '{hint}'?)" if hint else did_you_mean(text, WAREHOUSE_SIZES)
    raise PydanticCustomError(
        "warehouse_size",
        "unknown warehouse size '{value}'{suggestion}; sizes are {sizes}",
        {"value": str(value)[:40], "suggestion": suggestion, "sizes": ", ".join(WAREHOUSE_SIZES)},
    )


WarehouseSize = Annotated[str, BeforeValidator(_check_size)]


_DURATION = re.compile(
    r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>s|sec|secs|second|seconds|m|min|mins|minute|minutes"
    r"|h|hr|hrs|hour|hours|d|day|days)\s*$",
    re.I,
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Duration:
    """A positive duration written like `90 seconds`, `1 minute`, `2h`; or `downstream`."""

    seconds: float | None  # None means DOWNSTREAM (refresh when a consumer needs it)
    text: str

    @property
    def is_downstream(self) -> bool:
        return self.seconds is None

    def snowflake(self) -> str:
        """Snowflake's TARGET_LAG literal: `'<n> seconds|minutes|hours|days'` or `DOWNSTREAM`."""
        if self.seconds is None:
            return "DOWNSTREAM"
        s = int(self.seconds)
        for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if s % size == 0:
                return f"'{s // size} {unit}'"
        return f"'{s} seconds'"


def _parse_duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int | float):
        if value <= 0:
            raise PydanticCustomError("duration", "a duration must be positive")
        return Duration(float(value), f"{value} seconds")
    text = str(value).strip()
    if text.lower() == "downstream":
        return Duration(None, "downstream")
    match = _DURATION.match(text)
    if not match:
        raise PydanticCustomError(
            "duration",
            "'{value}' is not a duration: write e.g. '90 seconds', '1 minute', '2 hours', "
            "'1 day' or 'downstream'",
            {"value": text[:40]},
        )
    seconds = float(match["num"]) * _UNIT_SECONDS[match["unit"][0].lower()]
    if seconds <= 0:
        raise PydanticCustomError("duration", "a duration must be positive")
    return Duration(seconds, text)


DurationField = Annotated[
    Duration, BeforeValidator(_parse_duration), PlainSerializer(lambda d: d.text, return_type=str)
]


# How a source column is classified for PHI handling. An unlisted column is `none`: it has no PHI
# class, the scanners look for leaks in it, and a research extract fails closed on it (text
# scrubbed, dates to the year, other types dropped) unless the table's `release` list names it.
# Categories follow the 18 Safe Harbor identifiers (reference/deid-rules.md).
PHI_CLASSES: tuple[str, ...] = (
    "none",
    "name",
    "street_address",
    "city",
    "county",
    "zip",
    "birth_date",
    "date",
    "age",
    "phone",
    "fax",
    "email",
    "ssn",
    "mrn",
    "health_plan_id",
    "account_number",
    "license_number",
    "vehicle_id",
    "device_id",
    "url",
    "ip_address",
    "biometric",
    "photo",
    "unique_id",
    "free_text",
)


#: Safe Harbor identifiers (45 CFR 164.514(b)(2)) as detection categories. Full-face photographs
#: cannot appear in text and have no category; geographic units are split into street address,
#: city (and county, precinct...) and ZIP because a Limited Data Set keeps the last two.
PHI_CATEGORIES: tuple[str, ...] = (
    "NAME",
    "ADDRESS",
    "CITY",
    "ZIP",
    "DATE",
    "AGE",
    "PHONE",
    "FAX",
    "EMAIL",
    "SSN",
    "MRN",
    "HEALTH_PLAN",
    "ACCOUNT",
    "LICENSE",
    "VEHICLE",
    "DEVICE",
    "URL",
    "IP",
    "BIOMETRIC",
    "OTHER_ID",
)

#: Names of the validators a custom detector may name (`phi.detectors[].validator`); the
#: functions are in `clinipipe.phi.validators`, which checks it implements exactly these.
PHI_VALIDATOR_NAMES: frozenset[str] = frozenset(
    {
        "any_digit",
        "code_token",
        "credential_name",
        "date",
        "date_compact",
        "dea",
        "age_over_89",
        "has_digit",
        "imei",
        "ipv4",
        "ipv6",
        "luhn",
        "mbi",
        "name_token",
        "name_tokens",
        "name_words",
        "nanp_phone",
        "npi",
        "phone_shape",
        "place_name",
        "relation_name",
        "seven_digits",
        "ssn",
        "street_words",
        "vin",
    }
)


def _check_phi_class(value: Any) -> str:
    text = str(value).strip().lower()
    if text in PHI_CLASSES:
        return text
    raise PydanticCustomError(
        "phi_class",
        "unknown PHI class '{value}'{suggestion}; classes are {classes}",
        {
            "value": str(value)[:40],
            "suggestion": did_you_mean(text, PHI_CLASSES),
            "classes": ", ".join(PHI_CLASSES),
        },
    )


PhiClass = Annotated[str, BeforeValidator(_check_phi_class)]
