"""``runner lab serve``: the lab's hosts behind Debian's real OpenSSH sshd on loopback.

How it works (the SSH protocol is entirely OpenSSH's; we only route sockets):

- Every simulated host gets a loopback address (127.0.x.y, from lab.json;
  assigned and written back when absent). One sshd listens on at most 16
  sockets, so instead of one daemon per 16 addresses a small acceptor of
  ours listens on ``address:port`` for every host and hands each accepted
  socket to a fresh ``sshd -i`` (inetd mode) as its stdin/stdout. A served
  lab of 1,000 hosts is 1,000 listening sockets in one process.
- sshd runs with a generated host key (``DIR/ssh/ssh_host_ed25519_key``), a
  generated client key pair (``DIR/ssh/id_ed25519``, in authorized_keys),
  public-key authentication only, and ``ForceCommand`` running this module's
  ``session`` entry point. The session reads the host from the local address
  in ``SSH_CONNECTION`` and either runs ``SSH_ORIGINAL_COMMAND`` in the lab's
  Windows shell (``runner.lab.shell.run_session``, in-process; its exit code 255, a
  lab connection fault, becomes a dropped SSH connection) or,
  for the sftp subsystem, relays SFTP to ``/usr/lib/openssh/sftp-server``
  while rewriting every path: ``/C:/x/y`` (how OpenSSH for Windows names
  ``C:\\x\\y``) becomes ``DIR/hosts/<host>/fs/C/x/y``; nothing can escape
  the host's ``fs`` directory. With the lab fault ``put_truncated``, a file
  written over SFTP is cut to half its size once sftp-server has closed it.
- sshd exposes how each session was authenticated (``ExposeAuthInfo yes``,
  ``$SSH_USER_AUTH``): a session that logged on by key has no network
  credentials, as on Windows, and the lab shell refuses it every UNC path
  (runner.lab.logon); a password session reaches the lab's shares.
- A host whose lab fault ``down`` is 1.0 has its connections closed at once
  (the client sees a dropped connection).
- It writes ``DIR/ssh/inventory.yml`` (the lab's users and groups, hosts with
  ``connection: ssh``; ``messenger_package_local`` naming the file behind the
  lab's package share, which its key sessions cannot read) and
  ``DIR/ssh/known_hosts``, and stops on Ctrl-C/SIGTERM.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from runner.errors import InputError, RunnerError

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
EXIT_TRAILER = b"\0runner-exit-code=%d\0"   # see session_main; parsed by runner.connections.ssh
INSTALL_HINT = "install Debian's OpenSSH server: apt-get install openssh-server"


class ServeError(RunnerError):
    """The lab cannot be served (sshd missing, address in use, no lab)."""


# --------------------------------------------------------------------------
# lab.json: hosts and their loopback addresses
# --------------------------------------------------------------------------
def _host_entries(meta: dict) -> list[dict]:
    hosts = meta.get("hosts", [])
    if isinstance(hosts, dict):
        return [dict(v or {}, name=k) if isinstance(v, dict) else {"name": k} for k, v in hosts.items()]
    return [h if isinstance(h, dict) else {"name": str(h)} for h in hosts]


def lab_addresses(lab_dir: Path) -> dict[str, str]:
    """Host name -> loopback address from lab.json, assigning 127.0.1.1... to hosts without one.

    Assigned addresses are written back into lab.json so the lab shell and
    every later serve agree on them.
    """
    path = lab_dir / "lab.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{lab_dir} is not a lab (no lab.json); create one with `runner lab init`") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg}", str(path), exc.lineno, exc.colno) from None
    entries = _host_entries(meta)
    used = {e["address"] for e in entries if e.get("address")}
    changed = False
    counter = 0
    for e in entries:
        if e.get("address"):
            continue
        while True:
            counter += 1
            addr = f"127.0.{1 + (counter - 1) // 254}.{1 + (counter - 1) % 254}"
            if addr not in used:
                break
        e["address"] = addr
        used.add(addr)
        changed = True
    if changed:
        raw = meta.get("hosts")
        if isinstance(raw, dict):
            for e in entries:
                if isinstance(raw.get(e["name"]), dict):
                    raw[e["name"]]["address"] = e["address"]
                else:
                    raw[e["name"]] = {"address": e["address"]}
        else:
            meta["hosts"] = entries
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    out: dict[str, str] = {}
    for e in entries:
        if not e["address"].startswith("127."):
            raise InputError(f"host {e['name']} has address {e['address']} outside 127.0.0.0/8", str(path))
        out[e["name"]] = e["address"]
    return out


def _down_hosts(lab_dir: Path) -> set[str]:
    try:
        meta = json.loads((lab_dir / "lab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    hosts = (meta.get("faults") or {}).get("hosts") or {}
    return {h for h, f in hosts.items() if isinstance(f, dict) and float(f.get("down", 0) or 0) >= 1.0}


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------
class LabServer:
    """Serve a lab over OpenSSH: ``start()``, then ``stop()`` (or use as a context manager)."""

    def __init__(self, lab_dir: Path, *, port: int = 2222, inventory_out: Path | None = None,
                 session_command: str | None = None, allow_password_users: Sequence[str] = ()) -> None:
        """``allow_password_users``: local accounts that may also log in with their password
        (checked by sshd against /etc/shadow; everyone else needs the lab's key)."""
        self.lab_dir = Path(lab_dir).resolve()
        self.allow_password_users = [str(u) for u in allow_password_users]
        self.port = port
        self.ssh_dir = self.lab_dir / "ssh"
        self.inventory_out = Path(inventory_out).resolve() if inventory_out else self.ssh_dir / "inventory.yml"
        self.session_command = session_command
        self.addresses: dict[str, str] = {}
        self.by_address: dict[str, str] = {}
        self._listeners: list[socket.socket] = []
        self._children: dict[int, tuple[subprocess.Popen, str]] = {}
        self._children_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._forkserver: subprocess.Popen | None = None

    # paths
    @property
    def host_key(self) -> Path:
        return self.ssh_dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def config(self) -> Path:
        return self.ssh_dir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.ssh_dir / "sshd.log"

    @property
    def shell_socket(self) -> Path:
        """The fork server's UNIX socket (runner.lab.forkserver): in ``ssh/`` unless that path
        is too long for a socket address (108 bytes), then in the temporary folder."""
        path = self.ssh_dir / "shell.sock"
        if len(os.fsencode(path)) < 100:
            return path
        import hashlib
        import tempfile
        tag = hashlib.sha256(os.fsencode(self.lab_dir)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"runner-lab-{tag}.sock"

    def uses_forkserver(self) -> bool:
        """Whether sessions are forked by runner.lab.forkserver (not with a ``session_command``
        of the caller's, nor with ``RUNNER_LAB_FORKSERVER=0``, which benchmarks use to compare)."""
        return self.session_command is None and os.environ.get("RUNNER_LAB_FORKSERVER", "1") != "0"

    def prepare(self) -> None:
        """Generate keys, sshd_config, known_hosts and the SSH inventory (idempotent)."""
        check_sshd()
        self.addresses = lab_addresses(self.lab_dir)
        self.by_address = {a: h for h, a in self.addresses.items()}
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.ssh_dir, 0o700)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "runner-lab",
                                "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
        shutil.copyfile(self.client_key.with_suffix(".pub"), self.ssh_dir / "authorized_keys")
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        with open(self.known_hosts, "w", encoding="ascii") as fh:
            for addr in self.addresses.values():
                name = addr if self.port == 22 else f"[{addr}]:{self.port}"
                fh.write(f"{name} {host_pub[0]} {host_pub[1]}\n")
        self.config.write_text(self._sshd_config(), encoding="utf-8")
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            # sshd's privilege separation directory, normally created by the Debian service
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        write_ssh_inventory(self)

    def _sshd_config(self) -> str:
        py = shlex.quote(sys.executable)
        # -S: no site-packages scan or .pth hooks per command (~10-30 ms); the lab shell needs
        # the standard library and this package only, which PYTHONPATH (SetEnv below) names
        session = self.session_command or f"{py} -S -m runner.lab.serve session --dir {shlex.quote(str(self.lab_dir))}"
        if self.uses_forkserver():
            # a forwarder of built-ins only hands the session to the warm fork server (which the
            # forwarder falls back from to the command above when the server is not running)
            from runner.lab.forkserver import forward_command
            session = forward_command(self.lab_dir, self.shell_socket)
        pkg_root = str(Path(__file__).resolve().parents[2])
        user = _current_user()
        lines = [
            f"# generated by `runner lab serve` for {self.lab_dir}; run as sshd -i per connection",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}",
            "AllowUsers " + " ".join([user] + self.allow_password_users),
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AuthenticationMethods publickey",
            "PermitUserEnvironment no",
            # $SSH_USER_AUTH names the method the session logged on with: a key-based session
            # has no network credentials, and the lab shell refuses it every share (runner.lab.logon)
            "ExposeAuthInfo yes",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "X11Forwarding no",
            "PermitTunnel no",
            "AllowAgentForwarding no",
            # a jump host may only open channels to the lab's own addresses (ProxyJump tests)
            "AllowTcpForwarding local",
            "PermitListen none",
            "PermitOpen " + " ".join(f"{a}:{self.port}" for a in self.addresses.values()),
            "LoginGraceTime 30",
            # MaxSessions is left at OpenSSH's default (10), as on real hosts: the runner must
            # keep each connection below it (ssh_max_sessions; docs/ssh-sessions.md)
            "ClientAliveInterval 30",
            "LogLevel VERBOSE",
            # SHLVL=1: bash (the serving user's login shell, which sshd runs the ForceCommand
            # with) sources ~/.bashrc when started by sshd at level 1; the lab needs none of it
            # and a pyenv/conda .bashrc costs ~100 ms per command
            f"SetEnv PYTHONPATH={pkg_root} RUNNER_LAB_DIR={self.lab_dir} SHLVL=1",
            f"Subsystem sftp {py} -S -m runner.lab.serve sftp",
            f"ForceCommand {session}",
        ]
        if self.allow_password_users:
            lines += self._password_match_block()
        return "\n".join(lines) + "\n"

    def _password_match_block(self) -> list[str]:
        """sshd_config lines letting ``allow_password_users`` (only) log in with a password."""
        import pwd

        users = self.allow_password_users
        for u in users:
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", u):
                raise ServeError(f"not a valid account name for password login: {u!r}")
        block = [f"Match User {','.join(users)}",
                 "    PasswordAuthentication yes",
                 "    AuthenticationMethods password"]
        uids = []
        for u in users:
            try:
                uids.append(pwd.getpwnam(u).pw_uid)
            except KeyError:
                raise ServeError(f"password login: there is no local account {u}") from None
        if 0 in uids:
            # sshd refuses passwords for any uid-0 account under prohibit-password
            block.append("    PermitRootLogin yes")
        return block

    def start(self) -> None:
        """Prepare, listen on every host address and start accepting (in a thread)."""
        self.prepare()
        _raise_fd_limit(len(self.addresses) * 2 + 256)
        if self.uses_forkserver():
            self._start_forkserver()
        try:
            for addr in self.addresses.values():
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, self.port))
                s.listen(128)
                s.setblocking(False)
                self._listeners.append(s)
        except OSError as exc:
            self._close_listeners()
            self._stop_forkserver()  # it would outlive us otherwise
            raise ServeError(f"cannot listen on {addr}:{self.port}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self._accept_loop, name="lab-serve-acceptor", daemon=True)
        self._thread.start()

    def _start_forkserver(self) -> None:
        """Start runner.lab.forkserver on ``shell_socket`` and wait (up to 10 s) until it listens;
        without it the sessions still run, each as a process of its own."""
        import time
        sock = self.shell_socket
        try:
            sock.unlink()
        except FileNotFoundError:
            pass
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (pkg_root, os.environ.get("PYTHONPATH", "")) if p))
        self._forkserver = subprocess.Popen(
            [sys.executable, "-m", "runner.lab.forkserver", "--dir", str(self.lab_dir), "--socket", str(sock)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.ssh_dir / "forkserver.log", "ab"),
            close_fds=True, start_new_session=True, env=env)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._forkserver.poll() is None:
            if sock.exists():
                return
            time.sleep(0.02)

    def _stop_forkserver(self) -> None:
        proc, self._forkserver = self._forkserver, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)   # the server and any session child still running
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.stderr is not None:
            proc.stderr.close()

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self._listeners:
            sel.register(s, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=1.0):
                if key.fileobj == self._wake_r:
                    continue
                try:
                    conn, _peer = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    continue
                self._hand_over(conn)
            self._reap()
        sel.close()

    def _hand_over(self, conn: socket.socket) -> None:
        """Give an accepted connection to a fresh ``sshd -i`` (or drop it for a down host)."""
        try:
            local = conn.getsockname()[0]
            host = self.by_address.get(local, "?")
            if host in _down_hosts(self.lab_dir):
                conn.close()
                return
            conn.setblocking(True)
            # sshd sets TCP_NODELAY only for interactive (pty) sessions; without it every
            # exec'd command's small packets wait out the client's delayed ACK (~40 ms each)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            proc = subprocess.Popen(
                [SSHD, "-i", "-f", str(self.config), "-E", str(self.log)],
                stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True)
            with self._children_lock:
                self._children[proc.pid] = (proc, host)
        except OSError:
            pass
        finally:
            conn.close()

    def _reap(self) -> None:
        with self._children_lock:
            for pid, (proc, _h) in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[pid]

    def session_pids(self, host: str | None = None) -> list[int]:
        """Process ids of the sshd sessions currently serving ``host`` (all when None)."""
        self._reap()
        with self._children_lock:
            return [pid for pid, (_p, h) in self._children.items() if host is None or h == host]

    def stop(self) -> None:
        """Stop accepting and end every sshd session (their whole process groups)."""
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close_listeners()
        with self._children_lock:
            children = list(self._children.values())
            self._children.clear()
        for proc, _h in children:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for proc, _h in children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self._stop_forkserver()

    def _close_listeners(self) -> None:
        for s in self._listeners:
            s.close()
        self._listeners.clear()

    def __enter__(self) -> "LabServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_sshd() -> None:
    """Refuse clearly when OpenSSH's sshd or ssh-keygen is not installed."""
    if not os.access(SSHD, os.X_OK):
        raise ServeError(f"{SSHD} not found: {INSTALL_HINT}")
    if not os.access(SFTP_SERVER, os.X_OK):
        raise ServeError(f"{SFTP_SERVER} not found: {INSTALL_HINT}")
    if shutil.which("ssh-keygen") is None:
        raise ServeError("ssh-keygen not found: install it with apt-get install openssh-client")


