"""The S3 store: a bucket with Object Lock, through boto3 (the optional extra `s3`).

`backup.store: s3://bucket/prefix`. Credentials, region and endpoint come from boto3's usual
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for
an S3-compatible server), never from the spec, and are never printed.

With `lock`, every object and manifest is written with ``ObjectLockMode=COMPLIANCE`` and
``ObjectLockRetainUntilDate`` = the backup's retain_until: S3 refuses to delete or overwrite
that version before then, whoever asks. An object a later backup reuses has its retention
*extended* to the later date (never shortened: clinipipe refuses to shorten, even where the
server would allow it). A legal hold is Object Lock's legal hold on the manifest and each of
its objects. The bucket must have been created with Object Lock enabled (which also enables
versioning); a locked store on a bucket without it is refused. Deleting a key deletes every
version of it (an S3 "delete" without a version only hides it behind a delete marker).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from clinipipe.backup.store import Store, StoreError

LOCK_MODE = "COMPLIANCE"


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix ending in '/' or empty) of ``s3://bucket/prefix``."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"backup.store {url!r} names no bucket (use s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Store(Store):
    kind = "s3"

    def __init__(self, url: str, *, client: Any = None) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.url = url
        if client is None:
            try:
                import boto3
            except ImportError:
                raise StoreError(
                    "backup.store is on S3 but boto3 is not installed: pip install 'clinipipe[s3]'"
                ) from None
            client = boto3.client("s3")
        self.client = client
        self._lock_checked = False

    def describe(self) -> str:
        return f"S3 store s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _error(self, what: str, exc: Exception) -> StoreError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        return StoreError(f"{what} on {self.describe()} failed: {code}")

    def require_object_lock(self) -> None:
        """Refuse a locked store on a bucket without Object Lock."""
        if self._lock_checked:
            return
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if "ObjectLockConfigurationNotFound" in code:
                raise StoreError(
                    f"bucket {self.bucket} has no Object Lock, and backup.retention_lock is on: "
                    "create the bucket with Object Lock enabled (aws s3api create-bucket "
                    "--object-lock-enabled-for-bucket), or point backup.store at one that has it"
                ) from None
            raise self._error("reading the Object Lock configuration", exc) from None
        enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise StoreError(f"bucket {self.bucket} does not have Object Lock enabled")
        self._lock_checked = True

    def list(self, prefix: str) -> dict[str, int]:
        out: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    out[item["Key"][len(self.prefix) :]] = int(item["Size"])
        except Exception as exc:
            raise self._error("listing", exc) from None
        return out

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(f"reading {key}", exc) from None
        return int(head["ContentLength"])

    def _lock_args(self, retain_until: dt.datetime | None, lock: bool) -> dict[str, Any]:
        if not lock or retain_until is None:
            return {}
        self.require_object_lock()
        return {"ObjectLockMode": LOCK_MODE, "ObjectLockRetainUntilDate": retain_until}

    def put_file(self, key: str, path: Path, *, retain_until: dt.datetime | None,
                 lock: bool) -> bool:  # fmt: skip
        if self.size(key) is not None:
            return False
        extra = self._lock_args(retain_until, lock)
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=extra)
        except Exception as exc:
            raise self._error(f"writing {key}", exc) from None
        return True

    def put_bytes(self, key: str, data: bytes, *, retain_until: dt.datetime | None = None,
                  lock: bool = False, once: bool = True) -> bool:  # fmt: skip
        if once and self.size(key) is not None:
            return False
        extra = self._lock_args(retain_until, lock)
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
        except Exception as exc:
            raise self._error(f"writing {key}", exc) from None
        return True

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def open(self, key: str) -> BinaryIO:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise StoreError(f"{key} is missing from {self.describe()}") from None
            raise self._error(f"reading {key}", exc) from None
        body: BinaryIO = answer["Body"]
        return body

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            paginator = self.client.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if item["Key"] == full:
                        self.client.delete_object(
                            Bucket=self.bucket, Key=full, VersionId=item["VersionId"]
                        )
        except Exception as exc:
            raise self._error(f"deleting {key}", exc) from None

    def _head(self, key: str) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise StoreError(f"{key} is missing from {self.describe()}") from None
            raise self._error(f"reading {key}", exc) from None
        return answer

    def retention(self, key: str) -> dt.datetime | None:
        """The Object Lock retain-until date of `key`'s current version (None: none)."""
        until = self._head(key).get("ObjectLockRetainUntilDate")
        if isinstance(until, str):
            until = dt.datetime.fromisoformat(until.replace("Z", "+00:00"))
        if until is None:
            return None
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        return until.astimezone(dt.timezone.utc)

    def extend_retention(self, key: str, until: dt.datetime) -> None:
        """Extend `key`'s COMPLIANCE retention to `until`; refuses to shorten it (S3 refuses
        too; an S3-compatible server may not, so clinipipe checks itself)."""
        current = self.retention(key)
        if current is not None and until < current:
            raise StoreError(
                f"refused: {key} is retained until {current.isoformat()}; its retention "
                "cannot be shortened"
            )
        if current is not None and until == current:
            return
        self.require_object_lock()
        try:
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=self._key(key),
                Retention={"Mode": LOCK_MODE, "RetainUntilDate": until},
            )
        except Exception as exc:
            raise self._error(f"extending the retention of {key}", exc) from None

    def set_legal_hold(self, key: str, on: bool) -> None:
        self.require_object_lock()
        try:
            self.client.put_object_legal_hold(
                Bucket=self.bucket, Key=self._key(key), LegalHold={"Status": "ON" if on else "OFF"}
            )
        except Exception as exc:
            raise self._error(f"setting the legal hold of {key}", exc) from None

    def legal_hold(self, key: str) -> bool:
        """True when `key`'s current version is under an Object Lock legal hold."""
        return bool(self._head(key).get("ObjectLockLegalHoldStatus") == "ON")

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        folder = Path(tempfile.mkdtemp(prefix="clinipipe-backup-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
