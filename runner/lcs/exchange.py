"""The Exchange 2000 IM side through ldifde and sc: who is IM-enabled, disable, decommission.

All directory work runs ``ldifde`` on the Exchange IM server (any domain
member would do; that host is always in the inventory; enable_lcs_users reads
on the LCS server). Reads export to a file and ``type`` it in the same round
trip; changes put an LDIF file on the host and ``ldifde -i -f`` it.

Scratch files are ``runner-<owner>-<random>.ldf`` in ``remote_temp``
(default ``%SystemRoot%\\Temp`` as the host says it, runner.hostenv: ``C:\\WINNT\\Temp``
on a Windows 2000 Exchange server), ``<owner>`` 8 hex digits derived from what
the work is for (a user's alias, a host's name). A run killed, or a connection
dropped, between the put and the line that deletes them leaves them behind:
every read line of a Directory with an owner starts by deleting that owner's
``runner-<owner>-*.ldf`` (no task of the same owner is in flight then), so the
next run's probe removes what an earlier one left, in the same round trip. Names of the IM attributes and of the service
are variables with the defaults below (DOMAIN.md).
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runner.connections.base import Connection
from runner.errors import PermanentFault, TransientFault
from runner.hostenv import temp_dir
from runner.model import Inventory
from runner.windows import ldif
from runner.windows.cmdline import Command, Quoted, Section, chain, gated_sections, sectioned, split_sections
from runner.windows.scripts import owner_tag, run_delivering

IM_ATTRIBUTES = ("msExchIMAddress", "msExchIMPhysicalURL", "msExchIMMetaPhysicalURL",
                 "msExchIMVirtualServer", "msExchIMACL")
DEFAULT_SERVICE = "MSExchangeIM"              # conv: the Exchange IM service (var exchange_im_service)
DEFAULT_VS_FILTER = "(objectClass=protocolCfgIMVirtualServer)"   # conv (var exchange_im_virtual_server_filter)


def exchange_server(inventory: Inventory, vars: Mapping[str, Any]) -> str:
    """The Exchange IM server host: var ``exchange_im_server``, else the first of ``exchange_im_servers``."""
    if vars.get("exchange_im_server"):
        return str(vars["exchange_im_server"])
    hosts = inventory.group_hosts("exchange_im_servers")
    if not hosts:
        raise PermanentFault("no Exchange IM server: set var exchange_im_server or an exchange_im_servers group")
    return hosts[0]


def temp_path(conn: Connection, vars: Mapping[str, Any], name: str) -> str:
    """A scratch file path on the host ``conn`` reaches: in var ``remote_temp``, else in its
    ``%SystemRoot%\\Temp`` (runner.hostenv.temp_dir)."""
    return temp_dir(conn, vars) + "\\" + name


@dataclass(frozen=True)
class Query:
    """An ldifde search: filter, attributes, optional base DN."""

    ldap_filter: str
    attrs: tuple[str, ...]
    base_dn: str | None = None


@dataclass
class Applied:
    """What ``Directory.apply`` saw in its one line: the ``before`` commands'
    sections (None: never ran) and the entries each read-back query found."""

    before: list[Section | None]
    found: list[list[ldif.Entry]]


class Directory:
    """ldifde queries and changes, run on one host; each call is one round trip
    (plus the put of the LDIF file for a change)."""

    def __init__(self, conn: Connection, host: str, vars: Mapping[str, Any], owner: str | None = None) -> None:
        """``owner``: what the work is for (a user's alias, a host's name), naming its scratch
        files so that read lines can delete the ones a killed run left (module docstring)."""
        self.conn = conn
        self.host = host
        self.vars = vars
        self.owner = owner

    def _scratch(self) -> str:
        """A new scratch file path on the host."""
        tag = f"{owner_tag(self.owner)}-" if self.owner else ""
        return temp_path(self.conn, self.vars, f"runner-{tag}{secrets.token_hex(4)}.ldf")

    def stale_pattern(self) -> str | None:
        """The wildcard of this owner's scratch files, None without an owner."""
        return temp_path(self.conn, self.vars, f"runner-{owner_tag(self.owner)}-*.ldf") if self.owner else None

    def _line(self, gated: Sequence[Command], plain: Sequence[Command],
              queries: Sequence[Query], *, clean: bool = False, deliver: tuple[bytes, str] | None = None
              ) -> tuple[list[Section | None], list[list[ldif.Entry]], str]:
        """One command line: ``gated`` (each only after the previous succeeded), then
        ``plain``, then each query (export, type, delete the file); the sections of
        gated + plain, the entries of each query, and the line's stderr. ``clean``
        (no gated part: nothing of this owner's is on the host yet) first deletes the
        owner's stale scratch files. ``deliver``: (data, path), a file the line uses, sent
        with it (runner.windows.scripts.run_delivering: in the same round trip when the
        connection can)."""
        nonce = secrets.token_hex(4)
        parts: list[Command] = []
        if gated:
            parts.append(gated_sections(gated, nonce)[0])
        stale = self.stale_pattern() if clean and not gated else None
        if stale:
            plain = [Command("del", "/q", Quoted(stale)), *plain]
        qcmds: list[Command] = []
        for q in queries:
            path = self._scratch()
            qcmds += [ldif.export_command(path, q.ldap_filter, q.attrs, q.base_dn),
                      Command("type", Quoted(path)), Command("del", "/q", Quoted(path))]
        n = len(gated) + len(plain)
        parts += sectioned([*plain, *qcmds], nonce, start=len(gated))[0]
        if deliver is not None:
            from runner.lcs.chunks import line_limit  # chunks imports this module
            res = run_delivering(self.conn, chain(parts), data=deliver[0], path=deliver[1],
                                 limit=line_limit(self.vars))
        else:
            res = self.conn.run(chain(parts).render())
        secs = split_sections(res.stdout, n + len(qcmds), nonce)
        found = [self._entries(q, secs[n + 3 * i], secs[n + 3 * i + 1], res.stderr)
                 for i, q in enumerate(queries)]
        ran = secs[:n]
        if stale:
            del ran[len(gated)]
        return ran, found, res.stderr

    def _entries(self, q: Query, export: Section | None, typed: Section | None, stderr: str) -> list[ldif.Entry]:
        if export is None or not export.ok:
            detail = (stderr or (export.stdout if export else "")).strip().splitlines()
            raise PermanentFault(f"ldifde search {q.ldap_filter} on {self.host} failed: "
                                 f"{detail[-1] if detail else 'no output'}", host=self.host)
        if typed is None or not typed.ok:
            return []  # ldifde writes no file when nothing matched
        return ldif.parse(typed.stdout)

    def read(self, queries: Sequence[Query], commands: Sequence[Command] = ()
             ) -> tuple[list[Section | None], list[list[ldif.Entry]]]:
        """``commands`` (e.g. sc queries, sectioned) and ``queries``, in one round trip."""
        secs, found, _ = self._line((), commands, queries, clean=True)
        return secs, found

    def search(self, ldap_filter: str, attrs: Sequence[str], base_dn: str | None = None) -> list[ldif.Entry]:
        """Entries matching ``ldap_filter`` (one round trip: export, type, delete the file)."""
        return self.read([Query(ldap_filter, tuple(attrs), base_dn)])[1][0]

    def apply(self, changes: Sequence[ldif.Change], *, before: Sequence[Command] = (),
              read_back: Sequence[Query] = ()) -> Applied:
        """Put an LDIF file on the host, then one line: the ``before`` commands and
        ``ldifde -i -f`` the file, each only after the previous succeeded; then delete
        the file and run the ``read_back`` queries (whatever happened).

        Raises PermanentFault when the import ran and failed; when a ``before``
        command failed the import did not run, and the caller reads ``before``.
        """
        path = self._scratch()
        gated, plain = list(before), []
        deliver = None
        if changes:
            end = secrets.token_hex(8)
            deliver = (ldif.render(changes, end=end), path)
            gated.append(ldif.checked_import(path, end))
            plain.append(Command("del", "/q", Quoted(path)))
        if not gated:
            return Applied([], self.read(read_back)[1])
        secs, found, stderr = self._line(gated, plain, read_back, deliver=deliver)
        done = Applied(secs[:len(before)], found)
        imported = secs[len(before)] if changes else None
        if changes and all(s is not None and s.ok for s in done.before) and (imported is None or not imported.ok):
            if imported is not None and ldif.cut_short(imported.stdout):
                raise TransientFault(f"the LDIF file put on {self.host} arrived without its last line (cut short "
                                     "in transfer); nothing was imported: put again and retried", host=self.host)
            detail = (stderr or (imported.stdout if imported else "")).strip().splitlines()
            raise PermanentFault(f"ldifde import on {self.host} failed: "
                                 f"{detail[-1] if detail else 'no output'}", host=self.host)
        return done

    def im_user(self, im_address: str) -> ldif.Entry | None:
        """The directory entry whose msExchIMAddress is ``im_address`` (None: not IM-enabled)."""
        found = self.search(im_user_query(im_address).ldap_filter, list(IM_ATTRIBUTES))
        return found[0] if found else None

    def im_users(self) -> list[ldif.Entry]:
        """Every entry still enabled for Exchange IM."""
        return self.search(IM_USERS.ldap_filter, list(IM_USERS.attrs))


