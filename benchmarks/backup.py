"""Backup benchmark: `clinipipe backup create` of 2 M encounters + 200 k clinical notes from a
DuckDB warehouse into the local store, an immediate second backup (nothing changed), and
`backup verify --read-data`; anchored in the same run on `restic` (if installed) and on a plain
`tar | zstd` of the same Parquet files.

The warehouse is built directly in DuckDB (the hospital schema's encounters and
clinical_notes columns; notes of ~150 words drawn from a clinical vocabulary): the backfill has
its own benchmark. Every run uses a fresh store. Figures are the best and the median of
``--repeat`` runs; the load average is printed before and after (2-core machines are shared).

    python benchmarks/backup.py [--encounters 2000000] [--notes 200000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clinipipe.backup.service import create_backup  # noqa: E402
from clinipipe.backup.store import LocalStore  # noqa: E402
from clinipipe.backup.verify import verify_store  # noqa: E402
from clinipipe.spec import load_spec  # noqa: E402
from clinipipe.sql.render import render  # noqa: E402
from clinipipe.targets import DeploymentRecord  # noqa: E402
from clinipipe.targets.duckdb import DuckDBTarget  # noqa: E402

VOCABULARY = (
    "patient presents with chest pain shortness of breath denies fever chills nausea "
    "vomiting history hypertension diabetes mellitus type two hyperlipidemia coronary artery "
    "disease medications include metformin lisinopril atorvastatin aspirin allergies none "
    "known exam reveals regular rate rhythm lungs clear bilaterally abdomen soft nontender "
    "extremities without edema assessment plan continue current regimen follow up primary "
    "care two weeks labs ordered cbc bmp troponin ecg normal sinus rhythm discharged stable "
    "condition instructed return precautions reviewed understanding verbalized"
)
WORDS = VOCABULARY.split()


def build(folder: Path, encounters: int, notes: int) -> Path:
    os.environ.setdefault("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    os.environ.pop("CLINIPIPE_DUCKDB_PATH", None)
    spec = folder / "clinipipe.yaml"
    spec.write_text((ROOT / "examples" / "hospital.yaml").read_text())
    loaded = load_spec(spec)
    words = "[" + ", ".join(f"'{w}'" for w in WORDS) + "]"
    with DuckDBTarget(loaded) as target:
        files = [f for f in render(loaded, target.dialect) if f.runs_on == "target"]
        target.apply_deployment(files, DeploymentRecord(loaded.digest, "duckdb"))
        target.con.execute(f"""
            CREATE TABLE raw.encounters AS SELECT e AS encounter_id,
              1 + (e * 7919) % {max(1, encounters // 10)} AS patient_id, 1 + e % 500 AS provider_id,
              (['inpatient', 'outpatient', 'emergency'])[1 + e % 3] AS encounter_type,
              (['Cardiology', 'Emergency', 'Oncology', 'ICU'])[1 + (hash(e) % 4)::BIGINT]
                AS department,
              TIMESTAMPTZ '2023-01-01 00:00:00+00' + (hash(e) % 63072000) * INTERVAL 1 SECOND
                AS admit_ts,
              TIMESTAMPTZ '2023-01-01 00:00:00+00' + (hash(e) % 63072000 + 3600 * (1 + e % 96))
                * INTERVAL 1 SECOND AS discharge_ts,
              'I' || lpad((hash(e, 1) % 1000)::VARCHAR, 3, '0') AS primary_dx,
              'ACC' || lpad(e::VARCHAR, 11, '0') AS account_number
            FROM range(1, {encounters} + 1) r(e)""")
        target.con.execute(f"""
            CREATE TABLE raw.clinical_notes AS SELECT n AS note_id,
              1 + (n * 13) % {encounters} AS encounter_id,
              1 + (n * 7919) % {max(1, encounters // 10)} AS patient_id,
              1 + n % 500 AS provider_id,
              (['progress', 'discharge', 'consult'])[1 + n % 3] AS note_type,
              TIMESTAMPTZ '2023-01-01 00:00:00+00' + (hash(n) % 63072000) * INTERVAL 1 SECOND
                AS note_ts,
              array_to_string(list_transform(range(150),
                x -> {words}[1 + (hash(n, x) % {len(WORDS)})::BIGINT]), ' ') AS note_text
            FROM range(1, {notes} + 1) r(n)""")
    return spec


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_once(spec: Path, work: Path) -> dict[str, float]:
    loaded = load_spec(spec)
    store_dir = work / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = LocalStore(store_dir)
    with DuckDBTarget(loaded) as target:
        first = create_backup(loaded, target, store=store)
        second = create_backup(loaded, target, store=store)
    started = time.monotonic()
    report = verify_store(store, read_data=True)
    verify_s = time.monotonic() - started
    assert report.ok, report.as_dict()
    data = _dir_bytes(store_dir / "objects")
    return {
        "first_s": first.seconds, "first_bytes": first.bytes_written,
        "first_mb_s": first.bytes_written / first.seconds / 1e6,
        "rows_per_s": sum(t["rows"] for t in first.tables) / first.seconds,
        "second_s": second.seconds, "second_bytes": second.bytes_written,
        "verify_s": verify_s, "verify_mb_s": report.bytes_read / verify_s / 1e6,
        "object_bytes": data,
    }  # fmt: skip


def anchors(objects: Path, work: Path) -> dict[str, float]:
    """`tar | zstd` and (if installed) `restic backup` twice + `restic check --read-data` of
    the same Parquet files."""
    size = _dir_bytes(objects)
    out: dict[str, float] = {}
    started = time.monotonic()
    archive = work / "objects.tar.zst"
    subprocess.run(f"tar -cf - -C {objects} . | zstd -q -3 -f -o {archive}", shell=True,
                   check=True)  # fmt: skip
    seconds = time.monotonic() - started
    out.update({"tar_zstd_s": seconds, "tar_zstd_mb_s": size / seconds / 1e6})
    restic = shutil.which("restic")
    if restic:
        repo = work / "restic"
        shutil.rmtree(repo, ignore_errors=True)
        env = {**os.environ, "RESTIC_PASSWORD": "benchmark-only", "RESTIC_REPOSITORY": str(repo)}
        run = {"env": env, "check": True, "capture_output": True}
        subprocess.run([restic, "init"], **run)  # type: ignore[call-overload]
        for label in ("restic_first", "restic_second"):
            started = time.monotonic()
            subprocess.run([restic, "backup", "--quiet", str(objects)], **run)  # type: ignore[call-overload]
            out[f"{label}_s"] = time.monotonic() - started
        out["restic_first_mb_s"] = size / out["restic_first_s"] / 1e6
        started = time.monotonic()
        subprocess.run([restic, "check", "--read-data"], **run)  # type: ignore[call-overload]
        out["restic_check_s"] = time.monotonic() - started
        out["restic_repo_bytes"] = _dir_bytes(repo)
        out["restic_check_mb_s"] = out["restic_repo_bytes"] / out["restic_check_s"] / 1e6
    return out


def summary(runs: list[dict[str, float]], key: str, best: str = "min") -> dict[str, float]:
    values = [r[key] for r in runs if key in r]
    pick = min(values) if best == "min" else max(values)
    return {"best": round(pick, 3), "median": round(statistics.median(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encounters", type=int, default=2_000_000)
    parser.add_argument("--notes", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="clinipipe-bench-backup-"))
    folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.monotonic()
    spec = build(folder, args.encounters, args.notes)
    build_s = time.monotonic() - started
    runs, anchor_runs = [], []
    for i in range(args.repeat):
        runs.append(run_once(spec, folder))
        anchor_runs.append(anchors(folder / "store" / "objects", folder))
        last = runs[-1]
        print(f"run {i + 1}: backup {last['first_s']:.2f} s, second {last['second_s']:.2f} s, "
              f"verify {last['verify_s']:.2f} s", file=sys.stderr)  # fmt: skip
    result = {
        "encounters": args.encounters, "notes": args.notes, "repeat": args.repeat,
        "build_s": round(build_s, 1), "object_mb": round(runs[0]["object_bytes"] / 1e6, 1),
        "backup_s": summary(runs, "first_s"),
        "backup_mb_s": summary(runs, "first_mb_s", "max"),
        "backup_rows_s": summary(runs, "rows_per_s", "max"),
        "second_backup_s": summary(runs, "second_s"),
        "second_backup_bytes": summary(runs, "second_bytes"),
        "verify_read_data_s": summary(runs, "verify_s"),
        "verify_read_data_mb_s": summary(runs, "verify_mb_s", "max"),
        "anchor_tar_zstd_mb_s": summary(anchor_runs, "tar_zstd_mb_s", "max"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    if "restic_first_s" in anchor_runs[0]:
        result.update({
            "anchor_restic_backup_mb_s": summary(anchor_runs, "restic_first_mb_s", "max"),
            "anchor_restic_second_backup_s": summary(anchor_runs, "restic_second_s"),
            "anchor_restic_check_read_data_mb_s": summary(anchor_runs, "restic_check_mb_s",
                                                          "max"),
        })  # fmt: skip
    else:
        result["anchor_restic"] = "not installed (apt-get install restic)"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:36} {value}")
    if args.folder is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
