"""Round trips per target of the LCS/Exchange steps, run through the engine on a
generated lab (DESIGN.md, "Speed": one round trip per host per step wherever the
work allows). Every lab command line, put and get is counted per (step, target),
so a regression fails here; bench/bench_apply.py prints the same figures.

A chunked step (runner.steps.base, ``chunk``) works for many users per round
trip: its trips are counted per chunk, and its budget is per user over the
whole step (a chunk of n users may use up to n times the budget, and uses far
fewer); a --fresh re-probe costs one round trip per chunk.

Budgets (first run): enable_lcs_users 3 (LCS read, directory lookup of the
user's DN, create); verify_contacts 1; disable_exchange_im 3 (directory read,
which also says whether LCS enabled the user, then the LDIF put and one line
that imports, deletes and reads back);
import_contacts typically 3 (probe, groups, contacts);
decommission_exchange_im 3 (one probe line, the put, one line that stops,
disables, imports and reads back). A --fresh re-probe costs 1 per step.
"""
from __future__ import annotations

import io
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from runner import engine as engine_mod
from runner.apply import ApplyRequest, apply
from runner.connections import lab as labconn
from runner.lab.generator import generate
from runner.lab.store import Lab

PLAYBOOK = str(Path(__file__).resolve().parent.parent / "playbooks" / "gradual.yml")
FIRST = {"enable_lcs_users": 3, "verify_contacts": 1, "disable_exchange_im": 3, "decommission_exchange_im": 3}


class Trips:
    """Counts lab round trips per (step module, target) by wrapping the lab connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.counts: dict[str, Counter] = defaultdict(Counter)
        orig_task = engine_mod.Engine._run_task
        trips = self

        def run_task(engine: Any, pplay: Any, task: Any) -> Any:
            trips.local.key = (task.step.module, task.target_name)
            try:
                return orig_task(engine, pplay, task)
            finally:
                trips.local.key = None

        monkeypatch.setattr(engine_mod.Engine, "_run_task", run_task)
        orig_chunk = engine_mod.Engine._run_chunk
        self.users: Counter = Counter()       # users handed to each chunked module
        self.chunks = 0

        def run_chunk(engine: Any, pplay: Any, chunk: Any) -> Any:
            module = chunk[0][0].step.module
            with trips.lock:
                trips.chunks += 1
                trips.users[module] += len(chunk)
                trips.local.key = (module, f"(chunk {trips.chunks})")
            try:
                return orig_chunk(engine, pplay, chunk)
            finally:
                trips.local.key = None

        monkeypatch.setattr(engine_mod.Engine, "_run_chunk", run_chunk)
        for name in ("run", "put", "get"):
            monkeypatch.setattr(labconn.LabConnection, name, self._counted(getattr(labconn.LabConnection, name)))

    def _counted(self, orig: Any) -> Any:
        trips = self

        def wrapper(conn: Any, *a: Any, **kw: Any) -> Any:
            key = getattr(trips.local, "key", None) or ("(outside tasks)", "")
            with trips.lock:
                trips.counts[key[0]][key[1]] += 1
            return orig(conn, *a, **kw)
        return wrapper


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lcs-trips")
    return root, generate(root / "lab", clients=6, users_per_client=2, contacts=8, seed=3)


def _apply(root: Path, inv: Path, *, fresh: bool) -> int:
    out = io.StringIO()
    req = ApplyRequest(playbook=PLAYBOOK, inventory=str(inv), forks=4, state_dir=str(root / "state"),
                       fresh=fresh, default_delay=0.01)
    return apply(req, stdout=out, stderr=out)


def test_lcs_steps_stay_within_their_round_trip_budget_and_a_re_probe_costs_one(lab, monkeypatch) -> None:
    root, inv = lab
    trips = Trips(monkeypatch)
    assert _apply(root, inv, fresh=False) == 0
    for module, budget in FIRST.items():
        per = trips.counts[module]
        assert per, f"{module} ran no task"
        if trips.users[module]:  # chunked: per user over the step
            assert sum(per.values()) <= budget * trips.users[module], (module, dict(per))
        else:
            assert max(per.values()) <= budget, (module, dict(per))
    # import: the probe's read, one line creating the groups (and re-reading their ids), then the
    # contacts' line(s); apply does not read LCS again
    imports = trips.counts["import_contacts"]
    if trips.users["import_contacts"]:
        assert sum(imports.values()) <= 3 * trips.users["import_contacts"], dict(imports)
    else:
        assert sorted(imports.values())[len(imports) // 2] <= 3, imports

    trips.counts.clear()
    since = time.time()
    assert _apply(root, inv, fresh=True) == 0
    assert Lab(root / "lab").mutations_since(since) == [], "a re-run must not change anything"
    # one round trip a chunk; the first chunk of the run on each server learns its %SystemRoot%
    # (runner.hostenv: where scratch files go) with one more, once per server and run
    learned = 0
    for module in (*FIRST, "import_contacts"):
        per = trips.counts[module]
        assert per and set(per.values()) <= {1, 2}, (module, dict(per))
        learned += sum(v - 1 for v in per.values())
    assert learned <= 2, "lcs01 and exim01 are asked once each"
