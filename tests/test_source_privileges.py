"""Least privilege on the source (issue 16, item 5): the rendered source setup creates a dedicated
replication user (LOGIN, REPLICATION, SELECT on the published tables, nothing else, no password),
clinipipe runs end to end as that user, and `deploy` names what the source user holds beyond need
(one warning line) and what it lacks (errors, exit 1).

Against the real embedded PostgreSQL, whose own user is a superuser (so every ordinary deploy in
the suite shows the superuser warning on stderr). Roles are cluster-wide: each test names its own.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.source.postgres import apply_source_files
from clinipipe.source.privileges import inspect_source_privileges
from clinipipe.spec import load_spec
from clinipipe.sql import render
from clinipipe.targets import dialect_of
from tests.helpers import TABLES, assert_target_equals_source, catch_up, cli, execute

REPLICATION_USER = "general_hospital_replication"  # examples/hospital.yaml: name general_hospital
PUBLISHED = [("public", t) for t in TABLES]


def as_user(dsn: str, user: str) -> str:
    """`dsn` with another user (the embedded server trusts loopback: no password)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def role_attributes(dsn: str, role: str) -> tuple[object, ...] | None:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT rolcanlogin, rolreplication, rolsuper, rolcreaterole, rolcreatedb, "
            "rolbypassrls, rolpassword IS NULL FROM pg_authid WHERE rolname = %s",
            (role,),
        )
        row = cur.fetchone()
    con.close()
    return row


def test_rendered_setup_creates_a_least_privilege_user_that_runs_the_pipeline(
    hospital_project: Path,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hospital_project` deployed as the superuser, which ran the source setup: the replication
    user exists with LOGIN and REPLICATION only, no password, SELECT on exactly the published
    tables and owns none. Switched to it, deploy warns about nothing, the source setup runs as a
    no-op, and backfill + CDC catch-up are exact."""
    assert role_attributes(pg_dsn, REPLICATION_USER) == (True, True, False, False, False, False,
                                                         True)  # fmt: skip
    with psycopg2.connect(pg_dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT c.relname, has_table_privilege(%s, c.oid, 'SELECT'), "
            "has_table_privilege(%s, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'), "
            "pg_get_userbyid(c.relowner) = %s "
            "FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' "
            "ORDER BY 1",
            (REPLICATION_USER, REPLICATION_USER, REPLICATION_USER),
        )
        rows = cur.fetchall()
    con.close()
    assert {r[0] for r in rows if r[1]} == set(TABLES)  # SELECT on the published tables only
    assert not [r for r in rows if r[2] or r[3]]  # no write privilege, owns nothing

    least = as_user(pg_dsn, REPLICATION_USER)
    privileges = inspect_source_privileges(least, PUBLISHED)
    assert (privileges.user, privileges.excess, privileges.missing) == (REPLICATION_USER, (), ())
    assert privileges.warning() is None and privileges.errors() == []

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", least)
    loaded = load_spec(hospital_project)
    source_file = next(f for f in render(loaded, dialect_of("duckdb")) if f.runs_on == "source")
    assert apply_source_files(least, [source_file]) == len(source_file.statements)  # a no-op
    code, _, err = cli(capsys, "-c", str(hospital_project), "deploy", "--dry-run")
    assert code == 0 and "warning" not in err and "error" not in err, err

    run_backfill(loaded, BackfillOptions())
    execute(
        pg_dsn,
        "UPDATE patients SET last_name = 'Leastprivson' WHERE patient_id IN "
        "(SELECT patient_id FROM patients ORDER BY patient_id LIMIT 3)",
        "DELETE FROM clinical_notes WHERE note_id IN "
        "(SELECT note_id FROM clinical_notes ORDER BY note_id LIMIT 2)",
    )
    catch_up(loaded)
    assert_target_equals_source(pg_dsn, loaded.directory / "warehouse.duckdb")


def test_superuser_gets_one_warning_line(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    privileges = inspect_source_privileges(pg_dsn, PUBLISHED)
    assert privileges.excess == ("superuser",) and privileges.missing == ()
    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy", "--dry-run")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "more privileges than clinipipe needs: superuser." in " ".join(err.split())
    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy", "--json")
    assert code == 0, err
    (warning,) = json.loads(out)["source_warnings"]
    assert "superuser" in warning and "REPLICATION" in warning


def test_over_granted_user_gets_each_excess_privilege_named(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"over_{uuid.uuid4().hex[:8]}"
    execute(
        pg_dsn,
        f"CREATE ROLE {user} LOGIN REPLICATION CREATEDB CREATEROLE",
        f"GRANT pg_write_all_data, pg_monitor TO {user}",
        f"GRANT SELECT ON {', '.join(TABLES)} TO {user}",
        f"GRANT INSERT, DELETE ON labs TO {user}",
        f"ALTER TABLE claims OWNER TO {user}",
    )
    privileges = inspect_source_privileges(as_user(pg_dsn, user), PUBLISHED)
    assert privileges.missing == ()
    excess = set(privileges.excess)
    assert {"CREATEROLE", "CREATEDB", "member of pg_monitor", "member of pg_write_all_data",
            "owner of public.claims"} <= excess  # fmt: skip
    # pg_write_all_data grants every write on every table: each published table is named.
    assert "INSERT, UPDATE, DELETE on public.patients" in excess
    assert "BYPASSRLS" not in excess and "superuser" not in excess
    assert not [e for e in excess if "TRUNCATE" in e and "claims" not in e]  # not held

    execute(pg_dsn, f"REVOKE pg_write_all_data FROM {user}")
    excess = set(inspect_source_privileges(as_user(pg_dsn, user), PUBLISHED).excess)
    assert "INSERT, DELETE on public.labs" in excess
    assert not [e for e in excess if e.endswith("public.patients")]

    spec = hospital_project.read_text().replace("${CLINIPIPE_SOURCE_DSN}", as_user(pg_dsn, user))
    hospital_project.write_text(spec)
    code, _, err = cli(capsys, "-c", str(hospital_project), "deploy", "--dry-run")
    assert code == 0, err
    line = " ".join(err.split())
    assert line.count("warning:") == 1 and f"source user {user} has more privileges" in line
    for phrase in ("CREATEROLE", "CREATEDB", "member of pg_monitor", "owner of public.claims",
                   "INSERT, DELETE on public.labs"):  # fmt: skip
        assert phrase in line, phrase


def test_missing_replication_and_select_are_errors(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"short_{uuid.uuid4().hex[:8]}"
    tables = [t for t in TABLES if t != "labs"]
    execute(pg_dsn, f"CREATE ROLE {user} LOGIN", f"GRANT SELECT ON {', '.join(tables)} TO {user}")
    privileges = inspect_source_privileges(as_user(pg_dsn, user), PUBLISHED)
    assert privileges.excess == ()
    assert privileges.missing == ("REPLICATION", "SELECT on public.labs")

    spec = hospital_project.read_text().replace("${CLINIPIPE_SOURCE_DSN}", as_user(pg_dsn, user))
    hospital_project.write_text(spec)
    code, out, err = cli(capsys, "-c", str(hospital_project), "deploy")
    assert code == 1, out + err
    text = " ".join(err.split())
    assert f"error: source user {user} lacks REPLICATION" in text
    assert f"ALTER ROLE {user} WITH REPLICATION" in text
    assert (
        "lacks SELECT on public.labs" in text and f"GRANT SELECT ON public.labs TO {user}" in text
    )
    assert "warning:" not in text
