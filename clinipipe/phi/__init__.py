"""PHI detection and redaction of free text: categories, detectors, record linkage, surrogates.

See :mod:`clinipipe.phi.detectors` for the guarantees of :class:`DetectorSet`.

The detectors (census lexicons, Aho-Corasick automata, RE2 patterns) take a few hundred
milliseconds to import; they are loaded on first use of `DetectorSet` & co. (PEP 562), so that
light modules of this package (`safe_harbor`, `scan`, `categories`) cost every command nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clinipipe.phi.categories import (
    CATEGORIES,
    CATEGORY_OF_PHI_CLASS,
    LIMITED_DATASET_KEEPS,
    SEVERITIES,
)

if TYPE_CHECKING:
    from clinipipe.phi.detectors import FINDINGS_SCHEMA, Detector, DetectorSet, mask_excerpt

_FROM_DETECTORS = frozenset({"FINDINGS_SCHEMA", "Detector", "DetectorSet", "mask_excerpt"})


def __getattr__(name: str) -> Any:
    if name in _FROM_DETECTORS:
        from clinipipe.phi import detectors

        return getattr(detectors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CATEGORIES",
    "CATEGORY_OF_PHI_CLASS",
    "FINDINGS_SCHEMA",
    "LIMITED_DATASET_KEEPS",
    "SEVERITIES",
    "Detector",
    "DetectorSet",
    "mask_excerpt",
]
