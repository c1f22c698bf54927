"""The PHI evaluation harness (benchmarks/phi_scoring.py, benchmarks/phi_corpus2,
benchmarks/phi_eval_presidio.py): the scorer judges what redaction returns, whole words; the
independent generator is deterministic and labels exactly; the vendored Presidio set loads.

No test here generates the sealed split or runs detectors over it (only its guards are checked).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import phi_corpus2
import phi_eval_presidio as presidio
import phi_scoring as ps
from phi_corpus2 import CATEGORIES_PRODUCED, STYLES, SealedSplitError, generate

from clinipipe.phi import CATEGORIES, DetectorSet

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# --- scorer ------------------------------------------------------------------------------------


def _doc(text: str, *gold: tuple[str, str], keep: tuple[str, ...] = ()) -> ps.Doc:
    """A document whose gold spans are the first occurrences of the given values."""
    d = ps.Doc(text)
    for value, cat in gold:
        a = text.index(value)
        d.gold.append(ps.Span(a, a + len(value), cat))
    for term in keep:
        a = text.index(term)
        d.keep.append(ps.Span(a, a + len(term), "drug"))
    return d


def test_surname_left_beside_name_tag_is_a_leak() -> None:
    d = _doc("Pt John Smith seen today.", ("John Smith", "NAME"))
    s = ps.score([d], ["Pt [NAME] Smith seen today."], keep_leaks=5)
    assert s.gold_tokens == 2 and s.recalled_tokens == 1
    assert s.leaking_notes == 1 and s.leak_rate == 1.0
    assert s.leaked_spans_by_category == {"NAME": 1}
    assert s.leaks[0].survivors == ("Smith",)
    full = ps.score([d], ["Pt [NAME] seen today."])
    assert full.recall == 1.0 and full.leaking_notes == 0 and full.precision == 1.0


def test_whole_words_a_partly_replaced_token_is_not_recalled() -> None:
    d = _doc("Call 6175551234 now", ("6175551234", "PHONE"))
    s = ps.score([d], ["Call 617[PHONE] now"])
    assert s.recall == 0.0 and s.leaking_notes == 1
    # ...but it was touched, so it counts as a redacted (correct) token for precision
    assert s.redacted_tokens == 1 and s.precision == 1.0


def test_precision_counts_over_redaction_and_must_keep_terms() -> None:
    d = _doc("Jane Roe on Lyrica and Eliquis.", ("Jane", "NAME"), ("Roe", "NAME"),
             keep=("Lyrica", "Eliquis"))  # fmt: skip
    s = ps.score([d], ["[NAME] [NAME] on [NAME] and Eliquis."], keep_leaks=5)
    assert s.recall == 1.0
    assert s.redacted_tokens == 3 and s.redacted_gold_tokens == 2
    assert s.precision == pytest.approx(2 / 3)
    assert s.keep_terms == 2 and s.keep_over_redacted == 1 and s.over_redaction_rate == 0.5
    assert [t.start for _, t in s.over_redacted] == [d.text.index("Lyrica")]


def test_neutral_tokens_count_neither_way() -> None:
    d = _doc("Seen 03/04/2021 here", ("03/04/2021", "DATE"))
    year = d.text.index("2021")
    d.neutral.append((year, year + 4))
    kept_year = ps.score([d], ["Seen [DATE]/2021 here"])
    assert kept_year.gold_tokens == 2 and kept_year.recall == 1.0
    assert kept_year.leaking_notes == 0
    all_gone = ps.score([d], ["Seen [DATE] here"])
    assert all_gone.redacted_tokens == 2 and all_gone.precision == 1.0


def test_alignment_from_the_output_and_its_fallback() -> None:
    text = "Lee saw Lee Lee"
    assert ps.kept_mask(text, "[NAME] saw Lee Lee") == bytearray([0] * 3 + [1] * 12)
    assert ps.kept_mask(text, "Lee saw [NAME] Lee") is not None
    assert ps.kept_mask(text, text) == bytearray([1] * len(text))
    assert ps.kept_mask(text, "Lee saw Lee Lee!") is None  # not original-with-tags
    d = _doc(text, ("Lee", "NAME"))
    s = ps.score([d], ["Lee saw LEE Lee (edited)"])
    assert s.alignment_fallbacks == 1 and s.recall == 0.0  # diff matched the first "Lee"


def test_verdicts_met_missed_and_not_judged() -> None:
    d = _doc("Pt John Smith seen.", ("John Smith", "NAME"))
    good = ps.verdicts(ps.score([d], ["Pt [NAME] seen."]))
    assert [v.verdict for v in good] == ["met"] * 4
    bad = ps.verdicts(ps.score([d], ["Pt [NAME] Smith seen."]))
    assert [v.verdict for v in bad][:3] == ["missed"] * 3
    assert {v.verdict for v in ps.verdicts(None)} == {"not judged"}
    assert {v.verdict for v in ps.verdicts(ps.score([d], ["Pt [NAME] seen."]), False)} == {
        "not judged"
    }
    no_gold = ps.score([ps.Doc("nothing here")], ["nothing here"])
    assert {v.verdict for v in ps.verdicts(no_gold)} == {"not judged"}
    assert ps.speed_verdict(ps.Speed(10.0, (1.0, 3.0, 1.5))).verdict == "met"  # median 1.5 s
    assert ps.speed_verdict(ps.Speed(10.0, (1.0, 3.0, 2.5))).verdict == "missed"  # best 10 MB/s


# --- independent generator -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev() -> phi_corpus2.Corpus2:
    return generate(200)


def test_generator_is_deterministic_and_prefix_stable(dev: phi_corpus2.Corpus2) -> None:
    again = generate(40)
    assert [d.text for d in again.docs] == [d.text for d in dev.docs[:40]]
    assert [d.gold for d in again.docs] == [d.gold for d in dev.docs[:40]]
    assert again.known.equals(dev.known.slice(0, 40))
    assert len({d.text for d in dev.docs}) == len(dev.docs)


def test_sealed_split_is_guarded_and_disjoint() -> None:
    with pytest.raises(SealedSplitError):
        generate(1, "sealed")
    with pytest.raises(ValueError):
        generate(1, "test")
    bases = sorted(phi_corpus2.SPLIT_BASE.values())
    assert bases[0] + phi_corpus2.MAX_NOTES <= bases[1]
    run = subprocess.run(
        [sys.executable, str(BENCH / "phi_eval_independent.py"), "--split", "sealed",
         "--show-leaks", "3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "refused" in run.stderr and not run.stdout


_SHAPES = {
    "EMAIL": re.compile(r"[^@\s]+@[a-z0-9.]+\.[a-z]+"),
    "VEHICLE": re.compile(r"[A-HJ-NPR-Z0-9]{17}|[A-Z0-9 -]{5,8}"),
    "SSN": re.compile(r"\d{3}[- ]?\d{2}[- ]?\d{4}|\d{4}"),
    "ZIP": re.compile(r"\d{5}(-\d{4})?|[A-Z0-9 -]{3,10}"),
    "AGE": re.compile(r"(9\d|1\d\d)"),
}


def test_every_category_is_produced_with_exact_gold_spans(dev: phi_corpus2.Corpus2) -> None:
    seen: dict[str, int] = {}
    for doc in dev.docs:
        spans = sorted(doc.gold, key=lambda s: s.start)
        for a, b in itertools.pairwise(spans):
            assert a.end <= b.start, (a, b)
        for sp in spans:
            value = doc.text[sp.start : sp.end]
            assert value and value == value.strip() and any(c.isalnum() for c in value), sp
            assert sp.category in CATEGORIES
            seen[sp.category] = seen.get(sp.category, 0) + 1
            shape = _SHAPES.get(sp.category)
            assert shape is None or shape.fullmatch(value), (sp.category, sp.kind)
            if sp.category == "IP":
                ipaddress.ip_address(value)
            if sp.category in ("PHONE", "FAX"):
                d = re.sub(r"\D", "", value.split(" x")[0])
                assert len(d) == 10 or (len(d) == 11 and d[0] == "1"), value
        for a, b in doc.neutral:
            assert 0 <= a < b <= len(doc.text)
        for term in doc.keep:
            assert not any(g.start < term.end and term.start < g.end for g in doc.gold)
    assert set(seen) == set(CATEGORIES_PRODUCED), set(CATEGORIES_PRODUCED) - set(seen)
    assert set(dev.styles) == set(STYLES)
    kept = {t.category for d in dev.docs for t in d.keep}
    assert kept == {"abbrev", "drug", "eponym", "measure", "age_le_89"}
    assert dev.known.num_rows == len(dev) and set(dev.known.column_names) == set(
        dev.known_categories
    )
    assert set(dev.known_categories.values()) <= set(CATEGORIES)


def test_patient_record_values_are_in_the_notes(dev: phi_corpus2.Corpus2) -> None:
    """Linkage has something to find: each note names its patient's first name in a gold span."""
    firsts = dev.known.column("first_name").to_pylist()
    for doc, first in zip(dev.docs, firsts, strict=True):
        names = {doc.text[s.start : s.end].lower() for s in doc.gold if s.category == "NAME"}
        assert first.lower() in names


