"""The LCS 2005 pool store of the lab: a real SQLite database per pool server.

Lives at ``hosts/<lcs>/lcs.db`` (WAL, safe across processes). It holds what
the LCS WMI provider exposes (DOMAIN.md, "Contacts on LCS"); the emulated
``wmic`` reads and writes it through :class:`LcsStore`, which enforces the
keys and limits of the real classes and raises :class:`WmiError` with the
HRESULTs WMI returns (codes from the WBEMSTATUS enumeration, wbemcli.h).

Schema (inspect with ``sqlite3 hosts/lcs01/lcs.db``)::

    meta(name TEXT PRIMARY KEY, value TEXT)            -- schema_version, server_dn
    pool_settings(name TEXT PRIMARY KEY, value TEXT)   -- MSFT_SIPESEmSetting (keys Backend, InstanceID):
                                                       --   MaxContactsPerUser (default 150)
    users(                                             -- MSFT_SIPESUserSetting (+ the AD msRTCSIP-* it implies)
      instance_id TEXT PRIMARY KEY,        -- AD user GUID in braces, upper case: {0123...}
      user_dn TEXT NOT NULL,
      display_name TEXT,
      primary_uri TEXT NOT NULL UNIQUE COLLATE NOCASE,   -- msRTCSIP-PrimaryUserAddress, sip:alice@contoso.com
      enabled INTEGER NOT NULL,                          -- msRTCSIP-UserEnabled
      home_server_dn TEXT NOT NULL,                      -- msRTCSIP-PrimaryHomeServer
      target_server_dn TEXT,                             -- TargetServerDNIfMoving: msRTCSIP-TargetHomeServer (during a move)
      created TEXT NOT NULL, modified TEXT NOT NULL)
    contact_groups(                                    -- MSFT_SIPESUserContactGroupData
      user_instance_id TEXT REFERENCES users ON DELETE CASCADE,
      group_id INTEGER CHECK (group_id BETWEEN 1 AND 64),   -- assigned by the server
      name TEXT NOT NULL,                                   -- <= 128 characters
      external_url TEXT,
      PRIMARY KEY (user_instance_id, group_id))
    contacts(                                          -- MSFT_SIPESUserContactData
      user_instance_id TEXT REFERENCES users ON DELETE CASCADE,
      sip_uri TEXT NOT NULL COLLATE NOCASE,                 -- <= 454, not updatable
      name TEXT,                                            -- <= 256
      external_url TEXT,                                    -- <= 2048
      subscribed INTEGER NOT NULL,
      group_ids TEXT NOT NULL DEFAULT '',                   -- space separated ids (<= 64) of contact_groups
      PRIMARY KEY (user_instance_id, sip_uri))
    ad_sync(seq INTEGER PRIMARY KEY, instance_id TEXT, user_dn TEXT)  -- AD writes in flight (below)
    user_aces(                                         -- MSFT_SIPESUserACEData (allow and block lists)
      user_instance_id TEXT REFERENCES users ON DELETE CASCADE,
      type TEXT NOT NULL,                                   -- All, Domain or User
      mask TEXT NOT NULL DEFAULT '' COLLATE NOCASE,         -- '' (NULL) for All; FQDN/IP; SIP URI; <= 454
      presence TEXT NOT NULL, communication TEXT NOT NULL,  -- Allow or Deny
      PRIMARY KEY (user_instance_id, type, mask))

A user setting and the AD attributes it implies change together, as on a
real pool (LCS keeps them in AD): the store's connection for user changes
has the lab's ``ad.db`` attached (``ATTACH ... AS ad``), and one
transaction writes the ``users`` row, an ``ad_sync`` intent row and the
user's ``msRTCSIP-*`` / ``sip:`` proxyAddresses values; the intent is
deleted in a second, separate commit. SQLite keeps a multi-file
transaction atomic within each file but, in WAL mode, not across files if
the process dies inside the COMMIT (it writes the main database's WAL
first): an intent left behind is such a transaction, and
:meth:`LcsStore.recover` (run when the store is opened, and by
``runner lab verify``) writes AD again from the ``users`` row before
deleting it. So no reader sees an LCS user without its AD attributes, or
AD attributes of a change LCS never committed.

Limits enforced (doc unless marked): at most 64 groups per user, group ids
1..64 chosen by the server (a GroupID given on create is ignored); at most
``MaxContactsPerUser`` contacts per user (WBEM_E_QUOTA_VIOLATION beyond
it); ``SIPURI`` cannot be changed (WBEM_E_INVALID_PARAMETER) and must start
with ``sip:``; a contact's GroupID must name existing groups of the user;
PrimaryURI unique across the pool (WBEM_E_ALREADY_EXISTS); deleting a
group removes its id from the contacts (conv). An ACE (MSFT_SIPESUserACEData,
LCS 2005 SP1 SDK) needs a homed user, ``Type`` All/Domain/User, ``Presence``
and ``Communication`` Allow/Deny on creation (all case-insensitive); ``Mask``
is NULL for All, an FQDN or IP address for Domain, a SIP URI for User, at most
454 characters; its keys cannot be updated; a second ACE with the same keys is
WBEM_E_ALREADY_EXISTS.
"""
from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

