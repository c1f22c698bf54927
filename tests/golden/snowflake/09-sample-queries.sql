-- clinipipe: runs_on=none
-- 09 · Sample queries (not executed by `clinipipe deploy`): the dashboards of the spec, the
-- dual-warehouse cost check, and refresh history. The dashboards are the spec's queries (DuckDB
-- SQL) translated to Snowflake SQL; their parameters are Snowflake session variables:
-- SET patient_id = 42;

USE DATABASE "CLINIPIPE";

-- Dashboard 'patient_overview': One patient's activity for the clinician's dashboard
-- parameter patient_id (bigint): SET patient_id = ...;
SELECT
  *
FROM serving.patient_dashboard
WHERE
  patient_id = $patient_id;

-- Dashboard 'recent_labs_of_patient': The last ten lab results of a patient
-- parameter patient_id (bigint): SET patient_id = ...;
SELECT
  collected_ts,
  test_name,
  value_numeric,
  unit,
  abnormal_flag
FROM serving.lab_dashboard
WHERE
  patient_id = $patient_id
ORDER BY
  collected_ts DESC NULLS LAST,
  lab_id DESC NULLS LAST
LIMIT 10;

-- Dashboard 'census_by_department': A day's admissions per department (today's for the ward board)
-- parameter day (date): SET day = ...;
SELECT
  department,
  admissions
FROM serving.census_dashboard
WHERE
  census_date = $day
ORDER BY
  admissions DESC NULLS LAST,
  department;

-- Dynamic-table refreshes of the last 7 days (without DATA_TIMESTAMP_START the function returns
-- one day only; it keeps 7): which warehouse, how long, what they did.
SELECT name, state, refresh_action, data_timestamp, refresh_start_time, refresh_end_time
FROM TABLE(INFORMATION_SCHEMA.DYNAMIC_TABLE_REFRESH_HISTORY(
    DATA_TIMESTAMP_START => DATEADD('day', -7, CURRENT_TIMESTAMP()), RESULT_LIMIT => 100))
ORDER BY refresh_start_time DESC;

-- What each clinipipe warehouse cost per day, and how much of it was idle.
SELECT * FROM "CLINIPIPE"."_CLINIPIPE"."WAREHOUSE_DAILY_CREDITS"
ORDER BY usage_date DESC, warehouse_name;
