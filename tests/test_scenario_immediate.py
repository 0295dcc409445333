"""Scenario 2 (playbooks/immediate.yml) end to end on a generated lab, checked against its manifest."""
from __future__ import annotations

import pytest

from scenario_support import (Scenario, assert_contacts_moved, assert_decommissioned, assert_enabled_on_lcs,
                              assert_exchange_im_disabled, assert_idempotent, migrated_scenario)

pytestmark = pytest.mark.slow

SEED = 4  # a 12-client lab with a user over the LCS limit, long names and roaming users


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, list[dict]]:
    return migrated_scenario(tmp_path_factory.mktemp("immediate"), "immediate.yml", SEED)


def test_immediate_moves_every_mappable_contact_once_and_retires_exchange_im(migrated) -> None:
    sc, tasks = migrated
    users = list(sc.manifest["users"])
    assert_enabled_on_lcs(sc, users)
    seen = assert_contacts_moved(sc, users, tasks, coexistence=False)
    # the lab exercised the hard cases, so the checks above meant something
    assert seen["over_limit_users"] >= 1 and seen["unmappable"] > 0 and seen["long_names"] > 0
    assert seen["multi_machine"] > 0 and seen["grouped"] > 0
    assert_exchange_im_disabled(sc, users)
    assert_decommissioned(sc)


def test_immediate_second_apply_changes_nothing(migrated) -> None:
    sc, _ = migrated
    assert_idempotent(sc)


def test_immediate_fresh_apply_reprobes_and_changes_nothing(migrated) -> None:
    sc, _ = migrated
    run = assert_idempotent(sc, "--fresh")
    assert not any(t.get("resumed") for t in run.tasks), "--fresh must re-probe every task"
