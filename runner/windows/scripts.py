"""Batch scripts and files delivered with the command line that uses them.

A host's cmd.exe takes lines of at most 8,191 characters (2,047 on Windows 2000),
so work that does not fit one line goes into a batch file run once with
``cmd /c``. The file travels with the line that runs it where the connection
can feed a line's standard input (``run_input``, runner.connections.base): the
line begins with ``findstr /r /c:"^" > FILE``, which copies every line of its
input to the file (findstr is on every Windows from 2000 on; ``^`` matches
every line, the empty ones too). One round trip, one SSH channel, where a
put and a run were two. A connection without ``run_input`` gets the put.

Every delivered file ends with a mark unique to this delivery that the line
checks before using the file (a script's ``rem runner-end <hex>``, an LDIF
file's ``# runner-end <hex>``): an input or a put cut short in transfer is
never run, nor imported in part.
"""
from __future__ import annotations

import codecs
import hashlib
import re
import secrets
from typing import Any, Callable, Sequence

from runner.connections.base import CommandResult, Connection
from runner.windows.cmdline import Bit, Command, CommandLineTooLong, Quoted, chain

#: The last line of a delivered script (after ``rem``), checked by findstr before cmd runs it.
SCRIPT_END_MARK = "runner-end "

#: The variables a client line may reference as ``%NAME%`` and still run the same from a batch
#: file: always defined in a logon session, so a batch file expands them as the line does.
BATCH_SAFE_VARIABLES = frozenset({"systemdrive", "systemroot", "programfiles", "windir"})
_PERCENT = re.compile(r"%([^%]*)%|%")


def owner_tag(owner: str) -> str:
    """The 8 hex digits naming an owner's scratch files (fixed length: one owner's
    wildcard never matches another's files, whatever characters the names hold)."""
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:8]


def feeds(conn: Connection) -> bool:
    """Whether ``conn`` can hand a command line its standard input (``run_input``)."""
    return callable(getattr(conn, "run_input", None))


def feed_command(path: Bit) -> Command:
    """``findstr /r /c:"^" > PATH``: the line's standard input, every line as sent, copied to
    the file PATH (a Windows path, or a bit that renders one). A file so delivered must end
    with a line the line checks for (its end mark), as a put file must."""
    return Command("findstr", "/r", '/c:"^"', ">", Quoted(path) if isinstance(path, str) else path)


def run_delivering(conn: Connection, line: Command, *, data: bytes, path: str, limit: int,
                   run: Callable[[str, bytes | None], CommandResult] | None = None) -> CommandResult:
    """Deliver ``data`` to the file ``path`` and run ``line``, which uses it: one round trip
    when the connection can feed a line's standard input and the line with
    :func:`feed_command` in front still fits ``limit``; else a put and then the line.
    ``run(command_text, data_or_None)``: how the line is sent (default: the connection's)."""
    send = run or (lambda text, fed: conn.run_input(text, fed) if fed is not None  # type: ignore[attr-defined]
                   else conn.run(text))
    if feeds(conn):
        try:
            text = chain([feed_command(path), line]).render(limit=limit)
        except CommandLineTooLong:
            text = None
        if text is not None:
            return send(text, data)
    text = line.render(limit=limit)  # before the put: a line too long leaves no file behind
    conn.put(data, path)
    return send(text, None)


#: The OEM code page of a US-English Windows console (host variable ``ssh_codepage`` names another).
DEFAULT_CODEPAGE = "cp437"


def codepage_name(value: Any) -> str | None:
    """The Python codec of a console code page as an inventory names it (``cp850``, ``850``),
    or None when it names none (an inventory error for its caller to report)."""
    name = str(value).strip()
    if name.isdigit():
        name = f"cp{name}"
    try:
        codecs.lookup(name)
    except LookupError:
        return None
    return name


def console_codepage(conn: Any) -> str:
    """The console code page of the host ``conn`` reaches (its ``codepage``: the host's own
    variable ``ssh_codepage``, not a task's), in which its cmd.exe reads a batch file; cp437
    for a connection that does not say."""
    value = getattr(conn, "codepage", None)
    return (codepage_name(value) if value else None) or DEFAULT_CODEPAGE


def encodable(line: str, codepage: str) -> bool:
    """Whether ``line`` can go into a batch file read in ``codepage`` and reach its program
    unchanged: every character is in the code page (ASCII always is)."""
    if line.isascii():
        return True
    try:
        line.encode(codepage)
    except UnicodeEncodeError:
        return False
    return True


