"""Secrets never leak: known secret values are planted (the source DSN's password, the HMAC
key, the Snowflake password variable, a webhook URL's token, cost webhook) and a broad set of
commands, successful and failing, is run; every stdout/stderr, every rendered SQL file, the
audit trail and every `_clinipipe` table of the warehouse are searched for them."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from clinipipe.synth import run_synth
from tests.helpers import cli, example_text, execute, write_spec

DSN_PASSWORD = "Dsn-Pw-5ecret-8841"
HMAC_KEY = "hmac-5ecret-key-0f3c9a2d71"
SNOWFLAKE_PASSWORD = "Snow-5ecret-Pw-2210"
WEBHOOK_TOKEN = "whtok5ecret77ab"
COST_TOKEN = "costtok5ecret19"
SECRETS = (DSN_PASSWORD, HMAC_KEY, SNOWFLAKE_PASSWORD, WEBHOOK_TOKEN, COST_TOKEN)

# Alerts go to a dead loopback port: a failed delivery must not print the URL's token.
PHI_ALERTS = (
    "hmac_key_env: CLINIPIPE_HMAC_KEY\n"
    "  alerts:\n"
    "    webhook_url_env: CLINIPIPE_PHI_WEBHOOK_URL\n"
    "    timeout_seconds: 1"
)


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _warehouse_text(path: Path) -> str:
    """Every row of every table of the `_clinipipe` schema (state, audit, metering, ...)."""
    parts: list[str] = []
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = '_clinipipe'"
        ).fetchall()
        assert tables, "no _clinipipe tables to search"
        for schema, table in tables:
            rows = con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            parts.append(f"{table}: {rows!r}")
    return "\n".join(parts)


@pytest.fixture
def planted(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A project whose secrets are all known values; returns (spec, the DSN with password)."""
    # The embedded server trusts loopback, so the password is accepted and never checked.
    secret_dsn = pg_dsn.replace("clinipipe@", f"clinipipe:{DSN_PASSWORD}@", 1)
    assert secret_dsn != pg_dsn
    run_synth(pg_dsn, patients=80, seed=21)
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", secret_dsn)
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", HMAC_KEY)
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", SNOWFLAKE_PASSWORD)
    monkeypatch.setenv(
        "CLINIPIPE_PHI_WEBHOOK_URL", f"http://127.0.0.1:9/hook?token={WEBHOOK_TOKEN}"
    )
    monkeypatch.setenv("CLINIPIPE_COST_WEBHOOK_URL", f"http://127.0.0.1:9/cost/{COST_TOKEN}")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    text = example_text(**{"hmac_key_env: CLINIPIPE_HMAC_KEY": PHI_ALERTS})
    return write_spec(tmp_path, text), secret_dsn


def test_no_secret_in_any_output_sql_audit_or_state(
    planted: tuple[Path, str],
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec, secret_dsn = planted
    c = ["-c", str(spec)]
    outputs: dict[str, str] = {}

    def run(*args: str, codes: tuple[int, ...] = (0,)) -> str:
        code, out, err = cli(capsys, *c, *args)
        assert code in codes, (args, code, err)
        assert "Traceback" not in err, (args, err)
        outputs[" ".join(args)] = out + err
        return out

    run("validate")
    run("render")
    run("render", "--target", "snowflake")
    run("render", "--out", str(tmp_path / "sql"))
    run("render", "--target", "snowflake", "--out", str(tmp_path / "sql-snowflake"))
    run("deploy", "--dry-run")
    run("deploy")
    run("deploy", "--json")
    run("backfill", "--json")
    execute(pg_dsn, "UPDATE clinical_notes SET note_text = 'Call 555-201-7788 re SSN 078-05-1120' "
                    "WHERE note_id = (SELECT min(note_id) FROM clinical_notes)")  # fmt: skip
    run("cdc", "start", "--until-caught-up", codes=(0, 1, 3))
    run("status", "--json", codes=(0, 3))
    run("cdc", "status", "--json", codes=(0, 3))
    run("scan", "--json", codes=(0, 3))
    run("redact", "--policy", "safe_harbor", codes=(0, 3))
    run("redact", "--policy", "safe_harbor", "--json", codes=(0, 3))
    run("backup", "create", "--json")
    run("cost", "report", "--json", codes=(0, 3))
    run("audit", "log", "--json")

    # Failures: a wrong DSN (a database that does not exist, with the password) and a bad spec.
    wrong = secret_dsn.rsplit("/", 1)[0] + "/nosuchdb"
    assert DSN_PASSWORD in wrong
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", wrong)
    for args in (["deploy"], ["backfill"], ["cdc", "start", "--until-caught-up"], ["validate"]):
        run(*args, codes=(0, 1, 2, 3))
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", secret_dsn)
    bad = spec.parent / "bad" / "clinipipe.yaml"
    bad.parent.mkdir()
    bad.write_text(spec.read_text().replace("primary_key: [patient_id]", "primary_key: 7", 1))
    code, out, err = cli(capsys, "-c", str(bad), "validate")
    assert code == 2, err
    outputs["validate (bad spec)"] = out + err
    # A literal password in the spec is refused, and the message does not repeat it.
    literal = spec.parent / "literal" / "clinipipe.yaml"
    literal.parent.mkdir()
    literal.write_text(spec.read_text().replace("${CLINIPIPE_SOURCE_DSN}", secret_dsn, 1))
    code, out, err = cli(capsys, "-c", str(literal), "validate")
    assert code == 2 and "password" in err, err
    outputs["validate (literal password)"] = out + err

    leaks = {what: _leaks(text) for what, text in outputs.items() if _leaks(text)}
    assert not leaks, leaks
    for path in [*(tmp_path / "sql").rglob("*"), *(tmp_path / "sql-snowflake").rglob("*")]:
        if path.is_file():
            assert not _leaks(path.read_text()), path
    assert list((tmp_path / "sql").glob("*.sql")), "render --out wrote nothing"

    entries = json.loads(outputs["audit log --json"])
    assert len(entries) >= 5 and not _leaks(json.dumps(entries))
    assert not _leaks(_warehouse_text(tmp_path / "warehouse.duckdb"))
