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
