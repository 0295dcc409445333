r"""``wmic`` of the lab: WMI command line over the LCS store and client files.

Syntax accepted (``wmic /?`` on Windows XP/2003)::

    wmic [/namespace:\\root\cimv2] [/node:NAME] [/nointeractive|/interactive:off] [/failfast:on]
         (path CLASS | datafile | ALIAS) [where "COND" | where (COND) | where COND]
         ( get [PROP[,PROP...]] [/value | /all | /format:list | /format:csv | /format:table]
         | create PROP=VALUE[,PROP=VALUE...]
         | set PROP=VALUE[,PROP=VALUE...]
         | delete )

Lines end ``\r\r\n`` on stdout (:func:`piped`: a known quirk of wmic when its
output is piped or redirected, as it always is in the lab).

Output (what real wmic prints; the MS docs on wmic describe the verbs and
formats but not byte layouts, so the exact layout follows observed wmic
output and is marked (conv) where it is our choice):

- table (default): a header of the property names, *sorted
  alphabetically* as wmic does, each column padded to its widest cell plus
  two spaces, one row per instance, then a blank line.
- ``/format:list`` and ``/value``: per instance two blank lines then
  ``Name=Value`` lines (properties sorted), and two blank lines at the end.
- ``/format:csv``: a blank line, ``Node,Prop1,Prop2`` then ``NODE,v1,v2``
  per instance. Like real wmic, values are NOT escaped: a value containing
  a comma breaks the CSV -- use ``/format:list`` to read arbitrary data.
- Booleans print ``TRUE``/``FALSE``, arrays ``{1,2}`` / ``{"a","b"}``,
  NULL as empty.
- Nothing matched: ``No Instance(s) Available.`` on stderr, exit code 0.
- ``create``: ``Instance creation successful.``
- ``set``: per instance ``Updating property(s) of '<path>'`` then
  ``Property(s) update successful.``
- ``delete``: per instance ``Deleting instance <path>`` then
  ``Instance deletion successful.``
- Errors: ``ERROR:`` / ``Code = 0x8004....`` / ``Description = ...`` /
  ``Facility = WMI`` on stderr; exit code = the HRESULT as cmd.exe's
  %ERRORLEVEL% shows it (a negative 32-bit number, e.g. -2147217339 for
  0x80041045 WBEM_E_SERVER_TOO_BUSY); callers should read the ``Code``
  line, which survives transports that truncate exit codes.
- Unknown alias: ``ALIAS - Alias not found.`` exit 44210 (conv).

Values in ``create``/``set`` are ``"double quoted"`` (``\"`` and ``\\`` escape
inside, conv), ``'single quoted'``, bare words/numbers, ``TRUE``/``FALSE``;
arrays as ``{1,2}`` or ``(1,2)`` (conv). WQL strings in where clauses follow
runner.lab.wql.
"""
from __future__ import annotations

import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from runner.connections.base import CommandResult
from runner.lab.lcs import (
    CLASSES, WBEM_E_INVALID_CLASS, WBEM_E_INVALID_NAMESPACE, WBEM_E_INVALID_QUERY, Instance, WmiError,
)
from runner.lab.winver import LEGACY
from runner.lab.wql import Where, parse_where

CRLF = "\r\n"
ALIAS_NOT_FOUND_RC = 44210
GLOBAL_SWITCH_RC = 44135


class Provider(Protocol):
    """Where instances of a class come from (the LCS store, the client file system)."""

    def instances(self, cls: str, hints: dict[str, Any]) -> list[Instance]: ...
    def create(self, cls: str, props: dict[str, Any]) -> Instance: ...
    def update(self, inst: Instance, changes: dict[str, Any]) -> Instance: ...
    def delete(self, inst: Instance) -> None: ...


@dataclass
class WmicHost:
    """What wmic needs of the host it runs on.

    ``provider(cls)`` returns the provider of a class or raises
    WmiError(WBEM_E_INVALID_CLASS); ``mutated(command)`` records a mutating
    command in the host's journal; ``properties(cls)`` lists a class's
    properties in declaration order.
    """

    node: str
    provider: Callable[[str], Provider]
    properties: Callable[[str], tuple[str, ...]]
    mutated: Callable[[str], None] = lambda _cmd: None
    canonical: Callable[[str], str] = lambda c: c


