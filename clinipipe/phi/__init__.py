"""PHI detection and redaction of free text: categories, detectors, record linkage, surrogates.

See :mod:`clinipipe.phi.detectors` for the guarantees of :class:`DetectorSet`.
"""

from clinipipe.phi.categories import (
    CATEGORIES,
    CATEGORY_OF_PHI_CLASS,
    LIMITED_DATASET_KEEPS,
    SEVERITIES,
)
from clinipipe.phi.detectors import FINDINGS_SCHEMA, Detector, DetectorSet, mask_excerpt

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
