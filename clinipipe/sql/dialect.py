"""How a SQL dialect spells identifiers and literals. Subclassed once per engine."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal


class Dialect:
    """Quoting rules of one SQL dialect. Every value rendered into SQL goes through here."""

    name = "ansi"

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


POSTGRES = PostgresDialect()
