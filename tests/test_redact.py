"""`clinipipe redact` end to end: a synthetic hospital in the embedded PostgreSQL, backfilled into
DuckDB, redacted with the real detectors (notes included), then changed through CDC."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import duckdb
import pytest

from clinipipe.backup import audit
from clinipipe.phi.linkage import eponym_use
from clinipipe.phi.safe_harbor import TREATMENTS, RedactionKey, Treatment
from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.spec import LoadedSpec, load_spec
from clinipipe.targets.duckdb import DuckDBTarget
from tests.helpers import catch_up, cli, execute

KEY = "end-to-end-key-0123456789-abcdefghij"
# Identifiers a note must never keep about its own patient (record linkage finds them even
# where the generic detectors would not).
OWN_IDENTIFIERS = ("mrn", "ssn", "phone", "email", "first_name", "last_name", "street_address")


@pytest.fixture
def loaded(hospital_project: Path, monkeypatch: pytest.MonkeyPatch) -> LoadedSpec:
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", KEY)
    spec = load_spec(hospital_project)
    run_backfill(spec, BackfillOptions())
    return spec


def connect(loaded: LoadedSpec) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(loaded.directory / "warehouse.duckdb"), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    return con


def redact(capsys: pytest.CaptureFixture[str], loaded: LoadedSpec, *args: str) -> dict:
    code, out, err = cli(capsys, "-c", str(loaded.path), "redact", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def raw_phi_values(con: duckdb.DuckDBPyConnection, loaded: LoadedSpec, policy: str) -> set[str]:
    """Every value, as text, of every raw column whose class the policy does not keep."""
    values: set[str] = set()
    for table in loaded.spec.source.tables:
        for column, phi_class in table.columns.items():
            if TREATMENTS[policy][phi_class] in (Treatment.KEEP, Treatment.TEXT):
                continue
            rows = con.execute(
                f'SELECT DISTINCT CAST("{column}" AS VARCHAR) FROM raw."{table.name}" '
                f'WHERE "{column}" IS NOT NULL'
            ).fetchall()
            values |= {r[0] for r in rows}
            if policy != "limited_dataset" and phi_class in ("date", "birth_date"):
                rows = con.execute(
                    f'SELECT DISTINCT CAST(CAST("{column}" AS DATE) AS VARCHAR) '
                    f'FROM raw."{table.name}" WHERE "{column}" IS NOT NULL'
                ).fetchall()
                values |= {r[0] for r in rows}
    return values


def test_research_schema_holds_no_raw_phi_value(
    loaded: LoadedSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    result = redact(capsys, loaded, "--policy", "safe_harbor")
    assert result["rebuilt"] == [t.name for t in loaded.spec.source.tables]
    treatments = {
        t["table"]: {c["column"]: c["treatment"] for c in t["columns"]} for t in result["tables"]
    }
    with connect(loaded) as con:
        phi = raw_phi_values(con, loaded, "safe_harbor")
        assert len(phi) > 3000
        checked = 0
        for table in loaded.spec.source.tables:
            research = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                f"'research' AND table_name = '{table.name}'"
            ).fetchall()
            for (column,) in research:
                cls = table.columns.get(column, "none")
                if cls not in ("none", "free_text"):
                    # a classified column survives only transformed
                    assert TREATMENTS["safe_harbor"][cls] is not Treatment.KEEP
                values = con.execute(
                    f'SELECT DISTINCT CAST("{column}" AS VARCHAR) FROM research."{table.name}"'
                ).fetchall()
                own: set[str] = set()
                if treatments[table.name].get(column) == "keep":
                    # copied through: a payer 'Aetna' is no leak of an employer 'Aetna'
                    own = {
                        v
                        for (v,) in con.execute(
                            f'SELECT DISTINCT CAST("{column}" AS VARCHAR) FROM raw."{table.name}"'
                        ).fetchall()
                    }
                leaked = {v for (v,) in values if v in phi and v not in own}
                assert not leaked, f"research.{table.name}.{column} holds raw PHI values"
                checked += len(values)
        assert checked > 10_000
        # Notes: not one of their own patient's identifiers survives, anywhere in the text.
        own = ", ".join(f"p.{c}" for c in OWN_IDENTIFIERS)
        key = RedactionKey(KEY.encode())
        raw_notes = con.execute(
            f"SELECT n.note_id, {own} FROM raw.clinical_notes n JOIN raw.patients p "
            "USING (patient_id)"
        ).fetchall()
        redacted = dict(
            con.execute("SELECT note_id, note_text FROM research.clinical_notes").fetchall()
        )
    assert len(redacted) == len(raw_notes) > 1000
    for note_id, *identifiers in raw_notes:
        text = redacted[key.pseudonym(note_id, "note_id")]
        for column, value in zip(OWN_IDENTIFIERS, identifiers, strict=True):
            if value and len(value) > 2:
                for found in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.I):
                    # "Allen test" for a patient named Allen names the test, not the patient
                    if column.endswith("name") and eponym_use(text, found.start(), found.end()):
                        continue
                    raise AssertionError(f"note {note_id} keeps its {column}")
    assert any("[NAME]" in t for t in redacted.values())
    assert any("[MRN]" in t for t in redacted.values())


def test_surrogates_are_consistent(loaded: LoadedSpec, capsys: pytest.CaptureFixture[str]) -> None:
    redact(capsys, loaded, "--policy", "safe_harbor", "--surrogates", "--tables", "clinical_notes")
    key = RedactionKey(KEY.encode())
    with connect(loaded) as con:
        raw = con.execute(
            "SELECT n.note_id, n.patient_id, p.mrn, p.ssn FROM raw.clinical_notes n "
            "JOIN raw.patients p USING (patient_id) ORDER BY n.note_id"
        ).fetchall()
        redacted = dict(
            con.execute("SELECT note_id, note_text FROM research.clinical_notes").fetchall()
        )
    assert not any(re.search(r"\[[A-Z_]+\]", t) for t in redacted.values())
    by_patient: dict[int, list[str]] = {}
    # (Names are not compared here: a surrogate name may by chance be some patient's real one.)
    for note_id, pid, mrn, ssn in raw:
        text = redacted[key.pseudonym(note_id, "note_id")]
        assert mrn not in text and (ssn is None or ssn not in text)
        by_patient.setdefault(pid, []).append(text)
    # the same MRN always becomes the same surrogate: notes of one patient share a token
    shared = 0
    for texts in by_patient.values():
        if len(texts) > 1:
            tokens = [set(re.findall(r"\bMRN\W+(\S+)", t)) for t in texts]
            if tokens[0] and tokens[1]:
                shared += bool(tokens[0] & tokens[1])
    assert shared > 10


def test_shifted_notes_move_with_their_patients_dates(
    loaded: LoadedSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    redact(capsys, loaded, "--policy", "shifted", "--to", "shifted")
    key = RedactionKey(KEY.encode())
    with connect(loaded) as con:
        raw = con.execute(
            "SELECT note_id, patient_id, note_ts, note_text FROM raw.clinical_notes"
        ).fetchall()
        research = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT note_id, note_ts, note_text FROM shifted.clinical_notes"
            ).fetchall()
        }
    moved = 0
    for note_id, pid, note_ts, text in raw:
        shifted_ts, shifted_text = research[key.pseudonym(note_id, "note_id")]
        days = key.shift_days(pid)
        assert days is not None and shifted_ts - note_ts == dt.timedelta(days=days)
        day = note_ts.date().isoformat()
        if day in text:  # a header date in ISO form: shifted like the structured column
            assert day not in shifted_text
            assert shifted_ts.date().isoformat() in shifted_text
            moved += 1
        us = f"{note_ts.month}/{note_ts.day}/{note_ts.year}"
        if re.search(rf"(?<![\d/]){us}", text):  # US form, unpadded: shifted, unpadded
            new = shifted_ts.date()
            assert f"{new.month}/{new.day}/{new.year}" in shifted_text
            moved += 1
    assert moved > 100


def test_cdc_changes_rebuild_only_what_they_touch(
    loaded: LoadedSpec, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = redact(capsys, loaded, "--policy", "safe_harbor")
    assert len(first["rebuilt"]) == 7
    assert redact(capsys, loaded, "--policy", "safe_harbor")["rebuilt"] == []
    execute(pg_dsn, "UPDATE labs SET value_numeric = value_numeric + 1 WHERE lab_id = 1")
    catch_up(loaded)
    assert redact(capsys, loaded, "--policy", "safe_harbor")["rebuilt"] == ["labs"]
    # A patient's name feeds record linkage in the notes and in the unclassified (scrubbed)
    # medications.frequency: all three are rebuilt.
    execute(pg_dsn, "UPDATE patients SET last_name = 'Zyzzyva' WHERE patient_id = 1")
    catch_up(loaded)
    again = redact(capsys, loaded, "--policy", "safe_harbor")
    assert sorted(again["rebuilt"]) == ["clinical_notes", "medications", "patients"]
    with DuckDBTarget(loaded, read_only=True) as target:
        verified = audit.verify(target)
        redact_entries = [e for e in audit.entries(target) if e.action.startswith("redact")]
        # each run: its manifest, its final scan (backfill and cdc runs have entries of their own)
        assert verified.ok and len(redact_entries) == 8
        entries = audit.entries(target)
        manifests = [e.detail for e in entries if e.action == "redact"]
        scans = [e.detail for e in entries if e.action == "redact_scan"]
    assert len(manifests) == len(scans) == 4 and all(s["clean"] for s in scans)
    assert all(len(s["tables"]) == 7 for s in scans)  # skipped tables are scanned too
    assert [sorted(t["table"] for t in m["tables"] if t["action"] == "rebuilt")
            for m in manifests][2:] == [["labs"], ["clinical_notes", "medications",
                                               "patients"]]  # fmt: skip
    assert "Zyzzyva" not in json.dumps(manifests)
