"""The lab's reg.exe: query, add, delete, export, import, load, unload.

Syntax and behaviour: Microsoft "Windows commands" reference (learn.microsoft.com
/windows-server/administration/windows-commands/reg-query, reg-add,
reg-delete, reg-export, reg-import, reg-load, reg-unload). Output layout as
reg.exe prints it since Windows Vista (and as Wine's programs/reg/query.c
reproduces it): a blank line, the full key path, one line per value
``    NAME    TYPE    DATA``, a blank line after the values, then the
subkey paths (or, with /s, each subkey's own block). ``(Default)`` names the
unnamed value; REG_DWORD/REG_QWORD print as ``0x`` hex, REG_BINARY as
upper-case hex digits, REG_MULTI_SZ joined by ``\\0``. Mutations print
``The operation completed successfully.``; errors go to stderr with exit 1:
``ERROR: The system was unable to find the specified registry key or value.``,
``ERROR: Invalid syntax.`` + ``Type "REG <OP> /?" for usage.``,
``ERROR: Invalid key name.``, ``ERROR: Access is denied.``,
``ERROR: The process cannot access the file because it is being used by another process.``
(a hive file already loaded), ``ERROR: The parameter is incorrect.``
(unloading a name that is not loaded). ``reg import`` writes its success
line to stderr, as the real one does.

On Windows XP and Server 2003 (reg.exe 3.0) and Windows 2000 (the Support
Tools' reg.exe 2.0) ``reg query`` prints the older layout instead
(runner.lab.winver; docs/windows-versions.md): a blank line,
``! REG.EXE VERSION 3.0`` (or ``2.0``), a blank line, then the same blocks
with each value as four spaces, name, TAB, type, TAB, data (Microsoft's
PowerShell documentation shows such output); the default value is named
``<NO NAME>``; REG_MULTI_SZ ends with ``\\0\\0`` (conv: as forum posts show
it); a missing default value under ``/ve`` prints an empty ``<NO NAME>``
REG_SZ (conv).
"""
from __future__ import annotations

from typing import Any

from runner.connections.base import CommandResult
from runner.lab.commands import program
from runner.lab.store import (AccessDenied, InvalidPath, KeyNotFound, LabError, SharingViolation,
                              long_key, split_key)
from runner.windows.regfile import RegFileError, RegValue, parse_reg, render_reg, type_number

OK = "The operation completed successfully.\r\n"
NOT_FOUND = "ERROR: The system was unable to find the specified registry key or value.\r\n"
ACCESS_DENIED = "ERROR: Access is denied.\r\n"
IN_USE = "ERROR: The process cannot access the file because it is being used by another process.\r\n"
BAD_PARAM = "ERROR: The parameter is incorrect.\r\n"
FILE_NOT_FOUND = "ERROR: The system cannot find the file specified.\r\n"
CANCELLED = "The operation was cancelled by the user.\r\n"
TYPES = ("REG_SZ", "REG_MULTI_SZ", "REG_EXPAND_SZ", "REG_DWORD", "REG_QWORD", "REG_BINARY", "REG_NONE")


def _syntax(op: str) -> CommandResult:
    return CommandResult(1, "", f'ERROR: Invalid syntax.\r\nType "REG {op.upper()} /?" for usage.\r\n')


def _bad_key(op: str) -> CommandResult:
    return CommandResult(1, "", f'ERROR: Invalid key name.\r\nType "REG {op.upper()} /?" for usage.\r\n')


def _err(text: str) -> CommandResult:
    return CommandResult(1, "", text)


class _Opts:
    """Parsed switches: flags (``/s``, ``/f``...) and switches with a value (``/v X``)."""

    def __init__(self, args: list[str], with_value: set[str], flags: set[str]) -> None:
        self.pos: list[str] = []
        self.vals: dict[str, str] = {}
        self.flags: set[str] = set()
        self.bad = False
        i = 0
        while i < len(args):
            a = args[i]
            low = a.lower()
            if len(a) > 1 and a[0] in "/-" and ("/" + low[1:]) in (with_value | flags):
                sw = "/" + low[1:]
                if sw in with_value:
                    if i + 1 >= len(args) or sw in self.vals:
                        self.bad = True
                        return
                    self.vals[sw] = args[i + 1]
                    i += 2
                    continue
                if sw in self.flags:
                    self.bad = True
                self.flags.add(sw)
            elif len(a) > 1 and a[0] == "/":
                self.bad = True
                return
            else:
                self.pos.append(a)
            i += 1