def im_user_query(im_address: str) -> Query:
    """The search for the entry whose msExchIMAddress is ``im_address``."""
    return Query(f"(msExchIMAddress={ldif.escape_filter_value(im_address)})", IM_ATTRIBUTES)


#: Every entry still enabled for Exchange IM, with what ``homed_on`` needs.
IM_USERS = Query("(msExchIMAddress=*)", ("msExchIMAddress", "msExchIMPhysicalURL", "msExchIMVirtualServer"))


#: What LCS writes into a user's AD object when it enables them (besides a ``sip:`` proxyAddresses value).
RTC_ATTRIBUTES = ("msRTCSIP-PrimaryUserAddress", "msRTCSIP-UserEnabled", "msRTCSIP-PrimaryHomeServer")


def rtc_query(uri: str) -> Query:
    """The search for the AD object whose msRTCSIP-PrimaryUserAddress is ``uri``, with what an
    enable writes (known before LCS is read, so it shares the probe's line)."""
    return Query(f"(msRTCSIP-PrimaryUserAddress={ldif.escape_filter_value(uri)})",
                 (*RTC_ATTRIBUTES, "proxyAddresses"))


def rtc_missing(entries: Sequence[ldif.Entry], user_dn: str, uri: str, home_dn: str) -> list[str]:
    """What the AD object ``user_dn`` lacks of an enable with SIP URI ``uri`` homed on
    ``home_dn``, from the ``entries`` :func:`rtc_query` found: attribute names, empty when complete."""
    entry = next((e for e in entries if e.dn.lower() == user_dn.lower()), None)
    if entry is None:
        return ["msRTCSIP-PrimaryUserAddress"]
    out = []
    if not enabled_in_ad(entry):
        out.append("msRTCSIP-UserEnabled")
    if home_dn and [v.lower() for v in entry.get("msRTCSIP-PrimaryHomeServer")] != [home_dn.lower()]:
        out.append("msRTCSIP-PrimaryHomeServer")
    if uri.lower() not in [v.lower() for v in entry.get("proxyAddresses")]:
        out.append(f"proxyAddresses {uri}")
    return out


