SELECT start_time, warehouse_name, credits_used, credits_used_compute, COALESCE(credits_attributed_compute_queries, 0) AS credits_attributed
FROM SNOWFLAKE.ACCOUNT_USAGE.WAREHOUSE_METERING_HISTORY
WHERE warehouse_name IN ('CLINIPIPE_CDC_WH', 'CLINIPIPE_INIT_WH')
  AND start_time >= '2025-12-01T00:00:00+00:00'::TIMESTAMP_LTZ
ORDER BY start_time, warehouse_name;

SELECT date, is_anomaly, actual_value, forecasted_value, lower_bound, upper_bound
FROM SNOWFLAKE.ACCOUNT_USAGE.ANOMALIES_DAILY
WHERE date >= '2025-12-01'::DATE
ORDER BY date;
