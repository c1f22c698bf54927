"""Checksums of source tables for `clinipipe verify`: canonical values, key ranges, and the
changes between two LSNs. The PostgreSQL side; the warehouses' side is
`clinipipe.targets.capabilities.verify`, built on the same `ChecksumSql`.

**Canonical values.** Each engine turns every replicated value into one *canonical text*, in
SQL, the same in both engines for the same value (the rule per logical type of
docs/TYPE_MAPPING.md, "Canonical values (verify)"):

* integers, bool (``true``/``false``), text (char(n) padding kept), enum labels, uuid
  (lower case), json/jsonb (the text the warehouse holds: jsonb's normalized text), numeric
  text (all scale digits; unconstrained numeric and money as their exact text), inet and other
  types (their output text);
* decimal(p,s): the numeric text with all scale digits (``0.00012``, ``-1.50``);
* float4/float8: ``NaN``, ``Infinity``, ``-Infinity``, ``0``, ``-0`` (kept apart from ``0``),
  else the *shortest round-trip* digits and a decimal exponent, ``<sign><digits>e<exp>`` with
  value ``0.<digits> * 10^(exp+1)`` (both engines print the shortest digits that read back to
  the same bits; only their layout differs, and the rule removes it). Equal canonical text
  therefore means equal bits (NaN payloads aside: PostgreSQL prints every NaN as ``NaN``);
* date: days since 1970-01-01; timestamp/timestamptz: microseconds since the epoch (UTC
  for timestamptz, whatever zone the session has); time: microseconds; timetz:
  ``<µs>@<offset seconds>``; ``infinity``/``-infinity`` as such;
* interval: ``months|days|µs`` (the three stored fields, not normalized);
* bytea: lower-case hex;
* arrays: ``<cardinality>:`` and the md5 of each element's canonical text (``null`` for a NULL
  element), comma-separated; ``interval[]``, ``bytea[]``, ``money[]``: their JSON text.

A row's text is the concatenation, column by column in table order, of ``<length>:<text>`` (the
length in characters) or ``~`` for NULL: injective, so NULL and the empty string differ and
no value can imitate a column boundary. A row's hash is the first 60 bits of md5 of that text
as an integer; a range's checksum is the row count and the (exact, unbounded) sum of the row
hashes: order-independent, and a duplicated or missing row changes it (no xor cancelling).

**Ranges.** A table is split on a *position*: the key itself when the primary key is one
integer column, else the first 32 bits of md5 of the key's canonical text (composite, text,
uuid, timestamp keys). Ranges are `[lo + i·w, lo + (i+1)·w)` with `w` a power of two, so
halving a range (bisection) gives ranges of the same grid.

**Changes between positions.** `VerifySlot` creates a TEMPORARY logical slot that exports
its snapshot (consistent point S: the snapshot holds exactly the transactions committed before
S, the slot streams exactly those committed after); `VerifySlot.changed_keys(W)` then reads it
from S until W. `peek_changed_keys` reads the pipeline's own slot (not consuming it) up to S.
Both return, per table, the keys (as their pgoutput text) touched by those transactions.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.source.catalog import EXPORT_SESSION_SETTINGS, Column, ColumnType, TableSchema
from clinipipe.source.pgoutput import Commit, Decoder, LogicalMessage, TableChanges, lsn_to_str
from clinipipe.source.postgres import SourceError, connect, tls_hint
from clinipipe.source.stream_settings import STREAM_SESSION_OPTIONS
from clinipipe.sql.dialect import POSTGRES

INT_KEYS = frozenset({"int16", "int32", "int64"})
HASH_POSITION_BITS = 32
NULL_MARK = "~"
WORK_MEM = "64MB"
"""work_mem of the verify session (its range sums hash-aggregate in memory)."""

# --------------------------------------------------------------------------------------------
# The table and its ranges
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChecksumTable:
    """What both engines checksum of one replicated table: its columns (source order, names
    as in the warehouse), its primary key, and the relation names in each engine."""

    name: str
    """The spec's table name (what reports say)."""
    source_relation: str
    """Quoted ``schema.table`` on PostgreSQL."""
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @classmethod
    def of(cls, schema: TableSchema, name: str | None = None) -> ChecksumTable:
        relation = f"{POSTGRES.quote_ident(schema.schema)}.{POSTGRES.quote_ident(schema.name)}"
        return cls(name or schema.name, relation, schema.columns, schema.primary_key)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        by_name = {c.name: c for c in self.columns}
        return tuple(by_name[k] for k in self.key)

    @property
    def int_position(self) -> bool:
        """True when the position is the key itself (one integer key column)."""
        keys = self.key_columns
        return len(keys) == 1 and keys[0].type.logical in INT_KEYS

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_relation": self.source_relation,
            "key": list(self.key),
            "columns": [_column_dict(c) for c in self.columns],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChecksumTable:
        return cls(d["name"], d["source_relation"],
                   tuple(_column_from(c) for c in d["columns"]), tuple(d["key"]))  # fmt: skip


