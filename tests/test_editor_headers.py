"""Editor and shell (issue 11 part 5): every shipped and generated playbook and inventory
names its schema for yaml-language-server, by a path that leads to it; click's shell
completion answers for runner's commands, options and files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
PREFIX = "# yaml-language-server: $schema="


def schema_of(path: Path) -> Path:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(PREFIX), f"{path}: {first!r}"
    target = (path.parent / first[len(PREFIX):]).resolve()
    assert target.is_file(), f"{path}: {target} does not exist"
    return target


@pytest.mark.parametrize("path", sorted((REPO / "playbooks").glob("*.yml")) + sorted((REPO / "inventories").glob("*.yml")),
                         ids=lambda p: p.name)
def test_every_shipped_file_names_its_schema(path):
    kind = "playbook" if path.parent.name == "playbooks" else "inventory"
    assert schema_of(path) == REPO / "schemas" / f"{kind}.schema.json"


def test_a_generated_lab_inventory_names_the_inventory_schema(tmp_path):
    inv = generate(tmp_path / "deep" / "lab", clients=2, users_per_client=1, contacts=2, seed=1)
    assert schema_of(Path(inv)) == REPO / "schemas" / "inventory.schema.json"


def complete(words: str, cword: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMP_WORDS": words, "COMP_CWORD": str(cword),
           "_RUNNER_COMPLETE": "bash_complete"}
    proc = subprocess.run([sys.executable, "-m", "runner"], env=env, capture_output=True, text=True, timeout=60)
    return proc.stdout.splitlines()


def test_shell_completion_completes_commands_options_and_files():
    assert "plain,apply" in complete("runner ap", 1)
    assert {"plain,--list-hosts", "plain,--list-tasks", "plain,--list-tags"} <= set(complete("runner apply --list", 2))
    assert complete("runner apply play", 2) == ["file,play"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "_RUNNER_COMPLETE": "bash_source"}
    script = subprocess.run([sys.executable, "-m", "runner"], env=env, capture_output=True, text=True, timeout=60)
    assert "complete -o nosort -F _runner_completion runner" in script.stdout


def _commands(group, path=()):
    import click
    for name, cmd in sorted(group.commands.items()):
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + (name,))


def test_no_help_text_shows_raw_markup(capsys):
    from runner.cli import cli, run
    seen = 0
    for path in [()] + [p for p, _ in _commands(cli)]:
        code = run([*path, "--help"])
        text = capsys.readouterr().out
        assert code == 0 and "Usage: runner" in text, path
        for mark in ("``", "`", "**", ":func:", ":class:", "\b", ".. "):
            assert mark not in text, f"runner {' '.join(path)} --help shows {mark!r}:\n{text}"
        seen += 1
    assert seen >= 10


def test_lab_faults_help_lists_every_fault_kind(capsys):
    from runner.cli import run
    from runner.lab.faults import KINDS
    assert run(["lab", "faults", "--help"]) == 0
    text = capsys.readouterr().out
    for kind in KINDS:
        assert f"  {kind} " in text
