"""Specification of the planner: waves, --limit, tags, --start-at-step, task keys."""
from __future__ import annotations

import pytest

from runner.errors import InputError, OptionsError
from runner.model import Group, Host, Inventory, Play, Playbook, Serial, Step, User
from runner.plan import build_plan, natural_key, split_patterns
from runner.steps.base import StepModule
from runner.steps.registry import register


@register
class PlanHostStep(StepModule):
    name = "plan_host_step"
    target = "host"


@register
class PlanUserStep(StepModule):
    name = "plan_user_step"
    target = "user"


def make_inventory(n_clients: int = 4, waves: dict[str, str | None] | None = None) -> Inventory:
    """pc0001..pcN in group clients, one user per client (u1 on pc0001...), plus lcs01."""
    hosts = {f"pc{i:04d}": Host(name=f"pc{i:04d}", groups=("all", "clients")) for i in range(1, n_clients + 1)}
    hosts["lcs01"] = Host(name="lcs01", groups=("all", "lcs_servers"))
    waves = waves or {}
    users = {}
    for i in range(1, n_clients + 1):
        alias = f"u{i}"
        users[alias] = User(alias=alias, im_address=f"{alias}@im.contoso.com",
                            clients=(f"pc{i:04d}",), wave=waves.get(alias))
    groups = {
        "all": Group(name="all", children=("clients", "lcs_servers")),
        "clients": Group(name="clients", hosts=tuple(h for h in hosts if h.startswith("pc"))),
        "lcs_servers": Group(name="lcs_servers", hosts=("lcs01",)),
    }
    return Inventory(path="inv.yml", hosts=hosts, groups=groups, users=users)


def step(name: str, module: str = "plan_host_step", tags: tuple[str, ...] = ()) -> Step:
    return Step(name=name, module=module, tags=tags)


def playbook(*plays: Play) -> Playbook:
    return Playbook(path="pb.yml", plays=plays)


def keys(plan) -> list[str]:
    return [t.key for t in plan.tasks()]


def test_task_keys_are_play_step_and_target_in_inventory_order():
    pb = playbook(Play(name="p", hosts="clients", steps=(step("Upgrade"), step("Export", "plan_user_step"))))
    plan = build_plan(pb, make_inventory(2))
    assert keys(plan) == ["0/Upgrade/host:pc0001", "0/Upgrade/host:pc0002",
                          "0/Export/user:u1", "0/Export/user:u2"]
    assert [t.kind for t in plan.tasks()] == ["host", "host", "user", "user"]
    assert plan.plays[0].waves[0].name is None


def test_plan_is_deterministic():
    pb = playbook(Play(name="p", hosts="all", serial=Serial(over="users", size=3),
                       steps=(step("A"), step("B", "plan_user_step"))))
    inv = make_inventory(7)
    assert keys(build_plan(pb, inv)) == keys(build_plan(pb, inv))


def test_serial_count_over_users_cuts_waves_and_host_steps_follow_their_users():
    pb = playbook(Play(name="p", hosts="clients", serial=Serial(over="users", size=3),
                       steps=(step("Upgrade"), step("Export", "plan_user_step"))))
    plan = build_plan(pb, make_inventory(7))
    waves = plan.plays[0].waves
    assert [w.name for w in waves] == ["1", "2", "3"]
    assert [t.target_name for t in waves[0].tasks] == ["pc0001", "pc0002", "pc0003", "u1", "u2", "u3"]
    assert [t.target_name for t in waves[2].tasks] == ["pc0007", "u7"]
    assert all(t.wave == "3" for t in waves[2].tasks)


def test_serial_percentage_rounds_down_with_a_minimum_of_one():
    pb = playbook(Play(name="p", hosts="clients", serial=Serial(over="users", percent=25),
                       steps=(step("Export", "plan_user_step"),)))
    plan = build_plan(pb, make_inventory(10))
    assert [len(w.tasks) for w in plan.plays[0].waves] == [2, 2, 2, 2, 2]
    plan = build_plan(pb, make_inventory(3))
    assert [len(w.tasks) for w in plan.plays[0].waves] == [1, 1, 1]


def test_serial_over_hosts_cuts_hosts():
    pb = playbook(Play(name="p", hosts="clients", serial=Serial(over="hosts", size=2),
                       steps=(step("Upgrade"), step("Export", "plan_user_step"))))
    plan = build_plan(pb, make_inventory(3))
    assert [[t.target_name for t in w.tasks] for w in plan.plays[0].waves] == [
        ["pc0001", "pc0002", "u1", "u2"], ["pc0003", "u3"]]


def test_serial_attribute_makes_one_wave_per_value_sorted_naturally_and_unassigned_last():
    inv = make_inventory(4, waves={"u1": "wave10", "u2": "wave2", "u3": None, "u4": "wave2"})
    pb = playbook(Play(name="p", hosts="clients", serial=Serial(over="users", attribute="wave"),
                       steps=(step("Export", "plan_user_step"),)))
    waves = build_plan(pb, inv).plays[0].waves
    assert [(w.name, [t.target_name for t in w.tasks]) for w in waves] == [
        ("wave2", ["u2", "u4"]), ("wave10", ["u1"]), ("unassigned", ["u3"])]