def _type_dict(t: ColumnType) -> dict[str, Any]:
    return {"logical": t.logical, "pg_type": t.pg_type, "precision": t.precision,
            "scale": t.scale, "length": t.length,
            "element": _type_dict(t.element) if t.element else None}  # fmt: skip


def _type_from(d: Mapping[str, Any]) -> ColumnType:
    element = _type_from(d["element"]) if d.get("element") else None
    return ColumnType(d["logical"], d["pg_type"], d.get("precision"), d.get("scale"),
                      d.get("length"), element)  # fmt: skip


def _column_dict(c: Column) -> dict[str, Any]:
    return {"name": c.name, "type": _type_dict(c.type), "nullable": c.nullable}


def _column_from(d: Mapping[str, Any]) -> Column:
    return Column(d["name"], _type_from(d["type"]), bool(d["nullable"]))


@dataclass(frozen=True)
class Span:
    """Positions ``lo <= p < hi``."""

    lo: int
    hi: int


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """`spans` sorted, with touching or overlapping ones merged."""
    merged: list[Span] = []
    for s in sorted(spans, key=lambda s: s.lo):
        if merged and s.lo <= merged[-1].hi:
            merged[-1] = Span(merged[-1].lo, max(merged[-1].hi, s.hi))
        else:
            merged.append(s)
    return merged


def spans_ends(spans: Iterable[Span]) -> list[int]:
    return [v for s in spans for v in (s.lo, s.hi)]


def key_text(canon: Sequence[str | None]) -> str:
    """The key's canonical text as SQL builds it (`ChecksumSql.key_text`), from its parts."""
    return "".join(NULL_MARK if c is None else f"{len(c)}:{c}" for c in canon)


