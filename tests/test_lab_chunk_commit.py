"""A chunk's work in the lab: its script's commands committed together, its scratch files cleaned.

- The LCS store groups the commits of a batch file's wmic commands (one transaction, each
  command in its own savepoint): a command that fails is undone alone, the others stay; a
  process killed mid-script leaves every command whole or absent, the survivors being the
  script's first ones (a resume's probe then finds the rest not done).
- ldifde imports a file in one transaction, entry by entry in savepoints: it stops at the
  first entry it cannot apply and keeps those before it, as ldifde does.
- ``dir /b /a-d`` lists a folder's files; a chunk's read (ChunkScript with ``clean``) lists
  ``runner-*`` once and deletes the files its own users' killed chunks left, never another
  user's (whose chunk may be running).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crash_inject import KILLED, run_killed
from runner.connections.base import CommandResult
from runner.lab.generator import generate
from runner.lab.lcs import LcsStore
from runner.lab.shell import Shell
from runner.lab.store import Lab
from runner.lcs.chunks import ChunkScript
from runner.lcs.exchange import owner_tag
from runner.windows.cmdline import Command

TEMP = r"C:\WINDOWS\Temp"
CONTACTS = [f"sip:friend{i}@contoso.com" for i in range(4)]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chunkcommit")
    generate(root / "lab", clients=2, users_per_client=1, contacts=2, seed=3)
    lab = root / "lab"
    man = json.loads((lab / "manifest.json").read_text())
    _, u = next(iter(man["users"].items()))
    guid = u["ad_guid"].upper()
    store = LcsStore(lab / "hosts" / man["lcs_server"] / "lcs.db", lab / "ad.db")
    store.create("MSFT_SIPESUserSetting", {"InstanceID": guid, "UserDN": f"CN={guid},DC=contoso,DC=com",
                                            "PrimaryURI": u["sip_uri"], "HomeServerDN": man["lcs_server_dn"],
                                            "Enabled": True})
    store.close()
    return lab


def _lab_user(lab: Path) -> tuple[str, str]:
    man = json.loads((lab / "manifest.json").read_text())
    _, u = next(iter(man["users"].items()))
    return man["lcs_server"], u["ad_guid"].upper()


def _script(guid: str, bad_at: int | None = None) -> str:
    lines = ["@echo off"]
    for i, uri in enumerate(CONTACTS):
        group = ",GroupID={63}" if i == bad_at else ""  # no such group: this create fails alone
        lines.append(f'wmic path MSFT_SIPESUserContactData create UserInstanceID="{guid}",'
                     f'SIPURI="{uri}",Name="Friend {i}",Subscribed=TRUE{group}')
    return "\r\n".join(lines) + "\r\n"


def _contacts(lab: Path, lcs: str, guid: str) -> list[str]:
    store = LcsStore(lab / "hosts" / lcs / "lcs.db")
    try:
        return [i.props["SIPURI"] for i in store.instances("MSFT_SIPESUserContactData", {"UserInstanceID": guid})]
    finally:
        store.close()


def test_a_batch_files_wmic_commands_are_kept_but_for_the_one_that_failed(template, tmp_path):
    lab_dir = tmp_path / "lab"
    shutil.copytree(template, lab_dir)
    lcs, guid = _lab_user(lab_dir)
    lab = Lab(lab_dir)
    lab.host(lcs).fs.write(TEMP + r"\chunk.cmd", _script(guid, bad_at=2).encode())
    res = Shell(lab, lab.host(lcs)).run(rf'cmd /c "{TEMP}\chunk.cmd"')
    assert res.stdout.count("Instance creation successful.") == 3, res.stdout + res.stderr
    assert "ERROR" in res.stdout + res.stderr
    assert _contacts(lab_dir, lcs, guid) == [CONTACTS[0], CONTACTS[1], CONTACTS[3]]


SHELL = """
import sys
from runner.lab.store import Lab
from runner.lab.shell import Shell
lab = Lab({lab!r})
r = Shell(lab, lab.host({host!r})).run({cmd!r})
sys.stdout.write(r.stdout + r.stderr)
"""


@pytest.mark.slow
def test_a_kill_anywhere_in_a_chunk_script_leaves_its_first_commands_whole_and_the_rest_absent(
        template, tmp_path):
    lcs, guid = _lab_user(template)
    for after in range(1, 30):
        lab_dir = tmp_path / f"k{after}"
        shutil.copytree(template, lab_dir)
        lab = Lab(lab_dir)
        lab.host(lcs).fs.write(TEMP + r"\chunk.cmd", _script(guid).encode())
        res = run_killed(SHELL.format(lab=str(lab_dir), host=lcs, cmd=rf'cmd /c "{TEMP}\chunk.cmd"'), after)
        seen = _contacts(lab_dir, lcs, guid)
        assert seen == CONTACTS[:len(seen)], f"killed after write {after}: {seen}"
        store = LcsStore(lab_dir / "hosts" / lcs / "lcs.db")
        for inst in store.instances("MSFT_SIPESUserContactData", {"UserInstanceID": guid}):
            assert inst.props["Name"].startswith("Friend ") and inst.props["Subscribed"] is True
        store.close()
        if res.returncode != KILLED:
            assert res.returncode == 0 and seen == CONTACTS, res.stdout + res.stderr
            break
    else:
        pytest.fail("the script never finished")


def _ldif(dns: list[str]) -> bytes:
    blocks = [f"dn: {dn}\r\nchangetype: modify\r\nreplace: description\r\ndescription: moved\r\n-\r\n"
              for dn in dns]
    return "\r\n".join(blocks).encode()


def _descriptions(lab: Path, dns: list[str]) -> list[list]:
    from runner.lab.exchange import Directory
    with Directory(lab / "ad.db") as d:
        return [d.get(dn, "description") for dn in dns]


def test_ldifde_imports_a_file_entry_by_entry_and_stops_at_the_first_it_cannot_apply(template, tmp_path):
    lab_dir = tmp_path / "lab"
    shutil.copytree(template, lab_dir)
    man = json.loads((lab_dir / "manifest.json").read_text())
    exim = next(n for n, h in json.loads((lab_dir / "lab.json").read_text())["hosts"].items()
                if h["role"] == "exchange_im")
    from runner.lab.exchange import Directory
    with Directory(lab_dir / "ad.db") as d:
        users = [dn for dn in d.dns_under(man.get("ad_domain_dn") or "DC=contoso,DC=com")
                 if dn.lower().startswith("cn=") and d.get(dn, "msExchIMAddress")][:2]
    assert len(users) == 2
    dns = [users[0], "CN=Nobody,DC=contoso,DC=com", users[1]]
    lab = Lab(lab_dir)
    lab.host(exim).fs.write(TEMP + r"\c.ldf", _ldif(dns))
    res = Shell(lab, lab.host(exim)).run(rf'ldifde -i -f "{TEMP}\c.ldf"')
    assert res.rc != 0 and "1 entries modified successfully" in res.stdout, res.stdout + res.stderr
    assert "error on entry starting on line 7" in res.stderr, res.stderr
    assert _descriptions(lab_dir, [users[0], users[1]]) == [["moved"], []]


def test_dir_lists_bare_file_names_and_says_when_nothing_matches(tmp_path):
    lab_dir = tmp_path / "lab"
    generate(lab_dir, clients=1, users_per_client=1, contacts=1, seed=2)
    lab = Lab(lab_dir)
    host = lab.host(lab.host_names()[0])
    host.fs.write(TEMP + r"\runner-b.ldf", b"x")
    host.fs.write(TEMP + r"\runner-A.cmd", b"y")
    host.fs.mkdir(TEMP + r"\runner-dir")
    shell = Shell(lab, host)
    res = shell.run(rf'dir /b /a-d "{TEMP}\runner-*"')
    assert (res.rc, res.stdout) == (0, "runner-A.cmd\r\nrunner-b.ldf\r\n")
    assert "runner-dir" in shell.run(rf'dir /b "{TEMP}\RUNNER-*"').stdout
    missing = shell.run(rf'dir /b "{TEMP}\nothing-*"')
    assert (missing.rc, missing.stdout, missing.stderr) == (1, "", "File Not Found\r\n")


class _ShellConnection:
    """What ChunkScript needs of a connection, straight over the lab shell of one host."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab, self.host = lab, host
        self.lines: list[str] = []

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        self.lines.append(command)
        return Shell(self.lab, self.lab.host(self.host)).run(command)

    def put(self, data: bytes, remote_path: str) -> None:
        self.lab.host(self.host).fs.write(remote_path, data)


