"""upgrade_messenger against a generated lab: upgrades once, then leaves 5.1 alone."""
from __future__ import annotations

import json

from stepctx import StepCtx

from runner.connections.lab import LabConnection
from runner.lab.generator import generate
from runner.loader import load_inventory
from runner.steps.upgrade_messenger import UpgradeMessenger


def test_msn_messenger_client_is_upgraded_once_and_then_left_alone(tmp_path):
    inv_path = generate(tmp_path / "lab", clients=20, users_per_client=1, contacts=3, seed=3)
    inv = load_inventory(inv_path)
    manifest = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    machines = manifest.get("machines") or {}
    # pick a client that runs an MSN Messenger 4.x (its Uninstall entry stays after 5.1 is installed)
    step = UpgradeMessenger()
    upgraded = []
    for name in sorted(h for h in inv.hosts if h.startswith("pc")):
        conn = LabConnection(inv.hosts[name], inv, None)
        ctx = StepCtx(inv, {name: conn}, tmp_path)
        diff = step.probe(ctx, inv.hosts[name])
        if diff is None:
            continue
        result = step.apply(ctx, inv.hosts[name], diff)
        assert result.status == "changed", result.message
        assert step.probe(ctx, inv.hosts[name]) is None, f"{name}: still wants an upgrade after installing 5.1"
        upgraded.append(name)
    assert upgraded, f"the lab should hold clients older than 5.1 ({machines})"


def test_a_5_1_file_without_its_product_is_installed_again_and_a_product_without_its_file_repaired(tmp_path):
    from runner.lab.binaries import MESSENGER51_CODE, make_exe
    from runner.lab.store import UNINSTALL_KEY

    inv_path = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=3)
    inv = load_inventory(inv_path)
    host = inv.hosts["pc0001"]
    conn = LabConnection(host, inv, None)
    ctx = StepCtx(inv, {"pc0001": conn}, tmp_path)
    step = UpgradeMessenger()
    exe = r"C:\Program Files\Messenger\msmsgs.exe"
    lab_host = conn.lab_host
    # an install cut short: the 5.1 binary, no product, no Uninstall key
    lab_host.fs.write(exe, make_exe("5.1.0715", product_name="Windows Messenger"))
    diff = step.probe(ctx, host)
    assert diff is not None and "without its product" in diff.data["partial"], "a 5.1 file alone is not an install"
    assert step.apply(ctx, host, diff).status == "changed"
    assert lab_host.products.get(MESSENGER51_CODE) is not None
    assert lab_host.registry.key_exists(UNINSTALL_KEY + "\\" + MESSENGER51_CODE)
    assert step.probe(ctx, host) is None
    # the product registered, its file older: reinstalled (REINSTALL=ALL)
    lab_host.fs.write(exe, make_exe("4.7.3001"))
    diff = step.probe(ctx, host)
    assert diff is not None and diff.data.get("reinstall"), diff
    assert step.apply(ctx, host, diff).status == "changed"
    assert lab_host.fs.file_version(exe).startswith("5.1") and step.probe(ctx, host) is None


def test_the_probe_uses_this_runs_facts_until_an_upgrade_outcome_exists(tmp_path):
    """inventory_clients' facts of this run stand for the probe's read (no round trip),
    and lead to the same decision; once the host has an upgrade outcome, it reads live."""
    from collections import Counter

    from runner.steps.inventory_clients import gather
    inv = load_inventory(generate(tmp_path / "lab", clients=8, users_per_client=1, contacts=2, seed=3))
    step = UpgradeMessenger()
    compared = 0
    for name in sorted(inv.group_hosts("clients")):
        calls: Counter = Counter()
        conn = LabConnection(inv.hosts[name], inv, None)
        original = conn.run
        conn.run = lambda cmd, **kw: (calls.update(["run"]), original(cmd, **kw))[1]  # type: ignore
        ctx = StepCtx(inv, {name: conn}, tmp_path)
        live = step.probe(ctx, inv.hosts[name])
        ctx._facts[name] = gather(ctx, inv.hosts[name])[0]
        calls.clear()
        from_facts = step.probe(ctx, inv.hosts[name])
        assert calls["run"] == 0
        assert (live is None) == (from_facts is None) and (live is None or live.data == from_facts.data)
        compared += live is not None
        ctx.previous = lambda module, target: ["an earlier outcome"]  # type: ignore[method-assign]
        step.probe(ctx, inv.hosts[name])
        assert calls["run"] == 1, "a host with an upgrade outcome is read live"
        ctx.run_id = "another"
        ctx.previous = lambda module, target: []  # type: ignore[method-assign]
        step.probe(ctx, inv.hosts[name])
        assert calls["run"] == 2, "facts of another run are not trusted"
    assert compared, "the lab holds clients to upgrade"
