"""PHI redaction on the public Presidio-research synthetic set (vendored). Not a test.

Data: ``benchmarks/data/presidio/synth_dataset_v2.json`` (microsoft/presidio-research, MIT
licence, notice in ``benchmarks/data/presidio/``; 1,500 short texts, not clinical, names and
places from many countries). Scored with ``benchmarks/phi_scoring.py``: whole words, from what
``DetectorSet.redact`` RETURNS.

Which Presidio entity types are scored, as which clinipipe category, and which are not (printed
by every run; see :data:`MAPPING` and :data:`NOT_SCORED`):

* scored: PERSON->NAME, STREET_ADDRESS->ADDRESS (a value of digits only -> ZIP), GPE->CITY,
  ZIP_CODE->ZIP, DATE_TIME->DATE, AGE->AGE (only ages over 89), PHONE_NUMBER->PHONE,
  EMAIL_ADDRESS->EMAIL, US_SSN->SSN, CREDIT_CARD->ACCOUNT, IBAN_CODE->ACCOUNT,
  US_DRIVER_LICENSE->LICENSE, IP_ADDRESS->IP, DOMAIN_NAME->URL;
* neutral inside scored spans (Safe Harbor keeps them, so they count neither way): US state
  names and codes, country names, other 1-2 capital-letter region codes, and "nan" (a data
  artefact) inside STREET_ADDRESS and GPE; 4-digit years and weekday names inside DATE_TIME;
  ages of 89 or less; unit words (Apt, Suite, Unit, Box) and the connectives
  the/of/and/at/corner inside addresses; "http", "https",
  "www" inside URLs;
* not PHI, so redacting them counts against precision and as over-redaction: TITLE (job
  titles, Mr./Ms.) and NRP (nationality, religion, politics) — their spans are must-keep terms;
* neutral: ORGANIZATION (not a Safe Harbor identifier, but it may be a person's employer).

Record linkage does not apply (the texts belong to no record): the with-linkage verdicts are
"not judged", and speed is measured without linkage (its verdict, which names linkage, is "not
judged" too).

    python benchmarks/phi_eval_presidio.py [--repeat 3] [--json] [--show-leaks 20]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import phi_scoring as ps
import pyarrow as pa
from faker.providers.address.en_US import Provider as _UsAddress

from clinipipe.phi import DetectorSet

DATA = Path(__file__).parent / "data" / "presidio" / "synth_dataset_v2.json"

#: Presidio entity type -> clinipipe category (scored).
MAPPING: dict[str, str] = {
    "PERSON": "NAME",
    "STREET_ADDRESS": "ADDRESS",
    "GPE": "CITY",
    "ZIP_CODE": "ZIP",
    "DATE_TIME": "DATE",
    "AGE": "AGE",
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "US_SSN": "SSN",
    "CREDIT_CARD": "ACCOUNT",
    "IBAN_CODE": "ACCOUNT",
    "US_DRIVER_LICENSE": "LICENSE",
    "IP_ADDRESS": "IP",
    "DOMAIN_NAME": "URL",
}
#: Presidio entity type -> why it is not scored as PHI (and how it counts).
NOT_SCORED: dict[str, str] = {
    "ORGANIZATION": "neutral: not a Safe Harbor identifier, but may be a person's employer",
    "TITLE": "must-keep: job titles and Mr./Ms. are not PHI (redacting them is over-redaction)",
    "NRP": "must-keep: nationality/religion/politics is not PHI",
}

_PLACES = {
    *(s.lower() for s in _UsAddress.states),
    *(s.lower() for s in _UsAddress.countries),
    "united states",
    "usa",
    "uk",
    "nan",
}
_PLACE_RE = re.compile(
    r"(?<![^\W_])(?:"
    + "|".join(re.escape(p) for p in sorted(_PLACES, key=len, reverse=True))
    + r")(?![^\W_])",
    re.IGNORECASE,
)
_REGION_CODE = re.compile(r"(?<![^\W_])[A-Z]{1,2}(?![^\W_])")
_UNIT_WORD = re.compile(
    r"(?<![^\W_])(?:apt|suite|unit|box|ste|the|of|and|at|corner)(?![^\W_])", re.IGNORECASE
)
_YEAR = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")
_WEEKDAY = re.compile(r"(?:mon|tues|wednes|thurs|fri|satur|sun)day", re.IGNORECASE)
_URL_WORD = re.compile(r"(?<![^\W_])(?:https?|www)(?![^\W_])", re.IGNORECASE)


def _neutral_inside(pattern: re.Pattern[str], text: str, a: int, b: int) -> list[tuple[int, int]]:
    return [(a + m.start(), a + m.end()) for m in pattern.finditer(text[a:b])]


def phone_kind(value: str) -> str:
    """Kind "phone_us" for a North American number (10 digits, area code and exchange starting 2-9,
    optionally after 1, +1 or 001; extension aside), else "phone_other"."""
    main = value.split("x")[0]
    d = re.sub(r"\D", "", main)
    if len(d) == 13 and d.startswith("001"):
        d = d[3:]
    elif len(d) == 11 and d[0] == "1":
        d = d[1:]
    nanp = len(d) == 10 and d[0] in "23456789" and d[3] in "23456789"
    return "phone_us" if nanp or main.strip().startswith("+1") else "phone_other"


def load(path: Path = DATA) -> list[ps.Doc]:
    """The vendored set as scorer documents (gold, neutral and must-keep spans as described in
    the module docstring). Raises ValueError when a span's offsets do not match its value."""
    records = json.loads(path.read_text(encoding="utf-8"))
    docs: list[ps.Doc] = []
    for n, rec in enumerate(records):
        text = rec["full_text"]
        doc = ps.Doc(text)
        for sp in rec["spans"]:
            a, b, etype = sp["start_position"], sp["end_position"], sp["entity_type"]
            value = text[a:b]
            if value != sp["entity_value"]:
                raise ValueError(f"{path}: record {n}: span {a}-{b} is not its value")
            if etype in ("TITLE", "NRP"):
                doc.keep.append(ps.Span(a, b, etype))
                continue
            if etype not in MAPPING:
                doc.neutral.append((a, b))
                continue
            cat, kind = MAPPING[etype], etype
            if etype == "AGE":
                if not (value.strip().isdigit() and int(value) > 89):
                    doc.neutral.append((a, b))
                    continue
                kind = "AGE_over_89"
            elif etype == "STREET_ADDRESS" and value.strip().isdigit():
                cat, kind = "ZIP", "STREET_ADDRESS_digits_only"
            elif etype == "PHONE_NUMBER":
                kind = phone_kind(value)
            if etype in ("STREET_ADDRESS", "GPE"):
                doc.neutral += _neutral_inside(_PLACE_RE, text, a, b)
                doc.neutral += _neutral_inside(_REGION_CODE, text, a, b)
                doc.neutral += _neutral_inside(_UNIT_WORD, text, a, b)
            elif etype == "DATE_TIME":
                doc.neutral += _neutral_inside(_YEAR, text, a, b)
                doc.neutral += _neutral_inside(_WEEKDAY, text, a, b)
            elif etype == "DOMAIN_NAME":
                doc.neutral += _neutral_inside(_URL_WORD, text, a, b)
            doc.gold.append(ps.Span(a, b, cat, kind))
        docs.append(doc)
    return docs


