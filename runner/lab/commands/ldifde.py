r"""``ldifde`` of the lab: export and import LDIF against the lab's AD (ad.db).

Syntax (``ldifde /?``, Windows 2000 Server resource kit / Windows Server docs)::

    ldifde -f FILE [-s SERVER] [-d BASEDN] [-r FILTER] [-p base|onelevel|subtree] [-l ATTRS] [-j LOGDIR] [-v]
    ldifde -i -f FILE [-s SERVER] [-k] [-j LOGDIR] [-v]

Export writes an LDIF file (RFC 2849, as ldifde writes it: ``dn:`` then
``changetype: add`` then one ``attr: value`` line per value; values that
are not safe strings -- non-ASCII, binary like objectGUID, leading space,
colon or ``<`` -- as ``attr:: base64``; a blank line after each entry).
Import applies ``changetype: add | modify | delete`` entries in order;
modify takes ``add:``/``replace:``/``delete:`` blocks ended by ``-``.
``-k`` ignores "Already Exists", "Constraint Violation" and "Attribute Or
Value Exists" errors, as documented for ldifde.

Console output follows ldifde's (``Connecting to "SERVER"``, ``Logging in as
current user using SSPI``, ``Exporting directory to file X``, ``Searching
for entries...``, ``Writing out entries...``, ``N entries exported``, and
``The command has completed successfully``; on import ``Importing directory
from file "X"``, ``Loading entries...``, ``N entries modified
successfully.``); on an LDAP error ``Add error on entry starting on line N:
<LDAP error name>`` / ``The server side error is: ...`` / ``An error has
occurred in the program`` and the exit code is the LDAP result code (conv:
ldifde's documented behaviour names the error, not the code; e.g. 16 No
Such Attribute, 32 No Such Object).
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from runner.connections.base import CommandResult
from runner.lab.exchange import BINARY_ATTRIBUTES, Directory, LdapError, ad_path

CRLF = "\r\n"
_SAFE = re.compile(r"^[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")


# -- LDIF ---------------------------------------------------------------------------

def ldif_line(attr: str, value: Any) -> str:
    """``attr: value`` or ``attr:: base64`` (binary, non-ASCII, unsafe start/end)."""
    if isinstance(value, bytes):
        return f"{attr}:: {base64.b64encode(value).decode()}"
    s = str(value)
    if s == "" or (_SAFE.match(s) and not s.endswith(" ")):
        return f"{attr}: {s}"
    return f"{attr}:: {base64.b64encode(s.encode('utf-8')).decode()}"


@dataclass
class LdifEntry:
    """One LDIF record: ``changetype`` and, for modify, (op, attr, values) blocks."""

    dn: str
    line: int
    changetype: str = "add"
    attrs: list[tuple[str, Any]] = field(default_factory=list)
    mods: list[tuple[str, str, list[Any]]] = field(default_factory=list)


class LdifSyntaxError(Exception):
    """A malformed LDIF file (``line`` is 1-based)."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(message)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for n, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if raw.startswith(" ") and out and out[-1][1] != "":
            out[-1] = (out[-1][0], out[-1][1] + raw[1:])
        elif raw.startswith("#"):
            continue
        else:
            out.append((n, raw))
    return out


def _value(n: int, line: str) -> tuple[str, Any]:
    if ":" not in line:
        raise LdifSyntaxError(n, f"Syntax error in line {n}")
    attr, rest = line.split(":", 1)
    if rest.startswith(":"):
        raw = base64.b64decode(rest[1:].strip())
        if attr.lower() in BINARY_ATTRIBUTES:
            return attr.strip(), raw
        try:
            return attr.strip(), raw.decode("utf-8")
        except UnicodeDecodeError:
            return attr.strip(), raw
    return attr.strip(), rest[1:] if rest.startswith(" ") else rest


