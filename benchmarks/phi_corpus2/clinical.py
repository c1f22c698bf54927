"""Non-PHI clinical content that a redactor must keep (measured as over-redaction): clinical
abbreviations that look like US state codes or words, drug names (some also first names),
eponyms (some also surnames or places), measurements, and ages of 89 or less."""

from __future__ import annotations

import random

from .builder import K

#: (phrase, class); the whole phrase is one must-keep term.
ABBREVIATIONS = (
    "CT abdomen", "CT head without contrast", "MS Contin", "PT/OT", "CA 19-9", "breast CA",
    "IN 1200 mL / OUT 800 mL", "taken to the OR", "PA and lateral", "2 L NC", "ID consult",
    "under GA", "LA enlarged", "DC planning", "SC injection", "MD aware", "VA 20/40 OD",
    "NT/ND", "MA roomed", "NM stress test", "PR bleeding", "CO 4.2 L/min", "ME referral",
    "OK per pharmacy", "AL amyloidosis", "GA 32 weeks", "OT to follow", "SC heparin",
)  # fmt: skip
DRUGS = (
    "metoprolol", "lisinopril", "Eliquis", "Keppra", "Lasix", "Norco", "Humira", "Ozempic",
    "Xarelto", "Flomax", "Zofran", "Ativan", "Haldol", "Tylenol", "Coumadin", "Plavix", "Lantus",
    "Januvia", "Synthroid", "warfarin", "heparin", "Dilaudid", "Percocet", "Allegra", "Lyrica",
    "Celexa", "Paxil", "Valium", "Jardiance", "Entresto", "Trulicity", "Brilinta", "Cialis",
    "Ella", "Cardura", "Tessalon", "Chantix", "Sonata", "Ambien", "Vivitrol", "Victoza",
)  # fmt: skip
EPONYMS = (
    "Mayo Clinic", "Lou Gehrig disease", "Parkinson disease", "Foley catheter", "Apgar score",
    "Gram stain", "Babinski sign", "Murphy sign", "McBurney point", "Glasgow Coma Scale",
    "Hodgkin lymphoma", "Crohn disease", "Bell palsy", "Cushing syndrome", "Addison disease",
    "Graves disease", "Hashimoto thyroiditis", "Down syndrome", "Alzheimer dementia",
    "Whipple procedure", "Swan-Ganz catheter", "Bishop score", "Wells score", "Allen test",
    "Romberg test", "Tinel sign", "Phalen test", "Epley maneuver", "Holter monitor",
    "Doppler ultrasound", "Trendelenburg position", "Fowler position", "Barrett esophagus",
    "Wilson disease", "Nissen fundoplication", "Roux-en-Y", "Kussmaul respirations",
    "Cheyne-Stokes breathing", "Austin Flint murmur", "Charcot foot", "Bence Jones protein",
    "Stevens-Johnson syndrome", "Guillain-Barre syndrome", "Tommy John surgery", "Lyme disease",
    "Norwalk virus", "Baker cyst", "Colles fracture", "Smith fracture", "Bennett fracture",
    "Jones criteria", "Brown-Sequard syndrome", "Wernicke encephalopathy", "Bell's palsy",
)  # fmt: skip
MEASUREMENTS = (
    "BP 132/84", "HR 88", "SpO2 97%", "T 37.2 C", "Wt 82.3 kg", "EF 35%", "Cr 1.4", "A1c 7.2%",
    "INR 2.3", "K 4.1", "Na 138", "BMI 31.2", "QTc 452 ms", "GCS 15", "PSA 4.2", "Hgb 9.8",
    "5.1 x 3.2 cm", "T12-L1", "C5-C6", "grade 2/6", "2+ pitting edema", "Stage IIIA",
    "ICD-10 I48.91", "CPT 71046", "RR 18", "eGFR 52", "LDL 131", "WBC 12.4", "Plt 212",
    "TSH 2.10", "pH 7.31", "pCO2 48", "Lactate 2.8", "BNP 1420", "Troponin 0.04",
)  # fmt: skip


def keep(rng: random.Random, cls: str) -> K:
    table = {"abbrev": ABBREVIATIONS, "drug": DRUGS, "eponym": EPONYMS, "measure": MEASUREMENTS}
    return K(rng.choice(table[cls]), cls)


def some(rng: random.Random, cls: str, n: int, sep: str = ", ") -> list[K | str]:
    """``n`` distinct terms of ``cls`` separated by ``sep``."""
    out: list[K | str] = []
    seen: set[str] = set()
    while len(seen) < n:
        k = keep(rng, cls)
        if k.text in seen:
            continue
        if seen:
            out.append(sep)
        seen.add(k.text)
        out.append(k)
    return out
