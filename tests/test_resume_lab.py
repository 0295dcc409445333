"""Resuming a real migration on the lab after kill -9 or Ctrl-C, through the CLI.

The night's run dies at a random point (SIGKILL: no cleanup at all) or the
administrator presses Ctrl-C once; the same command, typed again, carries
on: finished tasks are reported as skipped, nothing is done twice, and the
end state matches the lab's manifest (``runner lab verify``).
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")
DONE = ("ok", "changed", "skipped")


def _env() -> dict[str, str]:
    return {**os.environ, "RUNNER_RETRY_DELAY_SCALE": "0.0005"}


def _cmd(tmp_path: Path, inv: Path) -> list[str]:
    return [sys.executable, "-m", "runner", "apply", GRADUAL, "-i", str(inv),
            "--state", str(tmp_path / "state"), "--json"]


def _done_keys(tmp_path: Path) -> set[str]:
    """Task keys the state store holds as finished (read with sqlite3, not through the runner)."""
    db_path = tmp_path / "state" / "state.db"
    if not db_path.exists():
        return set()
    db = sqlite3.connect(db_path)
    try:
        return {k for (k,) in db.execute(
            f"SELECT key FROM tasks WHERE status IN ({','.join('?' * len(DONE))})", DONE)}
    except sqlite3.OperationalError:  # killed before the schema was written
        return set()
    finally:
        db.close()


def _tasks(stdout: str) -> list[dict]:
    """Task events; a line cut short by SIGKILL (only ever the last one) is ignored."""
    events = []
    for line in stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in events if e.get("event") == "task"]


def _verify(lab: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "lab", "verify", "--dir", str(lab)],
                          capture_output=True, text=True, timeout=120)


def _no_duplicate_groups(lab: Path) -> None:
    db = sqlite3.connect(lab / "hosts" / "lcs01" / "lcs.db")
    try:
        assert db.execute("SELECT user_instance_id, name FROM contact_groups GROUP BY 1, 2 "
                          "HAVING count(*) > 1").fetchall() == []
    finally:
        db.close()


def _lab(tmp_path: Path) -> tuple[Path, Path]:
    inv = generate(tmp_path / "lab", clients=8, users_per_client=2, contacts=10, seed=9)
    return inv, tmp_path / "lab"


def _full_run_seconds(tmp_path: Path) -> float:
    """How long an uninterrupted run takes here, on a scratch copy (so kill times land mid-run)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    inv, _ = _lab(scratch)
    started = time.monotonic()
    proc = subprocess.run(_cmd(scratch, inv), capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - started


@pytest.mark.slow
def test_resume_after_sigkill_at_random_points_finishes_without_duplicates(tmp_path):
    total = _full_run_seconds(tmp_path)
    inv, lab = _lab(tmp_path)
    rng = random.Random(20240613)
    kills = 0
    for n in range(3):
        before = _done_keys(tmp_path)
        proc = subprocess.Popen(_cmd(tmp_path, inv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_env())
        time.sleep(rng.uniform(0.25, 0.9) * total)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # it finished before the kill landed: nothing to resume
            break
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        # the killed session skipped what earlier sessions had finished
        skipped = {t["key"] for t in _tasks(out) if t.get("resumed")}
        assert skipped <= before
    assert kills, "no kill landed mid-run"
    finished = _done_keys(tmp_path)
    for _ in range(3):
        resumed = subprocess.run(_cmd(tmp_path, inv), capture_output=True, text=True, env=_env(), timeout=300)
        assert "Traceback" not in resumed.stderr, resumed.stderr
        tasks = _tasks(resumed.stdout)
        # every task finished before the resume is reported as skipped, not run again
        by_key = {t["key"]: t for t in tasks}
        for key in finished:
            if key in by_key:
                assert by_key[key]["status"] == "skipped" and by_key[key].get("resumed"), by_key[key]
        if resumed.returncode == 0:
            break
        finished = _done_keys(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = _verify(lab)
    assert report.returncode == 0, report.stdout
    _no_duplicate_groups(lab)


@pytest.mark.slow
def test_ctrl_c_once_exits_99_prints_the_resume_command_and_resuming_finishes(tmp_path):
    total = _full_run_seconds(tmp_path)
    inv, lab = _lab(tmp_path)
    cmd = _cmd(tmp_path, inv)[:-1]  # human output: the recap and the resume command
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    time.sleep(0.5 * total)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C landed")
    assert proc.returncode == 99, err
    assert "Traceback" not in err
    assert "to resume: runner apply" in out and GRADUAL in out
    finished = _done_keys(tmp_path)
    assert finished, "tasks in flight were not recorded"
    resumed = subprocess.run(_cmd(tmp_path, inv), capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    skipped = {t["key"] for t in _tasks(resumed.stdout) if t["status"] == "skipped" and t.get("resumed")}
    assert finished <= skipped
    assert _verify(lab).returncode == 0
    _no_duplicate_groups(lab)


@pytest.mark.slow
def test_ctrl_c_twice_stops_at_once_and_still_says_how_to_resume(tmp_path):
    import threading
    total = _full_run_seconds(tmp_path)
    inv, lab = _lab(tmp_path)
    # every command a little slow, so that tasks are still in flight when the second Ctrl-C comes
    subprocess.run([sys.executable, "-m", "runner", "lab", "faults", "slow=1", "--dir", str(lab)], check=True,
                   capture_output=True)
    proc = subprocess.Popen(_cmd(tmp_path, inv)[:-1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    err_lines: list[str] = []

    def read_err() -> None:  # the second Ctrl-C as soon as the first is acknowledged
        for line in proc.stderr:
            err_lines.append(line)
            if line.startswith("interrupted: finishing"):
                proc.send_signal(signal.SIGINT)
    reader = threading.Thread(target=read_err)
    reader.start()
    time.sleep(0.4 * total)
    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(10)
    err = "".join(err_lines)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C landed")
    assert proc.returncode == 99, err
    if "interrupted again" not in err:
        pytest.skip("the tasks in flight finished before the second Ctrl-C landed")
    assert "to resume: runner apply" in err and GRADUAL in err, err
    subprocess.run([sys.executable, "-m", "runner", "lab", "faults", "slow=0", "--dir", str(lab)], check=True,
                   capture_output=True)
    resumed = subprocess.run(_cmd(tmp_path, inv), capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _verify(lab).returncode == 0
    _no_duplicate_groups(lab)
