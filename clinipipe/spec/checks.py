"""Checks across the spec that a field's type alone cannot express."""

from __future__ import annotations

from collections.abc import Iterator

from clinipipe.spec.model import Spec
from clinipipe.spec.yaml_positions import Path


def semantic_problems(spec: Spec) -> Iterator[tuple[Path, str]]:
    """Yield (path, message) for each cross-reference problem of a structurally valid spec."""
    yield from _duplicates(
        [("source", "tables", i) for i in range(len(spec.source.tables))],
        [t.qualified for t in spec.source.tables],
        "source table",
    )
    for i, table in enumerate(spec.source.tables):
        seen: set[str] = set()
        for j, column in enumerate(table.primary_key):
            if column in seen:
                yield ("source", "tables", i, "primary_key", j), f"column '{column}' listed twice"
            seen.add(column)

    derived_names = [d.name for d in spec.dynamic_tables] + [
        t.name for t in spec.interactive_tables
    ]
    derived_paths: list[Path] = [
        ("dynamic_tables", i, "name") for i in range(len(spec.dynamic_tables))
    ]
    derived_paths += [
        ("interactive_tables", i, "name") for i in range(len(spec.interactive_tables))
    ]
    yield from _duplicates(derived_paths, derived_names, "derived table")
    yield from _duplicates(
        [("dashboards", i, "name") for i in range(len(spec.dashboards))],
        [d.name for d in spec.dashboards],
        "dashboard",
    )

    for i, dt in enumerate(spec.dynamic_tables):
        if dt.refresh_mode == "incremental" and dt.refresh_key is None:
            yield (
                ("dynamic_tables", i, "refresh_mode"),
                (
                    "refresh_mode incremental needs a refresh_key (the column that identifies "
                    "which rows a change affects); add refresh_key or use refresh_mode: auto"
                ),
            )

    dynamic = {d.name for d in spec.dynamic_tables}
    for i, it in enumerate(spec.interactive_tables):
        if (it.from_ is None) == (it.sql is None):
            yield ("interactive_tables", i), "give exactly one of 'from' (a dynamic table) or 'sql'"
        elif it.from_ is not None and it.from_ not in dynamic:
            yield (
                ("interactive_tables", i, "from"),
                (
                    f"'{it.from_}' is not a dynamic table of this spec; "
                    f"dynamic tables: {', '.join(sorted(dynamic)) or '(none)'}"
                ),
            )


def _duplicates(paths: list[Path], names: list[str], what: str) -> Iterator[tuple[Path, str]]:
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name.lower() in first:
            yield (
                paths[index],
                f"{what} '{name}' is defined twice (also item {first[name.lower()]})",
            )
        else:
            first[name.lower()] = index
