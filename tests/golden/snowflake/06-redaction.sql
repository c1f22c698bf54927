-- clinipipe: runs_on=target
-- 06 · Redaction building blocks as SQL functions, so that `clinipipe redact` transforms
-- structured columns inside the warehouse (policies: clinipipe/phi/safe_harbor.py).
--   * ZIP -> first three digits; the restricted three-digit prefixes (fewer than 20,000 people,
--     list versioned in the spec: phi.restricted_zip3) and malformed ZIPs -> '000'. A Limited
--     Data Set keeps five digits.
--   * Dates -> year only; ages over 89 -> 90 ("90 or older") and their birth year suppressed.
--     age_years counts whole years (DATEDIFF('year') alone counts calendar-year boundaries).
--   * Pseudonyms are keyed: HMAC-SHA256 over '<namespace> 0x1F <value>', first 24 hex digits; a
--     plain hash of an identifier is itself an identifying code. The key never appears here:
--     `clinipipe redact` reads it from the environment (CLINIPIPE_HMAC_KEY) and loads
--     it into a session-only TEMPORARY table (never into SQL text or the query history).
--   * shift_days: a patient's date offset for the `shifted` policy (NOT Safe Harbor): 7 * k
--     days, k in -52..-1, 1..52, from the first 8 hex digits of the pseudonym 'date_shift'.
-- Free text: `clinipipe redact --ai-redact` splits notes under AI_REDACT's 4,096-token limit
-- (SPLIT_TEXT_RECURSIVE_CHARACTER) and adds an MRN rule, which AI_REDACT does not have.

USE DATABASE "CLINIPIPE";

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SAFE_HARBOR_ZIP3"(zip VARCHAR)
  RETURNS VARCHAR
  AS $$
    CASE
      WHEN zip IS NULL THEN NULL
      WHEN NOT REGEXP_LIKE(TRIM(zip), '[0-9]{5}(-?[0-9]{4})?') THEN '000'
      WHEN LEFT(TRIM(zip), 3) IN ('036', '059', '063', '102', '203', '556', '692', '790', '821', '823', '830', '831', '878', '879', '884', '890', '893') THEN '000'
      ELSE LEFT(TRIM(zip), 3)
    END
  $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."ZIP5"(zip VARCHAR)
  RETURNS VARCHAR
  AS $$ IFF(REGEXP_LIKE(TRIM(zip), '[0-9]{5}(-?[0-9]{4})?'), LEFT(TRIM(zip), 5), NULL) $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SAFE_HARBOR_AGE"(age NUMBER)
  RETURNS NUMBER
  AS $$ IFF(age > 89, 90, age) $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."AGE_YEARS"(birth_date DATE, as_of DATE)
  RETURNS NUMBER
  AS $$
    DATEDIFF('year', birth_date, as_of)
      - IFF(DATEADD('year', DATEDIFF('year', birth_date, as_of), birth_date) > as_of, 1, 0)
  $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SAFE_HARBOR_BIRTH_YEAR"(birth_date DATE, as_of DATE)
  RETURNS NUMBER
  AS $$ IFF("CLINIPIPE"."_CLINIPIPE"."AGE_YEARS"(birth_date, as_of) > 89, NULL, YEAR(birth_date)) $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."PSEUDONYM"(value VARCHAR, namespace VARCHAR, hmac_key BINARY)
  RETURNS VARCHAR
  LANGUAGE PYTHON
  RUNTIME_VERSION = '3.11'
  HANDLER = 'pseudonym'
  AS $$
import hashlib
import hmac


def pseudonym(value, namespace, hmac_key):
    if value is None:
        return None
    message = (namespace + "\x1f" + value).encode()
    return hmac.new(hmac_key, message, hashlib.sha256).hexdigest()[:24]
$$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SHIFT_FROM_HASH"(h NUMBER)
  RETURNS NUMBER
  AS $$ 7 * (MOD(h, 104) - 52 + IFF(MOD(h, 104) >= 52, 1, 0)) $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SHIFT_DAYS"(value VARCHAR, hmac_key BINARY)
  RETURNS NUMBER
  AS $$
    "CLINIPIPE"."_CLINIPIPE"."SHIFT_FROM_HASH"(
      TO_NUMBER(LEFT("CLINIPIPE"."_CLINIPIPE"."PSEUDONYM"(value, 'date_shift', hmac_key), 8), 'XXXXXXXX'))
  $$;

-- What each research table was built from: a rerun skips a table whose fingerprint (policy,
-- treatments, key id, as-of date, source rows) is unchanged.
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."REDACTION_STATE" (
    schema_name  VARCHAR NOT NULL,
    table_name   VARCHAR NOT NULL,
    policy       VARCHAR NOT NULL,
    fingerprint  VARCHAR NOT NULL,
    rows_written NUMBER(19,0) NOT NULL,
    built_at     TIMESTAMP_TZ NOT NULL
);

-- The audit trail (clinipipe/backup/audit.py): append-only, hash-chained; redaction manifests
-- land here, and backups later. The same columns as on DuckDB (07 there).
CREATE TABLE IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"."AUDIT_LOG" (
    seq          NUMBER(19,0) NOT NULL,
    logged_at    TIMESTAMP_TZ NOT NULL,
    actor        VARCHAR NOT NULL,
    action       VARCHAR NOT NULL,
    object       VARCHAR NOT NULL,
    detail       VARCHAR,
    prev_hash    VARCHAR NOT NULL,
    entry_hash   VARCHAR NOT NULL
);

-- The research schema itself (and its readers' grants) is created by the admin role in 01.
