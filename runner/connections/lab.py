"""The ``lab`` connection: runs command lines on a lab host (runner.lab) without a network.

Each round trip's lab work runs in one of the process's lab worker processes
(runner.lab.workers: one per CPU, started on the first round trip), or in the
calling thread when ``RUNNER_LAB_WORKERS=0``; either way the answer is the same.

The lab directory is ``lab_dir`` from the host's vars or the inventory's
``all.vars`` (absolute, or relative to the inventory file). The lab host is
the inventory host name (or ``vars.lab_host``). State persists in the lab
directory, so a resumed run sees what a killed run changed.

Faults from lab.json (runner.lab.faults), drawn on every call: ``down`` ->
ConnectionFault("host unreachable") on every call (it cannot be connected
to); ``timeout`` -> ChannelFault before the command runs; ``drop`` ->
ChannelFault after it ran (its effect stays, the answer is lost): a fault of
that one command, as over SSH, never of the host; ``slow`` -> a short sleep;
``put_truncated`` -> a ``put`` writes only the first half of the file (a
transfer cut short, which the step's hash check must catch).
``put`` writes the file (creating missing folders) and is journaled as a
mutating command; ``get`` of a missing file is a PermanentFault.

How the session logged on: host variable ``lab_logon``, ``password`` (the
default: the session has network credentials and reaches shares) or ``key``
(none: every UNC path answers "Access is denied", as in a key-based SSH logon
on Windows; runner.lab.logon).
"""
from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

from runner.connections.base import CommandResult
from runner.errors import ChannelFault, ConnectionFault, PermanentFault
from runner.lab import logon, workers
from runner.lab.faults import Faults
from runner.lab.store import Lab, LabHost, close_ended_threads
from runner.windows.scripts import DEFAULT_CODEPAGE, codepage_name

_labs: dict[Path, Lab] = {}
_labs_lock = threading.Lock()


#: How many round trips the lab emulates at once in the calling threads when there are no lab
#: workers (``RUNNER_LAB_WORKERS=0``), whatever ``--forks`` is; with workers, their number
#: bounds it the same way. Each is Python code (a cmd.exe parser, reg, wmic, SQLite) under
#: one interpreter lock: with 25 engine threads interleaving them a 200-client run took a
#: quarter more CPU (41 s against 31 s at 2; the lock passing between threads, not the work)
#: for no more done. Threads wait for a slot (or a worker) after the ``slow`` fault's delay, so
#: a slow host still delays only its own commands; a command never waits for another
#: in-process command that needs a slot (a lock one holds, the LCS store's or a host's, is
#: taken inside its own slot and given up before it ends).
LAB_SLOTS = threading.BoundedSemaphore(workers.cpus())


def open_lab(path: Path) -> Lab:
    """A process-wide shared Lab object per directory (lab.json is read once)."""
    key = Path(path).resolve()
    with _labs_lock:
        lab = _labs.get(key)
        if lab is None:
            lab = _labs[key] = Lab(key)
        return lab


def lab_dir_for(host: Any, inventory: Any) -> Path:
    """Where the host's lab lives, from ``lab_dir`` in host vars or inventory vars."""
    raw = (getattr(host, "vars", None) or {}).get("lab_dir") or (inventory.vars or {}).get("lab_dir")
    if not raw:
        raise PermanentFault("lab connection needs the variable lab_dir", host=host.name)
    p = Path(str(raw))
    if not p.is_absolute() and getattr(inventory, "path", None):
        p = _folder_of(str(inventory.path), os.getcwd()) / p
    return p


@functools.lru_cache(maxsize=64)
def _folder_of(path: str, cwd: str) -> Path:
    """The resolved folder of the file ``path`` (relative to ``cwd``): resolved once, not once a
    host (a realpath costs an lstat per path component; 1,000 hosts share one inventory)."""
    return (Path(cwd) / path).resolve().parent


def real_lab_dir(host: Any, inventory: Any, resolved: dict[Path, Path]) -> Path:
    """``lab_dir_for`` with links resolved, through ``resolved`` (given -> real path): the
    hosts of a lab all name one folder, so one realpath (an lstat per path component) for
    all of them rather than one a host."""
    given = lab_dir_for(host, inventory)
    real = resolved.get(given)
    if real is None:
        real = resolved[given] = given.resolve()
    return real


def check_labs(inventory: Any, hosts: Any) -> None:
    """Open the lab of every lab-connected host in ``hosts`` before a run starts.

    A lab_dir that is not a lab, or a lab.json that is malformed, is an
    InputError (exit 4) naming the file and the host, instead of every task of
    the night failing one by one. A host missing from the lab is left to the
    run (it is reported unreachable, like a machine that is switched off).
    """
    from runner.errors import InputError
    seen: set[Path] = set()
    resolved: dict[Path, Path] = {}
    for name in sorted(hosts):
        host = inventory.hosts.get(name)
        if host is None or getattr(host, "connection", None) != "lab":
            continue
        try:
            real = real_lab_dir(host, inventory, resolved)
        except PermanentFault as e:
            raise InputError(f"host {name}: {e.message}", getattr(inventory, "path", None)) from None
        if real in seen:
            continue
        seen.add(real)
        try:
            Faults(open_lab(real))
        except InputError as e:
            raise InputError(f"{e.message} (lab_dir of host {name})", e.file, e.line, e.col) from None


