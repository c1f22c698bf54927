"""DuckDB refresh: clinipipe's refresh engine runs each planned refresh of a dynamic table (DuckDB
has no dynamic tables of its own; see `cannot.py`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
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
from clinipipe.targets.duckdb import recent_rows
from clinipipe.targets.duckdb.core import DuckDBCore, columns_of, rollback, transaction
from clinipipe.targets.duckdb.recent_rows import control_prefix
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
        * Counts kept per join key (`Factored`): when the query is an aggregate over joins in
          which one input is read only through counts (`count(l.col) [FILTER ...]`, joined on
          one column, every other aggregate duplicate-insensitive), that input is read through
          a summary `_clinipipe.dt_counts__<name>_...` (its counts per refresh key and
          join value). Rebuilds build the summary and the table from it; an incremental
          refresh first re-counts, from the input, the keys that input changed (none, when
          only other inputs changed: the input is then not read at all), then re-derives the
          changed keys reading the summary. The summary commits with the table and its
          high-water mark, and any summary a refresh does not maintain is dropped in it, so a
          summary always reflects its input at the mark. The rewritten query must bind to the
          same columns and types as the query, else the query itself runs.
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
            with transaction(cur):
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
                             "_clinipipe_refresh_diff", "_clinipipe_refresh_new",
                             "_clinipipe_refresh_input_keys"):  # fmt: skip
                    cur.execute(f"DROP TABLE IF EXISTS temp.{temp}")
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
        factored = self._factored(cur, work)
        self._drop_summaries(cur, work.name, keep=None)
        query = _dt_sql(work.sql)
        if factored is not None:
            _build_summary(cur, factored)
            if _same_columns(cur, work.sql, factored.query):
                query = factored.query
            else:
                self._drop_summaries(cur, work.name, keep=None)
        cur.execute(f"CREATE OR REPLACE TABLE {new} AS SELECT * FROM ({query}) AS q")
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
        recent_rows.discard(cur, work.name)
        return {"inserted": inserted, "deleted": deleted}

    def _rederive(self, cur: duckdb.DuckDBPyConnection, work: RefreshWork) -> dict[str, int | None]:
        """Delete the rows of the changed keys and insert them anew (inside the transaction)."""
        quote = self.dialect.quote_ident
        key = quote(str(work.refresh_key))
        table = self.dialect.qualify(DERIVED_SCHEMA, work.name)
        keys = "temp._clinipipe_refresh_keys"
        key_type = self._key_type(work)
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_keys AS "
            f"{self._keys_sql(work, key_type)}"
        )
        has_null = bool(_count(cur, f"SELECT count(*) FROM {keys} WHERE k IS NULL"))

        def match(column: str) -> str:
            null = f" OR {column} IS NULL" if has_null else ""
            return f"({column} IN (SELECT k FROM {keys}){null})"

        factored = self._factored(cur, work)
        if factored is not None and not self._maintain_summary(cur, work, factored):
            factored = None
        self._drop_summaries(cur, work.name, keep=factored.summary if factored else None)
        query = self._narrowed_query(work.sql, match(key), cur, factored)
        columns = columns_of(cur, DERIVED_SCHEMA, work.name)
        if work.consumers:
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_old AS "
                f"SELECT * FROM {table} WHERE {match(key)}"
            )
        deleted = _count(cur, f"DELETE FROM {table} WHERE {match(key)}")
        derived = f"SELECT * FROM ({query}) AS q WHERE {match('q.' + key)}"
        if work.keep_recent_rows:  # the rows it inserts are handed over (`recent_rows`)
            new = "temp._clinipipe_refresh_new"
            cur.execute(f"CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_new AS {derived}")
            inserted = _count(cur, f"INSERT INTO {table} SELECT * FROM {new}")
            recent_rows.keep(cur, work.name, table, key, key_type, keys, new,
                             work.snapshot_lsn, inserted - deleted)  # fmt: skip
        else:
            inserted = _count(cur, f"INSERT INTO {table} {derived}")
            recent_rows.discard(cur, work.name)
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

    def _narrowed_query(
        self,
        sql: str,
        condition: str,
        cur: duckdb.DuckDBPyConnection | None = None,
        factored: Factored | None = None,
    ) -> str:
        """`sql` with each raw or derived table it reads replaced by that table narrowed to
        `condition`; `sql` itself when the narrowed form would not bind to the same columns.
        With `factored`, its query (reading its summary) in place of `sql`, when it binds to
        the same columns as `sql`; bound on `cur` (inside its transaction)."""
        quote = self.dialect.quote_ident
        con = cur if cur is not None else self.con

        def columns(text: str) -> list[tuple[str, str]] | None:
            return _bound_columns(con, text)

        if factored is not None:
            if not _same_columns(con, sql, factored.query):
                return self._narrowed_query(sql, condition, cur)
            sql = factored.query

        # The summary is not narrowed: it is read only through its join column, so DuckDB
        # filters it by the narrowed rows it is joined to (and the result is filtered by key).
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
        expected = columns(sql)
        if expected is None or columns(probe) != expected:
            return _dt_sql(sql)
        return narrowed(condition) or _dt_sql(sql)

    # --- counts kept per join key (see `Factored`) ----------------------------------------

    def _factored(self, cur: duckdb.DuckDBPyConnection, work: RefreshWork) -> Factored | None:
        """`work`'s query in `Factored` form, or None (not of that shape, no refresh key, or
        its input's changes are not among `work.key_sources`)."""
        if not work.refresh_key:
            return None
        try:
            factored = factor_counts(cur, work.name, work.sql, work.refresh_key)
        except duckdb.Error:
            return None
        if factored is None:
            return None
        if len(_summary_sources(work, factored)) != 1:
            return None
        if _bound_columns(cur, factored.summary_sql) is None:  # a binder error keeps `cur`
            return None
        return factored

    def _drop_summaries(self, cur: duckdb.DuckDBPyConnection, name: str, keep: str | None) -> None:
        """Drop the count summaries of dynamic table `name` but `keep`: a summary is only
        ever valid while every refresh of its table maintains it."""
        rows = cur.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = ? AND starts_with(table_name, ?)",
            [CONTROL_SCHEMA, summary_prefix(name)],
        ).fetchall()
        for (table,) in rows:
            if table != keep:
                cur.execute(f"DROP TABLE {self.control(str(table))}")

    def _maintain_summary(
        self, cur: duckdb.DuckDBPyConnection, work: RefreshWork, factored: Factored
    ) -> bool:
        """Bring `factored.summary` to the snapshot inside the refresh's transaction: the keys
        its input changed in (from_lsn, snapshot_lsn] are re-counted from the input (a
        superset is harmless, a key re-counted twice gets the same rows); built whole when it
        does not exist. The summary and the table's high-water mark commit together, so the
        summary reflects its input at the mark. True when the summary can be read."""
        q = self.dialect.quote_literal
        summary = self.control(factored.summary)
        if not columns_of(cur, CONTROL_SCHEMA, factored.summary):
            _build_summary(cur, factored)
            return True
        schema = RAW_SCHEMA if factored.role == "raw" else DERIVED_SCHEMA
        types = dict(columns_of(cur, schema, factored.table))
        key_type = next((t for c, t in types.items() if c.lower() == factored.key.lower()), None)
        if key_type is None:
            return False
        [source] = _summary_sources(work, factored)
        keys = "temp._clinipipe_refresh_input_keys"
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE _clinipipe_refresh_input_keys AS "
            f"SELECT DISTINCT CAST(key_value AS {key_type}) AS k "
            f"FROM {self.control('changed_keys')} WHERE key_column = {q(work.refresh_key)} "
            f"AND table_name = {q(source)} "
            f"AND lsn > {int(work.from_lsn)} AND lsn <= {int(work.snapshot_lsn)}"
        )
        if not _count(cur, f"SELECT count(*) FROM {keys}"):
            return True
        has_null = bool(_count(cur, f"SELECT count(*) FROM {keys} WHERE k IS NULL"))

        def match(column: str) -> str:
            null = f" OR {column} IS NULL" if has_null else ""
            return f"({column} IN (SELECT k FROM {keys}){null})"

        key = self.dialect.quote_ident(factored.key)
        counted = self._narrowed_query(factored.summary_sql, match(key), cur)
        cur.execute(f"DELETE FROM {summary} WHERE {match(key)}")
        cur.execute(
            f"INSERT INTO {summary} SELECT * FROM ({counted}) AS q WHERE {match('q.' + key)}"
        )
        return True

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

    def drop_unused_refresh_state(self, names: Sequence[str]) -> list[str]:
        if self.read_only:
            return []
        prefixes = (COUNTS_PREFIX, recent_rows.RECENT_PREFIX)
        kept = tuple(control_prefix(prefix, name) for name in names for prefix in prefixes)
        rows = self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = ? AND (starts_with(table_name, ?) OR starts_with(table_name, ?))",
            [CONTROL_SCHEMA, *prefixes],
        ).fetchall()
        unused = sorted(str(t) for (t,) in rows if not str(t).startswith(kept))
        if unused:
            self.execute_atomically([f"DROP TABLE {self.control(t)}" for t in unused])
        return unused

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


