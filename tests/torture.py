"""Randomized torture test of backfill + CDC (issue 10): a foreign schema, a hostile workload,
DDL rounds and ``kill -9`` of ``cdc start``, then an exact row-by-row comparison.

Everything random comes from one seed: the schema (`TortureSchema.generate`), the workload and
the DDL (`Workload`), and when `cdc start` is killed (`run_torture`). Only the interleaving of
the CDC process with the workload depends on timing; the source's final state does not.

Guarantee checked: after every round (workload + DDL while `cdc start` runs and is killed with
SIGKILL 1-3 times, then ``cdc start --until-caught-up``), every row of every spec table in the
source equals the row of the same key in ``raw.<table>``, column by column, for every column the
source table has now (`compare`). A mismatch is reported as table, key, column, source value
and warehouse value (`Mismatch`).

Normalisations made by the comparison, each deliberate (both sides are turned into the same
canonical text in SQL, or in Python for floats and arrays; nothing else is normalised):

* integers, ``numeric`` (unbounded: text in the warehouse), uuid, jsonb: their text. jsonb
  is compared as PostgreSQL's normalised text against the warehouse's JSON text, exactly.
* ``numeric(p,s)``: PostgreSQL's text against DuckDB's DECIMAL text, with DuckDB's missing
  leading zero (``.5``) put back (display only, docs/TYPE_MAPPING.md).
* ``real``/``double precision``: IEEE-754 bits; every NaN compares equal to every NaN
  (PostgreSQL's text drops the NaN's sign and payload); ``-0`` compares equal to ``0`` unless
  `TortureOptions.strict_zero_sign` (DuckDB's float compression may store ``-0`` as ``0``:
  a documented deviation, docs/TYPE_MAPPING.md).
* ``boolean``: ``true``/``false``.
* ``date``: days since 1970-01-01 (``infinity``/``-infinity`` as text), so BC dates compare
  whatever each engine prints.
* ``timestamp``/``timestamptz``: epoch microseconds (timestamptz: the instant, i.e. in UTC;
  neither side keeps the offset it was written with).
* ``interval``: months|days|microseconds as stored (not justified).
* ``bytea``: lower-case hex; text and bytea longer than 64 characters/bytes as length plus
  md5 (of the UTF-8 text, or of the hex), so TOASTed values print short in a report.
* arrays: the Python lists both drivers return (NULL elements as None; ``[]`` differs from
  NULL).
* tables without a primary key (append-only): the sorted multisets of whole rows.

Columns dropped at the source are kept in the raw table (documented behaviour) and are not
compared; a source column missing from the raw table is a mismatch (``<missing column>``), and
so is a raw column whose type cannot hold the source column's values.

Cases the product refuses by design (columns differing only by case, one table name in two
schemas) are generated only under explicit options (`TortureOptions.case_twins`,
``same_name_two_schemas``); the rest (`TortureOptions`) is on by default.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import psycopg2
import psycopg2.extras

PUBLICATION = "torture_pub"
LONG = 64  # text/bytea longer than this is compared and printed as length + md5

# --------------------------------------------------------------------------------------------
# Options and schema model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TortureOptions:
    """What the generator may produce. The defaults are what is supposed to work today."""

    min_tables: int = 3
    max_tables: int = 6
    schema: str = "Clinic"
    """Source schema of the generated tables (mixed case: quoted everywhere)."""
    toast_bytes: tuple[int, int] = (9_000, 20_000)
    """Length range of TOASTed text (hex characters) and bytea (bytes): incompressible."""
    large_tx_rows: int = 20_000
    """Rows of an occasional large transaction."""
    large_tx_probability: float = 0.03
    toast_key_updates: bool = True
    """Key updates and key swaps of rows holding TOASTed values (issue 10, defect 1)."""
    volatile_defaults: bool = True
    """ADD COLUMN ... DEFAULT random()/clock_timestamp() (rewrites the table, no row changes in
    the stream; finding F2, fixed in b6428d0; on an append-only table: finding F6, open)."""
    readd_dropped: bool = True
    """Re-add a dropped column name, or rename a column to it (the raw table keeps dropped
    columns: findings F3, F4 fixed in b6428d0; F7, a rename to a dropped name with older
    changes still in the stream, open)."""
    case_only_renames: bool = True
    """RENAME "Col" TO "col" (no other column of that name in any case)."""
    key_widening: bool = True
    """ALTER a key column int -> bigint."""
    no_pk_table: bool = True
    """Also a table without a primary key, ``append_only: true`` with REPLICA IDENTITY FULL:
    it only gets inserts and truncates (an update or delete would pause it, by design)."""
    case_twins: bool = False
    """A table with columns that differ only by case, "Value" and value (defect 5). Refused
    by design since b6428d0: backfill fails with a clear message (a setup error here)."""
    same_name_two_schemas: bool = False
    """The same table name in two schemas (defect 4). Refused by design since b6428d0:
    `deploy` exits 2 at validation (a setup error here)."""
    strict_zero_sign: bool = False
    """Compare -0 and 0 as different doubles (their bits). The default normalises -0 to 0 on
    both sides, the one float normalisation: DuckDB's float compression may store -0 as 0
    (finding F1, documented in docs/TYPE_MAPPING.md)."""


@dataclass
class Col:
    name: str
    kind: str
    """Generator kind: int2 int4 int8 numeric decimal float8 real text toast varchar bool date
    ts tstz uuid jsonb int_array text_array interval bytea toast_bytea."""
    pg_type: str
    key: bool = False
    radix: int = 0
    """Key columns after the first: the mixed-radix digit this column holds."""

    @property
    def toast(self) -> bool:
        return self.kind in ("toast", "toast_bytea")


@dataclass
class Table:
    schema: str
    name: str
    cols: list[Col]
    has_pk: bool = True
    next_id: int = 1
    dropped: list[Col] = field(default_factory=list)
    renames: int = 0

    @property
    def qname(self) -> str:
        return f"{q(self.schema)}.{q(self.name)}"

    @property
    def keys(self) -> list[Col]:
        return [c for c in self.cols if c.key]

    @property
    def values(self) -> list[Col]:
        return [c for c in self.cols if not c.key]

    def col(self, name: str) -> Col:
        return next(c for c in self.cols if c.name == name)

    def taken(self, name: str) -> bool:
        """A current or dropped (still in the raw table) column has this name in any case."""
        return name.lower() in {c.name.lower() for c in [*self.cols, *self.dropped]}


def q(name: str) -> str:
    """A PostgreSQL / DuckDB quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


PG_TYPES = {
    "int2": "smallint", "int4": "integer", "int8": "bigint", "numeric": "numeric",
    "decimal": "numeric(8,2)", "float8": "double precision", "real": "real", "text": "text",
    "toast": "text", "varchar": "character varying(10)", "bool": "boolean", "date": "date",
    "ts": "timestamp without time zone", "tstz": "timestamp with time zone", "uuid": "uuid",
    "jsonb": "jsonb", "int_array": "integer[]", "text_array": "text[]",
    "interval": "interval", "bytea": "bytea", "toast_bytea": "bytea",
}  # fmt: skip


def _c(name: str, kind: str, key: bool = False, radix: int = 0) -> Col:
    return Col(name, kind, PG_TYPES[kind], key, radix)


