"""Run what clinipipe can do today, end to end, on this machine (no services needed).

Starts a throwaway PostgreSQL, scaffolds a project (by default in the system's temporary
folder, e.g. /tmp/clinipipe-quickstart: never inside the repository; `--dir` chooses another
place, and `quickstart/` is git-ignored should you pick that), fills the source with a
synthetic hospital, validates the spec, renders the SQL for DuckDB and Snowflake, deploys to a
local DuckDB warehouse twice (the second run changes nothing), backfills the history, changes
a few rows on the source and streams them (CDC, which also builds the dynamic tables,
publishes the interactive tables and scans every batch for PHI), shows their freshness, runs a
dashboard, scans for PHI leaks (one is planted) and builds a Safe Harbor research extract, which
fails closed: the planted SSN sits in a column the spec does not release, so the detectors scrub
it, and when the spec is then changed to release that column as it is, redact's own final scan
finds the SSN and refuses to call the extract de-identified (exit 3). The PostgreSQL server is
removed at the end; the project folder stays for you to look at.

    python examples/quickstart.py [--patients N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import psycopg2

from clinipipe.source.embedded import EmbeddedPostgres

MARKER = ".clinipipe-quickstart"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "clinipipe-quickstart"
"""Where the project goes by default: outside any repository, so nothing is left untracked."""


def step(title: str, *args: str, env: dict[str, str], cwd: Path, expect: int = 0) -> None:
    print(f"\n$ clinipipe {' '.join(args)}    # {title}", flush=True)
    done = subprocess.run([sys.executable, "-m", "clinipipe", *args], env=env, cwd=cwd)
    if done.returncode != expect:
        sys.exit(f"clinipipe {args[0]} exited {done.returncode}, expected {expect}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"project folder (default: {DEFAULT_DIR}); replaced if an earlier run made it",
    )
    args = parser.parse_args()
    project: Path = args.dir.resolve()
    if project.exists():
        if not (project / MARKER).exists():
            sys.exit(f"{project} exists and was not made by this script; choose another --dir")
        shutil.rmtree(project)

    with EmbeddedPostgres() as pg:
        print(f"Embedded PostgreSQL {pg.server_version_num // 10000} on {pg.host}:{pg.port}")
        # A throwaway pseudonym key for this demo only: a real one is generated once, kept
        # secret by the data owner and never changes (pseudonyms depend on it).
        env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg.dsn,
               "CLINIPIPE_HMAC_KEY": secrets.token_hex(32)}  # fmt: skip
        env.pop("CLINIPIPE_CONFIG", None)
        env.pop("CLINIPIPE_DUCKDB_PATH", None)
        step("scaffold the project", "init", str(project), env=env, cwd=project.parent)
        (project / MARKER).touch()
        step("synthetic EHR data into PostgreSQL", "synth", "--patients", str(args.patients),
             env=env, cwd=project)  # fmt: skip
        step("check the spec", "validate", env=env, cwd=project)
        for dialect in ("duckdb", "snowflake"):
            step(f"SQL for {dialect}", "render", "--target", dialect, "--out",
                 f"sql/{dialect}", env=env, cwd=project)  # fmt: skip
        step("what would run", "--quiet", "deploy", "--dry-run", "--json", env=env, cwd=project)
        step("deploy to DuckDB (and the publication on PostgreSQL)", "deploy", env=env, cwd=project)
        step("deploy again: nothing changes", "deploy", env=env, cwd=project)
        step("backfill history on the initialization warehouse", "backfill", env=env, cwd=project)
        step("backfill again: already complete", "backfill", env=env, cwd=project)
        with psycopg2.connect(pg.dsn) as source, source.cursor() as cur:
            print("\n(the hospital keeps working: new lab results for patient 1 on the source,"
                  " and a clerk pastes an SSN into a medication's frequency field)")  # fmt: skip
            cur.execute("UPDATE labs SET abnormal_flag = 'H' WHERE patient_id = 1")
            cur.execute(
                "UPDATE medications SET frequency = 'BID; pt SSN 123-45-6789 per phone' "
                "WHERE medication_id = (SELECT min(medication_id) FROM medications)"
            )
        source.close()
        step("stream the changes, refresh dynamic tables, publish interactive tables", "cdc",
             "start", "--until-caught-up", env=env, cwd=project)  # fmt: skip
        step("freshness of every derived and interactive table", "status", env=env, cwd=project)
        step("a dashboard, served from the published interactive table", "dashboard",
             "recent_labs_of_patient", "--param", "patient_id=1", env=env, cwd=project)  # fmt: skip
        step("PHI where it must not be: finds the pasted SSN (masked), exit 3", "scan",
             "--full", env=env, cwd=project, expect=3)  # fmt: skip
        step("a HIPAA Safe Harbor research extract: medications.frequency is not released, so "
             "the detectors scrub it (the SSN becomes [SSN]); redact scans what it wrote",
             "redact", "--policy", "safe_harbor", env=env, cwd=project)  # fmt: skip
        step("the research schema holds no PHI (the same scan, on demand)", "scan", "--schema",
             "research", "--full", env=env, cwd=project)  # fmt: skip
        spec = project / "clinipipe.yaml"
        text = spec.read_text()
        released = "release: [rxnorm_code, drug_name, dose, route]"
        assert released in text, "the example spec changed: update the quickstart"
        spec.write_text(text.replace(released, released[:-1] + ", frequency]"))
        print("\n(someone releases medications.frequency as it is in clinipipe.yaml)")
        step("redact again: medications is rebuilt with frequency copied as it is, and redact's "
             "final scan finds the SSN: NOT de-identified, exit 3", "redact", "--policy",
             "safe_harbor", env=env, cwd=project, expect=3)  # fmt: skip
        spec.write_text(text)
        print("\n(the release is taken back)")
        step("redact again: frequency is scrubbed again, the final scan is clean", "redact",
             "--policy", "safe_harbor", env=env, cwd=project)  # fmt: skip

    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as con:
        deployments = con.execute("SELECT count(*) FROM _clinipipe.deployments").fetchone()
        raw = con.execute(
            "SELECT count(*), sum(estimated_size) FROM duckdb_tables() WHERE schema_name = 'raw'"
        ).fetchone()
    print(
        f"\nDone. {project}/warehouse.duckdb holds {raw[0]} raw tables (~{raw[1]:,} rows) and "
        f"{deployments[0] if deployments else 0} deployment; rendered SQL is in {project}/sql/. "
        "The embedded PostgreSQL has been removed."
    )


if __name__ == "__main__":
    main()
