-- clinipipe: runs_on=target
-- 07 · Backups. DuckDB has no backup sets: `clinipipe backup create` writes content-addressed,
-- hash-chained snapshots of the schemas below to a WORM store ('backups'), and
-- every backup and restore lands in the audit log. This file records the policy.

CREATE TABLE IF NOT EXISTS "_clinipipe"."backup_policies" (
    name             VARCHAR PRIMARY KEY,
    retention_lock   BOOLEAN NOT NULL,
    schedule         VARCHAR NOT NULL,
    expire_after_days INTEGER NOT NULL,
    schemas          VARCHAR[] NOT NULL,
    store            VARCHAR NOT NULL
);
INSERT OR REPLACE INTO "_clinipipe"."backup_policies" VALUES
    ('clinipipe_backup_policy', FALSE, '24 HOUR', 2555,
     ['raw'], 'backups');

CREATE TABLE IF NOT EXISTS "_clinipipe"."audit_log" (
    seq          BIGINT PRIMARY KEY,
    logged_at    TIMESTAMPTZ NOT NULL,
    actor        VARCHAR NOT NULL,
    action       VARCHAR NOT NULL,
    object       VARCHAR NOT NULL,
    detail       VARCHAR,
    prev_hash    VARCHAR NOT NULL,
    entry_hash   VARCHAR NOT NULL
);
