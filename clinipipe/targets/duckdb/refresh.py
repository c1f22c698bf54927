"""DuckDB refresh: clinipipe's refresh engine runs each planned refresh of a dynamic table (DuckDB
has no dynamic tables of its own; see `cannot.py`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from clinipipe.secrets import first_line, scrub_values
from clinipipe.sql.context import CONTROL_SCHEMA, DERIVED_SCHEMA, RAW_SCHEMA
from clinipipe.targets.capabilities.refresh import (
    DynamicTableInputs,
    PendingChanges,
    QueryBindError,
    Refresh,
    RefreshResult,
    RefreshWork,
    changed_keys_source,
)
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.core import DuckDBCore, columns_of, rollback
from clinipipe.targets.duckdb.types import duckdb_type
from clinipipe.targets.metering import CpuClock

if TYPE_CHECKING:
    from clinipipe.source.catalog import TableSchema


class DuckDBRefresh(DuckDBCore, Refresh):
    """`Refresh` on DuckDB: each refresh is one transaction (see `refresh_dynamic_table`); the
    query of a dynamic table is parsed and bound by DuckDB itself."""

    def table_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        return columns_of(self.con, schema, table)

    def query_columns(self, sql: str) -> list[tuple[str, str]]:
        try:
            rows = self.con.execute(f"DESCRIBE SELECT * FROM ({_dt_sql(sql)}) AS q").fetchall()
        except duckdb.Error as exc:
            raise TargetError(
                f"the query cannot be bound: {scrub_values(first_line(exc))}"
            ) from None
        return [(str(r[0]), str(r[1])) for r in rows]

    def bind_dynamic_tables(
        self, queries: Sequence[tuple[str, str]], raw_tables: Sequence[TableSchema]
    ) -> dict[str, list[tuple[str, str]]]:
        """Binds with DuckDB's own DESCRIBE in one transaction that is always rolled back:
        missing schemas, raw tables and dynamic tables are created empty in it (stand-ins
        with the columns they will have), so each query binds against what a refresh sees."""
        quote = self.dialect.quote_ident
        found: dict[str, list[tuple[str, str]]] = {}
        cur = self.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                for schema in (RAW_SCHEMA, DERIVED_SCHEMA):
                    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                for table in raw_tables:
                    columns = ", ".join(
                        f"{quote(c.name)} {duckdb_type(c.type)}" for c in table.columns
                    )
                    cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {self.raw_name(table.name)} ({columns})"
                    )
                for name, sql in queries:
                    try:
                        rows = cur.execute(
                            f"DESCRIBE SELECT * FROM ({_dt_sql(sql)}) AS q"
                        ).fetchall()
                    except (
                        duckdb.BinderException,
                        duckdb.CatalogException,
                        duckdb.ParserException,
                    ) as exc:
                        # Binding reads no data: the message names identifiers only.
                        raise QueryBindError(name, _binder_message(exc)) from None
                    except duckdb.Error as exc:
                        raise QueryBindError(name, scrub_values(first_line(exc))) from None
                    found[name] = [(str(r[0]), str(r[1])) for r in rows]
                    columns = ", ".join(f"{quote(c)} {t}" for c, t in found[name])
                    cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {self.dialect.qualify(DERIVED_SCHEMA, name)} "
                        f"({columns})"
                    )
            finally:
                rollback(cur)
        finally:
            cur.close()
        return found

    def dynamic_table_inputs(self, sql: str) -> DynamicTableInputs:
        """Parsed by DuckDB (comments, strings, CTEs and aliases are understood): tables in the
        raw and derived schemas are tracked; any other table, and any table function but
        `range`, `generate_series` and `unnest` (files, other databases), is untracked."""
        tables: list[tuple[str, str]] = []
        untracked: list[str] = []
        nodes = self._parse_nodes(sql)
        ctes = {str(key).lower() for node in nodes["cte"] for key in node}
        for node in nodes["BASE_TABLE"]:
            role = _schema_role(node["schema_name"])
            name = str(node["table_name"])
            if role is not None:
                if (role, name) not in tables:
                    tables.append((role, name))
            elif node["schema_name"] or node.get("catalog_name") or name.lower() not in ctes:
                parts = (node.get("catalog_name"), node["schema_name"], name)
                untracked.append(".".join(str(p) for p in parts if p))
        for node in nodes["TABLE_FUNCTION"]:
            function = str((node.get("function") or {}).get("function_name", "?"))
            if function.lower() not in ("range", "generate_series", "unnest"):
                untracked.append(f"{function}(...)")
        return DynamicTableInputs(tuple(tables), tuple(dict.fromkeys(untracked)))

    def _base_tables(self, sql: str) -> list[dict[str, Any]]:
        """The table references of `sql` (DuckDB's parse tree), in order of position."""
        return self._parse_nodes(sql)["BASE_TABLE"]

    def _parse_nodes(self, sql: str) -> dict[str, list[Any]]:
        """DuckDB's parse of a dynamic table's query (`json_serialize_sql`; parsed, never
        bound or run): its BASE_TABLE and TABLE_FUNCTION nodes (in order of position) and the
        names of its CTEs ("cte": one list of names per WITH)."""
        import json

        row = self.con.execute("SELECT json_serialize_sql(?)", [_dt_sql(sql)]).fetchone()
        tree = json.loads(row[0]) if row else {"error": True}
        if tree.get("error"):
            raise TargetError(
                "the query of a dynamic table must be one SELECT statement: "
                f"{scrub_values(str(tree.get('error_message', 'cannot parse it')))}"
            )
        if len(tree.get("statements", [])) != 1:
            raise TargetError("the query of a dynamic table must be exactly one SELECT statement")
        found: dict[str, list[Any]] = {"BASE_TABLE": [], "TABLE_FUNCTION": [], "cte": []}

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                kind = node.get("type")
                if kind == "BASE_TABLE" and "table_name" in node:
                    found["BASE_TABLE"].append(node)
                elif kind == "TABLE_FUNCTION":
                    found["TABLE_FUNCTION"].append(node)
                ctes = node.get("cte_map")
                if isinstance(ctes, dict):
                    found["cte"].append([e.get("key") for e in ctes.get("map", [])])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(tree)
        found["BASE_TABLE"].sort(key=lambda n: int(n.get("query_location") or 0))
        return found

    def _keys_sql(self, work: RefreshWork, key_type: str) -> str:
        """The distinct changed keys of an incremental refresh, typed like the table's key."""
        q = self.dialect.quote_literal
        sources = ", ".join(q(s) for s in work.key_sources) or "NULL"
        return (
            f"SELECT DISTINCT CAST(key_value AS {key_type}) AS k "
            f"FROM {self.control('changed_keys')} WHERE key_column = {q(work.refresh_key)} "
            f"AND table_name IN ({sources}) "
            f"AND lsn > {int(work.from_lsn)} AND lsn <= {int(work.snapshot_lsn)}"
        )

    def _key_type(self, work: RefreshWork) -> str:
        types = dict(self.table_columns(DERIVED_SCHEMA, work.name))
        if work.refresh_key not in types:
            raise TargetError(f"{DERIVED_SCHEMA}.{work.name} has no column {work.refresh_key}")
        return types[work.refresh_key]

    def pending_changes(self, work: RefreshWork) -> PendingChanges:
        key = self.dialect.quote_ident(str(work.refresh_key))
        table = self.dialect.qualify(DERIVED_SCHEMA, work.name)
        keys = self._keys_sql(work, self._key_type(work))
        row = self.con.execute(
            f"WITH k AS ({keys}) SELECT (SELECT count(*) FROM k), "
            f"(SELECT count(*) FROM {table} WHERE {key} IN (SELECT k FROM k) "
            f"OR ({key} IS NULL AND EXISTS (SELECT 1 FROM k WHERE k IS NULL))), "
            f"(SELECT count(*) FROM {table})"
        ).fetchone()
        assert row is not None
        return PendingChanges(int(row[0]), int(row[1]), int(row[2]))

    def refresh_dynamic_table(self, work: RefreshWork) -> RefreshResult:
        """Run one planned refresh in ONE transaction; never leaves a half-refreshed table.

        * INITIALIZATION / FULL: the query's whole result is built as a new table
          (`derived.__clinipipe_new_<name>`), which replaces `derived.<name>` (DROP + RENAME).
        * INCREMENTAL: the changed keys (typed like the table's key column) go to a temporary
          table; the table's rows of those keys are deleted, and the query's rows of those keys
          inserted. The query runs with every raw or derived table it reads narrowed to the
          changed keys (a subquery in its place), which is what makes the work grow with the
          change rather than with the table; that is exact under the refresh-key contract
          (the rows of a key are computed from rows of the same key only). If the narrowed
          query does not bind (a column qualified with a schema, say), only the result is
          filtered. Either way the result is filtered to the changed keys, so rows of other
          keys are never inserted twice.
        * NO_DATA: nothing is rebuilt.

        The history row (SUCCEEDED), the metering row (not for NO_DATA, which used no
        compute), the new high-water mark and definition digest, and the changed keys recorded
        for consumers commit together with the data. On any error the transaction is rolled
        back (the table is exactly as before, its high-water mark unchanged, so the next
        refresh re-derives the same keys and more) and a FAILED row is recorded; the error
        message keeps no quoted values (they may be PHI).
        """
        started = dt.datetime.now(dt.timezone.utc)
        cpu = CpuClock()  # the calling thread runs the refresh
        counts: dict[str, int | None] = {"inserted": None, "deleted": None}
        cur = self.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                if work.action in ("INITIALIZATION", "FULL"):
                    counts = self._rebuild(cur, work)
                elif work.action == "INCREMENTAL":
                    counts = self._rederive(cur, work)
                elif work.action != "NO_DATA":
                    raise TargetError(f"unknown refresh action {work.action!r}")
                ended = dt.datetime.now(dt.timezone.utc)
                result = RefreshResult(
                    work.name, "SUCCEEDED", work.action, work.state_message, started, started,
                    ended, work.warehouse, counts["inserted"], counts["deleted"],
                    work.keys_changed, work.trigger,
                )  # fmt: skip
                cur.execute(self.refresh_history_sql(result))
                if work.action != "NO_DATA":
                    cur.execute(self.refresh_metering_sql(result, work, cpu.seconds()))
                cur.execute(self._state_sql(work, started))
                for temp in ("_clinipipe_refresh_keys", "_clinipipe_refresh_old",
                             "_clinipipe_refresh_diff"):  # fmt: skip
                    cur.execute(f"DROP TABLE IF EXISTS temp.{temp}")
                cur.execute("COMMIT")
            except BaseException:
                rollback(cur)
                raise
        except (duckdb.Error, TargetError) as exc:
            reason = scrub_values(first_line(exc))
            failed = RefreshResult(
                work.name, "FAILED", work.action,
                f"{work.action.lower()} refresh failed, nothing changed: {reason}", None,
                started, dt.datetime.now(dt.timezone.utc), work.warehouse, None, None,
                work.keys_changed, work.trigger,
            )  # fmt: skip
            self.record_refresh(failed)
            return failed
        finally:
            cur.close()
        return result

    def _state_sql(self, work: RefreshWork, started: dt.datetime) -> str:
        q = self.dialect.quote_literal
        state = self.control("dynamic_table_state")
        if work.action in ("INITIALIZATION", "FULL"):
            return (
                f"INSERT OR REPLACE INTO {state} (name, definition_digest, high_water_lsn, "
                f"data_timestamp, built_at) VALUES ({q(work.name)}, {q(work.digest)}, "
                f"{int(work.snapshot_lsn)}, {q(started.isoformat())}, {q(started.isoformat())})"
            )
        return (
            f"UPDATE {state} SET high_water_lsn = {int(work.snapshot_lsn)}, "
            f"data_timestamp = {q(started.isoformat())} WHERE name = {q(work.name)}"
        )

    def _rebuild(self, cur: duckdb.DuckDBPyConnection, work: RefreshWork) -> dict[str, int | None]:
        """Build the whole result under a new name and swap it in (inside the transaction)."""
        q = self.dialect.quote_literal
        table = self.dialect.qualify(DERIVED_SCHEMA, work.name)
        new_name = f"__clinipipe_new_{work.name}"
        new = self.dialect.qualify(DERIVED_SCHEMA, new_name)
        cur.execute(f"CREATE OR REPLACE TABLE {new} AS SELECT * FROM ({_dt_sql(work.sql)}) AS q")
        inserted = _count(cur, f"SELECT count(*) FROM {new}")
        old_columns = columns_of(cur, DERIVED_SCHEMA, work.name)
        deleted = _count(cur, f"SELECT count(*) FROM {table}") if old_columns else 0
        if work.consumers:
            if old_columns and old_columns == columns_of(cur, DERIVED_SCHEMA, new_name):
                cur.execute(
                    "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_diff AS "
                    f"(SELECT * FROM {table} EXCEPT ALL SELECT * FROM {new}) UNION ALL "
                    f"(SELECT * FROM {new} EXCEPT ALL SELECT * FROM {table})"
                )
                self._record_consumer_keys(cur, work, "temp._clinipipe_refresh_diff", old_columns)
            else:  # nothing to compare with: every consumer is rebuilt from scratch
                names = ", ".join(q(c) for c, _ in work.consumers)
                cur.execute(
                    f"DELETE FROM {self.control('dynamic_table_state')} WHERE name IN ({names})"
                )
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"ALTER TABLE {new} RENAME TO {self.dialect.quote_ident(work.name)}")
        return {"inserted": inserted, "deleted": deleted}

    def _rederive(self, cur: duckdb.DuckDBPyConnection, work: RefreshWork) -> dict[str, int | None]:
        """Delete the rows of the changed keys and insert them anew (inside the transaction)."""
        quote = self.dialect.quote_ident
        key = quote(str(work.refresh_key))
        table = self.dialect.qualify(DERIVED_SCHEMA, work.name)
        keys = "temp._clinipipe_refresh_keys"
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_keys AS "
            f"{self._keys_sql(work, self._key_type(work))}"
        )
        has_null = bool(_count(cur, f"SELECT count(*) FROM {keys} WHERE k IS NULL"))

        def match(column: str) -> str:
            null = f" OR {column} IS NULL" if has_null else ""
            return f"({column} IN (SELECT k FROM {keys}){null})"

        query = self._narrowed_query(work.sql, match(key))
        columns = columns_of(cur, DERIVED_SCHEMA, work.name)
        if work.consumers:
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_old AS "
                f"SELECT * FROM {table} WHERE {match(key)}"
            )
        deleted = _count(cur, f"DELETE FROM {table} WHERE {match(key)}")
        inserted = _count(
            cur, f"INSERT INTO {table} SELECT * FROM ({query}) AS q WHERE {match('q.' + key)}"
        )
        if work.consumers:
            old = "temp._clinipipe_refresh_old"
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_diff AS "
                f"(SELECT * FROM {old} EXCEPT ALL SELECT * FROM {table} WHERE {match(key)}) "
                f"UNION ALL (SELECT * FROM {table} WHERE {match(key)} "
                f"EXCEPT ALL SELECT * FROM {old})"
            )
            self._record_consumer_keys(cur, work, "temp._clinipipe_refresh_diff", columns)
        return {"inserted": inserted, "deleted": deleted}

    def _narrowed_query(self, sql: str, condition: str) -> str:
        """`sql` with each raw or derived table it reads replaced by that table narrowed to
        `condition`; `sql` itself when the narrowed form would not bind to the same columns."""
        quote = self.dialect.quote_ident
        nodes = [n for n in self._base_tables(sql) if _schema_role(n["schema_name"])]
        if not nodes:
            return _dt_sql(sql)

        def narrowed(where: str) -> str | None:
            data = _dt_sql(sql).encode()
            out, pos = [], 0
            for node in nodes:
                start = node.get("query_location")
                if not isinstance(start, int) or not pos <= start < len(data):
                    return None
                end = _reference_end(data, start)
                if end <= start:
                    return None
                alias = "" if node.get("alias") else f" AS {quote(str(node['table_name']))}"
                out += [data[pos:start], b"(SELECT * FROM ", data[start:end],
                        f" WHERE {where}){alias}".encode()]  # fmt: skip
                pos = end
            out.append(data[pos:])
            return b"".join(out).decode()

        probe = narrowed("TRUE")
        if probe is None:
            return _dt_sql(sql)
        try:
            if self.query_columns(probe) != self.query_columns(sql):
                return _dt_sql(sql)
        except TargetError:
            return _dt_sql(sql)
        return narrowed(condition) or _dt_sql(sql)

    def _record_consumer_keys(
        self,
        cur: duckdb.DuckDBPyConnection,
        work: RefreshWork,
        changed_rows: str,
        columns: list[tuple[str, str]],
    ) -> None:
        """Record, for each consumer, the values of its key in `changed_rows` as changed keys of
        `derived.<name>` at the snapshot; a consumer that already reflects the snapshot gets
        its high-water mark lowered below it, so that it still sees them."""
        q, quote = self.dialect.quote_literal, self.dialect.quote_ident
        names = {n for n, _ in columns}
        source = changed_keys_source("derived", work.name)
        for key in sorted({k for _, k in work.consumers if k in names}):
            cur.execute(
                f"INSERT INTO {self.control('changed_keys')} (table_name, key_column, key_value, "
                f"lsn) SELECT DISTINCT {q(source)}, {q(key)}, CAST({quote(key)} AS VARCHAR), "
                f"{int(work.snapshot_lsn)} FROM {changed_rows}"
            )
        consumers = ", ".join(q(c) for c, _ in work.consumers)
        cur.execute(
            f"UPDATE {self.control('dynamic_table_state')} "
            f"SET high_water_lsn = {int(work.snapshot_lsn) - 1} "
            f"WHERE name IN ({consumers}) AND high_water_lsn >= {int(work.snapshot_lsn)}"
        )

    def prune_changed_keys(self, names: Sequence[str]) -> int:
        if not names or self.read_only:
            return 0
        q = self.dialect.quote_literal
        listed = ", ".join(q(n) for n in names)
        # Keys an incremental publish of an interactive table still needs (clinipipe.pipeline.
        # publish.KEY_FLOORS: lsn >= the mark its current generation was published at) stay.
        kept = ""
        if self.table_exists(CONTROL_SCHEMA, "serving_key_floors"):
            kept = (f" AND lsn < coalesce((SELECT min(lsn) FROM "
                    f"{self.control('serving_key_floors')} WHERE source IN ({listed})), "
                    f"{2**62})")  # fmt: skip
        row = self.con.execute(
            f"DELETE FROM {self.control('changed_keys')} WHERE lsn <= (SELECT min(high_water_lsn) "
            f"FROM {self.control('dynamic_table_state')} WHERE name IN ({listed})){kept}"
        ).fetchone()
        return int(row[0]) if row else 0


