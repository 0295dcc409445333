"""enable_lcs_users finishes a partly done enable: LCS has the user, AD lacks its attributes."""
from __future__ import annotations

import sqlite3
import uuid

from stepctx import StepCtx

from runner.connections.lab import LabConnection
from runner.lab.generator import generate
from runner.loader import load_inventory
from runner.steps.enable_lcs_users import EnableLcsUsers


def _rtc_values(lab_dir, guid: str) -> dict[str, list]:
    db = sqlite3.connect(lab_dir / "ad.db")
    raw = uuid.UUID(guid.strip("{}")).bytes_le
    dn = db.execute("SELECT dn FROM attrs WHERE name='objectGUID' AND value=?", (raw,)).fetchone()[0]
    out: dict[str, list] = {}
    for n, v in db.execute("SELECT name, value FROM attrs WHERE dn=? AND (name LIKE 'msRTCSIP-%' OR "
                           "(name='proxyAddresses' AND value LIKE 'sip:%'))", (dn,)):
        out.setdefault(n, []).append(v)
    db.close()
    return out


def test_an_lcs_user_without_its_ad_attributes_is_not_ok_and_apply_finishes_it(tmp_path):
    inv_path = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=3)
    inv = load_inventory(inv_path)
    user = next(iter(inv.users.values()))
    conns = {h: LabConnection(inv.hosts[h], inv, None) for h in ("lcs01", "exim01")}
    ctx = StepCtx(inv, conns, tmp_path, vars=inv.vars)
    step = EnableLcsUsers()
    diff = step.probe(ctx, user)
    assert diff is not None and diff.data["action"] == "create"
    assert step.apply(ctx, user, diff).status == "changed"
    assert step.probe(ctx, user) is None
    complete = _rtc_values(tmp_path / "lab", user.ad_guid)
    assert len(complete) == 4, complete
    # the half a killed lab used to leave: the LCS row, no AD attributes
    db = sqlite3.connect(tmp_path / "lab" / "ad.db")
    db.execute("DELETE FROM attrs WHERE name LIKE 'msRTCSIP-%' OR (name='proxyAddresses' AND value LIKE 'sip:%')")
    db.commit()
    db.close()
    diff = step.probe(ctx, user)
    assert diff is not None, "an LCS user whose AD object lacks the enable's attributes is not enabled"
    assert "msRTCSIP-PrimaryUserAddress" in diff.summary and diff.data["action"] == "set"
    result = step.apply(ctx, user, diff)
    assert result.status == "changed" and result.data["finished"]
    assert _rtc_values(tmp_path / "lab", user.ad_guid) == complete
    assert step.probe(ctx, user) is None


def test_a_user_whose_ad_dn_cannot_go_on_a_line_fails_alone_in_its_chunk(tmp_path):
    """A DN with a line end (possible in AD, escaped) fails that user's enable, not the chunk's."""
    inv_path = generate(tmp_path / "lab", clients=6, users_per_client=1, contacts=1, seed=4)
    inv = load_inventory(inv_path)
    users = list(inv.users.values())[:3]
    assert len(users) == 3
    conns = {h: LabConnection(inv.hosts[h], inv, None) for h in ("lcs01", "exim01")}
    ctx = StepCtx(inv, conns, tmp_path, vars=inv.vars)
    step = EnableLcsUsers()
    probed = step.probe_many([(ctx, u) for u in users])
    assert all(d is not None and not isinstance(d, Exception) and d.data["action"] == "create" for d in probed)
    probed[1].data["user_dn"] = "CN=Line one\nLine two,CN=Users,DC=contoso,DC=com"
    out = step.apply_many([(ctx, u, d) for u, d in zip(users, probed)])
    assert [getattr(o, "status", None) for o in out] == ["changed", None, "changed"]
    assert users[1].alias in str(out[1]) and "line" in str(out[1])
    assert step.probe(ctx, users[0]) is None and step.probe(ctx, users[2]) is None
    assert step.probe(ctx, users[1]) is not None  # not enabled
