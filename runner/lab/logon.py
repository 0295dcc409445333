"""How the lab's session logged on, and what that lets it reach: network credentials.

A Windows SSH session authenticated by a *key* runs as the user on that machine,
but holds no credentials another machine would accept: it cannot open a share.
Win32-OpenSSH's maintainers call this by design ("key-based authentication ...
cannot do outbound authentication, hence cannot access any share",
PowerShell/Win32-OpenSSH #518, #1264); Cygwin's sshd switching to a user without
that user's password is in the same position (Cygwin user's guide, "Switching
the user context"). A *password* logon has the user's network credentials.

The lab models both: while a session without network credentials runs
(``session("key")``), every UNC path (``\\\\server\\share\\...``) the host's file
system is asked for raises ``NoNetworkCredentials``, a PermissionError that the
lab's programs report as Windows does (``Access is denied.``, msiexec 1619).
The logon type is per session, not per host: ``LabConnection`` takes it from the
host variable ``lab_logon`` (``password``, the default, or ``key``); the served
lab (runner.lab.serve) from the method sshd really authenticated the session
with (``ExposeAuthInfo``). A context variable carries it, so that engine threads
driving different hosts, each with its own logon, never see each other's.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

LOGONS = ("password", "key")
DEFAULT_LOGON = "password"
ACCESS_DENIED = "Access is denied.\r\n"

_network: ContextVar[bool] = ContextVar("lab_network_credentials", default=True)


class NoNetworkCredentials(PermissionError):
    """A UNC path asked for by a session that has no network credentials."""

    def __init__(self, path: str) -> None:
        super().__init__(13, "Access is denied", path)
        self.windows_path = path


def check_logon(value: object) -> str:
    """The logon type ``value`` names (``password`` or ``key``); ValueError otherwise."""
    text = str(value).strip().lower() if value is not None else DEFAULT_LOGON
    if text not in LOGONS:
        raise ValueError(f"lab_logon is {value!r}: one of {', '.join(LOGONS)}")
    return text


@contextmanager
def session(logon: str) -> Iterator[None]:
    """Run the block as a session logged on by ``logon`` (``key``: no network credentials)."""
    token = _network.set(check_logon(logon) == "password")
    try:
        yield
    finally:
        _network.reset(token)


def has_network_credentials() -> bool:
    """Whether the session running now can open shares."""
    return _network.get()


def check_unc(path: str) -> None:
    """Raise NoNetworkCredentials when ``path`` is a UNC path and the session may not reach it."""
    if not _network.get() and path.replace("/", "\\").lstrip().startswith("\\\\"):
        raise NoNetworkCredentials(path)


def from_ssh_user_auth(text: str) -> str:
    """The logon type of an sshd session from its ``$SSH_USER_AUTH`` file (``ExposeAuthInfo
    yes``): one line per method that succeeded, ``publickey ALG KEY`` or ``password``. A
    session that used its password for any method has network credentials."""
    methods = {line.split(" ", 1)[0] for line in text.splitlines() if line.strip()}
    if "password" in methods or "keyboard-interactive" in methods:
        return "password"
    return "key"