# --- counts kept per join key (the "factored" refresh) ---------------------------------------

COUNTS_PREFIX = "dt_counts__"
"""Name prefix of the count summaries (`_clinipipe.dt_counts__<table>_<digest>__<digest>`)."""

_ALLOWED_CLASSES = frozenset(
    {"COLUMN_REF", "CONSTANT", "FUNCTION", "OPERATOR", "CAST", "CASE", "COMPARISON",
     "CONJUNCTION", "BETWEEN"}
)  # fmt: skip
"""Expression classes the factoring understands; any other (a subquery, a window, a star, a
lambda, a parameter) means the query is refreshed by key as before."""

_DUPLICATE_INSENSITIVE = frozenset({"min", "max", "bool_and", "bool_or"})
"""Aggregates whose value does not depend on how many times each input row occurs (with
`count(DISTINCT ...)`): the factoring changes row multiplicities, never the set of rows."""


@dataclass(frozen=True)
class Factored:
    """A dynamic table's query with one input (`alias`, table `schema.table`) read through a
    summary of counts: `summary_sql` groups that input by the refresh key and the one column
    it is joined on, counting what each `count(alias.col) [FILTER (WHERE ...)]` of the query
    counts; `query` is the query reading the summary (`summary` table, same alias) in its place,
    each of those counts replaced by `CAST(coalesce(sum(<alias>.<count>), 0) AS BIGINT)`.

    Exact: every other use of the input is its join column in the one join condition, so the
    input's rows of equal (key, join value) are interchangeable; counts add up over them; every
    other aggregate of the query ignores duplicates (min, max, bool_and/or, count(DISTINCT)), so
    collapsing those rows into one changes no result; and a summary row exists exactly when an
    input row of that (key, join value) does, so inner and left joins keep and drop the same
    rows. The summary keeps the key column, so narrowing it to keys narrows the input.
    """

    role: str
    table: str
    alias: str
    key: str
    join_column: str
    summary: str
    summary_sql: str
    query: str