def batch_file(lines: Sequence[str], *, double_percent: bool, codepage: str = DEFAULT_CODEPAGE) -> tuple[bytes, str]:
    """A batch file running ``lines`` (``@echo off`` first, CRLF line ends) and the end mark
    that is its last line, encoded in ``codepage``, the console's OEM code page: cmd.exe reads a
    batch file in it, so a line's ``é`` reaches its program as ``é`` (every line must be
    :func:`encodable`). ``double_percent``: every ``%`` becomes ``%%``, a literal percent in
    a batch file (lines whose ``%`` are all data); else the lines go as they are (see
    :func:`batch_safe`)."""
    end = f"rem {SCRIPT_END_MARK}{secrets.token_hex(8)}"
    body = ["@echo off", *(ln.replace("%", "%%") if double_percent else ln for ln in lines), end]
    return ("\r\n".join(body) + "\r\n").encode(codepage), end


def script_line(path: Bit, end: str) -> Command:
    """The line that runs a delivered script: only when its last line is ``end`` (findstr),
    ``cmd /c`` it, then delete it whatever happened."""
    p = Quoted(path) if isinstance(path, str) else path
    gate = Command("findstr", "/b", "/l", f'/c:"{end}"', p, ">nul")
    return chain([Command(gate, "&&", "cmd", "/c", p), Command("del", "/q", p)])


#: Bytes a line of fed input stays under: findstr reading a pipe is reported to skip (with an
#: error, not a failure) a line of 8 KiB or more, which the end mark would not notice.
FED_LINE_BYTES = 8000


def batch_safe(line: str) -> bool:
    """Whether ``line`` runs the same from a batch file, as it is: each ``%`` in it is part of
    a ``%NAME%`` of :data:`BATCH_SAFE_VARIABLES` (a batch file drops a lone ``%`` and expands
    an undefined ``%NAME%`` to nothing, where a command line keeps both as typed); it is ASCII
    (cmd.exe reads a batch file in the OEM code page, a command line arrives as sent); and it
    is short enough for findstr to copy (:data:`FED_LINE_BYTES`)."""
    if not line.isascii() or len(line) >= FED_LINE_BYTES:
        return False
    return all(m.group(1) is not None and m.group(1).lower() in BATCH_SAFE_VARIABLES
               for m in _PERCENT.finditer(line))


def system_temp_file(name: str) -> Command:
    """``"%SystemRoot%\\Temp\\NAME"`` as it goes on the line (quoted, not escaped: cmd.exe
    expands the variable), for a line that names a scratch file before it knows where
    Windows is; a path bit for :func:`feed_command` and :func:`script_line`. ``NAME`` may be
    a wildcard (``*``) for ``del``."""
    if not re.fullmatch(r"[A-Za-z0-9._*-]+", name):
        raise ValueError(f"not a scratch file name: {name!r}")
    return Command(f'"%SystemRoot%\\Temp\\{name}"')


def scratch_file(name: str, folder: str | None = None) -> Bit:
    """A scratch file's path bit: in ``folder`` (quoted) when the inventory names one (host var
    ``remote_temp``), else :func:`system_temp_file`."""
    return Quoted(f"{folder.rstrip(chr(92))}\\{name}") if folder else system_temp_file(name)


def run_script(conn: Any, lines: Sequence[str], *, tag: str, limit: int, folder: str | None = None,
               double_percent: bool = False, also: Sequence[str] = ()) -> CommandResult:
    """Run ``lines`` as one batch file in ``folder`` (default the host's ``%SystemRoot%\\Temp``),
    fed with the line that runs it (the connection must feed: :func:`feeds`). The file is
    named after ``tag`` (``runner-<tag>-<hex>.cmd``: 8 hex digits naming the task's target,
    whose tasks run one at a time), and the line first deletes the ``runner-<tag>-*.cmd`` an
    earlier task of the same target left when it was cut off mid-script: never another
    target's, which may be running, unless its tag is in ``also`` (targets the caller knows
    run nothing on the host now)."""
    data, end = batch_file(lines, double_percent=double_percent)
    path = scratch_file(f"runner-{tag}-{secrets.token_hex(4)}.cmd", folder)
    stale = [stale_scripts(t, folder) for t in dict.fromkeys([tag, *also])]
    text = chain([*stale, feed_command(path), script_line(path, end)]).render(limit=limit)
    return conn.run_input(text, data)


def stale_scripts(tag: str, folder: str | None = None) -> Command:
    """``del /q "<folder>\\runner-<tag>-*.cmd" 2>nul``: the scripts of ``run_script`` that a task
    of the same target left when it was cut off mid-script."""
    if not re.fullmatch(r"[0-9a-f]{8}", tag):
        raise ValueError(f"not a scratch file tag: {tag!r}")
    return Command("del", "/q", scratch_file(f"runner-{tag}-*.cmd", folder), "2>nul")
