"""The ``ssh`` connection: cmd.exe command lines and SFTP files over paramiko.

One SSH transport per host, opened on first use and reused by every step and
task (a round trip costs far more than Python does), closed by ``close()``.
Built for Windows hosts running OpenSSH for Windows, whose default shell is
cmd.exe and whose SFTP server shows ``C:\\x\\y`` as ``/C:/x/y``.

Host variables (inventory ``vars``; see inventories/example-ssh.yml):

- ``ssh_key_file``: private key; its passphrase, if any, comes from the
  environment variable named by ``ssh_key_passphrase_env``.
- ``ssh_agent`` (bool, default true): also offer the keys of ``SSH_AUTH_SOCK``.
- ``ssh_password_env`` / ``ssh_password_file``: *name* of an environment
  variable, or path of a file, holding the password (never the password).
- ``ssh_known_hosts``: known_hosts file (default ``~/.ssh/known_hosts``);
  hashed entries and ``[host]:port`` entries are understood.
- ``ssh_proxy_jump``: ``user@host:port`` or an inventory host name (bastion).
- ``ssh_connect_timeout``, ``ssh_command_timeout``, ``ssh_keepalive_interval``
  (seconds), ``ssh_codepage`` (default ``cp437``, see ``decode_output``).
- ``ssh_exit_code_trailer`` (served lab only): read the real 32-bit exit code
  from a stderr trailer, since the lab runs on POSIX where exit codes have 8 bits.
- ``ssh_max_sessions`` (default 8): the most session channels (commands and
  the SFTP subsystem together) this connection has open at once; keep it
  below the server's ``MaxSessions`` (OpenSSH: 10). Tasks beyond it wait.

Sessions: every command is one session channel, and the SFTP client, kept
open between transfers, is one more; a SessionLimiter (runner.connections.
sessions) holds them to ``ssh_max_sessions``. A channel open the server
refuses anyway is back-pressure: wait briefly and ask again, never a fault
of the host. A transport found dead before a command was sent is re-opened
at once (nothing ran); one that dies under a command is that command's
ChannelFault, and the next command re-opens it. A connection never closes
or condemns the transport because one command failed.

Fault classification (runner.errors): a TCP connect refused or timed out, a
failed handshake or a connection lost while logging in is ConnectionFault
(the host cannot be reached: unreachable once retries run out); a channel
that dies mid-command, ends without an exit status, times out, or is still
refused after ``ssh_command_timeout`` is ChannelFault (transient, only that
task is retried); a refused login is AuthenticationFault and an unknown or
changed host key HostKeyFault (both permanent, never retried). No password
or passphrase ever reaches a message, an exception, a repr or an event.
"""
from __future__ import annotations

import codecs
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

from runner.connections.base import CommandResult
from runner.connections.sessions import SessionLimiter, parse_max_sessions
from runner.errors import (
    AuthenticationFault,
    ChannelFault,
    ConnectionFault,
    HostKeyFault,
    PermanentFault,
    StepFault,
)
from runner.model import CONTROL_NODE_PATH_VARS, Host, Inventory
from runner.windows.scripts import DEFAULT_CODEPAGE, codepage_name  # the OEM code page of US-English consoles