# --------------------------------------------------------------------------------------------
# The SQL, shared by every engine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChecksumSql:
    """The checksum queries of one engine, from its primitives:

    * `canonical(expr, type)`: the canonical text of a value (NULL for NULL);
    * `hash60(text)` / `hash32(text)`: the first 60 / 32 bits of md5 of a text as an integer;
    * `length(text)`: its length in characters; `int_text(expr)`: an integer as text;
    * `relation(table)`: the table's quoted name in this engine.

    Every query returns only counts, sums, positions, canonical key texts and md5 digests:
    never a value of a non-key column.
    """

    quote_ident: Callable[[str], str]
    quote_literal: Callable[[str], str]
    canonical: Callable[[str, ColumnType], str]
    hash60: Callable[[str], str]
    hash32: Callable[[str], str]
    length: Callable[[str], str]
    int_text: Callable[[str], str]
    relation: Callable[[ChecksumTable], str]
    range_index: Callable[[str, int, int, bool], str]
    """`range_index(pos, lo, width, narrow)`: floor((pos - lo) / width) as an integer;
    `narrow` when pos - lo fits in 63 bits (fast arithmetic), else exact wide arithmetic."""

    def item(self, expr: str, t: ColumnType) -> str:
        canon = self.canonical(expr, t)
        return f"COALESCE({self.int_text(self.length(canon))} || ':' || {canon}, '{NULL_MARK}')"

    def row_text(self, table: ChecksumTable) -> str:
        items = [self.item(self.quote_ident(c.name), c.type) for c in table.columns]
        return " || ".join(items) if items else "''"

    def key_canon(self, table: ChecksumTable) -> list[str]:
        return [self.canonical(self.quote_ident(c.name), c.type) for c in table.key_columns]

    def key_text(self, table: ChecksumTable) -> str:
        return " || ".join(self.item(self.quote_ident(c.name), c.type) for c in table.key_columns)

    def position(self, table: ChecksumTable) -> str:
        if table.int_position:
            return self.quote_ident(table.key[0])
        return self.hash32(self.key_text(table))

    def where(self, table: ChecksumTable, spans: Sequence[Span]) -> str:
        pos = self.position(table)
        parts = [f"({pos} >= {s.lo} AND {pos} < {s.hi})" for s in merge_spans(spans)]
        return " OR ".join(parts) if parts else "FALSE"

    def bounds_sql(self, table: ChecksumTable) -> str:
        """min/max position and row count (int positions only)."""
        pos = self.position(table)
        return f"SELECT min({pos}), max({pos}), count(*) FROM {self.relation(table)}"

    def range_sums_sql(
        self, table: ChecksumTable, lo: int, width: int, spans: Sequence[Span]
    ) -> str:
        """(range index, rows, sum of row hashes) per non-empty range of width `width` from
        `lo`, over the rows in `spans`."""
        pos = self.position(table)
        narrow = not table.int_position or all(
            abs(v) < 2**62 for v in (lo, width, *spans_ends(spans))
        )
        index = self.range_index(pos, lo, width, narrow)
        return (
            f"SELECT {index} AS r, count(*) AS n, sum({self.hash60(self.row_text(table))}) AS h "
            f"FROM {self.relation(table)} WHERE {self.where(table, spans)} GROUP BY 1"
        )

    def rows_sql(self, table: ChecksumTable, spans: Sequence[Span]) -> str:
        """(canonical key parts..., md5 of the row text) of every row in `spans`."""
        keys = ", ".join(self.key_canon(table))
        return (
            f"SELECT {keys}, md5({self.row_text(table)}) FROM {self.relation(table)} "
            f"WHERE {self.where(table, spans)}"
        )

    def column_hashes_sql(
        self, table: ChecksumTable, spans: Sequence[Span], keys: Sequence[str]
    ) -> str:
        """(canonical key parts..., md5 of each column's item...) of the rows in `spans`
        whose key text (`key_text`) is one of `keys`."""
        parts = ", ".join(self.key_canon(table))
        hashes = ", ".join(
            f"md5({self.item(self.quote_ident(c.name), c.type)})" for c in table.columns
        )
        wanted = ", ".join(self.quote_literal(k) for k in keys)
        return (
            f"SELECT {parts}, {hashes} FROM {self.relation(table)} "
            f"WHERE ({self.where(table, spans)}) AND {self.key_text(table)} IN ({wanted})"
        )


# --------------------------------------------------------------------------------------------
# PostgreSQL's canonical values
# --------------------------------------------------------------------------------------------


def float_shortest_rule(text: str, int_cast: Callable[[str], str], minus: str) -> str:
    """SQL (PostgreSQL, DuckDB, Snowflake alike) turning the shortest round-trip text `text`
    of a finite non-zero float (``-1.5e-05``, ``123456.0``, ``1e+16``) into
    ``<sign><digits>e<exp>`` (value ``0.<digits> * 10^(exp+1)``). `minus`: SQL true when the
    value is negative. `text` is evaluated several times: pass a cheap expression."""
    mant = f"split_part({text}, 'e', 1)"
    exp = f"(CASE WHEN position('e' IN {text}) > 0 THEN {int_cast(f'split_part({text}, {chr(39)}e{chr(39)}, 2)')} ELSE 0 END)"  # noqa: E501
    unsigned = f"replace({mant}, '-', '')"
    whole = f"split_part({unsigned}, '.', 1)"
    digits = f"({whole} || split_part({unsigned}, '.', 2))"
    zeros = f"(length({digits}) - length(ltrim({digits}, '0')))"
    exponent = f"({exp} + length({whole}) - {zeros} - 1)"
    sign = f"CASE WHEN {minus} THEN '-' ELSE '' END"
    return f"({sign} || rtrim(ltrim({digits}, '0'), '0') || 'e' || CAST({exponent} AS VARCHAR))"


