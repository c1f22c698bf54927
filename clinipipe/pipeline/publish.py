"""Interactive tables on DuckDB: publish serving copies for dashboards (`clinipipe publish`).

The warehouse file is held open read-write by one process (CDC), and DuckDB lets no other
process open it meanwhile, so the serving layer lives in separate files next to it: per
generation a manifest naming partition files (ranges of the first `cluster_by` column, each
sorted by `cluster_by`) and an optional delta (layout, reader and view:
:mod:`clinipipe.targets.serving_files`)::

    <warehouse stem>.serving/<name>/000000000007.json            manifest of generation 7
    <warehouse stem>.serving/<name>/000000000005.p003.duckdb     partition 3, written by gen. 5
    <warehouse stem>.serving/<name>/000000000007.delta.duckdb    changed keys and their rows
    <warehouse stem>.serving/<name>/CURRENT                      "000000000007.json\n"

Guarantees:

* **Cost follows the change.** A `from:` table whose dynamic table is refreshed by its first
  `cluster_by` column is published *incrementally* when its current generation was published
  from the same build of that dynamic table: the keys that changed since are the refresh-key
  values CDC (and upstream refreshes) recorded in `_clinipipe.changed_keys` between the
  dynamic table's high-water mark at that publish and its mark now (both ends included: a
  superset is harmless). Only those keys' rows are written (the delta; when it outgrows one
  partition, the partitions with the most changed rows are rewritten instead); every other
  partition file is reused by reference. The refresh engine keeps those keys for it
  (`KEY_FLOORS`). Everything else publishes in full: `sql:` tables, a dynamic table rebuilt
  (INITIALIZATION / FULL refresh, new definition) since the last publish, a different key or
  column list, `publish(..., full=True)`, the first publish. Either way readers get exactly the
  rows of the source (tested against a full publish).
* **Readers first.** A publish runs on the process's background thread, niced
  (`clinipipe.pipeline.background`; Linux nice values are per thread, so CDC's own thread keeps
  its priority), with DuckDB bounded to `PUBLISH_THREADS` thread(s) meanwhile: dashboard
  processes on the same cores get the CPU first; the compute profile is restored afterwards.
* **Complete or invisible.** A publish writes only *new* files (generation = highest generation
  number of any file on disk or in CURRENT, plus one; never an existing name): the data files
  it needs (each created in one transaction, then checkpointed and detached: DuckDB's
  CHECKPOINT fsyncs the file before it deletes the WAL, so its contents are durable without a
  second fsync), then the manifest (fsynced), then the folder is fsynced (the new names).
  Only then is CURRENT replaced, through a temporary file, `fsync` and `os.replace` (atomic on
  POSIX), by the manifest's name. A reader therefore only ever opens a generation
  whose files are all complete; a publish killed half-way leaves CURRENT on the previous
  generation (whose files it never touches), and its partial files are garbage that the next
  publish deletes. The key floor moves only after the switch, so the next publish still finds
  every key changed since the generation readers have.
* **Never blocks the writer, never pulls a file from under a reader.** A reader
  (:class:`clinipipe.targets.serving_files.ServingReader`) holds shared ``flock`` s on the
  manifest and every file of the generation it has open. After switching CURRENT, a publish
  (`cleanup`) deletes the manifests and files no kept generation names, each under a
  *non-blocking* exclusive ``flock``; what it cannot lock is in use and is retried at the next
  publish.
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

import contextlib
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinipipe.backup import audit
from clinipipe.pipeline.background import in_background
from clinipipe.secrets import first_line, scrub_values
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import DynamicTable, InteractiveTable
from clinipipe.sql.context import CONTROL_SCHEMA, DERIVED_SCHEMA
from clinipipe.targets.base import Target, TargetError
from clinipipe.targets.capabilities.refresh import changed_keys_source
from clinipipe.targets.metering import CpuClock, MeteringRow
from clinipipe.targets.serving_files import (
    Manifest,
    cleanup,
    current_manifest,
    exclusive,
    fsync_path,
    next_generation,
    serving_root_of,
    write_current,
    write_manifest,
    write_partitioned,
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
    """The generation's manifest (what CURRENT names)."""
    rows: int
    bytes: int
    """Bytes of the data files this publish wrote (an incremental publish reuses the rest)."""
    published_at: dt.datetime
    source_data_timestamp: dt.datetime | None
    seconds: float
    removed: tuple[str, ...]
    """Files of older (or abandoned) generations deleted by this publish's cleanup."""
    incremental: bool = False
    """Only the changed keys were written (a delta, maybe some partitions); else in full."""
    partitions: int = 1
    rewritten: tuple[int, ...] = ()
    """Partitions this publish wrote (all of them when it published in full)."""
    delta_rows: int = 0
    changed_keys: int = 0
    """Keys the delta holds (changed since their partition was written)."""
    why_full: str | None = None
    """Why a publish of a `from:` table was not incremental (None when it was)."""
    cpu_seconds: float | None = None
    """CPU time of the publishing thread (what the publish cost, whatever else ran)."""
    handed_over: bool = False
    """The changed keys' rows came from the rows the refreshes handed over
    (`clinipipe.targets.duckdb.recent_rows`), not from a read of the dynamic table."""

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
            "incremental": self.incremental,
            "partitions": self.partitions,
            "rewritten_partitions": list(self.rewritten),
            "delta_rows": self.delta_rows,
            "changed_keys": self.changed_keys,
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 3),
            "handed_over": self.handed_over,
        }


