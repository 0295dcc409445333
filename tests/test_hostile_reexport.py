"""An export edited after it was written (issue 9): refused, with the command that recovers.

The import never uses an edited file, but before `runner state reexport`
every rerun and `--fresh` refused forever without saying what to do. Now the
refusal names the command; the command keeps the edited file aside and has
the user's export run again, and the rerun converges on the lab.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_support import cli
from runner.lab.generator import generate
from runner.state import StateStore

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


@pytest.fixture()
def exported(tmp_path, capsys, monkeypatch):
    """A small lab whose users are exported (nothing else done yet), and the state directory."""
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0.01")
    lab = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=3, seed=5).parent
    st = tmp_path / "st"
    code, text = cli(capsys, "apply", GRADUAL, "-i", str(lab / "inventory.yml"), "--state", str(st),
                     "--tags", "inventory,export")
    assert code == 0, text
    return lab, st


def _edit_merged(st: Path) -> tuple[str, Path]:
    merged = sorted((st / "artifacts" / "contacts").glob("*/merged.*.json"))[0]
    doc = json.loads(merged.read_text(encoding="utf-8"))
    doc["contacts"] = doc["contacts"][:1]  # someone "tidied" the export by hand
    merged.write_text(json.dumps(doc), encoding="utf-8")
    return merged.parent.name, merged


def test_an_edited_export_is_refused_with_the_command_that_recovers_and_the_rerun_converges(
        exported, capsys):
    lab, st = exported
    alias, merged = _edit_merged(st)
    edited = merged.read_bytes()
    apply = ["apply", GRADUAL, "-i", str(lab / "inventory.yml"), "--state", str(st)]
    command = f"runner state reexport --state {st} {alias}"
    for extra in ([], ["--fresh"]):
        code, text = cli(capsys, *apply, *extra)
        assert code == 2, text
        assert f"{merged} was changed after it was written" in text and command in text, text
        assert "RunnerError" not in text, "the user's message, not the name of a Python class"

    code, text = cli(capsys, *command.split()[1:])
    assert code == 0, text
    kept = sorted((st / "edited").rglob("merged.*.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == edited and kept[0].name == merged.name
    assert f"moved the edited {merged} to {kept[0]}" in text
    assert not merged.exists()

    code, text = cli(capsys, *apply)
    assert code == 0, text
    code, text = cli(capsys, "lab", "verify", "--dir", str(lab))
    assert code == 0 and "as expected" in text, text
    code, text = cli(capsys, *apply)  # converged: nothing left to do, nothing refused
    assert code == 0 and "changed=0" in text.split("TOTAL")[-1], text


def test_reexport_refuses_users_it_has_no_export_of_and_a_directory_in_use(exported, capsys):
    lab, st = exported
    code, text = cli(capsys, "state", "reexport", "--state", str(st), "nobody")
    assert code == 5 and "no export of 'nobody' is recorded" in text, text
    code, text = cli(capsys, "state", "reexport", "--state", str(st), " , ")
    assert code == 5, text
    alias = sorted(p.name for p in (st / "artifacts" / "contacts").iterdir())[0]
    with StateStore(st) as other:
        other.acquire_lock()  # a run is using the directory
        code, text = cli(capsys, "state", "reexport", "--state", str(st), alias)
        assert code == 1 and "another run is using the state directory" in text, text
    with StateStore(st) as store:
        assert store.export_tasks("export_contacts", alias) == 1  # nothing was reopened
