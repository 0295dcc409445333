"""The lab's emulated server work is all or nothing, as on real systems (issue 8, item 4).

A process killed between any two of its durable writes (tests/crash_inject.py)
while the lab enables a user on LCS or installs Windows Messenger 5.1 leaves
either the whole change or none of it, as the next reader sees it: an LCS
user always has its msRTCSIP-* AD attributes and sip: proxy address; a
msmsgs.exe of 5.1 always comes with its registered product and Uninstall key.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

from crash_inject import KILLED, run_killed
from runner.lab.generator import generate

RTC = ("msrtcsip-primaryuseraddress", "msrtcsip-userenabled", "msrtcsip-primaryhomeserver")
MAX_KILLS = 40


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aon")
    generate(root / "lab", clients=2, users_per_client=1, contacts=2, seed=3)
    return root / "lab"


def _user(lab: Path) -> tuple[dict, str]:
    man = json.loads((lab / "manifest.json").read_text())
    alias, u = next(iter(man["users"].items()))
    return dict(u, alias=alias, server_dn=man["lcs_server_dn"]), man["lcs_server"]


def _ad_attrs(lab: Path, guid: str) -> tuple[str, dict[str, list]]:
    db = sqlite3.connect(lab / "ad.db")
    try:
        raw = uuid.UUID(guid.strip("{}")).bytes_le
        dn = db.execute("SELECT dn FROM attrs WHERE name='objectGUID' AND value=?", (raw,)).fetchone()[0]
        out: dict[str, list] = {}
        for n, v in db.execute("SELECT name, value FROM attrs WHERE dn=?", (dn,)):
            out.setdefault(n.lower(), []).append(v)
        return dn, out
    finally:
        db.close()


SHELL = """
import sys
from runner.lab.store import Lab
from runner.lab.shell import Shell
lab = Lab({lab!r})
r = Shell(lab, lab.host({host!r})).run({cmd!r})
sys.stdout.write(r.stdout + r.stderr)
"""


def _run(lab: Path, host: str, cmd: str, after: int | None = None):
    return run_killed(SHELL.format(lab=str(lab), host=host, cmd=cmd), after)


def _lcs_user_seen(lab: Path, lcs: str, guid: str) -> str | None:
    """The user's PrimaryURI as a new process's wmic sees it (None: no such user)."""
    res = _run(lab, lcs, f'wmic path MSFT_SIPESUserSetting where "InstanceID=\'{guid}\'" get PrimaryURI /value')
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines():
        if line.startswith("PrimaryURI="):
            return line.split("=", 1)[1].strip()
    return None


@pytest.mark.slow
def test_a_kill_anywhere_in_an_lcs_enable_leaves_all_or_nothing(template, tmp_path):
    u, lcs = _user(template)
    guid = u["ad_guid"].upper()
    dn, _ = _ad_attrs(template, guid)
    create = (f'wmic path MSFT_SIPESUserSetting create InstanceID="{guid}",UserDN="{dn}",'
              f'PrimaryURI="{u["sip_uri"]}",HomeServerDN="{u["server_dn"]}",Enabled=TRUE')
    kills = 0
    for after in range(1, MAX_KILLS):
        lab = tmp_path / f"k{after}"
        shutil.copytree(template, lab)
        res = _run(lab, lcs, create, after)
        uri = _lcs_user_seen(lab, lcs, guid)
        _, attrs = _ad_attrs(lab, guid)
        sip = [v for v in attrs.get("proxyaddresses", []) if str(v).lower().startswith("sip:")]
        if uri is None:
            assert not any(a in attrs for a in RTC) and not sip, f"killed after write {after}: AD without LCS user"
        else:
            assert attrs.get("msrtcsip-primaryuseraddress") == [u["sip_uri"]], \
                f"killed after write {after}: LCS user {uri} but AD has no msRTCSIP-PrimaryUserAddress"
            assert attrs.get("msrtcsip-userenabled") == ["TRUE"]
            assert attrs.get("msrtcsip-primaryhomeserver") == [u["server_dn"]]
            assert sip == [u["sip_uri"]]
        if res.returncode != KILLED:
            assert res.returncode == 0 and "Instance creation successful" in res.stdout, res.stdout + res.stderr
            assert uri == u["sip_uri"]
            break
        kills += 1
    else:
        pytest.fail("the enable never finished")
    assert kills >= 1


def test_an_intent_left_by_a_kill_inside_the_commit_is_completed_by_the_next_reader(template, tmp_path):
    """SQLite commits the LCS store's file before ad.db's: a process dying between the two leaves
    the users row and its intent; the next opening of the store writes AD from the row."""
    lab = tmp_path / "lab"
    shutil.copytree(template, lab)
    u, lcs = _user(lab)
    guid = u["ad_guid"].upper()
    dn, _ = _ad_attrs(lab, guid)
    db = sqlite3.connect(lab / "hosts" / lcs / "lcs.db")
    db.execute("CREATE TABLE IF NOT EXISTS ad_sync(seq INTEGER PRIMARY KEY, instance_id TEXT NOT NULL, user_dn TEXT)")
    db.execute("INSERT INTO users VALUES (?,?,?,?,1,?,NULL,'t','t')", (guid, dn, "x", u["sip_uri"], u["server_dn"]))
    db.execute("INSERT INTO ad_sync (instance_id, user_dn) VALUES (?, ?)", (guid, dn))
    db.commit()
    db.close()
    assert _lcs_user_seen(lab, lcs, guid) == u["sip_uri"]
    _, attrs = _ad_attrs(lab, guid)
    assert attrs.get("msrtcsip-primaryuseraddress") == [u["sip_uri"]]
    assert attrs.get("msrtcsip-userenabled") == ["TRUE"]
    db = sqlite3.connect(lab / "hosts" / lcs / "lcs.db")
    assert db.execute("SELECT count(*) FROM ad_sync").fetchone()[0] == 0
    db.close()


READ_CLIENT = """
import json
from runner.lab.store import Lab, UNINSTALL_KEY
h = Lab({lab!r}).host({host!r})
keys = {{k: {{v.name: v.data for v in h.registry.values(UNINSTALL_KEY + "\\\\" + k)}}
        for k in (h.registry.subkeys(UNINSTALL_KEY) if h.registry.key_exists(UNINSTALL_KEY) else [])}}
