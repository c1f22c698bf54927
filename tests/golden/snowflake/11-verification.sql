-- clinipipe: runs_on=target
-- 11 · Verification. Every `clinipipe verify` run (by hand or scheduled by `verify.every`): when,
-- at which source LSN and warehouse checkpoint, what it checked and found. The report holds
-- table names, keys and column names, never values. A warehouse deployed before this template
-- gains the table on its next `clinipipe deploy`.

USE DATABASE "CLINIPIPE";

CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."VERIFY_RUNS" (
    run_id            VARCHAR PRIMARY KEY,
    started_at        TIMESTAMP_TZ NOT NULL,
    ended_at          TIMESTAMP_TZ NOT NULL,
    outcome           VARCHAR NOT NULL,
    sample_pct        FLOAT,
    source_lsn        VARCHAR,
    warehouse_lsn     VARCHAR,
    tables_checked    NUMBER(19,0) NOT NULL,
    rows_checked      NUMBER(19,0) NOT NULL,
    differences       NUMBER(19,0) NOT NULL,
    keys_not_checked  NUMBER(19,0) NOT NULL,
    report            VARCHAR NOT NULL
);
