"""DuckDB PHI scan: stage-1 regex pushdown and the findings upsert (SQL and `DuckDBPhiScan`).

DuckDB's `regexp_matches` uses RE2, the syntax `DetectorSet.prefilter()` is written in, so the
pattern goes in unchanged. Only candidate rows leave the database (as Arrow), and of those only
the matching cells (others are NULL).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import duckdb

from clinipipe.phi.scan import ROW_DIGEST, CandidateQuery
from clinipipe.secrets import first_line, scrub_values
from clinipipe.sql.dialect import Dialect
from clinipipe.targets.capabilities.phi_scan import FINDING_COLUMNS, UPDATED_ON_RESCAN, PhiScan
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.core import DuckDBCore, columns_of, transaction

if TYPE_CHECKING:
    import pyarrow as pa

    from clinipipe.phi.scan import Finding

SAMPLE_SEED = 0
"""Fixed, so that a sampled scan repeated on unchanged data looks at the same rows."""


def candidate_sql(query: CandidateQuery, dialect: Dialect) -> str:
    """The stage-1 SELECT of `query` (see `CandidateQuery` for the result's columns)."""
    ident, literal = dialect.quote_ident, dialect.quote_literal
    pattern = literal(query.prefilter)
    source = dialect.qualify(query.schema, query.table)
    if query.sample is not None:
        source = (
            f"(SELECT * FROM {source} USING SAMPLE reservoir({int(query.sample)} ROWS) "
            f"REPEATABLE ({SAMPLE_SEED}))"
        )
    text = {c: f"CAST(s.{ident(c)} AS VARCHAR)" for c in query.columns}
    select = [f"CAST(s.{ident(k)} AS VARCHAR) AS k{i}" for i, k in enumerate(query.key_columns)]
    if not query.key_columns:
        select.append(f"md5(CAST(s AS VARCHAR)) AS {ident(ROW_DIGEST)}")
    select += [
        f"CASE WHEN regexp_matches({text[c]}, {pattern}) THEN {text[c]} END AS c{i}"
        for i, c in enumerate(query.columns)
    ]
    where = " OR ".join(f"regexp_matches({text[c]}, {pattern})" for c in query.columns)
    return f"SELECT {', '.join(select)} FROM {source} AS s WHERE {where}"


def upsert_findings_sql(findings_table: str, relation: str) -> str:
    """INSERT the rows of `relation` (columns `FINDING_COLUMNS`) into `findings_table`; a
    finding already there keeps its first_seen and gets the new last_seen."""
    columns = ", ".join(FINDING_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in UPDATED_ON_RESCAN)
    return (
        f"INSERT INTO {findings_table} ({columns}) SELECT {columns} FROM {relation} "
        f"ON CONFLICT (finding_id) DO UPDATE SET {updates}"
    )


def table_names_sql(schema: str, dialect: Dialect) -> str:
    """The base tables of `schema` in this database, by name."""
    return (
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = "
        f"current_database() AND table_schema = {dialect.quote_literal(schema)} "
        "AND table_type = 'BASE TABLE' ORDER BY table_name"
    )


def primary_key_sql(schema: str, table: str, dialect: Dialect) -> str:
    """The primary-key columns of `schema.table`, if it declares one."""
    q = dialect.quote_literal
    return (
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE database_name = "
        f"current_database() AND schema_name = {q(schema)} AND table_name = {q(table)} "
        "AND constraint_type = 'PRIMARY KEY'"
    )


class DuckDBPhiScan(DuckDBCore, PhiScan):
    """`PhiScan` on DuckDB: `regexp_matches` is RE2, so the prefilter runs unchanged; findings
    are upserted with INSERT ... ON CONFLICT in one transaction. DuckDB has no classifier
    (`cannot.py`)."""

    def phi_scan_table_names(self, schema: str) -> list[str]:
        return [str(r[0]) for r in self.query(table_names_sql(schema, self.dialect))]

    def phi_scan_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        return columns_of(self.con, schema, table)

    def phi_scan_primary_key(self, schema: str, table: str) -> list[str]:
        rows = self.query(primary_key_sql(schema, table, self.dialect))
        return [str(c) for c in rows[0][0]] if rows else []

    def phi_scan_candidates(self, query: CandidateQuery) -> pa.Table:
        try:
            return self.con.execute(candidate_sql(query, self.dialect)).to_arrow_table()
        except duckdb.Error as exc:
            reason = scrub_values(first_line(exc))
            raise TargetError(
                f"PHI scan of {query.schema}.{query.table} failed: {reason}"
            ) from None

    def upsert_phi_findings(self, findings: Sequence[Finding], seen_at: dt.datetime) -> None:
        import pyarrow as pa

        if not findings:
            return
        ts = pa.array([seen_at] * len(findings), pa.timestamp("us", tz="UTC"))
        rows = [f.as_dict() for f in findings]
        fields = {"schema_name": "schema", "table_name": "table", "column_name": "column",
                  "start_offset": "start", "end_offset": "end"}  # fmt: skip
        columns = {c: [r[fields.get(c, c)] for r in rows]
                   for c in FINDING_COLUMNS if c not in ("first_seen", "last_seen")}  # fmt: skip
        table = pa.table({**columns, "first_seen": ts, "last_seen": ts})
        cur = self.cursor()
        try:
            cur.register("_clinipipe_phi_findings_in", table)
            with transaction(cur):
                findings_table = self.control("phi_findings")
                cur.execute(upsert_findings_sql(findings_table, "_clinipipe_phi_findings_in"))
        except duckdb.Error as exc:
            reason = scrub_values(first_line(exc))
            raise TargetError(f"recording PHI findings failed: {reason}") from None
        finally:
            cur.close()
