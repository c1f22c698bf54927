"""Generate the independent corpus: notes, gold spans, must-keep terms and linkage records.

Splits are disjoint seed ranges: note ``i`` of split ``s`` is built from
``random.Random(SPLIT_BASE[s] + i)`` alone, so a note never depends on how many notes are asked
for, and the two splits never share a seed (``i`` < :data:`MAX_NOTES`).

!!! The ``sealed`` split is generated only when the caller passes ``sealed_ok=True`` (the runner
does so only for an explicit ``--split sealed``). NEVER generate, print, save or look at it while
changing detectors; it is scored once, for the closing note. !!!
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pyarrow as pa
from faker import VERSION as FAKER_VERSION
from phi_scoring import Doc

from .builder import NoteBuilder
from .patient import KNOWN_CATEGORIES, patient
from .styles import STYLES

SPLIT_BASE: dict[str, int] = {"dev": 1_000_000, "sealed": 7_000_000}
MAX_NOTES = 1_000_000


class SealedSplitError(RuntimeError):
    """Raised when the sealed split is asked for without ``sealed_ok=True``."""


@dataclass
class Corpus2:
    """``docs[i]`` (text, gold spans, neutral ranges, must-keep terms) in ``styles[i]``, about
    the patient whose structured record is ``known`` row ``i`` (columns -> categories in
    ``known_categories``)."""

    split: str
    docs: list[Doc]
    styles: list[str]
    known: pa.Table
    known_categories: dict[str, str]
    faker_version: str = FAKER_VERSION

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.docs]

    def __len__(self) -> int:
        return len(self.docs)


def note(seed: int, style: str | None = None) -> tuple[Doc, str, dict[str, str | None]]:
    """One note from ``seed`` alone: its document, style and the patient's record."""
    rng = random.Random(seed)
    pt = patient(rng)
    name = style or rng.choice(sorted(STYLES))
    b = NoteBuilder()
    STYLES[name](b, rng, pt)
    return b.doc(), name, pt.known_row()


def generate(n: int, split: str = "dev", *, sealed_ok: bool = False) -> Corpus2:
    """``n`` notes of ``split``; styles rotate so that every style appears when ``n`` >= 8.
    ``split="sealed"`` raises :class:`SealedSplitError` unless ``sealed_ok`` is true."""
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r} (dev or sealed)")
    if split == "sealed" and not sealed_ok:
        raise SealedSplitError(
            "the sealed split is scored only for the closing note: pass --split sealed explicitly"
        )
    if not 0 <= n <= MAX_NOTES:
        raise ValueError(f"n must be between 0 and {MAX_NOTES}")
    names = sorted(STYLES)
    docs, styles, rows = [], [], []
    for i in range(n):
        doc, style, row = note(SPLIT_BASE[split] + i, names[i % len(names)])
        docs.append(doc)
        styles.append(style)
        rows.append(row)
    cols = list(KNOWN_CATEGORIES)
    known = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in cols})
    return Corpus2(split, docs, styles, known, dict(KNOWN_CATEGORIES))
