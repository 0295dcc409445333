"""Chunked steps and a wave that flows by its dependencies (runner.engine, docs/server-batching.md).

A module with ``chunk`` > 0 gets many tasks at once through probe_many/apply_many, and
every task still has its own outcome, attempts and retries; a slow target delays only
the tasks that depend on it."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from engine_support import make_inventory, make_plan, make_step
from runner.errors import PermanentFault, TransientFault
from runner.steps.base import Diff, StepModule, StepResult
from runner.steps.registry import register
from test_engine import journal, run


class ChunkedWrite(StepModule):
    """Writes ``<workdir>/chunked/<alias>``, many users per call; ``fail`` users fail for good,
    ``flaky`` users fail once with a transient fault. Records the size of every call."""

    name = "t_user_chunked_write"
    target = "user"
    args_schema = {"type": "object"}
    chunk = 50
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()

    def chunk_key(self, ctx: Any, target: Any) -> str:
        return "server"

    def _path(self, ctx: Any, user: Any) -> Path:
        return Path(ctx.vars["workdir"]) / "chunked" / user.alias

    def probe_many(self, items):
        with self.lock:
            self.calls.append(("probe", len(items)))
        out = []
        for ctx, user in items:
            if user.alias in ctx.args.get("fail", []):
                out.append(PermanentFault(f"{user.alias} refused"))
            elif self._path(ctx, user).exists():
                out.append(None)
            else:
                out.append(Diff(f"write {user.alias}"))
        return out

    def apply_many(self, items):
        with self.lock:
            self.calls.append(("apply", len(items)))
        out = []
        for ctx, user, _ in items:
            flag = Path(ctx.vars["workdir"]) / f"flaked-{user.alias}"
            if user.alias in ctx.args.get("busy", []):  # busy for good
                out.append(TransientFault(f"{user.alias}: server busy"))
                continue
            if user.alias in ctx.args.get("flaky", []) and not flag.exists():
                flag.write_text("1")
                out.append(TransientFault(f"{user.alias}: server busy"))
                continue
            path = self._path(ctx, user)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("done")
            with open(Path(ctx.vars["workdir"]) / "journal.log", "a") as fh:
                fh.write(f"chunked {user.alias}\n")
            out.append(StepResult("changed", data={"alias": user.alias}))
        return out


class SlowHost(StepModule):
    """A host step that takes ``slow_seconds`` on the hosts named in ``slow`` (a stand-in for
    the lab's slow fault), journaling when it ends."""

    name = "t_slow_host"
    target = "host"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        return Diff("upgrade")

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:
        if target.name in ctx.args.get("slow", []):
            time.sleep(float(ctx.args.get("slow_seconds", 1.5)))
        with open(Path(ctx.vars["workdir"]) / "journal.log", "a") as fh:
            fh.write(f"upgraded {target.name}\n")
        return StepResult("changed")


register(ChunkedWrite)
register(SlowHost)


def _users(n: int) -> dict[str, list[str]]:
    return {f"u{i:02d}": [f"pc{i % 4:02d}"] for i in range(n)}


def test_a_chunked_step_runs_many_users_per_call_and_each_keeps_its_own_outcome(tmp_path):
    ChunkedWrite.calls.clear()
    inv = make_inventory(tmp_path, [f"pc{i:02d}" for i in range(4)], users=_users(12))
    plan = make_plan(inv, [make_step("write", "t_user_chunked_write",
                                     args={"chunk_size": 5, "fail": ["u03"], "flaky": ["u07"]})],
                     max_fail_percentage=100)
    summary, outcomes, rows = run(tmp_path, inv, plan, retries=2)
    by = {o.target: o for o in outcomes}
    assert len(outcomes) == 12 and set(by) == {f"u{i:02d}" for i in range(12)}
    assert by["u03"].status == "failed" and by["u03"].message == "u03 refused" and by["u03"].attempts == 1
    assert by["u07"].status == "changed" and by["u07"].attempts == 2      # retried alone
    assert all(by[a].status == "changed" and by[a].attempts == 1 for a in by if a not in ("u03", "u07"))
    sizes = [n for kind, n in ChunkedWrite.calls if kind == "probe"]
    assert max(sizes) == 5 and sizes.count(1) >= 1 and sum(sizes) == 13  # 12 users + u07's retry
    assert len(sizes) <= 4
    assert rows["0/write/user:u07"]["status"] == "changed" and rows["0/write/user:u03"]["status"] == "failed"
    assert sorted(journal(tmp_path)) == sorted(f"chunked u{i:02d}" for i in range(12) if i != 3)

    ChunkedWrite.calls.clear()
    again, outcomes, _ = run(tmp_path, inv, plan, retries=2)  # resume: only the failed user runs
    assert [o.target for o in outcomes if not o.resumed] == ["u03"]
    assert [n for kind, n in ChunkedWrite.calls if kind == "probe"] == [1]


def test_a_chunked_step_past_a_thousand_retries_backs_off_without_overflowing(tmp_path, monkeypatch):
    """The backoff's 2 ** round no longer converts to a float past round 1023: an OverflowError
    (exit 250) ended such a run. The playbook caps retries at 100; the engine is safe anyway."""
    from runner.engine import Engine
    monkeypatch.setattr(Engine, "_sleep", lambda self, seconds: None)
    inv = make_inventory(tmp_path, ["pc00"], users={"u00": ["pc00"]})
    plan = make_plan(inv, [make_step("write", "t_user_chunked_write", args={"busy": ["u00"]})])
    summary, outcomes, _ = run(tmp_path, inv, plan, retries=1100)
    assert [(o.status, o.attempts) for o in outcomes] == [("failed", 1101)]


def test_a_slow_client_delays_only_the_users_that_depend_on_it(tmp_path):
    inv = make_inventory(tmp_path, [f"pc{i:02d}" for i in range(4)], users=_users(8))
    plan = make_plan(inv, [make_step("upgrade", "t_slow_host", args={"slow": ["pc00"], "slow_seconds": 2.0}),
                           make_step("write", "t_user_chunked_write", args={})], max_fail_percentage=0)
    summary, outcomes, _ = run(tmp_path, inv, plan, forks=4)
    assert summary.exit_code == 0
    lines = journal(tmp_path)
    slow_done = lines.index("upgraded pc00")
    # users on the other clients went through their whole wave before the slow client finished ...
    for alias, clients in _users(8).items():
        if clients != ["pc00"]:
            assert lines.index(f"chunked {alias}") < slow_done, lines
    # ... and the slow client's own users waited for it
    for alias, clients in _users(8).items():
        if clients == ["pc00"]:
            assert lines.index(f"chunked {alias}") > slow_done, lines


def test_a_partial_chunk_lingers_longer_when_the_waves_single_tasks_take_longer() -> None:
    from runner.engine import CHUNK_LINGER, MAX_LINGER, chunk_linger
    assert chunk_linger([]) == CHUNK_LINGER                      # nothing known yet
    assert chunk_linger([0.01, 0.02, 0.03]) == CHUNK_LINGER      # fast tasks: the floor
    assert chunk_linger([0.1, 0.4, 0.5, 9.0]) == 1.0             # twice the median (0.5), not the mean
    assert chunk_linger([5.0, 6.0, 7.0]) == MAX_LINGER           # a slow network: capped