def test_the_real_redactor_output_aligns(dev: phi_corpus2.Corpus2) -> None:
    """The scorer's assumption (output = input with spans replaced by tags) holds for
    DetectorSet.redact on dev notes, with and without linkage."""
    docs = dev.docs[:16]
    texts = pa.array([d.text for d in docs], pa.string())
    ds = DetectorSet.load()
    for out in (ds.redact(texts), ds.redact(texts, dev.known.slice(0, 16), dev.known_categories)):
        s = ps.score(docs, out.to_pylist())
        assert s.alignment_fallbacks == 0 and s.gold_tokens > 0


# --- Presidio ------------------------------------------------------------------------------------


def test_presidio_loader_reads_the_vendored_file() -> None:
    docs = presidio.load()
    raw = json.loads(presidio.DATA.read_text(encoding="utf-8"))
    assert len(docs) == len(raw) == 1500
    assert (presidio.DATA.parent / "LICENSE").read_text().count("MIT License") == 1
    types = {s["entity_type"] for r in raw for s in r["spans"]}
    assert types == set(presidio.MAPPING) | set(presidio.NOT_SCORED)
    by_cat: dict[str, int] = {}
    for doc, rec in zip(docs, raw, strict=True):
        assert doc.text == rec["full_text"]
        for sp in doc.gold:
            by_cat[sp.category] = by_cat.get(sp.category, 0) + 1
    assert set(by_cat) <= set(CATEGORIES)
    assert by_cat["NAME"] == sum(s["entity_type"] == "PERSON" for r in raw for s in r["spans"])
    # ages of 89 or less are neutral, not gold
    assert by_cat.get("AGE", 0) < sum(s["entity_type"] == "AGE" for r in raw for s in r["spans"])


