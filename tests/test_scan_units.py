"""PHI scan pieces without a database: SYSTEM$CLASSIFY results merged into findings, the RE2 ->
Snowflake regex rewrite, golden Snowflake SQL (fakesnow cannot run SYSTEM$CLASSIFY, and runs
REGEXP_LIKE as DuckDB's regex, so the exact text is pinned here; `test_scan_snowflake.py` runs
the rest through fakesnow), row keys and stage 1 on Arrow."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
import re2

from clinipipe.phi.classify import DETECTOR, classification_findings, parse_result
from clinipipe.phi.scan import (
    CandidateQuery,
    Finding,
    ScanKeyError,
    candidates_in_batch,
    dedupe,
    is_text_like,
    pseudonym,
    reaches,
    row_keys,
)
from clinipipe.spec import load_spec
from clinipipe.targets.duckdb import DuckDBDialect
from clinipipe.targets.duckdb.scan import candidate_sql as duckdb_candidate_sql
from clinipipe.targets.duckdb.scan import upsert_findings_sql
from clinipipe.targets.snowflake import SnowflakeDialect, SnowflakeTarget
from clinipipe.targets.snowflake.scan import (
    candidate_sql,
    classify_sql,
    merge_findings_sql,
    snowflake_regex,
)
from tests.helpers import snowflake_text, write_spec

SF, DUCK = SnowflakeDialect(), DuckDBDialect()

# A result in the documented shape of SYSTEM$GET_CLASSIFICATION_RESULT (Snowflake docs,
# "Returns"), for the hospital's encounters table with one leaking column planted.
RECORDED = {
    "classification_profile_config": {
        "classification_profile_name": "CLINIPIPE._CLINIPIPE.CLINIPIPE_CLASSIFICATION"
    },
    "classification_result": {
        "ACCOUNT_NUMBER": {  # classified in the spec: not a finding
            "alternates": [],
            "recommendation": {"confidence": "HIGH", "coverage": 1, "details": [],
                               "privacy_category": "IDENTIFIER",
                               "semantic_category": "BANK_ACCOUNT"},
            "valid_value_ratio": 1,
        },
        "DEPARTMENT": {  # a leak Snowflake recognises
            "alternates": [],
            "recommendation": {"confidence": "MEDIUM", "coverage": 0.82,
                               "details": [{"coverage": 0.82, "semantic_category": "US_SSN"}],
                               "privacy_category": "IDENTIFIER",
                               "semantic_category": "NATIONAL_IDENTIFIER",
                               "tags": [{"tag_applied": True,
                                         "tag_name": "snowflake.core.semantic_category",
                                         "tag_value": "NATIONAL_IDENTIFIER"}]},
            "valid_value_ratio": 0.9,
        },
        "ENCOUNTER_TYPE": {  # a quasi-identifier that Safe Harbor allows: not a finding
            "alternates": [],
            "recommendation": {"confidence": "LOW", "coverage": 0.3, "details": [],
                               "privacy_category": "QUASI_IDENTIFIER",
                               "semantic_category": "GENDER"},
            "valid_value_ratio": 1,
        },
        "PRIMARY_DX": {"alternates": [], "valid_value_ratio": 1},  # no recommendation
        "NOTE": {  # an identifier with no Safe Harbor mapping: OTHER_ID
            "alternates": [],
            "recommendation": {"confidence": "HIGH", "coverage": 1, "details": [],
                               "privacy_category": "IDENTIFIER",
                               "semantic_category": "ORGANIZATION_IDENTIFIER"},
            "valid_value_ratio": 1,
        },
    },
}  # fmt: skip


def test_classification_result_merges_unclassified_identifier_columns() -> None:
    found = classification_findings(
        "RAW", "encounters", json.dumps(RECORDED), classified=["account_number", "admit_ts"]
    )
    assert [(f.column, f.category, f.severity) for f in found] == [
        ("department", "SSN", "high"),
        ("note", "OTHER_ID", "high"),
    ]
    ssn = found[0]
    assert ssn.row_key == "*" and ssn.start is None and ssn.detector == DETECTOR
    assert ssn.confidence == 0.6 and ssn.found_by == "classify"
    assert ssn.masked_excerpt == (
        "column classified by Snowflake as NATIONAL_IDENTIFIER (IDENTIFIER, coverage 82%)"
    )
    # The legacy EXTRACT_SEMANTIC_CATEGORIES shape, and a VARIANT already parsed.
    legacy = {"DEPARTMENT": {"semantic_category": "EMAIL", "privacy_category": "IDENTIFIER",
                             "extra_info": {"alternates": [], "probability": "0.95"}}}  # fmt: skip
    (email,) = classification_findings("RAW", "encounters", legacy)
    assert (email.category, email.confidence) == ("EMAIL", 0.95)
    assert parse_result(None) == {} and parse_result("") == {}
    with pytest.raises(ValueError, match="not JSON"):
        parse_result("Classification started")


# --- RE2 -> Snowflake ----------------------------------------------------------------------------

REWRITES = [
    (r"(?i)\bssn\b", (r".*(ssn).*", "is")),
    (r"(?:\d{3})-(?P<g>\d{2})", (r".*((\d{3})-(\d{2})).*", "s")),
    (r"a+?b*?c??", (r".*(a+b*c?).*", "s")),
    (r"[\b(?:]x\Bz", (r".*([\b(?:]xz).*", "s")),
    (r"\pL+\p{Greek}[\pN]", (r".*(.+.[\w]).*", "s")),
    (r"\A\d+\z|[]a]", (r".*(^\d+$|[]a]).*", "s")),
    (r"(?i:mrn)#?\d", (r".*((mrn)#?\d).*", "is")),
]


@pytest.mark.parametrize(("re2", "expected"), REWRITES)
def test_snowflake_regex_rewrites(re2: str, expected: tuple[str, str]) -> None:
    assert snowflake_regex(re2) == expected


SAMPLES = [
    "SSN 123-45-6789 on file", "call (617) 555-0100", "mrn#12345", "Ssn: none",
    "plain words only", "multi\nline 555-0100\nnote", "", "dob 03/04/1950", "e@x.org",
    "code (xz here", "aaabbc", "MRN7 and\nssn",
]  # fmt: skip


def _widens(re2: str) -> None:
    """Every sample RE2 finds a match in is matched by the rewrite; at least one sample (and
    one non-sample) must exercise the pattern, or the check would hold vacuously."""
    pattern, params = snowflake_regex(re2)
    flags = re.S | (re.I if "i" in params else 0)
    matched = [text for text in SAMPLES if re.search(re2, text)]
    assert matched, f"no sample exercises {re2!r}: add one"
    assert len(matched) < len(SAMPLES), f"every sample matches {re2!r}: add one that does not"
    for text in matched:
        assert re.fullmatch(pattern, text, flags), (re2, text)


@pytest.mark.parametrize("re2", [r for r, _ in REWRITES if "\\p" not in r and "\\z" not in r])
def test_snowflake_regex_only_widens(re2: str) -> None:
    _widens(re2.replace("(?P<g>", "(?P<g>"))


def test_snowflake_regex_widens_the_real_prefilter() -> None:
    from clinipipe.phi import DetectorSet

    prefilter = DetectorSet.load().prefilter()
    pattern, params = snowflake_regex(prefilter)
    flags = re.S | (re.I if "i" in params else 0)
    texts = [
        *SAMPLES,
        "Dr. Alan Smith",
        "seen 4-Mar-21",
        "10.0.0.1",
        "https://x.org/a",
        "MRN04851234",
        "Boston, MA 02114",
        "12 Elm Street",
        "age 93",
        "NPI 1234567893",
    ]
    matched = [t for t in texts if re2.search(prefilter, t)]  # RE2 itself: flags mid-pattern
    assert len(matched) >= 12
    for text in matched:
        assert re.fullmatch(pattern, text, flags), text


# --- golden SQL ----------------------------------------------------------------------------------

QUERY = CandidateQuery("RAW", "encounters", ("department", "primary_dx"), ("encounter_id",),
                       r"(?i)\bssn\b|\d{3}-\d{2}-\d{4}", 10000)  # fmt: skip

GOLDEN_SNOWFLAKE_CANDIDATES = (
    'SELECT TO_VARCHAR(s."ENCOUNTER_ID") AS "K0", '
    "IFF(REGEXP_LIKE(TO_VARCHAR(s.\"DEPARTMENT\"), '.*(ssn|\\\\d{3}-\\\\d{2}-\\\\d{4}).*', 'is'), "
    'TO_VARCHAR(s."DEPARTMENT"), NULL) AS "C0", '
    "IFF(REGEXP_LIKE(TO_VARCHAR(s.\"PRIMARY_DX\"), '.*(ssn|\\\\d{3}-\\\\d{2}-\\\\d{4}).*', 'is'), "
    'TO_VARCHAR(s."PRIMARY_DX"), NULL) AS "C1" '
    'FROM "CLINIPIPE"."RAW"."ENCOUNTERS" AS s SAMPLE ROW (10000 ROWS) WHERE '
    "REGEXP_LIKE(TO_VARCHAR(s.\"DEPARTMENT\"), '.*(ssn|\\\\d{3}-\\\\d{2}-\\\\d{4}).*', 'is') OR "
    "REGEXP_LIKE(TO_VARCHAR(s.\"PRIMARY_DX\"), '.*(ssn|\\\\d{3}-\\\\d{2}-\\\\d{4}).*', 'is')"
)


def test_snowflake_stage1_golden_sql() -> None:
    assert candidate_sql(QUERY, SF, "CLINIPIPE") == GOLDEN_SNOWFLAKE_CANDIDATES
    no_key = CandidateQuery("RESEARCH", "cohort", ("dob",), (), "x", None)
    assert candidate_sql(no_key, SF, "CLINIPIPE") == (
        'SELECT TO_VARCHAR(HASH(s.*)) AS "ROW_DIGEST", IFF(REGEXP_LIKE(TO_VARCHAR(s."DOB"), '
        "'.*(x).*', 's'), TO_VARCHAR(s.\"DOB\"), NULL) AS \"C0\" FROM "
        '"CLINIPIPE"."RESEARCH"."COHORT" AS s WHERE REGEXP_LIKE(TO_VARCHAR(s."DOB"), '
        "'.*(x).*', 's')"
    )


def test_duckdb_stage1_sql_passes_re2_unchanged() -> None:
    assert duckdb_candidate_sql(QUERY, DUCK) == (
        'SELECT CAST(s."encounter_id" AS VARCHAR) AS k0, CASE WHEN regexp_matches('
        "CAST(s.\"department\" AS VARCHAR), '(?i)\\bssn\\b|\\d{3}-\\d{2}-\\d{4}') THEN "
        'CAST(s."department" AS VARCHAR) END AS c0, CASE WHEN regexp_matches(CAST(s."primary_dx" '
        "AS VARCHAR), '(?i)\\bssn\\b|\\d{3}-\\d{2}-\\d{4}') THEN CAST(s.\"primary_dx\" AS "
        'VARCHAR) END AS c1 FROM (SELECT * FROM "RAW"."encounters" USING SAMPLE reservoir(10000 '
        'ROWS) REPEATABLE (0)) AS s WHERE regexp_matches(CAST(s."department" AS VARCHAR), '
        "'(?i)\\bssn\\b|\\d{3}-\\d{2}-\\d{4}') OR regexp_matches(CAST(s.\"primary_dx\" AS "
        "VARCHAR), '(?i)\\bssn\\b|\\d{3}-\\d{2}-\\d{4}')"
    )
    assert "ON CONFLICT (finding_id) DO UPDATE SET severity = EXCLUDED.severity" in (
        upsert_findings_sql('"_clinipipe"."phi_findings"', "x")
    )


def test_snowflake_findings_merge_and_classify_golden_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = Finding("RAW", "encounters", "department", "encounter_id=7", "SSN", "high", 0.97,
                "ssn", "…it's [SSN] o…", 5, 16, "scan")  # fmt: skip
    seen = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    (merge,) = merge_findings_sql('"CLINIPIPE"."_CLINIPIPE"."PHI_FINDINGS"', [f, f], seen, SF)
    assert merge == (
        'MERGE INTO "CLINIPIPE"."_CLINIPIPE"."PHI_FINDINGS" t USING (SELECT * FROM ('
        f"SELECT '{f.finding_id}', 'RAW', 'encounters', 'department', 'encounter_id=7', 'SSN', "
        "'high', 0.97, 'ssn', '…it''s [SSN] o…', 5, 16, 'scan', "
        "'2026-03-01T00:00:00+00:00'::TIMESTAMP_TZ, '2026-03-01T00:00:00+00:00'::TIMESTAMP_TZ "
        f"UNION ALL SELECT '{f.finding_id}', 'RAW', 'encounters', 'department', "
        "'encounter_id=7', 'SSN', 'high', 0.97, 'ssn', '…it''s [SSN] o…', 5, 16, 'scan', "
        "'2026-03-01T00:00:00+00:00'::TIMESTAMP_TZ, '2026-03-01T00:00:00+00:00'::TIMESTAMP_TZ) "
        "AS v (finding_id, schema_name, table_name, column_name, row_key, category, severity, "
        "confidence, detector, masked_excerpt, start_offset, end_offset, found_by, first_seen, "
        "last_seen)) s ON t.finding_id = s.finding_id WHEN MATCHED THEN UPDATE SET severity = "
        "s.severity, confidence = s.confidence, detector = s.detector, masked_excerpt = "
        "s.masked_excerpt, end_offset = s.end_offset, last_seen = s.last_seen WHEN NOT MATCHED "
        "THEN INSERT (finding_id, schema_name, table_name, column_name, row_key, category, "
        "severity, confidence, detector, masked_excerpt, start_offset, end_offset, found_by, "
        "first_seen, last_seen) VALUES (s.finding_id, s.schema_name, s.table_name, "
        "s.column_name, s.row_key, s.category, s.severity, s.confidence, s.detector, "
        "s.masked_excerpt, s.start_offset, s.end_offset, s.found_by, s.first_seen, s.last_seen)"
    )
    assert classify_sql("clinipipe", "raw", "encounters", 1000, True, SF) == [
        "CALL SYSTEM$CLASSIFY('CLINIPIPE.RAW.ENCOUNTERS', {'sample_count': 1000, 'auto_tag': "
        "true})",
        "SELECT SYSTEM$GET_CLASSIFICATION_RESULT('CLINIPIPE.RAW.ENCOUNTERS')",
    ]
    # The target runs exactly those and merges the recorded result.
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://nobody@127.0.0.1:1/none")
    target = SnowflakeTarget(load_spec(write_spec(tmp_path, snowflake_text())))
    ran: list[str] = []
    monkeypatch.setattr(target, "_execute", lambda s: ran.append(s.sql))
    monkeypatch.setattr(target, "query", lambda sql: ran.append(sql) or [(json.dumps(RECORDED),)])
    found = target.phi_classify("RAW", "encounters", ["account_number"])
    assert ran == classify_sql("CLINIPIPE", "RAW", "encounters", 1000, True, SF)
    assert [f.column for f in found] == ["department", "note"]


# --- row keys, stage 1 on Arrow, severities ------------------------------------------------------


def test_row_keys_plain_and_pseudonymized() -> None:
    rows = pa.table({"a": ["1", None], "b": ["x", "y"]})
    assert row_keys(rows, ["a", "b"], pseudonymize=False, hmac_key=None) == [
        "a=1, b=x", "a=NULL, b=y",
    ]  # fmt: skip
    keyed = row_keys(rows, ["a"], pseudonymize=True, hmac_key=b"k")
    assert keyed == [pseudonym(b"k", "a=1"), pseudonym(b"k", "a=NULL")]
    assert keyed[0].startswith("hmac:") and len(keyed[0]) == 29 and "1" not in keyed[0][5:6]
    assert pseudonym(b"other", "a=1") != keyed[0]  # keyed: not a plain hash
    with pytest.raises(ScanKeyError, match="set MY_KEY"):
        row_keys(rows, ["a"], pseudonymize=True, hmac_key=None, hmac_key_env="MY_KEY")


def test_candidates_in_a_cdc_batch_skip_deletes_and_non_matching_cells() -> None:
    changes = pa.table({
        "_op": ["I", "U", "D", "I", "T"], "_seq": [1, 2, 3, 4, 5],
        "id": ["1", "2", "3", "4", None],
        "note": ["SSN 123-45-6789", "fine", "SSN 987-65-4321", None, None],
        "other": ["x", "call 555-0100", "y", "z", None],
    })  # fmt: skip
    found = candidates_in_batch(changes, ["note", "other", "missing"], r"\d{3}-\d{2}|\d{3}-\d{4}")
    assert found["__rows__"].to_pylist() == [0, 1]
    assert found["note"].to_pylist() == ["SSN 123-45-6789", None]
    assert found["other"].to_pylist() == [None, "call 555-0100"]
    assert candidates_in_batch(changes, ["note"], "nothing like this") == {}


def test_severity_threshold_dedupe_and_text_types() -> None:
    low = Finding("raw", "t", "c", "k=1", "DATE", "low", 0.5, "d", "[DATE]")
    high = Finding("raw", "t", "c", "k=2", "SSN", "high", 0.9, "s", "[SSN]", 0, 11)
    assert reaches([low, high], "high") and not reaches([low], "medium") and reaches([low], "low")
    assert len(dedupe([high, high, low])) == 2
    moved = Finding(*[*high.__dict__.values()][:9], 1, 11)
    assert high.finding_id != moved.finding_id  # another span in the same cell
    assert all(map(is_text_like, ["VARCHAR", "TEXT", "JSON", "VARCHAR[]", "VARIANT"]))
    assert not any(map(is_text_like, ["BIGINT", "DATE", "TIMESTAMP WITH TIME ZONE", "NUMBER"]))
