"""A user task's work on a server sees that server's own ``command_line_limit`` and
``remote_temp`` (its inventory entry), not only the user's variables; ``-e`` still wins."""
from __future__ import annotations

from types import SimpleNamespace

import yaml

from runner.context import task_variables
from runner.lab.generator import generate
from runner.lcs.chunks import LCS_LINE, line_limit
from runner.loader import load_inventory
from runner.model import Play
from runner.steps._lcs import server_vars


def _inventory(tmp_path):
    path = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=1, seed=3)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))

    def put(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "exim01" and isinstance(v, dict):
                    v.setdefault("vars", {}).update(command_line_limit=8191, remote_temp=r"D:\Scratch")
                    return True
                if put(v):
                    return True
        return False
    assert put(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_inventory(path)


def _ctx(inv, extra=None):
    user = next(iter(inv.users.values()))
    play = Play(name="p", extra_vars=extra or {})
    task = SimpleNamespace(target=user, wave=None)
    return SimpleNamespace(vars=task_variables(inv, play, task), inventory=inv, extra_vars=dict(extra or {}))


def test_a_servers_own_entry_sets_the_limit_and_scratch_folder_of_its_lines(tmp_path):
    inv = _inventory(tmp_path)
    ctx = _ctx(inv)
    assert "command_line_limit" not in ctx.vars, "a user task's variables do not hold the server's"
    sv = server_vars(ctx, "exim01")
    assert line_limit(sv, 2047) == 8191 and sv["remote_temp"] == r"D:\Scratch"
    assert line_limit(server_vars(ctx, "lcs01"), LCS_LINE) == LCS_LINE, "another server keeps its default"
    assert server_vars(ctx, "lcs01") is ctx.vars


def test_extra_vars_still_win_over_a_servers_entry(tmp_path):
    inv = _inventory(tmp_path)
    ctx = _ctx(inv, {"command_line_limit": 4000})
    assert line_limit(server_vars(ctx, "exim01"), 2047) == 4000
    assert server_vars(ctx, "exim01")["remote_temp"] == r"D:\Scratch"