@dataclass
class WmicCommand:
    """A parsed wmic command line."""

    namespace: str = r"root\cimv2"
    cls: str = ""
    where: Where | None = None
    verb: str = ""
    props: list[str] = field(default_factory=list)
    assignments: dict[str, Any] = field(default_factory=dict)
    fmt: str = "table"


class UsageError(Exception):
    """A wmic syntax error: the message and exit code wmic gives."""

    def __init__(self, message: str, rc: int = GLOBAL_SWITCH_RC) -> None:
        self.message = message
        self.rc = rc
        super().__init__(message)


_ARG_SEG = re.compile(r'''[^"'()\s]+|\s+|[()]|"(?:\\["\\]|[^"])*"?|'[^']*'?''')


def split_args(raw: str) -> list[str]:
    """Split wmic's argument text into tokens, keeping quotes and (...) groups intact (a run of
    plain text, a quoted string or a space at a time: char by char, this was the lab's top
    function on a chunk's script)."""
    toks: list[str] = []
    cur: list[str] = []
    depth = 0
    for m in _ARG_SEG.finditer(raw):
        seg = m.group()
        c = seg[0]
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif c.isspace():
            if depth == 0:
                if cur:
                    toks.append("".join(cur))
                    cur = []
                continue
        cur.append(seg)
    if cur:
        toks.append("".join(cur))
    return toks


def _strip_outer(tok: str) -> str:
    if len(tok) >= 2 and ((tok[0] == tok[-1] == '"') or (tok[0] == "(" and tok[-1] == ")")):
        return tok[1:-1]
    return tok


_TOP_SEG = re.compile(r'''[^"'(){}]+|[(){}]|"(?:\\.|[^"\\])*(?:"|\\?$)|'[^']*'?''', re.S)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside quotes and braces."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for m in _TOP_SEG.finditer(text):
        seg = m.group()
        c = seg[0]
        if c in "({":
            depth += 1
        elif c in ")}":
            depth -= 1
        elif c not in "\"'" and depth == 0 and sep in seg:
            pieces = seg.split(sep)
            cur.append(pieces[0])
            parts.append("".join(cur))
            parts.extend(pieces[1:-1])
            cur = [pieces[-1]]
            continue
        cur.append(seg)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_value(text: str) -> Any:
    """A create/set value: quoted string, TRUE/FALSE, NULL, number, array or bare word."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        body, out, i = t[1:-1], [], 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in "\"'\\":
                out.append(body[i + 1])
                i += 2
            else:
                out.append(body[i])
                i += 1
        return "".join(out)
    if len(t) >= 2 and ((t[0], t[-1]) in (("{", "}"), ("(", ")"))):
        return [parse_value(x) for x in _split_top(t[1:-1])]
    up = t.upper()
    if up in ("TRUE", "FALSE"):
        return up == "TRUE"
    if up == "NULL":
        return None
    try:
        return int(t)
    except ValueError:
        return t


def parse_assignments(text: str) -> dict[str, Any]:
    """``A="x",B=TRUE`` -> {"A": "x", "B": True}."""
    out: dict[str, Any] = {}
    for part in _split_top(text):
        name, eq, val = part.partition("=")
        if not eq or not name.strip():
            raise UsageError("Invalid assignment(s).", 44134)
        out[name.strip()] = parse_value(val)
    return out


ALIASES = {"datafile": "CIM_DataFile"}


def parse_command(raw: str) -> WmicCommand:
    """Parse wmic's argument text into a WmicCommand (UsageError on bad syntax)."""
    toks = split_args(raw)
    cmd = WmicCommand()
    i = 0
    while i < len(toks) and toks[i].startswith("/"):
        sw, _, val = toks[i][1:].partition(":")
        sw = sw.lower()
        if sw == "namespace":
            cmd.namespace = _strip_outer(val).lstrip("\\")
        elif sw in ("node", "nointeractive", "interactive", "failfast", "locale", "trace", "output"):
            pass
        else:
            raise UsageError(f"Invalid Global Switch.")
        i += 1
    if i >= len(toks):
        raise UsageError("Invalid GET Expression.", 44135)
    if toks[i].lower() == "path":
        if i + 1 >= len(toks):
            raise UsageError("Invalid PATH expression.", 44135)
        cmd.cls = toks[i + 1]
        i += 2
    elif toks[i].lower() in ALIASES:
        cmd.cls = ALIASES[toks[i].lower()]
        i += 1
    else:
        raise UsageError(f"{toks[i]} - Alias not found.", ALIAS_NOT_FOUND_RC)
    if i < len(toks) and toks[i].lower() == "where":
        if i + 1 >= len(toks):
            raise UsageError("Invalid query", 44135)
        cmd.where = parse_where(_strip_outer(toks[i + 1]))
        i += 2
    if i >= len(toks):
        raise UsageError("Invalid verb.", 44100)
    verb = toks[i].lower()
    rest = toks[i + 1:]
    cmd.verb = verb
    if verb in ("get", "list"):
        names: list[str] = []
        for t in rest:
            low = t.lower()
            if low in ("/value", "/format:list", "/format:\"list\"", "/all"):
                cmd.fmt = "list" if low != "/all" else "table"
            elif low.startswith("/format:"):
                f = low.split(":", 1)[1].strip('"')
                if f.endswith(".xsl"):
                    f = f[:-4]
                if f not in ("list", "csv", "table", "textvaluelist", "value"):
                    raise UsageError("Invalid XSL format (or) file name.", 44135)
                cmd.fmt = "list" if f in ("textvaluelist", "value") else f
            elif t.startswith("/"):
                raise UsageError(f"Invalid switch.", 44135)
            else:
                names.extend(x.strip() for x in t.split(",") if x.strip())
        cmd.props = names
    elif verb in ("create", "set"):
        if not rest:
            raise UsageError("Invalid assignment(s).", 44134)
        cmd.assignments = parse_assignments(" ".join(rest))
    elif verb == "delete":
        if rest and not all(t.startswith("/") for t in rest):
            raise UsageError("Invalid verb switch.", 44135)
    else:
        raise UsageError("Invalid verb.", 44100)
    return cmd