def summary_prefix(name: str) -> str:
    """Name prefix of the count summaries of dynamic table `name` (see `control_prefix`)."""
    return control_prefix(COUNTS_PREFIX, name)


def factor_counts(con: duckdb.DuckDBPyConnection, name: str, sql: str, key: str) -> Factored | None:
    """The `Factored` form of `sql` (refresh key `key`), or None when the query is not of the
    shape it covers: one SELECT ... FROM <inner/left join tree of raw/derived tables> [WHERE]
    GROUP BY ..., no HAVING/QUALIFY/DISTINCT/ORDER/LIMIT/CTE/subquery/window, every column
    qualified `alias.column`, and one table T (right side of a LEFT or INNER join on
    `T.x = other.y`) that is used only there and in aliased `count(T.col) [FILTER (WHERE <T
    only>)]` items of the select list, every other aggregate being duplicate-insensitive."""
    import hashlib
    import json

    text = _dt_sql(sql)
    row = con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        return None
    node = tree["statements"][0]["node"]
    if (
        node.get("type") != "SELECT_NODE"
        or node.get("modifiers")
        or (node.get("cte_map") or {}).get("map")
        or node.get("having") is not None
        or node.get("qualify") is not None
        or node.get("sample") is not None
        or node.get("aggregate_handling") != "STANDARD_HANDLING"
        or not node.get("group_expressions")
        or len(node.get("group_sets") or []) != 1
    ):
        return None
    leaves: list[dict[str, Any]] = []
    candidates: list[tuple[dict[str, Any], dict[str, Any], str]] = []  # (join, leaf, other)

    def walk_from(ref: dict[str, Any]) -> bool:
        if ref.get("type") == "BASE_TABLE":
            if ref.get("sample") is not None or ref.get("at_clause") is not None:
                return False
            if ref.get("catalog_name") or ref.get("column_name_alias"):
                return False
            leaves.append(ref)
            return True
        if ref.get("type") != "JOIN" or ref.get("alias") or ref.get("sample") is not None:
            return False
        if ref.get("join_type") not in ("LEFT", "INNER") or ref.get("ref_type") != "REGULAR":
            return False
        if ref.get("using_columns") or ref.get("condition") is None:
            return False
        if not (walk_from(ref["left"]) and walk_from(ref["right"])):
            return False
        right, cond = ref["right"], ref["condition"]
        if right.get("type") == "BASE_TABLE" and cond.get("type") == "COMPARE_EQUAL":
            sides = [cond.get("left", {}), cond.get("right", {})]
            if all(s.get("class") == "COLUMN_REF" for s in sides):
                mine = _alias_of(right)
                names = [[str(n) for n in s.get("column_names", [])] for s in sides]
                if all(len(n) == 2 for n in names):
                    ours = [n for n in names if n[0].lower() == mine.lower()]
                    other = [n for n in names if n[0].lower() != mine.lower()]
                    if len(ours) == 1 and len(other) == 1:
                        candidates.append((ref, right, ours[0][1]))
        return True

    if not walk_from(node.get("from_table") or {}):
        return None
    aliases = [_alias_of(leaf).lower() for leaf in leaves]
    if len(set(aliases)) != len(aliases):
        return None
    if any(_schema_role(leaf.get("schema_name")) is None for leaf in leaves):
        return None
    if not candidates:
        return None
    kinds = _function_kinds(con, _function_names(node))
    for join, leaf, join_column in candidates:
        alias = _alias_of(leaf)
        factored = _factor_leaf(node, join, leaf, alias, join_column, key, kinds)
        if factored is None:
            continue
        counts, summary_select = factored
        summary_tree = {
            "error": False,
            "statements": [{"node": {**_empty_select(), **summary_select}}],
        }
        summary_sql = _deserialize(con, summary_tree)
        if summary_sql is None:
            continue
        digest = hashlib.sha256(summary_sql.encode()).hexdigest()[:12]
        summary = f"{summary_prefix(name)}{digest}"
        leaf.update(schema_name=CONTROL_SCHEMA, table_name=summary, alias=alias)
        for item, column in counts:
            replacement = _parse_expression(
                con, f'CAST(coalesce(sum("{alias}"."{column}"), 0) AS BIGINT)'
            )
            replacement["alias"] = item["alias"]
            item.clear()
            item.update(replacement)
        query = _deserialize(con, tree)
        if query is None:
            return None
        return Factored(
            str(_schema_role(summary_select["from_table"]["schema_name"]) or ""),
            str(summary_select["from_table"]["table_name"]), alias, key, join_column,
            summary, summary_sql, query,
        )  # fmt: skip
    return None


