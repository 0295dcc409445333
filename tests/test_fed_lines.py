"""A file delivered by the line that uses it: the line's standard input, copied to the file by
``findstr /r /c:"^" > FILE``, then used (a chunk's script run, an LDIF file imported), in one
round trip instead of a put and a run.

- The lab's findstr copies its input byte for byte, whatever the lines hold (quotes, ``&``,
  ``%``, ``^``, Unicode, U+2028, empty lines), and a session's input goes to the first
  program that reads it, as on a real host.
- A chunk's script, and a read that needs more than one line, is one round trip on a
  connection that feeds (``run_input``), with the same outcome as the put and run that a
  connection without it still gets.
- An input cut short in transfer (the lab's ``put_truncated``) runs nothing.
"""
from __future__ import annotations

import pytest

from runner import hostenv
from runner.connections.base import CommandResult
from runner.connections.lab import LabConnection
from runner.errors import TransientFault
from runner.lab.generator import generate
from runner.lab.store import Lab
from runner.lcs.chunks import ChunkScript, import_and_read, ldap_any
from runner.lcs.exchange import IM_ATTRIBUTES, Directory, Query, im_user_query
from runner.windows.scripts import feed_command, feeds, run_delivering
from runner.loader import load_inventory
from runner.windows.cmdline import Command, Quoted, chain

from lab_fixtures import im_clear_changes, set_put_truncated

AWKWARD = ['say "hi" & exit', "100% ^done^ | more", "", "Zoë Ångström 中文 – ok", "a\u2028b\x0cc", "", "end"]


@pytest.fixture
def estate(tmp_path):
    inv = load_inventory(generate(tmp_path / "lab", clients=2, users_per_client=2, contacts=2, seed=6))
    return tmp_path, inv


def _conn(inv, prefix):
    name = next(h for h in inv.hosts if h.startswith(prefix))
    return name, LabConnection(inv.hosts[name], inv, None)


class Counted:
    """A connection counting its round trips by kind; ``feeding=False`` hides ``run_input``
    (a connection that can only put and run)."""

    def __init__(self, conn, feeding: bool = True) -> None:
        self._conn = conn
        self.host = conn.host
        self.trips: list[str] = []
        if hasattr(conn, "codepage"):
            self.codepage = conn.codepage
        if feeding:
            self.run_input = self._run_input
        hostenv.system_root(self)  # learned once per connection: not one of the trips counted
        self.trips.clear()

    def run(self, command: str, *, timeout=None) -> CommandResult:
        self.trips.append("run")
        return self._conn.run(command, timeout=timeout)

    def _run_input(self, command: str, data: bytes, *, timeout=None) -> CommandResult:
        self.trips.append("run_input")
        return self._conn.run_input(command, data, timeout=timeout)

    def put(self, data: bytes, path: str) -> None:
        self.trips.append("put")
        self._conn.put(data, path)

    def get(self, path: str) -> bytes:
        self.trips.append("get")
        return self._conn.get(path)

    def close(self) -> None:
        self._conn.close()


def _faults(tmp_path, host, rate):
    set_put_truncated(tmp_path / "lab", host, rate)


def test_the_lab_findstr_copies_a_fed_file_byte_for_byte(estate):
    _, inv = estate
    name, conn = _conn(inv, "lcs")
    data = ("\r\n".join(AWKWARD) + "\r\n").encode("utf-8")
    path = r"C:\WINDOWS\Temp\runner-fed.txt"
    res = conn.run_input(chain([feed_command(path), Command("type", Quoted(path))]).render(), data)
    assert res.rc == 0, res
    assert Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs.read(path) == data
    assert res.stdout.encode("utf-8") == data


def test_a_sessions_input_goes_to_the_first_program_that_reads_it(estate):
    _, inv = estate
    name, conn = _conn(inv, "lcs")
    a, b = r"C:\WINDOWS\Temp\a.txt", r"C:\WINDOWS\Temp\b.txt"
    res = conn.run_input(chain([Command("echo", "first"), feed_command(a), feed_command(b)]).render(), b"one\r\ntwo\r\n")
    fs = Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs
    assert res.stdout == "first \r\n"  # cmd.exe echoes the space before &
    assert fs.read(a) == b"one\r\ntwo\r\n" and fs.read(b) == b"", "the second reader found the input taken"


