"""In transit: every source connection (deploy, backfill, CDC catch-up) honours the DSN's
sslmode / sslrootcert, against an embedded PostgreSQL with ssl = on and a self-signed CA made by
the test; a wrong CA is a clear error (exit 1, names sslrootcert, no password)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest

from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.synth import run_synth
from tests.helpers import (
    assert_target_equals_source,
    cli,
    example_text,
    execute,
    snowflake_text,
    write_spec,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (cert, key) in `directory`."""
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(crt),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    return crt, key


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca_crt, ca_key = _make_ca(d, "test-ca")
    wrong_ca, _ = _make_ca(d, "wrong-ca")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.crt",
             cwd=d)  # fmt: skip
    return {"ca": ca_crt, "wrong_ca": wrong_ca, "crt": d / "server.crt", "key": d / "server.key"}


@pytest.fixture(scope="module")
def tls_server(tls_material: dict[str, Path]) -> Iterator[EmbeddedPostgres]:
    """A separate embedded PostgreSQL with ssl = on (the shared one is unaffected)."""
    files = {
        "server.crt": tls_material["crt"].read_bytes(),
        "server.key": tls_material["key"].read_bytes(),
    }
    settings: dict[str, str | int | bool] = {
        "ssl": True,
        "ssl_cert_file": "server.crt",
        "ssl_key_file": "server.key",
    }
    with EmbeddedPostgres(settings=settings, files=files) as server:
        yield server


def _with_tls(dsn: str, mode: str, ca: Path) -> str:
    return f"{dsn}?sslmode={mode}&sslrootcert={quote(str(ca), safe='/')}"


def _ssl_backends(
    admin_dsn: str, dbname: str, connect: Callable[..., Any] = psycopg2.connect
) -> list[tuple[str, bool, str | None]]:
    """(application_name, ssl, version) of every backend connected to `dbname` or replicating."""
    with connect(admin_dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT a.application_name, s.ssl, s.version FROM pg_stat_ssl s "
            "JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name LIKE 'clinipipe%%' AND (a.datname = %s OR "
            "a.backend_type = 'walsender')",
            (dbname,),
        )
        rows = cur.fetchall()
    con.close()
    return rows


