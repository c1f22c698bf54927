"""DuckDB SQL of the PHI scan: stage-1 regex pushdown and the findings upsert.

DuckDB's `regexp_matches` uses RE2, the syntax `DetectorSet.prefilter()` is written in, so the
pattern goes in unchanged. Only candidate rows leave the database (as Arrow), and of those only
the matching cells (others are NULL).
"""

from __future__ import annotations

from clinipipe.phi.scan import ROW_DIGEST, CandidateQuery
from clinipipe.sql.dialect import Dialect

SAMPLE_SEED = 0
"""Fixed, so that a sampled scan repeated on unchanged data looks at the same rows."""

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
