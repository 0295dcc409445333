"""A run survives its reader going away (a pager quit, `| head`, a terminal hung up): it
stops writing to standard output, says so once on stderr with where to read the outcome,
goes on, records everything and exits with its normal code."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.lab.generator import generate

REPO = Path(__file__).resolve().parents[1]
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


def _lab(tmp_path: Path) -> Path:
    generate(tmp_path / "lab", clients=6, users_per_client=2, contacts=5, seed=5)
    return tmp_path / "lab" / "inventory.yml"


def _runner(tmp_path: Path, *args: str, **kw) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNNER_RETRY_DELAY_SCALE": "0.01"}
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=tmp_path, env=env, **kw)


def _status(tmp_path: Path, state: Path) -> dict:
    proc = _runner(tmp_path, "status", "--state", str(state), "--json", stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return json.loads(out)


def test_a_run_whose_stdout_is_closed_goes_on_to_its_normal_end(tmp_path):
    inv, state = _lab(tmp_path), tmp_path / "state"
    proc = _runner(tmp_path, "apply", GRADUAL, "-i", str(inv), "--state", str(state),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`: the reader is gone
    _, err = proc.communicate(timeout=300)
    text = err.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert text.count("output stopped") == 1 and f"runner status --state {state}" in text, text
    assert "Traceback" not in text
    run = _status(tmp_path, state)["runs"][0]
    assert run["status"] == "ok" and run["left"] == 0, run


def test_a_hang_up_does_not_kill_a_run(tmp_path):
    inv, state = _lab(tmp_path), tmp_path / "state"
    proc = _runner(tmp_path, "apply", GRADUAL, "-i", str(inv), "--state", str(state),
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # the run has started
    proc.send_signal(signal.SIGHUP)  # the ssh session to the control node dropped
    proc.stdout.read()
    assert proc.wait(timeout=300) == 0
    run = _status(tmp_path, state)["runs"][0]
    assert run["status"] == "ok" and run["left"] == 0, run


def test_a_check_whose_pager_quit_stops_early(tmp_path):
    inv, state = _lab(tmp_path), tmp_path / "state"
    proc = _runner(tmp_path, "apply", GRADUAL, "-i", str(inv), "--state", str(state), "--check",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    text = err.decode("utf-8", "replace")
    assert proc.returncode == 99 and text.count("output stopped") == 1, text
    assert "records nothing" in text and "Traceback" not in text
