"""A small JSON Schema validator for the `clinipipe bench --json` document.

The schema is the one written in docs/BENCH_JSON.md (the test reads it from there). This
implements the subset that schema uses (`type` incl. lists and "null", `properties`,
`required`, `additionalProperties` (bool or schema), `items`, `enum`, `minimum`, `$ref` to
`#/$defs/<name>`), so no validator package is needed at run time or in the tests.
"""

from __future__ import annotations

from typing import Any

__all__ = ["validate"]

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def validate(instance: Any, schema: dict[str, Any], *, root: dict[str, Any] | None = None,
             path: str = "$") -> list[str]:  # fmt: skip
    """Every way `instance` breaks `schema`, as "<json path>: <problem>" (empty: valid)."""
    root = root if root is not None else schema
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(instance, root["$defs"][name], root=root, path=path)
    problems: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(instance, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        problems.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(instance, "number") and instance < schema["minimum"]:
        problems.append(f"{path}: {instance} < minimum {schema['minimum']}")
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in instance:
                problems.append(f"{path}: missing {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, value in instance.items():
            if name in properties:
                problems += validate(value, properties[name], root=root, path=f"{path}.{name}")
            elif extra is False:
                problems.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                problems += validate(value, extra, root=root, path=f"{path}.{name}")
    if isinstance(instance, list) and "items" in schema:
        for i, value in enumerate(instance):
            problems += validate(value, schema["items"], root=root, path=f"{path}[{i}]")
    return problems
