"""Least privilege on the source: what the user of `source.dsn` holds beyond what clinipipe needs,
and what it lacks.

clinipipe needs, on the source: LOGIN, REPLICATION (the slot and the replication stream), USAGE
on the schemas of the published tables and SELECT on those tables (backfill, catalog reads).
The publication itself is created once by the source setup (template `_postgres/cdc-setup`),
which a superuser or the tables' owner runs; the dedicated replication user it creates has only
the privileges above (docs/DEPLOYMENT_GUIDE.md, "Least-privilege source user").

`inspect_source_privileges` reads the catalog (one connection, changes nothing) and returns
the excess privileges (superuser, CREATEROLE, CREATEDB, BYPASSRLS, membership of predefined roles
such as pg_write_all_data, ownership of the database or of a published table, INSERT / UPDATE /
DELETE / TRUNCATE on a published table) and the missing ones (REPLICATION, schema USAGE,
SELECT). A superuser is reported as "superuser" only: every other privilege follows from it.
Names only (roles, tables): never a row value, never the password.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clinipipe.source.postgres import connect

EXCESS_PREDEFINED_ROLES = (
    "pg_write_all_data",
    "pg_read_all_data",
    "pg_monitor",
    "pg_read_all_settings",
    "pg_read_all_stats",
    "pg_stat_scan_tables",
    "pg_signal_backend",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_checkpoint",
    "pg_maintain",
    "pg_create_subscription",
    "pg_use_reserved_connections",
)
"""Predefined roles clinipipe needs none of (those absent from the server's version are skipped)."""

WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
"""Table privileges clinipipe never uses on the source."""

GUIDE = "docs/DEPLOYMENT_GUIDE.md#least-privilege-source-user"

_ROLE_SQL = """
SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolreplication,
       pg_has_role(current_user, d.datdba, 'MEMBER') AS owns_database
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""

_MEMBERSHIP_SQL = """
SELECT b.rolname FROM pg_roles b
WHERE b.rolname = ANY(%s) AND pg_has_role(current_user, b.oid, 'MEMBER')
ORDER BY b.rolname
"""

_TABLES_SQL = """
SELECT t.schema_name, t.table_name, c.oid IS NOT NULL AS found,
       has_schema_privilege(n.oid, 'USAGE') AS can_use_schema,
       has_table_privilege(c.oid, 'SELECT') AS can_select,
       has_table_privilege(c.oid, 'INSERT') AS can_insert,
       has_table_privilege(c.oid, 'UPDATE') AS can_update,
       has_table_privilege(c.oid, 'DELETE') AS can_delete,
       has_table_privilege(c.oid, 'TRUNCATE') AS can_truncate,
       pg_has_role(current_user, c.relowner, 'MEMBER') AS owns
FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(schema_name, table_name, ord)
LEFT JOIN pg_namespace n ON n.nspname = t.schema_name
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
ORDER BY t.ord
"""


@dataclass(frozen=True)
class SourcePrivileges:
    """What the source user holds. `excess`: privileges beyond need, each a short phrase
    ("superuser", "CREATEROLE", "member of pg_write_all_data", "INSERT, UPDATE on public.x",
    "owner of public.x"); `missing`: privileges clinipipe needs and the user lacks ("REPLICATION",
    "SELECT on public.x", "USAGE on schema s"). Tables missing from the source are skipped (the
    source checks of deploy name them)."""

    user: str
    excess: tuple[str, ...]
    missing: tuple[str, ...]

    def warning(self) -> str | None:
        """One line naming every excess privilege and the fix, or None when there is none."""
        if not self.excess:
            return None
        return (
            f"source user {self.user} has more privileges than clinipipe needs: "
            f"{'; '.join(self.excess)}. Connect as a dedicated user with only LOGIN, REPLICATION "
            f"and SELECT on the published tables (02-postgres-cdc-setup.sql creates one; {GUIDE})"
        )

    def errors(self) -> list[str]:
        """One message per missing privilege, with the statement that grants it."""
        out = []
        for item in self.missing:
            if item == "REPLICATION":
                fix = f"ALTER ROLE {self.user} WITH REPLICATION"
                why = "backfill creates the replication slot and CDC streams from it"
            elif item.startswith("USAGE on schema "):
                fix = f"GRANT {item.replace(' on schema ', ' ON SCHEMA ')} TO {self.user}"
                why = "backfill and CDC read the published tables in it"
            else:
                fix = f"GRANT {item.replace(' on ', ' ON ')} TO {self.user}"
                why = "backfill reads the table"
            out.append(
                f"source user {self.user} lacks {item}, which {why}; as a superuser or the "
                f"owner run: {fix}"
            )
        return out


def inspect_source_privileges(dsn: str, tables: Sequence[tuple[str, str]]) -> SourcePrivileges:
    """Read the privileges of the user `dsn` connects as, against the published `tables`
    ((schema, table) pairs). Reads the catalog only, in a read-only transaction it rolls back.

    Raises `SourceError` (password masked) when the source cannot be reached."""
    con = connect(dsn, application_name="clinipipe-check")
    try:
        con.set_session(readonly=True)
        with con.cursor() as cur:
            cur.execute(_ROLE_SQL)
            row = cur.fetchone()
            assert row is not None, "current_user is always in pg_roles"
            user, superuser, createrole, createdb, bypassrls, replication, owns_db = row
            if superuser:
                con.rollback()
                return SourcePrivileges(str(user), ("superuser",), ())
            excess = [
                attr
                for attr, held in (
                    ("CREATEROLE", createrole),
                    ("CREATEDB", createdb),
                    ("BYPASSRLS", bypassrls),
                )
                if held
            ]
            missing = [] if replication else ["REPLICATION"]
            if owns_db:
                excess.append("owner of the database")
            cur.execute(_MEMBERSHIP_SQL, (list(EXCESS_PREDEFINED_ROLES),))
            excess += [f"member of {name}" for (name,) in cur.fetchall()]
            cur.execute(_TABLES_SQL, ([s for s, _ in tables], [t for _, t in tables]))
            rows = cur.fetchall()
        con.rollback()
    finally:
        con.close()
    schemas_missing: list[str] = []
    for schema, table, found, usage, select, *writes, owns in rows:
        if not found:
            continue
        name = f"{schema}.{table}"
        if not usage and f"USAGE on schema {schema}" not in schemas_missing:
            schemas_missing.append(f"USAGE on schema {schema}")
        if not select:
            missing.append(f"SELECT on {name}")
        if owns:
            excess.append(f"owner of {name}")
        else:
            held = [p for p, has in zip(WRITE_PRIVILEGES, writes, strict=True) if has]
            if held:
                excess.append(f"{', '.join(held)} on {name}")
    return SourcePrivileges(str(user), tuple(excess), tuple(schemas_missing + missing))
