"""The S3 store (Object Lock, COMPLIANCE mode) against moto's S3 server, started here on
loopback: backups are written locked, dedupe, verify and detect an overwritten object; and
clinipipe itself refuses deleting a locked or held backup and shortening a retention (moto,
unlike AWS, would let a retention be shortened)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from clinipipe.backup import service  # noqa: E402
from clinipipe.backup.manifest import BackupError  # noqa: E402
from clinipipe.backup.s3 import S3Store  # noqa: E402
from clinipipe.backup.store import StoreError, object_key  # noqa: E402
from clinipipe.spec import load_spec  # noqa: E402
from clinipipe.targets.duckdb import DuckDBTarget  # noqa: E402
from tests.helpers import cli  # noqa: E402
from tests.test_backup import RETENTION, make_project  # noqa: E402

BUCKET = "hospital-backups"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_project(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, object]]:
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "CLINIPIPE_SOURCE_DSN": "postgresql://clinipipe@127.0.0.1:1/none",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "CLINIPIPE_DUCKDB_PATH"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3")
    buckets = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in buckets:
        client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    prefix = tmp_path.name  # one prefix per test
    spec = make_project(tmp_path, RETENTION.replace("retention_days: 2555",
                                                    "retention_days: 3"))  # fmt: skip
    text = spec.read_text().replace("store: backups", f"store: s3://{BUCKET}/{prefix}")
    spec.write_text(text)
    yield spec, client


def create(capsys: pytest.CaptureFixture[str], spec: Path) -> dict:
    code, out, err = cli(capsys, "-c", str(spec), "backup", "create", "--json")
    assert code == 0, err
    return json.loads(out)


def test_s3_backups_are_locked_dedupe_and_verify(
    s3_project: tuple[Path, object], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, client = s3_project
    first = create(capsys, spec)
    second = create(capsys, spec)
    assert first["objects_written"] == 2 and second["objects_written"] == 0
    assert second["bytes_written"] < 2000
    store = S3Store(load_spec(spec).spec.backup.store, client=client)
    key = object_key(first["tables"][0]["object"])
    head = client.head_object(Bucket=BUCKET, Key=store._key(key))  # type: ignore[attr-defined]
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"]
    assert until >= dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2, hours=23)
    manifest = client.head_object(Bucket=BUCKET, Key=store._key(second["manifest"]))  # type: ignore[attr-defined]
    assert manifest["ObjectLockMode"] == "COMPLIANCE"
    code, out, _ = cli(capsys, "-c", str(spec), "backup", "verify", "--read-data", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["bytes_read"] > 0
    # an overwrite makes a new version (the locked one survives): verify names the object
    client.put_object(Bucket=BUCKET, Key=store._key(key), Body=b"not parquet")  # type: ignore[attr-defined]
    code, out, _ = cli(capsys, "-c", str(spec), "backup", "verify", "--read-data", "--json")
    report = json.loads(out)
    assert code == 3 and {p["key"] for p in report["problems"]} == {key}
    code, _, err = cli(capsys, "-c", str(spec), "backup", "restore", first["backup_id"],
                       "--to", "restored")  # fmt: skip
    assert code == 1 and key in err and "nothing was restored" in err


def test_s3_clinipipe_refuses_locked_and_held_deletes_and_shortening(
    s3_project: tuple[Path, object], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, client = s3_project
    made = create(capsys, spec)
    bid = made["backup_id"]
    code, _, err = cli(capsys, "-c", str(spec), "backup", "delete", bid, "--yes", "--force")
    assert code == 1 and "locked retention" in err
    store = S3Store(load_spec(spec).spec.backup.store, client=client)
    assert store.size(made["manifest"]) is not None
    # clinipipe never shortens a retention, even where the server would let it
    key = object_key(made["tables"][0]["object"])
    current = store.retention(key)
    assert current is not None
    with pytest.raises(StoreError, match="cannot be shortened"):
        store.extend_retention(key, current - dt.timedelta(days=1))
    assert store.retention(key) == current
    store.extend_retention(key, current + dt.timedelta(days=1))
    assert store.retention(key) == current + dt.timedelta(days=1)
    # legal hold: on the manifest and its objects in S3, and refused by clinipipe even after
    # the retention has passed
    code, _, err = cli(capsys, "-c", str(spec), "backup", "hold", "add", bid, "--reason",
                       "subpoena 7")  # fmt: skip
    assert code == 0, err
    assert store.legal_hold(made["manifest"]) and store.legal_hold(key)
    loaded = load_spec(spec)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    with DuckDBTarget(loaded) as target:
        with pytest.raises(BackupError, match="legal hold"):
            service.delete_backup(loaded, target, bid, now=later)
        kept = service.prune(loaded, target, now=later)
    assert kept.deleted == [] and "subpoena 7" in kept.kept[0]["why"]
    code, _, err = cli(capsys, "-c", str(spec), "backup", "hold", "remove", bid, "--reason",
                       "released")  # fmt: skip
    assert code == 0, err
    assert not store.legal_hold(made["manifest"]) and not store.legal_hold(key)
    code, out, _ = cli(capsys, "-c", str(spec), "backup", "verify", "--json")
    assert code == 0, out


def test_s3_locked_store_needs_a_bucket_with_object_lock(
    s3_project: tuple[Path, object], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, client = s3_project
    client.create_bucket(Bucket="no-lock-bucket")  # type: ignore[attr-defined]
    spec.write_text(spec.read_text().replace(f"s3://{BUCKET}/", "s3://no-lock-bucket/"))
    code, _, err = cli(capsys, "-c", str(spec), "backup", "create")
    assert code == 1 and "Object Lock" in err
