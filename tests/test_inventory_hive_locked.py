"""A hive in use while inventory_clients reads it is a transient fault, retried like the
export's, not a lasting "unfit client" warning recorded with status ok (found by
bench/stress_kill.py: status and report kept flagging a client whose hive was fine)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


def _runner(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNNER_RETRY_DELAY_SCALE": "0.001"}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _inventory_tasks(tmp_path: Path, inv: Path) -> tuple[int, list[dict]]:
    proc = _runner(tmp_path, "apply", GRADUAL, "-i", str(inv), "--state", str(tmp_path / "st"),
                   "--tags", "inventory", "--json", "--fresh")
    assert "Traceback" not in proc.stderr, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, [e for e in events if e.get("event") == "task"]


def test_a_locked_hive_is_retried_and_never_recorded_as_a_fact(tmp_path):
    inv = generate(tmp_path / "lab", clients=6, users_per_client=2, contacts=3, seed=9)
    assert _runner(tmp_path, "lab", "faults", "hive_locked=1", "--dir", str(tmp_path / "lab")).returncode == 0
    code, tasks = _inventory_tasks(tmp_path, inv)
    locked = [t for t in tasks if "in use (reg load)" in (t.get("message") or "")]
    assert code == 2 and locked, tasks
    assert all(t["status"] == "failed" and t["attempts"] > 1 for t in locked)
    # the cause is reg load's own answer, one line, not the whole line's other errors
    inventory = [t for t in locked if t["module"] == "inventory_clients"]
    assert inventory and all("being used by another process" in t["message"] and "\n" not in t["message"]
                             and "unable to find" not in t["message"] for t in inventory), inventory
    assert not any("hive locked" in w for t in tasks for w in t.get("warnings") or [])

    assert _runner(tmp_path, "lab", "faults", "hive_locked=0", "--dir", str(tmp_path / "lab")).returncode == 0
    code, tasks = _inventory_tasks(tmp_path, inv)
    assert code == 0 and all(t["status"] == "ok" for t in tasks), tasks
    assert not any("hive" in w for t in tasks for w in t.get("warnings") or [])
