"""Client command lines within the host's cmd.exe limit, each hive's load and unload in
one line (runner.steps._clients, runner.windows.cmdline.batch_groups / branch_sections)."""
from __future__ import annotations

import pytest

from runner.connections.lab import LabConnection
from runner.lab.generator import generate
from runner.loader import load_inventory
from runner.steps import _clients as cl
from runner.steps.export_contacts import read_machine
from runner.steps.inventory_clients import gather
from runner.windows.cmdline import Command, CommandLineTooLong, batch_groups, branch_sections, split_sections

from lab_fixtures import script_lines
from stepctx import StepCtx


def _echo(n: int) -> Command:
    return Command("echo", "x" * n)


def test_batch_groups_never_splits_a_group_and_refuses_one_too_long():
    groups = [[_echo(300), _echo(300)], [_echo(300), _echo(300)], [_echo(300)]]
    lines = batch_groups(groups, limit=1000)
    assert [len(l.bits) for l in lines] == [3, 5]  # 2 commands + 1 '&', then 3 commands + 2 '&'
    assert all(len(l) <= 1000 for l in lines)
    with pytest.raises(CommandLineTooLong):
        batch_groups([[_echo(700), _echo(700)]], limit=1300)


def test_branch_sections_runs_one_branch_in_the_lab_shell(tmp_path):
    inv = load_inventory(generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=1, seed=2))
    conn = LabConnection(inv.hosts["pc0001"], inv, None)
    for test, taken in ((Command("ver"), "then"), (Command("nosuchprogram"), "else")):
        cmd, nonce = branch_sections(test, [Command("echo", "then")], [Command("echo", "else"), Command("ver")])
        out = split_sections(conn.run(cmd.render()).stdout, 4, nonce)
        assert out[0] is not None and out[0].ok == (taken == "then")
        if taken == "then":
            assert out[1] and out[1].stdout.strip() == "then" and out[2] is None and out[3] is None
        else:
            assert out[1] is None and out[2] and out[2].stdout.strip() == "else" and out[3] and out[3].ok


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    root = tmp_path_factory.mktemp("lines")
    inv = load_inventory(generate(root / "lab", clients=12, users_per_client=3, contacts=4, seed=7))
    return inv


def _facts_ctx(inv, host, sent):
    conn = LabConnection(inv.hosts[host], inv, None)
    original, fed = conn.run, conn.run_input
    conn.run = lambda cmd, **kw: (sent.append(cmd), original(cmd, **kw))[1]  # type: ignore[method-assign]
    # a fed script's lines, as if each had been sent on its own (and the line that feeds it)
    conn.run_input = lambda cmd, data, **kw: (sent.extend(script_lines(data)),  # type: ignore[method-assign]
                                              fed(cmd, data, **kw))[1]
    return StepCtx(inv, {host: conn}, __import__("pathlib").Path("/nonexistent"), vars=dict(inv.vars))


def test_line_limit_comes_from_the_host_fact_else_windows_2000s(estate):
    inv = estate
    limits = {}
    for host in inv.group_hosts("clients"):
        sent: list[str] = []
        ctx = _facts_ctx(inv, host, sent)
        assert cl.line_limit(ctx, host) == 2047  # no fact yet: Windows 2000's limit
        assert all(len(c) <= 2047 for c in sent)
        facts, _ = gather(ctx, inv.hosts[host])
        assert all(len(c) <= 2047 for c in sent)
        limits[host] = facts["cmd_line_limit"]
        ctx._facts[host] = facts
        assert cl.line_limit(ctx, host) == facts["cmd_line_limit"]
        expected = 2047 if facts["os_version"] == "5.0" else 8191
        assert facts["cmd_line_limit"] == expected
    assert set(limits.values()) == {2047, 8191}, "the lab has both Windows 2000 and XP clients"


