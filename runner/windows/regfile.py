"""The .reg file codec: parse and render ``Windows Registry Editor Version 5.00`` files.

Used by the lab's ``reg export``/``reg import`` and by the export step on the
control node, so both sides agree byte for byte.

Format (doc: DOMAIN.md; Microsoft KB 310516 "How to add, modify, or delete
registry subkeys and values by using a .reg file"; layout details follow
Wine's ``programs/reg/export.c``, which reproduces reg.exe's output):

- UTF-16LE with a BOM, CRLF line ends, first line
  ``Windows Registry Editor Version 5.00`` then a blank line;
- each key ``[HKEY_LOCAL_MACHINE\\...]`` followed by its values, then a blank
  line; ``[-KEY]`` deletes a key, ``"name"=-`` deletes a value;
- ``@`` is the default (unnamed) value; names and REG_SZ data are quoted with
  ``\\\\`` and ``\\"`` escapes (and ``\\n`` for a newline in a name, as Wine);
- ``dword:0000002a``; everything else is ``hex:`` (REG_BINARY) or
  ``hex(N):`` (N = the type number in hex: 0 REG_NONE, 2 REG_EXPAND_SZ,
  7 REG_MULTI_SZ, b REG_QWORD) with comma-separated bytes, wrapped with
  ``,\\`` + CRLF + two spaces once a line reaches 77 characters
  (Wine export.c ``MAX_HEX_CHARS``);
- REG_SZ data holding CR, LF or NUL cannot be written as a quoted string
  by regedit either, so it is written as ``hex(1):`` (UTF-16LE bytes).

Parsing also accepts ``REGEDIT4`` files (UTF-8/ANSI), comments (``;``),
continuation lines and lower/upper-case hex.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

HEADER = "Windows Registry Editor Version 5.00"
HEADER4 = "REGEDIT4"
MAX_HEX_CHARS = 77  # Wine programs/reg/export.c

REG_TYPES: dict[str, int] = {
    "REG_NONE": 0,
    "REG_SZ": 1,
    "REG_EXPAND_SZ": 2,
    "REG_BINARY": 3,
    "REG_DWORD": 4,
    "REG_DWORD_BIG_ENDIAN": 5,
    "REG_LINK": 6,
    "REG_MULTI_SZ": 7,
    "REG_RESOURCE_LIST": 8,
    "REG_FULL_RESOURCE_DESCRIPTOR": 9,
    "REG_RESOURCE_REQUIREMENTS_LIST": 10,
    "REG_QWORD": 11,
}
TYPE_NAMES: dict[int, str] = {v: k for k, v in REG_TYPES.items()}

RegData = Union[str, int, list[str], bytes, None]


class RegFileError(ValueError):
    """A .reg file that cannot be parsed, or data that cannot be rendered."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


@dataclass
class RegValue:
    """One value: ``name`` ("" = default ``@``), ``type`` (``REG_SZ``...), ``data``.

    Data types by registry type: str (REG_SZ, REG_EXPAND_SZ), list[str]
    (REG_MULTI_SZ), int (REG_DWORD, REG_QWORD), bytes (anything else).
    ``delete=True`` is a ``"name"=-`` entry (type and data ignored).
    """

    name: str
    type: str = "REG_SZ"
    data: RegData = ""
    delete: bool = False


@dataclass
class RegKey:
    """A ``[KEY]`` section with its values, or a ``[-KEY]`` deletion when ``delete``."""

    path: str
    values: list[RegValue] = field(default_factory=list)
    delete: bool = False


# -- typed data <-> raw bytes -------------------------------------------------

def type_number(type_name: str) -> int:
    """The numeric registry type for ``REG_SZ``...; ``REG_0x1f`` style names too."""
    t = type_name.upper()
    if t in REG_TYPES:
        return REG_TYPES[t]
    if t.startswith("REG_0X"):
        return int(t[6:], 16)
    raise RegFileError(f"unknown registry type {type_name!r}")


def type_name(number: int) -> str:
    """The name for a numeric registry type (``REG_0x1f`` for unnamed ones)."""
    return TYPE_NAMES.get(number, f"REG_0x{number:x}")


