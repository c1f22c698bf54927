"""The shape of `clinipipe.targets`: a small core plus one interface per capability, each small
and stating its guarantees; dialects implement every interface; no interface knows a dialect;
what a dialect cannot do is said in one place (its `cannot.py`), not in the interfaces."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from clinipipe.spec import load_spec
from clinipipe.targets import TARGETS, Target
from clinipipe.targets.capabilities import CAPABILITIES
from clinipipe.targets.core import TargetCore
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.snowflake import SnowflakeTarget
from tests.helpers import example_text, snowflake_text, write_spec

TARGETS_DIR = Path(__file__).resolve().parents[1] / "clinipipe" / "targets"
INTERFACES = (TargetCore, *CAPABILITIES, Target)
INTERFACE_MODULES = (
    TARGETS_DIR / "core.py",
    TARGETS_DIR / "base.py",
    TARGETS_DIR / "redact_sql.py",
    *sorted((TARGETS_DIR / "capabilities").glob("*.py")),
)
DIALECT_MODULES = ("duckdb", "snowflake", "fakesnow")
"""Warehouse drivers; `clinipipe.targets.<these>` are the dialect packages."""


def own_methods(cls: type) -> list[str]:
    """The methods (functions, properties, static and class methods) `cls` itself defines."""
    kinds = (staticmethod, classmethod, property)
    return sorted(n for n, v in vars(cls).items() if inspect.isfunction(v) or isinstance(v, kinds))


def mixins(target: type) -> list[type]:
    """The classes a dialect's target is made of (its own package's classes)."""
    package = target.__module__
    return [c for c in target.__mro__ if c.__module__.startswith(package)]


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda c: c.__name__)
def test_every_interface_is_small(interface: type) -> None:
    methods = own_methods(interface)
    assert len(methods) <= 15, f"{interface.__name__} has {len(methods)} methods: {methods}"


def test_target_is_the_core_and_every_capability() -> None:
    assert own_methods(Target) == []
    assert all(issubclass(Target, c) for c in CAPABILITIES)
    assert all(issubclass(c, TargetCore) for c in CAPABILITIES)


@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: c.__name__)
def test_every_capability_states_its_guarantees(capability: type) -> None:
    doc = (capability.__doc__ or "").lower()
    for word in ("atomic", "idempoten", "crash"):
        assert word in doc, f"{capability.__name__}'s docstring says nothing about {word}..."


def only_raises(cls: type, name: str) -> bool:
    """True when method `name` of `cls` does nothing but raise (docstring aside)."""
    member = vars(cls)[name]
    function = getattr(member, "fget", None) or getattr(member, "__func__", member)
    source = inspect.cleandoc("\n" + inspect.getsource(function))
    definition = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))
    body = [
        s
        for s in definition.body
        if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    return len(body) == 1 and isinstance(body[0], ast.Raise)


@pytest.mark.parametrize("capability", (TargetCore, *CAPABILITIES), ids=lambda c: c.__name__)
def test_no_interface_refuses_for_a_dialect(capability: type) -> None:
    """A method of an interface is abstract or does something: a body that only raises would
    be a dialect's refusal, which belongs in that dialect's `cannot.py`."""
    for name in own_methods(capability):
        member = vars(capability)[name]
        if getattr(getattr(member, "fget", member), "__isabstractmethod__", False):
            continue
        assert not only_raises(capability, name), f"{capability.__name__}.{name} only raises"


@pytest.mark.parametrize("target", (DuckDBTarget, SnowflakeTarget), ids=lambda c: c.__name__)
def test_every_dialect_implements_every_interface(
    target: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/hospital")
    assert TARGETS[target.type] is target
    assert not inspect.isabstract(target), sorted(target.__abstractmethods__)
    text = snowflake_text() if target is SnowflakeTarget else example_text()
    instance = target(load_spec(write_spec(tmp_path, text)))  # no abstract method left
    assert isinstance(instance, Target)
    assert own_methods(target) == []  # composed of its mixins only
    for part in mixins(target):
        methods = own_methods(part)
        assert len(methods) <= 20, f"{part.__name__} has {len(methods)} methods: {methods}"


@pytest.mark.parametrize("target", (DuckDBTarget, SnowflakeTarget), ids=lambda c: c.__name__)
def test_what_a_dialect_cannot_do_is_in_one_place(target: type) -> None:
    """Each dialect has one `cannot` module saying what it does not do; no other class of the
    dialect has a capability method that only refuses (raises)."""
    package = Path(inspect.getfile(target)).parent
    assert (package / "cannot.py").is_file()
    cannot = [c for c in mixins(target) if c.__module__.endswith(".cannot")]
    assert len(cannot) == 1 and own_methods(cannot[0])
    capability_methods = {n for c in (TargetCore, *CAPABILITIES) for n in own_methods(c)}
    for part in mixins(target):
        for name in set(own_methods(part)) & capability_methods:
            assert part is cannot[0] or not only_raises(part, name), (
                f"{part.__name__}.{name} refuses: say so in {package.name}/cannot.py"
            )


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (top level, in functions, under TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("module", INTERFACE_MODULES, ids=lambda p: p.name)
def test_no_interface_module_imports_a_dialect(module: Path) -> None:
    for name in _imports(module):
        for dialect in DIALECT_MODULES:
            assert not (name == dialect or name.startswith(f"{dialect}.")), (module, name)
            assert not name.startswith(f"clinipipe.targets.{dialect}"), (module, name)
