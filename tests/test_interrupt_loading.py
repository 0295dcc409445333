"""Ctrl-C while `runner apply` loads the inventory, plans or opens the state store (seconds
on a 400-client estate) says that nothing was started and the command to run again, exit 99;
it is not a bare 'interrupted'."""
from __future__ import annotations

import pytest

from runner.errors import EXIT_INTERRUPTED
from tests.cli_support import cli
from tests.scenario_support import make_scenario


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["runner.apply.load_inventory", "runner.apply.build_plan",
                                   "runner.apply.bind_estate"])
def test_ctrl_c_while_loading_says_nothing_was_started_and_how_to_run_again(tmp_path, capsys, monkeypatch,
                                                                            where):
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=10)
    monkeypatch.setattr(where, _interrupt)
    args = ["apply", str(sc.playbook_path), "-i", str(sc.inventory), "--state", str(sc.state),
            "--limit", "wave:wave1"]
    code, text = cli(capsys, *args)
    assert code == EXIT_INTERRUPTED, text
    assert "nothing was started" in text and "no task ran" in text, text
    assert "to run again: runner apply " in text and "--limit wave:wave1" in text, text
    assert text.strip() != "interrupted"
