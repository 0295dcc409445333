"""The served lab's sessions forked by its warm fork server (runner.lab.forkserver), with the
session process of old as the fallback: the same answers either way, over real sshd."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from runner.connections.ssh import SSHConnection
from runner.errors import ConnectionFault
from runner.lab.generator import generate

from ssh_helpers import serve, ssh_host

pytestmark = pytest.mark.ssh

COMMAND = r'reg query "HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion" /v CurrentVersion & echo 100%% ^& "a&b" & exit /b 3'


@pytest.fixture
def lab(tmp_path):
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = tmp_path / "lab"
    generate(lab, clients=2, users_per_client=1, contacts=2, seed=5)
    return lab


def _answers(server, command=COMMAND):
    """(rc, stdout, stderr) of ``command`` on each client, and a file put then read back."""
    out = {}
    for name, addr in sorted(server.addresses.items()):
        if not addr.startswith("127.10."):
            continue
        conn = SSHConnection(ssh_host(server, name), None, None)
        try:
            res = conn.run(command)
            conn.put("zoë & co\r\n".encode("utf-8"), r"C:\fs-check.txt")
            out[name] = (res.rc, res.stdout, res.stderr, conn.get(r"C:\fs-check.txt"))
        finally:
            conn.close()
    return out


def _session_children(server) -> list[int]:
    """Pids of the fork server's children (its forked sessions) right now."""
    pid = server._forkserver.pid
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError):
                pass
    return found


def test_the_fork_server_answers_as_the_session_process_did_and_is_its_fallback(lab, monkeypatch):
    monkeypatch.setenv("RUNNER_LAB_FORKSERVER", "0")
    plain = serve(lab, fake_shell=False)
    try:
        assert "_forward.py" not in plain.config.read_text() and plain._forkserver is None
        before = _answers(plain)
    finally:
        plain.stop()
    monkeypatch.delenv("RUNNER_LAB_FORKSERVER")
    server = serve(lab, fake_shell=False)
    try:
        assert "_forward.py" in server.config.read_text() and server.shell_socket.exists()
        assert _answers(server) == before and before
        # an SFTP session is a long-lived session: while it is open, it is the server's child
        name = next(n for n, a in server.addresses.items() if a.startswith("127.10."))
        conn = SSHConnection(ssh_host(server, name), None, None)
        try:
            conn.put(b"x", r"C:\open.txt")
            assert _session_children(server), "the SFTP session runs in a child of the fork server"
        finally:
            conn.close()
        # the server gone: every session runs in a process of its own, with the same answers
        os.killpg(server._forkserver.pid, signal.SIGKILL)
        server._forkserver.wait()
        assert _answers(server) == before
    finally:
        server.stop()
    assert not server.shell_socket.exists() or server._forkserver is None


def test_a_drop_fault_through_the_fork_server_drops_the_ssh_connection(lab):
    server = serve(lab, fake_shell=False)
    try:
        client = next(h for h, a in server.addresses.items() if a.startswith("127.10."))
        meta_path = server.lab_dir / "lab.json"
        meta = json.loads(meta_path.read_text())
        meta["faults"]["hosts"][client] = {"drop": 1.0}
        meta_path.write_text(json.dumps(meta))
        conn = SSHConnection(ssh_host(server, client), None, None)
        try:
            with pytest.raises(ConnectionFault):
                conn.run("echo hi")
        finally:
            conn.close()
        deadline = time.monotonic() + 5
        while _session_children(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _session_children(server), "the dropped session's child has ended"
    finally:
        server.stop()


def test_a_forked_session_imports_nothing_it_could_have_inherited(lab):
    """The server imports what a session runs before it forks: a session that imported the
    lab shell's programs itself spent 45 of an echo's 55 ms of CPU doing it."""
    import subprocess
    import sys
    probe = (
        "import sys, runner.lab.forkserver as fs, runner.lab.shell as sh\n"
        "before = set(sys.modules)\n"
        f"sh.run_session({str(lab)!r}, 'pc0001', 'echo hi & wmic os get Caption & ldifde -? & reg query HKLM')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('runner')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout
    assert out.strip().splitlines()[-1] == "[]"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _forkservers_of(lab_dir) -> list[int]:
    """Pids of live fork servers started for ``lab_dir``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
            except OSError:
                continue
            if b"runner.lab.forkserver" in argv and str(lab_dir).encode() in argv and _alive(int(entry)):
                found.append(int(entry))
    return found


def test_a_serve_that_cannot_listen_leaves_no_fork_server(lab):
    from runner.lab.serve import LabServer, ServeError
    first = serve(lab, fake_shell=False)
    other = lab.parent / "other-lab"  # the same addresses (same seed), on the port the first holds
    generate(other, clients=2, users_per_client=1, contacts=2, seed=5)
    try:
        second = LabServer(other, port=first.port)
        with pytest.raises(ServeError, match="cannot listen"):
            second.start()
        assert second._forkserver is None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _forkservers_of(other):
            time.sleep(0.1)
        assert not _forkservers_of(other), "the second serve's fork server is still running"
    finally:
        first.stop()


def test_the_fork_server_stops_when_its_serve_is_killed(tmp_path):
    """``kill -9`` of ``runner lab serve`` cannot pass anything on: the fork server sees it is
    orphaned and ends (it was left running, a process per killed serve)."""
    import subprocess
    import sys
    lab = tmp_path / "lab"
    generate(lab, clients=1, users_per_client=1, contacts=1, seed=5)
    sock = tmp_path / "fs.sock"
    pidfile = tmp_path / "fs.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'runner.lab.forkserver', '--dir', {str(lab)!r}, "
        f"'--socket', {str(sock)!r}], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n")])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (sock.exists() and pidfile.exists() and pidfile.read_text()):
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        assert _alive(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the fork server outlived its killed parent")
