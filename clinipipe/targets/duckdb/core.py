"""The DuckDB core: one local database file, its connection, transactions and compute profiles."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from clinipipe.secrets import environment, first_line, scrub_values
from clinipipe.spec.errors import Problem, SpecError
from clinipipe.spec.loader import LoadedSpec
from clinipipe.spec.model import DuckDBTarget as DuckDBTargetSpec
from clinipipe.spec.types import WAREHOUSE_CREDITS_PER_HOUR
from clinipipe.sql.context import RAW_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.targets.core import TargetCore, TargetError

if TYPE_CHECKING:
    from clinipipe.targets.capabilities.loading import BatchStream

GIB = 1024**3


class DuckDBDialect(Dialect):
    """DuckDB follows PostgreSQL: double-quoted identifiers, standard strings."""

    name = "duckdb"
    sqlglot_name = "duckdb"  # the spec's own SQL dialect: spec queries are used as written


def _machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * GIB


def compute_profile(size: str) -> tuple[int, int]:
    """(threads, memory_limit bytes) standing in for a Snowflake warehouse of `size`.

    One thread per credit/hour (XSMALL 1, SMALL 2, MEDIUM 4, ...) and 2 GiB of memory per
    credit/hour, capped by the machine's cores and 80 % of its memory.
    """
    credits = WAREHOUSE_CREDITS_PER_HOUR[size]
    threads = max(1, min(credits, os.cpu_count() or 1))
    memory = max(GIB // 2, min(credits * 2 * GIB, int(_machine_memory() * 0.8)))
    return threads, memory


class DuckDBCore(TargetCore):
    """A DuckDB database file. One process may open it read-write at a time.

    Every transaction runs on its own cursor of the one connection (`cursor`);
    `execute_atomically` is BEGIN ... COMMIT (ROLLBACK on any failure), and DuckDB's WAL makes
    a commit durable: a kill -9 leaves every committed transaction and none of an uncommitted
    one.

    Encrypted at rest when the spec names `target.encryption_key_env`: the file (and its WAL)
    is DuckDB's AES-GCM database encryption, attached with the key from that variable under
    the catalog name an unencrypted file would have, and made the default (``USE``) of the
    connection and of every cursor from `cursor`. Spilled temporary files are encrypted too.
    The key is never printed; opening without it fails naming the variable only.
    """

    type = "duckdb"
    dialect = DuckDBDialect()

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        super().__init__(loaded, read_only=read_only)
        spec = loaded.spec.target
        assert isinstance(spec, DuckDBTargetSpec)
        self.path = loaded.resolve(spec.path)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._use: str | None = None
        """``USE <catalog>`` for new cursors when the file is attached (encrypted)."""
        self._shared = False
        """True when `_con` is a cursor of the process's one attachment (`_share_encrypted`)."""

    def describe(self) -> str:
        return f"DuckDB file {self.path}"

    def connect(self) -> None:
        if not self.path.parent.is_dir():
            raise TargetError(
                f"cannot open {self.describe()}: folder {self.path.parent} does not exist "
                "(create it, or fix target.path in the spec)"
            )
        if self.read_only and not self.path.exists():
            # Nothing deployed yet; an empty database answers every question without
            # creating the file (a dry run must change nothing).
            self._con = duckdb.connect(":memory:")
            return
        key = self.encryption_key()
        try:
            if key is None:
                self._con = duckdb.connect(str(self.path), read_only=self.read_only)
            else:
                self._con, self._use = _share_encrypted(self.path, key, read_only=self.read_only)
                self._shared = True
        except duckdb.Error as exc:
            reason = scrub_values(first_line(exc))
            hint = ""
            if "lock" in reason.lower():
                hint = " Another clinipipe process (or a DuckDB client) has it open; stop it first."
            elif "without a key" in reason or "encrypted database" in reason:
                hint = (" The file is encrypted: set target.encryption_key_env in the spec and "
                        "that variable to its key.")  # fmt: skip
            elif "is not encrypted" in reason:
                hint = (f" The spec names ${self._key_variable()} but this file is not "
                        "encrypted: migrate it (docs/DEPLOYMENT_GUIDE.md, Encryption at rest) "
                        "or remove target.encryption_key_env.")  # fmt: skip
            elif "wrong encryption key" in reason.lower():
                hint = f" Check the key in ${self._key_variable()}."
            raise TargetError(f"cannot open {self.describe()}: {reason}.{hint}") from None

    def _key_variable(self) -> str | None:
        spec = self.loaded.spec.target
        assert isinstance(spec, DuckDBTargetSpec)
        return spec.encryption_key_env

    def encryption_key(self) -> str | None:
        """The key encrypting this warehouse: `encryption_key_of` the spec."""
        return encryption_key_of(self.loaded)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor of the connection, reading and writing this warehouse by default (also
        when it is an attached, encrypted file). The caller closes it."""
        cur = self.con.cursor()
        if self._use is not None:
            cur.execute(self._use)
        return cur

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            self._use = None
            if self._shared:
                self._shared = False
                _release_encrypted(self.path)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise TargetError("the DuckDB target is not connected")
        return self._con

    def use_warehouse(self, role: str) -> str:
        """Switch the database to the compute profile of warehouse `role`."""
        warehouse = getattr(self.loaded.spec.warehouses, role)
        threads, memory = compute_profile(warehouse.size)
        self.con.execute(f"SET threads = {threads}")
        self.con.execute(f"SET memory_limit = '{memory // (1024 * 1024)}MB'")
        return f"{warehouse.name} ({warehouse.size}: {threads} threads, {memory // GIB} GiB)"

    def execute_atomically(self, statements: Sequence[str]) -> None:
        cur = self.cursor()
        try:
            with transaction(cur):
                for statement in statements:
                    cur.execute(statement)
        finally:
            cur.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def table_exists(self, schema: str, table: str) -> bool:
        rows = self.con.execute(  # the catalog functions: information_schema is ~2x slower
            "SELECT 1 FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = $s AND table_name = $t UNION ALL SELECT 1 FROM duckdb_views() "
            "WHERE database_name = current_database() AND schema_name = $s AND view_name = $t",
            {"s": schema, "t": table},
        ).fetchall()
        return bool(rows)

    def raw_name(self, table: str) -> str:
        return self.dialect.qualify(RAW_SCHEMA, table)


# --- helpers shared by the DuckDB mixins ----------------------------------------------------------

_RESERVED_CATALOGS = {"memory", "system", "temp", "main"}


def encryption_key_of(loaded: LoadedSpec) -> str | None:
    """The key encrypting the spec's DuckDB warehouse (from `target.encryption_key_env`, the
    environment or `.env`), or None when the spec asks for no encryption. Raises `SpecError`
    (exit 2) naming the variable when it is not set or empty; the key itself is never part
    of a message."""
    spec = loaded.spec.target
    variable = spec.encryption_key_env if isinstance(spec, DuckDBTargetSpec) else None
    if variable is None:
        return None
    key = environment(loaded.directory).get(variable, "")
    if not key:
        line, col = loaded.positions.of_value(("target", "encryption_key_env"))
        raise SpecError([Problem(
            loaded.filename or str(loaded.path), line, col,
            f"target.encryption_key_env: environment variable {variable} is not set (or "
            "empty): set it (or a .env entry) to the warehouse's encryption key",
        )])  # fmt: skip
    return key


def httpfs_extension() -> Path | None:
    """The httpfs extension file of the `duckdb-extension-httpfs` wheel, or None. DuckDB needs
    it (its OpenSSL crypto) to *write* encrypted files; reading works without it. Loaded by
    path: DuckDB checks its signature, nothing is downloaded."""
    try:
        import duckdb_extension_httpfs  # type: ignore[import-not-found]
    except ImportError:
        return None
    base = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    found = sorted(base.glob(f"v{duckdb.__version__}/httpfs.duckdb_extension"))
    return found[0] if found else None


def open_encrypted(
    path: Path, key: str, *, read_only: bool, alias: str | None = None
) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A connection with the encrypted DuckDB file `path` attached (created when missing and
    not `read_only`) as catalog `alias` (default: the file's stem, as DuckDB names an
    unencrypted file) and made the default; returns it and the ``USE`` statement new cursors
    must run. Temporary files it spills are encrypted. Raises `duckdb.Error` (the key is in no
    message) or `TargetError` when writing is asked and the crypto extension is missing."""
    name = alias or path.stem
    if name.lower() in _RESERVED_CATALOGS:
        name = "warehouse"
    ident = '"' + name.replace('"', '""') + '"'
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    try:
        ext = httpfs_extension()
        if ext is not None:
            con.execute("LOAD '" + str(ext).replace("'", "''") + "'")
        elif not read_only:
            raise TargetError(
                f"cannot write the encrypted DuckDB file {path}: DuckDB needs its httpfs "
                "extension for secure encryption; install the duckdb-extension-httpfs "
                f"=={duckdb.__version__} package"
            )
        con.execute("SET temp_file_encryption = true")
        options = "ENCRYPTION_KEY '" + key.replace("'", "''") + "'"
        if read_only:
            options += ", READ_ONLY"
        con.execute("ATTACH '" + str(path).replace("'", "''") + f"' AS {ident} ({options})")
        use = f"USE {ident}"
        con.execute(use)
    except BaseException:
        con.close()
        raise
    return con, use


