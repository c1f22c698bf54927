"""Vectorized assembly of clinical-note text from phrase templates.

A note is a sequence of sections (header, HPI, history, ...). For every section each note draws
one template (or none, for optional sections); every template is then rendered for all the notes
that drew it at once with ``pyarrow.compute.binary_join_element_wise`` over field arrays. Python
loops run over sections and templates (a few dozen), never over notes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinipipe.synth.vocab import Template

__all__ = ["SECTIONS", "FieldTable", "render_notes"]

#: (section, probability that a note has it), in note order.
SECTIONS: tuple[tuple[str, float], ...] = (
    ("header", 1.0),
    ("hpi", 1.0),
    ("history", 0.7),
    ("social", 0.6),
    ("contact", 0.55),
    ("ros", 0.6),
    ("exam", 1.0),
    ("data", 0.5),
    ("plan", 1.0),
    ("sign", 1.0),
)

_SEPARATOR = {"header": "\n\n", "sign": ""}


class FieldTable:
    """Note-level field arrays, built on first use from the builders and then cached.

    Builders must be pure (all randomness drawn before) so that the text does not depend on the
    order in which templates happen to ask for fields.
    """

    def __init__(self, n: int, builders: Mapping[str, Callable[[], pa.Array]]) -> None:
        self.n = n
        self._builders = dict(builders)
        self._cache: dict[str, pa.Array] = {}

    def __getitem__(self, name: str) -> pa.Array:
        arr = self._cache.get(name)
        if arr is None:
            try:
                builder = self._builders[name]
            except KeyError:
                raise KeyError(f"note template uses unknown field {{{name}}}") from None
            arr = builder()
            if len(arr) != self.n:
                raise ValueError(f"note field {name} has {len(arr)} values, expected {self.n}")
            self._cache[name] = arr
        return arr


def _render(template: Template, fields: FieldTable, rows: np.ndarray, suffix: str) -> pa.Array:
    """``template`` rendered for the notes at ``rows`` (null where a field is null)."""
    idx = pa.array(rows, pa.int64())
    parts: list[pa.Array | pa.Scalar] = []
    for part in template.parts:
        if isinstance(part, tuple):
            parts.append(fields[part[0]].take(idx))
        else:
            parts.append(pa.scalar(part, pa.string()))
    if suffix:
        parts.append(pa.scalar(suffix, pa.string()))
    if not any(isinstance(p, pa.Array) for p in parts):
        literal = "".join(p.as_py() for p in parts if isinstance(p, pa.Scalar))
        return pa.array([literal], pa.string()).take(pa.array(np.zeros(len(rows), np.int64)))
    return pc.binary_join_element_wise(*parts, "")


def _render_section(
    templates: Sequence[Template],
    choice: np.ndarray,
    fields: FieldTable,
    suffix: str,
) -> pa.Array:
    """One section's text for every note; ``choice`` is a template index, or -1 for none."""
    n = len(choice)
    order = np.argsort(choice, kind="stable")
    bounds = np.searchsorted(choice[order], np.arange(-1, len(templates) + 1))
    pieces: list[pa.Array] = []
    absent = int(bounds[1] - bounds[0])
    if absent:
        pieces.append(pa.array([""], pa.string()).take(pa.array(np.zeros(absent, np.int64))))
    for t, template in enumerate(templates):
        rows = order[bounds[t + 1] : bounds[t + 2]]
        if len(rows) == 0:
            continue
        text = _render(template, fields, rows, suffix)
        if text.null_count:
            # A field was empty for some notes (no e-mail, no emergency contact, ...): those
            # notes get the section's fallback template, which uses no nullable field.
            mask = text.is_null()
            missing = rows[np.asarray(mask.to_numpy(zero_copy_only=False))]
            fallback = _render(templates[0], fields, missing, suffix)
            text = pc.replace_with_mask(text, mask, fallback)
        pieces.append(text)
    joined = pa.concat_arrays(pieces) if pieces else pa.array([], pa.string())
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n, dtype=np.int64)
    return joined.take(pa.array(inverse))


def render_notes(
    templates: Mapping[str, Sequence[Template]],
    fields: FieldTable,
    rng: np.random.Generator,
) -> pa.Array:
    """Assemble one text per note (``fields.n`` notes), deterministic for the ``rng`` state."""
    n = fields.n
    sections: list[pa.Array] = []
    for section, probability in SECTIONS:
        options = templates.get(section)
        if not options:
            continue
        choice = rng.integers(0, len(options), size=n)
        if probability < 1.0:
            choice = np.where(rng.random(n) < probability, choice, -1)
        sections.append(_render_section(options, choice, fields, _SEPARATOR.get(section, "\n")))
    if not sections:
        return pa.array([""] * n, pa.string())
    if len(sections) == 1:
        return sections[0]
    return pc.binary_join_element_wise(*sections, "")
