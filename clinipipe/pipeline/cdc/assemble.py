"""Step 3, assemble a batch: the decoder's buffered changes, mapped onto the raw tables.

Guarantees:

* Works on Arrow tables only (one `to_arrow` per buffered table, vectorised filters and
  mappings): no per-row Python.
* Changes of a paused table are kept only up to the point of the pause (`paused[table]`, a
  decoder sequence number); a table paused before this stream keeps none.
* A table without a primary key (append-only) keeps its inserts before its first update or
  delete; that change pauses the table (it cannot be matched to one warehouse row).
* Each `TableBatch` names the refresh-key columns it carries, so refreshes re-derive only the
  changed keys.
* Assembly takes the buffers (the decoder is empty afterwards) and writes nothing anywhere
  except the pause of a table (through `Layouts.pause`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from clinipipe.pipeline.schema_evolution import ColumnMap, map_changes
from clinipipe.source.catalog import ColumnType
from clinipipe.source.pgoutput import Relation, TableChanges
from clinipipe.targets.base import TableBatch


class Layouts(Protocol):
    """What assembly needs to know about the tables (`SchemaFollower` in the loop)."""

    paused: dict[str, int]

    def map_for(self, relation: Relation) -> ColumnMap: ...

    def types_of(self, relation: Relation) -> tuple[ColumnType, ...]: ...

    def pause(self, table: str, reason: str, lsn: int) -> None: ...


class BatchAssembler:
    """The assemble step."""

    def __init__(self, layouts: Layouts, refresh_columns: Iterable[str]) -> None:
        """`refresh_columns`: the dynamic tables' refresh keys (columns whose changed values
        refreshes need)."""
        self.layouts = layouts
        self.refresh_columns = frozenset(refresh_columns)

    def tables(self, buffers: list[object], lsn: int) -> list[TableBatch]:
        """`buffers` (from `Decoder.take()`) as table batches; a pause found here is recorded
        at `lsn` (the end of what is applied before it)."""
        layouts = self.layouts
        tables = []
        for buffer in buffers:
            if not isinstance(buffer, TableChanges) or not len(buffer):
                continue
            relation = buffer.relation
            arrow = buffer.to_arrow()
            if relation.name in layouts.paused:  # keep only what came before the pause
                arrow = arrow.filter(pc.less_equal(arrow["_seq"], layouts.paused[relation.name]))
                if not arrow.num_rows:
                    continue
            column_map = layouts.map_for(relation)
            if not column_map.catalog.primary_key:
                arrow, problem = appends_only(arrow, relation)
                if problem is not None:
                    layouts.pause(relation.name, problem, lsn)
                if not arrow.num_rows:
                    continue
            targets, schema, kept = column_map.layout(relation.columns, layouts.types_of(relation))
            changes = map_changes(arrow, relation.columns, targets)
            keys = tuple(sorted(self.refresh_columns & set(schema.column_names)))
            tables.append(TableBatch(schema, changes, keys, kept))
        return tables


def appends_only(changes: pa.Table, relation: Relation) -> tuple[pa.Table, str | None]:
    """The changes of an append-only table (no primary key) before its first update or delete,
    and why the table must pause when there is one: such a change cannot be matched to one
    warehouse row."""
    matchable = pc.is_in(changes["_op"], pa.array(["I", "T"]))
    if pc.all(matchable).as_py():
        return changes, None
    first = pc.min(pc.filter(changes["_seq"], pc.invert(matchable))).as_py()
    return changes.filter(pc.less(changes["_seq"], first)), (
        f"an update or delete reached append-only table {relation.schema}.{relation.name} "
        "(it has no primary key, so the row cannot be matched in the warehouse)"
    )
