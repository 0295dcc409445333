"""A half-finished change is found and finished, whatever its cause (issue 8, item 4).

On a migrated lab, partial states made by hand: a user enabled on LCS whose AD
object lacks the msRTCSIP-* attributes and the sip: proxy address, and a client
whose msmsgs.exe is 5.1 but whose Windows Messenger 5.1 product and Uninstall
key are gone. `runner lab verify` flags both; the probes find them (check mode
shows them) and the next apply finishes them; verify passes again.
"""
from __future__ import annotations

import sqlite3
import uuid

import pytest

from runner.lab.binaries import MESSENGER51_CODE
from runner.lab.store import UNINSTALL_KEY, Lab
from runner.lab.verify import verify
from scenario_support import make_scenario

pytestmark = pytest.mark.slow


def _strip_ad(lab_dir, guid: str) -> str:
    db = sqlite3.connect(lab_dir / "ad.db")
    raw = uuid.UUID(guid.strip("{}")).bytes_le
    dn = db.execute("SELECT dn FROM attrs WHERE name='objectGUID' AND value=?", (raw,)).fetchone()[0]
    n = db.execute("DELETE FROM attrs WHERE dn=? AND (name LIKE 'msRTCSIP-%' OR "
                   "(name='proxyAddresses' AND value LIKE 'sip:%'))", (dn,)).rowcount
    db.commit()
    db.close()
    assert n == 4, "the migration wrote the enable's four AD values"
    return dn


def _unregister(lab_dir, host: str) -> None:
    h = Lab(lab_dir).host(host)
    assert h.fs.file_version(r"C:\Program Files\Messenger\msmsgs.exe").startswith("5.1")
    assert h.products.remove(MESSENGER51_CODE)
    assert not h.registry.key_exists(UNINSTALL_KEY + "\\" + MESSENGER51_CODE)


def test_partial_enable_and_install_are_flagged_by_verify_and_finished_by_the_next_apply(tmp_path):
    sc = make_scenario(tmp_path, "immediate.yml", seed=4, clients=4, users_per_client=1, contacts=4)
    assert sc.apply().code == 0
    assert verify(sc.lab_dir).ok
    alias, user = next(iter(sc.manifest["users"].items()))
    client = user["clients"][0]
    _strip_ad(sc.lab_dir, user["ad_guid"])
    _unregister(sc.lab_dir, client)

    flagged = verify(sc.lab_dir)
    assert not flagged.ok
    bad = {u.alias: u.problems for u in flagged.users if u.problems}
    assert list(bad) == [alias] and "AD lacks msRTCSIP-PrimaryUserAddress" in bad[alias][0], bad
    assert any(p.startswith(f"{client}: msmsgs.exe is 5.1") and "no Messenger 5.1 product" in p
               for p in flagged.problems), flagged.problems

    check = sc.apply("--fresh", "--check")
    would = {(t["module"], t["target"]) for t in check.tasks if t["status"] == "changed"}
    assert ("enable_lcs_users", alias) in would and ("upgrade_messenger", client) in would, would

    run = sc.apply("--fresh")
    assert run.code == 0, run.out[-3000:]
    changed = {(t["module"], t["target"]) for t in run.tasks if t["status"] == "changed"}
    assert {("enable_lcs_users", alias), ("upgrade_messenger", client)} <= changed, changed
    again = verify(sc.lab_dir)
    assert again.ok, (again.problems, [u.problems for u in again.users if u.problems])
    h = Lab(sc.lab_dir).host(client)
    assert h.products.get(MESSENGER51_CODE) is not None
    assert h.registry.key_exists(UNINSTALL_KEY + "\\" + MESSENGER51_CODE)