SCHEMA_VERSION = 1
#: Longest a batch file's grouped changes hold the pool's write lock before they are committed.
GROUP_COMMIT_SECONDS = 0.25
DEFAULT_MAX_CONTACTS = 150
MAX_GROUPS = 64
MAX_GROUP_NAME = 128
MAX_SIPURI = 454
MAX_NAME = 256
MAX_EXTERNAL_URL = 2048

# HRESULTs (WBEMSTATUS, wbemcli.h) with the descriptions wmic prints.
WBEM_E_FAILED = 0x80041001
WBEM_E_NOT_FOUND = 0x80041002
WBEM_E_INVALID_PARAMETER = 0x80041008
WBEM_E_INVALID_CLASS = 0x80041010
WBEM_E_INVALID_QUERY = 0x80041017
WBEM_E_ALREADY_EXISTS = 0x80041019
WBEM_E_SERVER_TOO_BUSY = 0x80041045
WBEM_E_QUOTA_VIOLATION = 0x8004106C
WBEM_E_INVALID_NAMESPACE = 0x8004100E
RPC_S_SERVER_UNAVAILABLE = 0x800706BA

DESCRIPTIONS = {
    WBEM_E_FAILED: "Generic failure",
    WBEM_E_NOT_FOUND: "Not found",
    WBEM_E_INVALID_PARAMETER: "Invalid parameter",
    WBEM_E_INVALID_CLASS: "Invalid class",
    WBEM_E_INVALID_QUERY: "Invalid query",
    WBEM_E_ALREADY_EXISTS: "Already exists",
    WBEM_E_SERVER_TOO_BUSY: "Server is busy",
    WBEM_E_QUOTA_VIOLATION: "Quota violation",
    WBEM_E_INVALID_NAMESPACE: "Invalid namespace",
    RPC_S_SERVER_UNAVAILABLE: "The RPC server is unavailable.",
}