def _print_types() -> None:
    print("Scored Presidio types -> clinipipe category:")
    print("  " + ", ".join(f"{k}->{v}" for k, v in MAPPING.items()))
    print("  (AGE only above 89; a STREET_ADDRESS of digits only -> ZIP; years, weekdays,")
    print("   states, countries, region codes, unit words and URL schemes are neutral)")
    print("Not scored as PHI:")
    for k, why in NOT_SCORED.items():
        print(f"  {k}: {why}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--show-leaks", type=int, default=0)
    args = parser.parse_args()
    ps.pin_one_core()

    docs = load()
    texts = pa.array([d.text for d in docs], pa.string())
    detectors = DetectorSet.load()
    detectors.redact(texts[:5])  # warm-up
    out = detectors.redact(texts).to_pylist()
    s = ps.score(docs, out, keep_leaks=args.show_leaks)
    megabytes = sum(len(d.text.encode()) for d in docs) / 1e6
    speed = ps.measure(lambda: detectors.redact(texts), megabytes, args.repeat)
    v_without = ps.verdicts(s)
    v_with = ps.verdicts(None)
    phone_us = (s.spans_by_kind.get("phone_us", 0), s.leaked_spans_by_kind.get("phone_us", 0))

    if args.json:
        result: dict[str, Any] = {
            "corpus": "presidio-research synth_dataset_v2.json",
            "records": len(docs),
            "megabytes": megabytes,
            "scored_types": MAPPING,
            "not_scored_types": NOT_SCORED,
            "without_linkage": s.summary(),
            "with_linkage": None,
            "speed_without_linkage_mb_s": {
                "best": speed.best_mb_s,
                "median": speed.median_mb_s,
                "runs_s": speed.seconds,
                "cpu_median": speed.cpu_median_mb_s,
            },
            "verdicts": {
                "without_linkage": [v.__dict__ for v in v_without],
                "with_linkage": [v.__dict__ for v in v_with],
                "speed": ps.speed_verdict(None).__dict__,
            },
        }
        print(json.dumps(result, indent=2))
        return 0

    print(
        f"Presidio-research synth_dataset_v2.json: {len(docs)} records, "
        f"{sum(len(d.gold) for d in docs)} scored spans, {megabytes:.2f} MB"
    )
    _print_types()
    ps.print_score("Without record linkage (the only mode that applies):", s, kinds=True)
    if phone_us[0]:
        print(
            f"  US-form phones (10/11 digits or +1): {1 - phone_us[1] / phone_us[0]:.2%} of "
            f"{phone_us[0]} spans fully removed"
        )
    for leak in s.leaks:
        sp = leak.span
        ctx = docs[leak.doc].text[max(0, sp.start - 25) : sp.end + 25].replace("\n", " | ")
        print(f"  leak {sp.category:<8} {sp.kind:<22} kept {list(leak.survivors)}  …{ctx}…")
    for i, term in s.over_redacted:
        print(f"  over-redacted {term.category}: {docs[i].text[term.start : term.end]!r}")
    ps.print_verdicts("without record linkage", v_without)
    ps.print_verdicts("with record linkage (not applicable: no records)", v_with)
    print(f"\nSpeed, redact() WITHOUT linkage, one core, {args.repeat} runs: {speed.describe()}")
    print("  (the speed target names linkage: not judged here)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