def to_bytes(type_: str, data: RegData) -> bytes:
    """Encode typed ``data`` as the raw bytes Windows stores for ``type_``."""
    n = type_number(type_)
    if n in (1, 2):
        return (str(data or "") + "\0").encode("utf-16-le")
    if n == 7:
        items = list(data or [])
        if not items:
            return "\0".encode("utf-16-le")
        return ("".join(s + "\0" for s in items) + "\0").encode("utf-16-le")
    if n == 4:
        return struct.pack("<I", int(data or 0) & 0xFFFFFFFF)
    if n == 5:
        return struct.pack(">I", int(data or 0) & 0xFFFFFFFF)
    if n == 11:
        return struct.pack("<Q", int(data or 0) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(data, str):
        return data.encode("utf-16-le")
    return bytes(data or b"")


def from_bytes(type_: str, raw: bytes) -> RegData:
    """Decode raw registry bytes into the typed form used by RegValue."""
    n = type_number(type_)
    if n in (1, 2):
        s = raw.decode("utf-16-le", errors="replace")
        return s.split("\0", 1)[0] if "\0" in s else s
    if n == 7:
        s = raw.decode("utf-16-le", errors="replace")
        while s.endswith("\0"):
            s = s[:-1]
        return s.split("\0") if s else []
    if n == 4 and len(raw) == 4:
        return struct.unpack("<I", raw)[0]
    if n == 5 and len(raw) == 4:
        return struct.unpack(">I", raw)[0]
    if n == 11 and len(raw) == 8:
        return struct.unpack("<Q", raw)[0]
    return bytes(raw)


# -- rendering ----------------------------------------------------------------

def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _name(name: str) -> str:
    if "\r" in name or "\0" in name:
        raise RegFileError(f"value name {name!r} holds CR or NUL and cannot be written to a .reg file")
    return "@" if name == "" else _quote(name)


def _hex(prefix_len: int, tag: str, raw: bytes) -> str:
    # Wine export.c export_hex_data: line_len counts the name, "=" and the tag;
    # after each "xx," it adds 3 and wraps once it reaches MAX_HEX_CHARS.
    out = [tag]
    line_len = prefix_len + len(tag)
    last = len(raw) - 1
    for i, b in enumerate(raw):
        out.append(f"{b:02x}")
        if i == last:
            break
        out.append(",")
        line_len += 3
        if line_len >= MAX_HEX_CHARS:
            out.append("\\\r\n  ")
            line_len = 2
    return "".join(out)


def render_value(v: RegValue) -> str:
    """One value line (possibly wrapped), without the final CRLF."""
    name = _name(v.name)
    if v.delete:
        return f"{name}=-"
    n = type_number(v.type)
    prefix_len = len(name) + 1
    if n == 1:
        s = str(v.data if v.data is not None else "")
        if not any(c in s for c in "\r\n\0"):
            return f"{name}={_quote(s)}"
    if n == 4:
        return f"{name}=dword:{int(v.data or 0) & 0xFFFFFFFF:08x}"
    tag = "hex:" if n == 3 else f"hex({n:x}):"
    return f"{name}=" + _hex(prefix_len, tag, to_bytes(v.type, v.data))


def render_reg(keys: list[RegKey]) -> bytes:
    """Render keys as a UTF-16LE (BOM), CRLF .reg file, as ``reg export`` writes it."""
    lines = [HEADER, ""]
    for k in keys:
        if "\r" in k.path or "\n" in k.path:
            raise RegFileError(f"key path {k.path!r} holds a line break")
        if k.delete:
            lines.append(f"[-{k.path}]")
        else:
            lines.append(f"[{k.path}]")
            lines.extend(render_value(v) for v in k.values)
        lines.append("")
    text = "\r\n".join(lines) + "\r\n"
    return b"\xff\xfe" + text.encode("utf-16-le")


# -- parsing ------------------------------------------------------------------

def _decode(data: bytes) -> str:
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le")
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _unquote(text: str, pos: int, lineno: int) -> tuple[str, int]:
    """Read a quoted string starting at ``text[pos] == '"'``; return (value, index after)."""
    out = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "r": "\r", "0": "\0"}.get(nxt, nxt))
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise RegFileError("unterminated quoted string", lineno)


