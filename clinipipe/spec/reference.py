"""The spec reference (docs/SPEC_REFERENCE.md), generated from the spec model so it cannot drift.

    python -m clinipipe.spec.reference > docs/SPEC_REFERENCE.md

Every key of `clinipipe.yaml` is a field of a model in `clinipipe.spec.model`. The reference
lists each one with its type (from the annotation in the source, constraints included), its
default (from pydantic) and its description: the field's attribute docstring in model.py, or,
for a field that has none yet, its entry in `EXTRA_DESCRIPTIONS` below. `tests/test_docs.py`
regenerates the file and fails when the committed copy differs, when a field has no
description, or when an `EXTRA_DESCRIPTIONS` entry names no field (or one that has a docstring).

Deterministic: the same model gives the same text, byte for byte.
"""

from __future__ import annotations

import ast
import inspect
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from clinipipe.spec import model as spec_model
from clinipipe.spec.types import Duration

COMMAND = "python -m clinipipe.spec.reference > docs/SPEC_REFERENCE.md"

#: Descriptions of fields that have no attribute docstring in model.py, keyed
#: `ClassName.field_name` (the Python name; inherited fields under the class that declares
#: them). A docstring in model.py always wins; the test refuses an entry that shadows one.
EXTRA_DESCRIPTIONS: dict[str, str] = {
    # Spec
    "Spec.version": "Version of the spec format; only 1 exists.",
    "Spec.name": "The pipeline's name. Names the least-privilege source user "
    "(`<name>_replication`, lower case) that `02-postgres-cdc-setup.sql` creates.",
    "Spec.source": "The PostgreSQL source: how to connect, the publication and slot, the tables.",
    "Spec.target": "The warehouse: DuckDB (a local file) or Snowflake, chosen by `type`.",
    "Spec.warehouses": "The three warehouses: `initialization` (backfill, first builds), "
    "`incremental` (CDC, incremental refreshes) and `interactive` (serving). On DuckDB each is a "
    "compute profile (threads and memory from the size).",
    "Spec.dynamic_tables": "Derived tables defined by a query over raw (or other dynamic) "
    "tables, kept within `target_lag` (`clinipipe refresh`, and by `cdc start`).",
    "Spec.interactive_tables": "Serving tables for dashboards, published from a dynamic table "
    "(`from`) or a query (`sql`).",
    "Spec.phi": "PHI detection, alerts and de-identification settings.",
    "Spec.backup": "Where `clinipipe backup` writes and how long backups are kept.",
    "Spec.cost": "Pricing and anomaly detection for `clinipipe cost`.",
    "Spec.verify": "Scheduled verification of the warehouse against the source "
    "(`clinipipe verify` runs on demand without it).",
    "Spec.dashboards": "Named queries over one interactive table each "
    "(`clinipipe dashboard NAME -p k=v`).",
    # source
    "SourceSpec.publication": "The PostgreSQL publication CDC streams from; `deploy` creates "
    "it (and adds the spec's tables) when it is missing.",
    "SourceSpec.slot": "The logical replication slot (pgoutput) created by the first "
    "`backfill`; CDC resumes from its confirmed position.",
    "SourceSpec.tables": "The tables to replicate (at least one). Each is loaded into "
    "`raw.<name>`.",
    "TableSpec.name": "Table name on the source (case-sensitive). Loaded into `raw.<name>`: two "
    "spec tables of one name in different schemas are refused.",
    "TableSpec.schema_": "The table's schema on the source.",
    "TableSpec.primary_key": "The source table's primary key columns, in order. Required unless "
    "`append_only`; `deploy` (and `validate` when the source is reachable) refuses a key that "
    "is not the table's primary key on the source.",
    # target
    "DuckDBTarget.type": "Selects the DuckDB target.",
    "DuckDBTarget.path": "The warehouse file, relative to the spec's folder (the folder must "
    "exist). Interactive tables are published next to it in `<path>.serving/`.",
    "SnowflakeTarget.type": "Selects the Snowflake target.",
    "SnowflakeTarget.account": "The account identifier (`myorg-myaccount`).",
    "SnowflakeTarget.user": "The user clinipipe logs in as.",
    "SnowflakeTarget.database": "The database `deploy` creates and everything lives in.",
    "SnowflakeTarget.schema_": "The schema of the raw (replicated) tables.",
    "SnowflakeTarget.authenticator": "`snowflake` (password from `password_env`), "
    "`externalbrowser` (SSO in a browser), or `snowflake_jwt` (key pair: "
    "`private_key_file_env`).",
    # warehouses
    "Warehouses.initialization": "Backfill, full refreshes and first builds: big, suspended "
    "when idle.",
    "Warehouses.incremental": "CDC batches, incremental refreshes and publishes: small.",
    "Warehouses.interactive": "Serves the interactive tables (Snowflake bills an interactive "
    "warehouse at least 24 hours per resume; `validate` warns).",
    "Warehouse.name": "The warehouse's name on Snowflake (on DuckDB only a label in metering).",
    "Warehouse.size": "Snowflake size: XSMALL, SMALL, MEDIUM, LARGE, XLARGE, XXLARGE, XXXLARGE, "
    "X4LARGE, X5LARGE, X6LARGE (common spellings such as `XS`, `2XL` are suggested). Sets "
    "credits per hour in the cost model, and threads and memory on DuckDB.",
    # dynamic tables
    "DynamicTable.name": "Table name in the derived schema (`derived.<name>`).",
    "DynamicTable.target_lag": "How stale the table may be: a duration (`90 seconds`, "
    "`5 minutes`, `1 hour`) or `downstream` (refreshed when a consumer needs it). Snowflake "
    "refuses less than 60 seconds.",
    "DynamicTable.refresh_mode": "`auto` (incremental by `refresh_key` when possible, full when "
    "more than 20 % changed or the query breaks the refresh-key contract), `full`, or "
    "`incremental` (needs `refresh_key`; refused when the query cannot be refreshed so).",
    "DynamicTable.refresh_key": "The column whose values identify the rows a change affects "
    "(e.g. `patient_id`): an incremental refresh re-derives only the changed keys.",
    "DynamicTable.sql": "The query, in DuckDB SQL on every target (translated for Snowflake; "
    "an untranslatable construct is a spec error). Reads `raw.<table>` and `derived.<table>`.",
    "DynamicTable.comment": "Table comment (Snowflake `COMMENT`).",
    # interactive tables
    "InteractiveTable.name": "Table name in the serving schema (`serving.<name>`).",
    "InteractiveTable.from_": "A dynamic table of this spec to serve as it is (give exactly "
    "one of `from` and `sql`); published after each refresh that changed it.",
    "InteractiveTable.sql": "A query (DuckDB SQL) to serve instead of `from`; republished "
    "before its `target_lag` passes.",
    "InteractiveTable.cluster_by": "Columns the served rows are sorted (clustered) by: the "
    "columns dashboards filter on.",
    "InteractiveTable.target_lag": "How stale a `sql:` table may be (Snowflake: at least 60 "
    "seconds).",
    # phi
    "PhiSpec.research_schema": "Default schema `clinipipe redact` writes research extracts to.",
    "PhiSpec.deidentified_schemas": "Schemas that must hold no PHI at all: `clinipipe scan` "
    "scans every column of every table in them.",
    "PhiSpec.hmac_key_env": "Name of the environment variable holding the key of the keyed "
    "pseudonyms (HMAC-SHA256, at least 16 characters); never the key itself.",
    "PhiSpec.classification": "Snowflake's classifier (`SYSTEM$CLASSIFY`) as `clinipipe scan` "
    "calls it.",
    "ClassificationSpec.sample_count": "Rows `SYSTEM$CLASSIFY` samples per table.",
    "ClassificationSpec.auto_tag": "Let `SYSTEM$CLASSIFY` tag the columns it classifies.",
    "PhiAlertsSpec.format": "`json` (plain JSON POST) or `pagerduty` (PagerDuty Events v2).",
    "PhiAlertsSpec.timeout_seconds": "Timeout of one delivery attempt.",
    "PhiPattern.name": "The detector's name (replaces a built-in detector of the same name).",
    "PhiPattern.category": "The PHI category it detects (one of the Safe Harbor categories, "
    "e.g. `SSN`, `MRN`, `NAME`; case-insensitive).",
    "PhiPattern.severity": "Severity of its findings (compared with `phi.fail_on` and "
    "`phi.alerts.min_severity`).",
    "PhiPattern.confidence": "Confidence of a match before context words raise it.",
    "PhiPattern.context_required": "Report a match only when a context word precedes it.",
    "PhiPattern.validator": "A built-in check a match must pass (e.g. `luhn`, `ssn`), by name.",
    # backup
    "BackupSpec.policy_name": "Snowflake: the backup policy `deploy` creates (template 07).",
    "BackupSpec.schedule": "Snowflake: the backup policy's `SCHEDULE` (e.g. `24 HOUR`).",
    "BackupSpec.schemas": "Schemas `clinipipe backup create` backs up by default (by role: "
    "`raw`, `research`, ...); on Snowflake one backup set each.",
    # cost
    "CostSpec.edition": "Snowflake edition (`business_critical` is needed for a retention "
    "lock; `validate` warns otherwise).",
    "CostSpec.credit_price_usd": "Dollars per credit: dollars = credits x this.",
    "CostAlertsSpec.webhook_url_env": "Variable holding the webhook URL (for `pagerduty`, "
    "unset means PagerDuty's Events API).",
    "CostAlertsSpec.format": "`json` (plain JSON POST) or `pagerduty` (PagerDuty Events v2).",
    "CostAlertsSpec.routing_key_env": "Variable holding the PagerDuty routing key "
    "(`format: pagerduty`).",
    "CostAlertsSpec.timeout_seconds": "Timeout of one delivery attempt.",
    "CostAlertsSpec.retries": "Attempts after the first, with exponential backoff, on a 5xx, "
    "429 or network error.",
    "CostAlertsSpec.queue_size": "Alerts waiting to be sent; when full, new ones are dropped "
    "(and counted).",
    "VerifyAlertsSpec.webhook_url_env": "Variable holding the webhook URL (for `pagerduty`, "
    "unset means PagerDuty's Events API).",
    # dashboards, access
    "Dashboard.name": "The dashboard's name (`clinipipe dashboard NAME`).",
    "Dashboard.sql": "The query (DuckDB SQL): reads exactly one interactive table as "
    "`serving.<name>`; parameters are written `$name`.",
    "Dashboard.params": "Parameter name to type (`int`, `bigint`, `text`, `date`, "
    "`timestamp`); values are bound by the engine, never spliced into the SQL.",
    "Dashboard.description": "Shown when `clinipipe dashboard` is run without a name (the list).",
    "AccessRole.warehouses": "Warehouses (by role) the role may use.",
}

