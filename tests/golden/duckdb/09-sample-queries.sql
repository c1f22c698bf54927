-- clinipipe: runs_on=none
-- 09 · Sample queries (not executed by `clinipipe deploy`): the dashboards of the spec, refresh
-- history and metering. Dashboard parameters are DuckDB prepared-statement parameters ($name).

-- Dashboard 'patient_overview': One patient's activity for the clinician's dashboard
-- parameter $patient_id (bigint)
select * from serving.patient_dashboard where patient_id = $patient_id;

-- Dashboard 'census_by_department': Admissions per department over the last 30 days
select department, sum(admissions) as admissions
from derived.daily_census
where census_date >= current_date - 30
group by department
order by admissions desc;

-- Dynamic-table refreshes: which profile, how long, what they did.
SELECT name, state, refresh_action, data_timestamp, refresh_start_time, refresh_end_time, warehouse
FROM "_clinipipe"."dynamic_table_refresh_history"
ORDER BY refresh_start_time DESC
LIMIT 100;

-- Busy time and credits per warehouse and day.
SELECT * FROM "_clinipipe"."metering_daily" ORDER BY usage_date DESC, warehouse;
