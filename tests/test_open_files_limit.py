"""A run within the open-file limit a system gives programs: the soft limit is raised to the
hard one (many systems start programs at 1,024 with far more allowed), and where the hard limit
itself is 1,024 the lab's SQLite caches shrink to fit (runner.oslimits, runner.lab.store)."""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab import store

ROOT = Path(__file__).resolve().parents[1]


def _limited(soft: int, hard: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return set_limit


def test_the_soft_limit_is_raised_to_the_hard_one():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("the hard open-file limit here is below 2,048")
    code = "from runner.oslimits import raise_open_files as r; print(r())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          preexec_fn=_limited(512, 2048), timeout=60)
    assert done.stdout.strip() == "2048", done.stderr


def test_each_threads_share_of_connections_fits_the_limit(monkeypatch):
    import runner.oslimits as oslimits
    monkeypatch.setattr(store, "_live_caches", set(range(25)))
    monkeypatch.setattr(oslimits, "open_files_limit", lambda: 1024)
    cap = store.thread_connection_cap()
    assert 4 <= cap and 25 * cap * store.FDS_PER_CONNECTION + store.FD_RESERVE <= 1024
    monkeypatch.setattr(oslimits, "open_files_limit", lambda: 1 << 20)
    assert store.thread_connection_cap() == store.MAX_THREAD_CONNECTIONS


@pytest.mark.slow
def test_a_60_client_lab_migrates_with_a_hard_limit_of_1024(tmp_path):
    from runner.lab.generator import generate
    inv = generate(tmp_path / "lab", clients=60, users_per_client=2, contacts=4, seed=2)
    run = subprocess.run([sys.executable, "-m", "runner", "apply", str(ROOT / "playbooks" / "gradual.yml"),
                          "-i", str(inv), "--state", str(tmp_path / "st"), "-q"], capture_output=True, text=True,
                         cwd=tmp_path, preexec_fn=_limited(1024, 1024), timeout=900,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "unable to open database file" not in run.stdout
    verify = subprocess.run([sys.executable, "-m", "runner", "lab", "verify", "--dir", str(tmp_path / "lab")],
                            capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                            timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
