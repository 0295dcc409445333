"""Error types and the exit codes they map to (DESIGN.md, like ansible-playbook).

Two families:
- RunnerError: something the *user* or the environment got wrong before or
  around a run (bad YAML, bad option, locked state). The CLI maps each class
  to an exit code in one place and prints the message, never a traceback.
- StepFault: something that went wrong while a task talked to a host. The
  engine retries TransientFault, fails PermanentFault at once, and reports a
  fault with ``unreachable=True`` (a connection that cannot be opened) as an
  unreachable host; a ChannelFault (one command's channel died on a working
  connection) only ever fails its own task.
"""
from __future__ import annotations

import re

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FAILED = 2
EXIT_UNREACHABLE = 3
EXIT_INVALID = 4
EXIT_BAD_OPTIONS = 5
EXIT_INTERRUPTED = 99
EXIT_UNEXPECTED = 250


class RunnerError(Exception):
    """A user-facing error: printed as a message, mapped to ``exit_code``."""

    exit_code = EXIT_ERROR


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\n``, ``\\x1b``): a
    message quoting a name with a line feed in it must stay on its own line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class InputError(RunnerError):
    """A playbook, inventory or lab file that cannot be parsed or validated.

    ``file``/``line``/``col`` (1-based) locate the problem; ``str()`` renders
    ``file:line:col: message`` so every caller prints the same thing.
    """

    exit_code = EXIT_INVALID

    def __init__(self, message: str, file: str | None = None,
                 line: int | None = None, col: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        return where + one_line(self.message)


class InputErrors(InputError):
    """Several InputErrors found in one pass (all are reported, not just the first)."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, first.file, first.line, first.col)

    def __str__(self) -> str:
        return "\n".join(InputError.__str__(e) for e in self.errors)


class OptionsError(RunnerError):
    """A command-line option that makes no sense (unknown tag, bad --limit...)."""

    exit_code = EXIT_BAD_OPTIONS


class StateLockedError(RunnerError):
    """Another run holds the lock on the state directory."""

    exit_code = EXIT_ERROR


class StoreDamagedError(RunnerError):
    """The state directory's checkpoint store is empty, damaged or lost beside its
    artifacts: refused, never re-created over (the message says how to recover)."""

    exit_code = EXIT_ERROR


class StateEstateError(RunnerError):
    """The state directory holds the checkpoints of another estate (runner.estate)."""

    exit_code = EXIT_ERROR


class DamagedRecord(RunnerError):
    """One row of the checkpoint store cannot be decoded; the message names it."""

    exit_code = EXIT_ERROR


class StepFault(Exception):
    """A fault while a task ran. ``unreachable`` marks faults of the host itself."""

    transient = False
    unreachable = False

    def __init__(self, message: str, *, host: str | None = None, data: dict | None = None) -> None:
        self.message = message
        self.host = host
        self.data = data or {}
        super().__init__(message)


class TransientFault(StepFault):
    """Worth retrying: reset connection, timeout, msiexec 1618, LCS busy, hive locked."""

    transient = True


class PermanentFault(StepFault):
    """Retrying cannot help: access denied, bad argument, unknown user, 1603."""


class ConnectionFault(TransientFault):
    """A fresh connection to the host cannot be opened (connect, handshake, login lost).

    The only transient fault that makes a host unreachable once a task's
    retries run out: the host did not answer at all. A fault of one command
    on a working connection is a ChannelFault instead.
    """

    unreachable = True


class ChannelFault(ConnectionFault):
    """The command's channel died (dropped transport, no exit status, timeout, sessions refused).

    Transient and confined to the task whose command it was: the host was
    connected, so it is never reported unreachable for this; the task is
    retried (its probe finds out whether the command took effect) and the
    connection re-opens its transport for whoever runs next. A subclass of
    ConnectionFault for callers that catch connection trouble as a whole,
    but ``unreachable`` is False.
    """

    unreachable = False


class AuthenticationFault(PermanentFault):
    """SSH authentication refused; the host is unreachable, and retrying will not help."""

    unreachable = True


class HostKeyFault(PermanentFault):
    """The host's SSH key is unknown or does not match known_hosts: never retried."""

    unreachable = True


class HostGivenUp(ConnectionFault):
    """A host the run already gave up on (unreachable earlier): fails at once, retried next run.

    Still a ConnectionFault for callers that catch those, but not retried:
    the engine spent the retries on this host when it first failed.
    """

    transient = False
