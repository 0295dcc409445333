"""The connection contract: run a cmd.exe command line, put and get a file.

A step module only ever sees this protocol, never SSH or the lab. Commands
are complete cmd.exe command lines (rendered by runner.windows.cmdline);
remote paths are Windows paths (``C:\\Temp\\alice.reg``).

Faults are raised as runner.errors classes: ConnectionFault (a connection
cannot be opened: transient, host unreachable when retries run out),
ChannelFault (one command's channel died on a working connection:
transient, only that task is affected), AuthenticationFault/HostKeyFault
(permanent). A connection is shared by many tasks at once: a fault of one
command must never close it for the others (docs/ssh-sessions.md). A command that ran and returned a non-zero exit code is *not*
an exception: it is a CommandResult with ``rc != 0``; the step interprets it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class CommandResult:
    """What one command line returned: cmd.exe's exit code and decoded output."""

    rc: int
    stdout: str
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0


@runtime_checkable
class Connection(Protocol):
    """One open channel to one host, reused by every step and task of a run."""

    host: str

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run one cmd.exe command line and wait for it."""
        ...

    def put(self, data: bytes, remote_path: str) -> None:
        """Write ``data`` to ``remote_path`` on the host (replacing it)."""
        ...

    def get(self, remote_path: str) -> bytes:
        """Read the file at ``remote_path`` on the host."""
        ...

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        ...

    # Optional: ``take(remote_path) -> bytes`` reads a file and deletes it in one round
    # trip (the lab and SSH connections have it); runner.steps._clients.take falls back
    # to get + del for a connection without it.
    #
    # Optional: ``run_input(command, data, *, timeout=None) -> CommandResult`` runs one
    # command line with ``data`` on its standard input, then ends it (EOF): a script or an
    # LDIF file delivered by the line that uses it (runner.windows.scripts), one round
    # trip instead of a put and a run. A connection without it gets the put and the run.
    #
    # Optional: ``codepage: str``, the host's console code page (host variable
    # ``ssh_codepage``), in which its cmd.exe reads a batch file and its old tools print:
    # a script is written in it (runner.windows.scripts.console_codepage; default cp437).


# A factory builds a Connection for a host of the inventory. Each connection
# kind ("lab", "ssh") registers one in runner.connections.registry.
ConnectionFactory = Callable[..., Connection]
