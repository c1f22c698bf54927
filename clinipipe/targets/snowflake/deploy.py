"""Snowflake deployment: DDL auto-commits, so each template is recorded after its last statement.

Three things a real account needs beyond running the templates:

* **A session.** The target logs in as the spec's admin role (`for_deployment`); template 01
  switches to the pipeline role and its warehouse itself after the account-level setup. When
  01 does not run, the deployment starts with ``USE ROLE <role>``, ``USE WAREHOUSE
  <incremental>``, ``USE DATABASE``: objects are created by (owned by) the pipeline role, and
  the MERGEs and records have a warehouse.
* **Drift** (`plan_changes`). Templates create objects IF NOT EXISTS, a no-op for an object
  that exists. The plan compares, object by object, the spec with what the account has: the
  warehouses' size and auto-suspend as SHOW WAREHOUSES reports them, everything else as the
  last deployment recorded it in ``_clinipipe.deployed_objects`` (a dynamic table's query, lag,
  refresh mode and warehouses; an interactive table's query, clustering and lag; the tables of
  the interactive warehouse; the backup policy's retention and schedule). Each difference comes
  with the statement that applies it: ALTER where Snowflake can change the object in place,
  CREATE OR REPLACE (written from the template's own CREATE statement) where it cannot, which
  rebuilds the data (on the initialization warehouse for a dynamic table).
* **Privileges** (`missing_privileges`): SHOW GRANTS TO ROLE for the admin and the pipeline
  role, followed through the roles granted to them, against what clinipipe's commands need.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from clinipipe.sql.context import CONTROL_SCHEMA, schema_names
from clinipipe.sql.render import Statement, render
from clinipipe.targets.capabilities.deployment import (
    Deployment,
    DeploymentRecord,
    DeployStatementError,
    MissingPrivilege,
    ObjectChange,
)
from clinipipe.targets.snowflake.core import SnowflakeCore

if TYPE_CHECKING:
    from clinipipe.sql.render import RenderedFile

WAREHOUSE = "warehouse"
INTERACTIVE_WAREHOUSE = "interactive warehouse"
DYNAMIC_TABLE = "dynamic table"
INTERACTIVE_TABLE = "interactive table"
BACKUP_POLICY = "backup policy"

SHOW_SIZES = {
    "X-SMALL": "XSMALL", "SMALL": "SMALL", "MEDIUM": "MEDIUM", "LARGE": "LARGE",
    "X-LARGE": "XLARGE", "2X-LARGE": "XXLARGE", "3X-LARGE": "XXXLARGE", "4X-LARGE": "X4LARGE",
    "5X-LARGE": "X5LARGE", "6X-LARGE": "X6LARGE",
}  # fmt: skip
"""SHOW WAREHOUSES spells sizes as in the web interface; the spec as in CREATE WAREHOUSE."""


def _code(sql: str) -> str:
    """A statement without its comment lines."""
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def _words(sql: str) -> str:
    """SQL with whitespace collapsed: reformatting a query is not a change."""
    return " ".join(sql.split())


@dataclass
class ManagedObject:
    """An object the spec wants: its attributes (text) and the template statement creating it."""

    kind: str
    name: str
    attributes: dict[str, str]
    template: str
    create: str
    """The template's CREATE ... IF NOT EXISTS statement (code only)."""
    extra: dict[str, str] = field(default_factory=dict)


State = dict[tuple[str, str], dict[str, str]]
"""(object kind, object name) -> attribute -> value."""


