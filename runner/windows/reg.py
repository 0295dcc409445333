"""reg.exe: command builders (query, export, add, delete, load, unload) and the ``reg query`` parser.

``reg query`` output (doc: DOMAIN.md; Microsoft "reg query" command reference,
learn.microsoft.com/windows-server/administration/windows-commands/reg-query):
a blank line, the full key path (``HKEY_LOCAL_MACHINE\\...``), then one
line per value: four spaces, name, four spaces, type, four spaces, data;
a blank line ends the key; with ``/s`` further keys follow; without ``/s``
the subkeys are listed as bare key lines after the values. That is the
layout of Windows Vista and later. reg.exe 3.0 of Windows XP / Server 2003
(and the Support Tools' reg.exe 2.0 of Windows 2000) prints a blank line,
``! REG.EXE VERSION 3.0`` and a blank line first, and each value as four
spaces, name, TAB, type, TAB, data (docs/windows-versions.md); both layouts
parse, whichever a host prints. Data by type:

- REG_SZ / REG_EXPAND_SZ: the text as stored (``%SystemDrive%`` unexpanded;
  tabs and spaces inside are data);
- REG_MULTI_SZ: the strings joined by the two characters ``\\0`` (reg.exe 3.0
  adds a final ``\\0\\0``: the empty strings it gives are dropped);
- REG_DWORD / REG_QWORD: ``0x`` + lower-case hex;
- REG_BINARY / REG_NONE / others: upper-case hex bytes without separators.

The default value's name prints as ``(Default)`` (``<NO NAME>`` on XP); it
parses to the name "". Failure: exit code 1 and ``ERROR: The system was
unable to find the specified registry key or value.`` on stderr.
"""
from __future__ import annotations

import re

from runner.connections.base import CommandResult
from runner.windows.cmdline import Command, Quoted
from runner.windows.regfile import RegData, RegKey, RegValue

NOT_FOUND = "ERROR: The system was unable to find the specified registry key or value."

ROOTS = {
    "HKLM": "HKEY_LOCAL_MACHINE",
    "HKCU": "HKEY_CURRENT_USER",
    "HKCR": "HKEY_CLASSES_ROOT",
    "HKU": "HKEY_USERS",
    "HKCC": "HKEY_CURRENT_CONFIG",
}
_LONG_TO_SHORT = {v: k for k, v in ROOTS.items()}
_DEFAULT_NAMES = ("(Default)", "<NO NAME>")
_VALUE_SPACES = re.compile(r"^ {4}(.*?) {4}(REG_[A-Z_]+|REG_0x[0-9a-fA-F]+)(?: {4}(.*))?$")
_VALUE_TABS = re.compile(r"^ {4}(.*?)\t(REG_[A-Z_]+|REG_0x[0-9a-fA-F]+)(?:\t(.*))?$")
_LOCKED_MARKERS = ("being used by another process", "access is denied")


# -- key paths ---------------------------------------------------------------

def long_path(key: str) -> str:
    """``HKU\\S-1`` -> ``HKEY_USERS\\S-1`` (the form reg query and .reg files print)."""
    root, sep, rest = key.partition("\\")
    return ROOTS.get(root.upper(), root.upper() if root.upper() in _LONG_TO_SHORT else root) + sep + rest


def short_path(key: str) -> str:
    """``HKEY_USERS\\S-1`` -> ``HKU\\S-1`` (the form reg.exe accepts on its command line)."""
    root, sep, rest = key.partition("\\")
    return _LONG_TO_SHORT.get(root.upper(), root) + sep + rest


def same_key(a: str, b: str) -> bool:
    """Registry key paths compare case-insensitively, whatever the root's spelling."""
    return long_path(a).rstrip("\\").lower() == long_path(b).rstrip("\\").lower()


# -- builders ----------------------------------------------------------------

def query(key: str, *, recursive: bool = False, value: str | None = None) -> Command:
    """``reg query KEY [/v NAME] [/s]``."""
    bits: list = ["reg", "query", Quoted(short_path(key))]
    if value is not None:
        bits += ["/v", Quoted(value)] if value else ["/ve"]
    if recursive:
        bits.append("/s")
    return Command(*bits)


def export(key: str, file: str, *, overwrite: bool = True) -> Command:
    """``reg export KEY FILE [/y]`` (writes a UTF-16LE .reg file on the host)."""
    bits: list = ["reg", "export", Quoted(short_path(key)), Quoted(file)]
    if overwrite:
        bits.append("/y")
    return Command(*bits)


#: The value types ``add`` writes (reg.exe's ``/t``); data goes on the line as one quoted argument.
ADD_TYPES = ("REG_SZ", "REG_EXPAND_SZ", "REG_DWORD")


