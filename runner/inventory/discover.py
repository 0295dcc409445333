"""``runner inventory discover``: which users have an Exchange IM contact list on which client, read off the clients.

Each client of the inventory is read, never changed, through the normal
connection layer (lab or SSH alike), with the commands ``inventory_clients``
uses: ``reg query`` of ProfileList and HKU, then per local profile
(``S-1-5-21-...``) the contact key, from ``HKU\\<SID>`` when the user is
logged on, else from their NTUSER.DAT loaded under a temporary name and
always unloaded in the same command line (checked afterwards, like the
export step does). A profile *holds a list* when the contact key has an
RVP profile under it.

A user's ``clients`` become the machines holding their list, in inventory
order; a machine that could not be read keeps the users it had (their list
there is unknown, not absent).
"""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from runner.connections.registry import ConnectionOptions, ConnectionPool
from runner.errors import EXIT_UNREACHABLE, RunnerError, StepFault, TransientFault
from runner.model import Inventory
from runner.steps import _clients as cl
from runner.windows import reg
from runner.windows.cmdline import Command
from runner.windows.imcontacts import DEFAULT_CONTACTS_KEY, contacts_from_keys

ATTEMPTS = 3


class ClientsNotRead(RunnerError):
    """No client of the inventory could be read: nothing is written (exit 3, the README's unreachable)."""

    exit_code = EXIT_UNREACHABLE


@dataclass
class HostProfiles:
    """What one client showed: local profiles by SID, and for each whether it holds a contact list."""

    host: str
    lists: dict[str, int] = field(default_factory=dict)      # SID -> contacts, for profiles holding a list
    without: list[str] = field(default_factory=list)         # SIDs of profiles with no list
    folders: dict[str, str] = field(default_factory=dict)    # SID -> profile folder name
    unreadable: list[str] = field(default_factory=list)      # SIDs whose hive could not be loaded
    error: str | None = None


@dataclass
class Discovery:
    """The whole estate: per host, and the report."""

    hosts: dict[str, HostProfiles]
    clients: dict[str, list[str]]            # alias -> hosts holding their list
    unmatched: dict[str, list[str]]          # SID holding a list -> hosts, matching no inventory user
    nowhere: list[str]                       # aliases found on no machine


def _is_user_sid(sid: str) -> bool:
    return sid.upper().startswith("S-1-5-21-")


def read_host(pool: ConnectionPool, name: str, contacts_key: str) -> HostProfiles:
    """Read one client's profiles and contact-list presence (read-only; hives always unloaded)."""
    out = HostProfiles(name)
    conn = pool.get(name)
    # no facts yet: lines stay within Windows 2000's 2,047 characters, which every version takes
    limit = cl.DEFAULT_LINE_LIMIT
    sections, _ = cl.run_sections(conn, [Command("echo", "%SystemDrive%"), reg.query(cl.PROFILE_LIST, recursive=True),
                                         reg.query("HKU")], limit=limit)
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    if not text[1]:
        raise TransientFault(f"reg query of ProfileList on {name} failed", host=name)
    env = {"SystemDrive": text[0].strip() or "C:"}
    found = {sid: p for sid, p in cl.profiles(reg.parse_query(text[1]), reg.parse_query(text[2]), env).items()
             if _is_user_sid(sid)}
    groups: list[list[Command]] = []  # a hive's load, read and unload always share a line
    layout: list[tuple[str, int, bool]] = []  # sid, index of its query, loaded by us
    n = 0
    for sid, p in found.items():
        out.folders[sid] = p.path.rstrip("\\").rsplit("\\", 1)[-1]
        if p.loaded:
            layout.append((sid, n, False))
            groups.append([reg.query(f"HKU\\{sid}\\{contacts_key}", recursive=True)])
            n += 1
        else:
            hive = cl.hive_name(sid)
            layout.append((sid, n + 1, True))
            groups.append([reg.load(hive, p.path.rstrip("\\") + "\\NTUSER.DAT"),
                           reg.query(f"HKU\\{hive}\\{contacts_key}", recursive=True), reg.unload(hive)])
            n += 3
    if not groups:
        return out
    groups.append([reg.query("HKU")])
    sections, _ = cl.run_groups(conn, groups, limit=limit)
    for sid, qi, ours in layout:
        if ours and (sections[qi - 1] is None or not sections[qi - 1].ok):
            out.unreadable.append(sid)
            continue
        q = sections[qi]
        doc = contacts_from_keys(reg.parse_query(q.stdout), contacts_key) if q is not None and q.ok else None
        if doc and doc["profiles"]:
            out.lists[sid] = len(doc["contacts"])
        else:
            out.without.append(sid)
    for sid, _qi, ours in layout:
        if ours and cl.still_loaded(sections[-1], cl.hive_name(sid)):
            cl.unload_verified(conn, name, cl.hive_name(sid))
    return out


