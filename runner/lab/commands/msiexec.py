"""The lab's msiexec: ``msiexec /i PACKAGE [/qn|/quiet] [/norestart] [/l*v LOG] [PROP=value...]``.

Switches and exit codes: Microsoft "Command-Line Options" (Windows Installer,
learn.microsoft.com/windows/win32/msi/command-line-options) and "MsiExec.exe
and InstMsi.exe Error Messages": 0 success, 3010 success but a reboot is
required (here: the package says so, the host is configured so, or
``msmsgs.exe`` is running so its file is in use), 1641 the installer started
a reboot (reboot needed and no /norestart), 1618 another installation is in
progress (fault ``msiexec_1618``), 1603 fatal error (package marked
``broken`` or lab.json host ``msiexec_result: 1603``), 1619 the package
could not be opened (for a share a key-based logon cannot open, its log has
note 2203 with STG_E_ACCESSDENIED, -2147287035), 1620 not a valid package,
1622 the log file could not be opened (``/l*v`` naming a folder that does not
exist: msiexec creates the file, never its folder; checked before anything
else), 1639 invalid command line.
The package format is runner.lab.binaries' lab MSI. An install is all or
nothing (LabHost.commit_install): a process killed mid-install leaves the
old product, files and Uninstall key, or the new ones, never a mix. The verbose log ends
with the real "Windows Installer installed the product. ... Installation
success or error status: N." line.
"""
from __future__ import annotations

import time
from typing import Any

from runner.connections.base import CommandResult
from runner.lab.binaries import make_exe, read_msi
from runner.lab.commands import program
from runner.lab.logon import NoNetworkCredentials
from runner.lab.store import UNINSTALL_KEY, InvalidPath

FOLDERS = {"[ProgramFilesFolder]": "ProgramFiles", "[SystemFolder]": None, "[WindowsFolder]": "SystemRoot"}


def _log_lines(ctx: Any, package: str, props: dict[str, Any] | None, status: int, note: str) -> str:
    ts = time.strftime("%m/%d/%Y  %H:%M:%S")
    clock = time.strftime("%H:%M:%S:000")
    name = (props or {}).get("ProductName", "")
    version = (props or {}).get("ProductVersion", "")
    root = ctx.getenv("SystemRoot") or r"C:\WINDOWS"
    lines = [
        f"=== Verbose logging started: {ts}  Build type: SHIP UNICODE 3.01.4001.5512  "
        f"Calling process: {root}\\system32\\msiexec.exe ===",
        f"MSI (c) (AC:B0) [{clock}]: Resetting cached policy values",
        f"MSI (c) (AC:B0) [{clock}]: ******* RunEngine:",
        f"           ******* Product: {package}",
        "           ******* Action: ",
        "           ******* CommandLine: **********",
        f"MSI (s) (C4:D8) [{clock}]: {note}",
    ]
    if props is not None:
        if status in (0, 3010, 1641):
            lines.append(f"MSI (s) (C4:D8) [{clock}]: Product: {name} -- Installation completed successfully.")
        else:
            lines.append(f"MSI (s) (C4:D8) [{clock}]: Product: {name} -- Installation failed.")
        lines.append(f"MSI (s) (C4:D8) [{clock}]: Windows Installer installed the product. Product Name: {name}. "
                     f"Product Version: {version}. Product Language: 1033. "
                     f"Installation success or error status: {status}.")
    lines.append(f"=== Verbose logging stopped: {ts} ===")
    return "\r\n".join(lines) + "\r\n"


def _log_folder_exists(ctx: Any, log: str) -> bool:
    """Whether the folder of the log file exists (ERROR_INSTALL_LOG_FAILURE, 1622, otherwise)."""
    folder = ctx.full_path(log).rsplit("\\", 1)[0]
    try:
        return ctx.host.fs.is_dir(folder + "\\" if folder.endswith(":") else folder)
    except InvalidPath:
        return False


def _target(ctx: Any, path: str) -> str:
    for token, var in FOLDERS.items():
        if path.startswith(token):
            base = ctx.getenv(var) if var else (ctx.getenv("SystemRoot") or "C:\\WINDOWS") + "\\system32"
            return base.rstrip("\\") + "\\" + path[len(token):]
    return path