def _table(loaded: LoadedSpec, name: str) -> InteractiveTable:
    for table in loaded.spec.interactive_tables:
        if table.name == name:
            return table
    known = ", ".join(t.name for t in loaded.spec.interactive_tables) or "none"
    raise PublishError(
        f"no interactive table named {name!r} in the spec (known: {known})", usage=True
    )


def _source_data_timestamp(
    target: Target, table: InteractiveTable, states: Mapping[str, Any] | None = None
) -> dt.datetime | None:
    if table.from_ is None:
        return None
    state = (target.dynamic_table_states() if states is None else states).get(table.from_)
    return state.data_timestamp if state else None


def _record_sql(target: Target) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {target.control('interactive_publishes')} ("
        "name VARCHAR NOT NULL, generation BIGINT NOT NULL, rows BIGINT NOT NULL, "
        "published_at TIMESTAMPTZ NOT NULL, source_data_timestamp TIMESTAMPTZ, "
        "PRIMARY KEY (name, generation))"
    )


KEY_FLOORS = "serving_key_floors"
"""`_clinipipe.serving_key_floors` (name, source, lsn): for each interactive table that can be
published incrementally, the high-water mark of its dynamic table when its current generation
was published. The refresh engine's pruning of `_clinipipe.changed_keys` keeps every key with
`lsn >= ` the floors of the dynamic tables it prunes for, so the next publish still finds what
changed since (`clinipipe.targets.duckdb.refresh.DuckDBRefresh.prune_changed_keys`)."""


def _floors_sql(target: Target) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {target.control(KEY_FLOORS)} (name VARCHAR PRIMARY KEY, "
        "source VARCHAR NOT NULL, lsn BIGINT NOT NULL)"
    )


def _dynamic_table(loaded: LoadedSpec, name: str | None) -> DynamicTable | None:
    return next((d for d in loaded.spec.dynamic_tables if d.name == name), None)


_INPUTS: dict[str, Any] = {}
"""The parsed inputs of each dynamic table's SQL (`Target.dynamic_table_inputs`), by SQL."""