class SnowflakeDeployment(SnowflakeCore, Deployment):
    """`Deployment` on Snowflake. Not atomic: each template is recorded right after its last
    statement succeeded, and a re-run resumes with the first template not recorded (every
    template statement is idempotent). Plan changes run after the templates; the object state
    is recorded after the last of them, so a failed change shows again in the next plan."""

    def for_deployment(self) -> Self:
        self._login_role = self.spec.admin_role
        return self

    # -- applying --------------------------------------------------------------------------

    def session_preamble(self) -> list[str]:
        """USE ROLE (the pipeline role), USE WAREHOUSE (incremental), USE DATABASE."""
        ident = self.dialect.quote_ident
        return [
            f"USE ROLE {ident(self.spec.role)}",
            f"USE WAREHOUSE {ident(self.loaded.spec.warehouses.incremental.name)}",
            f"USE DATABASE {ident(self.spec.database)}",
        ]

    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
        changes: Sequence[ObjectChange] = (),
    ) -> int:
        import snowflake.connector

        def run_one(where: str, number: int, sql: str) -> None:
            try:
                self._execute(Statement(number, sql))
            except snowflake.connector.errors.Error as exc:
                reason = getattr(exc, "raw_msg", None) or str(exc)
                raise DeployStatementError(where, number, str(reason), rolled_back=False) from None

        run = 0
        first = _code(files[0].statements[0].sql).lstrip().upper() if files else ""
        if not first.startswith("USE ROLE "):  # 01 sets up its own session; else the pipeline's
            for number, sql in enumerate(self.session_preamble(), 1):
                run_one("the session setup", number, sql)
        for file in files:
            for statement in file.statements:
                run_one(file.name, statement.number, statement.sql)
                run += 1
            self._execute(Statement(0, self.template_record_sql(record, file)))
        for change in changes:
            if not change.applicable:
                continue
            where = f"the plan ({change.kind} {change.name}, {change.attribute})"
            for number, sql in enumerate(change.statements, 1):
                run_one(where, number, sql)
                run += 1
        if self.table_exists(CONTROL_SCHEMA, "deployed_objects"):
            deployed = set(self.deployed_digests()) | {f.name for f in files}
            state = self._state_after(deployed, changes)
            if state:
                self._execute(Statement(0, self._state_record_sql(record, state)))
        for file in also_record:
            self._execute(Statement(0, self.template_record_sql(record, file)))
        self._execute(Statement(0, self.deployment_record_sql(record, run)))
        return run

    # -- the spec's objects -----------------------------------------------------------------

    def managed_objects(self) -> list[ManagedObject]:
        """The objects whose settings deploy keeps in line with the spec, in apply order
        (warehouses, dynamic tables in spec order, interactive tables, the interactive
        warehouse, the backup policy). An object whose CREATE statement the templates do not
        contain is not managed."""
        spec = self.loaded.spec
        q, ident = self.dialect.qualify, self.dialect.quote_ident
        db = self.spec.database
        schemas = schema_names(spec, "snowflake")
        statements = [
            (f.name, _code(st.sql).strip().rstrip(";").rstrip())
            for f in render(self.loaded, self.dialect)
            if f.runs_on == "target"
            for st in f.statements
        ]

        def creating(phrase: str) -> tuple[str, str] | None:
            pattern = re.compile(rf"^CREATE\s+{phrase}(\s|\()", re.I)
            return next(((n, sql) for n, sql in statements if pattern.match(sql)), None)

        out: list[ManagedObject] = []

        def add(kind: str, name: str, phrase: str, attributes: dict[str, str]) -> None:
            found = creating(phrase)
            if found is not None:
                out.append(ManagedObject(kind, name, attributes, found[0], found[1]))

        wh = spec.warehouses
        for w in (wh.initialization, wh.incremental):
            add(
                WAREHOUSE, w.name, rf"WAREHOUSE\s+IF\s+NOT\s+EXISTS\s+{re.escape(ident(w.name))}",
                {"size": w.size, "auto_suspend": str(w.auto_suspend)},
            )  # fmt: skip
        for dt in spec.dynamic_tables:
            name = q(db, schemas["derived"], dt.name)
            add(
                DYNAMIC_TABLE, name, rf"DYNAMIC\s+TABLE\s+IF\s+NOT\s+EXISTS\s+{re.escape(name)}",
                {
                    "query": _words(dt.sql),
                    "refresh_mode": dt.refresh_mode.upper(),
                    "target_lag": dt.target_lag.snowflake(),  # SQL: '5 minutes', DOWNSTREAM
                    "warehouse": wh.incremental.name,
                    "initialization_warehouse": wh.initialization.name,
                },
            )  # fmt: skip
        tables: list[str] = []
        for it in spec.interactive_tables:
            name = q(db, schemas["serving"], it.name)
            query = (
                f"SELECT * FROM {q(db, schemas['derived'], it.from_)}" if it.from_ else it.sql or ""
            )
            before = len(out)
            add(
                INTERACTIVE_TABLE, name,
                rf"INTERACTIVE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+{re.escape(name)}",
                {
                    "query": _words(query),
                    "cluster_by": ", ".join(ident(c) for c in it.cluster_by),
                    "target_lag": it.target_lag.snowflake() if it.target_lag else "",
                },
            )  # fmt: skip
            if len(out) > before:
                tables.append(name)
        if tables:
            w = wh.interactive
            add(
                INTERACTIVE_WAREHOUSE, w.name,
                rf"INTERACTIVE\s+WAREHOUSE\s+IF\s+NOT\s+EXISTS\s+{re.escape(ident(w.name))}",
                {"size": w.size, "auto_suspend": str(w.auto_suspend), "tables": ", ".join(tables)},
            )  # fmt: skip
        b = spec.backup
        name = q(db, schemas["control"], b.policy_name)
        add(
            BACKUP_POLICY, name, rf"BACKUP\s+POLICY\s+IF\s+NOT\s+EXISTS\s+{re.escape(name)}",
            {
                "retention_days": str(b.retention_days),
                "schedule": b.schedule,
                "retention_lock": "true" if b.retention_lock else "false",
            },
        )  # fmt: skip
        return out

    # -- the account's objects --------------------------------------------------------------

    def recorded_state(self) -> State:
        """The object state the last deployment recorded ({} before the first)."""
        if not self.table_exists(CONTROL_SCHEMA, "deployed_objects"):
            return {}
        table = self.control("deployed_objects")
        rows = self.query(
            f"SELECT object_kind, object_name, attribute, value FROM {table} "
            f"WHERE deployment_id = (SELECT deployment_id FROM {table} "
            "ORDER BY recorded_at DESC LIMIT 1)"
        )
        state: State = {}
        for kind, name, attribute, value in rows:
            state.setdefault((str(kind), str(name)), {})[str(attribute)] = (
                None if value is None else str(value)  # type: ignore[assignment]
            )
        return state

    def reported_warehouses(self) -> dict[str, dict[str, str]]:
        """Size and auto-suspend of the warehouses SHOW WAREHOUSES reports, by name.

        SHOW needs no running warehouse and lists only what the role can see; a warehouse
        missing here is judged from the recorded state."""
        rows = self.query_records("SHOW WAREHOUSES")
        return warehouses_from_show(rows)

    def plan_changes(self) -> list[ObjectChange]:
        recorded = self.recorded_state()
        reported = self.reported_warehouses()
        wanted = self.managed_objects()
        old: State = {k: dict(v) for k, v in recorded.items()}
        sources: dict[tuple[str, str], str] = {}
        for obj in wanted:
            if obj.kind in (WAREHOUSE, INTERACTIVE_WAREHOUSE) and obj.name.upper() in reported:
                key = (obj.kind, obj.name)
                old.setdefault(key, {}).update(reported[obj.name.upper()])
                sources[key] = "reported"
        return diff_objects(self, wanted, old, sources)

    def _state_after(self, deployed: set[str], changes: Sequence[ObjectChange]) -> State:
        """The state to record: the spec's objects whose templates are deployed, except what a
        change could not apply (its old value stays)."""
        state: State = {
            (o.kind, o.name): dict(o.attributes)
            for o in self.managed_objects()
            if o.template in deployed
        }
        for change in changes:
            key = (change.kind, change.name)
            if not change.applicable and key in state and change.old is not None:
                state[key][change.attribute] = change.old
        return state

    def _state_record_sql(self, record: DeploymentRecord, state: State) -> str:
        lit = self.dialect.quote_literal
        at = lit(record.deployed_at.isoformat())
        rows = [
            f"({lit(record.deployment_id)}, {lit(kind)}, {lit(name)}, {lit(attr)}, "
            f"{lit(value)}, {at})"
            for (kind, name), attributes in sorted(state.items())
            for attr, value in sorted(attributes.items())
        ]
        return (
            f"INSERT INTO {self.control('deployed_objects')} "
            "(deployment_id, object_kind, object_name, attribute, value, recorded_at) VALUES\n"
            + ",\n".join(rows)
        )

    # -- privileges --------------------------------------------------------------------------

    def missing_privileges(self) -> list[MissingPrivilege]:
        roles = [self.spec.admin_role, self.spec.role]
        grants = {role: self.effective_grants(role) for role in roles}
        return compare_privileges(privileges_needed(self), grants)

    def effective_grants(self, role: str) -> set[tuple[str, str, str]] | None:
        """(privilege, granted_on, name) held by `role` directly or through the roles granted
        to it (SHOW GRANTS TO ROLE, followed role by role); None when the role does not exist."""
        import snowflake.connector

        from clinipipe.targets.snowflake.core import OBJECT_DOES_NOT_EXIST

        ident = self.dialect.quote_ident
        held: set[tuple[str, str, str]] = set()
        seen: set[str] = set()
        todo = [role.upper()]
        while todo:
            current = todo.pop(0)
            if current in seen:
                continue
            seen.add(current)
            try:
                rows = self.query_records(f"SHOW GRANTS TO ROLE {ident(current)}")
            except snowflake.connector.errors.Error as exc:
                missing = getattr(exc, "errno", None) == OBJECT_DOES_NOT_EXIST
                if current == role.upper() and missing:
                    return None
                raise
            for privilege, on, name in grants_from_show(rows):
                held.add((privilege, on, name))
                if privilege == "USAGE" and on == "ROLE":
                    todo.append(name)
        return held


