"""The checkpoint store: runs, task outcomes, artifacts and facts in SQLite (WAL).

One writer thread owns the write connection and commits queued writes in
grouped transactions (every ~200 ms, or at once when someone calls
``flush()``), so the hot path never waits for an fsync. The engine flushes
before a dependent task starts (between steps, at wave gates) and at exit.
WAL mode means a SIGKILL at any moment leaves a database the next run opens:
at worst the last group of outcomes is lost, which only costs a re-probe.

A state directory belongs to ONE estate (runner.estate): ``bind_estate``
records it on the first apply and refuses any other before anything runs.
A run is identified by the estate + the playbook's file name, so moving or
renaming the inventory, or the repository, resumes the same run; a new
``apply`` resumes the latest run with that identity unless ``fresh``. User
records are keyed by the user's AD GUID (``subject``), not the alias.

A store that exists is never re-created over: a state.db that is empty, not
a store, missing a table, or that records no run while ``artifacts/`` holds
exports is refused (StoreDamagedError, exit 1) with what to do. A new store
is created whole (schema written to a temporary file, then renamed). A row
whose JSON cannot be decoded is named (DamagedRecord) instead of crashing.

A lock file (``fcntl.flock``) refuses a second concurrent run on the same
state directory.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from runner.errors import DamagedRecord, RunnerError, StateEstateError, StateLockedError, StoreDamagedError
from runner.estate import Estate, describe_estates, playbook_name
from runner.events import DONE_STATUSES, ROLLBACK_MODULES, TASK_END, Event, TaskOutcome

DB_NAME = "state.db"
LOCK_NAME = "lock"
ARTIFACTS_DIR = "artifacts"
FLUSH_INTERVAL = 0.2
SCHEMA_VERSION = 2
REQUIRED_TABLES = ("runs", "tasks", "artifacts", "facts")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    playbook TEXT NOT NULL,
    playbook_sha TEXT,
    inventory TEXT NOT NULL,
    inventory_sha TEXT,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,
    command TEXT,
    sessions INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS runs_identity ON runs(identity, started);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    play_index INTEGER,
    step TEXT NOT NULL,
    module TEXT NOT NULL,
    kind TEXT,
    target TEXT NOT NULL,
    wave TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    ended REAL,
    duration REAL,
    result TEXT,
    fingerprint TEXT,
    message TEXT,
    traceback TEXT,
    seq INTEGER NOT NULL DEFAULT 0,
    subject TEXT,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS tasks_module_target ON tasks(module, target);
CREATE INDEX IF NOT EXISTS tasks_module_subject ON tasks(module, subject);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    task_key TEXT,
    run_id TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_name ON artifacts(name, id);
CREATE TABLE IF NOT EXISTS facts (
    host TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    run_id TEXT,
    updated REAL NOT NULL
);
"""


@dataclass(frozen=True)
class RunInfo:
    """A run as the store remembers it."""

    id: str
    identity: str
    playbook: str
    inventory: str
    started: float
    ended: float | None
    status: str
    command: str | None
    sessions: int = 1
    resumed: bool = False


@dataclass(frozen=True)
class TaskRecord:
    """A finished task (the read-only view steps get from ``ctx.previous``)."""

    step: str
    module: str
    target: str
    status: str
    data: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = ""
    key: str = ""
    ended: float | None = None


@dataclass(frozen=True)
class ArtifactRow:
    """One stored version of a named artifact."""

    name: str
    path: str
    sha256: str
    size: int


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def run_identity(estate_key: str, playbook: str | Path) -> str:
    """What makes two applies "the same run": the same estate and the same playbook
    file name (not paths: a moved inventory or repository resumes its run)."""
    text = f"{estate_key}\0{playbook_name(playbook)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _artifact_files(directory: Path, enough: int = 1000) -> int:
    """How many artifact files (up to ``enough``) ``directory/artifacts`` holds."""
    root = directory / ARTIFACTS_DIR
    n = 0
    if not root.is_dir():
        return 0
    for _dirpath, _dirs, files in os.walk(root):
        n += sum(1 for f in files if not f.startswith("."))
        if n >= enough:
            break
    return n


def refuse_lost_store(directory: Path) -> None:
    """Raise StoreDamagedError when ``directory`` has no state.db but holds artifacts of earlier runs."""
    found = _artifact_files(directory)
    if found and not (directory / DB_NAME).exists():
        raise StoreDamagedError(
            f"{directory / DB_NAME} is missing, but {directory / ARTIFACTS_DIR} holds {found} "
            f"exported file(s) of earlier runs: the checkpoint store was deleted or lost; "
            f"{_recovery(directory)}")


