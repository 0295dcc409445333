"""Overnight-run promises under seeded lab faults, through the real CLI (subprocesses).

A rehearsal with drops, timeouts, msiexec 1618, a busy LCS server and locked
hives must end, after a few reruns of the same command (each making
progress), with every user migrated exactly as ``runner lab verify``
expects: no contact lost, none duplicated (a drop *after* a create ran is the
classic duplicate trap), and retries visible in the recap. A host that is
down is reported unreachable (exit 3) while the others finish.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


def _env() -> dict[str, str]:
    # playbooks say `delay: 30`; a rehearsal in a test must not wait for it
    return {**os.environ, "RUNNER_RETRY_DELAY_SCALE": "0.0005"}


def runner(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def apply_json(tmp_path: Path, inv: Path, *extra: str) -> tuple[int, list[dict]]:
    proc = runner(tmp_path, "apply", GRADUAL, "-i", str(inv), "--state", str(tmp_path / "state"), "--json", *extra)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def tasks(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "task"]


def verify(lab: Path) -> subprocess.CompletedProcess:
    return runner(lab.parent, "lab", "verify", "--dir", str(lab))


def duplicated_groups(lab: Path) -> list[tuple]:
    """Contact groups that exist twice by name for one user (the contacts table's key forbids
    duplicate contacts; group ids are server-assigned, so only the name can repeat)."""
    db = sqlite3.connect(lab / "hosts" / "lcs01" / "lcs.db")
    try:
        return db.execute("SELECT user_instance_id, name, count(*) FROM contact_groups "
                          "GROUP BY user_instance_id, name HAVING count(*) > 1").fetchall()
    finally:
        db.close()


def set_faults(lab: Path, *rates: str, host: str | None = None, seed: int = 3) -> None:
    args = ["lab", "faults", "--dir", str(lab), *rates, "--seed", str(seed)]
    if host:
        args += ["--host", host]
    proc = runner(lab.parent, *args)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 11])
def test_seeded_faults_converge_without_lost_or_duplicated_contacts(tmp_path, seed):
    inv = generate(tmp_path / "lab", clients=6, users_per_client=2, contacts=8, seed=5)
    lab = tmp_path / "lab"
    # rates are per command: a task of k round trips fails an attempt with ~1-(1-r)^k,
    # so 5-10% per command already fails whole waves now and then
    set_faults(lab, "drop=0.05", "timeout=0.05", "msiexec_1618=0.1", "lcs_busy=0.05", "hive_locked=0.1",
               seed=seed)
    retried = 0
    codes = []
    for _ in range(8):
        # one fork: the per-host fault draws then come in a fixed order, so a seed replays exactly
        code, events = apply_json(tmp_path, inv, "--forks", "1")
        codes.append(code)
        retried += sum(1 for t in tasks(events) if t.get("attempts", 1) > 1)
        if code == 0:
            break
        # every unfinished run must make progress: some task finished for the first time
        assert any(t["status"] in ("ok", "changed", "skipped") and not t.get("resumed")
                   for t in tasks(events)), (f"run {len(codes)} made no progress: "
                                             f"{[t for t in tasks(events) if t['status'] != 'skipped']}")
        assert code in (2, 3), codes
    assert codes[-1] == 0, f"not finished after {len(codes)} runs: exit codes {codes}"
    assert retried > 0, "faults were injected, yet nothing was retried"
    result = verify(lab)
    assert result.returncode == 0, result.stdout
    assert duplicated_groups(lab) == []
    # and the finished run is idempotent under faults too: nothing left to change
    code, events = apply_json(tmp_path, inv)
    assert code == 0 and all(t["status"] == "skipped" for t in tasks(events))


def test_down_host_is_unreachable_while_the_others_finish_then_resumes(tmp_path):
    inv = generate(tmp_path / "lab", clients=6, users_per_client=2, contacts=6, seed=5)
    lab = tmp_path / "lab"
    manifest = json.loads((lab / "manifest.json").read_text())
    down = "pc0003"
    set_faults(lab, "down=1", host=down)
    code, events = apply_json(tmp_path, inv)
    assert code == 3
    unreachable = {t["target"] for t in tasks(events) if t["status"] == "unreachable"}
    assert down in unreachable
    # the users of the down machine are pending; everybody else finished
    on_down = {u for u, info in manifest["users"].items() if down in info["clients"]}
    assert on_down and on_down <= unreachable
    report = verify(lab)
    assert report.returncode != 0
    pending = {m.group(1) for m in re.finditer(r"^(\S+) \(wave", report.stdout, re.M)}
    # and the users of their other machines: a machine is not upgraded while the list of
    # one of its users (on the down machine too) is not saved (docs/data-safety.md)
    held = {c for u in on_down for c in manifest["users"][u]["clients"]}
    assert pending == {u for u, info in manifest["users"].items() if held & set(info["clients"])}, report.stdout
    # a given-up host fails at once for the rest of the run: no retries wasted on it
    given_up = [t for t in tasks(events) if t["status"] == "unreachable" and "earlier" in (t.get("message") or "")
                or (t["status"] == "unreachable" and t.get("attempts") == 1)]
    assert given_up and all(t.get("attempts", 0) <= 1 for t in given_up)
    # the fault is cleared: the same command finishes the migration
    set_faults(lab, "down=0", host=down)
    code, events = apply_json(tmp_path, inv)
    assert code == 0, [t for t in tasks(events) if t["status"] not in ("ok", "changed", "skipped")]
    assert verify(lab).returncode == 0
