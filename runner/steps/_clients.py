"""Helpers shared by the client steps: one-round-trip sectioned reads, profiles, hives, Messenger version.

Private to runner/steps (the leading underscore keeps it out of step discovery).
"""
from __future__ import annotations

import re
import secrets
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from runner.connections.base import CommandResult, Connection
from runner.errors import PermanentFault
from runner.model import Inventory, User
from runner.windows import reg
from runner.windows.cmdline import (MAX_COMMAND_LINE, Command, Quoted, Section, batch_groups, branch_sections,
                                    quotable, sectioned, split_sections)
from runner.windows.regfile import RegKey
from runner.windows.scripts import batch_safe, feeds, owner_tag, run_script, stale_scripts

PROFILE_LIST = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList"
WINDOWS_NT = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion"
UNINSTALL = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall"
DEFAULT_MESSENGER_EXE = r"C:\Program Files\Messenger\msmsgs.exe"


#: cmd.exe's line limit when no fact says which Windows a host runs: Windows 2000's
#: 2,047 characters (KB 830473; XP and Server 2003 take 8,191).
DEFAULT_LINE_LIMIT = 2047


@dataclass(frozen=True)
class ScriptOwner:
    """Whose fed batch script a client line sends (``run_built``): the task's target
    (``host:NAME`` or ``user:ALIAS``), and the scratch folder (host var ``remote_temp``; None:
    ``%SystemRoot%\\Temp``). ``others``: targets whose cut-off scripts the line deletes
    too, given only when none of their tasks can be running a script on the host (a
    reading shared by a machine's users, taken first in a step, runs no line of theirs)."""

    target: str
    folder: str | None = None
    others: tuple[str, ...] = ()


def script_owner(ctx: Any, target: str) -> ScriptOwner | None:
    """The :class:`ScriptOwner` of a task of ``target``; None in check mode, which writes no
    file on a client, not even a scratch script (its lines go one by one), and for a
    ``remote_temp`` a line cannot carry."""
    if getattr(ctx, "check", False):
        return None
    folder = (getattr(ctx, "vars", None) or {}).get("remote_temp")
    folder = folder.strip() if isinstance(folder, str) and folder.strip() else None
    if folder is not None and not quotable(folder):
        return None
    return ScriptOwner(target, folder)


def run_sections(conn: Connection, commands: Sequence[Command], *, limit: int = MAX_COMMAND_LINE,
                 owner: ScriptOwner | None = None) -> tuple[list[Section | None], str]:
    """Run ``commands`` chained with ``&`` (one round trip per ``limit`` characters).

    Returns each command's stdout and success (None: it never ran), and the
    combined stderr (reg.exe writes its errors there).
    """
    return run_groups(conn, [[c] for c in commands], limit=limit, owner=owner)


#: Builds one group of a line from the line's nonce and its first section number:
#: (the commands, which always share a line; how many sections they hold).
GroupBuilder = Callable[[str, int], "tuple[list[Command], int]"]


def plain(commands: Sequence[Command]) -> GroupBuilder:
    """A group of commands that all run, each in its own section."""
    return lambda nonce, start: (sectioned(commands, nonce, start=start)[0], len(commands))


def run_groups(conn: Connection, groups: Sequence[Sequence[Command]], *, limit: int = MAX_COMMAND_LINE,
               owner: ScriptOwner | None = None) -> tuple[list[Section | None], str]:
    """Like ``run_sections`` for the commands of ``groups`` in order, flattened; the
    commands of one group always go in the same line (a hive's load with its unload)."""
    return run_built(conn, [plain(g) for g in groups], limit=limit, owner=owner)


