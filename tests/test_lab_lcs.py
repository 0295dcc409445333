"""LCS store limits, the wmic emulator's syntax, output formats and exit codes, WQL."""
from __future__ import annotations

import pytest

from runner.lab.commands.wmic import (
    WmicHost, class_properties, hresult_rc, parse_command, render, run_wmic,
)
from runner.lab.lcs import (
    WBEM_E_ALREADY_EXISTS, WBEM_E_INVALID_PARAMETER, WBEM_E_QUOTA_VIOLATION, Instance, LcsStore, WmiError,
    canonical_class,
)
from runner.lab.wql import parse_where

DN = "CN=LC Services,CN=Microsoft,CN=lcs01,CN=Pools,DC=contoso,DC=com"
GUID = "{11111111-2222-3333-4444-555555555555}"


@pytest.fixture
def store(tmp_path):
    s = LcsStore.initialise(tmp_path / "lcs.db", server_dn=DN)
    s.create("MSFT_SIPESUserSetting", {"InstanceID": GUID, "UserDN": "CN=Alice,DC=contoso,DC=com",
                                       "PrimaryURI": "sip:alice@contoso.com", "HomeServerDN": DN, "Enabled": True})
    yield s
    s.close()


@pytest.fixture
def host(store):
    journal: list[str] = []

    def provider(cls):
        return store

    h = WmicHost(node="LCS01", provider=provider, properties=class_properties,
                 mutated=journal.append, canonical=canonical_class)
    h.journal = journal  # type: ignore[attr-defined]
    return h


def contact(store, uri, **kw):
    return store.create("MSFT_SIPESUserContactData", {"UserInstanceID": GUID, "SIPURI": uri, "Subscribed": True, **kw})


def test_contact_limit_is_the_pool_setting_and_fails_with_quota_violation(store, host):
    run_wmic("path MSFT_SIPESEmSetting set MaxContactsPerUser=3", host)
    for i in range(3):
        contact(store, f"sip:c{i}@contoso.com")
    with pytest.raises(WmiError) as e:
        contact(store, "sip:c3@contoso.com")
    assert e.value.code == WBEM_E_QUOTA_VIOLATION


def test_default_max_contacts_is_150(store):
    assert store.max_contacts == 150


def test_duplicate_contact_and_duplicate_primary_uri_already_exist(store):
    contact(store, "sip:bob@contoso.com")
    with pytest.raises(WmiError) as e:
        contact(store, "SIP:BOB@contoso.com")
    assert e.value.code == WBEM_E_ALREADY_EXISTS
    with pytest.raises(WmiError) as e:
        store.create("MSFT_SIPESUserSetting", {"InstanceID": "{99999999-2222-3333-4444-555555555555}",
                                               "UserDN": "CN=X", "PrimaryURI": "sip:Alice@contoso.com",
                                               "HomeServerDN": DN})
    assert e.value.code == WBEM_E_ALREADY_EXISTS


@pytest.mark.parametrize("props", [
    {"Name": "x" * 257}, {"ExternalURL": "u" * 2049}, {"SIPURI": "sip:" + "a" * 460 + "@c.com"},
    {"SIPURI": "bob@contoso.com"}, {"GroupID": [7]},
])
def test_contact_properties_beyond_limits_are_invalid_parameters(store, props):
    args = {"UserInstanceID": GUID, "SIPURI": "sip:bob@contoso.com", "Subscribed": True, **props}
    with pytest.raises(WmiError) as e:
        store.create("MSFT_SIPESUserContactData", args)
    assert e.value.code == WBEM_E_INVALID_PARAMETER


def test_groups_get_server_assigned_ids_up_to_64(store):
    ids = [store.create("MSFT_SIPESUserContactGroupData", {"UserInstanceID": GUID, "Name": f"g{i}"}).props["GroupID"]
           for i in range(64)]
    assert ids == list(range(1, 65))
    with pytest.raises(WmiError) as e:
        store.create("MSFT_SIPESUserContactGroupData", {"UserInstanceID": GUID, "Name": "one too many"})
    assert e.value.code == WBEM_E_QUOTA_VIOLATION
    with pytest.raises(WmiError):
        store.create("MSFT_SIPESUserContactGroupData", {"UserInstanceID": GUID, "Name": "n" * 129})


