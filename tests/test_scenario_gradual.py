"""Scenario 3 (playbooks/gradual.yml): waves, per-wave import with the coexistence group,
a run stopped after a wave continued with the same command, decommission only at the end."""
from __future__ import annotations

import pytest

from scenario_support import (Scenario, assert_contacts_moved, assert_decommissioned, assert_enabled_on_lcs,
                              assert_exchange_im_disabled, assert_idempotent, exchange_im_attributes,
                              exchange_server_state, lcs_user, make_scenario, migrated_scenario)

pytestmark = pytest.mark.slow

SEED = 8  # long group names (cut to 128 on LCS), roaming users, unmappable contacts


def _waves(sc: Scenario) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, u in sc.manifest["users"].items():
        out.setdefault(u["wave"], []).append(alias)
    return out


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, list[dict]]:
    return migrated_scenario(tmp_path_factory.mktemp("gradual"), "gradual.yml", SEED)


def test_gradual_moves_every_wave_with_contacts_in_their_groups(migrated) -> None:
    sc, tasks = migrated
    users = list(sc.manifest["users"])
    assert_enabled_on_lcs(sc, users)
    seen = assert_contacts_moved(sc, users, tasks, coexistence=True)
    assert seen["long_groups"] > 0 and seen["unmappable"] > 0 and seen["multi_machine"] > 0
    assert_exchange_im_disabled(sc, users)
    assert_decommissioned(sc)


def test_gradual_second_apply_changes_nothing(migrated) -> None:
    assert_idempotent(migrated[0])


def test_gradual_fresh_apply_changes_nothing(migrated) -> None:
    assert_idempotent(migrated[0], "--fresh")


def test_limit_to_a_wave_migrates_only_that_wave_then_the_same_command_finishes(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", SEED)
    waves = _waves(sc)
    first, others = waves["wave1"], [a for w, users in waves.items() if w != "wave1" for a in users]
    assert first and others
    run = sc.apply("--limit", "wave:wave1")
    assert run.code == 0, run.out[-3000:]
    assert {t["target"] for t in run.tasks if t["module"] == "enable_lcs_users"} == set(first)
    assert_enabled_on_lcs(sc, first)
    assert_contacts_moved(sc, first, run.tasks, coexistence=True)
    assert_exchange_im_disabled(sc, first)
    man = sc.manifest
    for alias in others:  # untouched: not on LCS, still on Exchange IM
        u = lcs_user(sc.lab_dir, man, alias)
        assert u.primary_uri is None and not u.contacts, alias
        assert exchange_im_attributes(sc.lab_dir, alias), alias
    svc, vs = exchange_server_state(sc.lab_dir, man)
    assert svc == ("RUNNING", "AUTO_START") and vs == 1, "the server is retired only when everyone has moved"

    # another night: the same command without --limit carries on and finishes
    rest = sc.apply()
    assert rest.code == 0, rest.out[-3000:]
    redone = {t["target"] for t in rest.tasks if t["module"] == "enable_lcs_users" and not t.get("resumed")
              and t["status"] == "changed"}
    assert redone == set(others)
    users = list(man["users"])
    assert_enabled_on_lcs(sc, users)
    assert_contacts_moved(sc, users, run.tasks + rest.tasks, coexistence=True)
    assert_exchange_im_disabled(sc, users)
    assert_decommissioned(sc)
    assert_idempotent(sc)


def test_decommission_is_refused_while_users_remain_and_names_them(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", SEED)
    waves = _waves(sc)
    run = sc.apply("--limit", "wave:wave1")
    assert run.code == 0, run.out[-3000:]
    # run the retire play on its own, with a limit that selects the server
    ret = sc.apply("--limit", "exim01", "--tags", "decommission")
    assert ret.code == 2, ret.out[-3000:]
    (task,) = [t for t in ret.tasks if t["module"] == "decommission_exchange_im"]
    assert task["status"] == "failed" and "refusing" in task["message"]
    pending = [a for w, users in waves.items() if w != "wave1" for a in users]
    assert any(f"{a}@" in task["message"] for a in pending), task["message"]
    assert not any(f"{a}@" in task["message"] for a in waves["wave1"]), task["message"]
    svc, vs = exchange_server_state(sc.lab_dir, sc.manifest)
    assert svc == ("RUNNING", "AUTO_START") and vs == 1
