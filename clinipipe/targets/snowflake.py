"""Snowflake: the production target and distributed engine (snowflake-connector-python)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from clinipipe.secrets import environment
from clinipipe.source.catalog import TableSchema
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import SnowflakeTarget as SnowflakeTargetSpec
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import RenderedFile, Statement
from clinipipe.targets.base import (
    BatchStream,
    CdcBatch,
    SchemaChange,
    DeploymentRecord,
    DeployStatementError,
    RangeWork,
    Target,
    TargetError,
)
from clinipipe.targets.snowflake_types import snowflake_cast, snowflake_type


class SnowflakeDialect(Dialect):
    """Unquoted Snowflake identifiers are stored upper-case; quoting the upper-case form keeps
    spec names case-insensitive for users. Backslash is an escape inside string literals."""

    name = "snowflake"

    def quote_ident(self, name: str) -> str:
        return super().quote_ident(name.upper())

    def quote_string(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class SnowflakeTarget(Target):
    """A Snowflake account. DDL auto-commits in Snowflake, so a deployment is not atomic:
    each template is recorded right after its last statement succeeded, and a re-run resumes
    with the first template not recorded (every template statement is idempotent)."""

    type = "snowflake"
    dialect = SnowflakeDialect()

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        super().__init__(loaded, read_only=read_only)
        spec = loaded.spec.target
        assert isinstance(spec, SnowflakeTargetSpec)
        self.spec = spec
        self._con: Any = None

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
            return {"authenticator": "SNOWFLAKE_JWT", "private_key_file": key_file}
        password = env.get(self.spec.password_env)
        if not password:
            raise TargetError(
                f"set {self.spec.password_env} in the environment (or .env next to the spec): "
                "clinipipe never reads passwords from the spec"
            )
        return {"password": password}

    def connect(self) -> None:
        import snowflake.connector

        try:
            self._con = snowflake.connector.connect(
                account=self.spec.account,
                user=self.spec.user,
                login_timeout=30,
                network_timeout=60,
                application="clinipipe",
                **self._credentials(),
            )
        except snowflake.connector.errors.Error as exc:
            reason = getattr(exc, "raw_msg", None) or str(exc)
            raise TargetError(
                f"cannot connect to {self.describe()}: {reason}. Check the account identifier "
                "(orgname-accountname), the user, the credentials in the environment, and that "
                "this machine can reach Snowflake."
            ) from None

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _execute(self, statement: Statement) -> None:
        cursor = self._con.cursor()
        try:
            cursor.execute(statement.sql)
        finally:
            cursor.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self._con.cursor()
        try:
            cursor.execute(sql)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def table_exists(self, schema: str, table: str) -> bool:
        q = self.dialect.quote_string
        database = self.dialect.quote_ident(self.spec.database)
        try:
            rows = self.query(
                f"SELECT 1 FROM {database}.information_schema.tables "
                f"WHERE table_schema = {q(schema.upper())} AND table_name = {q(table.upper())}"
            )
        except Exception:  # the database itself does not exist yet
            return False
        return bool(rows)

    def control(self, table: str) -> str:
        return self.dialect.qualify(self.spec.database, CONTROL_SCHEMA, table)

    def use_warehouse(self, role: str) -> str:
        warehouse = getattr(self.loaded.spec.warehouses, role)
        self._execute(Statement(0, f"USE WAREHOUSE {self.dialect.quote_ident(warehouse.name)}"))
        self._execute(Statement(0, f"USE DATABASE {self.dialect.quote_ident(self.spec.database)}"))
        return f"{warehouse.name} ({warehouse.size})"

    def execute_atomically(self, statements: Sequence[str]) -> None:
        self._execute(Statement(0, "BEGIN"))
        try:
            for statement in statements:
                self._execute(Statement(0, statement))
            self._execute(Statement(0, "COMMIT"))
        except BaseException:
            self._execute(Statement(0, "ROLLBACK"))
            raise

    def raw_name(self, table: str) -> str:
        return self.dialect.qualify(self.spec.database, self.spec.schema_, table)

    def create_raw_table(self, table: TableSchema, *, replace: bool) -> None:
        columns = ", ".join(
            f"{self.dialect.quote_ident(c.name)} {snowflake_type(c.type)}" for c in table.columns
        )
        staged = ", ".join(f"{self.dialect.quote_ident(c.name)} VARCHAR" for c in table.columns)
        stage = self.dialect.qualify(self.spec.database, CONTROL_SCHEMA, f"_stage_{table.name}")
        create = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
        # DDL auto-commits in Snowflake: run it outside the load transactions.
        self._execute(Statement(0, f"{create} {self.raw_name(table.name)} ({columns})"))
        self._execute(Statement(0, f"CREATE TRANSIENT TABLE IF NOT EXISTS {stage} ({staged})"))

    def load_range(self, table: TableSchema, work: RangeWork, stream: BatchStream) -> int:
        """Parquet → PUT → COPY INTO a transient VARCHAR stage (write_pandas), then one
        INSERT ... SELECT with casts, the range record and the metering row in one transaction.
        """
        from snowflake.connector.pandas_tools import write_pandas

        stage_table = f"_stage_{table.name}"
        stage = self.dialect.qualify(self.spec.database, CONTROL_SCHEMA, stage_table)
        names = ", ".join(self.dialect.quote_ident(c.name) for c in table.columns)
        casts = ", ".join(
            snowflake_cast(self.dialect.quote_ident(c.name), c.type) for c in table.columns
        )
        started = dt.datetime.now(dt.timezone.utc)
        rows = 0
        self._execute(Statement(0, "BEGIN"))
        try:
            self._execute(Statement(0, f"DELETE FROM {stage}"))
            for batch in stream.batches:
                frame = batch.to_pandas()
                frame.columns = [c.upper() for c in frame.columns]
                write_pandas(
                    self._con, frame, stage_table.upper(), database=self.spec.database.upper(),
                    schema=CONTROL_SCHEMA.upper(), quote_identifiers=True,
                )  # fmt: skip
                rows += batch.num_rows
            if work.replace_keys:
                keys = " AND ".join(
                    f"t.{self.dialect.quote_ident(k)} = s.{self.dialect.quote_ident(k)}"
                    for k in table.primary_key
                )
                self._execute(Statement(0, (
                    f"DELETE FROM {self.raw_name(table.name)} t "
                    f"USING (SELECT {casts} FROM {stage}) s WHERE {keys}"
                )))  # fmt: skip
            self._execute(Statement(0, (
                f"INSERT INTO {self.raw_name(table.name)} ({names}) SELECT {casts} FROM {stage}"
            )))  # fmt: skip
            ended = dt.datetime.now(dt.timezone.utc)
            for sql in self.range_done_sql(table, work, rows, stream.bytes_read, started, ended):
                self._execute(Statement(0, sql))
            self._execute(Statement(0, f"DELETE FROM {stage}"))
            self._execute(Statement(0, "COMMIT"))
        except BaseException:
            self._execute(Statement(0, "ROLLBACK"))
            raise
        return rows

    def evolve_table(self, changes: Sequence[SchemaChange], lsn: int) -> None:
        raise TargetError("schema evolution on Snowflake is not implemented yet")

    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        raise TargetError(
            "CDC into Snowflake is not implemented yet (staging with write_pandas and one MERGE "
            "per table is planned); use a DuckDB target for CDC for now"
        )

    def apply_deployment(
        self,
        files: Sequence[RenderedFile],
        record: DeploymentRecord,
        also_record: Sequence[RenderedFile] = (),
    ) -> int:
        import snowflake.connector

        run = 0
        for file in files:
            for statement in file.statements:
                try:
                    self._execute(statement)
                except snowflake.connector.errors.Error as exc:
                    reason = getattr(exc, "raw_msg", None) or str(exc)
                    raise DeployStatementError(
                        file.name, statement.number, str(reason), rolled_back=False
                    ) from None
                run += 1
            self._execute(Statement(0, self.template_record_sql(record, file)))
        for file in also_record:
            self._execute(Statement(0, self.template_record_sql(record, file)))
        self._execute(Statement(0, self.deployment_record_sql(record, run)))
        return run