def _factor_leaf(
    node: dict[str, Any],
    join: dict[str, Any],
    leaf: dict[str, Any],
    alias: str,
    join_column: str,
    key: str,
    kinds: dict[str, str],
) -> tuple[list[tuple[dict[str, Any], str]], dict[str, Any]] | None:
    """(count items of the select list with their summary column, the summary's SELECT node)
    when `leaf` can be factored out of `node`; None when not (see `factor_counts`)."""
    import copy

    mine = alias.lower()
    counts: list[tuple[dict[str, Any], str]] = []
    summary_items: list[dict[str, Any]] = []

    def refs(expr: Any) -> list[list[str]] | None:
        """Every column reference under `expr`; None when something is not understood."""
        found: list[list[str]] = []

        def go(e: Any) -> bool:
            if isinstance(e, list):
                return all(go(x) for x in e)
            if not isinstance(e, dict):
                return True
            cls = e.get("class")
            if cls is not None and cls not in _ALLOWED_CLASSES:
                return False
            if cls == "COLUMN_REF":
                names = [str(n) for n in e.get("column_names", [])]
                if len(names) != 2:
                    return False
                found.append(names)
            return all(go(v) for k, v in e.items() if k != "column_names")

        return found if go(expr) else None

    def uses_leaf(expr: Any) -> bool | None:
        found = refs(expr)
        return None if found is None else any(n[0].lower() == mine for n in found)

    def aggregates_ok(expr: Any) -> bool:
        """No aggregate under `expr` depends on row multiplicity or reads the leaf."""
        if isinstance(expr, list):
            return all(aggregates_ok(x) for x in expr)
        if not isinstance(expr, dict):
            return True
        if expr.get("class") == "FUNCTION":
            name = str(expr.get("function_name", "")).lower()
            kind = kinds.get(name)
            if expr.get("schema") or expr.get("catalog") or kind not in ("aggregate", "scalar"):
                return False
            if kind == "aggregate":
                if uses_leaf(expr) is not False:
                    return False
                if (expr.get("order_bys") or {}).get("orders") or expr.get("export_state"):
                    return False
                distinct = bool(expr.get("distinct"))
                return name in _DUPLICATE_INSENSITIVE or (name == "count" and distinct)
        return all(aggregates_ok(v) for v in expr.values())

    for item in node["select_list"]:
        if (
            item.get("class") == "FUNCTION"
            and str(item.get("function_name", "")).lower() == "count"
            and uses_leaf(item)
        ):
            children = item.get("children") or []
            if (
                item.get("distinct") or item.get("schema") or item.get("catalog")
                or (item.get("order_bys") or {}).get("orders") or item.get("export_state")
                or not item.get("alias") or len(children) != 1
            ):  # fmt: skip
                return None
            found = refs(item)
            if found is None or any(n[0].lower() != mine for n in found):
                return None
            if not _only_scalar([children, item.get("filter")], kinds):
                return None
            column = f"__clinipipe_count_{len(counts)}"
            summary_item = copy.deepcopy(item)
            summary_item["alias"] = column
            summary_items.append(summary_item)
            counts.append((item, column))
            continue
        if uses_leaf(item) is not False or not aggregates_ok(item):
            return None
    if not counts:
        return None
    for part in (node.get("where_clause"), node.get("group_expressions")):
        if part is not None and (uses_leaf(part) is not False or not aggregates_ok(part)):
            return None

    def other_conditions_ok(ref: dict[str, Any]) -> bool:
        if ref.get("type") != "JOIN":
            return True
        condition = ref["condition"]
        if ref is not join and (uses_leaf(condition) is not False or not aggregates_ok(condition)):
            return False
        return other_conditions_ok(ref["left"]) and other_conditions_ok(ref["right"])

    if not other_conditions_ok(node["from_table"]):
        return None

    def column(name: str) -> dict[str, Any]:
        return {"class": "COLUMN_REF", "type": "COLUMN_REF", "alias": name,
                "query_location": 0, "column_names": [alias, name]}  # fmt: skip

    group = [column(key)] + ([column(join_column)] if join_column != key else [])
    summary_select = {
        "select_list": [*copy.deepcopy(group), *summary_items],
        "from_table": copy.deepcopy(leaf),
        "group_expressions": [{**g, "alias": ""} for g in copy.deepcopy(group)],
        "group_sets": [list(range(len(group)))],
    }
    return counts, summary_select


