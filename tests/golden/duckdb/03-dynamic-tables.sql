-- clinipipe: runs_on=target
-- 03 · Dynamic tables. DuckDB has no dynamic tables: clinipipe's refresh engine plays that part.
-- Each definition is registered here; the first build (and every full refresh) runs on the
-- initialization profile ('CLINIPIPE_INIT_WH', 'X6LARGE'), incremental refreshes of changed
-- keys on the incremental profile ('CLINIPIPE_CDC_WH', 'XSMALL'). The tables themselves live
-- in schema "derived" and are created by their first refresh, after backfill.

CREATE TABLE IF NOT EXISTS "_clinipipe"."dynamic_tables" (
    name                      VARCHAR PRIMARY KEY,
    definition                VARCHAR NOT NULL,
    target_lag_seconds        DOUBLE,             -- NULL means DOWNSTREAM
    refresh_mode              VARCHAR NOT NULL,   -- AUTO | FULL | INCREMENTAL
    refresh_key               VARCHAR,
    warehouse                 VARCHAR NOT NULL,
    initialization_warehouse  VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS "_clinipipe"."dynamic_table_refresh_history" (
    name                VARCHAR NOT NULL,
    state               VARCHAR NOT NULL,    -- SUCCEEDED | FAILED | SKIPPED
    state_message       VARCHAR,
    refresh_action      VARCHAR NOT NULL,    -- INITIALIZATION | FULL | INCREMENTAL | NO_DATA
    data_timestamp      TIMESTAMPTZ,
    refresh_start_time  TIMESTAMPTZ NOT NULL,
    refresh_end_time    TIMESTAMPTZ,
    warehouse           VARCHAR NOT NULL,
    rows_inserted       BIGINT,
    rows_deleted        BIGINT,
    keys_changed        BIGINT
);
ALTER TABLE "_clinipipe"."dynamic_table_refresh_history"
    ADD COLUMN IF NOT EXISTS refresh_trigger VARCHAR;   -- MANUAL | SCHEDULED | ...
-- What each dynamic table reflects, committed with its last successful refresh: the digest of
-- its definition (SQL, refresh key, the columns of what it reads, the backfill run it was built
-- from; a different digest means rebuild) and the high-water mark: every row of
-- changed_keys with lsn <= high_water_lsn is reflected in the table.
CREATE TABLE IF NOT EXISTS "_clinipipe"."dynamic_table_state" (
    name                VARCHAR PRIMARY KEY,
    definition_digest   VARCHAR NOT NULL,
    high_water_lsn      BIGINT NOT NULL,
    data_timestamp      TIMESTAMPTZ NOT NULL,
    built_at            TIMESTAMPTZ NOT NULL
);
INSERT OR REPLACE INTO "_clinipipe"."dynamic_tables" VALUES
    ('patient_summary', 'select p.patient_id,
       count(distinct e.encounter_id) as encounters,
       max(e.admit_ts) as last_admit,
       count(l.lab_id) filter (where l.abnormal_flag is not null) as abnormal_labs
from raw.patients p
left join raw.encounters e on e.patient_id = p.patient_id
left join raw.labs l on l.encounter_id = e.encounter_id
group by p.patient_id', 60.0, 'AUTO',
     'patient_id', 'CLINIPIPE_CDC_WH', 'CLINIPIPE_INIT_WH'),
    ('daily_census', 'select cast(admit_ts as date) as census_date, department, count(*) as admissions
from raw.encounters
group by cast(admit_ts as date), department', 300.0, 'FULL',
     NULL, 'CLINIPIPE_CDC_WH', 'CLINIPIPE_INIT_WH'),
    ('recent_labs', 'select patient_id, lab_id, collected_ts, test_name, value_numeric, unit, abnormal_flag
from raw.labs
qualify row_number() over (
  partition by patient_id order by collected_ts desc, lab_id desc) <= 10', 60.0, 'AUTO',
     'patient_id', 'CLINIPIPE_CDC_WH', 'CLINIPIPE_INIT_WH');
