"""The pieces of a rollback on their own: which backup is kept, the restoring LDIF, the lab's
objectGUID search, which imported contacts may go, and which tasks a rollback reopens."""
from __future__ import annotations

import uuid

from runner.events import TaskOutcome
from runner.lab.commands.ldifde import parse_filter
from runner.lcs.contacts import LcsContact, LcsGroup
from runner.lcs.exchange import guid_query, im_backup, keeps_backup, restore_im_change
from runner.lcs.server import UserState
from runner.state import StateStore
from runner.steps.disable_lcs_users import removable
from runner.windows import ldif

DN = "CN=Al Smith,CN=Users,DC=contoso,DC=com"
VS = "CN=Default Instant Messaging Virtual Server,CN=RVP,CN=Protocols,CN=EXIM01,CN=Servers,DC=contoso,DC=com"


def _entry(**attrs: list[str]) -> ldif.Entry:
    return ldif.Entry(DN, {k: list(v) for k, v in attrs.items()})


def test_a_backup_is_kept_against_one_holding_fewer_im_values_and_replaced_otherwise():
    full = im_backup(_entry(msExchIMAddress=["al@im.contoso.com"], msExchIMVirtualServer=[VS],
                            **{"msRTCSIP-UserEnabled": ["TRUE"]}), alias="al", server="exim01")
    partial = im_backup(_entry(msExchIMVirtualServer=[VS]), alias="al", server="exim01")
    assert full["msExchIM"] == {"msExchIMAddress": ["al@im.contoso.com"], "msExchIMVirtualServer": [VS]}
    assert full["msRTCSIP"] == {"msRTCSIP-UserEnabled": ["TRUE"]}
    assert keeps_backup(full, partial)            # a partly cleared entry never replaces a good backup
    assert not keeps_backup(None, partial) and not keeps_backup(partial, full)
    moved = im_backup(_entry(msExchIMAddress=["al@im2.contoso.com"], msExchIMVirtualServer=[VS]),
                      alias="al", server="exim01")
    assert not keeps_backup(full, moved)          # the same attributes with new values: the new ones


def test_the_restore_replaces_what_differs_deletes_what_was_not_there_and_keeps_binary_bytes():
    acl = b"\x01\x00\xff\xfe".decode("utf-8", "surrogateescape")  # as ldif.parse reads a binary value
    backup = im_backup(_entry(msExchIMAddress=["al@im.contoso.com"], msExchIMACL=[acl]), alias="al", server="x")
    now = _entry(msExchIMAddress=["al@im.contoso.com"], msExchIMPhysicalURL=["http://elsewhere/"])
    change = restore_im_change(now, backup)
    assert [(op, a) for op, a, _ in change.mods] == [("delete", "msExchIMPhysicalURL"), ("replace", "msExchIMACL")]
    text = ldif.render([change])
    [back] = ldif.parse(text.replace(b"changetype: modify", b"changetype: add"))
    assert back.get("msExchIMACL")[0].encode("utf-8", "surrogateescape") == b"\x01\x00\xff\xfe"
    restored = _entry(msExchIMAddress=["al@im.contoso.com"], msExchIMACL=[acl])
    assert restore_im_change(restored, backup).mods == []


def test_the_lab_matches_objectguid_byte_for_byte():
    guid = "{0A1B2C3D-4E5F-6A7B-8C9D-AEBFC0D1E2F3}"
    raw = uuid.UUID(guid.strip("{}")).bytes_le
    match, eqs = parse_filter(guid_query([guid], ("cn",)).ldap_filter)
    assert eqs == [("objectGUID", raw)]
    assert match({"objectGUID": [raw]})
    assert not match({"objectGUID": [raw.lower()]}) and not match({"objectGUID": [raw.upper()]})
    match2, _ = parse_filter(guid_query([guid, "{00000000-0000-0000-0000-000000000001}"], ("cn",)).ldap_filter)
    assert match2({"objectGUID": [raw]}) and not match2({"objectGUID": [bytes(16)]})


def test_only_contacts_still_as_imported_are_removable():
    groups = [LcsGroup(1, "Exchange IM Contacts"), LcsGroup(2, "Work")]
    state = UserState(user={"Enabled": "TRUE"}, groups=groups, contacts=[
        LcsContact("sip:a@contoso.com", "A", (1,)),         # as imported
        LcsContact("sip:b@contoso.com", "B renamed", (2,)),  # renamed on LCS
        LcsContact("sip:c@contoso.com", "C", ()),            # taken out of its group
        LcsContact("sip:mine@contoso.com", "Mine", ()),      # added by the user: in no record
        LcsContact("SIP:D@contoso.com", "D", (1, 2))])      # case of the URI does not matter
    record = [{"uri": "sip:a@contoso.com", "name": "A", "groups": ["Exchange IM Contacts"]},
              {"uri": "sip:b@contoso.com", "name": "B", "groups": ["Work"]},
              {"uri": "sip:c@contoso.com", "name": "C", "groups": ["Work"]},
              {"uri": "sip:d@contoso.com", "name": "D", "groups": ["Work", "Exchange IM Contacts"]},
              {"uri": "sip:gone@contoso.com", "name": "G", "groups": []}]
    assert removable(state, record) == ["sip:a@contoso.com", "SIP:D@contoso.com"]


