-- plan
dynamic table "CLINIPIPE"."DERIVED"."DAILY_CENSUS" | target_lag | '5 minutes' -> '15 minutes' | rebuilds on: - | recorded | applied
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
ALTER DYNAMIC TABLE "CLINIPIPE"."DERIVED"."DAILY_CENSUS" SET TARGET_LAG = '15 minutes'
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."DEPLOYED_OBJECTS" (deployment_id, object_kind, object_name, attribute, value, recorded_at)
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."DEPLOYMENTS" (deployment_id, deployed_at, spec_digest, clinipipe_version, target_type, statements_run)
BEGIN TRANSACTION
INSERT INTO "CLINIPIPE"."_CLINIPIPE"."AUDIT_LOG" (seq, logged_at, actor, action, object, detail, prev_hash, entry_hash)
COMMIT
-- plan statements
ALTER DYNAMIC TABLE "CLINIPIPE"."DERIVED"."DAILY_CENSUS" SET TARGET_LAG = '15 minutes';
