-- clinipipe: runs_on=target
-- 04 · Interactive tables: the serving layer. DuckDB serves them as compact copies sorted by
-- their cluster columns, published atomically (readers in other processes never block the
-- writer and never see a half-written state). Registered here; built by the refresh engine.

CREATE TABLE IF NOT EXISTS "_clinipipe"."interactive_tables" (
    name                VARCHAR PRIMARY KEY,
    source_table        VARCHAR,             -- a dynamic table, or NULL when definition is set
    definition          VARCHAR,
    cluster_by          VARCHAR[] NOT NULL,
    target_lag_seconds  DOUBLE,
    warehouse           VARCHAR NOT NULL
);
INSERT OR REPLACE INTO "_clinipipe"."interactive_tables" VALUES
    ('patient_dashboard', 'patient_summary', NULL,
     ['patient_id'],
     60.0, 'CLINIPIPE_SERVE_WH'),
    ('lab_dashboard', 'recent_labs', NULL,
     ['patient_id', 'collected_ts'],
     60.0, 'CLINIPIPE_SERVE_WH'),
    ('census_dashboard', 'daily_census', NULL,
     ['census_date', 'department'],
     600.0, 'CLINIPIPE_SERVE_WH');
