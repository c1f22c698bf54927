"""Synthetic EHR data: a realistic, deterministic hospital generated as Arrow batches and loaded
into PostgreSQL with COPY (``clinipipe synth``)."""

from clinipipe.synth.generator import (
    EXPECTED_PER_PATIENT,
    PRIMARY_KEYS,
    REFERENCE_DATE,
    SCHEMAS,
    TABLES,
    expected_rows,
    generate,
    provider_count,
)
from clinipipe.synth.runner import SynthError, SynthSummary, run_synth

__all__ = [
    "EXPECTED_PER_PATIENT",
    "PRIMARY_KEYS",
    "REFERENCE_DATE",
    "SCHEMAS",
    "TABLES",
    "SynthError",
    "SynthSummary",
    "expected_rows",
    "generate",
    "provider_count",
    "run_synth",
]