def _changed_keys_sql(
    loaded: LoadedSpec, target: Target, dynamic: DynamicTable, low: int, high: int
) -> str | None:
    """The changed values of `dynamic`'s refresh key CDC (and upstream refreshes) recorded with
    `low <= lsn <= high`, as column `k` (None when its inputs are not all tracked). `low` is
    the table's high-water mark at the previous publish: a refresh of an upstream table can
    record keys at exactly that position after it (lowering the mark by one), so it is
    included; a key published twice is harmless."""
    inputs = _INPUTS.get(dynamic.sql)
    if inputs is None:  # parsed by DuckDB: the same SQL always has the same inputs
        inputs = target.dynamic_table_inputs(dynamic.sql)
        if len(_INPUTS) > 256:
            _INPUTS.clear()
        _INPUTS[dynamic.sql] = inputs
    if inputs.untracked or not dynamic.refresh_key:
        return None
    spelled = {
        "raw": {t.name.lower(): t.name for t in loaded.spec.source.tables},
        "derived": {d.name.lower(): d.name for d in loaded.spec.dynamic_tables},
    }
    lit = target.dialect.quote_literal
    sources = ", ".join(
        lit(changed_keys_source(role, spelled[role].get(name.lower(), name)))
        for role, name in inputs.tables
    )
    if not sources:
        return None
    return (
        f"SELECT key_value AS k FROM {target.control('changed_keys')} "
        f"WHERE key_column = {lit(dynamic.refresh_key)} AND table_name IN ({sources}) "
        f"AND lsn >= {int(low)} AND lsn <= {int(high)}"
    )


def _incremental_plan(
    loaded: LoadedSpec,
    target: Target,
    table: InteractiveTable,
    previous: Manifest | None,
    states: Mapping[str, Any] | None = None,
) -> tuple[dict[str, object], str | None, str | None]:
    """(the source record for the new manifest, the changed-keys SQL or None, why not
    incremental or None). Incremental only when the table serves a dynamic table refreshed by
    its first `cluster_by` column, the current generation is a manifest published from the
    same build of it (no FULL refresh or rebuild since), and the key floor covers it."""
    dynamic = _dynamic_table(loaded, table.from_)
    if dynamic is None:
        return {}, None, "a sql: table (its query may read anything)"
    state = (target.dynamic_table_states() if states is None else states).get(dynamic.name)
    if state is None:
        return {}, None, f"{dynamic.name} is not built"
    source: dict[str, object] = {
        "dynamic_table": dynamic.name,
        "built_at": state.built_at.isoformat(),
        "lsn": int(state.high_water_lsn),
    }
    if dynamic.refresh_key != table.cluster_by[0] or dynamic.refresh_mode == "full":
        source.pop("lsn")
        return source, None, (f"{dynamic.name} is not refreshed by key {table.cluster_by[0]}")
    if previous is None:
        return source, None, "no partitioned generation to start from"
    before = previous.source
    if before.get("dynamic_table") != dynamic.name or before.get("built_at") != source["built_at"]:
        return source, None, f"{dynamic.name} was rebuilt (FULL) since the last publish"
    low = before.get("lsn")
    floor = None
    if target.table_exists(CONTROL_SCHEMA, KEY_FLOORS):
        rows = target.query(
            f"SELECT lsn FROM {target.control(KEY_FLOORS)} WHERE name = "
            f"{target.dialect.quote_literal(table.name)} AND source = "
            f"{target.dialect.quote_literal(dynamic.name)}"
        )
        floor = int(rows[0][0]) if rows else None
    if not isinstance(low, int) or floor is None or floor > low:
        return source, None, "the changed keys since the last publish were not kept"
    keys = _changed_keys_sql(loaded, target, dynamic, low, int(state.high_water_lsn))
    if keys is None:
        return source, None, f"{dynamic.name} reads tables whose changes are not tracked"
    return source, keys, None


PUBLISH_THREADS = 1
"""DuckDB threads while publishing (bounded: a publish never takes every core)."""


def publish_table(
    loaded: LoadedSpec,
    target: Target,
    table: InteractiveTable,
    *,
    index: bool = False,
    full: bool = False,
    partitions: int | None = None,
    compact_rows: int | None = None,
) -> PublishResult:
    """Publish one new generation of `table` (see the module docstring for the guarantees),
    incrementally when it can (see `_incremental_plan`) unless `full`.

    Runs on the background thread (`clinipipe.pipeline.background`: niced) with
    `PUBLISH_THREADS` DuckDB thread(s).
    `partitions` (a full publish) and `compact_rows` (an incremental one) override the
    defaults of `clinipipe.targets.serving_files.write_partitioned`. `index` is accepted for
    compatibility and ignored: measured on 2 M rows sorted by the key (DuckDB 1.x), an ART
    index made a lookup 0.2 ms faster for a file three times larger and a slower publish;
    sorting already makes a lookup touch one row group. Leaves the connection on the
    incremental profile (as :func:`publish` does).
    """
    try:
        return in_background(
            lambda: _publish_table(loaded, target, table, full, partitions, compact_rows)
        )
    finally:
        target.use_warehouse("incremental")  # the compute profile, threads included


