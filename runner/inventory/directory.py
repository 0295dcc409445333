"""Active Directory values to inventory entries: objectGUID and objectSid decoding, users and computers.

Both readers (``from-ldif``, ``from-ldap``) hand their entries over as
:class:`runner.inventory.ldif.Record` objects, so one function turns a
directory into inventory users and client hosts.

objectGUID is 16 bytes in Microsoft's GUID layout: the first three fields
(4, 2 and 2 bytes) little-endian, the last 8 bytes as they are
(``uuid.UUID(bytes_le=...)``). objectSid is the binary SID: revision (1
byte), sub-authority count (1), identifier authority (6, big-endian), then
that many 32-bit little-endian sub-authorities: ``S-1-5-21-a-b-c-rid``.
"""
from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from runner.errors import InputError
from runner.inventory.ldif import Record

#: the attributes ``ldifde -l`` / the LDAP search asks for
USER_ATTRIBUTES = ("objectGUID", "objectSid", "sAMAccountName", "displayName", "mail", "msExchIMAddress",
                   "msExchIMPhysicalURL", "msExchIMMetaPhysicalURL", "msExchIMVirtualServer", "msExchIMACL")
USER_FILTER = "(msExchIMAddress=*)"
COMPUTER_ATTRIBUTES = ("dNSHostName", "operatingSystem", "operatingSystemVersion", "operatingSystemServicePack")
COMPUTER_FILTER = "(objectClass=computer)"
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_SID_TEXT = re.compile(r"^S-1-[0-9]{1,14}(-[0-9]{1,10}){1,15}$")


def guid_from_bytes(raw: bytes) -> str:
    """``{01234567-89AB-CDEF-0123-456789ABCDEF}`` from 16 objectGUID bytes (Microsoft byte order)."""
    if len(raw) != 16:
        raise ValueError(f"an objectGUID is 16 bytes, not {len(raw)}")
    return "{" + str(uuid.UUID(bytes_le=raw)).upper() + "}"


def guid_to_bytes(guid: str) -> bytes:
    """The 16 objectGUID bytes of ``{...}`` (inverse of :func:`guid_from_bytes`)."""
    return uuid.UUID(guid.strip("{}")).bytes_le


def sid_from_bytes(raw: bytes) -> str:
    """``S-1-5-21-...`` from a binary objectSid."""
    if len(raw) < 8:
        raise ValueError(f"an objectSid is at least 8 bytes, not {len(raw)}")
    revision, count = raw[0], raw[1]
    if revision != 1:
        raise ValueError(f"SID revision {revision} (only 1 exists)")
    if len(raw) != 8 + 4 * count:
        raise ValueError(f"a SID with {count} sub-authorities is {8 + 4 * count} bytes, not {len(raw)}")
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack(f"<{count}I", raw[8:])
    return "S-1-" + "-".join(str(x) for x in (authority, *subs))


def sid_to_bytes(sid: str) -> bytes:
    """The binary objectSid of ``S-1-...`` (inverse of :func:`sid_from_bytes`)."""
    if not _SID_TEXT.match(sid):
        raise ValueError(f"not a SID: {sid!r}")
    parts = [int(x) for x in sid.split("-")[2:]]
    authority, subs = parts[0], parts[1:]
    return bytes([1, len(subs)]) + authority.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)


