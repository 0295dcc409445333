"""cmd.exe internal commands of the lab shell: echo, type, del, dir, mkdir/md, copy, if, call, ver, set, rem, cmd.

Each builtin is ``(shell, ctx, rest) -> (rc, stdout, stderr, sets_errorlevel)``
where ``rest`` is the text after the command name. Messages are those of
Windows XP's cmd.exe (Microsoft "Windows commands" reference pages for
echo, type, del, mkdir, copy, if, ver, set; message texts from cmd.exe):
``ECHO is on.``, ``The system cannot find the file specified.``,
``Could Not Find <path>``, ``File Not Found``, ``A subdirectory or file <x> already exists.``,
``        1 file(s) copied.``, ``Environment variable X not defined``; a share
the session cannot open (a key-based logon: runner.lab.logon) answers
``Access is denied.``.
"""
from __future__ import annotations

import fnmatch
import time
from typing import Any, Callable

from runner.connections.base import CommandResult
from runner.lab.commands import program
from runner.lab.logon import ACCESS_DENIED, NoNetworkCredentials
from runner.lab.store import InvalidPath

Builtin = Callable[[Any, Any, str], tuple[int, str, str, bool]]
BUILTINS: dict[str, Builtin] = {}
NOT_FOUND = "The system cannot find the file specified.\r\n"


def builtin(*names: str) -> Callable[[Builtin], Builtin]:
    def deco(fn: Builtin) -> Builtin:
        for n in names:
            BUILTINS[n] = fn
        return fn
    return deco


def _args(rest: str) -> list[str]:
    from runner.lab.shell import split_args
    return split_args("x " + rest)[1:]


