"""Snowflake verify: the canonical text of each type in Snowflake SQL and md5 prefixes as
numbers (`TO_NUMBER(SUBSTR(MD5(t), 1, 15), 'XXX...')`); the queries are the shared
`ChecksumSql`'s, over the raw tables. The guarantees are `Verify`'s.

Pinned by golden strings (tests/golden/snowflake-verify/) and parsed with sqlglot's Snowflake
grammar; the canonical texts and row digests that fakesnow can run are compared with
PostgreSQL's (tests/test_verify_snowflake.py); not verified against a real Snowflake account.
Types whose Snowflake value cannot give PostgreSQL's canonical text are refused
(`SnowflakeCannot.verify_refusal`, in cannot.py; `snowflake_canonical` raises for them), and
verify reports such a table as skipped, "not verifiable here", instead of false differences.
"""

from __future__ import annotations

from clinipipe.source.catalog import ColumnType
from clinipipe.source.checksum import ChecksumSql, float_shortest_rule
from clinipipe.targets.capabilities.verify import Verify
from clinipipe.targets.snowflake.cannot import NOT_VERIFIABLE
from clinipipe.targets.snowflake.core import SnowflakeCore
from clinipipe.targets.snowflake.types import snowflake_type

INTERVAL_FIELDS = ("months", "days", "microseconds")


def snowflake_canonical(x: str, t: ColumnType) -> str:
    """Snowflake: the canonical text of value `x` of type `t` (NULL for NULL)."""
    logical = t.logical
    if logical in NOT_VERIFIABLE:
        raise ValueError(f"no canonical Snowflake text for {t.pg_type}: {NOT_VERIFIABLE[logical]}")
    if logical == "bool":
        # Not IFF: IFF(NULL, ...) is its ELSE branch, which would make NULL read 'false'.
        return f"CASE WHEN {x} THEN 'true' WHEN NOT {x} THEN 'false' END"
    if logical == "date":
        return f"TO_VARCHAR(DATEDIFF('day', '1970-01-01'::DATE, {x}))"
    if logical in ("timestamp", "timestamptz"):
        return f"TO_VARCHAR(DATE_PART(EPOCH_MICROSECOND, {x}))"
    if logical == "time":
        return (
            f"TO_VARCHAR((DATE_PART(HOUR, {x}) * 3600 + DATE_PART(MINUTE, {x}) * 60 "
            f"+ DATE_PART(SECOND, {x})) * 1000000 + FLOOR(DATE_PART(NANOSECOND, {x}) / 1000))"
        )
    if logical == "interval":  # the OBJECT's three fields, read back as integers
        months, days, micros = (f"TO_VARCHAR({x}:{f}::NUMBER(19,0))" for f in INTERVAL_FIELDS)
        return f"{months} || '|' || {days} || '|' || {micros}"
    if logical == "decimal" and snowflake_type(t) != "VARCHAR":
        # All scale digits, and a leading zero before the point (PostgreSQL's 0.00012).
        return f"REGEXP_REPLACE(TO_VARCHAR({x}), '^(-?)[.]', '\\\\10.')"
    if logical == "bytes":
        return f"LOWER(HEX_ENCODE({x}))"
    if logical in ("float32", "float64"):
        text = f"TO_VARCHAR({x})"
        rule = float_shortest_rule(text, lambda s: f"CAST({s} AS INTEGER)", f"{x} < 0")
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = 'NaN'::FLOAT THEN 'NaN' "
            f"WHEN {x} = 'inf'::FLOAT THEN 'Infinity' WHEN {x} = '-inf'::FLOAT THEN '-Infinity' "
            f"WHEN {x} = 0 THEN IFF(STARTSWITH({text}, '-'), '-0', '0') ELSE {rule} END"
        )
    return f"TO_VARCHAR({x})"


class SnowflakeVerify(SnowflakeCore, Verify):
    """Verify's primitives in Snowflake SQL."""

    def checksum_sql(self) -> ChecksumSql:
        q = self.dialect
        return ChecksumSql(
            quote_ident=q.quote_ident,
            quote_literal=q.quote_literal,
            canonical=snowflake_canonical,
            hash60=lambda t: f"TO_NUMBER(SUBSTR(MD5({t}), 1, 15), 'XXXXXXXXXXXXXXX')",
            hash32=lambda t: f"TO_NUMBER(SUBSTR(MD5({t}), 1, 8), 'XXXXXXXX')",
            length=lambda text: f"LENGTH({text})",
            int_text=lambda expr: f"TO_VARCHAR({expr})",
            relation=lambda table: self.raw_name(table.name),
            range_index=lambda pos, lo, width, narrow: f"FLOOR(({pos} - ({lo})) / {width})",
        )