@dataclass
class _Attachment:
    root: duckdb.DuckDBPyConnection
    use: str
    read_only: bool
    users: int


_ATTACHMENTS: dict[Path, _Attachment] = {}
_ATTACHMENTS_LOCK = threading.Lock()


def _share_encrypted(
    path: Path, key: str, *, read_only: bool
) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A cursor of this process's one attachment of the encrypted file `path` (opened with
    `open_encrypted` by the first user), and its ``USE`` statement. DuckDB refuses to attach one
    file twice in a process (an unencrypted file shares its instance by itself), so every
    target of the process — e.g. `cdc start`'s loop and its PHI scanner, on separate threads —
    shares it; each gets its own cursor (usable from its own thread). A read-write request while
    a read-only attachment is open raises `TargetError`. Released by `_release_encrypted`; the
    last user's release closes (checkpoints) the file."""
    path = path.resolve()
    with _ATTACHMENTS_LOCK:
        shared = _ATTACHMENTS.get(path)
        if shared is not None and shared.read_only and not read_only:
            raise TargetError(
                f"cannot write DuckDB file {path}: this process has it open read-only"
            )
        if shared is None:
            root, use = open_encrypted(path, key, read_only=read_only)
            shared = _ATTACHMENTS[path] = _Attachment(root, use, read_only, 0)
        cur = shared.root.cursor()
        try:
            cur.execute(shared.use)
        except BaseException:
            cur.close()
            if not shared.users:
                shared.root.close()
                del _ATTACHMENTS[path]
            raise
        shared.users += 1
        return cur, shared.use