# Table templates: (name, key columns, value columns). Each run takes a seeded subset of the
# tables and of their optional value columns (those after the first four are optional).
TEMPLATES: list[tuple[str, list[Col], list[Col]]] = [
    ("Order", [_c("OrderId", "int4", True), _c("line", "int2", True, 7)],
     [_c("Patient Name", "text"), _c("amount", "decimal"), _c("note", "toast"),
      _c("status", "varchar"), _c("qty", "int4"), _c("flags", "bool"), _c("placed", "tstz"),
      _c("select", "text")]),
    ("select", [_c("code", "text", True)],
     [_c("from", "int4"), _c("label", "varchar"), _c("vals", "int_array"),
      _c("tags", "text_array"), _c("doc", "jsonb"), _c("score", "float8"),
      _c("ratio", "numeric")]),
    ("MixedCase", [_c("site_id", "int4", True), _c("MRN", "varchar", True, 5),
                   _c("seq", "int8", True, 3)],
     [_c("MixedCase", "text"), _c("Col", "int4"), _c("blob", "toast_bytea"), _c("born", "date"),
      _c("seen", "ts"), _c("gap", "interval"), _c("u", "uuid")]),
    ("notes", [_c("note_id", "int4", True)],
     [_c("body", "toast"), _c("small", "int2"), _c("attachment", "toast_bytea"),
      _c("Patient Name", "text"), _c("written", "tstz"), _c("doc", "jsonb"), _c("raw", "bytea")]),
    ("measure", [_c("id", "uuid", True)],
     [_c("f8", "float8"), _c("r", "real"), _c("num", "numeric"), _c("i8", "int8"),
      _c("d", "date"), _c("tags", "text_array"), _c("User", "text")]),
    ("Visit", [_c("visit_id", "int8", True), _c("kind", "text", True, 4)],
     [_c("user", "text"), _c("group", "int4"), _c("cost", "decimal"), _c("summary", "toast"),
      _c("at", "ts"), _c("ok", "bool")]),
]  # fmt: skip


@dataclass
class TortureSchema:
    """The generated source tables."""

    tables: list[Table]
    options: TortureOptions

    @classmethod
    def generate(cls, seed: int, options: TortureOptions = TortureOptions()) -> TortureSchema:
        rng = random.Random(f"schema-{seed}")
        count = rng.randint(options.min_tables, options.max_tables)
        # Always one table with TOASTed text and a key that gets updated.
        chosen = [TEMPLATES[0], *rng.sample(TEMPLATES[1:], count - 1)]
        tables = []
        for name, keys, values in chosen:
            optional = [c for c in values[4:] if rng.random() < 0.7]
            cols = [Col(**vars(c)) for c in [*keys, *values[:4], *optional]]
            tables.append(Table(options.schema, name, cols))
        if options.no_pk_table:
            tables.append(Table(options.schema, "event_log", [
                _c("at", "tstz"), _c("what", "text"), _c("n", "int4"), _c("payload", "toast")],
                has_pk=False))  # fmt: skip
        if options.case_twins:
            tables.append(Table(options.schema, "twins", [
                _c("id", "int4", True), _c("Value", "int4"), _c("value", "text"),
                _c("VALUE", "float8")]))  # fmt: skip
        if options.same_name_two_schemas:
            tables.append(
                Table(  # "Order" again, in another schema, with other columns
                    "other",
                    tables[0].name,
                    [_c("note_id", "int4", True), _c("body", "toast"), _c("tag", "text")],
                )
            )
        return cls(tables, options)

    def create_sql(self) -> list[str]:
        statements = []
        for schema in sorted({t.schema for t in self.tables}):
            statements.append(f"CREATE SCHEMA IF NOT EXISTS {q(schema)}")
        for t in self.tables:
            cols = ", ".join(f"{q(c.name)} {c.pg_type}" for c in t.cols)
            pk = f", PRIMARY KEY ({', '.join(q(c.name) for c in t.keys)})" if t.has_pk else ""
            statements.append(f"CREATE TABLE {t.qname} ({cols}{pk})")
            if not t.has_pk:
                statements.append(f"ALTER TABLE {t.qname} REPLICA IDENTITY FULL")
            for c in t.cols:  # out of line at once: TOAST markers on every later update
                if c.toast:
                    statements.append(
                        f"ALTER TABLE {t.qname} ALTER COLUMN {q(c.name)} SET STORAGE EXTERNAL"
                    )
        return statements

    def spec_text(self, warehouse: Path, slot: str) -> str:
        """A clinipipe spec replicating every generated table into `warehouse` through
        replication slot `slot` (slot names are global to the PostgreSQL cluster)."""
        lines = [
            "version: 1", "name: torture", "source:", "  dsn: ${CLINIPIPE_SOURCE_DSN}",
            f"  publication: {PUBLICATION}", f"  slot: {slot}", "  tables:",
        ]  # fmt: skip
        for t in self.tables:
            lines.append(f"    - name: {json.dumps(t.name)}")
            lines.append(f"      schema: {json.dumps(t.schema)}")
            if t.has_pk:
                lines.append(f"      primary_key: {json.dumps([c.name for c in t.keys])}")
            else:
                lines.append("      append_only: true")
        lines += ["target:", "  type: duckdb", f"  path: {json.dumps(str(warehouse))}", ""]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Values (text forms cast by PostgreSQL: `%s::<type>`)
# --------------------------------------------------------------------------------------------

_TEXTS = ["", " ", "a", "O'Brien, \"Jr\"", "line1\nline2\r\n", "tab\there", "back\\slash",
          "\\.", "NULL", "null", "é Ω 漢字 🙂", "\ufeffbom", "comma,separated", "{braces}",
          "  padded  ", "\u2028sep", "x" * 63, "Ünïcödé"]  # fmt: skip
_ELEMENTS = ["", "a", "a,b", 'q"uote', "back\\slash", "NULL", "{x}", " sp ", "é🙂"]


def _toast_text(rng: random.Random, options: TortureOptions) -> str:
    n = rng.randint(*options.toast_bytes)
    return f"{rng.getrandbits(4 * n):0{n}x}"[:n]


def _bytes_literal(data: bytes) -> str:
    return "\\x" + data.hex()


def _array_literal(items: Sequence[str | None]) -> str:
    def one(x: str | None) -> str:
        if x is None:
            return "NULL"
        return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "{" + ",".join(one(x) for x in items) + "}"


def _int_range(pg_type: str) -> tuple[int, int]:
    bits = {"smallint": 16, "integer": 32, "bigint": 64}[pg_type]
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _decimal(rng: random.Random, pg_type: str) -> str:
    p, s = (int(x) for x in pg_type[pg_type.index("(") + 1 : -1].split(","))
    whole = rng.choice([0, 1, rng.randrange(10 ** (p - s))])
    frac = rng.randrange(10**s)
    sign = rng.choice(["", "-"])
    return f"{sign}{whole}.{frac:0{s}d}" if s else f"{sign}{whole}"


