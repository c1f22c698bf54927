"""Checks across the spec that a field's type alone cannot express."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence

from clinipipe.spec.errors import Problem, format_path
from clinipipe.spec.model import Spec
from clinipipe.spec.schemas import schema_names, snowflake_settings
from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR, did_you_mean
from clinipipe.spec.yaml_positions import Path, Positions


def semantic_problems(spec: Spec) -> Iterator[tuple[Path, str]]:
    """Yield (path, message) for each cross-reference problem of a structurally valid spec."""
    yield from _duplicates(
        [("source", "tables", i) for i in range(len(spec.source.tables))],
        [t.qualified for t in spec.source.tables],
        "source table",
    )
    yield from _raw_name_clashes(spec)
    for i, table in enumerate(spec.source.tables):
        if not table.primary_key and not table.append_only:
            yield (
                ("source", "tables", i, "primary_key"),
                "table has no primary key: add `primary_key: [column, ...]` (CDC applies "
                "changes by primary key), or `append_only: true` for a table without one that "
                "only receives inserts (an update or delete then pauses it)",
            )
        if table.primary_key and table.append_only:
            yield (
                ("source", "tables", i, "append_only"),
                "append_only is for tables without a primary key; remove it (changes to a "
                "table with a primary key are applied by key)",
            )
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

    yield from _dynamic_table_references(spec)
    yield from _dashboard_references(spec)
    yield from release_problems(spec)
    yield from access_problems(spec)


def _raw_name_clashes(spec: Spec) -> Iterator[tuple[Path, str]]:
    """Source tables are loaded as raw.<table name>: two tables of one name in different
    schemas (or names differing only by case) would be loaded into one raw table."""
    first: dict[str, int] = {}
    for i, table in enumerate(spec.source.tables):
        earlier = first.setdefault(table.name.lower(), i)
        other = spec.source.tables[earlier]
        if earlier != i and other.qualified.lower() != table.qualified.lower():
            yield (
                ("source", "tables", i, "name"),
                f"source table {table.qualified} and {other.qualified} (item {earlier}) would "
                f"both load into raw.{table.name}: the warehouse names raw tables by table name "
                "only. Keep one of them in this spec and replicate the other with a second "
                "spec (its own warehouse, publication and slot)",
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


# --- dynamic-table references -------------------------------------------------------------------

DERIVED_SCHEMA_NAME = "derived"
"""The schema dynamic tables live in (`clinipipe.sql.context.DERIVED_SCHEMA`)."""

_SQL_SKIP = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\$\$.*?\$\$", re.S)
_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_DOTTED = re.compile(rf"{_NAME}(?:\s*\.\s*{_NAME})+")
_PART = re.compile(_NAME)


def table_references(sql: str, schema: str) -> list[str]:
    """Names of the tables `sql` reads as `<schema>.<name>`, in order of first mention.

    A lexical scan, the same for every dialect: comments and string literals are skipped,
    identifiers may be quoted (`"derived"."x"`), whitespace may surround the dot and a catalog
    may precede the schema (`db.derived.x`). An unquoted schema matches case-insensitively.
    It cannot tell a table alias spelled like the schema from the schema itself.
    """
    found: list[str] = []
    text = _SQL_SKIP.sub(" ", sql)
    for chain in _DOTTED.finditer(text):
        parts = [
            p[1:-1].replace('""', '"') if p.startswith('"') else p
            for p in _PART.findall(chain.group(0))
        ]
        for first, second in itertools.pairwise(parts):
            if first.lower() == schema.lower() and second not in found:
                found.append(second)
                break
    return found


def dynamic_table_upstreams(spec: Spec) -> dict[str, list[str]]:
    """Dynamic table -> the dynamic tables of the spec its SQL reads (`derived.<name>`)."""
    names = {d.name.lower(): d.name for d in spec.dynamic_tables}
    return {
        d.name: [
            names[r.lower()]
            for r in table_references(d.sql, DERIVED_SCHEMA_NAME)
            if r.lower() in names
        ]
        for d in spec.dynamic_tables
    }


def dynamic_table_cycles(spec: Spec) -> list[list[str]]:
    """Each cycle among the dynamic tables once, as [a, b, ..., a] (a reads b reads ... a)."""
    upstreams = dynamic_table_upstreams(spec)
    order = {d.name: i for i, d in enumerate(spec.dynamic_tables)}
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node) :]
            key = frozenset(cycle)
            if key not in seen:
                seen.add(key)
                start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                cycle = cycle[start:] + cycle[:start]
                cycles.append([*cycle, cycle[0]])
            return
        if node in done:
            return
        stack.append(node)
        for upstream in upstreams[node]:
            visit(upstream, stack)
        stack.pop()
        done.add(node)

    for d in spec.dynamic_tables:
        visit(d.name, [])
    return cycles


def dynamic_table_order(spec: Spec) -> list[str]:
    """The dynamic tables with every one after the dynamic tables it reads (spec order
    otherwise). Raises ValueError on a cycle (a validated spec has none)."""
    upstreams = dynamic_table_upstreams(spec)
    ordered: list[str] = []
    placed: set[str] = set()
    pending = [d.name for d in spec.dynamic_tables]
    while pending:
        ready = [n for n in pending if all(u in placed for u in upstreams[n])]
        if not ready:
            raise ValueError(f"dynamic tables form a cycle: {', '.join(pending)}")
        ordered.append(ready[0])
        placed.add(ready[0])
        pending.remove(ready[0])
    return ordered


def _dynamic_table_references(spec: Spec) -> Iterator[tuple[Path, str]]:
    """Every `derived.<x>` a dynamic table reads is a dynamic table of the spec, every
    `<raw>.<x>` a source table, and the dynamic tables form no cycle."""
    raw_schema = schema_names(spec)["raw"]
    index = {d.name: i for i, d in enumerate(spec.dynamic_tables)}
    dynamic = {d.name.lower() for d in spec.dynamic_tables}
    sources = {t.name.lower() for t in spec.source.tables}
    for i, dt in enumerate(spec.dynamic_tables):
        for name in table_references(dt.sql, DERIVED_SCHEMA_NAME):
            if name.lower() not in dynamic:
                yield (
                    ("dynamic_tables", i, "sql"),
                    f"reads {DERIVED_SCHEMA_NAME}.{name}, which is not a dynamic table of this "
                    f"spec; dynamic tables: {', '.join(sorted(index))}",
                )
        for name in table_references(dt.sql, raw_schema):
            if name.lower() not in sources:
                yield (
                    ("dynamic_tables", i, "sql"),
                    f"reads {raw_schema}.{name}, which is not a source table of this spec; "
                    f"source tables: {', '.join(sorted(t.name for t in spec.source.tables))}",
                )
    for cycle in dynamic_table_cycles(spec):
        path = " -> ".join(cycle)
        yield (
            ("dynamic_tables", index[cycle[0]], "sql"),
            f"dynamic tables form a cycle: {path} (each reads the next as "
            f"{DERIVED_SCHEMA_NAME}.<name>); no table can be refreshed before the others",
        )


# --- dashboards --------------------------------------------------------------------------------

SERVING_SCHEMA_NAME = "serving"
"""The schema interactive tables are served from (`clinipipe.sql.context.SERVING_SCHEMA`)."""

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def dashboard_parameters(sql: str) -> list[str]:
    """The `$name` parameters `sql` uses, in order of first mention (comments and string
    literals skipped)."""
    found: list[str] = []
    for name in _PARAM.findall(_SQL_SKIP.sub(" ", sql)):
        if name not in found:
            found.append(name)
    return found


def dashboard_table(spec: Spec, sql: str) -> str | None:
    """The interactive table of `spec` a dashboard's `sql` reads (`serving.<name>`), when it
    reads exactly one and it is an interactive table of the spec; else None."""
    names = {t.name.lower(): t.name for t in spec.interactive_tables}
    read = table_references(sql, SERVING_SCHEMA_NAME)
    if len(read) != 1 or read[0].lower() not in names:
        return None
    return names[read[0].lower()]


def _dashboard_references(spec: Spec) -> Iterator[tuple[Path, str]]:
    """Every dashboard reads exactly one interactive table (on DuckDB each is served from its
    own file) and uses exactly the parameters it declares."""
    interactive = sorted(t.name for t in spec.interactive_tables)
    for i, board in enumerate(spec.dashboards):
        read = table_references(board.sql, SERVING_SCHEMA_NAME)
        if dashboard_table(spec, board.sql) is None:
            found = ", ".join(f"{SERVING_SCHEMA_NAME}.{r}" for r in read) or "none"
            yield (
                ("dashboards", i, "sql"),
                f"a dashboard reads exactly one interactive table as "
                f"{SERVING_SCHEMA_NAME}.<name> (it reads: {found}); interactive tables: "
                f"{', '.join(interactive) or '(none): add one under interactive_tables'}",
            )
        used = dashboard_parameters(board.sql)
        for name in used:
            if name not in board.params:
                yield (
                    ("dashboards", i, "sql"),
                    f"uses ${name}, which is not declared: add it under params with its type "
                    f"(int, bigint, text, date or timestamp)",
                )
        for name in board.params:
            if name not in used:
                yield (("dashboards", i, "params", name), f"${name} is declared but not used")


# --- released columns and source column names (fail closed) ------------------------------------


def release_problems(spec: Spec) -> Iterator[tuple[Path, str]]:
    """A released column (`source.tables[].release`) is listed once, is not also classified
    in `columns` as PHI (a column is PHI of a class or released as it is, never both; class
    ``none`` is no PHI class), and is not a
    join key (a single-column primary key of a spec table: pseudonymized in every policy)."""
    keys = {t.primary_key[0]: t.name for t in spec.source.tables if len(t.primary_key) == 1}
    for i, table in enumerate(spec.source.tables):
        seen: set[str] = set()
        for j, column in enumerate(table.release):
            where: Path = ("source", "tables", i, "release", j)
            if column in seen:
                yield where, f"column '{column}' is released twice"
                continue
            seen.add(column)
            phi_class = table.columns.get(column, "none")
            if phi_class != "none":
                yield (
                    where,
                    f"column '{column}' is classified as '{phi_class}' under columns and also "
                    "released as it is; a released column must hold no PHI: remove one of the two",
                )
            elif column in keys:
                yield (
                    where,
                    f"column '{column}' is a join key (the primary key of table "
                    f"'{keys[column]}'): research extracts pseudonymize it in every policy, so it "
                    "cannot be released as it is",
                )


# --- access control (spec `access:`) ------------------------------------------------------------


def access_role_names(spec: Spec) -> dict[str, str]:
    """Persona -> Snowflake role name (`role`, else the pipeline role + `_` + the persona)."""
    if spec.access is None:
        return {}
    pipeline = snowflake_settings(spec).role
    return {
        persona: r.role or f"{pipeline}_{persona}".upper()
        for persona, r in spec.access.roles.items()
    }


def access_tables(spec: Spec) -> dict[str, set[str]]:
    """Schema role -> the tables of that schema a role may be granted one by one."""
    sources = {t.name for t in spec.source.tables}
    return {
        "raw": sources,
        "research": sources,
        "derived": {d.name for d in spec.dynamic_tables},
        "serving": {t.name for t in spec.interactive_tables},
    }


def access_problems(spec: Spec) -> Iterator[tuple[Path, str]]:
    """Roles name distinct Snowflake roles (not the pipeline's own) and tables of this spec.
    When some column is PHI: a per-class `phi_visible` lists classes some column has (raw
    columns are masked by class: templates/snowflake/10-access-control); a role reading derived
    or serving tables (no masking policy: built from unmasked PHI) or holding the pipeline role
    (`deploy`) must say it sees all PHI (`phi_visible: all`). Fail closed: what is refused here
    would show PHI to a role the spec says must not see it."""
    if spec.access is None:
        return
    settings = snowflake_settings(spec)
    reserved = {
        settings.role.upper(): "the pipeline role",
        settings.admin_role.upper(): "the admin role",
    }
    used: dict[str, str] = {}
    classes = {c for t in spec.source.tables for c in t.columns.values() if c != "none"}
    tables = access_tables(spec)
    for persona, name in access_role_names(spec).items():
        role = spec.access.roles[persona]
        where: Path = ("access", "roles", persona)
        at_role: Path = (*where, "role") if role.role else where
        if name.upper() in reserved:
            yield (
                at_role,
                f"role {name} is {reserved[name.upper()]}; give persona '{persona}' its own role",
            )
        elif name.upper() in used:
            yield at_role, f"role {name} is also the role of persona '{used[name.upper()]}'"
        used.setdefault(name.upper(), persona)
        for j, ref in enumerate(role.tables):
            schema, _, table = ref.partition(".")
            if schema not in tables:
                yield (
                    (*where, "tables", j),
                    f"'{ref}' is not <schema>.<table> with schema one of "
                    f"{', '.join(sorted(tables))}",
                )
            elif table not in tables[schema]:
                known = sorted(tables[schema])
                yield (
                    (*where, "tables", j),
                    f"'{table}' is not a {schema} table of this spec"
                    f"{did_you_mean(table, known)}; {schema} tables: "
                    f"{', '.join(known) or '(none)'}",
                )
        if role.phi_visible == "all" or not classes:
            continue
        for j, phi_class in enumerate(role.phi_visible):
            if phi_class == "none":
                yield (
                    (*where, "phi_visible", j),
                    "'none' is not a PHI class: columns classified none are visible to every "
                    "role that reads them; remove it",
                )
            elif phi_class not in classes:
                yield (
                    (*where, "phi_visible", j),
                    f"no column of this spec has PHI class '{phi_class}'; classes in use: "
                    f"{', '.join(sorted(classes))}",
                )
        unmasked = {"derived", "serving"} & (
            set(role.read) | set(role.write) | {t.partition(".")[0] for t in role.tables}
        )
        if unmasked:
            yield (
                (*where, "phi_visible") if role.phi_visible else where,
                f"persona '{persona}' reads {' and '.join(sorted(unmasked))} tables, which "
                "carry no masking policy (the pipeline role builds them from unmasked PHI): it "
                "would see all their PHI. Say so with `phi_visible: all`, or give it the raw "
                "schema (masked by PHI class) or the research schema instead",
            )
        if role.deploy:
            yield (
                (*where, "deploy"),
                f"persona '{persona}' is granted the pipeline role (`deploy: true`), which sees "
                "every PHI column unmasked: say so with `phi_visible: all`",
            )


SourceColumns = Mapping[tuple[str, str], Sequence[str]]
"""(schema, table) -> the table's column names in the source catalog (tables missing from the
mapping are not checked)."""


def source_column_problems(
    spec: Spec, catalog: SourceColumns, keys: SourceColumns | None = None
) -> Iterator[tuple[Path, bool, str]]:
    """(path, is_key, message) for each spec column name that `catalog` does not have: a key of
    `columns` (`is_key`: report the key's position), an entry of `primary_key` or of `release`.
    Names are compared exactly (PostgreSQL's catalog is case-sensitive); the message suggests
    the closest catalog name. With `keys` ((schema, table) -> the source's primary key), a
    `primary_key` that names existing columns but not the table's primary key is a problem too:
    backfill ranges and CDC's updates and deletes follow the source's key, so a different spec
    key would make scans and the research extract link rows by the wrong columns."""
    for i, table in enumerate(spec.source.tables):
        known = catalog.get((table.schema_, table.name))
        if known is None:
            continue
        source_key = list((keys or {}).get((table.schema_, table.name), ()))
        if (
            source_key
            and table.primary_key
            and set(table.primary_key) <= set(known)
            and sorted(table.primary_key) != sorted(source_key)
        ):
            yield (
                ("source", "tables", i, "primary_key"),
                False,
                f"source table {table.qualified} has primary key ({', '.join(source_key)}), "
                f"not ({', '.join(table.primary_key)}): write primary_key: "
                f"[{', '.join(source_key)}]",
            )
        names = set(known)
        listed: list[tuple[Path, bool, str]] = [
            (("source", "tables", i, "columns", c), True, c) for c in table.columns
        ]
        listed += [
            (("source", "tables", i, "primary_key", j), False, c)
            for j, c in enumerate(table.primary_key)
        ]
        listed += [
            (("source", "tables", i, "release", j), False, c) for j, c in enumerate(table.release)
        ]
        for path, is_key, column in listed:
            if column not in names:
                hint = did_you_mean(column, list(known))
                yield (
                    path,
                    is_key,
                    f"source table {table.qualified} has no column '{column}'{hint}",
                )


# --- warnings: costs the spec implies but does not show ----------------------------------------

HOURS_PER_MONTH = 720
"""A 30-day month, the unit of the monthly estimates."""
MIN_BILLED_SECONDS = 60
"""Snowflake bills at least 60 s each time a standard warehouse starts or resumes."""
INTERACTIVE_MIN_AUTO_SUSPEND = 86400
"""Interactive warehouses: AUTO_SUSPEND default and minimum (reference/snowflake-syntax.md)."""


def _month(spec: Spec, credits_per_hour: float) -> str:
    credits = credits_per_hour * HOURS_PER_MONTH
    usd = credits * spec.cost.credit_price_usd
    price = spec.cost.credit_price_usd
    return f"≈ {credits:,.0f} credits a month (30 days; ≈ {usd:,.0f} USD at {price:g} USD a credit)"


def cost_warnings(spec: Spec) -> Iterator[tuple[Path, str]]:
    """(path, message) for each cost the spec implies without saying so, on Snowflake (DuckDB
    bills nothing): a warehouse that never suspends (auto_suspend 0, or the incremental one
    kept running by a target lag no longer than its auto-suspend plus the 60 s minimum billed
    per resume), the interactive warehouse's 24-hour minimum per resume, and a retention lock on
    an edition that does not offer it. Estimates use WAREHOUSE_CREDITS_PER_HOUR and a 30-day
    month; they are warnings, never errors."""
    if spec.target.type != "snowflake":
        return
    whs = spec.warehouses
    for role in ("initialization", "incremental"):
        wh = getattr(whs, role)
        if wh.auto_suspend == 0:
            rate = WAREHOUSE_CREDITS_PER_HOUR[wh.size]
            yield (
                ("warehouses", role, "auto_suspend"),
                f"auto_suspend 0: the {role} warehouse {wh.name} ({wh.size}, {rate} credits/hour) "
                f"never suspends once started: {_month(spec, rate)}. Set auto_suspend (e.g. 60)",
            )
    lags: list[tuple[Path, float, str, str]] = [
        (("dynamic_tables", i, "target_lag"), d.target_lag.seconds, d.target_lag.text, d.name)
        for i, d in enumerate(spec.dynamic_tables)
        if d.target_lag.seconds is not None
    ]
    lags += [
        (("interactive_tables", i, "target_lag"), t.target_lag.seconds, t.target_lag.text, t.name)
        for i, t in enumerate(spec.interactive_tables)
        if t.target_lag is not None and t.target_lag.seconds is not None
    ]
    incremental = whs.incremental
    if lags and incremental.auto_suspend > 0:
        path, seconds, text, name = min(lags, key=lambda lag: lag[1])
        idle = max(incremental.auto_suspend, MIN_BILLED_SECONDS)
        if seconds <= idle + MIN_BILLED_SECONDS:
            rate = WAREHOUSE_CREDITS_PER_HOUR[incremental.size]
            yield (
                path,
                f"target_lag {text} of {name} keeps the incremental warehouse {incremental.name} "
                f"({incremental.size}, {rate} credits/hour) running nearly always: it refreshes "
                f"at least every {text} and the warehouse suspends only after "
                f"{incremental.auto_suspend} s idle (each resume bills at least "
                f"{MIN_BILLED_SECONDS} s): {_month(spec, rate)}. A target_lag well above "
                f"auto_suspend + {MIN_BILLED_SECONDS} s (e.g. 10 minutes) lets it suspend "
                "between refreshes",
            )
    if spec.interactive_tables:
        wh = whs.interactive
        rate = WAREHOUSE_CREDITS_PER_HOUR[wh.size]
        below = (
            f" (auto_suspend {wh.auto_suspend} is below that minimum, which applies anyway)"
            if wh.auto_suspend < INTERACTIVE_MIN_AUTO_SUSPEND
            else ""
        )
        suspend = max(wh.auto_suspend, INTERACTIVE_MIN_AUTO_SUSPEND)
        yield (
            ("warehouses", "interactive"),
            f"the interactive warehouse {wh.name} ({wh.size}) bills at least "
            f"{suspend / 3600:g} hours each time it resumes (interactive warehouses suspend only "
            f"after {INTERACTIVE_MIN_AUTO_SUSPEND} s idle at the least){below}: ≥ "
            f"{rate * suspend / 3600:g} credits per resume at the standard {wh.size} rate "
            f"(Snowflake documents no separate rate); queried every day it never suspends: "
            f"{_month(spec, rate)}",
        )
    if spec.backup.retention_lock and spec.cost.edition != "business_critical":
        yield (
            ("backup", "retention_lock"),
            f"a backup retention lock needs Snowflake's Business Critical edition (cost.edition "
            f"is {spec.cost.edition}): deploy would fail at 07-backups.sql",
        )


def spec_warnings(spec: Spec, positions: Positions, filename: str) -> list[Problem]:
    """`cost_warnings` as problems at their file:line:col (for `validate` to print)."""
    out = []
    for path, message in cost_warnings(spec):
        line, col = positions.of_value(path)
        out.append(Problem(filename, line, col, f"{format_path(path)}: {message}"))
    return out
