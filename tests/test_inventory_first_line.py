"""inventory_clients in one round trip per client on a first gather, when nothing yet says where
profiles are (runner.steps._clients.default_profile, run_built's fed script).

The hive of a user the inventory gives a SID is read in the first line from the default
folder, loaded only when ProfileList says that SID's profile is there: the facts are those of
the two-line gather, no one else's hive is loaded on a guess, and a profile elsewhere is read
in a second line as before.
"""
from __future__ import annotations

import json

import pytest

from runner.connections.lab import LabConnection
from runner.lab.generator import generate
from runner.lab.store import Lab, Registry
from runner.loader import load_inventory
from runner.steps import _clients as cl
from runner.steps.inventory_clients import gather

from stepctx import StepCtx


class Trips:
    """A lab connection counting round trips (lines, fed lines)."""

    def __init__(self, conn: LabConnection) -> None:
        self.conn, self.host, self.sent = conn, conn.host, []

    def run(self, command, **kw):
        self.sent.append(command)
        return self.conn.run(command, **kw)

    def run_input(self, command, data, **kw):
        self.sent.append(command)
        return self.conn.run_input(command, data, **kw)

    def put(self, data, path):
        self.sent.append(f"put {path}")
        self.conn.put(data, path)

    def get(self, path):
        return self.conn.get(path)

    def close(self):
        self.conn.close()


def _gather(inv, host, tmp_path):
    conn = Trips(LabConnection(inv.hosts[host], inv, None))
    ctx = StepCtx(inv, {host: conn}, tmp_path, vars=dict(inv.vars))
    facts, warnings = gather(ctx, inv.hosts[host])
    facts.pop("run_id", None)
    return facts, warnings, conn.sent


def _lab(tmp_path, name="lab"):
    return load_inventory(generate(tmp_path / name, clients=12, users_per_client=3, contacts=4, seed=7))


def test_a_first_gather_is_one_round_trip_a_client_with_the_two_line_facts(tmp_path, monkeypatch):
    inv, again = _lab(tmp_path, "a"), _lab(tmp_path, "b")
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    off = sum(1 for u in man["users"].values() for m in u["machines"].values() if not m["logged_on"])
    assert off >= 5, "users not logged on, whose hives are loaded"
    guessed = {}
    for host in inv.group_hosts("clients"):
        facts, warnings, sent = _gather(inv, host, tmp_path)
        assert len(sent) == 1, (host, sent)
        guessed[host] = (facts, warnings)
    monkeypatch.setattr(cl, "default_profile", lambda user: None)  # the gather before the guess
    for host in again.group_hosts("clients"):
        facts, warnings, sent = _gather(again, host, tmp_path)
        assert guessed[host] == (facts, warnings), host
        assert any(not u["loaded"] and u["contacts"] for u in facts["users"].values()) <= (len(sent) >= 2)
    for host in inv.group_hosts("clients"):
        h = Lab(tmp_path / "a").host(host)
        assert "runner_" not in "".join(h.registry.subkeys("HKU")), "every hive loaded was unloaded"


@pytest.mark.parametrize("elsewhere", [r"%SystemDrive%\Documents and Settings\{a}.CONTOSO",
                                       r"D:\Documents and Settings\{a}"], ids=["other-folder", "other-drive"])
def test_a_profile_elsewhere_is_read_from_profilelist_and_the_default_folder_never_loaded(tmp_path, monkeypatch,
                                                                                        elsewhere):
    """The user's profile moved to ``<alias>.CONTOSO`` (a second account of that name); the
    old folder still holds an NTUSER.DAT. The line's check finds ProfileList pointing elsewhere,
    loads nothing from the old folder, and the second line reads the right hive."""
    inv = _lab(tmp_path)
    man = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    host, user = next((h, u) for h in inv.group_hosts("clients") for u in cl.client_users(inv, h)
                      if not man["users"][u.alias]["machines"][h]["logged_on"]
                      and man["users"][u.alias]["machines"][h]["contacts"])
    lab_host = Lab(tmp_path / "lab").host(host)
    old = rf"C:\Documents and Settings\{user.alias}"
    value = elsewhere.format(a=user.alias)
    new = value.replace("%SystemDrive%", "C:")
    lab_host.fs.write(new + r"\NTUSER.DAT", lab_host.fs.read(old + r"\NTUSER.DAT"))
    lab_host.registry.set_value(rf"{cl.PROFILE_LIST}\{user.sid}", "ProfileImagePath", "REG_EXPAND_SZ", value)
    loads: list[str] = []
    real_load = Registry.load_hive

    def load_hive(self, name, file, **kw):  # every hive file the lab's reg load mounts
        loads.append(file)
        return real_load(self, name, file, **kw)
    monkeypatch.setattr(Registry, "load_hive", load_hive)
    facts, _warnings, sent = _gather(inv, host, tmp_path)
    entry = facts["users"][user.alias]
    assert entry["profile"].lower() == new.lower()
    assert entry["contacts"]["count"] == len(man["users"][user.alias]["machines"][host]["contacts"])
    assert len(sent) == 2, "the moved profile's hive is read in a second line"
    assert all(f.lower() != old.lower() + "\\ntuser.dat" for f in loads), loads
    assert new.lower() + "\\ntuser.dat" in [f.lower() for f in loads], loads


@pytest.mark.parametrize("alias", ['o"brien', "al&ce", "100%", "zoë"])
def test_no_guess_for_an_alias_a_line_cannot_carry_as_typed(alias):
    from runner.model import User
    assert cl.default_profile(User(alias=alias, im_address="a@im.contoso.com", sid="S-1-5-21-1-2-3-1001")) is None
    assert cl.default_profile(User(alias="alice", im_address="a@im.contoso.com")) is None, "no SID, no guess"