@builtin("echo")
def echo(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    """``echo text`` prints text after one delimiter; ``echo.`` an empty line; bare ``echo`` the state."""
    if not rest.strip(" \t"):
        return 0, "ECHO is on.\r\n", "", False
    text = rest[1:]
    if rest[0] in " \t" and text.strip().lower() in ("on", "off"):
        return 0, "", "", False
    return 0, text + "\r\n", "", False


@builtin("rem")
def rem(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    return 0, "", "", False


@builtin("ver")
def ver(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    version = ctx.host.config.get("windows_version") or ctx.host.windows.ver_line
    return 0, f"\r\n{version}\r\n", "", False


@builtin("type")
def type_(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    """Print files; UTF-16 files with a BOM are decoded as type does."""
    files = _args(rest)
    if not files:
        return 1, "", "The syntax of the command is incorrect.\r\n", True
    out, err, rc = [], [], 0
    for f in files:
        try:
            data = ctx.read_file(f)
        except NoNetworkCredentials:
            err.append(ACCESS_DENIED)
            rc = 1
            continue
        except (OSError, InvalidPath):
            err.append(NOT_FOUND if len(files) == 1 else f"The system cannot find the file specified.\r\n"
                       f"Error occurred while processing: {f}.\r\n")
            rc = 1
            continue
        if len(files) > 1:
            out.append(f"\r\n{f}\r\n\r\n\r\n")
        if data.startswith(b"\xff\xfe"):
            out.append(data[2:].decode("utf-16-le", errors="replace"))
        else:
            out.append(data.decode("utf-8", errors="replace"))
    return rc, "".join(out), "".join(err), True


@builtin("del", "erase")
def del_(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    files = [a for a in _args(rest) if not a.startswith("/")]
    if not files:
        return 1, "", "The syntax of the command is incorrect.\r\n", True
    err = []
    for f in files:
        full = ctx.full_path(f)
        try:
            ok = _delete_matching(ctx, full) if any(c in full.rsplit("\\", 1)[-1] for c in "*?") \
                else ctx.host.fs.delete(full)
        except NoNetworkCredentials:
            err.append(ACCESS_DENIED)
            continue
        except (OSError, InvalidPath):
            ok = False
        if not ok:
            err.append(f"Could Not Find {full}\r\n")
    return 0, "", "".join(err), True


def _delete_matching(ctx: Any, full: str) -> bool:
    """``del DIR\\pat*.ext``: delete the files of DIR whose name matches (``*``, ``?``,
    case-insensitive, as cmd.exe does for long names); True when one matched."""
    folder, _, pattern = full.rpartition("\\")
    fs = ctx.host.fs
    if not fs.is_dir(folder or "\\"):
        return False
    hit = False
    for name in fs.listdir(folder):
        path = folder + "\\" + name
        if fnmatch.fnmatchcase(name.lower(), pattern.lower()) and not fs.is_dir(path):
            hit = fs.delete(path) or hit
    return hit


@builtin("dir")
def dir_(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    """``dir [/b] [/a[:][-]d] [path[\\pattern]]``: the entries of a folder matching the
    pattern (``*``, ``?``; case-insensitive), in name order as NTFS lists them. ``/b``
    prints bare names, one a line (what scripts read); otherwise the usual listing.
    Nothing matching: ``File Not Found`` on stderr and ERRORLEVEL 1."""
    args = _args(rest)
    switches = [a.lower() for a in args if a.startswith("/")]
    paths = [a for a in args if not a.startswith("/")] or ["."]
    bare = "/b" in switches
    attr = next((s[2:].lstrip(":") for s in switches if s.startswith("/a")), None)
    fs = ctx.host.fs
    out, rc = [], 0
    for given in paths:
        full = ctx.full_path(given.rstrip("\\") if len(given.rstrip("\\")) > 2 else given)
        folder, _, pattern = full.rpartition("\\")
        if not any(c in pattern for c in "*?"):
            try:
                if fs.is_dir(full):
                    folder, pattern = full, "*"
            except (OSError, InvalidPath):
                pass
        try:
            names = sorted(fs.listdir(folder or "\\"), key=str.lower) if fs.is_dir(folder or "\\") else []
        except (OSError, InvalidPath):
            names = []
        hits = []
        for name in names:
            if not fnmatch.fnmatchcase(name.lower(), pattern.lower()):
                continue
            is_dir = fs.is_dir(folder + "\\" + name)
            if (attr == "-d" and is_dir) or (attr == "d" and not is_dir):
                continue
            hits.append((name, is_dir))
        if not hits:
            rc = 1
            continue
        if bare:
            out.extend(name + "\r\n" for name, _ in hits)
            continue
        out.append(f"\r\n Directory of {folder}\r\n\r\n")
        files = size = 0
        for name, is_dir in hits:
            real = fs.resolve(folder + "\\" + name)
            st = real.stat()
            stamp = time.strftime("%m/%d/%Y  %I:%M %p", time.localtime(st.st_mtime))
            if is_dir:
                out.append(f"{stamp}    <DIR>          {name}\r\n")
            else:
                files, size = files + 1, size + st.st_size
                out.append(f"{stamp} {st.st_size:>17,} {name}\r\n")
        out.append(f"{files:>16} File(s) {size:>14,} bytes\r\n")
    if rc and not out:
        return 1, "", "File Not Found\r\n", True
    return rc, "".join(out), ("File Not Found\r\n" if rc else ""), True


@builtin("mkdir", "md")
def mkdir(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    dirs = _args(rest)
    if not dirs:
        return 1, "", "The syntax of the command is incorrect.\r\n", True
    rc, err = 0, []
    for d in dirs:
        try:
            if ctx.host.fs.exists(ctx.full_path(d)):
                err.append(f"A subdirectory or file {d} already exists.\r\n")
                rc = 1
                continue
            ctx.host.fs.mkdir(ctx.full_path(d))
        except (OSError, InvalidPath):
            err.append("The filename, directory name, or volume label syntax is incorrect.\r\n")
            rc = 1
    return rc, "", "".join(err), True


@builtin("copy")
def copy(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    args = [a for a in _args(rest) if not a.startswith("/")]
    if not args or len(args) > 2:
        return 1, "", "The syntax of the command is incorrect.\r\n", True
    src = ctx.full_path(args[0])
    dst = ctx.full_path(args[1]) if len(args) == 2 else ctx.cwd
    try:
        data = ctx.host.fs.read(src)
    except NoNetworkCredentials:
        return 1, "        0 file(s) copied.\r\n", ACCESS_DENIED, True
    except (OSError, InvalidPath):
        return 1, "        0 file(s) copied.\r\n", NOT_FOUND, True
    try:
        if ctx.host.fs.is_dir(dst):
            dst = dst.rstrip("\\") + "\\" + src.rsplit("\\", 1)[-1]
        ctx.host.fs.write(dst, data, make_dirs=False)
    except (OSError, InvalidPath):
        return 1, "        0 file(s) copied.\r\n", "The system cannot find the path specified.\r\n", True
    return 0, "        1 file(s) copied.\r\n", "", True


@builtin("set")
def set_(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    """``set`` lists, ``set P`` lists names starting with P, ``set N=V`` assigns (empty V removes)."""
    text = rest.strip(" \t")
    if text.startswith('"') and text.endswith('"') and "=" in text:
        text = text[1:-1]
    if "=" in text and not text.startswith("="):
        name, value = text.split("=", 1)
        for k in [k for k in shell.env if k.lower() == name.lower()]:
            del shell.env[k]
        if value:
            shell.env[name] = value
        return 0, "", "", False
    items = sorted(shell.env.items(), key=lambda kv: kv[0].upper())
    if text:
        items = [kv for kv in items if kv[0].lower().startswith(text.lower())]
        if not items:
            return 1, "", f"Environment variable {text} not defined\r\n", True
    return 0, "".join(f"{k}={v}\r\n" for k, v in items), "", False


@builtin("if")
def if_(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    """``if [not] exist PATH cmd``, ``if [not] errorlevel N cmd``, ``if [/i] [not] a==b cmd``.

    Limitation: the conditional command is the rest of this simple command;
    real cmd.exe also makes a following ``& cmd2`` conditional.
    """
    from runner.lab.shell import Simple, program_token
    t = rest.lstrip(" \t")
    ci = False
    if t[:3].lower() == "/i ":
        ci, t = True, t[3:].lstrip()
    neg = False
    if t[:4].lower() == "not ":
        neg, t = True, t[4:].lstrip()
    word, after = program_token(t)
    if word.lower() in ("exist", "errorlevel"):
        arg, cmd = program_token(after.lstrip(" \t"))
        if word.lower() == "exist":
            try:
                cond = ctx.host.fs.exists(ctx.full_path(arg))
            except (OSError, InvalidPath):  # a share the session cannot open does not "exist"
                cond = False
        else:
            try:
                cond = shell.errorlevel >= int(arg)
            except ValueError:
                return 255, "", f"{arg} was unexpected at this time.\r\n", True
    elif "==" in t:
        left, right = t.split("==", 1)
        right = right.lstrip(" \t")
        rtok, cmd = program_token(right) if not right.startswith('"') else _quoted(right)
        a, b = left.strip(), (right[: len(right) - len(cmd)]).strip()
        cond = a.lower() == b.lower() if ci else a == b
    else:
        return 255, "", "The syntax of the command is incorrect.\r\n", True
    if cond != neg and cmd.strip():
        r = shell._simple(Simple(cmd.strip()), ctx.stdin_source)
        return r.rc, r.stdout, r.stderr, r.sets_errorlevel
    return 0, "", "", False


@builtin("call")
def call(shell: Any, ctx: Any, rest: str) -> tuple[int, str, str, bool]:
    """``call COMMAND``: expands ``%NAME%`` in COMMAND a second time, when it runs, then runs it.

    That second expansion is what reads a value a command earlier on the same line set:
    ``msiexec ... & call echo %^ERRORLEVEL%`` prints msiexec's exit code, since phase 1
    leaves the undefined ``%^ERRORLEVEL%`` as typed, phase 2 drops the caret, and ``call``
    expands ``%ERRORLEVEL%`` (dynamic: the current ERRORLEVEL unless a variable of that
    name is set). Batch labels (``call :label``) are not modelled.
    """
    from runner.lab.shell import Simple, expand, with_dynamic
    text = rest.strip(" \t")
    if not text:
        return 0, "", "", False
    if text.startswith(":"):
        return 1, "", "Invalid attempt to call batch label outside of batch script.\r\n", True
    r = shell._simple(Simple(expand(text, with_dynamic(ctx.env, shell.errorlevel))), ctx.stdin_source)
    return r.rc, r.stdout, r.stderr, r.sets_errorlevel


def _quoted(s: str) -> tuple[str, str]:
    j = s.find('"', 1)
    j = len(s) - 1 if j < 0 else j
    return s[: j + 1], s[j + 1:]


@program("cmd")
def cmd(ctx: Any, argv: list[str], raw: str) -> CommandResult:
    """``cmd [/s] [/c|/k] line``: run ``line`` in a new shell (outer quotes stripped as documented)."""
    from runner.lab.shell import Shell
    text = raw.lstrip()
    while text[:2].lower() in ("/s", "/q", "/d") or text[:3].lower() in ("/e:", "/v:", "/f:"):
        text = text.split(None, 1)[1] if " " in text else ""
    if text[:2].lower() not in ("/c", "/k"):
        return CommandResult(0, "", "")
    line = text[2:].lstrip()
    if line.startswith('"') and line.endswith('"') and len(line) > 1:
        line = line[1:-1]
    return Shell(ctx.lab, ctx.host, ctx.faults).run(line)