def test_backfill_and_cdc_over_verify_full_tls(
    tls_server: EmbeddedPostgres,
    tls_material: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = tls_server.create_database(name)
    run_synth(plain, patients=60, seed=3)
    dsn = _with_tls(plain, "verify-full", tls_material["ca"])
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    spec = write_spec(tmp_path, example_text())

    # Observe the connections while the commands run: pg_stat_ssl of clinipipe's backends.
    seen: list[tuple[str, bool, str | None]] = []
    original = psycopg2.connect
    # The backfill's range readers connect through ADBC (libpq underneath, same conninfo).
    import adbc_driver_postgresql.dbapi as adbc_pg

    def spying(connect: Any) -> Any:
        def spying_connect(*args: Any, **kwargs: Any) -> Any:
            con = connect(*args, **kwargs)
            seen.extend(_ssl_backends(tls_server.dsn, name, original))
            return con

        return spying_connect

    monkeypatch.setattr(psycopg2, "connect", spying(original))
    monkeypatch.setattr(adbc_pg, "connect", spying(adbc_pg.connect))

    for command in (["deploy"], ["backfill"]):
        code, _, err = cli(capsys, "-c", str(spec), *command)
        assert code == 0, err
    execute(plain, "UPDATE patients SET first_name = 'Tls' WHERE patient_id = "
                   "(SELECT min(patient_id) FROM patients)")  # fmt: skip
    code, _, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, err
    assert_target_equals_source(plain, tmp_path / "warehouse.duckdb")

    apps = {app for app, _, _ in seen}
    # deploy's checks, backfill's reader and snapshot, CDC's replication stream
    assert "clinipipe-backfill" in apps, apps
    assert "clinipipe-cdc" in apps or "clinipipe-backfill-slot" in apps, apps
    unencrypted = [(app, version) for app, ssl, version in seen if not ssl]
    assert not unencrypted, unencrypted
    assert all(version and version.startswith("TLS") for _, _, version in seen)


def test_wrong_ca_is_a_clear_error_without_the_password(
    tls_server: EmbeddedPostgres,
    tls_material: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = tls_server.create_database(name)
    run_synth(plain, patients=20, seed=5)
    with_password = plain.replace("clinipipe@", "clinipipe:Sekr1tPw-91@", 1)
    assert with_password != plain
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    spec = write_spec(tmp_path, example_text())
    # Deployed over TLS with the right CA, so that CDC gets as far as connecting.
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", _with_tls(plain, "verify-full", tls_material["ca"]))
    assert cli(capsys, "-c", str(spec), "deploy")[0] == 0
    wrong = _with_tls(with_password, "verify-full", tls_material["wrong_ca"])
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", wrong)
    checked = [["deploy"], ["backfill"]]
    for command in checked:
        code, out, err = cli(capsys, "-c", str(spec), *command)
        assert code == 1, (command, code, err)
        assert "sslrootcert" in err, (command, err)
        assert "Traceback" not in err
        assert "Sekr1tPw-91" not in out + err
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", _with_tls(plain, "verify-full", tls_material["ca"]))
    code, _, err = cli(capsys, "-c", str(spec), "backfill", "--force")
    assert code == 0, err
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", wrong)
    for command in (["cdc", "start", "--until-caught-up"], ["backfill", "--force"]):
        code, out, err = cli(capsys, "-c", str(spec), *command)
        assert code == 1, (command, code, err)
        assert "sslrootcert" in err, (command, err)
        assert "Traceback" not in err
        assert "Sekr1tPw-91" not in out + err


def test_sslmode_require_rejected_by_a_server_without_tls(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared server has no TLS: sslmode=require must fail, not silently fall back."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", f"{pg_dsn}?sslmode=require")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    spec = write_spec(tmp_path, example_text())
    code, _, err = cli(capsys, "-c", str(spec), "deploy")
    assert code == 1, err
    assert "sslmode" in err and "Traceback" not in err


# --- Snowflake key-pair (JWT) authentication: the connection arguments (no real account) ------


def _snowflake_target(tmp_path: Path, authenticator: str) -> Any:
    from clinipipe.spec import load_spec
    from clinipipe.targets.snowflake import SnowflakeTarget

    text = snowflake_text().replace(
        "user: deployer", f"user: deployer\n  authenticator: {authenticator}", 1
    )
    return SnowflakeTarget(load_spec(write_spec(tmp_path, text)))


def _captured_connect(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import snowflake.connector

    captured: dict[str, Any] = {}

    def fake_connect(**kwargs: Any) -> object:
        captured.update(kwargs)
        return object()

    monkeypatch.setattr(snowflake.connector, "connect", fake_connect)
    return captured


def test_snowflake_key_pair_auth_passes_the_key_file_and_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_FILE", "/keys/rsa_key.p8")
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", "pass-phrase-77")
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "never-sent-with-jwt")
    captured = _captured_connect(monkeypatch)
    _snowflake_target(tmp_path, "snowflake_jwt")._open()
    assert captured["authenticator"] == "SNOWFLAKE_JWT"
    assert captured["private_key_file"] == "/keys/rsa_key.p8"
    assert captured["private_key_file_pwd"] == "pass-phrase-77"
    assert "password" not in captured
    assert captured["user"] == "deployer" and captured["account"] == "acme-hospital"

    # An unencrypted key: no passphrase argument at all.
    monkeypatch.delenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE")
    captured.clear()
    _snowflake_target(tmp_path, "snowflake_jwt")._open()
    assert "private_key_file_pwd" not in captured and "password" not in captured


def test_snowflake_key_pair_auth_without_key_file_says_which_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clinipipe.targets.base import TargetError

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@h/db")
    monkeypatch.delenv("SNOWFLAKE_PRIVATE_KEY_FILE", raising=False)
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", "pass-phrase-77")
    _captured_connect(monkeypatch)
    with pytest.raises(TargetError) as raised:
        _snowflake_target(tmp_path, "snowflake_jwt")._open()
    assert "SNOWFLAKE_PRIVATE_KEY_FILE" in str(raised.value)
    assert "pass-phrase-77" not in str(raised.value)


def test_snowflake_password_auth_sends_the_password_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "pw-123")
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_FILE", "/keys/rsa_key.p8")
    captured = _captured_connect(monkeypatch)
    _snowflake_target(tmp_path, "snowflake")._open()
    assert captured["password"] == "pw-123"
    assert "private_key_file" not in captured and "authenticator" not in captured
