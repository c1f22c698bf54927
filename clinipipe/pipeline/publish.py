"""Interactive tables on DuckDB: publish serving copies for dashboards (`clinipipe publish`).

The warehouse file is held open read-write by one process (CDC), and DuckDB lets no other
process open it meanwhile, so the serving layer lives in separate files next to it::

    <warehouse stem>.serving/<name>/000000000007.duckdb   one complete copy per publish
    <warehouse stem>.serving/<name>/CURRENT               "000000000007.duckdb\\n"

Guarantees:

* **Complete or invisible.** A publish writes a *new* file (generation = highest generation on
  disk or in CURRENT, plus one; never an existing name), containing table `serving.<name>` (the
  name dashboards use on every target) = the rows of
  `derived.<from>` (or of the `sql:` query) ordered by `cluster_by`, checkpointed, detached and
  fsynced (file and folder). Only then is CURRENT replaced, through a temporary file, `fsync`
  and `os.replace` (atomic on POSIX), by the new file's name. A reader therefore only ever
  opens a generation that is complete; a publish that dies half-way leaves CURRENT on the
  previous generation, and its partial file is garbage that the next publish deletes.
* **Never blocks the writer, never pulls a file from under a reader.** A reader
  (:class:`clinipipe.targets.serving_files.ServingReader`) holds a shared ``flock`` on the
  generation file it has open. After switching CURRENT, a publish tries a *non-blocking*
  exclusive ``flock`` on every other file of the folder and deletes those it gets; those it
  does not get are still in use and are retried at the next publish.
* **Recorded and metered.** A publish that switched CURRENT is recorded in
  `_clinipipe.interactive_publishes` (name, generation, rows, published_at,
  source_data_timestamp: the data timestamp of the source dynamic table, NULL for `sql:`) and
  metered in `_clinipipe.metering` (job `publish:<name>`, warehouse role `interactive`), in one
  transaction after the switch (the record describes what readers get).

On Snowflake interactive tables are native (`CREATE INTERACTIVE TABLE`, kept fresh by
Snowflake), so there is nothing to publish and :func:`publish` refuses a non-DuckDB target.

**Audited: manual publishes only.** ``publish(..., audited=True)``, which is what `clinipipe
publish` runs (here or, through `clinipipe.pipeline.operations`, in a running `cdc start`),
appends one ``publish`` entry to the audit log after the switch: the serving tables,
generations and rows, or outcome ``failed`` (the error's class, the tables published before it)
when a table could not be published. The CDC loop's scheduled publishes (`PublishScheduler`)
are not recorded one by one (they would flood the log; the CDC run is recorded, and every
publish is in `_clinipipe.interactive_publishes`). A refusal (an unknown table, a target
without local serving) records nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from clinipipe.backup import audit
from clinipipe.secrets import first_line, scrub_values
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import InteractiveTable
from clinipipe.sql.context import CONTROL_SCHEMA, DERIVED_SCHEMA
from clinipipe.targets.base import Target, TargetError
from clinipipe.targets.metering import CpuClock, MeteringRow
from clinipipe.targets.serving_files import (
    cleanup,
    exclusive,
    fsync_path,
    generation_name,
    next_generation,
    serving_root_of,
    write_current,
    write_generation,
)

_NOT_LOCAL = (
    "publish serves warehouses whose interactive tables are local files (DuckDB); {target} "
    "maintains its interactive tables itself (CREATE INTERACTIVE TABLE)"
)


class PublishError(Exception):
    """A publish could not run; the message says why and readers keep the previous generation.
    `usage`: the request itself is wrong (an unknown table, a target without local serving)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class PublishResult:
    """One published generation of one interactive table."""

    name: str
    generation: int
    path: Path
    rows: int
    bytes: int
    published_at: dt.datetime
    source_data_timestamp: dt.datetime | None
    seconds: float
    removed: tuple[str, ...]
    """Files of older (or abandoned) generations deleted by this publish's cleanup."""

    def as_dict(self) -> dict[str, object]:
        source_ts = self.source_data_timestamp
        return {
            "name": self.name,
            "generation": self.generation,
            "path": str(self.path),
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "published_at": self.published_at.isoformat(),
            "source_data_timestamp": source_ts.isoformat() if source_ts else None,
        }


