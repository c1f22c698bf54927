"""Snowflake: the production target and distributed engine (snowflake-connector-python).

Loading (backfill ranges and CDC batches) follows one pattern:

1. **Stage, outside any transaction.** The rows go, as text, into a transient VARCHAR staging
   table with `write_pandas` (Parquet -> PUT -> COPY INTO). `write_pandas` creates a temporary
   stage (DDL), and DDL in Snowflake commits the open transaction, so staging must happen
   before BEGIN, never inside it.
2. **Apply, in one transaction.** ``BEGIN TRANSACTION``; the typed INSERT ... SELECT (backfill)
   or one MERGE per table (CDC), typed per column (`snowflake_cast` reads the backfill's export
   text, `snowflake_stream_cast` pgoutput's text); the bookkeeping rows (range record or
   checkpoint, batch record, metering); ``COMMIT``. Only DML runs in between.

A failure rolls the transaction back: the staged text is either dropped (backfill) or replaced
by the next batch (CDC), never half applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clinipipe.secrets import environment, scrub_values
from clinipipe.source.catalog import Column, TableSchema
from clinipipe.source.pgoutput import lsn_to_str
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import SnowflakeTarget as SnowflakeTargetSpec
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.sql.render import RenderedFile, Statement
from clinipipe.targets.base import (
    BatchStream,
    CdcBatch,
    DeploymentRecord,
    DeployStatementError,
    RangeWork,
    RefreshResult,
    SchemaChange,
    Target,
    TargetError,
)
from clinipipe.targets.snowflake_types import (
    snowflake_cast,
    snowflake_stream_cast,
    snowflake_type,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from clinipipe.phi.safe_harbor import RedactionKey  # redact
    from clinipipe.phi.scan import CandidateQuery, Finding  # PHI scan
    from clinipipe.targets.duckdb_redact import ResearchBuild  # redact
    from clinipipe.targets.snowflake_redact import SnowflakeRedactSql  # redact

BEGIN = "BEGIN TRANSACTION"
"""Not a bare BEGIN, which Snowflake Scripting could read as the start of a block."""

OP, SEQ = "_op", "_seq"
"""The change columns of `TableChanges.to_arrow()`; `<column>__u` flags unchanged TOAST values."""


class SnowflakeDialect(Dialect):
    """Unquoted Snowflake identifiers are stored upper-case; quoting the upper-case form keeps
    spec names case-insensitive for users. Backslash is an escape inside string literals."""

    name = "snowflake"

    def quote_ident(self, name: str) -> str:
        return super().quote_ident(name.upper())

    def quote_string(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class StagedChanges:
    """One table's part of a CDC batch, as staged for the apply transaction.

    `stage` is the qualified staging table holding the changes after the batch's last truncate
    (None when none are left); `toast` names the columns that carry unchanged-TOAST flags;
    `kept` are raw columns the changes do not carry (see `TableBatch.kept`).
    """

    table: TableSchema
    stage: str | None
    truncate: bool
    toast: tuple[str, ...] = ()
    refresh_keys: tuple[str, ...] = ()
    kept: tuple[Column, ...] = ()


class SnowflakeTarget(Target):
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
        self._cdc_stages: dict[str, tuple[str, ...]] = {}  # CDC staging table -> its columns

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

    def _open(self) -> Any:
        import snowflake.connector

        try:
            return snowflake.connector.connect(
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
            self._cdc_stages.clear()
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

    def stage_name(self, name: str) -> str:
        """A staging table in the control schema."""
        return self.dialect.qualify(self.spec.database, CONTROL_SCHEMA, name)

    def create_raw_table(self, table: TableSchema, *, replace: bool) -> None:
        """Create the raw table (DDL, auto-committed), then record the source columns it was
        built from (`_clinipipe.source_columns`, which CDC compares with the source catalog)."""
        q = self.dialect.quote_literal
        columns = ", ".join(
            f"{self.dialect.quote_ident(c.name)} {snowflake_type(c.type)}" for c in table.columns
        )
        create = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
        # DDL auto-commits in Snowflake: run it outside the load transactions.
        self._execute(Statement(0, f"{create} {self.raw_name(table.name)} ({columns})"))
        recorded = self.control("source_columns")
        statements = [f"DELETE FROM {recorded} WHERE table_name = {q(table.name)}"]
        if table.columns:
            values = ", ".join(
                f"({q(table.name)}, {c.attnum}, {q(c.name)}, {q(c.type.pg_type)}, FALSE)"
                for c in table.columns
            )
            statements.append(
                f"INSERT INTO {recorded} (table_name, attnum, target_column, pg_type, dropped) "
                f"VALUES {values}"
            )
        self.execute_atomically(statements)

    def evolve_table(self, changes: Sequence[SchemaChange], lsn: int) -> None:
        raise TargetError(
            "the source schema changed ("
            + ", ".join(f"{c.kind} {c.table}.{c.column}" for c in changes)
            + "), and applying schema changes to Snowflake is not implemented yet: run "
            "`clinipipe cdc reset --yes` and `clinipipe backfill --force`"
        )

    # --- staging ----------------------------------------------------------------------------

    def _create_stage(self, stage: str, columns: Sequence[tuple[str, str]]) -> None:
        """(Re)create a transient staging table (no Fail-safe; no Time Travel to pay for)."""
        definition = ", ".join(f"{self.dialect.quote_ident(n)} {t}" for n, t in columns)
        self._execute(Statement(0, (
            f"CREATE OR REPLACE TRANSIENT TABLE {stage} ({definition}) "
            "DATA_RETENTION_TIME_IN_DAYS = 0"
        )))  # fmt: skip

    def _write_stage(self, name: str, frame: pd.DataFrame) -> int:
        """Append `frame` to staging table `name` (control schema) with write_pandas; returns
        the rows loaded. Runs DDL (a temporary stage): never call it inside a transaction."""
        from snowflake.connector.pandas_tools import write_pandas

        frame.columns = [c.upper() for c in frame.columns]
        success, _, rows, _ = write_pandas(
            self._session(), frame, name.upper(), database=self.spec.database.upper(),
            schema=CONTROL_SCHEMA.upper(), quote_identifiers=True, compression="snappy",
        )  # fmt: skip
        if not success or int(rows) != len(frame):
            raise TargetError(
                f"staging into {name} loaded {rows} of {len(frame)} rows; nothing was applied"
            )
        return len(frame)

    def _drop_stage(self, stage: str) -> None:
        with contextlib.suppress(Exception):  # best effort: the next load replaces it anyway
            self._execute(Statement(0, f"DROP TABLE IF EXISTS {stage}"))

    @staticmethod
    def _reason(exc: BaseException) -> str:
        reason = getattr(exc, "raw_msg", None) or str(exc)
        return scrub_values(str(reason).strip().splitlines()[0] if str(reason).strip() else "")

    # --- backfill ---------------------------------------------------------------------------

    def load_range(self, table: TableSchema, work: RangeWork, stream: BatchStream) -> int:
        """Parquet -> PUT -> COPY INTO a transient VARCHAR staging table of this range
        (write_pandas, before the transaction), then in one transaction the INSERT ... SELECT
        with casts, the range record and the metering row; the staging table is dropped.

        Thread-safe: each thread loads through its own session (see the class docstring), and
        each range stages into its own table, ``_STAGE_<TABLE>_<RANGE>``.
        """
        import snowflake.connector

        name = f"_stage_{table.name}_{work.range_no}"
        stage = self.stage_name(name)
        started = dt.datetime.now(dt.timezone.utc)
        try:
            self._create_stage(stage, [(c.name, "VARCHAR") for c in table.columns])
            rows = 0
            for batch in stream.batches:
                rows += self._write_stage(name, batch.to_pandas())
            ended = dt.datetime.now(dt.timezone.utc)
            statements = self.load_range_sql(table, work, stage)
            statements += self.range_done_sql(table, work, rows, stream.bytes_read, started, ended)
            self.execute_atomically(statements)
        except snowflake.connector.errors.Error as exc:
            raise TargetError(
                f"loading {table.name} range {work.range_no} into {self.describe()} failed: "
                f"{self._reason(exc)} (nothing of this range was kept)"
            ) from None
        finally:
            self._drop_stage(stage)
        return rows

    def load_range_sql(self, table: TableSchema, work: RangeWork, stage: str) -> list[str]:
        """The DML that moves a staged range into its raw table (typed by `snowflake_cast`)."""
        quote = self.dialect.quote_ident
        raw = self.raw_name(table.name)
        names = ", ".join(quote(c.name) for c in table.columns)
        casts = ", ".join(snowflake_cast(f"c.{quote(c.name)}", c.type) for c in table.columns)
        statements = []
        if work.replace_keys:
            by_name = {c.name: c for c in table.columns}
            keys = ", ".join(
                f"{snowflake_cast(f'c.{quote(k)}', by_name[k].type)} AS {quote(k)}"
                for k in table.primary_key
            )
            match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in table.primary_key)
            statements.append(
                f"DELETE FROM {raw} t USING (SELECT DISTINCT {keys} FROM {stage} c) s WHERE {match}"
            )
        statements.append(f"INSERT INTO {raw} ({names}) SELECT {casts} FROM {stage} c")
        return statements

    # --- change data capture ------------------------------------------------------------------

    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        """Stage each table's changes (write_pandas into ``_CDC_<TABLE>``, before the
        transaction), then in one transaction: per table the truncate, the changed keys before,
        one MERGE, the changed keys after and the emptying of its staging table; then the
        checkpoint, the batch record and the metering row. See `cdc_apply_sql`."""
        import pyarrow.compute as pc
        import snowflake.connector

        try:
            staged = []
            for table_batch in batch.tables:
                table, changes = table_batch.table, table_batch.changes
                truncated = pc.equal(changes[OP], "T")
                truncate = bool(pc.any(truncated).as_py())
                if truncate:  # what came before the last truncate is gone anyway
                    last = pc.max(pc.filter(changes[SEQ], truncated)).as_py()
                    changes = changes.filter(pc.greater(changes[SEQ], last))
                toast = tuple(
                    c.name for c in table.columns if f"{c.name}__u" in changes.column_names
                )
                stage = None
                if changes.num_rows:
                    stage = self._stage_changes(table, changes)
                part = StagedChanges(table, stage, truncate, toast, table_batch.refresh_keys)
                staged.append(dataclasses.replace(part, kept=table_batch.kept))
            applied = dt.datetime.now(dt.timezone.utc)
            self.execute_atomically(self.cdc_apply_sql(batch, staged, applied))
        except snowflake.connector.errors.Error as exc:
            raise TargetError(
                f"applying a CDC batch to {self.describe()} failed: {self._reason(exc)} "
                "(nothing of the batch was kept)"
            ) from None

    def _stage_changes(self, table: TableSchema, changes: pa.Table) -> str:
        """Replace the content of the table's CDC staging table with `changes`."""
        name = f"_cdc_{table.name}"
        stage = self.stage_name(name)
        layout = tuple(table.column_names)
        if self._cdc_stages.get(stage) != layout:  # first use, or the source columns changed
            columns = [(OP, "VARCHAR(1)"), (SEQ, "NUMBER(19,0)")]
            columns += [(c.name, "VARCHAR") for c in table.columns]
            columns += [(f"{c.name}__u", "BOOLEAN") for c in table.columns]
            columns += [(f"{k}__from", "VARCHAR") for k in table.primary_key]
            self._create_stage(stage, columns)
            self._cdc_stages[stage] = layout
        else:  # normally empty already: the apply transaction empties it
            self._execute(Statement(0, f"DELETE FROM {stage}"))
        self._write_stage(name, changes.to_pandas())
        return stage

    def cdc_apply_sql(
        self, batch: CdcBatch, staged: Sequence[StagedChanges], applied: dt.datetime
    ) -> list[str]:
        """The statements of a batch's apply transaction (without BEGIN/COMMIT)."""
        statements = []
        for part in staged:
            statements += self.cdc_table_sql(part, batch.end_lsn)
        statements += self.cdc_batch_sql(batch, applied)
        return statements

    def cdc_table_sql(self, part: StagedChanges, lsn: int) -> list[str]:
        """Apply one table's staged changes: the semantics of the DuckDB target's
        `_apply_table_changes` (last change per key wins, TOAST-aware, truncate first)."""
        quote, q = self.dialect.quote_ident, self.dialect.quote_literal
        table = part.table
        raw = self.raw_name(table.name)
        statements = [f"DELETE FROM {raw}"] if part.truncate else []
        if part.stage is None:
            return statements
        if not table.primary_key:  # append-only: the pipeline passes inserts only
            names = [quote(c.name) for c in table.columns]
            values = [snowflake_stream_cast(f"c.{quote(c.name)}", c.type) for c in table.columns]
            statements.append(
                f"INSERT INTO {raw} ({', '.join(names)}) SELECT {', '.join(values)} "
                f"FROM {part.stage} c WHERE c.{quote(OP)} = 'I' ORDER BY c.{quote(SEQ)}"
            )
            statements.append(f"DELETE FROM {part.stage}")
            return statements
        by_name = {c.name: c for c in table.columns}
        keys = [quote(k) for k in table.primary_key]
        key_set = ", ".join(
            f"{snowflake_stream_cast(f'c.{quote(k)}', by_name[k].type)} AS {quote(k)}"
            for k in table.primary_key
        )
        batch_keys = f"(SELECT DISTINCT {key_set} FROM {part.stage} c) s"
        key_match = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        changed_keys = self.control("changed_keys")
        for key in part.refresh_keys:  # pre-images: the rows about to be replaced or deleted
            statements.append(
                f"INSERT INTO {changed_keys} (table_name, key_column, key_value, lsn) "
                f"SELECT {q(table.name)}, {q(key)}, CAST(t.{quote(key)} AS VARCHAR), {lsn} "
                f"FROM {raw} t JOIN {batch_keys} ON {key_match}"
            )
        statements.append(self.cdc_merge_sql(part))
        for key in part.refresh_keys:  # post-images: the rows as they are now
            statements.append(
                f"INSERT INTO {changed_keys} (table_name, key_column, key_value, lsn) "
                f"SELECT DISTINCT {q(table.name)}, {q(key)}, CAST(t.{quote(key)} AS VARCHAR), "
                f"{lsn} FROM {raw} t JOIN {batch_keys} ON {key_match}"
            )
        statements.append(f"DELETE FROM {part.stage}")
        return statements

    def cdc_merge_sql(self, part: StagedChanges) -> str:
        """One MERGE of a table's staged changes into its raw table.

        The source is the last change per primary key (QUALIFY ROW_NUMBER() ... = 1, so no two
        source rows can match one target row), typed by `snowflake_stream_cast` (the values
        are pgoutput's text, not the backfill's export text). A TOAST column
        flagged unchanged takes the last value sent for that key earlier in the batch (its
        change's `_seq` is found with a window over the batch), else the target's current
        value; for a row whose key the update changed, the current value under its old key.
        Not yet exact on Snowflake (the DuckDB target is): a moved row whose old key was itself
        written earlier in the same batch (a key swap through a temporary key). A kept column
        (not carried by the changes) is inserted with its ADD COLUMN default or NULL and left
        as it is by updates. Every expression is in the source, so the
        WHEN clauses are plain column copies.
        """
        assert part.stage is not None
        quote = self.dialect.quote_ident
        table = part.table
        raw = self.raw_name(table.name)
        keys = [quote(k) for k in table.primary_key]
        partition = ", ".join(f"c.{k}" for k in keys)
        op, seq = quote(OP), quote(SEQ)
        toast = [c for c in table.columns if c.name in part.toast]

        def origin(key: str) -> str:  # a moved row's unchanged values are its old key's
            return f"COALESCE(f.{quote(key + '__from')}, f.{quote(key)})"

        sent = "".join(
            f", MAX(IFF(COALESCE(c.{quote(t.name + '__u')}, FALSE), NULL, c.{seq})) "
            f"OVER (PARTITION BY {partition}) AS {quote(t.name + '__sent')}"
            for t in toast
        )
        final = (
            f"(SELECT c.*{sent} FROM {part.stage} c "
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY c.{seq} DESC) = 1) f"
        )
        joins = "".join(
            f" LEFT JOIN {part.stage} e{i} ON e{i}.{seq} = f.{quote(c.name + '__sent')}"
            for i, c in enumerate(toast)
        )
        moved = " OR ".join(f"f.{quote(k + '__from')} IS NOT NULL" for k in table.primary_key)
        if toast:
            by_name = {c.name: c for c in table.columns}
            current = " AND ".join(
                f"cur.{quote(k)} = {snowflake_stream_cast(origin(k), by_name[k].type)}"
                for k in table.primary_key
            )
            joins += f" LEFT JOIN {raw} cur ON {current}"

        def value(c: Column) -> str:
            name = quote(c.name)
            cast = snowflake_stream_cast(f"f.{name}", c.type)
            if c not in toast:
                return f"{cast} AS {name}"
            i = toast.index(c)
            flag, sent_seq = quote(c.name + "__u"), quote(c.name + "__sent")
            earlier = snowflake_stream_cast(f"e{i}.{name}", c.type)
            return (
                f"CASE WHEN NOT COALESCE(f.{flag}, FALSE) THEN {cast} "
                f"WHEN f.{sent_seq} IS NOT NULL AND NOT ({moved}) THEN {earlier} "
                f"ELSE cur.{name} END AS {name}"
            )

        def kept(c: Column) -> str:  # only inserted: an updated row keeps its value
            if c.missing_value is None:
                return f"NULL AS {quote(c.name)}"
            literal = self.dialect.quote_literal(c.missing_value)
            return f"{snowflake_cast(literal, c.type)} AS {quote(c.name)}"

        values = [*(value(c) for c in table.columns), *(kept(c) for c in part.kept)]
        source = f"SELECT f.{op}, {', '.join(values)} FROM {final}{joins}"
        match = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        names = [quote(c.name) for c in (*table.columns, *part.kept)]
        updates = ", ".join(
            f"{quote(c.name)} = s.{quote(c.name)}"
            for c in table.columns
            if c.name not in table.primary_key
        )
        update = f" WHEN MATCHED THEN UPDATE SET {updates}" if updates else ""
        return (
            f"MERGE INTO {raw} t USING ({source}) s ON {match} "
            f"WHEN MATCHED AND s.{op} = 'D' THEN DELETE{update} "
            f"WHEN NOT MATCHED AND s.{op} <> 'D' THEN INSERT ({', '.join(names)}) "
            f"VALUES ({', '.join(f's.{n}' for n in names)})"
        )

    def cdc_batch_sql(self, batch: CdcBatch, applied: dt.datetime) -> list[str]:
        """The checkpoint (DELETE + INSERT), the `cdc_batches` row and the metering row."""
        q = self.dialect.quote_literal
        latencies = ", ".join(
            q(round((applied - t).total_seconds() * 1000, 3)) for t in batch.commit_times
        )
        tables = ",".join(t.table.name for t in batch.tables)
        received, done = q(batch.received_at.isoformat()), q(applied.isoformat())
        return [
            f"DELETE FROM {self.control('cdc_checkpoints')} WHERE slot = {q(batch.slot)}",
            f"INSERT INTO {self.control('cdc_checkpoints')} (slot, lsn, lsn_text, applied_at) "
            f"VALUES ({q(batch.slot)}, {batch.end_lsn}, {q(lsn_to_str(batch.end_lsn))}, {done})",
            # ARRAY_CONSTRUCT is not allowed in a VALUES clause: INSERT ... SELECT.
            f"INSERT INTO {self.control('cdc_batches')} (batch_id, slot, lsn, changes, tables, "
            "transactions, received_at, applied_at, latencies_ms) "
            f"SELECT {q(uuid.uuid4().hex)}, {q(batch.slot)}, {batch.end_lsn}, {batch.changes}, "
            f"{q(tables)}, {len(batch.commit_times)}, {received}::TIMESTAMP_TZ, "
            f"{done}::TIMESTAMP_TZ, ARRAY_CONSTRUCT({latencies})",
            f"INSERT INTO {self.control('metering')} (job_id, job, warehouse, warehouse_role, "
            "size, started_at, ended_at, rows_processed, bytes_processed) VALUES "
            f"({q(uuid.uuid4().hex)}, 'cdc:batch', {q(batch.warehouse)}, 'incremental', "
            f"{q(batch.size)}, {received}, {done}, {batch.changes}, NULL)",
        ]

    # --- deployment ---------------------------------------------------------------------------

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

    # --- dynamic tables -------------------------------------------------------------------------

    @property
    def native_dynamic_tables(self) -> bool:
        """Snowflake refreshes dynamic tables itself, on their own warehouses."""
        return True

    def dynamic_table_name(self, name: str) -> str:
        """The qualified, quoted name of dynamic table `name` (`"DB"."DERIVED"."NAME"`)."""
        from clinipipe.sql.context import DERIVED_SCHEMA

        return self.dialect.qualify(self.spec.database, DERIVED_SCHEMA, name)

    def dynamic_table_refresh_sql(self, name: str) -> str:
        """A manual refresh. Snowflake refreshes the upstream dynamic tables first if needed,
        runs it on the table's own warehouses (INITIALIZATION_WAREHOUSE for a
        reinitialization) and returns when it is done."""
        return f"ALTER DYNAMIC TABLE {self.dynamic_table_name(name)} REFRESH"

    def dynamic_table_history_sql(self, name: str, limit: int) -> str:
        """The refreshes of `name`, newest first, from the Information Schema table function
        (it keeps 7 days; ACCOUNT_USAGE keeps a year, with up to 3 hours' delay)."""
        from clinipipe.sql.context import DERIVED_SCHEMA

        qualified = ".".join(p.upper() for p in (self.spec.database, DERIVED_SCHEMA, name))
        return (
            "SELECT NAME, STATE, REFRESH_ACTION, STATE_MESSAGE, DATA_TIMESTAMP, "
            "REFRESH_START_TIME, REFRESH_END_TIME, STATISTICS, REFRESH_TRIGGER FROM TABLE("
            f"{self.dialect.quote_ident(self.spec.database)}.INFORMATION_SCHEMA."
            f"DYNAMIC_TABLE_REFRESH_HISTORY(NAME => {self.dialect.quote_string(qualified)}, "
            f"RESULT_LIMIT => {int(limit)})) ORDER BY REFRESH_START_TIME DESC"
        )

    def dynamic_table_history(
        self, name: str | None = None, limit: int = 100
    ) -> list[RefreshResult]:
        """Snowflake's own refresh history of `name` (rows inserted/deleted from STATISTICS;
        the warehouse and the changed keys are not reported there)."""
        import json

        if name is None:
            raise TargetError("Snowflake's refresh history is read per dynamic table")
        rows = self.query(self.dynamic_table_history_sql(name, limit))
        results = []
        for table, state, action, message, data_ts, start, end, stats, trigger in rows:
            figures = json.loads(stats) if isinstance(stats, str) and stats else stats or {}
            result = RefreshResult(
                str(table).lower(), str(state), str(action or ""), message, data_ts, start,
                end, None, figures.get("numInsertedRows"), figures.get("numDeletedRows"),
                None, trigger,
            )  # fmt: skip
            results.append(result)
        return results

    def refresh_dynamic_table_now(self, name: str) -> RefreshResult:
        """`ALTER DYNAMIC TABLE ... REFRESH`, then the refresh as Snowflake recorded it. A
        refresh Snowflake rejects comes back FAILED with its (scrubbed) message."""
        import snowflake.connector

        started = dt.datetime.now(dt.timezone.utc)
        try:
            self._execute(Statement(0, self.dynamic_table_refresh_sql(name)))
        except snowflake.connector.errors.Error as exc:
            return RefreshResult(
                name, "FAILED", "", f"ALTER DYNAMIC TABLE ... REFRESH failed: {self._reason(exc)}",
                None, started, dt.datetime.now(dt.timezone.utc), None, refresh_trigger="MANUAL",
            )  # fmt: skip
        history = self.dynamic_table_history(name, 1)
        if history:
            return history[0]
        return RefreshResult(
            name, "SUCCEEDED", "", None, None, started, dt.datetime.now(dt.timezone.utc), None,
            refresh_trigger="MANUAL",
        )  # fmt: skip

    # --- PHI scan (clinipipe.pipeline.scan; SQL in snowflake_scan.py) ---------------------------

    phi_classifies = True

    def phi_scan_table_names(self, schema: str) -> list[str]:
        from clinipipe.targets.snowflake_scan import table_names_sql

        sql = table_names_sql(self.spec.database, schema, self.dialect)
        return [str(r[0]).lower() for r in self.query(sql)]

    def phi_scan_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        from clinipipe.targets.snowflake_scan import columns_sql

        rows = self.query(columns_sql(self.spec.database, schema, table, self.dialect))
        return [(str(n).lower(), str(t)) for n, t in rows]

    def phi_scan_candidates(self, query: CandidateQuery) -> pa.Table:
        """Stage 1 with REGEXP_LIKE; the few candidate rows come back as strings."""
        import pyarrow as pa
        import snowflake.connector

        from clinipipe.targets.snowflake_scan import candidate_sql

        cursor = self._session().cursor()
        try:
            cursor.execute(candidate_sql(query, self.dialect, self.spec.database))
            names = [str(d[0]).lower() for d in cursor.description]
            rows = cursor.fetchall()
        except snowflake.connector.errors.Error as exc:
            raise TargetError(
                f"PHI scan of {query.schema}.{query.table} failed: {self._reason(exc)}"
            ) from None
        finally:
            cursor.close()
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        return pa.table(
            {n: pa.array([None if v is None else str(v) for v in values], pa.string())
             for n, values in zip(names, columns, strict=True)}
        )  # fmt: skip

    def upsert_phi_findings(self, findings: Sequence[Finding], seen_at: dt.datetime) -> None:
        from clinipipe.targets.snowflake_scan import merge_findings_sql

        if findings:
            table = self.control("phi_findings")
            self.execute_atomically(merge_findings_sql(table, findings, seen_at, self.dialect))

    def phi_classify(self, schema: str, table: str, classified: Sequence[str]) -> list[Finding]:
        """CALL SYSTEM$CLASSIFY (phi.classification settings), read the result, and keep the
        columns Snowflake calls identifiers that the spec does not classify as PHI."""
        import snowflake.connector

        from clinipipe.phi.classify import ClassificationResultError, classification_findings
        from clinipipe.targets.snowflake_scan import classify_sql

        settings = self.loaded.spec.phi.classification
        call, read = classify_sql(self.spec.database, schema, table, settings.sample_count,
                                  settings.auto_tag, self.dialect)  # fmt: skip
        try:
            self._execute(Statement(0, call))
            rows = self.query(read)
        except snowflake.connector.errors.Error as exc:
            raise TargetError(f"failed: {self._reason(exc)}") from None
        try:
            return classification_findings(schema, table, rows[0][0] if rows else None,
                                           classified=classified)  # fmt: skip
        except ClassificationResultError as exc:
            raise TargetError(str(exc)) from None

    # --- end PHI scan ---------------------------------------------------------------------------

    # --- redaction (clinipipe.pipeline.redact; SQL in snowflake_redact.py) ----------------------

    def redact_sql(self) -> SnowflakeRedactSql:
        from clinipipe.targets.snowflake_redact import SnowflakeRedactSql

        return SnowflakeRedactSql(self.dialect, database=self.spec.database)

    def redaction_columns(self, table: str) -> list[tuple[str, str]]:
        q = self.dialect.quote_string
        rows = self.query(
            "SELECT column_name, data_type FROM "
            f"{self.dialect.quote_ident(self.spec.database)}.information_schema.columns "
            f"WHERE table_schema = {q(self.spec.schema_.upper())} "
            f"AND table_name = {q(table.upper())} ORDER BY ordinal_position"
        )
        return [(str(n).lower(), str(t)) for n, t in rows]

    def research_table(self, schema: str, table: str) -> str:
        return self.dialect.qualify(self.spec.database, schema, table)

    def build_research_tables(
        self,
        builds: Sequence[ResearchBuild],
        key: RedactionKey | None,
        finish: Callable[[dict[str, int]], list[str]],
    ) -> dict[str, int]:
        """Built under temporary names, swapped in, then recorded (see
        `snowflake_redact.build_snowflake_tables`)."""
        from clinipipe.targets.snowflake_redact import build_snowflake_tables

        return build_snowflake_tables(self, builds, key, finish)

    # --- end redaction --------------------------------------------------------------------------
