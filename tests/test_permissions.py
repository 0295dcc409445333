"""Allow and block lists: reading msExchIMACL, the LCS entries it becomes, the set union, and
the lab's MSFT_SIPESUserACEData (its keys and refusals, through the emulated wmic)."""
from __future__ import annotations

import pytest

from runner.lab.commands.wmic import WmicHost, class_properties, run_wmic
from runner.lab.lcs import (WBEM_E_ALREADY_EXISTS, WBEM_E_INVALID_PARAMETER, WBEM_E_NOT_FOUND, LcsStore, WmiError,
                            canonical_class)
from runner.lcs.mapping import SipMapping
from runner.lcs.permissions import LcsAce, UnmappableAce, parse_value, plan, translate
from runner.windows import wmic

RULE = SipMapping.from_vars({"domains": {"im.contoso.com": "contoso.com", "contoso.com": "contoso.com",
                                         "im.fabrikam.com": "fabrikam.com"},
                             "table": {"ceo@chat.fabrikam.com": "sip:ceo@fabrikam.com"}})
URL = "http://im.contoso.com/instmsg/aliases/"


def entries(values: list[str]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(e.type, e.mask): (e.presence, e.communication) for e in translate(values, RULE).entries}


def test_everyone_domain_and_person_entries_map_with_their_rights() -> None:
    got = entries(["(A;;PRST;;;WD)", "(D;;PRST;;;im.fabrikam.com)", f"(D;;ST;;;{URL}bob)",
                   "(A;;PR;;;http://im.fabrikam.com/instmsg/aliases/carol.jones)"])
    assert got == {("All", ""): ("Allow", "Allow"),
                   ("Domain", "fabrikam.com"): ("Deny", "Deny"),
                   # presence not named for bob: everyone's entry gives it
                   ("User", "sip:bob@contoso.com"): ("Allow", "Deny"),
                   # send-to not named for carol: her domain's entry (a deny) gives it, not everyone's
                   ("User", "sip:carol.jones@fabrikam.com"): ("Allow", "Deny")}


def test_a_deny_wins_over_a_grant_of_the_same_right_and_default_is_allow() -> None:
    got = entries([f"(A;;PRST;;;{URL}dave)", f"(D;;PR;;;{URL}dave)", f"(D;;ST;;;{URL}erin)"])
    assert got[("User", "sip:dave@contoso.com")] == ("Deny", "Allow")
    assert got[("User", "sip:erin@contoso.com")] == ("Allow", "Deny")  # no everyone entry: Exchange IM's default


def test_two_principals_of_one_lcs_entry_merge_with_deny_winning() -> None:
    got = entries(["(A;;PRST;;;im.contoso.com)", "(D;;ST;;;contoso.com)"])
    assert got == {("Domain", "contoso.com"): ("Allow", "Deny")}


def test_unreadable_and_unmappable_values_are_reported_with_a_reason_never_dropped() -> None:
    values = ["(X;;PR;;;WD)", "A;;PRST;;;WD", "(A;;QQ;;;WD)", "(D;;PRST;;;)", "(A;;PRST;;;10.0.0.7)",
              "(D;;PRST;;;im.litware.com)", "(D;;PRST;;;http://im.litware.com/instmsg/aliases/sam)",
              f"(D;;PR;;;{URL}quote%22d)", f"(D;;PR;;;{URL}zo%C3%AB)", f"(A;;ST;;;{URL}100%25)",
              "(A;;PRST;;;http://im.contoso.com/other/bob)", "(A;;LI;;;WD)"]
    t = translate(values, RULE)
    assert not t.entries
    reasons = {u.value: u.reason for u in t.unmappable}
    assert set(reasons) == set(values), set(values) - set(reasons)
    assert "neither A (grant) nor D (deny)" in reasons["(X;;PR;;;WD)"]
    assert "unknown right 'QQ'" in reasons["(A;;QQ;;;WD)"]
    assert "IP address" in reasons["(A;;PRST;;;10.0.0.7)"]
    assert "im.litware.com is not in the sip_mapping domains" in reasons["(D;;PRST;;;im.litware.com)"]
    assert "invalid user part" in reasons[f"(D;;PR;;;{URL}quote%22d)"]
    assert "not an RVP user URL" in reasons["(A;;PRST;;;http://im.contoso.com/other/bob)"]
    assert "neither presence nor send-to" in reasons["(A;;LI;;;WD)"]
    assert not t.notes  # the list-only ACE is reported once, as unmappable
    noted = translate(["(A;;PRLI;;;WD)"], RULE)
    assert [e.type for e in noted.entries] == ["All"] and "list have no LCS equivalent" in noted.notes[0]