_TYPE_NAMES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "Identifier": "identifier",
    "DurationField": "duration",
    "PhiClass": "PHI class",
    "WarehouseSize": "warehouse size",
}


@dataclass(frozen=True)
class Key:
    """One key of the spec: where it is, what it accepts, what it defaults to, what it means."""

    path: str
    yaml_name: str
    owner: str
    field_name: str
    type_text: str
    default: str
    description: str


@dataclass(frozen=True)
class Section:
    path: str
    model: type[BaseModel]
    keys: list[Key]


# --- reading model.py ---------------------------------------------------------------------------


def _source_tree() -> ast.Module:
    return ast.parse(inspect.getsource(spec_model))


def _module_aliases(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level `Name = <type expression>` of model.py (`Severity`, `Target`...)."""
    aliases: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Subscript | ast.BinOp):
                aliases[target.id] = node.value
    return aliases


def _class_fields(tree: ast.Module) -> dict[str, dict[str, tuple[ast.expr, str | None]]]:
    """Class name -> field name -> (annotation node, attribute docstring or None)."""
    found: dict[str, dict[str, tuple[ast.expr, str | None]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, tuple[ast.expr, str | None]] = {}
        body = node.body
        for i, item in enumerate(body):
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                doc = None
                if i + 1 < len(body):
                    nxt = body[i + 1]
                    if (
                        isinstance(nxt, ast.Expr)
                        and isinstance(nxt.value, ast.Constant)
                        and isinstance(nxt.value.value, str)
                    ):
                        doc = inspect.cleandoc(nxt.value.value)
                fields[item.target.id] = (item.annotation, doc)
        found[node.name] = fields
    return found


# --- rendering types and defaults ---------------------------------------------------------------


def _constraint_text(call: ast.Call) -> list[str]:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for keyword in call.keywords:
        value = ast.unparse(keyword.value)
        if keyword.arg in symbols:
            parts.append(f"{symbols[keyword.arg]} {value}")
        elif keyword.arg == "min_length":
            parts.append(f"at least {value}")
        elif keyword.arg == "pattern":
            pattern = ast.literal_eval(keyword.value)
            parts.append(f"matching `{pattern}`")
    return parts


def _type_text(node: ast.expr, aliases: dict[str, ast.expr], models: set[str]) -> str:
    """A reader's rendering of an annotation: `list of identifier`, `integer, ≥ 1`, ..."""
    if isinstance(node, ast.Constant) and node.value is None:
        return "null"
    if isinstance(node, ast.Name):
        if node.id in models:
            return "mapping"
        if node.id in aliases:
            return _type_text(aliases[node.id], aliases, models)
        return _TYPE_NAMES.get(node.id, node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        options = []
        for side in (node.left, node.right):
            text = _type_text(side, aliases, models)
            if text != "null" and text not in options:
                options.append(text)
        return " or ".join(options)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        head = node.value.id
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Literal":
            return " | ".join(f"`{ast.literal_eval(a)}`" for a in args)
        if head == "list":
            inner = _type_text(args[0], aliases, models)
            if "|" in inner or "," in inner:
                inner = f"({inner})"
            return f"list of {inner}"
        if head == "dict":
            key = _type_text(args[0], aliases, models)
            value = _type_text(args[1], aliases, models)
            return f"mapping of {key} to {value}"
        if head == "Annotated":
            base = _type_text(args[0], aliases, models)
            extra = []
            for meta in args[1:]:
                if isinstance(meta, ast.Call) and ast.unparse(meta.func) == "Field":
                    if any(k.arg == "discriminator" for k in meta.keywords):
                        return "mapping (by `type`)"
                    extra += _constraint_text(meta)
            return ", ".join([base, *extra])
    return ast.unparse(node)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        return value.text
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, BaseModel):
        return _yaml_value(value.model_dump(by_alias=True, mode="json"))
    return str(value)


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    if value is None:
        return "absent"
    if isinstance(value, BaseModel):
        fields = type(value).model_fields.values()
        if all(not f.is_required() for f in fields) and value == type(value)():
            return "all defaults"
        return f"`{_yaml_value(value)}`"
    if isinstance(value, list | dict) and not value:
        return "`[]`" if isinstance(value, list) else "`{}`"
    return f"`{_yaml_value(value)}`"


def _yaml_name(name: str, info: FieldInfo) -> str:
    name = info.alias or name
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        others = [str(c) for c in alias.choices if c != name]
        if others:
            name += " (or " + ", ".join(f"`{o}`" for o in others) + ")"
    return name


# --- walking the model --------------------------------------------------------------------------


def _nested_models(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path suffix, model) for each model a field's value holds: `""` (a mapping), `"[]"`
    (list items), `".<name>"` (mapping values)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _nested_models(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _nested_models(arg)
    elif origin is list:
        for suffix, model in _nested_models(typing.get_args(annotation)[0]):
            yield "[]" + suffix, model
    elif origin is dict:
        for suffix, model in _nested_models(typing.get_args(annotation)[1]):
            yield ".<name>" + suffix, model
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation


def _declaring_class(model: type[BaseModel], field: str, fields: dict[str, dict]) -> str:
    for cls in model.__mro__:
        if field in fields.get(cls.__name__, {}):
            return cls.__name__
    raise LookupError(f"{model.__name__}.{field} not found in model.py")


def _description(
    model: type[BaseModel], field: str, fields: dict[str, dict[str, tuple[ast.expr, str | None]]]
) -> tuple[str, str]:
    """(owner `Class.field` whose text is used, description): the nearest docstring in the
    MRO, else the nearest `EXTRA_DESCRIPTIONS` entry, else ""."""
    for cls in model.__mro__:
        entry = fields.get(cls.__name__, {}).get(field)
        if entry is not None and entry[1]:
            return f"{cls.__name__}.{field}", entry[1]
        extra = EXTRA_DESCRIPTIONS.get(f"{cls.__name__}.{field}")
        if entry is not None and extra:
            return f"{cls.__name__}.{field}", extra
    return f"{_declaring_class(model, field, fields)}.{field}", ""


def sections() -> list[Section]:
    """Every model reachable from `Spec`, depth first in field order, with its keys."""
    tree = _source_tree()
    aliases = _module_aliases(tree)
    fields = _class_fields(tree)
    models = set(fields)
    out: list[Section] = []

    def visit(path: str, model: type[BaseModel]) -> None:
        keys: list[Key] = []
        children: list[tuple[str, type[BaseModel]]] = []
        for name, info in model.model_fields.items():
            owner = _declaring_class(model, name, fields)
            annotation = fields[owner][name][0]
            yaml_name = _yaml_name(name, info)
            key_path = f"{path}.{info.alias or name}" if path else (info.alias or name)
            described_by, text = _description(model, name, fields)
            keys.append(
                Key(
                    path=key_path,
                    yaml_name=yaml_name,
                    owner=described_by,
                    field_name=name,
                    type_text=_type_text(annotation, aliases, models),
                    default=_default_text(info),
                    description=text,
                )
            )
            for suffix, child in _nested_models(info.annotation):
                children.append((key_path + suffix, child))
        out.append(Section(path or "(top level)", model, keys))
        # Sibling keys holding the same model (warehouses.initialization / incremental /
        # interactive) share one section: `warehouses.{initialization,incremental,interactive}`.
        grouped: dict[type[BaseModel], list[str]] = {}
        for child_path, child in children:
            grouped.setdefault(child, []).append(child_path)
        for child, paths in grouped.items():
            if len(paths) > 1:
                prefix = paths[0].rsplit(".", 1)[0]
                names = ",".join(p.rsplit(".", 1)[1] for p in paths)
                visit(f"{prefix}.{{{names}}}", child)
                continue
            label = paths[0]
            if "type" in child.model_fields and child.model_fields["type"].is_required():
                literal = typing.get_args(child.model_fields["type"].annotation)
                if literal:
                    label = f"{label} (type: {literal[0]})"
            visit_as(label, child)

    def visit_as(label: str, model: type[BaseModel]) -> None:
        # Keys under a labelled section keep the plain path (without the "(type: x)" note).
        plain = label.split(" (type:", 1)[0]
        start = len(out)
        visit(plain, model)
        out[start] = Section(label, out[start].model, out[start].keys)

    visit("", spec_model.Spec)
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") if text else ""


def render() -> str:
    """docs/SPEC_REFERENCE.md, as text."""
    lines = [
        "# Spec reference (`clinipipe.yaml`)",
        "",
        "<!-- Generated from clinipipe/spec/model.py by clinipipe/spec/reference.py; do not edit.",
        f"     Regenerate: {COMMAND}",
        "     tests/test_docs.py fails when this file differs from what the model gives. -->",
        "",
        "Every key the spec accepts, with its type, its default and what it does. Unknown keys",
        "are refused everywhere (exit 2, at their file:line:col). Any string may use `${VAR}` or",
        "`${VAR:-default}`, read from the environment and from `.env` next to the spec (the",
        "environment wins); secrets (the DSN's password, keys, webhook URLs) are only ever named",
        "here, never written. `clinipipe validate` checks a spec; `examples/hospital.yaml` uses",
        "every section.",
        "",
        "Types: *identifier* is a plain SQL name (`[A-Za-z_][A-Za-z0-9_]*`, at most 63",
        "characters); *duration* is e.g. `90 seconds`, `5 minutes`, `1 hour`, `1 day` or",
        "`downstream`; *PHI class* is one of the classes listed in the README (`name`, `ssn`,",
        "`mrn`, `birth_date`, `date`, `zip`, `free_text`, ... or `none`); *absent* means the",
        "key may be left out and the feature is then off.",
        "",
    ]
    for section in sections():
        lines.append(f"## `{section.path}`")
        lines.append("")
        doc = section.model.__doc__
        if doc and section.model.__doc__ != BaseModel.__doc__:
            lines += [" ".join(inspect.cleandoc(doc).split()), ""]
        lines.append("| key | type | default | description |")
        lines.append("|---|---|---|---|")
        for key in section.keys:
            lines.append(
                f"| `{key.path}`{_alias_note(key)} | {_cell(key.type_text)} | "
                f"{_cell(key.default)} | {_cell(key.description)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _alias_note(key: Key) -> str:
    extra = key.yaml_name.split(" (or ", 1)
    return f" (or {extra[1]}" if len(extra) == 2 else ""


def all_keys() -> list[Key]:
    return [key for section in sections() for key in section.keys]


if __name__ == "__main__":
    print(render(), end="")
