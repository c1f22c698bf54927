"""Connections to the source PostgreSQL and running source-side SQL (CDC setup, checks)."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg2
import psycopg2.extensions

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.sql.render import RenderedFile


class SourceError(Exception):
    """The source could not be reached or used. Messages never contain passwords."""


class SourceCheckFailed(SourceError):
    """A prerequisite check of a source template returned rows (what is wrong)."""

    def __init__(self, template: str, number: int, message: str, problems: list[str]) -> None:
        self.template = template
        self.number = number
        self.problems = problems
        shown = ", ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
        super().__init__(
            f"source check {number} of {template} failed: {message} Affected: {shown}. "
            "Nothing was changed on the source."
        )


def connect(dsn: str, *, application_name: str = "clinipipe") -> psycopg2.extensions.connection:
    """Open a connection to the source; `SourceError` with a masked message when it fails."""
    try:
        return psycopg2.connect(dsn, application_name=application_name, connect_timeout=15)
    except psycopg2.Error as exc:
        reason = mask_dsn(first_line(exc))
        raise SourceError(
            f"cannot connect to the source PostgreSQL ({mask_dsn(dsn)}): {reason}. Check "
            "source.dsn (CLINIPIPE_SOURCE_DSN), that the server runs and accepts connections "
            "from this machine, and the credentials."
        ) from None


def apply_source_files(dsn: str, files: Sequence[RenderedFile]) -> int:
    """Run the statements of source-side templates in one transaction; returns statements run.

    Checks (`-- check:` statements) run first within that transaction; any rows they return
    abort the whole transaction, so a failed check leaves the source untouched.
    """
    run = 0
    con = connect(dsn)
    try:
        with con.cursor() as cur:
            for file in files:
                for statement in file.statements:
                    try:
                        cur.execute(statement.sql)
                    except psycopg2.Error as exc:
                        con.rollback()
                        reason = mask_dsn(first_line(exc))
                        raise SourceError(
                            f"statement {statement.number} of template {file.name} failed on "
                            f"the source: {reason}. Nothing was changed on the source."
                        ) from None
                    run += 1
                    if statement.check is not None:
                        rows = cur.fetchall()
                        if rows:
                            con.rollback()
                            raise SourceCheckFailed(
                                file.name,
                                statement.number,
                                statement.check,
                                [str(r[0]) for r in rows],
                            )
        con.commit()
    finally:
        con.close()
    return run
