"""Build a note from literal text and labelled pieces, keeping exact character offsets.

Guarantee: every gold span, neutral range and must-keep term of the built :class:`Doc` is exactly
the text of the piece that produced it (``doc.text[start:end] == piece.text``).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

from phi_scoring import Doc, Span


@dataclass(frozen=True)
class P:
    """A PHI value: ``category`` (a clinipipe category) and ``kind`` (a finer label);
    ``neutral`` are (start, end) ranges inside ``text`` scored neither way (a 4-digit year)."""

    text: str
    category: str
    kind: str
    neutral: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class K:
    """A must-keep non-PHI term of class ``cls`` (abbreviation, drug, eponym, measurement...)."""

    text: str
    cls: str


@dataclass(frozen=True)
class N:
    """Text scored neither way (a state, a device model number)."""

    text: str


Piece = Union[str, P, K, N, "list[Piece]"]


@dataclass
class NoteBuilder:
    """Appends pieces; :meth:`doc` returns the text with its spans."""

    parts: list[str] = field(default_factory=list)
    pos: int = 0
    gold: list[Span] = field(default_factory=list)
    neutral: list[tuple[int, int]] = field(default_factory=list)
    keep: list[Span] = field(default_factory=list)

    def add(self, piece: Piece) -> NoteBuilder:
        if isinstance(piece, str):
            self.parts.append(piece)
            self.pos += len(piece)
        elif isinstance(piece, P):
            a = self.pos
            self.add(piece.text)
            self.gold.append(Span(a, self.pos, piece.category, piece.kind))
            self.neutral.extend((a + s, a + e) for s, e in piece.neutral)
        elif isinstance(piece, K):
            a = self.pos
            self.add(piece.text)
            self.keep.append(Span(a, self.pos, piece.cls))
        elif isinstance(piece, N):
            a = self.pos
            self.add(piece.text)
            self.neutral.append((a, self.pos))
        else:
            for p in piece:
                self.add(p)
        return self

    def fmt(self, template: str, **values: Piece) -> NoteBuilder:
        """Append ``template`` with ``{name}`` fields replaced by the given pieces (no format
        specs; ``{{`` and ``}}`` for literal braces)."""
        for literal, name, _spec, _conv in string.Formatter().parse(template):
            if literal:
                self.add(literal)
            if name is not None:
                self.add(values[name])
        return self

    def lines(self, rows: Iterable[Piece]) -> NoteBuilder:
        for r in rows:
            self.add(r)
            self.add("\n")
        return self

    def doc(self) -> Doc:
        return Doc("".join(self.parts), list(self.gold), list(self.neutral), list(self.keep))
