"""SIP URI mapping: table, domains + template, per-user overrides, validation."""
from __future__ import annotations

import pytest

from runner.lcs.mapping import Mapped, SipMapping, Unmappable, mapping_for, user_sip_uri, validate_sip_uri
from runner.model import Inventory, User

RULE = {
    "domains": {"im.contoso.com": "contoso.com", "contoso.com": "contoso.com"},
    "template": "sip:{local}@{domain}",
    "table": {"bob@im.fabrikam.com": "sip:bob@fabrikam.com"},
}


def test_domain_map_and_template_give_the_sip_uri():
    r = SipMapping.from_vars(RULE).map("alice@im.contoso.com")
    assert r == Mapped("alice@im.contoso.com", "sip:alice@contoso.com", "domain")


def test_domain_lookup_ignores_case():
    assert SipMapping.from_vars(RULE).map("Alice@IM.Contoso.COM").uri == "sip:Alice@contoso.com"


def test_exact_table_wins_over_domains():
    rule = dict(RULE, table={"alice@im.contoso.com": "sip:a.smith@contoso.com"})
    assert SipMapping.from_vars(rule).map("ALICE@im.contoso.com").uri == "sip:a.smith@contoso.com"


def test_table_entry_for_a_foreign_domain_maps():
    assert SipMapping.from_vars(RULE).map("bob@im.fabrikam.com").rule == "table"


def test_unknown_domain_is_unmappable_with_a_reason():
    r = SipMapping.from_vars(RULE).map("eve@example.org")
    assert isinstance(r, Unmappable) and "example.org" in r.reason


@pytest.mark.parametrize("address", ["", "no-at-sign", "a@b@c", "two words@im.contoso.com"])
def test_malformed_addresses_are_unmappable(address):
    assert isinstance(SipMapping.from_vars(RULE).map(address), Unmappable)


def test_template_can_use_the_original_im_domain():
    m = SipMapping.from_vars({"domains": {"im.contoso.com": "x"}, "template": "sip:{local}.{im_domain}@contoso.com"})
    assert m.map("al@im.contoso.com").uri == "sip:al.im.contoso.com@contoso.com"


def test_a_broken_template_makes_addresses_unmappable_not_a_crash():
    m = SipMapping.from_vars({"domains": {"im.contoso.com": "contoso.com"}, "template": "sip:{nope}@{domain}"})
    assert isinstance(m.map("al@im.contoso.com"), Unmappable)


@pytest.mark.parametrize("target", [
    "sip:al@0.0.0.0", "sip:al@224.0.0.1", "sip:al@[ff02::1]", "http:al@contoso.com",
    "sip:al@localhost", "sip:al\"x@contoso.com", "sip:al@bad_domain.com", "sip:@contoso.com",
    "sip:" + "a" * 450 + "@contoso.com", "sip:al@999.1.1.1",
])
def test_invalid_results_are_refused(target):
    assert validate_sip_uri(target) is not None
    m = SipMapping.from_vars({"table": {"al@im.contoso.com": target}})
    assert isinstance(m.map("al@im.contoso.com"), Unmappable)


@pytest.mark.parametrize("uri", ["sip:al@contoso.com", "sip:o'brien@contoso.com", "sip:al@10.1.2.3",
                                 "sip:al@[2001:db8::1]"])
def test_valid_uris_pass(uri):
    assert validate_sip_uri(uri) is None


def _inventory(users, vars=None):
    return Inventory(path="inv.yml", hosts={}, groups={}, users={u.alias: u for u in users}, vars=vars or {})


def test_user_sip_uri_override_wins_for_the_user_and_their_contacts():
    carol = User("carol", "carol@im.contoso.com", sip_uri="sip:c.jones@contoso.com")
    alice = User("alice", "alice@im.contoso.com")
    inv = _inventory([carol, alice], {"sip_mapping": RULE})
    assert user_sip_uri(carol, {}, inv).uri == "sip:c.jones@contoso.com"
    assert mapping_for({}, inv, alice).map("carol@im.contoso.com").uri == "sip:c.jones@contoso.com"


def test_per_user_sip_mapping_is_merged_over_the_inventory_rule():
    dave = User("dave", "dave@im.contoso.com",
                vars={"sip_mapping": {"domains": {"im.fabrikam.com": "fabrikam.com"}}})
    inv = _inventory([dave], {"sip_mapping": RULE})
    m = mapping_for({"sip_mapping": RULE}, inv, dave)
    assert m.map("x@im.fabrikam.com").uri == "sip:x@fabrikam.com"
    assert m.map("y@im.contoso.com").uri == "sip:y@contoso.com"
    assert user_sip_uri(dave, {"sip_mapping": RULE}, inv).uri == "sip:dave@contoso.com"


def test_invalid_user_override_is_unmappable():
    u = User("z", "z@im.contoso.com", sip_uri="sip:z@0.0.0.0")
    assert isinstance(user_sip_uri(u, {"sip_mapping": RULE}), Unmappable)
