-- clinipipe: runs_on=none
-- 09 · Sample queries (not executed by `clinipipe deploy`): the dashboards of the spec, refresh
-- history and metering. Dashboard parameters are DuckDB prepared-statement parameters ($name).

-- Dashboard 'patient_overview': One patient's activity for the clinician's dashboard
-- parameter $patient_id (bigint)
select * from serving.patient_dashboard where patient_id = $patient_id;

-- Dashboard 'recent_labs_of_patient': The last ten lab results of a patient
-- parameter $patient_id (bigint)
select collected_ts, test_name, value_numeric, unit, abnormal_flag
from serving.lab_dashboard
where patient_id = $patient_id
order by collected_ts desc, lab_id desc
limit 10;

-- Dashboard 'census_by_department': A day's admissions per department (today's for the ward board)
-- parameter $day (date)
select department, admissions
from serving.census_dashboard
where census_date = $day
order by admissions desc, department;

-- Dynamic-table refreshes: which profile, how long, what they did.
SELECT name, state, refresh_action, data_timestamp, refresh_start_time, refresh_end_time, warehouse
FROM "_clinipipe"."dynamic_table_refresh_history"
ORDER BY refresh_start_time DESC
LIMIT 100;

-- Busy time and credits per warehouse and day.
SELECT * FROM "_clinipipe"."metering_daily" ORDER BY usage_date DESC, warehouse;
