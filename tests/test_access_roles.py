"""Roles from the spec (issue 16, item 1): `access.roles` validated with file:line:col errors, and
rendered for Snowflake as roles and grants (templates/snowflake/10-access-control.sql.j2).

The rendered SQL is golden-tested (CLINIPIPE_UPDATE_GOLDEN=1 rewrites tests/golden/
snowflake-access/). No fakesnow run: every statement of 10 is CREATE ROLE or GRANT, which fakesnow
cannot execute (test_snowflake_fakesnow.FAKESNOW_CANNOT skips them), so the golden file and the
grammar check below are the test. Masking and row access policies are not rendered yet:
validation refuses a spec that would need them (a role reading PHI tables without saying
`phi_visible: all`, or a per-class visibility list).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.spec import load_spec, parse_spec
from clinipipe.spec.errors import SpecError
from clinipipe.sql import render
from clinipipe.targets import dialect_of
from tests.helpers import cli, example_text, execute, snowflake_text
from tests.test_snowflake_sql import DOCUMENTED, _code, _unparsed

GOLDEN = Path(__file__).parent / "golden" / "snowflake-access"
UPDATE = os.environ.get("CLINIPIPE_UPDATE_GOLDEN") == "1"

ACCESS = """
access:
  roles:
    pipeline_admin:
      deploy: true
      warehouses: [incremental]
    ingest:
      write: [raw]
      warehouses: [incremental]
      phi_visible: all
    transform:
      read: [raw]
      write: [derived]
      warehouses: [incremental, initialization]
      phi_visible: all
    clinician:
      role: CLINICIAN
      read: [serving]
      tables: [derived.patient_summary]
      warehouses: [interactive]
      phi_visible: all
    researcher:
      role: RESEARCHER
      read: [research]
      warehouses: [incremental]
    auditor:
      read: [control]
      warehouses: [incremental]
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:5432/ehr")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)


def _render(text: str, dialect: str = "snowflake"):  # type: ignore[no-untyped-def]
    return render(
        parse_spec(text, "clinipipe.yaml", Path("/x/clinipipe.yaml")), dialect_of(dialect)
    )


def _problems(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "clinipipe.yaml", Path("/x/clinipipe.yaml"))
    return str(caught.value)


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_golden_roles_and_grants() -> None:
    files = {f.name: f for f in _render(snowflake_text() + ACCESS)}
    access = files["10-access-control.sql"]
    assert access.runs_on == "target" and access.requires == {"raw_tables"}
    GOLDEN.mkdir(parents=True, exist_ok=True)
    path = GOLDEN / access.name
    if UPDATE:
        path.write_text(access.text)
    assert access.text == path.read_text(), f"{path.name} differs from golden"
    text = access.text
    assert 'CREATE ROLE IF NOT EXISTS "CLINICIAN";' in text
    assert 'GRANT ROLE "CLINIPIPE_ROLE" TO ROLE "CLINIPIPE_ROLE_PIPELINE_ADMIN";' in text
    for kind in ("TABLES", "DYNAMIC TABLES"):
        assert (
            f'GRANT SELECT ON FUTURE {kind} IN SCHEMA "CLINIPIPE"."RESEARCH" TO ROLE "RESEARCHER";'
        ) in text
    assert 'GRANT USAGE ON WAREHOUSE "CLINIPIPE_SERVE_WH" TO ROLE "CLINICIAN";' in text
    # The researcher is granted the research schema and nothing else.
    researcher = [ln for ln in text.splitlines() if ln.endswith('TO ROLE "RESEARCHER";')]
    schemas = {ln.split(" IN SCHEMA ")[1].split()[0] for ln in researcher if " IN SCHEMA " in ln}
    assert schemas == {'"CLINIPIPE"."RESEARCH"'}
    assert not [ln for ln in researcher if '"RAW"' in ln or '"SERVING"' in ln]
    # Only 10 depends on `access`: every other file renders as without it.
    without = {f.name: f.text for f in _render(snowflake_text())}
    assert {n: f.text for n, f in files.items() if n != access.name} == {
        n: t for n, t in without.items() if n != access.name
    }


def test_absent_access_renders_nothing_to_run() -> None:
    """Absent `access:` is today's behaviour: 10 is reference-only and holds no statement."""
    for dialect in ("snowflake", "duckdb"):
        access = next(f for f in _render(snowflake_text(), dialect) if f.name.startswith("10-"))
        assert access.runs_on == "none" and access.statements == []
    duck = next(f for f in _render(example_text() + ACCESS, "duckdb") if f.name.startswith("10-"))
    assert duck.runs_on == "none" and duck.statements == []


