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
