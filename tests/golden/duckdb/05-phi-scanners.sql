-- clinipipe: runs_on=target
-- 05 · PHI scanners: the spec's column classification and the findings table clinipipe's
-- scanners write. Findings hold masked excerpts only (e.g. "[SSN] at 14"), never the PHI itself.
-- Stage 1 of a scan runs here as regexp_matches() pushdown; stage 2 validates in clinipipe.

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
