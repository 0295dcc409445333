"""The shipped playbooks keep DESIGN.md's data-safety order."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.loader import load_playbook

PLAYBOOKS = sorted((Path(__file__).resolve().parent.parent / "playbooks").glob("*.yml"))
CHANGES = ("upgrade_messenger", "enable_lcs_users", "import_contacts", "disable_exchange_im",
           "decommission_exchange_im")
#: The playbooks that move users (rollback.yml puts them back: tested on its own below).
MIGRATIONS = [p for p in PLAYBOOKS if any(s.module in CHANGES for play in load_playbook(p).plays
                                          for s in play.steps)]


def test_every_playbook_but_the_rollback_migrates():
    assert [p.name for p in PLAYBOOKS if p not in MIGRATIONS] == ["rollback.yml"]


def test_the_rollback_restores_exchange_im_before_disabling_on_lcs_and_keeps_contacts():
    steps = [s for play in load_playbook(PLAYBOOKS[0].parent / "rollback.yml").plays for s in play.steps]
    assert [s.module for s in steps] == ["restore_exchange_im", "disable_lcs_users", "configure_messenger"]
    assert not any(s.args.get("force") for s in steps), "a shipped playbook must not force"
    assert steps[1].args.get("remove_imported_contacts") is False
    assert steps[2].args.get("exchange_im") == "restore", "the clients get their Exchange IM account back, nothing else"


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda p: p.name)
def test_contacts_are_exported_before_anything_changes(path):
    modules = [s.module for play in load_playbook(path).plays for s in play.steps]
    assert "export_contacts" in modules, f"{path.name} never exports the contact lists"
    first_export = modules.index("export_contacts")
    changes = [i for i, m in enumerate(modules) if m in CHANGES]
    assert changes and first_export < min(changes), (
        f"{path.name}: {modules[min(changes)]} runs before the contact lists are exported: {modules}")


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda p: p.name)
def test_exchange_im_is_disabled_only_after_verification_or_by_recreation(path):
    pb = load_playbook(path)
    steps = [s for play in pb.plays for s in play.steps]
    modules = [s.module for s in steps]
    disable = modules.index("disable_exchange_im")
    recreate = bool(steps[disable].args.get("contacts_recreated_by_users"))
    assert recreate or ("verify_contacts" in modules[:disable]), modules
    assert not steps[disable].args.get("force"), "a shipped playbook must not force disabling"
    assert modules[-1] == "decommission_exchange_im"