def _release_encrypted(path: Path) -> None:
    """One user of `_share_encrypted(path)` is done; the last one closes the attachment."""
    path = path.resolve()
    with _ATTACHMENTS_LOCK:
        shared = _ATTACHMENTS.get(path)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del _ATTACHMENTS[path]
            shared.root.close()


def rollback(cur: duckdb.DuckDBPyConnection) -> None:
    """Roll back `cur`'s transaction, if one is still open: a COMMIT that failed has already
    ended it, and the error of a second ROLLBACK must not replace the first error."""
    with contextlib.suppress(duckdb.Error):
        cur.execute("ROLLBACK")


@contextlib.contextmanager
def transaction(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction on `cur` around the block: BEGIN, then COMMIT when the block ends
    normally. When the block (or the COMMIT) raises, the transaction is rolled back and that
    error propagates, never the rollback's: all or nothing, DuckDB's WAL making a commit
    durable (a kill -9 keeps every committed transaction and nothing of an open one)."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
        cur.execute("COMMIT")
    except BaseException:
        rollback(cur)
        raise


def columns_of(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[str, str]]:
    """(name, type) of each column of `schema.table` as `con` sees it (its transaction)."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return [(str(n), str(t)) for n, t in rows]


def load_batches(
    core: DuckDBCore,
    stream: BatchStream,
    view: str,
    per_batch: Sequence[str],
    finish: Callable[[int], Sequence[str]],
    failure: str,
) -> int:
    """In one transaction (a cursor of `core`): each Arrow batch of `stream` registered as
    `view` and `per_batch` run over it, then `finish(rows read)`; committed, or on any error rolled
    back whole (a DuckDB error becomes `TargetError` "`failure`: reason"). Returns the rows
    read."""
    rows = 0
    cur = core.cursor()
    try:
        with transaction(cur):
            for batch in stream.batches:
                cur.register(view, batch)
                for statement in per_batch:
                    cur.execute(statement)
                cur.unregister(view)
                rows += batch.num_rows
            for statement in finish(rows):
                cur.execute(statement)
    except duckdb.Error as exc:
        raise TargetError(
            f"{failure}: {scrub_values(first_line(exc))} (nothing of it was kept)"
        ) from None
    finally:
        cur.close()
    return rows