def enabled_in_ad(entry: ldif.Entry, home_dn: str | None = None) -> bool:
    """The AD object says LCS has enabled the user: ``msRTCSIP-UserEnabled`` is TRUE, which is
    where LCS 2005 keeps MSFT_SIPESUserSetting's ``Enabled``; with ``home_dn``, also homed there
    (``msRTCSIP-PrimaryHomeServer``, compared as :func:`rtc_missing` compares it)."""
    if [v.upper() for v in entry.get("msRTCSIP-UserEnabled")] != ["TRUE"]:
        return False
    return home_dn is None or [v.lower() for v in entry.get("msRTCSIP-PrimaryHomeServer")] == [home_dn.lower()]


def clear_im_change(entry: ldif.Entry) -> ldif.Change:
    """The LDIF modify that removes the IM attributes ``entry`` still has."""
    mods = [("delete", a, []) for a in IM_ATTRIBUTES if entry.get(a)]
    return ldif.Change(entry.dn, "modify", mods)


def homed_on(entries: Sequence[ldif.Entry], server: str) -> list[ldif.Entry]:
    """The entries homed on ``server``: their physical URL or virtual server names it;
    entries that name no server at all count too (cannot prove they are elsewhere)."""
    out = []
    s = server.lower()
    for e in entries:
        where = " ".join(e.get("msExchIMPhysicalURL") + e.get("msExchIMVirtualServer")).lower()
        if not where.strip() or s in where:
            out.append(e)
    return out


# -- the backup a rollback restores (docs/rollback.md) -------------------------------------

#: The user's LCS state in AD saved beside the msExchIM* values (kept for the record and
#: checked by the rollback; LCS itself writes these, the rollback never does).
BACKUP_RTC_ATTRIBUTES = (*RTC_ATTRIBUTES, "msRTCSIP-TargetHomeServer")
#: What disable_exchange_im reads of a user: what it clears and what it saves.
BACKUP_ATTRIBUTES = (*IM_ATTRIBUTES, *BACKUP_RTC_ATTRIBUTES)