class LabConnection:
    """A Connection (runner.connections.base) to one lab host, in-process."""

    def __init__(self, host: Any, inventory: Any, options: Any = None) -> None:
        self.host = host.name
        try:
            self.lab = open_lab(lab_dir_for(host, inventory))
        except Exception as e:  # InputError from a missing/bad lab.json
            raise PermanentFault(f"lab not available: {e}", host=host.name) from None
        name = (getattr(host, "vars", None) or {}).get("lab_host") or host.name
        try:
            self.lab_host: LabHost = self.lab.host(str(name))
        except KeyError:
            raise ConnectionFault("host unreachable (not in the lab)", host=host.name) from None
        self.faults = Faults(self.lab)
        try:
            self.logon = logon.check_logon((getattr(host, "vars", None) or {}).get("lab_logon"))
        except ValueError as e:
            raise PermanentFault(str(e), host=host.name) from None
        codepage = (getattr(host, "vars", None) or {}).get("ssh_codepage", DEFAULT_CODEPAGE)
        self.codepage = codepage_name(codepage) or ""
        if not self.codepage:  # as the SSH connection: the inventory says what the host's console is
            raise PermanentFault(f"ssh_codepage is {codepage!r}: not a code page", host=host.name)
        self.closed = False

    def _before(self) -> None:
        if self.closed:
            raise ConnectionFault("connection closed", host=self.host)
        kind = self.faults.before_command(self.lab_host)
        if kind == "down":
            raise ConnectionFault("host unreachable", host=self.host)
        if kind == "timeout":
            raise ChannelFault("timed out waiting for the host", host=self.host)

    def _after(self) -> None:
        if self.faults.after_command(self.lab_host) == "drop":
            raise ChannelFault("connection dropped by the host", host=self.host)

    def _round_trip(self, op: str, *args: Any) -> tuple:
        """One round trip's lab work (runner.lab.workers.perform): in a lab worker process, or
        in this thread under ``LAB_SLOTS`` when there are none (``RUNNER_LAB_WORKERS=0``)."""
        pool = workers.pool()
        if pool is None:
            with LAB_SLOTS:
                answer = workers.perform(self.lab, self.lab_host.name, self.logon, op, args)
        else:
            try:
                answer = pool.call(str(self.lab.path), self.lab.generation, self.lab_host.name,
                                   self.logon, op, *args)
            except workers.WorkerGone:
                raise ChannelFault("connection dropped (the lab's worker process ended)",
                                   host=self.host) from None
        if answer[0] == "failed":
            raise PermanentFault(answer[1], host=self.host)
        if answer[0] == "crashed":
            raise RuntimeError(f"the lab failed on {self.host}:\n{answer[1]}")
        return answer

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run one cmd.exe command line on the lab host."""
        self._before()
        _, rc, stdout, stderr = self._round_trip("run", command, None)
        self._after()
        return CommandResult(rc, stdout, stderr)

    def run_input(self, command: str, data: bytes, *, timeout: float | None = None) -> CommandResult:
        """Run one command line with ``data`` on its standard input (one round trip). The
        lab's ``put_truncated`` fault cuts the input short, as it cuts a put."""
        self._before()
        if self.faults.fires(self.lab_host, "put_truncated"):
            data = data[:len(data) // 2]
        _, rc, stdout, stderr = self._round_trip(
            "run", command, data.decode("utf-8", errors="surrogateescape"))
        self._after()
        return CommandResult(rc, self._as_read(stdout), self._as_read(stderr))

    def _as_read(self, text: str) -> str:
        """Output holding input bytes that were not UTF-8 (surrogate-escaped: a program printed
        its input as it came) read as an SSH client reads them: in the console's code page."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", errors="surrogateescape")
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode(self.codepage, errors="replace")
        return text

    def put(self, data: bytes, remote_path: str) -> None:
        """Write ``data`` to a Windows path of the host (journaled as mutating)."""
        self._before()
        if self.faults.fires(self.lab_host, "put_truncated"):
            data = data[:len(data) // 2]
        self._round_trip("put", remote_path, data)
        self._after()

    def get(self, remote_path: str) -> bytes:
        """Read a file of the host; PermanentFault if it does not exist."""
        return self._read(remote_path, remove=False)

    def take(self, remote_path: str) -> bytes:
        """Read a file of the host and delete it, in one round trip (see runner.steps._clients.take)."""
        return self._read(remote_path, remove=True)

    def _read(self, remote_path: str, *, remove: bool) -> bytes:
        self._before()
        data = self._round_trip("read", remote_path, remove)[1]
        self._after()
        return data

    def close(self) -> None:
        self.closed = True
        close_ended_threads()  # the lab connections of the run's finished worker threads
