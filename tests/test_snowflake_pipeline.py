"""Backfill and CDC into Snowflake, executed through fakesnow (Snowflake itself is unreachable).

What runs on fakesnow 0.11.18 (DuckDB underneath, one in-memory database per test):

* the whole backfill: per-range transient staging tables filled by ``write_pandas``, the typed
  INSERT ... SELECT with `snowflake_cast`, the range record and metering row in
  BEGIN TRANSACTION ... COMMIT, the ROLLBACK of a range failing inside its transaction, the
  key-replacing DELETE ... USING of ``--resume``, and four worker threads each on its own
  session;
* every statement of a CDC batch: staging, truncate, changed keys, the MERGE per table (last
  change per key with QUALIFY, TOAST values from a window over the batch or the target), the
  checkpoint, the batch record with its ARRAY of latencies, metering.

What fakesnow lacks, and how that is covered:

* **MERGE inside an explicit transaction.** fakesnow emulates MERGE with
  ``CREATE TEMPORARY TABLE merge_candidates AS ...`` and records that table in its own
  ``_fs_global`` DuckDB database; DuckDB lets a transaction write to one attached database only,
  so any MERGE after BEGIN fails ("a single transaction can only write to a single attached
  database"; `test_fakesnow_cannot_merge_in_a_transaction` notices when that changes). On
  fakesnow the statements of a CDC batch therefore run one by one in autocommit: their SQL and
  results are checked end to end, the transaction around them by the golden test
  `test_cdc_apply_transaction_golden_sql`, which pins the exact Snowflake statements in order
  (staging DDL and write_pandas before BEGIN TRANSACTION, only DML until COMMIT).
* **DDL committing an open transaction.** In autocommit mode fakesnow runs DDL inside
  BEGIN ... COMMIT like DuckDB does; Snowflake would commit the transaction there. The golden
  test asserts that no DDL (write_pandas creates a temporary stage) runs inside one.
* **PUT and COPY INTO.** fakesnow's write_pandas inserts the DataFrame directly; the Parquet
  file, its upload and the COPY are not exercised.
* fakesnow's MERGE also needs a current schema (its helper table is unqualified); the target
  sets one (``USE SCHEMA`` of the control schema) in `use_warehouse`, as it does on Snowflake.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fakesnow
import pandas as pd
import pyarrow as pa
import pytest
import snowflake.connector

from clinipipe.pipeline.backfill import BackfillError, BackfillOptions, run_backfill
from clinipipe.pipeline.cdc import CdcOptions, run_cdc
from clinipipe.pipeline.deploy import deploy
from clinipipe.source.catalog import Column, ColumnType, TableSchema
from clinipipe.spec import load_spec
from clinipipe.sql.render import Statement
from clinipipe.synth import run_synth
from clinipipe.targets.base import CdcBatch, RangeWork, TableBatch
from clinipipe.targets.snowflake import SnowflakeTarget
from tests.helpers import KEYS, TABLES, cli, execute, snowflake_text, source_rows, write_spec
from tests.test_snowflake_fakesnow import FAKESNOW_CANNOT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@dataclass
class Fake:
    """What the fakesnow harness saw."""

    skipped: list[str] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)  # threads that opened a session
    unwrapped: int = 0  # transactions run statement by statement (they contain a MERGE)


def _code(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    """Patch the connector with fakesnow (see the module docstring for the two adaptations)."""
    seen = Fake()
    real_execute = SnowflakeTarget._execute
    real_atomically = SnowflakeTarget.execute_atomically
    real_open = SnowflakeTarget._open

    def execute(self: SnowflakeTarget, statement: Statement) -> None:
        code = _code(statement.sql)
        if FAKESNOW_CANNOT.match(code):
            seen.skipped.append(code.split("\n", 1)[0])
            return
        real_execute(self, statement)

    def execute_atomically(self: SnowflakeTarget, statements: Sequence[str]) -> None:
        if not any(s.startswith("MERGE ") for s in statements):
            real_atomically(self, statements)
            return
        seen.unwrapped += 1  # fakesnow cannot MERGE after BEGIN
        for statement in statements:
            self._execute(Statement(0, statement))

    def open_session(self: SnowflakeTarget) -> object:
        seen.sessions.add(threading.get_ident())
        return real_open(self)

    monkeypatch.setattr(SnowflakeTarget, "_execute", execute)
    monkeypatch.setattr(SnowflakeTarget, "execute_atomically", execute_atomically)
    monkeypatch.setattr(SnowflakeTarget, "_open", open_session)
    with fakesnow.patch():
        yield seen


@pytest.fixture
def project(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, fake: Fake) -> Path:
    """The synthetic hospital (as `hospital_project`), deployed to Snowflake on fakesnow."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "not-a-real-password")
    run_synth(pg_dsn, patients=150, seed=11)
    spec = write_spec(tmp_path, snowflake_text())
    deploy(load_spec(spec))
    return spec


