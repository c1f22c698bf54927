"""Source schema changes during CDC: compare the source catalog with what the raw table was
built from (by PostgreSQL column number, so a rename is never mistaken for drop + add), and
map the columns of any stream layout, old or new, onto the raw table.

Applying a change early is safe: between a DDL and the first change written after it, the
stream holds no change of that table; older changes still in flight are mapped by column
number, and columns they do not carry keep the raw row's value (or the ADD COLUMN default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from clinipipe.source.catalog import Column, ColumnType, TableSchema
from clinipipe.targets.base import RecordedColumn, SchemaChange

_INTEGERS = ("smallint", "integer", "bigint")
_VARCHAR = re.compile(r"^character varying(?:\((\d+)\))?$")
_NUMERIC = re.compile(r"^numeric(?:\((\d+),(\d+)\))?$")


class IncompatibleChange(Exception):
    """A source column changed in a way the raw table cannot follow without losing data."""


def is_widening(old: str, new: str) -> bool:
    """True when every value of PostgreSQL type `old` is exactly a value of type `new`."""
    if old == new:
        return True
    if old in _INTEGERS and new in _INTEGERS:
        return _INTEGERS.index(new) >= _INTEGERS.index(old)
    if old == "real" and new == "double precision":
        return True
    old_varchar, new_varchar = _VARCHAR.match(old), _VARCHAR.match(new)
    if old_varchar and (new == "text" or (new_varchar and not new_varchar.group(1))):
        return True
    if old_varchar and new_varchar:
        return int(new_varchar.group(1)) >= int(old_varchar.group(1) or 0) and bool(
            old_varchar.group(1)
        )
    old_numeric, new_numeric = _NUMERIC.match(old), _NUMERIC.match(new)
    if old_numeric and new_numeric:
        if not new_numeric.group(1):
            return True
        if not old_numeric.group(1):
            return False
        p1, s1 = int(old_numeric.group(1)), int(old_numeric.group(2))
        p2, s2 = int(new_numeric.group(1)), int(new_numeric.group(2))
        return s2 >= s1 and p2 - s2 >= p1 - s1
    return old in _INTEGERS and new_numeric is not None and not new_numeric.group(1)


def plan_changes(catalog: TableSchema, recorded: dict[int, RecordedColumn]) -> list[SchemaChange]:
    """The changes that bring the raw table of `catalog.name` in line with the source catalog,
    in the order to apply them: drops, renames, adds, retypes.

    A dropped column stays in the raw table with its values; when a live column wants its name
    (re-added, or another column renamed to it) the dropped one is first renamed aside to
    `<name>__dropped_<attnum>`. Renames may swap names: the target applies them as a set.

    Raises `IncompatibleChange` for a type change that is neither a widening nor a narrowing
    into a type the raw column already holds (which needs no change: every value fits).
    """
    table = catalog.name
    current = {c.attnum: c for c in catalog.columns}
    wanted = {column.name.lower(): attnum for attnum, column in current.items()}
    drops: list[SchemaChange] = []
    renames: list[SchemaChange] = []
    for attnum, known in recorded.items():
        if attnum in current:
            continue
        if not known.dropped:
            drops.append(SchemaChange(table, "drop", attnum, known.target_column))
        if wanted.get(known.target_column.lower(), attnum) != attnum:
            aside = f"{known.target_column}__dropped_{attnum}"
            renames.append(
                SchemaChange(table, "rename", attnum, known.target_column, new_name=aside)
            )
    adds: list[SchemaChange] = []
    retypes: list[SchemaChange] = []
    for attnum, column in current.items():
        known = recorded.get(attnum)
        if known is None:
            adds.append(
                SchemaChange(
                    table, "add", attnum, column.name, column.type,
                    missing_value=column.missing_value,
                    fill=column.has_default and column.missing_value is None,
                )
            )  # fmt: skip
            continue
        if known.target_column != column.name:
            renames.append(
                SchemaChange(table, "rename", attnum, known.target_column, new_name=column.name)
            )
        if known.pg_type != column.type.pg_type and not is_widening(
            column.type.pg_type, known.pg_type
        ):  # a narrowing the raw column already holds keeps the wider raw type
            if not is_widening(known.pg_type, column.type.pg_type):
                raise IncompatibleChange(
                    f"column {catalog.schema}.{table}.{column.name} changed type from "
                    f"{known.pg_type} to {column.type.pg_type}, which is not a widening"
                )
            retypes.append(SchemaChange(table, "retype", attnum, column.name, column.type))
    return drops + renames + adds + retypes


@dataclass
class ColumnMap:
    """How stream column names map onto the raw table of one source table.

    A stream layout can be older than the catalog (changes written before a DDL are still in
    the stream), so a name may have meant another column: `DROP COLUMN f8` then `RENAME num TO
    f8` leaves old changes whose `f8` is the dropped column. Each layout is resolved as a
    whole (`attnums`): every column a name ever meant is a candidate, a candidate whose
    recorded type the stream's type can neither widen to nor come from is set aside, a column
    is given to one stream name only, a column lies between its neighbours (pgoutput sends
    columns in attnum order), and among the rest the most recent meaning wins.
    """

    catalog: TableSchema
    recorded: dict[int, RecordedColumn]
    names: dict[str, list[int]] = field(default_factory=dict)
    """Every column (attnum) each name has meant, the most recent last."""
    types: dict[int, ColumnType] = field(default_factory=dict)

    def learn(self, catalog: TableSchema, recorded: dict[int, RecordedColumn],
              renames: list[tuple[str, str]] = ()) -> None:  # fmt: skip
        """Take in the catalog and the target's record after (possibly) evolving."""
        by_target = {known.target_column: attnum for attnum, known in recorded.items()}
        for attnum, known in sorted(recorded.items()):
            self._meant(known.target_column, attnum)
        for old, new in renames:  # `old` meant the column whose raw name is now `new`
            if new in by_target:
                self._meant(old, by_target[new], recent=False)
        for column in catalog.columns:
            self._meant(column.name, column.attnum)
            self.types[column.attnum] = column.type
        self.catalog, self.recorded = catalog, recorded

    def _meant(self, name: str, attnum: int, *, recent: bool = True) -> None:
        meanings = self.names.setdefault(name, [])
        if attnum in meanings:
            if not recent:
                return
            meanings.remove(attnum)
        if recent:
            meanings.append(attnum)
        else:
            meanings.insert(0, attnum)

    def attnums(
        self, stream_columns: tuple[str, ...], stream_types: tuple[ColumnType, ...]
    ) -> list[int | None]:
        """The column (attnum) each stream column is, None for one the raw table lacks."""
        candidates: list[list[int]] = []
        for name, column_type in zip(stream_columns, stream_types, strict=True):
            meanings = list(reversed(self.names.get(name, [])))  # most recent first
            fitting = [a for a in meanings if self._fits(a, column_type)]
            candidates.append(fitting or meanings)
        chosen: list[int | None] = [None] * len(candidates)
        taken: set[int] = set()
        progress = True
        while progress:  # a name with one possible column takes it first
            progress = False
            for i, options in enumerate(candidates):
                left = [a for a in options if a not in taken]
                if chosen[i] is None and len(left) == 1:
                    chosen[i] = left[0]
                    taken.add(left[0])
                    progress = True
        for i, options in enumerate(candidates):
            # pgoutput sends columns in attnum order: a column lies between its neighbours
            lower = max((a for a in chosen[:i] if a is not None), default=0)
            upper = min((a for a in chosen[i + 1 :] if a is not None), default=1 << 30)
            left = [a for a in options if a not in taken]
            between = [a for a in left if lower < a < upper]
            if chosen[i] is None and (between or left):
                chosen[i] = (between or left)[0]
                taken.add(chosen[i])
        return chosen

    def _fits(self, attnum: int, column_type: ColumnType) -> bool:
        known = self.recorded.get(attnum)
        return known is not None and (
            is_widening(column_type.pg_type, known.pg_type)
            or is_widening(known.pg_type, column_type.pg_type)
        )

    def incompatibility(
        self, stream_columns: tuple[str, ...], stream_types: tuple[ColumnType, ...]
    ) -> str | None:
        """Why a stream layout cannot be applied to the raw table (a type change that is not
        a widening), or None.

        A stream layout *narrower* than the raw column is no problem: it is a layout from
        before a widening the raw table already follows (CDC evolves from the catalog at start
        and when idle, so the raw table can be ahead of changes still in the stream, e.g. after
        a restart), and its values fit the wider column exactly.
        """
        attnums = self.attnums(stream_columns, stream_types)
        for name, column_type, attnum in zip(stream_columns, stream_types, attnums, strict=True):
            known = self.recorded.get(attnum) if attnum is not None else None
            if known is None or is_widening(column_type.pg_type, known.pg_type):
                continue
            if not is_widening(known.pg_type, column_type.pg_type):
                return (
                    f"column {self.catalog.schema}.{self.catalog.name}.{name} changed type "
                    f"from {known.pg_type} to {column_type.pg_type}, which is not a widening"
                )
        return None

    def layout(
        self, stream_columns: tuple[str, ...], stream_types: tuple[ColumnType, ...]
    ) -> tuple[list[str | None], TableSchema, tuple[Column, ...]]:
        """For a stream layout (names and the types its values are written in): the raw name
        of each stream column (None: ignore it), the schema of the mapped columns, and the raw
        columns the layout does not carry."""
        current = {c.attnum: c for c in self.catalog.columns}
        targets: list[str | None] = []
        columns: list[Column] = []
        attnums = self.attnums(stream_columns, stream_types)
        for column_type, attnum in zip(stream_types, attnums, strict=True):
            known = self.recorded.get(attnum) if attnum is not None else None
            if known is None:
                targets.append(None)
                continue
            targets.append(known.target_column)
            columns.append(Column(known.target_column, column_type, True, attnum))
        carried = {c.name for c in columns}
        kept = []
        for attnum, known in self.recorded.items():
            if known.target_column in carried:
                continue
            source = current.get(attnum)
            missing = source.missing_value if source is not None else None
            # The type only matters to cast a missing value; a column dropped before this
            # process started has none (its raw value is carried as it is).
            column_type = self.types.get(attnum) or ColumnType("other", known.pg_type)
            kept.append(Column(known.target_column, column_type, True, attnum, missing))
        by_name = {c.name: c.attnum for c in self.catalog.columns}
        primary_key = tuple(
            self.recorded[by_name[k]].target_column for k in self.catalog.primary_key
        )
        schema = TableSchema(self.catalog.schema, self.catalog.name, tuple(columns), primary_key,
                             self.catalog.pages, self.catalog.estimated_rows)  # fmt: skip
        return targets, schema, tuple(kept)


def map_changes(
    changes: pa.Table, stream_columns: tuple[str, ...], targets: list[str | None]
) -> pa.Table:
    """Rename the stream's columns (and their `__u` flags and `__from` old keys) to raw names;
    drop unmapped ones."""
    renamed: dict[str, pa.ChunkedArray] = {"_op": changes["_op"], "_seq": changes["_seq"]}
    for name, target in zip(stream_columns, targets, strict=True):
        if target is None:
            continue
        renamed[target] = changes[name]
        for suffix in ("__u", "__from"):
            if f"{name}{suffix}" in changes.column_names:
                renamed[f"{target}{suffix}"] = changes[f"{name}{suffix}"]
    return pa.table(renamed)
