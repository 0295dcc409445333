"""The Exchange 2000 IM side of the lab: the directory (AD) and the IM server.

AD lives in the lab's ``ad.db`` (SQLite, WAL), shared by every host (any
domain member can run ``ldifde``)::

    objects(dn TEXT PRIMARY KEY COLLATE NOCASE, rdn_parent TEXT COLLATE NOCASE, created REAL, modified REAL)
    attrs(seq INTEGER PRIMARY KEY, dn TEXT COLLATE NOCASE, name TEXT COLLATE NOCASE, value BLOB)
      -- one row per value; multi-valued attributes have several rows; TEXT for strings, BLOB for binary
      -- (objectGUID, objectSid), index on (name, value) for equality searches.

Users carry ``msExchIMAddress`` (``alice@im.contoso.com``),
``msExchIMPhysicalURL`` (``http://exim01.contoso.com/instmsg/aliases/alice``,
conv), ``msExchIMMetaPhysicalURL`` (``http://im.contoso.com/instmsg/aliases/alice``,
conv), ``msExchIMVirtualServer`` (DN of the IM virtual server) and
``msExchIMACL`` (conv, docs/permissions.md: one SDDL-shaped ACE per value,
``(A;;PRST;;;WD)``; absent for a user whose privacy settings were never
changed), plus the usual
``objectClass``, ``cn``, ``displayName``, ``sAMAccountName``, ``mail``,
``userPrincipalName``, ``objectGUID`` (16 bytes), ``objectSid`` text (conv).
When LCS enables a user, wmic writes ``msRTCSIP-PrimaryUserAddress``,
``msRTCSIP-UserEnabled``, ``msRTCSIP-PrimaryHomeServer`` and a ``sip:``
``proxyAddresses`` value here too, in the same transaction as the LCS
store's row (see :func:`write_rtc_attributes` and runner.lab.lcs).

The IM virtual server is the AD object
``CN=Default Instant Messaging Virtual Server,CN=RVP,CN=Protocols,CN=EXIM01,CN=Servers,...``
(objectClass ``protocolCfgIMVirtualServer``, conv); decommissioning removes
it with ``ldifde -i`` of a ``changetype: delete`` entry. The IM service is
registered on the Exchange host as ``IM_SERVICE`` (conv ``MSExchangeIM``,
display name "Microsoft Exchange Instant Messaging": public documentation
of its short name is thin; playbooks take it from the
``exchange_im_service`` variable).
"""
from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

IM_SERVICE = "MSExchangeIM"
IM_SERVICE_DISPLAY = "Microsoft Exchange Instant Messaging"
IM_ATTRIBUTES = ("msExchIMAddress", "msExchIMPhysicalURL", "msExchIMMetaPhysicalURL",
                 "msExchIMVirtualServer", "msExchIMACL")
