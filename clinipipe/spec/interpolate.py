"""`${VAR}` and `${VAR:-default}` interpolation of spec strings from the environment.

`$${` stands for a literal `${`. Interpolated values are never echoed in messages: they may be
secrets (a DSN with a password).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<name>[^}:]*)(?::-(?P<default>[^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class InterpolationError(ValueError):
    """A `${...}` reference that cannot be resolved; the message says how to fix it."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve every reference in `text` against `env`.

    Raises `InterpolationError` for an unset variable without a default or a malformed name.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group("name")
        default = match.group("default")
        if not _NAME.match(name or ""):
            raise InterpolationError(
                f"'${{{name}}}' is not a valid environment variable reference "
                "(use ${NAME} or ${NAME:-default})"
            )
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise InterpolationError(
                    f"environment variable {name} is not set: export it, add it to .env next to "
                    f"the spec, or give a default with ${{{name}:-value}}"
                )
            return default
        return value

    return _REFERENCE.sub(replace, text)


def has_reference(text: str) -> bool:
    """True when `text` contains a `${...}` reference."""
    return any(m.group(0) != "$${" for m in _REFERENCE.finditer(text))
