"""Decoding of PostgreSQL's pgoutput logical replication protocol (version 1).

Row messages are kept as they came, per table (`TableChanges`), and split into Arrow string
columns in bulk (numpy over the concatenated messages, one pass per column; Arrow `take`): the
values stay the raw text PostgreSQL sent and the warehouse casts them to the column types. No
Python object is built per value.

Tuple values: 'n' NULL, 'u' unchanged TOASTed value (not sent: the target keeps its current
value), 't' text. Timestamps are microseconds since 2000-01-01 UTC.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field

import numpy as np
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
    """The changes to one table within a batch, in stream order.

    Each change is one row: op 'I', 'U', 'D', or 'T' (the table was truncated at that point)
    and the position of its pgoutput TupleData in the message that carried it. An Update that
    changes the primary key adds a delete of the old key first (op 'D', its old-key tuple),
    then the new row, which also points at the old key: its unchanged TOAST values are those of
    the row under that old key (`<key>__from` columns). The tuples are split into columns in
    bulk (`compact`, vectorised over the rows: numpy on the concatenated messages, Arrow
    `take`), never one Python object per value; every `COMPACT_ROWS` rows the buffered
    messages become an Arrow chunk.
    """

    relation: Relation
    ops: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    """The message of each buffered row (a key-changing update appears twice)."""
    offsets: list[int] = field(default_factory=list)
    """Where each row's tuple starts in its message."""
    origins: dict[int, int] = field(default_factory=dict)
    """Buffered row -> where its old-key tuple starts in its message (key-changing updates)."""
    chunks: list[pa.Table] = field(default_factory=list)
    compacted_rows: int = 0

    def __len__(self) -> int:
        return self.compacted_rows + len(self.ops)

    def add(self, op: str, seq: int, payload: bytes, offset: int) -> None:
        """Buffer a change: `op`, its stream sequence number, its message and where its tuple
        starts in it (compacted into Arrow every `COMPACT_ROWS` rows)."""
        self.ops.append(op)
        self.seqs.append(seq)
        self.payloads.append(payload)
        self.offsets.append(offset)
        if len(self.ops) >= COMPACT_ROWS:
            self.compact()

    def compact(self) -> None:
        """Move the buffered messages into an Arrow chunk, split into columns in bulk (about
        10x smaller than Python objects), so a transaction of millions of rows fits in
        memory."""
        if self.ops:
            self.chunks.append(self._split())
            self.compacted_rows += len(self.ops)
            self.ops, self.seqs, self.payloads, self.offsets, self.origins = [], [], [], [], {}

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

    def _split(self) -> pa.Table:
        columns = self.relation.columns
        sizes = np.fromiter(map(len, self.payloads), np.int64, len(self.payloads))
        starts = np.zeros(len(sizes), np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        data = b"".join(self.payloads)
        arrays: dict[str, pa.Array] = {
            "_op": pa.array(self.ops, pa.string()),
            "_seq": pa.array(self.seqs, pa.int64()),
        }
        values, unchanged = _split_tuples(
            data, starts + np.asarray(self.offsets, np.int64), len(columns)
        )
        moved: list[pa.Array] | None = None
        if self.origins:
            rows = np.fromiter(self.origins, np.int64, len(self.origins))
            at = np.fromiter(self.origins.values(), np.int64, len(self.origins))
            old, _ = _split_tuples(data, starts[rows] + at, len(columns))
            where = np.full(len(sizes), -1, np.int64)
            where[rows] = np.arange(len(rows))
            index = pa.array(where, mask=where < 0)
            moved = [column.take(index) for column in old]
        for i, name in enumerate(columns):
            arrays[name] = values[i]
            if unchanged[i] is not None:
                arrays[f"{name}__u"] = unchanged[i]
            if moved is not None and self.relation.key_flags[i]:
                arrays[f"{name}__from"] = moved[i]
        return pa.table(arrays)


_EMPTY_TUPLE = b"\x00\x00"
"""A TupleData of no columns: every column NULL (the row of a truncate)."""


def _split_tuples(
    data: bytes, positions: np.ndarray, ncols: int
) -> tuple[list[pa.Array], list[pa.Array | None]]:
    """Split the pgoutput TupleData starting at each of `positions` in `data` into `ncols`
    string columns (a column a tuple lacks is NULL), and per column the 'u' (unchanged TOAST)
    flags, None when no row has one. Vectorised over the rows: one pass per column."""
    buf = np.frombuffer(data, np.uint8)
    last = len(buf) - 1
    rows = len(positions)
    if rows and (positions.max() + 2 > len(buf)):
        raise DecodeError("a tuple runs past the end of its message")

    def at(index: np.ndarray) -> np.ndarray:
        return buf[np.minimum(index, last)].astype(np.int64)

    count = (at(positions) << 8) | at(positions + 1)
    pos = positions + 2
    # Every value slice as [start, end) pairs over the whole buffer; the gaps between
    # them are the odd entries of one Arrow binary array (offsets interleaved), whose even
    # entries `take` extracts in one C++ pass.
    bounds = np.empty(2 * rows + 1, np.int64)
    even = np.arange(0, 2 * rows, 2)
    values: list[pa.Array] = []
    unchanged: list[pa.Array | None] = []
    source = pa.py_buffer(data)
    for i in range(ncols):
        present = count > i
        kind = np.where(present, at(pos), 110)  # absent: 'n'
        text = kind == 116
        if not np.all(text | (kind == 110) | (kind == 117)):
            bad = int(kind[~(text | (kind == 110) | (kind == 117))][0])
            raise DecodeError(f"unsupported tuple value kind {chr(bad)!r}")
        length = np.where(
            text, (at(pos + 1) << 24) | (at(pos + 2) << 16) | (at(pos + 3) << 8) | at(pos + 4), 0
        )
        begin = np.where(text, pos + 5, pos)
        if rows and int((begin + length).max()) > len(buf):
            raise DecodeError("a tuple value runs past the end of its message")
        # Monotonic bounds: each row's slice lies after the previous row's.
        bounds[0] = 0
        bounds[1 : 2 * rows : 2] = begin
        bounds[2 : 2 * rows + 1 : 2] = begin + length
        validity = np.ones(2 * rows, np.bool_)
        validity[1::2] = text
        pieces = pa.Array.from_buffers(
            pa.large_binary(), 2 * rows,
            [pa.py_buffer(np.packbits(validity, bitorder="little")),
             pa.py_buffer(bounds), source],
        )  # fmt: skip
        values.append(pieces.take(pa.array(even + 1)).cast(pa.string()))
        flags = kind == 117
        unchanged.append(pa.array(flags) if flags.any() else None)
        pos = np.where(present, pos + 1 + np.where(text, 4 + length, 0), pos)
    return values, unchanged


class Decoder:
    """Stateful pgoutput decoder: remembers relations, appends changes to `TableChanges`."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        # Buffers and markers (e.g. schema changes) in arrival order; a table whose Relation
        # changes mid-batch gets a new buffer after the marker, so layouts never mix.
        self.pending: list[object] = []
        self._current: dict[int, TableChanges] = {}
        self._changes: dict[int, Change] = {}
        self.seq = 0
        self.rows = 0

    def take(self) -> list[object]:
        """The buffered changes and markers, in order (and a fresh, empty buffer)."""
        pending, self.pending, self._current = self.pending, [], {}
        self.rows = 0
        return pending

    def mark(self, marker: object) -> None:
        """Insert `marker` into the pending sequence at this point of the stream."""
        self.pending.append(marker)

    @property
    def pending_rows(self) -> int:
        """Row changes buffered since the last `take`."""
        return self.rows

    def decode(
        self, payload: bytes
    ) -> Begin | Commit | Relation | Change | Truncate | LogicalMessage | None:
        kind = payload[:1]
        if kind == b"I" or kind == b"D":  # the tuple (new row / old key) is at 6
            oid = _U32.unpack_from(payload, 1)[0]
            buffer = self._current.get(oid)
            if buffer is None or buffer.relation is not self.relations.get(oid):
                buffer = self._buffer(oid)
            self.seq += 1
            self.rows += 1
            buffer.ops.append("I" if kind == b"I" else "D")  # `TableChanges.add`, inlined
            buffer.seqs.append(self.seq)
            buffer.payloads.append(payload)
            buffer.offsets.append(6)
            if len(buffer.ops) >= COMPACT_ROWS:
                buffer.compact()
            event = self._changes.get(oid)
            return event if event is not None else self._change(oid)
        if kind == b"U":
            oid = _U32.unpack_from(payload, 1)[0]
            marker = payload[5:6]
            pos = 6
            buffer = self._buffer(oid)
            if marker in (b"K", b"O"):  # the old key or row first (rare: few tables send it)
                old_key, end = self._tuple(payload, 6)
                marker = payload[end : end + 1]
                pos = end + 1
                if marker == b"N":
                    new, _ = self._tuple(payload, pos)
                    moved = any(
                        flag and old_key[i] is not None and old_key[i] != new[i]
                        for i, flag in enumerate(buffer.relation.key_flags)
                    )
                    if moved:
                        self.seq += 1
                        self.rows += 1
                        buffer.add("D", self.seq, payload, 6)
                        buffer = self._buffer(oid)
                        buffer.origins[len(buffer.ops)] = 6
            if marker != b"N":
                raise DecodeError(f"update without a new tuple (marker {marker!r})")
            self.seq += 1
            self.rows += 1
            buffer.add("U", self.seq, payload, pos)
            return self._change(oid)
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
                    self.seq += 1
                    self.rows += 1
                    self._buffer(oid).add("T", self.seq, _EMPTY_TUPLE, 0)
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

    def _change(self, oid: int) -> Change:
        event = self._changes.get(oid)
        if event is None:
            event = self._changes[oid] = Change(oid)
        return event

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