def refuse_read_only(directory: Path) -> None:
    """Raise RunnerError naming ``directory`` when the runner cannot write there (a read-only
    file system or no write permission): SQLite would only say "unable to open database file",
    which reads as a damaged store."""
    existing = Path(os.path.abspath(directory))  # '..' taken lexically, as mkdir(parents=True) would
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # a new --state DIR is made inside its first existing parent
    targets = [existing] + ([directory / DB_NAME] if (directory / DB_NAME).is_file() else [])
    for target in targets:
        try:
            read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError:
            continue
        why = "on a read-only file system" if read_only else \
            None if os.access(target, os.W_OK) else "not writable by this user"
        if why:
            detail = why if target == directory else f"{target} is {why}"
            raise RunnerError(f"the state directory {directory} is read-only ({detail}): the runner records "
                              "every task there as it finishes; make it writable, or give --state a "
                              "writable directory")


def _recovery(directory: Path) -> str:
    return (f"restore {directory} from a backup, or move it aside (keep its artifacts/: the exported "
            f"contact lists) and start again with a new --state DIR (every task probes again)")


def _create_store(path: Path) -> None:
    """Write a new, empty store as a whole: schema into a temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                         [("schema", str(SCHEMA_VERSION)), ("created", repr(time.time()))])
    finally:
        conn.close()  # the last connection checkpoints the WAL into the file
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _bad_lock(path: Path, why: str) -> RunnerError:
    """The state directory's lock is something the runner cannot use (exit 1)."""
    return RunnerError(f"the lock {path} cannot be used: {why}; it must be a plain file the runner can write "
                       "(remove what is there if no run is using this directory)")


def lock_holder(directory: Path) -> dict[str, Any] | None:
    """Who holds the state directory's lock now ({pid, host, started}), or None when no live
    process does: a run recorded as running without a holder was killed (`runner status`).
    Never takes the lock for long: a shared flock tried and let go at once."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _bad_lock(path, exc.strerror or str(exc)) from None
    try:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "null")
        except ValueError:
            holder = None
        except OSError as exc:  # a directory where the lock belongs
            raise _bad_lock(path, exc.strerror or str(exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held: a run is in progress
            return holder if isinstance(holder, dict) else {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


class _Flush:
    """A marker in the write queue: set ``done`` once everything before it is committed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


_STOP = object()


