"""cmd.exe reads a batch file in the console's OEM code page; a command line arrives as sent.

The lab reads a batch file as cmd.exe does (a host's ``codepage``, default cp437), so a
script written in UTF-8 hands its programs other characters than it holds. The runner's LCS
chunk scripts are written in the host's code page (``ssh_codepage``), and a command holding
a character outside it (a group named in Chinese) goes on the script's command line instead.
"""
from __future__ import annotations

import json
import sqlite3

import pytest

from runner.connections.lab import LabConnection
from runner.errors import PermanentFault
from runner.lab.generator import generate
from runner.lab.store import Lab
from runner.lab.verify import verify
from runner.lcs.chunks import ChunkScript
from runner.loader import load_inventory
from runner.windows.cmdline import Command, Quoted, chain
from runner.windows.scripts import codepage_name, console_codepage, encodable, feed_command

from test_fed_lines import Counted

NAMES = ["Zoë Ångström", "李伟 😀", "plain", "Łukasz Żółć", "José O'Brien"]


@pytest.fixture
def estate(tmp_path):
    inv = load_inventory(generate(tmp_path / "lab", clients=2, users_per_client=2, contacts=2, seed=6))
    return tmp_path, inv


def _lcs(inv):
    name = next(h for h in inv.hosts if h.startswith("lcs"))
    return name, LabConnection(inv.hosts[name], inv, None)


def _set_codepage(tmp_path, host, codepage):
    from runner.connections import lab as labconn
    path = tmp_path / "lab" / "lab.json"
    cfg = json.loads(path.read_text())
    cfg["hosts"][host]["codepage"] = codepage
    path.write_text(json.dumps(cfg))
    labconn._labs.clear()


@pytest.mark.parametrize("encoding, shown", [("cp437", "Zoë"), ("utf-8", "Zo├½")])
def test_the_lab_reads_a_batch_file_in_the_hosts_oem_code_page(estate, encoding, shown):
    _, inv = estate
    name, conn = _lcs(inv)
    conn.put(f"@echo off\r\necho {'Zoë'}\r\n".encode(encoding), r"C:\WINDOWS\Temp\t.cmd")
    res = conn.run(r'cmd /c "C:\WINDOWS\Temp\t.cmd"')
    assert res.stdout.strip() == shown


def test_a_hosts_codepage_in_lab_json_is_the_one_its_batch_files_are_read_in(estate):
    tmp_path, inv = estate
    name, _ = _lcs(inv)
    _set_codepage(tmp_path, name, "cp852")
    conn = LabConnection(inv.hosts[name], inv, None)
    conn.put("@echo off\r\necho Łukasz\r\n".encode("cp852"), r"C:\WINDOWS\Temp\t.cmd")
    assert conn.run(r'cmd /c "C:\WINDOWS\Temp\t.cmd"').stdout.strip() == "Łukasz"


def test_the_lab_findstr_copies_fed_bytes_that_are_not_utf8_as_they_came(estate):
    _, inv = estate
    name, conn = _lcs(inv)
    data = "echo Zoë Ångström\r\n".encode("cp437")  # not valid UTF-8
    path = r"C:\WINDOWS\Temp\fed.txt"
    assert conn.run_input(feed_command(path).render(), data).rc == 0
    assert Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs.read(path) == data


def _echoes(script, n, *, commutes):
    """``n`` commands echoing awkward names and appending their index to a file (their order)."""
    out = r"C:\WINDOWS\Temp\order.txt"
    for i in range(n):
        script.add(chain([Command("echo", f"{NAMES[i % len(NAMES)]} {i} " + "x" * 50),
                          Command("echo", str(i), ">>", Quoted(out))]), commutes=commutes)
    return out


@pytest.mark.parametrize("commutes", [False, True], ids=["ordered", "commuting"])
def test_a_chunk_script_gives_every_command_its_characters_and_keeps_order_unless_free(estate, commutes):
    _, inv = estate
    name, lab = _lcs(inv)
    conn = Counted(lab)
    s = ChunkScript(conn, name, inv.hosts[name].vars, ["chunk"], limit=2047)
    out = _echoes(s, 40, commutes=commutes)
    s.run()
    for i in range(40):
        sec = s.section(i)
        assert sec is not None and sec.ok, i
        assert sec.stdout.startswith(f"{NAMES[i % len(NAMES)]} {i} "), (i, sec.stdout)
    ran = [int(x) for x in Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs.read(out).decode().split()]
    assert sorted(ran) == list(range(40)), "each command ran once"
    if commutes:
        # what a cp437 script can carry first, then the rest on its line and the next
        carried = [i for i in range(40) if NAMES[i % len(NAMES)] not in ("李伟 😀", "Łukasz Żółć")]
        assert ran[:len(carried)] == carried
        assert len(conn.trips) <= 3 and conn.trips[0] == "run_input", conn.trips
    else:
        assert ran == list(range(40)), "commands that do not commute run in the order added"
    fs = Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs
    assert not [p for p in fs.listdir(r"C:\WINDOWS\Temp") if p.lower().startswith("runner-")]


