"""Snowflake SQL of the PHI scan: stage-1 `REGEXP_LIKE` pushdown, the findings MERGE, and
`SYSTEM$CLASSIFY`.

Snowflake's regular expressions are POSIX extended with Perl's ``\\d \\s \\w`` classes, and
`REGEXP_LIKE` must match the whole subject. `DetectorSet.prefilter()` is RE2, so
`snowflake_regex` rewrites it into a pattern that matches **at least** every text the RE2
pattern matches (stage 1 may only widen: stage 2 validates every candidate): non-capturing and
named groups become plain groups, word boundaries are dropped, lazy quantifiers become greedy,
inline case-insensitivity becomes the ``i`` parameter for the whole pattern, Unicode classes
become "any character", and the pattern is wrapped in ``.*( ... ).*`` with the ``s``
parameter (``.`` matches newlines) so that a match anywhere counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from clinipipe.phi.scan import ROW_DIGEST, CandidateQuery, Finding
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import Statement
from clinipipe.targets.capabilities.phi_scan import FINDING_COLUMNS, UPDATED_ON_RESCAN, PhiScan
from clinipipe.targets.core import TargetError
from clinipipe.targets.snowflake.core import SnowflakeCore

if TYPE_CHECKING:
    import pyarrow as pa

MERGE_CHUNK = 500
"""Findings per MERGE statement (they travel as literals: masked text only)."""


def snowflake_regex(re2: str) -> tuple[str, str]:
    """(pattern, parameters) for `REGEXP_LIKE(text, pattern, parameters)` that matches every
    text in which RE2 pattern `re2` finds a match (and possibly more)."""
    out: list[str] = []
    insensitive = False
    i, n = 0, len(re2)
    in_class = False
    while i < n:
        ch = re2[i]
        if ch == "\\" and i + 1 < n:
            nxt = re2[i + 1]
            if nxt in "pP":  # \pL, \p{Greek}: any character (a widening)
                end = i + 2
                if end < n and re2[end] == "{":
                    end = re2.index("}", end) + 1 if "}" in re2[end:] else n
                else:
                    end += 1
                out.append("." if not in_class else "\\w")
                i = end
                continue
            if not in_class and nxt in "bB":  # word boundaries: dropped (a widening)
                i += 2
                continue
            if not in_class and nxt == "A":
                out.append("^")
                i += 2
                continue
            if not in_class and nxt == "z":
                out.append("$")
                i += 2
                continue
            out.append(re2[i : i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]" and not (out and out[-1] in ("[", "[^")):
                in_class = False
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            if re2.startswith("[^", i):
                out.append("[^")
                i += 2
            else:
                out.append("[")
                i += 1
            if i < n and re2[i] == "]":  # a literal ] first in the class
                out.append("]")
                i += 1
            continue
        if ch == "(" and re2.startswith("(?", i):
            j = i + 2
            if re2.startswith("P<", j) or re2.startswith("<", j):  # named group
                close = re2.index(">", j)
                out.append("(")
                i = close + 1
                continue
            flags_end = j
            while flags_end < n and re2[flags_end] not in ":)":
                flags_end += 1
            flags = re2[j:flags_end]
            if "i" in flags.split("-")[0]:
                insensitive = True
            if flags_end < n and re2[flags_end] == ")":  # (?i) alone: applies onwards
                i = flags_end + 1
                continue
            out.append("(")  # (?:...) or (?i:...)
            i = flags_end + 1
            continue
        if ch in "*+?}" and i + 1 < n and re2[i + 1] == "?":  # lazy -> greedy
            out.append(ch)
            i += 2
            continue
        out.append(ch)
        i += 1
    pattern = ".*(" + "".join(out) + ").*"
    return pattern, "is" if insensitive else "s"


def candidate_sql(query: CandidateQuery, dialect: Dialect, database: str) -> str:
    """The stage-1 SELECT of `query` (see `CandidateQuery` for the result's columns)."""
    ident, literal = dialect.quote_ident, dialect.quote_literal
    pattern, params = snowflake_regex(query.prefilter)
    source = f"{dialect.qualify(database, query.schema, query.table)} AS s"
    if query.sample is not None:  # the alias comes first in Snowflake's grammar
        source += f" SAMPLE ROW ({int(query.sample)} ROWS)"
    text = {c: f"TO_VARCHAR(s.{ident(c)})" for c in query.columns}
    match = {c: f"REGEXP_LIKE({text[c]}, {literal(pattern)}, {literal(params)})"
             for c in query.columns}  # fmt: skip
    select = [
        f"TO_VARCHAR(s.{ident(k)}) AS {ident(f'k{i}')}" for i, k in enumerate(query.key_columns)
    ]
    if not query.key_columns:
        select.append(f"TO_VARCHAR(HASH(s.*)) AS {ident(ROW_DIGEST)}")
    select += [
        f"IFF({match[c]}, {text[c]}, NULL) AS {ident(f'c{i}')}" for i, c in enumerate(query.columns)
    ]
    where = " OR ".join(match[c] for c in query.columns)
    return f"SELECT {', '.join(select)} FROM {source} WHERE {where}"


def merge_findings_sql(
    findings_table: str, findings: Sequence[Finding], seen_at: dt.datetime, dialect: Dialect
) -> list[str]:
    """MERGE statements (one per `MERGE_CHUNK` findings) that insert new findings and move
    `last_seen` (and the latest severity, confidence, excerpt) of findings seen before."""
    q = dialect.quote_literal
    seen = f"{q(seen_at.isoformat())}::TIMESTAMP_TZ"
    statements = []
    for start in range(0, len(findings), MERGE_CHUNK):
        rows = []
        for f in findings[start : start + MERGE_CHUNK]:
            values = [
                q(f.finding_id), q(f.schema), q(f.table), q(f.column), q(f.row_key),
                q(f.category), q(f.severity), repr(float(f.confidence)), q(f.detector),
                q(f.masked_excerpt), q(f.start), q(f.end), q(f.found_by), seen, seen,
            ]  # fmt: skip
            rows.append(f"SELECT {', '.join(values)}")
        select = " UNION ALL ".join(rows)
        aliases = ", ".join(FINDING_COLUMNS)
        updates = ", ".join(f"{c} = s.{c}" for c in UPDATED_ON_RESCAN)
        inserted = ", ".join(f"s.{c}" for c in FINDING_COLUMNS)
        statements.append(
            f"MERGE INTO {findings_table} t USING (SELECT * FROM ({select}) AS v ({aliases})) s "
            f"ON t.finding_id = s.finding_id WHEN MATCHED THEN UPDATE SET {updates} "
            f"WHEN NOT MATCHED THEN INSERT ({aliases}) VALUES ({inserted})"
        )
    return statements


def classify_object_name(database: str, schema: str, table: str) -> str:
    """The object name SYSTEM$CLASSIFY takes: unquoted upper-case parts (clinipipe creates
    every Snowflake object under its upper-case name)."""
    return ".".join(part.upper() for part in (database, schema, table))


def classify_sql(
    database: str, schema: str, table: str, sample_count: int, auto_tag: bool, dialect: Dialect
) -> list[str]:
    """Classify `schema.table` with Snowflake's classifier, then read the result."""
    name = dialect.quote_literal(classify_object_name(database, schema, table))
    tag = "true" if auto_tag else "false"
    options = f"{{'sample_count': {int(sample_count)}, 'auto_tag': {tag}}}"
    return [
        f"CALL SYSTEM$CLASSIFY({name}, {options})",
        f"SELECT SYSTEM$GET_CLASSIFICATION_RESULT({name})",
    ]


def table_names_sql(database: str, schema: str, dialect: Dialect) -> str:
    """The base tables of `schema`, by name (upper case, as Snowflake stores them)."""
    return (
        f"SELECT table_name FROM {dialect.quote_ident(database)}.information_schema.tables "
        f"WHERE table_schema = {dialect.quote_literal(schema.upper())} "
        "AND table_type = 'BASE TABLE' ORDER BY table_name"
    )


def columns_sql(database: str, schema: str, table: str, dialect: Dialect) -> str:
    """(name, type) of the columns of `schema.table`, in order."""
    q = dialect.quote_literal
    return (
        f"SELECT column_name, data_type FROM {dialect.quote_ident(database)}."
        f"information_schema.columns WHERE table_schema = {q(schema.upper())} "
        f"AND table_name = {q(table.upper())} ORDER BY ordinal_position"
    )


class SnowflakePhiScan(SnowflakeCore, PhiScan):
    """`PhiScan` on Snowflake: REGEXP_LIKE pushdown (`snowflake_regex` only widens), findings
    MERGEd in one transaction, and Snowflake's own classifier (SYSTEM$CLASSIFY)."""

    phi_classifies: ClassVar[bool] = True

    def phi_scan_table_names(self, schema: str) -> list[str]:
        sql = table_names_sql(self.spec.database, schema, self.dialect)
        return [str(r[0]).lower() for r in self.query(sql)]

    def phi_scan_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        rows = self.query(columns_sql(self.spec.database, schema, table, self.dialect))
        return [(str(n).lower(), str(t)) for n, t in rows]

    def phi_scan_candidates(self, query: CandidateQuery) -> pa.Table:
        """Stage 1 with REGEXP_LIKE; the few candidate rows come back as strings."""
        import pyarrow as pa
        import snowflake.connector

        cursor = self._session().cursor()
        try:
            cursor.execute(candidate_sql(query, self.dialect, self.spec.database))
            names = [str(d[0]).lower() for d in cursor.description]
            rows = cursor.fetchall()
        except snowflake.connector.errors.Error as exc:
            raise TargetError(
                f"PHI scan of {query.schema}.{query.table} failed: {self._reason(exc)}"
            ) from None
        finally:
            cursor.close()
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        return pa.table(
            {n: pa.array([None if v is None else str(v) for v in values], pa.string())
             for n, values in zip(names, columns, strict=True)}
        )  # fmt: skip

    def upsert_phi_findings(self, findings: Sequence[Finding], seen_at: dt.datetime) -> None:
        if findings:
            table = self.control("phi_findings")
            self.execute_atomically(merge_findings_sql(table, findings, seen_at, self.dialect))

    def phi_classify(self, schema: str, table: str, classified: Sequence[str]) -> list[Finding]:
        """CALL SYSTEM$CLASSIFY (phi.classification settings), read the result, and keep the
        columns Snowflake calls identifiers that the spec does not classify as PHI."""
        import snowflake.connector

        from clinipipe.phi.classify import ClassificationResultError, classification_findings

        settings = self.loaded.spec.phi.classification
        call, read = classify_sql(self.spec.database, schema, table, settings.sample_count,
                                  settings.auto_tag, self.dialect)  # fmt: skip
        try:
            self._execute(Statement(0, call))
            rows = self.query(read)
        except snowflake.connector.errors.Error as exc:
            raise TargetError(f"failed: {self._reason(exc)}") from None
        try:
            return classification_findings(schema, table, rows[0][0] if rows else None,
                                           classified=classified)  # fmt: skip
        except ClassificationResultError as exc:
            raise TargetError(str(exc)) from None
