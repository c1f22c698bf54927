"""The name lists are built once and cached in a file that later processes read: the same
lists either way, and a cache that is missing, corrupt or unwritable is never an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import clinipipe.phi.lexicon as lexicon

CACHED = (lexicon._lists, lexicon._flags, lexicon._cached, lexicon._sets, lexicon._names_only)


def _forget() -> None:
    for function in CACHED:
        function.cache_clear()


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _forget()
    yield tmp_path
    _forget()  # later tests read the lists from the usual place again


def _snapshot() -> tuple[dict[str, list[str]], dict[str, int]]:
    lists = lexicon._lists()
    return {f: getattr(lists, f).to_pylist() for f in lexicon._LIST_FIELDS}, lexicon._flags()


def _no_build() -> None:
    raise AssertionError("the lists were built although the cache holds them")


def test_a_second_process_reads_the_same_lists_from_the_cache(cache_home, monkeypatch) -> None:
    stale = cache_home / "clinipipe" / "lexicon-0000.arrow"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from other inputs")
    built = _snapshot()
    path = lexicon.lexicon_cache_file()
    assert path.parent == cache_home / "clinipipe" and path.is_file()
    assert not stale.exists()  # a file of other inputs is removed
    assert built[1]["smith"] & lexicon._NAME and built[1]["will"] & lexicon._AMBIGUOUS
    _forget()
    monkeypatch.setattr(lexicon, "_build_lists", _no_build)
    assert _snapshot() == built
    assert lexicon.is_name_token("Okafor") and not lexicon.is_name_token("Foley")


def test_a_corrupt_or_unwritable_cache_is_rebuilt_or_skipped(cache_home, monkeypatch) -> None:
    built = _snapshot()
    path = lexicon.lexicon_cache_file()
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    _forget()
    assert _snapshot() == built
    _forget()
    monkeypatch.setattr(lexicon, "_build_lists", _no_build)
    assert _snapshot() == built  # rewritten whole
    monkeypatch.undo()
    blocked = cache_home / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    _forget()
    assert _snapshot() == built
    assert not lexicon.lexicon_cache_file().exists()