def _read_with_retries(pool: ConnectionPool, name: str, contacts_key: str) -> HostProfiles:
    last: StepFault | None = None
    for _ in range(ATTEMPTS):
        try:
            return read_host(pool, name, contacts_key)
        except TransientFault as e:
            last = e
        except StepFault as e:
            return HostProfiles(name, error=e.message if hasattr(e, "message") else str(e))
    return HostProfiles(name, error=str(last))


def client_hosts(inv: Inventory) -> list[str]:
    """The machines to read: the ``clients`` group, else every host of the inventory."""
    if "clients" in inv.groups:
        return inv.group_hosts("clients")
    return list(inv.hosts)


def discover(inv: Inventory, *, hosts: list[str] | None = None, forks: int = 8,
             contacts_key: str | None = None, options: ConnectionOptions | None = None) -> Discovery:
    """Read every client (``forks`` at a time) and match the profiles holding a list to the users.

    ``options`` are the connection settings of the command line (``--accept-new-host-keys``).
    """
    names = hosts if hosts is not None else client_hosts(inv)
    key = contacts_key or str(inv.vars.get("contacts_key") or DEFAULT_CONTACTS_KEY)
    pool = ConnectionPool(inv, options)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(names) or 1))) as ex:
            results = dict(zip(names, ex.map(lambda n: _read_with_retries(pool, n, key), names)))
    finally:
        pool.close()
    by_sid = {u.sid.lower(): u.alias for u in inv.users.values() if u.sid}
    by_folder = {u.alias.lower(): u.alias for u in inv.users.values() if not u.sid}
    clients: dict[str, list[str]] = {a: [] for a in inv.users}
    unmatched: dict[str, list[str]] = {}
    for name in names:
        r = results[name]
        if r.error is not None:
            for u in inv.users.values():  # unknown, not absent: keep what the inventory said
                if name in u.clients:
                    clients[u.alias].append(name)
            continue
        for sid in r.lists:
            alias = by_sid.get(sid.lower()) or by_folder.get(r.folders.get(sid, "").lower())
            if alias is None:
                unmatched.setdefault(sid, []).append(name)
            else:
                clients[alias].append(name)
    nowhere = [a for a, c in clients.items() if not c]
    return Discovery(results, clients, unmatched, nowhere)


def with_clients(doc: dict[str, Any], found: Discovery) -> dict[str, Any]:
    """A copy of the inventory document with every user's ``clients`` from ``found``."""
    out = copy.deepcopy(doc)
    for alias, entry in (out.get("users") or {}).items():
        hosts = found.clients.get(str(alias))
        if hosts is None:
            continue
        if hosts:
            entry["clients"] = hosts
        else:
            entry.pop("clients", None)
    return out


def report_lines(found: Discovery) -> list[str]:
    """What the administrator reads: per-host problems, SIDs matching no user, users on no machine."""
    lines: list[str] = []
    for r in found.hosts.values():
        if r.error:
            lines.append(f"{r.host}: not read ({r.error}); its users keep the clients the inventory gave")
        for sid in r.unreadable:
            lines.append(f"{r.host}: the hive of {sid} ({r.folders.get(sid, '?')}) could not be loaded")
    for sid, hosts in sorted(found.unmatched.items()):
        lines.append(f"SID {sid} holds a contact list on {', '.join(hosts)} but matches no user of the inventory")
    if found.nowhere:
        lines.append(f"{len(found.nowhere)} user(s) found on no machine: {', '.join(found.nowhere)}")
    read = sum(1 for r in found.hosts.values() if r.error is None)
    placed = sum(1 for c in found.clients.values() if c)
    lines.append(f"{read}/{len(found.hosts)} client(s) read; {placed}/{len(found.clients)} user(s) have clients")
    return lines
