"""export_contacts' round trips per user against a generated lab (DESIGN.md, "Speed"):
the profile is located once per machine per task and handed from probe to apply, a
logged-on user is read in place in the locating line, unchanged machines are not
exported again. Counted with a Connection wrapper, so a regression fails here."""
from __future__ import annotations

import json
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

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    root = tmp_path_factory.mktemp("trips")
    inv_path = generate(root / "lab", clients=10, users_per_client=2, contacts=6, seed=11)
    return root, load_inventory(inv_path), json.loads((root / "lab" / "manifest.json").read_text())


def _ctx(inv, user, tmp_path: Path, artifacts: DirArtifacts, counts: Counter) -> StepCtx:
    conns = {h: Counting(LabConnection(inv.hosts[h], inv, None), counts, h) for h in user.clients}
    return StepCtx(inv, conns, tmp_path, artifacts=artifacts, vars=dict(inv.vars))


def _budget(user, logged_on: bool, *, changed: bool) -> int:
    """Probe: 1 line (locate + in-place read) for a logged-on user with a known SID, else 2.
    Apply, per changed machine: the export line, the get and the del."""
    probe = 1 if logged_on and user.sid else 2
    return probe + (3 if changed else 0)


def test_first_export_and_re_probe_stay_within_the_round_trip_budget(estate, tmp_path):
    root, inv, manifest = estate
    multi = 0
    for alias, truth in manifest["users"].items():
        user = inv.users[alias]
        multi += len(user.clients) > 1
        artifacts = DirArtifacts(tmp_path / alias)
        counts: Counter = Counter()
        ctx = _ctx(inv, user, tmp_path, artifacts, counts)
        step = ExportContacts()
        diff = step.probe(ctx, user)
        assert diff is not None and step.apply(ctx, user, diff).status == "changed"
        for host in user.clients:
            on = truth["machines"][host]["logged_on"]
            assert counts[host] <= _budget(user, on, changed=True), (alias, host, on, counts)
        counts.clear()
        assert step.probe(ctx, user) is None
        for host in user.clients:
            on = truth["machines"][host]["logged_on"]
            assert counts[host] == _budget(user, on, changed=False), (alias, host, on, counts)
    assert multi, "the lab has users with several machines"


def test_only_the_changed_machine_is_exported_again(estate, tmp_path):
    root, inv, manifest = estate
    alias = next(a for a, t in manifest["users"].items() if len(t["clients"]) > 1)
    user = inv.users[alias]
    artifacts = DirArtifacts(tmp_path / "a")
    counts: Counter = Counter()
    ctx = _ctx(inv, user, tmp_path, artifacts, counts)
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
        on = manifest["users"][alias]["machines"][host]["logged_on"]
        assert counts[host] == _budget(user, on, changed=False), "unchanged machine not exported again"


def test_user_logging_off_between_probe_and_apply_is_transient_not_an_empty_list(estate, tmp_path):
    root, inv, manifest = estate
    alias, host = next((a, h) for a, t in manifest["users"].items() for h, m in t["machines"].items()
                       if m["logged_on"] and m["contacts"] and len(t["clients"]) == 1)
    user = inv.users[alias]
    ctx = _ctx(inv, user, tmp_path, DirArtifacts(tmp_path / "off"), Counter())
    step = ExportContacts()
    diff = step.probe(ctx, user)
    assert diff is not None and diff.data["profiles"][host]["loaded"]
    registry = open_lab(root / "lab").host(host).registry
    sid = manifest["users"][alias]["sid"]
    mount = next(m for m in registry.mounts() if m.name.lower() == sid.lower())
    registry.set_in_use(mount.name, False)  # the user logs off: Windows unloads the hive
    registry.unload_hive(mount.name)
    try:
        with pytest.raises(TransientFault, match="logged off"):
            step.apply(ctx, user, diff)
    finally:
        registry.load_hive(mount.name, mount.file, in_use=mount.in_use)
