"""The lab's SHA-256 tools: Cygwin's ``sha256sum`` and Windows' ``certutil -hashfile``.

Both really hash the file's bytes in the host's lab file system, so a pushed file
cut short or altered gives another hash, as on a real machine.

- ``sha256sum [-b|-t] FILE...`` (GNU coreutils, as Cygwin ships it): prints
  ``HASH *FILE`` (``-b``) or ``HASH  FILE``; a name holding a backslash is
  printed with backslashes doubled and the line starts with ``\\`` (coreutils'
  escaping of file names, which Windows paths always trigger). A missing file:
  ``sha256sum: 'FILE': No such file or directory`` on stderr, exit 1. It exists
  on a host with Cygwin: lab.json host setting ``cygwin`` (default: true on
  Windows 2000, XP and 2003, where an SSH server is Cygwin's or copSSH's, whose
  sessions have Cygwin's ``bin`` on the PATH; false from Windows 7 on).
- ``certutil -hashfile FILE [ALGORITHM]`` (Windows 7 / Server 2008 R2 and later;
  Microsoft's certutil reference): ``SHA256 hash of file FILE:``, the hash as
  hex bytes separated by spaces (Windows 7 / 8.1; Windows 10's certutil prints
  them without spaces and says ``hash of FILE``), then ``CertUtil: -hashfile
  command completed successfully.``; errors end with ``CertUtil: -hashfile
  command FAILED: 0x80070002 (WIN32: 2 ERROR_FILE_NOT_FOUND)`` and exit with that
  HRESULT. The lab has it from Windows 7 (``CurrentVersion`` 6.1) on: Windows
  2000 and XP have no certutil of their own, and SHA-256 in ``-hashfile`` came
  later than 2003's.

The Windows version is the host's ``HKLM\\SOFTWARE\\Microsoft\\Windows
NT\\CurrentVersion`` ``CurrentVersion`` value, which the generator writes from the
host's lab.json ``os`` (runner.lab.winver); Windows XP, 5.1, when unset.
"""
from __future__ import annotations

import hashlib
from typing import Any

from runner.connections.base import CommandResult
from runner.lab.commands import program
from runner.lab.logon import NoNetworkCredentials
from runner.lab.store import InvalidPath

WINDOWS_NT = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion"
NOT_RECOGNIZED = ("'{name}' is not recognized as an internal or external command,\r\n"
                  "operable program or batch file.\r\n")
ALGORITHMS = {"md2": None, "md4": None, "md5": "md5", "sha1": "sha1", "sha256": "sha256",
              "sha384": "sha384", "sha512": "sha512"}
HRESULTS = {2: (-2147024894, "0x80070002 (WIN32: 2 ERROR_FILE_NOT_FOUND)",
                "The system cannot find the file specified."),
            5: (-2147024891, "0x80070005 (WIN32: 5 ERROR_ACCESS_DENIED)", "Access is denied."),
            87: (-2147024809, "0x80070057 (WIN32: 87 ERROR_INVALID_PARAMETER)", "The parameter is incorrect.")}


def windows_version(host: Any) -> tuple[int, ...]:
    """The host's ``CurrentVersion`` as numbers (5.1 when the registry has none)."""
    try:
        value = host.registry.get_value(WINDOWS_NT, "CurrentVersion")
    except Exception:  # noqa: BLE001 - a host without that key is taken as XP
        value = None
    text = str(value.data) if value is not None else "5.1"
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out) or (5, 1)


def has_cygwin(host: Any) -> bool:
    """Whether Cygwin's tools are on the SSH session's PATH (lab.json ``cygwin``)."""
    configured = host.config.get("cygwin")
    if configured is not None:
        return bool(configured)
    return windows_version(host) < (6, 1)


@program("sha256sum")
def sha256sum(ctx: Any, argv: list[str], raw: str) -> CommandResult:
    """GNU coreutils' sha256sum over the host's files."""
    if not has_cygwin(ctx.host):
        return CommandResult(9009, "", NOT_RECOGNIZED.format(name=argv[0]))
    binary = False
    files: list[str] = []
    for a in argv[1:]:
        if a in ("-b", "--binary"):
            binary = True
        elif a in ("-t", "--text"):
            binary = False
        elif a.startswith("-") and a != "-":
            return CommandResult(1, "", f"sha256sum: invalid option -- '{a.lstrip('-')[:1]}'\r\n"
                                        "Try 'sha256sum --help' for more information.\r\n")
        else:
            files.append(a)
    out, err, rc = [], [], 0
    for f in files:
        try:
            data = ctx.read_file(f)
        except NoNetworkCredentials:
            err.append(f"sha256sum: '{f}': Permission denied\n")
            rc = 1
            continue
        except IsADirectoryError:
            err.append(f"sha256sum: '{f}': Is a directory\n")
            rc = 1
            continue
        except (OSError, InvalidPath):
            err.append(f"sha256sum: '{f}': No such file or directory\n")
            rc = 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        name = f
        lead = ""
        if "\\" in name or "\n" in name:
            lead, name = "\\", name.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"{lead}{digest} {'*' if binary else ' '}{name}\n")
    return CommandResult(rc, "".join(out), "".join(err))


@program("certutil")
def certutil(ctx: Any, argv: list[str], raw: str) -> CommandResult:
    """``certutil -hashfile FILE [ALGORITHM]`` (the only verb the lab has)."""
    version = windows_version(ctx.host)
    if version < (6, 1):
        return CommandResult(9009, "", NOT_RECOGNIZED.format(name=argv[0]))
    args = argv[1:]
    if not args or args[0].lower() not in ("-hashfile", "/hashfile"):
        return _failed(args[0] if args else "", 87)
    if len(args) < 2 or len(args) > 3:
        return _failed("-hashfile", 87)
    path = args[1]
    alg = (args[2] if len(args) == 3 else "SHA1").lower()
    if ALGORITHMS.get(alg) is None:
        return _failed("-hashfile", 87)
    try:
        data = ctx.read_file(path)
    except NoNetworkCredentials:
        return _failed("-hashfile", 5)
    except (OSError, InvalidPath):
        return _failed("-hashfile", 2)
    digest = hashlib.new(ALGORITHMS[alg], data).hexdigest()
    if version < (10,):
        shown, head = " ".join(digest[i:i + 2] for i in range(0, len(digest), 2)), f"hash of file {path}:"
    else:
        shown, head = digest, f"hash of {path}:"
    return CommandResult(0, f"{alg.upper()} {head}\r\n{shown}\r\n"
                            "CertUtil: -hashfile command completed successfully.\r\n", "")


def _failed(verb: str, code: int) -> CommandResult:
    rc, hresult, text = HRESULTS[code]
    return CommandResult(rc, f"CertUtil: {verb} command FAILED: {hresult}\r\nCertUtil: {text}\r\n", "")
