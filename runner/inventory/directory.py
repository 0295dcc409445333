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
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
_SID_TEXT = re.compile(r"^S-1-[0-9]{1,14}(-[0-9]{1,10}){1,15}\Z")


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
    #: where each value came from, by its path (``("users", alias, "im_address")``,
    #: ``("hosts", name, "address")``): (file or None for a live query, line, the entry's DN),
    #: so a bad value is reported at its LDIF line, never at a line of the inventory made
    origins: dict[tuple[str, ...], tuple[str | None, int, str, str | None]] = field(default_factory=dict)

    def note(self, path: tuple[str, ...], file: str | None, rec: Record, attr: str | None = None) -> None:
        """Record that the value at ``path`` came from ``attr`` of ``rec`` (the record itself when None)."""
        self.origins[path] = (file, rec.line_of(attr) if attr else rec.line, rec.dn, attr)

    def error(self, message: str, path: tuple[Any, ...] = (), *, at_key: bool = False) -> InputError:
        """An InputError at the source of the value at ``path`` (its deepest recorded prefix):
        ``FILE:LINE`` of the LDIF record, or the entry's DN for a live query. The shape of
        runner.loader.Document.error, so runner.loader.schema_errors words the message."""
        path = tuple(str(p) for p in path)
        for n in range(len(path), 0, -1):
            hit = self.origins.get(path[:n])
            if hit is not None:
                file, line, dn, attr = hit
                if attr:
                    message += f" (the directory's {attr})"
                return InputError(message, file, line) if file else InputError(f"{dn}: {message}")
        return InputError(message)


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


def _has(rec: Record, attr: str, file: str | None) -> bool:
    value = rec.text(attr, file)
    return bool(value and value.strip())


def read_users(records: Iterable[Record], file: str | None, out: Directory) -> None:
    """Add the IM-enabled users of ``records`` to ``out`` (errors at the record's line).

    The export's filter ``(msExchIMAddress=*)`` (USER_FILTER) gives only entries
    that have an IM address, so a record without one means the file is not that
    export (the computers one given first, another filter) or was cut: an error,
    never a user silently left out. So is a file with no user at all.
    """
    records = list(records)
    source = file or "the directory query"
    if not records:
        if file is None:
            raise InputError(f"the directory query found no user matching {USER_FILTER} under the search base")
        raise InputError(f"holds no user record: is it the users export (ldifde -r \"{USER_FILTER}\")?", file, 1)
    if not any(_has(r, "msExchIMAddress", file) for r in records) \
            and any(_has(r, "dNSHostName", file) for r in records):
        raise InputError(f"{source} is the computers export (its records have dNSHostName and no msExchIMAddress): "
                         "give the users export first and the computers one with --computers", file,
                         records[0].line if file else None)
    seen_sid: dict[str, str] = {}
    seen_im: dict[str, tuple[str, int]] = {}
    seen_alias = {a.lower() for a in out.users}
    for rec in records:
        where = f"{file}:{rec.line}" if file else rec.dn
        im = rec.text("msExchIMAddress", file)
        if not im or not im.strip():
            raise InputError(f"{rec.dn!r} has no msExchIMAddress, which every entry of the users export has "
                             f"(its filter is {USER_FILTER}): the file looks cut or is not that export", file,
                             rec.line if file else None)
        sam = rec.text("sAMAccountName", file)
        if not sam:
            raise InputError(f"{rec.dn!r} has no sAMAccountName (export it with -l)", file, rec.line)
        alias = _alias(sam)
        if alias != sam:
            out.warnings.append(f"{where}: sAMAccountName {sam!r} is the inventory alias {alias!r}")
        if alias.lower() in seen_alias:
            raise InputError(f"user {alias!r} ({rec.dn}) appears twice", file, rec.line)
        if im.strip().lower() in seen_im:
            first, line = seen_im[im.strip().lower()]
            raise InputError(f"{rec.dn!r} has the msExchIMAddress of {first!r}" + (f" (line {line})" if file else ""),
                             file, rec.line_of("msExchIMAddress"))
        seen_im[im.strip().lower()] = (rec.dn, rec.line)
        guid = _binary(rec, "objectGUID", file, guid_from_bytes)
        sid = _binary(rec, "objectSid", file, sid_from_bytes)
        entry: dict[str, Any] = {"im_address": im.strip()}
        at = ("users", alias)
        out.note(at, file, rec)
        for key, attr in (("im_address", "msExchIMAddress"), ("display_name", "displayName"), ("sid", "objectSid"),
                          ("ad_guid", "objectGUID")):
            out.note(at + (key,), file, rec, attr)
        out.note(at + ("vars", "email"), file, rec, "mail")
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
    """Add the workstations of ``records`` to ``out.hosts`` (Server editions go to ``out.servers``).

    A file none of whose records has a dNSHostName is not the computers export
    (the users one given to --computers, say): an error naming it, not 0 clients.
    """
    records = list(records)
    if file is not None and records and not any(_has(r, "dNSHostName", file) for r in records):
        users = any(_has(r, "msExchIMAddress", file) or _has(r, "sAMAccountName", file) for r in records)
        raise InputError(("is the users export (msExchIMAddress, no dNSHostName)" if users else
                          "has no computer with a dNSHostName") + ": give the export of the computer objects "
                         f"(ldifde -r \"{COMPUTER_FILTER}\" -l {','.join(COMPUTER_ATTRIBUTES)})",
                         file, records[0].line)
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
        out.note(("hosts", name), file, rec)
        out.note(("hosts", name, "address"), file, rec, "dNSHostName")
        for key, attr in (("ad_operating_system", "operatingSystem"),
                          ("ad_operating_system_version", "operatingSystemVersion"),
                          ("ad_operating_system_service_pack", "operatingSystemServicePack")):
            out.note(("hosts", name, "vars", key), file, rec, attr)
        facts = {k: rec.text(a, file) for k, a in (("ad_operating_system", "operatingSystem"),
                                                  ("ad_operating_system_version", "operatingSystemVersion"),
                                                  ("ad_operating_system_service_pack", "operatingSystemServicePack"))}
        facts = {k: v for k, v in facts.items() if v}
        if facts:
            host["vars"] = facts
        if "server" in os_name.lower():
            out.servers.append(name)
        out.hosts[name] = host