def test_reading_every_user_of_a_machine_keeps_each_hive_in_one_line_within_the_limit(estate):
    inv = estate
    host = max(inv.group_hosts("clients"), key=lambda h: len(cl.client_users(inv, h)))
    users = cl.client_users(inv, host)
    assert len(users) >= 3
    sent: list[str] = []
    ctx = _facts_ctx(inv, host, sent)
    ctx._facts[host] = {**gather(ctx, inv.hosts[host])[0], "cmd_line_limit": 2047}
    sent.clear()
    got = read_machine(ctx, host, users)
    assert set(got) == {u.alias for u in users}
    assert all(not isinstance(v, BaseException) for v in got.values()), got
    assert len(sent) >= 2, "several users' hives do not fit one 2,047-character line"
    assert all(len(line) <= 2047 for line in sent)
    for u in users:
        name = cl.hive_name(u.alias)
        loads = [line for line in sent if f"reg load HKU\\{name} " in line]
        assert len(loads) == 1 and f"reg unload HKU\\{name}" in loads[0]


def test_a_machine_reading_never_unloads_a_hive_another_task_is_exporting(tmp_path, monkeypatch):
    """User A's export line loads A's hive; user B's probe, reading every user of the same
    machine meanwhile, must not unload it under A's export (A would record an empty list)."""
    import threading
    import time

    import runner.lab.commands.reg as labreg
    from runner.steps.export_contacts import export_one
    inv = load_inventory(generate(tmp_path / "lab", clients=6, users_per_client=3, contacts=4, seed=7))
    man = __import__("json").loads((tmp_path / "lab" / "manifest.json").read_text())
    host, a, b = next((h, x, y) for h in inv.group_hosts("clients") for x in cl.client_users(inv, h)
                      for y in cl.client_users(inv, h)
                      if x is not y and not man["users"][x.alias]["machines"][h]["logged_on"]
                      and man["users"][x.alias]["machines"][h]["contacts"])
    slow = labreg.OPS["export"]

    def slow_export(ctx, args):  # A's export of the loaded hive takes a while
        time.sleep(0.5)
        return slow(ctx, args)
    monkeypatch.setitem(labreg.OPS, "export", slow_export)
    facts_ctx = StepCtx(inv, {host: LabConnection(inv.hosts[host], inv, None)}, tmp_path, vars=dict(inv.vars))
    facts = gather(facts_ctx, inv.hosts[host])[0]

    def ctx():
        c = StepCtx(inv, {host: LabConnection(inv.hosts[host], inv, None)}, tmp_path, vars=dict(inv.vars))
        c._facts[host] = facts
        return c
    got: dict = {}
    t = threading.Thread(target=lambda: got.update(a=export_one(ctx(), a, host)))
    t.start()
    time.sleep(0.2)
    reading = read_machine(ctx(), host, [b, a])
    t.join()
    raw, doc = got["a"]
    assert len(doc["contacts"]) == len(man["users"][a.alias]["machines"][host]["contacts"])
    assert not isinstance(reading[a.alias], BaseException), reading[a.alias]


def test_inventory_reads_every_hive_in_one_line_once_profiles_are_known(estate):
    """A second gather (profiles recorded by the first) loads and unloads the hives of users
    not logged on in its first line: one round trip per host, the same facts."""
    inv = estate
    ones = 0
    for host in inv.group_hosts("clients"):
        sent: list[str] = []
        ctx = _facts_ctx(inv, host, sent)
        first, _ = gather(ctx, inv.hosts[host])
        ctx._facts[host] = first
        sent.clear()
        second, _ = gather(ctx, inv.hosts[host])
        assert second["users"] == first["users"]
        assert all(len(line) <= first["cmd_line_limit"] for line in sent)
        if first["cmd_line_limit"] == 8191:  # Windows 2000's 2,047 may need several lines for many users
            assert len(sent) == 1, (host, len(sent))
            ones += any(not u["loaded"] for u in first["users"].values())
    assert ones, "some hosts have users not logged on"
