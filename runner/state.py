"""The checkpoint store: runs, task outcomes, artifacts and facts in SQLite (WAL).

One writer thread owns the write connection and commits queued writes in
grouped transactions (every ~200 ms, or at once when someone calls
``flush()``), so the hot path never waits for an fsync. The engine flushes
before a dependent task starts (between steps, at wave gates) and at exit.
WAL mode means a SIGKILL at any moment leaves a database the next run opens:
at worst the last group of outcomes is lost, which only costs a re-probe.

A run is identified by its playbook + inventory (resolved paths); a new
``apply`` resumes the latest run with the same identity unless ``fresh``.
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

from runner.errors import RunnerError, StateLockedError
from runner.events import DONE_STATUSES, TASK_END, Event, TaskOutcome

DB_NAME = "state.db"
LOCK_NAME = "lock"
FLUSH_INTERVAL = 0.2

_SCHEMA = """
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
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS tasks_module_target ON tasks(module, target);
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


def run_identity(playbook: str | Path, inventory: str | Path) -> str:
    """What makes two applies "the same run": the resolved playbook and inventory paths."""
    text = f"{Path(playbook).resolve()}\0{Path(inventory).resolve()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


class _Flush:
    """A marker in the write queue: set ``done`` once everything before it is committed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


_STOP = object()


class StateStore:
    """The SQLite checkpoint store of one state directory (default ``.runner/``)."""

    def __init__(self, directory: str | Path, *, create: bool = True) -> None:
        self.directory = Path(directory)
        try:
            if create:
                self.directory.mkdir(parents=True, exist_ok=True)
            elif not (self.directory / DB_NAME).exists():
                raise RunnerError(f"no state store in {self.directory} (no run has been started there)")
        except OSError as exc:
            raise RunnerError(f"cannot use {self.directory} as the state directory: "
                              f"{exc.strerror or exc}") from None
        self.path = self.directory / DB_NAME
        self._lock_fd: int | None = None
        self._read_lock = threading.Lock()
        try:
            self._reader = self._connect()
            with self._read_lock:
                self._reader.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:  # a foreign or damaged state.db, an unwritable directory
            raise RunnerError(f"{self.path}: not a usable checkpoint store ({exc}); "
                              f"give --state a directory of its own") from None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._writer_error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="state-writer", daemon=True)
        self._writer.start()
        self._seq = 0
        self._closed = False

    # -- connection and writer ------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
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
            self._reader.close()
        self.release_lock()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            self._reader.row_factory = sqlite3.Row
            return self._reader.execute(sql, tuple(params)).fetchall()

    # -- lock -----------------------------------------------------------------

    def acquire_lock(self) -> None:
        """Take the state directory's lock or raise StateLockedError naming the holder."""
        if self._lock_fd is not None:
            return
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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

    def start_run(self, playbook: str | Path, inventory: str | Path, *, command: str,
                  fresh: bool = False) -> RunInfo:
        """Resume the latest run of this identity, or start a new one (``fresh`` or none yet)."""
        identity = run_identity(playbook, inventory)
        pb, inv = str(Path(playbook).resolve()), str(Path(inventory).resolve())
        pb_sha, inv_sha = file_sha256(pb), file_sha256(inv)
        now = time.time()
        latest = None if fresh else self.latest_run(identity)
        if latest is not None:
            def resume(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE runs SET status='running', ended=NULL, command=?, playbook_sha=?,"
                             " inventory_sha=?, sessions=sessions+1 WHERE id=?",
                             (command, pb_sha, inv_sha, latest.id))
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
        """Task key -> fingerprint of the tasks of ``run_id`` whose last outcome is done."""
        marks = ",".join("?" * len(DONE_STATUSES))
        rows = self._read(f"SELECT key, fingerprint FROM tasks WHERE run_id=? AND status IN ({marks})",
                          (run_id, *sorted(DONE_STATUSES)))
        return {r["key"]: r["fingerprint"] or "" for r in rows}

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
               outcome.traceback, seq)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO tasks(run_id, key, play_index, step, module, kind, target, wave, status,"
                " attempts, started, ended, duration, result, fingerprint, message, traceback, seq)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(run_id, key) DO UPDATE SET status=excluded.status,"
                " attempts=excluded.attempts, started=excluded.started, ended=excluded.ended,"
                " duration=excluded.duration, result=excluded.result, fingerprint=excluded.fingerprint,"
                " message=excluded.message, traceback=excluded.traceback, step=excluded.step,"
                " module=excluded.module, wave=excluded.wave, seq=excluded.seq", row)
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
        out = []
        for r in rows:
            d = dict(r)
            d["result"] = json.loads(d["result"]) if d["result"] else None
            out.append(d)
        return out

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
        """Finished (ok/changed) outcomes of ``module`` for ``target`` across runs, newest first."""
        rows = self._read("SELECT run_id, key, step, module, target, status, result, ended FROM tasks"
                          " WHERE module=? AND target=? AND status IN ('ok','changed')"
                          " ORDER BY ended DESC", (module, target))
        out = []
        for r in rows:
            result = json.loads(r["result"]) if r["result"] else {}
            out.append(TaskRecord(step=r["step"], module=r["module"], target=r["target"],
                                  status=r["status"], data=result.get("data", {}), run_id=r["run_id"],
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
        """The last facts committed for ``host``, or None."""
        rows = self._read("SELECT data FROM facts WHERE host=?", (host,))
        return json.loads(rows[0]["data"]) if rows else None

    def all_facts(self) -> dict[str, dict[str, Any]]:
        """The last facts committed for every host (for ``runner status``)."""
        return {r["host"]: json.loads(r["data"]) for r in self._read("SELECT host, data FROM facts")}

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

    def artifact_versions(self, name: str) -> list[ArtifactRow]:
        """Every recorded version of ``name``, newest first."""
        rows = self._read("SELECT name, path, sha256, size FROM artifacts WHERE name=? ORDER BY id DESC",
                          (name,))
        return [ArtifactRow(r["name"], r["path"], r["sha256"], r["size"]) for r in rows]


def _run(r: sqlite3.Row) -> RunInfo:
    return RunInfo(id=r["id"], identity=r["identity"], playbook=r["playbook"], inventory=r["inventory"],
                   started=r["started"], ended=r["ended"], status=r["status"], command=r["command"],
                   sessions=r["sessions"])
