"""An independently written labelled corpus of clinical notes for evaluating PHI redaction.

#########################################################################################
#  SEALED SPLIT: NEVER READ WHILE CHANGING DETECTORS.                                  #
#  ``generate(n, "sealed", sealed_ok=True)`` exists only so that the lead can score it #
#  ONCE for the closing note (``phi_eval_independent.py --split sealed``). Do not       #
#  generate, print, save, inspect or tune against it. Work on ``dev`` only.             #
#########################################################################################

Written without reading ``clinipipe/phi/detectors.py``, ``clinipipe/phi/data`` or
``clinipipe/phi/corpus.py``, so that it does not share their blind spots: names from Faker's
Latin-script locales (Irish, Nigerian, Ghanaian, Zulu, Swahili, Vietnamese, Filipino, Polish,
Portuguese...) plus names that are words or eponyms; addresses with route numbers, rural boxes,
"Calle ...", Puerto Rican urbanizations, foreign formats; note styles the project never used
(ED triage, discharge summary, radiology report, telephone encounter, referral letter, portal
message, device clinic, social work); headers "Last, First Middle"; names with no cue word;
fax and bare 10-digit phones; date-times; device, vehicle, licence, biometric and other ids.
Non-PHI clinical terms (abbreviations that look like state codes, drugs, eponyms,
measurements, ages of 89 or less) are marked as must-keep to measure over-redaction.

Import it with ``benchmarks/`` on ``sys.path`` (as the runners and tests do): it uses the
sibling module ``phi_scoring`` for its :class:`Doc` and :class:`Span` types.

Guarantees: deterministic for a given split, note index and installed Faker version (note ``i``
does not depend on how many notes are generated); every gold span's text is exactly the value put
in; gold spans do not overlap each other nor any must-keep term; the first 200 dev notes hold
every category of :data:`CATEGORIES_PRODUCED` and every style (tested).
"""

from .generator import MAX_NOTES, SPLIT_BASE, Corpus2, SealedSplitError, generate, note
from .styles import STYLES

#: Every clinipipe category this generator labels.
CATEGORIES_PRODUCED: tuple[str, ...] = (
    "NAME", "ADDRESS", "CITY", "ZIP", "DATE", "AGE", "PHONE", "FAX", "EMAIL", "SSN", "MRN",
    "HEALTH_PLAN", "ACCOUNT", "LICENSE", "VEHICLE", "DEVICE", "URL", "IP", "BIOMETRIC",
    "OTHER_ID",
)  # fmt: skip

__all__ = [
    "CATEGORIES_PRODUCED",
    "MAX_NOTES",
    "SPLIT_BASE",
    "STYLES",
    "Corpus2",
    "SealedSplitError",
    "generate",
    "note",
]
