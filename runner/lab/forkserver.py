"""The served lab's sessions forked from one warm process instead of a Python start each.

Every command a runner sends over SSH is a new session process under sshd
(OpenSSH runs the ForceCommand once per channel). Started as
``python -S -m runner.lab.serve session``, each one paid the interpreter's
start and the lab shell's imports, about 70 % of a simple command's CPU on
the served lab: on a 2-core machine the lab's own CPU, not the network or the
runner, bounded a 48-client run.

So ``runner lab serve`` also starts this server (``python -m
runner.lab.forkserver --dir LAB --socket PATH``): one single-threaded process
that has imported the lab shell and listens on a UNIX socket (mode 0600, in
the lab's ``ssh/`` folder). The ForceCommand is ``runner/lab/_forward.py``,
which imports only interpreter built-ins; it passes its three standard
descriptors (sshd's pipes, by ``SCM_RIGHTS``), its working folder and its
environment. The server forks a child per session that takes those
descriptors as its own 0, 1 and 2, the environment as its own, and runs
:func:`runner.lab.serve.session_main` exactly as the session process did; the
server sends the child's exit code back and the forwarder exits with it. What
sshd and the runner see is unchanged: the same output, exit codes, dropped
connections (``session_main`` kills the sshd processes above the forwarder)
and SFTP relay.

The server holds no lab state: each child opens the lab afresh, as a session
process did, so ``runner lab faults`` takes effect at once. If the server is
not running, the forwarder runs the session itself.
"""
from __future__ import annotations

import argparse
import gc
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
from pathlib import Path

#: What a session child needs, imported once here (the point of the server).
from runner.lab import faults as _faults, logon as _logon, shell as _shell, store as _store  # noqa: F401
from runner import oslimits as _oslimits  # noqa: F401 - the store's connection cap reads it
from runner.lab import serve as _serve

# The lab shell imports its programs (runner.lab.commands, wmic's and ldifde's parsers...) on
# its first command: done here once, or every forked session would import them again (about
# 45 ms of a 55 ms echo).
_shell.load_programs()

MAX_REQUEST = 1 << 20
FORWARDER = Path(__file__).with_name("_forward.py")


def _read_request(conn: socket.socket) -> tuple[bytes, list[int]]:
    """(body, received descriptors) of one forwarder's request: a 4-byte length, then the body;
    the descriptors come with the first bytes."""
    fds: list[int] = []
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(3 * 4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(payload) // 4
                fds.extend(struct.unpack(f"{n}i", payload[:4 * n]))
        if not chunk:
            raise ConnectionError("the forwarder went away before its request was complete")
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ConnectionError("request too large")
    return data[4:], fds


def _run_child(lab_dir: Path, body: bytes, fds: list[int], peer: int) -> int:
    """In the forked child: take the session's descriptors and environment, run the session."""
    cwd, _, env = body.partition(b"\0\0")
    for i, fd in enumerate(fds[:3]):
        os.dup2(fd, i)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    for item in env.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            os.environb[key] = value
    try:
        os.chdir(cwd)
    except OSError:
        pass
    return _serve.session_main(lab_dir, client_pid=peer)


class ForkServer:
    """Accept forwarders on ``sock_path`` and fork a session child for each (single-threaded,
    so forking is safe); reap children and send each one's exit code to its forwarder."""

    def __init__(self, lab_dir: Path, sock_path: Path) -> None:
        self.lab_dir = lab_dir.resolve()
        self.sock_path = sock_path
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        # the process that started us (``runner lab serve``): when it is gone (killed with
        # SIGKILL, which it cannot pass on), nobody stops us, so we stop ourselves
        self.parent = os.getppid()

    def serve_forever(self) -> int:
        try:
            self.sock_path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.sock_path))
        finally:
            os.umask(old)
        listener.listen(512)
        # What is imported by now is never freed: keep the collector off it, so that a forked
        # session's collections neither scan it nor copy its pages (copy-on-write).
        gc.freeze()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        try:
            while not self.stopping:
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is listener:
                        self._accept(listener, wake_r, wake_w)
                    else:
                        try:
                            while os.read(wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                self._reap()
                if os.getppid() != self.parent:
                    self.stopping = True
        finally:
            sel.close()
            listener.close()
            try:
                self.sock_path.unlink()
            except FileNotFoundError:
                pass
        return 0

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _accept(self, listener: socket.socket, *pipe: int) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        fds: list[int] = []
        try:
            conn.settimeout(10)
            body, fds = _read_request(conn)
            peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))[0]
            if len(fds) < 3:
                raise ConnectionError("no descriptors came with the request")
            pid = os.fork()
        except (OSError, ConnectionError, struct.error):
            for fd in fds:
                os.close(fd)
            conn.close()   # the forwarder exits 255: a lost connection
            return
        if pid == 0:   # the session child
            rc = 255
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                listener.close()
                conn.close()
                for fd in pipe:
                    os.close(fd)
                for other in self.children.values():
                    other.close()
                rc = _run_child(self.lab_dir, body, fds, peer)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:   # noqa: BLE001 - a session's own failure, as a session process showed it
                try:
                    traceback.print_exc()
                except Exception:   # noqa: BLE001
                    pass
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:   # noqa: BLE001
                        pass
                os._exit(rc & 0xFF)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(struct.pack("!i", code if 0 <= code <= 255 else 255))
            except OSError:
                pass
            conn.close()


def forward_command(lab_dir: Path, sock_path: Path) -> str:
    """The ForceCommand that hands each session to the server at ``sock_path``."""
    import shlex
    return " ".join(shlex.quote(str(a)) for a in (sys.executable, "-S", "-E", FORWARDER, sock_path, lab_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.lab.forkserver")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--socket", required=True)
    ns = ap.parse_args(argv)
    return ForkServer(Path(ns.dir), Path(ns.socket)).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