def _prefix_end(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``, in SQLite's
    BINARY order of UTF-8 (which is the order of code points), or None when there is none
    (an empty prefix, or one of only U+10FFFF)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            nxt = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


class StateStore:
    """The SQLite checkpoint store of one state directory (default ``.runner/``)."""

    def __init__(self, directory: str | Path, *, create: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        refuse_read_only(self.directory)
        try:
            if not self.path.exists():
                refuse_lost_store(self.directory)
                if not create:
                    raise RunnerError(f"no state store in {self.directory} (no run has been started there)")
                lock = self.directory / LOCK_NAME
                if lock.exists() and not lock.is_file():   # refused before anything is written
                    raise _bad_lock(lock, "not a plain file (a directory?)")
                self.directory.mkdir(parents=True, exist_ok=True)
                _create_store(self.path)
        except OSError as exc:
            raise RunnerError(f"cannot use {self.directory} as the state directory: "
                              f"{exc.strerror or exc}") from None
        except sqlite3.DatabaseError as exc:
            raise RunnerError(f"cannot create the checkpoint store {self.path}: {exc}") from None
        self._lock_fd: int | None = None
        self._read_lock = threading.Lock()
        # one reader connection per thread: WAL readers do not block each other, where one
        # shared reader behind a lock made 25 task threads queue for every artifact lookup
        # (in a 1,000-client profile, 690 of the store's 780 thread-seconds were that wait)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self.schema = self._check_store()
        try:
            self._reader = self._connect()
            self._reader.row_factory = sqlite3.Row
            self._local.reader = self._reader
            self._readers.append(self._reader)
        except sqlite3.DatabaseError as exc:
            raise StoreDamagedError(f"{self.path}: not a usable checkpoint store ({exc}); "
                                    f"{_recovery(self.directory)}") from None
        self._estate_key: str | None = None
        self._subjects: dict[str, str] = {}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._writer_error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="state-writer", daemon=True)
        self._writer.start()
        self._seq = 0
        self._closed = False

    def _check_store(self) -> int:
        """Refuse a state.db that is not a whole checkpoint store; return its schema version.

        Reads only (no pragma that writes, no CREATE): a damaged store stays as it is
        for whoever restores it.
        """
        if self.path.is_dir():
            raise StoreDamagedError(f"{self.path} is a directory, not a checkpoint store; move it aside, or give "
                                    "--state a directory of its own")
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreDamagedError(f"{self.path}: cannot be opened ({exc}); {_recovery(self.directory)}") from None
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables & {*REQUIRED_TABLES, "meta"}:
                size = self.path.stat().st_size
                what = (f"it holds another program's tables ({', '.join(sorted(tables)[:5])}"
                        + (", ..." if len(tables) > 5 else "") + "), none of the runner's"
                        if tables else f"it is empty ({size} bytes, no runner table)")
                raise StoreDamagedError(f"{self.path} is not a checkpoint store: {what}"
                                        + self._beside_artifacts() + f"; {_recovery(self.directory)}")
            missing = [t for t in REQUIRED_TABLES if t not in tables]
            if missing:
                raise StoreDamagedError(
                    f"{self.path} is damaged: table(s) {', '.join(missing)} missing"
                    + self._beside_artifacts() + f"; {_recovery(self.directory)}")
            runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            if not runs and _artifact_files(self.directory):
                raise StoreDamagedError(
                    f"{self.path} records no run" + self._beside_artifacts()
                    + f" (its last commits were lost, e.g. with its -wal file); {_recovery(self.directory)}")
            if "meta" not in tables:
                return 1
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            return int(row[0]) if row and str(row[0]).isdigit() else 1
        except sqlite3.DatabaseError as exc:
            raise StoreDamagedError(f"{self.path}: not a usable checkpoint store, damaged or not the "
                                    f"runner's ({exc}); {_recovery(self.directory)}") from None
        finally:
            conn.close()

    def _beside_artifacts(self) -> str:
        found = _artifact_files(self.directory)
        return (f", while {self.directory / ARTIFACTS_DIR} holds {found} exported file(s) of earlier runs"
                if found else "")

    # -- connection and writer ------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.text_factory = _text
        return conn

    def _write_loop(self) -> None:
        conn = self._connect()
        pending: list[Callable[[sqlite3.Connection], None]] = []
        waiting: list[_Flush] = []
        first_at = 0.0
        stop = False
        while not stop:
            timeout = None
            if pending:
                timeout = max(0.0, FLUSH_INTERVAL - (time.monotonic() - first_at))
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                stop = True
            elif isinstance(item, _Flush):
                waiting.append(item)
            elif item is not None:
                if not pending:
                    first_at = time.monotonic()
                pending.append(item)
            due = pending and (item is None or time.monotonic() - first_at >= FLUSH_INTERVAL)
            if waiting or stop or due:
                error = self._commit(conn, pending)
                pending = []
                for f in waiting:
                    f.error = error
                    f.done.set()
                waiting = []
        conn.close()

    def _commit(self, conn: sqlite3.Connection,
                pending: list[Callable[[sqlite3.Connection], None]]) -> BaseException | None:
        if not pending:
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in pending:
                write(conn)
            conn.execute("COMMIT")
            return None
        except BaseException as exc:  # keep the writer alive; report on the next flush
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._writer_error = exc
            return exc

    def _submit(self, write: Callable[[sqlite3.Connection], None]) -> None:
        if self._closed:
            raise RunnerError("the state store is closed")
        self._queue.put(write)

    def flush(self) -> None:
        """Block until every queued write is committed (call before dependent work)."""
        if self._closed:
            return
        marker = _Flush()
        self._queue.put(marker)
        marker.done.wait()
        if marker.error is not None:
            raise RunnerError(f"cannot write the state store {self.path}: {marker.error}")

    def close(self) -> None:
        """Commit what is queued, stop the writer, release the lock."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout=30)
        with self._read_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
        self.release_lock()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _thread_reader(self) -> sqlite3.Connection:
        """The calling thread's reader connection (opened on its first read)."""
        conn = getattr(self._local, "reader", None)
        if conn is None:
            if getattr(self, "_closed", False):
                raise RunnerError("the state store is closed")
            conn = self._connect()
            conn.row_factory = sqlite3.Row
            with self._read_lock:
                self._readers.append(conn)
            self._local.reader = conn
        return conn

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a query; a page found damaged on the way is a StoreDamagedError (exit 1).

        (Pages are not all checked on open: ``PRAGMA quick_check`` costs seconds on a
        big store; SQLite reports a damaged page when a query reaches it.)
        """
        try:
            return self._thread_reader().execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise StoreDamagedError(f"{self.path}: not a usable checkpoint store ({exc}); "
                                    f"{_recovery(self.directory)}") from None

    # -- lock -----------------------------------------------------------------

    def acquire_lock(self) -> None:
        """Take the state directory's lock or raise StateLockedError naming the holder."""
        if self._lock_fd is not None:
            return
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a directory or an unwritable file where the lock belongs
            raise _bad_lock(path, exc.strerror or str(exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            info = ""
            try:
                h = json.loads(holder)
                info = (f" by pid {h.get('pid')} on {h.get('host')} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h.get('started', 0)))}")
            except (ValueError, TypeError, AttributeError):
                pass
            raise StateLockedError(
                f"another run is using the state directory {self.directory}{info}; "
                f"wait for it to finish (or stop it) before starting a new one") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.time()}).encode(), 0)
        self._lock_fd = fd

    def release_lock(self) -> None:
        """Release the lock if held (the kernel also releases it when the process dies)."""
        if self._lock_fd is None:
            return
        try:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- runs -----------------------------------------------------------------

    def latest_run(self, identity: str) -> RunInfo | None:
        """The newest run of this playbook + inventory, finished or not."""
        rows = self._read("SELECT * FROM runs WHERE identity=? ORDER BY started DESC, rowid DESC LIMIT 1",
                          (identity,))
        return _run(rows[0]) if rows else None

    def runs(self) -> list[RunInfo]:
        """Every run, newest first."""
        return [_run(r) for r in self._read("SELECT * FROM runs ORDER BY started DESC, rowid DESC")]

    def get_run(self, run_id: str) -> RunInfo | None:
        rows = self._read("SELECT * FROM runs WHERE id=?", (run_id,))
        return _run(rows[0]) if rows else None

    # -- the estate -----------------------------------------------------------

    def estate(self) -> tuple[str, Estate] | None:
        """The estate this store belongs to (its key and last description), or None yet."""
        if self.schema < 2:
            return None
        rows = {r["key"]: r["value"] for r in self._read(
            "SELECT key, value FROM meta WHERE key IN ('estate', 'estate_key')")}
        if "estate" not in rows or "estate_key" not in rows:
            return None
        try:
            return rows["estate_key"], Estate.from_json(rows["estate"])
        except (ValueError, TypeError) as exc:
            raise DamagedRecord(f"{self.path}: row meta(key='estate') cannot be decoded ({exc}); "
                                f"{_recovery(self.directory)}") from None

    def legacy_inventories(self) -> list[str]:
        """Inventory paths of the runs recorded before the store knew its estate (oldest first)."""
        if self.estate() is not None:
            return []
        rows = self._read("SELECT inventory, MIN(started) AS first FROM runs GROUP BY inventory ORDER BY first")
        return [r["inventory"] for r in rows]

    def bind_estate(self, estate: Estate, subjects: Mapping[str, str], *,
                    legacy: Mapping[str, Estate] | None = None, record: bool = True,
                    inventory: str | Path | None = None) -> None:
        """Make this store the store of ``estate`` or refuse (StateEstateError) before anything runs.

        ``subjects`` maps user aliases to their record keys (runner.estate.subjects);
        ``inventory`` names the inventory file in messages. A store that records
        another estate is refused; one written before stores knew their estate is
        checked against ``legacy`` (the estates of its runs' inventory files that
        could still be read) and, unless they conflict, becomes this estate's: its
        runs take the new identities and its user records their AD GUIDs.
        ``record=False`` (``--check``) checks without writing.
        """
        recorded = self.estate()
        this = f"this inventory{f' ({inventory})' if inventory else ''} is {estate.describe()}"
        advice = "A state directory serves one estate: give this one its own with --state DIR"
        if recorded is not None:
            key, theirs = recorded
            why = theirs.conflict(estate)
            if why:
                last = self.runs()
                seen = f", last applied with {last[0].inventory}" if last else ""
                raise StateEstateError(
                    f"the state directory {self.directory} belongs to another estate: it holds "
                    f"{theirs.describe()}{seen}; {this}: {why}. {advice}")
            if record and theirs != estate:
                self._submit(lambda conn: conn.execute(
                    "UPDATE meta SET value=? WHERE key='estate'", (estate.to_json(),)))
                self.flush()
        else:
            known = dict(legacy or {})
            paths = list(known)
            for i, a in enumerate(paths):
                for b in paths[i + 1:]:
                    if known[a].conflict(known[b]):
                        raise StateEstateError(
                            f"the state directory {self.directory} was written before state directories were "
                            f"bound to one estate and holds runs of several: {describe_estates(known)}; their "
                            f"records cannot be told apart: give this estate a new state directory with "
                            f"--state DIR (keep the old one for its artifacts)")
            for path, theirs in known.items():
                why = theirs.conflict(estate)
                if why:
                    raise StateEstateError(
                        f"the state directory {self.directory} belongs to another estate: it holds "
                        f"{theirs.describe()} (runs of {path}); {this}: {why}. {advice}")
            key = estate.key
            if record:
                self._adopt(estate, key, subjects)
        self._estate_key = key
        self._subjects = dict(subjects)

    def _adopt(self, estate: Estate, key: str, subjects: Mapping[str, str]) -> None:
        """Record ``estate`` as this store's; bring a store of schema 1 up to date."""
        legacy = self.schema < 2
        runs = [(r["id"], r["playbook"]) for r in self._read("SELECT id, playbook FROM runs")]

        def write(conn: sqlite3.Connection) -> None:
            if legacy:
                columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
                if "subject" not in columns:
                    conn.execute("ALTER TABLE tasks ADD COLUMN subject TEXT")
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("CREATE INDEX IF NOT EXISTS tasks_module_subject ON tasks(module, subject)")
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                             [("schema", str(SCHEMA_VERSION)), ("estate", estate.to_json()), ("estate_key", key)])
            conn.executemany("UPDATE runs SET identity=? WHERE id=?",
                             [(run_identity(key, pb), run_id) for run_id, pb in runs])
            conn.executemany("UPDATE tasks SET subject=? WHERE subject IS NULL AND kind='user' AND target=?",
                             [(subj, alias) for alias, subj in subjects.items()])
            conn.execute("UPDATE tasks SET subject=COALESCE(kind, 'user') || ':' || target WHERE subject IS NULL")
        self._submit(write)
        self.flush()
        self.schema = SCHEMA_VERSION

    def _subject(self, kind: str | None, target: str) -> str:
        if kind != "host" and target in self._subjects:
            return self._subjects[target]
        return f"{kind or 'user'}:{target}"

    def identity_for(self, playbook: str | Path, inventory: str | Path) -> str:
        """The run identity of ``playbook`` on this store's estate (unbound: the inventory's path)."""
        return run_identity(self._estate_key or f"inventory:{Path(inventory).resolve()}", playbook)

    def start_run(self, playbook: str | Path, inventory: str | Path, *, command: str,
                  fresh: bool = False) -> RunInfo:
        """Resume the latest run of this identity, or start a new one (``fresh`` or none yet)."""
        identity = self.identity_for(playbook, inventory)
        pb, inv = str(Path(playbook).resolve()), str(Path(inventory).resolve())
        pb_sha, inv_sha = file_sha256(pb), file_sha256(inv)
        now = time.time()
        latest = None if fresh else self.latest_run(identity)
        if latest is not None:
            def resume(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE runs SET status='running', ended=NULL, command=?, playbook=?, playbook_sha=?,"
                             " inventory=?, inventory_sha=?, sessions=sessions+1 WHERE id=?",
                             (command, pb, pb_sha, inv, inv_sha, latest.id))
            self._submit(resume)
            self.flush()
            info = self.get_run(latest.id)
            assert info is not None
            return RunInfo(**{**info.__dict__, "resumed": True})
        run_id = _new_run_id()

        def create(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO runs(id, identity, playbook, playbook_sha, inventory, inventory_sha,"
                         " started, status, command) VALUES (?,?,?,?,?,?,?,?,?)",
                         (run_id, identity, pb, pb_sha, inv, inv_sha, now, "running", command))
        self._submit(create)
        self.flush()
        info = self.get_run(run_id)
        assert info is not None
        return info

    def finish_run(self, run_id: str, status: str) -> None:
        """Record how the run (this session of it) ended, and commit."""
        now = time.time()
        self._submit(lambda conn: conn.execute("UPDATE runs SET status=?, ended=? WHERE id=?",
                                               (status, now, run_id)))
        self.flush()

    # -- tasks ----------------------------------------------------------------

    def completed(self, run_id: str) -> dict[str, str]:
        """Task key -> fingerprint of the tasks of ``run_id`` whose last outcome is done, less
        those a rollback reopened (:meth:`reopened_by_rollback`)."""
        marks = ",".join("?" * len(DONE_STATUSES))
        rows = self._read(f"SELECT key, fingerprint FROM tasks WHERE run_id=? AND status IN ({marks})",
                          (run_id, *sorted(DONE_STATUSES)))
        reopened = self.reopened_by_rollback(run_id)
        return {r["key"]: r["fingerprint"] or "" for r in rows if r["key"] not in reopened}

    def reopened_by_rollback(self, run_id: str) -> set[str]:
        """Keys of finished tasks of ``run_id`` that a later rollback, or a later move after a
        rollback, undid, so a resumed run does them again (docs/rollback.md).

        A rollback record is a finished (ok/changed) task whose result data says
        ``rollback: true`` (the user steps of playbooks/rollback.yml); a run holding one is a
        rollback run. A task of another run is reopened when it ended before its user's
        latest rollback record, or before a ``changed`` task of the same user or host in a
        rollback run (a client the rollback switched back to Exchange IM). A task of a
        rollback run is reopened when it ended before a ``changed`` task of the same user or
        host in a run that is not one (they moved again, so a next rollback runs again).
        Users are matched by their record key (AD GUID)."""
        marks = ",".join("?" * len(DONE_STATUSES))
        # only a rollback's modules write the flag: by the (module, subject) index, not a scan
        # of every result of every night the store holds
        mods = ",".join("?" * len(ROLLBACK_MODULES))
        records = self._read(f"SELECT run_id, subject, ended, result FROM tasks WHERE module IN ({mods})"
                             " AND status IN ('ok','changed') AND subject IS NOT NULL AND result LIKE ?",
                             (*ROLLBACK_MODULES, _ROLLBACK_LIKE))
        found = [(r["run_id"], r["subject"], float(r["ended"] or 0)) for r in records if _is_rollback(r["result"])]
        if not found:
            return set()
        rollback_runs = sorted({rid for rid, _, _ in found})
        runs = ",".join("?" * len(rollback_runs))
        undone: dict[str, float] = {}  # subject -> when it was last undone, as this run sees it

        def later(subject: str, ended: float) -> None:
            undone[subject] = max(undone.get(subject, 0.0), ended)
        if run_id in rollback_runs:
            rows = self._read(f"SELECT subject, MAX(ended) AS ended FROM tasks WHERE status='changed' AND subject IN"
                              f" (SELECT subject FROM tasks WHERE run_id=?) AND run_id NOT IN ({runs})"
                              " GROUP BY subject", (run_id, *rollback_runs))
            for r in rows:
                later(r["subject"], float(r["ended"] or 0))
        else:
            for rid, subject, ended in found:
                later(subject, ended)
            for r in self._read(f"SELECT subject, MAX(ended) AS ended FROM tasks WHERE status='changed'"
                                f" AND subject IS NOT NULL AND run_id IN ({runs}) GROUP BY subject", tuple(rollback_runs)):
                later(r["subject"], float(r["ended"] or 0))
        if not undone:
            return set()
        return {r["key"] for r in self._read(f"SELECT key, subject, ended FROM tasks WHERE run_id=?"
                                             f" AND status IN ({marks}) AND subject IS NOT NULL",
                                             (run_id, *sorted(DONE_STATUSES)))
                if float(r["ended"] or 0) < undone.get(r["subject"], 0.0)}

    def register_tasks(self, run_id: str, tasks: Iterable[tuple[str, int, str, str, str, str, str | None, str]]) -> None:
        """Record planned tasks as ``pending`` unless already known, so status can say what is left.

        Each item is (key, play_index, step, module, kind, target, wave, fingerprint).
        """
        rows = [(run_id, *t) for t in tasks]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO tasks(run_id, key, play_index, step, module, kind, target, wave,"
                " fingerprint, status) VALUES (?,?,?,?,?,?,?,?,?,'pending')", rows)
        self._submit(write)

    def record_task(self, run_id: str, outcome: TaskOutcome) -> None:
        """Queue one task's outcome (committed with the next group)."""
        self._seq += 1
        seq = self._seq
        result = json.dumps({"data": outcome.data, "warnings": outcome.warnings,
                             **({"diff": {"summary": outcome.diff.summary, "lines": outcome.diff.lines}}
                                if outcome.diff is not None else {})},
                            default=str, sort_keys=True)
        row = (run_id, outcome.key, outcome.play_index, outcome.step, outcome.module, outcome.kind,
               outcome.target, outcome.wave, outcome.status, outcome.attempts, outcome.started,
               outcome.ended, outcome.duration, result, outcome.fingerprint, outcome.message,
               outcome.traceback, seq, self._subject(outcome.kind, outcome.target))

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO tasks(run_id, key, play_index, step, module, kind, target, wave, status,"
                " attempts, started, ended, duration, result, fingerprint, message, traceback, seq, subject)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(run_id, key) DO UPDATE SET status=excluded.status,"
                " attempts=excluded.attempts, started=excluded.started, ended=excluded.ended,"
                " duration=excluded.duration, result=excluded.result, fingerprint=excluded.fingerprint,"
                " message=excluded.message, traceback=excluded.traceback, step=excluded.step,"
                " module=excluded.module, wave=excluded.wave, seq=excluded.seq, subject=excluded.subject", row)
        self._submit(write)

    def subscriber(self, run_id: str) -> Callable[[Event], None]:
        """An engine subscriber that records every real task outcome of ``run_id``."""
        def on_event(event: Event) -> None:
            if event.kind == TASK_END:
                outcome: TaskOutcome = event.data["outcome"]
                if not outcome.resumed:
                    self.record_task(run_id, outcome)
        return on_event

    def task_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Every task row of a run (for status and tests), in plan order."""
        rows = self._read("SELECT key, play_index, step, module, kind, target, wave, status, attempts,"
                          " duration, message, result, fingerprint FROM tasks WHERE run_id=?"
                          " ORDER BY play_index, rowid", (run_id,))
        return self._decoded(rows, run_id)

    def _decoded(self, rows: list[sqlite3.Row], run_id: str | None = None) -> list[dict[str, Any]]:
        """Task rows as dicts with ``result`` decoded; an undecodable one gets ``damaged`` (naming
        it) and no result."""
        out = []
        for r in rows:
            d = dict(r)
            where = f"tasks(run_id={run_id or d.get('run_id')!r}, key={d['key']!r}) column result"
            try:
                d["result"] = _decode(d["result"], where)
            except DamagedRecord as exc:
                d["result"], d["damaged"] = None, f"{self.path}: {exc}"
            out.append(d)
        return out

    def outcome_history(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every task row of ``run_id`` (None: of every run), oldest outcome first (pending
        rows, which have no end, first), with its run, record key (``subject``) and end
        time: what ``runner report`` reads to say where each user stands. A row whose
        result cannot be decoded carries ``damaged`` (naming it) and no result."""
        where, params = ("WHERE run_id=?", (run_id,)) if run_id else ("", ())
        rows = self._read("SELECT run_id, key, play_index, step, module, kind, target, wave, status, attempts,"
                          " ended, message, result, subject FROM tasks " + where +
                          " ORDER BY COALESCE(ended, 0), rowid", params)
        return self._decoded(rows)

    def step_summary(self, run_id: str) -> list[dict[str, Any]]:
        """Per step of a run: counts by status, in plan order."""
        rows = self._read("SELECT play_index, step, status, COUNT(*) AS n, MIN(rowid) AS first"
                          " FROM tasks WHERE run_id=? GROUP BY play_index, step, status", (run_id,))
        steps: dict[tuple[int, str], dict[str, Any]] = {}
        for r in rows:
            s = steps.setdefault((r["play_index"], r["step"]),
                                 {"play": r["play_index"], "step": r["step"], "counts": {}, "first": r["first"]})
            s["counts"][r["status"]] = r["n"]
            s["first"] = min(s["first"], r["first"])
        ordered = sorted(steps.values(), key=lambda s: (s["play"] if s["play"] is not None else 0, s["first"]))
        for s in ordered:
            s.pop("first")
            s["left"] = sum(n for st, n in s["counts"].items() if st not in DONE_STATUSES)
        return ordered

    def previous(self, module: str, target: str) -> list[TaskRecord]:
        """Finished (ok/changed) outcomes of ``module`` for ``target`` across the runs of this
        store's estate, newest first. A user is found by their record key (AD GUID), so a
        renamed alias keeps its history and an alias reused by someone else gets none."""
        if self.schema < 2:  # not adopted yet (--check on an old store): by name, as it was written
            rows = self._read("SELECT run_id, key, step, module, target, status, result, ended FROM tasks"
                              " WHERE module=? AND target=? AND status IN ('ok','changed')"
                              " ORDER BY ended DESC", (module, target))
        else:
            subjects = ([self._subjects[target]] if target in self._subjects
                        else [f"user:{target}", f"host:{target}"])
            marks = ",".join("?" * len(subjects))
            rows = self._read("SELECT run_id, key, step, module, target, status, result, ended FROM tasks"
                              f" WHERE module=? AND subject IN ({marks}) AND status IN ('ok','changed')"
                              " ORDER BY ended DESC", (module, *subjects))
        out = []
        for r in rows:
            where = f"tasks(run_id={r['run_id']!r}, key={r['key']!r}) column result"
            try:
                result = _decode(r["result"], where) or {}
            except DamagedRecord as exc:
                raise DamagedRecord(f"{self.path}: {exc}; `runner status` names every damaged row") from None
            data = result.get("data", {}) if isinstance(result, dict) else None
            if not isinstance(data, dict):
                raise DamagedRecord(f"{self.path}: row {where} holds no result object; "
                                    f"{_recovery(self.directory)}")
            out.append(TaskRecord(step=r["step"], module=r["module"], target=r["target"],
                                  status=r["status"], data=data, run_id=r["run_id"],
                                  key=r["key"], ended=r["ended"]))
        return out

    # -- facts ----------------------------------------------------------------

    def set_facts(self, host: str, facts: Mapping[str, Any], run_id: str | None = None) -> None:
        """Queue the facts gathered for ``host`` (replacing older ones)."""
        data = json.dumps(dict(facts), default=str, sort_keys=True)
        now = time.time()
        self._submit(lambda conn: conn.execute(
            "INSERT INTO facts(host, data, run_id, updated) VALUES (?,?,?,?) ON CONFLICT(host)"
            " DO UPDATE SET data=excluded.data, run_id=excluded.run_id, updated=excluded.updated",
            (host, data, run_id, now)))

    def facts(self, host: str) -> dict[str, Any] | None:
        """The last facts committed for ``host``, or None (DamagedRecord naming an undecodable row)."""
        rows = self._read("SELECT data FROM facts WHERE host=?", (host,))
        try:
            return _decode(rows[0]["data"], f"facts(host={host!r}) column data") if rows else None
        except DamagedRecord as exc:
            raise DamagedRecord(f"{self.path}: {exc}; `runner status` names every damaged row") from None

    def all_facts(self, damaged: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """The last facts committed for every host (for ``runner status``). An undecodable
        row is left out and named in ``damaged`` when given (else DamagedRecord)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self._read("SELECT host, data FROM facts"):
            try:
                found = _decode(r["data"], f"facts(host={r['host']!r}) column data")
            except DamagedRecord as exc:
                if damaged is None:
                    raise
                damaged.append(f"{self.path}: {exc}")
                continue
            if isinstance(found, dict):
                out[r["host"]] = found
        return out

    def facts_times(self) -> dict[str, float]:
        """Host -> when its facts row was last written."""
        return {r["host"]: r["updated"] for r in self._read("SELECT host, updated FROM facts")}

    def facts_summary(self) -> dict[str, Any]:
        """How many hosts have facts, and when they were last updated."""
        rows = self._read("SELECT COUNT(*) AS n, MAX(updated) AS last FROM facts")
        return {"hosts": rows[0]["n"], "last_updated": rows[0]["last"]}

    # -- artifacts ------------------------------------------------------------

    def add_artifact(self, name: str, path: str, sha256: str, size: int, *,
                     task_key: str | None = None, run_id: str | None = None) -> None:
        """Record a new current version of artifact ``name`` and commit it now
        (an export must be durable before anything on a client changes)."""
        now = time.time()
        self._submit(lambda conn: conn.execute(
            "INSERT INTO artifacts(name, path, sha256, size, task_key, run_id, created)"
            " VALUES (?,?,?,?,?,?,?)", (name, path, sha256, size, task_key, run_id, now)))
        self.flush()

    def current_artifact(self, name: str) -> ArtifactRow | None:
        """The current (latest recorded) version of artifact ``name``."""
        rows = self._read("SELECT name, path, sha256, size FROM artifacts WHERE name=?"
                          " ORDER BY id DESC LIMIT 1", (name,))
        if not rows:
            return None
        r = rows[0]
        return ArtifactRow(r["name"], r["path"], r["sha256"], r["size"])

    def artifacts_under(self, prefix: str) -> list[ArtifactRow]:
        """The current version of every artifact whose name starts with ``prefix``.

        Read as a range of the ``artifacts_name`` index (names from ``prefix`` up to the
        first string past every name it starts), not a ``substr`` test of every row: at
        10,000 clients that scan was 44 ms a call, and ``runner report`` makes two."""
        upper = _prefix_end(prefix)
        bound, ends = (" AND name < ?", [upper]) if upper is not None else ("", [])
        rows = self._read("SELECT name, path, sha256, size FROM artifacts WHERE id IN (SELECT MAX(id) FROM"
                          f" artifacts WHERE name >= ?{bound} AND substr(name, 1, ?) = ? GROUP BY name)"
                          " ORDER BY name", [prefix, *ends, len(prefix), prefix])
        return [ArtifactRow(r["name"], r["path"], r["sha256"], r["size"]) for r in rows]

    def export_tasks(self, module: str, alias: str) -> int:
        """How many finished tasks of ``module`` this store holds for user ``alias``."""
        rows = self._read("SELECT COUNT(*) AS n FROM tasks WHERE module=? AND (target=? OR subject=?)"
                          " AND status IN ('ok','changed')", (module, alias, f"user:{alias}"))
        return int(rows[0]["n"])

    def reopen_tasks(self, module: str, alias: str, message: str) -> int:
        """Mark every finished task of ``module`` for user ``alias`` ``pending`` again (in every
        run), with ``message``: the next apply runs it, and no step takes its old outcome."""
        count = self.export_tasks(module, alias)
        self._submit(lambda conn: conn.execute(
            "UPDATE tasks SET status='pending', message=? WHERE module=? AND (target=? OR subject=?)"
            " AND status IN ('ok','changed')", (message, module, alias, f"user:{alias}")))
        self.flush()
        return count

    def artifact_versions(self, name: str) -> list[ArtifactRow]:
        """Every recorded version of ``name``, newest first."""
        rows = self._read("SELECT name, path, sha256, size FROM artifacts WHERE name=? ORDER BY id DESC",
                          (name,))
        return [ArtifactRow(r["name"], r["path"], r["sha256"], r["size"]) for r in rows]


#: The text every rollback record's result holds (json.dumps of ``"rollback": true``); a prefilter.
_ROLLBACK_LIKE = '%"rollback": true%'


def _is_rollback(result: str | bytes | None) -> bool:
    """True when a task's stored result is a rollback record: its data says ``rollback: true``."""
    if not isinstance(result, str) or '"rollback": true' not in result:
        return False
    try:
        doc = json.loads(result)
    except ValueError:
        return False
    data = doc.get("data") if isinstance(doc, dict) else None
    return isinstance(data, dict) and data.get("rollback") is True


def _text(raw: bytes) -> str | bytes:
    """A TEXT column as str; bytes that are not UTF-8 stay bytes, for _decode to name the row."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _decode(text: str | bytes | None, where: str) -> Any:
    """JSON of one stored column; DamagedRecord naming the row when it cannot be decoded."""
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise DamagedRecord(f"row {where} cannot be decoded ({exc})") from None


def _run(r: sqlite3.Row) -> RunInfo:
    return RunInfo(id=r["id"], identity=r["identity"], playbook=r["playbook"], inventory=r["inventory"],
                   started=r["started"], ended=r["ended"], status=r["status"], command=r["command"],
                   sessions=r["sessions"])
