"""The spec's DuckDB SQL, made to mean the same on Snowflake (`SnowflakeDialect.rewrite_spec_sql`).

sqlglot writes most DuckDB constructs in Snowflake's grammar correctly (FILTER -> COUNT_IF /
IFF, QUALIFY, ILIKE, interval arithmetic, CONCAT's NULL handling, explicit NULLS LAST where
DuckDB's default differs). What it writes with another meaning, or in a form Snowflake does not
accept, is rewritten or refused here, each rule checked against Snowflake's documentation:

* `$name` (a dashboard parameter: a DuckDB prepared-statement parameter) stays `$name`, a
  Snowflake session variable (`SET name = ...`); sqlglot would write a `:name` bind variable.
* `regexp_matches(s, p)` is true when `p` matches anywhere in `s`; Snowflake's REGEXP_LIKE
  matches the whole string: written `REGEXP_INSTR(s, p) > 0` (0 = no match).
* `regexp_full_match(s, p)` / `s ~ p` (whole string): REGEXP_LIKE(s, p).
* `regexp_replace(s, p, r)` replaces the first match in DuckDB, all of them in Snowflake by
  default: written with position 1 and occurrence 1 (or 0 = all, for DuckDB's 'g' option).
* `concat_ws(sep, a, b)` skips NULL arguments in DuckDB; Snowflake's CONCAT_WS returns NULL
  when any is NULL: written `ARRAY_TO_STRING(ARRAY_CONSTRUCT_COMPACT(a, b), sep)`.
* `date_add(d, INTERVAL ...)` is `d + INTERVAL ...` (sqlglot writes an invalid DATEADD).
* `date_part('<part>', x)` is `DATE_PART(<part>, x)`.

Refused (a spec error naming the construct): functions sqlglot does not know (it would copy
them unchanged, e.g. `age`, `strlen`, `now`), `try_cast` (Snowflake's TRY_CAST takes only text
and sqlglot drops the TRY), `//`, `first`/`last`, `regexp_extract` (NULL vs '' on no match),
`unnest`, struct field access, unsigned and 128-bit integer types, positional parameters.
"""

from __future__ import annotations

from sqlglot import exp

from clinipipe.sql.dialect import SpecSqlRefused

_REGEX_FLAGS = set("icms")
"""Regular-expression options both engines spell alike (case, multi-line, dot-all)."""

_REFUSED: dict[type[exp.Expression], str] = {
    exp.TryCast: "try_cast (Snowflake's TRY_CAST accepts only text input): use cast, or "
    "case when ... then cast(...) end",
    exp.IntDiv: "the // operator: use trunc(a / b) or floor(a / b), whichever is meant",
    exp.First: "first(...): use min_by/max_by or any_value",
    exp.Last: "last(...): use min_by/max_by or any_value",
    exp.RegexpExtract: "regexp_extract (DuckDB returns '' where Snowflake's REGEXP_SUBSTR "
    "returns NULL): compute it in a dynamic table on DuckDB only, or use regexp_replace",
    exp.Explode: "unnest(...): not translated; flatten lists before they reach the spec",
    exp.Unnest: "unnest(...): not translated; flatten lists before they reach the spec",
    exp.StructExtract: "struct field access: not translated",
}
_REFUSED_TYPES = {
    exp.DataType.Type.UBIGINT,
    exp.DataType.Type.UINT,
    exp.DataType.Type.USMALLINT,
    exp.DataType.Type.UTINYINT,
    exp.DataType.Type.INT128,
    exp.DataType.Type.UINT128,
    exp.DataType.Type.INT256,
    exp.DataType.Type.UINT256,
}


def _flags(node: exp.Expression | None, what: str) -> str:
    """The regular-expression options of a DuckDB call, checked to mean the same here."""
    if node is None:
        return ""
    if not isinstance(node, exp.Literal) or not node.is_string:
        raise SpecSqlRefused(f"{what}: the options must be a string literal")
    flags = node.name
    if set(flags) - _REGEX_FLAGS - {"g"}:
        raise SpecSqlRefused(f"{what}: option(s) '{flags}' are not translated (use i, c, m, s)")
    return flags


def _call(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _rewrite(node: exp.Expression) -> exp.Expression:
    if type(node) in _REFUSED:
        raise SpecSqlRefused(f"uses {_REFUSED[type(node)]}")
    if isinstance(node, exp.DataType) and node.this in _REFUSED_TYPES:
        raise SpecSqlRefused(f"uses type {node.sql('duckdb')}, which Snowflake does not have")
    if isinstance(node, exp.Placeholder):
        if not node.this or str(node.this).isdigit():
            raise SpecSqlRefused("uses a positional parameter: name it ($name)")
        return exp.Parameter(this=exp.Var(this=str(node.this)))
    if isinstance(node, exp.Anonymous):
        name = str(node.this).upper()
        args = node.expressions
        if name == "DATE_PART" and len(args) == 2 and isinstance(args[0], exp.Literal):
            return exp.Extract(this=exp.Var(this=args[0].name.upper()), expression=args[1])
        raise SpecSqlRefused(
            f"calls {name.lower()}(), a function clinipipe cannot translate to Snowflake (or "
            "a DuckDB-only one): write it with a function both document"
        )
    if isinstance(node, exp.RegexpLike):  # DuckDB regexp_matches: a match anywhere
        flags = _flags(node.args.get("flag"), "regexp_matches")
        args = [node.this, node.expression]
        if flags:
            args += [exp.Literal.number(1), exp.Literal.number(1), exp.Literal.number(0)]
            args.append(exp.Literal.string(flags.replace("g", "")))
        return exp.GT(this=_call("REGEXP_INSTR", *args), expression=exp.Literal.number(0))
    if isinstance(node, exp.RegexpFullMatch):
        return _call("REGEXP_LIKE", node.this, node.expression)
    if isinstance(node, exp.RegexpReplace):
        flags = _flags(node.args.get("modifiers"), "regexp_replace")
        args = [node.this, node.expression, node.args["replacement"], exp.Literal.number(1)]
        args.append(exp.Literal.number(0 if "g" in flags else 1))
        if flags.replace("g", ""):
            args.append(exp.Literal.string(flags.replace("g", "")))
        return _call("REGEXP_REPLACE", *args)
    if isinstance(node, exp.ConcatWs):  # DuckDB skips NULL arguments; Snowflake returns NULL
        separator, *parts = node.expressions
        compact = _call("ARRAY_CONSTRUCT_COMPACT", *parts)
        return _call("ARRAY_TO_STRING", compact, separator)
    if isinstance(node, exp.DateAdd) and isinstance(node.expression, exp.Interval):
        return exp.Add(this=node.this, expression=node.expression)
    return node


def rewrite_for_snowflake(tree: exp.Expression) -> exp.Expression:
    """`tree` (parsed DuckDB SQL) rewritten so that sqlglot's Snowflake output means the same;
    `SpecSqlRefused` for a construct that cannot be (module docstring)."""
    tree = tree.copy()
    qualified = {  # schema-qualified calls (user-defined functions) are written as they are
        id(n.expression) for n in tree.walk() if isinstance(n, exp.Dot) and n.expression
    }

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and id(node) in qualified:
            return node
        return _rewrite(node)

    return tree.transform(rewrite, copy=False)
