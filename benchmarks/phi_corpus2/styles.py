"""Note styles of the independent corpus: ED triage, discharge summary, radiology report,
telephone encounter, referral letter, patient-portal message, device-clinic check and social
work note. Each writes one note about ``pt`` into a :class:`NoteBuilder`, marking every PHI value
(:class:`P`) and every must-keep clinical term (:class:`K`)."""

from __future__ import annotations

import random
from collections.abc import Callable

from . import values as v
from .builder import K, N, NoteBuilder, P, Piece
from .clinical import keep, some
from .patient import Patient


def _dob(rng: random.Random, pt: Patient) -> P:
    fmt = rng.choice(("%m/%d/%Y", "%-m/%-d/%Y", "%Y-%m-%d", "%d-%b-%Y", "%B %-d, %Y", "%m-%d-%Y"))
    return v.date_piece(pt.dob, fmt, "dob", year_is_phi=pt.age > 89)


def _age(rng: random.Random, pt: Patient, attributive: bool = False) -> Piece:
    """The patient's age: PHI (AGE) above 89, a must-keep term otherwise; ``attributive``
    for "a {age} woman" (no "age 37")."""
    if pt.age <= 89:
        return age_ok_exact(rng, pt.age, attributive)
    forms = ("{} y/o", "{}-year-old", "{} yo", "{}yo")
    form = rng.choice(forms if attributive else (*forms, "age {}", "aged {}"))
    before, after = form.split("{}")
    return [before, P(str(pt.age), "AGE", "age_gt_89"), after]


def age_ok_exact(rng: random.Random, age: int, attributive: bool = False) -> Piece:
    forms = ("{} y/o", "{}-year-old", "{} yo")
    form = rng.choice(forms if attributive else (*forms, "age {}"))
    return K(form.format(age), "age_le_89")


def _sex(pt: Patient) -> str:
    return "female" if pt.who.sex == "F" else "male"


def _pron(pt: Patient) -> str:
    return "She" if pt.who.sex == "F" else "He"


def _mrn(rng: random.Random, pt: Patient) -> Piece:
    label = rng.choice(("MRN: ", "MRN ", "MR# ", "Med Rec #: ", "Medical record no. ", "Hosp# "))
    return [label, P(pt.mrn, "MRN", "mrn")]


def _pt_phone(rng: random.Random, pt: Patient) -> P:
    text, kind = v.phone_text(rng, pt.phone)
    return P(text, "PHONE", kind)


def _fax(rng: random.Random) -> Piece:
    label = rng.choice(("Fax: ", "fax ", "F: ", "Fax # ", "FAX:", "faxed to "))
    return [label, v.phone(rng, category="FAX")]


def _relative(rng: random.Random, pt: Patient, other: bool = False) -> Piece:
    who = pt.other if other else pt.contact
    rel = pt.other_relation if other else pt.contact_relation
    style = rng.randrange(3)
    if style == 0:
        return [f"{rel} ", v.first_last(who, "relative")]
    if style == 1:
        return [P(who.first, "NAME", "relative"), f" ({rel})"]
    return [v.first_last(who, "relative"), f", {rel},"]


def _date(rng: random.Random) -> P:
    return v.a_date(rng)


def _dt(rng: random.Random) -> P:
    return v.a_datetime(rng)


# --- styles -------------------------------------------------------------------------------------