def query(spec: Path, sql: str) -> list[tuple[object, ...]]:
    with SnowflakeTarget(load_spec(spec)) as target:
        return target.query(sql)


def assert_snowflake_equals_source(dsn: str, spec: Path) -> None:
    """Every raw table holds exactly the source's rows (NUMBER reads back as Decimal, which
    compares equal to the source's int; TIMESTAMP_TZ as an aware datetime)."""
    with SnowflakeTarget(load_spec(spec)) as target:
        for table in TABLES:
            expected = source_rows(dsn, table)
            actual = target.query(f"SELECT * FROM CLINIPIPE.RAW.{table} ORDER BY {KEYS[table]}")
            assert len(actual) == len(expected), table
            assert actual == expected, f"{table} differs"


def staged_rows(spec: Path) -> list[tuple[object, ...]]:
    tables = query(
        spec,
        "SELECT table_name FROM CLINIPIPE.information_schema.tables "
        "WHERE table_schema = '_CLINIPIPE' AND LEFT(table_name, 1) = '_'",
    )
    return [(t, query(spec, f'SELECT count(*) FROM CLINIPIPE._CLINIPIPE."{t}"')[0][0])
            for (t,) in tables]  # fmt: skip


# --------------------------------------------------------------------------------------------
# backfill
# --------------------------------------------------------------------------------------------


