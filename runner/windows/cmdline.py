"""cmd.exe command lines built from structured pieces, quoted in one place.

A ``Command`` is a sequence of *bits*, pyinfra-style (``api/command.py``):

- ``str``: trusted literal text written by our code (program names,
  switches such as ``/s`` or ``/qn``); never host or user data;
- ``Quoted(value)``: data; rendered so that cmd.exe passes it through
  untouched AND the program's ``CommandLineToArgvW`` / MS C runtime parser
  yields exactly ``value`` as one argument;
- ``Secret(value)``: like ``Quoted`` for execution, ``********`` in
  ``display()`` (and in ``repr``/``str``) so it never reaches logs.

Quoting rules (sources below) and the policy that follows from them:

1. cmd.exe (phase 2 of its parser) treats ``& | < > ^ ( )`` and delimiters
   as literal text between double quotes, so a data value is wrapped in
   ``"..."`` whenever it is not a plain word.
2. cmd.exe expands ``%NAME%`` (phase 1) *before* it looks at quotes, and a
   ``%`` cannot be escaped on a command line (``^`` is literal inside quotes;
   ``%%`` only works in batch files). Two ``%`` anywhere on the line, even
   from different values, can pair up into a variable reference. Policy: a
   value containing ``%`` is refused with ``UnsafeValueError``; callers pass
   such values through a file (``Connection.put``) instead. ``quotable()``
   tells them in advance.
3. A ``"`` inside a value cannot be quoted for both parsers at once:
   ``CommandLineToArgvW`` wants ``\\"`` but cmd.exe does not know backslash
   escapes, so the ``\\"`` flips cmd's quote state and the metacharacters
   after it become live. Policy: refused, same as ``%``.
4. CR, LF and Ctrl-Z end a cmd.exe line (phase 0); NUL ends a C string:
   refused.
5. ``CommandLineToArgvW``: backslashes are literal unless they precede a
   ``"``; 2n backslashes before a ``"`` become n. So the trailing
   backslashes of a quoted value (``C:\\Temp\\``) are doubled before the
   closing quote.
6. ``!`` is data: delayed expansion is off unless cmd is started with
   ``/V:ON`` (or the DelayedExpansion registry default is set, which we
   assume is not).
7. The whole rendered line may not exceed 8,191 characters (KB 830473).

Sources: "How does the Windows Command Interpreter (CMD.EXE) parse scripts?"
(stackoverflow.com/questions/4094699, phases 0-2); Microsoft, "Parsing C++
command-line arguments" and the CommandLineToArgvW reference
(learn.microsoft.com); Microsoft KB 830473 "Command prompt (Cmd.exe)
command-line string limitation" (8191 characters, Windows XP and later).

Example::

    >>> cmd = Command("reg", "query", Quoted(r"HKU\\S-1-5-21-1\\Software"), "/s")
    >>> cmd.render()
    'reg query "HKU\\\\S-1-5-21-1\\\\Software" /s'
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from runner.errors import PermanentFault

#: KB 830473: the longest string cmd.exe accepts at its prompt / with /c.
MAX_COMMAND_LINE = 8191
MASK = "********"

_REFUSED = {
    '"': 'a double quote (cannot be quoted for cmd.exe and CommandLineToArgvW at once)',
    "%": "a percent sign (cmd.exe expands %NAME% even inside quotes)",
    "\r": "a carriage return (ends the cmd.exe line)",
    "\n": "a line feed (ends the cmd.exe line)",
    "\x1a": "a Ctrl-Z (read as a line end by cmd.exe)",
    "\x00": "a NUL character",
}
# A bare word: nothing cmd.exe or CommandLineToArgvW would treat specially.
_PLAIN = re.compile(r"[A-Za-z0-9_\-.:\\/@{}+#$~\[\]]+\Z")
_CHAIN_OPS = ("&", "&&", "||")


class UnsafeValueError(PermanentFault):
    """A data value that cannot be placed safely on a cmd.exe command line.

    Callers should pass such a value through a file instead.
    """


class CommandLineTooLong(PermanentFault):
    """A rendered command line longer than cmd.exe's 8,191-character limit."""


@dataclass(frozen=True)
class Quoted:
    """A data value, quoted when rendered (see the module docstring)."""

    value: str

    def render(self) -> str:
        return quote(self.value)

    def display(self) -> str:
        return self.render()


