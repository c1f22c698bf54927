-- clinipipe: runs_on=target
-- 06 · Redaction building blocks (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)), as SQL functions
-- so that `clinipipe redact` transforms structured columns inside the warehouse.
--   * ZIP -> first three digits; the restricted three-digit prefixes (fewer than 20,000 people,
--     list versioned in the spec: phi.restricted_zip3) and malformed ZIPs -> '000'.
--   * Dates -> year only; ages over 89 -> 90 ("90 or older") and their birth year suppressed.
--   * Pseudonyms are keyed (HMAC-SHA256): a plain hash of an identifier is itself an
--     identifying code. The key never appears here: `clinipipe redact` passes it from the
--     environment (CLINIPIPE_HMAC_KEY) at run time.
-- Free text: AI_REDACT(<text>) (GA 2025-12-08) replaces US PII with [NAME], [EMAIL], ... but has no
-- MRN category and a 4,096-token limit; clinipipe's own detectors run first.

USE DATABASE "CLINIPIPE";

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SAFE_HARBOR_ZIP3"(zip VARCHAR)
  RETURNS VARCHAR
  AS $$
    CASE
      WHEN zip IS NULL THEN NULL
      WHEN NOT REGEXP_LIKE(zip, '[0-9]{5}(-[0-9]{4})?') THEN '000'
      WHEN LEFT(zip, 3) IN ('036', '059', '063', '102', '203', '556', '692', '790', '821', '823', '830', '831', '878', '879', '884', '890', '893') THEN '000'
      ELSE LEFT(zip, 3)
    END
  $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SAFE_HARBOR_AGE"(age NUMBER)
  RETURNS NUMBER
  AS $$ IFF(age > 89, 90, age) $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."SAFE_HARBOR_BIRTH_YEAR"(birth_date DATE, as_of DATE)
  RETURNS NUMBER
  AS $$ IFF(DATEDIFF('year', birth_date, as_of) > 89, NULL, YEAR(birth_date)) $$;

CREATE OR REPLACE FUNCTION "CLINIPIPE"."_CLINIPIPE"."PSEUDONYM"(value VARCHAR, hmac_key VARCHAR)
  RETURNS VARCHAR
  LANGUAGE PYTHON
  RUNTIME_VERSION = '3.11'
  HANDLER = 'pseudonym'
  AS $$
import hashlib
import hmac


def pseudonym(value, hmac_key):
    if value is None:
        return None
    digest = hmac.new(hmac_key.encode(), value.encode(), hashlib.sha256).hexdigest()
    return digest[:24]
$$;

CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."RESEARCH";
