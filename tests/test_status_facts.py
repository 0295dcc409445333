"""`runner status` summarises the client facts of a real inventory_clients run
for an administrator planning a night (checked against the lab manifest)."""
from __future__ import annotations

import json
from pathlib import Path

from runner.status import collect_status, render_status, summarise_facts
from tests.scenario_support import make_scenario

def test_status_summarises_versions_unfit_clients_and_largest_lists(tmp_path: Path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=6, users_per_client=2, contacts=5)
    inv = sc.inventory.read_text(encoding="utf-8").replace(
        "users:\n", 'users:\n  ghost: {"im_address": "ghost@im.contoso.com", "clients": ["pc0002"],'
        ' "sid": "S-1-5-21-1-2-3-9999"}\n', 1)
    sc.inventory.write_text(inv, encoding="utf-8")
    run = sc.apply("--tags", "inventory")
    assert run.code == 0, run.out[-2000:]

    facts = collect_status(sc.state)["facts"]
    manifest = sc.manifest
    assert facts["hosts"] == len(manifest["machines"])
    assert sum(facts["os"].values()) == facts["hosts"] and sum(facts["messenger"].values()) == facts["hosts"]
    assert facts["below_5_1"] == sum(1 for m in manifest["machines"].values() if m["messenger"] != "wm51")
    assert facts["unfit"] == [{"host": "pc0002", "problems": ["no profile: ghost"]}]
    sizes = {a: max(len(m["contacts"]) for m in u["machines"].values()) for a, u in manifest["users"].items()}
    sizes = {a: n for a, n in sizes.items() if n}
    lists = facts["contact_lists"]
    assert lists["users"] == len(sizes) and lists["limit"] == 150
    assert [e["count"] for e in lists["largest"]] == sorted(sizes.values(), reverse=True)[:5]
    assert all(sizes[e["user"]] == e["count"] and e["over_limit"] == (e["count"] > 150) for e in lists["largest"])
    assert lists["over_limit"] == sum(1 for n in sizes.values() if n > 150)

    text = sc.runner("status", "--state", str(sc.state)).out
    assert f"below 5.1: {facts['below_5_1']}" in text and "unfit: 1: pc0002 (no profile: ghost)" in text
    top = lists["largest"][0]
    assert f"largest: {top['user']} {top['count']}" in text
    as_json = json.loads(sc.runner("status", "--state", str(sc.state), "--json").out)
    assert as_json["facts"]["contact_lists"] == lists and as_json["facts"]["unfit"] == facts["unfit"]


def test_messenger_missing_is_unfit_and_not_counted_below_5_1() -> None:
    hosts = {"pc1": {"os": "XP", "messenger": {"installed": False}, "users": {}},
             "pc2": {"os": "XP", "messenger": {"installed": True, "product": "Windows Messenger",
                                               "version": "5.1.0701"}, "users": {}},
             "pc3": {"os": "2000", "messenger": {"installed": True, "product": "Windows Messenger",
                                                 "version": "4.7.2009"},
                     "users": {"al": {"contacts": {"count": 151}}, "bo": {"contacts": {"count": 0}}}}}
    f = summarise_facts(hosts)
    assert f["messenger_missing"] == 1 and f["below_5_1"] == 1
    assert f["unfit"] == [{"host": "pc1", "problems": ["Messenger missing"]}]
    assert f["os"] == {"XP": 2, "2000": 1}
    assert f["contact_lists"]["users"] == 1 and f["contact_lists"]["largest"][0]["over_limit"] is True


def test_empty_state_has_an_empty_facts_summary(tmp_path: Path) -> None:
    info = collect_status(tmp_path)
    assert info["facts"]["hosts"] == 0 and info["facts"]["unfit"] == []
    assert info["store"] is False and render_status(info).startswith("no state store in")
