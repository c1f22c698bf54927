-- clinipipe: runs_on=target
-- 08 · Cost monitoring. Every job clinipipe runs is metered here (which warehouse profile, start,
-- end, rows, bytes, clinipipe's CPU seconds); `clinipipe cost report` prices it the way Snowflake
-- bills: credits/hour by size, per second, 60 s minimum at each start or resume, idle time until
-- AUTO_SUSPEND.
-- Price per credit (enterprise edition): 3.0 USD.

CREATE TABLE IF NOT EXISTS "_clinipipe"."metering" (
    job_id          VARCHAR PRIMARY KEY,
    job             VARCHAR NOT NULL,
    warehouse       VARCHAR NOT NULL,
    warehouse_role  VARCHAR NOT NULL,
    size            VARCHAR NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    ended_at        TIMESTAMPTZ NOT NULL,
    rows_processed  BIGINT,
    bytes_processed BIGINT
);
-- CPU seconds of the clinipipe thread that did the job (its client CPU: reading, decoding,
-- parsing, stage-2 scanning), not the warehouse's (`ended_at - started_at` is the warehouse's
-- time). Added here, nullable and without a DEFAULT (DuckDB must replay every catalog entry
-- from its WAL), so that earlier deployments gain it on their next deploy; their old rows
-- keep NULL ("not measured").
ALTER TABLE "_clinipipe"."metering" ADD COLUMN IF NOT EXISTS cpu_seconds DOUBLE;
COMMENT ON COLUMN "_clinipipe"."metering"."cpu_seconds" IS 'CPU seconds of the clinipipe thread that ran the job (client CPU, not the warehouse''s); NULL: not measured';

-- Busy time per warehouse and day, priced at the warehouse's credits/hour (before the 60 s
-- minimum and idle time, which the cost report adds from the job timeline).
CREATE OR REPLACE VIEW "_clinipipe"."metering_daily" AS
SELECT
    CAST(m.started_at AS DATE) AS usage_date,
    m.warehouse,
    m.warehouse_role,
    COUNT(*) AS jobs,
    SUM(epoch(m.ended_at) - epoch(m.started_at)) AS busy_seconds,
    SUM(epoch(m.ended_at) - epoch(m.started_at)) / 3600.0 * any_value(w.credits_per_hour) AS busy_credits
FROM "_clinipipe"."metering" m
LEFT JOIN "_clinipipe"."warehouses" w ON w.role = m.warehouse_role
GROUP BY ALL;
