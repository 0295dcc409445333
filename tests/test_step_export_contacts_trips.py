"""export_contacts' round trips per (user, machine) against a generated lab (DESIGN.md,
"Speed"; docs/performance.md): with the facts inventory_clients gathered, a first export
is one line and one take (read + delete) per machine, a re-probe one line per machine
shared by all of that machine's users, unchanged machines are not exported again.
Counted with a Connection wrapper, so a regression fails here."""
from __future__ import annotations

import json
from types import SimpleNamespace
from collections import Counter
from pathlib import Path

import pytest

from stepctx import DirArtifacts, StepCtx

from runner.connections.base import CommandResult
from runner.connections.lab import LabConnection, open_lab
from runner.errors import TransientFault
from runner.lab.generator import generate
from runner.loader import load_inventory
from runner.steps.export_contacts import ExportContacts
from runner.steps.inventory_clients import gather


class Counting:
    """A Connection that counts the round trips (run, put, get) made through it."""

    def __init__(self, inner: LabConnection, counts: Counter, host: str) -> None:
        self.inner, self.counts, self.host = inner, counts, host

    def run(self, cmd: str, **kw) -> CommandResult:
        self.counts[self.host] += 1
        return self.inner.run(cmd, **kw)

    def put(self, data: bytes, path: str) -> None:
        self.counts[self.host] += 1
        self.inner.put(data, path)

    def get(self, path: str) -> bytes:
        self.counts[self.host] += 1
        return self.inner.get(path)

    def take(self, path: str) -> bytes:
        self.counts[self.host] += 1
        return self.inner.take(path)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    root = tmp_path_factory.mktemp("trips")
    inv_path = generate(root / "lab", clients=10, users_per_client=2, contacts=6, seed=11)
    return root, load_inventory(inv_path), json.loads((root / "lab" / "manifest.json").read_text())


def _facts(inv, hosts) -> dict:
    """What inventory_clients records for ``hosts`` (its profiles locate the hives)."""
    out = {}
    for h in hosts:
        ctx = StepCtx(inv, {h: LabConnection(inv.hosts[h], inv, None)}, Path("/nonexistent"), vars=dict(inv.vars))
        out[h] = gather(ctx, inv.hosts[h])[0]
    return out


def _ctx(inv, user, tmp_path: Path, artifacts: DirArtifacts, counts: Counter, facts: dict | None = None,
         hosts=None) -> StepCtx:
    conns = {h: Counting(LabConnection(inv.hosts[h], inv, None), counts, h) for h in (hosts or user.clients)}
    ctx = StepCtx(inv, conns, tmp_path, artifacts=artifacts, vars=dict(inv.vars))
    ctx._facts.update(facts or {})
    return ctx


def _budget(*, changed: bool) -> int:
    """With facts: a first export is the export line and the take (nothing stored, so the
    probe reads nothing); a re-probe of an unchanged machine is one line."""
    return 2 if changed else 1


def test_first_export_and_re_probe_stay_within_the_round_trip_budget(estate, tmp_path):
    root, inv, manifest = estate
    multi = 0
    facts = _facts(inv, inv.group_hosts("clients"))
    for alias, truth in manifest["users"].items():
        user = inv.users[alias]
        multi += len(user.clients) > 1
        artifacts = DirArtifacts(tmp_path / alias)
        counts: Counter = Counter()
        ctx = _ctx(inv, user, tmp_path, artifacts, counts, facts)
        step = ExportContacts()
        diff = step.probe(ctx, user)
        assert diff is not None and step.apply(ctx, user, diff).status == "changed"
        for host in user.clients:
            assert counts[host] <= _budget(changed=True), (alias, host, counts)
        counts.clear()
        assert step.probe(ctx, user) is None
        for host in user.clients:
            assert counts[host] == _budget(changed=False), (alias, host, counts)
    assert multi, "the lab has users with several machines"


def test_without_facts_a_first_export_locates_the_profile_in_one_more_line(estate, tmp_path):
    root, inv, manifest = estate
    alias = next(iter(manifest["users"]))
    user = inv.users[alias]
    counts: Counter = Counter()
    ctx = _ctx(inv, user, tmp_path, DirArtifacts(tmp_path / "nf"), counts)
    step = ExportContacts()
    assert step.apply(ctx, user, step.probe(ctx, user)).status == "changed"
    assert all(counts[h] == 3 for h in user.clients), counts