def pg_canonical(x: str, t: ColumnType) -> str:
    """PostgreSQL: the canonical text of value `x` of type `t` (NULL for NULL). Assumes
    `EXPORT_SESSION_SETTINGS` (extra_float_digits 3: shortest float text)."""
    logical = t.logical
    if logical == "date":
        return f"CASE WHEN isfinite({x}) THEN ({x} - DATE '1970-01-01')::text ELSE {x}::text END"
    if logical in ("timestamp", "timestamptz"):
        return (
            f"CASE WHEN isfinite({x}) THEN (EXTRACT(EPOCH FROM {x}) * 1000000)::int8::text "
            f"ELSE {x}::text END"
        )
    if logical == "time":
        return f"(EXTRACT(EPOCH FROM {x}) * 1000000)::int8::text"
    if logical == "timetz":
        return (
            f"((EXTRACT(HOUR FROM {x}) * 3600 + EXTRACT(MINUTE FROM {x}) * 60) * 1000000 "
            f"+ EXTRACT(MICROSECONDS FROM {x}))::int8::text || '@' "
            f"|| EXTRACT(TIMEZONE FROM {x})::int8::text"
        )
    if logical == "interval":
        return (
            f"(EXTRACT(YEAR FROM {x}) * 12 + EXTRACT(MONTH FROM {x}))::text || '|' "
            f"|| EXTRACT(DAY FROM {x})::text || '|' || ((EXTRACT(HOUR FROM {x}) * 3600 "
            f"+ EXTRACT(MINUTE FROM {x}) * 60) * 1000000 + EXTRACT(MICROSECONDS FROM {x}))::text"
        )
    if logical == "bytes":
        return f"encode({x}, 'hex')"
    if t.pg_type == "money":
        return f"{x}::numeric::text"
    if logical in ("bool", "int16", "int32", "int64"):
        return f"{x}::text"
    if logical in ("float32", "float64"):
        text = f"{x}::text"
        rule = float_shortest_rule(text, lambda s: f"({s})::int", f"{x} < 0")
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = 'NaN' THEN 'NaN' "
            f"WHEN {x} = 'Infinity' THEN 'Infinity' WHEN {x} = '-Infinity' THEN '-Infinity' "
            f"WHEN {x} = 0 THEN CASE WHEN {text} LIKE '-%' THEN '-0' ELSE '0' END "
            f"ELSE {rule} END"
        )
    if logical == "json" and t.pg_type.endswith("[]"):
        return f"to_json({x})::text"
    if logical == "array":
        assert t.element is not None
        inner = pg_canonical("e", t.element)
        return (
            f"CASE WHEN {x} IS NULL THEN NULL ELSE cardinality({x})::text || ':' || "
            f"COALESCE((SELECT string_agg(COALESCE(md5({inner}), 'null'), ',' ORDER BY n) "
            f"FROM unnest({x}) WITH ORDINALITY AS u(e, n)), '') END"
        )
    # The output text (concat() keeps char(n) padding and inet's own spelling); num_nonnulls,
    # not IS NULL: a composite whose fields are all NULL "IS NULL" but is a value.
    return f"CASE WHEN num_nonnulls({x}) = 0 THEN NULL ELSE concat({x}) END"


def _pg_hash(bits: int) -> Callable[[str], str]:
    digits = bits // 4
    return lambda text: f"('x' || substr(md5({text}), 1, {digits}))::bit({bits})::int8"


PG_SQL = ChecksumSql(
    quote_ident=POSTGRES.quote_ident,
    quote_literal=POSTGRES.quote_string,
    canonical=pg_canonical,
    hash60=_pg_hash(60),
    hash32=_pg_hash(32),
    length=lambda text: f"length({text})",
    int_text=lambda expr: f"({expr})::text",
    relation=lambda table: table.source_relation,
    range_index=lambda pos, lo, width, narrow: (
        f"((({pos})::int8 - ({lo})) / {width})"
        if narrow
        else f"floor((({pos})::numeric - ({lo})) / {width})"
    ),
)
"""PostgreSQL's checksum queries."""


# --------------------------------------------------------------------------------------------
# Running them under a snapshot
# --------------------------------------------------------------------------------------------