def test_ssh_codepage_names_the_code_page_a_chunk_script_is_written_in(estate):
    tmp_path, inv = estate
    name, _ = _lcs(inv)
    _set_codepage(tmp_path, name, "cp852")
    inv.hosts[name].vars["ssh_codepage"] = "852"   # the server's own host variable
    conn = Counted(LabConnection(inv.hosts[name], inv, None))
    assert conn.codepage == "cp852"
    s = ChunkScript(conn, name, {}, ["chunk"], limit=2047)  # a task's vars do not say it
    for i in range(30):
        s.add(Command("echo", f"Łukasz Żółć {i} " + "x" * 60))
    s.run()
    assert conn.trips == ["run_input"], "cp852 carries Ł: one script"
    assert all(s.section(i).stdout.startswith(f"Łukasz Żółć {i} ") for i in range(30))


def test_code_page_names():
    assert codepage_name("850") == "cp850" and codepage_name("cp437") == "cp437"
    assert codepage_name("klingon") is None

    class Conn:
        codepage = "1252"
    assert console_codepage(object()) == "cp437" and console_codepage(Conn()) == "cp1252"
    assert encodable("Zoë", "cp437") and not encodable("李伟", "cp437") and not encodable("Ø", "cp437")


@pytest.mark.slow
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "not-declared"])
def test_the_lcs_servers_ssh_codepage_in_the_inventory_is_the_one_its_scripts_are_written_in(tmp_path, declared):
    """End to end: an LCS server whose console is cp852 (lab.json) gets its scripts in cp852
    when its inventory entry says ``ssh_codepage: cp852``, and names come out right; left at the
    default (cp437), names such as 'Łukasz' reach LCS changed, which verify reports."""
    import yaml
    from scenario_support import make_scenario
    sc = make_scenario(tmp_path, "gradual.yml", 2)
    _set_codepage(tmp_path, "lcs01", "cp852")
    if declared:
        data = yaml.safe_load(sc.inventory.read_text(encoding="utf-8"))
        def find(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "lcs01" and isinstance(v, dict) and "im_address" not in v:
                        v.setdefault("vars", {})["ssh_codepage"] = "cp852"
                        return True
                    if find(v):
                        return True
            return False
        assert find(data)
        sc.inventory.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    wrong = [u.alias for u in verify(sc.lab_dir).users if u.names_wrong]
    assert (wrong == []) if declared else wrong, wrong


def test_an_unknown_ssh_codepage_is_refused_naming_the_host(estate):
    from runner.connections.ssh import SSHConnection
    _, inv = estate
    name, _ = _lcs(inv)
    host = inv.hosts[name]
    host.vars["ssh_codepage"] = "klingon"
    with pytest.raises(PermanentFault) as exc:
        SSHConnection(host, inv, None)
    assert "ssh_codepage" in str(exc.value) and exc.value.host == name


@pytest.mark.slow
def test_a_gradual_run_keeps_every_contacts_name_and_verify_finds_one_changed(tmp_path):
    """End to end on a 12-client lab whose names hold characters in and outside cp437: every
    contact on LCS is named as in the registry; a name changed on LCS is what verify reports."""
    from scenario_support import make_scenario
    sc = make_scenario(tmp_path, "gradual.yml", 2)  # 19 names outside cp437, 31 in it
    names = [c["display_name"] for u in sc.manifest["users"].values() for m in u["machines"].values()
             for c in m["contacts"]]
    assert any(not encodable(n, "cp437") for n in names) and any(not n.isascii() and encodable(n, "cp437")
                                                                for n in names)
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    report = verify(sc.lab_dir)
    assert report.ok and not [u.alias for u in report.users if u.names_wrong]
    db = sqlite3.connect(sc.lab_dir / "hosts" / "lcs01" / "lcs.db")
    uid, uri, name = db.execute("SELECT user_instance_id, sip_uri, name FROM contacts "
                                "WHERE name IS NOT NULL AND name <> '' LIMIT 1").fetchone()
    with db:
        db.execute("UPDATE contacts SET name=? WHERE user_instance_id=? AND sip_uri=?",
                   (name.encode("utf-8").decode("cp437") + "!", uid, uri))
    wrong = [u for u in verify(sc.lab_dir).users if u.names_wrong]
    assert len(wrong) == 1 and uri in wrong[0].names_wrong[0]
    assert any("name(s) not as in the registry" in p for p in wrong[0].problems)


def test_fed_bytes_a_program_prints_come_back_as_an_ssh_client_reads_them(estate):
    _, inv = estate
    _, conn = _lcs(inv)
    res = conn.run_input('findstr /r /c:"^"', "echo Zoë\r\n".encode("cp437"))
    assert res.stdout == "echo Zoë\r\n"
    json.dumps(res.stdout, ensure_ascii=False).encode("utf-8")  # no surrogate left to trip a writer
