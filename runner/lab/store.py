"""Lab storage: the lab directory, its hosts, their registry, files, services and journal.

Layout of a lab directory (documented for administrators; inspect with sqlite3):

- ``lab.json``: ``{"format": "lab/2", "seed", "domains", "hosts": {name:
  {"role": "client"|"exchange_im"|"lcs"|"member", "address": "127.x.y.z",
  "os": "Windows 2000 Professional"..., "env": {...}, ...}}, "faults": {...},
  "shares": {...}}``. A host's ``os`` decides what its cmd.exe and programs do
  (runner.lab.winver); a ``lab/1`` lab (written before) keeps the one model
  it was made with; a newer format is refused with a message.
- ``hosts/<name>/fs/<drive letter>/...``: the host's files, as real files.
  UNC paths ``\\\\server\\share\\rest`` live in ``shares/<server>/<share>/rest``.
- ``hosts/<name>/host.db`` (SQLite, WAL): HKLM (tables ``reg_key``,
  ``reg_value``), ``hive_mount`` (HKU mounts: name, hive file, in_use),
  ``service``, ``product`` (Windows Installer records), ``process`` (running
  programs), ``journal`` (mutating commands), ``counter`` (fault counters) and
  ``msi_pending`` (installs committed whose files are still being put in place).
- ``hosts/<name>/msi-staging/<txid>/``: files of an install in progress, and
  ``hosts/<name>/msi.lock``, the installer's lock (see ``LabHost.commit_install``).
- A user hive (``NTUSER.DAT`` in the profile folder) is a SQLite file with the
  same ``reg_key``/``reg_value`` tables (``PRAGMA application_id`` = 0x4C414248,
  "LABH"). Schema:
  ``reg_key(path_lc TEXT PRIMARY KEY, path TEXT, parent_lc TEXT)``, path relative
  to the hive root, ``\\``-separated, case preserved (``""`` is the root);
  ``reg_value(seq INTEGER PRIMARY KEY, key_lc, name_lc, name, type, data)``,
  ``type`` like ``REG_SZ``; ``data`` TEXT for REG_SZ/REG_EXPAND_SZ, INTEGER for
  REG_DWORD/REG_QWORD, JSON list TEXT for REG_MULTI_SZ, BLOB otherwise.

Concurrency: engine threads and served-lab processes share a lab. Each thread
has its own SQLite connections (WAL, busy_timeout 30 s, ``BEGIN IMMEDIATE``
for writes), at most ``MAX_THREAD_CONNECTIONS`` open (least recently used
closed), so file descriptors stay bounded however many hosts a run touches;
file writes are atomic renames.
"""
from __future__ import annotations

import codecs

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from runner.errors import InputError
from runner.lab.logon import check_unc
from runner.lab.winver import WindowsVersion, for_host
from runner.windows.regfile import RegData, RegKey, RegValue, type_number

LAB_FORMAT = "lab/2"
#: lab.json formats this version reads (``lab/1``: every host modelled as runner.lab.winver.LEGACY).
LAB_FORMATS = ("lab/1", "lab/2")
HIVE_APP_ID = 0x4C414248  # "LABH"
BUSY_TIMEOUT_MS = 30000

SCHEMA_HIVE = """
CREATE TABLE IF NOT EXISTS reg_key (path_lc TEXT PRIMARY KEY, path TEXT NOT NULL, parent_lc TEXT);
CREATE INDEX IF NOT EXISTS reg_key_parent ON reg_key(parent_lc);
CREATE TABLE IF NOT EXISTS reg_value (seq INTEGER PRIMARY KEY, key_lc TEXT NOT NULL,
  name_lc TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, data, UNIQUE(key_lc, name_lc));
INSERT OR IGNORE INTO reg_key VALUES ('', '', NULL);
"""
SCHEMA_HOST = SCHEMA_HIVE + """
CREATE TABLE IF NOT EXISTS hive_mount (name_lc TEXT PRIMARY KEY, name TEXT NOT NULL,
  file TEXT NOT NULL, in_use INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS service (name_lc TEXT PRIMARY KEY, name TEXT NOT NULL,
  display_name TEXT NOT NULL, type INTEGER NOT NULL DEFAULT 16, state TEXT NOT NULL,
  start_type TEXT NOT NULL, binary_path TEXT NOT NULL DEFAULT '', account TEXT NOT NULL DEFAULT 'LocalSystem',
  dependencies TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS product (code_lc TEXT PRIMARY KEY, code TEXT NOT NULL, name TEXT NOT NULL,
  version TEXT NOT NULL, publisher TEXT NOT NULL DEFAULT '', installed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS process (name_lc TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY, ts REAL NOT NULL, program TEXT NOT NULL,
  command TEXT NOT NULL, rc INTEGER);
CREATE INDEX IF NOT EXISTS journal_ts ON journal(ts);
CREATE TABLE IF NOT EXISTS counter (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS msi_pending (txid TEXT PRIMARY KEY, moves TEXT NOT NULL);
"""
_MSI_PENDING = "CREATE TABLE IF NOT EXISTS msi_pending (txid TEXT PRIMARY KEY, moves TEXT NOT NULL)"
MSI_STAGING = "msi-staging"

UNINSTALL_KEY = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall"
HIVE_SUFFIXES = ("-wal", "-shm", "-journal")


def lab_identity(lab_dir: Path) -> str | None:
    """What makes this lab itself, kept when its directory is moved: the sha256 (first 12
    hex digits) of the ``manifest.json`` written once when it was generated (a lab
    regenerated with ``--force`` is another estate). None when the directory holds no
    manifest (the caller then knows no more than the inventory says)."""
    try:
        data = (Path(lab_dir) / "manifest.json").read_bytes()
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest()[:12]


class LabError(Exception):
    """A lab operation that failed the way Windows would fail (base class)."""


class KeyNotFound(LabError):
    """Registry key or value does not exist (ERROR_FILE_NOT_FOUND)."""


class AccessDenied(LabError):
    """Windows' ERROR_ACCESS_DENIED (e.g. unloading a hive that is in use)."""


class SharingViolation(LabError):
    """ERROR_SHARING_VIOLATION: the file is in use (a hive already loaded)."""


class InvalidPath(LabError):
    """A Windows path or registry key name that Windows would reject."""


# -- registry paths -----------------------------------------------------------

ROOTS = {
    "HKLM": "HKLM", "HKEY_LOCAL_MACHINE": "HKLM",
    "HKU": "HKU", "HKEY_USERS": "HKU",
    "HKCU": "HKCU", "HKEY_CURRENT_USER": "HKCU",
    "HKCR": "HKCR", "HKEY_CLASSES_ROOT": "HKCR",
    "HKCC": "HKCC", "HKEY_CURRENT_CONFIG": "HKCC",
}
LONG_ROOT = {"HKLM": "HKEY_LOCAL_MACHINE", "HKU": "HKEY_USERS", "HKCU": "HKEY_CURRENT_USER",
             "HKCR": "HKEY_CLASSES_ROOT", "HKCC": "HKEY_CURRENT_CONFIG"}


def split_key(path: str) -> tuple[str, list[str]]:
    """``HKEY_USERS\\S-1\\Software`` -> ("HKU", ["S-1", "Software"]); InvalidPath if the root is unknown."""
    parts = [p for p in path.strip().strip("\\").split("\\")]
    if not parts or parts[0].upper() not in ROOTS:
        raise InvalidPath(f"invalid key name {path!r}")
    rest = [p for p in parts[1:] if p != ""]
    return ROOTS[parts[0].upper()], rest