def format_value(v: Any) -> str:
    """Render a property value the way wmic does."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (list, tuple)):
        return "{" + ",".join(f'"{x}"' if isinstance(x, str) else format_value(x) for x in v) + "}"
    return str(v)


def render(instances: list[Instance], props: list[str], fmt: str, node: str) -> str:
    """Render instances in wmic's table, list or csv format."""
    props = sorted(props, key=str.lower)
    rows = [[format_value(i.props.get(p)) for p in props] for i in instances]
    if fmt == "list":
        out = []
        for r in rows:
            out.append(CRLF + CRLF)
            out.extend(f"{p}={v}{CRLF}" for p, v in zip(props, r))
        out.append(CRLF + CRLF)
        return "".join(out)
    if fmt == "csv":
        lines = ["", ",".join(["Node"] + props)]
        lines.extend(",".join([node] + r) for r in rows)
        return CRLF.join(lines) + CRLF
    widths = [max([len(p)] + [len(r[k]) for r in rows]) + 2 for k, p in enumerate(props)]
    lines = ["".join(p.ljust(w) for p, w in zip(props, widths))]
    lines.extend("".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)
    return CRLF.join(lines) + CRLF + CRLF


def error_text(err: WmiError) -> str:
    """The ``ERROR:`` block wmic prints for a failed WMI call."""
    return f"ERROR:{CRLF}Code = 0x{err.code:08x}{CRLF}Description = {err.description}{CRLF}Facility = WMI{CRLF}"


def hresult_rc(code: int) -> int:
    """The HRESULT as cmd.exe's %ERRORLEVEL% prints it (signed 32-bit)."""
    return code - (1 << 32) if code & 0x80000000 else code


