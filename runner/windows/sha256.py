"""A file's SHA-256 on a Windows host: the command that computes it there, and reading its answer.

Which tool a machine has (host variable ``client_sha256_tool``; docs/transports.md):

- ``sha256sum``: GNU coreutils, part of every Cygwin install. The SSH servers of
  Windows 2000, XP and 2003 (Cygwin's OpenSSH, copSSH) give cmd.exe Cygwin's
  ``bin`` on the PATH. Run as ``sha256sum -b FILE``; prints ``HASH *FILE``
  (``\\HASH *C:\\\\x`` when the name holds backslashes, coreutils' escaping).
- ``certutil``: ``certutil -hashfile FILE SHA256``, part of Windows from
  Windows 7 / Server 2008 R2 on (the systems Win32-OpenSSH runs on). Prints a
  header line, the hash (hex bytes separated by spaces on Windows 7 and 8.1,
  without spaces on Windows 10) and a completion line. Windows 2000, XP and
  2003 have no built-in tool that computes SHA-256.
- ``auto`` (the default): ``sha256sum`` and, where that is missing or fails,
  ``certutil``, in one command line.
- ``sftp``: nothing runs on the host; the file is read back over the
  connection and hashed on the control node (see runner.steps.upgrade_messenger
  for what that proves).
"""
from __future__ import annotations

import re

from runner.windows.cmdline import Command, Quoted

TOOLS = ("auto", "sha256sum", "certutil", "sftp")
DEFAULT_TOOL = "auto"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def check_tool(value: object) -> str:
    """The tool ``value`` names (None: the default); ValueError naming the choices."""
    text = DEFAULT_TOOL if value is None else str(value).strip().lower()
    if text not in TOOLS:
        raise ValueError(f"client_sha256_tool is {value!r}: one of {', '.join(TOOLS)}")
    return text


def command(tool: str, path: str) -> Command:
    """The command line computing ``path``'s SHA-256 on the host with ``tool`` (not ``sftp``)."""
    sha256sum = Command("sha256sum", "-b", Quoted(path))
    certutil = Command("certutil", "-hashfile", Quoted(path), "SHA256")
    if tool == "sha256sum":
        return sha256sum
    if tool == "certutil":
        return certutil
    if tool == "auto":
        # 2>nul: a host without sha256sum says so on stderr (9009), and certutil answers instead
        return Command(sha256sum, "2>nul", "||", certutil)
    raise ValueError(f"no command computes SHA-256 for the tool {tool!r}")


def gate(tool: str, path: str, digest: str) -> Command:
    """``(HASH-COMMAND) | findstr /r /i /c:"^\\\\*DIGEST" [/c:"^di ge st..."]``: succeeds only
    when the hash the host computes of ``path`` is ``digest``, so ``gate && (msiexec ...)``
    never installs other bytes. Each pattern is anchored at a line's start and holds all 64
    hex digits: sha256sum's line (with coreutils' leading ``\\`` for a name holding
    backslashes, hence ``\\\\*``: findstr's regex for "any number of ``\\``"), certutil's
    hash line without spaces (Windows 10) and, when certutil may answer, with a space
    between bytes (Windows 7 / 8.1). The path and certutil's header line cannot match: the
    pattern starts with the line. findstr prints the matching line, which :func:`parse` reads.
    """
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"not a SHA-256: {digest!r}")
    digest = digest.lower()
    patterns = [f'/c:"^\\\\*{digest}"']
    if tool in ("auto", "certutil"):
        patterns.append('/c:"^' + " ".join(digest[i:i + 2] for i in range(0, 64, 2)) + '"')
    return Command(Command("(", command(tool, path), ")"), "|", "findstr", "/r", "/i", *patterns)


def answered_by(line: str) -> str:
    """Which tool printed the hash line ``line`` that :func:`gate` matched: sha256sum's ends
    in `` *FILE``, certutil's is the hash alone."""
    return "sha256sum" if " *" in line else "certutil"


def parse(stdout: str) -> str | None:
    """The lower-case hex SHA-256 in the output of :func:`command`, None when there is none.

    A line is the hash when its first word is 64 hex digits (sha256sum, with or
    without its leading ``\\``) or when the whole line is, spaces removed (certutil).
    """
    for line in stdout.splitlines():
        text = line.strip()
        if not text:
            continue
        first = text.lstrip("\\").split(" ", 1)[0]
        if _HEX64.fullmatch(first):
            return first.lower()
        compact = text.replace(" ", "")
        if _HEX64.fullmatch(compact):
            return compact.lower()
    return None
