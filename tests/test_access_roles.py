"""Roles from the spec (issue 16, item 1): `access.roles` validated with file:line:col errors, and
rendered for Snowflake as roles, grants and masking policies by PHI class
(templates/snowflake/10-access-control.sql.j2).

The rendered SQL is golden-tested (CLINIPIPE_UPDATE_GOLDEN=1 rewrites tests/golden/
snowflake-access/). No fakesnow run: fakesnow can execute none of CREATE ROLE, GRANT, CREATE TAG or
MASKING POLICY (test_snowflake_fakesnow.FAKESNOW_CANNOT skips them), so the golden file, the
grammar check and the evaluation of every masking policy body below are the test: each body is
parsed with sqlglot's Snowflake grammar and evaluated in DuckDB for each role and tag value, with
IS_ROLE_IN_SESSION and SYSTEM$GET_TAG_ON_CURRENT_COLUMN replaced by what a session would return.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.spec import load_spec, parse_spec
from clinipipe.spec.errors import SpecError
from clinipipe.sql import render
from clinipipe.targets import dialect_of
from tests.helpers import cli, example_text, execute, snowflake_text
from tests.test_snowflake_sql import DOCS, DOCUMENTED, _code, _unparsed

GOLDEN = Path(__file__).parent / "golden" / "snowflake-access"
UPDATE = os.environ.get("CLINIPIPE_UPDATE_GOLDEN") == "1"

ACCESS = """
access:
  roles:
    pipeline_admin:
      deploy: true
      warehouses: [incremental]
      phi_visible: all
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
    billing:
      role: BILLING
      read: [raw]
      warehouses: [incremental]
      phi_visible: [health_plan_id, account_number]
    analyst:
      role: ANALYST
      read: [raw]
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


_ID = r'"[A-Z0-9_]+"'
_QID = rf"{_ID}(\.{_ID})*"
_STR = r"'(?:[^']|'')*'"
MASKING_DOCUMENTED: list[tuple[str, str, re.Pattern[str]]] = [
    # (what, where it is documented, the documented grammar as a regex); sqlglot reads these
    # as Commands. The policy bodies are parsed and evaluated on their own (below).
    ("CREATE MASKING POLICY", DOCS + "sql-reference/sql/create-masking-policy",
     re.compile(rf"CREATE MASKING POLICY IF NOT EXISTS {_QID} AS \(val (?P<t>[A-Z_]+)\) "
                r"RETURNS (?P=t) -> CAST\(NULL AS (?P=t)\)")),
    ("ALTER MASKING POLICY ... SET BODY", DOCS + "sql-reference/sql/alter-masking-policy",
     re.compile(rf"ALTER MASKING POLICY {_QID} SET BODY ->\s+(?P<body>CASE\s.+\sEND)", re.S)),
    ("ALTER TAG ... SET MASKING POLICY ... FORCE",
     DOCS + "sql-reference/sql/alter-tag; " + DOCS + "user-guide/tag-based-masking-policies",
     re.compile(rf"ALTER TAG {_QID} SET(\s+MASKING POLICY {_QID},)*\s+MASKING POLICY {_QID}"
                r"\s+FORCE")),
    ("ALTER SCHEMA ... SET TAG", DOCS + "sql-reference/sql/alter-schema",
     re.compile(rf"ALTER SCHEMA {_QID} SET TAG {_QID} = {_STR}")),
    ("ALTER TABLE ... MODIFY COLUMN ... SET TAG", DOCS + "sql-reference/sql/alter-table-column",
     re.compile(rf"ALTER TABLE {_QID} MODIFY COLUMN {_ID} SET TAG {_QID} = {_STR}")),
]  # fmt: skip


def _access_file(text: str):  # type: ignore[no-untyped-def]
    return next(f for f in _render(text) if f.name.startswith("10-"))


def test_every_access_statement_parses_or_is_documented() -> None:
    statements = [_code(st.sql) for st in _access_file(snowflake_text() + ACCESS).statements]
    assert len(statements) > 50
    forms = [form for _, _, form in DOCUMENTED + MASKING_DOCUMENTED]
    for sql in statements:
        if _unparsed(sql):
            assert any(form.fullmatch(sql) for form in forms), sql
        if sql.startswith("CREATE TAG"):  # sqlglot reads this one
            assert not _unparsed(sql)
    bodies = [m["body"] for sql in statements if (m := MASKING_DOCUMENTED[1][2].fullmatch(sql))]
    assert len(bodies) == len(MASKING_TYPES)
    for body in bodies:
        assert not _unparsed(f"SELECT {body}"), body