def long_key(path: str) -> str:
    """The key path as reg.exe prints it: ``HKEY_LOCAL_MACHINE\\SOFTWARE\\...``."""
    root, parts = split_key(path)
    return "\\".join([LONG_ROOT[root], *parts])


def _store_data(type_: str, data: RegData) -> Any:
    n = type_number(type_)
    if n in (1, 2):
        return "" if data is None else str(data)
    if n in (4, 11):
        return int(data or 0)
    if n == 7:
        if isinstance(data, str):
            data = [data]
        return json.dumps(list(data or []), ensure_ascii=False)
    if isinstance(data, str):
        return data.encode("utf-16-le")
    return bytes(data or b"")


def _load_data(type_: str, stored: Any) -> RegData:
    n = type_number(type_)
    if n == 7:
        return list(json.loads(stored or "[]"))
    if n in (4, 11):
        return int(stored or 0)
    if n in (1, 2):
        return "" if stored is None else str(stored)
    return bytes(stored or b"")


# -- SQLite connections ---------------------------------------------------------

_local = threading.local()

#: Connections each thread keeps open at most (least recently used closed beyond it): a
#: thread that touches 10,000 hosts must not hold 10,000 databases (and their WAL and
#: shm files) open. Fewer when the open-file limit does not leave room for that many in
#: every thread (``thread_connection_cap``). Each costs about 160 KiB of native memory, so
#: 25 threads' full caches are about 250 MiB of a run's resident size; 16 a thread halved a
#: 300-client run's peak (397 -> 211 MiB) for 12 % more CPU (reconnecting).
MAX_THREAD_CONNECTIONS = 64
#: Page cache of each cached connection, in KiB (SQLite's own default is 2,000).
CACHE_KIB = 128
#: Descriptors one cached connection holds (the database, its WAL and its shm).
FDS_PER_CONNECTION = 3
#: Descriptors left for everything else (sockets, artifacts, the state store, hives loading).
FD_RESERVE = 256
_live_caches: set[int] = set()


def thread_connection_cap() -> int:
    """How many connections each thread may keep: MAX_THREAD_CONNECTIONS, or the share of the
    open-file limit each thread holding connections gets (at least 4), whichever is less."""
    from runner.oslimits import open_files_limit
    threads = max(1, len(_live_caches))
    share = (open_files_limit() - FD_RESERVE) // (FDS_PER_CONNECTION * threads)
    return max(4, min(MAX_THREAD_CONNECTIONS, share))


def _thread_cache() -> "OrderedDict[str, sqlite3.Connection]":
    cache = getattr(_local, "conns", None)
    if cache is None:
        cache = _local.conns = OrderedDict()
        key = id(cache)
        with _ended_lock:
            _live_caches.add(key)

        def close() -> None:
            _close_all(cache)
            with _ended_lock:
                _live_caches.discard(key)
        at_thread_end(close)
    return cache


def _close_all(cache: "OrderedDict[str, sqlite3.Connection]") -> None:
    for conn in cache.values():
        try:
            conn.close()
        except sqlite3.Error:
            pass
    cache.clear()


_ended_lock = threading.Lock()
_closers: list[tuple[threading.Thread, Callable[[], None]]] = []


def at_thread_end(close: Callable[[], None]) -> None:
    """Have :func:`close_ended_threads` call ``close`` once the calling thread has ended.

    A thread's cached connections are not closed when it ends: a sqlite3 connection
    sits in reference cycles (its statement cache), so it lingers until the garbage
    collector runs, which then closes (and checkpoints) hundreds of them at once in
    the middle of whatever runs next (a rerun's 0.2 s became 2 s after a 200-client run).
    """
    with _ended_lock:
        _closers.append((threading.current_thread(), close))


def close_ended_threads() -> int:
    """Close the lab connections of threads that have ended (the engine's workers after a
    run); returns how many threads' were closed."""
    with _ended_lock:
        ended = [c for t, c in _closers if not t.is_alive()]
        _closers[:] = [(t, c) for t, c in _closers if t.is_alive()]
    for close in ended:
        close()
    return len(ended)


def _evict(cache: "OrderedDict[str, sqlite3.Connection]") -> None:
    """Close least recently used connections until the cache is within the cap.
    A connection inside a transaction is kept (its ``write_tx`` is still open)."""
    excess = len(cache) - thread_connection_cap()
    if excess <= 0:
        return
    for key in list(cache):
        if excess <= 0:
            break
        conn = cache[key]
        if conn.in_transaction:
            continue
        del cache[key]
        excess -= 1
        try:
            conn.close()
        except sqlite3.Error:
            pass


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    """A per-thread cached connection in WAL mode with the schema applied.

    Each thread keeps at most MAX_THREAD_CONNECTIONS open, closing the least
    recently used; callers use a connection right away and do not keep it.
    """
    cache = _thread_cache()
    key = str(path)
    conn = cache.get(key)
    if conn is not None:
        cache.move_to_end(key)
        return conn
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # No fsync: a host's store must survive its process being killed (SQLite keeps a WAL
        # database whole through that whatever this setting), not a power cut of the machine
        # running the lab. Each connection closed last checkpoints its WAL, and with fsyncs
        # that was most of a new connection's cost (2.3 ms against 0.6 ms for open, read,
        # write, close), paid for every hive and host.db a 10,000-client run touches. Set
        # before the switch to WAL below: the lab writes its files born in WAL mode
        # (``wal_image``), but a file copied in from elsewhere is in rollback mode, and its
        # switch, once a file, took two fdatasyncs (1 ms each under load).
        conn.execute("PRAGMA synchronous=OFF")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        # A hive or host.db is a few hundred KiB read a key at a time: bound each connection's
        # page cache (SQLite's default is 2 MiB) so that 25 threads' 64 connections each can
        # never hold 3 GiB. (Measured, it was not what a connection costs today: about 160 KiB
        # each, SQLite's lookaside and the WAL index, is; see MAX_THREAD_CONNECTIONS.)
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        if conn.execute("PRAGMA user_version").fetchone()[0] != 1:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in schema.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA application_id={HIVE_APP_ID}")
                conn.execute("PRAGMA user_version=1")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except BaseException:
        conn.close()  # never leak the descriptor of a connection we do not cache
        raise
    cache[key] = conn
    _evict(cache)
    return conn


_depth: dict[int, int] = {}
_depth_lock = threading.Lock()

class WriteLock:
    """The lock writers of one shared SQLite file take around a write transaction: this
    process's threads queue on a thread lock, processes on an ``flock`` of ``FILE.writer``
    beside it. SQLite's own lock, waited for with ``busy_timeout``, polls with sleeps of up
    to 100 ms: with 25 engine threads writing one pool store, a 1,000-client run spent most
    of its LCS time asleep between polls, and the lab's worker processes (runner.lab.workers)
    and the served lab's sessions would do the same to each other. Both locks wake their
    next waiter as soon as they are free; the kernel drops an ``flock`` whose process died."""

    def __init__(self, path: str) -> None:
        self.path = path + ".writer"
        self._thread = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():   # a forked child opens its own
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._pid = os.getpid()
        return self._fd

    def acquire(self) -> None:
        self._thread.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None and self._pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()

    def __enter__(self) -> "WriteLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_write_locks: dict[str, WriteLock] = {}
_write_locks_guard = threading.Lock()


