"""The lab's cmd.exe: runs one command line on a lab host, as ``cmd /c`` would.

Phases, after "How does the Windows Command Interpreter (CMD.EXE) parse
scripts?" (stackoverflow.com/questions/4094699) and Microsoft's ``cmd``
reference (learn.microsoft.com/windows-server/administration/windows-commands/cmd):

0. Length: more than the host's limit -> ``The input line is too long.``,
   exit 1 (KB 830473: "the maximum length of the string that you can use at
   the command prompt is 8191 characters" on Windows XP and later, 2047 on
   Windows 2000; it applies again after environment variables are expanded;
   the message is the one cmd.exe prints, as commonly reported).
1. ``%NAME%`` expansion over the whole line, quotes or not; a name that is
   not defined is left as typed (command-line behaviour, unlike batch files).
2. Tokens: ``"`` toggles quoting (everything inside is literal); outside
   quotes ``^`` escapes the next character, and ``&``, ``&&``, ``||``, ``|``,
   ``(``/``)`` and the redirections ``>``, ``>>``, ``<``, ``2>``, ``2>&1``,
   ``1>``, ``> nul`` are operators.
3. The program's arguments are split as CommandLineToArgvW / the MS C
   runtime does: whitespace separates, ``"`` groups, ``2n`` backslashes before
   a quote give ``n`` and toggle, ``2n+1`` give ``n`` and a literal quote
   (learn.microsoft.com "Parsing C++ command-line arguments").

Unknown programs print ``'x' is not recognized as an internal or external
command,`` / ``operable program or batch file.`` on stderr and exit 9009;
so do programs the host's Windows version lacks (``wmic`` on Windows 2000,
runner.lab.winver).
Output uses CRLF. The exit code of the line is ERRORLEVEL at its end, so
``echo`` (which does not set ERRORLEVEL) keeps the previous command's code.

``main()`` is the served lab's SSH ForceCommand (``python -m runner.lab.shell
--dir DIR [--host NAME]``): it writes stdout/stderr as UTF-8 bytes.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from runner.connections.base import CommandResult
from runner.lab import commands as _commands_pkg
from runner.lab.commands import PROGRAMS
from runner.lab.faults import Faults
from runner.lab.logon import ACCESS_DENIED, NoNetworkCredentials
from runner.lab.store import InvalidPath, Lab, LabHost, batch_scope

#: cmd.exe's limit from Windows XP on; each host has its own (LabHost.windows.line_limit).
MAX_LINE = 8191
TOO_LONG = "The input line is too long.\r\n"
NOT_RECOGNIZED = ("'{name}' is not recognized as an internal or external command,\r\n"
                  "operable program or batch file.\r\n")
SYNTAX_ERROR = "The syntax of the command is incorrect.\r\n"


# -- context given to programs ------------------------------------------------

class SessionInput:
    """A session's standard input (what the client sent on the channel), read by the first
    program of the line that reads stdin, as on a real host: that program gets all of it, and
    later readers get nothing. Read lazily, so a line whose programs never read stdin never
    waits on a client that keeps its end of the channel open."""

    def __init__(self, source: "str | Callable[[], str]") -> None:
        self._source = source
        self._taken = False

    def read(self) -> str:
        if self._taken:
            return ""
        self._taken = True
        return self._source if isinstance(self._source, str) else self._source()


#: What a program's stdin is: text (a pipe from the program before it, a ``<`` file) or the session's.
Stdin = Union[str, SessionInput]


@dataclass
class ShellContext:
    """What an emulated program sees: the host, its environment, stdin, and the journal hook."""

    lab: Lab
    host: LabHost
    env: dict[str, str]
    cwd: str
    faults: Faults
    stdin_source: Stdin = ""
    command: str = ""
    program: str = ""
    _mutated: bool = False

    @property
    def stdin(self) -> str:
        """The program's standard input (the session's, if it is the first to read it)."""
        s = self.stdin_source
        return s if isinstance(s, str) else s.read()

    def mutated(self) -> None:
        """Mark the running command as mutating: the shell journals it with its exit code."""
        self._mutated = True

    def fault(self, kind: str) -> bool:
        """Draw the seeded fault ``kind`` (``msiexec_1618``, ``lcs_busy``, ``hive_locked``)."""
        return self.faults.fires(self.host, kind)

    def resolve(self, path: str):  # -> pathlib.Path
        return self.host.fs.resolve(path, self.cwd)

    def full_path(self, path: str) -> str:
        """An absolute Windows path for ``path`` relative to the current directory."""
        p = path.replace("/", "\\")
        if p.startswith("\\\\") or (len(p) > 2 and p[1] == ":" and p[2] == "\\"):
            return p
        if p.startswith("\\"):
            return self.cwd[:2] + p
        return self.cwd.rstrip("\\") + "\\" + p

    def read_file(self, path: str) -> bytes:
        return self.host.fs.read(self.full_path(path))

    def write_file(self, path: str, data: bytes, *, append: bool = False) -> None:
        self.host.fs.write(self.full_path(path), data, append=append, make_dirs=False)

    def getenv(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.env.items():
            if k.lower() == low:
                return v
        return None


# -- phase 1: %VAR% -------------------------------------------------------------

def with_dynamic(env: dict[str, str], errorlevel: int) -> dict[str, str]:
    """``env`` plus cmd.exe's dynamic ``ERRORLEVEL`` (the current code), unless a variable of
    that name is set, which then wins (as in cmd.exe)."""
    if any(k.lower() == "errorlevel" for k in env):
        return env
    return {**env, "ERRORLEVEL": str(errorlevel)}


def _expand_percents(line: str, at_percent: Callable[[str, int], tuple[str, int]]) -> str:
    """``line`` with each ``%`` at which ``at_percent(line, i)`` is called replaced by the text
    it returns; it also returns where to go on (-1: drop the rest). The text between is copied
    in runs (a chunk's line of 8,000 characters was walked a character at a time)."""
    i = line.find("%")
    if i < 0:
        return line
    out = [line[:i]]
    while True:  # line[i] is a "%"
        piece, i = at_percent(line, i)
        out.append(piece)
        if i < 0:
            break
        k = line.find("%", i)
        if k < 0:
            out.append(line[i:])
            break
        out.append(line[i:k])
        i = k
    return "".join(out)


def expand(line: str, env: dict[str, str]) -> str:
    """Expand ``%NAME%`` from ``env`` (case-insensitive); undefined names stay as typed."""
    low = {k.lower(): v for k, v in env.items()}

    def at_percent(line: str, i: int) -> tuple[str, int]:
        j = line.find("%", i + 1)
        if j < 0:
            return line[i:], -1
        name = line[i + 1:j].lower()
        if name and name in low:
            return low[name], j + 1
        return "%", i + 1  # not a variable: the first % is literal, the second may open one
    return _expand_percents(line, at_percent)


# -- phase 2: parse into commands ------------------------------------------------

@dataclass
class Redirect:
    fd: int            # 0 stdin, 1 stdout, 2 stderr
    mode: str          # ">", ">>", "<", "dup"
    target: str        # file, or "1"/"2" for dup


@dataclass
class Simple:
    text: str                              # command text, carets removed, quotes kept
    redirects: list[Redirect] = field(default_factory=list)


@dataclass
class Group:
    body: "Seq"
    redirects: list[Redirect] = field(default_factory=list)


Node = Union[Simple, Group]


@dataclass
class Pipeline:
    parts: list[Node]


@dataclass
class Chain:
    first: Pipeline
    rest: list[tuple[str, Pipeline]]


@dataclass
class Seq:
    chains: list[Chain]


class CmdSyntaxError(Exception):
    """cmd.exe would print an ``... was unexpected at this time.`` message."""


#: Runs _simple_tail takes whole: outside quotes, no character with a meaning there (quotes,
#: the caret, &, |, parentheses, redirections); inside quotes, anything up to the closing one.
_PLAIN_RUN = re.compile(r'[^"^&|()<>]+')
_QUOTED_RUN = re.compile(r'[^"]+')


class _Parser:
    def __init__(self, line: str) -> None:
        self.s = line
        self.i = 0

    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def parse_seq(self, depth: int) -> Seq:
        chains = [self.parse_chain(depth)]
        while True:
            self.skip_ws()
            if self.peek() == "&" and self.peek(2) != "&&":
                self.i += 1
                self.skip_ws()
                if self.i >= len(self.s) or (depth and self.peek() == ")"):
                    break  # a trailing "&" is accepted by cmd
                chains.append(self.parse_chain(depth))
                continue
            return Seq(chains)
        return Seq(chains)

    def parse_chain(self, depth: int) -> Chain:
        first = self.parse_pipeline(depth)
        rest: list[tuple[str, Pipeline]] = []
        while True:
            self.skip_ws()
            op = self.peek(2)
            if op in ("&&", "||"):
                self.i += 2
                self.skip_ws()
                if self.i >= len(self.s):
                    raise CmdSyntaxError(op)
                rest.append((op, self.parse_pipeline(depth)))
                continue
            return Chain(first, rest)

    def parse_pipeline(self, depth: int) -> Pipeline:
        parts = [self.parse_node(depth)]
        while True:
            self.skip_ws()
            if self.peek() == "|" and self.peek(2) != "||":
                self.i += 1
                parts.append(self.parse_node(depth))
                continue
            return Pipeline(parts)

    def parse_node(self, depth: int) -> Node:
        self.skip_ws()
        if self.peek() == "(":
            self.i += 1
            body = self.parse_seq(depth + 1)
            self.skip_ws()
            if self.peek() != ")":
                raise CmdSyntaxError("(")
            self.i += 1
            g = Group(body)
            self._simple_tail(g.redirects, depth, allow_text=False)
            return g
        text: list[str] = []
        redirects: list[Redirect] = []
        self._simple_tail(redirects, depth, allow_text=True, text=text)
        t = "".join(text).lstrip(" \t")  # trailing blanks stay: "echo a & ..." prints "a "
        if not t.strip(" \t") and not redirects:
            nxt = self.peek() or "end of line"
            raise CmdSyntaxError(nxt)
        return Simple(t, redirects)

    def _read_target(self) -> str:
        self.skip_ws()
        out: list[str] = []
        quoted = False
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == '"':
                quoted = not quoted
                self.i += 1
                continue
            if not quoted and c in " \t&|<>()":
                break
            if not quoted and c == "^" and self.i + 1 < len(self.s):
                self.i += 1
                c = self.s[self.i]
            out.append(c)
            self.i += 1
        if not out:
            raise CmdSyntaxError("redirection")
        return "".join(out)

    def _simple_tail(self, redirects: list[Redirect], depth: int, *, allow_text: bool,
                     text: list[str] | None = None) -> None:
        quoted = False
        while self.i < len(self.s):
            if allow_text:
                # a run of characters cmd.exe gives no meaning to here, taken whole (a chunk's
                # lines are thousands of them; one at a time was the lab's top cost)
                m = (_QUOTED_RUN if quoted else _PLAIN_RUN).match(self.s, self.i)
                if m is not None:
                    assert text is not None
                    text.append(m.group())
                    self.i = m.end()
                    if self.i >= len(self.s):
                        break
            c = self.s[self.i]
            if quoted:
                if c == '"':
                    quoted = False
                assert text is not None
                text.append(c)
                self.i += 1
                continue
            if c == '"' and allow_text:
                quoted = True
                assert text is not None
                text.append(c)
                self.i += 1
                continue
            if c == "^":
                if self.i + 1 < len(self.s):
                    if allow_text:
                        assert text is not None
                        text.append(self.s[self.i + 1])
                    self.i += 2
                else:
                    self.i += 1  # a trailing caret is dropped
                continue
            if c in "&|":
                return
            if c == ")" and depth > 0:
                return
            if c in "<>":
                fd = 0 if c == "<" else 1
                # a single 1 or 2 right before > that starts a token is a handle number
                # (text holds runs of characters: look at its last two characters)
                tail = "".join(text[-2:]) if text else ""
                if c == ">" and tail and tail[-1] in "12" and (
                        (len(text) == 1 and len(text[0]) == 1) or tail[-2:-1] in (" ", "\t")):
                    last = text.pop()
                    if len(last) > 1:
                        text.append(last[:-1])
                    fd = int(last[-1])
                if c == "<":
                    self.i += 1
                    redirects.append(Redirect(0, "<", self._read_target()))
                    continue
                mode = ">"
                self.i += 1
                if self.peek() == ">":
                    mode = ">>"
                    self.i += 1
                if self.peek() == "&" and self.s[self.i + 1:self.i + 2] in ("1", "2"):
                    redirects.append(Redirect(fd, "dup", self.s[self.i + 1]))
                    self.i += 2
                    continue
                redirects.append(Redirect(fd, mode, self._read_target()))
                continue
            if not allow_text:
                if c in " \t":
                    self.i += 1
                    continue
                raise CmdSyntaxError(c)
            assert text is not None
            text.append(c)
            self.i += 1


def parse(line: str) -> Seq:
    """Parse an (already %-expanded) command line; CmdSyntaxError when cmd would refuse it."""
    p = _Parser(line)
    seq = p.parse_seq(0)
    p.skip_ws()
    if p.i < len(p.s):
        raise CmdSyntaxError(p.s[p.i])
    return seq


# -- phase 3: CommandLineToArgvW ------------------------------------------------

#: Runs of an argument split_args copies whole: no backslash, quote or (outside quotes) blank.
_ARG_RUN = re.compile(r'[^\\" \t]+')
_QUOTED_ARG_RUN = re.compile(r'[^\\"]+')


def split_args(text: str) -> list[str]:
    """Split a program's command line as the MS C runtime / CommandLineToArgvW does.

    ``argv[0]`` follows the special rule for the program name: a quoted name
    runs to the next quote, an unquoted one to the first whitespace; no
    backslash processing.
    """
    args: list[str] = []
    i, n = 0, len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n:
        if text[i] == '"':
            j = text.find('"', i + 1)
            j = n if j < 0 else j
            args.append(text[i + 1:j])
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in " \t":
                j += 1
            args.append(text[i:j])
            i = j
    plain, quoted_run = _ARG_RUN.match, _QUOTED_ARG_RUN.match
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return args
        cur: list[str] = []
        quoted = False
        while i < n:
            m = (quoted_run if quoted else plain)(text, i)
            if m is not None:
                cur.append(m.group())
                i = m.end()
                continue
            c = text[i]
            if c == "\\":
                j = i
                while j < n and text[j] == "\\":
                    j += 1
                count = j - i
                if j < n and text[j] == '"':
                    cur.append("\\" * (count // 2))
                    if count % 2:
                        cur.append('"')
                        i = j + 1
                    else:
                        i = j
                else:
                    cur.append("\\" * count)
                    i = j
                continue
            if c == '"':
                if quoted and i + 1 < n and text[i + 1] == '"':
                    cur.append('"')  # "" inside quotes: a literal quote (msvcrt 2008+)
                    i += 2
                    continue
                quoted = not quoted
                i += 1
                continue
            # a blank outside quotes ends the argument
            break
        args.append("".join(cur))


def program_token(text: str) -> tuple[str, str]:
    """(program as typed with quotes removed, the rest of the text after it)."""
    t = text.lstrip(" \t")
    if t.startswith('"'):
        j = t.find('"', 1)
        j = len(t) if j < 0 else j
        return t[1:j], t[j + 1:]
    j = 0
    while j < len(t) and t[j] not in " \t/\",;=" and not (j > 0 and t[j] in ".(" and t[:j].lower() == "echo"):
        j += 1
    if j == 0:
        j = 1
    return t[:j], t[j:]


def program_name(token: str) -> str:
    """The registry name of a program token: basename, lower case, without .exe/.com."""
    base = token.replace("/", "\\").rsplit("\\", 1)[-1].lower()
    for ext in (".exe", ".com"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


# -- execution --------------------------------------------------------------

_loaded = False


def load_programs() -> None:
    """Import every module of runner.lab.commands so they register their programs."""
    global _loaded
    if _loaded:
        return
    for mod in pkgutil.iter_modules(_commands_pkg.__path__):
        importlib.import_module(f"{_commands_pkg.__name__}.{mod.name}")
    _loaded = True


@dataclass
class _Out:
    rc: int
    stdout: str
    stderr: str
    sets_errorlevel: bool = True


class Shell:
    """One cmd.exe invocation on one host: environment, cwd and ERRORLEVEL for one line."""

    def __init__(self, lab: Lab, host: LabHost, faults: Faults | None = None) -> None:
        load_programs()
        self.lab = lab
        self.host = host
        self.env = host.environment()
        self.cwd = self.env.get("USERPROFILE", "C:\\")
        self.faults = faults or Faults(lab)
        self.errorlevel = 0
        self.syntax_error = False  # the last line run could not be parsed
        self.max_line = host.windows.line_limit
        self.missing = host.windows.missing_programs

    def run(self, line: str, *, in_batch: bool = False, stdin: Stdin = "") -> CommandResult:
        """Run one command line (``in_batch``: a line of a batch file); ``stdin``: what the
        line's programs read from standard input (a session's: :class:`SessionInput`)."""
        if len(line) > self.max_line:
            return CommandResult(1, "", TOO_LONG)
        line = line.split("\n", 1)[0].rstrip("\r")  # phase 0: a line ends at LF
        env = with_dynamic(self.env, self.errorlevel)
        expanded = expand_batch(line, env) if in_batch else expand(line, env)
        if len(expanded) > self.max_line:
            return CommandResult(1, "", TOO_LONG)
        if not expanded.strip():
            return CommandResult(0, "", "")
        try:
            seq = parse(expanded)
        except CmdSyntaxError as e:
            self.syntax_error = True
            return CommandResult(255, "", f"{e.args[0]} was unexpected at this time.\r\n")
        out = self._seq(seq, stdin)
        return CommandResult(self.errorlevel, out.stdout, out.stderr)

    def _seq(self, seq: Seq, stdin: Stdin) -> _Out:
        so, se = [], []
        last = _Out(0, "", "")
        for chain in seq.chains:
            last = self._chain(chain, stdin)
            so.append(last.stdout)
            se.append(last.stderr)
        return _Out(last.rc, "".join(so), "".join(se))

    def _chain(self, chain: Chain, stdin: Stdin) -> _Out:
        r = self._pipeline(chain.first, stdin)
        so, se = [r.stdout], [r.stderr]
        ok = r.rc == 0
        for op, pl in chain.rest:
            if (op == "&&" and ok) or (op == "||" and not ok):
                r = self._pipeline(pl, stdin)
                so.append(r.stdout)
                se.append(r.stderr)
                ok = r.rc == 0
        return _Out(r.rc, "".join(so), "".join(se))

    def _pipeline(self, pl: Pipeline, stdin: Stdin) -> _Out:
        data = stdin
        se: list[str] = []
        r = _Out(0, "", "")
        for node in pl.parts:
            r = self._node(node, data)
            se.append(r.stderr)
            data = r.stdout
        return _Out(r.rc, data, "".join(se))

    def _node(self, node: Node, stdin: Stdin) -> _Out:
        for red in node.redirects:
            if red.mode == "<":
                try:
                    stdin = self.host.fs.read(self._path(red.target)).decode("utf-8", errors="surrogateescape")
                except (OSError, InvalidPath):
                    self.errorlevel = 1
                    return _Out(1, "", "The system cannot find the file specified.\r\n")
        if isinstance(node, Group):
            r = self._seq(node.body, stdin)
        else:
            r = self._simple(node, stdin)
        if r.sets_errorlevel:
            self.errorlevel = r.rc
        return self._redirect(node.redirects, r)

    def _path(self, target: str) -> str:
        return ShellContext(self.lab, self.host, self.env, self.cwd, self.faults).full_path(target)

    def _redirect(self, redirects: list[Redirect], r: _Out) -> _Out:
        """Apply ``>``, ``>>``, ``2>``, ``n>&m`` and ``> nul`` in order, as cmd does."""
        outs = [red for red in redirects if red.mode != "<"]
        if not outs:
            return r
        dest: dict[int, tuple[str, str]] = {1: ("std", "1"), 2: ("std", "2")}
        for red in outs:
            if red.mode == "dup":
                dest[red.fd] = dest[int(red.target)]
            elif red.target.lower().rstrip(":") == "nul" or red.target.lower().endswith("\\nul"):
                dest[red.fd] = ("nul", "")
            else:
                try:
                    path = self._path(red.target)
                    if red.mode == ">":
                        self.host.fs.write(path, b"", make_dirs=False)  # cmd truncates first
                except (OSError, InvalidPath):
                    self.errorlevel = 1
                    return _Out(1, "", "The system cannot find the path specified.\r\n")
                dest[red.fd] = ("file", path)
        std = {"1": "", "2": ""}
        for fd, text in ((1, r.stdout), (2, r.stderr)):
            kind, where = dest.get(fd, ("std", str(fd)))
            if kind == "std":
                std[where] += text
            elif kind == "file" and text:
                # bytes that came in as they were (a fed input: surrogate-escaped) go out as they were
                self.host.fs.write(where, text.encode("utf-8", errors="surrogateescape"), append=True,
                                   make_dirs=False)
        return _Out(r.rc, std["1"], std["2"], r.sets_errorlevel)

    def _simple(self, node: Simple, stdin: Stdin) -> _Out:
        token, rest = program_token(node.text)
        name = program_name(token)
        from runner.lab.commands import builtins
        builtin = builtins.BUILTINS.get(name) if token == token.strip('"') and "\\" not in token else None
        ctx = ShellContext(self.lab, self.host, self.env, self.cwd, self.faults, stdin_source=stdin,
                           command=node.text, program=name)
        if builtin is not None:
            rc, so, se, sets = builtin(self, ctx, rest)
            return _Out(rc, so, se, sets)
        prog = PROGRAMS.get(name) if name not in self.missing else None
        if prog is None and name.endswith((".cmd", ".bat")):
            return self._batch_file(token)
        if prog is None:
            return _Out(9009, "", NOT_RECOGNIZED.format(name=token))
        argv = split_args(node.text)
        raw = rest[1:] if rest[:1] in (" ", "\t") else rest
        try:
            res = prog(ctx, argv, raw)
        except NoNetworkCredentials:  # a share in a key-based session (runner.lab.logon)
            return _Out(1, "", ACCESS_DENIED)
        if ctx._mutated:
            self.host.record(name, node.text, res.rc)
        return _Out(res.rc, res.stdout, res.stderr)


    def _batch_file(self, token: str) -> _Out:
        """Run a batch file line by line, as cmd.exe does (``@`` and ``echo off`` silence the
        echo of a line; ``rem`` and ``::`` lines are comments; ``%%`` is a literal ``%``). Its
        bytes are read in the host's OEM code page, as cmd.exe reads them: a script written
        in UTF-8 gives its commands other characters than it holds. As cmd.exe, it reads the
        file again before each line when the file changed, stops when the file is gone ("The
        batch file cannot be found.") and at a line it cannot parse."""
        try:
            real = self.host.fs.resolve(self._path(token))
            raw = real.read_bytes()
        except (OSError, InvalidPath):
            return _Out(9009, "", NOT_RECOGNIZED.format(name=token))
        so: list[str] = []
        se: list[str] = []
        with batch_scope():  # the stores may commit the script's commands together (lab/store.py)
            self._batch_lines(real, raw, so, se)
        return _Out(self.errorlevel, "".join(so), "".join(se))

    def _batch_lines(self, real: Path, raw: bytes, so: list[str], se: list[str]) -> None:
        echo = True
        offset = 0
        seen = _stamp(real)
        while True:
            now = _stamp(real)
            if now is None:
                se.append("The batch file cannot be found.\r\n")
                return
            if now != seen:  # changed since it was read: cmd.exe reads on from the same offset
                raw, seen = real.read_bytes(), now
            if offset >= len(raw):
                return
            end = raw.find(b"\n", offset)
            end = len(raw) if end < 0 else end + 1
            line = raw[offset:end].decode(self.host.codepage, errors="replace").rstrip("\r\n").strip()
            offset = end
            quiet = line.startswith("@")
            line = line.lstrip("@").strip()
            low = line.lower()
            if not line or low == "rem" or low.startswith(("rem ", "::")):
                continue
            if low == "echo off":
                echo = False
                continue
            if echo and not quiet:
                so.append(f"\r\n{self.cwd}>{line}\r\n")
            self.syntax_error = False
            r = self.run(line, in_batch=True)
            so.append(r.stdout)
            se.append(r.stderr)
            if self.syntax_error:  # cmd.exe leaves a batch file at a line it cannot parse
                return


def _stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a batch file, None when it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def expand_batch(line: str, env: dict[str, str]) -> str:
    """Phase 1 in a batch file: ``%%`` is a literal ``%``, ``%NAME%`` expands (empty when
    undefined) and a lone ``%`` is removed (with the rest of the line: no closing one)."""
    low = {k.lower(): v for k, v in env.items()}

    def at_percent(line: str, i: int) -> tuple[str, int]:
        if line.startswith("%%", i):
            return "%", i + 2
        j = line.find("%", i + 1)
        if j < 0:
            return "", -1
        return low.get(line[i + 1:j].lower(), ""), j + 1
    return _expand_percents(line, at_percent)


def execute(lab: Lab, host: str, command_line: str) -> CommandResult:
    """Run one cmd.exe command line on lab host ``host`` and return cmd's exit code and output."""
    return Shell(lab, lab.host(host)).run(command_line)


# -- the served lab's ForceCommand --------------------------------------------------

def pick_host(lab: Lab, ssh_connection: str | None) -> LabHost | None:
    """The lab host whose address is the local address of the SSH connection (3rd field)."""
    if not ssh_connection:
        return None
    fields = ssh_connection.split()
    if len(fields) < 3:
        return None
    return lab.host_by_address(fields[2])


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.lab.shell --dir DIR [--host NAME]``: run ``$SSH_ORIGINAL_COMMAND``.

    The host is ``--host`` or the one whose lab.json address is the local
    address in ``$SSH_CONNECTION``. stdout/stderr are written as UTF-8 bytes;
    the process exits with the command's exit code. Faults: ``down`` exits
    255 with no output and ``timeout`` hangs up (exit 255) before running;
    ``drop`` exits 255 after running (the change happened, the answer is lost);
    ``slow`` sleeps briefly first.
    """
    ap = argparse.ArgumentParser(prog="runner.lab.shell")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host")
    ap.add_argument("-c", "--command", help="command line (default: $SSH_ORIGINAL_COMMAND)")
    ns = ap.parse_args(argv)
    return run_session(ns.dir, ns.host, ns.command)


def run_session(lab_dir: str | Path, host_name: str | None = None, command: str | None = None) -> int:
    """Run one command line as a served session does (what :func:`main` does once its
    arguments are read; the served lab's sessions call it directly)."""
    try:
        lab = Lab(lab_dir)
        host = lab.host(host_name) if host_name else pick_host(lab, os.environ.get("SSH_CONNECTION"))
    except Exception as e:  # noqa: BLE001 - report, never a traceback
        sys.stderr.write(f"lab shell: {e}\n")
        return 255
    if host is None:
        sys.stderr.write("lab shell: no lab host has this connection's address\n")
        return 255
    if command is None:
        command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    faults = Faults(lab)
    if faults.before_command(host) is not None:
        return 255
    res = Shell(lab, host, faults).run(command, stdin=SessionInput(_read_stdin))
    if faults.after_command(host) is not None:
        return 255
    sys.stdout.buffer.write(res.stdout.encode("utf-8", errors="surrogateescape"))
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(res.stderr.encode("utf-8", errors="surrogateescape"))
    sys.stderr.buffer.flush()
    return res.rc


def _read_stdin() -> str:
    """The served session's stdin to its end (the client's EOF), as UTF-8 text; other bytes
    are kept (surrogate-escaped), so that a program copying its input to a file (findstr)
    writes the bytes that were sent."""
    return sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")


if __name__ == "__main__":
    sys.exit(main())
