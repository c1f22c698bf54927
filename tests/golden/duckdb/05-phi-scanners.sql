-- clinipipe: runs_on=target
-- 05 · PHI scanners: the spec's column classification and the findings table clinipipe's
-- scanners write (`clinipipe scan`, and `cdc start` on every batch). Findings hold masked
-- excerpts ("... called [PHONE] on ...") and character offsets only, never the PHI itself; a
-- row key whose column is classified PHI is stored as a keyed HMAC pseudonym. A finding found
-- again moves its last_seen (upsert by finding_id). Stage 1 of a scan runs here as
-- regexp_matches() pushdown; stage 2 validates the candidates in clinipipe.

CREATE TABLE IF NOT EXISTS "_clinipipe"."phi_column_classes" (
    schema_name  VARCHAR NOT NULL,
    table_name   VARCHAR NOT NULL,
    column_name  VARCHAR NOT NULL,
    phi_class    VARCHAR NOT NULL,
    PRIMARY KEY (schema_name, table_name, column_name)
);
INSERT OR REPLACE INTO "_clinipipe"."phi_column_classes" VALUES
    ('public', 'patients', 'birth_date', 'birth_date'),
    ('public', 'patients', 'city', 'city'),
    ('public', 'patients', 'deceased_date', 'date'),
    ('public', 'patients', 'email', 'email'),
    ('public', 'patients', 'emergency_contact_name', 'name'),
    ('public', 'patients', 'employer', 'name'),
    ('public', 'patients', 'first_name', 'name'),
    ('public', 'patients', 'insurance_member_id', 'health_plan_id'),
    ('public', 'patients', 'last_name', 'name'),
    ('public', 'patients', 'mrn', 'mrn'),
    ('public', 'patients', 'phone', 'phone'),
    ('public', 'patients', 'ssn', 'ssn'),
    ('public', 'patients', 'street_address', 'street_address'),
    ('public', 'patients', 'zip', 'zip'),
    ('public', 'providers', 'first_name', 'name'),
    ('public', 'providers', 'last_name', 'name'),
    ('public', 'encounters', 'account_number', 'account_number'),
    ('public', 'encounters', 'admit_ts', 'date'),
    ('public', 'encounters', 'discharge_ts', 'date'),
    ('public', 'labs', 'collected_ts', 'date'),
    ('public', 'medications', 'end_date', 'date'),
    ('public', 'medications', 'start_date', 'date'),
    ('public', 'claims', 'member_id', 'health_plan_id'),
    ('public', 'claims', 'submitted_date', 'date'),
    ('public', 'clinical_notes', 'note_text', 'free_text'),
    ('public', 'clinical_notes', 'note_ts', 'date');

CREATE TABLE IF NOT EXISTS "_clinipipe"."phi_findings" (
    finding_id     VARCHAR PRIMARY KEY,
    schema_name    VARCHAR NOT NULL,
    table_name     VARCHAR NOT NULL,
    column_name    VARCHAR NOT NULL,
    row_key        VARCHAR NOT NULL,
    category       VARCHAR NOT NULL,
    severity       VARCHAR NOT NULL,
    confidence     DOUBLE NOT NULL,
    detector       VARCHAR NOT NULL,
    masked_excerpt VARCHAR NOT NULL,
    first_seen     TIMESTAMPTZ NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL
);
-- Where in the cell (NULL for a column-level finding) and which scanner found it
-- (scan, cdc, classify); added here so that earlier deployments gain them too.
ALTER TABLE "_clinipipe"."phi_findings" ADD COLUMN IF NOT EXISTS start_offset BIGINT;
ALTER TABLE "_clinipipe"."phi_findings" ADD COLUMN IF NOT EXISTS end_offset BIGINT;
ALTER TABLE "_clinipipe"."phi_findings" ADD COLUMN IF NOT EXISTS found_by VARCHAR;

-- How far CDC's PHI scan got, per slot: every batch applied at or before `lsn` was scanned
-- (by `cdc start`, or by a full `clinipipe scan`). Batches applied after it and never scanned (CDC
-- stopped between applying and scanning, or a scan failed) are reported by the next `cdc start`.
CREATE TABLE IF NOT EXISTS "_clinipipe"."phi_scan_marks" (
    slot           VARCHAR NOT NULL PRIMARY KEY,
    lsn            BIGINT NOT NULL,
    scanned_at     TIMESTAMPTZ NOT NULL
);