def add(key: str, name: str, type_: str, data: str | int) -> Command:
    """``reg add KEY /v NAME /t TYPE /d DATA /f``: set one value, creating the key (``/f``:
    overwrite without asking). ``name`` "" is the default value (``/ve``). A REG_DWORD's
    ``data`` is an int written in decimal; text data is ``Quoted`` (refused when it cannot go
    on a command line: cmdline.UnsafeValueError)."""
    if type_ not in ADD_TYPES:
        raise ValueError(f"reg add: unsupported type {type_!r}")
    if type_ == "REG_DWORD":
        if not isinstance(data, int) or isinstance(data, bool) or not 0 <= data < 1 << 32:
            raise ValueError(f"reg add: REG_DWORD data must be an int in 0..2**32-1, not {data!r}")
        shown: str = str(data)
    else:
        shown = str(data)
    bits: list = ["reg", "add", Quoted(short_path(key))]
    bits += ["/v", Quoted(name)] if name else ["/ve"]
    bits += ["/t", type_, "/d", Quoted(shown), "/f"]
    return Command(*bits)


def delete_value(key: str, name: str) -> Command:
    """``reg delete KEY /v NAME /f``: remove one value (exit 1, not found, when it is absent)."""
    bits: list = ["reg", "delete", Quoted(short_path(key))]
    bits += ["/v", Quoted(name)] if name else ["/ve"]
    return Command(*bits, "/f")


def load(name: str, file: str) -> Command:
    """``reg load HKU\\NAME FILE``: mount a hive file (e.g. NTUSER.DAT) under HKU."""
    return Command("reg", "load", Quoted(f"HKU\\{name}"), Quoted(file))


def unload(name: str) -> Command:
    """``reg unload HKU\\NAME``."""
    return Command("reg", "unload", Quoted(f"HKU\\{name}"))


# -- results -----------------------------------------------------------------

def is_not_found(result: CommandResult) -> bool:
    """The command failed because the key or value does not exist."""
    return result.rc != 0 and "unable to find" in (result.stderr + result.stdout).lower()


def is_locked(result: CommandResult) -> bool:
    """The command failed because a hive file or key is in use (worth retrying)."""
    text = (result.stderr + result.stdout).lower()
    return result.rc != 0 and any(m in text for m in _LOCKED_MARKERS)


def parse_data(type_: str, text: str) -> RegData:
    """Decode the data column of ``reg query`` for ``type_``."""
    t = type_.upper()
    if t in ("REG_SZ", "REG_EXPAND_SZ"):
        return text
    if t == "REG_MULTI_SZ":
        parts = text.split("\\0") if text else []
        while parts and parts[-1] == "":  # reg.exe 3.0's closing \0\0
            parts.pop()
        return parts
    if t in ("REG_DWORD", "REG_QWORD", "REG_DWORD_BIG_ENDIAN"):
        return int(text, 16) if text else 0
    cleaned = re.sub(r"[\s,]", "", text)
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        return text.encode("utf-8")


def parse_query(stdout: str) -> list[RegKey]:
    """Parse ``reg query`` output into keys (long root names) with their values, in order.

    Subkeys listed without values (``reg query KEY`` without ``/s``, or
    ``reg query HKU``) appear as keys with no values.
    """
    keys: list[RegKey] = []
    current: RegKey | None = None
    for raw in stdout.split("\n"):  # not splitlines(): data may hold U+2028, \x1c... as text
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("! REG.EXE") or line.startswith("End of search:"):
            continue
        if line.startswith("    ") or line.startswith("\t"):
            m = _VALUE_TABS.match(line) if "\t" in line else None
            m = m or _VALUE_SPACES.match(line)
            if m is None or current is None:
                continue
            name = m.group(1)
            if name in _DEFAULT_NAMES:
                name = ""
            type_ = m.group(2)
            current.values.append(RegValue(name, type_, parse_data(type_, m.group(3) or "")))
            continue
        current = RegKey(long_path(line.strip()))
        keys.append(current)
    return keys


def find_key(keys: list[RegKey], path: str) -> RegKey | None:
    """The parsed key at ``path`` (any root spelling, any case), or None."""
    for k in keys:
        if same_key(k.path, path):
            return k
    return None


def value_of(key: RegKey | None, name: str) -> RegData:
    """The data of value ``name`` (case-insensitive) in ``key``, or None."""
    if key is None:
        return None
    for v in key.values:
        if v.name.lower() == name.lower():
            return v.data
    return None


def subkeys(keys: list[RegKey], parent: str) -> list[str]:
    """Names (last path component) of the direct children of ``parent`` among ``keys``."""
    prefix = long_path(parent).rstrip("\\").lower() + "\\"
    out: list[str] = []
    for k in keys:
        low = k.path.lower()
        if low.startswith(prefix) and "\\" not in k.path[len(prefix):]:
            out.append(k.path[len(prefix):])
    return out
