"""Spec problems: every one carries the file, line and column it points at."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the spec, at a 1-based line and column of the file."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class SpecError(Exception):
    """The spec cannot be used. Holds every problem found, sorted by position.

    Messages never contain secret values: interpolated environment values and DSN passwords are
    not echoed (see `clinipipe.secrets`).
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


def format_path(path: tuple[str | int, ...]) -> str:
    """`("source", "tables", 2, "name")` -> `source.tables[2].name`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"
