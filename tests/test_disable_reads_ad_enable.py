"""disable_exchange_im asks LCS whether a user is enabled only when AD does not already say so.

LCS 2005 keeps MSFT_SIPESUserSetting's ``Enabled`` in the user's AD object
(``msRTCSIP-UserEnabled``), which the probe's directory search on the Exchange IM
server reads anyway. So a chunk whose entries say TRUE costs no LCS round trip; an
entry that does not (a user never enabled, or a directory the enable has not yet
reached, or a user rolled back since, whose DC may not have the rollback's disable) is
read on LCS as before, and the refusal is unchanged. AD's TRUE stands only for an enable
homed on the configured home server (var ``lcs_home_server_dn``).
"""
from __future__ import annotations

import sqlite3
import uuid
import time
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from stepctx import StepCtx

from runner.connections.lab import LabConnection
from runner.events import ROLLBACK_MODULES
from runner.lab.generator import generate
from runner.loader import load_inventory
from runner.steps.disable_exchange_im import DisableExchangeIm
from runner.steps.enable_lcs_users import EnableLcsUsers


class Counted:
    """A connection that counts its round trips (lines, puts, reads) into ``trips[host]``."""

    def __init__(self, inner: LabConnection, host: str, trips: Counter) -> None:
        self._inner, self._host, self._trips = inner, host, trips

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in ("run", "run_input", "put", "get", "take"):
            def counted(*a: Any, **kw: Any) -> Any:
                self._trips[self._host] += 1
                return attr(*a, **kw)
            return counted
        return attr


def _ad_set(lab_dir, guid: str, name: str, value: str | None) -> None:
    """Set (or with None remove) attribute ``name`` of the user with objectGUID ``guid``."""
    db = sqlite3.connect(lab_dir / "ad.db")
    raw = uuid.UUID(guid.strip("{}")).bytes_le
    dn = db.execute("SELECT dn FROM attrs WHERE name='objectGUID' AND value=?", (raw,)).fetchone()[0]
    db.execute("DELETE FROM attrs WHERE dn=? AND name=?", (dn, name))
    if value is not None:
        db.execute("INSERT INTO attrs (dn, name, value) VALUES (?,?,?)", (dn, name, value))
    db.commit()
    db.close()


def _ad_enabled(lab_dir, guid: str, value: str | None) -> None:
    """Set (or with None remove) msRTCSIP-UserEnabled of the user with objectGUID ``guid``."""
    _ad_set(lab_dir, guid, "msRTCSIP-UserEnabled", value)


def test_the_probe_reads_lcs_only_for_users_whose_ad_entry_does_not_say_enabled(tmp_path):
    inv_path = generate(tmp_path / "lab", clients=6, users_per_client=1, contacts=2, seed=8)
    inv = load_inventory(inv_path)
    users = list(inv.users.values())[:4]
    assert len(users) == 4
    trips: Counter = Counter()
    conns = {h: Counted(LabConnection(inv.hosts[h], inv, None), h, trips) for h in ("lcs01", "exim01")}
    ctx = StepCtx(inv, conns, tmp_path, vars=inv.vars, args={"contacts_recreated_by_users": True})
    enable = EnableLcsUsers()
    enabled = users[:3]
    probed = enable.probe_many([(ctx, u) for u in enabled])
    assert [o.status for o in enable.apply_many([(ctx, u, d) for u, d in zip(enabled, probed)])] == ["changed"] * 3
    step = DisableExchangeIm()

    trips.clear()
    out = step.probe_many([(ctx, u) for u in enabled])
    assert all(d is not None and not isinstance(d, Exception) and not d.data["warnings"] for d in out), out
    assert trips["lcs01"] == 0, "AD says all three are enabled: LCS is not asked"
    assert trips["exim01"] >= 1

    # the fourth user was never enabled: LCS is asked, and the refusal is the same as before
    trips.clear()
    out = step.probe_many([(ctx, u) for u in users])
    assert trips["lcs01"] >= 1
    assert isinstance(out[3], Exception) and "is not enabled on LCS" in str(out[3])
    assert all(not isinstance(d, Exception) for d in out[:3]), out

    # AD that has not (yet) got the enable: LCS says enabled, so the disable goes ahead
    _ad_enabled(tmp_path / "lab", users[0].ad_guid, None)
    trips.clear()
    out = step.probe_many([(ctx, users[0])])
    assert trips["lcs01"] >= 1 and not isinstance(out[0], Exception) and out[0] is not None, out
    # the single-user probe decides alike
    trips.clear()
    assert step.probe(ctx, users[1]) is not None and trips["lcs01"] == 0
    assert trips["exim01"] >= 1