# -- pure parts (unit-tested on recorded SHOW rows) ---------------------------------------------


def warehouses_from_show(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """SHOW WAREHOUSES rows -> name -> {size, auto_suspend} in the spec's spelling."""
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        name = str(row.get("name", ""))
        size = SHOW_SIZES.get(str(row.get("size", "")).strip().upper())
        if not name or size is None:
            continue
        attributes = {"size": size}
        if row.get("auto_suspend") not in (None, ""):
            attributes["auto_suspend"] = str(int(row["auto_suspend"]))
        out[name.upper()] = attributes
    return out


def grants_from_show(rows: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """SHOW GRANTS TO ROLE rows -> (privilege, granted_on, name), upper-case, names unquoted."""
    out = []
    for row in rows:
        name = str(row.get("name", "")).replace('"', "").upper()
        out.append((str(row.get("privilege", "")).upper(), str(row.get("granted_on", "")).upper(),
                    name))  # fmt: skip
    return out


@dataclass(frozen=True)
class Need:
    """A privilege `role` needs (any one of `any_of`: (privilege, granted_on, name or "*"))."""

    role: str
    privilege: str
    on: str
    needed_for: str
    fix: str
    any_of: tuple[tuple[str, str, str], ...]
    only_if_role_exists: bool = False


def privileges_needed(target: SnowflakeDeployment) -> list[Need]:
    """What `deploy` (the admin role) and the pipeline's commands (the pipeline role) need
    beyond what template 01 grants (docs/DEPLOYMENT_GUIDE.md, "Snowflake privileges")."""
    spec = target.loaded.spec
    sf = target.spec
    admin, role, db = sf.admin_role.upper(), sf.role.upper(), sf.database.upper()
    ident = target.dialect.quote_ident
    account = ("CREATE DATABASE", "CREATE WAREHOUSE", "CREATE ROLE", "MANAGE GRANTS")
    owns = {
        "CREATE DATABASE": [("OWNERSHIP", "DATABASE", db)],
        "CREATE ROLE": [("OWNERSHIP", "ROLE", role)],
    }
    why = {
        "CREATE DATABASE": "deploy (01): the database",
        "CREATE WAREHOUSE": "deploy (01): the initialization and incremental warehouses",
        "CREATE ROLE": "deploy (01): the pipeline, analyst and researcher roles",
        "MANAGE GRANTS": "deploy (01): future grants to the readers, CREATE WAREHOUSE to the "
        "pipeline role",
    }
    needs = [
        Need(admin, p, "ACCOUNT", why[p],
             f"GRANT {p} ON ACCOUNT TO ROLE {ident(admin)}; -- as ACCOUNTADMIN",
             (("OWNERSHIP", "ACCOUNT", "*"), (p, "ACCOUNT", "*"), *owns.get(p, [])))
        for p in account
    ]  # fmt: skip
    if spec.backup.retention_lock:
        needs.append(
            Need(role, "APPLY BACKUP RETENTION LOCK", "ACCOUNT",
                 "deploy (07): a backup policy WITH RETENTION LOCK",
                 f"GRANT APPLY BACKUP RETENTION LOCK ON ACCOUNT TO ROLE {ident(role)}; "
                 "-- as ACCOUNTADMIN",
                 (("APPLY BACKUP RETENTION LOCK", "ACCOUNT", "*"),), only_if_role_exists=True)
        )  # fmt: skip
    needs.append(
        Need(role, "USAGE", "DATABASE ROLE SNOWFLAKE.USAGE_VIEWER",
             "deploy (08) and `cost report`: views over SNOWFLAKE.ACCOUNT_USAGE",
             f"GRANT DATABASE ROLE SNOWFLAKE.USAGE_VIEWER TO ROLE {ident(role)}; "
             "-- as ACCOUNTADMIN",
             (("USAGE", "DATABASE_ROLE", "SNOWFLAKE.USAGE_VIEWER"),
              ("IMPORTED PRIVILEGES", "DATABASE", "SNOWFLAKE")), only_if_role_exists=True)
    )  # fmt: skip
    needs.append(
        Need(role, "USAGE", "DATABASE ROLE SNOWFLAKE.CLASSIFICATION_ADMIN",
             "deploy (05): the classification profile; `scan`: SYSTEM$CLASSIFY",
             f"GRANT DATABASE ROLE SNOWFLAKE.CLASSIFICATION_ADMIN TO ROLE {ident(role)}; "
             "-- as ACCOUNTADMIN",
             (("USAGE", "DATABASE_ROLE", "SNOWFLAKE.CLASSIFICATION_ADMIN"),),
             only_if_role_exists=True)
    )  # fmt: skip
    return needs


def compare_privileges(
    needs: Sequence[Need], grants: dict[str, set[tuple[str, str, str]] | None]
) -> list[MissingPrivilege]:
    """The needs no grant satisfies. `grants`: role -> its effective grants (None: the role
    does not exist yet; its needs are reported as to grant once deploy has created it)."""
    missing = []
    for need in needs:
        held = grants.get(need.role.upper())
        if held is None:
            if not need.only_if_role_exists:
                continue
            missing.append(
                MissingPrivilege(need.role, need.privilege, need.on, need.needed_for,
                                 f"{need.fix} (after the first deploy creates the role)")
            )  # fmt: skip
            continue
        ok = any(
            (p, on) == (hp, hon) and (name == "*" or name == hname)
            for p, on, name in need.any_of
            for hp, hon, hname in held
        )
        if not ok:
            missing.append(
                MissingPrivilege(need.role, need.privilege, need.on, need.needed_for, need.fix)
            )
    return missing


def diff_objects(
    target: SnowflakeDeployment,
    wanted: Sequence[ManagedObject],
    old: State,
    sources: dict[tuple[str, str], str],
) -> list[ObjectChange]:
    """The changes that bring `old` to `wanted`, each with its statements, in `wanted` order.

    Objects without an old state are new (their template creates them) and produce no change;
    an interactive table the interactive warehouse does not list yet is added to it. Objects
    in `old` that the spec no longer has are listed, not dropped."""
    spec = target.loaded.spec
    ident, lit = target.dialect.quote_ident, target.dialect.quote_literal
    init = spec.warehouses.initialization
    incr = spec.warehouses.incremental
    iwh = spec.warehouses.interactive
    changes: list[ObjectChange] = []
    for obj in wanted:
        key = (obj.kind, obj.name)
        before = old.get(key)
        if before is None:
            continue
        source = sources.get(key, "recorded")
        diffs = [
            (attr, before.get(attr), new)
            for attr, new in obj.attributes.items()
            if attr in before and before.get(attr) != new
        ]
        if not diffs:
            continue

        def change(
            attr: str,
            was: str | None,
            new: str,
            *statements: str,
            obj: ManagedObject = obj,
            source: str = source,
            **kw: Any,
        ) -> None:
            changes.append(
                ObjectChange(obj.kind, obj.name, attr, was, new, tuple(statements),
                             source=source, **kw)
            )  # fmt: skip

        rebuild = re.sub(r"(?i)^CREATE\s+(.*?)\s+IF\s+NOT\s+EXISTS\s+", r"CREATE OR REPLACE \1 ",
                         obj.create, count=1)  # fmt: skip
        if obj.kind in (WAREHOUSE, INTERACTIVE_WAREHOUSE):
            for attr, was, new in diffs:
                if attr == "size":
                    change(
                        attr,
                        was,
                        new,
                        f"ALTER WAREHOUSE {ident(obj.name)} SET WAREHOUSE_SIZE = {lit(new)}",
                        note="resized in place; running queries finish on the old size",
                    )
                elif attr == "auto_suspend":
                    change(
                        attr,
                        was,
                        new,
                        f"ALTER WAREHOUSE {ident(obj.name)} SET AUTO_SUSPEND = {int(new)}",
                    )
                elif attr == "tables":
                    had = {t.strip() for t in (was or "").split(",") if t.strip()}
                    added = [t.strip() for t in new.split(",") if t.strip() not in had]
                    gone = sorted(had - {t.strip() for t in new.split(",")})
                    statements = (
                        [f"ALTER WAREHOUSE {ident(obj.name)} ADD TABLES ({', '.join(added)})"]
                        if added else []
                    )  # fmt: skip
                    note = "new interactive tables are attached to the interactive warehouse"
                    if gone:
                        note += f"; {', '.join(gone)} left attached (not in the spec any more)"
                    change(attr, was, new, *statements, note=note)
        elif obj.kind == DYNAMIC_TABLE:
            rebuilt = [d for d in diffs if d[0] in ("query", "refresh_mode")]
            for i, (attr, was, new) in enumerate(diffs):
                if rebuilt:
                    first = i == 0
                    change(attr, was, new, *([rebuild] if first else []),
                           rebuilds_on=f"{init.name} ({init.size})",
                           note="CREATE OR REPLACE: every row is rebuilt on the initialization "
                           "warehouse; tables reading it reinitialize"
                           if first else "applied by the rebuild above")  # fmt: skip
                elif attr == "target_lag":
                    change(
                        attr,
                        was,
                        new,
                        f"ALTER DYNAMIC TABLE {obj.name} SET TARGET_LAG = {new}",
                    )
                elif attr == "warehouse":
                    change(
                        attr,
                        was,
                        new,
                        f"ALTER DYNAMIC TABLE {obj.name} SET WAREHOUSE = {ident(new)}",
                    )
                elif attr == "initialization_warehouse":
                    change(
                        attr,
                        was,
                        new,
                        f"ALTER DYNAMIC TABLE {obj.name} SET "
                        f"INITIALIZATION_WAREHOUSE = {ident(new)}",
                    )
        elif obj.kind == INTERACTIVE_TABLE:
            attach = f"ALTER WAREHOUSE {ident(iwh.name)} ADD TABLES ({obj.name})"
            for i, (attr, was, new) in enumerate(diffs):
                first = i == 0
                change(attr, was, new, *([rebuild, attach] if first else []),
                       rebuilds_on=f"{incr.name} ({incr.size})",
                       note="CREATE OR REPLACE, then attached to the interactive warehouse again"
                       if first else "applied by the rebuild above")  # fmt: skip
        elif obj.kind == BACKUP_POLICY:
            locked = before.get("retention_lock") == "true"
            for attr, was, new in diffs:
                if attr == "retention_days":
                    if locked and was is not None and int(new) < int(was):
                        change(
                            attr,
                            was,
                            new,
                            applicable=False,
                            note="the policy has a retention lock: Snowflake refuses to "
                            "shorten its retention. Backups already taken keep theirs; "
                            "for shorter retention create a new policy and APPLY it",
                        )
                    else:
                        change(
                            attr,
                            was,
                            new,
                            f"ALTER BACKUP POLICY {obj.name} SET EXPIRE_AFTER_DAYS = {int(new)}",
                            note="applies to backups taken from now on",
                        )
                elif attr == "schedule":
                    change(
                        attr, was, new, f"ALTER BACKUP POLICY {obj.name} SET SCHEDULE = {lit(new)}"
                    )
                elif attr == "retention_lock":
                    change(
                        attr,
                        was,
                        new,
                        applicable=False,
                        note="a retention lock is set only when a policy is created and can "
                        "never be removed: not changed by deploy (see docs/DEPLOYMENT_GUIDE.md)",
                    )
    for kind, name in old:
        if kind in (DYNAMIC_TABLE, INTERACTIVE_TABLE) and (kind, name) not in {
            (o.kind, o.name) for o in wanted
        }:
            changes.append(
                ObjectChange(kind, name, "exists", "yes", "not in the spec", applicable=False,
                             note=f"not dropped by deploy; it keeps its data (and a dynamic "
                             f"table keeps refreshing): DROP {kind.upper()} {name} to remove it")
            )  # fmt: skip
    return changes
