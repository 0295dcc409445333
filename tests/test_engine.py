"""The engine: checkpoints, retries, unreachable hosts, wave gates, check mode, facts."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine_support import EchoConnection, make_inventory, make_plan, make_step
from runner import engine as engine_mod
from runner.engine import Engine, EngineOptions
from runner.events import STEP_START, TASK_END, Event
from runner.state import StateStore

FAST = dict(default_delay=0.001, max_delay=0.01)


def run(tmp_path: Path, inventory, plan, *, fresh: bool = False, check: bool = False,
        forks: int = 4, retries: int = 3):
    events: list[Event] = []
    with StateStore(tmp_path / "state") as store:
        store.acquire_lock()
        info = store.start_run(tmp_path / "pb.yml", tmp_path / "inv.yml", command="runner apply pb.yml",
                               fresh=fresh)
        engine = Engine(inventory, store, info.id,
                        EngineOptions(forks=forks, check=check, default_retries=retries, **FAST),
                        [events.append], resumed=info.resumed)
        summary = engine.run(plan)
        if not check:
            store.finish_run(info.id, summary.status)
        rows = {r["key"]: r for r in store.task_rows(info.id)}
    outcomes = [e.data["outcome"] for e in events if e.kind == TASK_END]
    return summary, outcomes, rows


def journal(tmp_path: Path) -> list[str]:
    p = tmp_path / "journal.log"
    return p.read_text().splitlines() if p.exists() else []


def test_second_apply_changes_nothing(tmp_path):
    inv = make_inventory(tmp_path, ["pc01", "pc02", "pc03"])
    plan = make_plan(inv, [make_step("write", "t_write_file", args={"content": "v1"})])
    first, _, _ = run(tmp_path, inv, plan)
    assert first.totals["changed"] == 3 and first.exit_code == 0
    resumed, outcomes, _ = run(tmp_path, inv, plan)
    assert resumed.totals["changed"] == 0
    assert all(o.resumed and o.status == "skipped" for o in outcomes)
    fresh, outcomes, _ = run(tmp_path, inv, plan, fresh=True)
    assert fresh.totals["changed"] == 0 and fresh.totals["ok"] == 3
    assert len(journal(tmp_path)) == 3


def test_a_wave_done_whole_is_reported_step_by_step_and_one_left_still_runs(tmp_path, monkeypatch):
    # a resumed wave that an earlier session finished takes the engine's settled path (no
    # dependency graph): every task skipped as done, each step's in plan order, its header once
    inv = make_inventory(tmp_path, ["pc01", "pc02", "pc03"], users={"ann": ["pc01"], "bob": ["pc02", "pc03"]})
    steps = [make_step("write", "t_write_file", args={"content": "v1"}),
             make_step("user write", "t_user_write_file", args={"content": "u1"}),
             make_step("write again", "t_write_file", args={"content": "v1", "dir": "again"})]
    plan = make_plan(inv, steps, waves=[["pc01"], ["pc02", "pc03"]])
    looked: list[str] = []
    related = engine_mod._Dependencies.related
    monkeypatch.setattr(engine_mod._Dependencies, "related", lambda self, tid: looked.append(tid) or related(self, tid))
    run(tmp_path, inv, plan)
    assert looked  # the first run schedules by the dependency graph
    looked.clear()
    events: list[Event] = []
    with StateStore(tmp_path / "state") as store:
        store.acquire_lock()
        info = store.start_run(tmp_path / "pb.yml", tmp_path / "inv.yml", command="runner apply pb.yml")
        Engine(inv, store, info.id, EngineOptions(forks=4, **FAST), [events.append],
               resumed=info.resumed).run(plan)
    ends = [e.data["outcome"] for e in events if e.kind == TASK_END]
    assert [(o.step, o.target) for o in ends] == [
        ("write", "pc01"), ("user write", "ann"), ("write again", "pc01"),
        ("write", "pc02"), ("write", "pc03"), ("user write", "bob"), ("write again", "pc02"),
        ("write again", "pc03")]
    assert all(o.resumed and o.status == "skipped" and o.message == "done in an earlier run" for o in ends)
    starts = [(e.data["wave"], e.data["step"]) for e in events if e.kind == STEP_START]
    assert starts == [(w, s.name) for w in ("w1", "w2") for s in steps]
    assert not looked  # ... the resumed one needs none: everything is done
    # one task of the second wave left failed: that wave is scheduled as usual, and it runs
    work = tmp_path / "second"
    work.mkdir()
    inv = make_inventory(work, ["pc01", "pc02", "pc03"])
    for done in ("pc01", "pc02"):
        (work / f"attempts-{done}").write_text("1")  # t_flaky: these have had their failure
    plan = make_plan(inv, [make_step("write", "t_write_file", args={"content": "v1"}),
                           make_step("flaky", "t_flaky", args={"fail_times": 1, "fault": "permanent"})],
                     waves=[["pc01"], ["pc02", "pc03"]])
    first, outcomes, _ = run(work, inv, plan)
    assert sorted((o.target, o.status) for o in outcomes if o.step == "flaky") == [
        ("pc01", "ok"), ("pc02", "ok"), ("pc03", "failed")]  # (pc02 and pc03 run side by side)
    again, outcomes, _ = run(work, inv, plan)
    assert [(o.target, o.status) for o in outcomes if not o.resumed] == [("pc03", "ok")]
    assert len(outcomes) == 6 and again.exit_code == 0


def test_edited_step_runs_again_on_resume(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    run(tmp_path, inv, make_plan(inv, [make_step("write", "t_write_file", args={"content": "v1"})]))
    summary, outcomes, _ = run(tmp_path, inv, make_plan(inv, [make_step("write", "t_write_file",
                                                                       args={"content": "v2"})]))
    assert [o.status for o in outcomes] == ["changed"]
    assert (tmp_path / "files" / "pc01").read_text() == "v2"


def test_transient_fault_is_retried_and_attempts_recorded(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("flaky", "t_flaky", args={"fail_times": 2})])
    summary, outcomes, rows = run(tmp_path, inv, plan)
    assert outcomes[0].status == "ok" and outcomes[0].attempts == 3
    assert rows["0/flaky/host:pc01"]["attempts"] == 3
    assert summary.totals["retried"] == 1 and summary.exit_code == 0


def test_transient_fault_fails_when_retries_run_out(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("flaky", "t_flaky", args={"fail_times": 5}, retries=1)])
    summary, outcomes, _ = run(tmp_path, inv, plan)
    assert outcomes[0].status == "failed" and outcomes[0].attempts == 2
    assert summary.exit_code == 2


def test_permanent_fault_is_not_retried(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("flaky", "t_flaky", args={"fail_times": 1, "fault": "permanent"})])
    summary, outcomes, rows = run(tmp_path, inv, plan)
    assert outcomes[0].status == "failed" and outcomes[0].attempts == 1
    assert outcomes[0].message == "access denied"
    assert rows["0/flaky/host:pc01"]["status"] == "failed"
    assert summary.exit_code == 2


def test_unexpected_exception_fails_the_task_with_type_and_message(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("flaky", "t_flaky", args={"fail_times": 1, "fault": "bug"})])
    _, outcomes, _ = run(tmp_path, inv, plan)
    assert outcomes[0].status == "failed" and outcomes[0].message == "KeyError: 'oops'"
    assert "Traceback" in outcomes[0].traceback


def test_unreachable_host_does_not_stop_the_others(tmp_path):
    inv = make_inventory(tmp_path, ["pc01", "pc02", "pc03"], connection={"pc02": "dead"})
    plan = make_plan(inv, [make_step("echo", "t_remote_echo"),
                           make_step("write", "t_write_file")], max_fail_percentage=50)
    summary, outcomes, rows = run(tmp_path, inv, plan, retries=1)
    by = {(o.step, o.target): o for o in outcomes}
    assert by[("echo", "pc02")].status == "unreachable" and by[("echo", "pc02")].attempts == 2
    assert by[("echo", "pc01")].status == "ok"
    assert ("write", "pc02") not in by          # a failed target drops out of the play
    assert by[("write", "pc03")].status == "changed"
    assert summary.exit_code == 3


def test_host_unreachable_in_one_play_is_skipped_later_in_the_run(tmp_path):
    inv = make_inventory(tmp_path, ["pc01", "pc02"], connection={"pc02": "dead"})
    plan = make_plan(inv, [make_step("echo", "t_remote_echo"), make_step("write", "t_write_file")],
                     max_fail_percentage=100)
    second = make_plan(inv, [make_step("echo2", "t_remote_echo")])
    from runner.plan import Plan, PlannedPlay
    both = Plan(plays=(plan.plays[0], PlannedPlay(index=1, play=second.plays[0].play,
                                                   waves=second.plays[0].waves)))
    _, outcomes, _ = run(tmp_path, inv, both, retries=0)
    later = [o for o in outcomes if o.step == "echo2" and o.target == "pc02"]
    assert later and later[0].status == "unreachable" and later[0].attempts == 0


def test_one_connection_per_host_is_reused(tmp_path):
    EchoConnection.opened.clear()
    inv = make_inventory(tmp_path, ["pc01", "pc02"])
    plan = make_plan(inv, [make_step("a", "t_remote_echo"), make_step("b", "t_remote_echo")])
    run(tmp_path, inv, plan)
    assert sorted(EchoConnection.opened) == ["pc01", "pc02"]


def test_wave_gate_stops_the_play(tmp_path):
    inv = make_inventory(tmp_path, ["pc01", "pc02", "pc03", "pc04"])
    plan = make_plan(inv, [make_step("flaky", "t_flaky", args={"fail_times": 1, "fault": "permanent"}),
                           make_step("write", "t_write_file")],
                     waves=[["pc01", "pc02"], ["pc03", "pc04"]], max_fail_percentage=10)
    summary, outcomes, rows = run(tmp_path, inv, plan)
    assert summary.status == "stopped" and summary.exit_code == 2
    assert {o.target for o in outcomes} == {"pc01", "pc02"}
    assert rows["0/flaky/host:pc03"]["status"] == "pending"


def test_check_mode_reports_diffs_and_changes_nothing(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("write", "t_write_file", args={"content": "v1"})])
    summary, outcomes, rows = run(tmp_path, inv, plan, check=True)
    assert outcomes[0].status == "changed" and outcomes[0].diff.lines == ["- None", "+ v1"]
    assert not (tmp_path / "files").exists()
    assert rows == {}


def test_when_false_skips(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("write", "t_write_file", when="inventory_hostname == 'other'")])
    _, outcomes, _ = run(tmp_path, inv, plan)
    assert outcomes[0].status == "skipped" and not (tmp_path / "files").exists()


def test_undefined_variable_in_args_fails_without_retry(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("write", "t_write_file", args={"content": "{{ nope }}"})])
    _, outcomes, _ = run(tmp_path, inv, plan)
    assert outcomes[0].status == "failed" and outcomes[0].attempts == 1
    assert "nope" in outcomes[0].message


def test_facts_from_a_step_are_visible_to_later_steps_and_stored(tmp_path):
    inv = make_inventory(tmp_path, ["pc01"])
    plan = make_plan(inv, [make_step("gather", "t_gather"), make_step("use", "t_use_facts")])
    summary, outcomes, _ = run(tmp_path, inv, plan)
    assert [o.status for o in outcomes] == ["ok", "ok"]
    with StateStore(tmp_path / "state") as store:
        assert store.facts("pc01") == {"messenger": "4.7", "host": "pc01"}


def test_throttle_and_forks_bound_concurrency(tmp_path):
    inv = make_inventory(tmp_path, [f"pc{i:02}" for i in range(8)])
    plan = make_plan(inv, [make_step("write", "t_write_file", args={"sleep": 0.02}, throttle=2)])
    summary, outcomes, _ = run(tmp_path, inv, plan, forks=8)
    intervals = sorted((o.started, o.ended) for o in outcomes)
    most = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert summary.totals["changed"] == 8 and most <= 2