def format_data(v: RegValue, sep: str = "\\0") -> str:
    """The data column of ``reg query`` for one value."""
    n = type_number(v.type)
    if n in (4, 11, 5):
        return f"0x{int(v.data or 0):x}"
    if n in (1, 2):
        return str(v.data)
    if n == 7:
        return sep.join(v.data or [])  # type: ignore[arg-type]
    return bytes(v.data or b"").hex().upper()  # type: ignore[arg-type]


def format_value(v: RegValue, sep: str = "\\0", version: str | None = None) -> str:
    """One value line of ``reg query``: the Vista/7 layout, or reg.exe ``version``'s (3.0, 2.0)."""
    if version is None:
        name = v.name if v.name else "(Default)"
        return f"    {name}    {v.type}    {format_data(v, sep)}\r\n"
    data = format_data(v, sep)
    if type_number(v.type) == 7 and v.data:
        data += sep + sep
    return f"    {v.name or '<NO NAME>'}\t{v.type}\t{data}\r\n"


def _header(version: str | None) -> str:
    """What ``reg query`` prints before the first key."""
    return "\r\n" if version is None else f"\r\n! REG.EXE VERSION {version}\r\n\r\n"


def _query(ctx: Any, args: list[str]) -> CommandResult:
    o = _Opts(args, {"/v", "/se", "/f"}, {"/ve", "/s", "/c", "/e", "/k", "/d", "/z", "/x", "/reg:32", "/reg:64"})
    if o.bad or len(o.pos) != 1 or ("/v" in o.vals and "/ve" in o.flags):
        return _syntax("query")
    key = o.pos[0]
    reg = ctx.host.registry
    try:
        split_key(key)
        path = reg.key_path(key)
    except InvalidPath:
        return _bad_key("query")
    except KeyNotFound:
        return _err(NOT_FOUND)
    sep = o.vals.get("/se", "\\0")
    version = ctx.host.windows.reg_version
    out = [_header(version)]
    if "/v" in o.vals or "/ve" in o.flags:
        want = "" if "/ve" in o.flags else o.vals["/v"]
        matches = 0
        keys = [p for p, _ in reg.walk(path)] if "/s" in o.flags else [path]
        for p in keys:
            v = reg.get_value(p, want)
            if v is None and want == "" and "/s" not in o.flags:
                # /ve on a key without a default value
                unset = ("    (Default)    REG_SZ    (value not set)\r\n" if version is None
                         else "    <NO NAME>\tREG_SZ\t\r\n")
                out.append(f"{p}\r\n{unset}\r\n")
                matches += 1
                continue
            if v is not None:
                out.append(f"{p}\r\n{format_value(v, sep, version)}\r\n")
                matches += 1
        if matches == 0:
            return _err(NOT_FOUND)
        if "/s" in o.flags:
            out.append(f"End of search: {matches} match(es) found.\r\n")
        return CommandResult(0, "".join(out), "")
    if "/s" in o.flags:
        for p, vals in reg.walk(path):
            out.append(f"{p}\r\n")
            out.extend(format_value(v, sep, version) for v in vals)
            out.append("\r\n")
        return CommandResult(0, "".join(out), "")
    vals = reg.values(path) if path != "HKEY_USERS" else []
    out.append(f"{path}\r\n")
    out.extend(format_value(v, sep, version) for v in vals)
    if vals:
        out.append("\r\n")
    subs = reg.subkeys(path)
    out.extend(f"{path}\\{s}\r\n" for s in subs)
    if subs:
        out.append("\r\n")
    return CommandResult(0, "".join(out), "")


