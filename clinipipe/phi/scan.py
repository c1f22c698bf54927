"""PHI leak scanning, warehouse-neutral: findings, row keys, and stage 2 (validation in Python).

A scan has two stages. Stage 1 runs where the data is: inside the warehouse as a regex pushdown
of `DetectorSet.prefilter()` (`clinipipe.targets.*.scan`), or over a CDC batch's Arrow columns
with `pyarrow.compute` (`candidates_in_batch`). Only rows with a candidate cell move on. Stage 2
(`detect`) runs the detectors over those cells and turns each detected span into a `Finding`.

Guarantees:

* **A finding never holds PHI.** Its text is a masked excerpt (`mask_excerpt`: every detected
  span replaced by ``[CATEGORY]``) plus character offsets; its row key is the primary key's
  values, or, when a key column is itself classified as PHI (or the table has no key), a keyed
  HMAC-SHA256 pseudonym (``hmac:<hex>``; the key comes from the environment and never leaves
  the process).
* **Stable identity.** `Finding.finding_id` depends only on where the finding is (schema,
  table, column, row key, category, start offset): scanning the same data again yields the same
  ids, so the findings table is upserted, not appended to.
* Columnar: per column one Arrow array goes to the detectors; Python objects are only built
  per finding, row keys included (`lazy_row_keys`: a candidate row without a finding never
  has its key, or its pseudonym, computed).
"""

from __future__ import annotations

import hashlib
import hmac
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinipipe.phi.categories import SEVERITIES, severity_rank

if TYPE_CHECKING:
    from clinipipe.phi import DetectorSet

EXCERPT_WIDTH = 24
"""Characters of masked context on each side of a finding."""

TEXT_TYPE_MARKERS = ("VARCHAR", "TEXT", "STRING", "CHAR", "JSON", "VARIANT", "OBJECT", "ARRAY")
"""A warehouse column whose type names one of these holds text a leak can hide in."""


class ScanKeyError(Exception):
    """A row key must be pseudonymized but the HMAC key is not set; names the variable."""


@dataclass(frozen=True)
class Finding:
    """PHI detected where it must not be: one span in one cell (or, from a warehouse
    classifier, a whole column: row_key ``*`` and no offsets). Holds no PHI."""

    schema: str
    table: str
    column: str
    row_key: str
    category: str
    severity: str
    confidence: float
    detector: str
    masked_excerpt: str
    start: int | None = None
    end: int | None = None
    found_by: str = "scan"

    @property
    def finding_id(self) -> str:
        """Where it is, hashed: the same place found again has the same id."""
        parts = (self.schema, self.table, self.column, self.row_key, self.category,
                 "" if self.start is None else str(self.start))  # fmt: skip
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

    def as_dict(self) -> dict[str, Any]:
        """For --json and the findings table."""
        return {"finding_id": self.finding_id, **asdict(self)}

    def alert_dict(self) -> dict[str, Any]:
        """For an alert: everything but the excerpt (an alert leaves the hospital)."""
        data = self.as_dict()
        del data["masked_excerpt"]
        return data


@dataclass(frozen=True)
class CandidateQuery:
    """Stage 1 of one table, for a target to run as regex pushdown.

    The target returns an Arrow table with, in this order: one string column per key column
    (``k0, k1, ...``; or, with no key columns, one ``row_digest`` column: a digest of the whole
    row that is pseudonymized before it is stored), then one string column per scanned column
    (``c0, c1, ...``) holding the cell's text where it matches `prefilter` and NULL elsewhere.
    Only rows with at least one match are returned. `sample`: look at about that many rows
    (a random sample) instead of all.
    """

    schema: str
    table: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    prefilter: str
    sample: int | None = None


ROW_DIGEST = "row_digest"


def is_text_like(warehouse_type: str) -> bool:
    """True for a warehouse column type that can hold free text (VARCHAR, JSON, arrays...)."""
    upper = warehouse_type.upper()
    return any(marker in upper for marker in TEXT_TYPE_MARKERS)


def max_severity(findings: Iterable[Finding]) -> str | None:
    """The highest severity among `findings` (None when there are none)."""
    ranks = [severity_rank(f.severity) for f in findings]
    return SEVERITIES[max(ranks)] if ranks else None


