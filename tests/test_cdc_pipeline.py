"""The CDC pipeline (issue 17): batch N commits on the apply thread while the loop decodes batch
N + 1, and is confirmed only after its COMMIT, on the loop's thread; the bulk (vectorised)
pgoutput split gives every value as sent. (That a staged large transaction keeps no memory per
part in the DuckDB transaction is measured by benchmarks/memory.py and benchmarks/cdc.py.)"""

from __future__ import annotations

import datetime as dt
import struct
import threading
from typing import Any

import pyarrow as pa
import pytest

import clinipipe.source.pgoutput as pgoutput
from clinipipe.pipeline.cdc.apply import ApplyWorker, BatchApplier
from clinipipe.source.pgoutput import DecodeError, Decoder, TableChanges
from clinipipe.targets.base import CdcBatch, TargetError

# --- the apply thread -----------------------------------------------------------------------


class BlockingTarget:
    """Commits only when `release` is set; records the thread of each call."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[str, int, str]] = []
        self.fail = False

    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        self.entered.set()
        assert self.release.wait(10)
        if self.fail:
            raise TargetError("the disk is full")
        self.calls.append(("commit", batch.end_lsn, threading.current_thread().name))

    def stage_cdc_changes(self, tables: Any, lsn: int) -> None:
        self.calls.append(("stage", lsn, threading.current_thread().name))

    def discard_staged_cdc(self) -> None:
        self.calls.append(("discard", 0, threading.current_thread().name))


def worker_for(target: BlockingTarget, log: list[tuple[str, int, str]]) -> ApplyWorker:
    here = lambda: threading.current_thread().name  # noqa: E731
    applier = BatchApplier(
        target,  # type: ignore[arg-type]
        "slot",
        ("WH", "XSMALL"),
        lambda lsn: log.append(("confirm", lsn, here())),
        retry_delays=lambda: (),
        on_batch=lambda b: log.append(("on_batch", b.end_lsn, here())),
        on_staged=lambda b: log.append(("on_staged", b.changes, here())),
    )
    return ApplyWorker(applier)


def test_a_batch_commits_on_the_apply_thread_and_is_confirmed_after_on_the_loop_thread() -> None:
    target, log = BlockingTarget(), []
    worker = worker_for(target, log)
    now = dt.datetime.now(dt.UTC)
    try:
        worker.submit(worker.applier.batch([], 500, [now], now))
        assert target.entered.wait(10)
        # The commit is running on another thread: the caller is free (it decodes the next
        # batch), nothing is confirmed, and a second batch cannot start before this one.
        assert worker.busy and not worker.done and log == []
        with pytest.raises(RuntimeError, match="already being applied"):
            worker.submit(worker.applier.batch([], 600, [now], now))
        target.release.set()
        applied = worker.wait()
        assert applied is not None and applied.batch.end_lsn == 500
        loop_thread = threading.current_thread().name
        [(_, lsn, apply_thread)] = target.calls
        assert lsn == 500 and apply_thread != loop_thread
        # Confirmed (and reported) only after the COMMIT returned, on the loop's thread,
        # which owns the replication connection.
        assert log == [("confirm", 500, loop_thread), ("on_batch", 500, loop_thread)]
        assert not worker.busy and worker.wait() is None
    finally:
        target.release.set()
        worker.close()


def test_a_failed_commit_is_raised_by_wait_and_nothing_is_confirmed() -> None:
    target, log = BlockingTarget(), []
    target.fail = True
    target.release.set()
    worker = worker_for(target, log)
    try:
        worker.submit(worker.applier.batch([], 500, [dt.datetime.now(dt.UTC)], None))
        with pytest.raises(Exception, match="applying a batch failed repeatedly"):
            worker.wait()
        assert log == [] and not worker.busy
    finally:
        worker.close()


def test_a_staged_part_is_counted_when_collected_and_committed_with_its_batch() -> None:
    target, log = BlockingTarget(), []
    target.release.set()
    worker = worker_for(target, log)
    applier = worker.applier
    try:
        part = applier.batch([], 0, (), None)
        worker.submit_stage(part, 450)
        assert worker.wait() is None  # a part: nothing committed, nothing confirmed
        assert [c[:2] for c in target.calls] == [("stage", 450)]
        assert [entry[0] for entry in log] == ["on_staged"] and applier.staged_changes == 0
        applier.staged_changes = 5  # as if the part held 5 changes
        worker.submit(applier.batch([], 500, [dt.datetime.now(dt.UTC)], None, 5))
        applied = worker.wait()
        assert applied is not None and applied.batch.staged_changes == 5
        assert applier.staged_changes == 0
        assert [c[:2] for c in target.calls] == [("stage", 450), ("commit", 500)]
    finally:
        worker.close()


# --- the bulk split of pgoutput tuples ------------------------------------------------------


def tuple_data(values: list[bytes | str | None]) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == "<unchanged>":
            out += b"u"
        else:
            raw = value if isinstance(value, bytes) else value.encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


def relation(oid: int) -> bytes:
    columns = [("id", 23, True), ("note", 25, False), ("unit", 25, False)]
    body = struct.pack("!I", oid) + b"public\0notes\0d" + struct.pack("!h", len(columns))
    for name, type_oid, key in columns:
        body += bytes([int(key)]) + name.encode() + b"\0" + struct.pack("!Ii", type_oid, -1)
    return b"R" + body


def insert(values: list[Any]) -> bytes:
    return b"I" + struct.pack("!I", 1) + b"N" + tuple_data(values)


def update(values: list[Any], old_key: list[Any] | None = None) -> bytes:
    head = b"U" + struct.pack("!I", 1)
    if old_key is not None:
        head += b"K" + tuple_data(old_key)
    return head + b"N" + tuple_data(values)


def delete(key: list[Any]) -> bytes:
    return b"D" + struct.pack("!I", 1) + b"K" + tuple_data(key)


def truncate() -> bytes:
    return b"T" + struct.pack("!iB", 1, 0) + struct.pack("!I", 1)


STREAM = [
    insert(["1", "", None]),  # an empty string is not NULL
    insert(["2", "zero\0byte ünïcode ✓", "mg"]),
    update(["2", "<unchanged>", "g"]),  # unchanged TOAST value
    update(["3", "<unchanged>", "kg"], old_key=["2", None, None]),  # the key moved 2 -> 3
    delete(["1", None, None]),
    truncate(),
    insert(["4", "x" * 70_000, None]),  # a long value
    update(["4", "y", None], old_key=["4", None, None]),  # old key sent, key unchanged
]

EXPECTED = {
    "_op": ["I", "I", "U", "D", "U", "D", "T", "I", "U"],
    "id": ["1", "2", "2", "2", "3", "1", None, "4", "4"],
    "note": ["", "zero\0byte ünïcode ✓", None, None, None, None, None, "x" * 70_000, "y"],
    "unit": [None, "mg", "g", None, "kg", None, None, None, None],
    "note__u": [False, False, True, False, True, False, False, False, False],
    "id__from": [None, None, None, None, "2", None, None, None, None],
}


@pytest.mark.parametrize("compact_rows", [1, 2, 3, 20_000])
def test_the_bulk_split_gives_every_value_as_sent(
    compact_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the chunking (flags and moved keys present in some chunks only), the columns
    are the values as sent: NULL, empty, bytes with NUL and multi-byte UTF-8, long values,
    unchanged-TOAST flags, the old key of a moved row, and a truncate's empty row."""
    monkeypatch.setattr(pgoutput, "COMPACT_ROWS", compact_rows)
    decoder = Decoder()
    decoder.decode(relation(1))
    for payload in STREAM:
        decoder.decode(payload)
    assert decoder.pending_rows == len(EXPECTED["_op"])
    [buffer] = decoder.take()
    assert isinstance(buffer, TableChanges) and decoder.pending_rows == 0
    table = buffer.to_arrow()
    assert table.schema.field("note").type == pa.string()
    assert table["_seq"].to_pylist() == sorted(table["_seq"].to_pylist())
    for name, values in EXPECTED.items():
        assert table[name].to_pylist() == values, name


def test_a_malformed_tuple_is_a_decode_error() -> None:
    decoder = Decoder()
    decoder.decode(relation(1))
    decoder.decode(b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 3) + b"x")
    [buffer] = decoder.take()
    with pytest.raises(DecodeError, match="unsupported tuple value kind"):
        buffer.to_arrow()
    decoder.decode(b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"t\0\0\0\x09ab")
    [buffer] = decoder.take()
    with pytest.raises(DecodeError, match="past the end"):
        buffer.to_arrow()