class SourceChecksums:
    """A read-only REPEATABLE READ session on the source that imported `snapshot` (exported by
    `VerifySlot`): every query sees exactly the data as of the slot's consistent point.
    Use as a context manager."""

    def __init__(self, dsn: str, snapshot: str | None) -> None:
        self.con = connect(dsn, application_name="clinipipe-verify")
        self.con.autocommit = False
        self.con.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = self.con.cursor()
        try:
            if snapshot is not None:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            for setting in EXPORT_SESSION_SETTINGS:
                cur.execute(setting)
            # Range sums group by range index: enough memory to hash, not sort on disk.
            cur.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        except psycopg2.Error as exc:
            self.con.close()
            raise SourceError(f"cannot read the source under the verify snapshot: "
                              f"{mask_dsn(first_line(exc))}") from None  # fmt: skip

    def __enter__(self) -> SourceChecksums:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.con.closed:
            with contextlib.suppress(psycopg2.Error):
                self.con.rollback()
            self.con.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            with self.con.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except psycopg2.Error as exc:
            raise SourceError(f"verify query failed on the source: {first_line(exc)}") from None

    def table(self, schema: str, name: str, spec_name: str) -> ChecksumTable:
        from clinipipe.source.catalog import introspect_table

        return ChecksumTable.of(introspect_table(self.con, schema, name), spec_name)

    def bounds(self, table: ChecksumTable) -> tuple[int | None, int | None, int]:
        lo, hi, n = self.query(PG_SQL.bounds_sql(table))[0]
        return lo, hi, int(n)

    def range_sums(
        self, table: ChecksumTable, lo: int, width: int, spans: Sequence[Span]
    ) -> dict[int, tuple[int, int]]:
        sql = PG_SQL.range_sums_sql(table, lo, width, spans)
        return {int(r): (int(n), int(h)) for r, n, h in self.query(sql)}

    def rows(
        self, table: ChecksumTable, spans: Sequence[Span]
    ) -> dict[tuple[str | None, ...], str]:
        k = len(table.key)
        return {tuple(r[:k]): r[k] for r in self.query(PG_SQL.rows_sql(table, spans))}

    def column_hashes(
        self, table: ChecksumTable, spans: Sequence[Span], keys: Sequence[str]
    ) -> dict[tuple[str | None, ...], tuple[str, ...]]:
        k = len(table.key)
        sql = PG_SQL.column_hashes_sql(table, spans, keys)
        return {tuple(r[:k]): tuple(r[k:]) for r in self.query(sql)}

    def canonical_keys(
        self, table: ChecksumTable, texts: Sequence[Sequence[str | None]]
    ) -> list[tuple[str | None, ...]]:
        """The canonical key parts of keys given as their output texts (pgoutput's)."""
        if not texts:
            return []
        cols = table.key_columns
        arrays = [[t[i] for t in texts] for i in range(len(cols))]
        names = ", ".join(f"k{i}" for i in range(len(cols)))
        exprs = ", ".join(
            pg_canonical(f"(u.k{i})::{c.type.pg_type}", c.type) for i, c in enumerate(cols)
        )
        unnest = ", ".join("%s::text[]" for _ in cols)
        rows = self.query(f"SELECT {exprs} FROM unnest({unnest}) AS u({names})", arrays)
        return [tuple(r) for r in rows]


# --------------------------------------------------------------------------------------------
# The changes between two positions
# --------------------------------------------------------------------------------------------


@dataclass
class ChangedKeys:
    """Per source table (schema, name): the keys touched (their columns' output text, in key
    order) and whether the table was truncated; `transactions` read, `last_lsn` reached."""

    keys: dict[tuple[str, str], set[tuple[str | None, ...]]] = field(default_factory=dict)
    truncated: set[tuple[str, str]] = field(default_factory=set)
    transactions: int = 0

    def add(self, changes: TableChanges) -> None:
        """Note the keys of `changes` (through its Arrow form: no per-value objects kept)."""
        relation = changes.relation
        where = (relation.schema, relation.name)
        rows = changes.to_arrow()
        ops = rows.column("_op").to_pylist()
        if "T" in ops:
            self.truncated.add(where)
        names = [c for c, flag in zip(relation.columns, relation.key_flags, strict=True) if flag]
        found = self.keys.setdefault(where, set())
        parts = [rows.column(n).to_pylist() for n in names]
        found.update(
            tuple(_text(v) for v in key) for op, *key in zip(ops, *parts, strict=True) if op != "T"
        )


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    return str(value)


def _collect(decoder: Decoder, payloads: Iterable[tuple[bytes, int]], until: int,
             found: ChangedKeys, *, above: int = 0) -> bool:  # fmt: skip
    """Decode `payloads` ((message, lsn) in stream order) into `found`, keeping transactions
    whose end LSN is in (`above`, `until`]; True once the stream passed `until`."""
    for payload, _lsn in payloads:
        message = decoder.decode(payload)
        if isinstance(message, Commit):
            pending = decoder.take()
            if above < message.end_lsn <= until or message.commit_lsn <= until < message.end_lsn:
                found.transactions += 1
                for item in pending:
                    if isinstance(item, TableChanges):
                        found.add(item)
            if message.end_lsn >= until:
                return True
        elif (
            isinstance(message, LogicalMessage)
            and not message.transactional
            and message.lsn >= until
        ):
            return True
    return False


