"""The spec's own SQL, written once in DuckDB's dialect, delivered in each target's grammar.

Dynamic tables (`dynamic_tables[].sql`), interactive tables (`interactive_tables[].sql`) and
dashboards (`dashboards[].sql`) are written in DuckDB SQL (`SPEC_SQL_DIALECT`), whatever the
target. For a target whose dialect has another `sqlglot_name`, each query is parsed once with
sqlglot (read: duckdb), rewritten by the target's `Dialect.rewrite_spec_sql` where sqlglot's
own output would change its meaning, written in the target's dialect, and parsed back with the
target's grammar. A query that cannot be translated faithfully is a spec error at the `sql` of
that item (file:line:col, naming the item), raised when rendering: by `validate`, `render` and
`deploy`, before anything runs. For the spec's own dialect the text is used as written.

Pure and deterministic: the output depends only on the spec, the dialect and sqlglot's version
(pinned in pyproject.toml; the golden tests show its output).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError

from clinipipe.spec.errors import Problem, SpecError, format_path
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.dialect import SPEC_SQL_DIALECT, Dialect, SpecSqlRefused


@dataclass(frozen=True)
class SpecQuery:
    """One query of the spec: where it is (`path`, e.g. `("dynamic_tables", 0, "sql")`), what
    it belongs to (`what`, e.g. `dynamic table patient_summary`) and its text."""

    path: tuple[str | int, ...]
    what: str
    sql: str


def spec_queries(loaded: LoadedSpec) -> list[SpecQuery]:
    """Every query the spec author wrote, in spec order."""
    spec = loaded.spec
    out = [
        SpecQuery(("dynamic_tables", i, "sql"), f"dynamic table {d.name}", d.sql)
        for i, d in enumerate(spec.dynamic_tables)
    ]
    out += [
        SpecQuery(("interactive_tables", i, "sql"), f"interactive table {t.name}", t.sql)
        for i, t in enumerate(spec.interactive_tables)
        if t.sql is not None
    ]
    out += [
        SpecQuery(("dashboards", i, "sql"), f"dashboard {d.name}", d.sql)
        for i, d in enumerate(spec.dashboards)
    ]
    return out


def transpiles(dialect: Dialect) -> bool:
    """Whether the spec's queries are rewritten for `dialect` (else used as written)."""
    return dialect.sqlglot_name not in (None, SPEC_SQL_DIALECT)


def transpile(sql: str, dialect: Dialect) -> str:
    """`sql` (DuckDB SQL, one query) in `dialect`'s grammar, pretty-printed.

    Raises `SpecSqlRefused` with the reason (and, for a syntax error, the line and column
    within the query) when it cannot be translated faithfully.
    """
    text = sql.strip().rstrip(";").strip()
    if not transpiles(dialect):
        return text
    write = dialect.sqlglot_name
    try:
        trees = sqlglot.parse(text, read=SPEC_SQL_DIALECT)
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" (line {first.get('line')}, column {first.get('col')} of the query)"
        reason = first.get("description") or str(exc).splitlines()[0]
        raise SpecSqlRefused(f"not valid DuckDB SQL: {reason}{where}") from None
    except SqlglotError as exc:
        raise SpecSqlRefused(f"not valid DuckDB SQL: {str(exc).splitlines()[0]}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise SpecSqlRefused(f"write exactly one query (found {len(trees)} statements)")
    tree = dialect.rewrite_spec_sql(trees[0])
    try:
        out = tree.sql(dialect=write, pretty=True, unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as exc:
        raise SpecSqlRefused(f"has no {write} equivalent: {str(exc).splitlines()[0]}") from None
    try:
        sqlglot.parse_one(out, read=write)
    except SqlglotError as exc:  # pragma: no cover - a translation bug, reported as such
        raise SpecSqlRefused(
            f"the {write} translation does not parse ({str(exc).splitlines()[0]}); please report it"
        ) from None
    return out


def transpile_spec(loaded: LoadedSpec, dialect: Dialect) -> dict[str, str]:
    """Each spec query's text -> its text in `dialect`. Raises `SpecError` listing every query
    that cannot be translated, each at its `sql`'s file:line:col, naming the item."""
    filename = loaded.filename or str(loaded.path)
    out: dict[str, str] = {}
    problems: list[Problem] = []
    for query in spec_queries(loaded):
        try:
            out[query.sql] = transpile(query.sql, dialect)
        except SpecSqlRefused as exc:
            line, col = loaded.positions.of_value(query.path)
            problems.append(
                Problem(
                    filename,
                    line,
                    col,
                    f"{format_path(query.path)}: {query.what}: for target {dialect.name}, "
                    f"the query (DuckDB SQL) {exc}",
                )
            )
    if problems:
        raise SpecError(problems)
    return out