def _current_user() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def _raise_fd_limit(needed: int) -> None:
    from runner.oslimits import raise_open_files
    got = raise_open_files(needed)
    if got < needed:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise ServeError(f"serving {needed // 2} hosts needs {needed} open files; the limit is {hard}")


# --------------------------------------------------------------------------
# the SSH inventory
# --------------------------------------------------------------------------
def _lab_inventory_file(lab_dir: Path) -> Path | None:
    for name in ("inventory.yml", "inventory.yaml"):
        if (lab_dir / name).is_file():
            return lab_dir / name
    found = sorted(p for p in lab_dir.glob("*.y*ml"))
    return found[0] if found else None


_ROLE_GROUPS = {"client": "clients", "exchange_im": "exchange_im_servers", "lcs": "lcs_servers"}


def write_ssh_inventory(server: LabServer) -> Path:
    """Write the lab's inventory with every host reached over SSH through ``server``."""
    import yaml

    src = _lab_inventory_file(server.lab_dir)
    if src is not None:
        doc = yaml.safe_load(src.read_text(encoding="utf-8")) or {}
    else:
        meta = json.loads((server.lab_dir / "lab.json").read_text(encoding="utf-8"))
        children: dict[str, dict] = {}
        for e in _host_entries(meta):
            group = _ROLE_GROUPS.get(str(e.get("role")), "clients")
            children.setdefault(group, {"hosts": {}})["hosts"][e["name"]] = {}
        doc = {"all": {"children": children}}
    all_ = doc.setdefault("all", {})
    vars_ = dict(all_.get("vars") or {})
    vars_.pop("lab_dir", None)
    from runner.estate import LAB_MARK_VAR
    from runner.lab.store import lab_identity
    mark = lab_identity(server.lab_dir)
    if mark:  # the served lab is the same estate as the lab itself (runner.estate)
        vars_[LAB_MARK_VAR] = mark
    # the served lab's sessions log on by key, so they cannot read the package's share:
    # the runner pushes it from the control node, where the lab keeps the share's files
    _push_from_lab(server.lab_dir, vars_, default=True)
    vars_.update({
        "ssh_key_file": str(server.client_key),
        "ssh_known_hosts": str(server.known_hosts),
        "ssh_agent": False,
        "ssh_connect_timeout": 10,
        "ssh_exit_code_trailer": True,
    })
    all_["vars"] = vars_
    user = _current_user()

    def rewrite(group: dict) -> None:
        if group is not all_ and isinstance(group.get("vars"), dict):
            group["vars"] = _push_from_lab(server.lab_dir, dict(group["vars"]))
        hosts = group.get("hosts") or {}
        for name in list(hosts):
            entry = dict(hosts[name] or {})
            if isinstance(entry.get("vars"), dict):
                entry["vars"] = _push_from_lab(server.lab_dir, dict(entry["vars"]))
            entry.update({"connection": "ssh", "address": server.addresses.get(name, entry.get("address")),
                          "port": server.port, "user": user})
            hosts[name] = entry
        for child in (group.get("children") or {}).values():
            if isinstance(child, dict):
                rewrite(child)

    rewrite(all_)
    server.inventory_out.parent.mkdir(parents=True, exist_ok=True)
    from runner.schemas import schema_header  # editors validate the generated inventory too

    server.inventory_out.write_text(
        schema_header("inventory", server.inventory_out)
        + "# SSH inventory of a served lab, written by `runner lab serve`\n"
        + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return server.inventory_out


def _push_from_lab(lab_dir: Path, vars_: dict[str, Any], *, default: bool = False) -> dict[str, Any]:
    """``vars_`` (changed in place) pushing the lab's own package: ``messenger_package_local``
    set to the file behind the scope's ``messenger_package`` (with ``default``: the step's
    default package where the scope names none), and a relative one (a lab made from an
    inventory that pushes) made absolute, since the SSH inventory lives in another folder."""
    if "messenger_package" in vars_ or default:
        local = lab_package_file(lab_dir, vars_.get("messenger_package"))
        if local is not None:
            vars_["messenger_package_local"] = local
            return vars_
    local = vars_.get("messenger_package_local")
    if isinstance(local, str) and local and "{{" not in local and not os.path.isabs(local):
        vars_["messenger_package_local"] = str((lab_dir / local).resolve())
    return vars_


def lab_package_file(lab_dir: Path, unc: Any) -> str | None:
    """The control-node file behind the lab share path ``unc`` (the step's default package
    when None), or None when it is no UNC path or the lab's share holds no such file."""
    if unc is None:
        from runner.steps.upgrade_messenger import DEFAULT_PACKAGE
        unc = DEFAULT_PACKAGE
    if not isinstance(unc, str) or not unc.startswith("\\\\") or "{{" in unc:
        return None
    parts = [p for p in unc[2:].split("\\") if p]
    if len(parts) < 3:
        return None
    real = _case_insensitive(str(lab_dir / "shares"), parts)
    return real if os.path.isfile(real) else None


# --------------------------------------------------------------------------
# the ForceCommand side: one process per SSH session
# --------------------------------------------------------------------------
def session_host(lab_dir: Path) -> str:
    """The lab host this SSH session is for: the local address in SSH_CONNECTION."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) < 4:
        raise ServeError("SSH_CONNECTION is not set: the session must run under sshd")
    local = conn[2]
    for name, addr in lab_addresses(lab_dir).items():
        if addr == local:
            return name
    raise ServeError(f"no lab host has address {local}")


def session_main(lab_dir: Path, client_pid: int | None = None) -> int:
    """ForceCommand entry point: SFTP relay for the sftp subsystem, else the lab shell.
    ``client_pid``: the forwarder whose session this is, when a fork server runs it
    (runner.lab.forkserver); the sshd processes to drop are above it, not above us."""
    original = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if re.search(r"-m runner\.lab\.serve sftp\s*$", original):
        host = session_host(lab_dir)
        fs_root = lab_dir / "hosts" / host / "fs"
        (fs_root / "C").mkdir(parents=True, exist_ok=True)
        return sftp_relay(str(fs_root), written=put_faults(lab_dir, host))
    from runner.lab import logon, shell

    with logon.session(session_logon()):
        rc = shell.run_session(lab_dir)
    if rc == 255:
        # the lab shell's connection faults ("down", "timeout", "drop") and its own
        # failures: make them what a client would see from a real host, a lost connection
        drop_connection(_parent_pid(client_pid) if client_pid else None)
    if not 0 <= rc <= 254:
        # A POSIX exit status has 8 bits, Windows' 32 (9009, msiexec 1618, 3010): carry the
        # real code in a stderr trailer that the ssh connection strips when the inventory
        # sets ssh_exit_code_trailer (only served-lab inventories do).
        sys.stderr.flush()
        sys.stderr.buffer.write(EXIT_TRAILER % rc)
        sys.stderr.buffer.flush()
        return 1
    return rc


def put_faults(lab_dir: Path, host: str) -> Callable[[str], None] | None:
    """The lab fault ``put_truncated`` for files written over SFTP: a callback cutting a
    written file to half its size when the fault fires (None when its rate is 0)."""
    from runner.lab.faults import Faults
    from runner.lab.store import Lab

    try:
        lab = Lab(lab_dir)
    except InputError:
        return None
    faults = Faults(lab)
    if faults.rate(host, "put_truncated") <= 0:
        return None
    lab_host = lab.host(host)

    def written(path: str) -> None:
        if faults.fires(lab_host, "put_truncated"):
            try:
                os.truncate(path, os.path.getsize(path) // 2)
            except OSError:
                pass
    return written


def session_logon() -> str:
    """How sshd authenticated this session (``key`` or ``password``), from the file
    ``$SSH_USER_AUTH`` that ``ExposeAuthInfo yes`` writes; ``key`` when it cannot be read
    (the lab's own sessions log on by key)."""
    from runner.lab.logon import from_ssh_user_auth
    path = os.environ.get("SSH_USER_AUTH")
    if not path:
        return "key"
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return from_ssh_user_auth(fh.read())
    except OSError:
        return "key"


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def drop_connection(start: int | None = None) -> None:
    """Kill the sshd processes serving this session (from ``start``, by default our parent,
    upwards): the client sees the connection drop."""
    sys.stdout.flush()
    pid = start if start else os.getppid()
    while pid and pid > 1:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                prog = fh.read().split(b"\0")[0].rsplit(b"/", 1)[-1]
        except OSError:
            return
        parent = _parent_pid(pid)
        if parent is None or not prog.startswith(b"sshd"):
            return
        os.kill(pid, signal.SIGKILL)
        pid = parent


# --- SFTP path rewriting ------------------------------------------------------
FXP_INIT, FXP_OPEN, FXP_LSTAT, FXP_SETSTAT, FXP_OPENDIR, FXP_REMOVE, FXP_MKDIR = 1, 3, 7, 9, 11, 13, 14
FXP_RMDIR, FXP_REALPATH, FXP_STAT, FXP_RENAME, FXP_READLINK, FXP_SYMLINK = 15, 16, 17, 18, 19, 20
FXP_CLOSE, FXP_STATUS, FXP_HANDLE, FXP_NAME, FXP_EXTENDED = 4, 101, 102, 104, 200
FXF_WRITE = 0x02
_ONE_PATH = {FXP_OPEN, FXP_LSTAT, FXP_SETSTAT, FXP_OPENDIR, FXP_REMOVE, FXP_MKDIR, FXP_RMDIR,
             FXP_REALPATH, FXP_STAT, FXP_READLINK}
_TWO_PATHS = {FXP_RENAME, FXP_SYMLINK}
_EXT_PATHS = {"posix-rename@openssh.com": 2, "hardlink@openssh.com": 2, "statvfs@openssh.com": 1,
              "lsetstat@openssh.com": 1, "expand-path@openssh.com": 1}
_EXT_PASS = {"fsync@openssh.com", "limits@openssh.com", "copy-data", "users-groups-by-id@openssh.com"}
_DRIVE = re.compile(r"^/?([A-Za-z]):(/.*)?$")


def map_sftp_path(path: str, fs_root: str) -> str:
    """``/C:/x/y`` (or ``C:\\x\\y``) -> ``<fs_root>/C/x/y``; never outside ``fs_root``."""
    p = path.replace("\\", "/")
    m = _DRIVE.match(p)
    if m:
        drive, rest = m.group(1).upper(), m.group(2) or "/"
    else:
        drive, rest = "C", p           # relative or drive-less paths live on C:
    rest = posixpath.normpath("/" + rest.lstrip("/"))
    return _case_insensitive(fs_root, [drive] + [c for c in rest.split("/") if c])


def _case_insensitive(root: str, parts: list[str]) -> str:
    """Join ``parts`` under ``root``, matching existing names case-insensitively (as NTFS does)."""
    path = root
    for i, part in enumerate(parts):
        exact = path + "/" + part
        if not os.path.lexists(exact):
            try:
                match = next((n for n in os.listdir(path) if n.lower() == part.lower()), None)
            except OSError:
                match = None
            if match is None:       # the rest does not exist: keep the caller's spelling
                return "/".join([path] + parts[i:])
            exact = path + "/" + match
        path = exact
    return path


def unmap_sftp_path(path: str, fs_root: str) -> str:
    """The inverse of map_sftp_path for paths the server reports (REALPATH)."""
    if path == fs_root or not path.startswith(fs_root + "/"):
        return "/C:/"
    tail = path[len(fs_root) + 1:]
    drive, _, rest = tail.partition("/")
    return f"/{drive}:/{rest}"


class _Packet:
    """Reads/writes SFTP v3 fields in a packet body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def u32(self) -> int:
        (v,) = struct.unpack_from(">I", self.body, self.pos)
        self.pos += 4
        return v

    def string(self) -> bytes:
        n = self.u32()
        v = self.body[self.pos:self.pos + n]
        self.pos += n
        return v


def _s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _read_packet(stream: BinaryIO) -> bytes | None:
    head = _read_exact(stream, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    return _read_exact(stream, n)


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def sftp_relay(fs_root: str, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None,
               written: Callable[[str], None] | None = None) -> int:
    """Relay SFTP between the SSH channel and sftp-server, rewriting paths into ``fs_root``.

    ``written(path)`` is called with the real path of every file opened for writing once
    sftp-server has closed it, before the client hears so (the lab's ``put_truncated``)."""
    cin = stdin or sys.stdin.buffer
    cout = stdout or sys.stdout.buffer
    proc = subprocess.Popen([SFTP_SERVER, "-d", fs_root + "/C"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    realpath_ids: set[int] = set()
    write_opens: dict[int, str] = {}     # request id of an open for writing -> real path
    write_handles: dict[bytes, str] = {}
    write_closes: dict[int, str] = {}    # request id of the close of such a handle -> real path
    ids_lock = threading.Lock()
    out_lock = threading.Lock()
    enc = "utf-8"

    def mp(b: bytes) -> bytes:
        return map_sftp_path(b.decode(enc, "surrogateescape"), fs_root).encode(enc, "surrogateescape")

    def reply_unsupported(req_id: int) -> None:
        body = bytes([FXP_STATUS]) + struct.pack(">II", req_id, 8) + _s(b"unsupported in the lab") + _s(b"")
        with out_lock:
            cout.write(struct.pack(">I", len(body)) + body)
            cout.flush()

    def client_to_server() -> None:
        while True:
            body = _read_packet(cin)
            if body is None:
                break
            ptype = body[0]
            if ptype in _ONE_PATH or ptype in _TWO_PATHS or ptype == FXP_EXTENDED:
                pk = _Packet(body)
                pk.pos = 1
                req_id = pk.u32()
                new = bytes([ptype]) + struct.pack(">I", req_id)
                if ptype == FXP_EXTENDED:
                    name = pk.string()
                    count = _EXT_PATHS.get(name.decode("ascii", "replace"))
                    if count is None:
                        if name.decode("ascii", "replace") not in _EXT_PASS:
                            reply_unsupported(req_id)
                            continue
                        count = 0
                    new += _s(name)
                else:
                    count = 2 if ptype in _TWO_PATHS else 1
                    if ptype in (FXP_REALPATH,):
                        with ids_lock:
                            realpath_ids.add(req_id)
                if name_is_expand(ptype, body):
                    with ids_lock:
                        realpath_ids.add(req_id)
                mapped = b""
                for _ in range(count):
                    mapped = mp(pk.string())
                    new += _s(mapped)
                if ptype == FXP_OPEN and written is not None and pk.pos + 4 <= len(body):
                    (pflags,) = struct.unpack_from(">I", body, pk.pos)
                    if pflags & FXF_WRITE:
                        with ids_lock:
                            write_opens[req_id] = mapped.decode(enc, "surrogateescape")
                body = new + body[pk.pos:]
            elif ptype == FXP_CLOSE and written is not None:
                pk = _Packet(body)
                pk.pos = 1
                req_id = pk.u32()
                with ids_lock:
                    path = write_handles.pop(pk.string(), None)
                    if path is not None:
                        write_closes[req_id] = path
            proc.stdin.write(struct.pack(">I", len(body)) + body)  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]

    def server_to_client() -> None:
        while True:
            body = _read_packet(proc.stdout)  # type: ignore[arg-type]
            if body is None:
                break
            if body[0] in (FXP_HANDLE, FXP_STATUS) and written is not None:
                pk = _Packet(body)
                pk.pos = 1
                req_id = pk.u32()
                with ids_lock:
                    opened = write_opens.pop(req_id, None) if body[0] == FXP_HANDLE else None
                    if opened is not None:
                        write_handles[pk.string()] = opened
                    closed = write_closes.pop(req_id, None) if body[0] == FXP_STATUS else None
                if closed is not None:
                    written(closed)
            if body[0] == FXP_NAME:
                pk = _Packet(body)
                pk.pos = 1
                req_id = pk.u32()
                with ids_lock:
                    was_realpath = req_id in realpath_ids
                    realpath_ids.discard(req_id)
                if was_realpath:
                    count = pk.u32()
                    new = bytes([FXP_NAME]) + struct.pack(">II", req_id, count)
                    if count >= 1:
                        filename = pk.string().decode(enc, "surrogateescape")
                        pk.string()
                        virt = unmap_sftp_path(filename, fs_root).encode(enc, "surrogateescape")
                        new += _s(virt) + _s(virt)
                    body = new + body[pk.pos:]
            with out_lock:
                cout.write(struct.pack(">I", len(body)) + body)
                cout.flush()

    reader = threading.Thread(target=client_to_server, daemon=True)
    reader.start()
    try:
        server_to_client()
    finally:
        reader.join(timeout=1)
    return proc.wait()


def name_is_expand(ptype: int, body: bytes) -> bool:
    """True for an expand-path@openssh.com request (its NAME reply is a path to unmap)."""
    return ptype == FXP_EXTENDED and b"expand-path@openssh.com" in body[:40]


def _session_cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner.lab.serve")
    parser.add_argument("mode", choices=["session", "sftp"])
    parser.add_argument("--dir", default=os.environ.get("RUNNER_LAB_DIR"))
    args = parser.parse_args(argv)
    if not args.dir:
        print("lab directory unknown (--dir or RUNNER_LAB_DIR)", file=sys.stderr)
        return 1
    try:
        if args.mode == "sftp":
            host = session_host(Path(args.dir))
            return sftp_relay(str(Path(args.dir).resolve() / "hosts" / host / "fs"),
                              written=put_faults(Path(args.dir).resolve(), host))
        return session_main(Path(args.dir).resolve())
    except ServeError as exc:
        print(str(exc), file=sys.stderr)
        return 1


# --------------------------------------------------------------------------
# the click command (registered in runner/lab/cli.py)
# --------------------------------------------------------------------------
def _make_command() -> Any:
    import click

    @click.command("serve")
    @click.option("--dir", "lab_dir", default=".lab/default", show_default=True,
                  type=click.Path(file_okay=False, path_type=Path), help="Lab directory to serve.")
    @click.option("--port", default=2222, show_default=True, type=click.IntRange(1, 65535),
                  help="TCP port on every host's loopback address.")
    @click.option("--inventory-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Where to write the SSH inventory (default DIR/ssh/inventory.yml).")
    def serve_command(lab_dir: Path, port: int, inventory_out: Path | None) -> None:
        """Serve the lab over real SSH (OpenSSH sshd on 127.0.x.y) until Ctrl-C."""
        server = LabServer(lab_dir, port=port, inventory_out=inventory_out)
        try:
            server.start()
        except (ServeError, subprocess.CalledProcessError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        first = next(iter(server.addresses.items()), ("?", "?"))
        click.echo(f"serving {len(server.addresses)} hosts of {server.lab_dir} on port {port} "
                   f"(e.g. {first[0]} at {first[1]})")
        click.echo(f"inventory:   {server.inventory_out}")
        click.echo(f"known_hosts: {server.known_hosts}")
        click.echo(f"try: ssh -i {server.client_key} -o UserKnownHostsFile={server.known_hosts} "
                   f"-p {port} {_current_user()}@{first[1]} \"reg query HKLM\\SOFTWARE\"")
        click.echo("Ctrl-C to stop")
        while not stop.wait(0.5):
            pass
        server.stop()
        click.echo("stopped")

    return serve_command


if __name__ == "__main__":
    sys.exit(_session_cli(sys.argv[1:]))
else:
    serve_command = _make_command()