class VerifySlot:
    """A TEMPORARY logical replication slot (pgoutput) created for one verify run, with its
    exported snapshot. The snapshot stays valid while the connection is idle: import it
    (`snapshot`) before calling `changed_keys`, which starts streaming on this connection.
    The slot disappears with the connection (`close`, or the process dying): nothing to
    clean up after a crash."""

    def __init__(self, dsn: str, publication: str) -> None:
        self.publication = publication
        try:
            self.con = psycopg2.connect(
                dsn,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
                application_name="clinipipe-verify-slot",
                connect_timeout=15,
                options=STREAM_SESSION_OPTIONS,
            )
        except psycopg2.Error as exc:
            reason = mask_dsn(first_line(exc))
            raise SourceError(
                f"cannot open a replication connection for verify: {reason}. "
                + (tls_hint(reason) or "The role needs the REPLICATION attribute.")
            ) from None
        self.slot = f"clinipipe_verify_{self.con.get_backend_pid()}_{int(time.time())}"
        option = "(SNAPSHOT 'export')" if self.con.server_version >= 150000 else "EXPORT_SNAPSHOT"
        try:
            cur = self.con.cursor()
            cur.execute(
                f"CREATE_REPLICATION_SLOT {POSTGRES.quote_ident(self.slot)} TEMPORARY "
                f"LOGICAL pgoutput {option}"
            )
            row = cur.fetchone()
            assert row is not None
        except psycopg2.Error as exc:
            self.close()
            raise SourceError(f"cannot create a temporary replication slot for verify: "
                              f"{first_line(exc)}") from None  # fmt: skip
        self.cursor = cur
        self.consistent_point = str(row[1])
        self.snapshot = str(row[2])

    def close(self) -> None:
        if not self.con.closed:
            self.con.close()

    def __enter__(self) -> VerifySlot:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def changed_keys(self, until: int, *, timeout: float = 60.0) -> ChangedKeys:
        """The keys touched by transactions committed after the consistent point up to LSN
        `until` (their end LSN at most `until`). Ends the snapshot. Raises `SourceError` when
        the stream does not reach `until` within `timeout` seconds."""
        from clinipipe.source.pgoutput import lsn_to_int

        found = ChangedKeys()
        start = lsn_to_int(self.consistent_point)
        if until <= start:
            return found
        cur = self.cursor
        try:
            cur.start_replication(
                slot_name=self.slot, decode=False, start_lsn=self.consistent_point,
                options={"proto_version": "1", "publication_names": self.publication,
                         "messages": "true"},
            )  # fmt: skip
            decoder = Decoder()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = cur.read_message()
                if message is None:
                    if int(cur.wal_end or 0) >= until and not decoder.pending:
                        return found
                    cur.send_feedback(reply=True)
                    select.select([cur], [], [], 0.2)
                    continue
                if _collect(decoder, [(bytes(message.payload), message.data_start)], until,
                            found):  # fmt: skip
                    return found
        except psycopg2.Error as exc:
            raise SourceError(f"reading the verify slot failed: {first_line(exc)}") from None
        raise SourceError(
            f"the source's stream did not reach {lsn_to_str(until)} within {timeout:.0f} s"
        )


def peek_changed_keys(dsn: str, slot: str, publication: str, above: int, upto: str) -> ChangedKeys:
    """The keys touched by transactions of `slot` (not consumed: a peek) whose end LSN is in
    (`above`, `upto`]: what a snapshot at `upto` holds that a warehouse at checkpoint `above`
    does not. The slot must not be in use (`cdc start` not running)."""
    from clinipipe.source.pgoutput import lsn_to_int

    found = ChangedKeys()
    con = connect(dsn, application_name="clinipipe-verify-peek")
    try:
        with con.cursor() as cur:
            for setting in EXPORT_SESSION_SETTINGS:
                cur.execute(setting)
            cur.execute("SET lc_monetary = 'C'")
            cur.execute(
                "SELECT data, lsn FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL, "
                "'proto_version', '1', 'publication_names', %s)",
                (slot, upto, publication),
            )
            rows = ((bytes(data), 0) for data, _ in cur.fetchall())
            _collect(Decoder(), rows, lsn_to_int(upto), found, above=above)
    except psycopg2.Error as exc:
        raise SourceError(
            f"cannot read the changes of slot {slot!r} between the warehouse's checkpoint and "
            f"the verify snapshot: {first_line(exc)}"
        ) from None
    finally:
        con.close()
    return found