def test_backfill_with_a_failed_range_then_resume(
    project: Path, pg_dsn: str, fake: Fake, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Four workers load concurrently, each on its own session; one range fails inside its
    transaction (after its rows were inserted) and leaves nothing; --resume completes it."""
    real_done = SnowflakeTarget.range_done_sql

    def failing(
        self: SnowflakeTarget, table: TableSchema, work: RangeWork, *args: object
    ) -> list[str]:
        statements = real_done(self, table, work, *args)
        if table.name == "labs" and work.range_no == 2:
            statements.append("INSERT INTO CLINIPIPE._CLINIPIPE.NO_SUCH_TABLE VALUES (1)")
        return statements

    monkeypatch.setattr(SnowflakeTarget, "range_done_sql", failing)
    with pytest.raises(BackfillError, match=r"labs range 2 .*nothing of this range was kept"):
        run_backfill(load_spec(project), BackfillOptions(workers=4, pages_per_range=8))
    assert len(fake.sessions) > 1, "the workers shared one session"
    ranges = "CLINIPIPE._CLINIPIPE.BACKFILL_RANGES"
    loaded = dict(query(project, f"SELECT table_name, sum(rows_loaded) FROM {ranges} GROUP BY 1"))
    assert "labs" in loaded, "the failure came before any labs range committed"
    for table in TABLES:  # every range recorded as done is fully there, and nothing else
        count = query(project, f"SELECT count(*) FROM CLINIPIPE.RAW.{table}")[0][0]
        assert count == loaded.get(table, 0), table
    assert (2,) not in query(project, "SELECT range_no FROM CLINIPIPE._CLINIPIPE.BACKFILL_RANGES "
                                      "WHERE table_name = 'labs'")  # fmt: skip
    assert staged_rows(project) == []  # every range's staging table was dropped

    monkeypatch.setattr(SnowflakeTarget, "range_done_sql", real_done)
    code, out, err = cli(capsys, "-c", str(project), "backfill", "--resume", "--workers", "4",
                         "--json")  # fmt: skip
    assert code == 0, err
    assert '"status": "resumed"' in out
    assert_snowflake_equals_source(pg_dsn, project)
    ranges, planned, metered, rows = query(
        project,
        "SELECT (SELECT count(*) FROM CLINIPIPE._CLINIPIPE.BACKFILL_RANGES), "
        "(SELECT count(*) FROM CLINIPIPE._CLINIPIPE.BACKFILL_PLAN), "
        "(SELECT count(*) FROM CLINIPIPE._CLINIPIPE.METERING "
        " WHERE warehouse_role = 'initialization'), "
        "(SELECT sum(rows_loaded) FROM CLINIPIPE._CLINIPIPE.BACKFILL_RANGES)",
    )[0]
    assert ranges == planned == metered and planned > len(TABLES)
    assert rows == sum(len(source_rows(pg_dsn, t)) for t in TABLES)
    assert query(project, "SELECT count(*) FROM CLINIPIPE._CLINIPIPE.BACKFILL_RUNS "
                          "WHERE completed_at IS NOT NULL") == [(1,)]  # fmt: skip
    recorded = query(project, "SELECT count(*) FROM CLINIPIPE._CLINIPIPE.SOURCE_COLUMNS "
                              "WHERE table_name = 'patients'")  # fmt: skip
    assert recorded == [(18,)]
    assert fake.unwrapped == 0  # the backfill ran every transaction for real


# --------------------------------------------------------------------------------------------
# change data capture
# --------------------------------------------------------------------------------------------

BIG = "".join(random.Random(3).choice("abcdefghij0123456789 ") for _ in range(300_000))
BIGGER = BIG[::-1] + "x"


def test_cdc_through_fakesnow_equals_the_source(project: Path, pg_dsn: str, fake: Fake) -> None:
    execute(pg_dsn, f"UPDATE clinical_notes SET note_text = '{BIG}' WHERE note_id IN (1, 2)")
    run_backfill(load_spec(project), BackfillOptions(workers=2, pages_per_range=32))
    execute(
        pg_dsn,
        "INSERT INTO providers VALUES (9001, '1234567893', 'Ann', 'Lee', 'Cardiology', 'Heart')",
        "UPDATE providers SET department = 'Moved' WHERE provider_id = 1",
        "UPDATE providers SET provider_id = 9002 WHERE provider_id = 2",  # a primary-key update
        "DELETE FROM providers WHERE provider_id = 3",
    )
    execute(pg_dsn, "INSERT INTO providers VALUES (3, '1234567893', 'Re', 'Used', 'Oncology', 'X')")
    execute(
        pg_dsn,
        "UPDATE patients SET email = NULL, phone = '' WHERE patient_id = 1",
        "UPDATE patients SET city = 'O''Brien, \"Town\"\nNew\\' WHERE patient_id = 2",
        "DELETE FROM labs WHERE patient_id = 5",
        "TRUNCATE claims",
        "INSERT INTO claims VALUES (1, 1, 1, 'Aetna', NULL, 10.50, NULL, 'paid', '2026-01-02')",
        "UPDATE encounters SET discharge_ts = admit_ts + interval '2 days'",  # a big transaction
    )
    # TOAST: note 1's text is unchanged by both updates (PostgreSQL does not send it); note 2
    # gets a new text and then a type-only update, so its text comes from earlier in the batch.
    execute(
        pg_dsn,
        "UPDATE clinical_notes SET note_type = 'addendum' WHERE note_id = 1",
        f"UPDATE clinical_notes SET note_text = '{BIGGER}' WHERE note_id = 2",
    )
    execute(pg_dsn, "UPDATE clinical_notes SET note_type = 'late' WHERE note_id IN (1, 2)")

    applied: list[CdcBatch] = []
    summary = run_cdc(load_spec(project), CdcOptions(until_caught_up=True, max_seconds=120),
                      on_batch=applied.append)  # fmt: skip
    assert summary.batches >= 1 and summary.changes > 1000
    assert fake.unwrapped == summary.batches
    assert_snowflake_equals_source(pg_dsn, project)
    notes = dict(query(project, "SELECT note_id, note_text FROM CLINIPIPE.RAW.CLINICAL_NOTES "
                                "WHERE note_id IN (1, 2)"))  # fmt: skip
    assert notes[1] == BIG and notes[2] == BIGGER  # never NULL, never a placeholder

    checkpoint = query(project, "SELECT lsn FROM CLINIPIPE._CLINIPIPE.CDC_CHECKPOINTS")
    assert checkpoint == [(summary.end_lsn,)]
    batches = query(project, "SELECT changes, transactions, latencies_ms "
                             "FROM CLINIPIPE._CLINIPIPE.CDC_BATCHES")  # fmt: skip
    assert len(batches) == summary.batches
    assert sum(b[0] for b in batches) == summary.changes
    assert sum(b[1] for b in batches) == summary.transactions
    assert all(len(json.loads(b[2])) == b[1] for b in batches)  # an ARRAY, as JSON text
    metered = query(project, "SELECT count(*), sum(rows_processed) FROM "
                             "CLINIPIPE._CLINIPIPE.METERING WHERE job = 'cdc:batch'")  # fmt: skip
    assert metered == [(summary.batches, summary.changes)]
    keys = query(project, "SELECT DISTINCT key_value FROM CLINIPIPE._CLINIPIPE.CHANGED_KEYS "
                          "WHERE table_name = 'encounters'")  # fmt: skip
    assert len(keys) == len(
        query(project, "SELECT DISTINCT patient_id FROM CLINIPIPE.RAW.ENCOUNTERS")
    )
    assert all(rows == 0 for _, rows in staged_rows(project))  # emptied with each batch

    # Applying the batches again changes nothing (a replay after a crash before the confirm).
    with SnowflakeTarget(load_spec(project)) as target:
        target.use_warehouse("incremental")
        for batch in applied:
            target.apply_cdc_batch(batch)
    assert_snowflake_equals_source(pg_dsn, project)

    # A key update of a row whose TOASTed text it leaves unchanged: the moved row keeps the
    # text of the row under its old key (pgoutput marks it unchanged under the new key).
    execute(pg_dsn, "UPDATE clinical_notes SET note_id = 1001 WHERE note_id = 1")
    run_cdc(load_spec(project), CdcOptions(until_caught_up=True, max_seconds=120))
    assert_snowflake_equals_source(pg_dsn, project)
    moved = query(project, "SELECT note_text FROM CLINIPIPE.RAW.CLINICAL_NOTES "
                           "WHERE note_id = 1001")  # fmt: skip
    assert moved == [(BIG,)]


def test_fakesnow_cannot_merge_in_a_transaction() -> None:
    """The one fakesnow gap the CDC test works around; when this fails, fakesnow learned it:
    drop the `execute_atomically` adaptation of the `fake` fixture."""
    with fakesnow.patch():
        con = snowflake.connector.connect(
            account="a", user="u", password="p", database="D", schema="S"
        )
        cur = con.cursor()
        cur.execute("CREATE TABLE D.S.T (K INT)")
        cur.execute("BEGIN TRANSACTION")
        with pytest.raises(Exception, match="single attached database"):
            cur.execute("MERGE INTO D.S.T t USING (SELECT 1 AS K) s ON t.K = s.K "
                        "WHEN NOT MATCHED THEN INSERT (K) VALUES (s.K)")  # fmt: skip
        cur.execute("ROLLBACK")
        con.close()


# --------------------------------------------------------------------------------------------
# golden SQL: what fakesnow cannot execute
# --------------------------------------------------------------------------------------------

INT64 = ColumnType("int64", "bigint")
TEXT = ColumnType("text", "text")
NOTES = TableSchema(
    "public", "notes",
    (Column("note_id", INT64, False, 1), Column("patient_id", INT64, False, 2),
     Column("note_ts", ColumnType("timestamptz", "timestamp with time zone"), False, 3),
     Column("note_text", TEXT, True, 4)),
    ("note_id",), 1, 1,
)  # fmt: skip
PRIORITY = Column("priority", ColumnType("int32", "integer"), True, 5, "0")

GOLDEN_CDC = """\
CREATE OR REPLACE TRANSIENT TABLE "CLINIPIPE"."_CLINIPIPE"."_CDC_NOTES" ("_OP" VARCHAR(1), \
"_SEQ" NUMBER(19,0), "NOTE_ID" VARCHAR, "PATIENT_ID" VARCHAR, "NOTE_TS" VARCHAR, \
"NOTE_TEXT" VARCHAR, "NOTE_ID__U" BOOLEAN, "PATIENT_ID__U" BOOLEAN, "NOTE_TS__U" BOOLEAN, \
"NOTE_TEXT__U" BOOLEAN, "NOTE_ID__FROM" VARCHAR) DATA_RETENTION_TIME_IN_DAYS = 0
write_pandas CLINIPIPE._CLINIPIPE._CDC_NOTES: _OP _SEQ NOTE_ID PATIENT_ID NOTE_TS NOTE_TEXT \
NOTE_TEXT__U (3 rows)
BEGIN TRANSACTION
DELETE FROM "CLINIPIPE"."RAW"."NOTES"
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."CHANGED_KEYS" (table_name, key_column, key_value, lsn) \
SELECT 'notes', 'patient_id', CAST(t."PATIENT_ID" AS VARCHAR), 4660 \
FROM "CLINIPIPE"."RAW"."NOTES" t JOIN (SELECT DISTINCT CAST(c."NOTE_ID" AS NUMBER(19,0)) AS \
"NOTE_ID" FROM "CLINIPIPE"."_CLINIPIPE"."_CDC_NOTES" c) s ON t."NOTE_ID" = s."NOTE_ID"
MERGE INTO "CLINIPIPE"."RAW"."NOTES" t USING (SELECT f."_OP", \
CAST(f."NOTE_ID" AS NUMBER(19,0)) AS "NOTE_ID", CAST(f."PATIENT_ID" AS NUMBER(19,0)) AS \
"PATIENT_ID", TO_TIMESTAMP_TZ(IFF(CONTAINS(f."NOTE_TS", '.'), f."NOTE_TS", \
REPLACE(f."NOTE_TS", '+', '.0+')), 'YYYY-MM-DD HH24:MI:SS.FFTZH') AS "NOTE_TS", \
CASE WHEN NOT COALESCE(f."NOTE_TEXT__U", FALSE) THEN f."NOTE_TEXT" \
WHEN f."NOTE_TEXT__SENT" IS NOT NULL AND NOT (f."NOTE_ID__FROM" IS NOT NULL) THEN e0."NOTE_TEXT" \
ELSE cur."NOTE_TEXT" END AS "NOTE_TEXT", \
CAST('0' AS NUMBER(10,0)) AS "PRIORITY" \
FROM (SELECT c.*, MAX(IFF(COALESCE(c."NOTE_TEXT__U", FALSE), NULL, c."_SEQ")) \
OVER (PARTITION BY c."NOTE_ID") AS "NOTE_TEXT__SENT" FROM "CLINIPIPE"."_CLINIPIPE"."_CDC_NOTES" c \
QUALIFY ROW_NUMBER() OVER (PARTITION BY c."NOTE_ID" ORDER BY c."_SEQ" DESC) = 1) f \
LEFT JOIN "CLINIPIPE"."_CLINIPIPE"."_CDC_NOTES" e0 ON e0."_SEQ" = f."NOTE_TEXT__SENT" \
LEFT JOIN "CLINIPIPE"."RAW"."NOTES" cur ON cur."NOTE_ID" = \
CAST(COALESCE(f."NOTE_ID__FROM", f."NOTE_ID") AS NUMBER(19,0))) s \
ON t."NOTE_ID" = s."NOTE_ID" \
WHEN MATCHED AND s."_OP" = 'D' THEN DELETE \
WHEN MATCHED THEN UPDATE SET "PATIENT_ID" = s."PATIENT_ID", "NOTE_TS" = s."NOTE_TS", \
"NOTE_TEXT" = s."NOTE_TEXT" \
WHEN NOT MATCHED AND s."_OP" <> 'D' THEN INSERT ("NOTE_ID", "PATIENT_ID", "NOTE_TS", \
"NOTE_TEXT", "PRIORITY") VALUES (s."NOTE_ID", s."PATIENT_ID", s."NOTE_TS", s."NOTE_TEXT", \
s."PRIORITY")
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."CHANGED_KEYS" (table_name, key_column, key_value, lsn) \
SELECT DISTINCT 'notes', 'patient_id', CAST(t."PATIENT_ID" AS VARCHAR), 4660 \
FROM "CLINIPIPE"."RAW"."NOTES" t JOIN (SELECT DISTINCT CAST(c."NOTE_ID" AS NUMBER(19,0)) AS \
"NOTE_ID" FROM "CLINIPIPE"."_CLINIPIPE"."_CDC_NOTES" c) s ON t."NOTE_ID" = s."NOTE_ID"
DELETE FROM "CLINIPIPE"."_CLINIPIPE"."_CDC_NOTES"
DELETE FROM "CLINIPIPE"."_CLINIPIPE"."CDC_CHECKPOINTS" WHERE slot = 'clinipipe_slot'
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."CDC_CHECKPOINTS" (slot, lsn, lsn_text, applied_at) \
VALUES ('clinipipe_slot', 4660, '0/1234', '<ts>')
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."CDC_BATCHES" (batch_id, slot, lsn, changes, tables, \
transactions, received_at, applied_at, latencies_ms) SELECT '<id>', 'clinipipe_slot', 4660, 5, \
'notes', 2, '<ts>'::TIMESTAMP_TZ, '<ts>'::TIMESTAMP_TZ, ARRAY_CONSTRUCT(<ms>, <ms>)
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."METERING" (job_id, job, warehouse, warehouse_role, size, \
started_at, ended_at, rows_processed, bytes_processed, cpu_seconds) VALUES ('<id>', \
'cdc:batch', 'CLINIPIPE_CDC_WH', 'incremental', 'XSMALL', '<ts>', '<ts>', 5, NULL, NULL)
COMMIT"""


def test_cdc_apply_transaction_golden_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact statements of a CDC batch on Snowflake, in order: staging (DDL and
    write_pandas) before BEGIN, then only DML until COMMIT. Pinned here because fakesnow
    cannot run the MERGE inside the transaction (see the module docstring)."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://nobody@127.0.0.1:1/none")
    target = SnowflakeTarget(load_spec(write_spec(tmp_path, snowflake_text())))
    target._con = target._local.con = object()  # a session that is never used
    target._local.settings = ()
    ran: list[str] = []
    monkeypatch.setattr(target, "_execute", lambda s: ran.append(s.sql))

    def write_pandas(con: object, frame: pd.DataFrame, table: str, database: str, schema: str,
                     **options: object) -> tuple[bool, int, int, list[object]]:  # fmt: skip
        assert con is target._con and options["quote_identifiers"] is True
        columns = " ".join(frame.columns)
        ran.append(f"write_pandas {database}.{schema}.{table}: {columns} ({len(frame)} rows)")
        return True, 1, len(frame), []

    monkeypatch.setattr("snowflake.connector.pandas_tools.write_pandas", write_pandas)
    changes = pa.table({
        "_op": ["U", "T", "I", "U", "D"], "_seq": [1, 2, 3, 4, 5],
        "note_id": ["9", None, "1", "1", "2"], "patient_id": ["9", None, "7", "7", "3"],
        "note_ts": ["2026-01-01 00:00:00+00", None, "2026-01-02 10:00:00.5+00",
                    "2026-01-02 10:00:00.5+00", None],
        "note_text": ["gone", None, "long", None, None],
        "note_text__u": [False, False, False, True, False],
    })  # fmt: skip
    now = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    batch = CdcBatch(
        "clinipipe_slot", 0x1234, (TableBatch(NOTES, changes, ("patient_id",), (PRIORITY,)),),
        (now, now), now, "CLINIPIPE_CDC_WH", "XSMALL",
    )  # fmt: skip
    target.apply_cdc_batch(batch)
    text = "\n".join(ran)
    text = re.sub(r"'[0-9a-f]{32}'", "'<id>'", text)
    text = re.sub(r"'\d{4}-\d\d-\d\dT[0-9:.]+\+00:00'", "'<ts>'", text)
    text = re.sub(r"ARRAY_CONSTRUCT\([0-9., ]+\)", "ARRAY_CONSTRUCT(<ms>, <ms>)", text)
    assert text == GOLDEN_CDC
    ddl = re.compile(r"^(CREATE|ALTER|DROP|TRUNCATE|write_pandas)")
    inside = ran[ran.index("BEGIN TRANSACTION") + 1 : ran.index("COMMIT")]
    assert not [s for s in inside if ddl.match(s)], "DDL would commit the transaction early"
