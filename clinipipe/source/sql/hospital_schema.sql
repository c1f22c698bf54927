-- Source schema of the synthetic hospital (examples/hospital.yaml).
-- Created by `clinipipe synth`; every table has a primary key and the default replica identity,
-- as logical replication into the warehouse requires.

CREATE TABLE IF NOT EXISTS providers (
    provider_id     bigint PRIMARY KEY,
    npi             char(10) NOT NULL,
    first_name      text NOT NULL,
    last_name       text NOT NULL,
    specialty       text NOT NULL,
    department      text NOT NULL
);

CREATE TABLE IF NOT EXISTS patients (
    patient_id      bigint PRIMARY KEY,
    mrn             varchar(12) NOT NULL UNIQUE,
    first_name      text NOT NULL,
    last_name       text NOT NULL,
    sex             char(1) NOT NULL,
    birth_date      date NOT NULL,
    ssn             char(11),
    street_address  text NOT NULL,
    city            text NOT NULL,
    state           char(2) NOT NULL,
    zip             char(5) NOT NULL,
    phone           varchar(14),
    email           text,
    insurance_member_id varchar(16),
    employer        text,
    emergency_contact_name text,
    deceased_date   date,
    created_at      timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS encounters (
    encounter_id    bigint PRIMARY KEY,
    patient_id      bigint NOT NULL,
    provider_id     bigint NOT NULL,
    encounter_type  text NOT NULL,
    department      text NOT NULL,
    admit_ts        timestamptz NOT NULL,
    discharge_ts    timestamptz,
    primary_dx      varchar(8) NOT NULL,
    account_number  varchar(14) NOT NULL
);

CREATE TABLE IF NOT EXISTS labs (
    lab_id          bigint PRIMARY KEY,
    encounter_id    bigint NOT NULL,
    patient_id      bigint NOT NULL,
    loinc_code      varchar(10) NOT NULL,
    test_name       text NOT NULL,
    value_numeric   numeric(12,3),
    unit            text NOT NULL,
    ref_low         numeric(12,3),
    ref_high        numeric(12,3),
    abnormal_flag   char(1),
    collected_ts    timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS medications (
    medication_id   bigint PRIMARY KEY,
    encounter_id    bigint NOT NULL,
    patient_id      bigint NOT NULL,
    rxnorm_code     varchar(10) NOT NULL,
    drug_name       text NOT NULL,
    dose            text NOT NULL,
    route           text NOT NULL,
    frequency       text NOT NULL,
    start_date      date NOT NULL,
    end_date        date
);

CREATE TABLE IF NOT EXISTS claims (
    claim_id        bigint PRIMARY KEY,
    encounter_id    bigint NOT NULL,
    patient_id      bigint NOT NULL,
    payer           text NOT NULL,
    member_id       varchar(16),
    billed_amount   numeric(12,2) NOT NULL,
    paid_amount     numeric(12,2),
    status          text NOT NULL,
    submitted_date  date NOT NULL
);

CREATE TABLE IF NOT EXISTS clinical_notes (
    note_id         bigint PRIMARY KEY,
    encounter_id    bigint NOT NULL,
    patient_id      bigint NOT NULL,
    provider_id     bigint NOT NULL,
    note_type       text NOT NULL,
    note_ts         timestamptz NOT NULL,
    note_text       text NOT NULL
);