def test_serial_attribute_honours_explicit_order():
    inv = make_inventory(3, waves={"u1": "pilot", "u2": "bulk", "u3": "pilot"})
    pb = playbook(Play(name="p", hosts="clients",
                       serial=Serial(over="users", attribute="wave", order=("pilot", "bulk")),
                       steps=(step("Export", "plan_user_step"),)))
    assert [w.name for w in build_plan(pb, inv).plays[0].waves] == ["pilot", "bulk"]


def test_host_shared_by_two_waves_runs_in_the_first_only():
    inv = make_inventory(2, waves={"u1": "w1", "u2": "w2"})
    users = dict(inv.users)
    users["u2"] = User(alias="u2", im_address="u2@x", clients=("pc0001", "pc0002"), wave="w2")
    inv = Inventory(path=inv.path, hosts=inv.hosts, groups=inv.groups, users=users)
    pb = playbook(Play(name="p", hosts="clients", serial=Serial(over="users", attribute="wave"),
                       steps=(step("Upgrade"),)))
    plan = build_plan(pb, inv)
    assert [(w.name, [t.target_name for t in w.tasks]) for w in plan.plays[0].waves] == [
        ("w1", ["pc0001"]), ("w2", ["pc0002"])]
    assert len(set(keys(plan))) == len(keys(plan))


def test_limit_by_host_selects_the_host_and_its_users():
    pb = playbook(Play(name="p", hosts="clients", steps=(step("Upgrade"), step("Export", "plan_user_step"))))
    assert keys(build_plan(pb, make_inventory(3), limit="pc0002")) == [
        "0/Upgrade/host:pc0002", "0/Export/user:u2"]


def test_limit_by_user_alias_selects_the_user_and_their_clients():
    pb = playbook(Play(name="p", hosts="clients", steps=(step("Upgrade"), step("Export", "plan_user_step"))))
    assert keys(build_plan(pb, make_inventory(3), limit="u3")) == ["0/Upgrade/host:pc0003", "0/Export/user:u3"]


def test_limit_by_wave_glob_and_exclusion():
    inv = make_inventory(4, waves={"u1": "w1", "u2": "w1", "u3": "w2", "u4": "w2"})
    pb = playbook(Play(name="p", hosts="clients", steps=(step("Export", "plan_user_step"),)))
    assert keys(build_plan(pb, inv, limit="wave:w1")) == ["0/Export/user:u1", "0/Export/user:u2"]
    assert keys(build_plan(pb, inv, limit="wave:w*,!u2")) == [
        "0/Export/user:u1", "0/Export/user:u3", "0/Export/user:u4"]
    assert keys(build_plan(pb, inv, limit="!wave:w1")) == ["0/Export/user:u3", "0/Export/user:u4"]


def test_limit_by_group_and_colon_separator():
    pb = playbook(Play(name="p", hosts="all", steps=(step("Upgrade"),)))
    assert keys(build_plan(pb, make_inventory(2), limit="lcs_servers:pc0001")) == [
        "0/Upgrade/host:pc0001", "0/Upgrade/host:lcs01"]


def test_limit_exclusion_only_keeps_everything_else():
    pb = playbook(Play(name="p", hosts="clients", steps=(step("Upgrade"), step("Export", "plan_user_step"))))
    assert keys(build_plan(pb, make_inventory(2), limit="!pc0001")) == [
        "0/Upgrade/host:pc0002", "0/Export/user:u2"]


def test_limit_that_matches_nothing_is_an_options_error():
    pb = playbook(Play(name="p", hosts="clients", steps=(step("Upgrade"),)))
    with pytest.raises(OptionsError, match=r"--limit: 'pc9999' matches no host, group, user or wave"):
        build_plan(pb, make_inventory(2), limit="pc0001,pc9999")
    with pytest.raises(OptionsError) as e:
        build_plan(pb, make_inventory(2), limit="wave:nope")
    assert e.value.exit_code == 5


def test_play_hosts_pattern_naming_nothing_is_an_input_error():
    pb = playbook(Play(name="p", hosts="exchange_servers", steps=(step("Upgrade"),), line=3))
    with pytest.raises(InputError, match=r"pb.yml:3: play 'p': hosts pattern 'exchange_servers' matches no host"):
        build_plan(pb, make_inventory(1))


def test_tags_select_steps_and_always_runs_unless_skipped():
    pb = playbook(Play(name="p", hosts="lcs_servers", steps=(
        step("Facts", tags=("always",)), step("Export", tags=("export",)), step("Import", tags=("import",)))))
    inv = make_inventory(1)
    assert keys(build_plan(pb, inv, tags={"import"})) == ["0/Facts/host:lcs01", "0/Import/host:lcs01"]
    assert keys(build_plan(pb, inv, skip_tags={"export"})) == ["0/Facts/host:lcs01", "0/Import/host:lcs01"]
    assert keys(build_plan(pb, inv, tags={"import"}, skip_tags={"always"})) == ["0/Import/host:lcs01"]


