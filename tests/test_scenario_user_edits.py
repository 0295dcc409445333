"""Import is a set union: what a user did on LCS between runs survives a re-import."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from scenario_support import (Scenario, assert_idempotent, expected_uri, expected_user, lcs_user,
                              make_scenario)

pytestmark = pytest.mark.slow

CONTACTS_KEY = r"Software\Microsoft\Exchange\Messenger\Profiles"


def _hive(sc: Scenario, client: str, alias: str) -> Path:
    return sc.lab_dir / "hosts" / client / "fs" / "C" / "Documents and Settings" / alias / "NTUSER.DAT"


def _set_exchange_contact(sc: Scenario, client: str, alias: str, address: str, name: str) -> None:
    """What the user does in their old client: add a contact or rename one (in the hive file)."""
    url = sc.manifest["users"][alias]["profile_url"]
    key = f"{CONTACTS_KEY}\\{url}\\Contacts".lower()
    db = sqlite3.connect(_hive(sc, client, alias))
    with db:
        db.execute("DELETE FROM reg_value WHERE key_lc=? AND name_lc=?", (key, address.lower()))
        db.execute("INSERT INTO reg_value(key_lc, name_lc, name, type, data) VALUES (?,?,?,?,?)",
                   (key, address.lower(), address, "REG_SZ", name))
    db.close()


def test_contacts_added_or_renamed_on_lcs_survive_a_reimport(tmp_path) -> None:
    sc = make_scenario(tmp_path, "immediate.yml", seed=4)
    man = sc.manifest
    first = sc.apply()
    assert first.code == 0, first.out[-3000:]
    alias = next(a for a, u in man["users"].items()
                 if len(u["machines"]) == 1 and 3 <= len(expected_user(man, a, coexistence=False).contacts) < 140)
    client = man["users"][alias]["clients"][0]
    guid = man["users"][alias]["ad_guid"].upper()
    before = lcs_user(sc.lab_dir, man, alias)
    renamed_uri = before.contacts[0][0]
    # on LCS, the user renames a contact and adds one of their own
    lcs = sqlite3.connect(sc.lab_dir / "hosts" / man["lcs_server"] / "lcs.db")
    with lcs:
        lcs.execute("UPDATE contacts SET name='Renamed on LCS' WHERE user_instance_id=? AND sip_uri=?",
                    (guid, renamed_uri))
        lcs.execute("INSERT INTO contacts(user_instance_id, sip_uri, name, subscribed, group_ids) "
                    "VALUES (?, 'sip:mine@contoso.com', 'Added on LCS', 1, '')", (guid,))
    lcs.close()
    # meanwhile the old client's list changed too: a new contact, and another name for the renamed one
    old_address = next(c["address"] for c in man["users"][alias]["machines"][client]["contacts"]
                       if (expected_uri(c["address"], man) or "").lower() == renamed_uri.lower())
    _set_exchange_contact(sc, client, alias, old_address, "Changed on Exchange")
    _set_exchange_contact(sc, client, alias, "newbie@im.contoso.com", "New Contact")

    again = sc.apply("--fresh")
    assert again.code == 0, again.out[-3000:]
    after = {uri.lower(): (name, groups) for uri, name, groups in lcs_user(sc.lab_dir, man, alias).contacts}
    assert after[renamed_uri.lower()][0] == "Renamed on LCS"  # never renamed back
    assert after["sip:mine@contoso.com"][0] == "Added on LCS"  # never removed
    assert after["sip:newbie@contoso.com"][0] == "New Contact"  # the Exchange-side addition arrives
    assert len(after) == len(before.contacts) + 2
    imported = [t for t in again.tasks if t["module"] == "import_contacts" and t["target"] == alias]
    assert imported and imported[0]["status"] == "changed"
    assert [c["uri"] for c in imported[0]["data"]["contacts_to_add"]] == ["sip:newbie@contoso.com"]
    assert_idempotent(sc, "--fresh")
