"""Printing for the CLI: Rich consoles, JSON output, exit codes. No business logic."""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from typing import Any

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class ExitCode(IntEnum):
    """clinipipe's exit codes, the same for every command."""

    OK = 0
    FAILURE = 1  # runtime failure
    USAGE = 2  # usage or spec error
    FOUND = 3  # a check found problems (PHI findings, failed verification, anomaly)


class Verbosity:
    """Set once by the top-level options."""

    quiet = False
    verbose = False


def info(message: str) -> None:
    """A progress or status line on stderr, unless --quiet."""
    if not Verbosity.quiet:
        err.print(message)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (one JSON document)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