def _script(conn, host, vars, n=40, *, read=False, **kw):
    s = ChunkScript(conn, host, vars, ["chunk"], limit=2047, script=not read, **kw)
    for i in range(n):   # well over one 2,047-character line
        s.add(Command("echo", f"command {i} " + "x" * 60), read=read)
    return s


@pytest.mark.parametrize("read", [False, True], ids=["change", "read"])
def test_a_chunk_too_long_for_a_line_is_one_fed_round_trip(estate, read):
    """A change's script, and a read in several lines, is one ``run_input`` on a connection that
    feeds; without it, a put and a run (a change) or one line per 2,047 characters (a read).
    Every command's outcome is the same either way."""
    _, inv = estate
    name, lab = _conn(inv, "lcs")
    seen = {}
    for feeding in (True, False):
        conn = Counted(lab, feeding)
        s = _script(conn, name, inv.hosts[name].vars, read=read)
        s.run()
        seen[feeding] = [s.section(i).stdout for i in range(40)]
        assert all(s.section(i).ok for i in range(40))
        if feeding:
            assert conn.trips == ["run_input"]
        else:
            assert (set(conn.trips) == {"run"} and len(conn.trips) >= 3) if read else conn.trips == ["put", "run"]
    assert seen[True] == seen[False]
    assert all(f"command {i} " in seen[True][i] for i in range(40))
    left = Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs
    assert not [p for p in left.listdir(r"C:\WINDOWS\Temp") if p.lower().startswith("runner-")], "scripts deleted"


def test_a_fed_script_cut_short_runs_nothing_and_is_retried(estate):
    tmp_path, inv = estate
    name = next(h for h in inv.hosts if h.startswith("lcs"))
    _faults(tmp_path, name, 1.0)
    conn = Counted(LabConnection(inv.hosts[name], inv, None))
    s = _script(conn, name, inv.hosts[name].vars)
    with pytest.raises(TransientFault, match="cut short"):
        s.run()
    assert conn.trips == ["run_input"] and all(s.section(i) is None for i in range(40))




@pytest.mark.parametrize("feeding", [True, False], ids=["fed", "put"])
def test_an_ldif_import_is_fed_with_its_line(estate, feeding):
    tmp_path, inv = estate
    name, lab = _conn(inv, "exim")
    users = list(inv.users.values())
    vars = inv.hosts[name].vars
    changes = im_clear_changes(Directory(lab, name, vars, owner=users[0].alias), users)
    conn = Counted(lab, feeding)
    query = Query(ldap_any("msExchIMAddress", [u.im_address for u in users]), IM_ATTRIBUTES)
    sec, found = import_and_read(conn, name, vars, [u.alias for u in users], changes, [query])
    assert sec is not None and sec.ok, sec
    assert conn.trips == (["run_input"] if feeding else ["put", "run"])
    assert found == [], "the read-back finds no user still holding an msExchIMAddress"
    assert all(not Directory(lab, name, vars).search(im_user_query(u.im_address).ldap_filter, ["cn"]) for u in users)


def test_a_line_too_long_with_its_feed_falls_back_to_a_put(estate):
    """``run_delivering`` feeds only when the line with the findstr in front still fits."""
    _, inv = estate
    name, lab = _conn(inv, "lcs")
    conn = Counted(lab)
    path = r"C:\WINDOWS\Temp\runner-long.txt"
    line = Command("type", Quoted(path), "&", "echo", "x" * (2047 - 20 - len(path)))
    res = run_delivering(conn, line, data=b"hello\r\n", path=path, limit=2047)
    assert conn.trips == ["put", "run"] and res.stdout.startswith("hello\r\n")
    assert feeds(conn) and not feeds(Counted(lab, feeding=False))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import os
    from ssh_helpers import serve
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = tmp_path_factory.mktemp("fedlab") / "lab"
    generate(lab, clients=2, users_per_client=1, contacts=2, seed=5)
    server = serve(lab, fake_shell=False)
    yield server
    server.stop()


