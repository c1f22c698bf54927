"""Static checks of the source DSN, made when the spec is loaded (no connection is opened).

A DSN that cannot be right (empty, a scheme that is not PostgreSQL's, the `.env.example`
placeholder left in place) is a spec error at the `dsn:` value's file:line:col, so that
`validate` refuses it (exit 2) instead of reporting a valid spec and failing later on a
connection. Messages never contain the DSN or any part of it that may be secret: only the
URI scheme and the names of the environment variables it comes from.
"""

from __future__ import annotations

import re

PLACEHOLDER_PASSWORD = "CHANGE_ME"
"""The password of the DSN in the `.env.example` that `clinipipe init` writes."""

EXAMPLE_DSN = "postgresql://user@host:5432/dbname"
"""What a DSN looks like, for messages."""

_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^\s*(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,39})://")
_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def _where(literal: str | None) -> tuple[str, str]:
    """(how the message names the DSN's origin, how to fix it) for the spec text `literal`."""
    names = list(dict.fromkeys(_REFERENCE.findall(literal or "")))
    if names:
        variables = " and ".join(names)
        return (
            f" (from {variables})",
            f"set {variables} in .env next to the spec or in the environment (which wins)",
        )
    return "", "write the DSN in an environment variable and `dsn: ${CLINIPIPE_SOURCE_DSN}`"


def dsn_problem(value: str, literal: str | None = None) -> str | None:
    """Why `value` (the interpolated `source.dsn`; `literal`: its text in the spec) cannot be a
    PostgreSQL DSN, or None when it may be one. Checks only what needs no server: empty, a URI
    whose scheme is not postgresql:// (or postgres://), text that is neither a URI nor libpq
    `key=value` pairs, and the `.env.example` placeholder password. The message says how to fix
    it and never quotes the DSN."""
    origin, fix = _where(literal)
    if not value.strip():
        return f"the source DSN is empty{origin}: {fix}, e.g. {EXAMPLE_DSN}"
    match = _SCHEME.match(value)
    if match is not None:
        scheme = match.group("scheme")
        if scheme.lower() not in _SCHEMES:
            hint = "postgresql://"
            return (
                f"the source DSN{origin} starts with '{scheme}://', which is not PostgreSQL's "
                f"scheme: use {hint} (e.g. {EXAMPLE_DSN})"
            )
    elif "=" not in value:
        return (
            f"the source DSN{origin} is neither a postgresql:// URI nor libpq key=value pairs: "
            f"{fix}, e.g. {EXAMPLE_DSN} or 'host=... dbname=... user=...'"
        )
    if PLACEHOLDER_PASSWORD in value:
        return (
            f"the source DSN{origin} is still the placeholder from .env.example (its password "
            f"is {PLACEHOLDER_PASSWORD}): {fix} to your source PostgreSQL's DSN"
        )
    return None
