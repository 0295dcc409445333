"""Engine behaviour under faults: flaky shared servers are not written off, retry delays scale."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine_support import make_inventory, make_plan, make_step
import pytest

from runner.engine import Engine, EngineOptions, retry_delay_scale
from runner.errors import ConnectionFault, OptionsError, TransientFault
from runner.events import TASK_END
from runner.state import StateStore
from runner.steps.base import Diff, StepModule
from runner.steps.registry import register


class BusyThenDropped(StepModule):
    """Per user: the shared server ``server`` first answers 'busy', then drops every connection."""

    name = "t_user_busy_then_dropped"
    target = "user"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        counter = Path(ctx.vars["workdir"]) / f"attempts-{target.alias}"
        n = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(n + 1))
        if n == 0:
            raise TransientFault("LCS server busy", host=ctx.args["server"])
        raise ConnectionFault("connection dropped by the host", host=ctx.args["server"])


register(BusyThenDropped)


def _run(tmp_path: Path, inventory, plan, delay: float = 0.001):
    events = []
    with StateStore(tmp_path / "state") as store:
        store.acquire_lock()
        info = store.start_run(tmp_path / "pb.yml", tmp_path / "inv.yml", command="runner apply pb.yml")
        engine = Engine(inventory, store, info.id,
                        EngineOptions(forks=1, default_retries=2, default_delay=delay, max_delay=delay),
                        [events.append], resumed=info.resumed)
        summary = engine.run(plan)
    return summary, [e.data["outcome"] for e in events if e.kind == TASK_END], engine


def test_server_that_answered_an_attempt_is_failed_not_unreachable(tmp_path):
    inv = make_inventory(tmp_path, ["lcs01"], users={"alice": ["lcs01"], "bob": ["lcs01"]})
    plan = make_plan(inv, [make_step("import", "t_user_busy_then_dropped", args={"server": "lcs01"})],
                     max_fail_percentage=100)
    summary, outcomes, engine = _run(tmp_path, inv, plan)
    by = {o.target: o for o in outcomes}
    # both users were tried (lcs01 was not written off after alice), and both failed
    assert by["alice"].status == "failed" and by["alice"].attempts == 3
    assert by["bob"].status == "failed" and by["bob"].attempts == 3
    assert not engine.pool.is_unreachable("lcs01")
    assert summary.exit_code == 2


def test_host_that_never_answered_is_unreachable(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("flaky", "t_flaky", args={"fail_times": 9, "fault": "connection"})],
                     max_fail_percentage=100)
    summary, outcomes, _ = _run(tmp_path, inv, plan)
    assert outcomes[0].status == "unreachable" and outcomes[0].attempts == 3
    assert summary.exit_code == 3


def test_retry_delay_scale_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("RUNNER_RETRY_DELAY_SCALE", raising=False)
    assert retry_delay_scale() == 1.0
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0.01")
    assert retry_delay_scale() == 0.01
    for bad in ("fast", "-1", "nan"):
        monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", bad)
        with pytest.raises(OptionsError, match="RUNNER_RETRY_DELAY_SCALE"):
            retry_delay_scale()


def test_scaled_delay_keeps_a_long_step_delay_short(tmp_path, monkeypatch):
    """A playbook's ``delay: 30`` with scale 0.0001 retries within milliseconds."""
    import time
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0.0001")
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("flaky", "t_flaky", args={"fail_times": 2}, delay=30.0)])
    started = time.monotonic()
    summary, outcomes, _ = _run(tmp_path, inv, plan, delay=30.0)
    assert outcomes[0].status == "ok" and outcomes[0].attempts == 3
    assert time.monotonic() - started < 30  # unscaled, the two waits alone would take 90 s or more
