"""How a SQL dialect spells identifiers and literals. Subclassed once per engine."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlglot import exp

SPEC_SQL_DIALECT = "duckdb"
"""The SQL dialect the spec's own queries are written in (dynamic tables, interactive tables'
`sql:`, dashboards), as sqlglot names it. Each target receives them in its own grammar
(`clinipipe.sql.spec_sql`)."""


class SpecSqlRefused(Exception):
    """A construct of the spec's SQL that a dialect cannot express faithfully (the message
    says which and what to write instead; it holds identifiers, never row values)."""


class Dialect:
    """Quoting rules of one SQL dialect. Every value rendered into SQL goes through here."""

    name = "ansi"
    sqlglot_name: str | None = None
    """sqlglot's name for this dialect, to which the spec's queries are transpiled; None or
    `SPEC_SQL_DIALECT` means they are used as written."""

    def rewrite_spec_sql(self, tree: exp.Expression) -> exp.Expression:
        """Rewrite a parsed spec query (DuckDB semantics) so that sqlglot's output for this
        dialect means the same thing; raise `SpecSqlRefused` for what cannot be. Default:
        unchanged. Dialect knowledge: overridden in `clinipipe.targets`."""
        return tree

    def quote_ident(self, name: str) -> str:
        """A quoted identifier; embedded double quotes are doubled."""
        return '"' + name.replace('"', '""') + '"'

    def quote_string(self, text: str) -> str:
        """A string literal; embedded single quotes are doubled."""
        return "'" + text.replace("'", "''") + "'"

    def quote_literal(self, value: object) -> str:
        """Any Python value as a SQL literal (NULL, TRUE/FALSE, numbers, dates, strings)."""
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, int | Decimal):
            return str(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("NaN and infinity have no portable SQL literal")
            return repr(value)
        if isinstance(value, dt.datetime | dt.date):
            return self.quote_string(value.isoformat())
        return self.quote_string(str(value))

    def qualify(self, *parts: str) -> str:
        """`a.b.c` with every part quoted."""
        return ".".join(self.quote_ident(p) for p in parts)


class PostgresDialect(Dialect):
    """PostgreSQL with standard-conforming strings (the default since 9.1): only quotes are
    doubled. The source's spelling, used by `clinipipe.source` and the source templates."""

    name = "postgres"
    sqlglot_name = "postgres"


POSTGRES = PostgresDialect()