def _table(loaded: LoadedSpec, name: str) -> InteractiveTable:
    for table in loaded.spec.interactive_tables:
        if table.name == name:
            return table
    known = ", ".join(t.name for t in loaded.spec.interactive_tables) or "none"
    raise PublishError(
        f"no interactive table named {name!r} in the spec (known: {known})", usage=True
    )


def _source_data_timestamp(target: Target, table: InteractiveTable) -> dt.datetime | None:
    if table.from_ is None:
        return None
    state = target.dynamic_table_states().get(table.from_)
    return state.data_timestamp if state else None


def _record_sql(target: Target) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {target.control('interactive_publishes')} ("
        "name VARCHAR NOT NULL, generation BIGINT NOT NULL, rows BIGINT NOT NULL, "
        "published_at TIMESTAMPTZ NOT NULL, source_data_timestamp TIMESTAMPTZ, "
        "PRIMARY KEY (name, generation))"
    )


def publish_table(
    loaded: LoadedSpec, target: Target, table: InteractiveTable, *, index: bool = False
) -> PublishResult:
    """Publish one new generation of `table` (see the module docstring for the guarantees).

    `index` also builds an ART index on the cluster columns. Measured on 2 M rows sorted by
    the key (DuckDB 1.x, one process, warm): 0.63 ms per point lookup from zone maps alone vs
    0.43 ms with the index, for a file three times larger and a slower publish; so off by
    default (sorting already makes a lookup touch one row group).
    """
    q = target.dialect.quote_ident
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    cpu = CpuClock()  # the calling thread publishes
    root = serving_root_of(target)
    if root is None:
        raise PublishError(_NOT_LOCAL.format(target=target.describe()), usage=True)
    folder = root / table.name
    folder.mkdir(parents=True, exist_ok=True)
    source_ts = _source_data_timestamp(target, table)
    if table.from_ is not None:
        source = f"SELECT * FROM {q(DERIVED_SCHEMA)}.{q(table.from_)}"
    else:
        assert table.sql is not None
        source = f"SELECT * FROM ({table.sql.strip().rstrip(';')})"

    # One publisher per folder at a time (the lock file is never a generation).
    with exclusive(folder / ".publish.lock"):
        generation = next_generation(folder)
        path = folder / generation_name(generation)
        if path.exists() or path.with_name(path.name + ".wal").exists():
            raise PublishError(f"{path} already exists")  # cannot happen: numbers only grow
        if table.from_ is not None and not target.table_exists(DERIVED_SCHEMA, table.from_):
            raise PublishError(
                f"{table.name} serves dynamic table {table.from_}, which is not built yet: run "
                f"`clinipipe refresh {table.from_}` (or `cdc start`, which builds it) first"
            )
        try:
            rows = write_generation(target, path, table.name, source, table.cluster_by, index=index)
        except TargetError as exc:
            raise PublishError(str(exc)) from None
        fsync_path(path)
        fsync_path(folder, directory=True)
        write_current(folder, path.name)
        removed = tuple(cleanup(folder))

    ended = dt.datetime.now(dt.UTC)
    nbytes = path.stat().st_size
    warehouse = loaded.spec.warehouses.interactive
    lit = target.dialect.quote_literal
    target.execute_atomically(
        [
            f"CREATE SCHEMA IF NOT EXISTS {q(CONTROL_SCHEMA)}",
            _record_sql(target),
            f"INSERT INTO {target.control('interactive_publishes')} (name, generation, rows, "
            "published_at, source_data_timestamp) VALUES "
            f"({lit(table.name)}, {generation}, {rows}, {lit(ended.isoformat())}, "
            f"{lit(source_ts.isoformat()) if source_ts else 'NULL'})",
            target.metering_insert_sql(
                MeteringRow(
                    job=f"publish:{table.name}",
                    warehouse=warehouse.name,
                    warehouse_role="interactive",
                    size=warehouse.size,
                    started_at=started,
                    ended_at=ended,
                    rows=rows,
                    nbytes=nbytes,
                    cpu_seconds=cpu.seconds(),
                )
            ),
        ]
    )
    return PublishResult(
        name=table.name,
        generation=generation,
        path=path,
        rows=rows,
        bytes=nbytes,
        published_at=ended,
        source_data_timestamp=source_ts,
        seconds=time.perf_counter() - t0,
        removed=removed,
    )


