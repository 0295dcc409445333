"""LDIF (RFC 2849) for ldifde: build modify/delete files, parse export files.

ldifde imports a file (``ldifde -i -f FILE``) and exports one
(``ldifde -f FILE -r FILTER -l ATTRS``). Values that are not RFC 2849
SAFE-STRINGs (non-ASCII, leading space/colon/'<', trailing space, NUL, CR,
LF) are written base64-encoded with ``::``; lines longer than 76 characters
are folded (continuation lines start with one space).

Example::

    >>> print(render([Change("CN=Al,DC=contoso,DC=com", "modify", [("delete", "msExchIMAddress", [])])]).decode())
    dn: CN=Al,DC=contoso,DC=com
    changetype: modify
    delete: msExchIMAddress
    -
    <BLANKLINE>
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from runner.windows.cmdline import Command, Quoted

_SAFE = re.compile(r"^[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")
_ATTR = re.compile(r"^[A-Za-z][A-Za-z0-9-]*(;[A-Za-z0-9-]+)*\Z")
FOLD = 76


def is_safe(value: str) -> bool:
    """True when ``value`` may be written as ``attr: value`` (RFC 2849 SAFE-STRING)."""
    return value == "" or (bool(_SAFE.match(value)) and not value.endswith(" "))


def attr_line(attr: str, value: str | bytes) -> str:
    """``attr: value`` or ``attr:: base64`` for values that are not safe."""
    if not _ATTR.match(attr):
        raise ValueError(f"not an LDAP attribute name: {attr!r}")
    if isinstance(value, bytes):
        return f"{attr}:: {base64.b64encode(value).decode()}"
    if is_safe(value):
        return f"{attr}: {value}" if value else f"{attr}:"
    return f"{attr}:: {base64.b64encode(value.encode('utf-8')).decode()}"


def _fold(line: str) -> list[str]:
    if len(line) <= FOLD:
        return [line]
    out = [line[:FOLD]]
    rest = line[FOLD:]
    while rest:
        out.append(" " + rest[:FOLD - 1])
        rest = rest[FOLD - 1:]
    return out


@dataclass(frozen=True)
class Change:
    """One LDIF change record: ``changetype`` modify (with ``mods``) or delete.

    ``mods`` are (operation, attribute, values) with operation ``add``,
    ``delete`` or ``replace``; ``delete`` with no values removes the attribute.
    """

    dn: str
    changetype: str = "modify"
    mods: Sequence[tuple[str, str, Sequence[str]]] = field(default_factory=tuple)


#: The last line of every LDIF file the runner puts on a server: a comment (ldifde skips it),
#: checked before the import (``checked_import``), so that a file the transfer cut short is
#: never imported in part (a cut inside an entry would drop some of its changes silently).
END_MARK = "# runner-end "


def render(changes: Iterable[Change], *, end: str | None = None) -> bytes:
    """The LDIF file for ``changes`` (UTF-8, CRLF line ends as ldifde writes them); ``end``:
    the nonce of its last line, ``END_MARK`` + ``end`` (see ``checked_import``)."""
    lines: list[str] = []
    for ch in changes:
        if ch.changetype not in ("modify", "delete", "add"):
            raise ValueError(f"unsupported changetype {ch.changetype!r}")
        lines += _fold(attr_line("dn", ch.dn))
        lines.append(f"changetype: {ch.changetype}")
        for op, attr, values in ch.mods:
            if op not in ("add", "delete", "replace"):
                raise ValueError(f"unsupported modify operation {op!r}")
            lines.append(f"{op}: {attr}")
            for v in values:
                lines += _fold(attr_line(attr, v))
            lines.append("-")
        lines.append("")
    if end is not None:
        lines.append(END_MARK + _end_nonce(end))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _end_nonce(end: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8,32}", end):
        raise ValueError(f"not an end-mark nonce: {end!r}")
    return end


def checked_import(path: str, end: str) -> Command:
    """``findstr /b /l /c:"# runner-end NONCE" FILE >nul && ldifde -i -f FILE``: ldifde imports
    the file only when its last line arrived. Its section then fails without ldifde's output
    (``cut_short`` tells it apart from an import that failed)."""
    return Command(Command("findstr", "/b", "/l", f'/c:"{END_MARK}{_end_nonce(end)}"', Quoted(path), ">nul"),
                   "&&", import_command(path))


def cut_short(section_stdout: str) -> bool:
    """Whether a failed ``checked_import`` section failed at its findstr gate (the file arrived
    without its end mark): ldifde, which always prints ``Connecting to`` first, never ran."""
    return "Connecting to" not in section_stdout


def render_entries(entries: Iterable[tuple[str, Sequence[tuple[str, str | bytes]]]]) -> bytes:
    """Content records as ``ldifde -f`` exports them: a blank line, then per entry ``dn:``,
    ``changetype: add`` and its values (bytes base64-encoded), a blank line after each."""
    lines: list[str] = [""]
    for dn, values in entries:
        lines += _fold(attr_line("dn", dn))
        lines.append("changetype: add")
        for attr, v in values:
            lines += _fold(attr_line(attr, v))
        lines.append("")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@dataclass
class Entry:
    """One exported entry: its DN and attributes (names as written, values in order)."""

    dn: str
    attrs: dict[str, list[str]] = field(default_factory=dict)

    def get(self, attr: str) -> list[str]:
        """Values of ``attr`` (case-insensitive name); empty when absent."""
        for k, v in self.attrs.items():
            if k.lower() == attr.lower():
                return v
        return []

    def first(self, attr: str) -> str | None:
        vals = self.get(attr)
        return vals[0] if vals else None


def parse(data: bytes | str) -> list[Entry]:
    """Entries of an ldifde export file (comments, folding, ``::`` base64, ``version:``)."""
    if isinstance(data, bytes):
        if data.startswith(b"\xff\xfe"):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig", errors="replace")
    else:
        text = data
    unfolded: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(" ") and unfolded and unfolded[-1] != "":
            unfolded[-1] += line[1:]
        else:
            unfolded.append(line)
    entries: list[Entry] = []
    current: Entry | None = None
    for line in unfolded:
        if not line.strip():
            if current is not None:
                entries.append(current)
                current = None
            continue
        if line.startswith("#") or line.lower().startswith("version:"):
            continue
        attr, sep, rest = line.partition(":")
        if not sep:
            continue
        if rest.startswith(":"):
            raw = base64.b64decode(rest[1:].strip())
            value = raw.decode("utf-8", errors="surrogateescape")
        elif rest.startswith("<"):
            value = rest[1:].strip()
        else:
            value = rest[1:] if rest.startswith(" ") else rest
        if attr.lower() == "dn":
            if current is not None:
                entries.append(current)
            current = Entry(value)
        elif current is not None:
            current.attrs.setdefault(attr, []).append(value)
    if current is not None:
        entries.append(current)
    return entries


# RFC 4514 distinguished names, with the spaces around ',' '=' and '+' that AD tools accept.
_DN_TYPE = r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)"
_DN_CHAR = r'(?:[^\\"+,;<>\x00-\x1f\x7f]|\\[\\"+,;<>= #=]|\\[0-9A-Fa-f]{2})'
_DN_AVA = rf"{_DN_TYPE}\s*=\s*{_DN_CHAR}+"
_DN_RDN = re.compile(rf"\s*{_DN_AVA}(?:\s*\+\s*{_DN_AVA})*\s*\Z")
MAX_DN = 2048


def dn_problem(dn: object) -> str | None:
    """Why ``dn`` is not a distinguished name (RFC 4514: ``CN=LC Services,CN=Microsoft,DC=contoso,DC=com``,
    ``,+"\\<>;`` escaped with ``\\`` inside a value), or None. The one check for DNs an inventory,
    a playbook or extra vars supply: they go into wmic and LDIF lines on the servers."""
    if not isinstance(dn, str):
        return "is not a string"
    if not dn.strip():
        return "is empty"
    if len(dn) > MAX_DN:
        return f"is longer than {MAX_DN} characters"
    bad = re.search(r"[\x00-\x1f\x7f]", dn)
    if bad:
        return f"holds the control character U+{ord(bad.group()):04X}"
    for rdn in _split_dn(dn):
        if not _DN_RDN.match(rdn):
            shown = rdn.strip() or "(nothing)"
            return (f"has {shown[:60]!r} where a NAME=value part is expected (characters ,+\"\\<>; "
                    "inside a value are escaped with \\)")
    return None


def _split_dn(dn: str) -> list[str]:
    """``dn`` cut at its unescaped commas."""
    parts, current, i = [], [], 0
    while i < len(dn):
        c = dn[i]
        if c == "\\" and i + 1 < len(dn):
            current.append(dn[i:i + 2])
            i += 2
            continue
        if c == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of a value inside an LDAP search filter."""
    out = []
    for c in value:
        if c in "*()\\\x00":
            out.append("\\%02x" % ord(c))
        else:
            out.append(c)
    return "".join(out)


def escape_filter_bytes(raw: bytes) -> str:
    """RFC 4515 escaping of an octet-string value (objectGUID): every byte as ``\\xx``."""
    return "".join("\\%02x" % b for b in raw)


def value_for_ldif(value: str) -> str | bytes:
    """A value read by :func:`parse` as it must be written back: binary values (decoded with
    ``surrogateescape``) as their original bytes, text as text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def export_command(path: str, ldap_filter: str, attrs: Sequence[str], base_dn: str | None = None) -> Command:
    """``ldifde -f PATH [-d BASE] -r FILTER -l A,B`` (export to a file on the host)."""
    for a in attrs:
        if not _ATTR.match(a):
            raise ValueError(f"not an LDAP attribute name: {a!r}")
    bits: list = ["ldifde", "-f", Quoted(path)]
    if base_dn:
        bits += ["-d", Quoted(base_dn)]
    bits += ["-r", Quoted(ldap_filter), "-l", ",".join(attrs)]
    return Command(*bits)


def import_command(path: str) -> Command:
    """``ldifde -i -f PATH`` (apply an LDIF file put on the host)."""
    return Command("ldifde", "-i", "-f", Quoted(path))
