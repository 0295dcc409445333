"""runner lab verify: missing, extra and duplicated contacts on a hand-modified LCS store."""
from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from runner.lab.cli import lab as lab_cli
from runner.lab.generator import generate
from runner.lab.verify import map_address, verify


@pytest.fixture
def lab_dir(tmp_path):
    d = tmp_path / "lab"
    generate(d, clients=6, users_per_client=2, contacts=8, seed=5)
    return d


def _user_with_contacts(d):
    m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    rule = m["sip_mapping"]
    users = {u["im_address"].lower(): u["sip_uri"] for u in m["users"].values()}
    for alias, u in m["users"].items():
        uris = {}
        for mm in u["machines"].values():
            for c in mm["contacts"]:
                uri = map_address(c["address"], rule, users)
                if uri:
                    uris.setdefault(uri.lower(), uri)
        if len(uris) >= 3 and len(uris) <= 150:
            return alias, u, sorted(uris.values()), m
    raise AssertionError("no user with contacts")


def _migrate(d, u, uris, m):
    db = sqlite3.connect(d / "hosts" / "lcs01" / "lcs.db")
    db.execute("INSERT INTO users VALUES (?,?,?,?,1,?,NULL,'t','t')",
               (u["ad_guid"].upper(), "CN=x", u["display_name"], u["sip_uri"], m["lcs_server_dn"]))
    groups = {g for mm in u["machines"].values() for g in mm["groups"] if len(g) <= 128}
    for i, g in enumerate(sorted(groups), start=1):
        db.execute("INSERT INTO contact_groups VALUES (?,?,?,NULL)", (u["ad_guid"].upper(), i, g))
    for uri in uris:
        db.execute("INSERT INTO contacts VALUES (?,?,?,NULL,1,'')", (u["ad_guid"].upper(), uri, _names(m, u)[uri]))
    db.commit()
    return db


def _names(m, u):
    """Each mappable contact's display name in the user's registry, by its SIP URI."""
    users = {x["im_address"].lower(): x["sip_uri"] for x in m["users"].values()}
    return {map_address(c["address"], m["sip_mapping"], users): c["display_name"]
            for mm in u["machines"].values() for c in mm["contacts"]}


def test_verify_reports_a_contact_named_otherwise_than_in_the_registry(lab_dir):
    alias, u, uris, m = _user_with_contacts(lab_dir)
    db = _migrate(lab_dir, u, uris, m)
    wrong = "Zo\u251c\u00bd"  # 'Zoë' written in UTF-8, read in cp437
    db.execute("UPDATE contacts SET name=? WHERE sip_uri=?", (wrong, uris[0]))
    db.commit()
    r = next(x for x in verify(lab_dir, exchange_side=False, permissions=False).users if x.alias == alias)
    assert r.names_wrong == [f"{uris[0]}: {wrong!r}"] and not r.ok
    assert (r.missing, r.extra, r.duplicated) == ([], [], [])


def test_a_complete_migration_of_one_user_verifies_clean(lab_dir):
    alias, u, uris, m = _user_with_contacts(lab_dir)
    _migrate(lab_dir, u, uris, m)
    r = next(x for x in verify(lab_dir, exchange_side=False, permissions=False).users if x.alias == alias)
    assert r.enabled and (r.missing, r.extra, r.duplicated) == ([], [], []) and r.ok


def test_verify_reports_missing_extra_and_duplicated(lab_dir):
    alias, u, uris, m = _user_with_contacts(lab_dir)
    db = _migrate(lab_dir, u, uris[1:], m)
    guid = u["ad_guid"].upper()
    db.execute("INSERT INTO contacts VALUES (?,?,NULL,NULL,1,'')", (guid, "sip:stranger@contoso.com"))
    db.execute("INSERT INTO contacts VALUES (?,?,NULL,NULL,1,'')", (guid, " " + uris[1]))
    db.commit()
    r = next(x for x in verify(lab_dir, exchange_side=False).users if x.alias == alias)
    assert r.missing == [uris[0]]
    assert r.extra == ["sip:stranger@contoso.com"]
    assert r.duplicated == [uris[1]]
    assert not r.ok


def test_untouched_lab_fails_verification_and_cli_exits_1(lab_dir):
    rep = verify(lab_dir)
    assert not rep.ok and rep.decommissioned is False
    assert all(not u.enabled and not u.exchange_im_disabled for u in rep.users)
    res = CliRunner().invoke(lab_cli, ["verify", "--dir", str(lab_dir), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.output)["ok"] is False


def test_over_limit_user_is_complete_with_limit_contacts(lab_dir):
    alias, u, uris, m = _user_with_contacts(lab_dir)
    db = _migrate(lab_dir, u, uris[:2], m)
    db.execute("UPDATE pool_settings SET value='2' WHERE name='MaxContactsPerUser'")
    db.commit()
    r = next(x for x in verify(lab_dir, exchange_side=False, permissions=False).users if x.alias == alias)
    assert r.over_limit == len(uris) - 2 and r.missing == [] and r.ok


@pytest.mark.parametrize("address,expected", [
    ("bob@im.contoso.com", "sip:bob@contoso.com"),
    ("bob@contoso.com", "sip:bob@contoso.com"),
    ("x@hotmail.com", None),
    ("bob", None),
    ("dave smith@im.contoso.com", None),
    ("carol@@im.contoso.com", None),
])
def test_independent_mapping(address, expected):
    rule = {"domains": {"im.contoso.com": "contoso.com", "contoso.com": "contoso.com"},
            "template": "sip:{local}@{domain}", "table": {}}
    assert map_address(address, rule, {}) == expected


def test_show_user_and_host(lab_dir):
    m = json.loads((lab_dir / "manifest.json").read_text(encoding="utf-8"))
    alias = next(iter(m["users"]))
    res = CliRunner().invoke(lab_cli, ["show", alias, "--dir", str(lab_dir), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["user"] == alias
    res = CliRunner().invoke(lab_cli, ["show", "lcs01", "--dir", str(lab_dir)])
    assert res.exit_code == 0 and "RTCSRV: RUNNING" in res.output
    assert CliRunner().invoke(lab_cli, ["show", "nobody", "--dir", str(lab_dir)]).exit_code == 5  # bad argument