def test_hostile_but_valid_aliases_map_percent_decoded_and_the_principal_keeps_semicolons() -> None:
    got = entries([f"(D;;PRST;;;{URL}o%27brien)", f"(D;;ST;;;{URL}r%26d)"])
    assert ("User", "sip:o'brien@contoso.com") in got and ("User", "sip:r&d@contoso.com") in got
    read = parse_value("(A;;PR;;;http://x.example/instmsg/aliases/a;b)")
    assert not isinstance(read, UnmappableAce) and read.principal == "http://x.example/instmsg/aliases/a;b"


def test_plan_is_a_set_union_that_keeps_what_lcs_has() -> None:
    values = ["(A;;PRST;;;WD)", f"(D;;PRST;;;{URL}bob)", f"(D;;ST;;;{URL}carol)"]
    lcs = [LcsAce("all", "", "allow", "allow"),                          # same, another case
           LcsAce("User", "SIP:Bob@contoso.com", "Allow", "Allow"),      # the user unblocked bob on LCS
           LcsAce("User", "sip:zed@contoso.com", "Deny", "Deny")]        # the user's own entry
    p = plan(values, lcs, RULE)
    assert [e.mask for e in p.to_add] == ["sip:carol@contoso.com"]
    assert [e.type for e in p.present] == ["All"]
    assert [(e.mask, l.presence) for e, l in p.kept] == [("sip:bob@contoso.com", "Allow")]
    assert any("kept as set on LCS" in w for w in p.warnings())
    assert p.expected == 3


def test_an_entry_the_runner_created_and_nobody_changed_is_updated_one_a_user_changed_is_kept() -> None:
    values = [f"(D;;PRST;;;{URL}bob)", f"(D;;ST;;;{URL}carol)", f"(A;;PRST;;;{URL}dave)"]
    lcs = [LcsAce("User", "sip:bob@contoso.com", "Allow", "Allow"),     # as the runner created it
           LcsAce("User", "sip:carol@contoso.com", "Deny", "Deny"),     # runner made Allow/Allow; user changed
           LcsAce("User", "sip:dave@contoso.com", "Deny", "Deny")]      # mid-update: old value still there
    created = {("user", "sip:bob@contoso.com"): [("Allow", "Allow")],
               ("user", "sip:carol@contoso.com"): [("Allow", "Allow")],
               ("user", "sip:dave@contoso.com"): [("Allow", "Allow"), ("Deny", "Deny")]}
    p = plan(values, lcs, RULE, created)
    assert sorted((e.mask, e.presence, e.communication, was.presence) for e, was in p.to_update) == [
        ("sip:bob@contoso.com", "Deny", "Deny", "Allow"), ("sip:dave@contoso.com", "Allow", "Allow", "Deny")]
    assert [e.mask for e, _ in p.kept] == ["sip:carol@contoso.com"]
    assert not any("bob" in w for w in p.warnings()) and p.expected == 3
    assert [e.mask for e, _ in plan(values, lcs, RULE).kept] == [
        "sip:bob@contoso.com", "sip:carol@contoso.com", "sip:dave@contoso.com"]  # without a record: all kept


# -- the lab's class ---------------------------------------------------------------------

DN = "CN=LC Services,CN=Microsoft,CN=lcs01,CN=Pools,DC=contoso,DC=com"
GUID = "{11111111-2222-3333-4444-555555555555}"


