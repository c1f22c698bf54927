"""Decoding of PostgreSQL's pgoutput logical replication protocol (version 1).

Messages are decoded straight into per-table column buffers (`TableChanges`): values stay the
raw text bytes PostgreSQL sent and become Arrow string columns at flush time; the warehouse
casts them to the column types. No object is built per row beyond the column values.

Tuple values: 'n' NULL, 'u' unchanged TOASTed value (not sent: the target keeps its current
value), 't' text. Timestamps are microseconds since 2000-01-01 UTC.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field

import pyarrow as pa

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!bQQq")


COMPACT_ROWS = 20_000
"""Buffered changes of one table are moved into Arrow every this many rows."""


class DecodeError(Exception):
    """A message that does not follow the protocol (a bug, or an unsupported server option)."""


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> integer."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def lsn_to_str(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def pg_timestamp(micros: int) -> dt.datetime:
    return PG_EPOCH + dt.timedelta(microseconds=micros)


@dataclass(frozen=True)
class Relation:
    """A table as the stream describes it (sent before its first change, and after DDL)."""

    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[str, ...]
    key_flags: tuple[bool, ...]
    type_oids: tuple[int, ...]
    type_mods: tuple[int, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_ts: dt.datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ts: dt.datetime


@dataclass(frozen=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True)
class Change:
    """Marker returned for Insert/Update/Delete: the row went into `TableChanges` buffers."""

    relation_oid: int


@dataclass
class TableChanges:
    """Column buffers of the changes to one table within a batch, in stream order.

    Every change appends one entry to every list: op 'I', 'U', 'D', or 'T' (the table was
    truncated at that point). An Update that changes the primary key adds a delete of the old
    key first (op 'D'), then the new row, whose `moved_from` entries hold the old key: its
    unchanged TOAST values are those of the row under that old key. `unchanged[i]` is
    allocated only for columns that had an unchanged TOAST value in the batch, `moved_from[i]`
    only for key columns of a batch with a key-changing update.
    """

    relation: Relation
    ops: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    values: list[list[bytes | None]] = field(default_factory=list)
    unchanged: dict[int, list[bool]] = field(default_factory=dict)
    moved_from: dict[int, list[bytes | None]] = field(default_factory=dict)
    chunks: list[pa.Table] = field(default_factory=list)
    compacted_rows: int = 0

    def __post_init__(self) -> None:
        if not self.values:
            self.values = [[] for _ in self.relation.columns]

    def __len__(self) -> int:
        return self.compacted_rows + len(self.ops)

    def compact(self) -> None:
        """Move the buffered values into an Arrow chunk (about 10x smaller than Python
        objects), so a transaction of millions of rows fits in memory."""
        if self.ops:
            self.chunks.append(self._lists_to_arrow())
            self.compacted_rows += len(self.ops)
            self.ops, self.seqs, self.unchanged, self.moved_from = [], [], {}, {}
            self.values = [[] for _ in self.relation.columns]

    def to_arrow(self) -> pa.Table:
        """`_op`, `_seq`, one string column per source column, `<col>__u` flags and
        `<key>__from` old keys where needed."""
        self.compact()
        if len(self.chunks) == 1:
            return self.chunks[0]
        extra = {
            f for chunk in self.chunks for f in chunk.column_names
            if f.endswith(("__u", "__from"))
        }  # fmt: skip
        aligned = []
        for chunk in self.chunks:
            for name in sorted(extra - set(chunk.column_names)):
                filler = (
                    pa.repeat(False, chunk.num_rows)
                    if name.endswith("__u")
                    else pa.nulls(chunk.num_rows, pa.string())
                )
                chunk = chunk.append_column(name, filler)
            aligned.append(chunk.select(self.chunks[0].column_names + sorted(
                extra - set(self.chunks[0].column_names))))  # fmt: skip
        return pa.concat_tables(aligned)

    def _lists_to_arrow(self) -> pa.Table:
        arrays: dict[str, pa.Array] = {
            "_op": pa.array(self.ops, pa.string()),
            "_seq": pa.array(self.seqs, pa.int64()),
        }
        for i, name in enumerate(self.relation.columns):
            arrays[name] = pa.array(self.values[i], pa.binary()).cast(pa.string())
            if i in self.unchanged:
                arrays[f"{name}__u"] = pa.array(self.unchanged[i], pa.bool_())
            if i in self.moved_from:
                arrays[f"{name}__from"] = pa.array(self.moved_from[i], pa.binary()).cast(
                    pa.string()
                )
        return pa.table(arrays)


class Decoder:
    """Stateful pgoutput decoder: remembers relations, appends changes to `TableChanges`."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        # Buffers and markers (e.g. schema changes) in arrival order; a table whose Relation
        # changes mid-batch gets a new buffer after the marker, so layouts never mix.
        self.pending: list[object] = []
        self._current: dict[int, TableChanges] = {}
        self.seq = 0

    def take(self) -> list[object]:
        """The buffered changes and markers, in order (and a fresh, empty buffer)."""
        pending, self.pending, self._current = self.pending, [], {}
        return pending

    def mark(self, marker: object) -> None:
        """Insert `marker` into the pending sequence at this point of the stream."""
        self.pending.append(marker)

    @property
    def pending_rows(self) -> int:
        return sum(len(t) for t in self.pending if isinstance(t, TableChanges))

    def decode(
        self, payload: bytes
    ) -> Begin | Commit | Relation | Change | Truncate | LogicalMessage | None:
        kind = payload[:1]
        if kind == b"I":
            oid = _U32.unpack_from(payload, 1)[0]
            self._append(oid, "I", payload, 6)
            return Change(oid)
        if kind == b"U":
            oid = _U32.unpack_from(payload, 1)[0]
            marker = payload[5:6]
            old_key: list[bytes | None] | None = None
            pos = 5
            if marker in (b"K", b"O"):
                old_key, pos = self._tuple(payload, 6)
                marker = payload[pos : pos + 1]
            if marker != b"N":
                raise DecodeError(f"update without a new tuple (marker {marker!r})")
            moved_from = None
            if old_key is not None:
                relation = self._relation(oid)
                if self._key_changed(relation, old_key, payload, pos + 1):
                    self._append_values(oid, "D", old_key)
                    moved_from = old_key
            self._append(oid, "U", payload, pos + 1, moved_from)
            return Change(oid)
        if kind == b"D":
            oid = _U32.unpack_from(payload, 1)[0]
            old, _ = self._tuple(payload, 6)
            self._append_values(oid, "D", old)
            return Change(oid)
        if kind == b"B":
            final_lsn, ts, xid = _BEGIN.unpack_from(payload, 1)
            return Begin(final_lsn, pg_timestamp(ts), xid)
        if kind == b"C":
            _, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(payload, 1)
            return Commit(commit_lsn, end_lsn, pg_timestamp(ts))
        if kind == b"R":
            relation = self._decode_relation(payload)
            if (
                self.relations.get(relation.oid) != relation
            ):  # re-sent unchanged after cache flushes
                self.relations[relation.oid] = relation
            return relation
        if kind == b"T":
            count = _I32.unpack_from(payload, 1)[0]
            options = payload[5]
            oids = struct.unpack_from(f"!{count}I", payload, 6)
            for oid in oids:
                if oid in self.relations:
                    relation = self.relations[oid]
                    self._append_values(oid, "T", [None] * len(relation.columns))
            return Truncate(tuple(oids), bool(options & 1), bool(options & 2))
        if kind == b"M":
            flags = payload[1]
            lsn = _I64.unpack_from(payload, 2)[0]
            end = payload.index(b"\0", 10)
            prefix = payload[10:end].decode()
            length = _I32.unpack_from(payload, end + 1)[0]
            content = payload[end + 5 : end + 5 + length]
            return LogicalMessage(bool(flags & 1), lsn, prefix, content)
        if kind in (b"Y", b"O"):
            return None  # types are re-read from the catalog; origins are not filtered
        raise DecodeError(f"unknown pgoutput message {kind!r}")

    # --- helpers ---------------------------------------------------------------------------

    def _relation(self, oid: int) -> Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise DecodeError(f"change for relation {oid} before its Relation message") from None

    def _buffer(self, oid: int) -> TableChanges:
        buffer = self._current.get(oid)
        relation = self._relation(oid)
        # `is not` first: comparing dataclasses field by field on every row is costly.
        if buffer is None or (buffer.relation is not relation and buffer.relation != relation):
            buffer = TableChanges(relation)
            self._current[oid] = buffer
            self.pending.append(buffer)
        return buffer

    def _append(
        self, oid: int, op: str, payload: bytes, pos: int,
        moved_from: list[bytes | None] | None = None,
    ) -> None:  # fmt: skip
        buffer = self._buffer(oid)
        ncols = _I16.unpack_from(payload, pos)[0]
        pos += 2
        values = buffer.values
        row = len(buffer.ops)
        for i in range(ncols):
            kind = payload[pos]
            pos += 1
            if kind == 116:  # 't'
                length = _I32.unpack_from(payload, pos)[0]
                pos += 4
                values[i].append(payload[pos : pos + length])
                pos += length
            elif kind == 110:  # 'n'
                values[i].append(None)
            elif kind == 117:  # 'u'
                values[i].append(None)
                flags = buffer.unchanged.get(i)
                if flags is None:
                    flags = buffer.unchanged[i] = [False] * row
                flags.append(True)
                continue
            else:
                raise DecodeError(f"unsupported tuple value kind {chr(kind)!r}")
            flags = buffer.unchanged.get(i)
            if flags is not None:
                flags.append(False)
        if moved_from is not None or buffer.moved_from:
            self._note_origin(buffer, row, moved_from)
        buffer.ops.append(op)
        self.seq += 1
        buffer.seqs.append(self.seq)
        if len(buffer.ops) >= COMPACT_ROWS:
            buffer.compact()

    @staticmethod
    def _note_origin(buffer: TableChanges, row: int, moved_from: list[bytes | None] | None) -> None:
        """Append row `row`'s old key (None: not moved) to the `moved_from` key columns."""
        for i, is_key in enumerate(buffer.relation.key_flags):
            if not is_key:
                continue
            column = buffer.moved_from.get(i)
            if column is None:
                column = buffer.moved_from[i] = [None] * row
            column.append(moved_from[i] if moved_from is not None else None)

    def _append_values(self, oid: int, op: str, values_in: list[bytes | None]) -> None:
        buffer = self._buffer(oid)
        if buffer.moved_from:
            self._note_origin(buffer, len(buffer.ops), None)
        for i, value in enumerate(values_in):
            buffer.values[i].append(value)
            flags = buffer.unchanged.get(i)
            if flags is not None:
                flags.append(False)
        buffer.ops.append(op)
        self.seq += 1
        buffer.seqs.append(self.seq)

    def _tuple(self, payload: bytes, pos: int) -> tuple[list[bytes | None], int]:
        ncols = _I16.unpack_from(payload, pos)[0]
        pos += 2
        out: list[bytes | None] = []
        for _ in range(ncols):
            kind = payload[pos]
            pos += 1
            if kind == 116:
                length = _I32.unpack_from(payload, pos)[0]
                pos += 4
                out.append(payload[pos : pos + length])
                pos += length
            else:
                out.append(None)
        return out, pos

    def _key_changed(
        self, relation: Relation, old: list[bytes | None], payload: bytes, pos: int
    ) -> bool:
        new, _ = self._tuple(payload, pos)
        return any(
            flag and old[i] is not None and old[i] != new[i]
            for i, flag in enumerate(relation.key_flags)
        )

    @staticmethod
    def _decode_relation(payload: bytes) -> Relation:
        oid = _U32.unpack_from(payload, 1)[0]
        pos = 5
        end = payload.index(b"\0", pos)
        schema = payload[pos:end].decode()
        pos = end + 1
        end = payload.index(b"\0", pos)
        name = payload[pos:end].decode()
        pos = end + 1
        replica_identity = chr(payload[pos])
        ncols = _I16.unpack_from(payload, pos + 1)[0]
        pos += 3
        names, keys, oids, mods = [], [], [], []
        for _ in range(ncols):
            flags = payload[pos]
            end = payload.index(b"\0", pos + 1)
            names.append(payload[pos + 1 : end].decode())
            type_oid, type_mod = struct.unpack_from("!Ii", payload, end + 1)
            keys.append(bool(flags & 1))
            oids.append(type_oid)
            mods.append(type_mod)
            pos = end + 9
        return Relation(
            oid, schema, name, replica_identity, tuple(names), tuple(keys), tuple(oids),
            tuple(mods),
        )  # fmt: skip
