"""Helpers shared by the client steps: one-round-trip sectioned reads, profiles, hives, Messenger version.

Private to runner/steps (the leading underscore keeps it out of step discovery).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runner.connections.base import CommandResult, Connection
from runner.errors import PermanentFault
from runner.model import Inventory, User
from runner.windows import reg
from runner.windows.cmdline import Command, Quoted, Section, batch, sectioned, split_sections
from runner.windows.regfile import RegKey

PROFILE_LIST = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList"
UNINSTALL = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall"
DEFAULT_MESSENGER_EXE = r"C:\Program Files\Messenger\msmsgs.exe"


def run_sections(conn: Connection, commands: Sequence[Command]) -> tuple[list[Section | None], str]:
    """Run ``commands`` chained with ``&`` (one round trip per 8,191 characters).

    Returns each command's stdout and success (None: it never ran), and the
    combined stderr (reg.exe writes its errors there).
    """
    wrapped, nonce = sectioned(commands)
    out: list[Section | None] = []
    errors: list[str] = []
    for line in batch(wrapped):
        n = sum(1 for b in line.bits if isinstance(b, Command))
        result = conn.run(line.render())
        errors.append(result.stderr)
        # the markers carry absolute indexes: parse against the full count, keep this line's slice
        parsed = split_sections(result.stdout, len(commands), nonce)
        out.extend(parsed[len(out):len(out) + n])
    return out, "".join(errors)


def client_users(inventory: Inventory, host: str) -> list[User]:
    """Inventory users whose ``clients`` include ``host``, in inventory order."""
    return [u for u in inventory.users.values() if host in u.clients]


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
