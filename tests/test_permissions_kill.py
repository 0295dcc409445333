"""Kill-anywhere for the permission steps: killed after every durable write of an
import_permissions / verify_permissions run, then resumed, a lab ends with exactly the
allow and block lists an uninterrupted run gives, each entry once, every user verified."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from crash_inject import KILLED, run_killed
from runner.lab.generator import generate

pytestmark = pytest.mark.slow

PLAYBOOK = Path(__file__).resolve().parent.parent / "playbooks" / "immediate.yml"
APPLY = """
import os, sys
os.environ["RUNNER_RETRY_DELAY_SCALE"] = "0.01"
from runner.cli import run
sys.exit(run(["apply", {pb!r}, "-i", {inv!r}, "--state", {st!r}, "-q", {args}]))
"""
MAX_KILLS = 120


def _apply(root: Path, after: int | None, *args: str):
    script = APPLY.format(pb=str(PLAYBOOK), inv=str(root / "lab" / "inventory.yml"), st=str(root / "state"),
                          args=", ".join(repr(a) for a in args))
    return run_killed(script, after, cwd=root, timeout=300)


def _aces(root: Path) -> list[tuple]:
    man = json.loads((root / "lab" / "manifest.json").read_text(encoding="utf-8"))
    db = sqlite3.connect(f"file:{root / 'lab' / 'hosts' / man['lcs_server'] / 'lcs.db'}?mode=ro", uri=True)
    try:
        return sorted(db.execute("SELECT user_instance_id, type, lower(mask), presence, communication "
                                 "FROM user_aces").fetchall())
    finally:
        db.close()


def _recorded(root: Path) -> list[tuple]:
    """Every entry the runner's records (permissions/<alias>/created.json) say it created, as _aces."""
    man = json.loads((root / "lab" / "manifest.json").read_text(encoding="utf-8"))
    db = sqlite3.connect(f"file:{root / 'state' / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT name, path FROM artifacts WHERE id IN (SELECT MAX(id) FROM artifacts "
                          "WHERE name LIKE 'permissions/%/created.json' GROUP BY name)").fetchall()
    finally:
        db.close()
    out = []
    for name, path in rows:
        doc = json.loads((root / "state" / "artifacts" / path).read_text(encoding="utf-8"))
        guid = man["users"][name.split("/")[1]]["ad_guid"].upper()
        out += [(guid, e["type"], e["mask"].lower() or None, e["presence"], e["communication"])
                for e in doc["entries"]]
    return sorted(out, key=str)


def _verified(root: Path) -> set[str]:
    db = sqlite3.connect(f"file:{root / 'state' / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT target, status, result FROM tasks WHERE module='verify_permissions'").fetchall()
    finally:
        db.close()
    return {t for t, s, r in rows if s == "ok" and json.loads(r or "{}").get("data", {}).get("verified")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, list[tuple], int]:
    """A lab migrated up to (not including) the permission steps, and what an uninterrupted
    permission run ends with."""
    root = tmp_path_factory.mktemp("permkill") / "t"
    root.mkdir()
    generate(root / "lab", clients=3, users_per_client=1, contacts=3, seed=4)
    man = json.loads((root / "lab" / "manifest.json").read_text(encoding="utf-8"))
    assert sum(1 for u in man["users"].values() if u["permissions"]["acl"]) >= 1
    first = _apply(root, None, "--skip-tags", "permissions,exchange")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    ref = root.parent / "ref"
    shutil.copytree(root, ref)
    done = _apply(ref, None, "--tags", "permissions")
    assert done.returncode == 0, done.stdout[-2000:]
    want = _aces(ref)
    assert want, "the lab has no entry to import"
    return root, want, len(man["users"])


def test_a_kill_after_any_write_of_the_permission_steps_resumes_to_the_same_lists(prepared, tmp_path) -> None:
    template, want, users = prepared
    kills = 0
    for after in range(1, MAX_KILLS):
        root = tmp_path / f"k{after}"
        shutil.copytree(template, root)
        res = _apply(root, after, "--tags", "permissions")
        if res.returncode != KILLED:
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            break
        kills += 1
        again = _apply(root, None, "--tags", "permissions")
        assert again.returncode == 0, f"resume after write {after}: {again.stdout[-2000:]}{again.stderr[-2000:]}"
        assert _aces(root) == want, f"killed after write {after}"
        # every entry on LCS is the runner's and its record knows it, kill or not
        assert _recorded(root) == sorted(((g, t, m or None, p, c) for g, t, m, p, c in want), key=str), after
        assert len(_verified(root)) == users, f"killed after write {after}: not every user verified"
        shutil.rmtree(root)
    else:
        pytest.fail(f"still killed after {MAX_KILLS} writes")
    assert kills >= 5, kills
