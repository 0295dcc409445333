"""The client steps (export_contacts, upgrade_messenger) against a generated lab, not a fake:
real cmd.exe quoting, reg.exe, hive mounts and msiexec exit codes, checked against manifest.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepctx import DirArtifacts, StepCtx

from runner.connections.lab import LabConnection, open_lab
from runner.errors import PermanentFault, TransientFault
from runner.lab.binaries import messenger51_msi
from runner.lab.generator import generate
from runner.loader import load_inventory
from runner.steps.export_contacts import ExportContacts
from runner.steps.inventory_clients import InventoryClients
from runner.steps.upgrade_messenger import UpgradeMessenger

HOSTILE = '"&|%^<>'


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    root = tmp_path_factory.mktemp("estate")
    inv_path = generate(root / "lab", clients=12, users_per_client=2, contacts=12, seed=4)
    return root, load_inventory(inv_path), json.loads((root / "lab" / "manifest.json").read_text())


def _ctx(inv, tmp_path: Path, hosts, artifacts: DirArtifacts | None = None, **kw) -> StepCtx:
    conns = {h: LabConnection(inv.hosts[h], inv, None) for h in hosts}
    return StepCtx(inv, conns, tmp_path, artifacts=artifacts, vars=dict(inv.vars), **kw)


def _export(inv, user, tmp_path, artifacts=None):
    ctx = _ctx(inv, tmp_path, user.clients, artifacts)
    step = ExportContacts()
    diff = step.probe(ctx, user)
    result = step.apply(ctx, user, diff) if diff is not None else None
    return ctx, step, result


def _mounts(lab_dir: Path, host: str) -> list[str]:
    return [m.name for m in open_lab(lab_dir).host(host).registry.mounts()]


def test_every_users_export_matches_the_manifest_byte_exact(estate, tmp_path):
    root, inv, manifest = estate
    names_seen: list[str] = []
    for alias, truth in manifest["users"].items():
        ctx, _, result = _export(inv, inv.users[alias], tmp_path)
        assert result is not None and result.status == "changed", (alias, result and result.message)
        for host, machine in truth["machines"].items():
            doc = json.loads(ctx.artifacts.read(f"contacts/{alias}/{host}.json"))
            got = {c["address"]: c["display_name"] for c in doc["contacts"]}
            want = {c["address"]: c["display_name"] for c in machine["contacts"]}
            assert got == want, (alias, host)
            names_seen += want.values()
    # the estate really held the hostile names the quoting must survive
    assert any(len(n) > 256 for n in names_seen)
    for ch in HOSTILE:
        assert any(ch in n for n in names_seen), f"no display name with {ch!r} in the lab"
    assert any(any(ord(c) > 127 for c in n) for n in names_seen)


def test_logged_on_users_are_read_in_place_and_others_loaded_then_unloaded(estate, tmp_path, monkeypatch):
    root, inv, manifest = estate
    lab_dir = root / "lab"
    # users of one machine, so every reg operation counted below ran on that machine
    cases = sorted((a, h, m["logged_on"]) for a, t in manifest["users"].items() for h, m in t["machines"].items()
                   if len(t["clients"]) == 1)
    on = next(c for c in cases if c[2])
    off = next(c for c in cases if not c[2])
    import runner.lab.commands.reg as labreg
    ran: list[str] = []  # the reg operations the lab's cmd.exe really ran (one branch of each hive group)
    for op in ("load", "unload", "export"):
        monkeypatch.setitem(labreg.OPS, op, (lambda f, name: lambda ctx, args: (ran.append(name), f(ctx, args))[1])(
            labreg.OPS[op], op))
    for alias, host, logged_on in (on, off):
        mounts_before = _mounts(lab_dir, host)
        sent: list[str] = []
        ran.clear()
        conn = LabConnection(inv.hosts[host], inv, None)
        original = conn.run
        conn.run = lambda cmd, **kw: (sent.append(cmd.lower()), original(cmd, **kw))[1]  # type: ignore
        user = inv.users[alias]
        others = {h: LabConnection(inv.hosts[h], inv, None) for h in user.clients if h != host}
        ctx = StepCtx(inv, {host: conn, **others}, tmp_path / alias, vars=dict(inv.vars))
        step = ExportContacts()
        assert step.apply(ctx, user, step.probe(ctx, user)).status == "changed"
        loads = [c for c in sent if "reg load" in c]
        sid = manifest["users"][alias]["sid"].lower()
        assert loads and all("reg unload" in c for c in loads), "every load is chained with its unload"
        assert any(f"hku\\{sid}" in c for c in sent), sent
        if logged_on:
            assert "load" not in ran and "export" in ran, ran
        else:
            assert ran.count("load") == ran.count("unload") >= 1, ran
        assert _mounts(lab_dir, host) == mounts_before


def test_hive_is_unloaded_even_when_the_export_fails(estate, tmp_path, monkeypatch):
    root, inv, manifest = estate
    lab_dir = root / "lab"
    alias, host = next((a, h) for a, t in manifest["users"].items() for h, m in t["machines"].items()
                       if not m["logged_on"] and m["contacts"])
    before = _mounts(lab_dir, host)
    import runner.lab.commands.reg as labreg
    from runner.connections.base import CommandResult

    def broken_export(ctx, args):  # a disk-full export: reg.exe's generic failure
        return CommandResult(1, "", "ERROR: The system cannot write to the specified device.\r\n")
    monkeypatch.setitem(labreg.OPS, "export", broken_export)
    with pytest.raises(PermanentFault):
        _export(inv, inv.users[alias], tmp_path)
    assert _mounts(lab_dir, host) == before
    assert not any(m.lower().startswith("runner_") for m in _mounts(lab_dir, host))


def test_locked_hive_is_a_transient_fault(tmp_path):
    inv_path = generate(tmp_path / "lab", clients=3, users_per_client=2, contacts=3, seed=6)
    manifest = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    alias, host = next((a, h) for a, t in manifest["users"].items() for h, m in t["machines"].items()
                       if not m["logged_on"])
    cfg = json.loads((tmp_path / "lab" / "lab.json").read_text())
    cfg["faults"]["hosts"] = {host: {"hive_locked": 1.0}}
    (tmp_path / "lab" / "lab.json").write_text(json.dumps(cfg))
    inv = load_inventory(inv_path)
    with pytest.raises(TransientFault, match="in use"):
        _export(inv, inv.users[alias], tmp_path)
    assert not any(m.lower().startswith("runner_") for m in _mounts(tmp_path / "lab", host))


def test_unchanged_registry_adds_no_artifact_and_a_new_contact_adds_a_version(tmp_path):
    inv_path = generate(tmp_path / "lab", clients=3, users_per_client=2, contacts=4, seed=8)
    manifest = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    inv = load_inventory(inv_path)
    alias, host, truth = next((a, h, t) for a, t in manifest["users"].items() for h, m in t["machines"].items()
                              if m["logged_on"] and len(t["clients"]) == 1)
    user = inv.users[alias]
    artifacts = DirArtifacts(tmp_path / "artifacts")
    _, _, first = _export(inv, user, tmp_path, artifacts)
    assert first.status == "changed"
    name = f"contacts/{alias}/{host}.json"
    assert len(artifacts.versions(name)) == 1
    ctx, step, again = _export(inv, user, tmp_path, artifacts)
    assert again is None or again.status == "ok"          # probe saw nothing new
    assert len(artifacts.versions(name)) == 1
    # the user adds a contact on their client
    key = (f"HKU\\{truth['sid']}\\Software\\Microsoft\\Exchange\\Messenger\\Profiles\\"
           f"{truth['profile_url']}\\Contacts")
    open_lab(tmp_path / "lab").host(host).registry.set_value(key, "zoe@im.contoso.com", "REG_SZ", 'Zoë "Z" & <Co>')
    _, _, third = _export(inv, user, tmp_path, artifacts)
    assert third.status == "changed"
    versions = artifacts.versions(name)
    assert len(versions) == 2 and Path(versions[0].path).exists()   # the old one is kept beside the new
    newest = json.loads(Path(versions[1].path).read_bytes())
    assert {"address": "zoe@im.contoso.com", "display_name": 'Zoë "Z" & <Co>'}.items() <= \
        next(c for c in newest["contacts"] if c["address"] == "zoe@im.contoso.com").items()


def _upgrade_target(inv, tmp_path):
    step = UpgradeMessenger()
    for name in sorted(h for h in inv.hosts if h.startswith("pc")):
        ctx = _ctx(inv, tmp_path, [name])
        diff = step.probe(ctx, inv.hosts[name])
        if diff is not None:
            return name, ctx, step, diff
    raise AssertionError("no client older than Windows Messenger 5.1 in the lab")


def test_msiexec_1603_fails_with_the_installer_log_stored(tmp_path):
    inv = load_inventory(generate(tmp_path / "lab", clients=6, users_per_client=1, contacts=2, seed=3))
    name, ctx, step, diff = _upgrade_target(inv, tmp_path)
    open_lab(tmp_path / "lab").host(name).fs.write(r"C:\Temp\broken.msi", messenger51_msi(broken=True))
    diff.data["package"] = r"C:\Temp\broken.msi"
    result = step.apply(ctx, inv.hosts[name], diff)
    assert result.status == "failed" and result.data["rc"] == 1603
    log = Path(result.data["log_artifact"]["path"]).read_bytes()
    assert b"1603" in log.replace(b"\x00", b"")
    assert step.probe(ctx, inv.hosts[name]) is not None    # nothing was installed


def test_msiexec_1618_is_transient_and_3010_records_a_reboot(tmp_path):
    lab_dir = tmp_path / "lab"
    inv = load_inventory(generate(lab_dir, clients=6, users_per_client=1, contacts=2, seed=3))
    name, ctx, step, diff = _upgrade_target(inv, tmp_path)
    cfg = json.loads((lab_dir / "lab.json").read_text())
    cfg["faults"]["hosts"] = {name: {"msiexec_1618": 1.0}}
    (lab_dir / "lab.json").write_text(json.dumps(cfg))
    from runner.connections import lab as labconn
    labconn._labs.pop(lab_dir.resolve(), None)   # re-read lab.json
    ctx = _ctx(inv, tmp_path, [name])
    with pytest.raises(TransientFault, match="1618"):
        step.apply(ctx, inv.hosts[name], diff)
    cfg["faults"]["hosts"] = {}
    cfg["hosts"][name]["msiexec_reboot"] = True
    (lab_dir / "lab.json").write_text(json.dumps(cfg))
    labconn._labs.pop(lab_dir.resolve(), None)
    ctx = _ctx(inv, tmp_path, [name])
    result = step.apply(ctx, inv.hosts[name], diff)
    assert result.status == "changed" and result.data["rc"] == 3010
    assert result.data["reboot_required"] is True and any("reboot" in w for w in result.warnings)
    assert step.probe(ctx, inv.hosts[name]) is None


def test_inventory_clients_reads_every_generated_client(estate, tmp_path):
    root, inv, manifest = estate
    step = InventoryClients()
    for name in sorted(h for h in inv.hosts if h.startswith("pc")):
        ctx = _ctx(inv, tmp_path, [name])
        diff = step.probe(ctx, inv.hosts[name])
        result = step.apply(ctx, inv.hosts[name], diff) if diff is not None else None
        assert result is not None and result.status in ("ok", "changed"), name
        facts = result.data["facts"]
        assert facts, name
