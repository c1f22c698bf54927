"""Errors caught early, and ordinary failures that say what to do (issue 13).

A DSN that cannot work is a spec error at its file:line:col (exit 2) and never printed; a
`primary_key` naming a column the source table lacks is refused at validate (source reachable)
and at deploy; the machine's failures (an unreachable source, a folder that cannot be written)
exit 1 with a plain message, never "internal error ... please report it"; a deploy before the
source tables exist names the missing tables as missing and how to create them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import duckdb
import pytest

from clinipipe.cli.load import _loaded_line
from clinipipe.pipeline.backfill import BackfillSummary, TableSummary
from clinipipe.synth import run_synth
from tests.helpers import cli, example_text, execute, write_spec

SECRET = "pw-s3cret-value"
UNREACHABLE = f"postgresql://clinipipe:{SECRET}@127.0.0.1:9/none"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    monkeypatch.delenv("CLINIPIPE_CONFIG", raising=False)


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first `needle` in `text`."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(needle)


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_no_internal_error(out: str, err: str) -> None:
    assert "internal error" not in out + err and "please report" not in (out + err).lower()
    assert "Traceback" not in out + err


# --- the source DSN -------------------------------------------------------------------------------

BAD_DSNS = [
    ("empty", "", "the source DSN is empty (from CLINIPIPE_SOURCE_DSN)"),
    (
        "scheme",
        f"postgresq://clinipipe:{SECRET}@db.example:5432/ehr",
        "starts with 'postgresq://', which is not PostgreSQL's scheme: use postgresql://",
    ),
    ("not a dsn", SECRET, "is neither a postgresql:// URI nor libpq key=value pairs"),
]


@pytest.mark.parametrize(
    ("dsn", "fragment"), [b[1:] for b in BAD_DSNS], ids=[b[0] for b in BAD_DSNS]
)
def test_validate_refuses_a_dsn_that_cannot_work(
    dsn: str,
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    text = example_text()
    spec = write_spec(tmp_path, text)
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    line, col = position(text, "${CLINIPIPE_SOURCE_DSN}")
    assert code == 2, err
    assert f"clinipipe.yaml:{line}:{col}: source.dsn: " in err
    assert fragment in flat(err)
    assert SECRET not in out + err  # the DSN (or what may be its password) is never printed
    code, out, _ = cli(capsys, "-c", str(spec), "validate", "--json")
    assert code == 2 and json.loads(out)["valid"] is False and SECRET not in out


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://clinipipe@db.example:5432/ehr",
        "postgres://clinipipe@db.example/ehr",
        "POSTGRESQL://clinipipe@db.example/ehr",
        "host=db.example port=5432 dbname=ehr user=clinipipe",
        "postgresql:///ehr?host=/var/run/postgresql",
    ],
)
def test_dsns_libpq_accepts_are_accepted(dsn: str) -> None:
    from clinipipe.spec.dsn import dsn_problem

    assert dsn_problem(dsn, "${CLINIPIPE_SOURCE_DSN}") is None


def test_the_env_example_placeholder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`init`, then `cp .env.example .env` without setting the DSN: validate says so (exit 2);
    the environment, which wins over .env, makes the same spec valid."""
    monkeypatch.delenv("CLINIPIPE_SOURCE_DSN", raising=False)
    project = tmp_path / "hospital"
    assert cli(capsys, "init", str(project))[0] == 0
    (project / ".env").write_text((project / ".env.example").read_text())
    spec = project / "clinipipe.yaml"
    code, _, err = cli(capsys, "-c", str(spec), "validate")
    line, col = position(spec.read_text(), "${CLINIPIPE_SOURCE_DSN}")
    assert code == 2
    assert f":{line}:{col}: source.dsn: the source DSN (from CLINIPIPE_SOURCE_DSN) is still " in err
    assert "placeholder from .env.example" in flat(err) and ".env" in err
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:9/none")
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 0 and "is valid" in out, err


# --- primary_key against the source ---------------------------------------------------------------