def run_built(conn: Connection, builders: Sequence[GroupBuilder], *,
              limit: int = MAX_COMMAND_LINE, owner: ScriptOwner | None = None) -> tuple[list[Section | None], str]:
    """Run the groups ``builders`` make, packed into as few lines as fit ``limit`` (a group
    is never split); returns every section in order (None: it never ran) and the stderr.

    With an ``owner`` (the task's target, ``host:NAME`` or ``user:ALIAS``: one task at a time),
    more than one line on a connection that feeds a line's input (runner.windows.scripts)
    is one round trip: the lines, as they are, are the lines of a batch file in the host's
    ``%SystemRoot%\\Temp`` named after the owner, run and deleted by the line that delivers
    it (which first deletes the owner's script a cut-off task left). They run there as
    they would one by one (each its own cmd.exe line, in order; a group's hive load and
    unload in one), as long as each ``%`` in them is a variable a batch file expands alike
    (``batch_safe``); else they go one by one."""
    nonce = secrets.token_hex(4)
    groups: list[list[Command]] = []
    total = 0
    for build in builders:
        pieces, n = build(nonce, total)
        groups.append(pieces)
        total += n
    out: list[Section | None] = [None] * total
    errors: list[str] = []
    lines = [line.render(limit=limit) for line in batch_groups(groups, limit=limit)]
    if owner is not None and len(lines) > 1 and feeds(conn) and all(batch_safe(ln) for ln in lines):
        # the lines as one batch file, fed with the line that runs it: one round trip
        results = [run_script(conn, lines, tag=owner_tag(owner.target), limit=limit, folder=owner.folder,
                              also=[owner_tag(t) for t in owner.others])]
    else:
        if owner is not None and feeds(conn) and lines:
            # where it fits, one line deletes the owner's script a cut-off task left
            stale = " & ".join(stale_scripts(owner_tag(t), owner.folder).render()
                               for t in dict.fromkeys([owner.target, *owner.others]))
            first = f"{stale} & {lines[0]}"
            lines[0] = first if len(first) <= limit else lines[0]
        results = [conn.run(line) for line in lines]
    if len(lines) > 1 and len(results) == 1 and total and not any(split_sections(results[0].stdout, total, nonce)):
        # the script never ran (its input cut short, or its file could not be written: a
        # missing remote_temp): nothing of it ran, so the lines go one by one instead
        results = [conn.run(line) for line in lines]
    for result in results:
        errors.append(result.stderr)
        for i, sec in enumerate(split_sections(result.stdout, total, nonce)):
            if sec is not None:
                out[i] = sec
    return out, "".join(errors)


def line_count(builders: Sequence[GroupBuilder], *, limit: int = MAX_COMMAND_LINE) -> int:
    """How many lines ``run_built`` would send for ``builders`` (a nonce of the real one's
    length gives lines of the real lengths): lets a caller see whether a group still fits."""
    groups, total = [], 0
    for build in builders:
        pieces, n = build("0" * 8, total)
        groups.append(pieces)
        total += n
    return len(batch_groups(groups, limit=limit))


def hive_group(sid: str, in_place: Sequence[Command], alias: str, ntuser: str,
               loaded: Sequence[Command], *, load_if: Command | None = None) -> GroupBuilder:
    """Work on a user's hive whoever is logged on, as one group: when ``HKU\\<sid>`` is
    mounted (the user is logged on) ``in_place`` runs; else ``reg load`` of ``ntuser``
    (its error text kept in its section), ``loaded`` and ``reg unload``, always together.
    ``load_if``: a test the load waits for (its failure is the load's: nothing is loaded).

    Sections: the mounted test, ``in_place``'s, the load, ``loaded``'s, the unload.
    """
    name = hive_name(alias)
    test = Command(*reg.query(f"HKU\\{sid}").bits, ">nul", "2>&1")
    drive = "%SystemDrive%\\"
    if ntuser.startswith(drive) and quotable(ntuser[len(drive):]):  # cmd.exe expands the drive
        load = Command("reg", "load", Quoted(f"HKU\\{name}"), f'"{ntuser}"', "2>&1")
    else:
        load = Command(*reg.load(name, ntuser).bits, "2>&1")
    if load_if is not None:
        load = Command(load_if, "&&", load)
    otherwise = [load, *loaded, reg.unload(name)]

    def build(nonce: str, start: int) -> tuple[list[Command], int]:
        cmd, _ = branch_sections(test, in_place, otherwise, nonce, start=start)
        return [cmd], 1 + len(in_place) + len(otherwise)
    return build


def line_limit(ctx: Any, host: str) -> int:
    """cmd.exe's line limit on ``host``: from the ``cmd_line_limit`` fact inventory_clients
    records (8,191 on XP/2003, 2,047 on Windows 2000), else ``DEFAULT_LINE_LIMIT``."""
    facts = ctx.facts(host) if hasattr(ctx, "facts") else None
    value = (facts or {}).get("cmd_line_limit")
    return value if isinstance(value, int) and 1024 <= value <= MAX_COMMAND_LINE else DEFAULT_LINE_LIMIT


