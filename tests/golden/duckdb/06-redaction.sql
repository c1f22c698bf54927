-- clinipipe: runs_on=target
-- 06 · Redaction building blocks as DuckDB macros, so that `clinipipe redact` transforms
-- structured columns inside the warehouse (policies: clinipipe/phi/safe_harbor.py).
--   * ZIP -> first three digits; restricted prefixes (phi.restricted_zip3, HHS guidance on
--     45 CFR 164.514(b)(2)) and malformed ZIPs -> '000'. A Limited Data Set keeps five digits.
--   * Dates -> year only; ages over 89 -> 90 ("90 or older") and their birth year suppressed.
--   * Pseudonyms are keyed: HMAC-SHA256 (RFC 2104) over '<namespace> 0x1F <value>', first 24
--     hex digits. A plain hash would itself be an identifying code. The key comes from the
--     environment (CLINIPIPE_HMAC_KEY) at run time, as the padded keys ipad/opad of a
--     session-only temporary table; it is never written here nor stored in the database.
--   * shift_days: a patient's date offset for the `shifted` policy (NOT Safe Harbor): 7 * k
--     days, k in -52..-1, 1..52, from the first 8 hex digits of the pseudonym 'date_shift'.

CREATE OR REPLACE MACRO "_clinipipe"."safe_harbor_zip3"(zip) AS
    CASE
        WHEN zip IS NULL THEN NULL
        WHEN NOT regexp_full_match(trim(zip), '[0-9]{5}(-?[0-9]{4})?') THEN '000'
        WHEN left(trim(zip), 3) IN ('036', '059', '063', '102', '203', '556', '692', '790', '821', '823', '830', '831', '878', '879', '884', '890', '893') THEN '000'
        ELSE left(trim(zip), 3)
    END;

CREATE OR REPLACE MACRO "_clinipipe"."zip5"(zip) AS
    CASE WHEN regexp_full_match(trim(zip), '[0-9]{5}(-?[0-9]{4})?') THEN left(trim(zip), 5) END;

CREATE OR REPLACE MACRO "_clinipipe"."safe_harbor_age"(age) AS
    CASE WHEN age > 89 THEN 90 ELSE age END;

CREATE OR REPLACE MACRO "_clinipipe"."safe_harbor_birth_year"(birth_date, as_of) AS
    CASE WHEN date_sub('year', birth_date, as_of) > 89 THEN NULL ELSE year(birth_date) END;

CREATE OR REPLACE MACRO "_clinipipe"."pseudonym"(value, namespace, ipad, opad) AS
    left(sha256(opad || unhex(sha256(ipad || encode(namespace || chr(31) || value)))), 24);

CREATE OR REPLACE MACRO "_clinipipe"."shift_from_hash"(h) AS
    7 * (h % 104 - 52 + CAST(h % 104 >= 52 AS INTEGER));

CREATE OR REPLACE MACRO "_clinipipe"."shift_days"(value, ipad, opad) AS
    "_clinipipe"."shift_from_hash"(
        CAST('0x' || left("_clinipipe"."pseudonym"(value, 'date_shift', ipad, opad), 8) AS BIGINT));

-- What each research table was built from: a rerun skips a table whose fingerprint (policy,
-- treatments, key id, as-of date, source rows) is unchanged.
CREATE TABLE IF NOT EXISTS "_clinipipe"."redaction_state" (
    schema_name  VARCHAR NOT NULL,
    table_name   VARCHAR NOT NULL,
    policy       VARCHAR NOT NULL,
    fingerprint  VARCHAR NOT NULL,
    rows_written BIGINT NOT NULL,
    built_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (schema_name, table_name)
);

CREATE SCHEMA IF NOT EXISTS "research";
