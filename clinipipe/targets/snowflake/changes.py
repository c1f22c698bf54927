"""Snowflake change apply: each table's changes staged as text, then one transaction per batch
(truncate, changed keys, one MERGE per table, checkpoint, batch record, metering)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clinipipe.source.catalog import Column, TableSchema
from clinipipe.source.pgoutput import lsn_to_str
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.render import Statement
from clinipipe.targets.capabilities.changes import CdcBatch, ChangeApply
from clinipipe.targets.core import TargetError
from clinipipe.targets.snowflake.core import OP, SEQ
from clinipipe.targets.snowflake.staging import SnowflakeStaging
from clinipipe.targets.snowflake.types import snowflake_cast, snowflake_stream_cast

if TYPE_CHECKING:
    import pyarrow as pa


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


class SnowflakeChangeApply(SnowflakeStaging, ChangeApply):
    """`ChangeApply` on Snowflake: whole batches only (large transactions, schema changes and
    column fills are in `cannot.py`)."""

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        super().__init__(loaded, read_only=read_only)
        self._cdc_stages: dict[str, tuple[str, ...]] = {}  # CDC staging table -> its columns

    def close(self) -> None:
        super().close()
        self._cdc_stages.clear()

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
            self.metering_insert_sql(batch.metering_row(applied)),
        ]
