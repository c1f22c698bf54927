"""The README's "Using it" block runs as written, on a fresh folder, against a real PostgreSQL.

The commands are read from the README itself (not copied here), so reordering or changing them
there is what this test checks. Each line runs as a new user would type it: `clinipipe ...` as
the installed command (a child process), `cd` and `cp` as the shell would. The source DSN and
the pseudonym key come from the environment, as the README's `cp .env.example .env` comment
allows (the environment wins over the placeholder in `.env`). `pip install` is skipped: the
test runs in the environment it installed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from tests.helpers import REPO

README = REPO / "README.md"


def using_it_commands(text: str) -> list[str]:
    """The command lines of the first fenced block under "## Using it", comments removed."""
    section = text.split("## Using it", 1)[1]
    block = section.split("```", 2)[1]
    commands = []
    for line in block.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def test_the_using_it_block_is_what_this_test_expects() -> None:
    """The parser sees the README's commands (a guard against silently running nothing), and
    the order that failed before: the source tables exist (synth) before deploy needs them."""
    commands = using_it_commands(README.read_text())
    names = [c.split()[1] if c.startswith("clinipipe ") else c.split()[0] for c in commands]
    assert names[:3] == ["pip", "init", "cp"]
    assert names.index("synth") < names.index("deploy") < names.index("backfill")
    assert names.index("backfill") < names.index("cdc")
    assert any(c.startswith("clinipipe cdc start") for c in commands)


def _slot_active(dsn: str, slot: str) -> bool:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
    con.close()
    return bool(row and row[0])


def _run_cdc_start(args: list[str], env: dict[str, str], cwd: Path, dsn: str) -> None:
    """`clinipipe cdc start` runs until stopped: start it, wait until it streams (its slot is
    active on the source, an event, not a sleep), then stop it as Ctrl-C or systemd would
    (SIGTERM) and require a clean exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinipipe", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not _slot_active(dsn, "clinipipe_slot"):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"`clinipipe {' '.join(args)}` exited {proc.returncode}:\n{out}{err}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)  # a short wait between two looks at the slot
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)  # a hang guard only
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"cdc start did not stop cleanly:\n{out}{err}"
    assert "Traceback" not in out + err


def test_readme_using_it_runs_as_written(tmp_path: Path, pg_dsn: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"CLINIPIPE_CONFIG", "CLINIPIPE_DUCKDB_PATH", "COLUMNS"}
    }
    env["CLINIPIPE_SOURCE_DSN"] = pg_dsn  # "or export them: the environment wins"
    env["CLINIPIPE_HMAC_KEY"] = secrets.token_hex(32)
    cwd = tmp_path
    ran: list[str] = []
    for line in using_it_commands(README.read_text()):
        for command in (part.strip() for part in line.split("&&")):
            words = shlex.split(command)
            if words[0] == "pip":
                continue  # the test runs in the environment it installed
            if words[0] == "cd":
                cwd = (cwd / words[1]).resolve()
                assert cwd.is_dir(), command
                continue
            if words[0] == "cp":
                shutil.copyfile(cwd / words[1], cwd / words[2])
                continue
            assert words[0] == "clinipipe", f"the test does not know how to run: {command}"
            args = words[1:]
            ran.append(" ".join(args[:2]))
            if args[:2] == ["cdc", "start"] and not {"--until-caught-up", "--max-seconds"} & set(
                args
            ):
                _run_cdc_start(args, env, cwd, pg_dsn)
                continue
            done = subprocess.run(
                [sys.executable, "-m", "clinipipe", *args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,  # a hang guard only
            )
            output = done.stdout + done.stderr
            # `scan` documents exit 3 when it finds PHI ("exit 3 if found"); all else exits 0.
            allowed = {0, 3} if args[0] == "scan" else {0}
            assert done.returncode in allowed, f"`{command}` exited {done.returncode}:\n{output}"
            assert "Traceback" not in output and "internal error" not in output, command
    assert ran[:2] == ["init my-hospital", "synth --patients"]
    project = tmp_path / "my-hospital"
    assert (project / ".env").read_text() == (project / ".env.example").read_text()
    assert len(list((project / "sql").glob("0*.sql"))) == 9  # render --out sql/
    assert (project / "warehouse.duckdb").is_file()
    assert {"cdc start", "cdc status", "status", "dashboard patient_overview"} <= set(ran)
