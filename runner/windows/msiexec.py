"""msiexec: the install command builder and the classification of its exit codes.

Exit codes (doc: DOMAIN.md; Microsoft "MsiExec.exe and InstMsi.exe error
messages", learn.microsoft.com/windows/win32/msi/error-codes):
0 success; 3010 success, reboot required; 1641 success, the installer
started a reboot; 1618 another installation is in progress (transient:
retry later); 1603 fatal error during installation; 1619 the package could
not be opened; 1622 the log file could not be opened (ERROR_INSTALL_LOG_FAILURE:
its folder does not exist or is not writable; :func:`install_line` creates the
folder first); anything else is a permanent failure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from runner.windows.cmdline import Command, Quoted

#: The installer log's file name, in the host's %SystemRoot%\Temp unless a step says otherwise.
LOG_NAME = "runner-wm51.log"
#: install()'s default log (steps pass the host's own folder, runner.hostenv).
DEFAULT_LOG = "C:\\Windows\\Temp\\" + LOG_NAME

MESSAGES: dict[int, str] = {
    0: "The action completed successfully.",
    1602: "User cancelled installation.",
    1603: "Fatal error during installation.",
    1605: "This action is only valid for products that are currently installed.",
    1618: "Another installation is already in progress.",
    1619: "This installation package could not be opened.",
    1620: "This installation package could not be opened (invalid package).",
    1622: ("Error opening installation log file. Verify that the specified log file location exists "
           "and that you can write to it."),
    1624: "Error applying transforms.",
    1625: "This installation is forbidden by system policy.",
    1633: "This installation package is not supported on this processor type.",
    1638: "Another version of this product is already installed.",
    1639: "Invalid command line argument.",
    1641: "The installer has initiated a restart.",
    3010: "A restart is required to complete the install.",
}


class MsiOutcome(Enum):
    """What an msiexec exit code means for the step."""

    OK = "ok"
    REBOOT_REQUIRED = "reboot_required"
    REBOOT_STARTED = "reboot_started"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class MsiResult:
    """An exit code with its meaning and the installer's message for it."""

    rc: int
    outcome: MsiOutcome
    message: str

    @property
    def succeeded(self) -> bool:
        return self.outcome in (MsiOutcome.OK, MsiOutcome.REBOOT_REQUIRED, MsiOutcome.REBOOT_STARTED)

    @property
    def reboot_required(self) -> bool:
        return self.outcome in (MsiOutcome.REBOOT_REQUIRED, MsiOutcome.REBOOT_STARTED)


def classify(rc: int) -> MsiResult:
    """Classify an msiexec exit code."""
    if rc == 0:
        outcome = MsiOutcome.OK
    elif rc == 3010:
        outcome = MsiOutcome.REBOOT_REQUIRED
    elif rc == 1641:
        outcome = MsiOutcome.REBOOT_STARTED
    elif rc == 1618:
        outcome = MsiOutcome.TRANSIENT
    else:
        outcome = MsiOutcome.PERMANENT
    return MsiResult(rc, outcome, MESSAGES.get(rc, f"msiexec failed with exit code {rc}."))


def install(package: str, *, log: str | None = DEFAULT_LOG, quiet: bool = True,
            norestart: bool = True, properties: dict[str, str] | None = None) -> Command:
    """``msiexec /i PACKAGE [/qn] [/norestart] [/l*v LOG] [PROP=value...]``; ``properties`` are
    public properties such as ``REINSTALL=ALL`` (names upper case, values without spaces)."""
    bits: list = ["msiexec", "/i", Quoted(package)]
    if quiet:
        bits.append("/qn")
    if norestart:
        bits.append("/norestart")
    if log:
        bits += ["/l*v", Quoted(log)]
    for name, value in (properties or {}).items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or not re.fullmatch(r"[A-Za-z0-9_.,;:\\-]+", value):
            raise ValueError(f"not a safe msiexec property: {name}={value!r}")
        bits.append(f"{name}={value}")
    return Command(*bits)


def install_line(package: str, *, log: str, properties: dict[str, str] | None = None) -> Command:
    """``mkdir LOGDIR 2>nul & msiexec /i PACKAGE /qn /norestart /l*v LOG [PROP=value...]``: the
    log's folder is made first (msiexec creates the file, not its folder, and exits 1622
    without it); ``mkdir`` of a folder that exists fails quietly, and the line's exit code
    is msiexec's."""
    folder = log.rsplit("\\", 1)[0] if "\\" in log else ""
    cmd = install(package, log=log, properties=properties)
    if not folder or folder.endswith(":"):
        return cmd
    return Command(Command("mkdir", Quoted(folder), "2>nul"), "&", cmd)
