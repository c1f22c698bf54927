"""The pipeline spec: interpolation, validation, and file:line:col errors for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clinipipe.spec import SpecError, load_spec, parse_spec
from clinipipe.spec.types import Duration
from tests.helpers import cli, example_text, snowflake_text, write_spec

DSN = "postgresql://clinipipe:s3cret-pw@db.example:5432/ehr"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", DSN)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    monkeypatch.delenv("CLINIPIPE_CONFIG", raising=False)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "clinipipe.yaml", Path("/nonexistent/clinipipe.yaml"))
    return [str(p) for p in info.value.problems]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_example_spec_is_valid_and_interpolated() -> None:
    loaded = parse_spec(example_text(), "clinipipe.yaml", Path("/x/clinipipe.yaml"))
    spec = loaded.spec
    assert spec.source.dsn == DSN
    assert spec.target.type == "duckdb"
    assert spec.target.path == "warehouse.duckdb"  # ${CLINIPIPE_DUCKDB_PATH:-warehouse.duckdb}
    assert [t.name for t in spec.source.tables][:2] == ["patients", "providers"]
    assert spec.source.tables[0].columns["ssn"] == "ssn"
    assert spec.warehouses.initialization.size == "X6LARGE"
    assert spec.dynamic_tables[0].target_lag == Duration(60.0, "1 minute")
    assert loaded.resolve("warehouse.duckdb") == Path("/x/warehouse.duckdb")


def test_env_default_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLINIPIPE_SOURCE_DSN")
    (tmp_path / ".env").write_text("CLINIPIPE_SOURCE_DSN=postgresql://from-dotenv@h/db\n")
    write_spec(tmp_path, example_text())
    loaded = load_spec(tmp_path / "clinipipe.yaml")
    assert loaded.spec.source.dsn == "postgresql://from-dotenv@h/db"
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://from-env@h/db")
    monkeypatch.setenv("CLINIPIPE_DUCKDB_PATH", "elsewhere.duckdb")
    loaded = load_spec(tmp_path / "clinipipe.yaml")
    assert loaded.spec.source.dsn == "postgresql://from-env@h/db"  # the environment wins
    assert loaded.spec.target.path == "elsewhere.duckdb"


def test_config_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_spec(tmp_path, example_text())
    monkeypatch.chdir(tmp_path)
    assert load_spec().path == tmp_path / "clinipipe.yaml"
    other = tmp_path / "other.yaml"
    other.write_text(example_text(**{"name: general_hospital": "name: other"}))
    monkeypatch.setenv("CLINIPIPE_CONFIG", str(other))
    assert load_spec().spec.name == "other"
    assert load_spec(tmp_path / "clinipipe.yaml").spec.name == "general_hospital"


# Each case: (what is wrong, replacement in the example spec, marker of the reported line,
# a fragment of the message).
BAD_INPUTS = [
    ("unknown key", ("  publication:", "  publicaton:"), "publicaton:",
     "did you mean 'publication'"),
    ("wrong type", ("X6LARGE, auto_suspend: 60}", "X6LARGE, auto_suspend: soon}"), "soon}",
     "integer"),
    ("bad size", ("size: X6LARGE", "size: XXL"), "size: XXL", "did you mean 'XXLARGE'"),
    ("bad identifier", ("- name: labs", "- name: lab-results"), "lab-results",
     "plain SQL identifier"),
    ("no primary key", ("      primary_key: [lab_id]\n", ""), "- name: labs", "no primary key"),
    ("empty primary key", ("primary_key: [lab_id]", "primary_key: []"), "primary_key: []",
     "no primary key"),
    ("unset variable", ("${CLINIPIPE_SOURCE_DSN}", "${NOT_SET_ANYWHERE_42}"),
     "NOT_SET_ANYWHERE_42", "NOT_SET_ANYWHERE_42 is not set"),
    ("bad PHI class", ("ssn: ssn", "ssn: social"), "ssn: social", "unknown PHI class"),
    ("bad duration", ("target_lag: 5 minutes", "target_lag: soonish"), "soonish", "not a duration"),
    ("unknown target type", ("type: duckdb", "type: bigquery"), "type: bigquery",
     "unknown target type"),
    ("bad refresh mode", ("refresh_mode: full", "refresh_mode: sometimes"), "sometimes",
     "'auto', 'full' or 'incremental'"),
    ("duplicate key", ("  slot: clinipipe_slot", "  slot: clinipipe_slot\n  slot: again"),
     "slot: again", "duplicate key 'slot'"),
    ("YAML syntax", ("  slot: clinipipe_slot", "  slot: a: b"), "slot: a: b",
     "YAML syntax error: mapping values are not allowed here"),
    ("secret in spec", ("path: ${CLINIPIPE_DUCKDB_PATH:-warehouse.duckdb}",
                        "path: x.duckdb\n  password: hunter2"), "password: hunter2",
     "secrets never go in the spec"),
    ("wrong version", ("version: 1", "version: 2"), "version: 2", "version"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old_new", "marker", "fragment"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_reports_file_line_col(
    old_new: tuple[str, str], marker: str, fragment: str
) -> None:
    text = example_text(**{old_new[0]: old_new[1]})
    problems = problems_of(text)
    assert len(problems) == 1, problems
    match = re.match(r"^clinipipe\.yaml:(\d+):(\d+): (.+)$", problems[0])
    assert match, problems[0]
    assert int(match[1]) == line_of(text, marker), problems[0]
    assert int(match[2]) >= 1
    assert fragment in match[3]
    assert "hunter2" not in problems[0]


def test_yaml_error_names_where_the_construct_started() -> None:
    text = example_text(**{"  slot: clinipipe_slot": "  slot: [unclosed"})
    [problem] = problems_of(text)
    assert f"flow sequence at line {line_of(text, '[unclosed')}" in problem


def test_snowflake_target_lag_minimum() -> None:
    text = snowflake_text().replace("target_lag: 5 minutes", "target_lag: 30 seconds")
    [problem] = problems_of(text)
    assert f"clinipipe.yaml:{line_of(text, '30 seconds')}:" in problem
    assert "below Snowflake's minimum of 60 seconds" in problem
    # The same lag is fine on DuckDB.
    parse_spec(example_text(**{"target_lag: 5 minutes": "target_lag: 30 seconds"}), "c.yaml")


def test_all_problems_reported_at_once() -> None:
    text = example_text(
        **{
            "  publication:": "  publicaton:",
            "size: X6LARGE": "size: XXL",
            "- name: labs": "- name: lab-results",
            "ssn: ssn": "ssn: social",
        }
    )
    problems = problems_of(text)
    assert len(problems) == 4
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == sorted(lines)


def test_literal_password_in_dsn_is_refused_and_never_echoed() -> None:
    text = example_text(**{"${CLINIPIPE_SOURCE_DSN}": "postgresql://u:hunter2@h/db"})
    [problem] = problems_of(text)
    assert "password written into the spec" in problem
    assert "hunter2" not in problem


def test_cross_references() -> None:
    text = example_text(**{"from: patient_summary": "from: no_such_table"})
    [problem] = problems_of(text)
    assert "'no_such_table' is not a dynamic table" in problem
    assert f":{line_of(text, 'no_such_table')}:" in problem


def test_validate_cli_exit_codes_and_masking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, example_text())
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 0
    assert "is valid" in out
    assert "s3cret-pw" not in out + err and "****" in out
    code, out, _ = cli(capsys, "-c", str(spec), "validate", "--json")
    assert code == 0 and '"valid": true' in out

    write_spec(tmp_path, example_text(**{"size: X6LARGE": "size: XXL"}))
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 2
    assert "clinipipe.yaml:" in err and "XXL" in err
    assert "Traceback" not in out + err
    code, out, _ = cli(capsys, "-c", str(spec), "validate", "--json")
    assert code == 2 and '"valid": false' in out


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "-c", str(tmp_path / "clinipipe.yaml"), "validate")
    assert code == 2
    assert "spec file not found" in err and "clinipipe init" in err
