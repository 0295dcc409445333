"""The Exchange 2000 IM side through ldifde and sc: who is IM-enabled, disable, decommission.

All directory work runs ``ldifde`` on the Exchange IM server (any domain
member would do; that host is always in the inventory). Reads export to a
file and ``type`` it in the same round trip; changes put an LDIF file on the
host and ``ldifde -i -f`` it. Names of the IM attributes and of the service
are variables with the defaults below (DOMAIN.md).
"""
from __future__ import annotations

import secrets
from typing import Any, Mapping, Sequence

from runner.connections.base import Connection
from runner.errors import PermanentFault
from runner.model import Inventory
from runner.windows import ldif
from runner.windows.cmdline import Command, Quoted, chain, sectioned, split_sections

IM_ATTRIBUTES = ("msExchIMAddress", "msExchIMPhysicalURL", "msExchIMMetaPhysicalURL",
                 "msExchIMVirtualServer", "msExchIMACL")
DEFAULT_SERVICE = "MSExchangeIM"              # conv: the Exchange IM service (var exchange_im_service)
DEFAULT_VS_FILTER = "(objectClass=protocolCfgIMVirtualServer)"   # conv (var exchange_im_virtual_server_filter)
DEFAULT_TEMP = r"C:\WINDOWS\Temp"


def exchange_server(inventory: Inventory, vars: Mapping[str, Any]) -> str:
    """The Exchange IM server host: var ``exchange_im_server``, else the first of ``exchange_im_servers``."""
    if vars.get("exchange_im_server"):
        return str(vars["exchange_im_server"])
    hosts = inventory.group_hosts("exchange_im_servers")
    if not hosts:
        raise PermanentFault("no Exchange IM server: set var exchange_im_server or an exchange_im_servers group")
    return hosts[0]


def temp_path(vars: Mapping[str, Any], name: str) -> str:
    """A scratch file path on a Windows host (var ``remote_temp``)."""
    return str(vars.get("remote_temp") or DEFAULT_TEMP).rstrip("\\") + "\\" + name


class Directory:
    """ldifde queries and changes, run on one host."""

    def __init__(self, conn: Connection, host: str, vars: Mapping[str, Any]) -> None:
        self.conn = conn
        self.host = host
        self.vars = vars

    def search(self, ldap_filter: str, attrs: Sequence[str], base_dn: str | None = None) -> list[ldif.Entry]:
        """Entries matching ``ldap_filter`` (one round trip: export, type, delete the file)."""
        path = temp_path(self.vars, f"runner-{secrets.token_hex(4)}.ldf")
        cmds = [ldif.export_command(path, ldap_filter, attrs, base_dn),
                Command("type", Quoted(path)), Command("del", "/q", Quoted(path))]
        wrapped, nonce = sectioned(cmds)
        res = self.conn.run(chain(wrapped).render())
        secs = split_sections(res.stdout, len(cmds), nonce)
        if secs[0] is None or not secs[0].ok:
            detail = (res.stderr or (secs[0].stdout if secs[0] else "")).strip().splitlines()
            raise PermanentFault(f"ldifde search {ldap_filter} on {self.host} failed: "
                                 f"{detail[-1] if detail else 'no output'}", host=self.host)
        if secs[1] is None or not secs[1].ok:
            return []  # ldifde writes no file when nothing matched
        return ldif.parse(secs[1].stdout)

    def apply(self, changes: Sequence[ldif.Change]) -> None:
        """Put an LDIF file on the host and import it with ``ldifde -i -f``."""
        path = temp_path(self.vars, f"runner-{secrets.token_hex(4)}.ldf")
        self.conn.put(ldif.render(changes), path)
        res = self.conn.run(ldif.import_command(path).render())
        self.conn.run(Command("del", "/q", Quoted(path)).render())
        if not res.ok:
            detail = (res.stderr or res.stdout).strip().splitlines()
            raise PermanentFault(f"ldifde import on {self.host} failed (exit {res.rc}): "
                                 f"{detail[-1] if detail else ''}", host=self.host)

    def im_user(self, im_address: str) -> ldif.Entry | None:
        """The directory entry whose msExchIMAddress is ``im_address`` (None: not IM-enabled)."""
        flt = f"(msExchIMAddress={ldif.escape_filter_value(im_address)})"
        found = self.search(flt, list(IM_ATTRIBUTES))
        return found[0] if found else None

    def im_users(self) -> list[ldif.Entry]:
        """Every entry still enabled for Exchange IM."""
        return self.search("(msExchIMAddress=*)", list(IM_ATTRIBUTES))


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
