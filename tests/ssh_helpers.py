"""Helpers of the SSH tests: a tiny lab on disk, a test ForceCommand, a served lab on a free port."""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from runner.lab.serve import LabServer, ServeError
from runner.model import Host

# A stand-in for the lab shell, for the fault tests: `sleep N` sleeps, `drop` kills
# the sshd serving this session (the connection dies mid-command), `utf16 TEXT`
# prints TEXT the way wmic does, `exit N` returns N; anything else is echoed.
FAKE_SHELL = textwrap.dedent('''\
    import os, sys, time, signal
    cmd = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if "runner.lab.serve sftp" in cmd:
        os.execv(sys.executable, [sys.executable, "-m", "runner.lab.serve", "session", "--dir", LAB])
    local = os.environ["SSH_CONNECTION"].split()[2]
    if cmd.startswith("sleep "):
        time.sleep(float(cmd[6:]))
    elif cmd == "drop":
        sys.stdout.write("partial output\\n"); sys.stdout.flush()
        pid = os.getppid()
        while pid > 1:   # kill every sshd process above us, and nothing else
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                is_sshd = fh.read().split(b"\\0")[0].rsplit(b"/", 1)[-1].startswith(b"sshd")
            with open(f"/proc/{pid}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            if not is_sshd:
                break
            os.kill(pid, signal.SIGKILL)
            pid = parent
        time.sleep(5)
    elif cmd.startswith("utf16 "):
        sys.stdout.buffer.write(cmd[6:].encode("utf-16-le"))
    elif cmd.startswith("exit "):
        sys.stderr.write("failing\\n"); sys.exit(int(cmd[5:]))
    else:
        print(f"{local} {cmd}")
''')


def make_lab(root: Path, count: int) -> Path:
    """A minimal lab directory: lab.json with ``count`` client hosts and their fs dirs."""
    lab = root / "lab"
    hosts = [{"name": f"pc{i:04d}", "role": "client"} for i in range(1, count + 1)]
    lab.mkdir(parents=True)
    (lab / "lab.json").write_text(json.dumps({"seed": 1, "hosts": hosts, "faults": {"hosts": {}}}))
    for h in hosts:
        (lab / "hosts" / h["name"] / "fs" / "C" / "Temp").mkdir(parents=True)
    return lab


def serve(lab: Path, *, fake_shell: bool, allow_password_users: list[str] | None = None) -> LabServer:
    """Start a LabServer on a free port (tries a few random ones)."""
    session = None
    if fake_shell:
        script = lab.parent / "fake_shell.py"
        script.write_text(f"LAB = {str(lab)!r}\n" + FAKE_SHELL)
        session = f"{sys.executable} {script}"
    last: Exception | None = None
    for _ in range(10):
        server = LabServer(lab, port=random.randint(20000, 60000), session_command=session,
                           allow_password_users=allow_password_users or ())
        try:
            server.start()
            return server
        except ServeError as exc:
            last = exc
    raise RuntimeError(f"no free port: {last}")


def ssh_host(server: LabServer, name: str, **vars: object) -> Host:
    """An inventory Host for ``name`` of the served lab, with extra vars."""
    v = {"ssh_key_file": str(server.client_key), "ssh_known_hosts": str(server.known_hosts),
         "ssh_agent": False, "ssh_connect_timeout": 5, "ssh_exit_code_trailer": True}
    v.update(vars)
    return Host(name=name, connection="ssh", address=server.addresses[name], port=server.port,
                user=_user(), vars=v)


def _user() -> str:
    import pwd, os
    return pwd.getpwuid(os.geteuid()).pw_name


@contextmanager
def password_account(home: Path) -> Iterator[tuple[str, str]]:
    """A throw-away local account with a random password, for sshd's password login.

    Needs root (CI runs as root); skips otherwise. The account is an alias of
    the serving user's uid (``useradd -o -u``), so its sessions read and write
    the lab and run this interpreter exactly as the key sessions do, while sshd
    checks the account's own /etc/shadow entry. Deleted on exit.
    """
    if os.geteuid() != 0:
        pytest.skip("password login needs a local account with a password: run as root (CI does)")
    if not (shutil.which("useradd") and shutil.which("chpasswd") and shutil.which("userdel")):
        pytest.skip("useradd/chpasswd/userdel not installed (Debian package passwd)")
    name = f"runnerpw{os.getpid() % 100000}"
    password = "Pw-" + secrets.token_urlsafe(15) + "!"
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["useradd", "-o", "-u", str(os.geteuid()), "-g", str(os.getegid()), "-M",
                    "-d", str(home), "-s", "/bin/sh", "-c", "runner SSH password test", name],
                   check=True, capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True,
                       capture_output=True)
        yield name, password
    finally:
        # -f: the uid is in use (it is ours); no -r, the home is the test's own directory
        subprocess.run(["userdel", "-f", name], capture_output=True)


def write_inventory(server: LabServer, out: Path, *, user: str | None = None,
                    drop: tuple[str, ...] = (), **vars: object) -> Path:
    """Copy the served lab's SSH inventory to ``out`` with another user and/or other all-vars."""
    import yaml

    doc = yaml.safe_load(server.inventory_out.read_text(encoding="utf-8"))
    all_vars = doc["all"]["vars"]
    for key in drop:
        all_vars.pop(key, None)
    all_vars.update(vars)

    def set_user(group: dict) -> None:
        for entry in (group.get("hosts") or {}).values():
            entry["user"] = user
        for child in (group.get("children") or {}).values():
            set_user(child)

    if user is not None:
        set_user(doc["all"])
    out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