def test_a_primary_key_column_the_source_lacks_is_refused_at_validate_and_deploy(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    run_synth(pg_dsn, patients=20, seed=3)
    text = example_text(**{"primary_key: [claim_id]": "primary_key: [claim_no]"})
    spec = write_spec(tmp_path, text)
    line, col = position(text, "claim_no")
    expected = (
        f"clinipipe.yaml:{line}:{col}: source.tables[5].primary_key[0]: source table "
        "public.claims has no column 'claim_no' (did you mean 'claim_id'?)"
    )
    for command in (["validate"], ["deploy", "--dry-run"], ["deploy"]):
        code, _, err = cli(capsys, "-c", str(spec), *command)
        assert code == 2 and expected in flat(err), (command, err)
    assert not (tmp_path / "warehouse.duckdb").exists()  # nothing was deployed


# --- the machine's failures: exit 1, a plain message, no "internal error" -------------------------


def test_synth_with_the_source_down_is_a_runtime_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", UNREACHABLE)
    spec = write_spec(tmp_path, example_text())
    code, out, err = cli(capsys, "-c", str(spec), "synth", "--patients", "10")
    assert code == 1
    assert "cannot connect to the source" in flat(err)
    assert SECRET not in out + err
    assert_no_internal_error(out, err)


def test_init_into_a_path_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = cli(capsys, "init", str(blocker / "hospital"))
    assert code == 1
    assert f"cannot create the project in {blocker / 'hospital'}" in flat(err)
    assert "Choose a folder this user can write to" in flat(err)
    assert_no_internal_error(out, err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_init_and_render_into_read_only_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:9/none")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, out, err = cli(capsys, "init", str(locked / "hospital"))
        assert code == 1 and "Permission denied" in err
        assert_no_internal_error(out, err)
        spec = write_spec(tmp_path, example_text())
        code, out, err = cli(capsys, "-c", str(spec), "render", "--out", str(locked))
        assert code == 1 and "cannot write the SQL files" in flat(err)
        assert_no_internal_error(out, err)
    finally:
        locked.chmod(0o755)


def test_render_out_that_cannot_be_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:9/none")
    spec = write_spec(tmp_path, example_text())
    blocker = tmp_path / "sql"
    blocker.write_text("a file where the folder should be")
    for out_dir in (blocker, blocker / "duckdb"):
        code, out, err = cli(capsys, "-c", str(spec), "render", "--out", str(out_dir))
        assert code == 1, err
        assert f"cannot write the SQL files into {out_dir}" in flat(err)
        assert "Choose another --out folder" in flat(err)
        assert_no_internal_error(out, err)
    assert blocker.read_text() == "a file where the folder should be"


def test_any_os_failure_is_reported_as_the_machines_not_as_a_bug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence in clinipipe.cli.app: an OSError from anywhere (here the
    renderer failing to read its templates) is exit 1 with the path, not "internal error"."""
    import clinipipe.cli.project as project_cli

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:9/none")
    spec = write_spec(tmp_path, example_text())

    def unreadable(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied", "/opt/clinipipe/templates")

    monkeypatch.setattr(project_cli, "render", unreadable)
    code, out, err = cli(capsys, "-c", str(spec), "render")
    assert code == 1
    assert "Permission denied (/opt/clinipipe/templates)" in flat(err)
    assert "not a clinipipe bug" in flat(err)
    assert_no_internal_error(out, err)

    def bug(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(project_cli, "render", bug)
    code, out, err = cli(capsys, "-c", str(spec), "render")
    assert code == 1 and "internal error" in err  # real bugs still say so


# --- deploy before the source tables exist --------------------------------------------------------


def test_deploy_before_the_tables_exist_names_them_as_missing(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    spec = write_spec(tmp_path, example_text())
    code, out, err = cli(capsys, "-c", str(spec), "validate")
    assert code == 0 and "0 column names of 0 tables" not in out
    assert "no table of the spec could be read on the source" in flat(err)
    assert "source table public.labs does not exist" in flat(err)
    code, _, err = cli(capsys, "-c", str(spec), "deploy")
    message = flat(err)
    assert code == 1
    assert "a replicated table does not exist on the source" in message
    assert "`clinipipe synth` creates its tables" in message
    assert "Affected: public.patients, public.providers" in message
    assert "Found:" not in message and "no primary key" not in message
    # A table that exists without a primary key is still named for that, not as missing.
    run_synth(pg_dsn, patients=10, seed=1)
    execute(pg_dsn, "ALTER TABLE labs DROP CONSTRAINT labs_pkey")
    code, _, err = cli(capsys, "-c", str(spec), "deploy")
    message = flat(err)
    assert code == 1 and "has no primary key" in message and "Affected: public.labs." in message


# --- small things people notice -------------------------------------------------------------------


def _summary(status: str, rows: int, ranges: int, kept: int) -> BackfillSummary:
    summary = BackfillSummary(status, "clinipipe_slot", "0/16B3748", "CLINIPIPE_INIT_WH")
    summary.tables["labs"] = TableSummary("labs", ranges, kept, rows, rows * 100, 0.4)
    summary.seconds = 0.5
    return summary


def test_a_resumed_backfill_says_what_it_kept_and_what_it_loaded() -> None:
    everything_kept = _loaded_line(_summary("resumed", rows=0, ranges=6, kept=6))
    assert "0 rows" not in everything_kept
    assert everything_kept.startswith("Resumed: all 6 ranges were already loaded")
    assert "nothing was left to load" in everything_kept
    partly = _loaded_line(_summary("resumed", rows=1_234, ranges=6, kept=4))
    assert partly.startswith("Resumed: 4 of 6 ranges were already loaded")
    assert "the other 2 loaded now: 1,234 rows in 0.5 s" in partly
    fresh = _loaded_line(_summary("loaded", rows=12_345, ranges=6, kept=0))
    assert fresh == "12,345 rows in 0.5 s (24,690 rows/s)."


def test_finding_counts_use_thousands_separators_everywhere(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """More than a thousand findings: the total and the per-severity counts read alike."""
    execute(pg_dsn, "UPDATE medications SET frequency = 'BID; pt SSN 123-45-6789 per phone'")
    assert cli(capsys, "-q", "-c", str(hospital_project), "backfill")[0] == 0
    with duckdb.connect(str(hospital_project.parent / "warehouse.duckdb"), read_only=True) as con:
        planted = con.execute("SELECT count(*) FROM raw.medications").fetchone()
    assert planted is not None and planted[0] >= 1_000
    code, out, err = cli(capsys, "-c", str(hospital_project), "scan", "--full")
    assert code == 3, err
    summary = flat(out)
    total = re.search(r"([\d,]+) findings \(([^)]*)\)", summary)
    assert total is not None, summary
    assert int(total.group(1).replace(",", "")) >= 1_000 and "," in total.group(1)
    for count in re.findall(r"(\d[\d,]*) (?:high|medium|low)", total.group(2)):
        if int(count.replace(",", "")) >= 1_000:
            assert "," in count, summary
