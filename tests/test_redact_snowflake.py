"""`clinipipe redact` on Snowflake: the SQL is pinned by golden files (fakesnow cannot call the
Python UDF, HASH_AGG, AI_REDACT or SPLIT_TEXT_RECURSIVE_CHARACTER); the audit bookkeeping runs
through fakesnow in test_audit.py. CLINIPIPE_UPDATE_GOLDEN=1 rewrites the golden files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from clinipipe.phi.safe_harbor import POLICIES, plan_table
from clinipipe.pipeline.redact import RedactError, RedactOptions, redact
from clinipipe.spec import LoadedSpec, parse_spec
from clinipipe.targets.snowflake import SnowflakeDialect
from clinipipe.targets.snowflake.redact import (
    AI_REDACT_CHUNK_CHARACTERS,
    MRN_PATTERN,
    SnowflakeRedactSql,
)
from tests.helpers import REPO, cli, snowflake_text, write_spec

GOLDEN = Path(__file__).parent / "golden" / "redact"
UPDATE = os.environ.get("CLINIPIPE_UPDATE_GOLDEN") == "1"
SNOWFLAKE_TYPES = {"bigint": "NUMBER", "date": "DATE", "timestamptz": "TIMESTAMP_TZ"}


def raw_columns() -> dict[str, list[tuple[str, str]]]:
    """The hospital's raw tables as Snowflake's information_schema reports them."""
    text = (REPO / "clinipipe/source/sql/hospital_schema.sql").read_text()
    tables: dict[str, list[tuple[str, str]]] = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", text, re.S):
        tables[name] = [
            (column, SNOWFLAKE_TYPES.get(pg_type, "NUMBER" if pg_type == "numeric" else "TEXT"))
            for column, pg_type in re.findall(r"^\s+(\w+)\s+([a-z]+)", body, re.M)
        ]
    return tables


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> LoadedSpec:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    return parse_spec(snowflake_text(), "clinipipe.yaml", Path("/x/clinipipe.yaml"))


def render_redaction(loaded: LoadedSpec, policy: str) -> str:
    sql = SnowflakeRedactSql(SnowflakeDialect(), database="CLINIPIPE")
    columns = raw_columns()
    parts = []
    for table in loaded.spec.source.tables:
        plan = plan_table(loaded.spec, table, policy, columns[table.name])
        raw = sql.qualify("RAW", table.name)
        body = (
            sql.ai_redact_sql(plan, raw, "'2026-03-01'")
            if plan.notes
            else sql.select_sql(plan, raw, "'2026-03-01'")
        )
        fingerprint = sql.fingerprint_sql(raw, [c for c, _ in columns[table.name]])
        parts.append(f"-- {table.name}\n{fingerprint};\n{body};\n")
    return "\n".join(parts)


@pytest.mark.parametrize("policy", POLICIES)
def test_golden_redaction_sql(loaded: LoadedSpec, policy: str) -> None:
    text = render_redaction(loaded, policy)
    path = GOLDEN / f"snowflake-{policy}.sql"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} differs from golden"


def test_snowflake_sql_uses_the_documented_functions(loaded: LoadedSpec) -> None:
    text = render_redaction(loaded, "safe_harbor")
    notes = text[text.index("-- clinical_notes") :]
    assert "AI_REDACT(REGEXP_REPLACE(CAST(s.value AS VARCHAR)" in notes  # MRN rule first
    assert (
        "SNOWFLAKE.CORTEX.SPLIT_TEXT_RECURSIVE_CHARACTER(n.\"NOTE_TEXT\", 'none', "
        f"{AI_REDACT_CHUNK_CHARACTERS}, 0)" in notes
    )
    assert "WITHIN GROUP (ORDER BY s.index)" in notes and "LATERAL FLATTEN(INPUT =>" in notes
    assert AI_REDACT_CHUNK_CHARACTERS * 4 < 4096 * 3  # well under the token limit, with output
    assert '"CLINIPIPE"."_CLINIPIPE"."PSEUDONYM"(CAST(t."PATIENT_ID" AS VARCHAR), ' in text
    assert "TO_BINARY(k.hmac_key, 'HEX')" in text and "HASH_AGG(" in text
    assert '"CLINIPIPE"."_CLINIPIPE"."SAFE_HARBOR_ZIP3"(CAST(t."ZIP" AS VARCHAR))' in text
    assert "CONVERT_TIMEZONE('UTC', t.\"ADMIT_TS\")" in text
    assert '"CLINIPIPE"."_CLINIPIPE"."AGE_YEARS"(CAST(t."BIRTH_DATE" AS DATE), DATE ' in text
    for dropped in ("FIRST_NAME", "SSN", "EMAIL", "STREET_ADDRESS", "PHONE"):
        assert f't."{dropped}"' not in text
    shifted = render_redaction(loaded, "shifted")
    assert "DATEADD('day', __clinipipe_shift.p, t.\"ADMIT_TS\")" in shifted
    assert 'SELECT DISTINCT "PATIENT_ID" AS v' in shifted  # one offset per patient


@pytest.mark.parametrize(
    "text",
    [
        "MRN: 00123456",
        "mrn 60596770",
        "MRN60596770",
        "Medical record number A12-3456",
        "MR# 998877",
    ],
)
def test_mrn_rule_matches_the_usual_spellings(text: str) -> None:
    # Snowflake's POSIX classes, read by Python's re for this check.
    pattern = MRN_PATTERN.replace("[[:space:]:#.]", r"[\s:#.]")
    assert re.fullmatch(pattern, text, re.IGNORECASE)


def test_notes_on_snowflake_need_ai_redact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", "k" * 32)
    spec = write_spec(tmp_path, snowflake_text())
    code, _, err = cli(capsys, "-c", str(spec), "redact", "--policy", "safe_harbor")
    assert code == 2 and "--ai-redact" in err and "clinical_notes.note_text" in err
    loaded = parse_spec(snowflake_text(), "clinipipe.yaml", spec)
    with pytest.raises(RedactError, match="--ai-redact"):
        redact(loaded, RedactOptions("safe_harbor", tables=["labs", "clinical_notes"]))
