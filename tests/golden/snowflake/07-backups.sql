-- clinipipe: runs_on=target
-- 07 · WORM backups (formerly "snapshots"). WITH RETENTION LOCK: nobody, not ACCOUNTADMIN and
-- not Snowflake support, can delete a backup before it expires, and the retention cannot be
-- shortened. Needs the APPLY BACKUP RETENTION LOCK privilege and Business Critical edition.
-- The lock is opt-in and irreversible: only when the spec says `backup.retention_lock: true`
-- AND deploy runs with --confirm-retention-lock (docs/DEPLOYMENT_GUIDE.md, "Retention lock").
-- Restore syntax was not confirmed in the documentation we read: `clinipipe backup restore`
-- documents the procedure instead of guessing it here.

USE DATABASE "CLINIPIPE";

-- Retention lock off (backup.retention_lock: false): backups expire after EXPIRE_AFTER_DAYS and
-- can be deleted earlier.
CREATE BACKUP POLICY IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."CLINIPIPE_BACKUP_POLICY"
  SCHEDULE = '24 HOUR'
  EXPIRE_AFTER_DAYS = 2555
  COMMENT = 'clinipipe backups for general_hospital';

CREATE BACKUP SET IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."RAW_BACKUPS"
  FOR SCHEMA "CLINIPIPE"."RAW"
  WITH BACKUP POLICY "CLINIPIPE"."_CLINIPIPE"."CLINIPIPE_BACKUP_POLICY"
  COMMENT = 'clinipipe backup set for schema raw';
