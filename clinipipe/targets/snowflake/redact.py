"""The SQL of `clinipipe redact` on Snowflake: `RedactSql` with Snowflake's spellings, the
functions of template 06, and AI_REDACT for notes.

Differences from DuckDB: the key is one hex column ``hmac_key`` of a session TEMPORARY
table (`key_table`), read by the Python UDF `pseudonym` (exact HMAC-SHA256 from Python's
`hmac`); whole years of age come from `age_years` (DATEDIFF('year') alone counts calendar-year
boundaries); the row digest is `HASH_AGG`.

Notes (`ai_redact_sql`): each note is split with `SNOWFLAKE.CORTEX.SPLIT_TEXT_RECURSIVE_CHARACTER`
into chunks of `AI_REDACT_CHUNK_CHARACTERS` characters (about 400-600 tokens of clinical text:
AI_REDACT allows 4,096 tokens of input and output together and 1,024 of output, and its output
is about as long as its input), MRNs are replaced first by `MRN_PATTERN` (AI_REDACT has no MRN
category), each chunk goes through AI_REDACT, and the chunks are joined again in order with a
blank (the splitter may trim whitespace at chunk edges). A NULL note stays NULL.

Text columns the spec neither classifies nor releases (fail closed: `ColumnPlan.unclassified`
with treatment ``text``) go through the same chunked AI_REDACT, once per distinct value (they
are mostly short and repetitive: a department, a dose) and joined back by value, so a value
typed a million times costs one call. Without ``--ai-redact`` such a table is refused
(`clinipipe.pipeline.redact`): nothing unclassified is ever copied as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from clinipipe.phi.safe_harbor import RedactionKey, TablePlan
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.capabilities.redaction import Redaction, ResearchBuild
from clinipipe.targets.core import TargetError
from clinipipe.targets.redact_sql import NEW_PREFIX, RedactSql, type_kind
from clinipipe.targets.snowflake.staging import SnowflakeStaging

AI_REDACT_CHUNK_CHARACTERS = 1500
KEY_TABLE = "_CLINIPIPE_REDACTION_KEY"
KEY = "TO_BINARY(k.hmac_key, 'HEX')"
"""The key as the functions take it (the temporary table holds it as hex text)."""
MRN_PATTERN = (
    "(MRN|MR#|medical record (number|no\\.?|#))[[:space:]:#.]*[A-Za-z]{0,4}[0-9][A-Za-z0-9-]{3,}"
)
"""A medical record number with its label (`MRN: 00123456`, `medical record number A12-345`,
`MRN00012345`), matched case-insensitively; replaced by ``[MRN]`` before AI_REDACT."""


class SnowflakeRedactSql(RedactSql):
    """`RedactSql` for Snowflake (qualified with the database)."""

    def key_table(self) -> str:
        return self.qualify(CONTROL_SCHEMA, KEY_TABLE)

    key_arguments = KEY

    def in_utc(self, expr: str) -> str:
        return f"CONVERT_TIMEZONE('UTC', {expr})"

    def utc_year(self, expr: str) -> str:
        return f"CAST(year({self.utc_date(expr, 'TIMESTAMP_TZ')}) AS INTEGER)"

    def age_at(self, birth: str, data_type: str, as_of: str) -> str:
        return f"{self.function('age_years')}({self.utc_date(birth, data_type)}, DATE {as_of})"

    def shifted(self, expr: str, data_type: str, days: str) -> str:
        if type_kind(data_type) == "text":
            expr = f"TRY_CAST({expr} AS DATE)"
        return f"DATEADD('day', {days}, {expr})"

    def fingerprint_sql(self, raw_table: str, columns: Sequence[str]) -> str:
        listed = ", ".join(self.ident(c) for c in columns)
        return f"SELECT COUNT(*), HASH_AGG({listed}) FROM {raw_table}"

    def key_table_sql(self) -> str:
        raise NotImplementedError("Snowflake loads the key with write_pandas (see the target)")

    def ai_redact_sql(self, plan: TablePlan, raw_table: str, as_of: str | None) -> str:
        """The research rows of a table with text to redact, every such value through AI_REDACT
        (see the module docstring). Notes (``free_text``) are joined back by the
        patient-independent row key (a single-column primary key; else the first column), as
        it is in the raw table; unclassified text by its distinct value."""
        q = self.dialect.quote_literal
        keys = plan.primary_key if len(plan.primary_key) == 1 else (plan.columns[0].name,)
        row_key = self.ident(keys[0])
        mapped = self._mapped(plan)
        with_list, source = self.source(plan, raw_table)
        ctes = [with_list.removeprefix("WITH ").strip()] if with_list else []
        joins, columns = [], []
        redacted = (
            f"LISTAGG(AI_REDACT(REGEXP_REPLACE(CAST(s.value AS VARCHAR), {q(MRN_PATTERN)}, "
            "'[MRN]', 1, 0, 'i')), ' ') WITHIN GROUP (ORDER BY s.index) AS redacted"
        )
        for c in plan.columns:
            if c.name not in plan.notes:
                columns += self.column(c, as_of, mapped)
                continue
            text = self.ident(c.name)
            alias = self.ident(f"__clinipipe_{c.name}")
            if c.unclassified:
                ctes.append(
                    f"{alias} AS (SELECT d.v, {redacted} FROM (SELECT DISTINCT {text} AS v "
                    f"FROM {raw_table} WHERE {text} IS NOT NULL) d, LATERAL FLATTEN(INPUT => "
                    f"SNOWFLAKE.CORTEX.SPLIT_TEXT_RECURSIVE_CHARACTER(d.v, 'none', "
                    f"{AI_REDACT_CHUNK_CHARACTERS}, 0)) s GROUP BY d.v)"
                )
                joins.append(f" LEFT JOIN {alias} ON {alias}.v = t.{text}")
            else:
                ctes.append(
                    f"{alias} AS (SELECT n.{row_key} AS row_key, {redacted} "
                    f"FROM {raw_table} n, LATERAL FLATTEN(INPUT => "
                    f"SNOWFLAKE.CORTEX.SPLIT_TEXT_RECURSIVE_CHARACTER(n.{text}, 'none', "
                    f"{AI_REDACT_CHUNK_CHARACTERS}, 0)) s GROUP BY n.{row_key})"
                )
                joins.append(f" LEFT JOIN {alias} ON {alias}.row_key = t.{row_key}")
            columns.append(f"{alias}.redacted AS {text}")
        return f"WITH {', '.join(ctes)} SELECT {', '.join(columns)} FROM {source}{''.join(joins)}"


class SnowflakeRedaction(SnowflakeStaging, Redaction):
    """`Redaction` on Snowflake (see `build_snowflake_tables` for the guarantees)."""

    def redact_sql(self) -> SnowflakeRedactSql:
        return SnowflakeRedactSql(self.dialect, database=self.spec.database)

    def redaction_columns(self, table: str) -> list[tuple[str, str]]:
        q = self.dialect.quote_string
        rows = self.query(
            "SELECT column_name, data_type FROM "
            f"{self.dialect.quote_ident(self.spec.database)}.information_schema.columns "
            f"WHERE table_schema = {q(self.spec.schema_.upper())} "
            f"AND table_name = {q(table.upper())} ORDER BY ordinal_position"
        )
        return [(str(n).lower(), str(t)) for n, t in rows]

    def research_table(self, schema: str, table: str) -> str:
        return self.dialect.qualify(self.spec.database, schema, table)

    def build_research_tables(
        self,
        builds: Sequence[ResearchBuild],
        key: RedactionKey | None,
        finish: Callable[[dict[str, int]], list[str]],
    ) -> dict[str, int]:
        """Built under temporary names, swapped in, then recorded (see
        `build_snowflake_tables`)."""
        return build_snowflake_tables(self, builds, key, finish)


def build_snowflake_tables(
    target: SnowflakeRedaction,
    builds: Sequence[ResearchBuild],
    key: RedactionKey | None,
    finish: Callable[[dict[str, int]], list[str]],
) -> dict[str, int]:
    """`SnowflakeTarget.build_research_tables`. DDL auto-commits in Snowflake, so:

    1. the key goes (hex, via write_pandas: never in SQL text) into a session TEMPORARY table;
    2. every table is built as ``<schema>.__clinipipe_new_<table>`` (CREATE TABLE AS, with its
       comment); a failure here leaves every research table as it was;
    3. each is swapped in atomically (``ALTER TABLE ... SWAP WITH``, or RENAME the first time);
    4. `finish`'s statements (state rows, README rows, audit manifest) run in one transaction.

    A crash between 3 and 4 leaves a complete new table whose state row is the old one: the
    next run rebuilds it. The temporary key table is dropped at the end (and with the session).
    """
    import pandas as pd
    import snowflake.connector

    q = target.dialect.quote_literal
    sql = target.redact_sql()
    counts: dict[str, int] = {}
    loaded_key = False
    try:
        if key is not None and builds:
            target.query(f"CREATE OR REPLACE TEMPORARY TABLE {sql.key_table()} (HMAC_KEY VARCHAR)")
            loaded_key = True
            target._write_stage(KEY_TABLE, pd.DataFrame({"HMAC_KEY": [key.raw.hex()]}))
        for build in builds:
            if build.transform is not None:
                raise TargetError("notes on Snowflake are redacted in the warehouse (--ai-redact)")
            new = target.research_table(build.schema, NEW_PREFIX + build.table)
            target.query(
                f"CREATE OR REPLACE TABLE {new} COMMENT = {q(build.comment)} AS {build.sql}"
            )
            counts[build.table] = int(target.query(f"SELECT COUNT(*) FROM {new}")[0][0])
        for build in builds:
            new = target.research_table(build.schema, NEW_PREFIX + build.table)
            final = target.research_table(build.schema, build.table)
            if target.table_exists(build.schema, build.table):
                target.query(f"ALTER TABLE {final} SWAP WITH {new}")
                target.query(f"DROP TABLE IF EXISTS {new}")
            else:
                target.query(f"ALTER TABLE {new} RENAME TO {final}")
        target.execute_atomically(finish(counts))
    except snowflake.connector.errors.Error as exc:
        raise TargetError(
            f"building the research tables failed: {target._reason(exc)} (research tables not "
            "yet swapped in are as before; the next run rebuilds what is not recorded)"
        ) from None
    finally:
        if loaded_key:
            with contextlib.suppress(Exception):
                target.query(f"DROP TABLE IF EXISTS {sql.key_table()}")
    return counts