def limit_for_version(version: str | None) -> int:
    """The line limit of a Windows ``CurrentVersion`` (``5.0`` 2000: 2,047; ``5.1`` XP and later:
    8,191); unknown: ``DEFAULT_LINE_LIMIT``."""
    v = version_tuple(version)
    if not v:
        return DEFAULT_LINE_LIMIT
    return MAX_COMMAND_LINE if v >= (5, 1) else 2047


def has_wmic(ctx: Any, host: str) -> bool:
    """Whether ``host`` has wmic: not on Windows 2000 (``os_version`` 5.0 in its facts; wmic
    first shipped with XP); assumed when no fact says (a failed wmic read is then told apart)."""
    facts = ctx.facts(host) if hasattr(ctx, "facts") else None
    v = version_tuple((facts or {}).get("os_version"))
    return not v or v >= (5, 1)


def take(conn: Connection, path: str) -> bytes:
    """Read the file at ``path`` and delete it, in one round trip when the connection can
    (``take``: over SSH the remove follows the read on the same SFTP session), else a
    ``get`` and a ``del``. The file is deleted even when reading it failed."""
    taker = getattr(conn, "take", None)
    if callable(taker):
        return taker(path)
    try:
        return conn.get(path)
    finally:
        conn.run(Command("del", "/q", Quoted(path)).render())


def client_users(inventory: Inventory, host: str) -> list[User]:
    """Inventory users whose ``clients`` include ``host``, in inventory order."""
    return inventory.users_of_client(host)


_HIVE_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_HIVE_LOCKS_GUARD = threading.Lock()


@contextmanager
def hive_locks(host: str, aliases: Sequence[str]) -> Iterator[None]:
    """Hold the users' ``runner_<alias>`` mount names on ``host`` while a line loads and
    unloads their hives: a machine reading loads other users' hives too, and must not
    unload a hive another task's line has just loaded to export (its export would then
    miss the key and record an empty list). Taken in sorted order, so never deadlocks."""
    keys = sorted({(host.lower(), hive_name(a).lower()) for a in aliases})
    with _HIVE_LOCKS_GUARD:
        locks = [_HIVE_LOCKS.setdefault(k, threading.Lock()) for k in keys]
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def hive_name(alias: str) -> str:
    """The temporary HKU name for a user's loaded NTUSER.DAT (``runner_<alias>``)."""
    return "runner_" + re.sub(r"[^A-Za-z0-9_-]", "_", alias)


def expand(path: str, env: Mapping[str, str]) -> str:
    """Expand ``%NAME%`` references with ``env`` (case-insensitive); unknown ones stay."""
    low = {k.lower(): v for k, v in env.items()}
    return re.sub(r"%([^%]+)%", lambda m: low.get(m.group(1).lower(), m.group(0)), path)


@dataclass
class Profile:
    """A local profile from ProfileList: SID, expanded path, whether its hive is mounted."""

    sid: str
    path: str
    loaded: bool


def profiles(profile_keys: list[RegKey], hku_keys: list[RegKey], env: Mapping[str, str]) -> dict[str, Profile]:
    """Profiles by SID from ``reg query ProfileList /s`` and ``reg query HKU`` output."""
    mounted = {s.lower() for s in reg.subkeys(hku_keys, "HKU")}
    out: dict[str, Profile] = {}
    for sid in reg.subkeys(profile_keys, PROFILE_LIST):
        raw = reg.value_of(reg.find_key(profile_keys, PROFILE_LIST + "\\" + sid), "ProfileImagePath")
        if isinstance(raw, str) and raw:
            out[sid] = Profile(sid, expand(raw, env), sid.lower() in mounted)
    return out


def fact_profiles(ctx: Any, host: str) -> dict[str, Profile]:
    """Profiles of ``host`` as inventory_clients recorded them (this run or an earlier
    one; empty without facts). Paths may be out of date: check them against ProfileList."""
    facts = ctx.facts(host) if hasattr(ctx, "facts") else None
    out: dict[str, Profile] = {}
    for sid, p in ((facts or {}).get("profiles") or {}).items():
        if isinstance(sid, str) and isinstance(p, dict) and isinstance(p.get("path"), str):
            out[sid] = Profile(sid, p["path"], bool(p.get("loaded")))
    return out


#: Where Windows 2000 and XP put a domain user's first profile, as ProfileList records it:
#: ``%SystemDrive%\\Documents and Settings\\<user name>`` (a second account of that name gets
#: ``<name>.<DOMAIN>``; a machine upgraded from NT 4 keeps ``%SystemRoot%\\Profiles``).
DEFAULT_PROFILES = r"%SystemDrive%\Documents and Settings"
_SAFE_ALIAS = re.compile(r"[A-Za-z0-9._-]{1,64}")


