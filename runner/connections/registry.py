"""Pick a connection factory by ``host.connection`` and share one connection per host.

Factories live in their own modules (``runner.connections.lab.LabConnection``,
``runner.connections.ssh.SSHConnection``) and are imported only when a host
of that kind is first contacted, so a lab-only run never imports paramiko.
Tests may add kinds with ``register_kind``.
"""
from __future__ import annotations

import importlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from runner.connections.base import Connection
from runner.errors import ConnectionFault, HostGivenUp, PermanentFault, RunnerError, StepFault
from runner.model import Host, Inventory


@dataclass(frozen=True)
class ConnectionOptions:
    """Run-wide connection settings from the command line."""

    accept_new_host_keys: bool = False
    connect_timeout: float = 10
    command_timeout: float = 300


Factory = Callable[[Host, Inventory, ConnectionOptions], Connection]

#: kind -> "module:attribute" of its factory, imported lazily.
_KINDS: dict[str, str] = {
    "lab": "runner.connections.lab:LabConnection",
    "ssh": "runner.connections.ssh:SSHConnection",
}
_extra: dict[str, Factory] = {}


class UnknownConnectionKind(RunnerError):
    """An inventory host names a connection kind nobody provides."""


def register_kind(kind: str, factory: Factory) -> None:
    """Make ``kind`` usable as ``host.connection`` (tests register in-memory kinds)."""
    _extra[kind] = factory


def factory_for(kind: str) -> Factory:
    """The factory for connection ``kind``; a clear RunnerError for an unknown one."""
    if kind in _extra:
        return _extra[kind]
    target = _KINDS.get(kind)
    if target is None:
        known = ", ".join(sorted({*_KINDS, *_extra}))
        raise UnknownConnectionKind(f"unknown connection kind {kind!r} (known: {known})")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownConnectionKind(
            f"connection kind {kind!r} is not available: cannot import {module_name} ({exc})") from None
    return getattr(module, attr)


def open_connection(host: Host, inventory: Inventory, options: ConnectionOptions) -> Connection:
    """Open a connection to ``host`` with the factory of its connection kind."""
    return factory_for(host.connection)(host, inventory, options)


#: Hosts whose connections may hold a transport (a socket and, for SSH, a thread) at once;
#: beyond it, the least recently asked for that is idle gives its transport back
#: (``shed``) and reconnects when next used. Fewer when the open-file limit leaves less.
MAX_LIVE_CONNECTIONS = 512
#: Descriptors kept for everything else when the cap comes from the open-file limit.
LIVE_FD_RESERVE = 256


def live_connection_cap() -> int:
    """MAX_LIVE_CONNECTIONS, or what the open-file limit leaves (at least 16), whichever is less."""
    from runner.oslimits import open_files_limit
    return min(MAX_LIVE_CONNECTIONS, max(16, open_files_limit() - LIVE_FD_RESERVE))


