"""Every command writing a file the user names refuses an existing path that is not a regular file.

The writes are atomic (a temporary file, then os.replace), which would swap a device (`-o /dev/null`
as root), a named pipe or a symbolic link for a regular file. A FIFO, a folder and a symlink in
tmp_path stand in for /dev/null, which a test must never touch.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runner.artifacts import check_output_path, write_output
from runner.cli import run
from runner.errors import OptionsError
from runner.state import StateStore
from test_inventory_cut import _computers, _users


def _specials(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    target = tmp_path / "target.yml"
    target.write_text("kept\n")
    link = tmp_path / "link.yml"
    link.symlink_to(target)
    return {"named pipe": fifo, "symbolic link": link, "folder": folder}


def test_check_output_path_takes_new_and_regular_files_only(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new.yml") == tmp_path / "new.yml"
    (tmp_path / "old.yml").write_text("x")
    write_output(tmp_path / "old.yml", b"y")
    assert (tmp_path / "old.yml").read_bytes() == b"y"
    for kind, path in _specials(tmp_path).items():
        with pytest.raises(OptionsError, match=f"{path} is a {kind}"):
            write_output(path, b"z")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode) and (tmp_path / "link.yml").is_symlink()
    assert (tmp_path / "target.yml").read_text() == "kept\n"


def _commands(tmp_path: Path, out: Path) -> list[list[str]]:
    users, computers = tmp_path / "users.ldf", tmp_path / "computers.ldf"
    users.write_bytes(_users(2))
    computers.write_bytes(_computers())
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  children:\n    clients:\n      hosts: {}\nusers:\n  a: {im_address: a@im.contoso.com}\n")
    StateStore(tmp_path / "empty-state").close()  # a store with no run: report has something to write
    return [["inventory", "from-ldif", str(users), "--computers", str(computers), "-o", str(out)],
            ["inventory", "discover", "-i", str(inv), "-o", str(out)],
            ["report", "--state", str(tmp_path / "empty-state"), "-o", str(out)]]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["from-ldif", "discover", "report"])
@pytest.mark.parametrize("kind", ["named pipe", "symbolic link"])
def test_commands_refuse_a_special_output_with_exit_5(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      which: int, kind: str) -> None:
    out = _specials(tmp_path)[kind]
    assert run(_commands(tmp_path, out)[which]) == 5
    err = capsys.readouterr().err
    assert f"{out} is a {kind}" in err and "nothing was written" in err and "Traceback" not in err
    assert (stat.S_ISFIFO(os.lstat(out).st_mode) if kind == "named pipe" else out.is_symlink())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_lab_export_ldif_refuses_a_special_file_in_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["lab", "init", "--dir", str(tmp_path / "lab"), "--clients", "2", "--users-per-client", "1"]) == 0
    out = tmp_path / "ad"
    out.mkdir()
    os.mkfifo(out / "computers.ldf")
    capsys.readouterr()
    assert run(["lab", "export-ldif", "--dir", str(tmp_path / "lab"), "-o", str(out)]) == 5
    assert f"{out / 'computers.ldf'} is a named pipe" in capsys.readouterr().err
    assert not (out / "users.ldf").exists()   # both checked before either is written
    (out / "computers.ldf").unlink()
    assert run(["lab", "export-ldif", "--dir", str(tmp_path / "lab"), "-o", str(out)]) == 0