def _parse_add_data(type_: str, data: str, sep: str) -> Any:
    n = type_number(type_)
    if n in (4, 11):
        d = data.strip() or "0"
        value = int(d, 16) if d.lower().startswith("0x") else int(d, 10)
        if value < 0 or value >= (1 << (32 if n == 4 else 64)):
            raise ValueError(data)
        return value
    if n == 7:
        return [s for s in data.split(sep)] if data else []
    if n in (3, 0):
        if len(data) % 2:
            data = "0" + data
        return bytes.fromhex(data)
    return data


def _add(ctx: Any, args: list[str]) -> CommandResult:
    o = _Opts(args, {"/v", "/t", "/d", "/s"}, {"/ve", "/f", "/reg:32", "/reg:64"})
    if o.bad or len(o.pos) != 1 or ("/v" in o.vals and "/ve" in o.flags):
        return _syntax("add")
    key = o.pos[0]
    type_ = o.vals.get("/t", "REG_SZ").upper()
    if type_ not in TYPES:
        return _err(f"ERROR: Invalid syntax.\r\nType \"REG ADD /?\" for usage.\r\n")
    sep = o.vals.get("/s", "\\0")
    if "/s" in o.vals and (len(sep) != 1 or type_ != "REG_MULTI_SZ"):
        return _syntax("add")
    try:
        root, parts = split_key(key)
    except InvalidPath:
        return _bad_key("add")
    if root not in ("HKLM", "HKU") or (root == "HKU" and not parts):
        return _bad_key("add") if root != "HKCU" else _err(NOT_FOUND)
    try:
        data = _parse_add_data(type_, o.vals.get("/d", ""), sep)
    except ValueError:
        return _syntax("add")
    reg = ctx.host.registry
    name = None if ("/v" not in o.vals and "/ve" not in o.flags) else o.vals.get("/v", "")
    try:
        if name is not None and "/f" not in o.flags and reg.key_exists(key) and reg.get_value(key, name) is not None:
            shown = name or "(Default)"
            return CommandResult(1, f"Value {shown} exists, overwrite(Yes/No)? ", CANCELLED)
        ctx.mutated()
        if name is None:
            reg.create_key(key)
        else:
            reg.set_value(key, name, type_, data)
    except KeyNotFound:
        return _err(NOT_FOUND)
    except AccessDenied:
        return _err(ACCESS_DENIED)
    return CommandResult(0, OK, "")


def _delete(ctx: Any, args: list[str]) -> CommandResult:
    o = _Opts(args, {"/v"}, {"/ve", "/va", "/f", "/reg:32", "/reg:64"})
    if o.bad or len(o.pos) != 1 or sum(("/v" in o.vals, "/ve" in o.flags, "/va" in o.flags)) > 1:
        return _syntax("delete")
    key = o.pos[0]
    reg = ctx.host.registry
    try:
        root, parts = split_key(key)
        if not reg.key_exists(key):
            return _err(NOT_FOUND)
    except InvalidPath:
        return _bad_key("delete")
    if root == "HKLM" and not parts or root == "HKU" and len(parts) < 2:
        return _err(ACCESS_DENIED)  # deleting a hive root is refused
    if "/f" not in o.flags:
        what = "all values under the registry key" if "/va" in o.flags else (
            "the registry value " + (o.vals.get("/v") or "(Default)") if ("/v" in o.vals or "/ve" in o.flags)
            else "the registry key " + long_key(key))
        return CommandResult(1, f"Delete {what} (Yes/No)? ", CANCELLED)
    try:
        if "/va" in o.flags:
            ctx.mutated()
            reg.delete_values(key)
        elif "/v" in o.vals or "/ve" in o.flags:
            name = o.vals.get("/v", "")
            if reg.get_value(key, name) is None:
                return _err(NOT_FOUND)
            ctx.mutated()
            reg.delete_value(key, name)
        else:
            ctx.mutated()
            reg.delete_key(key)
    except KeyNotFound:
        return _err(NOT_FOUND)
    return CommandResult(0, OK, "")


