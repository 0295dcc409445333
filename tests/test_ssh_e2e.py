"""The gradual playbook end to end over real SSH against a served lab, and resume after SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.generator import generate

from ssh_helpers import serve

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def served_lab(tmp_path):
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = tmp_path / "lab"
    generate(lab, clients=3, users_per_client=1, contacts=3, seed=2)
    server = serve(lab, fake_shell=False)
    yield server
    server.stop()


def apply(server, state: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "apply", "playbooks/gradual.yml",
                           "-i", str(server.inventory_out), "--state", str(state)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def test_gradual_playbook_runs_end_to_end_over_ssh_then_changes_nothing(served_lab, tmp_path):
    first = apply(served_lab, tmp_path / "state")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    total = next(line for line in first.stdout.splitlines() if line.startswith("TOTAL"))
    assert "failed=0" in total and "unreachable=0" in total and "changed=0" not in total
    again = apply(served_lab, tmp_path / "state")
    assert again.returncode == 0, again.stdout[-2000:]
    total = next(line for line in again.stdout.splitlines() if line.startswith("TOTAL"))
    assert "changed=0" in total


def test_resume_after_sigkill_over_ssh_finishes_the_run(served_lab, tmp_path):
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "runner", "apply", "playbooks/gradual.yml",
                             "-i", str(served_lab.inventory_out), "--state", str(state)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = False
    for line in proc.stdout:
        if line.startswith("STEP [Import contacts"):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=60)
    assert killed, "the run ended before it could be killed"
    resumed = apply(served_lab, state)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    again = apply(served_lab, state)
    total = next(line for line in again.stdout.splitlines() if line.startswith("TOTAL"))
    assert again.returncode == 0 and "changed=0" in total
