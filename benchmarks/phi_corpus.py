"""A labelled evaluation corpus of synthetic clinical notes, and the scoring of a detector set.

``generate_corpus(n, seed)`` writes ``n`` notes in six styles (discharge summary, nursing note,
radiology report, patient-portal message, telephone encounter, and clinic notes written from
another author's templates: ``clinipipe/synth/data/note_templates.txt``), and records
the exact character span and category of every PHI value it puts in. Each note also carries its
patient's structured identifiers (``known``) for record linkage, in the spelling a database holds
them (phone digits, ISO birth date, "Last" and "First" in separate columns) rather than the note's.

Independence: names, streets, companies, fake cities, e-mails, VINs and IPs come from Faker
(``en_US``, offline), not from the detector's census lists; real city names come from
``clinipipe/synth/data/cities.txt``. Faker's own lists are partly census-derived too, so the
name recall measured here is an upper bound for names absent from any list (stated in the
benchmark). Hard cases are planted on purpose: names that are words (April, Will, Rose, Hope,
Dean), patients named like eponyms (Parkinson, Foley), eponyms that are not names, dates without
a year and "on the 4th", a quarter of the portal messages typed all in lower case, ages over 89
next to ages under 90, many phone spellings, addresses over two lines, relatives' and
employers' names, and clinical numbers that look like PHI (BP 120/80, ICD codes, doses, times).

Deterministic for ``(n, seed)`` and a given Faker version.

Scoring (:func:`score`) is character-level over letters and digits (punctuation and spaces do
not count, so "Smith, John" vs "Smith" + "John" makes no difference): a labelled character is
recalled when any detected span covers it (redaction removes it whatever the category); a
detected character is correct when it lies in any labelled span. Per category, recall uses the
labelled category and precision the detected category. A note *leaks* when any labelled
character survives redaction.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa

from clinipipe.phi.categories import CATEGORIES
from clinipipe.phi.validators import MONTH_NAMES, luhn

__all__ = ["STYLES", "Corpus", "Score", "generate_corpus", "score"]

STYLES: tuple[str, ...] = ("discharge", "nursing", "radiology", "portal", "telephone", "clinic")

KNOWN_CATEGORIES: dict[str, str] = {
    "first_name": "NAME",
    "last_name": "NAME",
    "mrn": "MRN",
    "phone": "PHONE",
    "street": "ADDRESS",
    "city": "CITY",
    "zip": "ZIP",
    "birth_date": "DATE",
    "employer": "NAME",
    "emergency_contact": "NAME",
    "email": "EMAIL",
    "ssn": "SSN",
}

# Templates: {field} is filled per note; a field's category (or None) is in _FIELDS below.
# "|" separates alternatives of one section; a section is skipped with its probability.
_TEMPLATES: dict[str, list[tuple[float, list[str]]]] = {
    "discharge": [
        (
            1.0,
            [
                "DISCHARGE SUMMARY\nPatient: {last}, {first}    MRN: {mrn_digits}\n"
                "DOB: {dob_mdy}    Admitted: {admit_mdy}    Discharged: {discharge_mdy}\n",
                "Discharge Summary - {first} {last} ({mrn_token})\nAdmission date: {admit_long}"
                "\nDischarge date: {discharge_long}\n",
                "DISCHARGE SUMMARY\nName: {first} {middle}. {last}\nMedical record number: "
                "{mrn_digits}\nDate of birth: {dob_iso}\nAttending: Dr. {prov_last}\n",
                "Hospital Course Summary for {title} {last}\nMR# {mrn_digits} | Acct #"
                "{account_token}\nAdmit {admit_dmy} / Discharge {discharge_dmy}\n",
            ],
        ),
        (
            1.0,
            [
                "HPI: {title} {last} is a {age} yo {sex} with {pmh1} and {pmh2} admitted on "
                "{admit_mdy} with {complaint}. {eponym}.\n",
                "History: {age}-year-old {sex} brought in by {relation} {rel_first} {last} for "
                "{complaint}. {eponym}. Past history of {pmh1}.\n",
                "The patient is a {old_age}-year-old {sex} from {city_real}, {state}, who "
                "presented on {admit_noyear} with {complaint}.\n",
                "{first} is a {age} y/o {sex} with {pmh1} who was admitted {admit_long} after "
                "a fall at home. {eponym}.\n",
            ],
        ),
        (
            0.8,
            [
                "Hospital course: treated with {drug}; BP {bp}, HR {hr}. Seen by Dr. "
                "{cons_first} {cons_last} ({specialty}) on {mid_mdy}. {eponym2}.\n",
                "Course: {complaint} improved on {drug}. Cardiology (Dr. {cons_last}) "
                "recommended {eponym2}. Labs on {mid_iso}: Hgb {hgb}, Cr {cr}.\n",
                "Course complicated by {pmh2} on the {mid_ord}; resolved with {drug}. "
                "Repeat labs {mid_slash_noyear} unremarkable.\n",
            ],
        ),
        (
            0.7,
            [
                "Social: lives with {relation} {rel_first} at {street}, {city}, {state} {zip}. "
                "Works at {employer}.\n",
                "Social history: retired from {employer}; lives alone at\n{street}\n{city}, "
                "{state} {zip}.\nDaughter {hard_first} visits daily.\n",
                "SH: employed by {employer} as a driver; resides in {city}. Never smoker.\n",
                "Home address: {street_unit_2line}\n{city}, {state} {zip}. Emergency contact "
                "{ec_first} {ec_last} ({relation}) {phone_fmt}.\n",
            ],
        ),
        (
            0.5,
            [
                "Insurance: {payer} member ID {plan_id}. SSN {ssn} on file.\n",
                "Coverage: Medicare MBI {mbi}; secondary {payer}, policy # {plan_id}.\n",
                "Billing account {account_num}; guarantor {ec_first} {ec_last}.\n",
            ],
        ),
        (
            1.0,
            [
                "Discharge plan: follow up with Dr. {prov_last} on {followup_mdy}; call "
                "{clinic_phone} with questions. {eponym}.\n",
                "Disposition: home with {relation}. F/u {followup_long} with PCP Dr. "
                "{prov_first} {prov_last}. Fax summary to {fax_fmt}.\n",
                "Follow-up: {followup_noyear} in clinic. Patient may reach the nurse line at "
                "{phone_fmt}. Records sent to {email}.\n",
            ],
        ),
        (
            1.0,
            [
                "Electronically signed: {prov_first} {prov_last}, MD (NPI {npi}) {sign_mdy} "
                "{time}\n",
                "Dictated by Dr. {prov_last}. D: {sign_mdy} T: {sign_mdy}\n",
                "{prov_last}, {prov_first} MD, DEA {dea}\n",
            ],
        ),
    ],
    "nursing": [
        (
            1.0,
            [
                "NURSING NOTE {note_mdy} {time}\nPt: {first} {last}, MRN {mrn_digits}, Rm {room}\n",
                "Nursing shift note - {note_long}\n{last}, {first} ({mrn_token}) DOB {dob_mdy}\n",
                "RN note for {title} {last} (age {age}), {note_iso}\n",
            ],
        ),
        (
            1.0,
            [
                "Pt resting comfortably. VS: BP {bp}, HR {hr}, SpO2 {spo2}% RA. {eponym}. "
                "Pain 3/10.\n",
                "Pt ambulated in hall with walker. Voiding without difficulty. {eponym}. Will "
                "continue to monitor.\n",
                "Pt {first} reports {complaint}; {drug} given at {time}. Hope is that pain "
                "improves overnight.\n",
            ],
        ),
        (
            0.7,
            [
                "Visitors: {relation} {rel_first} {rel_last} and {relation2} {hard_first} at "
                "bedside.\n",
                "Spoke with {relation} {ec_first} at {phone_fmt} to update on plan of care.\n",
                "Pt's {relation} {hard_first} called at {time} and asked about discharge on "
                "{followup_noyear}.\n",
                "{relation_cap} ({ec_first} {ec_last}) requests updates by phone: {phone_fmt}.\n",
            ],
        ),
        (
            0.5,
            [
                "Insulin pump serial no. {serial}. Home pump settings verified.\n",
                "Pacemaker interrogated; device serial number {serial}, UDI {udi}.\n",
                "Pt valuables: wallet, driver's license {dl}, phone.\n",
                "Pt's car (plate {plate}) in visitor lot; {relation} to move it. VIN {vin}.\n",
            ],
        ),
        (
            1.0,
            [
                "{nurse_first} {nurse_last}, RN\n",
                "Signed: {nurse_last}, {nurse_first} RN {sign_mdy} {time}\n",
                "-- {nurse_first} {nurse_initial}. {nurse_last}, RN, Unit 6 West\n",
            ],
        ),
    ],
    "radiology": [
        (
            1.0,
            [
                "RADIOLOGY REPORT\nPatient: {last}, {first}  MRN: {mrn_digits}  DOB: {dob_mdy}\n"
                "Exam: {exam}  Date: {note_mdy}  Accession #: {accession}\n",
                "{exam}\n{first} {last} / {mrn_token} / {note_dmy}\nOrdering: Dr. "
                "{prov_first} {prov_last}\n",
                "EXAM: {exam} ({note_iso} {time})\nPATIENT: {last_uc}, {first_uc}\nAGE: "
                "{age_any}  SEX: {sex_short}\n",
            ],
        ),
        (
            1.0,
            [
                "CLINICAL HISTORY: {complaint}. {eponym}.\n",
                "INDICATION: {age} yo {sex} with {complaint}; prior study {prior_mdy}.\n",
                "HISTORY: {complaint}. Comparison: {prior_long}.\n",
            ],
        ),
        (
            1.0,
            [
                "FINDINGS: No acute cardiopulmonary process. Heart size normal. {eponym2}. "
                "No pleural effusion.\n",
                "FINDINGS: 4 mm nodule in the right lower lobe, unchanged since {prior_noyear}. "
                "Swan-Ganz catheter removed. Degenerative change at L4-5.\n",
                "FINDINGS: Mild bibasilar atelectasis. Foley catheter in place. No free air. "
                "Images reviewed on workstation {ipv4}.\n",
            ],
        ),
        (
            1.0,
            [
                "IMPRESSION: No acute findings. Results called to Dr. {cons_last} at "
                "{clinic_phone} on {note_mdy} at {time}.\n",
                "IMPRESSION: Stable exam. Report faxed to {fax_fmt}.\n",
                "IMPRESSION: {eponym2}. Images at {url}.\n",
            ],
        ),
        (
            1.0,
            [
                "Read by: {prov_first} {prov_last}, MD. License {med_license}.\n",
                "Electronically signed by Dr. {prov_last} on {sign_long}.\n",
            ],
        ),
    ],
    "portal": [
        (
            1.0,
            [
                "From: {first} {last} <{email}>\nTo: Dr. {prov_last}\nSent: {note_long} "
                "{time}\nSubject: {subject}\n\n",
                "Patient message ({note_mdy})\nFrom: {first} {last} (MRN {mrn_digits})\n"
                "Subject: {subject}\n\n",
                "MyChart message from {first} {last} on {note_dmy}\n\n",
            ],
        ),
        (
            1.0,
            [
                "Hi Dr. {prov_last}, I have had {complaint} since {onset_noyear}. My "
                "{relation} {hard_first} thinks I should come in.\n",
                "Hello, this is {first}. I need a refill of {drug} before the {onset_ord}. "
                "You can reach me at {phone_fmt}.\n",
                "Dear Dr. {prov_last}, my {relation} {rel_first} {rel_last} ({rel_age} years "
                "old) needs help with {complaint}.\n",
                "Hi, my new insurance is {payer}, member ID {plan_id}. Please update my "
                "chart. My new address is {street}, {city}, {state} {zip}.\n",
            ],
        ),
        (
            0.6,
            [
                "Also, my work ({employer}) needs a note for {onset_mdy}. Their fax is "
                "{fax_fmt}.\n",
                "I uploaded the photo from my account at {url}.\n",
                "I logged in from {ip} and could not see my results from {onset_long}.\n",
                "I am enrolled in the study (study ID {study_id}) and my fingerprint ID "
                "{biometric} was not accepted at the kiosk.\n",
                "My son {hard_first} drove me; his car is a {car} (VIN {vin}).\n",
            ],
        ),
        (
            1.0,
            [
                "Thanks,\n{first} {last}\n",
                "Thank you, {first}\n{phone_fmt}\n",
                "Regards, {first} {middle}. {last}\n",
            ],
        ),
        (
            0.8,
            [
                "---\nReply from Dr. {prov_last} ({note_mdy}): Please schedule a visit. "
                "{eponym}.\n",
                "---\nStaff reply: {nurse_first} {nurse_last}, RN, left a voicemail at "
                "{phone_fmt} on {note_noyear}.\n",
            ],
        ),
    ],
    "telephone": [
        (
            1.0,
            [
                "TELEPHONE ENCOUNTER {note_mdy} {time}\nCaller: {relation} {ec_first} "
                "{ec_last}\nPatient: {first} {last}, DOB {dob_mdy}\n",
                "Phone note - {note_long}\nPt {first} {last} (MRN {mrn_digits}) called from "
                "{phone_fmt}.\n",
                "Telephone call {note_iso}: {title} {last} called back; identity verified with "
                "DOB {dob_long} and last 4 of SSN ({ssn_last4}).\n",
            ],
        ),
        (
            1.0,
            [
                "Reason: {complaint} x {days} days. Denies fever. {eponym}. Advised to take "
                "{drug}.\n",
                "Reason for call: medication question about {drug}. Pt is {old_age} years old "
                "and lives with {relation} {hard_first}.\n",
                "Caller reports pt fell on the {onset_ord} and has had {complaint} since.\n",
            ],
        ),
        (
            0.7,
            [
                "Callback number: {phone_fmt}. Alternate: {phone2_fmt}.\n",
                "Pt's employer {employer} (fax {fax_fmt}) needs a return-to-work letter.\n",
                "Pharmacy: {pharmacy} at {street2}, {city2}, {state} {zip2}.\n",
                "Pt asked that results be sent to {email}.\n",
            ],
        ),
        (
            1.0,
            [
                "Plan: appointment {followup_mdy} with Dr. {prov_last}. {nurse_first} "
                "{nurse_last}, RN\n",
                "Plan: RTC {followup_noyear}. Routed to Dr. {prov_first} {prov_last}.\n",
            ],
        ),
    ],
}


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


_FIELDS: dict[str, str | None] = {
    "first": "NAME",
    "last": "NAME",
    "first_uc": "NAME",
    "last_uc": "NAME",
    "middle": "NAME",
    "rel_first": "NAME",
    "rel_last": "NAME",
    "hard_first": "NAME",
    "ec_first": "NAME",
    "ec_last": "NAME",
    "prov_first": "NAME",
    "prov_last": "NAME",
    "cons_first": "NAME",
    "cons_last": "NAME",
    "nurse_first": "NAME",
    "nurse_last": "NAME",
    "nurse_initial": "NAME",
    "employer": "NAME",
    "pharmacy": None,
    "mrn_digits": "MRN",
    "mrn_token": "MRN",
    "account_token": "ACCOUNT",
    "account_num": "ACCOUNT",
    "accession": "OTHER_ID",
    "study_id": "OTHER_ID",
    "biometric": "BIOMETRIC",
    "plan_id": "HEALTH_PLAN",
    "mbi": "HEALTH_PLAN",
    "ssn": "SSN",
    "ssn_last4": "SSN",
    "npi": "LICENSE",
    "dea": "LICENSE",
    "med_license": "LICENSE",
    "dl": "LICENSE",
    "vin": "VEHICLE",
    "plate": "VEHICLE",
    "serial": "DEVICE",
    "udi": "DEVICE",
    "url": "URL",
    "ip": "IP",
    "ipv4": "IP",
    "email": "EMAIL",
    "phone_fmt": "PHONE",
    "phone2_fmt": "PHONE",
    "clinic_phone": "PHONE",
    "fax_fmt": "FAX",
    "street": "ADDRESS",
    "street2": "ADDRESS",
    "street_unit_2line": "ADDRESS",
    "city": "CITY",
    "city2": "CITY",
    "city_real": "CITY",
    "zip": "ZIP",
    "zip2": "ZIP",
    "old_age": "AGE",
    "rel_age": None,  # filled as AGE or not depending on the value (see _age_field)
    "age_any": None,
    # fields of clinipipe/synth/data/note_templates.txt (the "clinic" style)
    "ec_name": "NAME",
    "workplace": "NAME",
    "ref_last": "NAME",
    "phone": "PHONE",
    "phone_dash": "PHONE",
    "mrn": "MRN",
    "account": "ACCOUNT",
}
for _f in _words(
    "dob_mdy dob_iso dob_long admit_mdy admit_long admit_dmy admit_noyear discharge_mdy "
    "discharge_long discharge_dmy mid_mdy mid_iso mid_ord mid_slash_noyear followup_mdy "
    "followup_long followup_noyear sign_mdy sign_long note_mdy note_long note_iso note_dmy "
    "note_noyear prior_mdy prior_long prior_noyear onset_noyear onset_ord onset_mdy onset_long "
    "visit_mdy visit_long visit_iso visit_dmy lab_mdy prev_mdy"
):
    _FIELDS[_f] = "DATE"

_HARD_FIRST = _words(
    "April Will Rose Hope Dean June May Mark Bill Grace Faith Joy Summer Autumn Hunter Chase "
    "Art Frank Gene Iris Ivy Lily Olive Pearl Ruby Dawn Crystal Amber Drew Glen Jack Rich "
    "Sandy Penny Holly Heather Robin Daisy Violet Jasmine Sterling Miles Wade Cliff"
)
_HARD_LAST = _words(
    "Brown White Green Black Young King Hill Wood Long Bell Rice Price Day Parkinson Foley "
    "Murphy Graves Wilson Cushing Baker Fisher Hunter Mason Cook Stone Little Rose Hope Banks "
    "Child Gay Sharp Strong Wise Love Bond Frost Snow Winter Summers Hart Field Lane"
)
_RELATIONS = _words(
    "wife husband daughter son mother father sister brother niece nephew partner friend "
    "granddaughter grandson neighbor"
)
_COMPLAINTS = _words(
    "chest pain|shortness of breath|abdominal pain|dizziness|cough|back pain|headache|"
    "fatigue|leg swelling|palpitations|nausea and vomiting|fever|syncope|dysuria|rash",
    "|",
)
_PMH = _words(
    "hypertension|type 2 diabetes|COPD|CHF with EF 35%|atrial fibrillation|CKD stage 3|"
    "hyperlipidemia|osteoarthritis|GERD|hypothyroidism|asthma|depression",
    "|",
)
_DRUGS = _words(
    "metoprolol 25 mg BID|lisinopril 10 mg daily|furosemide 40 mg IV|apixaban 5 mg BID|"
    "metformin 500 mg BID|atorvastatin 40 mg|acetaminophen 650 mg q6h|insulin glargine 20 "
    "units|ceftriaxone 1 g IV|prednisone 40 mg|albuterol 2 puffs q4h PRN",
    "|",
)
_EXAMS = _words(
    "CT chest with contrast|XR chest 2 views|MRI brain without contrast|US abdomen complete|"
    "CT abdomen/pelvis|XR left knee 3 views|CTA head and neck",
    "|",
)
_SPECIALTIES = _words("cardiology|nephrology|GI|pulmonology|neurology|ID|endocrinology", "|")
_SUBJECTS = _words("Refill request|Question about my results|Appointment|Billing question", "|")
_PAYERS = _words("Aetna|Blue Cross Blue Shield|Tufts Health Plan|Cigna|UnitedHealthcare", "|")
_PHARMACIES = _words("CVS Pharmacy|Walgreens|Rite Aid|Stop & Shop Pharmacy|Big Y Pharmacy", "|")
_MBI_LETTERS = "ACDEFGHJKMNPQRTUVWXY"


def _read_synth(name: str) -> list[str]:
    text = resources.files("clinipipe.synth.data").joinpath(name).read_text("utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _ordinal(day: int) -> str:
    return f"{day}{'th' if 11 <= day <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def _date_forms(d: date, rng: random.Random) -> dict[str, str]:
    m, dd, y = d.month, d.day, d.year
    month = MONTH_NAMES[m - 1]
    mdy = rng.choice(
        [f"{m}/{dd}/{y}", f"{m:02d}/{dd:02d}/{y}", f"{m}/{dd}/{y % 100:02d}", f"{m}-{dd}-{y}"]
    )
    long = rng.choice(
        [
            f"{month} {dd}, {y}",
            f"{month} {_ordinal(dd)}, {y}",
            f"{month[:3]} {dd}, {y}",
            f"{month[:3]}. {dd} {y}",
            f"{dd} {month} {y}",
        ]
    )
    dmy = rng.choice(
        [
            f"{dd}-{month[:3]}-{y % 100:02d}",
            f"{dd:02d}-{month[:3].upper()}-{y}",
            f"{dd} {month} {y}",
        ]
    )
    noyear = rng.choice([f"{month} {dd}", f"{month[:3]} {_ordinal(dd)}", f"{dd} {month}"])
    return {
        "mdy": mdy,
        "long": long,
        "dmy": dmy,
        "iso": d.isoformat(),
        "noyear": noyear,
        "ord": _ordinal(dd),
        "slash_noyear": f"{m}/{dd}",
    }


def _nanp(rng: random.Random) -> str:
    while True:
        area = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
        exch = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
        if area[1:] != "11" and exch[1:] != "11":
            return area + exch + f"{rng.randint(0, 9999):04d}"


def _phone_format(d: str, rng: random.Random) -> str:
    a, b, c = d[:3], d[3:6], d[6:]
    return rng.choice(
        [
            f"({a}) {b}-{c}",
            f"{a}-{b}-{c}",
            f"{a}.{b}.{c}",
            f"({a}){b}-{c}",
            f"1-{a}-{b}-{c}",
            f"+1 {a} {b} {c}",
            f"{a} {b} {c}",
            f"{a}-{b}-{c} x{rng.randint(10, 9999)}",
            f"{a}/{b}-{c}",
            f"+1 ({a}) {b}-{c}",
        ]
    )


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _npi(rng: random.Random) -> str:
    while True:
        body = f"{rng.choice('12')}{rng.randint(0, 10**8 - 1):08d}"
        for check in range(10):
            if luhn("80840" + body + str(check)):
                return body + str(check)


def _dea(rng: random.Random, last: str) -> str:
    d = [rng.randint(0, 9) for _ in range(6)]
    check = (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10
    return rng.choice("ABFM") + last[0].upper() + "".join(map(str, d)) + str(check)


def _mbi(rng: random.Random) -> str:
    def letter() -> str:
        return rng.choice(_MBI_LETTERS)

    def either() -> str:
        return rng.choice(_MBI_LETTERS + "0123456789")

    parts = [
        str(rng.randint(1, 9)),
        letter(),
        either(),
        str(rng.randint(0, 9)),
        letter(),
        either(),
        str(rng.randint(0, 9)),
        letter(),
        letter(),
        str(rng.randint(0, 9)),
        str(rng.randint(0, 9)),
    ]
    s = "".join(parts)
    return rng.choice([s, f"{s[:4]}-{s[4:7]}-{s[7:]}"])


def _draw(fake: Any, rng: random.Random, cities: list[list[str]]) -> dict[str, str]:
    """One note's field values (strings)."""
    female = rng.random() < 0.5
    first = (
        rng.choice(_HARD_FIRST)
        if rng.random() < 0.12
        else (fake.first_name_female() if female else fake.first_name_male())
    )
    last = rng.choice(_HARD_LAST) if rng.random() < 0.1 else fake.last_name()
    city_row = rng.choice(cities)
    real = rng.random() < 0.5
    city = city_row[0] if real else fake.city()
    state = city_row[1] if real else fake.state_abbr()
    zip_code = city_row[2] if real else rng.choice([fake.zipcode(), fake.zipcode_plus4()])
    street = f"{fake.building_number()} {fake.street_name()}"
    unit = fake.secondary_address() if rng.random() < 0.4 else ""
    dob = date(1925, 1, 1) + timedelta(days=rng.randint(0, 36000))
    note_day = date(2018, 1, 1) + timedelta(days=rng.randint(0, 2500))
    age = rng.randint(18, 89)
    old = rng.randint(90, 104)
    phone = _nanp(rng)
    mrn = rng.randint(0, 10**8 - 1)
    v: dict[str, str] = {
        "first": first,
        "last": last,
        "first_uc": first.upper(),
        "last_uc": last.upper(),
        "middle": rng.choice("ABCDEFGHJKLMNPRSTW"),
        "title": ("Ms." if female else "Mr.") if rng.random() < 0.8 else "Mx.",
        "sex": "female" if female else "male",
        "sex_short": "F" if female else "M",
        "age": str(age),
        "age_any": str(rng.choice([age, old])),
        "old_age": str(old),
        "rel_age": str(rng.choice([rng.randint(20, 88), rng.randint(90, 101)])),
        "relation": rng.choice(_RELATIONS),
        "relation2": rng.choice(_RELATIONS),
        "rel_first": fake.first_name(),
        "rel_last": fake.last_name(),
        "hard_first": rng.choice(_HARD_FIRST) if rng.random() < 0.6 else fake.first_name(),
        "ec_first": fake.first_name(),
        "ec_last": rng.choice([last, fake.last_name()]),
        "prov_first": fake.first_name(),
        "prov_last": fake.last_name(),
        "cons_first": fake.first_name(),
        "cons_last": fake.last_name(),
        "nurse_first": fake.first_name(),
        "nurse_last": fake.last_name(),
        "nurse_initial": rng.choice("ABCDEFGHJKLMNPRSTW"),
        "employer": fake.company(),
        "pharmacy": rng.choice(_PHARMACIES),
        "mrn_digits": f"{mrn:08d}",
        "mrn_token": f"MRN{mrn:08d}",
        "account_token": f"ACC{rng.randint(0, 10**10 - 1):010d}",
        "account_num": rng.choice(
            [
                f"{rng.randint(10**9, 10**12 - 1)}",
                f"{rng.randint(1000, 9999)}-{rng.randint(0, 99999):05d}",
            ]
        ),
        "accession": f"{rng.choice(['CT', 'XR', 'MR', 'US'])}{rng.randint(10**6, 10**8 - 1)}",
        "study_id": (
            f"{rng.choice(['ONC', 'CARD', 'NEU'])}-{rng.randint(2015, 2024)}"
            f"-{rng.randint(1, 9999):04d}"
        ),
        "biometric": f"FP-{rng.randint(10**5, 10**7 - 1)}",
        "plan_id": rng.choice(
            [
                f"{rng.choice(['XBM', 'HPH', 'THP', 'AET', 'UHC'])}{rng.randint(0, 10**9 - 1):09d}",
                f"{fake.bothify('??#######').upper()}",
                f"W{rng.randint(10**8, 10**9 - 1)}",
            ]
        ),
        "mbi": _mbi(rng),
        "ssn": _ssn(rng),
        "ssn_last4": f"{rng.randint(1, 9999):04d}",
        "npi": _npi(rng),
        "dea": "",
        "med_license": f"{rng.choice(['MD', 'RN', ''])}{rng.randint(10**4, 10**6)}",
        "dl": f"S{rng.randint(10**7, 10**8 - 1)}",
        "vin": fake.vin(),
        "plate": fake.license_plate(),
        "car": rng.choice(["2015 Honda Civic", "2019 Ford F-150", "2012 Toyota Camry"]),
        "serial": fake.bothify("??#####?#").upper(),
        "udi": f"(01){rng.randint(10**13, 10**14 - 1)}(17){rng.randint(230101, 291231)}",
        "url": rng.choice(
            [
                fake.url() + fake.uri_path(),
                f"https://{fake.user_name()}.{fake.free_email_domain()}/photos",
            ]
        ),
        "ip": rng.choice([fake.ipv4_public(), fake.ipv6()]),
        "ipv4": fake.ipv4_private(),
        "email": rng.choice(
            [fake.free_email(), f"{first.lower()}.{last.lower()}@{fake.free_email_domain()}"]
        ),
        "phone_fmt": _phone_format(phone, rng),
        "phone2_fmt": _phone_format(_nanp(rng), rng),
        "clinic_phone": _phone_format(_nanp(rng), rng),
        "fax_fmt": _phone_format(_nanp(rng), rng),
        "street": f"{street} {unit}".strip() if rng.random() < 0.5 else street,
        "street2": f"{fake.building_number()} {fake.street_name()}",
        "street_unit_2line": f"{street}\n{unit}" if unit else street,
        "city": city,
        "city2": fake.city(),
        "city_real": city_row[0],
        "state": state,
        "zip": zip_code,
        "zip2": fake.zipcode(),
        "complaint": rng.choice(_COMPLAINTS),
        "pmh1": rng.choice(_PMH),
        "pmh2": rng.choice(_PMH),
        "drug": rng.choice(_DRUGS),
        "exam": rng.choice(_EXAMS),
        "specialty": rng.choice(_SPECIALTIES),
        "subject": rng.choice(_SUBJECTS),
        "payer": rng.choice(_PAYERS),
        "bp": f"{rng.randint(95, 180)}/{rng.randint(50, 100)}",
        "hr": str(rng.randint(50, 120)),
        "spo2": str(rng.randint(88, 100)),
        "hgb": f"{rng.randint(70, 160) / 10:.1f}",
        "cr": f"{rng.randint(5, 30) / 10:.1f}",
        "room": f"{rng.randint(2, 9)}{rng.randint(10, 40)}",
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        "days": str(rng.randint(2, 14)),
    }
    v["dea"] = _dea(rng, v["prov_last"])
    v["relation_cap"] = v["relation"].capitalize()
    v["_dob"] = dob.isoformat()
    v["_street_known"] = street
    v["_phone_known"] = phone
    for prefix, day in (
        ("dob", dob),
        ("admit", note_day - timedelta(days=rng.randint(3, 12))),
        ("discharge", note_day),
        ("mid", note_day - timedelta(days=rng.randint(1, 3))),
        ("followup", note_day + timedelta(days=rng.randint(7, 60))),
        ("sign", note_day + timedelta(days=rng.randint(0, 2))),
        ("note", note_day),
        ("prior", note_day - timedelta(days=rng.randint(60, 900))),
        ("onset", note_day - timedelta(days=rng.randint(2, 20))),
    ):
        for form, text in _date_forms(day, rng).items():
            v[f"{prefix}_{form}"] = text
    return v