def _only_scalar(expr: Any, kinds: dict[str, str]) -> bool:
    """True when every function under `expr` is a built-in scalar function."""
    if isinstance(expr, list):
        return all(_only_scalar(x, kinds) for x in expr)
    if not isinstance(expr, dict):
        return True
    if expr.get("class") == "FUNCTION" and (
        expr.get("schema")
        or expr.get("catalog")
        or kinds.get(str(expr.get("function_name")).lower()) != "scalar"
    ):
        return False
    return all(_only_scalar(v, kinds) for v in expr.values())


def _same_columns(con: duckdb.DuckDBPyConnection, sql: str, other: str) -> bool:
    """True when `other` binds (on `con`) to the same column names and types as `sql`."""
    expected = _bound_columns(con, sql)
    return expected is not None and _bound_columns(con, other) == expected


def _summary_sources(work: RefreshWork, factored: Factored) -> list[str]:
    """The `changed_keys` sources of `work` that are the factored input's (one, or none)."""
    wanted = changed_keys_source(factored.role, factored.table).lower()
    return [s for s in work.key_sources if s.lower() == wanted]


def _build_summary(cur: duckdb.DuckDBPyConnection, factored: Factored) -> None:
    """Build `factored.summary` from its input as it is now (= at the snapshot: CDC and
    refreshes never interleave), inside the refresh's transaction on `cur`."""
    summary = f"{CONTROL_SCHEMA}.{factored.summary}"  # the name needs no quoting
    cur.execute(f"CREATE OR REPLACE TABLE {summary} AS {factored.summary_sql}")