def process_write_lock(path: Path | str) -> WriteLock:
    """The :class:`WriteLock` of the SQLite file ``path`` (the lab's shared ``lcs.db`` and
    ``ad.db``), one per file in a process."""
    key = os.path.realpath(path)
    with _write_locks_guard:
        lock = _write_locks.get(key)
        if lock is None:
            lock = _write_locks[key] = WriteLock(key)
        return lock


@contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A nestable write transaction (``BEGIN IMMEDIATE`` at the outermost level)."""
    k = id(conn)
    d = _depth.get(k, 0)
    if d == 0 and not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
        _depth[k] = 1
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            _depth.pop(k, None)
            raise
        _depth.pop(k, None)
        conn.execute("COMMIT")
    else:
        _depth[k] = d + 1
        try:
            yield conn
        finally:
            _depth[k] = d


_batch = threading.local()


@contextmanager
def batch_scope() -> Iterator[None]:
    """While a batch file runs on this thread (the lab's ``cmd /c script.cmd``): a store may
    group the commits of its commands (``LcsStore``: one transaction for a chunk's script,
    each command in its own savepoint, committed at the end or every
    ``GROUP_COMMIT_SECONDS``). Nested batch files share the outermost scope."""
    depth = getattr(_batch, "depth", 0)
    if depth == 0:
        _batch.closers = []
    _batch.depth = depth + 1
    try:
        yield
    finally:
        _batch.depth = depth
        if depth == 0:
            closers, _batch.closers = _batch.closers, []
            for close in closers:
                close()


def in_batch() -> bool:
    """True inside :func:`batch_scope` on this thread."""
    return getattr(_batch, "depth", 0) > 0


def at_batch_end(close: Callable[[], None]) -> None:
    """Call ``close`` when this thread's outermost batch scope ends (a group commit)."""
    _batch.closers.append(close)


def close_thread_connections() -> None:
    """Close this thread's cached SQLite connections (tests, forks, unloads)."""
    for conn in (getattr(_local, "conns", None) or {}).values():
        try:
            conn.close()
        except sqlite3.Error:
            pass
    _local.conns = OrderedDict()


# -- hives ------------------------------------------------------------------------

class Hive:
    """One registry hive in a SQLite database (HKLM in host.db, or an NTUSER.DAT)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @staticmethod
    def _lc(parts: list[str]) -> str:
        return "\\".join(parts).lower()

    def find_key(self, parts: list[str]) -> str | None:
        """The stored (case-preserved) path of a key, or None."""
        row = self.conn.execute("SELECT path FROM reg_key WHERE path_lc=?", (self._lc(parts),)).fetchone()
        return None if row is None else row[0]

    def create_key(self, parts: list[str]) -> bool:
        """Create a key and its parents; True if it did not exist."""
        if self.find_key(parts) is not None:
            return False
        with write_tx(self.conn):
            path = ""
            for i, part in enumerate(parts):
                lc = self._lc(parts[: i + 1])
                row = self.conn.execute("SELECT path FROM reg_key WHERE path_lc=?", (lc,)).fetchone()
                if row is None:
                    newpath = part if not path else path + "\\" + part
                    self.conn.execute("INSERT INTO reg_key VALUES (?,?,?)", (lc, newpath, self._lc(parts[:i])))
                    path = newpath
                else:
                    path = row[0]
        return True

    def set_value(self, parts: list[str], name: str, type_: str, data: RegData) -> None:
        """Create or replace a value (keeps the stored case of an existing name)."""
        type_number(type_)
        with write_tx(self.conn):
            self.create_key(parts)
            klc = self._lc(parts)
            stored = _store_data(type_, data)
            cur = self.conn.execute("UPDATE reg_value SET type=?, data=? WHERE key_lc=? AND name_lc=?",
                                    (type_.upper(), stored, klc, name.lower()))
            if cur.rowcount == 0:
                self.conn.execute("INSERT INTO reg_value (key_lc, name_lc, name, type, data) VALUES (?,?,?,?,?)",
                                  (klc, name.lower(), name, type_.upper(), stored))

    def values(self, parts: list[str]) -> list[RegValue]:
        """The key's values in creation order."""
        rows = self.conn.execute("SELECT name, type, data FROM reg_value WHERE key_lc=? ORDER BY seq",
                                 (self._lc(parts),)).fetchall()
        return [RegValue(n, t, _load_data(t, d)) for n, t, d in rows]

    def get_value(self, parts: list[str], name: str) -> RegValue | None:
        row = self.conn.execute("SELECT name, type, data FROM reg_value WHERE key_lc=? AND name_lc=?",
                                (self._lc(parts), name.lower())).fetchone()
        return None if row is None else RegValue(row[0], row[1], _load_data(row[1], row[2]))

    def delete_value(self, parts: list[str], name: str) -> bool:
        with write_tx(self.conn):
            cur = self.conn.execute("DELETE FROM reg_value WHERE key_lc=? AND name_lc=?",
                                    (self._lc(parts), name.lower()))
        return cur.rowcount > 0

    def delete_values(self, parts: list[str]) -> int:
        with write_tx(self.conn):
            cur = self.conn.execute("DELETE FROM reg_value WHERE key_lc=?", (self._lc(parts),))
        return cur.rowcount

    def delete_key(self, parts: list[str]) -> bool:
        """Delete a key with all subkeys and values; the hive root only loses its contents."""
        lc = self._lc(parts)
        with write_tx(self.conn):
            if self.find_key(parts) is None:
                return False
            lo, hi = (lc + "\\", lc + "]") if lc else ("", "\uffff")
            self.conn.execute("DELETE FROM reg_value WHERE key_lc=? OR (key_lc>=? AND key_lc<?)", (lc, lo, hi))
            self.conn.execute("DELETE FROM reg_key WHERE (path_lc=? AND path_lc<>'') OR (path_lc>=? AND path_lc<?)",
                              (lc, lo, hi))
        return True

    def walk(self, parts: list[str]) -> list[tuple[str, list[RegValue]]] | None:
        """(stored path relative to the hive, values) of a key and all its subkeys, depth first,
        subkeys sorted as :meth:`subkeys` sorts them; None if the key does not exist.

        Two range queries for the whole tree (a ``reg query /s`` of a contact list read each
        key's values and subkeys apart: four statements a key). A subkey's path is its
        parent's followed by its own stored name, as walking key by key printed it."""
        top = self.find_key(parts)
        if top is None:
            return None
        lc = self._lc(parts)
        if lc:
            lo, hi = lc + "\\", lc + "]"
            keys = self.conn.execute("SELECT path, path_lc, parent_lc, rowid FROM reg_key "
                                     "WHERE path_lc>=? AND path_lc<?", (lo, hi)).fetchall()
            vals = self.conn.execute("SELECT key_lc, name, type, data FROM reg_value WHERE key_lc=? OR "
                                     "(key_lc>=? AND key_lc<?) ORDER BY seq", (lc, lo, hi)).fetchall()
        else:
            keys = self.conn.execute("SELECT path, path_lc, parent_lc, rowid FROM reg_key WHERE path_lc<>''").fetchall()
            vals = self.conn.execute("SELECT key_lc, name, type, data FROM reg_value ORDER BY seq").fetchall()
        children: dict[str, list[tuple[str, int, str]]] = {}
        for path, path_lc, parent_lc, rowid in keys:
            children.setdefault(parent_lc or "", []).append((path.rsplit("\\", 1)[-1], rowid, path_lc))
        by_key: dict[str, list[RegValue]] = {}
        for key_lc, n, t, d in vals:
            by_key.setdefault(key_lc, []).append(RegValue(n, t, _load_data(t, d)))
        out: list[tuple[str, list[RegValue]]] = []
        stack = [(top, lc)]
        while stack:
            path, path_lc = stack.pop()
            out.append((path, by_key.get(path_lc, [])))
            # as subkeys() sorts them: by upper-case name, names equal so in the order stored
            subs = sorted(children.get(path_lc, ()), key=lambda c: (c[0].upper(), c[1]))
            stack.extend(((path + "\\" + name) if path else name, sub_lc) for name, _, sub_lc in reversed(subs))
        return out

    def subkeys(self, parts: list[str]) -> list[str]:
        """Names of direct subkeys, sorted case-insensitively (as the registry keeps them)."""
        rows = self.conn.execute("SELECT path FROM reg_key WHERE parent_lc=?", (self._lc(parts),)).fetchall()
        names = [r[0].rsplit("\\", 1)[-1] for r in rows]
        return sorted(names, key=lambda s: s.upper())

    def bulk_load(self, items: list[tuple[str, list[tuple[str, str, RegData]]]]) -> None:
        """Insert many keys (relative paths) with values in one transaction (the fast path).

        Existing keys keep their stored case; new subkeys take the case given here.
        """
        keys: dict[str, tuple[str, str | None]] = {}
        vals: list[tuple[str, str, str, str, Any]] = []
        for path, values in items:
            parts = [p for p in path.split("\\") if p]
            for i in range(len(parts), 0, -1):
                lc = "\\".join(parts[:i]).lower()
                if lc in keys:
                    break
                keys[lc] = ("\\".join(parts[:i]), "\\".join(parts[: i - 1]).lower())
            klc = "\\".join(parts).lower()
            for name, type_, data in values:
                type_number(type_)
                vals.append((klc, name.lower(), name, type_.upper(), _store_data(type_, data)))
        with write_tx(self.conn):
            self.conn.executemany("INSERT OR IGNORE INTO reg_key VALUES (?,?,?)",
                                  [(lc, p, parent) for lc, (p, parent) in keys.items()])
            self.conn.executemany(
                "INSERT INTO reg_value (key_lc, name_lc, name, type, data) VALUES (?,?,?,?,?) "
                "ON CONFLICT(key_lc, name_lc) DO UPDATE SET type=excluded.type, data=excluded.data", vals)


_templates: dict[str, bytes] = {}


def _template(schema: str) -> bytes:
    """A serialized empty database with ``schema`` (built once per process)."""
    t = _templates.get(schema)
    if t is None:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        for stmt in schema.strip().split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA application_id={HIVE_APP_ID}")
        conn.execute("PRAGMA user_version=1")
        t = _templates[schema] = conn.serialize()
        conn.close()
    return t


def memory_db(schema: str) -> sqlite3.Connection:
    """An in-memory database with ``schema``, to be serialized to a file when built."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.deserialize(_template(schema))
    return conn


def wal_image(image: bytes) -> bytes:
    """A serialized database's bytes marked as a WAL database (header bytes 18 and 19 set to 2).

    Every lab file is opened in WAL mode (see ``_connect``). A file written in rollback mode,
    as ``serialize()`` gives it, was switched on its first open, which writes the header
    through a rollback journal: an exclusive lock, a journal file made and deleted, for each
    of the thousands of hives and host.db files a run opens. Marked here, the file is born
    in WAL mode; with no ``-wal`` file beside it SQLite reads it as it is. (On 400 generated
    hives, a first open with its read and close: 0.24 ms, against 0.31 ms switched.)
    """
    if len(image) >= 100 and image[:16] == b"SQLite format 3\x00" and image[18:20] == b"\x01\x01":
        return image[:18] + b"\x02\x02" + image[20:]
    return image


def write_db_file(conn: sqlite3.Connection, real_path: Path, *, atomic: bool = True) -> None:
    """Serialize an in-memory database to ``real_path`` atomically (or directly into a new,
    unshared lab), born in WAL mode."""
    image = wal_image(conn.serialize())
    if not atomic:
        with open(real_path, "wb") as f:
            f.write(image)
        return
    real_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = real_path.with_name(real_path.name + ".tmp%d.%d" % (os.getpid(), threading.get_ident()))
    tmp.write_bytes(image)
    os.replace(tmp, real_path)


def create_hive_file(real_path: Path, items: list[tuple[str, list[tuple[str, str, RegData]]]] = ()) -> None:
    """Write a new hive file (replacing any) built in memory: the bulk path.

    ``items``: (key path relative to the hive root, [(name, type, data)...]).
    """
    real_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = real_path.with_name(real_path.name + ".tmp%d.%d" % (os.getpid(), threading.get_ident()))
    tmp.write_bytes(hive_image(items))
    os.replace(tmp, real_path)


def hive_image(items: list[tuple[str, list[tuple[str, str, RegData]]]] = ()) -> bytes:
    """The bytes of a hive file holding ``items`` (built in memory; the generator writes them
    directly), born in WAL mode as every lab file is opened."""
    conn = memory_db(SCHEMA_HIVE)
    try:
        Hive(conn).bulk_load(list(items))
        return wal_image(conn.serialize())
    finally:
        conn.close()


# -- data classes -------------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    """A hive mounted under HKU: ``name`` (SID or temp name), Windows ``file``, ``in_use``."""

    name: str
    file: str
    in_use: bool


@dataclass(frozen=True)
class Service:
    """A Windows service as ``sc`` shows it."""

    name: str
    display_name: str
    type: int
    state: str          # RUNNING | STOPPED | ...
    start_type: str     # AUTO_START | DEMAND_START | DISABLED | BOOT_START | SYSTEM_START
    binary_path: str
    account: str
    dependencies: str


@dataclass(frozen=True)
class Product:
    """An installed Windows Installer product."""

    code: str
    name: str
    version: str
    publisher: str
    installed_at: float


@dataclass(frozen=True)
class JournalEntry:
    """One mutating command run on a host."""

    host: str
    ts: float
    program: str
    command: str
    rc: int | None


# -- registry facade --------------------------------------------------------------

class Registry:
    """The host's registry: HKLM in host.db, HKU\\<name> mapped to hive files by the mount table."""

    def __init__(self, host: "LabHost") -> None:
        self.host = host
        # mounted hive file (Windows path) -> its real file: resolving matches every folder's
        # name case-insensitively (a stat or a listing each), and every registry call on a
        # user's hive resolved it again; an entry is used while its file exists
        self._hive_files: dict[str, Path] = {}

    def _hive(self, path: str) -> tuple[Hive, list[str]]:
        hive, rel, _ = self._locate(path)
        return hive, rel

    def _locate(self, path: str) -> tuple[Hive, list[str], str]:
        """(hive, key path inside it, the hive root's long name: ``HKEY_LOCAL_MACHINE`` or
        ``HKEY_USERS\\<mount name as loaded>``), reading the mount table once."""
        root, parts = split_key(path)
        if root == "HKLM":
            return Hive(self.host.db()), parts, LONG_ROOT[root]
        if root == "HKU":
            if not parts:
                raise InvalidPath("HKU itself is not a hive")
            m = self.mount(parts[0])
            if m is None:
                raise KeyNotFound(path)
            real = self._hive_files.get(m.file)
            if real is None or not real.exists():
                real = self.host.fs.resolve(m.file)
                if not real.exists():
                    raise KeyNotFound(path)
                self._hive_files[m.file] = real
            return Hive(_connect(real, SCHEMA_HIVE)), parts[1:], LONG_ROOT[root] + "\\" + m.name
        raise KeyNotFound(f"{path}: only HKLM and HKU exist in the lab")

    def key_exists(self, path: str) -> bool:
        root, parts = split_key(path)
        if root == "HKU" and not parts:
            return True
        try:
            hive, rel = self._hive(path)
        except KeyNotFound:
            return False
        return hive.find_key(rel) is not None

    def key_path(self, path: str) -> str:
        """The case-preserved long form of an existing key (KeyNotFound otherwise)."""
        root, parts = split_key(path)
        if root == "HKU" and not parts:
            return "HKEY_USERS"
        hive, rel, prefix = self._locate(path)
        stored = hive.find_key(rel)
        if stored is None:
            raise KeyNotFound(path)
        return (prefix + "\\" + stored) if stored else prefix

    def create_key(self, path: str) -> bool:
        hive, rel = self._hive(path)
        return hive.create_key(rel)

    def set_value(self, path: str, name: str, type: str, data: RegData) -> None:
        hive, rel = self._hive(path)
        hive.set_value(rel, name, type, data)

    def get_value(self, path: str, name: str) -> RegValue | None:
        hive, rel = self._hive(path)
        return hive.get_value(rel, name)

    def values(self, path: str) -> list[RegValue]:
        hive, rel = self._hive(path)
        if hive.find_key(rel) is None:
            raise KeyNotFound(path)
        return hive.values(rel)

    def subkeys(self, path: str) -> list[str]:
        root, parts = split_key(path)
        if root == "HKU" and not parts:
            return sorted((m.name for m in self.mounts()), key=str.upper)
        hive, rel = self._hive(path)
        if hive.find_key(rel) is None:
            raise KeyNotFound(path)
        return hive.subkeys(rel)

    def delete_value(self, path: str, name: str) -> bool:
        hive, rel = self._hive(path)
        return hive.delete_value(rel, name)

    def delete_values(self, path: str) -> int:
        hive, rel = self._hive(path)
        if hive.find_key(rel) is None:
            raise KeyNotFound(path)
        return hive.delete_values(rel)

    def delete_key(self, path: str) -> bool:
        hive, rel = self._hive(path)
        return hive.delete_key(rel)

    def walk(self, path: str) -> Iterator[tuple[str, list[RegValue]]]:
        """Depth-first (key path, values) for a key and all its subkeys, long key names."""
        root, parts = split_key(path)
        if not (root == "HKU" and not parts):
            hive, rel, prefix = self._locate(path)
            tree = hive.walk(rel)
            if tree is None:
                raise KeyNotFound(path)
            for stored, vals in tree:
                yield (prefix + "\\" + stored) if stored else prefix, vals
            return
        top = self.key_path(path)
        stack = [top]
        while stack:
            p = stack.pop()
            yield p, self.values(p)
            stack.extend(reversed([p + "\\" + s for s in self.subkeys(p)]))

    def export_keys(self, path: str) -> list[RegKey]:
        """The key tree as RegKey sections for render_reg (reg export)."""
        return [RegKey(p, vals) for p, vals in self.walk(path)]

    def import_keys(self, keys: list[RegKey]) -> None:
        """Apply parsed .reg sections (creations, value sets, deletions)."""
        for k in keys:
            if k.delete:
                self.delete_key(k.path)
                continue
            hive, rel = self._hive(k.path)
            with write_tx(hive.conn):
                hive.create_key(rel)
                for v in k.values:
                    if v.delete:
                        hive.delete_value(rel, v.name)
                    else:
                        hive.set_value(rel, v.name, v.type, v.data)

    def bulk_set(self, path: str, values: list[tuple[str, str, RegData]]) -> None:
        """Set many values of one key in one transaction."""
        hive, rel = self._hive(path)
        hive.bulk_load([("\\".join(rel), values)])

    # hive mounts (reg load / reg unload)
    def mounts(self) -> list[Mount]:
        rows = self.host.db().execute("SELECT name, file, in_use FROM hive_mount ORDER BY name_lc").fetchall()
        return [Mount(n, f, bool(u)) for n, f, u in rows]

    def mount(self, name: str) -> Mount | None:
        row = self.host.db().execute("SELECT name, file, in_use FROM hive_mount WHERE name_lc=?",
                                     (name.lower(),)).fetchone()
        return None if row is None else Mount(row[0], row[1], bool(row[2]))

    def load_hive(self, name: str, file: str, *, in_use: bool = False, create: bool = False) -> None:
        """Mount the hive file ``file`` (Windows path) at ``HKU\\name``.

        Raises SharingViolation if that file is already mounted (a logged-on
        user's NTUSER.DAT, or loaded twice), AccessDenied if the name is taken,
        FileNotFoundError if the file does not exist (unless ``create``).
        """
        real = self.host.fs.resolve(file)
        if not real.is_file():
            if not create:
                raise FileNotFoundError(file)
            create_hive_file(real)
        db = self.host.db()
        with write_tx(db):
            if self.mount(name) is not None:
                raise AccessDenied(f"HKU\\{name} is already loaded")
            for m in self.mounts():
                if self.host.fs.resolve(m.file) == real:
                    raise SharingViolation(f"{file} is in use as HKU\\{m.name}")
            db.execute("INSERT INTO hive_mount VALUES (?,?,?,?)", (name.lower(), name, file, int(in_use)))

    def unload_hive(self, name: str) -> None:
        """Unmount ``HKU\\name``: KeyNotFound if not mounted, AccessDenied if in use."""
        db = self.host.db()
        with write_tx(db):
            m = self.mount(name)
            if m is None:
                raise KeyNotFound(f"HKU\\{name}")
            if m.in_use:
                raise AccessDenied(f"HKU\\{name} is in use")
            db.execute("DELETE FROM hive_mount WHERE name_lc=?", (name.lower(),))

    def set_in_use(self, name: str, in_use: bool) -> None:
        """Mark a mounted hive as in use (its user logged on) or not."""
        db = self.host.db()
        with write_tx(db):
            db.execute("UPDATE hive_mount SET in_use=? WHERE name_lc=?", (int(in_use), name.lower()))


# -- services, products, processes --------------------------------------------------

class Services:
    """The host's Windows services (``sc``)."""

    def __init__(self, host: "LabHost") -> None:
        self.host = host

    def add(self, name: str, display_name: str, *, state: str = "RUNNING", start_type: str = "AUTO_START",
            binary_path: str = "", account: str = "LocalSystem", type: int = 0x10,
            dependencies: str = "") -> None:
        db = self.host.db()
        with write_tx(db):
            db.execute("INSERT OR REPLACE INTO service VALUES (?,?,?,?,?,?,?,?,?)",
                       (name.lower(), name, display_name, type, state, start_type, binary_path, account,
                        dependencies))

    def get(self, name: str) -> Service | None:
        row = self.host.db().execute("SELECT name, display_name, type, state, start_type, binary_path, account, "
                                     "dependencies FROM service WHERE name_lc=?", (name.lower(),)).fetchone()
        return None if row is None else Service(*row)

    def list(self) -> list[Service]:
        rows = self.host.db().execute("SELECT name, display_name, type, state, start_type, binary_path, account, "
                                      "dependencies FROM service ORDER BY name_lc").fetchall()
        return [Service(*r) for r in rows]

    def set_state(self, name: str, state: str) -> None:
        db = self.host.db()
        with write_tx(db):
            db.execute("UPDATE service SET state=? WHERE name_lc=?", (state, name.lower()))

    def set_start_type(self, name: str, start_type: str) -> None:
        db = self.host.db()
        with write_tx(db):
            db.execute("UPDATE service SET start_type=? WHERE name_lc=?", (start_type, name.lower()))


class Products:
    """Windows Installer products of the host; ``add`` also writes the Uninstall key."""

    def __init__(self, host: "LabHost") -> None:
        self.host = host

    def add(self, code: str, name: str, version: str, publisher: str = "Microsoft Corporation",
            install_location: str = "") -> None:
        db = self.host.db()
        with write_tx(db):
            db.execute("INSERT OR REPLACE INTO product VALUES (?,?,?,?,?,?)",
                       (code.lower(), code, name, version, publisher, time.time()))
            key = UNINSTALL_KEY + "\\" + code
            self.host.registry.bulk_set(key, [
                ("DisplayName", "REG_SZ", name), ("DisplayVersion", "REG_SZ", version),
                ("Publisher", "REG_SZ", publisher), ("InstallLocation", "REG_SZ", install_location),
                ("UninstallString", "REG_EXPAND_SZ", f"MsiExec.exe /X{code}"),
                ("WindowsInstaller", "REG_DWORD", 1)])

    def remove(self, code: str) -> bool:
        db = self.host.db()
        with write_tx(db):
            cur = db.execute("DELETE FROM product WHERE code_lc=?", (code.lower(),))
            self.host.registry.delete_key(UNINSTALL_KEY + "\\" + code)
        return cur.rowcount > 0

    def get(self, code: str) -> Product | None:
        row = self.host.db().execute("SELECT code, name, version, publisher, installed_at FROM product "
                                     "WHERE code_lc=?", (code.lower(),)).fetchone()
        return None if row is None else Product(*row)

    def list(self) -> list[Product]:
        rows = self.host.db().execute("SELECT code, name, version, publisher, installed_at FROM product "
                                      "ORDER BY name").fetchall()
        return [Product(*r) for r in rows]


# -- the host ----------------------------------------------------------------

DEFAULT_ENV = {
    "SystemDrive": "C:",
    "SystemRoot": r"C:\WINDOWS",
    "windir": r"C:\WINDOWS",
    "ProgramFiles": r"C:\Program Files",
    "CommonProgramFiles": r"C:\Program Files\Common Files",
    "ALLUSERSPROFILE": r"C:\Documents and Settings\All Users",
    "USERPROFILE": r"C:\Documents and Settings\Administrator",
    "HOMEDRIVE": "C:",
    "HOMEPATH": r"\Documents and Settings\Administrator",
    "APPDATA": r"C:\Documents and Settings\Administrator\Application Data",
    "TEMP": r"C:\DOCUME~1\ADMINI~1\LOCALS~1\Temp",
    "TMP": r"C:\DOCUME~1\ADMINI~1\LOCALS~1\Temp",
    "USERNAME": "Administrator",
    "OS": "Windows_NT",
    "ComSpec": r"C:\WINDOWS\system32\cmd.exe",
    "PATHEXT": ".COM;.EXE;.BAT;.CMD;.VBS;.VBE;.JS;.JSE;.WSF;.WSH",
    "PATH": r"C:\WINDOWS\system32;C:\WINDOWS;C:\WINDOWS\System32\Wbem",
    "PROCESSOR_ARCHITECTURE": "x86",
    "NUMBER_OF_PROCESSORS": "1",
}


#: The OEM code page of a US-English Windows console, a lab host's unless its config says.
DEFAULT_CODEPAGE = "cp437"


def _known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


class LabHost:
    """One simulated Windows machine of a lab."""

    def __init__(self, lab: "Lab", name: str, config: dict[str, Any]) -> None:
        self.lab = lab
        self.name = name
        self.config = config
        self.dir = lab.path / "hosts" / name
        self.registry = Registry(self)
        self.fs = FileSystem(self)
        self.services = Services(self)
        self.products = Products(self)
        self._bulk_conn: sqlite3.Connection | None = None
        self._dir_made = False
        self._db_path = self.dir / "host.db"
        self._recovered = False
        self._recover_lock = threading.Lock()

    @property
    def role(self) -> str:
        return str(self.config.get("role", "client"))

    @property
    def windows(self) -> WindowsVersion:
        """The Windows version this host runs (its ``os``; runner.lab.winver)."""
        return for_host(self.config, self.lab.format)

    @property
    def codepage(self) -> str:
        """The console's OEM code page (its ``codepage``, default ``cp437``, US English), in
        which cmd.exe reads a batch file."""
        cp = self.config.get("codepage", DEFAULT_CODEPAGE)
        return cp if isinstance(cp, str) and _known_codec(cp) else DEFAULT_CODEPAGE

    def db(self) -> sqlite3.Connection:
        """This thread's connection to host.db (created with its schema on first use)."""
        if self._bulk_conn is not None:
            return self._bulk_conn
        if not self._dir_made:  # once per LabHost: this runs for every registry/service/journal access
            self.dir.mkdir(parents=True, exist_ok=True)
            self._dir_made = True
        return _connect(self._db_path, SCHEMA_HOST)

    @contextmanager
    def bulk(self, *, atomic: bool = True) -> Iterator["LabHost"]:
        """Generation mode for a host not yet created: host.db is built in memory, written at the end.

        Use from one thread; other threads do not see the host until the block ends.
        If host.db already exists this is just one transaction. ``atomic=False``
        (the generator, building a lab nobody uses yet, its folder made) skips
        the temporary file and rename.
        """
        path = self.dir / "host.db"
        if path.exists():
            with write_tx(self.db()):
                yield self
            return
        self._bulk_conn = memory_db(SCHEMA_HOST)
        try:
            yield self
            write_db_file(self._bulk_conn, path, atomic=atomic)
        finally:
            self._bulk_conn.close()
            self._bulk_conn = None

    # Windows Installer's all-or-nothing commit
    @contextmanager
    def installer_lock(self) -> Iterator[None]:
        """The host's installer lock (``msi.lock``, flock: released when the process dies)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "msi.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def commit_install(self, files: list[tuple[str, bytes]], register: Callable[[], None]) -> None:
        """Install ``files`` (Windows path, content) and ``register()`` the product, all or nothing.

        As Windows Installer does (it either commits the product, its Uninstall
        key and its files, or rolls back): the files are first written to
        ``msi-staging/<txid>/``; one host.db transaction runs ``register`` (product
        rows, registry) and records the staged files in ``msi_pending``; only then
        are they renamed into place and the record deleted. A process killed
        before that transaction leaves staged files that the next opening of the
        host deletes (rolled back); killed after it, the next opening renames the
        rest into place (rolled forward): see :meth:`recover_installs`. An error
        while staging raises it with ``windows_path`` set to the file concerned.
        """
        with self.installer_lock():
            self._recover_installs()
            txid = "%d-%s" % (os.getpid(), os.urandom(6).hex())
            stage = self.dir / MSI_STAGING / txid
            stage.mkdir(parents=True)
            moves: list[tuple[str, str]] = []
            try:
                for i, (path, data) in enumerate(files):
                    try:
                        real = self.fs.resolve(path)
                        if real.is_dir():
                            raise IsADirectoryError(path)
                        staged = stage / str(i)
                        with open(staged, "wb") as f:
                            f.write(data)
                    except (OSError, InvalidPath) as e:
                        e.windows_path = path  # type: ignore[attr-defined]
                        raise
                    moves.append((os.path.relpath(staged, self.lab.path), os.path.relpath(real, self.lab.path)))
                db = self.db()
                db.execute(_MSI_PENDING)
                with write_tx(db):
                    register()
                    db.execute("INSERT INTO msi_pending VALUES (?, ?)", (txid, json.dumps(moves)))
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            self._finish_install(txid, moves)

    def _finish_install(self, txid: str, moves: list[list[str]] | list[tuple[str, str]]) -> None:
        """Rename a committed install's staged files into place, then forget it."""
        for staged, target in moves:
            src, dst = self.lab.path / staged, self.lab.path / target
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
        self.db().execute("DELETE FROM msi_pending WHERE txid=?", (txid,))
        shutil.rmtree(self.dir / MSI_STAGING / txid, ignore_errors=True)

    def _recover_installs(self) -> int:
        """Roll committed installs forward and uncommitted ones back (installer lock held)."""
        root = self.dir / MSI_STAGING
        if not root.is_dir():
            return 0
        db = self.db()
        db.execute(_MSI_PENDING)
        pending = {t: json.loads(m) for t, m in db.execute("SELECT txid, moves FROM msi_pending")}
        n = 0
        for d in sorted(root.iterdir()):
            if d.name in pending:
                self._finish_install(d.name, pending.pop(d.name))
            else:
                shutil.rmtree(d, ignore_errors=True)
            n += 1
        for txid, moves in pending.items():
            self._finish_install(txid, moves)
        try:
            root.rmdir()
        except OSError:
            pass
        return n

    def recover_installs(self) -> int:
        """Complete or roll back installs a killed process left (see :meth:`commit_install`);
        returns how many were found. Cheap when there are none (one stat)."""
        if not (self.dir / MSI_STAGING).is_dir():
            return 0
        with self.installer_lock():
            return self._recover_installs()

    def ensure_recovered(self) -> None:
        """Run :meth:`recover_installs` once for this LabHost (what a machine does as it boots)."""
        if self._recovered:
            return
        with self._recover_lock:
            if not self._recovered:
                self.recover_installs()
                self._recovered = True

    def environment(self) -> dict[str, str]:
        """The environment cmd.exe starts with (DEFAULT_ENV, COMPUTERNAME, lab.json overrides)."""
        env = dict(DEFAULT_ENV)
        env.update(self.windows.environment())
        env["COMPUTERNAME"] = self.name.upper()
        env.update({str(k): str(v) for k, v in (self.config.get("env") or {}).items()})
        return env

    # journal
    def record(self, program: str, command: str, rc: int | None = None) -> None:
        """Append a mutating command to the host's journal."""
        db = self.db()
        with write_tx(db):
            db.execute("INSERT INTO journal (ts, program, command, rc) VALUES (?,?,?,?)",
                       (time.time(), program, command, rc))

    def journal(self, since: float | None = None) -> list[JournalEntry]:
        """Mutating commands run on this host, oldest first (optionally from ``since`` on)."""
        if not (self.dir / "host.db").exists():
            return []
        rows = self.db().execute("SELECT ts, program, command, rc FROM journal WHERE ts>=? ORDER BY id",
                                 (since or 0.0,)).fetchall()
        return [JournalEntry(self.name, *r) for r in rows]

    # processes
    def processes(self) -> set[str]:
        """Lower-case image names of running programs (e.g. ``msmsgs.exe``)."""
        return {r[0] for r in self.db().execute("SELECT name_lc FROM process")}

    def start_process(self, name: str) -> None:
        db = self.db()
        with write_tx(db):
            db.execute("INSERT OR IGNORE INTO process VALUES (?,?)", (name.lower(), name))

    def stop_process(self, name: str) -> None:
        db = self.db()
        with write_tx(db):
            db.execute("DELETE FROM process WHERE name_lc=?", (name.lower(),))

    def next_counter(self, kind: str) -> int:
        """Increment and return a persistent per-host counter (fault decisions)."""
        db = self.db()
        with write_tx(db):
            db.execute("INSERT INTO counter VALUES (?, 0) ON CONFLICT(kind) DO UPDATE SET n=n+1", (kind,))
            return int(db.execute("SELECT n FROM counter WHERE kind=?", (kind,)).fetchone()[0])

    # users
    def add_user_profile(self, sid: str, profile_dir: str, *, logged_on: bool = False,
                         items: list[tuple[str, list[tuple[str, str, RegData]]]] = ()) -> str:
        """Create a profile: ProfileList entry, ``NTUSER.DAT`` with ``items``, HKU\\<sid> if logged on.

        ``profile_dir`` like ``C:\\Documents and Settings\\alice``; returns the hive's Windows path.
        """
        hive_path = profile_dir.rstrip("\\") + "\\NTUSER.DAT"
        create_hive_file(self.fs.resolve(hive_path), list(items))
        rel = profile_dir
        sd = self.environment()["SystemDrive"]
        if rel.lower().startswith(sd.lower()):
            rel = "%SystemDrive%" + rel[len(sd):]
        self.registry.bulk_set(r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList" + "\\" + sid,
                               [("ProfileImagePath", "REG_EXPAND_SZ", rel), ("Flags", "REG_DWORD", 0),
                                ("State", "REG_DWORD", 0)])
        if logged_on:
            self.registry.load_hive(sid, hive_path, in_use=True)
        return hive_path


# -- the file system -----------------------------------------------------------

BAD_CHARS = set('<>:"|?*') | {chr(i) for i in range(32)}


class FileSystem:
    """Windows paths of one host mapped onto real files under ``hosts/<name>/fs``."""

    def __init__(self, host: LabHost) -> None:
        self.host = host
        self.root = host.dir / "fs"
        self.cwd = host.environment().get("USERPROFILE", "C:\\") if host.config is not None else "C:\\"

    def _components(self, path: str, cwd: str | None = None) -> tuple[Path, list[str]]:
        p = path.replace("/", "\\").strip()
        if not p:
            raise InvalidPath("empty path")
        if p.startswith("\\\\"):
            check_unc(p)  # a session without network credentials cannot open a share (runner.lab.logon)
            parts = [x for x in p[2:].split("\\") if x]
            if len(parts) < 2:
                raise InvalidPath(f"invalid UNC path {path!r}")
            base = self.host.lab.path / "shares"
        else:
            if len(p) >= 2 and p[1] == ":":
                drive, rest = p[0].upper(), p[2:]
                if not rest.startswith("\\"):
                    cw = cwd or self.cwd
                    rest = (cw[2:] if cw[:1].upper() == drive else "\\") + "\\" + rest
            elif p.startswith("\\"):
                cw = cwd or self.cwd
                drive, rest = (cw[0].upper() if cw[1:2] == ":" else "C"), p
            else:
                cw = cwd or self.cwd
                return self._components(cw.rstrip("\\") + "\\" + p)
            parts = [drive] + [x for x in rest.split("\\") if x]
            base = self.root
        out: list[str] = []
        for part in parts:
            if part == ".":
                continue
            if part == "..":
                if len(out) > (2 if p.startswith("\\\\") else 1):
                    out.pop()
                continue
            if any(c in BAD_CHARS for c in part):
                raise InvalidPath(f"The filename, directory name, or volume label syntax is incorrect: {path!r}")
            out.append(part.rstrip(" .") or part)
        return base, out

    def resolve(self, path: str, cwd: str | None = None) -> Path:
        """The real path for a Windows path, matching existing names case-insensitively."""
        base, parts = self._components(path, cwd)
        cur = base
        for i, part in enumerate(parts):
            cand = cur / part
            if not cand.exists() and cur.is_dir():
                low = part.lower()
                for entry in os.listdir(cur):
                    if entry.lower() == low:
                        cand = cur / entry
                        break
            cur = cand
        return cur

    def exists(self, path: str) -> bool:
        return self.resolve(path).exists()

    def is_dir(self, path: str) -> bool:
        return self.resolve(path).is_dir()

    def read(self, path: str) -> bytes:
        """File contents; FileNotFoundError / IsADirectoryError like open()."""
        return self.resolve(path).read_bytes()

    def write(self, path: str, data: bytes, *, append: bool = False, make_dirs: bool = True) -> None:
        """Write (atomically, by rename) or append; parents are created when ``make_dirs``."""
        real = self.resolve(path)
        if real.is_dir():
            raise IsADirectoryError(path)
        if make_dirs:
            real.parent.mkdir(parents=True, exist_ok=True)
        elif not real.parent.is_dir():
            raise FileNotFoundError(path)
        if append:
            with open(real, "ab") as f:
                f.write(data)
            return
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=".lab-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, real)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def delete(self, path: str) -> bool:
        real = self.resolve(path)
        if real.is_file():
            real.unlink()
            return True
        return False

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        self.resolve(path).mkdir(parents=parents, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted case-insensitively, hiding SQLite side files."""
        real = self.resolve(path)
        return sorted((n for n in os.listdir(real) if not n.endswith(HIVE_SUFFIXES) and not n.startswith(".lab-")),
                      key=str.lower)

    def file_version(self, path: str) -> str | None:
        """The FileVersion of a lab executable (see runner.lab.binaries), None if it has none."""
        from runner.lab.binaries import read_version_info
        info = read_version_info(self.read(path))
        return None if info is None else info.get("FileVersion")


# -- the lab ----------------------------------------------------------------------

def _checked_config(config: Any, file: str) -> dict[str, dict[str, Any]]:
    """The hosts of a parsed lab.json, after checking its shape (a hand-edited or hostile
    file must give a message naming the file and the entry, not a crash mid-run)."""
    if not isinstance(config, dict):
        raise InputError("lab.json must hold a JSON object", file)
    hosts = config.get("hosts") or {}
    if isinstance(hosts, list):
        if not all(isinstance(h, dict) and isinstance(h.get("name"), str) for h in hosts):
            raise InputError("lab.json: every entry of 'hosts' needs a 'name'", file)
        hosts = {h["name"]: h for h in hosts}
    if not isinstance(hosts, dict):
        raise InputError("lab.json: 'hosts' must be an object of host name -> settings", file)
    for name, hcfg in hosts.items():
        if not isinstance(hcfg, dict):
            raise InputError(f"lab.json: host {name!r}: settings must be an object, not {hcfg!r}", file)
    faults = config.get("faults") or {}
    if not isinstance(faults, dict):
        raise InputError("lab.json: 'faults' must be an object", file)
    scopes = [("global", faults.get("global") or {})]
    per_host = faults.get("hosts") or {}
    if not isinstance(per_host, dict):
        raise InputError("lab.json: 'faults.hosts' must be an object of host name -> rates", file)
    scopes += [(f"host {h!r}", r or {}) for h, r in per_host.items()]
    for where, rates in scopes:
        if not isinstance(rates, dict):
            raise InputError(f"lab.json: faults of {where} must be an object of kind -> rate", file)
        for kind, rate in rates.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise InputError(f"lab.json: fault rate {kind}={rate!r} of {where} must be a number "
                                 "from 0 to 1", file)
    return hosts


_openings = itertools.count(1)


class Lab:
    """A lab directory (see the module docstring for its layout)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()
        cfg = self.path / "lab.json"
        if not cfg.is_file():
            raise InputError(f"no lab at {self.path} (lab.json missing)", str(cfg))
        try:
            self.config: dict[str, Any] = json.loads(cfg.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"lab.json: {e.msg}", str(cfg), e.lineno, e.colno) from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read lab.json: {e}", str(cfg)) from None
        hosts = _checked_config(self.config, str(cfg))
        fmt = self.config.get("format", LAB_FORMAT)
        if fmt not in LAB_FORMATS:
            raise InputError(f"lab.json: format {fmt!r} is not one this runner reads ({', '.join(LAB_FORMATS)}); "
                             "it was written by another version: use that version, or regenerate the lab "
                             "with `runner lab init --force`", str(cfg))
        #: lab.json's format: ``lab/1`` labs keep the single Windows model they were made with
        self.format: str = str(fmt)
        self.hosts_config: dict[str, dict[str, Any]] = hosts
        self._by_lower = {n.lower(): n for n in hosts}
        self._hosts: dict[str, LabHost] = {}
        self._lock = threading.Lock()
        #: which opening of a lab this is in this process: the lab's worker processes
        #: (runner.lab.workers) reopen their own when it changes (lab.json read again)
        self.generation = next(_openings)

    @classmethod
    def create(cls, path: Path | str, config: dict[str, Any]) -> "Lab":
        """Create (or overwrite the config of) a lab directory; returns the opened Lab.

        ``config`` keys: ``seed``, ``domains``, ``hosts`` ({name: {role, address,
        env?}}), ``faults``, ``shares``; missing ones get defaults.
        """
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "hosts").mkdir(exist_ok=True)
        (p / "shares").mkdir(exist_ok=True)
        cfg = {"format": LAB_FORMAT, "seed": 0, "domains": {}, "hosts": {}, "shares": {},
               "faults": {"seed": 0, "global": {}, "hosts": {}}}
        cfg.update(config)
        tmp = p / ".lab.json.tmp"
        tmp.write_text(json.dumps(cfg, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, p / "lab.json")
        return cls(p)

    def host_names(self) -> list[str]:
        return list(self.hosts_config)

    def host(self, name: str) -> LabHost:
        """The LabHost for a host name (case-insensitive); KeyError if the lab has no such host."""
        real = self._by_lower.get(name.lower())
        if real is None:
            raise KeyError(f"lab has no host {name!r}")
        with self._lock:
            h = self._hosts.get(real)
            if h is None:
                h = LabHost(self, real, self.hosts_config[real])
                self._hosts[real] = h
        h.ensure_recovered()
        return h

    def recover(self) -> dict[str, int]:
        """Complete what killed processes left half done on every host: installs
        (LabHost.recover_installs) and LCS user changes whose AD side is owed
        (runner.lab.lcs.LcsStore.recover). Returns counts by kind."""
        from runner.lab.exchange import ad_path
        from runner.lab.lcs import LcsStore
        out = {"installs": 0, "lcs_users": 0}
        for name in self.hosts_config:
            h = self.host(name)
            out["installs"] += h.recover_installs()
            if h.role == "lcs" and (h.dir / "lcs.db").exists():
                with LcsStore(h.dir / "lcs.db", ad_path(self.path), recover=False) as store:
                    out["lcs_users"] += store.recover()
        return out

    def host_by_address(self, address: str) -> LabHost | None:
        for n, c in self.hosts_config.items():
            if c.get("address") == address:
                return self.host(n)
        return None

    def share_path(self, server: str, share: str) -> Path:
        """The real directory of the UNC share ``\\\\server\\share`` (created)."""
        p = self.path / "shares" / server / share
        p.mkdir(parents=True, exist_ok=True)
        return p

    def mutations_since(self, ts: float) -> list[JournalEntry]:
        """Every host's journal entries from ``ts`` on, oldest first."""
        out: list[JournalEntry] = []
        for n in self.hosts_config:
            if (self.path / "hosts" / n / "host.db").exists():
                out.extend(self.host(n).journal(since=ts))
        return sorted(out, key=lambda e: e.ts)
