"""Verify: the warehouse's side of `clinipipe verify`. No dialect here.

The warehouse computes, inside itself, the same checksums PostgreSQL computes
(`clinipipe.source.checksum`: canonical text per value, md5-based row hashes, ranges of a
position): a dialect supplies only its primitives (`checksum_sql`: how it spells the canonical
text of each type, md5 prefixes as integers, lengths, integer division); the queries are the
shared `ChecksumSql`'s.
"""

from __future__ import annotations

import datetime as dt
import json
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from clinipipe.source.checksum import ChecksumSql, ChecksumTable, Span
from clinipipe.targets.core import TargetCore, TargetError

VERIFY_RUNS = "verify_runs"


class Verify(TargetCore):
    """Checksums of raw tables, and the record of verify runs.

    Guarantees:

    * **Read-only and consistent.** `verify_checksums_at` / `verify_range_sums` /
      `verify_rows` / `verify_column_hashes` never write. They see the warehouse as of one
      checkpoint as long as no CDC batch commits between them: clinipipe runs them all in the
      process that owns the warehouse, on the CDC loop's thread between two batches (or with
      `cdc start` not running), so nothing commits meanwhile. They are idempotent: the same
      data gives the same answer.
    * **No values leave.** Answers hold counts, sums of hashes, canonical key texts and md5
      digests only (never a non-key value).
    * **Recording** (`record_verify_run`): one row in ``_clinipipe.verify_runs``, a single
      atomic insert; a crash before it leaves no row (the run simply did not record),
      after it the whole row. Recording the same run id twice is refused by the key.
    * A warehouse deployed before verify existed has no ``verify_runs`` table:
      `require_verify_runs` raises `TargetError` saying to run `clinipipe deploy`.
    """

    @abstractmethod
    def checksum_sql(self) -> ChecksumSql:
        """This warehouse's checksum queries (its primitives over the shared builder), over
        the raw tables (`raw_name`)."""

    def verify_refusal(self, table: ChecksumTable) -> str | None:
        """Why this warehouse cannot give the source's canonical values of `table` (verify then
        reports the table skipped, "not verifiable here", instead of false differences), or
        None when it can. A dialect that refuses says so in its ``cannot.py``."""
        return None

    def verify_bounds(self, table: ChecksumTable) -> tuple[int | None, int | None, int]:
        """(min position, max position, rows) of the raw table of `table`."""
        lo, hi, n = self.query(self.checksum_sql().bounds_sql(table))[0]
        return (None if lo is None else int(lo), None if hi is None else int(hi), int(n))

    def verify_range_sums(
        self, table: ChecksumTable, lo: int, width: int, spans: Sequence[Span]
    ) -> dict[int, tuple[int, int]]:
        """{range index: (rows, sum of row hashes)} of the non-empty ranges of width `width`
        from `lo` over the rows in `spans`."""
        sql = self.checksum_sql().range_sums_sql(table, lo, width, spans)
        return {int(r): (int(n), int(h)) for r, n, h in self.query(sql)}

    def verify_rows(
        self, table: ChecksumTable, spans: Sequence[Span]
    ) -> dict[tuple[str | None, ...], str]:
        """{canonical key parts: md5 of the row text} of the rows in `spans`."""
        k = len(table.key)
        rows = self.query(self.checksum_sql().rows_sql(table, spans))
        return {tuple(r[:k]): str(r[k]) for r in rows}

    def verify_column_hashes(
        self, table: ChecksumTable, spans: Sequence[Span], keys: Sequence[str]
    ) -> dict[tuple[str | None, ...], tuple[str, ...]]:
        """{canonical key parts: md5 of each column's item} of the rows in `spans` whose key
        text is in `keys`."""
        k = len(table.key)
        rows = self.query(self.checksum_sql().column_hashes_sql(table, spans, keys))
        return {tuple(r[:k]): tuple(str(v) for v in r[k:]) for r in rows}

    def require_verify_runs(self) -> None:
        """Raise `TargetError` unless deploy created ``_clinipipe.verify_runs``."""
        from clinipipe.sql.context import CONTROL_SCHEMA

        if not self.table_exists(CONTROL_SCHEMA, VERIFY_RUNS):
            raise TargetError(
                f"{self.describe()} has no {CONTROL_SCHEMA}.{VERIFY_RUNS} table (it was deployed "
                "by an older clinipipe): run `clinipipe deploy` to add it"
            )

    def record_verify_run(self, run: Mapping[str, Any]) -> None:
        """Insert one verify run (`run`: the report's `as_dict`): id, times, outcome,
        positions, counts and the JSON report (names, keys, column names; no values)."""
        q = self.dialect.quote_literal
        lsn = run.get("source_lsn")
        checkpoint = run.get("warehouse_lsn")
        counts = run.get("counts") or {}
        started = str(run["started_at"])
        ended = str(run.get("ended_at") or dt.datetime.now(dt.UTC).isoformat())
        self.execute_atomically([
            f"INSERT INTO {self.control(VERIFY_RUNS)} (run_id, started_at, ended_at, outcome, "
            "sample_pct, source_lsn, warehouse_lsn, tables_checked, rows_checked, differences, "
            "keys_not_checked, report) VALUES ("
            f"{q(str(run['run_id']))}, {q(started)}, {q(ended)}, {q(str(run['outcome']))}, "
            f"{_number(run.get('sample_pct'))}, {q(lsn) if lsn else 'NULL'}, "
            f"{q(checkpoint) if checkpoint else 'NULL'}, {int(counts.get('tables', 0))}, "
            f"{int(counts.get('rows', 0))}, {int(counts.get('differences', 0))}, "
            f"{int(counts.get('keys_not_checked', 0))}, {q(json.dumps(run, default=str))})"
        ])  # fmt: skip


def _number(value: object) -> str:
    return "NULL" if value is None else repr(float(value))  # type: ignore[arg-type]
