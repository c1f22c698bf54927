-- clinipipe: runs_on=target requires=raw_tables
-- 03 · Dynamic tables: built once on the initialization warehouse ("CLINIPIPE_INIT_WH",
-- X6LARGE), then refreshed on the incremental warehouse ("CLINIPIPE_CDC_WH",
-- XSMALL). INITIALIZATION_WAREHOUSE was released 2025-12-08.
-- Which refreshes use INITIALIZATION_WAREHOUSE: always the initial build and reinitializations;
-- Snowflake's pages disagree on scheduled FULL refreshes (older: initialization warehouse,
-- newer: WAREHOUSE). REFRESH_MODE is fixed at creation: changing it needs CREATE OR REPLACE.
-- Runs after `clinipipe backfill` has created the raw tables the queries read.

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
select p.patient_id,
       count(distinct e.encounter_id) as encounters,
       max(e.admit_ts) as last_admit,
       count(l.lab_id) filter (where l.abnormal_flag is not null) as abnormal_labs
from raw.patients p
left join raw.encounters e on e.patient_id = p.patient_id
left join raw.labs l on l.encounter_id = e.encounter_id
group by p.patient_id;

CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."DAILY_CENSUS"
  TARGET_LAG = '5 minutes'
  WAREHOUSE = "CLINIPIPE_CDC_WH"
  INITIALIZATION_WAREHOUSE = "CLINIPIPE_INIT_WH"
  REFRESH_MODE = FULL
  INITIALIZE = ON_CREATE
  AS
select cast(admit_ts as date) as census_date, department, count(*) as admissions
from raw.encounters
group by cast(admit_ts as date), department;

CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."RECENT_LABS"
  TARGET_LAG = '1 minutes'
  WAREHOUSE = "CLINIPIPE_CDC_WH"
  INITIALIZATION_WAREHOUSE = "CLINIPIPE_INIT_WH"
  REFRESH_MODE = AUTO
  INITIALIZE = ON_CREATE
  COMMENT = 'The ten most recent lab results of each patient'
  AS
select patient_id, lab_id, collected_ts, test_name, value_numeric, unit, abnormal_flag
from raw.labs
qualify row_number() over (
  partition by patient_id order by collected_ts desc, lab_id desc) <= 10;
