"""Bad input never gives a traceback: each case through the CLI, with the exit code of DESIGN.md
and a message that names the file (and line, host) to fix."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_support import cli
from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


@pytest.fixture()
def lab_inv(tmp_path) -> Path:
    return generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=3, seed=2)


def test_malformed_playbook_names_file_line_and_column(tmp_path, capsys, lab_inv):
    pb = tmp_path / "pb.yml"
    pb.write_text("- name: x\n  hosts: clients\n  steps:\n    - name: a\n      export_contacts: {}\n"
                  "      retires: 3\n")
    code, text = cli(capsys, "apply", str(pb), "-i", str(lab_inv), "--state", str(tmp_path / "s"))
    assert code == 4
    assert f"{pb}:6:7:" in text and "retires" in text and "retries" in text


def test_yaml_syntax_error_names_the_line(tmp_path, capsys, lab_inv):
    pb = tmp_path / "pb.yml"
    pb.write_text("- name: x\n  hosts: [clients\n")
    code, text = cli(capsys, "apply", str(pb), "-i", str(lab_inv), "--state", str(tmp_path / "s"))
    assert code == 4 and f"{pb}:" in text and "YAML" in text


def test_missing_playbook_and_missing_inventory(tmp_path, capsys, lab_inv):
    code, text = cli(capsys, "apply", str(tmp_path / "nope.yml"), "-i", str(lab_inv), "--state", str(tmp_path / "s"))
    assert code == 4 and "nope.yml: file not found" in text
    code, text = cli(capsys, "apply", GRADUAL, "-i", str(tmp_path / "none.yml"), "--state", str(tmp_path / "s"))
    assert code == 4 and "none.yml: file not found" in text


def test_inventory_user_on_an_unknown_client_host(tmp_path, capsys, lab_inv):
    text = lab_inv.read_text()
    bad = tmp_path / "lab" / "bad.yml"
    first_client = '"clients": ["pc0001"]'
    assert first_client in text
    bad.write_text(text.replace(first_client, '"clients": ["pc9999"]', 1))
    line = next(n for n, l in enumerate(bad.read_text().splitlines(), 1) if "pc9999" in l)
    for command in ("apply", "validate"):
        args = [command, GRADUAL, "-i", str(bad)] + (["--state", str(tmp_path / "s")] if command == "apply" else [])
        code, out = cli(capsys, *args)
        assert code == 4
        assert f"{bad}:{line}:" in out and "pc9999" in out and "not a host" in out


def test_lab_dir_that_is_not_a_lab_fails_before_the_run_naming_host_and_file(tmp_path, capsys, lab_inv):
    (tmp_path / "empty").mkdir()
    inv = tmp_path / "lab" / "elsewhere.yml"
    text = lab_inv.read_text()
    assert 'lab_dir: "."' in text
    inv.write_text(text.replace('lab_dir: "."', f'lab_dir: "{tmp_path / "empty"}"'))
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(tmp_path / "s"))
    assert code == 4
    assert "no lab at" in out and f"{tmp_path / 'empty' / 'lab.json'}:" in out
    assert re.search(r"lab_dir of host (pc|exim|lcs)\d+", out)
    assert not (tmp_path / "s" / "state.db").exists() or "run " not in out  # nothing ran


@pytest.mark.parametrize("content, expected", [
    ("not json", "lab.json:1:1:"),
    ('["a list"]', "must hold a JSON object"),
    ('{"hosts": {"pc0001": 5}}', "host 'pc0001'"),
    ('{"hosts": {}, "faults": {"global": {"drop": "lots"}}}', "drop='lots'"),
    ('{"hosts": {}, "faults": {"hosts": {"pc0001": {"timeout": 7}}}}', "timeout=7"),
])
def test_hostile_lab_json_is_an_input_error_not_a_crash(tmp_path, capsys, lab_inv, content, expected):
    (tmp_path / "lab" / "lab.json").write_text(content)
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(lab_inv), "--state", str(tmp_path / "s"))
    assert code == 4
    assert "lab.json" in out and expected in out


def test_lab_commands_on_a_directory_that_is_not_a_lab(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args in (["lab", "verify"], ["lab", "show"], ["lab", "faults", "drop=0.1"]):
        code, out = cli(capsys, *args, "--dir", str(tmp_path / "empty"))
        assert code == 4 and ("no lab" in out or "no lab manifest" in out), (args, out)


def test_bad_fault_rates_are_bad_options(tmp_path, capsys, lab_inv):
    for rate in ("drop=lots", "drop=2", "bogus=0.1"):
        code, out = cli(capsys, "lab", "faults", rate, "--dir", str(tmp_path / "lab"))
        assert code == 5 and "bad fault rate" in out
    assert json.loads((tmp_path / "lab" / "lab.json").read_text())["faults"]["global"].get("drop", 0) == 0
