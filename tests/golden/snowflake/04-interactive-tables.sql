-- clinipipe: runs_on=target requires=raw_tables
-- 04 · Interactive tables (GA 2025-12-11): the serving layer for dashboards. Each is built with
-- a standard warehouse, clustered by the columns dashboards filter on, then attached to the
-- interactive warehouse "CLINIPIPE_SERVE_WH" that serves them.
-- Interactive warehouses: AUTO_SUSPEND default and minimum is 86400 s (a change to 3600 s was
-- announced for late 2026); sizes documented up to XXXLARGE.

USE DATABASE "CLINIPIPE";
USE SCHEMA "CLINIPIPE"."SERVING";

CREATE INTERACTIVE TABLE IF NOT EXISTS "CLINIPIPE"."SERVING"."PATIENT_DASHBOARD"
  CLUSTER BY ("PATIENT_ID")
  TARGET_LAG = '1 minutes'
  WAREHOUSE = "CLINIPIPE_CDC_WH"
  AS
SELECT * FROM "CLINIPIPE"."DERIVED"."PATIENT_SUMMARY";

CREATE INTERACTIVE WAREHOUSE IF NOT EXISTS "CLINIPIPE_SERVE_WH"
  TABLES ("CLINIPIPE"."SERVING"."PATIENT_DASHBOARD")
  WITH WAREHOUSE_SIZE = XSMALL
  AUTO_SUSPEND = 86400
  AUTO_RESUME = TRUE;
GRANT USAGE ON WAREHOUSE "CLINIPIPE_SERVE_WH" TO ROLE "CLINIPIPE_ROLE_ANALYST";
