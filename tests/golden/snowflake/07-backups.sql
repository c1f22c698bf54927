-- clinipipe: runs_on=target
-- 07 · WORM backups (formerly "snapshots"). WITH RETENTION LOCK: nobody, not ACCOUNTADMIN and
-- not Snowflake support, can delete a backup before it expires, and the retention cannot be
-- shortened. Needs the APPLY BACKUP RETENTION LOCK privilege.
-- Restore syntax was not confirmed in the documentation we read: `clinipipe backup restore`
-- documents the procedure instead of guessing it here.

USE DATABASE "CLINIPIPE";

CREATE BACKUP POLICY IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."CLINIPIPE_BACKUP_POLICY"
  WITH RETENTION LOCK
  SCHEDULE = '24 HOUR'
  EXPIRE_AFTER_DAYS = 2555
  COMMENT = 'clinipipe backups for general_hospital';

CREATE BACKUP SET IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."RAW_BACKUPS"
  FOR SCHEMA "CLINIPIPE"."RAW"
  WITH BACKUP POLICY "CLINIPIPE"."_CLINIPIPE"."CLINIPIPE_BACKUP_POLICY"
  COMMENT = 'clinipipe backup set for schema raw';
