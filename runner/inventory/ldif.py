"""A strict reader of LDIF content files (RFC 2849) as ``ldifde`` exports them on a domain controller.

``runner.windows.ldif.parse`` reads what ldifde prints back to a step and
forgives; this reader is for a file an administrator hands over, so every
problem is an InputError at its ``file:line`` (exit 4) and binary values stay
bytes (``objectGUID:: ...``, ``objectSid:: ...``).

What it accepts: an optional ``version: 1``; ``#`` comments (folded or not);
lines folded with one leading space; ``attr: value``, ``attr:: base64`` and
``attr:`` (empty); attribute options (``cn;lang-en``); CRLF or LF; UTF-8
(with or without a byte order mark) or UTF-16 with a byte order mark
(``ldifde -u``). ldifde writes every exported entry as ``changetype: add``:
such a record is an entry; ``modify``, ``delete``, ``modrdn`` and ``moddn``
records are checked and counted in ``skipped``, not returned. ``attr:< URL``
values are refused (ldifde never writes them, and reading local files named
by an input file is not wanted).

A file cut short (copied in part, ``head -c``, a full disk) is refused at its
last line: ldifde ends every line with CRLF and every record with a blank
line, so a last line without a line end, or a last record without the blank
line after it, means the export is not whole.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from runner.errors import InputError

_ATTR_LINE = re.compile(r"^((?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*):(.*)$")
_CHANGETYPES = ("add", "modify", "delete", "modrdn", "moddn")


@dataclass
class Record:
    """One content record: its DN, the line it starts on, and its values by lower-case attribute name.

    A value is ``str`` when written ``attr: value`` and ``bytes`` when
    written ``attr:: base64`` (decode text with :meth:`text`).
    """

    dn: str
    line: int
    values: dict[str, list[str | bytes]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def raw(self, attr: str) -> list[str | bytes]:
        """Every value of ``attr`` (case-insensitive, options such as ``;binary`` ignored)."""
        return self.values.get(attr.lower(), [])

    def text(self, attr: str, file: str | None = None) -> str | None:
        """The first value of ``attr`` as text (base64 values decoded as UTF-8); None when absent."""
        vals = self.raw(attr)
        if not vals:
            return None
        v = vals[0]
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{attr} of {self.dn!r} is not UTF-8 text", file, self.lines.get(attr.lower(),
                                                                                                  self.line)) from None
        return v

    def line_of(self, attr: str) -> int:
        """The line where ``attr`` first appears (the record's line when absent)."""
        return self.lines.get(attr.lower(), self.line)


@dataclass
class Document:
    """The records of one file, and how many change records (not entries) were passed over."""

    records: list[Record]
    skipped: int = 0


def decode_text(data: bytes, file: str) -> str:
    """The text of an LDIF file: UTF-16 with a byte order mark, else UTF-8 (BOM optional)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-16 text (byte {e.start})", file) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError("not UTF-8 text: ldifde writes non-ASCII values in base64 (attr:: ...); was the file "
                         "re-encoded?", file, line) from None


CUT = ("it looks cut: ldifde ends every record with a blank line, so a whole export ends with one; "
       "copy or export the whole file again")


def _logical_lines(text: str, file: str) -> list[tuple[int, str]]:
    """Unfold: (first physical line number, logical line); blank lines kept as ''.

    The line end of the last line is not a line of its own; a file whose last line has
    none was cut (ldifde ends every line with CRLF), an InputError at that line.
    """
    out: list[tuple[int, str]] = []
    physical = text.split("\n")
    if physical[-1] == "":
        physical.pop()
    else:
        raise InputError(f"the file ends inside a line (no line end after {physical[-1][-30:]!r}): {CUT}",
                         file, len(physical))
    for n, raw in enumerate(physical, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.startswith(" "):
            if not out or out[-1][1] == "":
                raise InputError("a continuation line (starting with a space) follows no line to continue",
                                 file, n)
            out[-1] = (out[-1][0], out[-1][1] + line[1:])
        else:
            out.append((n, line))
    return out


def _value(rest: str, attr: str, file: str, line: int) -> str | bytes:
    if rest.startswith(":"):
        b64 = rest[1:].strip()
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            cut = " (a value cut short? the file may have been truncated)" if len(b64) % 4 else ""
            raise InputError(f"{attr}:: is not valid base64{cut}", file, line) from None
    if rest.startswith("<"):
        raise InputError(f"{attr}:< (a value read from a URL) is not supported", file, line)
    value = rest.lstrip(" ")
    if "\x00" in value:
        raise InputError(f"{attr}: holds a NUL character (it must be base64-encoded)", file, line)
    return value


def parse(data: bytes, file: str) -> Document:
    """Parse an ldifde export; InputError at ``file:line`` for anything malformed."""
    lines = _logical_lines(decode_text(data, file), file)
    records: list[Record] = []
    skipped = 0
    block: list[tuple[int, str]] = []
    first = True

    def flush() -> None:
        nonlocal skipped, first
        items = [(n, s) for n, s in block if not s.startswith("#")]
        block.clear()
        if not items:
            return
        if first and items[0][1].lower().startswith("version:"):
            n, s = items.pop(0)
            if s.partition(":")[2].strip() != "1":
                raise InputError(f"unsupported LDIF version {s.partition(':')[2].strip()!r} (only 1)", file, n)
        first = False
        if not items:
            return
        n0, s0 = items[0]
        m = _ATTR_LINE.match(s0)
        if not m or m.group(1).lower() != "dn":
            raise InputError(f"a record must start with 'dn:', found {s0[:40]!r}", file, n0)
        dn = _value(m.group(2), "dn", file, n0)
        if isinstance(dn, bytes):
            try:
                dn = dn.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("dn:: is not UTF-8 text", file, n0) from None
        if not dn.strip():
            raise InputError("empty dn", file, n0)
        rec = Record(dn, n0)
        changetype = "add"
        for i, (n, s) in enumerate(items[1:]):
            m = _ATTR_LINE.match(s)
            if not m:
                if s == "-" and changetype == "modify":
                    continue
                raise InputError(f"not an LDIF line ('attribute: value' expected): {s[:40]!r}", file, n)
            name = m.group(1).split(";", 1)[0].lower()
            if name == "dn":
                raise InputError("a second 'dn:' in one record (records are separated by a blank line)", file, n)
            if i == 0 and name == "control":
                raise InputError("LDIF controls are not supported in an export", file, n)
            if name == "changetype":
                if i != 0:
                    raise InputError("'changetype:' must follow the dn line", file, n)
                changetype = m.group(2).strip().lower()
                if changetype not in _CHANGETYPES:
                    raise InputError(f"unknown changetype {changetype!r} (one of {', '.join(_CHANGETYPES)})",
                                     file, n)
                continue
            value = _value(m.group(2), m.group(1), file, n)
            if changetype == "add":
                rec.values.setdefault(name, []).append(value)
                rec.lines.setdefault(name, n)
        if changetype == "add":
            records.append(rec)
        else:
            skipped += 1

    for n, s in lines:
        if s.strip() == "":
            flush()
        else:
            block.append((n, s))
    if any(not s.startswith("#") for _, s in block):
        # the last record was not closed by a blank line: the file stops after (or inside) it
        raise InputError(f"the last record ({_dn_of(block)}) is not followed by a blank line: {CUT}",
                         file, block[-1][0])
    flush()
    return Document(records, skipped)


def _dn_of(block: list[tuple[int, str]]) -> str:
    """The record's dn as written, for a message (its first line when it has none)."""
    for _, s in block:
        if s.lower().startswith("dn:"):
            return s[:80]
    return f"starting {block[0][1][:40]!r}"


def read(path: str) -> Document:
    """Read and parse the LDIF file at ``path`` (a missing file is an InputError naming it)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None
    return parse(data, path)