def test_sipuri_cannot_be_updated(store, host):
    contact(store, "sip:bob@contoso.com")
    r = run_wmic("path MSFT_SIPESUserContactData where \"SIPURI='sip:bob@contoso.com'\" set SIPURI=\"sip:x@c.com\"", host)
    assert r.rc == hresult_rc(WBEM_E_INVALID_PARAMETER)
    assert "Code = 0x80041008" in r.stderr


def test_get_list_format_sorts_properties_and_frames_with_blank_lines(store, host):
    r = run_wmic("path MSFT_SIPESUserSetting where \"PrimaryURI='sip:alice@contoso.com'\" get PrimaryURI,Enabled /format:list", host)
    assert r.rc == 0
    assert r.stdout == "\r\n\r\nEnabled=TRUE\r\nPrimaryURI=sip:alice@contoso.com\r\n\r\n\r\n"


def test_get_value_switch_equals_list_format(store, host):
    a = run_wmic("path MSFT_SIPESUserSetting get PrimaryURI /value", host)
    b = run_wmic("path MSFT_SIPESUserSetting get PrimaryURI /format:list", host)
    assert a.stdout == b.stdout


def test_csv_format_starts_blank_and_has_node_column(store, host):
    r = run_wmic("path MSFT_SIPESUserSetting get PrimaryURI,Enabled /format:csv", host)
    assert r.stdout == "\r\nNode,Enabled,PrimaryURI\r\nLCS01,TRUE,sip:alice@contoso.com\r\n"


def test_table_format_pads_columns(store, host):
    r = run_wmic("path MSFT_SIPESUserSetting get Enabled,PrimaryURI", host)
    assert r.stdout.splitlines()[0] == "Enabled  PrimaryURI             "
    assert r.stdout.endswith("\r\n\r\n")


def test_no_match_prints_no_instances_on_stderr_with_exit_0(store, host):
    r = run_wmic("path MSFT_SIPESUserSetting where \"PrimaryURI='sip:nobody@contoso.com'\" get PrimaryURI", host)
    assert (r.rc, r.stdout, r.stderr) == (0, "", "No Instance(s) Available.\r\n")


def test_create_set_delete_print_wmic_messages_and_are_journaled(store, host):
    r = run_wmic('path MSFT_SIPESUserContactData create UserInstanceID="%s",SIPURI="sip:b@c.com",'
                 'Name="Bob \\"B\\" & <co> | 100%%",Subscribed=TRUE' % GUID, host)
    assert (r.rc, r.stdout) == (0, "Instance creation successful.\r\n")
    assert store.instances("MSFT_SIPESUserContactData")[0].props["Name"] == 'Bob "B" & <co> | 100%'
    r = run_wmic("path MSFT_SIPESUserContactData where (SIPURI='sip:b@c.com') set Name=\"x\"", host)
    assert r.stdout.startswith("Updating property(s) of '\\\\LCS01\\ROOT\\CIMV2:MSFT_SIPESUserContactData.SIPURI=")
    assert r.stdout.endswith("Property(s) update successful.\r\n")
    r = run_wmic("path MSFT_SIPESUserContactData where \"SIPURI='sip:b@c.com'\" delete", host)
    assert r.stdout.endswith("Instance deletion successful.\r\n") and r.stdout.startswith("Deleting instance \\\\LCS01")
    assert len(host.journal) == 3
    run_wmic("path MSFT_SIPESUserContactData get SIPURI", host)
    assert len(host.journal) == 3


def test_errors_print_code_description_facility_and_exit_with_hresult(host):
    r = run_wmic("path MSFT_Nope get X", host)
    assert r.stderr == "ERROR:\r\nCode = 0x80041010\r\nDescription = Invalid class\r\nFacility = WMI\r\n"
    assert r.rc == -2147217392
    r = run_wmic("path MSFT_SIPESUserSetting where \"PrimaryURI='x' AND\" get PrimaryURI", host)
    assert "0x80041017" in r.stderr