# --- masking policies: what each role sees -------------------------------------------------------

MASKING_TYPES = (
    "VARCHAR", "NUMBER", "FLOAT", "BOOLEAN", "DATE", "TIME", "TIMESTAMP_NTZ", "TIMESTAMP_TZ",
    "TIMESTAMP_LTZ", "BINARY", "VARIANT", "OBJECT", "ARRAY",
)  # fmt: skip
UNTAGGED = None  # SYSTEM$GET_TAG_ON_CURRENT_COLUMN returns NULL for a column without the tag


def _policies(text: str) -> dict[str, str]:
    """Data type -> the body (a CASE expression) of its masking policy in 10."""
    out = {}
    for st in _access_file(text).statements:
        sql = _code(st.sql)
        if m := MASKING_DOCUMENTED[1][2].fullmatch(sql):
            out[sql.split('"PHI_MASK_')[1].split('"')[0]] = m["body"]
    return out


def _sees(body: str, session: set[str], tag: str | None) -> bool:
    """Whether a session holding `session` roles sees a value of a column whose PHI_CLASS tag is
    `tag`: the body parsed with the Snowflake grammar, the two context functions replaced by what
    they return in that session, evaluated by DuckDB."""
    tree = sqlglot.parse_one(f"SELECT {body}", read="snowflake")

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.upper() == "IS_ROLE_IN_SESSION":
            return exp.Boolean(this=node.expressions[0].this in session)
        if (
            isinstance(node, exp.Anonymous)
            and node.name.upper() == "SYSTEM$GET_TAG_ON_CURRENT_COLUMN"
        ):
            assert node.expressions[0].this == '"CLINIPIPE"."_CLINIPIPE"."PHI_CLASS"'
            return exp.Null() if tag is None else exp.Literal.string(tag)
        if isinstance(node, exp.Column) and node.name == "val":
            return exp.Literal.string("the value")
        if isinstance(node, exp.Cast) and isinstance(node.this, exp.Null):
            return exp.Null()
        return node

    sql = tree.transform(replace).sql("duckdb")
    assert "IS_ROLE_IN_SESSION" not in sql.upper() and "SYSTEM$" not in sql.upper(), sql
    result = duckdb.sql(sql).fetchone()
    assert result is not None and result[0] in ("the value", None), result
    return result[0] == "the value"


def test_masking_policies_show_phi_by_class_and_mask_it_for_everyone_else() -> None:
    policies = _policies(snowflake_text() + ACCESS)
    assert sorted(policies) == sorted(MASKING_TYPES)
    cases = [
        # (roles in the session, tag value, sees the value)
        ({"CLINIPIPE_ROLE"}, "ssn", True),  # the pipeline role replicates, refreshes, redacts
        ({"CLINIPIPE_ROLE"}, "unclassified", True),
        ({"CLINICIAN"}, "name", True),  # phi_visible: all
        ({"CLINICIAN"}, UNTAGGED, True),
        ({"CLINIPIPE_ROLE_TRANSFORM"}, "free_text", True),
        ({"BILLING"}, "health_plan_id", True),  # its classes
        ({"BILLING"}, "account_number", True),
        ({"BILLING"}, "name", False),  # not its classes: the mask
        ({"BILLING"}, "unclassified", False),  # a raw column the spec does not list
        ({"BILLING"}, UNTAGGED, False),  # a column that lost its tag (table recreated)
        ({"BILLING"}, "none", True),  # classified none or released
        ({"ANALYST"}, "name", False),  # no phi_visible: only 'none' columns
        ({"ANALYST"}, "date", False),
        ({"ANALYST"}, "none", True),
        ({"RESEARCHER"}, "mrn", False),
        ({"CLINIPIPE_ROLE_AUDITOR"}, "ssn", False),
        ({"PUBLIC"}, "name", False),  # any role the spec does not name
        (set(), "health_plan_id", False),
        ({"ANALYST", "BILLING"}, "account_number", True),  # secondary roles add up
        ({"BILLING"}, "HEALTH_PLAN_ID", False),  # tag values are compared exactly
        ({"billing"}, "health_plan_id", False),  # role names as Snowflake stores them
    ]
    for data_type, body in policies.items():
        for session, tag, sees in cases:
            assert _sees(body, session, tag) is sees, (data_type, session, tag)


