"""Set-union import planning: add what is missing, never duplicate, remove or rename."""
from __future__ import annotations

import json

from runner.lcs.contacts import (ExportedContact as E, LcsContact, LcsGroup, group_ids_for, parse_export,
                                 plan_import, verify)
from runner.lcs.mapping import SipMapping

M = SipMapping.from_vars({"domains": {"im.contoso.com": "contoso.com"}})


def test_missing_contacts_are_added_with_name_and_groups_and_groups_created_first():
    plan = plan_import([E("bob@im.contoso.com", "Bob", ("Team",)), E("cy@im.contoso.com", "Cy")], [], [], M)
    assert plan.groups_to_create == ["Team"]
    assert [(c.uri, c.name, c.groups) for c in plan.contacts_to_add] == [
        ("sip:bob@contoso.com", "Bob", ("Team",)), ("sip:cy@contoso.com", "Cy", ())]


def test_a_contact_already_on_lcs_is_never_duplicated_renamed_or_regrouped():
    current = [LcsContact("SIP:BOB@contoso.com", "Bobby (edited on LCS)", (3,))]
    plan = plan_import([E("bob@im.contoso.com", "Bob", ("Other",))], current, [LcsGroup(3, "Mine")], M)
    assert plan.contacts_to_add == [] and plan.groups_to_create == []
    assert plan.already_present == ["sip:bob@contoso.com"]
    assert not plan.changes


def test_contacts_on_lcs_that_are_not_in_the_export_are_left_alone():
    current = [LcsContact("sip:zed@contoso.com", "Zed")]
    plan = plan_import([E("bob@im.contoso.com", "Bob")], current, [], M)
    assert [c.uri for c in plan.contacts_to_add] == ["sip:bob@contoso.com"]
    assert "zed" not in json.dumps(plan.as_dict())


def test_duplicates_in_the_export_are_merged_case_insensitively():
    plan = plan_import([E("bob@im.contoso.com", "", ("A",)), E("BOB@im.contoso.com", "Bob", ("B", "a"))], [], [], M)
    assert len(plan.contacts_to_add) == 1
    c = plan.contacts_to_add[0]
    assert c.name == "Bob" and c.groups == ("A", "B")


def test_existing_groups_are_reused_by_name_case_insensitively():
    plan = plan_import([E("bob@im.contoso.com", "Bob", ("team",))], [], [LcsGroup(1, "Team")], M)
    assert plan.groups_to_create == []
    assert group_ids_for(plan.contacts_to_add[0].groups, [LcsGroup(1, "Team")]) == (1,)


def test_unmappable_contacts_are_reported_not_dropped_silently():
    plan = plan_import([E("eve@example.org", "Eve"), E("garbage", "G")], [], [], M)
    assert [u.address for u in plan.unmappable] == ["eve@example.org", "garbage"]
    assert any("eve@example.org" in w for w in plan.warnings())
    assert plan.as_dict()["unmappable"][0]["address"] == "eve@example.org"


def test_contacts_beyond_the_server_limit_are_reported_in_export_order():
    exported = [E(f"u{i}@im.contoso.com", f"U{i}") for i in range(5)]
    plan = plan_import(exported, [LcsContact("sip:x@contoso.com")], [], M, max_contacts=3)
    assert [c.uri for c in plan.contacts_to_add] == ["sip:u0@contoso.com", "sip:u1@contoso.com"]
    assert [c.uri for c in plan.over_limit] == ["sip:u2@contoso.com", "sip:u3@contoso.com", "sip:u4@contoso.com"]
    assert sum("over the server's limit of 3" in w for w in plan.warnings()) == 3


def test_groups_only_for_over_limit_contacts_are_not_created():
    plan = plan_import([E("a@im.contoso.com", "A"), E("b@im.contoso.com", "B", ("Late",))], [], [], M,
                       max_contacts=1)
    assert plan.groups_to_create == []


def test_long_display_names_keep_256_characters_and_warn():
    plan = plan_import([E("bob@im.contoso.com", "x" * 300)], [], [], M)
    assert len(plan.contacts_to_add[0].name) == 256
    assert any("longer than 256" in w for w in plan.warnings())


def test_more_than_64_groups_are_reported_and_contacts_still_added():
    current = [LcsGroup(i, f"g{i}") for i in range(1, 64)]
    plan = plan_import([E("a@im.contoso.com", "A", ("new1",)), E("b@im.contoso.com", "B", ("new2",))],
                       [], current, M)
    assert plan.groups_to_create == ["new1"] and plan.groups_over_limit == ["new2"]
    assert plan.contacts_to_add[1].groups == () and len(plan.contacts_to_add) == 2


def test_empty_user_groups_count_against_the_64_after_the_contacts_groups():
    current = [LcsGroup(i, f"g{i}") for i in range(1, 63)]
    plan = plan_import([E("a@im.contoso.com", "A", ("Team",))], [], current, M,
                       user_groups=["team", "G5", "Empty", "Later", "LATER"])
    assert plan.groups_to_create == ["Team", "Empty"]
    assert plan.groups_over_limit == ["Later"]
    assert plan.contacts_to_add[0].groups == ("Team",)


def test_coexistence_group_receives_ungrouped_contacts_only():
    plan = plan_import([E("a@im.contoso.com", "A"), E("b@im.contoso.com", "B", ("Team",))], [], [], M,
                       coexistence_group="Exchange IM Contacts")
    assert plan.contacts_to_add[0].groups == ("Exchange IM Contacts",)
    assert plan.contacts_to_add[1].groups == ("Team",)
    assert plan.groups_to_create == ["Exchange IM Contacts", "Team"]


def test_hostile_display_names_are_kept_as_data():
    name = 'A & B | "C" %PATH% ^ <x>'
    plan = plan_import([E("a@im.contoso.com", name)], [], [], M)
    assert plan.contacts_to_add[0].name == name


def test_parse_export_reads_the_normalised_artifact():
    doc = {"user": "alice", "contacts": [{"address": "b@im.contoso.com", "display_name": "B", "groups": ["G"]},
                                         {"address": "c@im.contoso.com", "name": "C"}]}
    assert parse_export(json.dumps(doc).encode()) == [E("b@im.contoso.com", "B", ("G",)), E("c@im.contoso.com", "C")]


def test_verify_names_missing_contacts():
    v = verify([E("a@im.contoso.com"), E("b@im.contoso.com")], [LcsContact("sip:A@contoso.com")], M)
    assert not v.passed and v.missing == ["sip:b@contoso.com"]


def test_verify_accepts_absent_contacts_when_the_user_is_at_the_limit():
    v = verify([E("a@im.contoso.com"), E("b@im.contoso.com")], [LcsContact("sip:a@contoso.com")], M, max_contacts=1)
    assert v.passed and v.over_limit == ["sip:b@contoso.com"]


def test_the_users_groups_without_contacts_to_add_are_created_too():
    # An empty group (or one holding only unmappable contacts) is still the user's.
    plan = plan_import([E("bob@im.contoso.com", "Bob", ("Team",)), E("x@hotmail.com", "X", ("Outside",))], [],
                       [LcsGroup(1, "friends")], M, user_groups=["Team", "Empty", "Outside", "Friends"])
    assert plan.groups_to_create == ["Team", "Empty", "Outside"]
    assert plan.changes


def test_parse_export_groups_reads_every_group_name():
    from runner.lcs.contacts import parse_export_groups
    assert parse_export_groups(json.dumps({"contacts": [], "groups": ["A", "Empty"]})) == ["A", "Empty"]
    assert parse_export_groups(json.dumps({"contacts": []})) == []