@pytest.fixture
def host(tmp_path):
    s = LcsStore.initialise(tmp_path / "lcs.db", server_dn=DN)
    s.create("MSFT_SIPESUserSetting", {"InstanceID": GUID, "UserDN": "CN=Alice,DC=contoso,DC=com",
                                       "PrimaryURI": "sip:alice@contoso.com", "HomeServerDN": DN, "Enabled": True})
    yield WmicHost(node="LCS01", provider=lambda cls: s, properties=class_properties, canonical=canonical_class)
    s.close()


def create(host: WmicHost, **values: object):
    return run_wmic(wmic.create("MSFT_SIPESUserACEData", values).bits[1], host)


def test_lab_ace_created_read_back_with_wql_and_null_mask_for_all(host) -> None:
    assert create(host, UserInstanceID=GUID, Type="all", Presence="allow", Communication="Deny").rc == 0
    assert create(host, UserInstanceID=GUID, Type="User", Mask="sip:o'brien&co@contoso.com", Presence="Deny",
                  Communication="Deny").rc == 0
    res = run_wmic(wmic.get("MSFT_SIPESUserACEData", ("Type", "Mask", "Presence", "Communication"),
                              wmic.where(UserInstanceID=GUID)).bits[1], host)
    rows = wmic.parse_list(res.stdout)
    assert {(r["Type"], r["Mask"], r["Presence"], r["Communication"]) for r in rows} == {
        ("All", "", "Allow", "Deny"), ("User", "sip:o'brien&co@contoso.com", "Deny", "Deny")}


def test_lab_ace_values_are_set_through_the_escaped_where_of_its_keys(host) -> None:
    mask = "sip:o'brien&co@contoso.com"
    assert create(host, UserInstanceID=GUID, Type="User", Mask=mask, Presence="Allow", Communication="Allow").rc == 0
    res = run_wmic(wmic.set_("MSFT_SIPESUserACEData", wmic.where(UserInstanceID=GUID, Type="User", Mask=mask),
                             {"Presence": "Deny", "Communication": "Deny"}).bits[1], host)
    assert res.rc == 0 and "update successful" in res.stdout, res
    rows = wmic.parse_list(run_wmic(wmic.get("MSFT_SIPESUserACEData", ("Mask", "Presence", "Communication"),
                                             wmic.where(UserInstanceID=GUID)).bits[1], host).stdout)
    assert [(r["Mask"], r["Presence"], r["Communication"]) for r in rows] == [(mask, "Deny", "Deny")]


@pytest.mark.parametrize("values, code", [
    ({"Type": "Group", "Presence": "Allow", "Communication": "Allow"}, WBEM_E_INVALID_PARAMETER),
    ({"Type": "All", "Mask": "contoso.com", "Presence": "Allow", "Communication": "Allow"}, WBEM_E_INVALID_PARAMETER),
    ({"Type": "Domain", "Presence": "Allow", "Communication": "Allow"}, WBEM_E_INVALID_PARAMETER),
    ({"Type": "Domain", "Mask": "not a domain", "Presence": "Allow", "Communication": "Allow"},
     WBEM_E_INVALID_PARAMETER),
    ({"Type": "User", "Mask": "bob@contoso.com", "Presence": "Allow", "Communication": "Allow"},
     WBEM_E_INVALID_PARAMETER),
    ({"Type": "User", "Mask": "sip:bob@contoso.com", "Communication": "Allow"}, WBEM_E_INVALID_PARAMETER),
    ({"Type": "User", "Mask": "sip:bob@contoso.com", "Presence": "Maybe", "Communication": "Allow"},
     WBEM_E_INVALID_PARAMETER),
])
def test_lab_refuses_what_lcs_refuses(host, values, code) -> None:
    res = create(host, UserInstanceID=GUID, **values)
    assert res.rc != 0 and f"0x{code:08X}" in res.stderr, (res.rc, res.stderr)


