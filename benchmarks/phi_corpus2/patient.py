"""One synthetic patient: the structured record (what record linkage receives, in canonical
spellings) and the people around them (who are in no structured column)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from . import values as v

#: Structured columns given to record linkage -> clinipipe category.
KNOWN_CATEGORIES: dict[str, str] = {
    "first_name": "NAME",
    "middle_name": "NAME",
    "last_name": "NAME",
    "mrn": "MRN",
    "phone": "PHONE",
    "street": "ADDRESS",
    "city": "CITY",
    "zip": "ZIP",
    "birth_date": "DATE",
    "email": "EMAIL",
    "ssn": "SSN",
    "health_plan_id": "HEALTH_PLAN",
    "account_number": "ACCOUNT",
    "drivers_license": "LICENSE",
    "emergency_contact": "NAME",
}


@dataclass(frozen=True)
class Patient:
    """The patient, their record and two people around them (a relative who is also the
    emergency contact in the record, and a second relative who is in no column)."""

    who: v.Person
    dob: dt.date
    age: int
    address: v.Address
    phone: str  # 10 digits
    mrn: str
    ssn: str  # 9 digits
    email: str
    health_plan: str
    account: str
    license: str
    contact: v.Person
    contact_relation: str
    other: v.Person
    other_relation: str

    def known_row(self) -> dict[str, str | None]:
        """The record as a hospital holds it (canonical spellings, not the note's)."""
        d = self.phone
        return {
            "first_name": self.who.first,
            "middle_name": self.who.middle or None,
            "last_name": self.who.last,
            "mrn": self.mrn,
            "phone": f"({d[:3]}) {d[3:6]}-{d[6:]}",
            "street": self.address.street,
            "city": self.address.city,
            "zip": self.address.zip,
            "birth_date": self.dob.isoformat(),
            "email": self.email,
            "ssn": f"{self.ssn[:3]}-{self.ssn[3:5]}-{self.ssn[5:]}",
            "health_plan_id": self.health_plan,
            "account_number": self.account,
            "drivers_license": self.license,
            "emergency_contact": f"{self.contact.first} {self.contact.last}",
        }


RELATIONS = ("wife", "husband", "daughter", "son", "mother", "father", "sister", "brother",
             "partner", "niece", "grandson", "neighbor", "friend", "caregiver")  # fmt: skip


def patient(rng: random.Random) -> Patient:
    who = v.person(rng)
    age = rng.randint(90, 104) if rng.random() < 0.1 else rng.randint(18, 89)
    today = dt.date(2024, 6, 1)
    dob = today - dt.timedelta(days=age * 365 + rng.randrange(300))
    # relatives: often the same family name, sometimes from another locale
    c = v.person(rng, who.locale if rng.random() < 0.6 else None)
    if rng.random() < 0.5:
        c = v.Person(c.first, c.middle, who.last, c.locale, c.sex)
    o = v.person(rng, who.locale if rng.random() < 0.5 else None)
    return Patient(
        who=who,
        dob=dob,
        age=age,
        address=v.address(rng),
        phone=v.phone_digits(rng),
        mrn=v.mrn(rng),
        ssn=v.ssn_digits(rng),
        email=v.email(rng, who),
        health_plan=v.health_plan(rng),
        account=v.account(rng),
        license=v.drivers_license(rng),
        contact=c,
        contact_relation=rng.choice(RELATIONS),
        other=o,
        other_relation=rng.choice(RELATIONS),
    )
