"""`--check --diff` on a fresh lab says what every step would do and changes nothing;
every shipped playbook validates (the README's promise)."""
from __future__ import annotations

import re

import pytest
import yaml

from scenario_support import PLAYBOOKS, REPO, Scenario, expected_user, lcs_dump, make_scenario

PLAYBOOK_NAMES = ["immediate-recreate.yml", "immediate.yml", "gradual.yml", "gradual-deferred.yml"]
# steps that only read, or whose targets need nothing: they print no "changed" line
QUIET = {"inventory_clients", "verify_contacts", "verify_permissions"}


def _steps(playbook: str) -> list[tuple[str, str]]:
    doc = yaml.safe_load((PLAYBOOKS / playbook).read_text(encoding="utf-8"))
    out = []
    for play in doc:
        for step in play["steps"]:
            module = next(k for k in step if k not in ("name", "tags", "retries", "delay", "throttle", "when",
                                                       "ignore_errors"))
            out.append((step["name"], module))
    return out


@pytest.mark.parametrize("playbook", PLAYBOOK_NAMES)
def test_validate_passes_for_every_shipped_playbook(tmp_path, playbook) -> None:
    sc = make_scenario(tmp_path, playbook, seed=2, clients=3)
    run = sc.runner("validate", str(PLAYBOOKS / playbook), "-i", str(sc.inventory))
    assert run.code == 0, run.out
    assert "valid" in run.out


def test_validate_passes_for_every_shipped_playbook_with_the_default_lab_inventory(tmp_path) -> None:
    sc = Scenario(tmp_path, "immediate.yml", seed=0)  # cwd only: the default inventory makes its lab there
    for playbook in PLAYBOOK_NAMES:
        run = sc.runner("validate", str(PLAYBOOKS / playbook), "-i", str(REPO / "inventories" / "lab.yml"))
        assert run.code == 0, run.out
    assert sc.runner("validate", str(PLAYBOOKS / "immediate.yml")).code == 0


@pytest.mark.slow
@pytest.mark.parametrize("playbook", PLAYBOOK_NAMES)
def test_check_diff_on_a_fresh_lab_shows_every_step_and_changes_nothing(tmp_path, playbook) -> None:
    sc = make_scenario(tmp_path, playbook, seed=4)
    man = sc.manifest
    before = lcs_dump(sc.lab_dir, man)
    run = sc.runner("apply", str(sc.playbook_path), "-i", str(sc.inventory), "--state", str(sc.state),
                    "--check", "--diff")
    assert run.code == 0, run.out[-3000:]
    assert "CHECK MODE" in run.out
    blocks = re.split(r"^STEP \[", run.out, flags=re.M)[1:]
    for name, module in _steps(playbook):
        mine = [b for b in blocks if b.startswith(name)]
        assert mine, f"step {name!r} not shown"
        if module not in QUIET:
            assert any(re.search(r"^changed: \[", b, re.M) for b in mine), f"{name!r} shows no change"
            assert any(re.search(r"^    \S", b, re.M) for b in mine), f"{name!r} shows no diff lines"
    if "import_contacts" in {m for _, m in _steps(playbook)}:
        # the review lists the actual contacts, read from the registries, before any export
        sizes = {a: len(expected_user(man, a, coexistence=False).contacts) for a in man["users"]}
        alias = max((a for a in sizes if sizes[a] <= man["lcs_limit"]), key=sizes.__getitem__)
        for c in expected_user(man, alias, coexistence=False).contacts.values():
            assert f"+ contact {c.uri} " in run.out, f"{alias}: {c.uri} not in the review"
        assert max(sizes.values()) > man["lcs_limit"]  # seed 4 has a user over the limit: the review says so
        assert "over the server's limit" in run.out
    # nothing changed anywhere
    assert not sc.mutations_since(0), "check mode ran a mutating command"
    assert lcs_dump(sc.lab_dir, man) == before
    assert not (sc.state / "artifacts").exists() or not any((sc.state / "artifacts").rglob("*"))
    assert not (sc.state / "outbox").exists()
    # and a real run afterwards starts from scratch: check mode recorded no outcome
    real = sc.apply()
    assert real.code == 0, real.out[-3000:]
    assert not any(t.get("resumed") for t in real.tasks)