def _eponym_lines() -> list[str]:
    return _read_synth("eponyms.txt")


_SYNTH_SECTIONS = ("header", "hpi", "history", "social", "contact", "ros", "exam", "data", "plan")


def _clinic_templates() -> list[tuple[float, list[str]]]:
    """The synth package's note templates (another author's phrasing), as one style."""
    by_section: dict[str, list[str]] = {}
    for line in _read_synth("note_templates.txt"):
        section, text = line.split("\t", 1)
        by_section.setdefault(section, []).append(text.replace("\\n", "\n") + "\n")
    order = [*_SYNTH_SECTIONS, "sign"]
    return [
        (1.0 if sec in ("header", "hpi", "plan", "sign") else 0.7, by_section[sec]) for sec in order
    ]


def _clinic_fields(v: dict[str, str], rng: random.Random) -> None:
    """Values for the synth templates' field names, from the note's own values."""
    sbp, dbp = v["bp"].split("/")
    v.update(
        {
            "sex_word": v["sex"],
            "note_type": rng.choice(["Progress Note", "Consult Note", "Telephone Encounter"]),
            "dx_desc": rng.choice(["Essential hypertension", "Type 2 diabetes", "Low back pain"]),
            "dx_code": rng.choice(["I10", "E11.9", "M54.5"]),
            "visit_mdy": v["note_mdy"],
            "visit_long": v["note_long"],
            "visit_iso": v["note_iso"],
            "visit_dmy": v["note_dmy"],
            "lab_mdy": v["mid_mdy"],
            "prev_mdy": v["prior_mdy"],
            "workplace": v["employer"],
            "ref_last": v["cons_last"],
            "ref_specialty": v["specialty"],
            "prov_specialty": v["specialty"],
            "ec_name": f"{v['ec_first']} {v['ec_last']}",
            "dept": rng.choice(["Cardiology", "Internal Medicine", "Family Medicine"]),
            "phone": v["phone_fmt"],
            "phone_dash": v["phone2_fmt"],
            "mrn": v["mrn_token"],
            "account": v["account_token"],
            "sbp": sbp,
            "dbp": dbp,
            "temp": f"{rng.randint(970, 1010) / 10:.1f}",
            "rr": str(rng.randint(12, 24)),
            "weight_lb": str(rng.randint(100, 280)),
            "na": str(rng.randint(130, 146)),
            "k": f"{rng.randint(33, 52) / 10:.1f}",
            "wbc": f"{rng.randint(40, 150) / 10:.1f}",
            "a1c": f"{rng.randint(50, 110) / 10:.1f}",
            "weeks": str(rng.randint(2, 12)),
            "quit_years": str(rng.randint(1, 30)),
            "prev_year": str(rng.randint(2010, 2020)),
            "father_age": str(rng.randint(50, 88)),
            "pronoun": "She" if v["sex"] == "female" else "He",
            "pronoun_lc": "she" if v["sex"] == "female" else "he",
            "note_time": v["time"],
            "admit_time": v["time"],
        }
    )


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _age_category(field: str, value: str) -> str | None:
    if field in ("rel_age", "age_any"):
        return "AGE" if int(value) >= 90 else None
    return _FIELDS.get(field)