def test_unknown_tag_is_an_options_error_listing_known_tags():
    pb = playbook(Play(name="p", hosts="lcs_servers", steps=(step("Export", tags=("export",)),)))
    with pytest.raises(OptionsError, match=r"--tags: unknown tag\(s\) exprot; tags in this playbook: export \(and 'always' and 'all'\)"):
        build_plan(pb, make_inventory(1), tags={"exprot"})
    with pytest.raises(OptionsError, match="--skip-tags"):
        build_plan(pb, make_inventory(1), skip_tags={"nope"})


def test_start_at_step_skips_earlier_steps_across_plays():
    pb = playbook(Play(name="p1", hosts="lcs_servers", steps=(step("A"), step("B"))),
                  Play(name="p2", hosts="lcs_servers", steps=(step("C"), step("D"))))
    inv = make_inventory(1)
    assert keys(build_plan(pb, inv, start_at_step="B")) == ["0/B/host:lcs01", "1/C/host:lcs01", "1/D/host:lcs01"]
    assert keys(build_plan(pb, inv, start_at_step="D")) == ["1/D/host:lcs01"]
    with pytest.raises(OptionsError, match="--start-at-step: no step named 'Z'"):
        build_plan(pb, inv, start_at_step="Z")


def test_split_patterns_keeps_wave_names_whole():
    assert split_patterns("pc1:wave:w1,!wave:w2,clients") == ["pc1", "wave:w1", "!wave:w2", "clients"]


def test_natural_sort():
    assert sorted(["wave10", "wave2", "Wave1"], key=natural_key) == ["Wave1", "wave2", "wave10"]


# -- saved before changed: a saving user step covers every user of the machines a wave changes --

@register
class PlanSaveStep(StepModule):
    name = "plan_save_step"
    target = "user"
    saves_client_data = True


@register
class PlanReadStep(StepModule):
    name = "plan_read_step"
    target = "host"
    read_only = True


def _shared_inventory() -> Inventory:
    """u1 (wave1) on pc0001 and pc0002; u2 (wave2) on pc0002; u3 (wave2) on pc0003."""
    inv = make_inventory(3, {"u1": "wave1", "u2": "wave2", "u3": "wave2"})
    users = dict(inv.users)
    users["u1"] = User(alias="u1", im_address="u1@im.contoso.com", clients=("pc0001", "pc0002"), wave="wave1")
    return Inventory(path=inv.path, hosts=inv.hosts, groups=inv.groups, users=users)


def _waves_play(*steps: Step) -> Playbook:
    return playbook(Play(name="p", hosts="clients", users="all",
                         serial=Serial(over="users", attribute="wave"), steps=steps))


def test_a_later_waves_user_of_a_machine_an_earlier_wave_changes_is_saved_in_that_wave():
    pb = _waves_play(step("Export", "plan_save_step"), step("Upgrade"), step("Enable", "plan_user_step"))
    plan = build_plan(pb, _shared_inventory())
    (w1, w2) = plan.plays[0].waves
    assert [t.key for t in w1.tasks] == [
        "0/Export/user:u1", "0/Export/user:u2/for-wave:wave1",
        "0/Upgrade/host:pc0001", "0/Upgrade/host:pc0002", "0/Enable/user:u1"]
    # u2's own wave saves again (a list edited between the nights is not lost)
    assert [t.key for t in w2.tasks] == [
        "0/Export/user:u2", "0/Export/user:u3", "0/Upgrade/host:pc0003", "0/Enable/user:u2", "0/Enable/user:u3"]
    assert len(set(keys(plan))) == len(keys(plan))
    early = w1.tasks[1]
    assert early.target_name == "u2" and early.wave == "wave1"


def test_a_limit_saves_the_unselected_users_of_the_machines_it_changes():
    pb = _waves_play(step("Export", "plan_save_step"), step("Upgrade"), step("Enable", "plan_user_step"))
    plan = build_plan(pb, _shared_inventory(), limit="u1")
    assert keys(plan) == ["0/Export/user:u1", "0/Export/user:u2/for-wave:wave1",
                          "0/Upgrade/host:pc0001", "0/Upgrade/host:pc0002", "0/Enable/user:u1"]
    no_serial = playbook(Play(name="p", hosts="clients", users="all",
                              steps=(step("Export", "plan_save_step"), step("Upgrade"))))
    assert "0/Export/user:u2/for-wave:all" in keys(build_plan(no_serial, _shared_inventory(), limit="u1"))


def test_nothing_is_saved_early_when_no_later_step_changes_the_machines():
    inv = _shared_inventory()
    for steps in ((step("Export", "plan_save_step"), step("Facts", "plan_read_step")),
                  (step("Upgrade"), step("Export", "plan_save_step")),
                  (step("Export", "plan_user_step"), step("Upgrade"))):
        plan = build_plan(_waves_play(*steps), inv)
        assert not [k for k in keys(plan) if "/for-wave:" in k], steps
