"""The lab's ``findstr``: searches stdin or files for lines matching literal strings or regexes.

After Microsoft's findstr reference (learn.microsoft.com/windows-server/administration/
windows-commands/findstr): ``findstr [/b] [/e] [/l] [/r] [/i] [/x] [/v] [/n] [/c:string]
[strings] [file...]``. Several search strings (space-separated, or several ``/c:``) match
when any one does. ``/c:string`` is one string, spaces included, taken literally unless
``/r``; plain space-separated strings are regular expressions unless ``/l``. ``/b`` and
``/e`` anchor a match at the line's start / end, ``/x`` the whole line, ``/i`` ignores
case, ``/v`` prints the lines that do not match, ``/n`` numbers them. findstr's regular
expressions: ``.`` any character, ``*`` zero or more of the one before, ``^`` / ``$``
the line's start / end, ``[class]``, ``[^class]``, ``[x-y]``, ``\\x`` a literal ``x``,
``\\<`` / ``\\>`` a word's start / end. Matching lines are printed as they were
(CRLF added to a last line without one). Exit code: 0 when a line was printed, 1 when
none, 2 for a bad command line (``FINDSTR: Bad command line``) or a file it cannot open
(``FINDSTR: Cannot open FILE``).
"""
from __future__ import annotations

import re
from typing import Any

from runner.connections.base import CommandResult
from runner.lab.commands import program
from runner.lab.logon import NoNetworkCredentials
from runner.lab.store import InvalidPath

BAD = "FINDSTR: Bad command line\r\n"
_FLAGS = set("belrixvn")


def regex(pattern: str) -> str:
    """A findstr regular expression as a Python one (the metacharacters findstr knows)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(r"\b" if nxt in "<>" else re.escape(nxt))
            i += 2
            continue
        if c == "^" and i == 0:
            out.append("^")
        elif c == "$" and i == len(pattern) - 1:
            out.append("$")
        elif c == ".":
            out.append(".")
        elif c == "*" and out:
            out.append("*")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1:i + 2] == "^" else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                neg = body.startswith("^")
                body = body[1:] if neg else body
                out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\").replace("]", "\\]") + "]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


def _lines(text: str) -> list[str]:
    """The lines of ``text`` with their ends, as findstr reads them: a line ends at LF only
    (Python's ``splitlines`` would also cut at U+2028, a form feed or a lone CR)."""
    return _LINE.findall(text)


@program("findstr")
def findstr(ctx: Any, argv: list[str], raw: str) -> CommandResult:
    """findstr over stdin or the named files."""
    flags: set[str] = set()
    strings: list[str] = []
    rest: list[str] = []
    for a in argv[1:]:
        if a[:1] == "/" and a[1:3].lower() == "c:":
            strings.append(a[3:])
        elif a[:1] == "/" and len(a) > 1 and not rest:
            letters = a[1:].lower()
            if not set(letters) <= _FLAGS:
                return CommandResult(2, "", BAD)
            flags |= set(letters)
        else:
            rest.append(a)
    if not strings:
        if not rest:
            return CommandResult(2, "", BAD)
        strings = [s for s in rest.pop(0).split(" ") if s]
        as_regex = "l" not in flags
    else:
        as_regex = "r" in flags
    pats = []
    for s in strings:
        body = regex(s) if as_regex else re.escape(s)
        if "x" in flags or ("b" in flags and "e" in flags):
            body = f"^(?:{body})$"
        elif "b" in flags:
            body = f"^(?:{body})"
        elif "e" in flags:
            body = f"(?:{body})$"
        pats.append(re.compile(body, re.IGNORECASE if "i" in flags else 0))
    sources: list[tuple[str | None, str]] = []
    if rest:
        for f in rest:
            try:
                sources.append((f, ctx.read_file(f).decode("utf-8", errors="replace")))
            except (OSError, InvalidPath, NoNetworkCredentials):
                return CommandResult(2, "", f"FINDSTR: Cannot open {f}\r\n")
    else:
        sources.append((None, ctx.stdin))
    out: list[str] = []
    for name, text in sources:
        for n, line in enumerate(_lines(text), 1):
            body = line.rstrip("\r\n")
            hit = any(p.search(body) for p in pats)
            if hit == ("v" in flags):
                continue
            prefix = (f"{name}:" if name is not None and len(rest) > 1 else "") + (f"{n}:" if "n" in flags else "")
            out.append(prefix + (line if line.endswith("\n") else line + "\r\n"))
    return CommandResult(0 if out else 1, "".join(out), "")
