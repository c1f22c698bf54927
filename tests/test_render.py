"""Rendering: golden files for both dialects, quoting discipline, atomic --out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clinipipe.spec import parse_spec
from clinipipe.sql import render, split_sql
from clinipipe.sql.render import RenderError, _environment
from clinipipe.targets import dialect_of
from tests.helpers import cli, example_text, write_spec

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CLINIPIPE_UPDATE_GOLDEN") == "1"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:5432/ehr")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)


@pytest.mark.parametrize("dialect", ["duckdb", "snowflake"])
def test_golden(dialect: str) -> None:
    """The rendered SQL of examples/hospital.yaml is pinned (CLINIPIPE_UPDATE_GOLDEN=1 rewrites)."""
    loaded = parse_spec(example_text(), "clinipipe.yaml", Path("/x/clinipipe.yaml"))
    files = render(loaded, dialect_of(dialect))
    assert [f.name[:3] for f in files] == [f"{n:02d}-" for n in range(1, 12)]
    folder = GOLDEN / dialect
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            (folder / f.name).write_text(f.text)
    assert sorted(p.name for p in folder.iterdir()) == [f.name for f in files]
    for f in files:
        assert f.text == (folder / f.name).read_text(), f"{dialect}/{f.name} differs from golden"


def test_snowflake_golden_uses_documented_syntax() -> None:
    text = {p.name: p.read_text() for p in (GOLDEN / "snowflake").iterdir()}
    dts = text["03-dynamic-tables.sql"]
    assert 'WAREHOUSE = "CLINIPIPE_CDC_WH"' in dts
    assert 'INITIALIZATION_WAREHOUSE = "CLINIPIPE_INIT_WH"' in dts
    assert "TARGET_LAG = '1 minutes'" in dts and "REFRESH_MODE = AUTO" in dts
    assert "WITH WAREHOUSE_SIZE = 'X6LARGE' AUTO_SUSPEND = 60" in text["01-setup-environment.sql"]
    assert 'CLUSTER BY ("PATIENT_ID")' in text["04-interactive-tables.sql"]
    assert "CREATE INTERACTIVE WAREHOUSE IF NOT EXISTS" in text["04-interactive-tables.sql"]
    assert "WITH RETENTION LOCK" in text["07-backups.sql"]
    assert "EXPIRE_AFTER_DAYS = 2555" in text["07-backups.sql"]
    assert "CLASSIFICATION_PROFILE" in text["05-phi-scanners.sql"]
    assert "'036', '059'" in text["06-redaction.sql"]


def test_statements_split_with_checks_and_dollar_quotes() -> None:
    loaded = parse_spec(example_text(), "clinipipe.yaml", Path("/x/clinipipe.yaml"))
    source = next(f for f in render(loaded, dialect_of("duckdb")) if f.runs_on == "source")
    statements = source.statements
    assert [s.check is not None for s in statements] == [True] * 6 + [False]
    assert statements[-1].sql.startswith("-- The publication") and "END\n$$;" in statements[-1].sql
    assert [s.number for s in split_sql("select 1; select ';'; -- x\n")] == [1, 2]


def test_values_are_quoted_never_pasted() -> None:
    evil = "x'); DROP TABLE patients; --"
    text = example_text(
        **{"comment: Encounters, last admission": f'comment: "{evil} Encounters, last admission'}
    ).replace("per patient\n", 'per patient"\n', 1)
    loaded = parse_spec(text, "clinipipe.yaml", Path("/x/clinipipe.yaml"))
    sf = next(f for f in render(loaded, dialect_of("snowflake")) if f.name.startswith("03"))
    assert "COMMENT = 'x''); DROP TABLE patients; --" in sf.text
    assert dialect_of("snowflake").quote_string("a\\'b") == "'a\\\\''b'"
    assert dialect_of("snowflake").quote_ident('we"ird') == '"WE""IRD"'
    assert dialect_of("duckdb").quote_ident('we"ird') == '"we""ird"'


def test_unquoted_value_is_a_render_error() -> None:
    env = _environment(dialect_of("duckdb"))
    with pytest.raises(RenderError, match="unquoted value"):
        env.from_string("select {{ name }}").render(name="patients")
    assert env.from_string("select {{ name | ident }}").render(name="p") == 'select "p"'


def test_render_cli_out_and_invalid_spec_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, example_text())
    code, _, _ = cli(
        capsys, "-c", str(spec), "render", "--target", "snowflake", "--out", str(tmp_path / "sql")
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "sql").iterdir())[0] == "01-setup-environment.sql"
    assert len(list((tmp_path / "sql").iterdir())) == 11

    write_spec(tmp_path, example_text(**{"size: X6LARGE": "size: XXL"}))
    code, _, err = cli(capsys, "-c", str(spec), "render", "--out", str(tmp_path / "bad"))
    assert code == 2 and "XXL" in err
    assert not (tmp_path / "bad").exists()

    code, _, err = cli(capsys, "-c", str(spec), "render", "--target", "bigquery")
    assert code == 2 and "bigquery" in err
