"""The engine's not-yet outcome, for any step (runner.steps.base.NotYet): a probe that finds
a target not due yet gives status ``not_yet``, never retried, counted apart; the target stays
in the play (its later steps run), no max_fail_percentage and exit 0, not a checkpoint (the
next run probes it again and does it once it is due); the same in check mode and in chunks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine_support import make_inventory, make_plan, make_step
from runner.steps.base import Diff, NotYet, StepModule, StepResult
from runner.steps.registry import register
from test_engine import journal, run


def _due(ctx: Any, target: Any) -> bool:
    return (Path(ctx.vars["workdir"]) / f"due-{target.name}").exists()


@register
class WaitsForOthers(StepModule):
    """Writes its target's file once ``due-<host>`` exists; before that, not yet."""

    name = "t_waits_for_others"
    target = "host"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        (Path(ctx.vars["workdir"]) / f"probed-{target.name}").touch()
        if not _due(ctx, target):
            raise NotYet(f"{target.name} waits for wave2", reason="wait for the others", waiting=["wave2"],
                         data={"others": ["bob"]})
        done = Path(ctx.vars["workdir"]) / "waited" / target.name
        return None if done.exists() else Diff(f"write {target.name}")

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:
        done = Path(ctx.vars["workdir"]) / "waited" / target.name
        done.parent.mkdir(exist_ok=True)
        done.write_text("done")
        with open(Path(ctx.vars["workdir"]) / "journal.log", "a", encoding="utf-8") as fh:
            fh.write(f"waited {target.name}\n")
        return StepResult("changed")


@register
class WaitsInChunks(WaitsForOthers):
    name = "t_waits_in_chunks"
    chunk = 10


def test_a_target_not_due_yet_is_not_yet_not_failed_and_is_done_once_due(tmp_path):
    for module in ("t_waits_for_others", "t_waits_in_chunks"):
        work = tmp_path / module
        work.mkdir()
        inv = make_inventory(work, ["pc01", "pc02", "pc03"])
        (work / "due-pc01").touch()
        plan = make_plan(inv, [make_step("wait", module, retries=3), make_step("write", "t_write_file")],
                         max_fail_percentage=0)
        summary, outcomes, rows = run(work, inv, plan)
        status = {(o.step, o.target): o.status for o in outcomes}
        assert status == {("wait", "pc01"): "changed", ("wait", "pc02"): "not_yet", ("wait", "pc03"): "not_yet",
                          ("write", "pc01"): "changed", ("write", "pc02"): "changed",
                          ("write", "pc03"): "changed"}, module  # the target stays in the play
        later = next(o for o in outcomes if o.target == "pc02" and o.step == "wait")
        assert later.attempts == 1 and later.message == "pc02 waits for wave2"  # never retried
        assert later.data == {"others": ["bob"], "not_yet": {"reason": "wait for the others", "waiting": ["wave2"]}}
        assert summary.exit_code == 0 and summary.status == "ok"  # no gate, no failure
        assert summary.totals["not_yet"] == 2 and summary.totals["failed"] == 0
        assert summary.counts["pc02"]["not_yet"] == 1
        assert rows["0/wait/host:pc02"]["status"] == "not_yet"
        # not a checkpoint: the same run, resumed once pc02 is due, does it; pc03 still waits
        (work / "due-pc02").touch()
        again, outcomes, _ = run(work, inv, plan)
        status = {(o.step, o.target): (o.status, o.resumed) for o in outcomes if o.step == "wait"}
        assert status == {("wait", "pc01"): ("skipped", True), ("wait", "pc02"): ("changed", False),
                          ("wait", "pc03"): ("not_yet", False)}, module
        assert again.exit_code == 0
        assert journal(work).count("waited pc02") == 1


def test_check_mode_says_not_yet_too(tmp_path):
    inv = make_inventory(tmp_path, ["pc01", "pc02"])
    (tmp_path / "due-pc01").touch()
    plan = make_plan(inv, [make_step("wait", "t_waits_for_others")])
    summary, outcomes, rows = run(tmp_path, inv, plan, check=True)
    assert {o.target: o.status for o in outcomes} == {"pc01": "changed", "pc02": "not_yet"}
    assert summary.exit_code == 0 and summary.totals["not_yet"] == 1 and rows == {}
