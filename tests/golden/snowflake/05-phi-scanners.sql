-- clinipipe: runs_on=target
-- 05 · PHI scanners: the spec's column classification, the findings table clinipipe's
-- scanners write (masked excerpts and offsets only, never the PHI itself; upserted by
-- finding_id), and a classification profile for Snowflake's own SYSTEM$CLASSIFY (which has no
-- medical-record-number category: clinipipe's detectors cover MRNs). Stage 1 of a scan runs
-- here as REGEXP_LIKE pushdown. `clinipipe scan` calls, per watched table (and per table of a
-- de-identified schema), then merges the columns it classifies that the spec does not:
--   CALL SYSTEM$CLASSIFY('<db>.<schema>.<table>', {'sample_count': 1000, 'auto_tag': TRUE});
--   SELECT SYSTEM$GET_CLASSIFICATION_RESULT('<db>.<schema>.<table>');

USE DATABASE "CLINIPIPE";

CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."PHI_COLUMN_CLASSES" (
    schema_name  VARCHAR NOT NULL,
    table_name   VARCHAR NOT NULL,
    column_name  VARCHAR NOT NULL,
    phi_class    VARCHAR NOT NULL,
    PRIMARY KEY (schema_name, table_name, column_name)
);
MERGE INTO "CLINIPIPE"."_CLINIPIPE"."PHI_COLUMN_CLASSES" t USING (
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'birth_date' AS column_name, 'birth_date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'city' AS column_name, 'city' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'deceased_date' AS column_name, 'date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'email' AS column_name, 'email' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'emergency_contact_name' AS column_name, 'name' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'employer' AS column_name, 'name' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'first_name' AS column_name, 'name' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'insurance_member_id' AS column_name, 'health_plan_id' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'last_name' AS column_name, 'name' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'mrn' AS column_name, 'mrn' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'phone' AS column_name, 'phone' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'ssn' AS column_name, 'ssn' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'street_address' AS column_name, 'street_address' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'patients' AS table_name, 'zip' AS column_name, 'zip' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'providers' AS table_name, 'first_name' AS column_name, 'name' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'providers' AS table_name, 'last_name' AS column_name, 'name' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'encounters' AS table_name, 'account_number' AS column_name, 'account_number' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'encounters' AS table_name, 'admit_ts' AS column_name, 'date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'encounters' AS table_name, 'discharge_ts' AS column_name, 'date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'labs' AS table_name, 'collected_ts' AS column_name, 'date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'medications' AS table_name, 'end_date' AS column_name, 'date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'medications' AS table_name, 'start_date' AS column_name, 'date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'claims' AS table_name, 'member_id' AS column_name, 'health_plan_id' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'claims' AS table_name, 'submitted_date' AS column_name, 'date' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'clinical_notes' AS table_name, 'note_text' AS column_name, 'free_text' AS phi_class
    UNION ALL
    SELECT 'public' AS schema_name, 'clinical_notes' AS table_name, 'note_ts' AS column_name, 'date' AS phi_class
) s ON t.schema_name = s.schema_name AND t.table_name = s.table_name AND t.column_name = s.column_name
WHEN MATCHED THEN UPDATE SET phi_class = s.phi_class
WHEN NOT MATCHED THEN INSERT (schema_name, table_name, column_name, phi_class)
    VALUES (s.schema_name, s.table_name, s.column_name, s.phi_class);

CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."PHI_FINDINGS" (
    finding_id     VARCHAR NOT NULL PRIMARY KEY,
    schema_name    VARCHAR NOT NULL,
    table_name     VARCHAR NOT NULL,
    column_name    VARCHAR NOT NULL,
    row_key        VARCHAR NOT NULL,
    category       VARCHAR NOT NULL,
    severity       VARCHAR NOT NULL,
    confidence     FLOAT NOT NULL,
    detector       VARCHAR NOT NULL,
    masked_excerpt VARCHAR NOT NULL,
    first_seen     TIMESTAMP_TZ NOT NULL,
    last_seen      TIMESTAMP_TZ NOT NULL
);
-- Where in the cell (NULL for a column-level finding) and which scanner found it
-- (scan, cdc, classify); added here so that earlier deployments gain them too.
ALTER TABLE "CLINIPIPE"."_CLINIPIPE"."PHI_FINDINGS" ADD COLUMN IF NOT EXISTS start_offset NUMBER(19,0);
ALTER TABLE "CLINIPIPE"."_CLINIPIPE"."PHI_FINDINGS" ADD COLUMN IF NOT EXISTS end_offset NUMBER(19,0);
ALTER TABLE "CLINIPIPE"."_CLINIPIPE"."PHI_FINDINGS" ADD COLUMN IF NOT EXISTS found_by VARCHAR;

-- How far CDC's PHI scan got, per slot: every batch applied at or before `lsn` was scanned
-- (by `cdc start`, or by a full `clinipipe scan`). Batches applied after it and never scanned (CDC
-- stopped between applying and scanning, or a scan failed) are reported by the next `cdc start`.
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."PHI_SCAN_MARKS" (
    slot           VARCHAR NOT NULL PRIMARY KEY,
    lsn            BIGINT NOT NULL,
    scanned_at     TIMESTAMP_TZ NOT NULL
);

-- The profile for Snowflake's automatic classification. Created once and never replaced: CREATE
-- OR REPLACE would detach it from every database and schema it is set on, turning automatic
-- classification off there (CREATE CLASSIFICATION_PROFILE, sql-reference/classes/
-- classification_profile/commands/create-classification-profile). clinipipe does not set it on a
-- schema itself (automatic classification is billed serverless compute): an admin sets it on the
-- schemas to classify (user-guide/classify-auto), and a redeploy leaves that as it is. To change
-- its settings later, call its methods (e.g. <profile>!SET_AUTO_TAG(FALSE)) or drop it first.
CREATE SNOWFLAKE.DATA_PRIVACY.CLASSIFICATION_PROFILE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."CLINIPIPE_CLASSIFICATION"({
  'minimum_object_age_for_classification_days': 0,
  'maximum_classification_validity_days': 30,
  'auto_tag': TRUE
});
