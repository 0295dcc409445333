"""Scenario 1 (playbooks/immediate-recreate.yml): everyone on LCS, no contact moved,
a notice per user naming their old contacts' new SIP addresses."""
from __future__ import annotations

import pytest

from scenario_support import (Scenario, assert_decommissioned, assert_enabled_on_lcs,
                              assert_exchange_im_disabled, assert_idempotent, expected_user,
                              lcs_contact_count, migrated_scenario)

pytestmark = pytest.mark.slow

SEED = 1


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, list[dict]]:
    return migrated_scenario(tmp_path_factory.mktemp("recreate"), "immediate-recreate.yml", SEED)


def test_recreate_moves_users_but_no_contacts_and_writes_the_notices(migrated) -> None:
    sc, _ = migrated
    man = sc.manifest
    users = list(man["users"])
    assert_enabled_on_lcs(sc, users)
    assert lcs_contact_count(sc.lab_dir, man) == 0
    outbox = sc.state / "outbox"
    noticed_contacts = 0
    for alias in users:
        path = outbox / f"{alias}.txt"
        assert path.is_file(), f"no notice for {alias}"
        text = path.read_text(encoding="utf-8")
        assert man["users"][alias]["sip_uri"] in text
        exp = expected_user(man, alias, coexistence=False)
        for c in exp.contacts.values():
            assert c.uri.lower() in text.lower(), f"{alias}'s notice does not give {c.uri}"
            noticed_contacts += 1
        for address in exp.unmappable:  # named, with no new address, rather than left out
            assert address in text.casefold(), f"{alias}'s notice leaves out {address}"
    assert noticed_contacts > 0
    assert_exchange_im_disabled(sc, users)
    assert_decommissioned(sc)


def test_recreate_second_apply_changes_nothing(migrated) -> None:
    assert_idempotent(migrated[0])


def test_recreate_fresh_apply_changes_nothing(migrated) -> None:
    assert_idempotent(migrated[0], "--fresh")
