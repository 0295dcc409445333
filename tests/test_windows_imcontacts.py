"""The normalised Exchange IM contact document: every group is kept, even an empty one."""
from __future__ import annotations

from runner.windows.imcontacts import contacts_from_keys, merge
from runner.windows.regfile import RegKey, RegValue

PROFILE = r"HKEY_USERS\S-1\Software\Microsoft\Exchange\Messenger\Profiles\http://im.contoso.com/instmsg/aliases/al"


def _keys(groups: dict[str, list[str]]) -> list[RegKey]:
    keys = [RegKey(PROFILE + r"\Contacts", [RegValue("bob@im.contoso.com", "REG_SZ", "Bob")])]
    keys += [RegKey(PROFILE + "\\Groups\\" + g, [RegValue(m, "REG_SZ", "") for m in members])
             for g, members in groups.items()]
    return keys


def test_empty_groups_are_recorded_with_the_contacts():
    doc = contacts_from_keys(_keys({"Team": ["bob@im.contoso.com"], "Project X": []}))
    assert doc["groups"] == ["Project X", "Team"]
    assert doc["contacts"][0]["groups"] == ["Team"]


def test_merge_keeps_the_union_of_every_machines_groups():
    a = contacts_from_keys(_keys({"Team": []}))
    b = contacts_from_keys(_keys({"team": [], "Empty": []}))
    assert merge([("pc1", a), ("pc2", b)])["groups"] == ["Empty", "Team"]
