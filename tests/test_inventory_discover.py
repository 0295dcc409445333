"""`runner inventory discover`: each user's clients read off the machines, nothing on them changed."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from runner.cli import run
from runner.lab.generator import generate
from runner.lab.store import Lab

CONTACTS_KEY = r"Software\Microsoft\Exchange\Messenger\Profiles"
STRANGER = "S-1-5-21-1004336348-1177238915-682003330-9999"
NO_LIST_SID = "S-1-5-21-1004336348-1177238915-682003330-9998"


def _content(p: Path) -> str:
    """A file's content: the rows of a lab hive (SQLite, whose header bytes a reader may rewrite), else its sha256."""
    if p.read_bytes()[:16] == b"SQLite format 3\x00":
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
        finally:
            db.close()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _fs_digest(lab: Lab) -> dict[str, str]:
    """The content of every file under every host's fs/ (NTUSER.DAT files included)."""
    out = {}
    for name in lab.host_names():
        root = lab.path / "hosts" / name / "fs"
        for p in sorted(root.rglob("*")) if root.is_dir() else []:
            if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal")):
                out[str(p.relative_to(lab.path))] = _content(p)
    return out


def _state(lab: Lab) -> dict[str, object]:
    hosts = {n: [(m.name, m.file, m.in_use) for m in lab.host(n).registry.mounts()] for n in lab.host_names()}
    return {"mounts": hosts, "files": _fs_digest(lab)}


@pytest.fixture()
def estate(tmp_path: Path) -> tuple[Lab, Path, dict]:
    """A generated lab whose inventory has no clients, plus a stranger's list, a listless profile and a
    user on no machine."""
    inv = generate(tmp_path / "lab", clients=8, users_per_client=2, contacts=3, seed=3)
    lab = Lab(tmp_path / "lab")
    man = json.loads((lab.path / "manifest.json").read_text())
    h = lab.host("pc0002")
    with h.bulk():
        h.add_user_profile(STRANGER, r"C:\Documents and Settings\stranger",
                           items=[(CONTACTS_KEY + r"\http://im.contoso.com/instmsg/aliases/stranger\Contacts",
                                   [("x@im.contoso.com", "REG_SZ", "X")])])
    # a user of the estate with a profile but no contact list on pc0003: not a client of theirs
    someone = next(a for a, u in man["users"].items() if "pc0003" not in u["clients"])
    with lab.host("pc0003").bulk():
        lab.host("pc0003").add_user_profile(man["users"][someone]["sid"], rf"C:\Documents and Settings\{someone}2",
                                            items=[(r"Software\Microsoft\MessengerService", [("X", "REG_DWORD", 1)])])
    doc = yaml.safe_load(inv.read_text())
    for u in doc["users"].values():
        u.pop("clients")
    doc["users"]["nomachine"] = {"im_address": "nomachine@im.contoso.com", "wave": "wave1",
                                 "sid": NO_LIST_SID}
    bare = lab.path / "bare.yml"
    bare.write_text(yaml.safe_dump(doc))
    return lab, bare, man


