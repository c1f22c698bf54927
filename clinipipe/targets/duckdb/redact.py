"""DuckDB redaction: every research table, its state row and the audit manifest built in ONE
transaction (`build_duckdb_tables`); the SQL is the generic `RedactSql`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from clinipipe.phi.safe_harbor import RedactionKey
from clinipipe.secrets import first_line, scrub_values
from clinipipe.sql.dialect import Dialect
from clinipipe.targets.capabilities.redaction import Redaction, ResearchBuild
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.core import DuckDBCore, columns_of, transaction
from clinipipe.targets.redact_sql import HELPER_PREFIX, KEY_TABLE, NEW_PREFIX, RedactSql


class DuckDBRedaction(DuckDBCore, Redaction):
    """`Redaction` on DuckDB (see `build_duckdb_tables` for the guarantees)."""

    def redact_sql(self) -> RedactSql:
        return RedactSql(self.dialect)

    def redaction_columns(self, table: str) -> list[tuple[str, str]]:
        from clinipipe.sql.context import schema_names

        return columns_of(self.con, schema_names(self.loaded.spec)["raw"], table)

    def build_research_tables(
        self,
        builds: Sequence[ResearchBuild],
        key: RedactionKey | None,
        finish: Callable[[dict[str, int]], list[str]],
    ) -> dict[str, int]:
        """One transaction for every table, its state row and `finish`'s statements (see
        `build_duckdb_tables`)."""
        return build_duckdb_tables(self.cursor, self.dialect, builds, key, finish)

    def export_schema(self, schema: str, path: Path) -> dict[str, int]:
        """Copy every table of `schema` into a NEW DuckDB file at `path` (same schema name
        inside), and nothing else: no raw, derived, serving or control table, no key, no
        state. Returns rows per table.

        Atomic: the file is written beside `path` under a temporary name, checkpointed, closed
        and renamed over `path`; a crash or error leaves `path` as it was (and at most the
        temporary file, removed on error). Reads the warehouse only; the warehouse's own
        encryption (if any) does not carry over: only de-identified data belongs in `schema`.
        """
        quote = self.dialect.quote_ident
        cur = self.cursor()  # reads this warehouse by default (also when it is encrypted)
        tables = [
            str(r[0])
            for r in cur.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                "AND schema_name = ? ORDER BY table_name",
                [schema],
            ).fetchall()
        ]
        if not tables:
            cur.close()
            raise TargetError(f"schema {schema} has no tables to export: run `clinipipe redact`")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        alias = "__clinipipe_export"
        counts: dict[str, int] = {}
        try:
            cur.execute(f"ATTACH {self.dialect.quote_literal(str(tmp))} AS {alias}")
            try:
                cur.execute(f"CREATE SCHEMA {alias}.{quote(schema)}")
                for table in tables:
                    source = self.dialect.qualify(schema, table)
                    cur.execute(
                        f"CREATE TABLE {alias}.{quote(schema)}.{quote(table)} AS "
                        f"SELECT * FROM {source}"
                    )
                    row = cur.execute(f"SELECT count(*) FROM {source}").fetchone()
                    counts[table] = int(row[0]) if row else 0
                cur.execute(f"CHECKPOINT {alias}")
            finally:
                cur.execute(f"DETACH {alias}")
            tmp.replace(path)
        except (duckdb.Error, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise TargetError(
                f"exporting schema {schema} to {path} failed, nothing was written: "
                f"{scrub_values(first_line(exc))}"
            ) from None
        finally:
            cur.close()
        return counts


def build_duckdb_tables(
    new_cursor: Callable[[], duckdb.DuckDBPyConnection],
    dialect: Dialect,
    builds: Sequence[ResearchBuild],
    key: RedactionKey | None,
    finish: Callable[[dict[str, int]], list[str]],
    batch_rows: int = 8192,
) -> dict[str, int]:
    """`DuckDBTarget.build_research_tables`: everything in ONE transaction.

    Each table is built as ``<schema>.__clinipipe_new_<table>`` (a SQL CREATE TABLE AS, or for
    a table with notes: its typed empty shape, then each Arrow batch of the reader query,
    redacted by the build's `transform`, inserted by name), labelled with its comment, and
    swapped in (DROP + RENAME); then `finish`'s statements (state rows, README rows, the audit
    manifest) run and the transaction commits. Any error rolls everything back: the research
    schema and its records are exactly as before. The key lives only in session-local
    temporary tables, given as query parameters.
    """
    quote, q = dialect.quote_ident, dialect.quote_literal
    builder = RedactSql(dialect)
    params = None
    if key is not None:
        ipad, opad = key.pads()
        params = {"ipad": ipad, "opad": opad}
    counts: dict[str, int] = {}
    cur = new_cursor()
    readers: list[duckdb.DuckDBPyConnection] = []
    try:
        if params is not None:
            cur.execute(builder.key_table_sql(), params)
        with transaction(cur):
            for build in builds:
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(build.schema)}")
                new = dialect.qualify(build.schema, NEW_PREFIX + build.table)
                if build.transform is None:
                    cur.execute(f"CREATE OR REPLACE TABLE {new} AS {build.sql}")
                else:
                    reader = new_cursor()
                    readers.append(reader)
                    if params is not None:
                        reader.execute(builder.key_table_sql(), params)
                    _stream_redacted(cur, reader, build, new, batch_rows)
                row = cur.execute(f"SELECT count(*) FROM {new}").fetchone()
                counts[build.table] = int(row[0]) if row else 0
                cur.execute(f"DROP TABLE IF EXISTS {dialect.qualify(build.schema, build.table)}")
                cur.execute(f"ALTER TABLE {new} RENAME TO {quote(build.table)}")
                cur.execute(
                    f"COMMENT ON TABLE {dialect.qualify(build.schema, build.table)} "
                    f"IS {q(build.comment)}"
                )
            for statement in finish(counts):
                cur.execute(statement)
    except duckdb.Error as exc:
        raise TargetError(
            f"building the research tables failed, nothing was changed: "
            f"{scrub_values(first_line(exc))}"
        ) from None
    finally:
        for reader in readers:
            reader.close()
        with contextlib.suppress(duckdb.Error):
            cur.execute(f"DROP TABLE IF EXISTS temp.{KEY_TABLE}")
        cur.close()
    return counts


def _stream_redacted(
    cur: duckdb.DuckDBPyConnection,
    reader: duckdb.DuckDBPyConnection,
    build: ResearchBuild,
    new: str,
    batch_rows: int,
) -> None:
    """Create `new` with the research columns of `build.sql` (helpers left out), then insert
    each batch of the query as `build.transform` returns it. Arrow batches end to end: no
    per-row Python objects outside the text redaction itself."""
    import pyarrow as pa

    assert build.transform is not None
    stream = reader.execute(build.sql).to_arrow_reader(batch_rows)
    helpers = [n for n in stream.schema.names if n.startswith(HELPER_PREFIX)]
    exclude = f" EXCLUDE ({', '.join(RedactSql.quote_names(helpers))})" if helpers else ""
    cur.execute(
        f"CREATE OR REPLACE TABLE {new} AS SELECT *{exclude} FROM ({build.sql}) WHERE false"
    )
    for batch in stream:
        redacted = build.transform(batch)
        cur.register("_clinipipe_redacted", pa.Table.from_batches([redacted]))
        try:
            cur.execute(f"INSERT INTO {new} BY NAME SELECT * FROM _clinipipe_redacted")
        finally:
            cur.unregister("_clinipipe_redacted")