def test_a_chunks_read_deletes_the_files_its_users_killed_chunks_left_and_no_one_elses(tmp_path):
    lab_dir = tmp_path / "lab"
    generate(lab_dir, clients=1, users_per_client=1, contacts=1, seed=2)
    lab = Lab(lab_dir)
    name = lab.host_names()[0]
    fs = lab.host(name).fs
    mine = [f"runner-{owner_tag('alice')}-0badf00d.ldf", f"runner-{owner_tag('bob')}-12345678.cmd"]
    other = f"runner-{owner_tag('carol')}-87654321.ldf"   # carol's chunk may be running now
    for n in (*mine, other):
        fs.write(TEMP + "\\" + n, b"left by a kill")
    conn = _ShellConnection(lab, name)
    script = ChunkScript(conn, name, {"remote_temp": TEMP}, ["alice", "bob"], limit=2047, clean=True,
                         script=False)
    first = script.add(Command("echo", "hello"))
    script.run()
    assert script.section(first) is not None and script.section(first).stdout.strip() == "hello"
    assert sorted(script.removed) == sorted(mine)
    assert sorted(fs.listdir(TEMP)) == [other]
    assert len(conn.lines) == 2   # the read, then the one line deleting the stale files
    again = ChunkScript(conn, name, {"remote_temp": TEMP}, ["alice", "bob"], limit=2047, clean=True,
                         script=False)
    again.add(Command("echo", "hello"))
    again.run()
    assert again.removed == [] and len(conn.lines) == 3   # nothing left: the read alone