def default_profile(user: User) -> tuple[Profile, Command] | None:
    """A first guess at the profile of ``user`` before anything says where it is: the default
    folder named after the alias, with the SID the inventory gives; and the test a line runs
    before loading its hive: ProfileList's entry for that SID ends with that folder
    (``reg query ... /v ProfileImagePath | findstr /i /r``, the whole value
    ``%SystemDrive%\\Documents and Settings\\<alias>``: another drive, another folder fail it),
    so no one else's hive is ever loaded on a guess. The path is expanded by cmd.exe. None without a SID, or for an alias that is more than letters, digits,
    ``.``, ``_`` and ``-`` (no guess: the profile is read from ProfileList first, as before)."""
    if not user.sid or not _SAFE_ALIAS.fullmatch(user.alias) or not _SAFE_ALIAS.fullmatch(user.sid):
        return None
    # the regex: "SystemDrive", any one character (the %, which a line cannot carry), the rest
    rest = re.sub(r"([.\\\[\]^$*])", r"\\\1", "\\Documents and Settings\\" + user.alias)
    check = Command(reg.query(f"{PROFILE_LIST}\\{user.sid}", value="ProfileImagePath"), "|",
                    "findstr", "/i", "/r", f'/c:"REG_EXPAND_SZ[ \t]*.SystemDrive.{rest}$"', ">nul")
    return Profile(user.sid, DEFAULT_PROFILES + "\\" + user.alias, False), check


def profile_for(user: User, found: Mapping[str, Profile]) -> Profile | None:
    """The user's profile: by the inventory SID, else by the profile folder's name = alias."""
    if user.sid:
        for sid, p in found.items():
            if sid.lower() == user.sid.lower():
                return p
        return None
    for p in found.values():
        if p.path.rstrip("\\").rsplit("\\", 1)[-1].lower() == user.alias.lower():
            return p
    return None


def is_locked_text(stderr: str) -> bool:
    """reg.exe's messages for a hive file or key in use."""
    return reg.is_locked(CommandResult(1, "", stderr))


def still_loaded(hku: Section | None, name: str) -> bool:
    """Whether ``reg query HKU`` output still lists ``HKU\\name``."""
    if hku is None:
        return True
    return any(s.lower() == name.lower() for s in reg.subkeys(reg.parse_query(hku.stdout), "HKU"))


def unload_verified(conn: Connection, host: str, name: str) -> None:
    """Unload ``HKU\\name`` and check it is gone (one retry), else PermanentFault."""
    for _ in range(2):
        sections, _ = run_sections(conn, [reg.unload(name), reg.query("HKU")])
        if not still_loaded(sections[1], name):
            return
    raise PermanentFault(f"hive HKU\\{name} is still loaded on {host} after reg unload", host=host)


def version_tuple(version: str | None) -> tuple[int, ...]:
    """``"5.1.0715"`` -> ``(5, 1, 715)``; unparsable parts stop the tuple."""
    out: list[int] = []
    for part in (version or "").split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def messenger_from_uninstall(keys: list) -> dict[str, Any] | None:
    """The newest Messenger product in the Uninstall keys.

    Windows Messenger 5.1 installs beside an MSN Messenger 4.x, whose entry
    stays: the newest version is what the client runs for Exchange IM and LCS.
    """
    best: dict[str, Any] | None = None
    for key in keys:
        name = reg.value_of(key, "DisplayName")
        if isinstance(name, str) and "messenger" in name.lower():
            version = reg.value_of(key, "DisplayVersion")
            found = {"installed": True, "product": name, "version": version if isinstance(version, str) else None,
                     "product_code": key.path.rsplit("\\", 1)[-1], "source": "uninstall"}
            if best is None or version_tuple(found["version"] or "0") > version_tuple(best["version"] or "0"):
                best = found
    return best


def file_version_query(exe: str) -> Command:
    """``wmic datafile where "name='...'" get Version /value`` for the file ``exe``."""
    wql = "name='" + exe.replace("\\", "\\\\") + "'"
    return Command("wmic", "datafile", "where", Quoted(wql), "get", "Version", "/value")


def file_version(stdout: str) -> str | None:
    """The ``Version=`` of :func:`file_version_query`'s output, None when absent."""
    m = re.search(r"^\s*Version=(\S+)", stdout, re.MULTILINE)
    return m.group(1) if m else None