def test_presidio_neutral_years_and_phone_kinds() -> None:
    assert presidio.phone_kind("+1-903-140-4508x769") == "phone_us"
    assert presidio.phone_kind("(579)888-3058") == "phone_us"
    assert presidio.phone_kind("0489 25 37 29") == "phone_other"
    docs = presidio.load()
    year_only = [
        d
        for d in docs
        for s in d.gold
        if s.category == "DATE" and d.text[s.start : s.end] == "1971"
    ]
    assert year_only  # a year-only DATE_TIME is labelled, but all of it is neutral:
    s = ps.score(year_only[:1], [year_only[0].text])
    assert s.gold_tokens == 0


def test_independent_corpus_does_not_depend_on_the_hash_seed() -> None:
    """Two processes with different PYTHONHASHSEED generate the same notes (Faker's it_IT
    cities come from a set: unsorted, the figures of one evaluation moved between runs)."""
    import os

    script = (
        "import hashlib, sys; sys.path.insert(0, 'benchmarks'); "
        "from phi_corpus2 import generate; "
        "print(hashlib.md5(chr(0).join(generate(2000).texts).encode()).hexdigest())"
    )
    root = Path(__file__).resolve().parents[1]
    digests = {
        subprocess.run(
            [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(digests) == 1, digests