def random_value(col: Col, rng: random.Random, options: TortureOptions) -> str | None:
    """A text form of a random value of `col` (None: SQL NULL, about one in seven)."""
    if not col.key and rng.random() < 0.14:
        return None
    kind, t = col.kind, col.pg_type
    if kind in ("int2", "int4", "int8"):
        lo, hi = _int_range(t)
        return str(rng.choice([lo, hi, 0, -1, 1, rng.randint(lo, hi), rng.randint(-1000, 1000)]))
    if kind == "numeric":
        return rng.choice(["NaN", "Infinity", "-Infinity", "0", "-0.000", "1.50", "1e-20",
                           f"{rng.randint(-(10**30), 10**30)}.{rng.randrange(10**12):012d}",
                           str(rng.randint(-(10**40), 10**40))])  # fmt: skip
    if kind == "decimal":
        return _decimal(rng, t)
    if kind in ("float8", "real"):
        special = ["NaN", "Infinity", "-Infinity", "-0", "0", "0.1"]
        if kind == "float8":
            special += ["5e-324", "1.7976931348623157e308", "2.2250738585072014e-308"]
            bits = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0]
        else:
            special += ["1e-45", "3.4028235e+38"]
            bits = struct.unpack(">f", rng.getrandbits(32).to_bytes(4, "big"))[0]
        if math.isnan(bits):
            bits = 1.5
        return rng.choice([*special, repr(bits), repr(rng.uniform(-1e6, 1e6))])
    if kind == "text":
        return rng.choice(_TEXTS) if rng.random() < 0.7 else f"t{rng.getrandbits(40):x}"
    if kind == "toast":
        return _toast_text(rng, options) if rng.random() < 0.8 else rng.choice(_TEXTS)
    if kind == "varchar":
        n = int(t[t.index("(") + 1 : -1])
        return rng.choice(["", "x" * n, "é" * n, f"v{rng.getrandbits(20):x}"[:n], "a'b"[:n]])
    if kind == "bool":
        return rng.choice(["t", "f"])
    if kind == "date":
        return rng.choice(["2024-02-29", "1970-01-01", "0044-03-15 BC", "infinity", "-infinity",
                           f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-"
                           f"{rng.randint(1, 28):02d}"])  # fmt: skip
    if kind in ("ts", "tstz"):
        base = (f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
                f".{rng.randrange(10**6):06d}")  # fmt: skip
        if kind == "tstz":
            base += rng.choice(["+00", "+05:45", "-09:30", "+14", "Z"])
        return rng.choice([base, base, base, "infinity", "-infinity", "2000-01-01 00:00:00 BC"])
    if kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == "jsonb":
        doc: Any = rng.choice([
            {"b": 1, "a": [1, 2.50, None, "x"], "nested": {"k": "é\n\"q\""}},
            [], {}, "just a string", 12345678901234567890, 1.5e300, True, None,
            {"name": rng.choice(_TEXTS), "n": rng.randint(-9, 9), "f": 0.1},
        ])  # fmt: skip
        return json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    if kind == "int_array":
        lo, hi = _int_range("integer")
        items = [rng.choice([None, lo, hi, 0, rng.randint(-99, 99)])
                 for _ in range(rng.randint(0, 6))]  # fmt: skip
        return _array_literal([None if x is None else str(x) for x in items])
    if kind == "text_array":
        return _array_literal([rng.choice([*_ELEMENTS, None]) for _ in range(rng.randint(0, 5))])
    if kind == "interval":
        return (f"{rng.randint(-600, 600)} months {rng.randint(-1000, 1000)} days "
                f"{rng.randint(-(10**11), 10**11)} microseconds")  # fmt: skip
    if kind == "bytea":
        return _bytes_literal(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 24))))
    if kind == "toast_bytea":
        if rng.random() < 0.2:
            return _bytes_literal(b"\x00small\xff")
        n = rng.randint(*options.toast_bytes)
        return _bytes_literal(rng.getrandbits(8 * n).to_bytes(n, "big"))
    raise AssertionError(kind)


def key_values(table: Table, n: int) -> list[str]:
    """The key of row number `n` of `table` (a bijection n -> key, text forms)."""
    digits: list[int] = []
    rest = n
    for col in table.keys[1:]:
        digits.append(rest % col.radix)
        rest //= col.radix
    values = [_key_text(table.keys[0], rest)]
    values += [_key_text(c, d) for c, d in zip(table.keys[1:], digits, strict=True)]
    return values


_KEY_SUFFIXES = ["", " ", "é", "'q", '"dq', ",c", "\\b", "Ω-ü", " trail ", "NULL"]


def _key_text(col: Col, d: int) -> str:
    if col.kind in ("int2", "int4", "int8"):
        # After an int -> bigint widening, new keys need the new range.
        return str(d + (3_000_000_000 if col.pg_type == "bigint" and col.kind != "int8" else 0))
    if col.kind == "text":
        return f"{d:07d}{_KEY_SUFFIXES[d % len(_KEY_SUFFIXES)]}"
    if col.kind == "varchar":
        return f"M{d:05d}"
    if col.kind == "uuid":
        return str(uuid.UUID(int=(d * 0x9E3779B97F4A7C15 + 12345) % 2**128))
    raise AssertionError(col.kind)


# --------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------


@dataclass
class WorkloadStats:
    transactions: int = 0
    rolled_back: int = 0
    changes: int = 0
    """Row changes in committed transactions (inserted + updated + deleted + truncated)."""
    ddl: int = 0
    ddl_log: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)


_LITERAL = re.compile(r"'(?:[^']|'')*'")


def _shorten(match: re.Match[str]) -> str:
    text = match.group(0)
    if len(text) <= 80:
        return text
    return f"'<{len(text) - 2} chars md5 {hashlib.md5(text.encode()).hexdigest()[:12]}>'"


