-- clinipipe: runs_on=target
-- 08 · Cost monitoring. clinipipe meters every job it runs (which warehouse, start, end, rows,
-- bytes, clinipipe's CPU seconds) into "_CLINIPIPE"."METERING"; Snowflake's own views say what was billed.
-- Billing: credits/hour by size (XSMALL 1 ... X6LARGE 512), per second, 60 s minimum at each
-- start or resume, idle time billed until AUTO_SUSPEND. Price per credit (enterprise): 3.0 USD.
-- ACCOUNT_USAGE views lag up to 3 h (metering) and 8 h (anomalies).

USE DATABASE "CLINIPIPE";

CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."METERING" (
    job_id        VARCHAR NOT NULL PRIMARY KEY,
    job           VARCHAR NOT NULL,
    warehouse     VARCHAR NOT NULL,
    warehouse_role VARCHAR NOT NULL,
    size          VARCHAR NOT NULL,
    started_at    TIMESTAMP_TZ NOT NULL,
    ended_at      TIMESTAMP_TZ NOT NULL,
    rows_processed NUMBER,
    bytes_processed NUMBER
);
-- CPU seconds of the clinipipe thread that did the job (its client CPU), not the warehouse's
-- (Snowflake bills warehouse time: WAREHOUSE_METERING_HISTORY). Added here, nullable and
-- without a DEFAULT, so that earlier deployments gain it on their next deploy (old rows NULL).
ALTER TABLE "CLINIPIPE"."_CLINIPIPE"."METERING" ADD COLUMN IF NOT EXISTS cpu_seconds FLOAT COMMENT 'CPU seconds of the clinipipe thread that ran the job (client CPU, not the warehouse''s); NULL: not measured';

-- Daily credits of clinipipe's warehouses, with idle credits
-- (CREDITS_USED_COMPUTE - CREDITS_ATTRIBUTED_COMPUTE_QUERIES).
CREATE OR REPLACE VIEW "CLINIPIPE"."_CLINIPIPE"."WAREHOUSE_DAILY_CREDITS" AS
SELECT
    TO_DATE(start_time) AS usage_date,
    warehouse_name,
    SUM(credits_used) AS credits_used,
    SUM(credits_used_compute) AS credits_compute,
    SUM(credits_used_compute - COALESCE(credits_attributed_compute_queries, 0)) AS credits_idle,
    SUM(credits_used) * 3.0 AS usd
FROM SNOWFLAKE.ACCOUNT_USAGE.WAREHOUSE_METERING_HISTORY
WHERE warehouse_name IN ('CLINIPIPE_INIT_WH', 'CLINIPIPE_CDC_WH', 'CLINIPIPE_SERVE_WH')
GROUP BY 1, 2;

-- Snowflake's own daily anomaly detector (needs 30 days of history); clinipipe's robust
-- detector (`clinipipe cost anomalies`) works from day one on its own metering.
CREATE OR REPLACE VIEW "CLINIPIPE"."_CLINIPIPE"."SNOWFLAKE_DAILY_ANOMALIES" AS
SELECT date, is_anomaly, actual_value, upper_bound, lower_bound, forecasted_value
FROM SNOWFLAKE.ACCOUNT_USAGE.ANOMALIES_DAILY;