def test_lab_ace_needs_a_homed_user_and_unique_keys(host) -> None:
    res = create(host, UserInstanceID="{99999999-2222-3333-4444-555555555555}", Type="All", Presence="Allow",
                 Communication="Allow")
    assert f"0x{WBEM_E_NOT_FOUND:08X}" in res.stderr
    assert create(host, UserInstanceID=GUID, Type="Domain", Mask="fabrikam.com", Presence="Deny",
                  Communication="Deny").rc == 0
    again = create(host, UserInstanceID=GUID, Type="domain", Mask="FABRIKAM.com", Presence="Allow",
                   Communication="Allow")
    assert f"0x{WBEM_E_ALREADY_EXISTS:08X}" in again.stderr
    res = run_wmic(wmic.set_("MSFT_SIPESUserACEData", wmic.where(UserInstanceID=GUID), {"Mask": "litware.com"}).bits[1],
                   host)
    assert f"0x{WBEM_E_INVALID_PARAMETER:08X}" in res.stderr  # a key cannot be updated


def test_lab_store_error_is_a_wmi_error(tmp_path) -> None:
    s = LcsStore.initialise(tmp_path / "lcs.db", server_dn=DN)
    try:
        with pytest.raises(WmiError):
            s.create("MSFT_SIPESUserACEData", {"UserInstanceID": GUID, "Type": "All", "Presence": "Allow",
                                               "Communication": "Allow"})
    finally:
        s.close()


def test_lab_verify_names_missing_and_wrong_entries_and_lists_extra_ones(tmp_path) -> None:
    import json
    import sqlite3

    from runner.lab.generator import generate
    from runner.lab.verify import expected_permissions, verify

    d = tmp_path / "lab"
    generate(d, clients=12, users_per_client=2, contacts=4, seed=4)
    m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    users = {u["im_address"].lower(): u["sip_uri"] for u in m["users"].values()}
    alias, u, want = next((a, u, expected_permissions(u["permissions"], m["sip_mapping"], users)[0])
                          for a, u in m["users"].items()
                          if len(expected_permissions(u["permissions"], m["sip_mapping"], users)[0]) >= 3)
    guid = u["ad_guid"].upper()
    db = sqlite3.connect(d / "hosts" / m["lcs_server"] / "lcs.db")
    db.execute("INSERT INTO users VALUES (?,?,?,?,1,?,NULL,'t','t')",
               (guid, "CN=x", u["display_name"], u["sip_uri"], m["lcs_server_dn"]))
    (k0, v0), (k1, v1), *rest = sorted(want.items())
    flipped = ("Deny" if v1[0] == "Allow" else "Allow", v1[1])
    for (typ, mask), (p, c) in [((k1[0], k1[1]), flipped), *rest, (("user", "sip:own@contoso.com"), ("Deny", "Deny"))]:
        db.execute("INSERT INTO user_aces VALUES (?,?,?,?,?)", (guid, typ.capitalize(), mask, p, c))
    db.commit()
    db.close()
    r = next(x for x in verify(d, exchange_side=False, contacts=True).users if x.alias == alias)
    show = lambda k: k[0] if not k[1] else f"{k[0]} {k[1]}"  # noqa: E731
    assert r.permissions_missing == [show(k0)]
    assert r.permissions_wrong == [f"{show(k1)}: {flipped[0]}/{flipped[1]}, expected {v1[0]}/{v1[1]}"]
    assert r.permissions_extra == ["user sip:own@contoso.com"]
    assert any("permission" in p for p in r.problems)
    assert r.permissions_expected == len(want)


def test_a_value_that_is_not_text_is_kept_as_hex_reported_and_compared_alike() -> None:
    from runner.steps._permissions import acl_values
    from runner.windows import ldif

    export = b"dn: CN=a,DC=x\r\nmsExchIMACL:: AQIDBP8=\r\nmsExchIMACL: (A;;PRST;;;WD)\r\n\r\n"
    [entry] = ldif.parse(export)
    values = acl_values(entry.get("msExchIMACL"))
    assert values == ["0x01020304ff", "(A;;PRST;;;WD)"]
    assert acl_values(values) == values  # the same again (disable compares them with the verified list)
    t = translate(values, RULE)
    assert [u.value for u in t.unmappable] == ["0x01020304ff"] and [e.type for e in t.entries] == ["All"]
