-- clinipipe: runs_on=target
-- 06 · Redaction building blocks (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)) as DuckDB macros,
-- so that `clinipipe redact` transforms structured columns inside the warehouse.
--   * ZIP -> first three digits; restricted prefixes (phi.restricted_zip3) and malformed
--     ZIPs -> '000'.
--   * Dates -> year only; ages over 89 -> 90 ("90 or older") and their birth year suppressed.
--   * Pseudonyms are keyed HMAC-SHA256 computed by `clinipipe redact` with the key from the
--     environment (CLINIPIPE_HMAC_KEY); a plain hash would itself be an identifying code.

CREATE OR REPLACE MACRO "_clinipipe"."safe_harbor_zip3"(zip) AS
    CASE
        WHEN zip IS NULL THEN NULL
        WHEN NOT regexp_full_match(zip, '[0-9]{5}(-[0-9]{4})?') THEN '000'
        WHEN left(zip, 3) IN ('036', '059', '063', '102', '203', '556', '692', '790', '821', '823', '830', '831', '878', '879', '884', '890', '893') THEN '000'
        ELSE left(zip, 3)
    END;

CREATE OR REPLACE MACRO "_clinipipe"."safe_harbor_age"(age) AS
    CASE WHEN age > 89 THEN 90 ELSE age END;

CREATE OR REPLACE MACRO "_clinipipe"."safe_harbor_birth_year"(birth_date, as_of) AS
    CASE WHEN date_sub('year', birth_date, as_of) > 89 THEN NULL ELSE year(birth_date) END;

CREATE SCHEMA IF NOT EXISTS "research";
