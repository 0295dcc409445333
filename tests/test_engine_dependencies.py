"""Dependencies across targets (runner.engine, docs/data-safety.md): a user's tasks after a
host step depend on that step's tasks of the user's clients, a host's on its users' earlier
steps; a blocked task fails, saying which target failed which step, and is run again on resume."""
from __future__ import annotations

from engine_support import make_inventory, make_plan, make_step
from test_engine import journal, run


def _inv(tmp_path, **kw):
    return make_inventory(tmp_path, ["pc01", "pc02"], users={"alice": ["pc01"], "bob": ["pc01", "pc02"],
                                                             "carol": ["pc02"]}, **kw)


def test_users_of_a_client_that_failed_a_host_step_are_not_moved_on(tmp_path):
    inv = _inv(tmp_path)
    plan = make_plan(inv, [make_step("save", "t_user_write_file", args={"dir": "saved"}),
                           make_step("upgrade", "t_flaky", args={"fail_times": 1, "fault": "permanent"}),
                           make_step("enable", "t_user_write_file", args={"dir": "enabled"})],
                     max_fail_percentage=100)
    # pc01's upgrade fails; pc02's counter says it already failed its one time
    (tmp_path / "attempts-pc02").write_text("1")
    summary, outcomes, rows = run(tmp_path, inv, plan, retries=0)
    by = {(o.step, o.target): o for o in outcomes}
    assert by[("upgrade", "pc01")].status == "failed" and by[("upgrade", "pc02")].status == "ok"
    for alias in ("alice", "bob"):  # pc01 is one of their clients
        o = by[("enable", alias)]
        assert o.status == "failed" and o.attempts == 0
        assert o.message == "not run: client pc01 failed 'upgrade'"
        assert o.data["blocked_by"]["target"] == "host:pc01"
    assert by[("enable", "carol")].status == "changed"
    assert sorted(journal(tmp_path)) == ["enabled carol", "saved alice", "saved bob", "saved carol"]
    assert rows["0/enable/user:alice"]["status"] == "failed"  # run again on resume
    assert summary.exit_code == 2


def test_a_machine_is_not_changed_while_a_users_earlier_step_failed(tmp_path):
    inv = _inv(tmp_path)
    (tmp_path / "saved" / "bob").mkdir(parents=True)  # bob's save cannot write its file: it fails
    plan = make_plan(inv, [make_step("save", "t_user_write_file", args={"dir": "saved"}),
                           make_step("upgrade", "t_write_file", args={"dir": "upgraded"})],
                     max_fail_percentage=100)
    summary, outcomes, _ = run(tmp_path, inv, plan, retries=0)
    by = {(o.step, o.target): o for o in outcomes}
    assert by[("save", "bob")].status == "failed"
    for host in ("pc01", "pc02"):  # bob uses both
        assert by[("upgrade", host)].status == "failed"
        assert by[("upgrade", host)].message == "not run: user bob failed 'save'"
    assert not (tmp_path / "upgraded").exists()


def test_a_later_failure_does_not_block_an_earlier_step_of_a_related_target(tmp_path):
    inv = _inv(tmp_path)
    (tmp_path / "enabled").mkdir()
    (tmp_path / "enabled" / "alice").mkdir()  # alice fails 'enable' (after the host step)
    plan = make_plan(inv, [make_step("upgrade", "t_write_file", args={"dir": "upgraded"}),
                           make_step("enable", "t_user_write_file", args={"dir": "enabled"})],
                     waves=[["pc01"], ["pc02"]], max_fail_percentage=100)
    _, outcomes, _ = run(tmp_path, inv, plan, retries=0)
    by = {(o.step, o.target): o for o in outcomes}
    assert by[("enable", "alice")].status == "failed"
    assert by[("upgrade", "pc02")].status == "changed"   # bob's other machine: not alice's


def test_tasks_blocked_by_an_unreachable_client_do_not_count_against_the_wave_gate(tmp_path):
    inv = _inv(tmp_path, connection={"pc01": "dead"})
    plan = make_plan(inv, [make_step("upgrade", "t_remote_echo"),
                           make_step("enable", "t_user_write_file", args={"dir": "enabled"})],
                     waves=[["pc01", "pc02"]], max_fail_percentage=0)
    summary, outcomes, _ = run(tmp_path, inv, plan, retries=0)
    by = {(o.step, o.target): o for o in outcomes}
    assert by[("enable", "alice")].message == "not run: client pc01 was unreachable in 'upgrade'"
    assert by[("enable", "carol")].status == "changed"
    assert summary.stopped_reason is None and summary.exit_code == 3
