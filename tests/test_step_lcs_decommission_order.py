"""decommission_exchange_im's one apply line keeps the order of its changes: sc stop,
then sc config, then the LDIF delete, each only after the one before succeeded; the
LDIF file is removed and the virtual servers are read back whatever happened. A
service stopped by someone else between probe and apply is transient: the retry
re-probes and finishes without stopping it again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepctx import StepCtx

from runner.connections.lab import LabConnection
from runner.errors import TransientFault
from runner.lab.generator import generate
from runner.lab.store import Lab
from runner.lcs.exchange import DEFAULT_VS_FILTER, Directory
from runner.loader import load_inventory
from runner.steps.decommission_exchange_im import DecommissionExchangeIm

SERVICE = "MSExchangeIM"


@pytest.fixture()
def exim(tmp_path: Path):
    inv_path = generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=2, seed=5)
    inv = load_inventory(inv_path)
    host = json.loads((tmp_path / "lab" / "manifest.json").read_text())["exchange_server"]
    conn = LabConnection(inv.hosts[host], inv, None)
    # users are still homed there in a fresh lab: force, which the probe reports loudly
    ctx = StepCtx(inv, {host: conn}, tmp_path, args={"force": True}, vars=dict(inv.vars))
    return Lab(tmp_path / "lab").host(host), Directory(conn, host, inv.vars), ctx, inv.hosts[host]


def _ldf_files(lab_host) -> list[str]:
    """LDIF files left in the scratch directory the steps use (the host's %SystemRoot%\\Temp)."""
    temp = lab_host.windows.system_root + "\\Temp"
    assert lab_host.fs.exists(temp)
    return [n for n in lab_host.fs.listdir(temp) if n.lower().endswith(".ldf")]


def test_a_service_stopped_since_the_probe_is_transient_and_nothing_after_the_stop_ran(exim) -> None:
    lab_host, directory, ctx, host = exim
    step = DecommissionExchangeIm()
    diff = step.probe(ctx, host)
    assert diff is not None and diff.data["actions"] == ["stop", "disable", "remove"]
    assert any(line.startswith("! FORCED: decommissioning although") for line in diff.lines)
    lab_host.services.set_state(SERVICE, "STOPPED")  # someone stops it between probe and apply
    with pytest.raises(TransientFault, match="stopped since the probe"):
        step.apply(ctx, host, diff)
    assert lab_host.services.get(SERVICE).start_type != "DISABLED", "sc config ran after a failed stop"
    assert directory.search(DEFAULT_VS_FILTER, ["cn"]), "the virtual server was deleted after a failed stop"
    assert _ldf_files(lab_host) == [], "the LDIF file is deleted even when the import did not run"

    again = step.probe(ctx, host)  # what the engine's retry does
    assert again is not None and again.data["actions"] == ["disable", "remove"]
    result = step.apply(ctx, host, again)
    assert result.status == "changed" and result.data["removed"] == again.data["virtual_servers"]
    assert lab_host.services.get(SERVICE).start_type == "DISABLED"
    assert directory.search(DEFAULT_VS_FILTER, ["cn"]) == []
    assert step.probe(ctx, host) is None


def test_a_service_name_the_server_does_not_have_is_refused_before_anything_is_removed(exim) -> None:
    """exchange_im_service set to a name the server has no service of (a typo): the virtual
    server must not be removed while the real service runs on, and the run must not end 0."""
    from runner.errors import PermanentFault
    lab_host, directory, ctx, host = exim
    ctx.args = {"force": True, "service": "MSExchangeIMM"}
    with pytest.raises(PermanentFault, match=r"no service MSExchangeIMM on .*exchange_im_service"):
        DecommissionExchangeIm().probe(ctx, host)
    assert directory.search(DEFAULT_VS_FILTER, ["cn"]), "the virtual server is still there"
    assert lab_host.services.get(SERVICE).state == "RUNNING"