def triage(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt(
        "ED TRIAGE NOTE\nPt: {name}    {mrn}    Arrival: {arr}\n",
        name=v.name_variants(rng, pt.who, "patient_header"),
        mrn=_mrn(rng, pt),
        arr=_dt(rng),
    )
    b.fmt("Age/Sex: {age} {sex}   DOB {dob}\n", age=_age(rng, pt), sex=_sex(pt), dob=_dob(rng, pt))
    b.fmt(
        "CC: {cc}\n",
        cc=rng.choice(
            ("chest pain x 2 days", "SOB", "fall at home", "AMS", "abd pain, N/V", "syncope")
        ),
    )
    b.fmt(
        "Arrived by EMS from {addr}. Accompanied by {rel}, phone {ph}.\n",
        addr=v.address_pieces(pt.address),
        rel=_relative(rng, pt),
        ph=v.phone(rng),
    )
    b.fmt(
        "Triage vitals: {m1}, {m2}, {m3}, {m4}. Pain 7/10. ESI level 2.\n",
        m1=keep(rng, "measure"),
        m2=keep(rng, "measure"),
        m3=keep(rng, "measure"),
        m4=keep(rng, "measure"),
    )
    b.fmt(
        "PMH: {a}, {e}. Home meds: {d}.\n",
        a=keep(rng, "abbrev"),
        e=keep(rng, "eponym"),
        d=some(rng, "drug", 3),
    )
    b.fmt(
        "Plan: {a1}, {a2}. {e}.\n",
        a1=keep(rng, "abbrev"),
        a2=keep(rng, "abbrev"),
        e=keep(rng, "eponym"),
    )
    if rng.random() < 0.5:
        b.fmt(
            "Pt states her/his PCP is {doc} at {clinic}; last seen {d}.\n",
            doc=v.clinician(rng),
            clinic=K("Mayo Clinic", "eponym")
            if rng.random() < 0.3
            else "the community health center",
            d=_date(rng),
        )
    b.fmt("Triage RN: {rn}   Callback: {cb}\n", rn=v.clinician(rng), cb=_pt_phone(rng, pt))


def discharge(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt(
        "DISCHARGE SUMMARY\n\n{name}\n{mrn}   Acct: {acct}\n",
        name=v.name_variants(rng, pt.who, "patient_header"),
        mrn=_mrn(rng, pt),
        acct=P(pt.account, "ACCOUNT", "account"),
    )
    b.fmt(
        "Admitted: {a}   Discharged: {d}\nAttending: {doc}\n\n",
        a=_date(rng),
        d=_dt(rng),
        doc=v.clinician(rng),
    )
    b.fmt(
        "HOSPITAL COURSE: {name} is a {age} {sex} with {e} and {ab} admitted for {why}. "
        "Treated with {drugs}. {m1}, {m2} on discharge.\n",
        name=v.first_last(pt.who, "patient_no_cue"),
        age=_age(rng, pt, True),
        sex=_sex(pt),
        e=keep(rng, "eponym"),
        ab=keep(rng, "abbrev"),
        why=rng.choice(("CHF exacerbation", "sepsis", "COPD flare", "hip fracture")),
        drugs=some(rng, "drug", 2, " and "),
        m1=keep(rng, "measure"),
        m2=keep(rng, "measure"),
    )
    b.fmt(
        "Procedures: {a} on {d}. {e} placed and removed.\n",
        a=keep(rng, "abbrev"),
        d=_date(rng),
        e=K("Foley catheter", "eponym"),
    )
    b.fmt(
        "DISPOSITION: home with {rel}. Address on discharge: {addr}.\n",
        rel=_relative(rng, pt),
        addr=v.address_pieces(pt.address),
    )
    if rng.random() < 0.4:
        b.fmt(
            "Will stay with {rel} at {addr} for 2 weeks.\n",
            rel=_relative(rng, pt, other=True),
            addr=v.foreign_address(rng) if rng.random() < 0.3 else v.address_pieces(v.address(rng)),
        )
    if rng.random() < 0.3:
        b.fmt("Family updates posted at {url}.\n", url=P(v.personal_url(rng, pt.who), "URL", "url"))
    b.fmt(
        "Follow-up: {doc} in 1 week ({d}); {fax}.\n",
        doc=v.clinician(rng),
        d=_date(rng),
        fax=_fax(rng),
    )
    b.fmt(
        "Discharge meds: {drugs}.\nHealth plan: {hp}\n",
        drugs=some(rng, "drug", 3),
        hp=P(pt.health_plan, "HEALTH_PLAN", "health_plan"),
    )


def radiology(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt(
        "RADIOLOGY REPORT\nReport for {name}  DOB: {dob}  {mrn}\n",
        name=v.first_last(pt.who, "patient_no_cue"),
        dob=_dob(rng, pt),
        mrn=_mrn(rng, pt),
    )
    b.fmt(
        "Accession #: {acc}   Exam date: {d}\n",
        acc=P(f"RA{v.digits(rng, 2)}-{v.digits(rng, 7)}", "OTHER_ID", "accession"),
        d=_dt(rng),
    )
    b.fmt(
        "EXAM: {ab}.\nCLINICAL HISTORY: {age} {sex}, {e}.\n",
        ab=K(rng.choice(("CT abdomen", "CT head without contrast", "PA and lateral")), "abbrev"),
        age=_age(rng, pt),
        sex=_sex(pt),
        e=keep(rng, "eponym"),
    )
    b.fmt("COMPARISON: {d}.\n", d=_date(rng))
    if rng.random() < 0.6:
        b.fmt(
            "DEVICE: {model} {kind}, serial {sn}; MR conditional per {src}.\n",
            model=N(
                rng.choice(
                    (
                        "Medtronic Azure XT DR MRI",
                        "Boston Scientific Accolade",
                        "Abbott Assurity MRI",
                        "Biotronik Edora 8 DR-T",
                    )
                )
            ),
            kind=rng.choice(("pacemaker", "dual-chamber pacemaker")),
            sn=P(v.device_serial(rng), "DEVICE", "device_serial"),
            src=rng.choice(("device clinic", "manufacturer card")),
        )
    b.fmt(
        "FINDINGS: {m}. {a}. No acute findings otherwise.\n",
        m=keep(rng, "measure"),
        a=keep(rng, "abbrev"),
    )
    b.fmt(
        "IMPRESSION: {m} lesion, recommend {e}.\n\n",
        m=K(rng.choice(("5.1 x 3.2 cm", "T12-L1", "C5-C6")), "measure"),
        e=keep(rng, "eponym"),
    )
    b.fmt(
        "Electronically signed by {doc} on {d}.\nOutside images uploaded by patient from {ip}\n",
        doc=v.clinician(rng),
        d=_dt(rng),
        ip=P(v.ipv4(rng), "IP", "ipv4"),
    )


def telephone(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt("TELEPHONE ENCOUNTER  {d}\n", d=_dt(rng))
    b.fmt(
        'Caller: {rel}. "Hi, this is {first} calling about my {relation}, {pt}."\n',
        rel=_relative(rng, pt),
        first=P(pt.contact.first, "NAME", "relative_no_cue"),
        relation=pt.contact_relation,
        pt=P(pt.who.first, "NAME", "patient_first_only"),
    )
    b.fmt(
        "Callback number {cb}. Alt: {alt}.\n",
        cb=P(pt.phone, "PHONE", "phone_bare10") if rng.random() < 0.5 else _pt_phone(rng, pt),
        alt=v.phone(rng),
    )
    b.fmt(
        "Reports {pt} has had worsening leg swelling since {d}; taking {dr} as prescribed, {m}.\n",
        pt=P(pt.who.first, "NAME", "patient_first_only"),
        d=_date(rng),
        dr=keep(rng, "drug"),
        m=keep(rng, "measure"),
    )
    b.fmt(
        "Verified identity with DOB {dob} and last 4 of SSN {ssn}.\n",
        dob=_dob(rng, pt),
        ssn=P(pt.ssn[5:], "SSN", "ssn_last4"),
    )
    b.fmt(
        "Pharmacy: {ph} Pharmacy, ph {pp}, {fax}.\n",
        ph=rng.choice(("CVS", "Walgreens", "Rite Aid", "community")),
        pp=v.phone(rng),
        fax=_fax(rng),
    )
    b.fmt(
        "Advised: {a}, {e}. {mdk}; will call back.\n",
        a=keep(rng, "abbrev"),
        e=keep(rng, "eponym"),
        mdk=K("MD aware", "abbrev"),
    )
    b.fmt("{rn}\n", rn=v.clinician(rng))


def referral(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt("{d}\n\nDear {doc},\n\n", d=_date(rng), doc=v.clinician(rng))
    b.fmt(
        "Re: {name}\nDOB: {dob}\n{addr}\nPhone: {ph}   Email: {em}\n\n",
        name=v.name_variants(rng, pt.who, "patient_header"),
        dob=_dob(rng, pt),
        addr=v.address_pieces(pt.address, one_line=False),
        ph=_pt_phone(rng, pt),
        em=P(pt.email, "EMAIL", "email"),
    )
    b.fmt(
        "Thank you for seeing {name}, a {age} {sex} with {e} and {e2}, for evaluation of "
        "{a}. Current medications include {drugs}. Recent labs: {m1}, {m2}.\n",
        name=v.first_last(pt.who, "patient_no_cue"),
        age=_age(rng, pt, True),
        sex=_sex(pt),
        e=keep(rng, "eponym"),
        e2=keep(rng, "eponym"),
        a=keep(rng, "abbrev"),
        drugs=some(rng, "drug", 3),
        m1=keep(rng, "measure"),
        m2=keep(rng, "measure"),
    )
    b.fmt(
        "Insurance: member ID {hp}; SSN {ssn}.\n",
        hp=P(pt.health_plan, "HEALTH_PLAN", "health_plan"),
        ssn=v.ssn(rng, pt.ssn),
    )
    b.fmt(
        "Please send your report to my office, {fax}.\n\nSincerely,\n{doc}\n",
        fax=_fax(rng),
        doc=v.clinician(rng),
    )
    b.fmt("cc: {name}\n", name=v.first_last(pt.who, "patient_no_cue"))


def portal(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt(
        "PATIENT PORTAL MESSAGE\nFrom: {em}  Received: {d}  IP {ip}\n",
        em=P(pt.email, "EMAIL", "email"),
        d=_dt(rng),
        ip=P(v.ipv4(rng) if rng.random() < 0.8 else v.ipv6(rng), "IP", "ip"),
    )
    b.fmt(
        "Subject: refill\n\nHello, this is {name}. Could you refill my {dr}? "
        "My {rel} uploaded my glucose log here: {url}\n",
        name=v.first_last(pt.who, "patient_no_cue"),
        dr=keep(rng, "drug"),
        rel=pt.other_relation,
        url=P(v.personal_url(rng, pt.who), "URL", "url"),
    )
    b.fmt(
        "My CGM transmitter serial is {sn} and the pump S/N: {sn2}.\n",
        sn=P(v.device_serial(rng), "DEVICE", "device_serial"),
        sn2=P(v.device_serial(rng), "DEVICE", "device_serial"),
    )
    b.fmt("Thanks, {first}\n\n", first=P(pt.who.first, "NAME", "patient_first_only"))
    b.fmt(
        "Reply by {rn}: refill sent, {m}. Continue {dr}; {a}.\n",
        rn=v.clinician(rng),
        m=keep(rng, "measure"),
        dr=keep(rng, "drug"),
        a=keep(rng, "abbrev"),
    )


def device_clinic(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt("DEVICE CLINIC - REMOTE INTERROGATION  {d}\n", d=_dt(rng))
    b.fmt(
        "{name}   {mrn}\n", name=v.name_variants(rng, pt.who, "patient_header"), mrn=_mrn(rng, pt)
    )
    b.fmt(
        "Device: {model}  SN: {sn}  implanted {d}\n",
        model=N(
            rng.choice(
                (
                    "Medtronic Cobalt XT ICD",
                    "St Jude Ellipse VR",
                    "Boston Scientific Dynagen",
                    "Biotronik Rivacor 7",
                )
            )
        ),
        sn=P(v.device_serial(rng), "DEVICE", "device_serial"),
        d=_date(rng),
    )
    b.fmt(
        "RA lead serial # {s1}; RV lead S/N {s2}. UDI {udi}\n",
        s1=P(v.device_serial(rng), "DEVICE", "lead_serial"),
        s2=P(v.device_serial(rng), "DEVICE", "lead_serial"),
        udi=P(v.udi(rng), "DEVICE", "udi"),
    )
    b.fmt(
        "Battery 8.5 years. {m1}. {m2}. Episodes: 2 AT/AF, longest 3 min. {e}.\n",
        m1=keep(rng, "measure"),
        m2=keep(rng, "measure"),
        e=K("Holter monitor", "eponym"),
    )
    b.fmt(
        "Transmission from home monitor at {ip} on {d}.\n",
        ip=P(v.ipv4(rng), "IP", "ipv4"),
        d=_dt(rng),
    )
    b.fmt(
        "{age} {sex}; on {dr}. Reviewed by {doc}.\n",
        age=_age(rng, pt),
        sex=_sex(pt),
        dr=keep(rng, "drug"),
        doc=v.clinician(rng),
    )


def social_work(b: NoteBuilder, rng: random.Random, pt: Patient) -> None:
    b.fmt("SOCIAL WORK NOTE  {d}\n", d=_date(rng))
    b.fmt(
        "Met with {name} and {rel} at bedside. {age} {sex}, lives at {addr} with {rel2}.\n",
        name=v.first_last(pt.who, "patient_no_cue"),
        rel=_relative(rng, pt),
        age=_age(rng, pt),
        sex=_sex(pt),
        addr=v.address_pieces(pt.address),
        rel2=_relative(rng, pt, other=True),
    )
    b.fmt(
        "Vehicle towed from ED lot: VIN {vin}, plate {pl}. Keys with security.\n",
        vin=P(v.vin(rng), "VEHICLE", "vin"),
        pl=P(v.plate(rng), "VEHICLE", "plate"),
    )
    b.fmt(
        "ID on file: driver's license {dl}; {cert}.\n",
        dl=P(pt.license, "LICENSE", "drivers_license"),
        cert=rng.choice(
            (
                [
                    "birth certificate No. ",
                    P(
                        f"{v.digits(rng, 3)}-{v.digits(rng, 4)}-{v.digits(rng, 6)}",
                        "LICENSE",
                        "certificate",
                    ),
                ],
                ["LTC permit ", P(f"LTC-{v.digits(rng, 5)}", "LICENSE", "permit")],
                ["CDL ", P(v.drivers_license(rng), "LICENSE", "cdl")],
            )
        ),
    )
    b.fmt(
        "Employer badge ID {emp}; research study subject {stu}.\n",
        emp=P(v.digits(rng, 6), "OTHER_ID", "employee_id"),
        stu=P(f"STU-{v.digits(rng, 4)}-{v.digits(rng, 4)}", "OTHER_ID", "study_id"),
    )
    b.fmt(
        "Enrolled in palm-vein check-in, biometric template ID {bio}; "
        "voiceprint enrollment {vp}.\n",
        bio=P(f"PV-{v.alnum(rng, 8)}", "BIOMETRIC", "biometric_id"),
        vp=P(f"VP{v.digits(rng, 9)}", "BIOMETRIC", "voiceprint_id"),
    )
    b.fmt(
        "Insurance {hp}, account {acct}; SSN {ssn}. Contact {rel}: {ph}; {em}.\n",
        hp=P(pt.health_plan, "HEALTH_PLAN", "health_plan"),
        acct=P(pt.account, "ACCOUNT", "account"),
        ssn=v.ssn(rng, pt.ssn),
        rel=pt.contact_relation,
        ph=v.phone(rng),
        em=P(v.email(rng, pt.contact), "EMAIL", "email_relative"),
    )
    if rng.random() < 0.5:
        b.fmt(
            "Family started a fundraiser: {url} (shared with consent).\n",
            url=P(v.personal_url(rng, pt.who), "URL", "url"),
        )
    b.fmt(
        "Concerns: {e}; {a}; home {a2}. Plan: SNF vs home with {dr}.\n",
        e=keep(rng, "eponym"),
        a=keep(rng, "abbrev"),
        a2=K("PT/OT", "abbrev"),
        dr=keep(rng, "drug"),
    )
    b.fmt("{sw}, LICSW\n", sw=v.first_last(v.person(rng), "clinician"))


STYLES: dict[str, Callable[[NoteBuilder, random.Random, Patient], None]] = {
    "triage": triage,
    "discharge": discharge,
    "radiology": radiology,
    "telephone": telephone,
    "referral": referral,
    "portal": portal,
    "device_clinic": device_clinic,
    "social_work": social_work,
}