def _bound_columns(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[str, str]] | None:
    """(name, type) of each column `sql` returns, bound on `con`; None when it does not bind."""
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM ({_dt_sql(sql)}) AS q").fetchall()
    except duckdb.Error:
        return None
    return [(str(r[0]), str(r[1])) for r in rows]


def _alias_of(ref: dict[str, Any]) -> str:
    return str(ref.get("alias") or ref.get("table_name") or "")


def _empty_select() -> dict[str, Any]:
    return {
        "type": "SELECT_NODE", "modifiers": [], "cte_map": {"map": []}, "where_clause": None,
        "having": None, "sample": None, "qualify": None,
        "aggregate_handling": "STANDARD_HANDLING",
    }  # fmt: skip


def _function_names(expr: Any) -> set[str]:
    """The names (lower case) of the functions called under `expr`."""
    if isinstance(expr, list):
        return set().union(*(_function_names(x) for x in expr)) if expr else set()
    if not isinstance(expr, dict):
        return set()
    found = {str(expr.get("function_name")).lower()} if expr.get("class") == "FUNCTION" else set()
    return found.union(*(_function_names(v) for v in expr.values()))


def _function_kinds(con: duckdb.DuckDBPyConnection, names: set[str]) -> dict[str, str]:
    """Function name (lower case, of `names`) -> 'aggregate' or 'scalar' when every overload
    of that name in this database's own catalog is a built-in of that kind, else 'other' (a
    macro, also one shadowing a built-in; a table function; a name of both kinds); a name it
    does not know is missing."""
    found: dict[str, set[str]] = {}
    if not names:
        return {}
    for name, kind, internal in con.execute(
        "SELECT DISTINCT lower(function_name), function_type, internal FROM duckdb_functions() "
        "WHERE lower(function_name) IN (SELECT unnest(?::VARCHAR[]))",
        [sorted(names)],
    ).fetchall():
        found.setdefault(str(name), set()).add(str(kind) if internal else "user")
    return {
        name: next(iter(kinds)) if kinds in ({"aggregate"}, {"scalar"}) else "other"
        for name, kinds in found.items()
    }


def _parse_expression(con: duckdb.DuckDBPyConnection, expression: str) -> dict[str, Any]:
    import json

    row = con.execute("SELECT json_serialize_sql(?)", [f"SELECT {expression}"]).fetchone()
    assert row is not None
    return dict(json.loads(row[0])["statements"][0]["node"]["select_list"][0])


def _deserialize(con: duckdb.DuckDBPyConnection, tree: dict[str, Any]) -> str | None:
    import json

    try:
        row = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchone()
    except duckdb.Error:
        return None
    return str(row[0]) if row and row[0] else None