def im_backup(entry: ldif.Entry, *, alias: str, server: str) -> dict[str, Any]:
    """The backup of a user's Exchange IM attributes, from the ``entry`` read just before they
    are cleared: its DN, every msExchIM* value and the msRTCSIP-* state, in the directory's
    order. Deterministic (no time stamp): saving the same values again is the same file."""
    def values(names: Sequence[str]) -> dict[str, list[str]]:
        return {a: list(entry.get(a)) for a in names if entry.get(a)}
    return {"format": 1, "alias": alias, "dn": entry.dn, "exchange_im_server": server,
            "msExchIM": values(IM_ATTRIBUTES), "msRTCSIP": values(BACKUP_RTC_ATTRIBUTES)}


def keeps_backup(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when the saved backup ``old`` must stay rather than be replaced by ``new``: ``old``
    holds msExchIM* values and ``new`` holds fewer of them (a partly cleared entry, which
    would make a worse backup). Equal or more values replace it (identical bytes: no new
    version)."""
    if not old or not isinstance(old.get("msExchIM"), Mapping) or not old["msExchIM"]:
        return False
    have = {a.lower() for a in old["msExchIM"]}
    now = {a.lower() for a in new.get("msExchIM") or {}}
    return now < have


def restore_im_change(entry: ldif.Entry, backup: Mapping[str, Any]) -> ldif.Change:
    """The LDIF modify that gives ``entry`` exactly the msExchIM* values of ``backup``: a
    replace of every saved attribute whose values differ, a delete of any IM attribute the
    backup does not hold; no mods when the entry already matches."""
    saved = {a.lower(): (a, list(v)) for a, v in (backup.get("msExchIM") or {}).items()}
    mods: list[tuple[str, str, Sequence[Any]]] = []
    for a in IM_ATTRIBUTES:
        now = entry.get(a)
        if a.lower() in saved:
            name, want = saved[a.lower()]
            if now != want:
                mods.append(("replace", name, [ldif.value_for_ldif(v) for v in want]))
        elif now:
            mods.append(("delete", a, []))
    return ldif.Change(entry.dn, "modify", mods)


def guid_query(guids: Sequence[str], attrs: Sequence[str]) -> Query:
    """The search for the AD objects whose objectGUID is one of ``guids`` ({8-4-4-4-12}, as the
    inventory holds them; objectGUID is stored little-endian, as uuid's bytes_le)."""
    import uuid
    parts = "".join(f"(objectGUID={ldif.escape_filter_bytes(uuid.UUID(g.strip('{}')).bytes_le)})" for g in guids)
    return Query(parts if len(guids) == 1 else f"(|{parts})", tuple(attrs))


def entry_starts(changes: Sequence[ldif.Change]) -> list[int]:
    """The line each change starts on in ``ldif.render(changes)`` (ldifde names that line
    when it stops at an entry)."""
    starts, line = [], 1
    for ch in changes:
        starts.append(line)
        line += ldif.render([ch]).count(b"\r\n")
    return starts


def import_stopped_at(sec: Section | None) -> int | None:
    """Where an ``ldifde -i`` section stopped: None when it succeeded, the line of the entry
    it names, or 0 when it failed without naming one (or never ran)."""
    if sec is not None and sec.ok:
        return None
    m = re.search(r"error on entry starting on line (\d+)", sec.stdout if sec else "")
    return int(m.group(1)) if m else 0


def unfinished_import(sec: Section | None, start: int, dn: str, host: str, left: str) -> Exception:
    """The fault of an entry that did not read back as an ``ldifde -i`` of a chunk's file
    meant (``sec``: the import's section; ``start``: the entry's line in the file): ldifde
    stopped at it (PermanentFault with its error), before it (TransientFault: the change
    never ran, retried), never ran because the file arrived cut short (TransientFault: put
    again), or succeeded and the entry still ``left`` (PermanentFault)."""
    if sec is not None and not sec.ok and ldif.cut_short(sec.stdout):
        return TransientFault(f"the LDIF file put on {host} arrived without its last line (cut short in "
                              f"transfer); nothing was imported, {dn} not changed: put again and retried", host=host)
    stopped_at = import_stopped_at(sec)
    if stopped_at is not None and stopped_at == start:
        detail = (sec.stdout if sec else "").strip().splitlines()
        return PermanentFault(f"ldifde import on {host} failed for {dn}: {detail[-1] if detail else 'no output'}",
                              host=host)
    if stopped_at is not None:
        return TransientFault(f"ldifde import on {host} stopped before {dn} (at line {stopped_at}); retried",
                              host=host)
    return PermanentFault(f"ldifde import on {host} succeeded but {dn} {left}", host=host)