def _binder_message(exc: duckdb.Error) -> str:
    """DuckDB's binder message without its "Binder Error: " prefix, with the candidate
    bindings it suggests (identifiers), on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0].split(": ", 1)[-1] if lines else type(exc).__name__
    hints = [line for line in lines[1:] if line.lower().startswith(("candidate", "did you mean"))]
    return " ".join([text, *hints])


def _dt_sql(sql: str) -> str:
    """A dynamic table's query as written, without trailing semicolons or blanks."""
    return sql.strip().rstrip(";").rstrip()


def _schema_role(schema: object) -> str | None:
    """'raw' or 'derived' when `schema` is the raw or derived schema, else None."""
    name = str(schema or "").lower()
    if name == RAW_SCHEMA.lower():
        return "raw"
    if name == DERIVED_SCHEMA.lower():
        return "derived"
    return None


def _reference_end(data: bytes, start: int) -> int:
    """End (byte offset) of the dotted table name starting at `start` in `data`:
    `name(.name)*`, each part bare or double-quoted, blanks allowed around the dots."""

    def part(i: int) -> int:
        if i < len(data) and data[i : i + 1] == b'"':
            i += 1
            while i < len(data):
                if data[i : i + 1] == b'"':
                    if data[i + 1 : i + 2] == b'"':
                        i += 2
                        continue
                    return i + 1
                i += 1
            return -1
        j = i
        while j < len(data) and (chr(data[j]).isalnum() or data[j] in b"_$" or data[j] >= 0x80):
            j += 1
        return j if j > i else -1

    end = part(start)
    while end > 0:
        i = end
        while i < len(data) and data[i : i + 1].isspace():
            i += 1
        if data[i : i + 1] != b".":
            break
        i += 1
        while i < len(data) and data[i : i + 1].isspace():
            i += 1
        nxt = part(i)
        if nxt < 0:
            break
        end = nxt
    return end


def _count(cur: duckdb.DuckDBPyConnection, sql: str) -> int:
    """Run `sql` and return the single number it yields (a count, or the rows a DML changed)."""
    row = cur.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