def _render(
    template: str, values: Mapping[str, str], out: list[str], spans: list[tuple[int, int, str]]
) -> None:
    pos = 0
    length = sum(len(p) for p in out)
    for m in _PLACEHOLDER.finditer(template):
        literal = template[pos : m.start()]
        out.append(literal)
        length += len(literal)
        field = m.group(1)
        value = values[field]
        category = _age_category(field, value)
        if category is not None and value:
            spans.append((length, length + len(value), category))
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(template[pos:])


@dataclass(frozen=True)
class Corpus:
    """Notes, their PHI spans and their patients' known identifiers.

    ``spans`` has columns row, start, end (character offsets, end exclusive), category; every
    span's text is exactly the value that was put in. ``known`` is aligned with ``texts``.
    """

    texts: pa.Array
    styles: pa.Array
    spans: pa.Table
    known: pa.Table
    known_categories: Mapping[str, str]

    def __len__(self) -> int:
        return len(self.texts)


def generate_corpus(n: int = 2000, seed: int = 0) -> Corpus:
    """``n`` labelled notes (see the module docstring). Deterministic for ``(n, seed)``."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    cities = [line.split("\t") for line in _read_synth("cities.txt")]
    eponyms = _eponym_lines()
    templates = {**_TEMPLATES, "clinic": _clinic_templates()}
    texts: list[str] = []
    styles: list[str] = []
    span_rows: list[tuple[int, int, int, str]] = []
    known: dict[str, list[str | None]] = {k: [] for k in KNOWN_CATEGORIES}
    for row in range(n):
        style = STYLES[row % len(STYLES)]
        values = _draw(fake, rng, cities)
        values["eponym"] = rng.choice(eponyms)
        values["eponym2"] = rng.choice(eponyms)
        _clinic_fields(values, rng)
        out: list[str] = []
        spans: list[tuple[int, int, str]] = []
        for probability, options in templates[style]:
            if rng.random() < probability:
                _render(rng.choice(options), values, out, spans)
        text = "".join(out)
        if style == "portal" and rng.random() < 0.25 and len(text.lower()) == len(text):
            text = text.lower()  # patients often type in lower case: names, cities, all of it
        texts.append(text)
        styles.append(style)
        span_rows.extend((row, s, e, c) for s, e, c in spans)
        has = rng.random
        known["first_name"].append(values["first"])
        known["last_name"].append(values["last"])
        known["mrn"].append(values["mrn_digits"] if has() < 0.5 else values["mrn_token"])
        known["phone"].append(values["_phone_known"] if has() < 0.9 else None)
        known["street"].append(values["_street_known"])
        known["city"].append(values["city"])
        known["zip"].append(values["zip"])
        known["birth_date"].append(values["_dob"])
        known["employer"].append(values["employer"] if has() < 0.8 else None)
        known["emergency_contact"].append(f"{values['ec_first']} {values['ec_last']}")
        known["email"].append(values["email"] if has() < 0.7 else None)
        known["ssn"].append(values["ssn"] if has() < 0.8 else None)
    arr = np.asarray(span_rows, dtype=object).reshape(-1, 4)
    spans_table = pa.table(
        {
            "row": pa.array(arr[:, 0].astype(np.int64), pa.int64()),
            "start": pa.array(arr[:, 1].astype(np.int64), pa.int64()),
            "end": pa.array(arr[:, 2].astype(np.int64), pa.int64()),
            "category": pa.array(arr[:, 3].tolist(), pa.string()),
        }
    )
    return Corpus(
        texts=pa.array(texts, pa.string()),
        styles=pa.array(styles, pa.string()),
        spans=spans_table,
        known=pa.table({k: pa.array(v, pa.string()) for k, v in known.items()}),
        known_categories=dict(KNOWN_CATEGORIES),
    )


@dataclass(frozen=True)
class Score:
    """Character-level quality of a detector set on a corpus (see the module docstring)."""

    recall: dict[str, float]
    precision: dict[str, float]
    labelled_chars: dict[str, int]
    overall_recall: float
    overall_precision: float
    leak_rate: float
    leaking_notes: int
    notes: int


def _alnum_mask(text: str) -> np.ndarray:
    buf = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    digit = (buf >= 48) & (buf <= 57)
    upper = (buf >= 65) & (buf <= 90)
    lower = (buf >= 97) & (buf <= 122)
    other = buf > 127
    return digit | upper | lower | other


def score(corpus: Corpus, findings: pa.Table) -> Score:
    """Score ``findings`` (the table :meth:`DetectorSet.find` returns) against the corpus labels."""
    from clinipipe.phi.text import join_texts

    joined = join_texts(corpus.texts)
    alnum = _alnum_mask(joined.text)
    size = len(joined.text)
    cat_index = {c: i + 1 for i, c in enumerate(CATEGORIES)}

    def paint(table: pa.Table) -> np.ndarray:
        labels = np.zeros(size + 1, dtype=np.int16)
        if table.num_rows == 0:
            return labels[:size]
        base = joined.starts[np.asarray(table.column("row").to_numpy(), np.int64)]
        starts = base + np.asarray(table.column("start").to_numpy(), np.int64)
        ends = base + np.asarray(table.column("end").to_numpy(), np.int64)
        cats = [cat_index[c] for c in table.column("category").to_pylist()]
        for s, e, c in zip(starts.tolist(), ends.tolist(), cats, strict=True):
            labels[s:e] = c
        return labels[:size]

    truth = paint(corpus.spans)
    pred = paint(findings)
    recall: dict[str, float] = {}
    precision: dict[str, float] = {}
    counts: dict[str, int] = {}
    for c, i in cat_index.items():
        t = (truth == i) & alnum
        p = (pred == i) & alnum
        counts[c] = int(t.sum())
        if t.any():
            recall[c] = float((t & (pred > 0)).sum() / t.sum())
        if p.any():
            precision[c] = float((p & (truth > 0)).sum() / p.sum())
    t_all, p_all = (truth > 0) & alnum, (pred > 0) & alnum
    missed = t_all & (pred == 0)
    leaking_rows = np.unique(joined.rows_of(np.flatnonzero(missed)))
    return Score(
        recall=recall,
        precision=precision,
        labelled_chars=counts,
        overall_recall=float((t_all & (pred > 0)).sum() / max(1, t_all.sum())),
        overall_precision=float((p_all & (truth > 0)).sum() / max(1, p_all.sum())),
        leak_rate=len(leaking_rows) / max(1, len(corpus)),
        leaking_notes=len(leaking_rows),
        notes=len(corpus),
    )


def misses(corpus: Corpus, findings: pa.Table, limit: int = 50) -> list[tuple[str, str, str]]:
    """Labelled spans with an uncovered letter or digit: (category, value, context). For
    developing detectors on this synthetic corpus only (it prints synthetic PHI)."""
    covered: dict[int, list[tuple[int, int]]] = {}
    for r in findings.select(["row", "start", "end"]).to_pylist():
        covered.setdefault(r["row"], []).append((r["start"], r["end"]))
    texts = corpus.texts.to_pylist()
    out: list[tuple[str, str, str]] = []
    for r in corpus.spans.to_pylist():
        text = texts[r["row"]]
        spans = covered.get(r["row"], [])
        for k in range(r["start"], r["end"]):
            if text[k].isalnum() and not any(s <= k < e for s, e in spans):
                ctx = text[max(0, r["start"] - 30) : r["end"] + 20].replace("\n", " ")
                out.append((r["category"], text[r["start"] : r["end"]], ctx))
                break
        if len(out) >= limit:
            break
    return out


def false_positives(
    corpus: Corpus, findings: pa.Table, limit: int = 50
) -> list[tuple[str, str, str, str]]:
    """Detected spans with no labelled character: (category, detector, value, context)."""
    labelled: dict[int, list[tuple[int, int]]] = {}
    for r in corpus.spans.to_pylist():
        labelled.setdefault(r["row"], []).append((r["start"], r["end"]))
    texts = corpus.texts.to_pylist()
    out: list[tuple[str, str, str, str]] = []
    for r in findings.to_pylist():
        spans = labelled.get(r["row"], [])
        if not any(s < r["end"] and r["start"] < e for s, e in spans):
            text = texts[r["row"]]
            ctx = text[max(0, r["start"] - 30) : r["end"] + 20].replace("\n", " ")
            out.append((r["category"], r["detector"], text[r["start"] : r["end"]], ctx))
        if len(out) >= limit:
            break
    return out
