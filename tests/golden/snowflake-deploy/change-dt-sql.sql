-- plan
dynamic table "CLINIPIPE"."DERIVED"."DAILY_CENSUS" | query | select cast(admit_ts as date) as census_date, department, count(*) as admissions from raw.encounters group by cast(admit_ts as date), department -> select cast(admit_ts as date) as census_date, department, count(distinct patient_id) as admissions from raw.encounters group by cast(admit_ts as date), department | rebuilds on: CLINIPIPE_INIT_WH (X6LARGE) | recorded | applied
-- deploy sends
USE ROLE "CLINIPIPE_ROLE"
USE WAREHOUSE "CLINIPIPE_CDC_WH"
USE DATABASE "CLINIPIPE"
USE DATABASE "CLINIPIPE"
USE SCHEMA "CLINIPIPE"."DERIVED"
CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."PATIENT_SUMMARY"
CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."DAILY_CENSUS"
CREATE DYNAMIC TABLE IF NOT EXISTS "CLINIPIPE"."DERIVED"."RECENT_LABS"
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."DEPLOYED_TEMPLATES" (deployment_id, template, template_digest, statements, deployed_at)
CREATE OR REPLACE DYNAMIC TABLE "CLINIPIPE"."DERIVED"."DAILY_CENSUS"
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."DEPLOYED_OBJECTS" (deployment_id, object_kind, object_name, attribute, value, recorded_at)
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."DEPLOYMENTS" (deployment_id, deployed_at, spec_digest, clinipipe_version, target_type, statements_run)
BEGIN TRANSACTION
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."AUDIT_LOG" (seq, logged_at, actor, action, object, detail, prev_hash, entry_hash)
COMMIT
-- plan statements
CREATE OR REPLACE DYNAMIC TABLE "CLINIPIPE"."DERIVED"."DAILY_CENSUS"
  TARGET_LAG = '5 minutes'
  WAREHOUSE = "CLINIPIPE_CDC_WH"
  INITIALIZATION_WAREHOUSE = "CLINIPIPE_INIT_WH"
  REFRESH_MODE = FULL
  INITIALIZE = ON_CREATE
  AS
SELECT
  CAST(admit_ts AS DATE) AS census_date,
  department,
  COUNT(DISTINCT patient_id) AS admissions
FROM raw.encounters
GROUP BY
  CAST(admit_ts AS DATE),
  department;
