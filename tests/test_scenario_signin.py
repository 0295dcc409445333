"""The playbooks point every client at LCS by policy: during a gradual migration a machine
keeps Exchange IM while any of its users is still on it, and at the end Exchange IM is
switched off everywhere (configure_messenger, docs/messenger-signin.md)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from runner.lab.store import Lab
from runner.steps import _signin as S

from scenario_support import Scenario, assert_idempotent, make_scenario

pytestmark = pytest.mark.slow

SEED = 7  # every kind of seeded policy values among 12 clients
POOL = "lcs01.contoso.com"


def _values(sc: Scenario, host: str, key: str) -> dict[str, tuple[str, Any]]:
    registry = Lab(sc.lab_dir).host(host).registry
    return {v.name: (v.type, v.data) for v in registry.values(key)} if registry.key_exists(key) else {}


def _signed_in_to_lcs(sc: Scenario, host: str) -> bool:
    v = _values(sc, host, S.POLICY_KEY)
    return v.get("ServerAddress") == ("REG_SZ", POOL) and v.get("Transport") == ("REG_DWORD", 4) \
        and v.get("ConfigurationMode") == ("REG_DWORD", 1)


def _exchange_off(sc: Scenario, host: str) -> bool:
    return "ExchangeConn" not in _values(sc, host, S.EXCHANGE_POLICIES) and \
        _values(sc, host, S.SERVICE_KEY) == {"Disabled": ("REG_DWORD", 1)}


def _exchange_kept(sc: Scenario, host: str) -> bool:
    return _values(sc, host, S.EXCHANGE_POLICIES).get("ExchangeConn") == ("REG_DWORD", 0) and \
        not _values(sc, host, S.SERVICE_KEY)


def _clients(sc: Scenario) -> list[str]:
    return sorted(sc.manifest["machines"])


def _unrelated_policies_kept(sc: Scenario) -> None:
    for host, m in sc.manifest["machines"].items():
        if m.get("signin_seed") in ("autorun_policy", "typed_transport"):
            assert _values(sc, host, S.POLICY_KEY).get("PreventAutoRun") == ("REG_DWORD", 1), host


def test_gradual_keeps_exchange_im_on_shared_machines_until_their_last_user_moves(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", SEED, contacts=3)
    users = sc.manifest["users"]
    first = sorted(a for a, u in users.items() if u["wave"] == "wave1")
    wave1_clients = {c for a in first for c in users[a]["clients"]}
    before = {h: (_values(sc, h, S.POLICY_KEY), _values(sc, h, S.EXCHANGE_POLICIES)) for h in _clients(sc)}
    run = sc.apply("--limit", "wave:wave1")
    assert run.code == 0, run.out[-3000:]
    shared = []
    for host in _clients(sc):
        if host not in wave1_clients:
            assert (_values(sc, host, S.POLICY_KEY), _values(sc, host, S.EXCHANGE_POLICIES)) == before[host], \
                f"{host} is no wave1 client: untouched"
            continue
        assert _signed_in_to_lcs(sc, host), host
        others = [a for a, u in users.items() if host in u["clients"] and a not in first]
        if others:
            shared.append(host)
            assert _exchange_kept(sc, host), f"{host}: {others} still on Exchange IM"
        else:
            assert _exchange_off(sc, host), host
    assert shared, "the lab should share a wave1 machine with a later wave's user"
    not_yet = [t for t in run.tasks if t["module"] == "configure_messenger" and t["status"] == "not_yet"]
    assert {t["target"] for t in not_yet} == set(shared)
    assert all("still on Exchange IM" in t["message"] for t in not_yet)

    rest = sc.apply()
    assert rest.code == 0, rest.out[-3000:]
    for host in _clients(sc):
        assert _signed_in_to_lcs(sc, host) and _exchange_off(sc, host), host
    _unrelated_policies_kept(sc)
    assert_idempotent(sc)
    assert_idempotent(sc, "--fresh")


def test_immediate_points_every_client_at_lcs_and_switches_exchange_im_off(tmp_path) -> None:
    sc = make_scenario(tmp_path, "immediate.yml", SEED, contacts=3)
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    for host in _clients(sc):
        assert _signed_in_to_lcs(sc, host) and _exchange_off(sc, host), host
    _unrelated_policies_kept(sc)
    inventory = [t for t in run.tasks if t["module"] == "inventory_clients"]
    warned = {t["target"] for t in inventory if any("sign-in settings" in w for w in t.get("warnings") or [])}
    wrong = {h for h, m in sc.manifest["machines"].items()
             if m.get("signin_seed") in ("exchange_only", "pilot", "typed_transport")}
    assert warned == wrong
    report = json.loads(sc.runner("report", "--state", str(sc.state), "--format", "json").out)
    for u in report["users"]:
        for m in u["machines"]:
            assert m["signin"] == {"sip_server": POOL, "transport": "tls", "exchange_conn": None,
                                   "exchange_im": "off", "problems": []}, (u["user"], m)
    assert_idempotent(sc)


def test_lab_verify_signin_names_clients_not_pointed_at_lcs(tmp_path) -> None:
    from runner.lab.verify import verify

    sc = make_scenario(tmp_path, "immediate.yml", SEED, contacts=3)
    before = verify(sc.lab_dir, signin=True)
    pilot = next(h for h, m in sc.manifest["machines"].items() if m.get("signin_seed") == "pilot")
    assert any(p.startswith(f"{pilot}: ") and "lcspilot." in p for p in before.problems), before.problems
    assert sum("Messenger sign-in policy" in p for p in before.problems) == len(sc.manifest["machines"])
    assert sc.apply().code == 0
    after = verify(sc.lab_dir, signin=True)
    assert after.ok, after.problems
    # a client whose Exchange IM account is back on is named again
    Lab(sc.lab_dir).host(pilot).registry.delete_value(S.SERVICE_KEY, "Disabled")
    again = verify(sc.lab_dir, signin=True)
    assert again.problems == [f"{pilot}: Messenger sign-in policy: Exchange IM not switched off"]


@pytest.mark.parametrize("playbook", ["immediate.yml", "immediate-recreate.yml"])
def test_immediate_lifts_exchange_only_even_when_the_switch_off_does_not_happen(tmp_path, playbook) -> None:
    """A client seeded ExchangeConn 2 ("Exchange only") whose end-of-run switch-off is refused
    (here: not run, --skip-tags exchange) must still let its moved users sign in to LCS."""
    sc = make_scenario(tmp_path, playbook, SEED, contacts=3)
    only = sorted(h for h, m in sc.manifest["machines"].items() if m.get("signin_seed") == "exchange_only")
    assert only, "the lab seeded no Exchange-only client"
    run = sc.apply("--skip-tags", "exchange")
    assert run.code == 0, run.out[-3000:]
    for host in only:
        assert _signed_in_to_lcs(sc, host) and _exchange_kept(sc, host), (host, _values(sc, host, S.EXCHANGE_POLICIES))