print(json.dumps({{"products": sorted((p.code, p.version) for p in h.products.list()), "uninstall": keys,
                  "file": h.fs.file_version(r"C:\\Program Files\\Messenger\\msmsgs.exe")}}))
"""
INSTALL = r'msiexec /i "\\deploy\packages\WindowsMessenger51.msi" /qn /norestart /l*v "C:\WINDOWS\Temp\wm51.log"'


def _client_state(lab: Path, host: str) -> dict:
    """What a new process sees on ``host``: products, Uninstall keys, msmsgs.exe's version."""
    res = run_killed(READ_CLIENT.format(lab=str(lab), host=host), None)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _registered_51(state: dict) -> bool:
    return any(v.startswith("5.1") for _, v in state["products"]) and any(
        str(k.get("DisplayVersion", "")).startswith("5.1") for k in state["uninstall"].values())


@pytest.mark.slow
def test_a_kill_anywhere_in_an_install_leaves_all_or_nothing(template, tmp_path):
    client = "pc0001"
    before = _client_state(template, client)
    assert not (before["file"] or "").startswith("5.1")
    kills = 0
    for after in range(1, MAX_KILLS):
        lab = tmp_path / f"k{after}"
        shutil.copytree(template, lab)
        res = _run(lab, client, INSTALL, after)
        state = _client_state(lab, client)
        if (state["file"] or "").startswith("5.1"):
            assert _registered_51(state), f"killed after write {after}: msmsgs.exe 5.1 without its product: {state}"
        else:
            assert state == before, f"killed after write {after}: neither the old nor the new install: {state}"
        if res.returncode != KILLED:
            assert _registered_51(state) and state["file"].startswith("5.1"), (res.stdout, state)
            break
        kills += 1
        shutil.rmtree(lab)
    else:
        pytest.fail("the install never finished")
    assert kills >= 1
