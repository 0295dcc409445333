"""Mistakes an administrator makes on the command line: each gives a message naming what to fix
and the exit code of DESIGN.md (1 error, 4 invalid input, 5 bad options), never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from cli_support import cli

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


@pytest.mark.parametrize("command", [["apply", GRADUAL], ["status"], ["report"]])
def test_state_pointing_at_a_file_is_a_bad_option(tmp_path, capsys, command):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a directory")
    code, text = cli(capsys, *command, "--state", str(afile))
    assert code == 5
    assert "--state" in text and "is a file" in text


@pytest.mark.parametrize("command", [["apply", GRADUAL], ["status"], ["report"]])
def test_state_directory_holding_a_foreign_state_db_is_an_error_naming_it(tmp_path, capsys, command):
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "state.db").write_text("my notes, not SQLite")
    code, text = cli(capsys, *command, "--state", str(tmp_path / "st"))
    assert code == 1
    assert f"{tmp_path / 'st' / 'state.db'}: not a usable checkpoint store" in text


def test_state_directory_that_cannot_be_created_is_an_error(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    code, text = cli(capsys, "apply", GRADUAL, "--state", str(afile / "sub"))
    assert code == 1
    assert f"cannot use {afile / 'sub'} as the state directory" in text


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory) -> Path:
    from runner.lab.generator import generate
    return generate(tmp_path_factory.mktemp("lab") / "lab", clients=2, users_per_client=1, contacts=2, seed=2).parent


def test_lab_show_of_an_unknown_name_is_a_bad_argument_naming_the_lab_and_a_close_name(capsys, small_lab):
    code, text = cli(capsys, "lab", "show", "nosuchhost", "--dir", str(small_lab))
    assert code == 5
    assert f"no host or user named 'nosuchhost' in the lab {small_lab}" in text
    code, text = cli(capsys, "lab", "show", "pc002", "--dir", str(small_lab))
    assert code == 5 and "did you mean 'pc0002'?" in text


def test_lab_verify_on_a_directory_without_a_lab_says_how_to_create_one_once(tmp_path, capsys):
    code, text = cli(capsys, "lab", "verify", "--dir", str(tmp_path))
    assert code == 4
    assert f"{tmp_path} holds no lab (create one with `runner lab init --dir {tmp_path}`)" in text
    assert text.count("manifest.json") == 1


def test_tab_indented_yaml_says_tab_at_its_line(tmp_path, capsys):
    pb = tmp_path / "pb.yml"
    pb.write_text("- name: a\n  hosts: clients\n\tsteps: []\n")
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  children:\n\tclients: {}\n")
    for args in (["validate", str(pb)], ["validate", GRADUAL, "-i", str(inv)]):
        code, text = cli(capsys, *args)
        assert code == 4
        assert ":3:1: YAML syntax error: a tab character; YAML indents with spaces only" in text


def test_a_playbook_item_that_is_not_a_mapping_is_named_once_as_a_play(tmp_path, capsys):
    pb = tmp_path / "pb.yml"
    pb.write_text("- name: ok\n  hosts: all\n  steps: [{name: s, inventory_clients: {}}]\n- just a string\n")
    code, text = cli(capsys, "validate", str(pb))
    assert code == 4
    assert f"{pb}:4:3: item 2 of the document must be a play: a mapping with name, hosts and steps\n" in text
    assert "'the document'" not in text and "in play" not in text


def test_an_inventory_that_is_a_list_gets_one_message(tmp_path, capsys):
    inv = tmp_path / "inv.yml"
    inv.write_text("- pc0001\n- pc0002\n")
    code, text = cli(capsys, "validate", GRADUAL, "-i", str(inv))
    assert code == 4
    assert f"{inv}:1:1: the inventory must be a mapping with 'all:' and 'users:', not a list" in text
    assert "1 problem(s) found" in text


def test_lab_verify_of_one_migrated_wave_passes_while_the_server_still_serves_the_others(tmp_path, capsys):
    from runner.lab.generator import generate
    inv = generate(tmp_path / "lab", clients=4, users_per_client=2, contacts=3, seed=5)
    state = str(tmp_path / "st")
    code, text = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", state, "--limit", "wave:wave1")
    assert code == 0, text
    code, text = cli(capsys, "lab", "verify", "--dir", str(inv.parent), "--wave", "wave1")
    assert code == 0, text
    assert "not decommissioned" not in text and "still in service" not in text
    code, text = cli(capsys, "lab", "verify", "--dir", str(inv.parent))
    assert code == 1 and "exim01 not decommissioned" in text  # the whole lab: other waves are left


def test_a_typo_in_the_retry_delay_scale_is_a_bad_option_not_silently_full_backoff(capsys, monkeypatch):
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0,01")
    code, out = cli(capsys, "apply", GRADUAL)
    assert code == 5 and "RUNNER_RETRY_DELAY_SCALE='0,01'" in out


def test_serving_a_directory_that_is_not_a_lab_is_invalid_input(tmp_path, capsys):
    code, out = cli(capsys, "lab", "serve", "--dir", str(tmp_path))
    assert code == 4 and "is not a lab" in out


def test_serving_a_lab_with_a_broken_lab_json_names_its_line(tmp_path, capsys):
    (tmp_path / "lab.json").write_text('{"hosts": {\n  "pc0001": {"address": }\n}}')
    code, out = cli(capsys, "lab", "serve", "--dir", str(tmp_path))
    assert code == 4 and f"{tmp_path / 'lab.json'}:2:" in out
