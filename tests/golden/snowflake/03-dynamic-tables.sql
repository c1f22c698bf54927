-- clinipipe: runs_on=target requires=raw_tables
-- 03 · Dynamic tables: built once on the initialization warehouse ("CLINIPIPE_INIT_WH",
-- X6LARGE), then refreshed on the incremental warehouse ("CLINIPIPE_CDC_WH",
-- XSMALL). INITIALIZATION_WAREHOUSE was released 2025-12-08.
-- Which refreshes use INITIALIZATION_WAREHOUSE: always the initial build and reinitializations;
-- Snowflake's pages disagree on scheduled FULL refreshes (older: initialization warehouse,
-- newer: WAREHOUSE). REFRESH_MODE is fixed at creation: changing it needs CREATE OR REPLACE.
-- Runs after `clinipipe backfill` has created the raw tables the queries read.
-- The queries are the spec's (written in DuckDB SQL), translated to Snowflake SQL by clinipipe
-- (sqlglot; e.g. FILTER (WHERE ...) becomes COUNT_IF / IFF, which Snowflake documents).

USE DATABASE "CLINIPIPE";
USE SCHEMA "CLINIPIPE"."DERIVED";

CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."PATIENT_SUMMARY"
  TARGET_LAG = '1 minutes'
  WAREHOUSE = "CLINIPIPE_CDC_WH"
  INITIALIZATION_WAREHOUSE = "CLINIPIPE_INIT_WH"
  REFRESH_MODE = AUTO
  INITIALIZE = ON_CREATE
  COMMENT = 'Encounters, last admission and abnormal labs per patient'
  AS
SELECT
  p.patient_id,
  COUNT(DISTINCT e.encounter_id) AS encounters,
  MAX(e.admit_ts) AS last_admit,
  COUNT(IFF(NOT l.abnormal_flag IS NULL, l.lab_id, NULL)) AS abnormal_labs
FROM raw.patients AS p
LEFT JOIN raw.encounters AS e
  ON e.patient_id = p.patient_id
LEFT JOIN raw.labs AS l
  ON l.encounter_id = e.encounter_id
GROUP BY
  p.patient_id;

CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."DAILY_CENSUS"
  TARGET_LAG = '5 minutes'
  WAREHOUSE = "CLINIPIPE_CDC_WH"
  INITIALIZATION_WAREHOUSE = "CLINIPIPE_INIT_WH"
  REFRESH_MODE = FULL
  INITIALIZE = ON_CREATE
  AS
SELECT
  CAST(admit_ts AS DATE) AS census_date,
  department,
  COUNT(*) AS admissions
FROM raw.encounters
GROUP BY
  CAST(admit_ts AS DATE),
  department;

CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."RECENT_LABS"
  TARGET_LAG = '1 minutes'
  WAREHOUSE = "CLINIPIPE_CDC_WH"
  INITIALIZATION_WAREHOUSE = "CLINIPIPE_INIT_WH"
  REFRESH_MODE = AUTO
  INITIALIZE = ON_CREATE
  COMMENT = 'The ten most recent lab results of each patient'
  AS
SELECT
  patient_id,
  lab_id,
  collected_ts,
  test_name,
  value_numeric,
  unit,
  abnormal_flag
FROM raw.labs
QUALIFY
  ROW_NUMBER() OVER (
    PARTITION BY patient_id
    ORDER BY collected_ts DESC NULLS LAST, lab_id DESC NULLS LAST
  ) <= 10;
