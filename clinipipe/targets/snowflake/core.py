"""The Snowflake core: sessions (one per thread), statements, transactions, warehouses.

DDL auto-commits in Snowflake: `execute_atomically` takes DML only, and every capability
that creates objects does so before (outside) its transaction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clinipipe.secrets import environment, scrub_values
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import SnowflakeTarget as SnowflakeTargetSpec
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import Statement
from clinipipe.targets.core import TargetCore, TargetError

if TYPE_CHECKING:
    from sqlglot import exp

BEGIN = "BEGIN TRANSACTION"
"""Not a bare BEGIN, which Snowflake Scripting could read as the start of a block."""

OBJECT_DOES_NOT_EXIST = 2003
"""Snowflake's error number for "Object/Database/Schema ... does not exist or not authorized"."""

OP, SEQ = "_op", "_seq"
"""The change columns of `TableChanges.to_arrow()`; `<column>__u` flags unchanged TOAST values."""


class SnowflakeDialect(Dialect):
    """Unquoted Snowflake identifiers are stored upper-case; quoting the upper-case form keeps
    spec names case-insensitive for users. Backslash is an escape inside string literals."""

    name = "snowflake"
    sqlglot_name = "snowflake"

    def quote_ident(self, name: str) -> str:
        return super().quote_ident(name.upper())

    def rewrite_spec_sql(self, tree: exp.Expression) -> exp.Expression:
        """DuckDB constructs sqlglot would write with another meaning on Snowflake, rewritten
        or refused (`targets/snowflake/spec_sql.py`)."""
        from clinipipe.targets.snowflake.spec_sql import rewrite_for_snowflake

        return rewrite_for_snowflake(tree)

    def quote_string(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class SnowflakeCore(TargetCore):
    """A Snowflake account. DDL auto-commits in Snowflake, so a deployment is not atomic:
    each template is recorded right after its last statement succeeded, and a re-run resumes
    with the first template not recorded (every template statement is idempotent).

    **One session per thread.** The backfill calls `load_range` from several worker threads at
    once, and each range is a multi-statement transaction. Snowflake transactions belong to a
    session (a connection), so two threads sharing one connection would interleave their
    BEGIN/COMMIT and commit each other's rows. Each thread therefore gets its own connection,
    opened on first use and closed by `close()`; the session settings chosen by
    `use_warehouse` (USE WAREHOUSE, DATABASE and SCHEMA are per session) are replayed on it.
    The cost is one login per worker thread (about a second) and one Snowflake session per
    worker; the ranges then load truly in parallel on the warehouse. (A lock around
    `load_range` would need a single session but serialise every range, staging and upload
    included.) No connection object is ever used by two threads, so their own thread safety
    is not relied on.

    **Role and warehouse.** Every session logs in with the spec's pipeline `role` (which owns
    what clinipipe creates) and its incremental warehouse; a target opened `for_deployment()`
    logs in with the spec's `admin_role` instead (the pipeline role may not exist yet), and
    the deployment switches roles itself (USE ROLE) where its templates say so. A warehouse
    that does not exist yet (before the first deploy) leaves the session without one; SHOW
    commands (`table_exists`) need none.
    """

    type = "snowflake"
    dialect = SnowflakeDialect()

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        super().__init__(loaded, read_only=read_only)
        spec = loaded.spec.target
        assert isinstance(spec, SnowflakeTargetSpec)
        self.spec = spec
        self._con: Any = None  # the session of the thread that called connect()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[Any] = []
        self._session_sql: tuple[str, ...] = ()  # replayed on every session (USE ...)
        self._login_role: str = spec.role  # `for_deployment` logs in as spec.admin_role

    def describe(self) -> str:
        return f"Snowflake account {self.spec.account!r} as user {self.spec.user!r}"

    def _credentials(self) -> dict[str, Any]:
        env = environment(self.loaded.directory)
        if self.spec.authenticator == "externalbrowser":
            return {"authenticator": "externalbrowser"}
        if self.spec.authenticator == "snowflake_jwt":
            key_file = env.get(self.spec.private_key_file_env)
            if not key_file:
                raise TargetError(
                    f"set {self.spec.private_key_file_env} to the path of the private key file "
                    "(in the environment or .env) for key-pair authentication"
                )
            args: dict[str, Any] = {"authenticator": "SNOWFLAKE_JWT", "private_key_file": key_file}
            passphrase = env.get(self.spec.private_key_passphrase_env)
            if passphrase:
                args["private_key_file_pwd"] = passphrase
            return args
        password = env.get(self.spec.password_env)
        if not password:
            raise TargetError(
                f"set {self.spec.password_env} in the environment (or .env next to the spec): "
                "clinipipe never reads passwords from the spec"
            )
        return {"password": password}

    def _open(self) -> Any:
        import snowflake.connector

        try:
            return snowflake.connector.connect(
                account=self.spec.account,
                user=self.spec.user,
                role=self._login_role,
                warehouse=self.loaded.spec.warehouses.incremental.name,
                login_timeout=30,
                network_timeout=60,
                application="clinipipe",
                **self._credentials(),
            )
        except snowflake.connector.errors.Error as exc:
            reason = getattr(exc, "raw_msg", None) or str(exc)
            raise TargetError(
                f"cannot connect to {self.describe()} as role {self._login_role}: {reason}. "
                "Check the account identifier (orgname-accountname), the user, the credentials "
                "in the environment, that the role exists and is granted to the user (`clinipipe "
                "deploy` creates the pipeline role and grants it to the admin role), and that "
                "this machine can reach Snowflake."
            ) from None

    def connect(self) -> None:
        con = self._open()
        with self._lock:
            self._con = con
            self._sessions.append(con)
        self._local.con = con
        self._local.settings = ()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
            self._con = None
            self._local = threading.local()
            self._session_sql = ()
        for con in sessions:
            with contextlib.suppress(Exception):  # a dead session is closed already
                con.close()

    def _session(self) -> Any:
        """This thread's connection (opened on first use), with the current session settings."""
        local = self._local
        con = getattr(local, "con", None)
        if con is None:
            if self._con is None:
                raise TargetError(f"{self.describe()} is not connected")
            with self._lock:  # connecting is not thread-safe in every connector version
                con = self._open()
                self._sessions.append(con)
            local.con, local.settings = con, ()
        if local.settings != self._session_sql:
            settings = self._session_sql
            cursor = con.cursor()
            try:
                for sql in settings:
                    cursor.execute(sql)
            finally:
                cursor.close()
            local.settings = settings
        return con

    def _execute(self, statement: Statement) -> None:
        cursor = self._session().cursor()
        try:
            cursor.execute(statement.sql)
        finally:
            cursor.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self._session().cursor()
        try:
            cursor.execute(sql)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def query_records(self, sql: str) -> list[dict[str, Any]]:
        """Run one statement; its rows as dicts by lower-case column name (SHOW output)."""
        cursor = self._session().cursor()
        try:
            cursor.execute(sql)
            names = [str(d[0]).lower() for d in cursor.description or ()]
            return [dict(zip(names, row, strict=False)) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def table_exists(self, schema: str, table: str) -> bool:
        """SHOW TABLES (no warehouse needed; lists dynamic and interactive tables too).

        Only "does not exist" (the database or schema is missing: Snowflake error 2003, which
        it also returns for what the role may not see) means False; any other failure (no
        warehouse, a lost session, a privilege) raises `TargetError` naming the reason.
        """
        import snowflake.connector

        name = table.upper()
        where = self.dialect.qualify(self.spec.database, schema)
        try:
            rows = self.query_records(
                f"SHOW TABLES LIKE {self.dialect.quote_string(name)} IN SCHEMA {where}"
            )
        except snowflake.connector.errors.Error as exc:
            missing = getattr(exc, "errno", None) == OBJECT_DOES_NOT_EXIST
            if missing or "does not exist" in str(exc):
                return False
            raise TargetError(
                f"cannot tell whether {where}.{name} exists on {self.describe()}: "
                f"{self._reason(exc)}"
            ) from None
        return any(str(row.get("name", "")).upper() == name for row in rows)

    def control(self, table: str) -> str:
        return self.dialect.qualify(self.spec.database, CONTROL_SCHEMA, table)

    def use_warehouse(self, role: str) -> str:
        """USE WAREHOUSE, DATABASE and SCHEMA (the control schema, so anything unqualified,
        such as a temporary object, lands there), now and on every session opened later."""
        warehouse = getattr(self.loaded.spec.warehouses, role)
        self._session_sql = (
            f"USE WAREHOUSE {self.dialect.quote_ident(warehouse.name)}",
            f"USE DATABASE {self.dialect.quote_ident(self.spec.database)}",
            f"USE SCHEMA {self.dialect.qualify(self.spec.database, CONTROL_SCHEMA)}",
        )
        self._session()
        return f"{warehouse.name} ({warehouse.size})"

    def execute_atomically(self, statements: Sequence[str]) -> None:
        """BEGIN TRANSACTION, the statements, COMMIT; ROLLBACK on any failure.

        Only DML may be passed: a DDL statement would commit the transaction implicitly.
        """
        self._execute(Statement(0, BEGIN))
        try:
            for statement in statements:
                self._execute(Statement(0, statement))
            self._execute(Statement(0, "COMMIT"))
        except BaseException:
            with contextlib.suppress(Exception):  # report the original failure
                self._execute(Statement(0, "ROLLBACK"))
            raise

    def raw_name(self, table: str) -> str:
        return self.dialect.qualify(self.spec.database, self.spec.schema_, table)

    @staticmethod
    def _reason(exc: BaseException) -> str:
        reason = getattr(exc, "raw_msg", None) or str(exc)
        return scrub_values(str(reason).strip().splitlines()[0] if str(reason).strip() else "")
