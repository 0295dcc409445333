"""The lab's per-thread SQLite connection cache stays bounded: a run touching more hosts
than the cap from several threads keeps a bounded number of file descriptors open, and
the connections it keeps still have WAL and the busy timeout."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from runner.lab import store
from runner.lab.store import Lab, close_thread_connections, write_tx

THREADS = 3


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def small_cap(monkeypatch):
    monkeypatch.setattr(store, "MAX_THREAD_CONNECTIONS", 8)
    return 8


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_touching_more_hosts_than_the_cap_keeps_open_files_bounded(tmp_path: Path, small_cap) -> None:
    hosts = {f"pc{i:03d}": {"role": "client", "address": f"127.0.{i // 250}.{i % 250 + 1}"} for i in range(60)}
    lab = Lab.create(tmp_path / "lab", {"hosts": hosts})
    for name in hosts:  # host.db files exist before a run (the generator writes them)
        lab.host(name).processes()
    close_thread_connections()
    before = _open_fds()
    peak: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS, timeout=60)

    def work(offset: int) -> None:
        try:
            for round_ in range(2):  # the second round reopens evicted hosts: they still work
                for i in range(len(hosts)):
                    name = f"pc{(i + offset * 7) % len(hosts):03d}"
                    lab.host(name).record("reg", f"reg add round {round_}")
                    peak.append(_open_fds())
            barrier.wait()
            peak.append(_open_fds())
            barrier.wait()  # every thread still holds its cache here
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()  # never leave the other threads waiting
        finally:
            close_thread_connections()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # a WAL connection holds the db, -wal and -shm files (3 fds); SQLite may defer closing
    # an evicted one's fds while another thread has the same file open: allow twice that.
    # Without the cap the threads would hold 3 x 60 x 3 = 540.
    limit = before + THREADS * small_cap * 3 * 2
    assert max(peak) <= limit, (max(peak), limit)
    assert max(peak) > before, "the threads did hold connections"
    assert len(store._thread_cache()) == 0
    for name in ("pc000", "pc059"):
        assert [e.command for e in lab.host(name).journal()].count("reg add round 1") == THREADS


def test_cached_connections_keep_wal_and_the_busy_timeout(tmp_path: Path, small_cap) -> None:
    hosts = {f"pc{i}": {"role": "client", "address": f"127.0.1.{i + 1}"} for i in range(small_cap + 4)}
    lab = Lab.create(tmp_path / "lab", {"hosts": hosts})
    try:
        for name in hosts:
            db = lab.host(name).db()
            assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
            assert db.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS
        assert len(store._thread_cache()) == small_cap
    finally:
        close_thread_connections()


def test_a_connection_inside_a_write_transaction_is_not_closed_by_eviction(tmp_path: Path, small_cap) -> None:
    hosts = {f"pc{i}": {"role": "client", "address": f"127.0.2.{i + 1}"} for i in range(small_cap + 4)}
    lab = Lab.create(tmp_path / "lab", {"hosts": hosts})
    try:
        first = lab.host("pc0")
        db = first.db()
        with write_tx(db):
            db.execute("INSERT INTO process VALUES ('a.exe', 'a.exe')")
            for i in range(1, small_cap + 4):  # evicts around the open transaction
                lab.host(f"pc{i}").processes()
            db.execute("INSERT INTO process VALUES ('b.exe', 'b.exe')")
        assert first.processes() == {"a.exe", "b.exe"}
    finally:
        close_thread_connections()


def test_generated_files_are_born_in_wal_mode(tmp_path: Path) -> None:
    """Every host.db and hive the generator writes is a WAL database already, so that its
    first open is not a switch from rollback mode (a journal written and deleted for each of
    a run's thousands of files), and it still opens, reads and takes writes as before."""
    from runner.lab.generator import generate

    generate(tmp_path / "lab", clients=3, users_per_client=2, contacts=4, seed=7)
    files = [p for p in (tmp_path / "lab").rglob("*")
             if p.is_file() and p.read_bytes()[:16] == b"SQLite format 3\x00"]
    names = {p.name for p in files}
    assert "host.db" in names and "NTUSER.DAT" in names, names
    for p in files:
        if p.name in ("host.db", "NTUSER.DAT"):
            assert p.read_bytes()[18:20] == b"\x02\x02", p
    lab = Lab(tmp_path / "lab")
    try:
        client = next(n for n, c in lab.hosts_config.items() if c.get("role") == "client")
        host = lab.host(client)
        host.record("reg", "reg add after birth")
        assert "reg add after birth" in [e.command for e in host.journal()]
    finally:
        close_thread_connections()


def test_wal_image_marks_only_a_rollback_sqlite_header() -> None:
    conn = store.memory_db(store.SCHEMA_HIVE)
    try:
        image = conn.serialize()
    finally:
        conn.close()
    assert image[18:20] == b"\x01\x01"
    marked = store.wal_image(image)
    assert marked[18:20] == b"\x02\x02" and marked[:18] == image[:18] and marked[20:] == image[20:]
    assert store.wal_image(marked) == marked
    assert store.wal_image(b"not a database") == b"not a database"