@pytest.mark.ssh
def test_over_real_ssh_a_fed_file_arrives_whole_past_the_channel_window(served):
    """Over the served lab's sshd: 3 MiB of input (more than paramiko's 2 MiB channel window, so
    the send waits for the host to read) lands byte for byte, and a chunk's script is one
    ``run_input``; a plain ``run`` still never waits on its input."""
    from runner.connections.ssh import SSHConnection
    from ssh_helpers import ssh_host
    name = next(h for h in served.addresses if h.startswith("lcs"))
    conn = SSHConnection(ssh_host(served, name), None, None)
    try:
        line = ("\r\n".join(AWKWARD) + "\r\n").encode("utf-8")
        data = line * (3 * 1024 * 1024 // len(line) + 1)
        path = r"C:\WINDOWS\Temp\runner-big.txt"
        res = conn.run_input(chain([feed_command(path), Command("echo", "done")]).render(), data)
        assert res.rc == 0 and res.stdout.strip() == "done", res
        assert conn.get(path) == data
        assert conn.run("echo plain").stdout.strip() == "plain"
        counted = Counted(conn)
        s = _script(counted, name, {})
        s.run()
        assert counted.trips == ["run_input"]
        assert all(s.section(i).ok and f"command {i} " in s.section(i).stdout for i in range(40))
    finally:
        conn.close()


# -- the client lines (runner.steps._clients.run_built) -------------------------------------

def _client_reads(n: int = 30) -> list:
    """Reads well over one 2,047-character line, ``%SystemDrive%`` among them."""
    return [Command("echo", "%SystemDrive%")] + [Command("echo", f"read {i} " + "y" * 80) for i in range(n)]


def _temp_listing(inv, name):
    fs = Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs
    return sorted(f for f in fs.listdir(r"C:\WINDOWS\Temp") if f.lower().startswith("runner-"))


def test_a_clients_lines_are_one_fed_script_named_after_its_owner(estate):
    from runner.steps import _clients as cl
    _, inv = estate
    name, lab = _conn(inv, "pc")
    for owner, trips in ((None, None), (cl.ScriptOwner("user:alice"), ["run_input"])):
        conn = Counted(lab)
        sections, _ = cl.run_sections(conn, _client_reads(), limit=2047, owner=owner)
        assert trips is None and len(conn.trips) >= 2 or conn.trips == trips, conn.trips
        assert sections[0].stdout.strip() == "C:", "%SystemDrive% expands in the script as on the line"
        assert all(s.ok and f"read {i} " in s.stdout for i, s in enumerate(sections[1:]))
    assert _temp_listing(inv, name) == [], "the script deleted itself"


def test_a_cut_off_script_is_deleted_by_its_owners_next_line_and_no_one_elses(estate):
    from runner.steps import _clients as cl
    from runner.windows.scripts import owner_tag
    _, inv = estate
    name, lab = _conn(inv, "pc")
    fs = Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs
    mine, theirs = (rf"C:\WINDOWS\Temp\runner-{owner_tag(o)}-0badf00d.cmd" for o in ("user:alice", "user:bob"))
    for path in (mine, theirs):
        fs.write(path, b"@echo off\r\necho left by a killed run\r\n")
    cl.run_sections(Counted(lab), [Command("ver")], limit=2047, owner=cl.ScriptOwner("user:alice"))  # one line
    assert _temp_listing(inv, name) == [theirs.rsplit("\\", 1)[1]], "bob's task may still be running it"
    fs.write(mine, b"@echo off\r\n")
    cl.run_sections(Counted(lab), _client_reads(), limit=2047, owner=cl.ScriptOwner("user:alice"))  # a script
    assert _temp_listing(inv, name) == [theirs.rsplit("\\", 1)[1]]


def test_a_clients_script_that_never_ran_is_sent_again_line_by_line(estate):
    """An input cut short (the end mark missing) or a script file that could not be written (a
    ``remote_temp`` that does not exist) runs nothing: the lines then go one by one."""
    from runner.steps import _clients as cl
    tmp_path, inv = estate
    name = next(h for h in inv.hosts if h.startswith("pc"))
    for owner, rate in ((cl.ScriptOwner("host:" + name), 1.0), (cl.ScriptOwner("host:" + name, r"C:\NoSuchDir"), 0.0)):
        _faults(tmp_path, name, rate)
        conn = Counted(LabConnection(inv.hosts[name], inv, None))
        sections, _ = cl.run_sections(conn, _client_reads(), limit=2047, owner=owner)
        assert conn.trips[0] == "run_input" and set(conn.trips[1:]) == {"run"} and len(conn.trips) >= 3
        assert all(s is not None and s.ok for s in sections)
    _faults(tmp_path, name, 0.0)


def test_lines_a_batch_file_would_read_otherwise_go_one_by_one(estate):
    """A ``%`` a batch file reads differently from a command line (a lone one, an undefined
    variable, ``%^ERRORLEVEL%``) keeps the lines apart; check mode never writes a script."""
    from runner.steps import _clients as cl
    from runner.windows.scripts import batch_safe
    assert batch_safe('echo "%SystemRoot%\\Temp" %ProgramFiles%') and not batch_safe("call echo %^ERRORLEVEL%")
    assert not batch_safe("echo 100%") and not batch_safe("echo %NOSUCHVAR%")
    assert not batch_safe(r'reg load HKU\x "C:\Documents and Settings\Jürgen\NTUSER.DAT"'), "OEM code page"
    assert not batch_safe("echo " + "x" * 8000), "findstr skips a piped line of 8 KiB"
    _, inv = estate
    name, lab = _conn(inv, "pc")
    conn = Counted(lab)
    cl.run_sections(conn, [*_client_reads(), Command("call", "echo", "%^ERRORLEVEL%")], limit=2047,
                    owner=cl.ScriptOwner("host:x"))
    assert set(conn.trips) == {"run"} and len(conn.trips) >= 2

    class Ctx:
        def __init__(self, check=False, **vars):
            self.check, self.vars = check, vars
    assert cl.script_owner(Ctx(check=True), "host:x") is None
    assert cl.script_owner(Ctx(), "host:x") == cl.ScriptOwner("host:x")
    assert cl.script_owner(Ctx(remote_temp=r"D:\Scratch "), "host:x") == cl.ScriptOwner("host:x", r"D:\Scratch")
    assert cl.script_owner(Ctx(remote_temp='D:\\100%"'), "host:x") is None, "a folder a line cannot carry"


def test_a_clients_script_goes_to_remote_temp_when_the_inventory_names_one(estate):
    from runner.steps import _clients as cl
    _, inv = estate
    name, lab = _conn(inv, "pc")
    fs = Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs
    fs.mkdir(r"C:\Scratch")
    conn = Counted(lab)
    sent: list[str] = []
    fed = lab.run_input
    lab.run_input = lambda command, data, **kw: (sent.append(command), fed(command, data, **kw))[1]
    sections, _ = cl.run_sections(conn, _client_reads(), limit=2047, owner=cl.ScriptOwner("user:alice", r"C:\Scratch"))
    assert conn.trips == ["run_input"] and all(s.ok for s in sections)
    assert "C:\\Scratch\\runner-" in sent[0] and "SystemRoot" not in sent[0], sent
    assert fs.listdir(r"C:\Scratch") == [] and _temp_listing(inv, name) == []


def test_an_owner_may_also_delete_the_scripts_of_targets_that_run_nothing_on_the_host(estate):
    from runner.steps import _clients as cl
    from runner.windows.scripts import owner_tag
    _, inv = estate
    name, lab = _conn(inv, "pc")
    fs = Lab(inv.hosts[name].vars["lab_dir"]).host(name).fs
    paths = {o: rf"C:\WINDOWS\Temp\runner-{owner_tag(o)}-0badf00d.cmd" for o in ("user:alice", "user:bob", "user:eve")}
    for reads in ([Command("ver")], _client_reads()):  # one line, then a script
        for path in paths.values():
            fs.write(path, b"@echo off\r\n")
        cl.run_sections(Counted(lab), reads, limit=2047, owner=cl.ScriptOwner("user:alice", others=("user:bob",)))
        assert _temp_listing(inv, name) == [paths["user:eve"].rsplit("\\", 1)[1]], "only eve's is kept"


@pytest.mark.slow
def test_a_resumed_export_deletes_the_cut_off_scripts_of_every_user_of_a_machine(tmp_path):
    """A kill mid-script leaves the script of the user whose task ran it. When the resumed
    export finds nothing to do, only the first user of the machine runs a line (the others take
    its reading): that line deletes every user's, not only its own (found by bench/stress_kill.py)."""
    from scenario_support import make_scenario
    from runner.windows.scripts import owner_tag
    sc = make_scenario(tmp_path, "gradual.yml", 3, clients=4)
    assert sc.apply().code == 0
    man = sc.manifest
    lab = Lab(sc.lab_dir)
    planted = {}
    for machine in (m for m in man["machines"] if sum(m in u["clients"] for u in man["users"].values()) > 1):
        fs, root = lab.host(machine).fs, lab.host(machine).environment()["SystemRoot"]
        for alias in (a for a, u in man["users"].items() if machine in u["clients"]):
            path = rf"{root}\Temp\runner-{owner_tag('user:' + alias)}-0badf00d.cmd"
            fs.write(path, b"@echo off\r\nrem left by a killed run\r\n")
            planted.setdefault(machine, []).append(path)
    assert planted, "a machine with two users"
    run = sc.apply("--fresh")
    assert run.code == 0, run.out[-2000:]
    assert any(t["module"] == "export_contacts" and t["status"] == "ok" for t in run.tasks)
    left = {m: [p for p in paths if lab.host(m).fs.exists(p)] for m, paths in planted.items()}
    assert not any(left.values()), left


@pytest.mark.ssh
def test_over_real_ssh_a_line_that_ends_before_reading_its_input_reports_its_own_error(served):
    """A line that never reads its input (its redirection's folder does not exist) ends at
    once: the host's error comes back, not a lost connection or a timeout, and the connection
    stays usable. (OpenSSH's sshd takes and drops input sent after the command ended; the
    runner also stops sending once the exit status or the channel's close has come.)"""
    import time
    from runner.connections.ssh import SSHConnection
    from ssh_helpers import ssh_host
    name = next(h for h in served.addresses if h.startswith("lcs"))
    conn = SSHConnection(ssh_host(served, name), None, None)
    try:
        data = b"x" * 80 + b"\r\n"
        data *= 3 * 1024 * 1024 // len(data)  # past the channel window: the send would wait
        began = time.monotonic()
        res = conn.run_input(feed_command(r"C:\no such folder\runner-x.txt").render(), data, timeout=60)
        assert res.rc == 1 and "cannot find the path" in res.stderr, res
        assert time.monotonic() - began < 30, "ended with the command, not at the timeout"
        assert conn.run("echo still here").stdout.strip() == "still here"
    finally:
        conn.close()


def test_a_users_own_line_claims_the_machine_so_a_later_first_reading_keeps_their_script(tmp_path):
    """A user with nothing exported on a machine exports it without reading it first; once that
    user's line has run there, another user's reading of the machine is not the step's first and
    deletes only its own cut-off scripts: the first user's may be running."""
    from types import SimpleNamespace
    from stepctx import StepCtx
    from runner.steps import export_contacts as ec
    from runner.windows.scripts import owner_tag
    inv = load_inventory(generate(tmp_path / "lab", clients=2, users_per_client=2, contacts=2, seed=6))
    machine = next(h for h in inv.hosts if h.startswith("pc"))
    first, second = [u for u in inv.users.values() if machine in u.clients][:2]
    lab = Lab(inv.hosts[machine].vars["lab_dir"]).host(machine)
    temp = lab.environment()["SystemRoot"] + r"\Temp"
    paths = {u.alias: rf"{temp}\runner-{owner_tag('user:' + u.alias)}-0badf00d.cmd" for u in (first, second)}
    task = SimpleNamespace(step=SimpleNamespace(name="Export"), play_index=1, wave=None)

    def ctx(run_id):
        c = StepCtx(inv, {machine: LabConnection(inv.hosts[machine], inv, None)}, tmp_path)
        c.run_id, c.task = run_id, task
        return c
    for run_id, claimed in (("run-a", False), ("run-b", True)):
        for p in paths.values():
            lab.fs.write(p, b"@echo off\r\n")
        if claimed:
            ec._claim(ctx(run_id), machine)  # what export_one and read_current do before their lines
        ec.probe_host(ctx(run_id), second, machine)
        left = sorted(u for u, p in paths.items() if lab.fs.exists(p))
        assert left == ([first.alias] if claimed else []), (claimed, left)
