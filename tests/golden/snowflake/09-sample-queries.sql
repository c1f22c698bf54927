-- clinipipe: runs_on=none
-- 09 · Sample queries (not executed by `clinipipe deploy`): the dashboards of the spec, the
-- dual-warehouse cost check, and refresh history. Parameters are Snowflake session variables:
-- SET patient_id = 42;

USE DATABASE "CLINIPIPE";

-- Dashboard 'patient_overview': One patient's activity for the clinician's dashboard
-- parameter patient_id (bigint): SET patient_id = ...;
select * from serving.patient_dashboard where patient_id = $patient_id;

-- Dashboard 'census_by_department': Admissions per department over the last 30 days
select department, sum(admissions) as admissions
from derived.daily_census
where census_date >= current_date - 30
group by department
order by admissions desc;

-- Dynamic-table refreshes: which warehouse, how long, what they did.
SELECT name, state, refresh_action, data_timestamp, refresh_start_time, refresh_end_time
FROM TABLE(INFORMATION_SCHEMA.DYNAMIC_TABLE_REFRESH_HISTORY(RESULT_LIMIT => 100))
ORDER BY refresh_start_time DESC;

-- What each clinipipe warehouse cost per day, and how much of it was idle.
SELECT * FROM "CLINIPIPE"."_CLINIPIPE"."WAREHOUSE_DAILY_CREDITS"
ORDER BY usage_date DESC, warehouse_name;
