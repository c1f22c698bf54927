-- clinipipe: runs_on=target
-- 11 · Verification. Every `clinipipe verify` run (by hand or scheduled by `verify.every`): when,
-- at which source LSN and warehouse checkpoint, what it checked and found. The report holds
-- table names, keys and column names, never values. A warehouse deployed before this template
-- gains the table on its next `clinipipe deploy`.

CREATE TABLE IF NOT EXISTS "_clinipipe"."verify_runs" (
    run_id            VARCHAR PRIMARY KEY,
    started_at        TIMESTAMPTZ NOT NULL,
    ended_at          TIMESTAMPTZ NOT NULL,
    outcome           VARCHAR NOT NULL,
    sample_pct        DOUBLE,
    source_lsn        VARCHAR,
    warehouse_lsn     VARCHAR,
    tables_checked    BIGINT NOT NULL,
    rows_checked      BIGINT NOT NULL,
    differences       BIGINT NOT NULL,
    keys_not_checked  BIGINT NOT NULL,
    report            JSON NOT NULL
);