def test_after_a_rollback_ad_is_not_trusted_and_a_user_without_ad_guid_is_refused(tmp_path):
    """A DC that has not replicated a rollback's LCS disable still says TRUE: a rolled-back user
    is read on LCS again, and refused when LCS says not enabled. A user with no ad_guid is
    refused whatever AD says (restore_exchange_im could not find them)."""
    inv_path = generate(tmp_path / "lab", clients=6, users_per_client=1, contacts=2, seed=8)
    inv = load_inventory(inv_path)
    users = list(inv.users.values())[:2]
    trips: Counter = Counter()
    conns = {h: Counted(LabConnection(inv.hosts[h], inv, None), h, trips) for h in ("lcs01", "exim01")}

    class RolledBack(StepCtx):
        def previous(self, module: str, target: str) -> list:
            if module in ROLLBACK_MODULES and target == users[0].alias:
                return [SimpleNamespace(status="changed", data={"rollback": True}, ended=time.time())]
            return []

    ctx = RolledBack(inv, conns, tmp_path, vars=inv.vars, args={"contacts_recreated_by_users": True})
    # what a lagging DC shows after disable_lcs_users: AD TRUE, LCS without the user
    for u in users:
        _ad_enabled(tmp_path / "lab", u.ad_guid, "TRUE")
        _ad_set(tmp_path / "lab", u.ad_guid, "msRTCSIP-PrimaryHomeServer", inv.vars["lcs_home_server_dn"])
    step = DisableExchangeIm()
    trips.clear()
    out = step.probe_many([(ctx, u) for u in users])
    assert trips["lcs01"] >= 1, "the rolled-back user is read on LCS"
    assert isinstance(out[0], Exception) and "is not enabled on LCS" in str(out[0]), out
    assert out[1] is not None and not isinstance(out[1], Exception), "never rolled back: AD stands"
    with pytest.raises(Exception, match="is not enabled on LCS"):
        step.probe(ctx, users[0])

    no_guid = replace(users[1], ad_guid=None)
    out = step.probe_many([(ctx, no_guid)])
    assert isinstance(out[0], Exception) and "no ad_guid" in str(out[0]), out
    with pytest.raises(Exception, match="no ad_guid"):
        step.probe(ctx, no_guid)


def _one_user_lab(tmp_path):
    """A two-client lab and the context a disable of its first user runs in."""
    inv = load_inventory(generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=9))
    user = next(iter(inv.users.values()))
    conns = {h: LabConnection(inv.hosts[h], inv, None) for h in ("lcs01", "exim01")}
    return inv, user, StepCtx(inv, conns, tmp_path, vars=inv.vars, args={"contacts_recreated_by_users": True})


def test_an_ad_entry_that_says_false_is_checked_on_lcs_and_refused_when_lcs_agrees(tmp_path):
    inv, user, ctx = _one_user_lab(tmp_path)
    _ad_enabled(tmp_path / "lab", user.ad_guid, "FALSE")
    out = DisableExchangeIm().probe_many([(ctx, user)])
    assert isinstance(out[0], Exception) and "is not enabled on LCS" in str(out[0])
    # AD's TRUE, homed on the configured pool, stands for LCS's own read (on a real pool they
    # are one record; the lab writes both in one transaction): here it is set by hand, with no
    # user in the lab's LCS store
    _ad_enabled(tmp_path / "lab", user.ad_guid, "true")
    _ad_set(tmp_path / "lab", user.ad_guid, "msRTCSIP-PrimaryHomeServer", inv.vars["lcs_home_server_dn"].upper())
    out = DisableExchangeIm().probe_many([(ctx, user)])
    assert out[0] is not None and not isinstance(out[0], Exception)


def test_ad_is_trusted_only_for_an_enable_on_the_configured_home_server(tmp_path):
    """An entry that says TRUE but is homed on another pool (or in an estate without var
    lcs_home_server_dn, where there is nothing to compare with) is read on LCS: with the
    lab's LCS store empty for that user, the disable is refused."""
    inv_path = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=9)
    inv = load_inventory(inv_path)
    user = next(iter(inv.users.values()))
    trips: Counter = Counter()
    conns = {h: Counted(LabConnection(inv.hosts[h], inv, None), h, trips) for h in ("lcs01", "exim01")}
    home_dn = inv.vars["lcs_home_server_dn"]
    _ad_enabled(tmp_path / "lab", user.ad_guid, "TRUE")
    other = "CN=LC Services,CN=Microsoft,CN=lcs02,CN=Pools,CN=RTC Service,CN=Microsoft,CN=System,DC=contoso,DC=com"
    _ad_set(tmp_path / "lab", user.ad_guid, "msRTCSIP-PrimaryHomeServer", other)
    step = DisableExchangeIm()
    cases = [(dict(inv.vars), "another pool"),
             ({k: v for k, v in inv.vars.items() if k != "lcs_home_server_dn"}, "no var")]
    for vars_, why in cases:
        ctx = StepCtx(inv, conns, tmp_path, vars=vars_, args={"contacts_recreated_by_users": True})
        trips.clear()
        out = step.probe_many([(ctx, user)])
        assert trips["lcs01"] >= 1, why
        assert isinstance(out[0], Exception) and "is not enabled on LCS" in str(out[0]), (why, out)
        with pytest.raises(Exception, match="is not enabled on LCS"):
            step.probe(ctx, user)
    # the same entry homed on the configured pool is trusted: no LCS trip
    _ad_set(tmp_path / "lab", user.ad_guid, "msRTCSIP-PrimaryHomeServer", home_dn)
    ctx = StepCtx(inv, conns, tmp_path, vars=inv.vars, args={"contacts_recreated_by_users": True})
    trips.clear()
    out = step.probe_many([(ctx, user)])
    assert trips["lcs01"] == 0 and out[0] is not None and not isinstance(out[0], Exception), out


def test_a_damaged_rollback_record_reads_lcs_in_both_probe_paths(tmp_path, monkeypatch):
    """When the rollback record cannot be read, the single-user probe decides as the chunk's
    does: LCS is read (not enabled there: refused), rather than failing on the record."""
    import runner.steps.disable_exchange_im as dis
    inv, user, ctx = _one_user_lab(tmp_path)
    _ad_enabled(tmp_path / "lab", user.ad_guid, "FALSE")

    def damaged(ctx, user):
        raise ValueError("damaged record")

    monkeypatch.setattr(dis, "rolled_back_at", damaged)
    step = DisableExchangeIm()
    out = step.probe_many([(ctx, user)])
    assert isinstance(out[0], Exception) and "is not enabled on LCS" in str(out[0]), out
    with pytest.raises(Exception, match="is not enabled on LCS"):
        step.probe(ctx, user)