def parse_ldif(data: bytes) -> list[LdifEntry]:
    """Parse an LDIF file (UTF-8, or UTF-16 with a BOM as ``ldifde -u`` writes)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")
    else:
        text = data.decode("utf-8-sig", errors="replace")
    entries: list[LdifEntry] = []
    block: list[tuple[int, str]] = []
    for n, line in _logical_lines(text) + [(0, "")]:
        if line.strip() == "":
            if block:
                entries.append(_entry(block))
                block = []
            continue
        block.append((n, line))
    return entries


def _entry(block: list[tuple[int, str]]) -> LdifEntry:
    n0, first = block[0]
    if first.lower().startswith("version:"):
        block = block[1:]
        if not block:
            return LdifEntry("", n0, "none")
        n0, first = block[0]
    a, dn = _value(n0, first)
    if a.lower() != "dn":
        raise LdifSyntaxError(n0, f"Syntax error in line {n0}: dn expected")
    e = LdifEntry(str(dn), n0)
    rest = block[1:]
    if rest and rest[0][1].lower().startswith("changetype:"):
        e.changetype = rest[0][1].split(":", 1)[1].strip().lower()
        rest = rest[1:]
    if e.changetype not in ("add", "modify", "delete"):
        raise LdifSyntaxError(n0, f"Unsupported changetype {e.changetype!r}")
    if e.changetype == "add":
        e.attrs = [_value(n, l) for n, l in rest]
    elif e.changetype == "modify":
        i = 0
        while i < len(rest):
            n, l = rest[i]
            op, attr = _value(n, l)
            op = op.lower()
            if op not in ("add", "replace", "delete"):
                raise LdifSyntaxError(n, f"Syntax error in line {n}")
            vals: list[Any] = []
            i += 1
            while i < len(rest) and rest[i][1] != "-":
                vn, vl = rest[i]
                a2, v = _value(vn, vl)
                if a2.lower() != str(attr).strip().lower():
                    raise LdifSyntaxError(vn, f"Syntax error in line {vn}")
                vals.append(v)
                i += 1
            i += 1  # the "-"
            e.mods.append((op, str(attr).strip(), vals))
    elif rest:
        raise LdifSyntaxError(rest[0][0], f"Syntax error in line {rest[0][0]}")
    return e


# -- LDAP filters -------------------------------------------------------------------

Matcher = Callable[[dict[str, list[Any]]], bool]


def _unescape_filter(v: str) -> str:
    return re.sub(r"\\([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), v)


def _text(v: Any) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else str(v)


def parse_filter(text: str) -> tuple[Matcher, list[tuple[str, Any]]]:
    """Parse an RFC 2254 filter; also return equality terms usable to pre-select (attr, value)."""
    s = text.strip()
    if not s.startswith("("):
        s = f"({s})"
    pos = 0

    def attr_values(obj: dict[str, list[Any]], a: str) -> list[Any]:
        for k, v in obj.items():
            if k.lower() == a.lower():
                return v
        return []

    def item() -> tuple[Matcher, list[tuple[str, Any]] | None]:
        nonlocal pos
        if pos >= len(s) or s[pos] != "(":
            raise ValueError("filter")
        pos += 1
        c = s[pos] if pos < len(s) else ""
        if c in "&|":
            pos += 1
            subs = []
            while pos < len(s) and s[pos] == "(":
                subs.append(item())
            if pos >= len(s) or s[pos] != ")":
                raise ValueError("filter")
            pos += 1
            ms = [m for m, _ in subs]
            if c == "&":
                eq = next((e for _, e in subs if e), None)
                return (lambda o: all(m(o) for m in ms)), eq
            eqs = [e for _, e in subs]
            union = None if any(e is None for e in eqs) else [x for e in eqs for x in e]  # type: ignore[union-attr]
            return (lambda o: any(m(o) for m in ms)), union
        if c == "!":
            pos += 1
            m, _ = item()
            if pos >= len(s) or s[pos] != ")":
                raise ValueError("filter")
            pos += 1
            return (lambda o: not m(o)), None
        end = s.find(")", pos)
        if end < 0:
            raise ValueError("filter")
        body = s[pos:end]
        pos = end + 1
        m = re.match(r"^([A-Za-z0-9;-]+)(~=|>=|<=|=)(.*)$", body)
        if not m:
            raise ValueError("filter")
        a, op, v = m.group(1), m.group(2), m.group(3)
        if op == "=" and v == "*":
            return (lambda o: bool(attr_values(o, a))), None
        if op == "=" and "*" in v:
            rx = re.compile("^" + ".*".join(re.escape(_unescape_filter(p)) for p in v.split("*")) + "$", re.I | re.S)
            return (lambda o: any(rx.match(_text(x)) for x in attr_values(o, a))), None
        val = _unescape_filter(v)
        if op == "=" and a.lower() in BINARY_ATTRIBUTES:
            # an octet string (objectGUID as \\xx escapes) matches byte for byte, as AD compares it
            raw = val.encode("latin-1", "replace")
            return (lambda o: any(isinstance(x, bytes) and x == raw for x in attr_values(o, a))), [(a, raw)]
        if op in ("=", "~="):
            if a.lower() == "objectclass":
                return (lambda o: any(_text(x).lower() == val.lower() for x in attr_values(o, a))), None
            return (lambda o: any(_text(x).lower() == val.lower() for x in attr_values(o, a))), [(a, val)]
        if op == ">=":
            return (lambda o: any(_text(x).lower() >= val.lower() for x in attr_values(o, a))), None
        return (lambda o: any(_text(x).lower() <= val.lower() for x in attr_values(o, a))), None

    try:
        m, eq = item()
        if pos != len(s):
            raise ValueError("filter")
    except (ValueError, IndexError):
        raise LdifSyntaxError(0, "Invalid filter") from None
    return m, eq or []


# -- the program --------------------------------------------------------------------

SUCCESS = "The command has completed successfully" + CRLF
FAILED = "An error has occurred in the program" + CRLF
OPTS_WITH_VALUE = {"-f", "-s", "-d", "-r", "-p", "-l", "-j", "-t", "-o", "-c", "-b", "-m"}


def _usage(msg: str) -> CommandResult:
    return CommandResult(1, "", msg + CRLF + "Type ldifde /? for help." + CRLF)


def run_ldifde(ctx: Any, argv: list[str]) -> CommandResult:
    """Execute ldifde with ``argv`` (argv[0] is the program name) on a lab host."""
    opts: dict[str, Any] = {"-i": False, "-k": False, "-v": False}
    args = argv[1:]
    i = 0
    while i < len(args):
        a = args[i].lower().replace("/", "-", 1) if args[i][:1] in "-/" else args[i]
        if a in ("-i", "-k", "-v", "-n", "-u", "-e", "-y", "-z", "-q"):
            opts[a] = True
        elif a in OPTS_WITH_VALUE:
            if i + 1 >= len(args):
                return _usage(f"Missing value for option {args[i]}")
            opts[a] = args[i + 1]
            i += 1
        elif a in ("-?", "/?"):
            return CommandResult(0, "LDIF Directory Exchange" + CRLF)
        else:
            return _usage(f"Invalid Parameter {args[i]}")
        i += 1
    if "-f" not in opts:
        return _usage("No file specified")
    adp = ad_path(ctx.lab.path)
    if not adp.exists():
        return CommandResult(1, f'Connecting to "{ctx.host.name}"{CRLF}',
                             f"Error connecting to the server{CRLF}{FAILED}")
    server = opts.get("-s") or f"{ctx.host.name}.{_domain_dn(ctx).replace('DC=', '').replace(',', '.')}"
    head = f'Connecting to "{server}"{CRLF}Logging in as current user using SSPI{CRLF}'
    with Directory(adp) as d:
        if opts["-i"]:
            ctx.mutated()
            return _import(ctx, d, opts, head)
        return _export(ctx, d, opts, head)


def _domain_dn(ctx: Any) -> str:
    """The default naming context: the lab's AD domain (lab.json ``domains.ad``; a lab
    generated from an inventory has its own), as ldifde takes it from the logon domain."""
    return str((ctx.host.lab.config.get("domains") or {}).get("ad") or "DC=contoso,DC=com")


def _export(ctx: Any, d: Directory, opts: dict[str, Any], head: str) -> CommandResult:
    try:
        match, eqs = parse_filter(opts.get("-r") or "(objectClass=*)")
    except LdifSyntaxError:
        return CommandResult(1, head, f"Invalid Filter{CRLF}{FAILED}")
    base = opts.get("-d") or _domain_dn(ctx)
    scope = (opts.get("-p") or "subtree").lower()
    wanted = [a.strip() for a in str(opts.get("-l") or "").split(",") if a.strip()]
    if eqs:
        cands: list[str] = []
        for a, v in eqs:
            cands.extend(d.find_equal(a, v))
        in_scope = set(x.lower() for x in d.dns_under(base, scope)) if scope != "subtree" else None
        suffix = "," + base.lower()
        dns = [x for x in dict.fromkeys(cands)
               if (in_scope is None and (x.lower() == base.lower() or x.lower().endswith(suffix)))
               or (in_scope is not None and x.lower() in in_scope)]
    else:
        dns = d.dns_under(base, scope)
    if not dns and not d.exists(base):
        return CommandResult(32, head, f"Search error: No Such Object{CRLF}{FAILED}")
    lines: list[str] = []
    count = 0
    for dn in dns:
        attrs = d.attributes(dn)
        if not match(attrs):
            continue
        count += 1
        lines.append(ldif_line("dn", dn))
        lines.append("changetype: add")
        for name, values in attrs.items():
            if wanted and name.lower() not in {w.lower() for w in wanted}:
                continue
            lines.extend(ldif_line(name, v) for v in values)
        lines.append("")
    data = (CRLF.join(lines) + (CRLF if lines else "")).encode("utf-8")
    path = ctx.full_path(opts["-f"])
    try:
        ctx.host.fs.write(path, data)
    except OSError:
        return CommandResult(1, head, f"Error opening log file {opts['-f']}{CRLF}{FAILED}")
    out = (head + f"Exporting directory to file {opts['-f']}{CRLF}Searching for entries...{CRLF}"
           + f"Writing out entries{'.' * min(count, 60)}{CRLF}")
    out += (f"{count} entries exported{CRLF}" if count else f"No Entries found{CRLF}") + CRLF + SUCCESS
    return CommandResult(0, out)


IGNORABLE = {68, 19, 20}


def _import(ctx: Any, d: Directory, opts: dict[str, Any], head: str) -> CommandResult:
    path = ctx.full_path(opts["-f"])
    try:
        data = ctx.host.fs.read(path)
    except OSError:
        return CommandResult(2, head, f"The file {opts['-f']} could not be opened{CRLF}{FAILED}")
    out = head + f'Importing directory from file "{opts["-f"]}"{CRLF}Loading entries'
    try:
        entries = [e for e in parse_ldif(data) if e.changetype != "none"]
    except LdifSyntaxError as e:
        return CommandResult(1, out + CRLF, f"There is a syntax error in the input file{CRLF}"
                                            f"Failed on line {e.line}.  The last token starts with ''.{CRLF}{FAILED}")
    # One transaction for the file (a chunk's LDIF holds many users' changes), each entry in a
    # savepoint: an entry that fails is undone alone and the import stops there, keeping the
    # entries before it, as ldifde does; a kill mid-import keeps none of them (as if it had
    # come before the import), which the next run's probe finds not done.
    done = 0
    d.begin()
    try:
        for e in entries:
            d.savepoint()
            try:
                _apply(d, e)
            except LdapError as err:
                d.rollback_to_savepoint()
                if opts["-k"] and err.code in IGNORABLE:
                    continue
                d.commit()
                verb = {"add": "Add", "modify": "Add", "delete": "Delete"}[e.changetype]
                out += "." * done + CRLF + f"{done} entries modified successfully.{CRLF}"
                server = LdapError.SERVER.get(err.code, "")
                return CommandResult(err.code, out,
                                     f"{verb} error on entry starting on line {e.line}: {err.name}{CRLF}"
                                     f"The server side error is: {server}{CRLF}{FAILED}")
            d.release_savepoint()
            done += 1
    except BaseException:
        d.rollback()
        raise
    d.commit()
    out += "." * done + CRLF
    out += (f"{done} entries modified successfully.{CRLF}" if done else f"No entries modified{CRLF}")
    return CommandResult(0, out + CRLF + SUCCESS)


def _apply(d: Directory, e: LdifEntry) -> None:
    dn = d.canonical_dn(e.dn) or e.dn
    if e.changetype == "add":
        d.add(dn, e.attrs)
    elif e.changetype == "delete":
        d.delete(dn)
    else:
        if not d.exists(dn):
            raise LdapError(32)
        for op, attr, vals in e.mods:
            if op == "replace":
                d.replace(dn, attr, vals)
            elif op == "add":
                d.add_values(dn, attr, vals)
            else:
                d.delete_values(dn, attr, vals)


def _register() -> None:
    from runner.lab.commands import program

    @program("ldifde", "ldifde.exe")
    def ldifde(ctx: Any, argv: list[str], raw: str) -> CommandResult:
        """The emulated ldifde.exe (see the module docstring)."""
        return run_ldifde(ctx, argv)


_register()
