"""The pipeline spec: load YAML with `${ENV}` interpolation, validate, report file:line:col."""

from clinipipe.spec.errors import Problem, SpecError
from clinipipe.spec.loader import LoadedSpec, load_spec, parse_spec, resolve_spec_path
from clinipipe.spec.model import Spec

__all__ = [
    "LoadedSpec",
    "Problem",
    "Spec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "resolve_spec_path",
]
