"""What a source table looks like, and how each of its columns leaves PostgreSQL exactly.

Two halves:

* `introspect_table` reads `pg_catalog` once per table and describes every column in
  warehouse-neutral terms (`ColumnType.logical`), with domains resolved to their base type, enums
  recognised and array element types resolved.
* `export_expression` / `export_select_list` say how each column is written by
  ``COPY (SELECT <export expressions> ...) TO STDOUT (FORMAT csv)`` in a session that first ran
  `EXPORT_SESSION_SETTINGS`. Every value travels as one CSV text field; the warehouse turns it
  back into a typed value in SQL (`clinipipe.targets.duckdb.types`,
  `clinipipe.targets.snowflake.types`). Guarantees and deviations per type are listed in
  ``docs/TYPE_MAPPING.md`` and pinned by ``tests/test_types.py``.

Transport forms (the text of one CSV field; SQL NULL is an unquoted empty field, an empty value
is ``""``):

==================  ========================================================================
logical             text of the field
==================  ========================================================================
bool                ``t`` / ``f``
int16/32/64         decimal digits
float32/float64     shortest text that reads back to the same bits (``extra_float_digits``);
                    ``NaN``, ``Infinity``, ``-Infinity``, ``-0``
decimal             PostgreSQL's numeric text, scale digits included (``12.50``); ``NaN``
numeric_unbounded   the same (``NaN``, ``Infinity``, ``-Infinity`` included)
text/enum/inet/     the type's output text (``char(n)`` keeps its padding)
other
date/timestamp/     ISO (``DateStyle ISO``), timestamptz in UTC (``+00``), a `` BC`` suffix for
timestamptz         years before 1, ``infinity`` / ``-infinity``
time/timetz         ISO, e.g. ``24:00:00``, ``12:34:56.789+05:30``
interval            ``<months> months <days> days <microseconds> microseconds`` (exact fields)
uuid                lower-case canonical text
json                the stored text (json: as written; jsonb: PostgreSQL's normalized text)
bytes               lower-case hex without the ``\\x`` prefix (``encode(col, 'hex')``)
array               a JSON array of the elements' texts (as above) or null, e.g.
                    ``["1",null,"3"]``; one dimension, lower bound 1, else the COPY fails
==================  ========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clinipipe.source.postgres import RetryPolicy, SourceError, connect
from clinipipe.sql.dialect import POSTGRES

LOGICAL_TYPES: tuple[str, ...] = (
    "bool",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "decimal",
    "numeric_unbounded",
    "text",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "json",
    "bytes",
    "array",
    "enum",
    "inet",
    "other",
)
"""Every value `ColumnType.logical` can take. ``other`` is any type not listed: it travels and
lands as its PostgreSQL output text."""

ARRAY_ELEMENT_TYPES: frozenset[str] = frozenset(LOGICAL_TYPES) - {
    "array",
    "interval",
    "bytes",
}
"""Element types an ``array`` column may have. Arrays of other element types (interval[],
bytea[], money[]) are exported as ``json`` (``to_json(col)``) instead."""

# Element types whose text inside the exported JSON array comes from to_json() (the element's
# output function), not from a cast to text[]: a cast to text would strip char(n) padding and
# would add "/32" to inet host addresses.
_TO_JSON_ELEMENTS = frozenset({"text", "inet"})


@dataclass(frozen=True)
class ColumnType:
    """A source column's type in warehouse-neutral terms.

    `pg_type` is ``format_type()`` of the type after the column's domains are resolved
    (``numeric(12,2)``, ``text[]``, ``mood`` for an enum; an array of a domain keeps the
    domain's name, ``amount[]``, while its `element` is resolved). `precision`/`scale` are set
    for ``decimal`` (scale may be negative or larger than the precision, as PostgreSQL 15
    allows); `length` for ``varchar(n)``/``char(n)``; `element` for ``array`` (one level:
    PostgreSQL array types do not nest). Fractional-second precision of time types is not
    recorded (microseconds always travel in full).
    """

    logical: str
    pg_type: str
    precision: int | None = None
    scale: int | None = None
    length: int | None = None
    element: ColumnType | None = None

    def __post_init__(self) -> None:
        if self.logical not in LOGICAL_TYPES:
            raise ValueError(f"unknown logical type {self.logical!r}")
        if (self.logical == "array") != (self.element is not None):
            raise ValueError("an array type needs an element type, and only arrays have one")
        if self.element is not None and self.element.logical not in ARRAY_ELEMENT_TYPES:
            raise ValueError(f"arrays of {self.element.logical} are not supported")
        if self.logical == "decimal" and (self.precision is None or self.scale is None):
            raise ValueError("a decimal type needs a precision and a scale")

    def decimal_width(self) -> tuple[int, int]:
        """(width, scale) of the smallest DECIMAL(width, scale) holding every value of this
        ``decimal`` type.

        Usually (precision, scale); PostgreSQL 15 also allows a negative scale
        (``numeric(5,-2)`` holds up to 9999900: DECIMAL(7,0)) and a scale above the precision
        (``numeric(2,5)`` holds up to 0.00099: DECIMAL(5,5)).
        """
        if self.precision is None or self.scale is None:
            raise ValueError(f"{self.pg_type} is not a numeric with precision and scale")
        if self.scale < 0:
            return self.precision - self.scale, 0
        return max(self.precision, self.scale), self.scale


@dataclass(frozen=True)
class Column:
    """One source column. `nullable` is False when the column or any domain under it is NOT
    NULL."""

    name: str
    type: ColumnType
    nullable: bool
    attnum: int = field(default=0, compare=False)
    """PostgreSQL's column number: stable across renames, never reused after a drop."""
    missing_value: str | None = field(default=None, compare=False)
    """Text of the value rows that predate an ADD COLUMN ... DEFAULT read (None: NULL)."""
    has_default: bool = field(default=False, compare=False)
    """The column has a DEFAULT. With no `missing_value`, rows that predate the column may
    hold values only the source knows (a volatile default rewrites the table, and a rewrite
    sends nothing to logical decoding)."""


@dataclass(frozen=True)
class TableSchema:
    """A source table as introspected: columns in table order (dropped columns excluded).

    `pages`, `estimated_rows` and `table_bytes` are planning estimates taken at introspection
    time (the heap size in blocks, ``reltuples`` and ``pg_table_size``, summed over the leaf
    partitions of a partitioned table), never used for correctness.
    """

    schema: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    pages: int
    estimated_rows: int
    table_bytes: int = 0
    """Heap plus out-of-line (TOAST) storage: with `estimated_rows`, the width of a row."""

    @property
    def column_names(self) -> list[str]:
        """Column names in table order (the order of `export_select_list` and of the CSV)."""
        return [c.name for c in self.columns]

    @property
    def qualified_name(self) -> str:
        """``schema.name`` for messages (not quoted: never use it in SQL)."""
        return f"{self.schema}.{self.name}"


class CatalogError(SourceError):
    """A source table cannot be exported: it does not exist, is not a table, has no primary key,
    or the user may not read it. The message names the table and what to do."""


class ColumnNameClash(CatalogError):
    """Two columns of a source table whose names differ only by case: one column in a
    case-insensitive warehouse."""


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------

_TABLE_SQL = """
SELECT c.oid, c.relkind,
       pg_catalog.has_schema_privilege(n.oid, 'USAGE') AS schema_usage,
       pg_catalog.has_table_privilege(c.oid, 'SELECT') AS table_select,
       (SELECT pg_catalog.bool_and(pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT'))
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns_select,
       CASE WHEN c.relkind = 'p' THEN
           (SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_relation_size(p.relid)), 0)
              FROM pg_catalog.pg_partition_tree(c.oid) p WHERE p.isleaf)
       ELSE pg_catalog.pg_relation_size(c.oid) END::bigint AS heap_bytes,
       CASE WHEN c.relkind = 'p' THEN
           (SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_table_size(p.relid)), 0)
              FROM pg_catalog.pg_partition_tree(c.oid) p WHERE p.isleaf)
       ELSE pg_catalog.pg_table_size(c.oid) END::bigint AS table_bytes,
       CASE WHEN c.relkind = 'p' THEN
           (SELECT COALESCE(pg_catalog.sum(GREATEST(pc.reltuples, 0)), 0)
              FROM pg_catalog.pg_partition_tree(c.oid) p
              JOIN pg_catalog.pg_class pc ON pc.oid = p.relid
             WHERE p.isleaf)
       ELSE GREATEST(c.reltuples, 0) END::bigint AS estimated_rows,
       pg_catalog.current_setting('block_size')::int AS block_size
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relname = %(table)s
"""

_COLUMNS_SQL = """
SELECT a.attname, a.attnotnull, a.atttypid, a.atttypmod, a.attnum,
       CASE WHEN a.atthasmissing THEN
           (SELECT x FROM pg_catalog.unnest(a.attmissingval::text::text[]) AS x LIMIT 1)
       END AS missing_value,
       a.atthasdef AS has_default
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

_PRIMARY_KEY_SQL = """
SELECT a.attname
  FROM pg_catalog.pg_index i
 CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = %(oid)s AND i.indisprimary
 ORDER BY k.position
"""

_TYPES_SQL = """
SELECT t.oid, n.nspname, t.typname, t.typtype, t.typbasetype, t.typtypmod, t.typelem,
       t.typnotnull,
       t.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc AS is_array
  FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid = ANY(%(oids)s::pg_catalog.oid[])
"""

_FORMAT_TYPES_SQL = """
SELECT u.o, u.m, pg_catalog.format_type(u.o, u.m)
  FROM ROWS FROM (pg_catalog.unnest(%(oids)s::pg_catalog.oid[]),
                 pg_catalog.unnest(%(mods)s::int[])) AS u(o, m)
"""

# Base types of pg_catalog by name. Anything else (and any other schema) is "other", except
# enums (found by typtype) and string-category extension types such as citext.
_BUILTIN: dict[str, str] = {
    "bool": "bool",
    "int2": "int16",
    "int4": "int32",
    "int8": "int64",
    "oid": "int64",
    "float4": "float32",
    "float8": "float64",
    "numeric": "decimal",
    "money": "numeric_unbounded",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "name": "text",
    "date": "date",
    "time": "time",
    "timetz": "timetz",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "interval": "interval",
    "uuid": "uuid",
    "json": "json",
    "jsonb": "json",
    "bytea": "bytes",
    "inet": "inet",
    "cidr": "inet",
}


@dataclass(frozen=True)
class _PgType:
    oid: int
    schema: str
    name: str
    typtype: str
    base: int
    base_typmod: int
    element: int
    not_null: bool
    is_array: bool


def introspect_table(
    con: Any, schema: str, table: str, *, append_only: bool = False
) -> TableSchema:
    """Describe `schema.table` (exact, case-sensitive names) from `pg_catalog`.

    `con` is a psycopg2 connection. Only catalog SELECTs run (a handful of round trips whatever
    the number of columns); the connection's transaction is neither committed nor rolled back.
    Domains are resolved to their base type (NOT NULL domains make the column not nullable),
    enums become ``enum``, arrays get a resolved element type.

    Raises `CatalogError` when the table does not exist, is not a table (view, sequence ...),
    has no primary key (unless `append_only`: then `primary_key` is empty), has two columns
    whose names differ only by case (one column in a case-insensitive warehouse), or the
    connected user lacks USAGE on the schema or SELECT on it.
    """
    name = f"{schema}.{table}"
    with con.cursor() as cur:
        cur.execute(_TABLE_SQL, {"schema": schema, "table": table})
        row = cur.fetchone()
        if row is None:
            raise CatalogError(
                f"source table {name} does not exist (names are case-sensitive; check the "
                "schema and table names in the spec)"
            )
        (oid, relkind, schema_usage, table_select, columns_select, heap_bytes, table_bytes, rows,
         block) = row  # fmt: skip
        if relkind not in ("r", "p"):
            kind = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}.get(
                relkind, f"not a table (relkind {relkind!r})"
            )
            raise CatalogError(
                f"source table {name} is {kind}: only tables can be backfilled and replicated"
            )
        if not schema_usage or not (table_select or columns_select):
            raise CatalogError(
                f"no SELECT privilege on source table {name} for the connected user: "
                f"GRANT USAGE ON SCHEMA {POSTGRES.quote_ident(schema)} and GRANT SELECT ON "
                f"{POSTGRES.qualify(schema, table)} to it"
            )

        cur.execute(_COLUMNS_SQL, {"oid": oid})
        raw_columns: list[tuple[str, bool, int, int, int, str | None, bool]] = list(cur.fetchall())
        cur.execute(_PRIMARY_KEY_SQL, {"oid": oid})
        primary_key = tuple(r[0] for r in cur.fetchall())
        if not primary_key and not append_only:
            raise CatalogError(
                f"source table {name} has no primary key: clinipipe needs one to apply "
                "changes exactly once (add a primary key; or, for a table that only receives "
                "inserts, set `append_only: true` on it in the spec)"
            )
        types = _load_types(cur, {c[2] for c in raw_columns})
        resolved = {c[0]: _resolve(types, c[2], c[3]) for c in raw_columns}
        pairs = {(type_oid, typmod) for type_oid, typmod, _ in resolved.values()}
        for type_oid, typmod in list(pairs):
            if types[type_oid].is_array:  # the element's own name: character(3) for char(3)[]
                pairs.add(_resolve(types, types[type_oid].element, typmod)[:2])
        formatted = _format_types(cur, pairs)

    seen: dict[str, str] = {}
    for attname, *_ in raw_columns:
        other = seen.setdefault(attname.lower(), attname)
        if other != attname:
            raise ColumnNameClash(
                f"source table {name} has columns {other!r} and {attname!r}, whose names "
                "differ only by case: warehouse identifiers are case-insensitive, so they would "
                "be one column there. Rename one of them in the source (ALTER TABLE ... RENAME "
                "COLUMN), or leave the table out of the spec"
            )
    columns = []
    for attname, attnotnull, _typid, _typmod, attnum, missing, has_default in raw_columns:
        base, base_typmod, domain_not_null = resolved[attname]
        column_type = _column_type(types, formatted, base, base_typmod)
        nullable = not (attnotnull or domain_not_null)
        columns.append(Column(attname, column_type, nullable, attnum, missing, has_default))
    return TableSchema(
        schema=schema,
        name=table,
        columns=tuple(columns),
        primary_key=primary_key,
        pages=int(heap_bytes) // int(block),
        estimated_rows=max(0, int(rows)),
        table_bytes=int(table_bytes),
    )


def resolve_column_types(
    con: Any, pairs: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], ColumnType]:
    """The `ColumnType` of each (type oid, typmod) pair, e.g. from a pgoutput Relation message.

    The same resolution as `introspect_table` (domains, arrays, enums), one catalog round trip
    per step whatever the number of pairs.
    """
    with con.cursor() as cur:
        types = _load_types(cur, {oid for oid, _ in pairs})
        resolved = {pair: _resolve(types, *pair) for pair in pairs}
        wanted = {(oid, typmod) for oid, typmod, _ in resolved.values()}
        for oid, typmod in list(wanted):
            if types[oid].is_array:
                wanted.add(_resolve(types, types[oid].element, typmod)[:2])
        formatted = _format_types(cur, wanted)
    return {
        pair: _column_type(types, formatted, base, typmod)
        for pair, (base, typmod, _) in resolved.items()
    }


def _load_types(cur: Any, oids: set[int]) -> dict[int, _PgType]:
    """pg_type rows for `oids` and everything under them (domain bases, array elements)."""
    types: dict[int, _PgType] = {}
    wanted = set(oids)
    while wanted:
        cur.execute(_TYPES_SQL, {"oids": sorted(wanted)})
        for r in cur.fetchall():
            types[r[0]] = _PgType(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]))
        missing = wanted - types.keys()
        if missing:  # dropped concurrently: the catalog moved under us
            raise CatalogError(f"type oid(s) {sorted(missing)} vanished during introspection")
        wanted = set()
        for t in types.values():
            for under in (t.base if t.typtype == "d" else 0, t.element if t.is_array else 0):
                if under and under not in types:
                    wanted.add(under)
    return types


def _resolve(types: dict[int, _PgType], oid: int, typmod: int) -> tuple[int, int, bool]:
    """(base type oid, its typmod, whether a domain on the way is NOT NULL)."""
    not_null = False
    while types[oid].typtype == "d":
        domain = types[oid]
        not_null = not_null or domain.not_null
        # A domain's own typmod (CREATE DOMAIN d AS varchar(10)) applies to its base type.
        oid, typmod = domain.base, domain.base_typmod
    return oid, typmod, not_null


def _format_types(cur: Any, pairs: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """``format_type(oid, typmod)`` of each pair, in one round trip."""
    cur.execute(
        _FORMAT_TYPES_SQL,
        {"oids": [p[0] for p in pairs], "mods": [p[1] for p in pairs]},
    )
    return {(r[0], r[1]): r[2] for r in cur.fetchall()}


def _numeric_typmod(typmod: int) -> tuple[int, int]:
    """(precision, scale) of a numeric typmod; the scale is an 11-bit signed field (PG 15)."""
    value = typmod - 4
    precision = (value >> 16) & 0xFFFF
    scale = ((value & 0x7FF) ^ 1024) - 1024
    return precision, scale


def _column_type(
    types: dict[int, _PgType], formatted: dict[tuple[int, int], str], oid: int, typmod: int
) -> ColumnType:
    """The logical type of a resolved (non-domain) type."""
    t = types[oid]
    shown = formatted[(oid, typmod)]
    if t.is_array:
        element_oid, element_typmod, _ = _resolve(types, t.element, typmod)
        element = _column_type(types, formatted, element_oid, element_typmod)
        if element.logical not in ARRAY_ELEMENT_TYPES or types[element_oid].name == "money":
            return ColumnType("json", shown)
        return ColumnType("array", shown, element=element)
    if t.typtype == "e":
        return ColumnType("enum", shown)
    logical = _BUILTIN.get(t.name, "other") if t.schema == "pg_catalog" else "other"
    if logical == "other" and t.name == "citext":
        logical = "text"
    if logical == "decimal":
        if typmod < 4:
            return ColumnType("numeric_unbounded", shown)
        precision, scale = _numeric_typmod(typmod)
        return ColumnType("decimal", shown, precision=precision, scale=scale)
    if t.name in ("varchar", "bpchar") and t.schema == "pg_catalog" and typmod >= 4:
        return ColumnType("text", shown, length=typmod - 4)
    return ColumnType(logical, shown)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

EXPORT_SESSION_SETTINGS: tuple[str, ...] = (
    # Text arrives as UTF-8 whatever the server encoding (pyarrow rejects invalid UTF-8).
    "SET client_encoding = 'UTF8'",
    # timestamptz prints in UTC ("+00"); timetz keeps its own offset.
    "SET TimeZone = 'UTC'",
    # YYYY-MM-DD HH:MI:SS[.ffffff], " BC" suffix before year 1.
    "SET DateStyle = 'ISO, YMD'",
    # Intervals are exported as explicit fields; this only fixes the text of intervals nested
    # in "other" types (composites, ranges).
    "SET IntervalStyle = 'postgres'",
    # > 0: the shortest text that reads back to the same float bits (PostgreSQL >= 12).
    "SET extra_float_digits = 3",
    # bytea is exported with encode(); this fixes the text of bytea nested in "other" types.
    "SET bytea_output = 'hex'",
    # String literals in the export expressions double quotes only.
    "SET standard_conforming_strings = on",
)
"""Statements the COPY session runs first (any order, outside or inside its transaction)."""


def export_expression(column: Column) -> str:
    """The PostgreSQL expression that writes `column` as its transport text (see the module
    docstring), NULL for NULL. Identifiers are quoted; functions are schema-qualified, so the
    caller's search_path cannot change the result. Assumes `EXPORT_SESSION_SETTINGS`.

    Arrays that are multi-dimensional or whose lower bound is not 1 make the COPY fail with an
    error naming the column and the array's dimensions (never its contents).
    """
    return _export(POSTGRES.quote_ident(column.name), column.name, column.type)


def _export(col: str, name: str, t: ColumnType) -> str:
    if t.logical == "interval":
        months = f"(EXTRACT(YEAR FROM {col}) * 12 + EXTRACT(MONTH FROM {col}))::pg_catalog.int8"
        days = f"EXTRACT(DAY FROM {col})::pg_catalog.int8"
        micros = (
            f"((EXTRACT(HOUR FROM {col}) * 3600 + EXTRACT(MINUTE FROM {col}) * 60) * 1000000 "
            f"+ EXTRACT(MICROSECONDS FROM {col}))::pg_catalog.int8"
        )
        # || propagates NULL (format() would print NULL arguments as empty strings).
        return (
            f"({months}::pg_catalog.text || ' months ' || {days}::pg_catalog.text || ' days ' "
            f"|| {micros}::pg_catalog.text || ' microseconds')"
        )
    if t.logical == "bytes":
        return f"pg_catalog.encode({col}, 'hex')"
    if t.logical == "numeric_unbounded" and t.pg_type == "money":
        return f"{col}::pg_catalog.numeric"
    if t.logical == "json" and t.pg_type.endswith("[]"):
        # An array of an element type without an element-wise mapping (interval[], bytea[]).
        return f"pg_catalog.to_json({col})::pg_catalog.text"
    if t.logical == "array":
        assert t.element is not None
        if t.element.logical in _TO_JSON_ELEMENTS:
            as_json = f"pg_catalog.to_json({col})::pg_catalog.text"
        else:
            as_json = f"pg_catalog.to_json({col}::pg_catalog.text[])::pg_catalog.text"
        message = POSTGRES.quote_string(
            f"clinipipe cannot export column {name}: only one-dimensional arrays with lower "
            "bound 1 are supported, found dimensions "
        )
        # A non-constant string cast to int4 is PostgreSQL's way to raise from an expression.
        fail = f"({message} || pg_catalog.array_dims({col}))::pg_catalog.int4::pg_catalog.text"
        return (
            f"CASE WHEN pg_catalog.array_ndims({col}) > 1 "
            f"OR pg_catalog.array_lower({col}, 1) <> 1 THEN {fail} ELSE {as_json} END"
        )
    return col


def export_select_list(table: TableSchema) -> str:
    """``<export expression> AS "<column>", ...`` in table order: the select list of the COPY.
    The CSV columns are `table.column_names`, in that order."""
    return ", ".join(
        f"{export_expression(c)} AS {POSTGRES.quote_ident(c.name)}" for c in table.columns
    )


# --- reads for CDC: a connection of their own, through the source retry policy -----------------


def read_column_types(
    dsn: str, pairs: Sequence[tuple[int, int]], retry: RetryPolicy
) -> dict[tuple[int, int], ColumnType]:
    """`resolve_column_types` on a connection of its own, opened (and the read retried) under
    `retry`: a source restart while CDC resolves a Relation message's types is waited out."""

    def read() -> dict[tuple[int, int], ColumnType]:
        con = connect(dsn, application_name="clinipipe-cdc-catalog")
        try:
            return resolve_column_types(con, pairs)
        finally:
            con.close()

    return retry.run(read, "reading column types from the source")


def read_tables(
    dsn: str,
    keys: Sequence[tuple[str, str]],
    retry: RetryPolicy,
    *,
    append_only: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
) -> dict[tuple[str, str], TableSchema | CatalogError]:
    """`introspect_table` of every (schema, table) in `keys`, in one session that first ran
    `EXPORT_SESSION_SETTINGS` (ADD COLUMN defaults read as the stream writes text). A table
    that cannot be described maps to its `CatalogError` (for the caller to pause it); a
    connection failure is retried under `retry` (the whole read again: it only reads)."""

    def read() -> dict[tuple[str, str], TableSchema | CatalogError]:
        con = connect(dsn, application_name="clinipipe-cdc-catalog")
        try:
            with con.cursor() as cur:
                for setting in EXPORT_SESSION_SETTINGS:
                    cur.execute(setting)
            found: dict[tuple[str, str], TableSchema | CatalogError] = {}
            for key in keys:
                try:
                    found[key] = introspect_table(con, *key, append_only=key in append_only)
                except CatalogError as exc:  # e.g. a column added that clashes by case
                    found[key] = exc
            return found
        finally:
            con.close()

    return retry.run(read, "reading table definitions from the source")
