"""A small gradual night that goes wrong, for the report tests (tests/test_report_*.py).

A 12-client lab (seed 4) where one client is down (its users unreachable, the
users sharing their machines not moved on) and another's msiexec always says
1618 (its upgrade fails after the retries; its users are not moved on, and the
wave's failures stop the later waves: their users stay pending). One user's
display name is hostile (markup, quotes, ampersand, Unicode) to check escaping.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scenario_support import Scenario, make_scenario

HOSTILE_NAME = '<b>Zoë "Z" O\'Neil & Co</b><script>window.pwned=1</script>'


def _pick(manifest: dict[str, Any]) -> tuple[str, str, str]:
    """(down host, msiexec-failing host, the user renamed): the first client of the first two
    wave2 users with clients of their own, and a wave1 user."""
    wave2 = [a for a, u in manifest["users"].items() if u.get("wave") == "wave2" and u["clients"]]
    down = manifest["users"][wave2[0]]["clients"][0]
    failing = next(c for a in wave2[1:] for c in manifest["users"][a]["clients"] if c != down)
    renamed = next(a for a, u in manifest["users"].items() if u.get("wave") == "wave1")
    return down, failing, renamed


def failed_night(root: Path) -> tuple[Scenario, dict[str, str]]:
    """The lab above after one apply of playbooks/gradual.yml (which must end with failures)."""
    sc = make_scenario(root, "gradual.yml", seed=4, clients=12, contacts=15)
    down, failing, renamed = _pick(sc.manifest)
    old = json.dumps(sc.manifest["users"][renamed]["display_name"], ensure_ascii=False)
    text = sc.inventory.read_text(encoding="utf-8")
    assert f'"display_name": {old}' in text
    sc.inventory.write_text(text.replace(f'"display_name": {old}', f'"display_name": {json.dumps(HOSTILE_NAME)}', 1),
                            encoding="utf-8")
    for rate, host in (("down=1", down), ("msiexec_1618=1", failing)):
        res = sc.runner("lab", "faults", "--dir", str(sc.lab_dir), rate, "--host", host)
        assert res.code == 0, res.out
    scale = os.environ.get("RUNNER_RETRY_DELAY_SCALE")
    os.environ["RUNNER_RETRY_DELAY_SCALE"] = "0.0005"  # the playbook's delay: 30 must not be waited for
    try:
        run = sc.apply()
    finally:
        if scale is None:
            os.environ.pop("RUNNER_RETRY_DELAY_SCALE", None)
        else:
            os.environ["RUNNER_RETRY_DELAY_SCALE"] = scale
    assert run.code in (2, 3), run.out[-2000:]
    return sc, {"down": down, "failing": failing, "renamed": renamed}