class WmiError(Exception):
    """A failed WMI operation: ``code`` is the HRESULT wmic reports."""

    def __init__(self, code: int, detail: str | None = None) -> None:
        self.code = code
        self.description = detail or DESCRIPTIONS.get(code, "Generic failure")
        super().__init__(f"0x{code:08X} {self.description}")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS pool_settings(name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS users(
  instance_id TEXT PRIMARY KEY,
  user_dn TEXT NOT NULL,
  display_name TEXT,
  primary_uri TEXT NOT NULL UNIQUE COLLATE NOCASE,
  enabled INTEGER NOT NULL,
  home_server_dn TEXT NOT NULL,
  target_server_dn TEXT,
  created TEXT NOT NULL,
  modified TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contact_groups(
  user_instance_id TEXT NOT NULL REFERENCES users(instance_id) ON DELETE CASCADE,
  group_id INTEGER NOT NULL CHECK (group_id BETWEEN 1 AND 64),
  name TEXT NOT NULL CHECK (length(name) <= 128),
  external_url TEXT,
  PRIMARY KEY (user_instance_id, group_id));
CREATE TABLE IF NOT EXISTS contacts(
  user_instance_id TEXT NOT NULL REFERENCES users(instance_id) ON DELETE CASCADE,
  sip_uri TEXT NOT NULL COLLATE NOCASE CHECK (length(sip_uri) <= 454),
  name TEXT CHECK (name IS NULL OR length(name) <= 256),
  external_url TEXT CHECK (external_url IS NULL OR length(external_url) <= 2048),
  subscribed INTEGER NOT NULL,
  group_ids TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (user_instance_id, sip_uri));
CREATE TABLE IF NOT EXISTS ad_sync(seq INTEGER PRIMARY KEY, instance_id TEXT NOT NULL, user_dn TEXT);
"""
_ACES = ("CREATE TABLE IF NOT EXISTS user_aces(user_instance_id TEXT NOT NULL REFERENCES users(instance_id) "
         "ON DELETE CASCADE, type TEXT NOT NULL, mask TEXT NOT NULL DEFAULT '' COLLATE NOCASE, "
         "presence TEXT NOT NULL, communication TEXT NOT NULL, PRIMARY KEY (user_instance_id, type, mask))")
ACE_TYPES = ("All", "Domain", "User")
ACE_ACTIONS = ("Allow", "Deny")
_AD_SYNC = "CREATE TABLE IF NOT EXISTS ad_sync(seq INTEGER PRIMARY KEY, instance_id TEXT NOT NULL, user_dn TEXT)"

# WMI class -> (key properties, all properties in MOF order)
CLASSES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "MSFT_SIPESUserSetting": (("InstanceID",), (
        "InstanceID", "UserDN", "DisplayName", "PrimaryURI", "Enabled",
        "HomeServerDN", "TargetServerDNIfMoving")),
    "MSFT_SIPESUserContactGroupData": (("GroupID", "UserInstanceID"), (
        "UserInstanceID", "GroupID", "Name", "ExternalURL")),
    "MSFT_SIPESUserContactData": (("SIPURI", "UserInstanceID"), (
        "UserInstanceID", "SIPURI", "Name", "ExternalURL", "Subscribed", "GroupID")),
    # keyed on Backend and InstanceID (LCS 2005 SP1 SDK, cc165059)
    "MSFT_SIPESEmSetting": (("Backend", "InstanceID"), ("Backend", "InstanceID", "MaxContactsPerUser")),
    "MSFT_SIPESUserACEData": (("Mask", "Type", "UserInstanceID"), (
        "UserInstanceID", "Type", "Mask", "Presence", "Communication")),
}


def canonical_class(name: str) -> str:
    """The class name as declared, looked up case-insensitively (WMI names are)."""
    for c in CLASSES:
        if c.lower() == name.lower():
            return c
    raise WmiError(WBEM_E_INVALID_CLASS)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _as_bool(v: Any, prop: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v != 0
    s = str(v).strip().upper()
    if s in ("TRUE", "1", "-1"):
        return True
    if s in ("FALSE", "0"):
        return False
    raise WmiError(WBEM_E_INVALID_PARAMETER, f"Invalid value for {prop}")


def _as_int(v: Any, prop: str) -> int:
    try:
        return int(str(v).strip())
    except ValueError as exc:
        raise WmiError(WBEM_E_INVALID_PARAMETER, f"Invalid value for {prop}") from exc


def _group_list(v: Any) -> list[int]:
    if v is None or v == "":
        return []
    items = v if isinstance(v, (list, tuple)) else [x for x in str(v).replace(",", " ").split()]
    return [_as_int(x, "GroupID") for x in items]


#: How long a pool store waits for another writer before the server says it is busy (ms);
#: ``RUNNER_LAB_LCS_BUSY_MS`` overrides it (tests of a store locked by another process).
LCS_BUSY_MS = 10000


def busy_ms() -> int:
    """The pool store's busy timeout in milliseconds (``RUNNER_LAB_LCS_BUSY_MS``, else LCS_BUSY_MS)."""
    raw = os.environ.get("RUNNER_LAB_LCS_BUSY_MS", "")
    return int(raw) if raw.isdigit() else LCS_BUSY_MS


def locked(exc: BaseException) -> bool:
    """An SQLite error saying another connection holds the database (``database is locked``,
    ``database table is locked``, SQLITE_BUSY): the pool server busy, not a broken store."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _strings(v: Any) -> bool:
    """A tuple of strings (the hint of an OR over one property), short enough for one SQL IN."""
    return isinstance(v, tuple) and 0 < len(v) <= 500 and all(isinstance(x, str) for x in v)


def normalise_guid(g: str) -> str:
    """``{0123abcd-...}`` -> upper case with braces (the key form WMI shows)."""
    g = str(g).strip()
    if not g.startswith("{"):
        g = "{" + g + "}"
    return g.upper()


def check_sip_uri(uri: str, *, prop: str = "SIPURI") -> None:
    """Refuse what LCS refuses: no ``sip:`` scheme, no user@domain, 0.0.0.0 or multicast hosts."""
    if not isinstance(uri, str) or not uri.lower().startswith("sip:") or len(uri) > MAX_SIPURI:
        raise WmiError(WBEM_E_INVALID_PARAMETER, f"Invalid {prop}")
    rest = uri[4:]
    user, at, domain = rest.rpartition("@")
    if not at or not user or not domain or any(c.isspace() for c in rest):
        raise WmiError(WBEM_E_INVALID_PARAMETER, f"Invalid {prop}")
    try:
        ip = ipaddress.ip_address(domain)
    except ValueError:
        return
    if ip.is_multicast or ip.is_unspecified:
        raise WmiError(WBEM_E_INVALID_PARAMETER, f"Invalid {prop}")


@dataclass
class Instance:
    """One WMI instance: class name and its properties (WMI names)."""

    cls: str
    props: dict[str, Any]

    def path(self, node: str, namespace: str = r"ROOT\CIMV2") -> str:
        """The WMI object path wmic prints for set/delete (keys in alphabetical order)."""
        keys = CLASSES[self.cls][0]
        parts = []
        for k in sorted(keys, key=str.lower):
            v = self.props.get(k)
            if v is None:
                parts.append(f"{k}=NULL")
            elif isinstance(v, str):
                parts.append(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"')
            else:
                parts.append(f"{k}={v}")
        return f"\\\\{node}\\{namespace}:{self.cls}.{','.join(parts)}"


class LcsStore:
    """The pool's SQLite store, with the semantics of the LCS WMI classes.

    ``directory``: the lab's ``ad.db``; when given (and present) every change of
    an MSFT_SIPESUserSetting writes the user's AD attributes in the same
    transaction (see the module docstring), and intents a killed process left
    are completed on opening.
    """

    def __init__(self, path: Path, directory: Path | None = None, *, recover: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(self.path)
        self._db = sqlite3.connect(self.path, timeout=busy_ms() / 1000, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(f"PRAGMA busy_timeout={busy_ms()}")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.directory = Path(directory) if directory is not None and Path(directory).exists() else None
        self._udb: sqlite3.Connection | None = None
        self._group_since = 0.0
        from runner.lab.store import process_write_lock
        self._lock = process_write_lock(self.path)   # lcs.db's writers in this process
        self._ad_lock = process_write_lock(self.directory) if self.directory is not None else None
        self._grouping = False   # a batch file's group transaction holds self._lock
        if self.directory is not None and recover:
            self.recover()

    # -- lifecycle -----------------------------------------------------
    @classmethod
    def initialise(cls, path: Path, *, server_dn: str, backend: str = r"(local)\rtc",
               max_contacts: int = DEFAULT_MAX_CONTACTS) -> "LcsStore":
        """Create an empty pool store (used by the generator)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db.execute(_ACES)
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("schema_version", str(SCHEMA_VERSION)), ("server_dn", server_dn), ("backend", backend)])
        db.execute("INSERT OR REPLACE INTO pool_settings VALUES ('MaxContactsPerUser', ?)", (str(max_contacts),))
        db.commit()
        db.close()
        return cls(path)

    def close(self) -> None:
        """Close the database connections."""
        self._db.close()
        if self._udb is not None:
            self._udb.close()
            self._udb = None

    def _user_db(self) -> sqlite3.Connection:
        """The connection for user-setting changes: lcs.db with ad.db attached as ``ad``.

        Separate from the main connection because ``BEGIN IMMEDIATE`` on it locks
        both files: contact imports must not wait for directory writers.
        """
        if self._udb is None:
            db = sqlite3.connect(self.path, timeout=busy_ms() / 1000, isolation_level=None)
            try:
                db.execute("PRAGMA foreign_keys=ON")
                db.execute(f"PRAGMA busy_timeout={busy_ms()}")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_AD_SYNC)
                db.execute("ATTACH DATABASE ? AS ad", (str(self.directory),))
            except BaseException:
                db.close()
                raise
            self._udb = db
        return self._udb

    @contextmanager
    def _user_tx(self, iid: str, user_dn: str | None) -> Iterator[sqlite3.Connection]:
        """One transaction over lcs.db and ad.db for a user-setting change, with its intent row.

        The body changes ``users``; on leaving, the AD attributes are rewritten
        from the row (inside the same transaction), then the intent is cleared.
        """
        if self.directory is None:
            with self._tx() as db:
                yield db
            return
        self._end_group()  # the user connection's BEGIN IMMEDIATE would wait for our own group
        db = self._user_db()
        assert self._ad_lock is not None
        with self._lock, self._ad_lock:   # always in this order (ad.db alone: runner.lab.exchange)
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = db.execute("INSERT INTO ad_sync (instance_id, user_dn) VALUES (?, ?)",
                                 (iid, user_dn)).lastrowid
                yield db
                self._sync_ad(db, iid, user_dn)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            db.execute("DELETE FROM ad_sync WHERE seq=?", (seq,))

    def _sync_ad(self, db: sqlite3.Connection, iid: str, user_dn: str | None) -> None:
        """Rewrite the user's AD attributes from the ``users`` row (removed when there is none)."""
        from runner.lab.exchange import write_rtc_attributes
        r = db.execute("SELECT * FROM main.users WHERE instance_id=?", (iid,)).fetchone()
        if r is not None:
            write_rtc_attributes(db, self._user_props(r), schema="ad")
        else:
            write_rtc_attributes(db, {"InstanceID": iid, "UserDN": user_dn}, deleted=True, schema="ad")

    def recover(self) -> int:
        """Complete the AD side of user changes whose commit a killed process left half
        done (intent rows); returns how many were completed."""
        if self.directory is None:
            return 0
        db = self._user_db()
        pending = db.execute("SELECT seq, instance_id, user_dn FROM ad_sync ORDER BY seq").fetchall()
        if not pending:
            return 0
        assert self._ad_lock is not None
        with self._lock, self._ad_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                for _seq, iid, dn in pending:
                    self._sync_ad(db, iid, dn)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            # only now (AD committed) may the intents go
            db.executemany("DELETE FROM ad_sync WHERE seq=?", [(p[0],) for p in pending])
        return len(pending)

    def __enter__(self) -> "LcsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A change of groups, contacts or pool settings, all or nothing. Inside a batch file
        (runner.lab.store.batch_scope: a chunk's script) the changes of its commands share
        one transaction, each command in its own savepoint (a failed one is undone alone),
        committed when the script ends or has held the pool's write lock for
        ``GROUP_COMMIT_SECONDS``: a kill mid-script loses the uncommitted commands whole,
        as if it had come before them, and the next run's probe finds them not done."""
        from runner.lab.store import at_batch_end, in_batch
        if not in_batch():
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                else:
                    self._db.execute("COMMIT")
            return
        if not self._grouping:
            self._lock.acquire()
            self._grouping = True
            try:
                if not self._db.in_transaction:
                    self._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._grouping = False
                self._lock.release()
                raise
            self._group_since = time.monotonic()
            at_batch_end(self._end_group)
        self._db.execute("SAVEPOINT command")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK TO command")
            self._db.execute("RELEASE command")
            raise
        self._db.execute("RELEASE command")
        if time.monotonic() - self._group_since >= GROUP_COMMIT_SECONDS:
            self._end_group()

    def _end_group(self) -> None:
        """Commit the batch file's grouped changes (see :meth:`_tx`) and let the process's other
        writers in."""
        if not self._grouping:
            return
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        finally:
            self._grouping = False
            self._lock.release()

    def meta(self, name: str) -> str | None:
        """A value of the meta table (``server_dn``, ``backend``, ``schema_version``)."""
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    @property
    def server_dn(self) -> str:
        """The distinguished name of this pool (what users' HomeServerDN must equal)."""
        return self.meta("server_dn") or ""

    @property
    def em_instance_id(self) -> str:
        """``MSFT_SIPESEmSetting.InstanceID``: the GUID of the pool's User Services settings
        (conv: derived from the pool's DN, so stores of any age have the same one)."""
        return "{" + str(uuid.uuid5(uuid.NAMESPACE_URL, "lcs-em-setting:" + self.server_dn.lower())).upper() + "}"

    @property
    def max_contacts(self) -> int:
        """``MSFT_SIPESEmSetting.MaxContactsPerUser``."""
        row = self._db.execute("SELECT value FROM pool_settings WHERE name='MaxContactsPerUser'").fetchone()
        return int(row[0]) if row else DEFAULT_MAX_CONTACTS

    # -- reading -------------------------------------------------------
    def instances(self, cls: str, hints: Mapping[str, Any] | None = None) -> list[Instance]:
        """Instances of a WMI class; ``hints`` (property=value, ANDed) narrow the SQL query.

        Hints are only an optimisation: the caller still evaluates its full
        where clause on the result.
        """
        cls = canonical_class(cls)
        hints = {k.lower(): v for k, v in (hints or {}).items()}
        if cls == "MSFT_SIPESEmSetting":
            return [Instance(cls, {"Backend": self.meta("backend"), "InstanceID": self.em_instance_id,
                                   "MaxContactsPerUser": self.max_contacts})]
        if cls == "MSFT_SIPESUserSetting":
            sql, args = "SELECT * FROM users", []
            conds = []
            if "instanceid" in hints and isinstance(hints["instanceid"], str):
                conds.append("instance_id = ?")
                args.append(normalise_guid(hints["instanceid"]))
            elif _strings(hints.get("instanceid")):
                conds.append(f"instance_id IN ({','.join('?' * len(hints['instanceid']))})")
                args.extend(normalise_guid(v) for v in hints["instanceid"])
            if "primaryuri" in hints and isinstance(hints["primaryuri"], str):
                conds.append("primary_uri = ?")
                args.append(hints["primaryuri"])
            if conds:
                sql += " WHERE " + " AND ".join(conds)
            rows = self._db.execute(sql + " ORDER BY rowid", args).fetchall()
            return [Instance(cls, self._user_props(r)) for r in rows]
        uid = hints.get("userinstanceid")
        where, args = "", []
        if isinstance(uid, str):
            where, args = " WHERE user_instance_id = ?", [normalise_guid(uid)]
        elif _strings(uid):
            where, args = f" WHERE user_instance_id IN ({','.join('?' * len(uid))})", [normalise_guid(u) for u in uid]
        if cls == "MSFT_SIPESUserACEData":
            self._ensure_aces()
            rows = self._db.execute(
                "SELECT user_instance_id, type, mask, presence, communication FROM user_aces"
                + where + " ORDER BY user_instance_id, rowid", args).fetchall()
            return [Instance(cls, {"UserInstanceID": r[0], "Type": r[1], "Mask": r[2] or None, "Presence": r[3],
                                   "Communication": r[4]}) for r in rows]
        if cls == "MSFT_SIPESUserContactGroupData":
            rows = self._db.execute(
                "SELECT user_instance_id, group_id, name, external_url FROM contact_groups"
                + where + " ORDER BY user_instance_id, group_id", args).fetchall()
            return [Instance(cls, {"UserInstanceID": r[0], "GroupID": r[1], "Name": r[2],
                                   "ExternalURL": r[3]}) for r in rows]
        rows = self._db.execute(
            "SELECT user_instance_id, sip_uri, name, external_url, subscribed, group_ids FROM contacts"
            + where + " ORDER BY user_instance_id, rowid", args).fetchall()
        return [Instance(cls, {"UserInstanceID": r[0], "SIPURI": r[1], "Name": r[2], "ExternalURL": r[3],
                               "Subscribed": bool(r[4]), "GroupID": [int(x) for x in r[5].split()]})
                for r in rows]

    @staticmethod
    def _user_props(r: tuple) -> dict[str, Any]:
        return {"InstanceID": r[0], "UserDN": r[1], "DisplayName": r[2], "PrimaryURI": r[3],
                "Enabled": bool(r[4]), "HomeServerDN": r[5], "TargetServerDNIfMoving": r[6]}

    def user(self, instance_id: str) -> dict[str, Any] | None:
        """The MSFT_SIPESUserSetting properties of one user, or None."""
        r = self._db.execute("SELECT * FROM users WHERE instance_id=?", (normalise_guid(instance_id),)).fetchone()
        return self._user_props(r) if r else None

    # -- writing -------------------------------------------------------
    def create(self, cls: str, props: Mapping[str, Any]) -> Instance:
        """Create an instance (``wmic path CLASS create ...``); returns it with server-set values."""
        cls = canonical_class(cls)
        p = {k.lower(): v for k, v in props.items()}
        self._check_props(cls, p)
        if cls == "MSFT_SIPESUserSetting":
            iid = normalise_guid(p["instanceid"]) if p.get("instanceid") else ""
            with self._user_tx(iid, p.get("userdn")) as db:
                return self._create_user(db, p)
        with self._tx() as db:
            if cls == "MSFT_SIPESUserContactGroupData":
                return self._create_group(db, p)
            if cls == "MSFT_SIPESUserContactData":
                return self._create_contact(db, p)
            if cls == "MSFT_SIPESUserACEData":
                return self._create_ace(db, p)
        raise WmiError(WBEM_E_FAILED, "Provider is not capable of the attempted operation")

    def update(self, inst: Instance, changes: Mapping[str, Any]) -> Instance:
        """Change properties of an existing instance (``wmic ... set``)."""
        cls = inst.cls
        c = {k.lower(): v for k, v in changes.items()}
        self._check_props(cls, c)
        keys = {k.lower() for k in CLASSES[cls][0]}
        for k in c:
            if k in keys and str(c[k]).lower() != str(inst.props[self._prop(cls, k)]).lower():
                raise WmiError(WBEM_E_INVALID_PARAMETER, f"{self._prop(cls, k)} cannot be updated")
        user_tx = self._user_tx(inst.props["InstanceID"], inst.props.get("UserDN")) \
            if cls == "MSFT_SIPESUserSetting" else self._tx()
        with user_tx as db:
            if cls == "MSFT_SIPESEmSetting":
                if "maxcontactsperuser" in c:
                    n = _as_int(c["maxcontactsperuser"], "MaxContactsPerUser")
                    if n < 1:
                        raise WmiError(WBEM_E_INVALID_PARAMETER, "Invalid value for MaxContactsPerUser")
                    db.execute("UPDATE pool_settings SET value=? WHERE name='MaxContactsPerUser'", (str(n),))
            elif cls == "MSFT_SIPESUserSetting":
                self._update_user(db, inst, c)
            elif cls == "MSFT_SIPESUserACEData":
                self._update_ace(db, inst, c)
            elif cls == "MSFT_SIPESUserContactGroupData":
                if "name" in c:
                    self._check_group_name(db, inst.props["UserInstanceID"], c["name"], inst.props["GroupID"])
                    db.execute("UPDATE contact_groups SET name=? WHERE user_instance_id=? AND group_id=?",
                               (c["name"], inst.props["UserInstanceID"], inst.props["GroupID"]))
                if "externalurl" in c:
                    db.execute("UPDATE contact_groups SET external_url=? WHERE user_instance_id=? AND group_id=?",
                               (c["externalurl"], inst.props["UserInstanceID"], inst.props["GroupID"]))
            else:
                self._update_contact(db, inst, c)
        fresh = self.instances(cls, {k: inst.props[k] for k in CLASSES[cls][0] if k != "Backend"})
        for f in fresh:
            if all(str(f.props[k]).lower() == str(inst.props[k]).lower() for k in CLASSES[cls][0]):
                return f
        return inst

    def delete(self, inst: Instance) -> None:
        """Delete an instance (``wmic ... delete``)."""
        p = inst.props
        tx = self._user_tx(p["InstanceID"], p.get("UserDN")) if inst.cls == "MSFT_SIPESUserSetting" else self._tx()
        with tx as db:
            if inst.cls == "MSFT_SIPESUserSetting":
                db.execute("DELETE FROM users WHERE instance_id=?", (p["InstanceID"],))
            elif inst.cls == "MSFT_SIPESUserContactGroupData":
                uid, gid = p["UserInstanceID"], int(p["GroupID"])
                db.execute("DELETE FROM contact_groups WHERE user_instance_id=? AND group_id=?", (uid, gid))
                for sip, ids in db.execute("SELECT sip_uri, group_ids FROM contacts WHERE user_instance_id=?",
                                           (uid,)).fetchall():
                    lst = [x for x in ids.split() if int(x) != gid]
                    if len(lst) != len(ids.split()):
                        db.execute("UPDATE contacts SET group_ids=? WHERE user_instance_id=? AND sip_uri=?",
                                   (" ".join(lst), uid, sip))
            elif inst.cls == "MSFT_SIPESUserContactData":
                db.execute("DELETE FROM contacts WHERE user_instance_id=? AND sip_uri=?",
                           (p["UserInstanceID"], p["SIPURI"]))
            elif inst.cls == "MSFT_SIPESUserACEData":
                db.execute("DELETE FROM user_aces WHERE user_instance_id=? AND type=? AND mask=?",
                           (p["UserInstanceID"], p["Type"], p["Mask"] or ""))
            else:
                raise WmiError(WBEM_E_FAILED, "Provider is not capable of the attempted operation")

    # -- helpers -------------------------------------------------------
    @staticmethod
    def _prop(cls: str, lower: str) -> str:
        for n in CLASSES[cls][1]:
            if n.lower() == lower:
                return n
        return lower

    @staticmethod
    def _check_props(cls: str, p: Mapping[str, Any]) -> None:
        known = {n.lower() for n in CLASSES[cls][1]}
        for k in p:
            if k not in known:
                raise WmiError(WBEM_E_NOT_FOUND, f"Property {k} not found")
        for k, limit in (("name", MAX_GROUP_NAME if cls.endswith("GroupData") else MAX_NAME),
                         ("externalurl", MAX_EXTERNAL_URL), ("sipuri", MAX_SIPURI)):
            v = p.get(k)
            if v is not None and len(str(v)) > limit:
                raise WmiError(WBEM_E_INVALID_PARAMETER, f"{LcsStore._prop(cls, k)} exceeds {limit} characters")

    def _require_user(self, db: sqlite3.Connection, uid: Any) -> str:
        if not uid:
            raise WmiError(WBEM_E_INVALID_PARAMETER, "UserInstanceID is required")
        uid = normalise_guid(uid)
        row = db.execute("SELECT home_server_dn FROM users WHERE instance_id=?", (uid,)).fetchone()
        if row is None:
            raise WmiError(WBEM_E_NOT_FOUND, "User not found")
        if self.server_dn and row[0].lower() != self.server_dn.lower():
            raise WmiError(WBEM_E_INVALID_PARAMETER, "User is not homed on this server")
        return uid

    def _create_user(self, db: sqlite3.Connection, p: dict[str, Any]) -> Instance:
        for req in ("instanceid", "userdn", "primaryuri", "homeserverdn"):
            if not p.get(req):
                raise WmiError(WBEM_E_INVALID_PARAMETER, f"{self._prop('MSFT_SIPESUserSetting', req)} is required")
        check_sip_uri(str(p["primaryuri"]), prop="PrimaryURI")
        uid = normalise_guid(p["instanceid"])
        if db.execute("SELECT 1 FROM users WHERE instance_id=? OR primary_uri=?",
                      (uid, p["primaryuri"])).fetchone():
            raise WmiError(WBEM_E_ALREADY_EXISTS)
        now = _now()
        enabled = _as_bool(p.get("enabled", True), "Enabled")
        db.execute("INSERT INTO users VALUES (?,?,?,?,?,?,?,?,?)", (
            uid, p["userdn"], p.get("displayname"), p["primaryuri"], int(enabled),
            p["homeserverdn"], p.get("targetserverdnifmoving"), now, now))
        r = db.execute("SELECT * FROM users WHERE instance_id=?", (uid,)).fetchone()
        return Instance("MSFT_SIPESUserSetting", self._user_props(r))

    def _update_user(self, db: sqlite3.Connection, inst: Instance, c: dict[str, Any]) -> None:
        cols = {"userdn": "user_dn", "displayname": "display_name", "primaryuri": "primary_uri",
                "enabled": "enabled", "homeserverdn": "home_server_dn",
                "targetserverdnifmoving": "target_server_dn"}
        sets, args = [], []
        for k, v in c.items():
            if k == "primaryuri":
                check_sip_uri(str(v), prop="PrimaryURI")
                clash = db.execute("SELECT 1 FROM users WHERE primary_uri=? AND instance_id<>?",
                                   (v, inst.props["InstanceID"])).fetchone()
                if clash:
                    raise WmiError(WBEM_E_ALREADY_EXISTS)
            if k == "enabled":
                v = int(_as_bool(v, "Enabled"))
            sets.append(f"{cols[k]}=?")
            args.append(v)
        if sets:
            db.execute(f"UPDATE users SET {', '.join(sets)}, modified=? WHERE instance_id=?",
                       args + [_now(), inst.props["InstanceID"]])

    def _check_group_name(self, db: sqlite3.Connection, uid: str, name: Any, own: int | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise WmiError(WBEM_E_INVALID_PARAMETER, "Name is required")
        clash = db.execute("SELECT group_id FROM contact_groups WHERE user_instance_id=? AND name=?",
                           (uid, name)).fetchone()
        if clash and clash[0] != own:
            raise WmiError(WBEM_E_ALREADY_EXISTS)

    def _create_group(self, db: sqlite3.Connection, p: dict[str, Any]) -> Instance:
        uid = self._require_user(db, p.get("userinstanceid"))
        self._check_group_name(db, uid, p.get("name"))
        used = {r[0] for r in db.execute("SELECT group_id FROM contact_groups WHERE user_instance_id=?", (uid,))}
        free = [i for i in range(1, MAX_GROUPS + 1) if i not in used]
        if not free:
            raise WmiError(WBEM_E_QUOTA_VIOLATION, f"User already has {MAX_GROUPS} contact groups")
        gid = free[0]
        db.execute("INSERT INTO contact_groups VALUES (?,?,?,?)", (uid, gid, p["name"], p.get("externalurl")))
        return Instance("MSFT_SIPESUserContactGroupData",
                        {"UserInstanceID": uid, "GroupID": gid, "Name": p["name"], "ExternalURL": p.get("externalurl")})

    def _check_groups(self, db: sqlite3.Connection, uid: str, ids: list[int]) -> None:
        if len(ids) > MAX_GROUPS:
            raise WmiError(WBEM_E_INVALID_PARAMETER, f"GroupID holds more than {MAX_GROUPS} entries")
        if ids:
            have = {r[0] for r in db.execute("SELECT group_id FROM contact_groups WHERE user_instance_id=?", (uid,))}
            if any(i not in have for i in ids):
                raise WmiError(WBEM_E_INVALID_PARAMETER, "GroupID names a group that does not exist")

    def _create_contact(self, db: sqlite3.Connection, p: dict[str, Any]) -> Instance:
        uid = self._require_user(db, p.get("userinstanceid"))
        sip = p.get("sipuri")
        if not isinstance(sip, str) or not sip.lower().startswith("sip:"):
            raise WmiError(WBEM_E_INVALID_PARAMETER, "Invalid SIPURI")
        if "subscribed" not in p:
            raise WmiError(WBEM_E_INVALID_PARAMETER, "Subscribed is required")
        subscribed = _as_bool(p["subscribed"], "Subscribed")
        ids = _group_list(p.get("groupid"))
        self._check_groups(db, uid, ids)
        if db.execute("SELECT 1 FROM contacts WHERE user_instance_id=? AND sip_uri=?", (uid, sip)).fetchone():
            raise WmiError(WBEM_E_ALREADY_EXISTS)
        n = db.execute("SELECT count(*) FROM contacts WHERE user_instance_id=?", (uid,)).fetchone()[0]
        if n >= self.max_contacts:
            raise WmiError(WBEM_E_QUOTA_VIOLATION,
                           f"The user already has the maximum number of contacts ({self.max_contacts})")
        db.execute("INSERT INTO contacts VALUES (?,?,?,?,?,?)",
                   (uid, sip, p.get("name"), p.get("externalurl"), int(subscribed), " ".join(map(str, ids))))
        return Instance("MSFT_SIPESUserContactData", {
            "UserInstanceID": uid, "SIPURI": sip, "Name": p.get("name"), "ExternalURL": p.get("externalurl"),
            "Subscribed": subscribed, "GroupID": ids})

    def _ensure_aces(self) -> None:
        """The ACE table, created in a store made before it existed (labs of earlier versions)."""
        if not getattr(self, "_aces_ready", False):
            self._db.execute(_ACES)
            self._aces_ready = True

    @staticmethod
    def _choice(value: Any, allowed: tuple[str, ...], prop: str) -> str:
        """``value`` as one of ``allowed`` (case-insensitive, as LCS reads them), else Invalid parameter."""
        for a in allowed:
            if isinstance(value, str) and value.strip().lower() == a.lower():
                return a
        if value is None or value == "":
            raise WmiError(WBEM_E_INVALID_PARAMETER, f"{prop} is required")
        raise WmiError(WBEM_E_INVALID_PARAMETER, f"Invalid value for {prop}")

    @staticmethod
    def _ace_mask(typ: str, mask: Any) -> str:
        """The Mask LCS accepts for an ACE of ``typ``: NULL for All, an FQDN or IP address for
        Domain, a SIP URI for User (doc: MSFT_SIPESUserACEData); '' stands for NULL."""
        m = "" if mask is None else str(mask)
        if len(m) > MAX_SIPURI:
            raise WmiError(WBEM_E_INVALID_PARAMETER, f"Mask exceeds {MAX_SIPURI} characters")
        if typ == "All":
            if m:
                raise WmiError(WBEM_E_INVALID_PARAMETER, "Mask must be NULL when Type is All")
            return ""
        if not m:
            raise WmiError(WBEM_E_INVALID_PARAMETER, f"Mask is required when Type is {typ}")
        if typ == "User":
            check_sip_uri(m, prop="Mask")
            return m
        try:
            ipaddress.ip_address(m)
            return m
        except ValueError:
            pass
        labels = m.rstrip(".").split(".")
        if len(labels) < 2 or not all(re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", lb)
                                      for lb in labels):
            raise WmiError(WBEM_E_INVALID_PARAMETER, "Invalid Mask")
        return m

    def _create_ace(self, db: sqlite3.Connection, p: dict[str, Any]) -> Instance:
        self._ensure_aces()
        uid = self._require_user(db, p.get("userinstanceid"))
        typ = self._choice(p.get("type"), ACE_TYPES, "Type")
        mask = self._ace_mask(typ, p.get("mask"))
        presence = self._choice(p.get("presence"), ACE_ACTIONS, "Presence")
        communication = self._choice(p.get("communication"), ACE_ACTIONS, "Communication")
        if db.execute("SELECT 1 FROM user_aces WHERE user_instance_id=? AND type=? AND mask=?",
                      (uid, typ, mask)).fetchone():
            raise WmiError(WBEM_E_ALREADY_EXISTS)
        db.execute("INSERT INTO user_aces VALUES (?,?,?,?,?)", (uid, typ, mask, presence, communication))
        return Instance("MSFT_SIPESUserACEData", {"UserInstanceID": uid, "Type": typ, "Mask": mask or None,
                                                  "Presence": presence, "Communication": communication})

    def _update_ace(self, db: sqlite3.Connection, inst: Instance, c: dict[str, Any]) -> None:
        uid = self._require_user(db, inst.props["UserInstanceID"])
        for k, col in (("presence", "presence"), ("communication", "communication")):
            if k in c:
                db.execute(f"UPDATE user_aces SET {col}=? WHERE user_instance_id=? AND type=? AND mask=?",
                           (self._choice(c[k], ACE_ACTIONS, self._prop(inst.cls, k)), uid, inst.props["Type"],
                            inst.props["Mask"] or ""))

    def _update_contact(self, db: sqlite3.Connection, inst: Instance, c: dict[str, Any]) -> None:
        uid, sip = inst.props["UserInstanceID"], inst.props["SIPURI"]
        self._require_user(db, uid)
        if "groupid" in c:
            ids = _group_list(c["groupid"])
            self._check_groups(db, uid, ids)
            db.execute("UPDATE contacts SET group_ids=? WHERE user_instance_id=? AND sip_uri=?",
                       (" ".join(map(str, ids)), uid, sip))
        for k, col in (("name", "name"), ("externalurl", "external_url")):
            if k in c:
                db.execute(f"UPDATE contacts SET {col}=? WHERE user_instance_id=? AND sip_uri=?", (c[k], uid, sip))
        if "subscribed" in c:
            db.execute("UPDATE contacts SET subscribed=? WHERE user_instance_id=? AND sip_uri=?",
                       (int(_as_bool(c["subscribed"], "Subscribed")), uid, sip))