def test_every_access_statement_parses_or_is_documented() -> None:
    access = next(f for f in _render(snowflake_text() + ACCESS) if f.name.startswith("10-"))
    statements = [_code(st.sql) for st in access.statements]
    assert len(statements) > 50
    for sql in statements:
        if _unparsed(sql):
            assert any(form.fullmatch(sql) for _, _, form in DOCUMENTED), sql


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        (
            "tables: [derived.patient_summary]",
            "tables: [derived.patient_sumary]",
            "derived.patient_sumary",
            "'patient_sumary' is not a derived table of this spec "
            "(did you mean 'patient_summary'?)",
        ),
        (
            "tables: [derived.patient_summary]",
            "tables: [elsewhere.patient_summary]",
            "elsewhere.patient_summary",
            "is not <schema>.<table>",
        ),
        ("role: CLINICIAN", "role: CLINIPIPE_ROLE", "CLINIPIPE_ROLE", "is the pipeline role"),
        (
            "role: CLINICIAN",
            "role: RESEARCHER",
            "RESEARCHER\n      read: [research]",
            "role RESEARCHER is also the role of persona 'clinician'",
        ),
        ("read: [research]", "read: [serving]", "role: RESEARCHER", "carry no masking policy"),
        (
            "read: [research]",
            "read: [research]\n      phi_visible: [name]",
            "[name]",
            "per-class PHI visibility needs masking policies",
        ),
        ("read: [control]", "read: [audit]", "[audit]", "control"),
        (
            "read: [research]",
            "read: [research]\n      phi_visible: [nme]",
            "[nme]",
            "unknown PHI class 'nme'",
        ),
    ],
)
def test_access_problems_point_at_the_spec(old: str, new: str, needle: str, message: str) -> None:
    text = snowflake_text() + ACCESS.replace(old, new)
    problems = _problems(text)
    assert message in problems, problems
    assert f"clinipipe.yaml:{_line_of(text, needle)}:" in problems, problems


# --- DuckDB: the access boundary is the file -----------------------------------------------------

KEY = "access-export-key-0123456789-abcdefghij"
PLANTED = {"last_name": "Quixwalderon", "email": "quixwalderon.planted@example.org"}


def test_research_export_is_a_file_with_only_research_tables_and_no_phi(
    hospital_project: Path,
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`redact --export FILE` writes the research schema alone: a file a researcher can be
    given. The planted PHI values are in the warehouse and nowhere in the exported file, not
    even in its raw bytes."""
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", KEY)
    sets = ", ".join(f"{c} = '{v}'" for c, v in PLANTED.items())
    execute(
        pg_dsn,
        f"UPDATE patients SET {sets} WHERE patient_id IN "
        "(SELECT patient_id FROM patients ORDER BY patient_id LIMIT 5)",
    )
    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    export = tmp_path / "research-only.duckdb"
    code, out, err = cli(
        capsys, "-c", str(hospital_project), "redact", "--policy", "safe_harbor",
        "--export", str(export), "--json",
    )  # fmt: skip
    assert code == 0, err
    exported = json.loads(out)["export"]["tables"]
    warehouse = loaded.directory / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        research = {
            t for (t,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'research'"
            ).fetchall()
        }  # fmt: skip
        planted = con.execute(
            "SELECT count(*) FROM raw.patients WHERE last_name = ?", [PLANTED["last_name"]]
        ).fetchone()
    assert planted == (5,)  # the warehouse holds the PHI
    assert PLANTED["email"].encode() in warehouse.read_bytes()  # and the byte search finds it
    assert len(research) > 5 and set(exported) == research
    with duckdb.connect(str(export), read_only=True) as con:
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() ORDER BY ALL"
        ).fetchall()
        assert {s for s, _ in tables} == {"research"}
        assert {t for _, t in tables} == research
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone() == (
            0,
        )
        cells: list[str] = []
        for _, table in tables:
            rows = con.execute(
                f'SELECT CAST(COLUMNS(*) AS VARCHAR) FROM research."{table}"'
            ).fetchall()
            cells += [str(v) for row in rows for v in row]
        assert len(cells) > 10_000
    for value in PLANTED.values():
        assert not [c for c in cells if value.lower() in c.lower()], value
        assert value.encode() not in export.read_bytes(), value
    assert not export.with_name(export.name + ".wal").exists()
    assert not list(tmp_path.glob(".research-only.duckdb.*"))  # no temporary file left


def test_export_refused_on_snowflake_and_for_the_warehouse_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "clinipipe.yaml"
    spec.write_text(snowflake_text())
    code, _, err = cli(
        capsys, "-c", str(spec), "redact", "--policy", "safe_harbor", "--export", "x.duckdb"
    )
    assert code == 2 and "needs a DuckDB target" in err and "Traceback" not in err
