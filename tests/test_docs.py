"""The documentation says what the code does: checks that make drift a test failure.

* docs/SPEC_REFERENCE.md is generated from the spec model (`clinipipe.spec.reference`): the
  committed file must be what the generator writes now, and every field of every spec model
  must appear in it with a description.
* docs/TROUBLESHOOTING.md quotes the setup messages the code prints: each fragment below must
  still be in the source file named (a reworded message fails here) and in the document.
* The `clinipipe ...` commands written in the operator documents use only options the CLI has.

No database is opened; the whole file runs in about a second.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel

from clinipipe.spec import model as spec_model
from clinipipe.spec import reference

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


# --- the spec reference -------------------------------------------------------------------------


def test_spec_reference_is_what_the_model_generates() -> None:
    committed = (DOCS / "SPEC_REFERENCE.md").read_text(encoding="utf-8")
    assert committed == reference.render(), (
        "docs/SPEC_REFERENCE.md is out of date with clinipipe/spec/model.py; regenerate it: "
        f"{reference.COMMAND}"
    )


def _models() -> list[type[BaseModel]]:
    """Every pydantic model reachable from `Spec`, found independently of the generator."""
    seen: list[type[BaseModel]] = []

    def walk(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.append(annotation)
                for field in annotation.model_fields.values():
                    walk(field.annotation)
            return
        for arg in getattr(annotation, "__args__", ()) or ():
            walk(arg)
        for meta in getattr(annotation, "__metadata__", ()) or ():
            walk(meta)

    walk(spec_model.Spec)
    return seen


def test_every_spec_field_is_in_the_reference_with_a_description() -> None:
    text = (DOCS / "SPEC_REFERENCE.md").read_text(encoding="utf-8")
    keys = reference.all_keys()
    documented = {(k.owner.split(".")[0], k.field_name) for k in keys}
    by_field = {}
    for key in keys:
        by_field.setdefault(key.field_name, []).append(key)
    models = _models()
    assert len(models) >= 20, [m.__name__ for m in models]
    missing, undescribed = [], []
    for model in models:
        for name, info in model.model_fields.items():
            yaml_name = info.alias or name
            rows = [
                k
                for k in by_field.get(name, [])
                if any(k.owner == f"{cls.__name__}.{name}" for cls in model.__mro__)
                or k.path.endswith(f".{yaml_name}")
                or k.path == yaml_name
            ]
            if not rows or not any(f"`{k.path}`" in text for k in rows):
                missing.append(f"{model.__name__}.{name}")
            elif not all(k.description.strip() for k in rows):
                undescribed.append(f"{model.__name__}.{name}")
    assert not missing, f"spec fields absent from docs/SPEC_REFERENCE.md: {missing}"
    assert not undescribed, (
        f"spec fields without a description: {undescribed}; add an attribute docstring in "
        "clinipipe/spec/model.py (or an entry in reference.EXTRA_DESCRIPTIONS), then run "
        f"{reference.COMMAND}"
    )
    assert documented  # the generator attributed every row to a class


def test_extra_descriptions_name_live_fields_without_docstrings() -> None:
    """An entry for a renamed field, or one shadowing a docstring, is an error: model.py's
    docstrings are the first source of truth."""
    tree = ast.parse(inspect.getsource(spec_model))
    fields = reference._class_fields(tree)
    stale, shadowing = [], []
    for entry in reference.EXTRA_DESCRIPTIONS:
        owner, field = entry.split(".")
        declared = fields.get(owner, {}).get(field)
        if declared is None:
            stale.append(entry)
        elif declared[1]:  # the field has its own docstring
            shadowing.append(entry)
    assert not stale, f"EXTRA_DESCRIPTIONS entries naming no field of model.py: {stale}"
    assert not shadowing, f"EXTRA_DESCRIPTIONS entries for fields with a docstring: {shadowing}"


def test_reference_renders_types_defaults_and_aliases() -> None:
    keys = {k.path: k for k in reference.all_keys()}
    assert keys["source.dsn"].default == "**required**"
    assert keys["source.lag_warning_mb"].type_text == "integer, ≥ 1"
    assert keys["source.tables[].schema"].default == "`public`"
    assert keys["interactive_tables[].from"].type_text == "identifier"
    assert keys["backup.retention_lock"].yaml_name == "retention_lock (or `lock`)"
    assert keys["phi.alerts.min_severity"].type_text == "`low` | `medium` | `high`"
    assert keys["warehouses.interactive"].default.startswith("`{name: CLINIPIPE_SERVE_WH")
    assert "target.account" in keys and "target.encryption_key_env" in keys


def test_readme_links_the_spec_reference() -> None:
    assert "docs/SPEC_REFERENCE.md" in (REPO / "README.md").read_text(encoding="utf-8")


# --- troubleshooting: the messages the code prints ---------------------------------------------

# (fragment of a message as the code writes it, the file that writes it). Each fragment lies
# inside one string literal of that file, so rewording the message there fails this test.
SETUP_MESSAGES: list[tuple[str, str]] = [
    ("spec file not found", "clinipipe/spec/loader.py"),
    ("is not set: export it, add it to .env", "clinipipe/spec/interpolate.py"),
    ("is not a plain SQL identifier", "clinipipe/spec/types.py"),
    ("is below Snowflake's minimum of 60 seconds", "clinipipe/spec/model.py"),
    ("the DSN holds a password written into the spec", "clinipipe/spec/model.py"),
    ("is still the placeholder from .env.example", "clinipipe/spec/dsn.py"),
    ("which is not PostgreSQL's ", "clinipipe/spec/dsn.py"),
    ("is neither a postgresql:// URI nor libpq key=value pairs", "clinipipe/spec/dsn.py"),
    ("table has no primary key: add", "clinipipe/spec/checks.py"),
    ("The operating system refused, not a clinipipe bug", "clinipipe/cli/app.py"),
    ("cannot connect to the source PostgreSQL", "clinipipe/source/postgres.py"),
    (
        "The TLS connection to the source failed: check sslmode and sslrootcert",
        "clinipipe/source/postgres.py",
    ),
    ("Nothing was changed on the source.", "clinipipe/source/postgres.py"),
    ("wal_level is not 'logical'", "clinipipe/_templates/_postgres/cdc-setup.sql.j2"),
    (
        "a replicated table does not exist on the source",
        "clinipipe/_templates/_postgres/cdc-setup.sql.j2",
    ),
    ("a replicated table has no primary key", "clinipipe/_templates/_postgres/cdc-setup.sql.j2"),
    ("lacks REPLICA IDENTITY FULL", "clinipipe/_templates/_postgres/cdc-setup.sql.j2"),
    ("no free replication slot for clinipipe", "clinipipe/_templates/_postgres/cdc-setup.sql.j2"),
    ("max_wal_senders leaves no connection", "clinipipe/_templates/_postgres/cdc-setup.sql.j2"),
    ("has more privileges than clinipipe needs", "clinipipe/source/privileges.py"),
    ("as a superuser or the ", "clinipipe/source/privileges.py"),
    ("cannot open a replication connection to", "clinipipe/source/replication.py"),
    ("The role needs the REPLICATION attribute", "clinipipe/source/replication.py"),
    (
        "Use `clinipipe backfill --resume`, or `--force` to start over.",
        "clinipipe/source/replication.py",
    ),
    ("The source role lacks a privilege CDC needs", "clinipipe/pipeline/cdc/loop.py"),
    ("is missing: no backfill yet", "clinipipe/cli/cdc.py"),
    ("no completed backfill for slot", "clinipipe/pipeline/cdc/loop.py"),
    ("exists but this target has no record of a backfill", "clinipipe/pipeline/backfill.py"),
    ("does not exist any more (dropped, or lost in a", "clinipipe/pipeline/deploy.py"),
    ("does not exist any more (dropped, or lost in a", "clinipipe/pipeline/cdc/loop.py"),
    ("was invalidated (its WAL was removed, see", "clinipipe/pipeline/deploy.py"),
    ("was invalidated (its WAL was removed, see", "clinipipe/pipeline/cdc/loop.py"),
    (
        "is gone (dropped, or lost in a failover), so changes since",
        "clinipipe/pipeline/backfill.py",
    ),
    ("does not exist on the source (dropped?)", "clinipipe/pipeline/cdc/loop.py"),
    ("A published table is gone on the source", "clinipipe/pipeline/cdc/loop.py"),
    (
        "Another clinipipe process (or a DuckDB client) has it open; stop it first.",
        "clinipipe/targets/duckdb/core.py",
    ),
    ("(create it, or fix target.path in the spec)", "clinipipe/targets/duckdb/core.py"),
    ("`cdc start` is already running for this warehouse", "clinipipe/pipeline/control.py"),
    ("`cdc start` owns this warehouse and runs as another user", "clinipipe/pipeline/control.py"),
    ("`cdc start` is running (pid", "clinipipe/cli/cdc.py"),
    (
        "has no clinipipe control tables: run `clinipipe deploy` first",
        "clinipipe/targets/capabilities/deployment.py",
    ),
    ("was deployed by an earlier clinipipe", "clinipipe/targets/capabilities/state.py"),
    ("was deployed before dynamic-table refreshes existed", "clinipipe/pipeline/refresh.py"),
    (
        "by an older clinipipe): run `clinipipe deploy` to add it",
        "clinipipe/targets/capabilities/verify.py",
    ),
    ("has no audit log", "clinipipe/backup/audit.py"),
    ("to the warehouse's encryption key", "clinipipe/targets/duckdb/core.py"),
    ("The file is encrypted: set target.encryption_key_env", "clinipipe/targets/duckdb/core.py"),
    ("encrypted: migrate it", "clinipipe/targets/duckdb/core.py"),
    ("Check the key in", "clinipipe/targets/duckdb/core.py"),
    ("clinipipe never reads passwords from the spec", "clinipipe/targets/snowflake/core.py"),
    ("to the path of the private key file", "clinipipe/targets/snowflake/core.py"),
    ("Check the account identifier (orgname-accountname)", "clinipipe/targets/snowflake/core.py"),
    (
        "a backup retention lock needs Snowflake's Business Critical edition",
        "clinipipe/spec/checks.py",
    ),
    ("keyed pseudonyms (HMAC-SHA256) need it", "clinipipe/phi/safe_harbor.py"),
    ("is configured but", "clinipipe/notify.py"),
    ("did not finish", "clinipipe/pipeline/backfill.py"),
    ("cannot resume exactly: append-only table(s)", "clinipipe/pipeline/backfill.py"),
    ("which is not a widening", "clinipipe/pipeline/schema_evolution.py"),
    ("whose names ", "clinipipe/source/catalog.py"),
    ("is paused, its changes are not applied", "clinipipe/cli/cdc.py"),
    ("CDC is behind: the warehouse is at", "clinipipe/pipeline/verify.py"),
    ("was deployed from other templates than this spec and", "clinipipe/pipeline/cdc/loop.py"),
    ("were never PHI-scanned", "clinipipe/cli/cdc.py"),
    ("the warehouse has no CDC checkpoint yet", "clinipipe/pipeline/verify.py"),
]


def _normal(text: str) -> str:
    """Markdown and source text compared alike: no backticks, no escapes, one space."""
    return " ".join(text.replace("`", "").replace("\\|", "|").split())


def test_troubleshooting_quotes_the_setup_messages_the_code_prints() -> None:
    doc = _normal((DOCS / "TROUBLESHOOTING.md").read_text(encoding="utf-8"))
    gone, undocumented = [], []
    for fragment, path in SETUP_MESSAGES:
        source = (REPO / path).read_text(encoding="utf-8")
        if fragment not in source:
            gone.append((fragment, path))
        if _normal(fragment) not in doc:
            undocumented.append(fragment)
    assert not gone, (
        f"messages no longer in the code (update docs/TROUBLESHOOTING.md and this list): {gone}"
    )
    assert not undocumented, f"messages missing from docs/TROUBLESHOOTING.md: {undocumented}"


# --- commands in the operator documents exist --------------------------------------------------

OPERATOR_DOCS = ["DEPLOYMENT_GUIDE.md", "COST_OPTIMIZATION.md", "TROUBLESHOOTING.md"]


def _invocations(text: str) -> list[str]:
    """`clinipipe ...` invocations in code spans and code blocks, up to the end of the span,
    a comment, a pipe or a shell operator."""
    found = []
    for match in re.finditer(r"(?<![\w/.-])clinipipe((?:[ \t]+[^\s`#|;&)]+)+)", text):
        # "run clinipipe cdc reset --yes and clinipipe backfill --force": two invocations
        found += [part for part in re.split(r"\bclinipipe\b", match.group(1)) if part.strip()]
    return found


def _check(root: Any, words: str) -> str | None:
    """None when the options of `clinipipe <words>` exist; else what is wrong."""
    try:
        tokens = shlex.split(words.replace("\\\n", " "))
    except ValueError:
        tokens = words.split()
    command = root
    path = ["clinipipe"]
    options: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i].strip("[]")
        if token in ("-c", "--config"):
            i += 2
            continue
        if token in getattr(command, "commands", {}):
            command = command.commands[token]
            path.append(token)
        elif token.startswith("--"):
            options.append(token.split("=", 1)[0].rstrip(",.:;"))
        i += 1
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    known |= {"--help"}
    unknown = [o for o in options if o not in known]
    return f"{' '.join(path)}: unknown option(s) {unknown}" if unknown else None


@pytest.mark.parametrize("name", OPERATOR_DOCS)
def test_documented_commands_use_real_options(name: str) -> None:
    from clinipipe.cli.app import app

    root = typer.main.get_command(app)
    assert "cdc" in root.commands
    text = (DOCS / name).read_text(encoding="utf-8")
    invocations = _invocations(text)
    assert invocations, f"no clinipipe command found in {name}"
    problems = [p for words in invocations if (p := _check(root, words))]
    assert not problems, f"{name}: {problems}"


def test_the_option_check_catches_an_invented_flag() -> None:
    from clinipipe.cli.app import app

    root = typer.main.get_command(app)
    assert "cdc" in root.commands
    assert _check(root, " cdc start --metrics-port 9187") is None
    assert _check(root, " -c x.yaml cdc start --until-caught-up") is None
    assert _check(root, " cdc start --daemonize") is not None
