"""Interactive tables served as local DuckDB files: the publisher's file mechanics and the
dashboards' reader (`ServingReader`). For targets whose interactive tables are not native.

The warehouse file is held open read-write by one process (CDC), and DuckDB lets no other
process open it meanwhile, so the serving layer lives in separate files next to it. A
*generation* is what one publish makes visible: a manifest naming its data files::

    <warehouse stem>.serving/<name>/000000000007.json            the manifest of generation 7
    <warehouse stem>.serving/<name>/000000000005.p003.duckdb     partition 3, written by gen. 5
    <warehouse stem>.serving/<name>/000000000007.delta.duckdb    rows of keys changed since
                                                                 their partition was written
    <warehouse stem>.serving/<name>/CURRENT                      "000000000007.json\\n"

(``CURRENT`` naming a single ``NNNNNNNNNNNN.duckdb`` file, the layout before manifests, is
still read.)

**Partitions and deltas.** The rows are split into `partitions` by *ranges* of the first
`cluster_by` column (the key; bounds are its quantiles at the last full publish), each
partition a file sorted by `cluster_by`. Ranges rather than hashes because a range-partitioned,
sorted file routes a key lookup by itself: DuckDB's min/max statistics skip every row group of
every other partition, so the reader needs no knowledge of the query. An incremental publish
writes only (a) a *delta* file: the current rows of every key changed since its partition file
was written, plus those keys (``<name>__changed``), and (b) new files for the partitions it
chooses to *compact* (when the delta grew past one partition's size, the partitions with the
most changed rows are rewritten and their keys leave the delta); every other partition file
of the previous generation is reused by reference. Readers see ``serving.<name>`` as a view:
each partition without the changed keys (an anti join on the key), plus the delta. That is the
same multiset of rows as a full publish of the same source (tested).

The publish guarantees (complete or invisible, never blocks the writer, never pulls a file from
under a reader) are stated in :mod:`clinipipe.pipeline.publish`; the reader's:

* **Whole generations only.** A query runs against exactly one published generation, opened
  read-only after CURRENT named it; CURRENT only ever names a manifest whose files were all
  written and fsynced before it. A reader opens all files of a manifest or none (if one is
  gone it starts again from CURRENT), so it never combines files of two generations.
* **The files stay while in use.** The reader holds a shared ``flock`` on the manifest and on
  every file it names (each verified to be the file still at that path, so a file deleted
  between ``open`` and ``flock`` is not used); the publisher deletes only files it can lock
  exclusively without waiting, and keeps every file named by a manifest a reader holds. The
  reader never takes an exclusive lock, so it never blocks the writer.
* **Fresh within `recheck_seconds`.** CURRENT is re-checked (one ``stat``: inode and mtime) at
  most every `recheck_seconds`; when it names a newer generation the reader opens it (one
  thread, outside the reader's lock: the others keep querying the current generation
  meanwhile), and releases the old one once no query of any thread still runs on it.
* **Thread-safe.** Queries of different threads run concurrently, each on its own cursor of
  the generation's connection.
* **Encrypted like the warehouse.** Interactive tables hold PHI, so when the warehouse is
  encrypted (`target.encryption_key_env`) every data file is written with the same key
  (DuckDB database encryption), and a reader needs it (`encryption_key`); CURRENT and the
  manifests hold only file names, partition bounds (key values of the quantiles, which are
  identifiers such as patient ids) and counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from clinipipe.secrets import first_line, scrub_values
from clinipipe.sql.context import SERVING_SCHEMA
from clinipipe.targets.base import Target, TargetError
from clinipipe.targets.duckdb import DuckDBTarget, recent_rows
from clinipipe.targets.duckdb.core import httpfs_extension, open_encrypted, transaction

CURRENT = "CURRENT"
"""Name of the pointer file in each interactive table's folder."""

_ALIAS = "clinipipe_publish"

GENERATION_RE = re.compile(r"^(\d{12})\.duckdb$")
"""Single-file generations (the layout before manifests): twelve digits, `.duckdb`."""

MANIFEST_RE = re.compile(r"^(\d{12})\.json$")
"""Generation manifests: twelve digits, `.json`."""

_FILE_RE = re.compile(r"^(\d{12})(?:\.p\d{3}|\.delta)?\.(?:duckdb|json)(?:\.wal)?$")
"""Every file a publish writes (data files, manifests, DuckDB WAL files left by a crash)."""

_CURRENT_RE = re.compile(r"^\d{12}\.(?:duckdb|json)$")


def serving_root(warehouse: Path) -> Path:
    """The folder holding the serving files of the warehouse file `warehouse`."""
    return warehouse.with_name(f"{warehouse.stem}.serving")


def generation_name(generation: int) -> str:
    """The file name of single-file generation `generation` (the layout before manifests)."""
    return f"{generation:012d}.duckdb"