class Workload:
    """Random transactions and DDL on the generated schema, reproducible from the seed.

    Rows are chosen by position in key order from the source itself, so the sequence of
    statements depends only on the seed (volatile defaults aside).
    """

    def __init__(self, dsn: str, schema: TortureSchema, seed: int) -> None:
        self.schema = schema
        self.options = schema.options
        self.rng = random.Random(f"workload-{seed}")
        self.stats = WorkloadStats()
        self.con = psycopg2.connect(dsn)
        self.con.autocommit = False
        with self.con.cursor() as cur:
            cur.execute("SET TIME ZONE 'Asia/Kathmandu'")  # nothing may depend on it
            cur.execute("SET extra_float_digits = 3")
        self.con.commit()
        self.log: list[str] | None = None  # set to a list to record every statement
        self.chain: tuple[Table, list[str]] | None = None

    def close(self) -> None:
        self.con.close()

    # --- helpers ---

    def _exec(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> int:
        if self.log is not None:  # long literals (TOASTed values) shortened to a digest
            self.log.append(_LITERAL.sub(_shorten, cur.mogrify(sql, params).decode()))
        cur.execute(sql, params)
        return max(cur.rowcount, 0)

    def _where(self, t: Table) -> str:
        return " AND ".join(f"{q(c.name)} = %s::{c.pg_type}" for c in t.keys)

    def _pick(self, cur: Any, t: Table, k: int, where: str = "") -> list[list[str]]:
        """Up to `k` existing keys of `t` (text forms), chosen at random positions."""
        cur.execute(f"SELECT count(*) FROM {t.qname} {where}")
        total = cur.fetchone()[0]
        if not total:
            return []
        cols = ", ".join(f"{q(c.name)}::text" for c in t.keys)
        order = ", ".join(q(c.name) for c in t.keys)
        picked = []
        for offset in sorted({self.rng.randrange(total) for _ in range(k)}):
            cur.execute(
                f"SELECT {cols} FROM {t.qname} {where} ORDER BY {order} LIMIT 1 OFFSET {offset}"
            )
            row = cur.fetchone()
            if row:
                picked.append(list(row))
        return picked

    def _new_key(self, t: Table) -> list[str]:
        n = t.next_id
        t.next_id += 1
        return key_values(t, n)

    def _row(self, t: Table, key: list[str] | None, toast: bool = True) -> list[str | None]:
        values = []
        for c in t.values:
            if c.toast and not toast:
                values.append(None if self.rng.random() < 0.5 else "small")
                continue
            values.append(random_value(c, self.rng, self.options))
        return [*(key or []), *values]

    def _insert(self, cur: Any, t: Table, rows: int, toast: bool = True) -> int:
        cols = [*t.keys, *t.values] if t.has_pk else t.values
        names = ", ".join(q(c.name) for c in cols)
        template = "(" + ", ".join(f"%s::{c.pg_type}" for c in cols) + ")"
        data = [self._row(t, self._new_key(t) if t.has_pk else None, toast) for _ in range(rows)]
        if rows > 50:
            if self.log is not None:
                self.log.append(f"INSERT INTO {t.qname} ... {rows} rows")
            psycopg2.extras.execute_values(
                cur, f"INSERT INTO {t.qname} ({names}) VALUES %s", data, template, page_size=1000
            )
            return rows
        done = 0
        for row in data:
            done += self._exec(cur, f"INSERT INTO {t.qname} ({names}) VALUES {template}", row)
        return done

    def _set(self, t: Table, cols: list[Col]) -> tuple[str, list[str | None]]:
        parts, params = [], []
        for c in cols:
            parts.append(f"{q(c.name)} = %s::{c.pg_type}")
            params.append(random_value(c, self.rng, self.options))
        return ", ".join(parts), params

    # --- operations (each returns the number of row changes) ---

    def op_insert(self, cur: Any, t: Table) -> int:
        return self._insert(cur, t, self.rng.choice([1, 1, 2, 5, 20]))

    def op_update(self, cur: Any, t: Table, toast: bool | None = None) -> int:
        if not t.has_pk or not t.values:
            return 0
        plain = [c for c in t.values if not c.toast]
        if toast is None:
            toast = self.rng.random() < 0.25
        pool = [c for c in t.values if c.toast] if toast else plain
        if not pool:
            return 0
        cols = self.rng.sample(pool, self.rng.randint(1, min(3, len(pool))))
        done = 0
        for key in self._pick(cur, t, self.rng.choice([1, 1, 3, 8])):
            sets, params = self._set(t, cols)
            done += self._exec(cur, f"UPDATE {t.qname} SET {sets} WHERE {self._where(t)}",
                               [*params, *key])  # fmt: skip
        return done

    def op_delete(self, cur: Any, t: Table) -> int:
        if not t.has_pk:
            return 0
        done = 0
        for key in self._pick(cur, t, self.rng.choice([1, 2, 5])):
            done += self._exec(cur, f"DELETE FROM {t.qname} WHERE {self._where(t)}", key)
        return done

    def _toast_where(self, t: Table) -> str:
        toast = [c for c in t.values if c.toast]
        if not toast or not self.options.toast_key_updates or self.rng.random() < 0.3:
            return ""
        c = self.rng.choice(toast)
        length = "octet_length" if c.kind == "toast_bytea" else "length"
        return f"WHERE {length}({q(c.name)}) > 2000"

    def op_key_update(self, cur: Any, t: Table) -> int:
        """Move rows to new keys (rows with TOASTed values preferred), sometimes also setting
        another column in the same statement."""
        if not t.has_pk:
            return 0
        done = 0
        for key in self._pick(cur, t, self.rng.choice([1, 1, 2]), self._toast_where(t)):
            new = self._new_key(t)
            sets = ", ".join(f"{q(c.name)} = %s::{c.pg_type}" for c in t.keys)
            params: list[Any] = list(new)
            plain = [c for c in t.values if not c.toast]
            if plain and self.rng.random() < 0.4:
                more, extra = self._set(t, [self.rng.choice(plain)])
                sets, params = f"{sets}, {more}", [*params, *extra]
            done += self._exec(cur, f"UPDATE {t.qname} SET {sets} WHERE {self._where(t)}",
                               [*params, *key])  # fmt: skip
        return done

    def op_key_swap(self, cur: Any, t: Table) -> int:
        """Swap the keys of two rows through a temporary key, in this transaction."""
        if not t.has_pk:
            return 0
        rows = self._pick(cur, t, 2, self._toast_where(t))
        if len(rows) < 2:
            return 0
        a, b = rows[0], rows[1]
        temp = self._new_key(t)
        sets = ", ".join(f"{q(c.name)} = %s::{c.pg_type}" for c in t.keys)
        sql = f"UPDATE {t.qname} SET {sets} WHERE {self._where(t)}"
        return (self._exec(cur, sql, [*temp, *a]) + self._exec(cur, sql, [*a, *b])
                + self._exec(cur, sql, [*b, *temp]))  # fmt: skip

    def op_toast_chain(self, cur: Any, t: Table) -> int:
        """A TOASTed value changed, then the row's key, then another column (both later
        updates carry unchanged-TOAST markers that must resolve to the *new* value); the
        second half runs in this transaction or in the next one (same CDC batch, or not)."""
        toast = [c for c in t.values if c.toast]
        if not t.has_pk or not toast:
            return 0
        picked = self._pick(cur, t, 1)
        if not picked:
            return 0
        key = picked[0]
        sets, params = self._set(t, [self.rng.choice(toast)])
        done = self._exec(cur, f"UPDATE {t.qname} SET {sets} WHERE {self._where(t)}",
                          [*params, *key])  # fmt: skip
        if self.rng.random() < 0.5:
            self.chain = (t, key)
            return done
        return done + self._toast_chain_rest(cur, t, key)

    def _toast_chain_rest(self, cur: Any, t: Table, key: list[str]) -> int:
        done = 0
        if self.rng.random() < 0.7:
            new = self._new_key(t)
            sets = ", ".join(f"{q(c.name)} = %s::{c.pg_type}" for c in t.keys)
            done += self._exec(cur, f"UPDATE {t.qname} SET {sets} WHERE {self._where(t)}",
                               [*new, *key])  # fmt: skip
            key = new
        plain = [c for c in t.values if not c.toast]
        if plain:
            sets, params = self._set(t, [self.rng.choice(plain)])
            done += self._exec(cur, f"UPDATE {t.qname} SET {sets} WHERE {self._where(t)}",
                               [*params, *key])  # fmt: skip
        return done

    def op_whole_table(self, cur: Any, t: Table) -> int:
        """One UPDATE of every row (TOASTed columns untouched)."""
        plain = [c for c in t.values if not c.toast]
        if not plain:
            return 0
        sets, params = self._set(t, [self.rng.choice(plain)])
        return self._exec(cur, f"UPDATE {t.qname} SET {sets}", params)

    def op_churn(self, cur: Any, t: Table) -> int:
        """Insert, update, delete and re-insert the same key within the transaction."""
        if not t.has_pk:
            return 0
        key = self._new_key(t)
        cols = [*t.keys, *t.values]
        names = ", ".join(q(c.name) for c in cols)
        template = "(" + ", ".join(f"%s::{c.pg_type}" for c in cols) + ")"
        insert = f"INSERT INTO {t.qname} ({names}) VALUES {template}"
        done = self._exec(cur, insert, self._row(t, key))
        if t.values:
            sets, params = self._set(t, [self.rng.choice(t.values)])
            done += self._exec(cur, f"UPDATE {t.qname} SET {sets} WHERE {self._where(t)}",
                               [*params, *key])  # fmt: skip
        done += self._exec(cur, f"DELETE FROM {t.qname} WHERE {self._where(t)}", key)
        if self.rng.random() < 0.6:
            done += self._exec(cur, insert, self._row(t, key))
        return done

    def op_truncate(self, cur: Any, t: Table) -> int:
        cur.execute(f"SELECT count(*) FROM {t.qname}")
        rows = cur.fetchone()[0]
        self._exec(cur, f"TRUNCATE {t.qname}")
        return rows + self._insert(cur, t, self.rng.randint(0, 5))

    def op_large(self, cur: Any, t: Table) -> int:
        """A large transaction: many inserts, or an update/delete of most rows."""
        choice = self.rng.random()
        if choice < 0.5 or not t.has_pk:
            return self._insert(cur, t, self.options.large_tx_rows, toast=False)
        if choice < 0.8:
            return self.op_whole_table(cur, t)
        keep = self.rng.randint(0, 50)
        order = ", ".join(q(c.name) for c in t.keys)
        keys = ", ".join(q(c.name) for c in t.keys)
        return self._exec(cur, f"DELETE FROM {t.qname} WHERE ({keys}) NOT IN (SELECT {keys} "
                          f"FROM {t.qname} ORDER BY {order} LIMIT {keep})")  # fmt: skip

    OPS: ClassVar[list[tuple[str, float]]] = [
        ("op_insert", 0.30), ("op_update", 0.25), ("op_delete", 0.12), ("op_key_update", 0.10),
        ("op_key_swap", 0.06), ("op_churn", 0.08), ("op_whole_table", 0.04),
        ("op_truncate", 0.01), ("op_toast_chain", 0.06),
    ]  # fmt: skip

    def _one_op(self, cur: Any) -> tuple[str, int]:
        t = self.rng.choice(self.schema.tables)
        names, weights = zip(*self.OPS, strict=True)
        name = self.rng.choices(names, weights)[0]
        if not t.has_pk and name != "op_truncate":
            name = "op_insert"
        return name, getattr(self, name)(cur, t)

    def transaction(self) -> int:
        """One random transaction (committed, or rolled back as a whole now and then);
        returns the committed row changes."""
        done = 0
        kinds: list[str] = []
        with self.con.cursor() as cur:
            if self.chain is not None:  # the second half of an op_toast_chain
                (t, key), self.chain = self.chain, None
                done += self._toast_chain_rest(cur, t, key)
                kinds.append("toast_chain_rest")
            if self.rng.random() < self.options.large_tx_probability:
                t = self.rng.choice(self.schema.tables)
                done += self.op_large(cur, t)
                kinds.append("large")
            for _ in range(self.rng.randint(1, 6)):
                if self.rng.random() < 0.12:  # a savepoint, rolled back or released
                    self._exec(cur, "SAVEPOINT sp")
                    _, lost = self._one_op(cur)
                    if self.rng.random() < 0.7:
                        self._exec(cur, "ROLLBACK TO SAVEPOINT sp")
                        kinds.append("rollback_to_savepoint")
                    else:
                        self._exec(cur, "RELEASE SAVEPOINT sp")
                        done += lost
                    continue
                name, n = self._one_op(cur)
                kinds.append(name)
                done += n
        if self.rng.random() < 0.04:
            if self.log is not None:
                self.log.append("ROLLBACK")
            self.con.rollback()
            self.stats.rolled_back += 1
            return 0
        if self.log is not None:
            self.log.append("COMMIT")
        self.con.commit()
        self.stats.transactions += 1
        self.stats.changes += done
        for k in kinds:
            self.stats.kinds[k] = self.stats.kinds.get(k, 0) + 1
        return done

    # --- DDL ---

    def _fresh_name(self, t: Table, base: str) -> str:
        for i in range(1, 1000):
            name = f"{base}_{i}" if i > 1 else base
            if not t.taken(name):
                return name
        raise AssertionError("no free column name")

    def ddl(self) -> str:
        """One random schema change, now and then two in one transaction, sometimes with DML
        after them in the same transaction (committed); returns a description."""
        rng = self.rng
        t = rng.choice(self.schema.tables)
        kind, statements = self._ddl_plan(t)
        if rng.random() < 0.2:
            second, more = self._ddl_plan(t)
            kind, statements = f"{kind}+{second}", [*statements, *more]
        with self.con.cursor() as cur:
            for sql in statements:
                self._exec(cur, sql)
            done = 0
            if rng.random() < 0.5:  # DML after the DDL in the same transaction
                done += self.op_insert(cur, t) + self.op_update(cur, t, toast=False)
        self.con.commit()
        self.stats.ddl += 1
        self.stats.changes += done
        self.stats.kinds[f"ddl_{kind}"] = self.stats.kinds.get(f"ddl_{kind}", 0) + 1
        line = f"{kind}: {'; '.join(statements)}"
        self.stats.ddl_log.append(line)
        return line

    def _ddl_plan(self, t: Table) -> tuple[str, list[str]]:
        """A random schema change of `t` (a kind first, uniformly among those possible, then
        its details); updates the model of `t` and returns the statements."""
        o, rng = self.options, self.rng
        plans: list[tuple[str, Callable[[], list[str]]]] = []

        def add(default: str | None, kind: str, base: str) -> Callable[[], list[str]]:
            def go() -> list[str]:
                name = self._fresh_name(t, base)
                col = _c(name, kind)
                t.cols.append(col)
                clause = f" DEFAULT {default}" if default else ""
                return [f"ALTER TABLE {t.qname} ADD COLUMN {q(name)} {col.pg_type}{clause}"]

            return go

        plans.append(("add", add(None, rng.choice(["text", "int4", "jsonb", "bool", "float8"]),
                                 rng.choice(["Added", "extra", "order"]))))  # fmt: skip
        plans.append(("add_default", add(rng.choice(["42", "-7"]), "int4", "Def Int")))
        plans.append(("add_default", add("'dflt ''q'''", "text", "def_text")))
        plans.append(("add_default", add("'NaN'", "float8", "def_nan")))
        plans.append(("add_default", add("'Infinity'", "numeric", "def_inf")))
        plans.append(("add_default_tstz", add("'2024-01-02 03:04:05.678+05:30'", "tstz", "DefTs")))
        plans.append(("add_default_date", add("'0044-03-15 BC'", "date", "def_date")))
        plans.append(("add_default_jsonb", add('\'{"b": 1, "a": [1]}\'', "jsonb", "def_doc")))
        # A volatile default on a table without a primary key pauses it by design (its rows
        # cannot be matched to copy the source's values): not generated there.
        if o.volatile_defaults and t.has_pk:
            plans.append(("add_volatile", add("random()", "float8", "vol_rand")))
            plans.append(("add_volatile", add("clock_timestamp()", "tstz", "vol_ts")))

        droppable = [c for c in t.values if len(t.values) > 2]
        if droppable:

            def drop() -> list[str]:
                c = rng.choice(droppable)
                t.cols.remove(c)
                t.dropped.append(c)
                return [f"ALTER TABLE {t.qname} DROP COLUMN {q(c.name)}"]

            plans.append(("drop", drop))
        readd = [c for c in t.dropped if not any(x.name.lower() == c.name.lower() for x in t.cols)]
        if o.readd_dropped and readd:

            def readd_col() -> list[str]:
                old = rng.choice(readd)
                kind = rng.choice([old.kind, "text", "int8"])
                col = _c(old.name, kind)
                t.cols.append(col)
                default = rng.choice(["", " DEFAULT 5"]) if kind == "int8" else ""
                return [f"ALTER TABLE {t.qname} ADD COLUMN {q(col.name)} {col.pg_type}{default}"]

            plans.append(("readd", readd_col))

            def rename_to_dropped() -> list[str]:
                c = rng.choice(t.values)
                old, c.name = c.name, rng.choice(readd).name
                return [f"ALTER TABLE {t.qname} RENAME COLUMN {q(old)} TO {q(c.name)}"]

            if t.values:
                plans.append(("readd_rename", rename_to_dropped))
        if t.values:

            def rename() -> list[str]:
                c = rng.choice(t.values)
                old = c.name
                if o.case_only_renames and old != old.lower() and rng.random() < 0.6:
                    new = old.lower()
                    others = [x for x in [*t.cols, *t.dropped] if x is not c]
                    if any(x.name.lower() == new for x in others):
                        new = self._fresh_name(t, f"{old}_r")
                else:
                    new = self._fresh_name(t, rng.choice([f"{old} Renamed", f"{old}_r", "Order"]))
                c.name = new
                return [f"ALTER TABLE {t.qname} RENAME COLUMN {q(old)} TO {q(new)}"]

            plans.append(("rename", rename))
        widen: list[tuple[Col, str]] = []
        for c in t.cols:
            if c.pg_type == "integer" and (not c.key or o.key_widening):
                widen.append((c, "bigint"))
            elif c.pg_type == "smallint" and not c.key:
                widen.append((c, "integer"))
            elif c.pg_type == "character varying(10)":
                widen.append((c, "character varying(50)"))
            elif c.pg_type == "numeric(8,2)":
                widen.append((c, "numeric(12,2)"))
            elif c.pg_type == "real":
                widen.append((c, "double precision"))
        if widen:

            def widen_col() -> list[str]:
                c, new = rng.choice(widen)
                c.pg_type = new
                if c.key and new == "bigint":
                    c.kind = "int4"  # keeps the kind; _key_text moves new keys past 2^31
                return [f"ALTER TABLE {t.qname} ALTER COLUMN {q(c.name)} TYPE {new}"]

            plans.append(("widen", widen_col))

        kinds = sorted({k.split("_")[0] for k, _ in plans})
        kind = rng.choice(kinds)
        name, go = rng.choice([p for p in plans if p[0].split("_")[0] == kind])
        return name, go()


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    table: str
    key: tuple[Any, ...]
    column: str
    source: Any
    warehouse: Any

    def __str__(self) -> str:
        return (f"{self.table} key={self.key!r} column={self.column!r}: "
                f"source={_short(self.source)} warehouse={_short(self.warehouse)}")  # fmt: skip


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _pg_expr(x: str, pg_type: str) -> str:
    """PostgreSQL: the canonical text of `x` (see the module docstring)."""
    if pg_type in ("smallint", "integer", "bigint", "uuid", "jsonb", "numeric") or (
        pg_type.startswith("numeric(")
    ):
        return f"{x}::text"
    if pg_type == "boolean":
        return f"CASE WHEN {x} THEN 'true' WHEN NOT {x} THEN 'false' END"
    if pg_type in ("double precision", "real"):
        send = "float8send" if pg_type == "double precision" else "float4send"
        return f"CASE WHEN {x} = 'NaN' THEN 'NaN' ELSE encode({send}({x}), 'hex') END"
    if pg_type == "date":
        return f"CASE WHEN isfinite({x}) THEN ({x} - DATE '1970-01-01')::text ELSE {x}::text END"
    if pg_type.startswith("timestamp"):
        return (f"CASE WHEN isfinite({x}) THEN (EXTRACT(EPOCH FROM {x}) * 1000000)::int8::text "
                f"ELSE {x}::text END")  # fmt: skip
    if pg_type == "interval":
        return (
            f"(EXTRACT(YEAR FROM {x}) * 12 + EXTRACT(MONTH FROM {x}))::text || '|' "
            f"|| EXTRACT(DAY FROM {x})::text || '|' || ((EXTRACT(HOUR FROM {x}) * 3600 "
            f"+ EXTRACT(MINUTE FROM {x}) * 60) * 1000000 + EXTRACT(MICROSECONDS FROM {x}))::text"
        )
    if pg_type == "bytea":
        return (f"CASE WHEN octet_length({x}) > {LONG} THEN 'len=' || octet_length({x}) "
                f"|| ' md5=' || md5(encode({x}, 'hex')) ELSE encode({x}, 'hex') END")  # fmt: skip
    if pg_type.endswith("[]"):
        return x  # compared as Python lists
    return (f"CASE WHEN length({x}) > {LONG} THEN 'len=' || length({x}) || ' md5=' || md5({x}) "
            f"ELSE {x}::text END")  # fmt: skip


def _duck_expr(x: str, pg_type: str) -> str:
    """DuckDB: the same canonical text as `_pg_expr`, from the raw column."""
    if pg_type.startswith("numeric("):
        return f"regexp_replace(CAST({x} AS VARCHAR), '^(-?)[.]', '\\10.')"
    if pg_type in ("double precision", "real") or pg_type.endswith("[]"):
        return x  # floats: bits in Python; arrays: lists
    if pg_type == "date":
        return (f"CASE WHEN isfinite({x}) THEN CAST(datediff('day', DATE '1970-01-01', {x}) "
                f"AS VARCHAR) ELSE CAST({x} AS VARCHAR) END")  # fmt: skip
    if pg_type.startswith("timestamp"):
        return (f"CASE WHEN isfinite({x}) THEN CAST(epoch_us({x}) AS VARCHAR) "
                f"ELSE CAST({x} AS VARCHAR) END")  # fmt: skip
    if pg_type == "interval":
        return (
            f"CAST(datepart('year', {x}) * 12 + datepart('month', {x}) AS VARCHAR) || '|' "
            f"|| CAST(datepart('day', {x}) AS VARCHAR) || '|' || CAST((datepart('hour', {x}) "
            f"* 3600 + datepart('minute', {x}) * 60)::HUGEINT * 1000000 "
            f"+ datepart('microseconds', {x}) AS VARCHAR)"
        )
    if pg_type == "bytea":
        return (f"CASE WHEN octet_length({x}) > {LONG} THEN 'len=' || octet_length({x}) "
                f"|| ' md5=' || md5(lower(hex({x}))) ELSE lower(hex({x})) END")  # fmt: skip
    if pg_type in ("smallint", "integer", "bigint", "uuid", "jsonb", "numeric", "boolean"):
        return f"CAST({x} AS VARCHAR)"
    return (f"CASE WHEN length({x}) > {LONG} THEN 'len=' || length({x}) || ' md5=' || md5({x}) "
            f"ELSE CAST({x} AS VARCHAR) END")  # fmt: skip


_ZERO_BITS = {"8000000000000000": "0000000000000000", "80000000": "00000000"}


def _py_canonical(value: Any, pg_type: str, zero_sign: bool = True) -> Any:
    """Python-side canonical form for values fetched as they are (floats, arrays)."""
    if value is None:
        return None
    if pg_type in ("double precision", "real"):
        if not isinstance(value, str):  # PostgreSQL already gave the bits
            if math.isnan(value):
                return "NaN"
            value = struct.pack(">d" if pg_type == "double precision" else ">f", value).hex()
        return value if zero_sign else _ZERO_BITS.get(value, value)
    if pg_type.endswith("[]"):
        return list(value)
    return value


def source_columns(cur: Any, t: Table) -> list[tuple[str, str]]:
    """(name, format_type) of every current column of `t`, in column order."""
    cur.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [t.qname],
    )
    return cur.fetchall()