def _parse_hex(s: str, lineno: int) -> bytes:
    s = s.replace(" ", "").replace("\t", "").rstrip(",")
    if not s:
        return b""
    try:
        return bytes(int(p, 16) for p in s.split(","))
    except ValueError:
        raise RegFileError(f"bad hex data {s[:40]!r}", lineno) from None


def _parse_data(rest: str, lineno: int) -> tuple[str, RegData, bool]:
    """Parse what follows ``name=``: returns (type, data, delete)."""
    rest = rest.strip()
    if rest == "-":
        return "REG_NONE", None, True
    if rest.startswith('"'):
        s, end = _unquote(rest, 0, lineno)
        tail = rest[end:].strip()
        if tail and not tail.startswith(";"):
            raise RegFileError(f"unexpected text after string: {tail[:20]!r}", lineno)
        return "REG_SZ", s, False
    low = rest.lower()
    if low.startswith("dword:"):
        try:
            return "REG_DWORD", int(rest[6:].split(";")[0].strip(), 16), False
        except ValueError:
            raise RegFileError(f"bad dword {rest!r}", lineno) from None
    if low.startswith("hex:"):
        return "REG_BINARY", _parse_hex(rest[4:].split(";")[0], lineno), False
    if low.startswith("hex("):
        close = rest.find("):")
        if close < 0:
            raise RegFileError(f"bad hex type {rest[:20]!r}", lineno)
        try:
            n = int(rest[4:close], 16)
        except ValueError:
            raise RegFileError(f"bad hex type {rest[:20]!r}", lineno) from None
        raw = _parse_hex(rest[close + 2:].split(";")[0], lineno)
        t = type_name(n)
        return t, from_bytes(t, raw), False
    raise RegFileError(f"unrecognised value data {rest[:30]!r}", lineno)


def parse_reg(data: bytes) -> list[RegKey]:
    """Parse a .reg file (v5 UTF-16LE or REGEDIT4) into keys, values and deletions.

    Raises RegFileError (a ValueError) with the line number on malformed input.
    """
    text = _decode(data)
    raw_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # join continuation lines (a hex line ending with a backslash)
    lines: list[tuple[int, str]] = []
    i = 0
    while i < len(raw_lines):
        line, start = raw_lines[i], i + 1
        while line.rstrip().endswith("\\") and not line.lstrip().startswith("[") and i + 1 < len(raw_lines):
            stripped = line.rstrip()
            i += 1
            line = stripped[:-1] + raw_lines[i].lstrip()
        lines.append((start, line))
        i += 1
    while lines and not lines[0][1].strip():
        lines.pop(0)
    if not lines or lines[0][1].strip() not in (HEADER, HEADER4):
        raise RegFileError("missing 'Windows Registry Editor Version 5.00' header", 1)
    keys: list[RegKey] = []
    current: RegKey | None = None
    for lineno, line in lines[1:]:
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        if s.startswith("["):
            end = s.rfind("]")
            if end < 0:
                raise RegFileError("key line without closing ']'", lineno)
            path = s[1:end]
            if path.startswith("-"):
                keys.append(RegKey(path[1:], delete=True))
                current = None
            else:
                current = RegKey(path)
                keys.append(current)
            continue
        if current is None:
            raise RegFileError("value outside a key section", lineno)
        if s.startswith("@"):
            name, rest = "", s[1:].lstrip()
        elif s.startswith('"'):
            name, end = _unquote(s, 0, lineno)
            rest = s[end:].lstrip()
        else:
            raise RegFileError(f"unrecognised line {s[:30]!r}", lineno)
        if not rest.startswith("="):
            raise RegFileError("expected '=' after value name", lineno)
        t, d, delete = _parse_data(rest[1:], lineno)
        current.values.append(RegValue(name, t, d, delete))
    return keys