def _outcome(key: str, module: str, status: str, ended: float, target: str = "alice", **data) -> TaskOutcome:
    return TaskOutcome(key=key, play_index=0, step=module, module=module, kind="user", target=target,
                       status=status, ended=ended, fingerprint="fp", data=data)


def test_a_rollback_reopens_the_users_earlier_tasks_and_a_later_move_reopens_the_rollback(tmp_path):
    with StateStore(tmp_path) as store:
        move = store.start_run("gradual.yml", "inv.yml", command="c")
        store.record_task(move.id, _outcome("m/enable/alice", "enable_lcs_users", "changed", 1.0))
        store.record_task(move.id, _outcome("m/enable/bob", "enable_lcs_users", "changed", 1.0, target="bob"))
        back = store.start_run("rollback.yml", "inv.yml", command="c")
        store.record_task(back.id, _outcome("r/restore/alice", "restore_exchange_im", "changed", 2.0, rollback=True))
        store.record_task(back.id, _outcome("r/restore/bob", "restore_exchange_im", "failed", 2.0, rollback=True,
                                            target="bob"))
        store.flush()
        assert store.completed(move.id) == {"m/enable/bob": "fp"}  # bob's rollback failed: he stays moved
        assert store.completed(back.id) == {"r/restore/alice": "fp"}
        store.record_task(move.id, _outcome("m/enable/alice", "enable_lcs_users", "changed", 3.0))
        store.flush()
        assert set(store.completed(move.id)) == {"m/enable/alice", "m/enable/bob"}
        assert store.completed(back.id) == {}  # alice moved again: the next rollback runs again


def test_a_client_the_rollback_changed_is_done_again_by_the_next_move_and_the_other_way_round(tmp_path):
    def host(key: str, module: str, status: str, ended: float, target: str) -> TaskOutcome:
        return TaskOutcome(key=key, play_index=0, step=module, module=module, kind="host", target=target,
                           status=status, ended=ended, fingerprint="fp")
    with StateStore(tmp_path) as store:
        move = store.start_run("gradual.yml", "inv.yml", command="c")
        store.record_task(move.id, host("m/off/pc1", "configure_messenger", "changed", 1.0, "pc1"))
        store.record_task(move.id, host("m/off/pc2", "configure_messenger", "changed", 1.0, "pc2"))
        back = store.start_run("rollback.yml", "inv.yml", command="c")
        store.record_task(back.id, _outcome("r/restore/alice", "restore_exchange_im", "changed", 2.0, rollback=True))
        store.record_task(back.id, host("r/keep/pc1", "configure_messenger", "changed", 2.5, "pc1"))
        store.record_task(back.id, host("r/keep/pc2", "configure_messenger", "ok", 2.5, "pc2"))  # nothing to do
        store.flush()
        assert store.completed(move.id) == {"m/off/pc2": "fp"}
        store.record_task(move.id, host("m/off/pc1", "configure_messenger", "changed", 3.0, "pc1"))
        store.flush()
        assert set(store.completed(move.id)) == {"m/off/pc1", "m/off/pc2"}
        assert set(store.completed(back.id)) == {"r/restore/alice", "r/keep/pc2"}


def test_a_verify_permissions_pass_from_before_the_rollback_no_longer_lets_disable_clear_the_list():
    """After a rollback the user's list is verified again before disable_exchange_im may clear it."""
    from types import SimpleNamespace

    from runner.model import User
    from runner.steps._permissions import permissions_pending

    acl = ["(A;;PRST;;;WD)"]
    history: dict[str, list] = {}

    def previous(module: str, target: str) -> list:
        return history.get(module, [])

    ctx = SimpleNamespace(previous=previous)
    user = User("alice", "alice@im.contoso.com")
    passed = SimpleNamespace(status="ok", ended=100.0, data={"verified": True, "acl": acl})
    history["verify_permissions"] = [passed]
    assert permissions_pending(ctx, user, acl) is None
    history["restore_exchange_im"] = [SimpleNamespace(status="changed", ended=200.0, data={"rollback": True})]
    assert "has not passed" in (permissions_pending(ctx, user, acl) or "")
    history["verify_permissions"] = [SimpleNamespace(status="ok", ended=300.0, data={"verified": True, "acl": acl}),
                                     passed]
    assert permissions_pending(ctx, user, acl) is None
