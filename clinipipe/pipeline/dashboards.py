"""Dashboards of the spec (`dashboards:`), run against the published interactive tables.

A dashboard is a named, parameterized query that reads exactly one interactive table as
`serving.<name>` (checked when the spec is loaded). On DuckDB it runs in the calling process
on the current published generation of that table
(:class:`clinipipe.targets.serving_files.ServingReader`): it never touches the warehouse file,
so it never waits for CDC and CDC never waits for it.

Parameters are `$name` placeholders bound by the engine (never spliced into the SQL), converted
from text to their declared type first, so a bad value is a clear error naming the parameter.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clinipipe.spec.checks import dashboard_table
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import Dashboard, DuckDBTarget
from clinipipe.targets.duckdb.core import encryption_key_of
from clinipipe.targets.serving_files import ServingReader

__all__ = ["DashboardError", "DashboardResult", "DashboardRunner", "typed_params"]


class DashboardError(Exception):
    """A dashboard cannot run as asked (unknown name, missing or malformed parameter, a target
    without a local serving layer). `usage`: the request is wrong, not the system."""

    def __init__(self, message: str, *, usage: bool = True) -> None:
        super().__init__(message)
        self.usage = usage


_CONVERT: dict[str, Callable[[str], Any]] = {
    "int": int,
    "bigint": int,
    "text": str,
    "date": dt.date.fromisoformat,
    "timestamp": dt.datetime.fromisoformat,
}
_EXAMPLE = {"int": "42", "bigint": "42", "text": "abc", "date": "2026-11-27",
            "timestamp": "2026-11-27T08:30:00"}  # fmt: skip


def typed_params(board: Dashboard, given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` converted to `board`'s declared parameter types; strings are parsed, values of
    the right Python type pass through. Raises DashboardError naming what is wrong (never the
    value itself: it may be an identifier such as an MRN)."""
    unknown = sorted(set(given) - set(board.params))
    if unknown:
        declared = ", ".join(board.params) or "none"
        raise DashboardError(
            f"dashboard {board.name!r} has no parameter {', '.join(unknown)} "
            f"(parameters: {declared})"
        )
    typed: dict[str, Any] = {}
    for name, kind in board.params.items():
        if name not in given:
            raise DashboardError(
                f"dashboard {board.name!r} needs --param {name}=<{kind}>, "
                f"e.g. {name}={_EXAMPLE[kind]}"
            )
        value = given[name]
        if isinstance(value, str):
            try:
                value = _CONVERT[kind](value.strip())
            except ValueError:
                raise DashboardError(
                    f"parameter {name} of dashboard {board.name!r} is not a valid {kind} "
                    f"(e.g. {_EXAMPLE[kind]})"
                ) from None
        typed[name] = value
    return typed


@dataclass(frozen=True)
class DashboardResult:
    """One run of a dashboard: its columns, rows, the generation file it read and the time the
    query took in this process (milliseconds)."""

    name: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    generation: str
    milliseconds: float


class DashboardRunner:
    """Runs the spec's dashboards from this process (thread-safe; reuse one per process).

    DuckDB targets only: Snowflake serves dashboards from its interactive warehouse, which
    dashboard tools query directly.
    """

    def __init__(self, loaded: LoadedSpec, *, recheck_seconds: float = 0.1) -> None:
        target = loaded.spec.target
        if not isinstance(target, DuckDBTarget):
            raise DashboardError(
                "dashboards run locally only against a DuckDB warehouse's published "
                "interactive tables; on Snowflake, point the dashboard tool at the interactive "
                "warehouse (see templates/snowflake/09-sample-queries.sql)",
                usage=False,
            )
        self.spec = loaded.spec
        self.boards = {d.name: d for d in loaded.spec.dashboards}
        self.reader = ServingReader(
            loaded.resolve(target.path),
            recheck_seconds=recheck_seconds,
            encryption_key=encryption_key_of(loaded),  # encrypted warehouse: encrypted copies
        )

    def __enter__(self) -> DashboardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()

    def board(self, name: str) -> Dashboard:
        """The dashboard called `name`; DashboardError listing the known ones otherwise."""
        board = self.boards.get(name)
        if board is None:
            known = ", ".join(self.boards) or "(none: add them under dashboards: in the spec)"
            raise DashboardError(f"no dashboard named {name!r}; dashboards: {known}")
        return board

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> DashboardResult:
        """Run dashboard `name` with `params` (text or typed values) on the current generation
        of the interactive table it reads. Raises DashboardError for a bad request and
        `clinipipe.serving.ServingError` when that table was never published."""
        board = self.board(name)
        typed = typed_params(board, params or {})
        table = dashboard_table(self.spec, board.sql)
        assert table is not None  # the spec check guarantees it
        started = time.perf_counter()
        columns, rows, generation = self.reader.execute(table, board.sql, typed)
        elapsed = (time.perf_counter() - started) * 1000
        return DashboardResult(name, columns, rows, generation, elapsed)
