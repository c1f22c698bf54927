"""Secrets: read from the environment or a `.env` file, never from the spec, never printed."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dotenv import dotenv_values

_URI_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)", re.I
)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.I
)

MASK = "****"


def mask_dsn(text: str) -> str:
    """Replace every password in `text` (URI form or `password=` keyword form) with `****`.

    Safe to apply to any message that might contain a DSN, including driver error messages.
    """
    text = _URI_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def load_dotenv_file(directory: Path) -> dict[str, str]:
    """Values of `<directory>/.env` (empty when absent). The process environment wins over it."""
    path = directory / ".env"
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def environment(directory: Path) -> dict[str, str]:
    """The variables visible to a spec in `directory`: `.env` overlaid by the real environment."""
    return {**load_dotenv_file(directory), **os.environ}


_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def scrub_values(message: str) -> str:
    """Replace every quoted part of a database error message with `'…'`.

    Engines quote the offending value in conversion errors (`Could not convert string 'x'`);
    for patient data that value may be PHI, which must never reach a log or a terminal.
    """
    return _QUOTED.sub("'…'", message)


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (its type name when empty), for one-line reports.
    Not scrubbed: pass it through `scrub_values` / `mask_dsn` as its origin requires."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