@dataclass
class Directory:
    """What a directory gives the inventory: users and client hosts by name, and notes for the user."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers: list[str] = field(default_factory=list)   # computers running a Server OS, not made clients
    warnings: list[str] = field(default_factory=list)


def _binary(rec: Record, attr: str, file: str | None, decode: Any) -> str | None:
    vals = rec.raw(attr)
    if not vals:
        return None
    v = vals[0]
    if isinstance(v, str):
        # a directory that hands the value as text already (an LDAP server without the binary syntax)
        if attr.lower() == "objectsid" and _SID_TEXT.match(v):
            return v
        raise InputError(f"{attr} of {rec.dn!r} is text ({v[:40]!r}); ldifde writes it base64-encoded "
                         f"('{attr}:: ...')", file, rec.line_of(attr))
    try:
        return decode(v)
    except ValueError as e:
        raise InputError(f"{attr} of {rec.dn!r}: {e}", file, rec.line_of(attr)) from None


def _alias(sam: str) -> str:
    """A valid inventory alias from a sAMAccountName (other characters become '_')."""
    a = re.sub(r"[^A-Za-z0-9._-]", "_", sam)[:64]
    return a if _ALIAS.match(a) else ("u" + a)[:64]


def read_users(records: Iterable[Record], file: str | None, out: Directory) -> None:
    """Add the IM-enabled users of ``records`` to ``out`` (errors at the record's line)."""
    seen_sid: dict[str, str] = {}
    seen_alias = {a.lower() for a in out.users}
    for rec in records:
        where = f"{file}:{rec.line}" if file else rec.dn
        im = rec.text("msExchIMAddress", file)
        if not im:
            out.warnings.append(f"{where}: {rec.dn} has no msExchIMAddress (not an Exchange IM user); left out")
            continue
        sam = rec.text("sAMAccountName", file)
        if not sam:
            raise InputError(f"{rec.dn!r} has no sAMAccountName (export it with -l)", file, rec.line)
        alias = _alias(sam)
        if alias != sam:
            out.warnings.append(f"{where}: sAMAccountName {sam!r} is the inventory alias {alias!r}")
        if alias.lower() in seen_alias:
            raise InputError(f"user {alias!r} ({rec.dn}) appears twice", file, rec.line)
        guid = _binary(rec, "objectGUID", file, guid_from_bytes)
        sid = _binary(rec, "objectSid", file, sid_from_bytes)
        entry: dict[str, Any] = {"im_address": im.strip()}
        name = rec.text("displayName", file)
        if name:
            entry["display_name"] = name
        if sid:
            if sid.lower() in seen_sid:
                raise InputError(f"{rec.dn!r} has the objectSid of {seen_sid[sid.lower()]!r}", file,
                                 rec.line_of("objectSid"))
            seen_sid[sid.lower()] = alias
            entry["sid"] = sid
        else:
            out.warnings.append(f"{where}: {alias} has no objectSid: its profile is found by folder name only")
        if guid:
            entry["ad_guid"] = guid
        else:
            out.warnings.append(f"{where}: {alias} has no objectGUID: enable_lcs_users needs it")
        mail = rec.text("mail", file)
        if mail:
            entry["vars"] = {"email": mail}
        out.users[alias] = entry
        seen_alias.add(alias.lower())


def read_computers(records: Iterable[Record], file: str | None, out: Directory) -> None:
    """Add the workstations of ``records`` to ``out.hosts`` (Server editions go to ``out.servers``)."""
    for rec in records:
        fqdn = rec.text("dNSHostName", file)
        if not fqdn:
            cn = rec.dn.split(",", 1)[0].partition("=")[2]
            out.warnings.append(f"{file}:{rec.line}: computer {cn or rec.dn} has no dNSHostName; left out")
            continue
        fqdn = fqdn.strip().rstrip(".")
        name = fqdn.split(".", 1)[0].lower()
        if not _HOST.match(name):
            raise InputError(f"dNSHostName {fqdn!r} does not give a valid host name", file, rec.line_of("dNSHostName"))
        if name in out.hosts or name in out.servers:
            raise InputError(f"computer {name!r} ({fqdn}) appears twice", file, rec.line)
        os_name = rec.text("operatingSystem", file) or ""
        host: dict[str, Any] = {"address": fqdn}
        facts = {k: rec.text(a, file) for k, a in (("ad_operating_system", "operatingSystem"),
                                                  ("ad_operating_system_version", "operatingSystemVersion"),
                                                  ("ad_operating_system_service_pack", "operatingSystemServicePack"))}
        facts = {k: v for k, v in facts.items() if v}
        if facts:
            host["vars"] = facts
        if "server" in os_name.lower():
            out.servers.append(name)
        out.hosts[name] = host
