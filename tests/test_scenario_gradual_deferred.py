"""Scenario 4 (playbooks/gradual-deferred.yml): users move in waves, contacts for
everyone are imported at the end; then Exchange IM is disabled and retired."""
from __future__ import annotations

import pytest

from scenario_support import (Scenario, assert_contacts_moved, assert_decommissioned, assert_enabled_on_lcs,
                              assert_exchange_im_disabled, assert_idempotent, exchange_im_attributes,
                              exchange_server_state, lcs_contact_count, lcs_user, make_scenario, migrated_scenario)

pytestmark = pytest.mark.slow

SEED = 32  # a user over the LCS limit, long names, roaming users


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, list[dict]]:
    return migrated_scenario(tmp_path_factory.mktemp("deferred"), "gradual-deferred.yml", SEED)


def test_deferred_import_moves_everyones_contacts_at_the_end(migrated) -> None:
    sc, tasks = migrated
    users = list(sc.manifest["users"])
    assert_enabled_on_lcs(sc, users)
    seen = assert_contacts_moved(sc, users, tasks, coexistence=False)
    assert seen["over_limit_users"] >= 1 and seen["unmappable"] > 0 and seen["long_names"] > 0
    assert_exchange_im_disabled(sc, users)
    assert_decommissioned(sc)
    # the import happened after every wave had moved
    order = [t["module"] for t in tasks]
    last_enable = max(i for i, m in enumerate(order) if m == "enable_lcs_users")
    first_import = min(i for i, m in enumerate(order) if m == "import_contacts")
    assert last_enable < first_import


def test_deferred_second_apply_changes_nothing(migrated) -> None:
    assert_idempotent(migrated[0])


def test_deferred_fresh_apply_changes_nothing(migrated) -> None:
    assert_idempotent(migrated[0], "--fresh")


def test_a_wave_moves_users_without_contacts_and_keeps_them_on_exchange_im(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual-deferred.yml", SEED)
    man = sc.manifest
    wave1 = [a for a, u in man["users"].items() if u["wave"] == "wave1"]
    others = [a for a in man["users"] if a not in wave1]
    run = sc.apply("--limit", "wave:wave1", "--tags", "wave")  # as the playbook's header says
    assert run.code == 0, run.out[-3000:]
    assert_enabled_on_lcs(sc, wave1)
    assert lcs_contact_count(sc.lab_dir, man) == 0, "contacts are moved for everyone at the end"
    for alias in wave1 + others:  # nobody loses Exchange IM before their contacts are on LCS
        assert exchange_im_attributes(sc.lab_dir, alias), alias
    for alias in others:
        assert lcs_user(sc.lab_dir, man, alias).primary_uri is None, alias
    assert exchange_server_state(sc.lab_dir, man)[1] == 1
    rest = sc.apply()
    assert rest.code == 0, rest.out[-3000:]
    users = list(man["users"])
    assert_enabled_on_lcs(sc, users)
    assert_contacts_moved(sc, users, run.tasks + rest.tasks, coexistence=False)
    assert_exchange_im_disabled(sc, users)
    assert_decommissioned(sc)