def _publish_table(
    loaded: LoadedSpec,
    target: Target,
    table: InteractiveTable,
    full: bool,
    partitions: int | None,
    compact_rows: int | None,
) -> PublishResult:
    q = target.dialect.quote_ident
    lit = target.dialect.quote_literal
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    cpu = CpuClock()  # this (publishing) thread publishes
    root = serving_root_of(target)
    if root is None:
        raise PublishError(_NOT_LOCAL.format(target=target.describe()), usage=True)
    folder = root / table.name
    folder.mkdir(parents=True, exist_ok=True)
    source_table = None
    if table.from_ is not None:
        source_table = f"{q(DERIVED_SCHEMA)}.{q(table.from_)}"
        source = f"SELECT * FROM {source_table}"
    else:
        assert table.sql is not None
        source = f"SELECT * FROM ({table.sql.strip().rstrip(';')})"

    # One publisher per folder at a time (the lock file is never a generation).
    with exclusive(folder / ".publish.lock"):
        generation = next_generation(folder)
        if table.from_ is not None and not target.table_exists(DERIVED_SCHEMA, table.from_):
            raise PublishError(
                f"{table.name} serves dynamic table {table.from_}, which is not built yet: run "
                f"`clinipipe refresh {table.from_}` (or `cdc start`, which builds it) first"
            )
        states = target.dynamic_table_states()  # read once: both uses see the same state
        source_ts = _source_data_timestamp(target, table, states)
        previous = None if full else current_manifest(folder)
        record, keys_sql, why_full = _incremental_plan(loaded, target, table, previous, states)
        if full:
            why_full = "asked for (--full)"
        target.use_warehouse("interactive")
        try:
            written = write_partitioned(
                target, folder, generation, table.name, source, table.cluster_by,
                source=record, previous=previous if keys_sql else None,
                changed_keys_sql=keys_sql, partitions=partitions, compact_rows=compact_rows,
                threads=PUBLISH_THREADS, source_table=source_table, dynamic_table=table.from_,
            )  # fmt: skip
        except TargetError as exc:
            raise PublishError(str(exc)) from None
        # The data files are durable (DuckDB's CHECKPOINT fsyncs them); their names become
        # durable with the folder's fsync, before CURRENT can name them.
        manifest_path = write_manifest(folder, written.manifest)
        fsync_path(folder, directory=True)
        write_current(folder, manifest_path.name)
        removed = tuple(cleanup(folder))

    ended = dt.datetime.now(dt.UTC)
    nbytes = sum(p.stat().st_size for p in written.new_files if p.exists())
    cpu_seconds = cpu.seconds()
    rows = written.manifest.rows
    warehouse = loaded.spec.warehouses.interactive
    floor = [f"DELETE FROM {target.control(KEY_FLOORS)} WHERE name = {lit(table.name)}"]
    if "lsn" in record:
        floor.append(
            f"INSERT INTO {target.control(KEY_FLOORS)} VALUES ({lit(table.name)}, "
            f"{lit(str(record['dynamic_table']))}, {int(str(record['lsn']))})"
        )
    known = ", ".join(lit(t.name) for t in loaded.spec.interactive_tables)
    target.execute_atomically(
        [
            f"CREATE SCHEMA IF NOT EXISTS {q(CONTROL_SCHEMA)}",
            _record_sql(target),
            _floors_sql(target),
            f"INSERT INTO {target.control('interactive_publishes')} (name, generation, rows, "
            "published_at, source_data_timestamp) VALUES "
            f"({lit(table.name)}, {generation}, {rows}, {lit(ended.isoformat())}, "
            f"{lit(source_ts.isoformat()) if source_ts else 'NULL'})",
            *floor,
            # tables no longer in the spec hold no changed keys back
            f"DELETE FROM {target.control(KEY_FLOORS)} WHERE name NOT IN ({known})",
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
                    cpu_seconds=cpu_seconds,
                )
            ),
        ]
    )
    return PublishResult(
        name=table.name,
        generation=generation,
        path=manifest_path,
        rows=rows,
        bytes=nbytes,
        published_at=ended,
        source_data_timestamp=source_ts,
        seconds=time.perf_counter() - t0,
        removed=removed,
        incremental=written.incremental,
        partitions=len(written.manifest.parts),
        rewritten=tuple(written.rewritten),
        delta_rows=written.delta_rows,
        changed_keys=written.manifest.delta_keys,
        why_full=None if written.incremental else why_full,
        cpu_seconds=cpu_seconds,
        handed_over=written.handed_over,
    )


