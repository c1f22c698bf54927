"""Find, read, interpolate and validate a pipeline spec, reporting every problem at once."""

from __future__ import annotations

import hashlib
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from clinipipe.secrets import environment
from clinipipe.spec.checks import SourceColumns, semantic_problems, source_column_problems
from clinipipe.spec.errors import Problem, SpecError, format_path
from clinipipe.spec.interpolate import InterpolationError, interpolate
from clinipipe.spec.model import Spec
from clinipipe.spec.types import did_you_mean
from clinipipe.spec.yaml_positions import Path, Positions, load_with_positions

DEFAULT_SPEC = "clinipipe.yaml"
CONFIG_ENV = "CLINIPIPE_CONFIG"
_SECRET_KEYS = {"password", "passwd", "private_key", "secret", "token", "hmac_key", "api_key"}


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with where it came from. `digest` identifies the spec's text."""

    spec: Spec
    path: FsPath
    digest: str
    positions: Positions
    filename: str = ""
    """How problems name the spec file (as given on the command line); default: `path`."""

    @property
    def directory(self) -> FsPath:
        return self.path.parent

    def resolve(self, relative: str) -> FsPath:
        """A path from the spec, relative to the spec's folder."""
        p = FsPath(relative).expanduser()
        return p if p.is_absolute() else self.directory / p


def resolve_spec_path(config: str | os.PathLike[str] | None) -> FsPath:
    """`-c/--config`, else `$CLINIPIPE_CONFIG`, else `./clinipipe.yaml`."""
    if config:
        return FsPath(config)
    if os.environ.get(CONFIG_ENV):
        return FsPath(os.environ[CONFIG_ENV])
    return FsPath(DEFAULT_SPEC)


def load_spec(config: str | os.PathLike[str] | None = None) -> LoadedSpec:
    """Load and validate the spec. Raises `SpecError` listing every problem (file:line:col)."""
    path = resolve_spec_path(config)
    shown = str(path)
    if not path.is_file():
        hint = " (run `clinipipe init NAME` to create one)" if path.name == DEFAULT_SPEC else ""
        raise SpecError([Problem(shown, 1, 1, f"spec file not found{hint}")])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(shown, 1, 1, f"cannot read the spec: {exc}")]) from None
    return parse_spec(text, shown, path.resolve())


def parse_spec(text: str, filename: str, path: FsPath | None = None) -> LoadedSpec:
    """Validate spec `text`; `filename` is how problems name the file."""
    path = path or FsPath(filename).resolve()
    env = environment(path.parent)
    problems: list[Problem] = []
    literal_strings: dict[Path, str] = {}

    def interpolate_scalar(value: Any, where: Path, pos: tuple[int, int]) -> Any:
        if not isinstance(value, str):
            return value
        literal_strings[where] = value
        try:
            return interpolate(value, env)
        except InterpolationError as exc:
            problems.append(Problem(filename, *pos, f"{format_path(where)}: {exc}"))
            return value

    data, positions, yaml_problems = load_with_positions(text, filename, interpolate_scalar)
    problems.extend(yaml_problems)
    if data is None and not problems:
        problems.append(Problem(filename, 1, 1, "the spec is empty"))
    if data is not None and not isinstance(data, dict):
        problems.append(Problem(filename, 1, 1, "the spec must be a mapping of keys to values"))
    if problems:
        raise SpecError(problems)

    try:
        target = data.get("target")
        context = {
            "target_type": target.get("type") if isinstance(target, dict) else None,
            "literal_dsn": literal_strings.get(("source", "dsn")),
        }
        spec = Spec.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(_problem_from_error(e, data, positions, filename) for e in exc.errors())
        raise SpecError(problems) from None

    for where, message in semantic_problems(spec):
        line, col = positions.of_value(where)
        problems.append(Problem(filename, line, col, f"{format_path(where)}: {message}"))
    if problems:
        raise SpecError(problems)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return LoadedSpec(spec=spec, path=path, digest=digest, positions=positions, filename=filename)