def run_wmic(raw: str, host: WmicHost) -> CommandResult:
    """Execute one wmic command against ``host`` and return what wmic would print."""
    try:
        cmd = parse_command(raw)
    except UsageError as e:
        return CommandResult(e.rc, "", e.message + CRLF)
    except WmiError as e:
        return CommandResult(hresult_rc(e.code), "", error_text(e))
    try:
        if cmd.namespace.lower() not in ("root\\cimv2", "root/cimv2"):
            raise WmiError(WBEM_E_INVALID_NAMESPACE)
        cls = host.canonical(cmd.cls)
        provider = host.provider(cls)
        all_props = host.properties(cls)
        if cmd.verb == "create":
            if cmd.where is not None:
                raise UsageError("Invalid verb.", 44100)
            host.mutated("wmic " + raw)
            provider.create(cls, _known(cmd.assignments, all_props))
            return CommandResult(0, "Instance creation successful." + CRLF)
        hints = cmd.where.hints if cmd.where else {}
        found = provider.instances(cls, hints)
        if cmd.where is not None:
            found = [i for i in found if cmd.where.matches(i.props)]
        if not found:
            return CommandResult(0, "", "No Instance(s) Available." + CRLF)
        if cmd.verb in ("get", "list"):
            props = [_canon_prop(p, all_props) for p in cmd.props] or list(all_props)
            return CommandResult(0, render(found, props, cmd.fmt, host.node))
        out = []
        host.mutated("wmic " + raw)
        if cmd.verb == "set":
            changes = _known(cmd.assignments, all_props)
            for inst in found:
                out.append(f"Updating property(s) of '{inst.path(host.node)}'{CRLF}")
                provider.update(inst, changes)
                out.append("Property(s) update successful." + CRLF)
        else:
            for inst in found:
                out.append(f"Deleting instance {inst.path(host.node)}{CRLF}")
                provider.delete(inst)
                out.append("Instance deletion successful." + CRLF)
        return CommandResult(0, "".join(out))
    except UsageError as e:
        return CommandResult(e.rc, "", e.message + CRLF)
    except WmiError as e:
        partial = "".join(locals().get("out") or [])
        return CommandResult(hresult_rc(e.code), partial, error_text(e))
    except sqlite3.OperationalError as e:
        # the pool's store held by another process (a writer, a backup): the LCS server is
        # busy, as WMI says when its provider cannot get at the store; the caller retries
        from runner.lab.lcs import WBEM_E_SERVER_TOO_BUSY, locked
        if not locked(e):
            raise
        partial = "".join(locals().get("out") or [])
        busy = WmiError(WBEM_E_SERVER_TOO_BUSY)
        return CommandResult(hresult_rc(busy.code), partial, error_text(busy))


def _canon_prop(name: str, all_props: tuple[str, ...]) -> str:
    for p in all_props:
        if p.lower() == name.lower():
            return p
    raise WmiError(WBEM_E_INVALID_QUERY)


def _known(assign: dict[str, Any], all_props: tuple[str, ...]) -> dict[str, Any]:
    return {_canon_prop(k, all_props): v for k, v in assign.items()}


def class_properties(cls: str) -> tuple[str, ...]:
    """Properties of an LCS class or CIM_DataFile, in declaration order."""
    if cls == "CIM_DataFile":
        return DATAFILE_PROPS
    if cls not in CLASSES:
        raise WmiError(WBEM_E_INVALID_CLASS)
    return CLASSES[cls][1]


DATAFILE_PROPS = ("Name", "Drive", "Path", "FileName", "Extension", "FileSize", "Version", "Manufacturer")


# -- the lab program ------------------------------------------------------------

WBEM_E_PROVIDER_NOT_CAPABLE = 0x80041024
LCS_SERVICE = "RTCSRV"


_stores = threading.local()


def _lcs_store(path: Path, directory: Path | None = None) -> Any:
    """This thread's open LcsStore for ``path`` (opening one per wmic call cost a
    connect and three PRAGMAs: a third of an import's time), writing user settings
    through to the directory ``directory`` (ad.db) in the same transaction.
    Reopened when the file was replaced (another inode)."""
    from runner.lab.lcs import LcsStore
    cache: dict[str, tuple[int, Any]] | None = getattr(_stores, "cache", None)
    if cache is None:
        from runner.lab.store import at_thread_end
        cache = _stores.cache = {}
        at_thread_end(lambda: [store.close() for _, store in cache.values()])
    key = str(path)
    ino = os.stat(key).st_ino
    hit = cache.get(key)
    if hit is not None and hit[0] == ino:
        return hit[1]
    if hit is not None:
        hit[1].close()
    store = LcsStore(path, directory)
    cache[key] = (ino, store)
    return store