def _export(ctx: Any, args: list[str]) -> CommandResult:
    o = _Opts(args, set(), {"/y", "/reg:32", "/reg:64"})
    if o.bad or len(o.pos) != 2:
        return _syntax("export")
    key, file = o.pos
    reg = ctx.host.registry
    try:
        split_key(key)
        keys = reg.export_keys(key)
    except InvalidPath:
        return _bad_key("export")
    except KeyNotFound:
        return _err(NOT_FOUND)
    try:
        if ctx.host.fs.exists(ctx.full_path(file)) and "/y" not in o.flags:
            # reg asks "File X already exists. Overwrite (Yes/No)?"; with no stdin the answer is no
            return CommandResult(1, f"File {file} already exists. Overwrite (Yes/No)? ", CANCELLED)
        data = render_reg(keys)
        ctx.write_file(file, data)
    except RegFileError:
        return _err("ERROR: Error accessing the registry.\r\n")
    except (OSError, InvalidPath):
        return _err("ERROR: The system cannot find the path specified.\r\n")
    return CommandResult(0, OK, "")


def _import(ctx: Any, args: list[str]) -> CommandResult:
    o = _Opts(args, set(), {"/reg:32", "/reg:64"})
    if o.bad or len(o.pos) != 1:
        return _syntax("import")
    try:
        data = ctx.read_file(o.pos[0])
    except (OSError, InvalidPath):
        return _err("ERROR: Error opening the file. There may be a disk or file system error.\r\n")
    try:
        keys = parse_reg(data)
    except RegFileError:
        return _err("ERROR: Error accessing the registry.\r\n")
    ctx.mutated()
    try:
        for k in keys:
            split_key(k.path)
        ctx.host.registry.import_keys(keys)
    except (LabError, ValueError):
        return _err("ERROR: Error accessing the registry.\r\n")
    return CommandResult(0, "", OK)


def _load(ctx: Any, args: list[str]) -> CommandResult:
    o = _Opts(args, set(), set())
    if o.bad or len(o.pos) != 2:
        return _syntax("load")
    key, file = o.pos
    try:
        root, parts = split_key(key)
    except InvalidPath:
        return _bad_key("load")
    if root != "HKU" or len(parts) != 1:
        return _bad_key("load")
    if ctx.fault("hive_locked"):
        return _err(IN_USE)
    try:
        ctx.host.registry.load_hive(parts[0], ctx.full_path(file))
    except FileNotFoundError:
        return _err(FILE_NOT_FOUND)
    except SharingViolation:
        return _err(IN_USE)
    except AccessDenied:
        return _err(ACCESS_DENIED)
    except InvalidPath:
        return _err(FILE_NOT_FOUND)
    return CommandResult(0, OK, "")


def _unload(ctx: Any, args: list[str]) -> CommandResult:
    o = _Opts(args, set(), set())
    if o.bad or len(o.pos) != 1:
        return _syntax("unload")
    try:
        root, parts = split_key(o.pos[0])
    except InvalidPath:
        return _bad_key("unload")
    if root != "HKU" or len(parts) != 1:
        return _bad_key("unload")
    try:
        ctx.host.registry.unload_hive(parts[0])
    except KeyNotFound:
        return _err(BAD_PARAM)
    except AccessDenied:
        return _err(ACCESS_DENIED)
    return CommandResult(0, OK, "")


OPS = {"query": _query, "add": _add, "delete": _delete, "export": _export, "import": _import,
       "load": _load, "unload": _unload}


@program("reg")
def reg(ctx: Any, argv: list[str], raw: str) -> CommandResult:
    """Dispatch ``reg <operation> ...``."""
    if len(argv) < 2:
        return CommandResult(1, "", 'ERROR: Invalid syntax.\r\nType "REG /?" for usage.\r\n')
    op = argv[1].lower()
    fn = OPS.get(op)
    if fn is None:
        return CommandResult(1, "", 'ERROR: Invalid syntax.\r\nType "REG /?" for usage.\r\n')
    return fn(ctx, argv[2:])