def check_source_columns(
    loaded: LoadedSpec, catalog: SourceColumns, keys: SourceColumns | None = None
) -> None:
    """Raise `SpecError` (one problem per name, at the spec key's file:line:col, with a
    did-you-mean) when a column name of the spec (`source.tables[].columns` keys,
    `primary_key`, `release`) is not a column of its source table in `catalog`, or when a
    `primary_key` is not the source table's primary key in `keys`. Tables missing from
    `catalog` are not checked."""
    filename = loaded.filename or str(loaded.path)
    problems = []
    for where, is_key, message in source_column_problems(loaded.spec, catalog, keys):
        if is_key:
            line, col = loaded.positions.of_key(where)
            shown = format_path(where[:-1])
        else:
            line, col = loaded.positions.of_value(where)
            shown = format_path(where)
        problems.append(Problem(filename, line, col, f"{shown}: {message}"))
    if problems:
        raise SpecError(problems)


def _problem_from_error(
    error: ErrorDetails, data: Any, positions: Positions, filename: str
) -> Problem:
    path, is_key = _data_path(error["loc"], data)
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        line, col = positions.of_key(path)
        if key.lower() in _SECRET_KEYS:
            message = (
                f"'{key}' is not allowed: secrets never go in the spec. Put the value in an "
                "environment variable (or .env) and name the variable instead (e.g. password_env)"
            )
        else:
            allowed = _allowed_keys(path[:-1], data)
            message = f"unknown key '{key}'{did_you_mean(key, allowed)}"
            if allowed:
                message += f"; allowed keys: {', '.join(allowed)}"
        return Problem(filename, line, col, f"{format_path(path[:-1])}: {message}")
    if kind == "missing":
        line, col = positions.of_value(path[:-1])
        key = path[-1]
        message = f"missing required key '{key}'"
        if key == "primary_key":
            message = (
                "table has no primary key: add `primary_key: [column, ...]` "
                "(CDC applies changes by primary key)"
            )
        return Problem(filename, line, col, f"{format_path(path[:-1])}: {message}")
    line, col = positions.of_key(path) if is_key else positions.of_value(path)
    message = error["msg"]
    if kind == "union_tag_invalid":
        message = "unknown target type; use 'duckdb' or 'snowflake'"
    elif kind == "union_tag_not_found":
        message = "missing required key 'type' ('duckdb' or 'snowflake')"
    elif kind == "too_short" and path and path[-1] == "primary_key":
        message = "table has no primary key: list at least one column in primary_key"
    return Problem(filename, line, col, f"{format_path(path)}: {message}")


def _data_path(loc: tuple[int | str, ...], data: Any) -> tuple[Path, bool]:
    """Map pydantic's error location onto the YAML data path (dropping union tags)."""
    path: list[str | int] = []
    node = data
    is_key = False
    for part in loc:
        if part == "[key]":
            is_key = True
            continue
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and node.get("type") == part:
            continue  # discriminated union tag, e.g. ("target", "snowflake", "account")
        else:
            path.append(part)
            node = None
    return tuple(path), is_key


def _allowed_keys(path: Path, data: Any) -> list[str]:
    """Keys the spec accepts at `path` (for "did you mean" hints)."""
    model: Any = Spec
    node = data
    for part in path:
        model = _unwrap(model, node)
        if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(part, str):
            field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return []
            model = field.annotation
        elif isinstance(part, int):
            args = typing.get_args(model)
            model = args[0] if args else Any
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (node[part] if isinstance(node, list) and isinstance(part, int) else None)
        )
    model = _unwrap(model, node)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return []


def _unwrap(annotation: Any, node: Any) -> Any:
    """Strip Annotated / Optional and pick the union member matching the data's `type`."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            chosen = members[0] if members else annotation
            if isinstance(node, dict):
                for m in members:
                    fields = getattr(m, "model_fields", {})
                    literal = fields.get("type")
                    if literal and node.get("type") in typing.get_args(literal.annotation):
                        chosen = m
            annotation = chosen
        elif origin is list and isinstance(node, list):
            return annotation
        else:
            return annotation