class _LcsProvider:
    """The LCS classes on an LCS pool host: lcs.db, with AD's msRTCSIP-* written in the
    same transaction (runner.lab.lcs: an enable is all or nothing, as on a real pool)."""

    def __init__(self, ctx: Any) -> None:
        from runner.lab.lcs import LcsStore, RPC_S_SERVER_UNAVAILABLE, WBEM_E_SERVER_TOO_BUSY
        svc = ctx.host.services.get(LCS_SERVICE)
        if svc is None or svc.state != "RUNNING":
            raise WmiError(RPC_S_SERVER_UNAVAILABLE)
        if ctx.fault("lcs_busy"):
            raise WmiError(WBEM_E_SERVER_TOO_BUSY)
        self.ctx = ctx
        from runner.lab.exchange import ad_path
        self.store = _lcs_store(ctx.host.dir / "lcs.db", ad_path(ctx.lab.path))

    def instances(self, cls: str, hints: dict[str, Any]) -> list[Instance]:
        return self.store.instances(cls, hints)

    def create(self, cls: str, props: dict[str, Any]) -> Instance:
        return self.store.create(cls, props)

    def update(self, inst: Instance, changes: dict[str, Any]) -> Instance:
        return self.store.update(inst, changes)

    def delete(self, inst: Instance) -> None:
        self.store.delete(inst)


class _DataFileProvider:
    """CIM_DataFile over the host's files; needs ``Name='C:\\\\...'`` in the where clause."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def instances(self, cls: str, hints: dict[str, Any]) -> list[Instance]:
        name = next((v for k, v in hints.items() if k.lower() == "name" and isinstance(v, str)), None)
        if name is None:
            return []
        fs = self.ctx.host.fs
        try:
            if not fs.exists(name) or fs.is_dir(name):
                return []
            data = fs.read(name)
        except Exception:  # noqa: BLE001 - an unusable path is just "no instance"
            return []
        from runner.lab.binaries import read_version_info
        info = read_version_info(data) or {}
        low = name.lower()
        drive, _, rest = low.partition(":")
        path, _, fname = rest.rpartition("\\")
        stem, dot, ext = fname.rpartition(".")
        return [Instance("CIM_DataFile", {
            "Name": low, "Drive": drive + ":", "Path": path + "\\", "FileName": stem if dot else fname,
            "Extension": ext if dot else "", "FileSize": len(data), "Version": info.get("FileVersion", ""),
            "Manufacturer": info.get("CompanyName", "")})]

    def create(self, cls: str, props: dict[str, Any]) -> Instance:
        raise WmiError(WBEM_E_PROVIDER_NOT_CAPABLE, "Provider is not capable of the attempted operation")

    update = delete = create  # type: ignore[assignment]


def lab_host(ctx: Any) -> WmicHost:
    """Adapt the lab shell's context to what wmic needs."""

    def canonical(name: str) -> str:
        if name.lower() == "cim_datafile":
            return "CIM_DataFile"
        from runner.lab.lcs import canonical_class
        return canonical_class(name)

    def provider(cls: str) -> Provider:
        if cls == "CIM_DataFile":
            return _DataFileProvider(ctx)
        if ctx.host.role != "lcs" or not (ctx.host.dir / "lcs.db").exists():
            raise WmiError(WBEM_E_INVALID_CLASS)
        return _LcsProvider(ctx)

    return WmicHost(node=ctx.host.name.upper(), provider=provider, properties=class_properties,
                    mutated=lambda _c: ctx.mutated(), canonical=canonical)


def _register() -> None:
    from runner.lab.commands import program

    @program("wmic", "wmic.exe")
    def wmic(ctx: Any, argv: list[str], raw: str) -> CommandResult:
        """The emulated wmic.exe (see the module docstring); its stdout as a pipe receives it."""
        res = run_wmic(raw, lab_host(ctx))
        if ctx.host.windows == LEGACY:  # a lab/1 lab: output as those labs had it
            return res
        return CommandResult(res.rc, piped(res.stdout), res.stderr)


def piped(stdout: str) -> str:
    """wmic's stdout as a pipe or file receives it: every line ends ``\r\r\n`` (wmic writes
    ``\r\n`` through a text-mode stream, which adds a CR of its own). A lab command's output
    never reaches a console (SSH, the in-process connection), so this is all the lab prints."""
    return stdout.replace("\r\n", "\r\r\n")


_register()
