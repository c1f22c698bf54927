"""Columnar text plumbing for detection: a batch of texts as one string, spans back to rows, and
redacted output assembled without a Python loop over rows.

A batch is joined into one Python string in which every row is followed by :data:`SEPARATOR`
("\\x00"); NUL characters inside the texts are first replaced by spaces (PostgreSQL text cannot
hold NUL anyway), so a separator always marks a row end. Regexes run once over the whole string;
match offsets map back to rows with ``numpy.searchsorted``. Offsets are characters (code points),
as Python strings count them.

RE2 scans the string's UTF-8 bytes (:class:`Utf8Text`, :func:`re2_spans`): its byte offsets are
mapped to characters through the positions of the UTF-8 continuation bytes only, so mostly-ASCII
notes cost nothing extra.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

try:  # RE2 (google-re2): a linear-time engine, 5-20x faster than `re` on the detector patterns
    import re2 as _re2

    UNANCHORED = _re2._Anchor.UNANCHORED
except ImportError:  # pragma: no cover - the dependency is declared; Python's engine still works
    _re2 = None
    UNANCHORED = None

SEPARATOR = "\x00"


@dataclass(frozen=True)
class JoinedText:
    """``text`` holds every row followed by a separator (a null row is empty).

    ``starts[i]`` is the character offset of row ``i`` in ``text`` and ``starts[n]`` is
    ``len(text)``: row ``i`` is ``text[starts[i] : starts[i + 1] - 1]``.
    """

    text: str
    starts: np.ndarray
    valid: np.ndarray

    @property
    def n(self) -> int:
        return len(self.valid)

    def rows_of(self, offsets: np.ndarray) -> np.ndarray:
        """The row holding each character offset."""
        return np.searchsorted(self.starts, offsets, side="right") - 1


def as_string_array(texts: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.Array:
    """``texts`` as one (not chunked) Arrow ``large_string`` array."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.large_string())
    elif not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.large_string())
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        if pa.types.is_null(texts.type):
            return pa.nulls(len(texts), pa.large_string())
        raise TypeError(f"expected a string array, got {texts.type}")
    return texts.cast(pa.large_string())


