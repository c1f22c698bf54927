"""The column names of the spec's source tables, as the source catalog has them.

Used to check every column name a spec writes (`source.tables[].columns`, `primary_key`,
`release`) against the real tables before anything is deployed (`clinipipe.pipeline.deploy`):
a misspelled column would otherwise silently escape its PHI classification.

Guarantees: only catalog SELECTs run (`clinipipe.source.catalog.introspect_table`), in one
read-only connection that is closed before returning; nothing on the source changes. A table
that cannot be introspected (missing, not a table, no primary key, no privilege) is reported
in `SourceColumns.skipped` with the catalog's message (no row value is ever read), never raised:
deploy's own source checks report those problems with their fixes. Columns whose names differ
only by case are raised (`ColumnNameClash`): no check of deploy's would refuse them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from clinipipe.source.catalog import CatalogError, ColumnNameClash, introspect_table
from clinipipe.source.postgres import connect


@dataclass(frozen=True)
class SourceColumns:
    """`columns`: (schema, table) -> column names in table order; `primary_keys`: (schema,
    table) -> its primary key columns in key order (empty for an append-only table without
    one); `skipped`: (schema, table) -> why the table's columns could not be read."""

    columns: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    primary_keys: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)


def source_columns(
    dsn: str,
    tables: Iterable[tuple[str, str]],
    *,
    append_only: Collection[tuple[str, str]] = (),
) -> SourceColumns:
    """Read the column names of each (schema, table) from the source catalog (the tables in
    `append_only` may lack a primary key).

    Raises `SourceError` (masked DSN) when the source cannot be reached."""
    result = SourceColumns()
    con = connect(dsn, application_name="clinipipe-check")
    try:
        con.set_session(readonly=True)
        for schema, table in dict.fromkeys(tables):
            try:
                described = introspect_table(
                    con, schema, table, append_only=(schema, table) in append_only
                )
            except ColumnNameClash:
                raise  # refused before anything is deployed: the warehouse cannot hold both
            except CatalogError as exc:
                result.skipped[(schema, table)] = str(exc)
                con.rollback()
                continue
            result.columns[(schema, table)] = described.column_names
            result.primary_keys[(schema, table)] = described.primary_key
        con.rollback()
    finally:
        con.close()
    return result