BINARY_ATTRIBUTES = {"objectguid"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects(dn TEXT PRIMARY KEY COLLATE NOCASE, parent TEXT COLLATE NOCASE,
  created REAL NOT NULL, modified REAL NOT NULL);
CREATE TABLE IF NOT EXISTS attrs(seq INTEGER PRIMARY KEY, dn TEXT NOT NULL COLLATE NOCASE,
  name TEXT NOT NULL COLLATE NOCASE, value BLOB);
CREATE INDEX IF NOT EXISTS attrs_dn ON attrs(dn);
CREATE INDEX IF NOT EXISTS attrs_name_value ON attrs(name, value);
CREATE INDEX IF NOT EXISTS attrs_name_value_nocase ON attrs(name, value COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS objects_parent ON objects(parent);
"""


def ad_path(lab_path: Path) -> Path:
    """Where a lab keeps its directory."""
    return Path(lab_path) / "ad.db"


def parent_dn(dn: str) -> str:
    """``CN=a,CN=Users,DC=x`` -> ``CN=Users,DC=x`` (escaped commas respected)."""
    i = 0
    while i < len(dn):
        if dn[i] == "\\":
            i += 2
            continue
        if dn[i] == ",":
            return dn[i + 1:].strip()
        i += 1
    return ""


class LdapError(Exception):
    """An LDAP failure as ldifde reports it: result ``code``, its name and the server error."""

    NAMES = {16: "No Such Attribute", 20: "Attribute Or Value Exists", 32: "No Such Object",
             66: "Not Allowed On Non-Leaf", 68: "Already Exists", 21: "Invalid Attribute Syntax",
             19: "Constraint Violation", 53: "Unwilling To Perform"}
    SERVER = {16: "0x2054 The attribute cannot be removed because it is not present on the object.",
              32: "0x2030 There is no such object on the server.",
              20: "0x2083 The specified value already exists.",
              66: "0x2015 The directory service can perform the requested operation only on a leaf object.",
              68: "0x2071 An attempt was made to add an object to the directory with a name that is already in use."}

    def __init__(self, code: int) -> None:
        self.code = code
        self.name = self.NAMES.get(code, "Other")
        super().__init__(self.name)


class Directory:
    """The lab's AD: objects with multi-valued attributes in ``ad.db``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        new = not self.path.exists()
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._lock: Any = None   # this process's ad.db write lock while a transaction is open
        self.db.execute("PRAGMA busy_timeout=30000")
        # As lcs.db: a commit survives the process's kill (WAL), and no fsync a commit (the
        # default FULL synced ad.db's WAL at each of the enable's and the disable's commits)
        self.db.execute("PRAGMA synchronous=NORMAL")
        if new:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> "Directory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin(self) -> None:
        """Start a write transaction (callers end it with :meth:`commit` or :meth:`rollback`),
        queued behind this process's other ad.db writers (runner.lab.store.process_write_lock)."""
        from runner.lab.store import process_write_lock
        self._lock = process_write_lock(self.path)
        self._lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def commit(self) -> None:
        try:
            self.db.execute("COMMIT")
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        finally:
            self._release()

    def savepoint(self) -> None:
        """Mark a point inside the transaction that :meth:`rollback_to_savepoint` returns to."""
        self.db.execute("SAVEPOINT entry")

    def release_savepoint(self) -> None:
        self.db.execute("RELEASE entry")

    def rollback_to_savepoint(self) -> None:
        """Undo what followed the last :meth:`savepoint` (the transaction stays open)."""
        self.db.execute("ROLLBACK TO entry")
        self.db.execute("RELEASE entry")

    # -- reading --------------------------------------------------------
    def exists(self, dn: str) -> bool:
        return self.db.execute("SELECT 1 FROM objects WHERE dn=?", (dn,)).fetchone() is not None

    def canonical_dn(self, dn: str) -> str | None:
        row = self.db.execute("SELECT dn FROM objects WHERE dn=?", (dn,)).fetchone()
        return row[0] if row else None

    def attributes(self, dn: str) -> dict[str, list[Any]]:
        """All attributes of an object (first-seen attribute name case kept)."""
        out: dict[str, list[Any]] = {}
        names: dict[str, str] = {}
        for name, value in self.db.execute("SELECT name, value FROM attrs WHERE dn=? ORDER BY seq", (dn,)):
            key = names.setdefault(name.lower(), name)
            out.setdefault(key, []).append(value)
        return out

    def get(self, dn: str, attr: str) -> list[Any]:
        return [r[0] for r in self.db.execute("SELECT value FROM attrs WHERE dn=? AND +name=? ORDER BY seq",
                                              (dn, attr))]

    def dns_under(self, base: str, scope: str = "subtree") -> list[str]:
        """DNs in ``base``'s scope (``base``, ``onelevel``, ``subtree``), in creation order."""
        if scope == "base":
            d = self.canonical_dn(base)
            return [d] if d else []
        if scope == "onelevel":
            return [r[0] for r in self.db.execute("SELECT dn FROM objects WHERE parent=? ORDER BY rowid", (base,))]
        suffix = "," + base.lower()
        return [r[0] for r in self.db.execute("SELECT dn FROM objects ORDER BY rowid")
                if r[0].lower() == base.lower() or r[0].lower().endswith(suffix)]

    def find_equal(self, attr: str, value: str | bytes) -> list[str]:
        """DNs having ``attr=value`` (case-insensitive; bytes compare byte for byte), on the
        index ``attrs_name_value_nocase`` (without it, every value of ``attr`` in the directory
        was compared: an LDAP filter's equality cost O(users), labs made before it still do)."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT dn FROM attrs WHERE name=? AND value=? COLLATE NOCASE", (attr, value))]

    # -- writing (inside begin/commit) -------------------------------------
    def add(self, dn: str, attrs: Iterable[tuple[str, Any]]) -> None:
        """Add an object; LdapError(68) if it exists, LdapError(32) if its parent does not."""
        if self.exists(dn):
            raise LdapError(68)
        parent = parent_dn(dn)
        if parent and not self.exists(parent) and parent.upper().startswith(("CN=", "OU=")):
            raise LdapError(32)
        now = time.time()
        self.db.execute("INSERT INTO objects VALUES (?,?,?,?)", (dn, parent, now, now))
        self.db.executemany("INSERT INTO attrs (dn, name, value) VALUES (?,?,?)", [(dn, n, v) for n, v in attrs])

    def ensure_container(self, dn: str) -> None:
        """Create a container chain (``CN=...``/``OU=...``) down to ``dn`` when missing."""
        chain = []
        d = dn
        while d and d.upper().startswith(("CN=", "OU=")) and not self.exists(d):
            chain.append(d)
            d = parent_dn(d)
        for c in reversed(chain):
            rdn = c.split(",", 1)[0]
            cls = "organizationalUnit" if rdn.upper().startswith("OU=") else "container"
            now = time.time()
            self.db.execute("INSERT INTO objects VALUES (?,?,?,?)", (c, parent_dn(c), now, now))
            self.db.executemany("INSERT INTO attrs (dn, name, value) VALUES (?,?,?)",
                                [(c, "objectClass", "top"), (c, "objectClass", cls), (c, rdn[:2].lower(), rdn[3:])])

    def replace(self, dn: str, attr: str, values: list[Any]) -> None:
        self._need(dn)
        self.db.execute("DELETE FROM attrs WHERE dn=? AND +name=?", (dn, attr))
        self.db.executemany("INSERT INTO attrs (dn, name, value) VALUES (?,?,?)", [(dn, attr, v) for v in values])
        self._touch(dn)

    def add_values(self, dn: str, attr: str, values: list[Any]) -> None:
        self._need(dn)
        have = {str(v).lower() for v in self.get(dn, attr)}
        for v in values:
            if str(v).lower() in have:
                raise LdapError(20)
        self.db.executemany("INSERT INTO attrs (dn, name, value) VALUES (?,?,?)", [(dn, attr, v) for v in values])
        self._touch(dn)

    def delete_values(self, dn: str, attr: str, values: list[Any]) -> None:
        """Delete the attribute (no values given) or some values; LdapError(16) if absent."""
        self._need(dn)
        if not values:
            cur = self.db.execute("DELETE FROM attrs WHERE dn=? AND +name=?", (dn, attr))
            if cur.rowcount == 0:
                raise LdapError(16)
        else:
            for v in values:
                cur = self.db.execute("DELETE FROM attrs WHERE dn=? AND +name=? AND value=? COLLATE NOCASE",
                                      (dn, attr, v))
                if cur.rowcount == 0:
                    raise LdapError(16)
        self._touch(dn)

    def delete(self, dn: str) -> None:
        """Delete a leaf object; LdapError(66) when it has children, 32 when missing."""
        self._need(dn)
        if self.db.execute("SELECT 1 FROM objects WHERE parent=?", (dn,)).fetchone():
            raise LdapError(66)
        self.db.execute("DELETE FROM attrs WHERE dn=?", (dn,))
        self.db.execute("DELETE FROM objects WHERE dn=?", (dn,))

    def _need(self, dn: str) -> None:
        if not self.exists(dn):
            raise LdapError(32)

    def _touch(self, dn: str) -> None:
        self.db.execute("UPDATE objects SET modified=? WHERE dn=?", (time.time(), dn))


@dataclass(frozen=True)
class ImUser:
    """A user to create in AD, enabled for Exchange IM."""

    alias: str
    display_name: str
    guid: str
    sid: str
    im_domain: str
    smtp_domain: str
    acl: tuple[str, ...] = ()   # the msExchIMACL values (docs/permissions.md)


def server_dns(base_dn: str, server: str = "EXIM01") -> tuple[str, str]:
    """(Exchange server object DN, IM virtual server DN)."""
    srv = (f"CN={server},CN=Servers,CN=First Administrative Group,CN=Administrative Groups,"
           f"CN=Contoso,CN=Microsoft Exchange,CN=Services,CN=Configuration,{base_dn}")
    return srv, f"CN=Default Instant Messaging Virtual Server,CN=RVP,CN=Protocols,{srv}"


def user_dn(display_name: str, base_dn: str) -> str:
    """``CN=<display name>,CN=Users,<base>`` with RFC 4514 escaping of the RDN value."""
    v = "".join("\\" + c if c in ',+"\\<>;=#' else c for c in display_name)
    return f"CN={v},CN=Users,{base_dn}"


def install_server(lab: Any, host: Any, users: list[ImUser], *, base_dn: str,
                   fqdn_suffix: str | None = None) -> None:
    """Create the Exchange IM server: its service, the virtual server object and IM-enabled users."""
    host.services.add("W3SVC", "World Wide Web Publishing", state="RUNNING", start_type="AUTO_START",
                      binary_path=r"C:\WINNT\System32\inetsrv\inetinfo.exe")
    host.services.add(IM_SERVICE, IM_SERVICE_DISPLAY, state="RUNNING", start_type="AUTO_START",
                      binary_path=r"C:\Program Files\Exchsrvr\bin\imsrv.exe", dependencies="W3SVC")
    name = host.name.upper()
    suffix = fqdn_suffix or base_dn.replace("DC=", "").replace(",", ".")
    srv, vs = server_dns(base_dn, name)
    d = Directory(ad_path(lab.path))
    try:
        d.begin()
        if not d.exists(base_dn):
            d.add(base_dn, [("objectClass", "top"), ("objectClass", "domain"), ("objectClass", "domainDNS"),
                            ("dc", base_dn.split(",")[0][3:])])
        d.ensure_container(srv)
        d.ensure_container(parent_dn(vs))
        d.add(vs, [("objectClass", "top"), ("objectClass", "protocolCfgIMVirtualServer"),
                   ("cn", "Default Instant Messaging Virtual Server"), ("msExchServerBindings", ":80:"),
                   ("msExchIMHostName", f"{host.name}.{suffix}")])
        d.ensure_container(f"CN=Users,{base_dn}")
        seen: set[str] = set()
        objects: list[tuple[str, str, float, float]] = []
        attrs: list[tuple[str, str, Any]] = []
        users_dn, now = f"CN=Users,{base_dn}", time.time()
        for u in users:
            dn = user_dn(u.display_name, base_dn)
            if dn.lower() in seen:  # two people with the same name: AD needs distinct CNs
                dn = user_dn(f"{u.display_name} ({u.alias})", base_dn)
            seen.add(dn.lower())
            if d.exists(dn):
                raise LdapError(68)
            objects.append((dn, users_dn, now, now))
            attrs.extend((dn, n, v) for n, v in [
                ("objectClass", "top"), ("objectClass", "person"), ("objectClass", "organizationalPerson"),
                ("objectClass", "user"), ("cn", dn[3:].split(",CN=Users")[0]), ("displayName", u.display_name),
                ("sAMAccountName", u.alias), ("userPrincipalName", f"{u.alias}@{u.smtp_domain}"),
                ("mail", f"{u.alias}@{u.smtp_domain}"), ("proxyAddresses", f"SMTP:{u.alias}@{u.smtp_domain}"),
                ("objectGUID", uuid.UUID(u.guid.strip("{}")).bytes_le), ("objectSid", u.sid),
                ("msExchIMAddress", f"{u.alias}@{u.im_domain}"),
                ("msExchIMPhysicalURL", f"http://{host.name}.{suffix}/instmsg/aliases/{u.alias}"),
                ("msExchIMMetaPhysicalURL", f"http://{u.im_domain}/instmsg/aliases/{u.alias}"),
                ("msExchIMVirtualServer", vs), *(("msExchIMACL", a) for a in u.acl)])
        # one statement for all users (what d.add does per user): 16,000 users in ~1 s instead of ~4
        d.db.executemany("INSERT INTO objects VALUES (?,?,?,?)", objects)
        d.db.executemany("INSERT INTO attrs (dn, name, value) VALUES (?,?,?)", attrs)
        d.commit()
    finally:
        d.close()


def guid_dn(d: Directory, guid: str) -> str | None:
    """The DN of the user whose objectGUID is ``{guid}``."""
    raw = uuid.UUID(guid.strip("{}")).bytes_le
    row = d.db.execute("SELECT dn FROM attrs WHERE name='objectGUID' AND value=?", (raw,)).fetchone()
    return row[0] if row else None


RTC_ATTRIBUTES = ("msRTCSIP-PrimaryUserAddress", "msRTCSIP-UserEnabled", "msRTCSIP-PrimaryHomeServer")


def rtc_values(props: dict[str, Any]) -> list[tuple[str, Any]]:
    """The AD values an enabled MSFT_SIPESUserSetting implies: the three msRTCSIP-* attributes
    and a ``sip:`` proxyAddresses entry."""
    return [("msRTCSIP-PrimaryUserAddress", props["PrimaryURI"]),
            ("msRTCSIP-UserEnabled", "TRUE" if props.get("Enabled") else "FALSE"),
            ("msRTCSIP-PrimaryHomeServer", props["HomeServerDN"]),
            ("proxyAddresses", props["PrimaryURI"])]


def write_rtc_attributes(db: sqlite3.Connection, props: dict[str, Any], deleted: bool = False,
                         *, schema: str = "main") -> str | None:
    """Mirror an MSFT_SIPESUserSetting into AD's msRTCSIP-* attributes (as LCS does), inside the
    caller's transaction on ``db``, where the directory is the database ``schema`` (``ad`` when
    ad.db is attached to the LCS store's connection, so both change in one transaction).

    Idempotent: the attributes are replaced by what ``props`` says (removed when ``deleted``).
    Returns the DN written, None when no AD object has the user's DN or GUID.
    """
    dn = None
    if props.get("UserDN"):
        row = db.execute(f"SELECT dn FROM {schema}.objects WHERE dn=?", (str(props["UserDN"]),)).fetchone()
        dn = row[0] if row else None
    if dn is None and props.get("InstanceID"):
        try:
            raw = uuid.UUID(str(props["InstanceID"]).strip("{}")).bytes_le
        except ValueError:
            raw = None
        row = db.execute(f"SELECT dn FROM {schema}.attrs WHERE name='objectGUID' AND value=?",
                         (raw,)).fetchone() if raw else None
        dn = row[0] if row else None
    if dn is None:
        return None
    db.executemany(f"DELETE FROM {schema}.attrs WHERE dn=? AND +name=?", [(dn, a) for a in RTC_ATTRIBUTES])
    db.execute(f"DELETE FROM {schema}.attrs WHERE dn=? AND +name='proxyAddresses' AND value LIKE 'sip:%'", (dn,))
    if not deleted:
        db.executemany(f"INSERT INTO {schema}.attrs (dn, name, value) VALUES (?,?,?)",
                       [(dn, n, v) for n, v in rtc_values(props)])
    db.execute(f"UPDATE {schema}.objects SET modified=? WHERE dn=?", (time.time(), dn))
    return dn


def rtc_problems(attrs: dict[str, list[Any]], primary_uri: str, home_server_dn: str) -> list[str]:
    """What an LCS-enabled user's AD object lacks (empty when its msRTCSIP-* attributes and
    ``sip:`` proxy address say what the LCS setting says): the check of verify and of tests."""
    low = {k.lower(): [str(v) for v in vals] for k, vals in attrs.items()}
    out = []
    if [v.lower() for v in low.get("msrtcsip-primaryuseraddress", [])] != [primary_uri.lower()]:
        out.append("msRTCSIP-PrimaryUserAddress")
    if [v.upper() for v in low.get("msrtcsip-userenabled", [])] != ["TRUE"]:
        out.append("msRTCSIP-UserEnabled")
    if [v.lower() for v in low.get("msrtcsip-primaryhomeserver", [])] != [home_server_dn.lower()]:
        out.append("msRTCSIP-PrimaryHomeServer")
    if primary_uri.lower() not in [v.lower() for v in low.get("proxyaddresses", [])]:
        out.append("proxyAddresses " + primary_uri)
    return out


def im_users(d: Directory) -> Iterator[tuple[str, dict[str, list[Any]]]]:
    """Users that still carry an msExchIMAddress (Exchange IM enabled)."""
    for dn in sorted({r[0] for r in d.db.execute("SELECT dn FROM attrs WHERE name='msExchIMAddress'")}):
        yield dn, d.attributes(dn)