def reaches(findings: Iterable[Finding], fail_on: str) -> bool:
    """True when a finding's severity is at or above `fail_on`."""
    floor = severity_rank(fail_on)
    return any(severity_rank(f.severity) >= floor for f in findings)


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per id (the last one wins: a later change of the same row in a batch)."""
    by_id = {f.finding_id: f for f in findings}
    return list(by_id.values())


# --- row keys ------------------------------------------------------------------------------------


def pseudonym(key: bytes, value: str) -> str:
    """Keyed pseudonym of `value`: HMAC-SHA256 under `key`, 24 hex digits (96 bits)."""
    return "hmac:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:24]


def _key_text(rows: pa.Table, key_columns: Sequence[str]) -> pa.Array:
    """``col=value`` pairs of `key_columns` joined by ``, `` (``NULL`` for a null), one string
    per row of `rows`, computed in Arrow."""
    parts = []
    for name in key_columns:
        text = pc.fill_null(rows[name].cast(pa.string()), "NULL")
        parts.append(pc.binary_join_element_wise(name, text, "="))
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, ", ")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks() if joined.num_chunks else pa.array([], pa.string())
    return joined


class RowKeys(Sequence[str]):
    """The row keys of a table of candidate rows (what `row_keys` returns), each computed when
    it is first read and then remembered: a scan names only the rows holding a finding, usually
    few of its candidates, so the others' keys (a keyed pseudonym is one HMAC in Python per
    row) are never computed. The values are exactly `row_keys`' (`list(keys)` equals it).

    Build one with `lazy_row_keys`. `read()` gives the keys read so far by row index."""

    def __init__(self, text: pa.Array, hmac_key: bytes | None) -> None:
        self._text = text
        self._key = hmac_key
        self._read: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._text)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        if i < 0:
            i += len(self)
        found = self._read.get(i)
        if found is None:
            if not 0 <= i < len(self):
                raise IndexError("row key index out of range")
            value = self._text[i].as_py()
            found = value if self._key is None else pseudonym(self._key, value)
            self._read[i] = found
        return found

    def read(self) -> dict[int, str]:
        """The keys read so far: row index -> key."""
        return dict(self._read)

    def to_list(self) -> list[str]:
        """Every key, in row order; a keyed pseudonym is computed once per distinct value."""
        if self._key is None:
            return self._text.to_pylist()
        encoded = self._text.dictionary_encode()
        key = self._key
        distinct = [pseudonym(key, v) for v in encoded.dictionary.to_pylist()]
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        return np.asarray(distinct, dtype=object)[indices].tolist() if len(indices) else []


def lazy_row_keys(
    rows: pa.Table,
    key_columns: Sequence[str],
    *,
    pseudonymize: bool,
    hmac_key: bytes | None,
    hmac_key_env: str = "CLINIPIPE_HMAC_KEY",
) -> RowKeys:
    """`row_keys`, each key computed only when read (`RowKeys`); raises `ScanKeyError` as
    `row_keys` does, before any key is read."""
    if pseudonymize and not hmac_key:
        raise ScanKeyError(
            f"set {hmac_key_env} (in the environment or .env next to the spec): a key column is "
            "classified as PHI (or the table has no primary key), so findings identify rows by "
            "a keyed pseudonym, never by the value"
        )
    text = _key_text(rows, key_columns) if rows.num_rows else pa.array([], pa.string())
    return RowKeys(text, hmac_key if pseudonymize else None)


def row_keys(
    rows: pa.Table,
    key_columns: Sequence[str],
    *,
    pseudonymize: bool,
    hmac_key: bytes | None,
    hmac_key_env: str = "CLINIPIPE_HMAC_KEY",
) -> list[str]:
    """The row key of every row of `rows`: ``col=value`` pairs of `key_columns` joined by
    ``, ``, or their keyed pseudonym when `pseudonymize`. Raises `ScanKeyError` when a pseudonym
    is needed and `hmac_key` is missing (the message names `hmac_key_env`, never a value).
    A scan, which needs only the keys of rows with a finding, uses `lazy_row_keys`."""
    return lazy_row_keys(
        rows, key_columns, pseudonymize=pseudonymize, hmac_key=hmac_key, hmac_key_env=hmac_key_env
    ).to_list()


# --- stage 1 over Arrow (CDC batches) ------------------------------------------------------------


def candidate_mask(values: pa.ChunkedArray | pa.Array, prefilter: str) -> Any:
    """Boolean mask: True where a cell may hold PHI (`prefilter` is RE2 syntax, as pyarrow's
    regex kernels use). Null cells are False."""
    text = values if values.type == pa.string() else values.cast(pa.string())
    return pc.fill_null(pc.match_substring_regex(text, prefilter), False)


def candidates_in_batch(
    changes: pa.Table, columns: Sequence[str], prefilter: str
) -> dict[str, pa.ChunkedArray]:
    """Stage 1 on a CDC batch: per column, its values with non-candidates nulled, restricted to
    rows that have at least one candidate. Returns {} when no row does; otherwise the dict also
    holds ``"__rows__"`` (the row indices into `changes`, int64)."""
    present = [c for c in columns if c in changes.column_names]
    if not present or not changes.num_rows:
        return {}
    masks = {c: candidate_mask(changes[c], prefilter) for c in present}
    live = None
    if "_op" in changes.column_names:  # a delete or truncate carries no new text
        live = pc.is_in(changes["_op"], pa.array(["I", "U"]))
    any_mask = None
    for mask in masks.values():
        any_mask = mask if any_mask is None else pc.or_(any_mask, mask)
    assert any_mask is not None
    if live is not None:
        any_mask = pc.and_(any_mask, live)
    rows = pc.indices_nonzero(any_mask)
    if not len(rows):
        return {}
    out: dict[str, pa.ChunkedArray] = {"__rows__": pa.chunked_array([rows])}
    for column, mask in masks.items():
        values = changes[column].cast(pa.string())
        kept = pc.if_else(mask, values, pa.scalar(None, pa.string()))
        out[column] = pa.chunked_array([pc.take(kept, rows)])
    return out


# --- stage 2 -------------------------------------------------------------------------------------


def detect(
    detectors: DetectorSet,
    *,
    schema: str,
    table: str,
    keys: Sequence[str],
    cells: Mapping[str, pa.ChunkedArray | pa.Array],
    found_by: str = "scan",
) -> list[Finding]:
    """Stage 2: run the detectors over candidate `cells` (column -> values aligned with `keys`,
    null where stage 1 found nothing) and return one `Finding` per detected span.

    Each distinct value of a column is examined once (categorical columns repeat theirs), and
    its findings are given to every row holding it."""
    from clinipipe.phi import mask_excerpt

    findings: list[Finding] = []
    for column, values in cells.items():
        text = values if values.type == pa.string() else values.cast(pa.string())
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
        present = pc.indices_nonzero(pc.is_valid(text))
        if not len(present):
            continue
        encoded = pc.take(text, present).dictionary_encode()
        distinct = encoded.dictionary
        found = detectors.find(distinct)
        if not found.num_rows:
            continue
        spans: dict[int, list[tuple[int, int, str, str, float, str, str]]] = {}
        for value, start, end, category, severity, confidence, name in zip(
            found["row"].to_pylist(), found["start"].to_pylist(), found["end"].to_pylist(),
            found["category"].to_pylist(), found["severity"].to_pylist(),
            found["confidence"].to_pylist(), found["detector"].to_pylist(), strict=True,
        ):  # fmt: skip
            cell = distinct[value].as_py()
            excerpt = mask_excerpt(
                cell, start, end, category, detectors=detectors, width=EXCERPT_WIDTH
            )
            spans.setdefault(value, []).append(
                (int(start), int(end), category, severity, float(confidence), name, excerpt)
            )
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        hit = np.flatnonzero(np.isin(indices, np.fromiter(spans, dtype=np.int64)))
        rows = present.to_numpy(zero_copy_only=False)
        for i in hit.tolist():
            key = keys[int(rows[i])]
            for start, end, category, severity, confidence, name, excerpt in spans[int(indices[i])]:
                findings.append(
                    Finding(schema, table, column, key, category, severity, confidence, name,
                            excerpt, start, end, found_by)
                )  # fmt: skip
    return findings