def test_discover_fills_in_every_users_clients_and_changes_nothing(
        estate: tuple[Lab, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab, bare, man = estate
    roaming = [a for a, u in man["users"].items() if len(u["clients"]) > 1]
    assert roaming, "the seed should give a user lists on several machines"
    before = _state(lab)
    since = time.time()
    out = tmp_path / "out" / "discovered.yml"
    rc = run(["inventory", "discover", "-i", str(bare), "-o", str(out), "--forks", "3"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert lab.mutations_since(since) == []          # the lab's journal: no mutating command ran
    assert _state(lab) == before                     # no hive left loaded, no file touched
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    for alias, u in man["users"].items():
        assert sorted(doc["users"][alias]["clients"]) == sorted(u["clients"]), alias   # inventory order
    assert "clients" not in doc["users"]["nomachine"]
    assert f"SID {STRANGER} holds a contact list on pc0002 but matches no user" in cap.err
    assert "1 user(s) found on no machine: nomachine" in cap.err
    # the result is an inventory the runner accepts (lab_dir rebased to OUT's folder)
    assert run(["validate", "playbooks/gradual.yml", "-i", str(out)]) == 0


def test_an_unreachable_client_keeps_the_users_it_had(estate: tuple[Lab, Path, dict], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lab, bare, man = estate
    cfg = json.loads((lab.path / "lab.json").read_text())
    cfg["faults"]["hosts"]["pc0001"] = {"down": 1.0}
    (lab.path / "lab.json").write_text(json.dumps(cfg))
    doc = yaml.safe_load(bare.read_text())
    on_pc1 = [a for a, u in man["users"].items() if "pc0001" in u["clients"]]
    doc["users"][on_pc1[0]]["clients"] = ["pc0001"]
    bare.write_text(yaml.safe_dump(doc))
    out = tmp_path / "d.yml"
    assert run(["inventory", "discover", "-i", str(bare), "-o", str(out)]) == 3   # the README's unreachable
    err = capsys.readouterr().err
    assert "pc0001: not read" in err and "ERROR: 1 client(s) not read: pc0001" in err and f"{out} was written" in err
    got = yaml.safe_load(out.read_text())["users"][on_pc1[0]]["clients"]
    assert "pc0001" in got and set(got) - {"pc0001"} == set(man["users"][on_pc1[0]]["clients"]) - {"pc0001"}


def test_no_client_read_is_exit_3_and_writes_nothing(estate: tuple[Lab, Path, dict], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    lab, bare, _ = estate
    doc = yaml.safe_load(bare.read_text())
    doc["all"]["vars"]["lab_dir"] = str(tmp_path / "no-such-lab")   # a wrong lab_dir: every client fails
    wrong = tmp_path / "wrong.yml"
    wrong.write_text(yaml.safe_dump(doc))
    out = tmp_path / "d.yml"
    out.write_text("# the previous result\n")
    assert run(["inventory", "discover", "-i", str(wrong), "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "ERROR: no client could be read (0/8 client(s) read" in err and f"{out} was not written" in err
    assert "pc0001: not read" in err and "Traceback" not in err
    assert out.read_text() == "# the previous result\n"


def test_discover_never_writes_over_its_input(estate: tuple[Lab, Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    lab, bare, _ = estate
    before = bare.read_bytes()
    assert run(["inventory", "discover", "-i", str(bare), "-o", str(bare)]) == 5
    err = capsys.readouterr().err
    assert f"-o {bare} is the -i inventory" in err and "keeps no comments" in err
    assert bare.read_bytes() == before
    alias = bare.with_name("alias.yml")
    alias.symlink_to(bare.name)          # the same file by another name (a symlink is not a regular file)
    assert run(["inventory", "discover", "-i", str(bare), "-o", str(alias)]) == 5
    hard = bare.with_name("hard.yml")
    os.link(bare, hard)                  # a hard link: the same file, a regular one
    assert run(["inventory", "discover", "-i", str(hard), "-o", str(bare)]) == 5
    assert "is the -i inventory" in capsys.readouterr().err
    assert bare.read_bytes() == before


@contextmanager
def _served(lab: Path, clients: int, users_per_client: int, seed: int) -> Iterator[object]:
    """A generated lab served over real OpenSSH (skipped without sshd); stopped afterwards."""
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    from ssh_helpers import serve

    generate(lab, clients=clients, users_per_client=users_per_client, contacts=2, seed=seed)
    server = serve(lab, fake_shell=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.ssh
def test_discover_over_ssh_needs_the_host_keys_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssh_helpers import write_inventory

    with _served(tmp_path / "lab", 2, 1, 5) as server:
        known = tmp_path / "known_hosts"
        inv = write_inventory(server, tmp_path / "inv.yml", ssh_known_hosts=str(known))
        out = tmp_path / "d.yml"
        assert run(["inventory", "discover", "-i", str(inv), "-o", str(out)]) == 3
        err = capsys.readouterr().err
        assert "is not in" in err and "--accept-new-host-keys" in err and not out.exists()
        assert run(["inventory", "discover", "-i", str(inv), "-o", str(out), "--accept-new-host-keys"]) == 0
        assert known.read_text().count("\n") >= 1 and out.is_file()
        assert run(["inventory", "discover", "-i", str(inv), "-o", str(out)]) == 0   # keys known now


@pytest.mark.ssh
def test_discover_reads_the_clients_over_ssh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _served(tmp_path / "lab", 3, 2, 4) as server:
        since = time.time()
        out = tmp_path / "d.yml"
        rc = run(["inventory", "discover", "-i", str(server.inventory_out), "-o", str(out)])
        assert rc == 0, capsys.readouterr().err
        man = json.loads((tmp_path / "lab" / "manifest.json").read_text())
        doc = yaml.safe_load(out.read_text())
        assert ({a: sorted(u["clients"]) for a, u in doc["users"].items()}
                == {a: sorted(u["clients"]) for a, u in man["users"].items()})
        assert doc["all"]["children"]["clients"]["hosts"]["pc0001"]["connection"] == "ssh"
        assert Lab(tmp_path / "lab").mutations_since(since) == []
