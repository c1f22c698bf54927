-- clinipipe: runs_on=target
-- 01 · Environment for pipeline 'general_hospital' on DuckDB: schemas and clinipipe's control
-- tables. DuckDB has no warehouses or roles: a warehouse is a compute profile (threads and
-- memory_limit scaled by the size below, capped by the machine) chosen per job, and access is
-- whoever can read the file. Idempotent (IF NOT EXISTS / INSERT OR REPLACE).
CREATE SCHEMA IF NOT EXISTS "raw";
CREATE SCHEMA IF NOT EXISTS "derived";
CREATE SCHEMA IF NOT EXISTS "serving";
CREATE SCHEMA IF NOT EXISTS "research";
CREATE SCHEMA IF NOT EXISTS "_clinipipe";

CREATE TABLE IF NOT EXISTS "_clinipipe"."deployments" (
    deployment_id     VARCHAR PRIMARY KEY,
    deployed_at       TIMESTAMPTZ NOT NULL,
    spec_digest       VARCHAR NOT NULL,
    clinipipe_version VARCHAR NOT NULL,
    target_type       VARCHAR NOT NULL,
    statements_run    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."deployed_templates" (
    deployment_id     VARCHAR NOT NULL,
    template          VARCHAR NOT NULL,
    template_digest   VARCHAR NOT NULL,
    statements        INTEGER NOT NULL,
    deployed_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (deployment_id, template)
);

-- Backfill progress: the run that owns the replication slot, its planned page ranges, and each
-- range committed together with its rows (a range listed here is fully loaded).
CREATE TABLE IF NOT EXISTS "_clinipipe"."backfill_runs" (
    run_id            VARCHAR NOT NULL PRIMARY KEY,
    slot              VARCHAR NOT NULL,
    consistent_point  VARCHAR,          -- NULL while the slot is being created
    tables            VARCHAR NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    completed_at      TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."backfill_plan" (
    run_id            VARCHAR NOT NULL,
    table_name        VARCHAR NOT NULL,
    range_no          INTEGER NOT NULL,
    start_page        BIGINT NOT NULL,
    end_page          BIGINT
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."backfill_ranges" (
    run_id            VARCHAR NOT NULL,
    table_name        VARCHAR NOT NULL,
    range_no          INTEGER NOT NULL,
    rows_loaded       BIGINT NOT NULL,
    bytes_read        BIGINT NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    completed_at      TIMESTAMPTZ NOT NULL
);

-- Change data capture: the last applied position per slot (committed with the data it covers),
-- one row per applied batch (with commit-to-apply latencies), and the keys each batch changed
-- (for incremental dynamic-table refreshes).
CREATE TABLE IF NOT EXISTS "_clinipipe"."cdc_checkpoints" (
    slot              VARCHAR NOT NULL PRIMARY KEY,
    lsn               BIGINT NOT NULL,
    lsn_text          VARCHAR NOT NULL,
    applied_at        TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."cdc_batches" (
    batch_id          VARCHAR NOT NULL PRIMARY KEY,
    slot              VARCHAR NOT NULL,
    lsn               BIGINT NOT NULL,
    changes           BIGINT NOT NULL,
    tables            VARCHAR NOT NULL,
    transactions      INTEGER NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL,
    applied_at        TIMESTAMPTZ NOT NULL,
    latencies_ms      DOUBLE[]
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."cdc_paused_tables" (
    slot              VARCHAR NOT NULL,
    table_name        VARCHAR NOT NULL,
    reason            VARCHAR NOT NULL,
    lsn               BIGINT NOT NULL,
    paused_at         TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."changed_keys" (
    table_name        VARCHAR NOT NULL,
    key_column        VARCHAR NOT NULL,
    key_value         VARCHAR,
    lsn               BIGINT NOT NULL
);

-- Source columns by PostgreSQL column number (stable across renames), the raw column each one
-- fills, and every schema change CDC applied, with the stream position it took effect at.
CREATE TABLE IF NOT EXISTS "_clinipipe"."source_columns" (
    table_name        VARCHAR NOT NULL,
    attnum            INTEGER NOT NULL,
    target_column     VARCHAR NOT NULL,
    pg_type           VARCHAR NOT NULL,
    dropped           BOOLEAN NOT NULL,
    PRIMARY KEY (table_name, attnum)
);
-- Columns added with a volatile default (the source rewrote the table, sending no changes):
-- the values of existing rows are copied from the source once CDC has caught up.
CREATE TABLE IF NOT EXISTS "_clinipipe"."column_fills" (
    table_name        VARCHAR NOT NULL,
    attnum            INTEGER NOT NULL,
    lsn               BIGINT NOT NULL,
    PRIMARY KEY (table_name, attnum)
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."schema_history" (
    table_name        VARCHAR NOT NULL,
    change            VARCHAR NOT NULL,
    column_name       VARCHAR NOT NULL,
    detail            VARCHAR,
    lsn               BIGINT NOT NULL,
    applied_at        TIMESTAMPTZ NOT NULL
);

-- The three warehouses of the dual-warehouse design, as compute profiles; credits/hour are
-- what the same size costs on Snowflake (for `clinipipe cost report`).
CREATE TABLE IF NOT EXISTS "_clinipipe"."warehouses" (
    role              VARCHAR PRIMARY KEY,
    name              VARCHAR NOT NULL,
    size              VARCHAR NOT NULL,
    credits_per_hour  INTEGER NOT NULL,
    auto_suspend_s    INTEGER NOT NULL
);
INSERT OR REPLACE INTO "_clinipipe"."warehouses" (role, name, size, credits_per_hour, auto_suspend_s) VALUES
    ('initialization', 'CLINIPIPE_INIT_WH', 'X6LARGE', 512, 60),
    ('incremental', 'CLINIPIPE_CDC_WH', 'XSMALL', 1, 60),
    ('interactive', 'CLINIPIPE_SERVE_WH', 'XSMALL', 1, 86400);