def manifest_name(generation: int) -> str:
    """The manifest file name of `generation`."""
    return f"{generation:012d}.json"


def part_name(generation: int, partition: int) -> str:
    """The file of `partition` written by `generation`."""
    return f"{generation:012d}.p{partition:03d}.duckdb"


def delta_name(generation: int) -> str:
    """The delta file written by `generation`."""
    return f"{generation:012d}.delta.duckdb"


def read_current(folder: Path) -> str | None:
    """The file CURRENT points to in `folder` (a manifest, or a single-file generation), or
    None before the first publish."""
    try:
        text = (folder / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return text if _CURRENT_RE.match(text) else None


@dataclass(frozen=True)
class Manifest:
    """One generation: the files readers combine into ``serving.<table>``.

    `parts[i]` holds the rows whose `key` falls in range i of `bounds` (``bounds[i-1] <= key <
    bounds[i]``; NULL keys in range 0), sorted by `cluster_by`; `delta` (optional) holds table
    ``<table>__changed`` (column ``k``: keys whose rows in the parts are superseded) and the
    current rows of those keys as ``<table>``. `source` records what the publisher needs to
    continue incrementally (the dynamic table, its build time and high-water mark)."""

    table: str
    generation: int
    key: str
    key_type: str
    cluster_by: list[str]
    columns: list[list[str]]
    bounds: list[str | None]
    parts: list[str]
    delta: str | None = None
    rows: int = 0
    delta_keys: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    format: int = 2

    @property
    def files(self) -> list[str]:
        """Every data file this generation reads."""
        return [*self.parts, *([self.delta] if self.delta else [])]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        if data.get("format") != 2:
            raise ServingError(f"{path.name}: unknown manifest format")
        return cls(**data)


def _generation_of(name: str) -> int | None:
    m = _FILE_RE.match(name)
    return int(m.group(1)) if m else None


def next_generation(folder: Path) -> int:
    """One more than the highest generation number of any file in `folder` or in CURRENT: a
    publish never reuses a name, not even one a killed publish left half-written."""
    numbers = set()
    if folder.is_dir():
        for entry in folder.iterdir():
            number = _generation_of(entry.name)
            if number is not None:
                numbers.add(number)
    current = read_current(folder)
    if current:
        numbers.add(int(current[:12]))
    return max(numbers, default=0) + 1


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) while the block runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_current(folder: Path, file_name: str) -> None:
    """Point CURRENT in `folder` at `file_name`, atomically and durably."""
    tmp = folder / f".{CURRENT}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as fh:
        fh.write(file_name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / CURRENT)
    fsync_path(folder, directory=True)


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write `manifest` as `<generation>.json` in `folder`, fsynced (file; the caller fsyncs
    the folder before switching CURRENT). A new name: never overwrites a manifest."""
    path = folder / manifest_name(manifest.generation)
    with open(path, "x") as fh:
        fh.write(manifest.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    return path


def current_manifest(folder: Path) -> Manifest | None:
    """The manifest CURRENT names, or None (nothing published, a single-file generation, or a
    manifest that cannot be read: the caller then publishes in full)."""
    name = read_current(folder)
    if name is None or not MANIFEST_RE.match(name):
        return None
    try:
        return Manifest.load(folder / name)
    except (OSError, ValueError, TypeError, ServingError):
        return None


def _try_lock_exclusive(path: Path) -> int | None:
    """An fd holding a non-blocking exclusive flock on `path`, or None (held or gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def cleanup(folder: Path) -> list[str]:
    """Delete every file of `folder` that neither CURRENT's generation nor a generation a
    reader holds needs. Call with the folder's publish lock held (so no publish is writing).

    * A manifest other than CURRENT's is deleted only while this process holds a
      non-blocking exclusive flock on it (readers hold a shared one); a manifest that is held
      keeps every file it names.
    * A data file named by no kept manifest is deleted only under such a lock too (a reader
      holds shared locks on every file it reads), so a file in use is never removed; files
      whose lock is refused stay for a later cleanup.
    * Leftover temporary CURRENT files (older than a minute) and DuckDB WAL files of
      abandoned files go too. Never blocks.
    """
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    current = read_current(folder)
    keep: set[str] = {CURRENT}
    if current:
        keep.add(current)
        if MANIFEST_RE.match(current):
            with contextlib.suppress(OSError, ValueError, TypeError, ServingError):
                keep.update(Manifest.load(folder / current).files)
    entries = sorted(folder.iterdir())
    # Manifests first: a held one protects its files; a free one is deleted under its lock
    # (with the lock held until its files were considered, no reader can open it meanwhile).
    held: list[int] = []
    try:
        for entry in entries:
            if not MANIFEST_RE.match(entry.name) or entry.name in keep:
                continue
            fd = _try_lock_exclusive(entry)
            if fd is None:
                if entry.exists():
                    keep.add(entry.name)
                    with contextlib.suppress(OSError, ValueError, TypeError, ServingError):
                        keep.update(Manifest.load(entry).files)
                continue
            held.append(fd)
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry.name)
        for entry in entries:
            name = entry.name
            if name in keep or MANIFEST_RE.match(name):
                continue
            if name.startswith(f".{CURRENT}.") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - entry.stat().st_mtime > 60:  # not one about to be renamed
                        entry.unlink()
                        removed.append(name)
                continue
            if not _FILE_RE.match(name) or name.removesuffix(".wal") in keep:
                continue
            fd = _try_lock_exclusive(entry)
            if fd is None:
                continue  # a reader holds it (or it is gone)
            try:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(name)
            finally:
                os.close(fd)
    finally:
        for fd in held:
            os.close(fd)
    return removed


