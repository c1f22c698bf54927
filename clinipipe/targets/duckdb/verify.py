"""DuckDB verify: the canonical text of each type in DuckDB SQL (the rule is in
`clinipipe.source.checksum`'s docstring and docs/TYPE_MAPPING.md), md5 prefixes as integers;
the queries are the shared `ChecksumSql`'s, over the raw tables. The guarantees are
`Verify`'s."""

from __future__ import annotations

from clinipipe.source.catalog import ColumnType
from clinipipe.source.checksum import ChecksumSql, ChecksumTable, float_shortest_rule
from clinipipe.targets.capabilities.verify import Verify
from clinipipe.targets.duckdb.core import DuckDBCore
from clinipipe.targets.duckdb.types import MAX_DECIMAL_WIDTH


def duckdb_canonical(x: str, t: ColumnType) -> str:
    """DuckDB: the canonical text of value `x` of type `t` (NULL for NULL); `x` is evaluated
    more than once: pass a column reference."""
    logical = t.logical
    if logical == "date":
        return (
            f"CASE WHEN isfinite({x}) THEN CAST(datediff('day', DATE '1970-01-01', {x}) "
            f"AS VARCHAR) ELSE CAST({x} AS VARCHAR) END"
        )
    if logical in ("timestamp", "timestamptz"):
        return (
            f"CASE WHEN isfinite({x}) THEN CAST(epoch_us({x}) AS VARCHAR) "
            f"ELSE CAST({x} AS VARCHAR) END"
        )
    if logical == "time":
        return f"CAST(epoch_us({x}) AS VARCHAR)"
    if logical == "timetz":
        return (
            f"CAST((datepart('hour', {x}) * 3600 + datepart('minute', {x}) * 60)::BIGINT "
            f"* 1000000 + datepart('microseconds', {x}) AS VARCHAR) || '@' "
            f"|| CAST(datepart('timezone', {x}) AS VARCHAR)"
        )
    if logical == "interval":
        return (
            f"CAST(datepart('year', {x}) * 12 + datepart('month', {x}) AS VARCHAR) || '|' "
            f"|| CAST(datepart('day', {x}) AS VARCHAR) || '|' || CAST((datepart('hour', {x}) "
            f"* 3600 + datepart('minute', {x}) * 60)::HUGEINT * 1000000 "
            f"+ datepart('microseconds', {x}) AS VARCHAR)"
        )
    if logical == "bytes":
        return f"lower(hex({x}))"
    if logical == "decimal" and t.decimal_width()[0] <= MAX_DECIMAL_WIDTH:
        # DuckDB prints DECIMAL(5,5) as '.00012': put PostgreSQL's leading zero back.
        return f"regexp_replace(CAST({x} AS VARCHAR), '^(-?)[.]', '\\10.')"
    if logical in ("float32", "float64"):
        text = f"CAST({x} AS VARCHAR)"
        rule = float_shortest_rule(text, lambda s: f"CAST({s} AS INTEGER)", f"{x} < 0")
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN isnan({x}) THEN 'NaN' "
            f"WHEN isinf({x}) THEN CASE WHEN {x} > 0 THEN 'Infinity' ELSE '-Infinity' END "
            f"WHEN {x} = 0 THEN CASE WHEN starts_with({text}, '-') THEN '-0' ELSE '0' END "
            f"ELSE {rule} END"
        )
    if logical == "array":
        assert t.element is not None
        inner = duckdb_canonical('"__clinipipe_e"', t.element)
        return (
            f"CASE WHEN {x} IS NULL THEN NULL ELSE CAST(len({x}) AS VARCHAR) || ':' || "
            f'array_to_string(list_transform({x}, lambda "__clinipipe_e": '
            f"COALESCE(md5({inner}), 'null')), ',') END"
        )
    return f"CAST({x} AS VARCHAR)"


def _hash(bits: int) -> str:
    return f"CAST('0x' || substr(md5({{}}), 1, {bits // 4}) AS BIGINT)"


class DuckDBVerify(DuckDBCore, Verify):
    """Verify's primitives in DuckDB SQL."""

    def checksum_sql(self) -> ChecksumSql:
        q = self.dialect
        return ChecksumSql(
            quote_ident=q.quote_ident,
            quote_literal=q.quote_literal,
            canonical=duckdb_canonical,
            hash60=lambda text: _hash(60).format(text),
            hash32=lambda text: _hash(32).format(text),
            length=lambda text: f"length({text})",
            int_text=lambda expr: f"CAST({expr} AS VARCHAR)",
            relation=lambda table: self.raw_name(table.name),
            range_index=_range_index,
        )


def _range_index(pos: str, lo: int, width: int, narrow: bool) -> str:
    kind = "BIGINT" if narrow else "HUGEINT"
    return f"((CAST({pos} AS {kind}) - ({lo})) // {width})"


__all__ = ["ChecksumTable", "DuckDBVerify", "duckdb_canonical"]
