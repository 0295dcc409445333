"""The in-process lab's round trips, run in worker processes: one per CPU.

The lab emulates every command a runner sends (a cmd.exe parser, ``reg``, ``wmic``,
``ldifde``, SQLite stores) in Python. In the runner's own process that work shared one
interpreter lock with the runner's engine threads, so a run used one core of the machine,
whatever ``--forks`` was. ``LabConnection`` (runner.connections.lab) now sends each round
trip to a pool of worker processes, started on the first round trip of a process and kept
for its life: as many as there are CPUs (``RUNNER_LAB_WORKERS`` sets another number; 0 runs
the round trips in the calling thread, as before, for tests that patch the lab's code).

A request names the lab's folder, the host, the session's logon type and what to do (run a
command line, with or without standard input; put a file; read, or read and delete one).
The worker answers with the command's exit code and output, or the error the lab raised.
It holds no state a lab's files do not: the stores are SQLite files that the served lab's
session processes already share, each worker opens a lab as one process does, and reopens
it when the runner's process reopens it (``generation``: after lab.json changed).

A worker ignores Ctrl-C (the runner stops its run; a command already sent finishes, as it
would on a Windows host) and exits when its pipe from the runner closes: when the runner
exits, however it is killed. A worker that dies mid-request is a dropped connection to the
runner (``ChannelFault``, retried), and a new one takes its place.
"""
from __future__ import annotations

import functools
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("!Q")

#: Environment variable: how many lab worker processes (default: the CPUs, at least 2).
WORKERS_ENV = "RUNNER_LAB_WORKERS"
_PARENT_ENV = "RUNNER_LAB_WORKER_OF"
#: Where the ``runner`` package is imported from, put first on a worker's path: the worker runs
#: the very code its runner does, installed or not.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class WorkerGone(Exception):
    """The worker process ended (or its pipe broke) before it answered."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def send(fd: int, obj: Any) -> None:
    """Write one length-prefixed pickle to ``fd``."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, _HEADER.pack(len(body)) + body)


def receive(fd: int) -> Any:
    """Read one length-prefixed pickle from ``fd``; WorkerGone at end of file."""
    head = _read_exactly(fd, _HEADER.size)
    if head is None:
        raise WorkerGone("end of file")
    body = _read_exactly(fd, _HEADER.unpack(head)[0])
    if body is None:
        raise WorkerGone("end of file inside a message")
    return pickle.loads(body)


# -- the work itself, in a worker or in the calling thread ----------------------

_opened: dict[str, tuple[int, Any]] = {}


def _lab(path: str, generation: int) -> Any:
    """The worker's Lab for ``path``, reopened when the runner reopened its own."""
    from runner.lab.store import Lab
    have = _opened.get(path)
    if have is None or have[0] != generation:
        have = _opened[path] = (generation, Lab(path))
    return have[1]


def perform(lab: Any, host_name: str, logon_type: str, op: str, args: tuple) -> tuple:
    """Do one round trip's lab work on ``host_name`` of ``lab``; returns the answer tuple.

    ``run``: (command, stdin text or None) -> ("ok", rc, stdout, stderr).
    ``put``: (path, data) -> ("ok",). ``read``: (path, remove) -> ("ok", data).
    An ``OSError`` or ``InvalidPath`` of a put or read is ("failed", message).
    """
    from runner.lab import logon
    from runner.lab.shell import SessionInput, Shell
    from runner.lab.store import InvalidPath
    host = lab.host(host_name)
    with logon.session(logon_type):
        if op == "run":
            command, stdin = args
            result = Shell(lab, host).run(
                command, stdin=SessionInput(stdin) if stdin is not None else "")
            return ("ok", result.rc, result.stdout, result.stderr)
        if op == "put":
            path, data = args
            try:
                host.fs.write(path, data)
            except (OSError, InvalidPath) as e:
                return ("failed", f"put {path}: {e}")
            host.record("put", f"put {path} ({len(data)} bytes)", 0)
            return ("ok",)
        if op == "read":
            path, remove = args
            try:
                data = host.fs.read(path)
            except (OSError, InvalidPath) as e:
                return ("failed", f"get {path}: {e}")
            if remove:
                host.fs.delete(path)
                host.record("take", f"take {path} ({len(data)} bytes, then deleted)", 0)
            return ("ok", data)
    raise ValueError(f"unknown lab request {op!r}")


