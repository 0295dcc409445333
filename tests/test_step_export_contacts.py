"""Specification of the client steps against an in-test Windows client (tests/fakewin.py):
export_contacts (logged-on and not-logged-on users, hostile display names, hive always
unloaded, artifacts versioned by content), inventory_clients and upgrade_messenger."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.errors import TransientFault
from runner.model import Host, Inventory, User
from runner.steps.export_contacts import ExportContacts
from runner.steps.inventory_clients import InventoryClients
from runner.steps.upgrade_messenger import UpgradeMessenger
from fakewin import FakeClient
from stepctx import StepCtx

SID = "S-1-5-21-1004336348-1177238915-682003330-1104"
PROFILES = r"Software\Microsoft\Exchange\Messenger\Profiles"
URL = "http://im.contoso.com/instmsg/aliases/alice"
HOSTILE = 'Bob "The Builder" & Co | 100% ^ <x> !'


def make_client(host: str, *, logged_on: bool, contacts: dict[str, str], groups: dict[str, list[str]] | None = None,
                messenger: str | None = "4.7.3001") -> FakeClient:
    c = FakeClient(host)
    c.set_value(c.hklm, rf"SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList\{SID}", "ProfileImagePath",
                r"%SystemDrive%\Documents and Settings\alice", "REG_EXPAND_SZ")
    if messenger:
        c.set_value(c.hklm, r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\{WM}", "DisplayName", "Windows Messenger")
        c.set_value(c.hklm, r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\{WM}", "DisplayVersion", messenger)
    hive: dict = {}
    for address, name in contacts.items():
        c.set_value(hive, rf"{PROFILES}\{URL}\Contacts", address, name)
    for group, members in (groups or {}).items():
        for m in members:
            c.set_value(hive, rf"{PROFILES}\{URL}\Groups\{group}", m, "")
    c.hive_files[r"c:\documents and settings\alice\ntuser.dat"] = hive
    if logged_on:
        c.mounted[SID.lower()] = (SID, hive)
    return c


def inventory(*hosts: str) -> Inventory:
    alice = User("alice", "alice@im.contoso.com", clients=hosts, sid=SID)
    return Inventory("inv.yml", {h: Host(h) for h in hosts}, {}, {"alice": alice})


@pytest.fixture
def estate() -> dict[str, FakeClient]:
    return {
        "pc01": make_client("pc01", logged_on=True, contacts={"bob@im.contoso.com": HOSTILE, "carol@im.contoso.com": ""},
                            groups={"Work & Play": ["bob@im.contoso.com"]}),
        "pc02": make_client("pc02", logged_on=False, contacts={"BOB@im.contoso.com": "Robert",
                                                               "dave@im.fabrikam.com": "Dave 50%"}),
    }


def run(step, ctx, target):
    diff = step.probe(ctx, target)
    return diff, (step.apply(ctx, target, diff) if diff is not None else None)


def test_export_merges_machines_and_keeps_hostile_names_intact(tmp_path: Path, estate) -> None:
    inv = inventory("pc01", "pc02")
    ctx = StepCtx(inv, estate, tmp_path)
    diff, result = run(ExportContacts(), ctx, inv.users["alice"])
    assert diff is not None and result is not None and result.status == "changed"
    assert result.data["counts"] == {"pc01": 2, "pc02": 2}
    merged = json.loads(ctx.artifacts.read("contacts/alice/merged.json"))
    by_addr = {c["address"].lower(): c for c in merged["contacts"]}
    assert set(by_addr) == {"bob@im.contoso.com", "carol@im.contoso.com", "dave@im.fabrikam.com"}
    assert by_addr["bob@im.contoso.com"]["display_name"] == HOSTILE
    assert by_addr["bob@im.contoso.com"]["groups"] == ["Work & Play"]
    assert by_addr["bob@im.contoso.com"]["sources"] == ["pc01", "pc02"]
    assert by_addr["dave@im.fabrikam.com"]["display_name"] == "Dave 50%"
    assert merged["conflicts"][0]["ignored"] == "Robert" and result.warnings
    raw = ctx.artifacts.read("contacts/alice/pc01.reg")
    assert raw is not None and raw.startswith(b"\xff\xfe")


def test_logged_on_user_is_exported_from_hku_sid_without_loading(tmp_path: Path, estate) -> None:
    inv = inventory("pc01")
    run(ExportContacts(), StepCtx(inv, estate, tmp_path), inv.users["alice"])
    # the line holds both branches; cmd.exe runs the in-place one for a mounted hive
    assert not any(c.startswith("reg load") for c in estate["pc01"].executed)
    assert any(c.startswith(f"reg export HKU\\{SID}\\") for c in estate["pc01"].executed)


def test_not_logged_on_user_hive_is_loaded_and_unloaded_in_the_same_line(tmp_path: Path, estate) -> None:
    inv = inventory("pc02")
    run(ExportContacts(), StepCtx(inv, estate, tmp_path), inv.users["alice"])
    loads = [c for c in estate["pc02"].commands if "reg load" in c]
    assert loads and all("reg unload HKU\\runner_alice" in c for c in loads)
    assert estate["pc02"].mounted == {}
    assert not any(k.endswith(".reg") for k in estate["pc02"].files), "temp export deleted on the client"


def test_hive_is_unloaded_even_when_the_export_fails(tmp_path: Path, estate) -> None:
    estate["pc02"].fail_export = True
    inv = inventory("pc02")
    ctx = StepCtx(inv, estate, tmp_path)
    diff = ExportContacts().probe(ctx, inv.users["alice"])
    assert diff is not None
    with pytest.raises(Exception):
        ExportContacts().apply(ctx, inv.users["alice"], diff)
    assert estate["pc02"].mounted == {}


def test_locked_hive_is_a_transient_fault(tmp_path: Path, estate) -> None:
    estate["pc02"].locked_files.add(r"c:\documents and settings\alice\ntuser.dat")
    inv = inventory("pc02")
    with pytest.raises(TransientFault):  # check mode reads the machine in the probe
        ExportContacts().probe(StepCtx(inv, estate, tmp_path, check=True), inv.users["alice"])
    ctx = StepCtx(inv, estate, tmp_path)
    diff = ExportContacts().probe(ctx, inv.users["alice"])  # never exported: apply reads it
    with pytest.raises(TransientFault):
        ExportContacts().apply(ctx, inv.users["alice"], diff)
    assert estate["pc02"].mounted == {}


def test_unchanged_registry_probes_clean_and_writes_no_new_artifact(tmp_path: Path, estate) -> None:
    inv = inventory("pc01", "pc02")
    ctx = StepCtx(inv, estate, tmp_path)
    run(ExportContacts(), ctx, inv.users["alice"])
    before = len(estate["pc01"].commands)
    assert ExportContacts().probe(ctx, inv.users["alice"]) is None
    assert not any("reg export" in c for c in estate["pc01"].commands[before:])
    assert len(ctx.artifacts.versions("contacts/alice/merged.json")) == 1


def test_changed_registry_keeps_a_new_artifact_version_beside_the_old(tmp_path: Path, estate) -> None:
    inv = inventory("pc01", "pc02")
    ctx = StepCtx(inv, estate, tmp_path)
    run(ExportContacts(), ctx, inv.users["alice"])
    hive = estate["pc01"].hive_files[r"c:\documents and settings\alice\ntuser.dat"]
    FakeClient.set_value(hive, rf"{PROFILES}\{URL}\Contacts", "erin@im.contoso.com", "Erin")
    diff, result = run(ExportContacts(), ctx, inv.users["alice"])
    assert diff is not None and diff.data["hosts"] == ["pc01"]
    assert result is not None and result.status == "changed" and result.data["merged_count"] == 4
    versions = ctx.artifacts.versions("contacts/alice/merged.json")
    assert len(versions) == 2 and all(Path(v.path).exists() for v in versions)


def test_inventory_reports_versions_profiles_and_contact_counts(tmp_path: Path, estate) -> None:
    inv = inventory("pc01", "pc02")
    for host in ("pc01", "pc02"):
        ctx = StepCtx(inv, estate, tmp_path)
        _, result = run(InventoryClients(), ctx, inv.hosts[host])
        facts = result.data["facts"]
        assert result.status == "ok"
        assert facts["os"] == "Microsoft Windows XP [Version 5.1.2600]"
        assert facts["messenger"]["version"] == "4.7.3001"
        user = facts["users"]["alice"]
        assert user["profile"] == r"C:\Documents and Settings\alice"
        assert user["loaded"] is (host == "pc01")
        assert user["contacts"] == {"present": True, "count": 2, "profiles": [URL]}
    assert estate["pc02"].mounted == {}


def test_inventory_fails_without_messenger_unless_not_required(tmp_path: Path) -> None:
    clients = {"pc03": make_client("pc03", logged_on=True, contacts={}, messenger=None)}
    inv = inventory("pc03")
    _, result = run(InventoryClients(), StepCtx(inv, clients, tmp_path), inv.hosts["pc03"])
    assert result.status == "failed" and "not installed" in result.message
    _, result = run(InventoryClients(), StepCtx(inv, clients, tmp_path, args={"require_messenger": False}),
                    inv.hosts["pc03"])
    assert result.status == "ok" and result.data["facts"]["users"]["alice"]["contacts"]["present"] is False


def test_inventory_warns_about_a_user_without_profile(tmp_path: Path) -> None:
    c = make_client("pc04", logged_on=False, contacts={})
    c.hklm.clear()
    c.set_value(c.hklm, r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\{WM}", "DisplayName", "Windows Messenger")
    inv = inventory("pc04")
    _, result = run(InventoryClients(), StepCtx(inv, {"pc04": c}, tmp_path), inv.hosts["pc04"])
    assert result.status == "ok" and any("no profile" in w for w in result.warnings)


@pytest.mark.parametrize("rc, status, reboot", [(0, "changed", False), (3010, "changed", True)])
def test_upgrade_installs_when_older(tmp_path: Path, rc: int, status: str, reboot: bool) -> None:
    c = make_client("pc01", logged_on=True, contacts={})
    c.msiexec_rc = rc
    inv = inventory("pc01")
    ctx = StepCtx(inv, {"pc01": c}, tmp_path, vars={"messenger_package": r"\\deploy\packages\WindowsMessenger51.msi"})
    _, result = run(UpgradeMessenger(), ctx, inv.hosts["pc01"])
    assert result.status == status and result.data["reboot_required"] is reboot
    # the log's folder is made in the same line, before msiexec (which exits 1622 without it)
    assert any(cmd.startswith("mkdir ") and
               r" 2>nul & msiexec /i \\deploy\packages\WindowsMessenger51.msi /qn /norestart /l*v" in cmd
               for cmd in c.commands), c.commands
    assert UpgradeMessenger().probe(ctx, inv.hosts["pc01"]) is None, "5.1 installed: nothing to do"


def test_upgrade_does_nothing_at_5_1_or_later(tmp_path: Path) -> None:
    c = make_client("pc01", logged_on=True, contacts={}, messenger="5.1.0715")
    inv = inventory("pc01")
    assert UpgradeMessenger().probe(StepCtx(inv, {"pc01": c}, tmp_path), inv.hosts["pc01"]) is None
    assert not any("msiexec" in cmd for cmd in c.commands)


def test_upgrade_1618_is_transient_and_1603_fails_with_the_log_as_artifact(tmp_path: Path) -> None:
    c = make_client("pc01", logged_on=True, contacts={})
    inv = inventory("pc01")
    ctx = StepCtx(inv, {"pc01": c}, tmp_path)
    diff = UpgradeMessenger().probe(ctx, inv.hosts["pc01"])
    c.msiexec_rc = 1618
    with pytest.raises(TransientFault):
        UpgradeMessenger().apply(ctx, inv.hosts["pc01"], diff)
    c.msiexec_rc = 1603
    result = UpgradeMessenger().apply(ctx, inv.hosts["pc01"], diff)
    assert result.status == "failed" and "1603" in result.message
    assert ctx.artifacts.read("msiexec/pc01/runner-wm51.log") == c.msiexec_log
