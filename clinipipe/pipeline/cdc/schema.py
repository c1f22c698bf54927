"""Following the source's schema while streaming: column maps, evolution, pauses, column fills.

Guarantees:

* Schema changes are ordered by the stream: a Relation message whose columns or types differ
  from what the raw table was built from evolves the raw table (`Target.evolve_table`) before
  any change in the new layout is applied. A DDL with no change after it yet is found by the
  idle catalog check (`idle_check`).
* An incompatible change pauses only its table, from the point of the stream where it applies
  (`paused[table]` is the decoder sequence number from which its changes are dropped); the
  pause is recorded in the warehouse with the reason and what to run.
* Columns added with a volatile default are copied from the source (`fill_columns`) only once
  the stream passed a marker written after the fill was recorded.
* Every source read goes through the source `RetryPolicy`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from clinipipe.pipeline.cdc.model import CdcError, CdcSummary
from clinipipe.pipeline.schema_evolution import ColumnMap, IncompatibleChange, plan_changes
from clinipipe.source.catalog import (
    CatalogError,
    ColumnType,
    TableSchema,
    introspect_table,
    read_column_types,
    read_tables,
)
from clinipipe.source.pgoutput import Relation, lsn_to_str
from clinipipe.source.postgres import RetryPolicy, connect
from clinipipe.source.range_reader import PageRange, read_range
from clinipipe.source.replication import export_snapshot
from clinipipe.source.stream import emit_marker
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets.base import Target


class SchemaFollower:
    """Column maps of the spec's tables and the pause list, kept in line with the stream."""

    def __init__(
        self,
        loaded: LoadedSpec,
        target: Target,
        retry: RetryPolicy,
        summary: CdcSummary,
        current_seq: Callable[[], int],
    ) -> None:
        """`current_seq()`: the decoder's sequence number now (a pause drops what follows)."""
        spec = loaded.spec
        self.dsn, self.slot = spec.source.dsn, spec.source.slot
        self.target, self.retry, self.summary = target, retry, summary
        self._current_seq = current_seq
        self.append_only = {(t.schema_, t.name) for t in spec.source.tables if t.append_only}
        self.schemas = {t.name: t.schema_ for t in spec.source.tables}
        self.maps: dict[tuple[str, str], ColumnMap] = {}
        self.paused: dict[str, int] = {t: -1 for t in target.paused_tables(self.slot)}
        """Tables CDC stopped applying -> the stream sequence number from which their changes
        are dropped (-1: all)."""
        self.pending_pause: dict[str, str] = {}
        self._stream_types: dict[Relation, tuple[ColumnType, ...]] = {}
        self.fills_recorded = True  # look for pending column fills (at start, after each DDL)
        self.fill_barrier: int | None = None
        """Columns are copied from the source once the stream passes this marker."""
        self.fills_due = False

    # -- lookups used by batch assembly ----------------------------------------------------

    def map_for(self, relation: Relation) -> ColumnMap:
        column_map = self.maps.get((relation.schema, relation.name))
        if column_map is None:
            raise CdcError(
                f"changes for {relation.schema}.{relation.name}, which is in the publication but "
                "not in the spec: add it to source.tables, or remove it from the publication"
            )
        return column_map

    def types_of(self, relation: Relation) -> tuple[ColumnType, ...]:
        """The types the stream writes `relation`'s values in (cached per layout)."""
        if relation not in self._stream_types:
            pairs = list(zip(relation.type_oids, relation.type_mods, strict=True))
            resolved = read_column_types(self.dsn, pairs, self.retry)
            self._stream_types[relation] = tuple(resolved[p] for p in pairs)
        return self._stream_types[relation]

    def pause(self, table: str, reason: str, lsn: int) -> None:
        full = (
            f"{reason}; changes to this table after {lsn_to_str(lsn)} are not applied. "
            "Reload with `clinipipe cdc reset --yes` and `clinipipe backfill --force`."
        )
        self.target.pause_table(self.slot, table, full, lsn)
        self.paused[table] = self._current_seq()
        self.pending_pause.pop(table, None)
        self.summary.paused_tables.append(table)

    def restarted(self) -> None:
        """The decoder restarted (a reconnect): its sequence numbers start again."""
        self.paused.update(dict.fromkeys(self.paused, -1))

    # -- evolution ---------------------------------------------------------------------------

    def on_relation(self, event: Relation, lsn: int) -> None:
        """A Relation message of a table not paused: pause it, or evolve its raw table, when
        its layout differs from what the raw table holds."""
        column_map = self.map_for(event)
        problem = column_map.incompatibility(event.columns, self.types_of(event))
        if problem is not None:
            self.pause(event.name, problem, lsn)
        elif event.columns != tuple(column_map.catalog.column_names) or any(
            t.pg_type != c.type.pg_type
            for t, c in zip(self.types_of(event), column_map.catalog.columns, strict=False)
        ):
            self.evolve([(event.schema, event.name)], lsn)

    def evolve(self, keys: list[tuple[str, str]], lsn: int) -> None:
        """Bring the raw tables of `keys` in line with the source catalog.

        An incompatible change is only noted here: the table is paused where the stream
        reaches it (its first change in the new layout), or once CDC is idle.
        """
        found = read_tables(self.dsn, keys, self.retry, append_only=self.append_only)
        catalogs: dict[tuple[str, str], TableSchema] = {}
        for key, described in found.items():
            if isinstance(described, CatalogError):
                if key[1] not in self.paused:
                    self.pause(key[1], str(described), lsn)
            else:
                catalogs[key] = described
        target = self.target
        for key, catalog in catalogs.items():
            if catalog.name in self.paused:
                continue
            known = self.maps.get(key)
            if known is not None and _same_columns(known.catalog, catalog):
                continue
            try:
                changes = plan_changes(catalog, target.recorded_columns(catalog.name))
            except IncompatibleChange as exc:
                self.pending_pause[catalog.name] = str(exc)
                changes = []
            unfillable = [c.column for c in changes if c.fill and not catalog.primary_key]
            if unfillable:  # no key to copy the source's values of existing rows by
                changes = [dataclasses.replace(c, fill=False) for c in changes]
            if changes:
                target.evolve_table(changes, lsn)
                self.summary.schema_changes += len(changes)
                self.fills_recorded = True
            if unfillable:
                self.pause(
                    catalog.name,
                    f"column(s) {', '.join(unfillable)} of append-only table "
                    f"{catalog.qualified_name} were added with a volatile default: the "
                    "existing rows got values only the source has, and a table without a "
                    "primary key cannot be matched to copy them",
                    lsn,
                )
            column_map = known or ColumnMap(catalog, {})
            column_map.learn(
                catalog, target.recorded_columns(catalog.name),
                target.renamed_columns(catalog.name),
            )  # fmt: skip
            self.maps[key] = column_map

    def idle_check(self, lsn: int) -> None:
        """Caught up and idle: a DDL with no change after it yet (ADD COLUMN and nothing
        written) is found in the catalog; noted incompatible changes pause at `lsn` (everything
        before it is applied)."""
        self.evolve(list(self.maps), lsn)
        for table, reason in list(self.pending_pause.items()):
            self.pause(table, reason, lsn)

    # -- column fills -------------------------------------------------------------------------

    def between_batches(self) -> None:
        """Nothing pending: copy due column fills, or write the barrier marker for new ones."""
        if self.fills_due:
            self.fill_columns()
            self.fill_barrier, self.fills_due = None, False
        if self.fill_barrier is None and self.fills_recorded:
            self.fills_recorded = False
            if self.target.pending_column_fills():
                self.fill_barrier = self.retry.run(
                    lambda: emit_marker(self.dsn), "writing a marker to the source"
                )

    def passed(self, lsn: int) -> None:
        """The stream passed a non-transactional message at `lsn`."""
        if self.fill_barrier is not None and lsn >= self.fill_barrier:
            self.fills_due = True

    def fill_columns(self) -> None:
        """Copy the values of columns added with a volatile default (see
        `SchemaChange.fill`) from the source, under one snapshot taken now. Runs only once
        the stream passed a marker written after the fill was recorded: every change from
        before it (rows in the old layout, which would otherwise keep no value) is applied,
        and every later change carries the column and is applied after the copy. A source
        failure rolls the copy back and it is retried whole (it overwrites by key)."""
        for table, attnum in self.target.pending_column_fills():
            self.retry.run(lambda t=table, a=attnum: self._fill(t, a), f"copying {table} columns")

    def _fill(self, table: str, attnum: int) -> None:
        schema = self.schemas[table]
        source = connect(self.dsn)
        try:
            catalog = introspect_table(
                source, schema, table, append_only=(schema, table) in self.append_only
            )
        finally:
            source.close()
        column = next((c for c in catalog.columns if c.attnum == attnum), None)
        if column is None or not catalog.primary_key:
            self.target.fill_column(catalog, "", attnum, None)
            return
        keys = [c for c in catalog.columns if c.name in catalog.primary_key]
        part = dataclasses.replace(catalog, columns=(*keys, column))
        holder = export_snapshot(self.dsn)
        try:
            with read_range(
                self.dsn, holder.snapshot_name, part, PageRange(table, 0, 0, None)
            ) as rows:
                self.target.fill_column(part, column.name, attnum, rows)
        finally:
            holder.close()


def _same_columns(a: TableSchema, b: TableSchema) -> bool:
    return [(c.attnum, c.name, c.type.pg_type) for c in a.columns] == [
        (c.attnum, c.name, c.type.pg_type) for c in b.columns
    ]
