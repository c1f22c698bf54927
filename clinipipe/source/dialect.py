"""PostgreSQL's spelling of identifiers and literals (the source side of the pipeline)."""

from __future__ import annotations

from clinipipe.sql.dialect import Dialect


class PostgresDialect(Dialect):
    """Standard-conforming strings (the default since PostgreSQL 9.1): only quotes are doubled."""

    name = "postgres"


POSTGRES = PostgresDialect()