@program("msiexec")
def msiexec(ctx: Any, argv: list[str], raw: str) -> CommandResult:
    """Install a lab MSI package silently, with a verbose log."""
    args = argv[1:]
    package = log = None
    norestart = False
    props: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        low = a.lower()
        if low in ("/i", "-i", "/package"):
            if i + 1 >= len(args):
                return CommandResult(1639, "", "")
            package = args[i + 1]
            i += 2
            continue
        if low.startswith(("/l", "-l")):
            if i + 1 >= len(args):
                return CommandResult(1639, "", "")
            log = args[i + 1]
            i += 2
            continue
        if low in ("/norestart", "-norestart"):
            norestart = True
        elif low in ("/qn", "/q", "/quiet", "/passive", "/qb", "/qr", "/qf", "-qn"):
            pass
        elif "=" in a and not a.startswith("/"):
            k, v = a.split("=", 1)
            props[k.upper()] = v
        else:
            return CommandResult(1639, "", "")
        i += 1
    if package is None:
        return CommandResult(1639, "", "")
    ctx.mutated()
    if log and not _log_folder_exists(ctx, log):
        return CommandResult(1622, "", "")

    def finish(code: int, meta: dict[str, Any] | None, note: str) -> CommandResult:
        if log:
            try:
                ctx.write_file(log, _log_lines(ctx, package, meta, code, note).encode("utf-8"))
            except (OSError, InvalidPath):
                pass
        return CommandResult(code, "", "")

    if ctx.fault("msiexec_1618"):
        return finish(1618, None, "Another installation is in progress. Error 1618.")
    try:
        data = ctx.read_file(package)
    except NoNetworkCredentials:
        # Windows Installer's note 2203 (database cannot be opened) with STG_E_ACCESSDENIED:
        # what a key-based logon's msiexec logs for a package on a share (runner.lab.logon)
        return finish(1619, None, f"Note: 1: 2203 2: {package} 3: -2147287035")
    except (OSError, InvalidPath):
        return finish(1619, None, f"Note: 1: 1619 Package could not be opened: {package}")
    meta = read_msi(data)
    if meta is None:
        return finish(1620, None, f"Note: 1: 1620 This installation package could not be opened: {package}")
    configured = ctx.host.config.get("msiexec_result")
    if meta.get("broken") or configured == 1603:
        return finish(1603, meta, "Note: 1: 1722 Fatal error during installation.")
    in_use = set()
    files: list[tuple[str, bytes]] = []
    for f in meta.get("files", []):
        target = _target(ctx, f["path"])
        name = target.rsplit("\\", 1)[-1].lower()
        if name in ctx.host.processes():
            in_use.add(name)
        files.append((target, make_exe(f.get("FileVersion", meta["ProductVersion"]),
                                       product_name=f.get("ProductName", meta["ProductName"]),
                                       description=f.get("FileDescription", ""))))
    reg = ctx.host.registry
    upgrade = meta.get("UpgradeCode") or ""

    def register() -> None:
        """The product's registration: older products of its UpgradeCode removed, it and its
        Uninstall key added (one host.db transaction with the files' commit record)."""
        if upgrade:
            for p in ctx.host.products.list():
                if p.code.lower() == meta["ProductCode"].lower():
                    continue
                v = reg.get_value(UNINSTALL_KEY + "\\" + p.code, "UpgradeCode") if reg.key_exists(
                    UNINSTALL_KEY + "\\" + p.code) else None
                if v is not None and str(v.data).lower() == upgrade.lower():
                    ctx.host.products.remove(p.code)
        ctx.host.products.add(meta["ProductCode"], meta["ProductName"], meta["ProductVersion"],
                              meta.get("Manufacturer", ""), install_location=props.get("INSTALLDIR", ""))
        if upgrade:
            reg.set_value(UNINSTALL_KEY + "\\" + meta["ProductCode"], "UpgradeCode", "REG_SZ", upgrade)

    reboot = bool(meta.get("reboot_required") or ctx.host.config.get("msiexec_reboot") or in_use)
    code, note = ((3010 if norestart else 1641, "Note: 1: 1903 Reboot required to complete the install.")
                  if reboot else (0, "Product installed."))
    # The log is committed with the files: on a real host msiexec goes on (and finishes its
    # log) when the runner dies; the in-process lab dies with the runner, and rolls forward.
    logged = [(log, _log_lines(ctx, package, meta, code, note).encode("utf-8"))] if log else []
    try:
        # files, product and Uninstall key: all or nothing, as Windows Installer commits or rolls back
        ctx.host.commit_install(files + logged, register)
    except (OSError, InvalidPath) as e:
        return finish(1603, meta, f"Note: 1: 1310 Error writing to file: {getattr(e, 'windows_path', '')}")
    return CommandResult(code, "", "")
