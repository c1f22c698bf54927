"""Columnar text plumbing for detection: a batch of texts as one string, spans back to rows, and
redacted output assembled without a Python loop over rows.

A batch is joined into one Python string in which every row is followed by :data:`SEPARATOR`
("\\x00"); NUL characters inside the texts are first replaced by spaces (PostgreSQL text cannot
hold NUL anyway), so a separator always marks a row end. Regexes run once over the whole string;
match offsets map back to rows with ``numpy.searchsorted``. Offsets are characters (code points),
as Python strings count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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

    def row_text(self, row: int) -> str:
        return self.text[int(self.starts[row]) : int(self.starts[row + 1]) - 1]


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