def test_unknown_alias_and_bad_global_switch(host):
    assert run_wmic("frobnicate get x", host).stderr.startswith("frobnicate - Alias not found.")
    assert run_wmic("/bogus path MSFT_SIPESUserSetting get PrimaryURI", host).rc != 0


def test_namespace_switch_accepts_root_cimv2_only(store, host):
    assert run_wmic(r"/namespace:\\root\cimv2 path MSFT_SIPESUserSetting get PrimaryURI", host).rc == 0
    assert "0x8004100e" in run_wmic(r"/namespace:\\root\other path MSFT_SIPESUserSetting get X", host).stderr


@pytest.mark.parametrize("cond,props,expected", [
    ("Name='O\\'Brien'", {"Name": "o'brien"}, True),
    ("Name='O''Brien'", {"Name": "O'Brien"}, True),
    ("Path='C:\\\\x'", {"Path": "c:\\X"}, True),
    ("A=1 AND (B='x' OR B='y')", {"A": 1, "B": "Y"}, True),
    ("A<>1", {"A": 1}, False),
    ("NOT A=1", {"A": 2}, True),
    ("Name LIKE 'sip:%@contoso.com'", {"Name": "SIP:bob@contoso.com"}, True),
    ("Name LIKE 'b_b'", {"Name": "bob"}, True),
    ("Name LIKE '[ab]%'", {"Name": "carol"}, False),
    ("Name IS NULL", {"Name": None}, True),
    ("Enabled=TRUE", {"Enabled": False}, False),
])
def test_wql_where_clauses(cond, props, expected):
    assert parse_where(cond).matches(props) is expected


@pytest.mark.parametrize("cond,props,expected", [
    # an OR of one property's string equalities (a chunk's probe) is one set lookup: it must
    # still say what each term would: case-insensitive, casefolded, and typed values compared
    # as a single term compares them
    ("A='x' OR a='Y'", {"A": "y"}, True),
    ("A='x' OR A='y'", {"a": "z"}, False),
    ("A='SS' OR A='b'", {"A": "\u00df"}, True),
    ("A='TRUE' OR A='no'", {"A": True}, True),
    ("A='FALSE' OR A='no'", {"A": True}, False),
    ("A='1' OR A='2'", {"A": 1}, True),
    ("A='1.5' OR A='x'", {"A": 1.5}, True),
    ("A='x' OR A='y'", {"A": None}, False),
    ("A='x' OR A='y'", {"A": ["x"]}, False),
    ("A='x' OR B='y'", {"A": "q", "B": "Y"}, True),
    ("A='x' OR A<>'y'", {"A": "q"}, True),
])
def test_wql_or_of_equalities(cond, props, expected):
    assert parse_where(cond).matches(props) is expected


def test_wql_or_of_equalities_still_needs_the_property():
    with pytest.raises(WmiError):
        parse_where("Missing='x' OR Missing='y'").matches({"A": "x"})


def test_wql_hints_are_only_top_level_equalities():
    assert parse_where("A='x' AND B='y'").hints == {"A": "x", "B": "y"}
    assert parse_where("A='x' OR B='y'").hints == {}
    assert parse_where("A='x' AND (B='y' OR C='z')").hints == {"A": "x"}


@pytest.mark.parametrize("bad", ["A=", "A='x", "(A=1", "A=1 B=2", "=1"])
def test_wql_syntax_errors_are_invalid_query(bad):
    with pytest.raises(WmiError) as e:
        parse_where(bad)
    assert e.value.code == 0x80041017


def test_where_in_double_quotes_or_parentheses_and_create_values():
    c = parse_command('path MSFT_SIPESUserContactData where (SIPURI=\'sip:a@b.c\') get SIPURI')
    assert c.where is not None and c.where.hints == {"SIPURI": "sip:a@b.c"}
    c = parse_command('path X create A="a, b",B=TRUE,C={1,2},D=5')
    assert c.assignments == {"A": "a, b", "B": True, "C": [1, 2], "D": 5}


def test_arrays_render_in_braces():
    out = render([Instance("X", {"GroupID": [1, 2], "S": ["a"]})], ["GroupID", "S"], "list", "N")
    assert "GroupID={1,2}\r\n" in out and 'S={"a"}\r\n' in out