def test_one_line_reads_every_user_of_a_machine_for_the_probes_of_one_step(estate, tmp_path):
    """The first probe on a machine reads all of its users (each in their own group);
    the other users' probes in the same step take their reading without a round trip."""
    root, inv, manifest = estate
    facts = _facts(inv, inv.group_hosts("clients"))
    xp = [h for h in inv.group_hosts("clients") if facts[h]["cmd_line_limit"] == 8191]  # 2000: shorter lines
    host = max(xp, key=lambda h: sum(h in t["clients"] for t in manifest["users"].values()))
    users = [inv.users[a] for a, t in manifest["users"].items() if host in t["clients"]]
    assert len(users) >= 2
    hosts = sorted({h for u in users for h in u.clients})
    artifacts = DirArtifacts(tmp_path / "shared")
    counts: Counter = Counter()
    step = ExportContacts()
    for u in users:  # a first export of each, so the probes below have something to compare with
        ctx = _ctx(inv, u, tmp_path, artifacts, counts, facts, hosts)
        step.apply(ctx, u, step.probe(ctx, u))
    counts.clear()
    task = SimpleNamespace(step=SimpleNamespace(name="Export contact lists"), wave="wave1", play_index=1)
    for u in users:
        ctx = _ctx(inv, u, tmp_path, artifacts, counts, facts, hosts)
        ctx.run_id, ctx.task = "sharedrun", task
        assert step.probe(ctx, u) is None
    assert counts[host] == 1, counts
    counts.clear()
    for u in users:  # another step (or wave) reads again: a reading is handed out once
        ctx = _ctx(inv, u, tmp_path, artifacts, counts, facts, hosts)
        ctx.run_id, ctx.task = "sharedrun", SimpleNamespace(step=task.step, wave="wave2", play_index=1)
        assert step.probe(ctx, u) is None
    assert counts[host] == 1, counts


def test_only_the_changed_machine_is_exported_again(estate, tmp_path):
    root, inv, manifest = estate
    alias = next(a for a, t in manifest["users"].items() if len(t["clients"]) > 1)
    user = inv.users[alias]
    artifacts = DirArtifacts(tmp_path / "a")
    counts: Counter = Counter()
    ctx = _ctx(inv, user, tmp_path, artifacts, counts, _facts(inv, user.clients))
    step = ExportContacts()
    step.apply(ctx, user, step.probe(ctx, user))
    merged_before = artifacts.read(f"contacts/{alias}/merged.json")
    # the lab already holds every list: pretend one machine's artifact is stale
    first, *others = user.clients
    artifacts.write(f"contacts/{alias}/{first}.json", b'{"stale": true}\n')
    counts.clear()
    diff = step.probe(ctx, user)
    assert diff is not None and diff.data["hosts"] == [first]
    result = step.apply(ctx, user, diff)
    assert result.data["counts"].keys() == set(user.clients)
    assert artifacts.read(f"contacts/{alias}/merged.json") == merged_before
    for host in others:
        assert counts[host] == _budget(changed=False), "unchanged machine not exported again"


def test_user_logging_off_between_probe_and_apply_is_exported_from_the_loaded_hive(estate, tmp_path):
    """The export line does not depend on the probe's view of who is logged on: a user
    who logged off in between is exported from their loaded hive, not as an empty list."""
    root, inv, manifest = estate
    alias, host = next((a, h) for a, t in manifest["users"].items() for h, m in t["machines"].items()
                       if m["logged_on"] and m["contacts"] and len(t["clients"]) == 1)
    user = inv.users[alias]
    artifacts = DirArtifacts(tmp_path / "off")
    ctx = _ctx(inv, user, tmp_path, artifacts, Counter(), _facts(inv, [host]))
    step = ExportContacts()
    diff = step.probe(ctx, user)
    assert diff is not None and diff.data["profiles"][host]["loaded"]
    registry = open_lab(root / "lab").host(host).registry
    sid = manifest["users"][alias]["sid"]
    mount = next(m for m in registry.mounts() if m.name.lower() == sid.lower())
    registry.set_in_use(mount.name, False)  # the user logs off: Windows unloads the hive
    registry.unload_hive(mount.name)
    try:
        result = step.apply(ctx, user, diff)
        assert result.data["counts"][host] == len(manifest["users"][alias]["machines"][host]["contacts"])
        assert not any(m.name.lower().startswith("runner_") for m in registry.mounts())
    finally:
        registry.load_hive(mount.name, mount.file, in_use=mount.in_use)