class ConnectionPool:
    """One connection per host for a whole run: opened lazily, reused, closed at the end.

    At most ``max_live`` of them hold a transport at once (a 10,000-machine estate would
    otherwise keep 10,000 sockets and paramiko threads for the whole night): past it, the
    least recently asked for connection that is idle closes its transport (``shed``) and
    opens a new one on its next use. Connections without ``shed`` (the lab's, in-process)
    are never counted.

    A fault of one command never closes the shared connection (other tasks
    use it); the connection re-opens a dead transport itself. Opening is
    serialised per host (concurrent tasks wait for the one open).
    A failed open is remembered for ``failure_memo`` seconds so that tasks
    queued behind it fail at once with the same fault instead of each
    waiting for a timeout; a retry after backoff opens again. A host the
    engine gave up on (``mark_unreachable``) fails at once for the rest of
    the run.
    """

    def __init__(self, inventory: Inventory, options: ConnectionOptions | None = None, *,
                 failure_memo: float = 1.0,
                 opener: Callable[[Host, Inventory, ConnectionOptions], Connection] = open_connection,
                 max_live: int | None = None) -> None:
        self.inventory = inventory
        self.max_live = max_live if max_live is not None else live_connection_cap()
        self._live: OrderedDict[str, Connection] = OrderedDict()   # may hold a transport; oldest first
        self._uses: dict[str, int] = {}   # get() calls per host: an entry used since a shed began stays
        self.shed_count = 0
        self.options = options or ConnectionOptions()
        self.failure_memo = failure_memo
        self._opener = opener
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._open: dict[str, Connection] = {}
        self._failed: dict[str, tuple[float, StepFault]] = {}
        self._unreachable: dict[str, str] = {}
        self._closed = False
        self.opened = 0

    def _host_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(name, threading.Lock())

    def get(self, name: str) -> Connection:
        """The shared connection to host ``name``, opening it on first use."""
        if name in self._unreachable:
            # no retries: the engine already spent them on this host earlier in the run
            raise HostGivenUp(f"{name} is unreachable ({self._unreachable[name]})", host=name)
        conn = self._open.get(name)
        if conn is not None:
            self._used(name, conn)
            return conn
        host = self.inventory.hosts.get(name)
        if host is None:  # a configuration mistake, not a network one: retrying cannot help
            raise PermanentFault(f"{name} is not a host of the inventory", host=name)
        with self._host_lock(name):
            conn = self._open.get(name)
            if conn is not None:
                return conn
            if self._closed:
                raise ConnectionFault("the run is over: connections are closed", host=name)
            failed = self._failed.get(name)
            if failed and time.monotonic() - failed[0] < self.failure_memo:
                raise failed[1]
            try:
                conn = self._opener(host, self.inventory, self.options)
            except StepFault as exc:
                if exc.host is None:
                    exc.host = name
                self._failed[name] = (time.monotonic(), exc)
                raise
            self._failed.pop(name, None)
            self._open[name] = conn
            self.opened += 1
        self._used(name, conn)
        return conn

    def _used(self, name: str, conn: Connection) -> None:
        """``name`` is about to be used: most recent now; shed the oldest idle beyond the cap."""
        if getattr(conn, "shed", None) is None:
            return
        with self._lock:
            self._uses[name] = self._uses.get(name, 0) + 1
            self._live[name] = conn
            self._live.move_to_end(name)
            excess = len(self._live) - self.max_live
            if excess <= 0:
                return
            # oldest first, never the one asked for, each with its use count: one asked for
            # again while we shed it (and so reconnected) keeps its place
            candidates = [(n, c, self._uses.get(n, 0)) for n, c in self._live.items() if n != name][:excess + 8]
        outcomes: list[tuple[str, int, bool | None]] = []
        freed = 0
        for other, c, uses in candidates:
            if freed >= excess:
                break
            try:
                done = c.shed()
            except Exception:  # shedding a broken connection must not fail the task asking
                done = False
            outcomes.append((other, uses, done))
            freed += done is not False
        with self._lock:
            for other, uses, done in outcomes:
                if self._uses.get(other, 0) != uses or other not in self._live:
                    continue
                if done is False:              # busy: tried again after the others
                    self._live.move_to_end(other)
                else:                          # closed now, or held nothing (never connected)
                    del self._live[other]
                    self.shed_count += done is True

    def invalidate(self, name: str) -> None:
        """Close and forget the connection to ``name`` so that the next use opens a new one.

        Not for a failed command: the connection is shared, and closing it
        kills every other task's command in flight on it. A connection heals
        a dead transport itself (runner.connections.ssh).
        """
        with self._host_lock(name):
            conn = self._open.pop(name, None)
        with self._lock:
            self._live.pop(name, None)
        if conn is not None:
            _close_quietly(conn)

    def mark_unreachable(self, name: str, reason: str) -> None:
        """Give up on ``name`` for the rest of the run: later ``get`` calls fail at once.

        The open connection, if any, stays until the run ends: a task still
        running on it (one that got in before the fault) finishes.
        """
        self._unreachable[name] = reason
        with self._lock:
            self._live.pop(name, None)   # it is never asked for again: not counted against the cap

    def answered_since(self, name: str, since: float) -> bool:
        """Whether the open connection to ``name`` completed a command at or after ``since`` (time.time()).

        Connections that keep no such record (``last_answer``) never claim to have answered.
        """
        answered = getattr(self._open.get(name), "last_answer", None)
        return answered is not None and answered >= since

    def is_unreachable(self, name: str) -> bool:
        return name in self._unreachable

    def close(self) -> None:
        """Close every open connection (errors while closing are ignored)."""
        with self._lock:
            self._closed = True
            conns = list(self._open.values())
            self._open.clear()
            self._live.clear()
        for conn in conns:
            _close_quietly(conn)


def _close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # closing a broken connection must not fail the run
        pass