def publish(
    loaded: LoadedSpec,
    target: Target,
    names: list[str] | None = None,
    *,
    index: bool = False,
    audited: bool = False,
    full: bool = False,
) -> list[PublishResult]:
    """Publish a new generation of each interactive table in `names` (default: all, in spec
    order) from the open DuckDB `target`, and return one result per table.

    Runs on the interactive warehouse profile and leaves the connection on the incremental one
    (as :func:`clinipipe.pipeline.refresh.refresh` does). An error stops at the table that
    failed; the tables before it are published, that one is left on its previous generation.
    `full` writes every partition anew (no delta). `audited` (a publish asked for by hand)
    records the run in the audit log (see the module docstring; `AuditNotRecorded` when its
    entry cannot be appended after the switch).
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
        _publish_tables(loaded, target, tables, full, results)
        return results
    with audit.audited(
        target, "publish", spec_digest=loaded.digest, objects=[f"serving.{t.name}" for t in tables]
    ) as entry:
        try:
            _publish_tables(loaded, target, tables, full, results)
        finally:
            entry.counts = {"tables": len(results), "rows": sum(r.rows for r in results),
                            "bytes": sum(r.bytes for r in results)}  # fmt: skip
            entry.detail = {"published": {r.name: r.generation for r in results}}
    return results


def _publish_tables(
    loaded: LoadedSpec,
    target: Target,
    tables: list[InteractiveTable],
    full: bool,
    results: list[PublishResult],
) -> None:
    """Publish `tables` in order, appending to `results` as each switches."""
    try:
        for table in tables:
            results.append(publish_table(loaded, target, table, full=full))
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

    A failed publish leaves the table's key floor where it was, so the changed keys it needs
    stay in `_clinipipe.changed_keys`; a table whose publishes keep failing for
    `release_floor_after` seconds gives its floor up (`release_key_floor`), so that the keys
    stop piling up while CDC runs; its next publish is then full.
    """

    retry_seconds: float = 60.0
    release_floor_after: float = 3600.0
    _failed_at: dict[str, float] = field(default_factory=dict)
    _failing_since: dict[str, float] = field(default_factory=dict)

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
                self._failing_since.pop(name, None)
            except (PublishError, TargetError, OSError) as exc:
                self._failed_at[name] = now
                since = self._failing_since.setdefault(name, now)
                if now - since >= self.release_floor_after:
                    with contextlib.suppress(TargetError):
                        release_key_floor(target, name)
                failures.append((name, scrub_values(first_line(exc))))
        return results, failures


def release_key_floor(target: Target, name: str) -> bool:
    """Give up interactive table `name`'s key floor (`KEY_FLOORS`): the refresh engine then
    prunes the changed keys it kept for it, and its next publish is full. Returns whether there
    was one."""
    if not target.table_exists(CONTROL_SCHEMA, KEY_FLOORS):
        return False
    lit = target.dialect.quote_literal
    floors = target.control(KEY_FLOORS)
    held = target.query(f"SELECT count(*) FROM {floors} WHERE name = {lit(name)}")[0][0]
    target.execute_atomically([f"DELETE FROM {floors} WHERE name = {lit(name)}"])
    return bool(held)


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
