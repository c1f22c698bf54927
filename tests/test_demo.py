"""`clinipipe demo` end to end with short settings, and its Ctrl-C cleanup."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("CLINIPIPE_") and k != "COLUMNS"}  # fmt: skip


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    state = Path(f"/proc/{pid}/stat")
    return state.exists() and state.read_text().split(") ")[-1].startswith("Z")


def test_demo_runs_every_step_and_its_summary_is_real(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clinipipe", "demo", "--patients", "500", "--seconds", "10",
         "--json"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    s = json.loads(done.stdout)

    backfill = s["backfill"]
    assert backfill["loaded_rows"] == backfill["source_rows"]
    assert backfill["rows"] == sum(backfill["source_rows"].values()) > 30_000
    assert backfill["rows_per_second"] > 0

    cdc = s["cdc_bench"]
    assert cdc["applied_all"] and cdc["rows"] > 0
    assert 0 < cdc["target"]["p50"] <= cdc["target"]["p99"]
    board = s["dashboard_bench"]
    assert board["errors"] == 0 and board["completed"] > 0
    assert 0 < board["latency_ms"]["p50"] <= board["latency_ms"]["p99"]

    traffic = s["traffic"]
    assert traffic["column_added"] and traffic["leak_planted"] and traffic["admissions"] > 0
    assert s["added_column"] == {"table": "labs", "column": "specimen_source",
                                 "in_warehouse": True}  # fmt: skip
    assert s["phi"]["planted_leak_found"] and "SSN" in s["phi"]["planted_leak"]["categories"]
    assert s["phi"]["alerts_received"] >= 1  # the alert cdc start sent to the webhook
    assert re.fullmatch(r"\d{6}-[0-9a-f]{12}", s["backup"]["id"]) and s["backup"]["verified"]
    assert s["redact"]["clean"] and s["redact"]["tables"] == 7
    assert all(d["refreshes"] > 0 for d in s["dynamic_tables"])
    assert all(i["generation"] is not None for i in s["interactive_tables"])
    roles = {w["role"]: w for w in s["cost"]["warehouses"]}
    assert set(roles) == {"initialization", "incremental", "interactive"}
    assert roles["initialization"]["credits"] > 0 and s["cost"]["single_warehouse"]
    assert s["project"] is None
    found = re.search(r"project: (\S+)", done.stderr)
    assert found and not Path(found.group(1)).exists()  # the temporary project is removed


def test_ctrl_c_mid_run_cleans_up_everything(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinipipe", "demo", "--patients", "300", "--seconds", "60"],
        env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until CDC streams: the most to clean up
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "cdc start: streaming" in line:
                break
        text = "".join(lines)
        assert "cdc start: streaming" in text, text
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text += rest
    assert proc.returncode in (1, 130), text
    assert "Traceback" not in text
    project = Path(re.search(r"project: (\S+)", text).group(1))  # type: ignore[union-attr]
    postgres = int(re.search(r"PostgreSQL: .*\(pid (\d+)\)", text).group(1))  # type: ignore[union-attr]
    cdc = int(re.search(r"cdc start: streaming \(pid (\d+)\)", text).group(1))  # type: ignore[union-attr]
    assert not project.exists()
    assert _gone(postgres) and _gone(cdc)
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit()
            and str(project).encode() in _cmdline(p)]  # fmt: skip
    assert left == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize(
    "args", [["demo", "--help"], ["bench", "--help"], ["bench", "cdc", "--help"]]
)
def test_help_shows_examples(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "clinipipe", *args], env=_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "Examples" in done.stdout and "clinipipe " in done.stdout


def test_readme_starts_with_the_problem_and_the_two_fresh_machine_commands() -> None:
    """The README's first block: install + `clinipipe demo`, then the test command CI runs."""
    from tests.helpers import REPO

    text = (REPO / "README.md").read_text()
    before, block = text.split("```", 2)[:2]
    assert "PostgreSQL" in before and "warehouse" in before  # the problem comes first
    first, second = [line for line in block.splitlines() if line.strip()]
    assert first.startswith("python3 -m venv .venv") and first.endswith("clinipipe demo")
    assert second == "scripts/test"
    assert "exec ./scripts/test" in (REPO / ".ci/run").read_text()


def test_every_command_help_has_examples() -> None:
    """Every leaf command's help text ends with an Examples section naming the command."""
    from typer.main import get_command

    from clinipipe.cli.app import app

    def leaves(command: object, path: list[str]) -> list[tuple[str, object]]:
        subs = getattr(command, "commands", None)
        if not subs:
            return [(" ".join(path), command)]
        return [leaf for name, sub in subs.items() for leaf in leaves(sub, [*path, name])]

    found = leaves(get_command(app), [])
    assert len(found) > 30
    helps = {name: getattr(command, "help", "") or "" for name, command in found}
    missing = [
        name
        for name, text in helps.items()
        if "Examples:" not in text or f"clinipipe {name.split()[0]}" not in text
    ]
    assert missing == []


def test_a_ctrl_c_swallowed_inside_a_query_still_stops_the_demo() -> None:
    """DuckDB's client may consume a Ctrl-C that arrives as a query ends (no exception), or turn
    it into RuntimeError('Query interrupted'): the demo still stops at its next step, as an
    interruption, and the previous SIGINT handler is back afterwards."""
    from clinipipe.pipeline.demo import _ctrl_c_remembered

    steps: list[str] = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), _ctrl_c_remembered(lambda n, d: steps.append(n)) as step:
        step("first", "")
        try:  # what a query that swallows the interrupt does
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        step("second", "")  # never reached the caller's callback
    assert steps == ["first"] and signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), _ctrl_c_remembered(lambda n, d: None):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt as exc:
            raise RuntimeError("Query interrupted") from exc
    with pytest.raises(RuntimeError), _ctrl_c_remembered(lambda n, d: None):
        raise RuntimeError("a real failure, no Ctrl-C")