def serving_root_of(target: Target) -> Path | None:
    """Where `target` keeps its serving files, or None when its interactive tables are native
    (Snowflake: CREATE INTERACTIVE TABLE) and there is nothing to publish."""
    return serving_root(target.path) if isinstance(target, DuckDBTarget) else None


def _attach_options(target: DuckDBTarget, *, read_only: bool = False) -> str:
    key = target.encryption_key()
    options = [] if key is None else [f"ENCRYPTION_KEY {target.dialect.quote_literal(key)}"]
    if read_only:
        options.append("READ_ONLY")
    return f" ({', '.join(options)})" if options else ""


def _write_file(
    target: DuckDBTarget, cur: duckdb.DuckDBPyConnection, path: Path,
    tables: Sequence[tuple[str, str]],
) -> None:  # fmt: skip
    """Create the DuckDB file `path` holding `serving.<table> AS <sql>` for each (table, sql),
    checkpointed and detached. Its contents are durable when this returns: DuckDB's CHECKPOINT
    fsyncs the file (data blocks, then its header) before it deletes the WAL, as it must or a
    crash would lose committed data (seen with strace on DuckDB 1.5: two fsyncs of the file,
    then the WAL unlinked); the caller fsyncs the folder (the new name) before switching
    CURRENT.

    The schema and tables are created in one transaction (one commit, so one WAL sync of the
    new file instead of one per statement), then checkpointed into the file."""
    q = target.dialect.quote_ident
    cur.execute(f"ATTACH {target.dialect.quote_literal(str(path))} AS {q(_ALIAS)}"
                f"{_attach_options(target)}")  # fmt: skip
    try:
        with transaction(cur):
            cur.execute(f"CREATE SCHEMA {q(_ALIAS)}.{q(SERVING_SCHEMA)}")
            for table, sql in tables:
                cur.execute(f"CREATE TABLE {q(_ALIAS)}.{q(SERVING_SCHEMA)}.{q(table)} AS {sql}")
        cur.execute(f"CHECKPOINT {q(_ALIAS)}")
    finally:
        cur.execute(f"DETACH {q(_ALIAS)}")


def write_generation(
    target: Target,
    path: Path,
    name: str,
    source_sql: str,
    cluster_by: Sequence[str],
    *,
    index: bool = False,
) -> int:
    """Write the single-file generation `path`: table `serving.<name>` = the rows of
    `source_sql` ordered by `cluster_by` (plus an ART index on them with `index`),
    checkpointed and detached. Returns its rows. Not yet fsynced nor named by CURRENT: the
    caller does both. Raises `TargetError` (no values in the message); a partial file is left
    for `cleanup`."""
    assert isinstance(target, DuckDBTarget)
    q = target.dialect.quote_ident
    order = ", ".join(q(c) for c in cluster_by)
    cur = target.cursor()
    try:
        target.use_warehouse("interactive")
        _write_file(target, cur, path, [(name, f"{source_sql} ORDER BY {order}")])
        served = f"{q(SERVING_SCHEMA)}.{q(name)}"
        cur.execute(f"ATTACH {target.dialect.quote_literal(str(path))} AS {q(_ALIAS)}"
                    f"{_attach_options(target)}")  # fmt: skip
        try:
            if index:
                cur.execute(f"CREATE INDEX {q(name + '_cluster')} ON {q(_ALIAS)}.{served} "
                            f"({order})")  # fmt: skip
                cur.execute(f"CHECKPOINT {q(_ALIAS)}")
            rows = int(cur.execute(f"SELECT count(*) FROM {q(_ALIAS)}.{served}").fetchall()[0][0])
        finally:
            cur.execute(f"DETACH {q(_ALIAS)}")
    except duckdb.Error as exc:
        raise TargetError(
            f"publishing {name} failed (readers keep the previous generation; the partial file "
            f"is removed by the next publish): {scrub_values(first_line(exc))}"
        ) from None
    finally:
        cur.close()
    return rows