def compare(dsn: str, warehouse: Path, schema: TortureSchema, limit: int = 30) -> list[Mismatch]:
    """Every difference between the source tables and their raw tables (at most `limit` per
    table, plus one summary line per table and column when there are more)."""
    found: list[Mismatch] = []
    pg = psycopg2.connect(dsn)
    wh = duckdb.connect(str(warehouse), read_only=True)
    try:
        with pg.cursor() as cur:
            cur.execute("SET extra_float_digits = 3")
            cur.execute("SET TIME ZONE 'UTC'")
            for t in schema.tables:
                found += _compare_table(cur, wh, t, limit, schema.options.strict_zero_sign)
        pg.rollback()
    finally:
        pg.close()
        wh.close()
    return found


def _compare_table(
    cur: Any, wh: duckdb.DuckDBPyConnection, t: Table, limit: int, zero_sign: bool
) -> list[Mismatch]:
    columns = source_columns(cur, t)
    raw = dict(wh.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'raw' AND table_name = ?", [t.name]).fetchall())  # fmt: skip
    if not raw:
        return [Mismatch(t.name, (), "*", "table", "<missing raw table>")]
    found: list[Mismatch] = []
    present = []
    for name, pg_type in columns:
        if name not in raw:
            folded = [r for r in raw if r.lower() == name.lower()]
            found.append(Mismatch(t.name, (), name, pg_type,
                                  f"<missing column; raw has {folded}>"))  # fmt: skip
            continue
        try:  # a raw column of another kind (e.g. a re-added name, F3) cannot be compared
            wh.execute(f"SELECT {_duck_expr(q(name), pg_type)} FROM raw.{q(t.name)} LIMIT 0")
        except duckdb.Error as exc:
            why = f"<raw column is {raw[name]}: {str(exc).splitlines()[0]}>"
            found.append(Mismatch(t.name, (), name, pg_type, why))
            continue
        present.append((name, pg_type))
    key_names = [c.name for c in t.keys] if t.has_pk else [n for n, _ in columns]
    types = dict(columns)
    pg_sql = ", ".join(_pg_expr(q(n), p) for n, p in present)
    duck_sql = ", ".join(_duck_expr(q(n), p) for n, p in present)
    key_pg = ", ".join(_pg_expr(q(k), types[k]) for k in key_names)
    key_duck = ", ".join(_duck_expr(q(k), types[k]) for k in key_names if k in raw)
    if len(key_duck.split(", ")) != len(key_names) or not present:
        return found
    cur.execute(f"SELECT {key_pg}, {pg_sql} FROM {t.qname}")
    source_rows = cur.fetchall()
    warehouse_rows = wh.execute(f"SELECT {key_duck}, {duck_sql} FROM raw.{q(t.name)}").fetchall()
    nk = len(key_names)

    def by_key(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[Any]]:
        result: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            key = tuple(row[:nk])
            values = [
                _py_canonical(v, p, zero_sign) for v, (_, p) in zip(row[nk:], present, strict=True)
            ]
            if t.has_pk and key in result:
                found.append(Mismatch(t.name, key, "*", "one row", "<duplicate key>"))
            result.setdefault(key, values)
        return result

    if not t.has_pk:  # append-only: the multisets of whole rows (canonical values)

        def rows(fetched: list[tuple[Any, ...]]) -> Counter[str]:
            return Counter(
                repr([_py_canonical(v, p, zero_sign) for v, (_, p) in zip(row[nk:], present,
                                                                         strict=True)])
                for row in fetched
            )  # fmt: skip

        src, dst = rows(source_rows), rows(warehouse_rows)
        names = [n for n, _ in present]
        for side, extra in (("source only", src - dst), ("warehouse only", dst - src)):
            for row, n in sorted(extra.items())[:limit]:
                found.append(Mismatch(t.name, (side, n), repr(names), row, "<no equal row>"))
        return found
    src_map, dst_map = by_key(source_rows), by_key(warehouse_rows)
    per_column: dict[str, int] = {}
    shown = 0
    for key in sorted(src_map.keys() | dst_map.keys(), key=repr):
        a, b = src_map.get(key), dst_map.get(key)
        if a is None or b is None:
            per_column["<row>"] = per_column.get("<row>", 0) + 1
            if shown < limit:
                found.append(Mismatch(t.name, key, "<row>", "present" if a else "<missing>",
                                      "present" if b else "<missing>"))  # fmt: skip
                shown += 1
            continue
        for (name, _), x, y in zip(present, a, b, strict=True):
            if x != y:
                per_column[name] = per_column.get(name, 0) + 1
                if shown < limit:
                    found.append(Mismatch(t.name, key, name, x, y))
                    shown += 1
    if sum(per_column.values()) > shown:
        found.append(Mismatch(t.name, ("*",), "*", f"{len(src_map)} rows",
                              f"differences per column: {per_column}"))  # fmt: skip
    return found


# --------------------------------------------------------------------------------------------
# The harness: deploy, backfill, rounds of workload + kill -9, catch up, compare
# --------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    round: int
    kills: int
    transactions: int
    changes: int
    ddl: list[str]
    catch_up_exit: int
    catch_up_stderr: str
    mismatches: list[Mismatch]
    kill_modes: dict[str, int] = field(default_factory=dict)
    """How each SIGKILL was timed: random (any moment, start-up included), after_commit (right
    after a batch committed), after_ddl (after the first batch following a DDL), catch_up
    (after the first batch of a restart on a backlog), final (the round's end)."""


@dataclass
class TortureResult:
    seed: int
    tables: list[str]
    rounds: list[RoundResult] = field(default_factory=list)
    setup_error: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    """How often each workload operation and DDL kind ran (committed or not)."""

    @property
    def kills(self) -> int:
        return sum(r.kills for r in self.rounds)

    @property
    def changes(self) -> int:
        return sum(r.changes for r in self.rounds)

    @property
    def transactions(self) -> int:
        return sum(r.transactions for r in self.rounds)

    @property
    def mismatches(self) -> list[Mismatch]:
        return [m for r in self.rounds for m in r.mismatches]

    @property
    def failed(self) -> bool:
        return bool(
            self.setup_error or self.mismatches or any(r.catch_up_exit for r in self.rounds)
        )

    def report(self) -> str:
        lines = [f"seed {self.seed}: tables {', '.join(self.tables)}"]
        if self.setup_error:
            lines.append(f"setup failed: {self.setup_error}")
        for r in self.rounds:
            lines.append(f"round {r.round}: {r.transactions} transactions, {r.changes} changes, "
                         f"{r.kills} kills {r.kill_modes}, {len(r.ddl)} DDL, "
                         f"catch-up exit {r.catch_up_exit}, "
                         f"{len(r.mismatches)} mismatches")  # fmt: skip
            lines += [f"  ddl {d}" for d in r.ddl]
            if r.catch_up_exit:
                lines.append(f"  catch-up stderr: {r.catch_up_stderr.strip()[-1500:]}")
            lines += [f"  {m}" for m in r.mismatches[:40]]
        return "\n".join(lines)


class CdcProcess:
    """`clinipipe cdc start` in a subprocess; counts the batches it reports applying."""

    started: ClassVar[list[CdcProcess]] = []
    """Every process started, so that none outlives a failed run (`kill_all`)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        CdcProcess.started.append(self)
        self.applied = 0
        self.tail: list[str] = []
        self._event = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._event:
                if line.startswith("applied "):
                    self.applied += 1
                self.tail = [*self.tail[-40:], line]
                self._event.notify_all()
        with self._event:
            self._event.notify_all()

    def wait_applied(self, count: int, timeout: float) -> bool:
        """Wait until `count` batches were reported (or the process ended, or `timeout`)."""
        with self._event:
            return self._event.wait_for(
                lambda: self.applied >= count or self.proc.poll() is not None, timeout
            )

    def kill(self) -> int | None:
        """SIGKILL; returns the exit code if the process had already ended by itself."""
        ended = self.proc.poll()
        if ended is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=10)
        return ended

    @classmethod
    def kill_all(cls) -> None:
        while cls.started:
            cls.started.pop().kill()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait()
        self._reader.join(timeout=10)
        return code


def clinipipe_command(spec: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "clinipipe", "-c", str(spec), *args]


def run_cli(spec: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(clinipipe_command(spec, *args), env=env, capture_output=True,
                          text=True, cwd=spec.parent)  # fmt: skip


@contextmanager
def _workload(dsn: str, schema: TortureSchema, seed: int) -> Iterator[Workload]:
    w = Workload(dsn, schema, seed)
    try:
        yield w
    finally:
        w.close()


def setup_source(dsn: str, schema: TortureSchema, seed: int, rows: int = 60) -> None:
    """Create the tables and an initial population (rows per table, TOAST included)."""
    con = psycopg2.connect(dsn)
    with con.cursor() as cur:
        for sql in schema.create_sql():
            cur.execute(sql)
    con.commit()
    con.close()
    with _workload(dsn, schema, seed) as w, w.con.cursor() as cur:
        for t in schema.tables:
            w._insert(cur, t, rows)
        w.con.commit()


def run_torture(
    dsn: str,
    workdir: Path,
    seed: int,
    *,
    rounds: int = 2,
    kills_per_round: tuple[int, int] = (1, 3),
    transactions_per_round: int = 40,
    ddl_per_round: tuple[int, int] = (0, 3),
    duration: float | None = None,
    backfill_transactions: int = 30,
    options: TortureOptions = TortureOptions(),
    on_round: Callable[[RoundResult], None] | None = None,
    stop_on_mismatch: bool = False,
    keep_slot: bool = False,
    statement_log: list[str] | None = None,
) -> TortureResult:
    """The whole torture run on the (fresh, empty) database `dsn`; files go in `workdir`.

    Round 0: `backfill` while `backfill_transactions` transactions commit, then ``cdc
    start --until-caught-up`` and a comparison. A round: start `cdc start`; run
    `transactions_per_round` transactions (or, with `duration`, as many as fit in that many
    seconds) with DDL at random points; SIGKILL the CDC process at random points (any moment,
    or right after a batch committed), restarting it at once or after a backlog built up, and
    sometimes killing it again while it catches up (after its first applied batch) or right
    after the batch following a DDL was applied. Then stop it (SIGKILL or SIGTERM), run ``cdc start
    --until-caught-up`` (it must exit 0) and compare every table. The replication slot is
    dropped at the end unless `keep_slot`. `statement_log`, when given, receives every
    statement of the workload (to minimise a mismatch).
    """
    rng = random.Random(f"harness-{seed}")
    schema = TortureSchema.generate(seed, options)
    result = TortureResult(seed, [f"{t.schema}.{t.name}" for t in schema.tables])
    warehouse = workdir / "warehouse.duckdb"
    spec = workdir / "clinipipe.yaml"
    slot = f"torture_{uuid.uuid4().hex[:12]}"
    spec.write_text(schema.spec_text(warehouse, slot))
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": dsn}
    env.pop("CLINIPIPE_DUCKDB_PATH", None)
    setup_source(dsn, schema, seed)
    try:
        _rounds(result, schema, dsn, spec, env, rng, warehouse, rounds=rounds,
                kills_per_round=kills_per_round, transactions_per_round=transactions_per_round,
                ddl_per_round=ddl_per_round, duration=duration, on_round=on_round,
                stop_on_mismatch=stop_on_mismatch,
                backfill_transactions=backfill_transactions,
                statement_log=statement_log)  # fmt: skip
    finally:  # the slot would pin WAL (and its name) for the rest of the server's life
        CdcProcess.kill_all()
        if not keep_slot:  # keep_slot: to investigate a failure with the project afterwards
            _drop_slot(dsn, slot)
    return result


def _drop_slot(dsn: str, slot: str) -> None:
    con = psycopg2.connect(dsn)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND NOT active", [slot])  # fmt: skip
    con.close()


def _rounds(
    result: TortureResult,
    schema: TortureSchema,
    dsn: str,
    spec: Path,
    env: dict[str, str],
    rng: random.Random,
    warehouse: Path,
    *,
    rounds: int,
    kills_per_round: tuple[int, int],
    transactions_per_round: int,
    ddl_per_round: tuple[int, int],
    duration: float | None,
    on_round: Callable[[RoundResult], None] | None,
    stop_on_mismatch: bool,
    backfill_transactions: int,
    statement_log: list[str] | None,
) -> None:
    seed = result.seed
    done = run_cli(spec, env, "-q", "deploy")
    if done.returncode:
        result.setup_error = f"deploy exit {done.returncode}: {done.stderr[-2000:]}"
        return
    cdc = clinipipe_command(spec, "cdc", "start", "--batch-ms", "100", "--batch-rows", "2000")
    with _workload(dsn, schema, seed) as w:
        w.log = statement_log
        # Round 0: the backfill while transactions commit, then CDC catches up: the seam
        # between the exported snapshot and the stream.
        backfill = subprocess.Popen(clinipipe_command(spec, "-q", "backfill"), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)  # fmt: skip
        for _ in range(backfill_transactions):  # a fixed count: the workload stays seeded
            w.transaction()  # (how many commit during the backfill depends on timing)
        _, stderr = backfill.communicate()
        if backfill.returncode:
            result.setup_error = f"backfill exit {backfill.returncode}: {stderr[-2000:]}"
            return
        done = run_cli(spec, env, "-q", "cdc", "start", "--until-caught-up")
        mismatches = compare(dsn, warehouse, schema)
        r = RoundResult(0, 0, w.stats.transactions, w.stats.changes, [], done.returncode,
                        done.stderr, mismatches)  # fmt: skip
        result.rounds.append(r)
        if on_round is not None:
            on_round(r)
        if stop_on_mismatch and (mismatches or done.returncode):
            return
        for number in range(1, rounds + 1):
            before = (w.stats.transactions, w.stats.changes, len(w.stats.ddl_log))
            steps = transactions_per_round
            kills = sorted(rng.sample(range(steps), rng.randint(*kills_per_round)))
            ddl_at = {rng.randrange(steps) for _ in range(rng.randint(*ddl_per_round))}
            process: CdcProcess | None = CdcProcess(cdc, env)
            down_until = -1
            modes: dict[str, int] = {}
            if w.log is not None:
                w.log.append(f"-- round {number}")

            def count(
                mode: str, modes: dict[str, int] = modes, log: list[str] | None = w.log
            ) -> None:
                modes[mode] = modes.get(mode, 0) + 1
                if log is not None:
                    log.append(f"-- SIGKILL cdc start ({mode})")

            started = time.monotonic()
            i = 0
            while True:
                if duration is None and i >= steps:
                    break
                if duration is not None and time.monotonic() - started >= duration and i >= steps:
                    break
                if i in ddl_at:
                    w.ddl()
                    if process is not None and rng.random() < 0.5:  # kill right after DDL
                        applied = process.applied
                        w.transaction()  # a change after the DDL: its batch evolves the table
                        process.wait_applied(applied + 1, 30)
                        process.kill()
                        count("after_ddl")
                        process = CdcProcess(cdc, env)
                applied = process.applied if process is not None else 0
                w.transaction()
                if i == down_until:  # restart after a backlog; kill it while catching up?
                    process = CdcProcess(cdc, env)
                    if rng.random() < 0.6:
                        process.wait_applied(1, 30)
                        process.kill()
                        count("catch_up")
                        process = CdcProcess(cdc, env)
                if i in kills and process is not None:
                    mode = "after_commit" if rng.random() < 0.5 else "random"
                    if mode == "random":
                        time.sleep(rng.uniform(0, 1.5))  # anywhere, start-up included
                    else:
                        process.wait_applied(applied + 1, 30)  # right after a commit
                    process.kill()
                    count(mode)
                    process = None
                    if rng.random() < 0.5:
                        process = CdcProcess(cdc, env)
                    else:
                        down_until = i + rng.randint(1, 8)
                        if duration is None:
                            down_until = min(down_until, steps - 1)
                if process is None and down_until < i:
                    process = CdcProcess(cdc, env)
                i += 1
            if process is not None:
                if rng.random() < 0.5:
                    process.kill()
                    count("final")
                else:
                    process.terminate()
            done = run_cli(spec, env, "-q", "cdc", "start", "--until-caught-up")
            mismatches = compare(dsn, warehouse, schema)
            r = RoundResult(
                number,
                sum(modes.values()),
                w.stats.transactions - before[0],
                w.stats.changes - before[1],
                w.stats.ddl_log[before[2] :],
                done.returncode,
                done.stderr,
                mismatches,
                modes,
            )
            result.rounds.append(r)
            if on_round is not None:
                on_round(r)
            result.kinds = dict(sorted(w.stats.kinds.items()))
            if stop_on_mismatch and (mismatches or done.returncode):
                break