def test_threads_writing_the_pool_at_once_queue_and_all_finish(template, tmp_path):
    """Engine threads of one process share lcs.db and ad.db: batch files (grouped commits),
    user-setting changes (lcs.db and ad.db in one transaction) and ldifde imports (ad.db)
    run at once on their own threads and connections; each waits its turn
    (runner.lab.store.process_write_lock), none deadlocks, and every write is there."""
    import threading

    from runner.lab.store import process_write_lock
    lab_dir = tmp_path / "lab"
    shutil.copytree(template, lab_dir)
    lcs, guid = _lab_user(lab_dir)
    man = json.loads((lab_dir / "manifest.json").read_text())
    others = [u for u in man["users"].values() if u["ad_guid"].upper() != guid]
    assert process_write_lock(lab_dir / "hosts" / lcs / "lcs.db") is process_write_lock(
        str(lab_dir / "hosts" / lcs / ".." / lcs / "lcs.db"))
    errors: list[BaseException] = []

    def batch() -> None:
        lab = Lab(lab_dir)
        for n in range(3):
            lab.host(lcs).fs.write(TEMP + rf"\chunk{n}.cmd", _script(guid).encode())
            res = Shell(lab, lab.host(lcs)).run(rf'cmd /c "{TEMP}\chunk{n}.cmd"')
            assert "Instance creation successful." in res.stdout or "Already exists" in res.stderr, res.stdout

    def enable(u: dict) -> None:
        store = LcsStore(lab_dir / "hosts" / lcs / "lcs.db", lab_dir / "ad.db")
        try:
            g = u["ad_guid"].upper()
            store.create("MSFT_SIPESUserSetting", {"InstanceID": g, "UserDN": f"CN={g},DC=contoso,DC=com",
                                                    "PrimaryURI": u["sip_uri"],
                                                    "HomeServerDN": man["lcs_server_dn"], "Enabled": True})
        finally:
            store.close()

    def guarded(fn, *a) -> None:
        try:
            fn(*a)
        except BaseException as exc:   # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(batch,)) for _ in range(3)]
    threads += [threading.Thread(target=guarded, args=(enable, u)) for u in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer never got its turn"
    assert not errors, errors
    assert sorted(_contacts(lab_dir, lcs, guid)) == sorted(CONTACTS)
    store = LcsStore(lab_dir / "hosts" / lcs / "lcs.db", lab_dir / "ad.db")
    try:
        for u in others:
            assert store.user(u["ad_guid"].upper()) is not None, u["alias"]
    finally:
        store.close()