def publish(
    loaded: LoadedSpec,
    target: Target,
    names: list[str] | None = None,
    *,
    index: bool = False,
    audited: bool = False,
) -> list[PublishResult]:
    """Publish a new generation of each interactive table in `names` (default: all, in spec
    order) from the open DuckDB `target`, and return one result per table.

    Runs on the interactive warehouse profile and leaves the connection on the incremental one
    (as :func:`clinipipe.pipeline.refresh.refresh` does). An error stops at the table that
    failed; the tables before it are published, that one is left on its previous generation.
    `audited` (a publish asked for by hand) records the run in the audit log (see the module
    docstring; `AuditNotRecorded` when its entry cannot be appended after the switch).
    """
    if serving_root_of(target) is None:
        raise PublishError(_NOT_LOCAL.format(target=target.describe()), usage=True)
    tables = (
        list(loaded.spec.interactive_tables)
        if names is None
        else [_table(loaded, name) for name in names]
    )
    results: list[PublishResult] = []
    if not audited or not tables:
        _publish_tables(loaded, target, tables, index, results)
        return results
    with audit.audited(
        target, "publish", spec_digest=loaded.digest, objects=[f"serving.{t.name}" for t in tables]
    ) as entry:
        try:
            _publish_tables(loaded, target, tables, index, results)
        finally:
            entry.counts = {"tables": len(results), "rows": sum(r.rows for r in results),
                            "bytes": sum(r.bytes for r in results)}  # fmt: skip
            entry.detail = {"published": {r.name: r.generation for r in results}}
    return results


def _publish_tables(
    loaded: LoadedSpec,
    target: Target,
    tables: list[InteractiveTable],
    index: bool,
    results: list[PublishResult],
) -> None:
    """Publish `tables` in order, appending to `results` as each switches."""
    try:
        for table in tables:
            results.append(publish_table(loaded, target, table, index=index))
    finally:
        target.use_warehouse("incremental")


def last_publishes(target: Target) -> dict[str, PublishRecord]:
    """Each interactive table's latest publish recorded in `_clinipipe.interactive_publishes`
    ({} before the first publish; reads only, works on a read-only target)."""
    if not target.table_exists(CONTROL_SCHEMA, "interactive_publishes"):
        return {}
    rows = target.query(
        "SELECT name, generation, rows, published_at, source_data_timestamp FROM "
        f"{target.control('interactive_publishes')} "
        "QUALIFY row_number() OVER (PARTITION BY name ORDER BY generation DESC) = 1"
    )
    return {r[0]: PublishRecord(*r) for r in rows}


@dataclass(frozen=True)
class PublishRecord:
    """One row of `_clinipipe.interactive_publishes`."""

    name: str
    generation: int
    rows: int
    published_at: dt.datetime
    source_data_timestamp: dt.datetime | None