def _serve(requests: int, answers: int) -> int:
    """A worker's loop: answer requests until the runner closes the pipe."""
    from runner.lab.shell import load_programs
    load_programs()
    while True:
        try:
            path, generation, host_name, logon_type, op, args = receive(requests)
        except WorkerGone:
            return 0
        try:
            answer = perform(_lab(path, generation), host_name, logon_type, op, args)
        except BaseException:  # noqa: BLE001 - a lab defect: the runner re-raises it with this text
            answer = ("crashed", traceback.format_exc())
        try:
            send(answers, answer)
        except (BrokenPipeError, OSError):
            return 0


def _exit_with(parent: int) -> None:
    """End this worker as soon as the runner that started it has ended (a SIGKILL closes the
    pipe only once a command in hand is done): its session is gone, as sshd ends a session's
    processes when the connection drops, and no command of a killed run overlaps the next."""
    while True:
        time.sleep(0.05)
        if os.getppid() != parent:
            os._exit(0)


def main() -> int:
    """Entry point of ``python -m runner.lab.workers``: requests on stdin, answers on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = int(os.environ.get(_PARENT_ENV, "0") or 0)
    if parent and os.getppid() != parent:
        return 0
    if parent:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    requests, answers = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)   # a stray print of the lab's code goes to stderr, never into an answer
    return _serve(requests, answers)


# -- the runner's side -----------------------------------------------------------

class _Worker:
    """One worker process and its two pipes."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env[_PARENT_ENV] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        # A session of its own: the terminal's Ctrl-C goes to the runner, which stops its run;
        # a command already sent to a worker finishes, as on a Windows host.
        # -S: the lab needs only the standard library and this package (on PYTHONPATH), and
        # a start without site's path files is a third less CPU (as the served lab's sessions).
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "runner.lab.workers"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, close_fds=True, env=env, start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.requests = self.proc.stdin.fileno()
        self.answers = self.proc.stdout.fileno()

    def call(self, request: tuple) -> tuple:
        try:
            send(self.requests, request)
            return receive(self.answers)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise WorkerGone(str(e)) from None

    def cpu_seconds(self) -> float:
        """User and system CPU seconds of the process so far (0 where /proc cannot tell)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@functools.lru_cache(maxsize=1)
def cpus() -> int:
    """The CPUs this process may run on (at least 2): read once, not at every round trip."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 2
    return max(2, n)


def worker_count() -> int:
    """How many worker processes: ``RUNNER_LAB_WORKERS``, or the CPUs (at least 2)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            return max(0, int(raw))
        except ValueError:
            pass
    return cpus()


class WorkerPool:
    """Worker processes shared by a process's lab connections; one request each at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[_Worker] = []
        self._count = 0   # workers started and not retired
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._live: set[_Worker] = set()
        self._retired_cpu = 0.0

    def _take(self) -> _Worker:
        """An idle worker, or a new one while fewer than ``size`` run; else wait for either
        (a worker retired makes room for a new one: waiters never outlive the workers)."""
        with self._cond:
            while not self._idle and self._count >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            worker = _Worker()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._live.add(worker)
        return worker

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        cpu = worker.cpu_seconds()
        if kill:
            worker.proc.kill()
        worker.stop()
        with self._cond:
            self._count -= 1
            self._live.discard(worker)
            self._retired_cpu += cpu
            self._cond.notify()

    def call(self, path: str, generation: int, host: str, logon_type: str, op: str, *args: Any) -> tuple:
        """Send one request to an idle worker and return its answer; WorkerGone if it died."""
        worker = self._take()
        try:
            answer = worker.call((path, generation, host, logon_type, op, args))
        except BaseException:
            # it died, or this thread was interrupted between request and answer (the pipe's
            # next message would not be the next request's answer): a new worker takes its place
            self._retire(worker, kill=True)
            raise
        with self._cond:
            self._idle.append(worker)
            self._cond.notify()
        return answer

    def cpu_seconds(self) -> float:
        """CPU seconds (user and system) the pool's workers used so far, those that ended
        included: what a benchmark adds to its own process's CPU time."""
        with self._cond:
            total, live = self._retired_cpu, list(self._live)
        for w in live:
            total += w.cpu_seconds()
        return total

    def stop(self) -> None:
        """Stop every idle worker (at the process's exit)."""
        while True:
            with self._cond:
                if not self._idle:
                    break
                w = self._idle.pop()
            self._retire(w, kill=False)


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def pool() -> WorkerPool | None:
    """This process's worker pool (None when ``RUNNER_LAB_WORKERS`` is 0: round trips then
    run in the calling thread)."""
    global _pool
    size = worker_count()
    if size == 0:
        return None
    with _pool_lock:
        if _pool is None or _pool._pid != os.getpid():   # a forked child starts its own
            _pool = WorkerPool(size)
            import atexit
            atexit.register(_pool.stop)
        return _pool


if __name__ == "__main__":
    sys.exit(main())
