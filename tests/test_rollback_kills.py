"""Kill-anywhere for the rollback: the rollback of a migrated wave killed right after each of
its durable writes in turn (every SQLite commit and file replace of the runner and the lab,
tests/crash_inject.py), then typed again, ends exactly as the pristine lab for that wave's
Exchange IM attributes and disabled on LCS, with no scratch file left; some of them are then
moved again and verify."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from crash_inject import KILLED, run_killed
from runner.artifacts import ArtifactStore
from runner.lab.verify import verify
from runner.state import StateStore
from scenario_support import PLAYBOOKS, Scenario, assert_exchange_im_disabled, lcs_user, make_scenario

pytestmark = pytest.mark.slow

WAVE = "wave1"
MAX_KILLS = 400
SCRIPT = """
import sys
from runner.cli import run
sys.exit(run(["apply", {pb!r}, "-i", {inv!r}, "--state", {state!r}, "--json", "--limit", "wave:{wave}"]))
"""


def _kill_points(template: Path, tmp_path: Path, playbook: str, check) -> int:
    """Apply ``playbook`` to a copy of ``template`` killed after its 1st, 2nd, ... durable write,
    type it again, and ``check(scenario, n)`` the end; returns how many writes it had."""
    finished = False
    n = 0
    while not finished:
        n += 1
        assert n <= MAX_KILLS, f"{playbook} never ran to its end"
        root = tmp_path / f"k{n}"
        shutil.copytree(template, root)
        sc = Scenario(root, playbook, 8)
        script = SCRIPT.format(pb=str(PLAYBOOKS / playbook), inv=str(sc.inventory), state=str(sc.state), wave=WAVE)
        killed = run_killed(script, n, cwd=root)
        finished = killed.returncode != KILLED
        if finished:
            assert killed.returncode == 0, killed.stdout[-2000:] + killed.stderr[-2000:]
        assert "Traceback" not in killed.stderr, killed.stderr[-2000:]
        again = sc.apply("--limit", f"wave:{WAVE}")
        assert again.code == 0, (n, again.out[-3000:])
        temp = [p for p in (sc.lab_dir / "hosts").rglob("runner-*") if p.suffix.lower() in (".ldf", ".cmd")]
        assert not temp, (n, temp)
        check(sc, n, finished)
        shutil.rmtree(root)
    return n - 1


def _msexchim(ad_db: Path) -> dict[str, list]:
    """Per sAMAccountName, its msExchIM* values, sorted."""
    db = sqlite3.connect(f"file:{ad_db}?mode=ro", uri=True)
    try:
        names = dict(db.execute("SELECT dn, value FROM attrs WHERE name='sAMAccountName'"))
        out: dict[str, list] = {}
        for dn, n, v in db.execute("SELECT dn, name, value FROM attrs WHERE name LIKE 'msExchIM%'"):
            out.setdefault(names.get(dn, dn), []).append((n.lower(), v))
        return {k: sorted(v) for k, v in out.items()}
    finally:
        db.close()


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list], list[str]]:
    root = tmp_path_factory.mktemp("rbkill")
    sc = make_scenario(root / "t", "gradual.yml", 8, clients=4, users_per_client=2, contacts=8)
    pristine = _msexchim(sc.lab_dir / "ad.db")
    run = sc.apply("--limit", f"wave:{WAVE}")
    assert run.code == 0, run.out[-3000:]
    first = [a for a, u in sc.manifest["users"].items() if u["wave"] == WAVE]
    assert first
    return sc.root, pristine, first


def test_a_rollback_killed_after_any_write_ends_as_the_pristine_wave(moved, tmp_path) -> None:
    template, pristine, first = moved

    def check(sc: Scenario, n: int, finished: bool) -> None:
        now = _msexchim(sc.lab_dir / "ad.db")
        assert {a: now.get(a) for a in first} == {a: pristine[a] for a in first}, n
        assert all(not lcs_user(sc.lab_dir, sc.manifest, a).enabled for a in first), n
        if n % 8 == 1 or finished:  # moved again from there, it verifies
            moved_again = sc.apply("--limit", f"wave:{WAVE}", playbook="gradual.yml")
            assert moved_again.code == 0, (n, moved_again.out[-3000:])
            assert_exchange_im_disabled(sc, first)
            report = verify(sc.lab_dir, waves=[WAVE])
            assert report.ok, (n, [(u.alias, u.problems) for u in report.users if not u.ok] + report.problems)

    writes = _kill_points(template, tmp_path, "rollback.yml", check)
    print(f"rollback killed after each of its {writes} durable writes")
    assert writes > 10, f"only {writes} durable writes: the rollback did next to nothing"


def test_a_disable_killed_between_backup_and_clear_keeps_a_backup_that_restores_the_pristine_wave(tmp_path) -> None:
    sc = make_scenario(tmp_path / "t", "gradual.yml", 8, clients=4, users_per_client=2, contacts=8)
    pristine = _msexchim(sc.lab_dir / "ad.db")
    first = [a for a, u in sc.manifest["users"].items() if u["wave"] == WAVE]
    run = sc.apply("--limit", f"wave:{WAVE}", "--skip-tags", "exchange")  # moved but for the disable
    assert run.code == 0, run.out[-3000:]
    assert all(_msexchim(sc.lab_dir / "ad.db").get(a) == pristine[a] for a in first)

    def check(sc: Scenario, n: int, finished: bool) -> None:
        assert_exchange_im_disabled(sc, first)
        with StateStore(sc.state, create=False) as store:
            for alias in first:
                backup = json.loads(ArtifactStore(store).read(f"exim-backup/{alias}.json"))
                saved = sorted((k.lower(), v) for k, vals in backup["msExchIM"].items() for v in vals)
                assert saved == pristine[alias], (n, alias)
        back = sc.apply("--limit", f"wave:{WAVE}", playbook="rollback.yml")
        assert back.code == 0, (n, back.out[-3000:])
        now = _msexchim(sc.lab_dir / "ad.db")
        assert {a: now.get(a) for a in first} == {a: pristine[a] for a in first}, n

    writes = _kill_points(sc.root, tmp_path / "kills", "gradual.yml", check)
    print(f"the disable killed after each of its {writes} durable writes")
    assert writes > 5