# --- an SSH server's view of one connection, without sshd --------------------------
class FakeTransport:
    """A paramiko Transport stand-in that behaves like OpenSSH towards session channels.

    It grants at most ``max_sessions`` open sessions (OpenSSH's MaxSessions)
    and refuses the next one with ``ChannelException(2, 'Connect failed')``,
    as sshd does; a closed session is freed ``lag`` seconds later (sshd
    frees it after the client's close arrives). Commands: ``sleep S`` answers
    after S seconds; ``die`` ends only its own channel without an exit
    status; ``drop`` kills the whole transport (every channel on it);
    anything else answers at once. ``client_peak`` (the most channels the
    client had open at once), ``peak`` (the server's count, which includes
    sessions closed but not yet freed) and ``refused`` are what a test looks at.
    """

    def __init__(self, max_sessions: int = 10, lag: float = 0.005) -> None:
        import threading
        self.max_sessions = max_sessions
        self.lag = lag
        self.active = True
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.client_open = 0
        self.client_peak = 0
        self.refused = 0
        self.sessions = 0
        self.channels: list[FakeChannel] = []

    def is_active(self) -> bool:
        return self.active

    def open_session(self, timeout: float | None = None, **_: object) -> "FakeChannel":
        import paramiko
        with self.lock:
            if not self.active:
                raise paramiko.SSHException("Unable to open channel.")
            if self.open >= self.max_sessions:
                self.refused += 1
                raise paramiko.ChannelException(2, "Connect failed")
            self.open += 1
            self.client_open += 1
            self.sessions += 1
            self.peak = max(self.peak, self.open)
            self.client_peak = max(self.client_peak, self.client_open)
            chan = FakeChannel(self)
            self.channels.append(chan)
            return chan

    def free(self) -> None:
        import threading
        with self.lock:
            self.client_open -= 1

        def dec() -> None:
            with self.lock:
                self.open -= 1
        if self.lag:
            threading.Timer(self.lag, dec).start()
        else:
            dec()

    def close(self) -> None:
        with self.lock:
            self.active = False
            chans = list(self.channels)
        for chan in chans:
            chan.die()


class FakeChannel:
    """One session channel of a FakeTransport (the methods SSHConnection uses)."""

    def __init__(self, transport: FakeTransport) -> None:
        import threading
        self.transport = transport
        self.closed = False
        self._freed = False
        self.status_event = threading.Event()
        self._status: int | None = None
        self._out = b""
        self._eof = threading.Event()
        self._timeout: float | None = None

    # the server side
    def exec_command(self, command: str) -> None:
        import threading
        if command.startswith("sleep "):
            threading.Timer(float(command[6:]), self.answer, args=(0, b"slept\n")).start()
        elif command == "die":
            self.die()
        elif command == "drop":
            threading.Timer(0.02, self.transport.close).start()
        else:
            self.answer(0, f"{command}\n".encode())

    def answer(self, status: int, out: bytes) -> None:
        if self._eof.is_set():
            return
        self._out = out
        self._status = status
        self._eof.set()
        self.status_event.set()

    def die(self) -> None:
        """The server closes the channel without an exit status (paramiko marks it closed)."""
        self.closed = True
        self._eof.set()
        self.status_event.set()

    # the client side
    def recv_stderr_ready(self) -> bool:
        return False

    def recv_stderr(self, n: int) -> bytes:
        return b""

    def settimeout(self, t: float | None) -> None:
        self._timeout = t

    def recv(self, n: int) -> bytes:
        import socket
        if not self._eof.wait(self._timeout):
            raise socket.timeout()
        data, self._out = self._out, b""
        return data

    def recv_ready(self) -> bool:
        return bool(self._out)

    def get_transport(self) -> FakeTransport:
        return self.transport

    def exit_status_ready(self) -> bool:
        return self._status is not None

    def recv_exit_status(self) -> int:
        return -1 if self._status is None else self._status

    def close(self) -> None:
        self.closed = True
        if not self._freed:
            self._freed = True
            self.transport.free()


def fake_ssh_connection(max_sessions: int = 10, lag: float = 0.005, **vars: object):
    """An SSHConnection whose transports are FakeTransports (a new one on every reconnect).

    Returns the connection and the list of transports it opened, in order.
    """
    from runner.connections.ssh import SSHConnection
    host = Host(name="lcs01", connection="ssh", address="127.0.0.1", port=22,
                vars={"ssh_agent": False, **vars})
    conn = SSHConnection(host, None, None)
    opened: list[FakeTransport] = []

    def connect() -> FakeTransport:
        conn._drop_transport()
        t = FakeTransport(max_sessions, lag)
        opened.append(t)
        conn._transport = t
        if getattr(conn, "_connected_once", False):
            conn.reconnects = getattr(conn, "reconnects", 0) + 1
        conn._connected_once = True
        return t

    conn._connect = connect   # type: ignore[method-assign]
    connect()                 # connected up front, so the first commands need no connect
    return conn, opened
