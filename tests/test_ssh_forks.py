"""gradual.yml over a served lab at many forks and under dropped connections (real OpenSSH sshd).

The served lab keeps sshd's default MaxSessions (10), as real hosts do, and
every user's task on lcs01 and exim01 shares one connection: these runs only
pass when the runner keeps each connection below that limit and treats a
channel that died as that one task's fault, never as a host that is gone.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.generator import generate

from ssh_helpers import serve

pytestmark = pytest.mark.ssh
REPO = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"


def _needs_sshd() -> None:
    if not os.access(SSHD, os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")


def _runner(*args: str, env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _total(out: str) -> dict[str, int]:
    line = next(x for x in out.splitlines() if x.startswith("TOTAL"))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_served_lab_keeps_openssh_default_maxsessions(tmp_path):
    _needs_sshd()
    lab = tmp_path / "lab"
    generate(lab, clients=1, users_per_client=1, contacts=1, seed=1)
    server = serve(lab, fake_shell=False)
    try:
        effective = subprocess.run([SSHD, "-T", "-f", str(server.config),
                                    "-C", "user=root,host=lab,addr=127.0.0.1"],
                                   capture_output=True, text=True, check=True).stdout
    finally:
        server.stop()
    assert "maxsessions 10" in effective.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("forks", [50, None], ids=["forks50", "default-forks"])
def test_gradual_over_sixty_served_clients_exits_0_and_verifies(tmp_path, forks):
    _needs_sshd()
    lab = tmp_path / "lab"
    generate(lab, clients=60, seed=3)
    server = serve(lab, fake_shell=False)
    try:
        extra = ["--forks", str(forks)] if forks else []
        run = _runner("apply", "playbooks/gradual.yml", "-i", str(server.inventory_out),
                      "--state", str(tmp_path / "state"), *extra)
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    total = _total(run.stdout)
    assert total["unreachable"] == 0 and total["failed"] == 0
    assert "cannot open a session channel" not in run.stdout
    verify = _runner("lab", "verify", "--dir", str(lab))
    assert verify.returncode == 0, verify.stdout[-3000:]


@pytest.mark.slow
def test_gradual_converges_under_dropped_connections_without_unreachable_hosts(tmp_path):
    """drop=0.05: a command's answer is lost and sshd's whole connection dies, now and then.

    Every host answers in every step, so no host may be reported
    unreachable; a task whose channel died is retried, and the run is
    resumed until it exits 0 (bounded), after which the lab verifies.
    """
    _needs_sshd()
    lab = tmp_path / "lab"
    generate(lab, clients=12, seed=11)
    faults = _runner("lab", "faults", "--dir", str(lab), "drop=0.05", "--seed", "5")
    assert faults.returncode == 0, faults.stderr
    server = serve(lab, fake_shell=False)
    env = {"RUNNER_RETRY_DELAY_SCALE": "0.01"}
    codes = []
    try:
        for _ in range(6):
            run = _runner("apply", "playbooks/gradual.yml", "-i", str(server.inventory_out),
                          "--state", str(tmp_path / "state"), env=env)
            codes.append(run.returncode)
            total = _total(run.stdout)
            assert total["unreachable"] == 0, run.stdout[-3000:]
            assert " is unreachable" not in run.stdout, run.stdout[-3000:]
            assert run.returncode in (0, 2), run.stdout[-3000:] + run.stderr[-2000:]
            if run.returncode == 0:
                break
    finally:
        server.stop()
    assert codes[-1] == 0, codes
    meta = json.loads((lab / "lab.json").read_text())
    assert meta["faults"]["global"]["drop"] == 0.05          # the faults were on all along
    verify = _runner("lab", "verify", "--dir", str(lab))
    assert verify.returncode == 0, verify.stdout[-3000:]
