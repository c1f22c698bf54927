-- clinipipe: runs_on=target
-- 01 · Environment for pipeline 'general_hospital' on Snowflake:
-- database, schemas, the three warehouses of the dual-warehouse design, roles and grants, and
-- clinipipe's own control tables. Idempotent (IF NOT EXISTS; grants are no-ops when held).
--
-- Two roles run this file (privileges per command: docs/DEPLOYMENT_GUIDE.md, "Snowflake
-- privileges"; `clinipipe deploy --check` lists what is missing before changing anything):
--   * the admin role "SYSADMIN" creates the account-level objects (database, schemas,
--     warehouses, roles) and the grants: it needs CREATE DATABASE, CREATE WAREHOUSE, CREATE ROLE
--     and MANAGE GRANTS (future grants) on the account;
--   * the pipeline role "CLINIPIPE_ROLE" creates, and so owns, everything inside the database. It
--     is granted to the admin role, so nothing it owns is orphaned: "SYSADMIN" and the
--     roles above it keep control.

USE ROLE "SYSADMIN";
CREATE DATABASE IF NOT EXISTS "CLINIPIPE";
USE DATABASE "CLINIPIPE";
CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."RAW";
CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."DERIVED";
CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."SERVING";
CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."RESEARCH";
CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE";

-- Initialization warehouse: the big one, for backfill and dynamic-table initialization.
-- Incremental warehouse: the small one, for CDC apply and incremental refreshes.
-- (The interactive warehouse is created with its tables in 04-interactive-tables.)
-- initialization: X6LARGE, 512 credits/hour while running
CREATE WAREHOUSE IF NOT EXISTS "CLINIPIPE_INIT_WH" WITH WAREHOUSE_SIZE = 'X6LARGE' AUTO_SUSPEND = 60
  AUTO_RESUME = TRUE INITIALLY_SUSPENDED = TRUE;
-- incremental: XSMALL, 1 credits/hour while running
CREATE WAREHOUSE IF NOT EXISTS "CLINIPIPE_CDC_WH" WITH WAREHOUSE_SIZE = 'XSMALL' AUTO_SUSPEND = 60
  AUTO_RESUME = TRUE INITIALLY_SUSPENDED = TRUE;

-- Roles: the pipeline writes everything; analysts read the serving layer; researchers read
-- only the de-identified schema. All three are granted to the admin role.
CREATE ROLE IF NOT EXISTS "CLINIPIPE_ROLE";
CREATE ROLE IF NOT EXISTS "CLINIPIPE_ROLE_ANALYST";
CREATE ROLE IF NOT EXISTS "CLINIPIPE_ROLE_RESEARCHER";
GRANT ROLE "CLINIPIPE_ROLE" TO ROLE "SYSADMIN";
GRANT ROLE "CLINIPIPE_ROLE_ANALYST" TO ROLE "SYSADMIN";
GRANT ROLE "CLINIPIPE_ROLE_RESEARCHER" TO ROLE "SYSADMIN";
GRANT USAGE ON DATABASE "CLINIPIPE" TO ROLE "CLINIPIPE_ROLE";
GRANT USAGE ON DATABASE "CLINIPIPE" TO ROLE "CLINIPIPE_ROLE_ANALYST";
GRANT USAGE ON DATABASE "CLINIPIPE" TO ROLE "CLINIPIPE_ROLE_RESEARCHER";
GRANT ALL ON SCHEMA "CLINIPIPE"."RAW" TO ROLE "CLINIPIPE_ROLE";
GRANT ALL ON SCHEMA "CLINIPIPE"."DERIVED" TO ROLE "CLINIPIPE_ROLE";
GRANT ALL ON SCHEMA "CLINIPIPE"."SERVING" TO ROLE "CLINIPIPE_ROLE";
GRANT ALL ON SCHEMA "CLINIPIPE"."RESEARCH" TO ROLE "CLINIPIPE_ROLE";
GRANT ALL ON SCHEMA "CLINIPIPE"."_CLINIPIPE" TO ROLE "CLINIPIPE_ROLE";
-- MODIFY: `clinipipe deploy` applies a size or auto-suspend change of the spec (ALTER WAREHOUSE).
GRANT USAGE, OPERATE, MODIFY, MONITOR ON WAREHOUSE "CLINIPIPE_INIT_WH" TO ROLE "CLINIPIPE_ROLE";
GRANT USAGE, OPERATE, MODIFY, MONITOR ON WAREHOUSE "CLINIPIPE_CDC_WH" TO ROLE "CLINIPIPE_ROLE";
-- The pipeline role creates (and owns) the interactive warehouse with its tables in 04.
GRANT CREATE WAREHOUSE ON ACCOUNT TO ROLE "CLINIPIPE_ROLE";
-- Readers. Future grants on TABLES do not cover dynamic tables: those need their own. Interactive
-- tables are tables (SHOW TABLES lists them, is_interactive): TABLES covers them. The ALL grants
-- cover what existed before these future grants did.
GRANT USAGE ON SCHEMA "CLINIPIPE"."SERVING" TO ROLE "CLINIPIPE_ROLE_ANALYST";
GRANT SELECT ON ALL TABLES IN SCHEMA "CLINIPIPE"."SERVING" TO ROLE "CLINIPIPE_ROLE_ANALYST";
GRANT SELECT ON FUTURE TABLES IN SCHEMA "CLINIPIPE"."SERVING" TO ROLE "CLINIPIPE_ROLE_ANALYST";
GRANT SELECT ON ALL DYNAMIC TABLES IN SCHEMA "CLINIPIPE"."SERVING" TO ROLE "CLINIPIPE_ROLE_ANALYST";
GRANT SELECT ON FUTURE DYNAMIC TABLES IN SCHEMA "CLINIPIPE"."SERVING" TO ROLE "CLINIPIPE_ROLE_ANALYST";
GRANT USAGE ON SCHEMA "CLINIPIPE"."RESEARCH" TO ROLE "CLINIPIPE_ROLE_RESEARCHER";
GRANT SELECT ON ALL TABLES IN SCHEMA "CLINIPIPE"."RESEARCH" TO ROLE "CLINIPIPE_ROLE_RESEARCHER";
GRANT SELECT ON FUTURE TABLES IN SCHEMA "CLINIPIPE"."RESEARCH" TO ROLE "CLINIPIPE_ROLE_RESEARCHER";
GRANT SELECT ON ALL DYNAMIC TABLES IN SCHEMA "CLINIPIPE"."RESEARCH" TO ROLE "CLINIPIPE_ROLE_RESEARCHER";
GRANT SELECT ON FUTURE DYNAMIC TABLES IN SCHEMA "CLINIPIPE"."RESEARCH" TO ROLE "CLINIPIPE_ROLE_RESEARCHER";

-- Everything below is created by, and owned by, the pipeline role, on the incremental warehouse
-- (the MERGE at the end needs a running warehouse).
USE ROLE "CLINIPIPE_ROLE";
USE WAREHOUSE "CLINIPIPE_CDC_WH";
USE DATABASE "CLINIPIPE";

-- clinipipe's control tables: what was deployed, and the warehouses it meters.
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."DEPLOYMENTS" (
    deployment_id     VARCHAR NOT NULL PRIMARY KEY,
    deployed_at       TIMESTAMP_TZ NOT NULL,
    spec_digest       VARCHAR NOT NULL,
    clinipipe_version VARCHAR NOT NULL,
    target_type       VARCHAR NOT NULL,
    statements_run    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."DEPLOYED_TEMPLATES" (
    deployment_id     VARCHAR NOT NULL,
    template          VARCHAR NOT NULL,
    template_digest   VARCHAR NOT NULL,
    statements        INTEGER NOT NULL,
    deployed_at       TIMESTAMP_TZ NOT NULL,
    PRIMARY KEY (deployment_id, template)
);
-- Backfill progress: the run that owns the replication slot, its planned page ranges, and each
-- range committed together with its rows (a range listed here is fully loaded).
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."BACKFILL_RUNS" (
    run_id            VARCHAR NOT NULL PRIMARY KEY,
    slot              VARCHAR NOT NULL,
    consistent_point  VARCHAR,          -- NULL while the slot is being created
    tables            VARCHAR NOT NULL,
    started_at        TIMESTAMP_TZ NOT NULL,
    completed_at      TIMESTAMP_TZ
);
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."BACKFILL_PLAN" (
    run_id            VARCHAR NOT NULL,
    table_name        VARCHAR NOT NULL,
    range_no          INTEGER NOT NULL,
    start_page        BIGINT NOT NULL,
    end_page          BIGINT
);
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."BACKFILL_RANGES" (
    run_id            VARCHAR NOT NULL,
    table_name        VARCHAR NOT NULL,
    range_no          INTEGER NOT NULL,
    rows_loaded       BIGINT NOT NULL,
    bytes_read        BIGINT NOT NULL,
    started_at        TIMESTAMP_TZ NOT NULL,
    completed_at      TIMESTAMP_TZ NOT NULL
);

-- Change data capture: the last applied position per slot (committed with the data it covers),
-- one row per applied batch (with commit-to-apply latencies), and the keys each batch changed
-- (for incremental dynamic-table refreshes).
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."CDC_CHECKPOINTS" (
    slot              VARCHAR NOT NULL PRIMARY KEY,
    lsn               BIGINT NOT NULL,
    lsn_text          VARCHAR NOT NULL,
    applied_at        TIMESTAMP_TZ NOT NULL
);
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."CDC_BATCHES" (
    batch_id          VARCHAR NOT NULL PRIMARY KEY,
    slot              VARCHAR NOT NULL,
    lsn               BIGINT NOT NULL,
    changes           BIGINT NOT NULL,
    tables            VARCHAR NOT NULL,
    transactions      INTEGER NOT NULL,
    received_at       TIMESTAMP_TZ NOT NULL,
    applied_at        TIMESTAMP_TZ NOT NULL,
    latencies_ms      ARRAY
);
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."CDC_PAUSED_TABLES" (
    slot              VARCHAR NOT NULL,
    table_name        VARCHAR NOT NULL,
    reason            VARCHAR NOT NULL,
    lsn               BIGINT NOT NULL,
    paused_at         TIMESTAMP_TZ NOT NULL
);
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."CHANGED_KEYS" (
    table_name        VARCHAR NOT NULL,
    key_column        VARCHAR NOT NULL,
    key_value         VARCHAR,
    lsn               BIGINT NOT NULL
);

-- Source columns by PostgreSQL column number (stable across renames), the raw column each one
-- fills, and every schema change CDC applied, with the stream position it took effect at.
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."SOURCE_COLUMNS" (
    table_name        VARCHAR NOT NULL,
    attnum            INTEGER NOT NULL,
    target_column     VARCHAR NOT NULL,
    pg_type           VARCHAR NOT NULL,
    dropped           BOOLEAN NOT NULL,
    PRIMARY KEY (table_name, attnum)
);
-- Columns added with a volatile default, whose existing rows' values are copied from the source.
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."COLUMN_FILLS" (
    table_name        VARCHAR NOT NULL,
    attnum            INTEGER NOT NULL,
    lsn               BIGINT NOT NULL,
    PRIMARY KEY (table_name, attnum)
);
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."SCHEMA_HISTORY" (
    table_name        VARCHAR NOT NULL,
    change            VARCHAR NOT NULL,
    column_name       VARCHAR NOT NULL,
    detail            VARCHAR,
    lsn               BIGINT NOT NULL,
    applied_at        TIMESTAMP_TZ NOT NULL
);

-- What each deployment left on the account, object by object (kind, name, attribute, value):
-- the "old" side of the next deploy's plan where Snowflake cannot report it (a dynamic
-- table's query, a backup policy's retention, the tables of the interactive warehouse...).
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."DEPLOYED_OBJECTS" (
    deployment_id     VARCHAR NOT NULL,
    object_kind       VARCHAR NOT NULL,
    object_name       VARCHAR NOT NULL,
    attribute         VARCHAR NOT NULL,
    value             VARCHAR,
    recorded_at       TIMESTAMP_TZ NOT NULL
);

CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."WAREHOUSES" (
    role              VARCHAR NOT NULL PRIMARY KEY,
    name              VARCHAR NOT NULL,
    size              VARCHAR NOT NULL,
    credits_per_hour  INTEGER NOT NULL,
    auto_suspend_s    INTEGER NOT NULL
);
MERGE INTO "CLINIPIPE"."_CLINIPIPE"."WAREHOUSES" t USING (
    SELECT 'initialization' AS role, 'CLINIPIPE_INIT_WH' AS name, 'X6LARGE' AS size,
           512 AS credits_per_hour, 60 AS auto_suspend_s
    UNION ALL
    SELECT 'incremental' AS role, 'CLINIPIPE_CDC_WH' AS name, 'XSMALL' AS size,
           1 AS credits_per_hour, 60 AS auto_suspend_s
    UNION ALL
    SELECT 'interactive' AS role, 'CLINIPIPE_SERVE_WH' AS name, 'XSMALL' AS size,
           1 AS credits_per_hour, 86400 AS auto_suspend_s
) s ON t.role = s.role
WHEN MATCHED THEN UPDATE SET name = s.name, size = s.size, credits_per_hour = s.credits_per_hour,
    auto_suspend_s = s.auto_suspend_s
WHEN NOT MATCHED THEN INSERT (role, name, size, credits_per_hour, auto_suspend_s)
    VALUES (s.role, s.name, s.size, s.credits_per_hour, s.auto_suspend_s);