def test_every_column_type_clinipipe_creates_has_a_policy() -> None:
    """Tag-based masking matches a policy by the column's data type: a type without one would
    leave its PHI columns unmasked, so every type `snowflake_type` can return has one."""
    from clinipipe.source.catalog import ColumnType
    from clinipipe.targets.snowflake import types

    produced = set(types._SIMPLE.values()) | {
        types.snowflake_type(ColumnType("decimal", "numeric(10,2)", precision=10, scale=2))
    }
    bases = {t.split("(")[0] for t in produced}
    assert {"NUMBER", "VARCHAR", "TIMESTAMP_TZ", "OBJECT"} <= bases
    assert bases <= set(MASKING_TYPES), bases - set(MASKING_TYPES)


def test_raw_columns_are_tagged_with_their_class_and_the_schema_fails_closed() -> None:
    text = _access_file(snowflake_text() + ACCESS).text
    tag = '"CLINIPIPE"."_CLINIPIPE"."PHI_CLASS"'
    raw = '"CLINIPIPE"."RAW"'
    assert f"ALTER SCHEMA {raw} SET TAG {tag} = 'unclassified';" in text
    assert f'ALTER TABLE {raw}."PATIENTS" MODIFY COLUMN "SSN" SET TAG {tag} = \'ssn\';' in text
    # Released columns are not PHI: tagged none (visible to every role reading raw).
    assert f'ALTER TABLE {raw}."LABS" MODIFY COLUMN "TEST_NAME" SET TAG {tag} = \'none\';' in text
    tagged = re.findall(
        r'ALTER TABLE "CLINIPIPE"\."RAW"\."(\w+)" MODIFY COLUMN "(\w+)" SET TAG', text
    )
    loaded = parse_spec(snowflake_text(), "clinipipe.yaml", Path("/x/clinipipe.yaml"))
    expected = {
        (t.name.upper(), c.upper()) for t in loaded.spec.source.tables
        for c in [*t.columns, *t.release]
    }  # fmt: skip
    assert set(tagged) == expected and len(tagged) == len(expected)
    for data_type in MASKING_TYPES:
        assert f'MASKING POLICY "CLINIPIPE"."_CLINIPIPE"."PHI_MASK_{data_type}"' in text
    # Derived and serving tables carry no tag: validate keeps non-`all` roles out of them.
    assert '"DERIVED"' not in text.split("-- Masking of PHI")[1]
    assert '"SERVING"' not in text.split("-- Masking of PHI")[1]


def test_a_role_reading_raw_without_phi_visible_is_now_valid() -> None:
    """Masked by class: reading raw no longer needs `phi_visible: all` (it did before masking)."""
    text = snowflake_text() + ACCESS.replace("read: [research]", "read: [research, raw]")
    policies = _policies(text)
    assert not _sees(policies["VARCHAR"], {"RESEARCHER"}, "name")
    assert _sees(policies["VARCHAR"], {"RESEARCHER"}, "none")


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
            "read: [research, derived]\n      phi_visible: [name]",
            "[name]",
            "persona 'researcher' reads derived tables, which carry no masking policy",
        ),
        (
            "read: [research]",
            "read: [research]\n      phi_visible: [ip_address]",
            "[ip_address]",
            "no column of this spec has PHI class 'ip_address'",
        ),
        (
            "read: [research]",
            "read: [research]\n      phi_visible: [none]",
            "[none]",
            "'none' is not a PHI class",
        ),
        (
            "      deploy: true\n      warehouses: [incremental]\n      phi_visible: all\n",
            "      deploy: true\n      warehouses: [incremental]\n",
            "deploy: true",
            "is granted the pipeline role (`deploy: true`), which sees every PHI column",
        ),
        (
            "read: [research]",
            'read: [research]\n      phi_visible: ["name\') OR TRUE --"]',
            "OR TRUE",
            "unknown PHI class",
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
