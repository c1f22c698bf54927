"""PHI scan: stage 1 of `clinipipe scan` inside the warehouse, and the findings store."""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.core import TargetCore, TargetError
from clinipipe.targets.metering import MeteringRow

if TYPE_CHECKING:
    import pyarrow as pa

    from clinipipe.phi.scan import CandidateQuery, Finding

FINDING_COLUMNS = (
    "finding_id", "schema_name", "table_name", "column_name", "row_key", "category", "severity",
    "confidence", "detector", "masked_excerpt", "start_offset", "end_offset", "found_by",
    "first_seen", "last_seen",
)  # fmt: skip
"""The columns of `_clinipipe.phi_findings` the scanners write, in this order."""

UPDATED_ON_RESCAN = (
    "severity", "confidence", "detector", "masked_excerpt", "end_offset", "last_seen",
)  # fmt: skip
"""What a finding found again updates (its first_seen and found_by stay)."""


class PhiScan(TargetCore):
    """Finds PHI candidates with the warehouse's own regex engine and records findings.

    * **Only candidates leave.** `phi_scan_candidates` returns only candidate rows, and of
      those only the cells matching the prefilter (others NULL). It may return more than the
      detectors accept (stage 2 validates every candidate), never fewer.
    * **Atomicity and idempotency.** `upsert_phi_findings` upserts by `finding_id` in one
      transaction: a new finding is inserted, one seen before keeps `first_seen` and moves
      `last_seen` (and its latest severity, confidence, excerpt). Re-running a scan on
      unchanged data changes only `last_seen`. A crash leaves all of a call's findings or
      none; `record_phi_scan` meters a scan in its own transaction. Stage 1 only reads.
    * **No PHI in messages.** Nothing here logs or raises with a row value (excerpts are
      masked by the caller before they are stored).
    * **Scan marks.** `mark_phi_scanned` only ever moves a slot's mark forward (atomically);
      `unscanned_batches` reads the applied CDC batches after the mark. Together they make a
      batch applied but never scanned (a crash between the two) visible, never silent.
    * `phi_classifies` says whether the warehouse has its own column classifier; a dialect
      without one says so in its `cannot.py`.
    """

    phi_classifies: ClassVar[bool] = False
    """True when the warehouse has its own column classifier (Snowflake's SYSTEM$CLASSIFY)."""

    @abstractmethod
    def phi_scan_table_names(self, schema: str) -> list[str]:
        """The base tables of `schema` (for de-identified schemas, scanned in full)."""

    @abstractmethod
    def phi_scan_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(name, warehouse type) of each column of `schema.table`; [] when it does not exist."""

    @abstractmethod
    def phi_scan_primary_key(self, schema: str, table: str) -> list[str]:
        """The primary-key columns `schema.table` declares in the warehouse ([] if none)."""

    @abstractmethod
    def phi_scan_candidates(self, query: CandidateQuery) -> pa.Table:
        """Stage 1 of a scan inside the warehouse (see `CandidateQuery` for the columns)."""

    @abstractmethod
    def upsert_phi_findings(self, findings: Sequence[Finding], seen_at: dt.datetime) -> None:
        """Insert new findings into `_clinipipe.phi_findings` and move `last_seen` (and the
        latest severity, confidence, excerpt) of those seen before; atomically."""

    @abstractmethod
    def phi_classify(self, schema: str, table: str, classified: Sequence[str]) -> list[Finding]:
        """The warehouse's own classifier's findings for `schema.table`, leaving out the
        `classified` columns (the spec's PHI columns). [] where there is no classifier."""

    def record_phi_scan(
        self,
        started: dt.datetime,
        ended: dt.datetime,
        rows: int,
        cpu_seconds: float | None = None,
    ) -> None:
        """Meter a scan (job ``phi-scan``, `rows` candidate rows) on the incremental warehouse,
        in its own transaction; `cpu_seconds`: the scanning thread's CPU."""
        wh = self.loaded.spec.warehouses.incremental
        row = MeteringRow(
            "phi-scan", wh.name, "incremental", wh.size, started, ended, rows, None, cpu_seconds
        )
        self.execute_atomically([self.metering_insert_sql(row)])

    def mark_phi_scanned(self, slot: str, lsn: int) -> None:
        """Record that every CDC batch of `slot` applied at or before `lsn` was PHI-scanned.
        Atomic; a mark never moves back (a lower `lsn` than the recorded one changes nothing)."""
        q, marks = self.dialect.quote_literal, self.control("phi_scan_marks")
        self.execute_atomically(
            [
                f"DELETE FROM {marks} WHERE slot = {q(slot)} AND lsn < {int(lsn)}",
                f"INSERT INTO {marks} (slot, lsn, scanned_at) SELECT {q(slot)}, {int(lsn)}, "
                f"CURRENT_TIMESTAMP WHERE NOT EXISTS (SELECT 1 FROM {marks} "
                f"WHERE slot = {q(slot)})",
            ]
        )

    def unscanned_batches(self, slot: str) -> tuple[int, int | None, int | None]:
        """(count, first LSN, last LSN) of the CDC batches of `slot` applied after its PHI scan
        mark (all of them when there is no mark); (0, None, None) when every batch was scanned.
        Raises `TargetError` (run `clinipipe deploy`) on a warehouse without the marks table."""
        if not self.table_exists(CONTROL_SCHEMA, "phi_scan_marks"):
            raise TargetError(
                f"{self.describe()} has no _clinipipe.phi_scan_marks (deployed by an earlier "
                "clinipipe): run `clinipipe deploy` to add it"
            )
        q = self.dialect.quote_literal
        [(count, first, last)] = self.query(
            f"SELECT count(*), min(lsn), max(lsn) FROM {self.control('cdc_batches')} "
            f"WHERE slot = {q(slot)} AND lsn > coalesce((SELECT max(lsn) FROM "
            f"{self.control('phi_scan_marks')} WHERE slot = {q(slot)}), -1)"
        )
        return (
            int(count),
            (None if first is None else int(first)),
            (None if last is None else int(last)),
        )