CHANGED_SUFFIX = "__changed"
"""The delta file's table of changed keys is `serving.<name>__changed` (column `k`)."""


@dataclass(frozen=True)
class PartitionedWrite:
    """What `write_partitioned` wrote: the manifest (not yet written nor CURRENT), the new data
    files, which partitions were (re)written, and the rows the delta holds."""

    manifest: Manifest
    new_files: list[Path]
    rewritten: list[int]
    delta_rows: int
    incremental: bool
    handed_over: bool = False
    """The changed keys' rows came from the refreshes' handover (`recent_rows`), not from a
    read of the dynamic table."""


def partitions_for(rows: int, rows_per_partition: int = 250_000, most: int = 16) -> int:
    """How many partitions a table of `rows` rows gets at a full publish."""
    return max(1, min(most, rows // max(1, rows_per_partition)))


def _changed_rows_sql(key: str, keys: str, src: str, source_table: str | None,
                      columns: Sequence[Sequence[str]]) -> str:  # fmt: skip
    """A query of the rows of `src` (aliased ``s``) whose `key` (quoted) is one of the keys in
    table `keys` (column ``k``; IS NOT DISTINCT FROM, so a NULL key too): by position when
    `source_table` is given and has no column named ``rowid`` (see `write_partitioned`),
    else one semi join over every row."""
    match = f"SEMI JOIN {keys} AS c ON s.{key} IS NOT DISTINCT FROM c.k"
    if source_table is not None and not any(c[0].lower() == "rowid" for c in columns):
        return (
            f"WITH first_hit AS MATERIALIZED (SELECT min(s.rowid) AS r FROM {source_table} "
            f"AS s {match}) SELECT s.* FROM {source_table} AS s {match} "
            "WHERE s.rowid >= (SELECT r FROM first_hit)"
        )
    return f"SELECT s.* FROM {src} {match}"


def write_partitioned(
    target: Target,
    folder: Path,
    generation: int,
    name: str,
    source_sql: str,
    cluster_by: Sequence[str],
    *,
    source: Mapping[str, Any],
    previous: Manifest | None = None,
    changed_keys_sql: str | None = None,
    partitions: int | None = None,
    compact_rows: int | None = None,
    threads: int | None = None,
    source_table: str | None = None,
    dynamic_table: str | None = None,
) -> PartitionedWrite:
    """Write the data files of generation `generation` of interactive table `name` in `folder`
    and return its manifest (the caller writes it, fsyncs, and switches CURRENT).

    *Full* (no usable `previous`): the rows of `source_sql` split into `partitions` (default
    `partitions_for` its rows) ranges of `cluster_by[0]`, one file each, sorted by
    `cluster_by`. *Incremental* (`previous` is the current manifest of the same key, cluster
    order and columns, and `changed_keys_sql` yields every key whose rows in `source_sql`
    changed since `previous` was published, as column ``k`` of any type castable to the key):
    the changed keys joined with those of the previous delta; when their rows exceed
    `compact_rows` (default: the table's rows divided by the partitions), the partitions with
    the most changed rows are rewritten until they do not; the remaining keys and their
    current rows form the new delta; every other partition file is reused as it is.

    `source_table` (optional): the table `source_sql` reads whole (``SELECT * FROM
    <source_table>``, a dynamic table). An incremental publish then reads the changed keys'
    rows by position: one pass over the key column finds the first row (lowest ``rowid``) of
    any changed key, and only the rows from there on are read whole. An incremental refresh
    deletes the rows of its changed keys and appends their new rows, so the rows of the keys
    changed since the last publish sit at the table's end and this reads a small tail instead
    of every column of every row (2 M rows, 1,000 keys: ~20 ms of CPU instead of ~30). Exact
    whatever the layout (the cut is computed in the same statement, on the same snapshot);
    when a changed key has a row near the start (rows updated in place) it reads every row
    after the pass over the key column, ~10 % more than a plain join.

    `dynamic_table` (optional): the dynamic table `source_sql` reads whole. An incremental
    publish then takes the changed keys' rows from the rows its refreshes handed over
    (`clinipipe.targets.duckdb.recent_rows`), reading nothing of the table, when they hold
    every key it needs; else as above. The keys of the previous delta that did not change
    again keep the rows that delta holds (read from its file).

    `threads` bounds DuckDB's threads for the work (a database-wide setting: the caller
    restores its compute profile afterwards). Touches no file of `previous` and never a name
    that exists. Raises `TargetError` (no
    values in the message); partial files are left for `cleanup`.
    """
    assert isinstance(target, DuckDBTarget)
    q, lit = target.dialect.quote_ident, target.dialect.quote_literal
    key = cluster_by[0]
    order = ", ".join(q(c) for c in cluster_by)
    cur = target.cursor()
    new_files: list[Path] = []
    try:
        if threads is not None:
            cur.execute(f"SET threads = {max(1, int(threads))}")
        described = cur.execute(f"DESCRIBE SELECT * FROM ({source_sql}) AS s").fetchall()
        columns = [[str(r[0]), str(r[1])] for r in described]
        types = {c: t for c, t in columns}
        if key not in types:
            raise TargetError(f"{name}: cluster_by column {key} is not a column of its source")
        key_type = types[key]
        src = f"({source_sql}) AS s"

        def count_rows() -> int:
            return int(cur.execute(f"SELECT count(*) FROM {src}").fetchall()[0][0])

        incremental = (
            previous is not None
            and changed_keys_sql is not None
            and previous.key == key
            and previous.key_type == key_type
            and previous.cluster_by == list(cluster_by)
            and previous.columns == columns
            and len(previous.parts) == len(previous.bounds) + 1
        )

        def cast(value: str) -> str:
            return f"CAST({lit(value)} AS {key_type})"

        def in_range(column: str, bounds: Sequence[str | None], i: int) -> str:
            conds = []
            if i > 0:
                conds.append(f"{column} >= {cast(str(bounds[i - 1]))}")
            if i < len(bounds):
                below = f"{column} < {cast(str(bounds[i]))}"
                conds.append(f"({column} IS NULL OR {below})" if i == 0 else below)
            return " AND ".join(conds) or "TRUE"

        def part_of(column: str, bounds: Sequence[str | None]) -> str:
            if not bounds:
                return "0"
            whens = " ".join(f"WHEN {column} < {cast(str(b))} THEN {i}"
                             for i, b in enumerate(bounds))  # fmt: skip
            return f"CASE WHEN {column} IS NULL THEN 0 {whens} ELSE {len(bounds)} END"

        def write_part(bounds: Sequence[str | None], i: int) -> str:
            file_name = part_name(generation, i)
            path = folder / file_name
            new_files.append(path)
            where = in_range(f"s.{q(key)}", bounds, i)
            select = f"SELECT s.* FROM {src} WHERE {where} ORDER BY {order}"
            _write_file(target, cur, path, [(name, select)])
            return file_name

        if not incremental:
            total = count_rows()
            count = partitions or partitions_for(total)
            bounds: list[str | None] = []
            if count > 1 and total:
                fractions = ", ".join(str(i / count) for i in range(1, count))
                found = cur.execute(
                    f"SELECT CAST(unnest(quantile_disc(s.{q(key)}, [{fractions}])) AS VARCHAR) "
                    f"FROM {src}"
                ).fetchall()
                bounds = [r[0] for r in found if r[0] is not None]
            parts = [write_part(bounds, i) for i in range(len(bounds) + 1)]
            manifest = Manifest(
                table=name, generation=generation, key=key, key_type=key_type,
                cluster_by=list(cluster_by), columns=columns, bounds=bounds, parts=parts,
                rows=total, source=dict(source),
            )  # fmt: skip
            return PartitionedWrite(manifest, new_files, list(range(len(parts))), 0, False)

        assert previous is not None and changed_keys_sql is not None
        bounds = list(previous.bounds)
        keys = "temp._clinipipe_publish_keys"
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _clinipipe_publish_keys (k {key_type})")
        cur.execute(f"INSERT INTO {keys} SELECT DISTINCT CAST(k AS {key_type}) "
                    f"FROM ({changed_keys_sql}) AS c")  # fmt: skip
        # The current rows of the keys changed since `previous`: handed over by the refresh
        # when it can (`recent_rows`), else read from the source once (`_changed_rows_sql`).
        rows_of = "temp._clinipipe_publish_rows"
        handover = None
        if dynamic_table is not None:
            handover = recent_rows.handed_over(cur, dynamic_table, keys, q(key), columns)
        if handover is not None:
            fetch, total = handover.rows_sql, handover.table_rows
        else:
            fetch, total = _changed_rows_sql(q(key), keys, src, source_table, columns), count_rows()
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _clinipipe_publish_rows AS {fetch}")
        if previous.delta:
            # The previous delta's other keys have not changed since it was written (as the
            # partitions reused have not): their rows are read from it, not from the source.
            prev = "clinipipe_previous"
            cur.execute(f"ATTACH {lit(str(folder / previous.delta))} AS {q(prev)}"
                        f"{_attach_options(target, read_only=True)}")  # fmt: skip
            try:
                served = f"{q(prev)}.{q(SERVING_SCHEMA)}"
                cur.execute(
                    f"INSERT INTO {rows_of} SELECT d.* FROM {served}.{q(name)} AS d "
                    f"ANTI JOIN {keys} AS c ON d.{q(key)} IS NOT DISTINCT FROM c.k"
                )
                cur.execute(
                    f"INSERT INTO {keys} SELECT k FROM {served}.{q(name + CHANGED_SUFFIX)} "
                    f"EXCEPT SELECT k FROM {keys}"
                )
            finally:
                cur.execute(f"DETACH {q(prev)}")
        pending = dict(
            (int(p), int(n)) for p, n in cur.execute(
                f"SELECT {part_of(q(key), bounds)} AS p, count(*) FROM {rows_of} GROUP BY p"
            ).fetchall()
        )  # fmt: skip
        delta_rows = sum(pending.values())
        budget = compact_rows if compact_rows is not None else total // len(previous.parts)
        rewritten: list[int] = []
        for part, rows in sorted(pending.items(), key=lambda item: (-item[1], item[0])):
            if delta_rows <= budget:
                break
            rewritten.append(part)
            delta_rows -= rows
        parts = list(previous.parts)
        for i in sorted(rewritten):
            parts[i] = write_part(bounds, i)
        if rewritten:
            listed = ", ".join(str(i) for i in rewritten)
            cur.execute(f"DELETE FROM {keys} WHERE {part_of('k', bounds)} IN ({listed})")
            cur.execute(f"DELETE FROM {rows_of} WHERE {part_of(q(key), bounds)} IN ({listed})")
        delta_keys = int(cur.execute(f"SELECT count(*) FROM {keys}").fetchall()[0][0])
        delta = None
        if delta_keys:
            delta = delta_name(generation)
            new_files.append(folder / delta)
            _write_file(target, cur, folder / delta, [
                (name + CHANGED_SUFFIX, f"SELECT k FROM {keys} ORDER BY k"),
                (name, f"SELECT * FROM {rows_of} ORDER BY {order}"),
            ])  # fmt: skip
        manifest = Manifest(
            table=name, generation=generation, key=key, key_type=key_type,
            cluster_by=list(cluster_by), columns=columns, bounds=bounds, parts=parts,
            delta=delta, rows=total, delta_keys=delta_keys, source=dict(source),
        )  # fmt: skip
        return PartitionedWrite(
            manifest, new_files, sorted(rewritten), delta_rows, True, handover is not None
        )
    except duckdb.Error as exc:
        raise TargetError(
            f"publishing {name} failed (readers keep the previous generation; the partial files "
            f"are removed by the next publish): {scrub_values(first_line(exc))}"
        ) from None
    finally:
        with contextlib.suppress(duckdb.Error):
            cur.execute("DROP TABLE IF EXISTS temp._clinipipe_publish_keys")
            cur.execute("DROP TABLE IF EXISTS temp._clinipipe_publish_rows")
        cur.close()


_SEARCH_PATH = f"SET search_path = '{SERVING_SCHEMA},main'"


class ServingError(Exception):
    """An interactive table has no published generation (yet), or it cannot be opened."""


def view_sql(manifest: Manifest) -> str:
    """``serving.<table>`` of a manifest's generation, over its files attached as
    ``clinipipe_p<i>`` and ``clinipipe_delta``: the partitions without the delta's changed
    keys, plus the delta's rows (the rows a full publish of the same source would hold).

    One anti join over the union of the partitions, not one per partition: DuckDB plans each
    query of a dashboard anew, and planning is most of a key lookup's time (2 M rows in 8
    partitions with a delta: 1.9 ms instead of 2.7 per lookup); a filter on the key still
    skips every partition but one (min/max statistics)."""

    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    table = f"{q(SERVING_SCHEMA)}.{q(manifest.table)}"
    parts = " UNION ALL ".join(
        f"SELECT * FROM {q(f'clinipipe_p{i}')}.{table}" for i in range(len(manifest.parts))
    )
    if not manifest.delta:
        return parts
    changed = f"{q('clinipipe_delta')}.{q(SERVING_SCHEMA)}.{q(manifest.table + CHANGED_SUFFIX)}"
    return (
        f"SELECT b.* FROM ({parts}) AS b ANTI JOIN {changed} AS x "
        f"ON b.{q(manifest.key)} IS NOT DISTINCT FROM x.k "
        f"UNION ALL SELECT * FROM {q('clinipipe_delta')}.{table}"
    )


_READER_CONFIG = {"disabled_optimizers": "late_materialization"}
"""Settings of every reader connection. DuckDB 1.5's late materialization turns ``... WHERE
key = ? ORDER BY x LIMIT n`` into a Top-N plus a join on rowid whose other side scans the whole
table: on 2 M rows a dashboard's "last 10 labs of a patient" took 1.8 ms instead of 0.6."""


class _Generation:
    """One open generation: the shared flocks on its files, its read-only connection, its
    users, and the statements each new cursor runs first (search path; the catalog when
    encrypted)."""

    def __init__(
        self, name: str, path: Path, fds: list[int], threads: int, key: str | None = None,
        manifest: Manifest | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.path = path
        self.fds = fds
        self.setup = [_SEARCH_PATH]
        self.users = 0
        self.retired = False
        if manifest is None or (len(manifest.parts) == 1 and not manifest.delta):
            data = path if manifest is None else path.with_name(manifest.parts[0])
            self._open_file(data, threads, key)
        else:
            self._open_manifest(manifest, threads, key)

    def _open_file(self, data: Path, threads: int, key: str | None) -> None:
        if key is None:
            self.con = duckdb.connect(
                str(data), read_only=True, config={"threads": threads, **_READER_CONFIG}
            )
            return
        try:
            self.con, use = open_encrypted(data, key, read_only=True, alias=_ALIAS)
        except duckdb.Error as exc:
            raise ServingError(
                f"cannot open {data.name} (encrypted): {scrub_values(first_line(exc))}"
            ) from None
        self.con.execute(f"SET threads = {int(threads)}")
        for setting, value in _READER_CONFIG.items():
            self.con.execute(f"SET {setting} = '{value}'")
        self.setup = [use, f"SET search_path = '{_ALIAS}.{SERVING_SCHEMA},{_ALIAS}.main'"]

    def _open_manifest(self, manifest: Manifest, threads: int, key: str | None) -> None:
        con = duckdb.connect(
            ":memory:",
            config={"threads": threads, "autoinstall_known_extensions": False, **_READER_CONFIG},
        )
        try:
            options = ", READ_ONLY"
            if key is not None:
                ext = httpfs_extension()
                if ext is not None:
                    con.execute("LOAD '" + str(ext).replace("'", "''") + "'")
                options = ", ENCRYPTION_KEY '" + key.replace("'", "''") + "'" + options
            files = [(f"clinipipe_p{i}", p) for i, p in enumerate(manifest.parts)]
            if manifest.delta:
                files.append(("clinipipe_delta", manifest.delta))
            for alias, file_name in files:
                path = str(self.path.with_name(file_name)).replace("'", "''")
                try:
                    con.execute(f"ATTACH '{path}' AS \"{alias}\" ({options.lstrip(', ')})")
                except duckdb.Error as exc:
                    state = "encrypted" if key is not None else "read-only"
                    raise ServingError(
                        f"cannot open {file_name} ({state}): {scrub_values(first_line(exc))}"
                    ) from None
            con.execute(f'CREATE SCHEMA "{SERVING_SCHEMA}"')
            con.execute(
                f'CREATE VIEW "{SERVING_SCHEMA}"."{manifest.table.replace(chr(34), chr(34) * 2)}"'
                f" AS {view_sql(manifest)}"
            )
        except BaseException:
            con.close()
            raise
        self.con = con

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            for fd in self.fds:
                os.close(fd)  # releases the shared flocks


def _lock_shared(path: Path) -> int | None:
    """An fd holding a shared flock on the file at `path`, or None if it was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # The publisher may have deleted the file between our open and our flock.
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            return None
    except FileNotFoundError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_generation(
    folder: Path, file_name: str, threads: int, key: str | None
) -> _Generation | None:
    """Open the generation `file_name` (manifest or single file) of `folder` with shared locks
    on all its files, or None when one of them is gone (superseded and cleaned up: the caller
    reads CURRENT again)."""
    path = folder / file_name
    fd = _lock_shared(path)
    if fd is None:
        return None
    fds = [fd]
    try:
        manifest = None
        if MANIFEST_RE.match(file_name):
            manifest = Manifest.load(path)  # locked: cannot be deleted any more
            for data in manifest.files:
                data_fd = _lock_shared(folder / data)
                if data_fd is None:
                    for held in fds:
                        os.close(held)
                    return None
                fds.append(data_fd)
        return _Generation(folder.name, path, fds, threads, key, manifest)
    except BaseException:
        for held in fds:
            os.close(held)
        raise


class _Table:
    """The state of one interactive table inside a reader."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current: _Generation | None = None
        self.stamp: tuple[int, int] | None = None
        self.checked = 0.0
        self.checking = False
        """A thread is looking for a newer generation (outside the reader's lock)."""


class ServingReader:
    """Query published interactive tables of the DuckDB warehouse file `warehouse`.

    `recheck_seconds` bounds how long a reader keeps answering from a generation after a newer
    one was published (plus the time of one open). `threads` is DuckDB's parallelism *per
    query*: dashboards run many small queries side by side (one per request thread), so one
    thread each is the default; raise it for a reader that runs few large scans. Use as a
    context manager or call :meth:`close`.
    """

    def __init__(
        self,
        warehouse: Path | str,
        *,
        recheck_seconds: float = 0.1,
        threads: int = 1,
        encryption_key: str | None = None,
    ) -> None:
        self.root = serving_root(Path(warehouse))
        self.recheck_seconds = recheck_seconds
        self.threads = threads
        self._key = encryption_key
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}
        self._closed = False

    def __enter__(self) -> ServingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generation(self, name: str) -> str:
        """The generation file name queries of `name` currently run on (opening it if needed)."""
        gen = self._acquire(name)
        try:
            return gen.path.name
        finally:
            self._release(gen)

    def query(
        self, name: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run `sql` (reading table `name`, as `serving.<name>` or `<name>`) with `params`
        (positional `?` or named `$x`) on the current generation of `name`."""
        return self.execute(name, sql, params)[1]

    def execute(
        self, name: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]], str]:
        """As `query`, also returning the result's column names and the generation file name
        the query ran on."""
        gen = self._acquire(name)
        try:
            cur = gen.con.cursor()
            try:
                # Queries name `serving.<table>`; bare names resolve there too (the setting
                # belongs to the cursor's own connection).
                for statement in gen.setup:
                    cur.execute(statement)
                cur.execute(sql, params if params is not None else [])
                columns = [d[0] for d in cur.description or []]
                return columns, cur.fetchall(), gen.path.name
            finally:
                cur.close()
        finally:
            self._release(gen)

    def close(self) -> None:
        """Close every generation (those still in use close when their last query ends)."""
        with self._lock:
            self._closed = True
            for table in self._tables.values():
                if table.current is not None:
                    self._retire(table.current)
                    table.current = None

    # --- internals -------------------------------------------------------------------------

    def _acquire(self, name: str) -> _Generation:
        with self._lock:
            if self._closed:
                raise ServingError("the serving reader is closed")
            table = self._tables.get(name)
            if table is None:
                table = self._tables[name] = _Table(self.root / name)
            now = time.monotonic()
            if table.current is None:  # first use: nothing to serve meanwhile, open it here
                self._install(
                    table, self._find_newer(table.folder, None, None, self.threads, self._key)
                )
                table.checked = now
            elif now - table.checked < self.recheck_seconds or table.checking:
                return self._use(table)
            table.checking = True
            table.checked = now
            current, stamp = table.current, table.stamp
        # Look for (and open) a newer generation without the lock: queries of other threads
        # keep running on the current one meanwhile.
        try:
            found = self._find_newer(table.folder, current, stamp, self.threads, self._key)
        except BaseException:
            with self._lock:
                table.checking = False
            raise
        with self._lock:
            table.checking = False
            self._install(table, found)
            return self._use(table)

    def _use(self, table: _Table) -> _Generation:
        if self._closed or table.current is None:
            raise ServingError("the serving reader is closed")
        table.current.users += 1
        return table.current

    def _install(self, table: _Table, found: tuple[_Generation | None, tuple[int, int]]) -> None:
        """Make a found generation current (lock held); retire the previous one."""
        gen, stamp = found
        table.stamp = stamp
        if gen is None:
            return
        if self._closed:  # closed while it was being opened
            self._retire(gen)
            return
        old, table.current = table.current, gen
        if old is not None:
            self._retire(old)

    def _release(self, gen: _Generation) -> None:
        with self._lock:
            gen.users -= 1
            if gen.retired and gen.users == 0:
                gen.close()

    def _retire(self, gen: _Generation) -> None:
        gen.retired = True
        if gen.users == 0:
            gen.close()

    @staticmethod
    def _find_newer(
        folder: Path,
        current: _Generation | None,
        stamp: tuple[int, int] | None,
        threads: int,
        key: str | None = None,
    ) -> tuple[_Generation | None, tuple[int, int]]:
        """The generation CURRENT names in `folder`, opened, if it is not `current`
        ((None, stamp) when unchanged). Touches no reader state, so it runs without the lock."""
        for _ in range(100):
            try:
                st = os.stat(folder / CURRENT)
            except FileNotFoundError:
                st = None
            if st is None:
                if current is not None and stamp is not None:
                    return None, stamp  # keep serving what we have
                raise ServingError(f"interactive table {folder.name!r} is not published")
            new_stamp = (st.st_ino, st.st_mtime_ns)
            if current is not None and new_stamp == stamp:
                return None, new_stamp
            file_name = read_current(folder)
            if file_name is None:
                raise ServingError(f"{folder / CURRENT} names no generation")
            if current is not None and current.path.name == file_name:
                return None, new_stamp
            gen = _open_generation(folder, file_name, threads, key)
            if gen is None:
                continue  # superseded and deleted meanwhile: read CURRENT again
            return gen, new_stamp
        raise ServingError(f"could not open a generation of {folder.name!r}")
