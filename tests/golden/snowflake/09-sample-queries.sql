-- clinipipe: runs_on=none
-- 09 · Sample queries (not executed by `clinipipe deploy`): the dashboards of the spec, the
-- dual-warehouse cost check, and refresh history. Parameters are Snowflake session variables:
-- SET patient_id = 42;

USE DATABASE "CLINIPIPE";

-- Dashboard 'patient_overview': One patient's activity for the clinician's dashboard
-- parameter patient_id (bigint): SET patient_id = ...;
select * from serving.patient_dashboard where patient_id = $patient_id;

-- Dashboard 'recent_labs_of_patient': The last ten lab results of a patient
-- parameter patient_id (bigint): SET patient_id = ...;
select collected_ts, test_name, value_numeric, unit, abnormal_flag
from serving.lab_dashboard
where patient_id = $patient_id
order by collected_ts desc, lab_id desc
limit 10;

-- Dashboard 'census_by_department': A day's admissions per department (today's for the ward board)
-- parameter day (date): SET day = ...;
select department, admissions
from serving.census_dashboard
where census_date = $day
order by admissions desc, department;

-- Dynamic-table refreshes: which warehouse, how long, what they did.
SELECT name, state, refresh_action, data_timestamp, refresh_start_time, refresh_end_time
FROM TABLE(INFORMATION_SCHEMA.DYNAMIC_TABLE_REFRESH_HISTORY(RESULT_LIMIT => 100))
ORDER BY refresh_start_time DESC;

-- What each clinipipe warehouse cost per day, and how much of it was idle.
SELECT * FROM "CLINIPIPE"."_CLINIPIPE"."WAREHOUSE_DAILY_CREDITS"
ORDER BY usage_date DESC, warehouse_name;