DEFAULT_KEEPALIVE = 15.0
_KNOWN_HOSTS_LOCK = threading.Lock()
# The served lab's way to carry a 32-bit Windows exit code past POSIX's 8 bits
# (runner.lab.serve.session_main); honoured only with ssh_exit_code_trailer.
_EXIT_TRAILER = re.compile(rb"\0runner-exit-code=(-?\d+)\0$")
# paramiko logs handshake failures with tracebacks; we raise classified faults instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class _Secret:
    """Holds a password or passphrase; prints as ``***`` everywhere."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret ***>"

    __str__ = __repr__


def _opt(options: Any, name: str, default: Any) -> Any:
    return getattr(options, name, default) if options is not None else default


def decode_output(data: bytes, codepage: str = DEFAULT_CODEPAGE) -> str:
    """Decode a Windows program's output: UTF-16LE, else UTF-8, else ``codepage``.

    wmic and ``reg export`` write UTF-16LE (with a BOM, or without one when
    piped: then every second byte of ASCII text is NUL); modern tools write
    UTF-8; cmd.exe and old tools write the console's OEM code page (cp437 on
    US-English Windows, cp850 in Western Europe: set ``ssh_codepage``).
    """
    if not data:
        return ""
    if data.startswith(codecs.BOM_UTF16_LE):
        return data[2:].decode("utf-16-le", errors="replace")
    if _looks_utf16le(data):
        return data.decode("utf-16-le", errors="replace")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(codepage, errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def _looks_utf16le(data: bytes) -> bool:
    """True when NULs sit at odd offsets (UTF-16LE text) and almost never at even ones."""
    sample = data[:1024]
    if len(sample) < 4:
        return False
    pairs = len(sample) // 2
    odd_nuls = sum(1 for i in range(1, pairs * 2, 2) if sample[i] == 0)
    even_nuls = sum(1 for i in range(0, pairs * 2, 2) if sample[i] == 0)
    return odd_nuls >= 0.6 * pairs and even_nuls <= 0.1 * pairs


SFTP_PATH_STYLES = ("win32-openssh", "cygwin")


def windows_to_sftp_path(path: str, style: str = "win32-openssh") -> str:
    """Map ``C:\\x\\y`` to ``/C:/x/y``, the form OpenSSH for Windows' SFTP server uses, or with
    ``style="cygwin"`` to ``/cygdrive/c/x/y``, the form of Cygwin's and copSSH's sftp-server
    (host variable ``ssh_sftp_paths``; docs/transports.md).

    UNC paths (``\\\\server\\share``) cannot be reached through SFTP and are refused.
    """
    p = path.replace("\\", "/")
    if p.startswith("//"):
        raise PermanentFault(f"SFTP cannot reach the UNC path {path!r}; copy it with a command instead")
    if len(p) >= 2 and p[1] == ":" and p[0].isalpha():
        rest = p[2:] if p[2:].startswith("/") else "/" + p[2:]
        if style == "cygwin":
            return "/cygdrive/" + p[0].lower() + rest
        return "/" + p[0].upper() + ":" + rest
    if p.startswith("/"):
        return p
    raise PermanentFault(f"remote path {path!r} is not an absolute Windows path (like C:\\Temp\\x)")


def host_key_name(address: str, port: int) -> str:
    """The name under which known_hosts stores ``address:port`` (OpenSSH rules)."""
    return address if port == 22 else f"[{address}]:{port}"


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """Split ``user@host:port`` into its parts (user and port optional)."""
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    if spec.startswith("["):            # [addr]:port
        addr, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
        return user, addr, port
    if spec.count(":") == 1:
        spec, p = spec.split(":")
        port = int(p)
    return user, spec, port


class SSHConnection:
    """A Connection (runner.connections.base) to one Windows host over SSH."""

    def __init__(self, host: Host, inventory: Inventory | None = None, options: Any = None,
                 *, _depth: int = 0) -> None:
        self.host = host.name
        self._host = host
        self._inventory = inventory
        self._options = options
        self._depth = _depth
        v = dict(host.vars or {})
        self._vars = v
        self.address = host.address or host.name
        self.port = int(host.port or v.get("ssh_port") or 22)
        self.user = host.user or v.get("ssh_user") or os.environ.get("USER") or "root"
        self.connect_timeout = float(v.get("ssh_connect_timeout", _opt(options, "connect_timeout", 10)))
        self.command_timeout = float(v.get("ssh_command_timeout", _opt(options, "command_timeout", 300)))
        self.keepalive = float(v.get("ssh_keepalive_interval", DEFAULT_KEEPALIVE))
        codepage = codepage_name(v.get("ssh_codepage", DEFAULT_CODEPAGE))
        if codepage is None:
            raise PermanentFault(f"ssh_codepage is {v.get('ssh_codepage')!r}: not a code page "
                                 "(cp437 US English, cp850 Western Europe, cp852 Central Europe, ...)",
                                 host=host.name)
        self.codepage = codepage
        self._sftp_paths = str(v.get("ssh_sftp_paths", SFTP_PATH_STYLES[0]))
        if self._sftp_paths not in SFTP_PATH_STYLES:
            raise PermanentFault(f"ssh_sftp_paths is {self._sftp_paths!r}: one of {', '.join(SFTP_PATH_STYLES)}",
                                 host=host.name)
        self.accept_new = bool(_opt(options, "accept_new_host_keys", False))
        self.known_hosts = self._path_var("ssh_known_hosts") or Path(os.path.expanduser("~/.ssh/known_hosts"))
        self.key_file = self._path_var("ssh_key_file")
        self.use_agent = bool(v.get("ssh_agent", True))
        self.proxy_jump = v.get("ssh_proxy_jump") or None
        self.exit_code_trailer = bool(v.get("ssh_exit_code_trailer", False))
        try:
            self.max_sessions = parse_max_sessions(v.get("ssh_max_sessions"))
        except ValueError as exc:
            raise PermanentFault(f"{self.host}: {exc}", host=self.host) from None
        self.sessions = SessionLimiter(self.max_sessions)
        self._lock = threading.RLock()        # the transport and the SFTP client (fields)
        self._sftp_lock = threading.Lock()    # one SFTP transfer at a time; taken before _lock
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None   # holds one session slot while set
        self._jump: SSHConnection | None = None
        self._closed = False
        self._connect_failures = 0
        self._last_connect_fault: StepFault | None = None
        self.reconnects = 0     # transports opened after the first (figures for tests and benchmarks)
        self._connected_once = False
        self.last_answer: float | None = None   # time.time() of the last command or transfer that completed

    # --- helpers -------------------------------------------------------
    def _path_var(self, name: str) -> Path | None:
        """The control-node file a host variable names (None when unset). Only the variables of
        runner.model.CONTROL_NODE_PATH_VARS name such files: the loader has made them absolute
        already, and one from elsewhere is relative to the inventory's folder, as there."""
        if name not in CONTROL_NODE_PATH_VARS:
            raise ValueError(f"{name} is not in runner.model.CONTROL_NODE_PATH_VARS")
        value = self._vars.get(name)
        if not value:
            return None
        path = Path(os.path.expanduser(str(value)))
        if not path.is_absolute() and self._inventory is not None and self._inventory.path:
            path = Path(self._inventory.path).resolve().parent / path
        return path

    def _where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    def __repr__(self) -> str:
        state = "open" if self._transport is not None and self._transport.is_active() else "idle"
        return f"<SSHConnection {self.host} {self._where()} {state}>"

    def _password(self) -> _Secret | None:
        env = self._vars.get("ssh_password_env")
        if env:
            val = os.environ.get(str(env))
            if val is None:
                raise AuthenticationFault(
                    f"{self.host}: environment variable {env} (ssh_password_env) is not set", host=self.host)
            return _Secret(val)
        path = self._path_var("ssh_password_file")
        if path is not None:
            try:
                return _Secret(path.read_text(encoding="utf-8").rstrip("\r\n"))
            except OSError as exc:
                raise AuthenticationFault(
                    f"{self.host}: cannot read ssh_password_file {path}: {exc.strerror}", host=self.host) from None
        return None

    def _load_key(self) -> paramiko.PKey | None:
        if self.key_file is None:
            return None
        env = self._vars.get("ssh_key_passphrase_env")
        passphrase = None
        if env:
            val = os.environ.get(str(env))
            if val is None:
                raise AuthenticationFault(
                    f"{self.host}: environment variable {env} (ssh_key_passphrase_env) is not set", host=self.host)
            passphrase = _Secret(val)
        try:
            return paramiko.PKey.from_path(str(self.key_file),
                                           passphrase.reveal().encode("utf-8") if passphrase else None)
        except FileNotFoundError:
            raise AuthenticationFault(f"{self.host}: ssh_key_file {self.key_file} does not exist",
                                      host=self.host) from None
        except paramiko.PasswordRequiredException:
            raise AuthenticationFault(
                f"{self.host}: ssh_key_file {self.key_file} is encrypted; name the environment variable "
                "holding its passphrase in ssh_key_passphrase_env", host=self.host) from None
        except Exception:  # never chain: the library's exception may quote the passphrase
            raise AuthenticationFault(
                f"{self.host}: cannot load ssh_key_file {self.key_file} (wrong passphrase or "
                "unsupported key format)", host=self.host) from None

    # --- connecting -----------------------------------------------------
    def _open_socket(self) -> Any:
        if self.proxy_jump:
            if self._depth > 5:
                raise PermanentFault(f"{self.host}: ssh_proxy_jump chain is too long (a loop?)", host=self.host)
            if self._jump is None:
                self._jump = SSHConnection(self._jump_host(), self._inventory, self._options,
                                           _depth=self._depth + 1)
            transport = self._jump._ensure_transport()
            try:
                return transport.open_channel("direct-tcpip", (self.address, self.port), ("127.0.0.1", 0),
                                              timeout=self.connect_timeout)
            except paramiko.ChannelException as exc:
                raise ConnectionFault(f"{self.host}: jump host {self._jump.host} could not reach "
                                      f"{self.address}:{self.port} ({exc.text})", host=self.host) from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectionFault(f"{self.host}: jump host {self._jump.host} failed: "
                                      f"{type(exc).__name__}", host=self.host) from None
        try:
            sock = socket.create_connection((self.address, self.port), timeout=self.connect_timeout)
        except socket.timeout:
            raise ConnectionFault(f"{self.host}: connection to {self.address}:{self.port} timed out "
                                  f"after {self.connect_timeout:g}s", host=self.host) from None
        except ConnectionRefusedError:
            raise ConnectionFault(f"{self.host}: connection to {self.address}:{self.port} refused",
                                  host=self.host) from None
        except OSError as exc:
            raise ConnectionFault(f"{self.host}: cannot connect to {self.address}:{self.port}: "
                                  f"{exc.strerror or exc}", host=self.host) from None
        # SSH sends many small packets (channel open, exec request, window adjusts): with
        # Nagle's algorithm each waits out the peer's delayed ACK (~40 ms per round trip)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _jump_host(self) -> Host:
        spec = str(self.proxy_jump)
        inv_hosts = self._inventory.hosts if self._inventory is not None else {}
        if spec in inv_hosts:
            return inv_hosts[spec]
        user, addr, port = _parse_jump(spec)
        jvars = {k: val for k, val in self._vars.items() if k != "ssh_proxy_jump"}
        return Host(name=spec, connection="ssh", address=addr, port=port or 22,
                    user=user or self.user, vars=jvars)

    def _ensure_transport(self) -> paramiko.Transport:
        """The live transport, opening a fresh one if there is none or it died.

        Threads that queued behind a connect attempt which failed get that
        fault at once instead of each waiting out its own timeout.
        """
        failures_seen = self._connect_failures
        with self._lock:
            if self._closed:
                raise ConnectionFault(f"{self.host}: connection already closed", host=self.host)
            if self._transport is not None and self._transport.is_active():
                return self._transport
            last = self._last_connect_fault
            if self._connect_failures != failures_seen and last is not None:
                raise type(last)(last.message, host=last.host, data=dict(last.data))
            try:
                return self._connect()
            except StepFault as exc:
                self._connect_failures += 1
                self._last_connect_fault = exc
                raise

    def _connect(self) -> paramiko.Transport:
        """Open, verify and log in a new transport (called holding ``_lock``)."""
        with self._lock:
            self._drop_transport()
            sock = self._open_socket()
            t = paramiko.Transport(sock)
            try:
                t.banner_timeout = self.connect_timeout
                t.handshake_timeout = self.connect_timeout
                t.auth_timeout = self.connect_timeout
                known = self._known_keys()
                self._prefer_known_key_types(t, known)
                try:
                    t.start_client(timeout=self.connect_timeout)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    raise ConnectionFault(f"{self.host}: SSH handshake with {self.address}:{self.port} failed "
                                          f"({_brief(exc)}){_algorithms_hint(exc)}", host=self.host) from None
                self._verify_host_key(t, known)
                self._authenticate(t)
                if self.keepalive > 0:
                    t.set_keepalive(int(max(1, self.keepalive)))
            except BaseException:
                t.close()
                raise
            self._transport = t
            self._last_connect_fault = None
            if self._connected_once:
                self.reconnects += 1
            self._connected_once = True
            return t

    def _known_keys(self) -> paramiko.HostKeys:
        hk = paramiko.HostKeys()
        if self.known_hosts.exists():
            try:
                hk.load(str(self.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyFault(f"{self.host}: cannot read known_hosts {self.known_hosts}: {exc}",
                                   host=self.host) from None
        return hk

    def _prefer_known_key_types(self, t: paramiko.Transport, known: paramiko.HostKeys) -> None:
        entry = known.lookup(host_key_name(self.address, self.port))
        if not entry:
            return
        opts = t.get_security_options()
        types = list(entry.keys())
        if "ssh-rsa" in types:
            types = ["rsa-sha2-512", "rsa-sha2-256"] + types
        preferred = [k for k in types if k in opts.key_types]
        opts.key_types = preferred + [k for k in opts.key_types if k not in preferred]

    def _verify_host_key(self, t: paramiko.Transport, known: paramiko.HostKeys) -> None:
        key = t.get_remote_server_key()
        name = host_key_name(self.address, self.port)
        entry = known.lookup(name)
        scan = f"ssh-keyscan -p {self.port} {self.address} >> {self.known_hosts}"
        if entry:
            kt = key.get_name()
            ours = entry.get(kt)
            if ours is None and kt.startswith("rsa-sha2"):
                ours = entry.get("ssh-rsa")
            if ours is not None and ours == key:
                return
            if ours is not None or entry:
                raise HostKeyFault(
                    f"{self.host}: HOST KEY MISMATCH for {name}: the {key.get_name()} key offered "
                    f"(SHA256 {_fingerprint(key)}) is not the one in {self.known_hosts}. The host was "
                    "reinstalled, or someone is intercepting the connection. Only after verifying the new key "
                    f"out of band: ssh-keygen -R '{name}' -f {self.known_hosts} && {scan}",
                    host=self.host, data={"fingerprint": _fingerprint(key)})
        if not self.accept_new:
            raise HostKeyFault(
                f"{self.host}: host key of {name} ({key.get_name()} SHA256 {_fingerprint(key)}) is not in "
                f"{self.known_hosts}. Verify it and add it ({scan}), or run with "
                "--accept-new-host-keys to trust new hosts on first use",
                host=self.host, data={"fingerprint": _fingerprint(key)})
        self._remember_key(name, key)

    def _remember_key(self, name: str, key: paramiko.PKey) -> None:
        """accept-new: append the unknown host's key to known_hosts (never replaces one)."""
        with _KNOWN_HOSTS_LOCK:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            current = self._known_keys().lookup(name)
            if current:              # another thread added it meanwhile: check against it
                if current.get(key.get_name()) == key:
                    return
                raise HostKeyFault(f"{self.host}: HOST KEY MISMATCH for {name} (changed while connecting)",
                                   host=self.host)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="ascii") as fh:
                fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")

    def _authenticate(self, t: paramiko.Transport) -> None:
        tried: list[str] = []
        allowed: list[str] | None = None
        key = self._load_key()
        candidates: list[tuple[str, paramiko.PKey]] = []
        if key is not None:
            candidates.append((f"key {self.key_file}", key))
        if self.use_agent and os.environ.get("SSH_AUTH_SOCK"):
            try:
                for k in paramiko.Agent().get_keys():
                    candidates.append(("agent key", k))
            except paramiko.SSHException:
                pass
        try:
            for label, k in candidates:
                tried.append(label)
                try:
                    t.auth_publickey(self.user, k)
                    if t.is_authenticated():
                        return
                except paramiko.BadAuthenticationType as exc:
                    allowed = list(exc.allowed_types)
                    break
                except paramiko.AuthenticationException:
                    continue
            password = self._password()
            if password is not None and (allowed is None or "password" in allowed):
                tried.append("password")
                try:
                    t.auth_password(self.user, password.reveal())
                    if t.is_authenticated():
                        return
                except paramiko.BadAuthenticationType as exc:
                    allowed = list(exc.allowed_types)
                except paramiko.AuthenticationException:
                    pass
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if isinstance(exc, paramiko.AuthenticationException):
                pass
            else:
                raise ConnectionFault(f"{self.host}: connection lost during authentication ({_brief(exc)})",
                                      host=self.host) from None
        how = ", ".join(tried) if tried else "no credentials configured (ssh_key_file, ssh_agent, ssh_password_env)"
        extra = f"; server accepts: {', '.join(allowed)}" if allowed else ""
        raise AuthenticationFault(f"{self.host}: authentication as {self.user} at {self.address}:{self.port} "
                                  f"refused (tried: {how}){extra}", host=self.host)

    def _drop_transport(self) -> None:
        """Forget a dead (or closing) transport and the SFTP client riding on it."""
        with self._lock:
            self._forget_sftp()
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def _forget_sftp(self, sftp: paramiko.SFTPClient | None = None) -> None:
        """Close the SFTP client (only if it is still ``sftp``, when given) and free its session slot."""
        with self._lock:
            current = self._sftp
            if current is None or (sftp is not None and current is not sftp):
                return
            self._sftp = None
        try:
            current.close()
        except Exception:
            pass
        self.sessions.release()

    # --- sessions -------------------------------------------------------
    def _acquire_slot(self) -> None:
        """Wait for a free session slot; an idle SFTP client gives its slot up to a waiting command."""
        steal_after = 0.0 if self.max_sessions <= 2 else 2.0
        waited = 0.0
        while not self.sessions.acquire(timeout=0.25):
            waited += 0.25
            if waited >= steal_after and self._sftp is not None and self._sftp_lock.acquire(blocking=False):
                try:
                    self._forget_sftp()
                finally:
                    self._sftp_lock.release()

    def _open_session(self, opener: Any, what: str) -> Any:
        """Open a session with ``opener(transport)`` while holding a slot; returns it with the slot held.

        The caller releases the slot when the session ends. A refusal by a
        live transport is back-pressure (wait, ask again until
        ``ssh_command_timeout``); a transport found dead before anything was
        sent is re-opened (nothing ran, so this is no retry of the command).
        """
        give_up = time.monotonic() + self.command_timeout
        refusals = dead = 0
        while True:
            self._acquire_slot()
            try:
                t = self._ensure_transport()          # ConnectionFault: cannot connect
                try:
                    return opener(t)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    if t.is_active() and not _is_refusal(exc):
                        # the session opened but its program did not start (subsystem missing...)
                        raise ChannelFault(f"{self.host}: cannot open {what} ({_brief(exc)})",
                                           host=self.host) from None
                    if t.is_active():
                        refusals += 1
                        # refused with no other session of ours open: the server takes none at all
                        alone = self.sessions.in_use <= 1 and refusals >= 8
                        if alone or time.monotonic() >= give_up:
                            raise ChannelFault(
                                f"{self.host}: the server refused {what} {refusals} times "
                                f"({_brief(exc)}); is ssh_max_sessions ({self.max_sessions}) above "
                                "its MaxSessions?",
                                host=self.host, data={"refusals": refusals}) from None
                        reason = "refused"
                    else:
                        dead += 1
                        self._broken()
                        if dead > 3:
                            raise ChannelFault(f"{self.host}: connection keeps dropping before {what} "
                                               f"opens ({_brief(exc)})", host=self.host) from None
                        reason = "dead"
            except BaseException:
                self.sessions.release()
                raise
            self.sessions.release()
            if reason == "refused":
                time.sleep(self.sessions.backoff(refusals))

    # --- the Connection protocol --------------------------------------
    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run one cmd.exe command line; ChannelFault when its channel dies or times out."""
        return self._exec(command, None, timeout)

    def run_input(self, command: str, data: bytes, *, timeout: float | None = None) -> CommandResult:
        """Run one cmd.exe command line with ``data`` on its standard input, then end the
        input (EOF): a file and the line that uses it in one round trip, on one channel."""
        return self._exec(command, data, timeout)

    def _exec(self, command: str, data: bytes | None, timeout: float | None) -> CommandResult:
        limit = float(timeout if timeout is not None else self.command_timeout)
        chan = self._open_session(lambda t: t.open_session(timeout=self.connect_timeout),
                                  "a session channel")
        try:
            try:
                chan.exec_command(command)
                deadline = time.monotonic() + limit  # the send and the collect share the timeout
                if data is not None:
                    # a command that ended before it took its whole input (a redirection that
                    # failed, a program not found) is collected as it ended: its own output and
                    # exit code say why, where a send to a closed channel said "connection lost"
                    self._send_input(chan, data, deadline)
                # a moment at least to read what a command that ended just now printed
                status, out, err = self._collect(chan, max(1.0, deadline - time.monotonic()))
            except socket.timeout:  # sending the input: the host stopped reading it
                self._broken()
                raise ChannelFault(f"{self.host}: command timed out after {limit:g}s (its input not taken)",
                                   host=self.host, data={"timeout": limit}) from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self._broken()
                raise ChannelFault(f"{self.host}: connection lost while running a command ({_brief(exc)})",
                                   host=self.host) from None
        finally:
            chan.close()
            self.sessions.release()
        self.last_answer = time.time()
        if self.exit_code_trailer:
            m = _EXIT_TRAILER.search(err)
            if m:
                status, err = int(m.group(1)), err[:m.start()]
        return CommandResult(rc=status, stdout=decode_output(out, self.codepage),
                             stderr=decode_output(err, self.codepage))

    @staticmethod
    def _send_input(chan: paramiko.Channel, data: bytes, deadline: float) -> bool:
        """Send ``data`` as the command's standard input, then EOF; False when the command
        ended (its exit status came, or the host closed the channel) before taking it all.
        socket.timeout when the deadline passes with the host no longer reading."""
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            if chan.exit_status_ready() or chan.closed:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            chan.settimeout(min(remaining, 0.5))  # wake to see whether the command ended
            try:
                n = chan.send(view[sent:sent + 32768])
            except socket.timeout:
                continue
            except OSError:
                if chan.exit_status_ready() or chan.eof_received or chan.closed:
                    return False
                raise
            if n <= 0:
                return False
            sent += n
        chan.shutdown_write()
        return True

    def _collect(self, chan: paramiko.Channel, limit: float) -> tuple[int, bytes, bytes]:
        deadline = time.monotonic() + limit
        out: list[bytes] = []
        err: list[bytes] = []
        # No select() on chan.fileno(): that costs two pipe fds per channel and fails
        # beyond fd 1024; a short recv timeout wakes on data at once just the same.
        while True:
            if chan.recv_stderr_ready():
                err.append(chan.recv_stderr(65536))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelFault(f"{self.host}: command timed out after {limit:g}s", host=self.host,
                                   data={"timeout": limit})
            chan.settimeout(min(remaining, 0.2))
            try:
                data = chan.recv(65536)
            except socket.timeout:
                transport = chan.get_transport()
                if transport is None or not transport.is_active():
                    break
                continue
            if not data:            # EOF or channel closed
                break
            out.append(data)
        # output is complete; the exit status follows (or never comes on a drop)
        while not chan.exit_status_ready():
            remaining = deadline - time.monotonic()
            if chan.closed or remaining <= 0 or not (chan.get_transport() and chan.get_transport().is_active()):
                break
            chan.status_event.wait(min(remaining, 0.5))
        while chan.recv_ready():
            out.append(chan.recv(65536))
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(65536))
        if not chan.exit_status_ready():
            self._broken()
            if time.monotonic() >= deadline:
                raise ChannelFault(f"{self.host}: command timed out after {limit:g}s", host=self.host,
                                   data={"timeout": limit})
            raise ChannelFault(f"{self.host}: connection dropped mid-command (no exit status)",
                               host=self.host)
        status = chan.recv_exit_status()
        if status == -1:
            raise ChannelFault(f"{self.host}: command ended without an exit status (killed?)",
                               host=self.host)
        return status, b"".join(out), b"".join(err)

    def _broken(self) -> None:
        """Forget the transport if it is dead (never closes a live one other commands are using)."""
        with self._lock:
            if self._transport is not None and not self._transport.is_active():
                self._drop_transport()

    def _sftp_client(self) -> paramiko.SFTPClient:
        """The SFTP client, opened on first use (call holding ``_sftp_lock``); it holds a session slot."""
        with self._lock:
            sftp = self._sftp
            t = self._transport
        if sftp is not None:
            chan = sftp.get_channel()
            if chan is not None and not chan.closed and t is not None and t.is_active():
                return sftp
            self._forget_sftp(sftp)

        def start(t: paramiko.Transport) -> paramiko.SFTPClient:
            client = paramiko.SFTPClient.from_transport(t)
            if client is None:
                raise paramiko.SSHException("the server did not start the sftp subsystem")
            return client

        sftp = self._open_session(start, "the SFTP subsystem")   # the slot stays with the client
        sftp.get_channel().settimeout(self.command_timeout)
        with self._lock:
            self._sftp = sftp
        return sftp

    def put(self, data: bytes, remote_path: str) -> None:
        """Write ``data`` to the Windows path ``remote_path`` through SFTP (replacing it)."""
        path = windows_to_sftp_path(remote_path, self._sftp_paths)
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                with sftp.open(path, "wb") as fh:
                    fh.set_pipelined(True)
                    fh.write(data)
                self.last_answer = time.time()
            except (FileNotFoundError, PermissionError) as exc:
                raise PermanentFault(f"{self.host}: cannot write {remote_path}: {exc.strerror or exc}",
                                     host=self.host) from None
            except (IOError, EOFError, paramiko.SSHException) as exc:
                self._on_sftp_error(sftp, exc, f"writing {remote_path}")

    def get(self, remote_path: str) -> bytes:
        """Read the file at the Windows path ``remote_path`` through SFTP."""
        return self._read(remote_path, remove=False)

    def take(self, remote_path: str) -> bytes:
        """Read the file at ``remote_path`` and remove it on the same SFTP session: the
        ``get`` and ``del`` of a scratch file in one operation, without a command line
        (and its session slot and cmd.exe start) for the delete."""
        return self._read(remote_path, remove=True)

    def _read(self, remote_path: str, *, remove: bool) -> bytes:
        path = windows_to_sftp_path(remote_path, self._sftp_paths)
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                with sftp.open(path, "rb") as fh:
                    fh.prefetch()
                    data = fh.read()
                if remove:
                    sftp.remove(path)
                self.last_answer = time.time()
                return data
            except (FileNotFoundError, PermissionError) as exc:
                raise PermanentFault(f"{self.host}: cannot {'take' if remove else 'read'} {remote_path}: "
                                     f"{exc.strerror or exc}",
                                     host=self.host, data={"missing": isinstance(exc, FileNotFoundError)}) from None
            except (IOError, EOFError, paramiko.SSHException) as exc:
                self._on_sftp_error(sftp, exc, f"reading {remote_path}")
        raise AssertionError("unreachable")

    def _on_sftp_error(self, sftp: paramiko.SFTPClient, exc: BaseException, what: str) -> None:
        chan = sftp.get_channel()
        if isinstance(exc, (socket.timeout, EOFError, paramiko.SSHException)) or chan is None or chan.closed:
            self._forget_sftp(sftp)
            self._broken()
            raise ChannelFault(f"{self.host}: connection lost {what} ({_brief(exc)})", host=self.host) from None
        raise PermanentFault(f"{self.host}: SFTP error {what}: {_brief(exc)}", host=self.host) from None

    def shed(self) -> bool | None:
        """Close the transport if nothing of ours uses it now (no command, no transfer): the
        pool gives back the socket and thread of a host it has not asked for in a while. The
        connection stays usable: its next command opens a new transport (a reconnect, not a
        fault). True when a transport was closed, None when there was none to close (never
        connected, or dropped), False, changing nothing, when a command or transfer is under way."""
        if not self._sftp_lock.acquire(blocking=False):   # a transfer is under way
            return False
        try:
            if not self._lock.acquire(blocking=False):    # a connect or a teardown is under way
                return False
            try:
                if self._closed:
                    return None
                # a command holds its session slot from before it takes (or opens) the transport
                # until its channel is closed: a slot held other than by the idle SFTP client is
                # one in use
                if self.sessions.in_use - (1 if self._sftp is not None else 0) > 0:
                    return False
                had = self._transport is not None
                if had:
                    self._drop_transport()
                if self._jump is not None:   # the bastion's transport carried only ours
                    self._jump.shed()
                return True if had else None
            finally:
                self._lock.release()
        finally:
            self._sftp_lock.release()

    def close(self) -> None:
        """Close the SFTP session, the transport and any jump host; safe twice."""
        with self._lock:
            self._closed = True
            self._drop_transport()
            if self._jump is not None:
                self._jump.close()
                self._jump = None


def _fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint.split(":", 1)[-1] if hasattr(key, "fingerprint") else key.get_base64()[:16]


def _is_refusal(exc: BaseException) -> bool:
    """Whether a failed channel open is the server saying "not now" (MaxSessions reached, slow to answer).

    paramiko raises ChannelException for the server's refusal; when several
    threads open channels at once, one thread may take another's exception
    and see only "Unable to open channel." instead; a channel open the server
    has not answered within the connect timeout is "Timeout opening channel.".
    """
    if isinstance(exc, paramiko.ChannelException):
        return True
    return isinstance(exc, paramiko.SSHException) and str(exc) in (
        "Unable to open channel.", "Timeout opening channel.")


#: What the OpenSSH releases of 2005 (3.9 to 4.2: Cygwin's, copSSH's) offer for key exchange;
#: the SHA-2 kinds came with OpenSSH 5.7 (ECDH), 7.3 (group14-sha256) and 7.2 (rsa-sha2 signatures).
LEGACY_KEX = ("diffie-hellman-group-exchange-sha1", "diffie-hellman-group14-sha1", "diffie-hellman-group1-sha1")


def _algorithms_hint(exc: BaseException) -> str:
    """Why a handshake found no common algorithm, when the cause is this paramiko's own set:
    paramiko 5 implements none of the SHA-1 key exchanges and no ``ssh-rsa`` (SHA-1) host-key
    signature, which are all an sshd of 2005 offers (docs/transports.md)."""
    if not isinstance(exc, paramiko.ssh_exception.IncompatiblePeer):
        return ""
    kex = getattr(paramiko.Transport, "_kex_info", {})
    if any(k in kex for k in LEGACY_KEX):
        return ""
    return (f"; this paramiko ({paramiko.__version__}) implements no SHA-1 key exchange and no ssh-rsa "
            "host key, the only ones an OpenSSH of 2005 (Cygwin, copSSH) offers: for such hosts run the runner "
            "with paramiko 3.x (pip install 'paramiko>=3.4,<4'; docs/transports.md)")


def _brief(exc: BaseException) -> str:
    """An exception's type and message (paramiko never puts secrets in them)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