def join_texts(texts: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> JoinedText:
    """Join a batch into one string (see the module docstring). O(total length), no row loop."""
    arr = as_string_array(texts)
    n = len(arr)
    valid = (
        np.ones(n, dtype=bool)
        if arr.null_count == 0
        else np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    )
    if n == 0:
        return JoinedText("", np.zeros(1, dtype=np.int64), valid)
    clean = pc.fill_null(arr, "")
    if pc.any(pc.match_substring(clean, SEPARATOR)).as_py():
        clean = pc.replace_substring(clean, SEPARATOR, " ")
    sep = pa.scalar(SEPARATOR, pa.large_string())
    joined = pc.binary_join_element_wise(clean, sep, pa.scalar("", pa.large_string()))
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[
        joined.offset : joined.offset + n + 1
    ]
    raw = joined.buffers()[2].to_pybytes()[int(offsets[0]) : int(offsets[-1])]
    text = raw.decode("utf-8")
    if len(text) == len(raw):
        starts = (offsets - offsets[0]).astype(np.int64)
    else:
        lengths = np.asarray(pc.utf8_length(joined).to_numpy(zero_copy_only=False), np.int64)
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
    return JoinedText(text, starts, valid)


def resolve_overlaps(
    start: np.ndarray, end: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge overlapping spans: each group of overlapping spans becomes one span covering all of
    them, labelled by its member with the highest ``rank`` (then the longest).

    Returns ``(start, end, winner)`` where ``winner`` indexes the input arrays. Guarantee: every
    input character is covered by exactly one output span, output spans do not overlap and are
    sorted by start.
    """
    if len(start) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    order = np.lexsort((-end, start))
    s, e = start[order], end[order]
    reach = np.maximum.accumulate(e)
    new_group = np.ones(len(s), dtype=bool)
    new_group[1:] = s[1:] >= reach[:-1]
    group = np.cumsum(new_group) - 1
    first = np.flatnonzero(new_group)
    g_start = s[first]
    g_end = np.maximum.reduceat(e, first)
    length = e - s
    best = np.lexsort((-length, -rank[order], group))
    best_first = best[np.searchsorted(group[best], np.arange(len(first)))]
    return g_start, g_end, order[best_first]


def assemble(
    joined: JoinedText, start: np.ndarray, end: np.ndarray, replacement: Sequence[str]
) -> pa.Array:
    """``joined``'s rows with ``text[start[k]:end[k]]`` replaced by ``replacement[k]``.

    Spans must be sorted, disjoint and inside one row each; replacements must not contain the
    separator. Returns a ``string`` array with the nulls of the input.
    """
    text = joined.text
    pieces: list[str] = []
    prev = 0
    for s, e, r in zip(start.tolist(), end.tolist(), replacement, strict=True):
        pieces.append(text[prev:s])
        pieces.append(r)
        prev = e
    pieces.append(text[prev:])
    data = "".join(pieces).encode("utf-8")
    n = joined.n
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0)
    if len(ends) != n:
        raise RuntimeError("a replacement broke the row separators")
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = ends + 1
    row_start, row_end = offsets[:-1], ends
    # Drop the separators: each row keeps [row_start, row_end).
    keep = np.ones(len(data), dtype=bool)
    keep[ends] = False
    body = np.frombuffer(data, dtype=np.uint8)[keep].tobytes()
    new_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_end - row_start, out=new_offsets[1:])
    validity = None if joined.valid.all() else pa.array(joined.valid).buffers()[1]
    out = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(new_offsets.tobytes()), pa.py_buffer(body), validity
    )
    return out.cast(pa.string())


class Utf8Text:
    """A string's UTF-8 bytes and the maps between byte and character offsets (computed from
    the positions of the continuation bytes only: notes are mostly ASCII)."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self._cont: np.ndarray | None = None
        self._adjusted: np.ndarray | None = None
        if len(self.data) != len(text):
            raw = np.frombuffer(self.data, dtype=np.uint8)
            self._cont = np.flatnonzero((raw & 0xC0) == 0x80)
            self._adjusted = self._cont - np.arange(len(self._cont))
            self._cont_list = self._cont.tolist()
            self._adjusted_list = self._adjusted.tolist()

    def chars(self, offsets: list[int]) -> list[int]:
        """Character offsets of byte offsets (at character boundaries)."""
        if self._cont is None:
            return offsets
        b = np.asarray(offsets, dtype=np.int64)
        return (b - np.searchsorted(self._cont, b)).tolist()

    def char(self, offset: int) -> int:
        if self._cont is None:
            return offset
        return offset - bisect.bisect_left(self._cont_list, offset)

    def byte(self, offset: int) -> int:
        """Byte offset of a character offset."""
        if self._adjusted is None:
            return offset
        return offset + bisect.bisect_right(self._adjusted_list, offset)


def re2_spans(
    regex: Any, data: bytes, pos: int = 0, limit: int | None = None
) -> list[tuple[int, int]]:
    """Byte spans of the successive non-overlapping matches of an RE2 regex (at most
    ``limit``), calling RE2 directly: the ``re2`` module's match objects cost more than the
    scan itself."""
    low = getattr(regex, "_regexp", None)
    if low is None:  # pragma: no cover - another re2 binding: use its public API
        spans = [m.span() for m in regex.finditer(data, pos)]
        return spans if limit is None else spans[:limit]
    match, end, out = low.Match, len(data), []
    while pos <= end:
        s, e = match(UNANCHORED, data, pos, end)[0]
        if s < 0:
            break
        out.append((s, e))
        if limit is not None and len(out) >= limit:
            break
        pos = e if e > s else e + 1
    return out


def without_groups(pattern: str) -> str:
    """``pattern`` with its ``phi`` group made non-capturing: RE2 finds match boundaries much
    faster when it need not report groups (Python reads the group afterwards)."""
    return pattern.replace("(?P<phi>", "(?:")


@cache
def compile_re2(pattern: str) -> Any | None:
    """``pattern`` compiled by RE2 for bytes, or None (RE2 not installed, or a Python-only
    feature such as a lookaround or a backreference)."""
    if _re2 is None:
        return None
    options = _re2.Options()
    options.max_mem = 64 << 20
    try:
        return _re2.compile(pattern, options)
    except Exception:
        return None