def due_publishes(
    loaded: LoadedSpec,
    target: Target,
    *,
    now: dt.datetime | None = None,
    horizon_seconds: float = 1.0,
) -> list[str]:
    """The interactive tables to publish now (spec order; [] on a target other than DuckDB):

    * never published, when their source can be read (a `from:` table's dynamic table was
      built; a `sql:` table always);
    * `from:` tables whose dynamic table changed rows after their last publish (its last
      successful refresh that was not NO_DATA ended after the publish), so readers get the new
      rows within the dynamic table's own lag plus one publish;
    * `sql:` tables (no change tracking: their query may read anything) whose last publish is
      older than `target_lag` minus `horizon_seconds` (the scheduler's look interval); without
      a `target_lag` they are published once and then only by `clinipipe publish`.
    Reads only; a few small queries.
    """
    if serving_root_of(target) is None or not loaded.spec.interactive_tables:
        return []
    now = now or dt.datetime.now(dt.UTC)
    last = last_publishes(target)
    states = target.dynamic_table_states()
    due = []
    for table in loaded.spec.interactive_tables:
        record = last.get(table.name)
        if table.from_ is not None:
            if table.from_ not in states:
                continue  # not built yet: nothing to serve
            if record is None:
                due.append(table.name)
                continue
            changed = next(
                (r for r in target.dynamic_table_history(table.from_, 50)
                 if r.state == "SUCCEEDED" and r.refresh_action != "NO_DATA"),
                None,
            )  # fmt: skip
            ended = changed.refresh_end_time if changed else None
            if ended is not None and ended > record.published_at:
                due.append(table.name)
        elif record is None:
            due.append(table.name)
        elif table.target_lag is not None and table.target_lag.seconds is not None:
            age = (now - record.published_at).total_seconds()
            if age + horizon_seconds >= table.target_lag.seconds:
                due.append(table.name)
    return due


@dataclass
class PublishScheduler:
    """The CDC loop's publisher: each `step` publishes what `due_publishes` names.

    A table whose publish failed is not tried again for `retry_seconds` (its readers keep the
    previous generation meanwhile); failures are returned, never raised, so serving problems
    never stop change capture. Error messages are scrubbed of quoted values.
    """

    retry_seconds: float = 60.0
    _failed_at: dict[str, float] = field(default_factory=dict)

    def step(
        self, loaded: LoadedSpec, target: Target
    ) -> tuple[list[PublishResult], list[tuple[str, str]]]:
        now = time.monotonic()
        names = [
            n
            for n in due_publishes(loaded, target)
            if now - self._failed_at.get(n, -self.retry_seconds) >= self.retry_seconds
        ]
        results: list[PublishResult] = []
        failures: list[tuple[str, str]] = []
        for name in names:
            try:
                results.extend(publish(loaded, target, [name]))
                self._failed_at.pop(name, None)
            except (PublishError, TargetError, OSError) as exc:
                self._failed_at[name] = now
                failures.append((name, scrub_values(first_line(exc))))
        return results, failures


@dataclass(frozen=True)
class InteractiveStatus:
    """One interactive table's freshness. `lag_seconds`: now minus the data timestamp of what
    readers get (the source dynamic table's data timestamp at publish, or the publish time for
    a `sql:` table); `behind` when never published or the lag exceeds `target_lag`."""

    name: str
    source: str
    target_lag_seconds: float | None
    last: PublishRecord | None
    lag_seconds: float | None
    behind: bool

    def as_dict(self) -> dict[str, object]:
        last = self.last
        return {
            "name": self.name,
            "source": self.source,
            "target_lag_seconds": self.target_lag_seconds,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "behind": self.behind,
            "generation": last.generation if last else None,
            "rows": last.rows if last else None,
            "published_at": last.published_at.isoformat() if last else None,
            "source_data_timestamp": (
                last.source_data_timestamp.isoformat()
                if last and last.source_data_timestamp
                else None
            ),
        }


def interactive_status(
    loaded: LoadedSpec, target: Target, *, now: dt.datetime | None = None
) -> list[InteractiveStatus]:
    """Each interactive table's last publish and lag (DuckDB; [] elsewhere: Snowflake keeps
    interactive tables fresh itself). Reads only."""
    if serving_root_of(target) is None:
        return []
    now = now or dt.datetime.now(dt.UTC)
    last = last_publishes(target)
    statuses = []
    for table in loaded.spec.interactive_tables:
        record = last.get(table.name)
        lag = None
        if record is not None:
            as_of = record.source_data_timestamp or record.published_at
            lag = max(0.0, (now - as_of).total_seconds())
        lag_target = table.target_lag.seconds if table.target_lag else None
        behind = lag is None or (lag_target is not None and lag > lag_target)
        source = f"{DERIVED_SCHEMA}.{table.from_}" if table.from_ else "sql"
        statuses.append(InteractiveStatus(table.name, source, lag_target, record, lag, behind))
    return statuses
