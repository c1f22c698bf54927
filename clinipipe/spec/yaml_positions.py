"""Load YAML into plain Python data while remembering where every key and value stands.

PyYAML's constructors throw positions away, so we compose the node graph ourselves and keep the
start mark of each node under its path (`("source", "tables", 0, "name")`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from clinipipe.spec.errors import Problem, format_path

Path = tuple[str | int, ...]


@dataclass
class Positions:
    """1-based (line, col) of each value and of each mapping key, by path."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def of_value(self, path: Path) -> tuple[int, int]:
        """Position of the value at `path`, else of its nearest ancestor that has one."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return (1, 1)

    def of_key(self, path: Path) -> tuple[int, int]:
        """Position of the key naming `path` (where an unknown key should be reported)."""
        return self.keys.get(path) or self.of_value(path)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load_with_positions(
    text: str,
    filename: str,
    transform_scalar: Callable[[Any, Path, tuple[int, int]], Any] | None = None,
) -> tuple[Any, Positions, list[Problem]]:
    """Parse `text`; return (data, positions, problems).

    YAML syntax errors and duplicate keys come back as problems (never raised). Scalars pass
    through `transform_scalar(value, path, position)` when given (used for `${ENV}`
    interpolation, so interpolated values keep the position of the text they came from).
    """
    problems: list[Problem] = []
    positions = Positions()
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark and exc.context_mark is not mark:
            where = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            what += f" ({exc.context} at {where})"
        problems.append(Problem(filename, line, col, f"YAML syntax error: {what}"))
        loader.dispose()
        return None, positions, problems
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML always marks its errors
        problems.append(Problem(filename, 1, 1, f"YAML error: {exc}"))
        loader.dispose()
        return None, positions, problems

    def walk(node: yaml.Node, path: Path) -> Any:
        positions.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    line, col = _mark(key_node)
                    where = format_path(path)
                    problems.append(Problem(filename, line, col, f"{where}: duplicate key '{key}'"))
                    continue
                positions.keys[(*path, key)] = _mark(key_node)
                out[key] = walk(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*path, i)) for i, item in enumerate(node.value)]
        value = loader.construct_object(node, deep=True)
        if transform_scalar is not None:
            value = transform_scalar(value, path, _mark(node))
        return value

    try:
        data = walk(root, ()) if root is not None else None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problems.append(Problem(filename, line, col, f"YAML error: {exc.problem}"))
        data = None
    finally:
        loader.dispose()
    return data, positions, problems
