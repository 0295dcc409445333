"""What the README and the help say matches what the commands do (a new user's list of
small mismatches): resumed tasks' word, the --json events, lab verify's exit codes, lab
faults' printed rates, status's next command, list-hosts of plays without users, a play
without waves stopping, one Messenger product, plurals, -e messages."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_support import cli
from runner import events
from runner.errors import OptionsError

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


def test_readme_names_the_word_resumed_tasks_are_shown_with():
    assert "shown as `skipped`" not in README
    assert "`done earlier" in README


def test_readme_lists_every_json_event():
    line = README[README.index("`--json` writes JSON-lines events"):][:400]
    kinds = ["run_start", "play_start", "step_start", "task", "wave_end", "run_end"]
    assert all(f"`{k}`" in line for k in kinds), line
    assert {events.RUN_START, events.PLAY_START, events.STEP_START, events.WAVE_END, events.RUN_END} <= set(kinds)


def test_lab_verify_of_a_directory_without_a_lab_exits_as_its_help_says(tmp_path, capsys):
    code, text = cli(capsys, "lab", "verify", "--dir", str(tmp_path / "nonexistent"))
    _, helptext = cli(capsys, "lab", "verify", "--help")
    assert f"{code} if" in " ".join(helptext.split()) and "no lab" in text, (code, helptext)


def test_lab_faults_prints_every_kind_it_accepts(tmp_path, capsys):
    from runner.lab.faults import KINDS
    from runner.lab.generator import generate
    generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=1)
    code, text = cli(capsys, "lab", "faults", "--dir", str(tmp_path / "lab"), "drop=0.05")
    assert code in (0, None)
    shown = json.loads(text)["global"]
    assert set(KINDS) <= set(shown) and shown["drop"] == 0.05 and shown["put_truncated"] == 0.0


def test_status_next_command_leaves_out_output_options_and_start_at_step():
    from runner.status import next_command
    remaining = {"plays": [{"waves": {"wave2": 3}}]}
    cmd = ("runner apply playbooks/gradual.yml -i inv.yml -q --limit wave:wave1 -vv --start-at-step 'Enable users'"
           " --tags wave")
    assert next_command(cmd, remaining) == "runner apply playbooks/gradual.yml -i inv.yml --tags wave --limit wave:wave2"


def test_extra_vars_message_quotes_the_whole_value():
    from runner.extravars import parse_extra_vars
    with pytest.raises(OptionsError) as exc:
        parse_extra_vars(["bad name=1"])
    assert "-e 'bad name=1'" in str(exc.value) and "'bad'" in str(exc.value)


def test_no_output_writes_a_plural_in_brackets():
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "runner").rglob("*.py")
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "entr(y/ies)" in line
                 or "entr\\(y/ies\\)" in line]
    assert not offenders, offenders


def test_messenger_builds_of_one_product_are_one_line_in_status():
    from runner.status import summarise_facts
    hosts = {f"pc{i}": {"messenger": {"installed": True, "product": "Windows Messenger 5.1", "version": v}}
             for i, v in enumerate(["5.1", "5.1", "5.1.0715"])}
    hosts["pc9"] = {"messenger": {"installed": True, "product": "Windows Messenger", "version": "4.7.2009"}}
    assert summarise_facts(hosts)["messenger"] == {"Windows Messenger 5.1": 3, "Windows Messenger 4.7.2009": 1}


def test_list_hosts_names_users_only_for_plays_that_move_users(tmp_path, capsys):
    from runner.lab.generator import generate
    inv = generate(tmp_path / "lab", clients=4, users_per_client=1, contacts=2, seed=1)
    code, text = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(tmp_path / "st"), "--list-hosts")
    assert code == 0
    plays = [ln for ln in text.splitlines() if ln.startswith("play #")]
    assert plays[0] == "play #1 (hosts: clients): Gather client facts", plays
    assert "users: all" in plays[1]


def test_a_play_without_waves_that_stops_says_the_play_stopped():
    import io
    from runner.events import WAVE_END, Event
    from runner.output import HumanOutput
    out = io.StringIO()
    o = HumanOutput(stream=out, tty=False)
    o(Event(WAVE_END, {"wave": None, "stopped": True, "reason": "2 of 4 hosts failed (50%) > 10%"}))
    o(Event(WAVE_END, {"wave": "wave1", "stopped": True, "reason": "x"}))
    assert out.getvalue().splitlines() == ["the play stopped: 2 of 4 hosts failed (50%) > 10%",
                                           "WAVE [wave1] stopped the play: x"]