@dataclass(frozen=True)
class Secret:
    """A secret value: quoted for execution, masked for display."""

    value: str

    def render(self) -> str:
        return quote(self.value)

    def display(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = display


Bit = Union[str, Quoted, Secret, "Command"]


def unsafe_reason(value: str) -> str | None:
    """Why ``value`` cannot go on a command line, or None when it can."""
    for ch, why in _REFUSED.items():
        if ch in value:
            return why
    return None


def quotable(value: str) -> bool:
    """True when ``value`` can be passed as a ``Quoted`` argument."""
    return unsafe_reason(value) is None


def quote(value: str) -> str:
    """Render one argument for cmd.exe and CommandLineToArgvW.

    Raises UnsafeValueError for values containing ``"``, ``%``, line ends
    or NUL (module docstring, rules 2-4).
    """
    why = unsafe_reason(value)
    if why is not None:
        raise UnsafeValueError(f"value {_preview(value)} contains {why}; pass it through a file")
    if _PLAIN.match(value):
        return value
    trailing = len(value) - len(value.rstrip("\\"))
    return '"' + value + "\\" * trailing + '"'


def _preview(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


#: What a literal bit may not hold: it would end the command line (or the file it is in).
_LINE_END = re.compile("[\r\n\x1a\x00]")


class Command:
    """A command line made of bits; ``render()`` for execution, ``display()`` for humans.

    ``str(cmd)`` is the display form, so logging a command never leaks a Secret.
    """

    __slots__ = ("bits", "_line")

    def __init__(self, *bits: Bit) -> None:
        for bit in bits:
            if isinstance(bit, str):
                if _LINE_END.search(bit):
                    raise UnsafeValueError(f"literal {_preview(bit)} contains a line end")
            elif not isinstance(bit, (Quoted, Secret, Command)):
                raise TypeError(f"not a command bit: {bit!r}")
        self.bits: tuple[Bit, ...] = bits
        #: the rendered line, made once: a command is immutable, and a chunk's lines are
        #: measured and joined into longer lines again and again (``batch_groups``)
        self._line: str | None = None

    @classmethod
    def _of_checked(cls, bits: tuple[Bit, ...]) -> "Command":
        """A command of bits the caller has already checked (a literal holds no line end,
        anything else is a Quoted, Secret or Command): the section markers, built by the
        hundred thousand in a large run, and chains of commands already made."""
        cmd = cls.__new__(cls)
        cmd.bits = bits
        cmd._line = None
        return cmd

    def _join(self, attr: str) -> str:
        out = []
        for bit in self.bits:
            if isinstance(bit, str):
                out.append(bit)
            else:
                out.append(getattr(bit, attr)())
        return " ".join(out)

    def render(self, *, limit: int = MAX_COMMAND_LINE) -> str:
        """The real command line; raises CommandLineTooLong beyond ``limit``."""
        line = self._line
        if line is None:
            line = self._line = self._join("render")
        if len(line) > limit:
            raise CommandLineTooLong(
                f"command line of {len(line)} characters exceeds cmd.exe's limit of {limit}: "
                f"{self.display()[:80]}...")
        return line

    def display(self) -> str:
        """The command line with secrets masked (for output, events, logs)."""
        return self._join("display")

    def __len__(self) -> int:
        line = self._line
        if line is None:
            line = self._line = self._join("render")
        return len(line)

    def __str__(self) -> str:
        return self.display()

    def __repr__(self) -> str:
        return f"Command({self.display()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Command) and other.bits == self.bits

    def __hash__(self) -> int:
        return hash(self.bits)


def chain(commands: Iterable[Command | str], op: str = "&") -> Command:
    """Join commands with a cmd.exe operator: ``&`` (always run the next),
    ``&&`` (only on success), ``||`` (only on failure)."""
    if op not in _CHAIN_OPS:
        raise ValueError(f"unknown chain operator {op!r}")
    bits: list[Bit] = []
    for cmd in commands:
        if bits:
            bits.append(op)
        bits.append(cmd if isinstance(cmd, Command) else Command(cmd))
    if not bits:
        raise ValueError("chain() needs at least one command")
    return Command._of_checked(tuple(bits))  # commands and a chain operator: nothing to check


def batch(commands: Sequence[Command], op: str = "&", *,
          limit: int = MAX_COMMAND_LINE) -> list[Command]:
    """Pack ``commands`` in order into as few chained lines as fit ``limit``.

    One line is one round trip; a single command longer than the limit
    raises CommandLineTooLong.
    """
    return batch_groups([[c] for c in commands], op, limit=limit)


def batch_groups(groups: Sequence[Sequence[Command]], op: str = "&", *,
                 limit: int = MAX_COMMAND_LINE) -> list[Command]:
    """Like ``batch``, but the commands of one group always share a line: a hive's
    ``reg load`` is never cut from its ``reg unload`` by a line break. A group longer
    than ``limit`` on its own raises CommandLineTooLong."""
    lines: list[Command] = []
    current: list[Command] = []
    size = 0
    sep = len(op) + 2
    for group in groups:
        if not group:
            continue
        n = sum(len(c.render(limit=limit)) for c in group) + sep * (len(group) - 1)
        if n > limit:
            chain(group, op).render(limit=limit)  # raises CommandLineTooLong naming the group
        if current and size + sep + n > limit:
            lines.append(chain(current, op))
            current, size = [], 0
        size = n if not current else size + sep + n
        current.extend(group)
    if current:
        lines.append(chain(current, op))
    return lines


# --- sectioned output: several commands, one round trip, results told apart ----

_MARK = "@@runner"


@dataclass(frozen=True)
class Section:
    """The outcome of one command of a sectioned batch: ok or not, and its stdout."""

    ok: bool
    stdout: str


def sectioned(commands: Sequence[Command], nonce: str | None = None, *,
              start: int = 0) -> tuple[list[Command], str]:
    """Wrap each command so its stdout and success can be split apart afterwards.

    Each becomes ``echo @@runner<nonce> <i> & CMD && echo @@runner<nonce> <i> ok
    || echo @@runner<nonce> <i> fail``; cmd.exe binds ``&&``/``||`` tighter
    than ``&``. The random nonce makes the markers unforgeable by host data.
    Chain the results with ``batch(..., op="&")`` and parse the combined
    stdout with ``split_sections``. ``start`` numbers the sections from there
    (to follow other sections of the same nonce on one line). Returns
    (wrapped commands, nonce).
    """
    nonce = nonce or secrets.token_hex(4)
    tag = f"{_MARK}{nonce}"
    Command(tag)  # the one literal here a caller gives: refused once if it holds a line end
    wrapped = []
    for i, cmd in enumerate(commands, start):
        if not isinstance(cmd, Command):
            cmd = Command(cmd)  # a literal (checked) or a bit, as a bit of the old nested form
        n = str(i)
        # flat bits render as the nested echo commands did (bits are joined by spaces)
        wrapped.append(Command._of_checked(("echo", tag, n, "&", cmd, "&&", "echo", tag, n, "ok",
                                            "||", "echo", tag, n, "fail")))
    return wrapped, nonce


def gated_sections(commands: Sequence[Command], nonce: str | None = None, *,
                   start: int = 0) -> tuple[Command, str]:
    """Like ``sectioned``, but as one command in which each command runs only
    when the one before it succeeded (ordered changes: stop, then reconfigure...).

    ``echo T 0 & C0 && ( echo T 0 ok & echo T 1 & C1 && ( ... ) || echo T 1 fail )
    || echo T 0 fail``: the parenthesised group after ``&&`` always ends in an
    ``echo`` (success), so exactly the failing command gets ``fail`` and the
    ones after it never run (``split_sections`` gives None for them). The
    whole command succeeds, so it can be followed with ``&`` by more sections.
    """
    if not commands:
        raise ValueError("gated_sections() needs at least one command")
    nonce = nonce or secrets.token_hex(4)
    tag = f"{_MARK}{nonce}"
    inner: Command | None = None
    for i in reversed(range(start, start + len(commands))):
        ok: Command = Command("echo", tag, str(i), "ok")
        if inner is not None:
            ok = Command("(", ok, "&", inner, ")")
        inner = Command(Command("echo", tag, str(i)), "&", commands[i - start],
                        "&&", ok, "||", Command("echo", tag, str(i), "fail"))
    assert inner is not None
    return inner, nonce


def branch_sections(test: Command, then: Sequence[Command], otherwise: Sequence[Command],
                    nonce: str | None = None, *, start: int = 0) -> tuple[Command, str]:
    """Sections of which cmd.exe runs one branch: ``then`` when ``test`` succeeds, else
    ``otherwise`` (a hive read in place when it is mounted, else loaded and unloaded).

    ``echo T s & TEST && (echo T s ok & THEN...) || (echo T s fail & OTHERWISE...)``:
    section ``start`` is the test, then ``then``'s sections, then ``otherwise``'s;
    those of the branch not taken never run (None from ``split_sections``). The
    ``then`` group ends in an ``echo`` (success), so ``||`` never runs both branches.
    """
    nonce = nonce or secrets.token_hex(4)
    tag = f"{_MARK}{nonce}"
    first, _ = sectioned(then, nonce, start=start + 1)
    second, _ = sectioned(otherwise, nonce, start=start + 1 + len(then))
    ok_bits: list[Bit] = [Command("echo", tag, str(start), "ok")]
    for c in first:
        ok_bits += ["&", c]
    fail_bits: list[Bit] = [Command("echo", tag, str(start), "fail")]
    for c in second:
        fail_bits += ["&", c]
    return Command(Command("echo", tag, str(start)), "&", test, "&&", Command("(", *ok_bits, ")"),
                   "||", Command("(", *fail_bits, ")")), nonce


#: What follows a section marker's tag: its number, and ``ok`` or ``fail`` at its end.
_MARKER_TAIL = re.compile(r" (\d+)(?: (ok|fail))?[ \t]*(?:\r?\n|\Z)")


def split_sections(stdout: str, count: int, nonce: str) -> list[Section | None]:
    """Split the stdout of sectioned commands; None for a command that never ran.

    Markers are found anywhere in a line, so output without a final newline
    does not hide the marker echoed after it.
    """
    tag = f"{_MARK}{nonce}"
    out: list[Section | None] = [None] * count
    current: int | None = None
    start = 0
    at = stdout.find(tag)
    while at != -1:   # as re.finditer(tag + _MARKER_TAIL) would, without a pattern per nonce
        m = _MARKER_TAIL.match(stdout, at + len(tag))
        if m is None:
            at = stdout.find(tag, at + 1)
            continue
        idx = int(m.group(1))
        if idx < count:
            if m.group(2) is None:
                current, start = idx, m.end()
            elif idx == current:
                out[idx] = Section(m.group(2) == "ok", stdout[start:at])
                current = None
        at = stdout.find(tag, m.end())
    return out
