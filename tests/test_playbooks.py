"""The shipped playbooks keep DESIGN.md's data-safety order."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.loader import load_playbook

PLAYBOOKS = sorted((Path(__file__).resolve().parent.parent / "playbooks").glob("*.yml"))
CHANGES = ("upgrade_messenger", "enable_lcs_users", "import_contacts", "disable_exchange_im",
           "decommission_exchange_im")


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_contacts_are_exported_before_anything_changes(path):
    modules = [s.module for play in load_playbook(path).plays for s in play.steps]
    assert "export_contacts" in modules, f"{path.name} never exports the contact lists"
    first_export = modules.index("export_contacts")
    changes = [i for i, m in enumerate(modules) if m in CHANGES]
    assert changes and first_export < min(changes), (
        f"{path.name}: {modules[min(changes)]} runs before the contact lists are exported: {modules}")


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_exchange_im_is_disabled_only_after_verification_or_by_recreation(path):
    pb = load_playbook(path)
    steps = [s for play in pb.plays for s in play.steps]
    modules = [s.module for s in steps]
    disable = modules.index("disable_exchange_im")
    recreate = bool(steps[disable].args.get("contacts_recreated_by_users"))
    assert recreate or ("verify_contacts" in modules[:disable]), modules
    assert not steps[disable].args.get("force"), "a shipped playbook must not force disabling"
    assert modules[-1] == "decommission_exchange_im"
