"""`clinipipe scan` on Snowflake, executed through fakesnow: the REGEXP_LIKE stage 1 (with the
RE2 prefilter rewritten for Snowflake) and the findings MERGE run; SYSTEM$CLASSIFY does not exist
there, so the scan must report that and go on (its SQL and the merge of its results are pinned in
`tests/test_scan_units.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinipipe.pipeline.backfill import run_backfill
from clinipipe.pipeline.scan import ScanOptions, run_scan
from clinipipe.spec import load_spec
from clinipipe.targets.snowflake import SnowflakeTarget
from tests.helpers import execute
from tests.test_snowflake_pipeline import Fake, fake, project  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def test_scan_on_snowflake_finds_a_planted_leak_and_upserts(
    project: Path,  # noqa: F811
    pg_dsn: str,
    fake: Fake,  # noqa: F811
) -> None:
    ssn, phone = "287-65-4329", "(617) 432-8871"
    execute(
        pg_dsn,
        f"UPDATE encounters SET department = 'Cardiology; pt SSN {ssn}' WHERE encounter_id = 3",
        f"UPDATE labs SET test_name = 'CBC - call back at {phone}' WHERE lab_id = 5",
    )
    loaded = load_spec(project)
    run_backfill(loaded)
    options = ScanOptions(tables=("encounters", "labs"), sample=None)
    report = run_scan(loaded, options)
    where = {(f.schema, f.table, f.column, f.row_key, f.category) for f in report.findings}
    assert ("RAW", "encounters", "department", "encounter_id=3", "SSN") in where
    assert ("RAW", "labs", "test_name", "lab_id=5", "PHONE") in where
    # fakesnow has no SYSTEM$CLASSIFY: said, not fatal.
    assert any("SYSTEM$CLASSIFY of RAW.encounters" in n for n in report.notes)
    with SnowflakeTarget(loaded) as target:
        rows = target.query(
            "SELECT table_name, column_name, row_key, category, masked_excerpt, first_seen, "
            "last_seen FROM CLINIPIPE._CLINIPIPE.PHI_FINDINGS ORDER BY 1, 2, 3, 4, 5"
        )
    assert len(rows) == len(report.findings)
    assert not any(ssn in str(r) or phone in str(r) for r in rows)
    again = run_scan(loaded, options)
    assert len(again.findings) == len(report.findings)
    with SnowflakeTarget(loaded) as target:
        after = target.query(
            "SELECT table_name, column_name, row_key, category, masked_excerpt, first_seen, "
            "last_seen FROM CLINIPIPE._CLINIPIPE.PHI_FINDINGS ORDER BY 1, 2, 3, 4, 5"
        )
    assert len(after) == len(rows)  # upserted, not appended
    assert all(a[5] == r[5] and a[6] >= r[6] for a, r in zip(after, rows, strict=True))
    sampled = run_scan(loaded, ScanOptions(tables=("labs",), sample=5))  # SAMPLE ROW (5 ROWS)
    assert [t.table for t in sampled.tables] == ["labs"] and sampled.tables[0].candidate_rows <= 5
