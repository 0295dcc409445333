"""The checkpoint store, artifacts and connection pool."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from runner.artifacts import ArtifactStore
from runner.connections.registry import ConnectionOptions, ConnectionPool, open_connection
from runner.errors import ConnectionFault, RunnerError, StateLockedError
from runner.events import TaskOutcome
from runner.model import Host, Inventory
from runner.state import StateStore


def outcome(key: str, status: str, **kw) -> TaskOutcome:
    return TaskOutcome(key=key, play_index=0, step=kw.pop("step", "Export"), module=kw.pop("module", "m"),
                       kind="user", target=kw.pop("target", "alice"), status=status, ended=kw.pop("ended", 1.0),
                       fingerprint=kw.pop("fingerprint", "fp"), **kw)


def test_outcomes_are_committed_on_flush_and_survive_reopening(tmp_path):
    store = StateStore(tmp_path)
    run = store.start_run(tmp_path / "pb.yml", tmp_path / "inv.yml", command="runner apply pb.yml")
    store.record_task(run.id, outcome("k1", "changed", data={"contacts": 3}))
    store.record_task(run.id, outcome("k2", "failed"))
    store.flush()
    store.close()
    again = StateStore(tmp_path)
    assert again.completed(run.id) == {"k1": "fp"}
    rows = {r["key"]: r for r in again.task_rows(run.id)}
    assert rows["k1"]["result"]["data"] == {"contacts": 3} and rows["k2"]["status"] == "failed"
    again.close()


def test_same_playbook_and_inventory_resume_the_latest_run_unless_fresh(tmp_path):
    with StateStore(tmp_path) as store:
        first = store.start_run("pb.yml", "inv.yml", command="c")
        resumed = store.start_run("pb.yml", "inv.yml", command="c")
        other = store.start_run("pb.yml", "other.yml", command="c")
        fresh = store.start_run("pb.yml", "inv.yml", command="c", fresh=True)
        assert resumed.id == first.id and resumed.resumed and resumed.sessions == 2
        assert other.id != first.id and not other.resumed
        assert fresh.id != first.id and store.start_run("pb.yml", "inv.yml", command="c").id == fresh.id
        assert len(store.runs()) == 3


def test_previous_returns_finished_outcomes_newest_first(tmp_path):
    with StateStore(tmp_path) as store:
        run = store.start_run("pb.yml", "inv.yml", command="c")
        store.record_task(run.id, outcome("a", "ok", module="verify_contacts", data={"n": 1}, ended=1.0))
        store.record_task(run.id, outcome("b", "failed", module="verify_contacts", ended=3.0))
        store.record_task(run.id, outcome("c", "changed", module="verify_contacts", data={"n": 2}, ended=2.0))
        store.flush()
        prev = store.previous("verify_contacts", "alice")
        assert [p.data["n"] for p in prev] == [2, 1] and store.previous("verify_contacts", "bob") == []


def test_facts_are_replaced_per_host(tmp_path):
    with StateStore(tmp_path) as store:
        store.set_facts("pc01", {"v": 1})
        store.set_facts("pc01", {"v": 2})
        store.flush()
        assert store.facts("pc01") == {"v": 2} and store.facts("pc02") is None
        assert store.facts_summary()["hosts"] == 1


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = StateStore(tmp_path)
    first.acquire_lock()
    second = StateStore(tmp_path)
    with pytest.raises(StateLockedError, match="another run is using"):
        second.acquire_lock()
    first.close()
    second.acquire_lock()
    second.close()


def test_status_of_a_missing_store_is_an_error_only_when_asked_to_open(tmp_path):
    with pytest.raises(RunnerError, match="no state store"):
        StateStore(tmp_path / "none", create=False)


def test_artifact_write_is_content_addressed_and_identical_rewrite_is_a_no_op(tmp_path):
    with StateStore(tmp_path) as store:
        arts = ArtifactStore(store, run_id="r1", task_key="0/export/user:alice")
        ref = arts.write("contacts/alice/pc01.reg", b"v1")
        assert Path(ref.path).name.startswith("pc01.") and ref.path.endswith(".reg") and ref.size == 2
        same = arts.write("contacts/alice/pc01.reg", b"v1")
        assert same == ref and len(store.artifact_versions("contacts/alice/pc01.reg")) == 1
        new = arts.write("contacts/alice/pc01.reg", b"v2")
        assert new.path != ref.path and Path(ref.path).read_bytes() == b"v1"   # old version kept beside
        assert arts.read("contacts/alice/pc01.reg") == b"v2"
        assert arts.read("contacts/bob/pc01.reg") is None
        assert not list(Path(ref.path).parent.glob(".*tmp"))


def test_a_temporary_file_left_by_a_killed_write_is_removed_by_the_next_write(tmp_path):
    import os
    import time
    folder = tmp_path / "artifacts" / "contacts" / "alice"
    folder.mkdir(parents=True)
    stale = folder / ".merged.4668d290b6e7.json.e0_5nxd8.tmp"   # what a SIGKILL mid-write leaves
    stale.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    young = folder / ".pc01.abc.reg.x1.tmp"                      # another thread's write in flight
    young.write_bytes(b"in flight")
    with StateStore(tmp_path) as store:
        ArtifactStore(store).write("contacts/alice/merged.json", b"{}")
    assert not stale.exists() and young.exists()


def test_a_folder_is_swept_for_temporaries_once_not_at_every_write(tmp_path, monkeypatch):
    """One file per user in one folder (exim-backup/): listing the folder before each write
    made the writes quadratic in users. What a killed run left is removed by the first."""
    import os
    import time
    import runner.artifacts as artifacts_mod
    folder = tmp_path / "artifacts" / "exim-backup"
    folder.mkdir(parents=True)
    stale = folder / ".u0.json.k1.tmp"
    stale.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    listed: list[str] = []
    real = os.scandir

    def counting(path):
        listed.append(str(path))
        return real(path)

    with StateStore(tmp_path) as store:   # (opening a store walks the folder: not counted)
        monkeypatch.setattr(artifacts_mod.os, "scandir", counting)
        arts = ArtifactStore(store)
        for i in range(30):
            arts.write(f"exim-backup/u{i}.json", b"{}" + str(i).encode())
        arts.write("contacts/u1/pc01.reg", b"x")   # a folder made by this write: swept at the next
        arts.write("contacts/u1/pc02.reg", b"y")
        arts.write("contacts/u1/pc03.reg", b"z")
    assert not stale.exists()
    assert listed.count(str(folder)) == 1, listed
    # listed at its first write (not there yet: not marked) and at its second, then never
    assert listed.count(str(tmp_path / "artifacts" / "contacts" / "u1")) == 2, listed
    assert len(list(folder.iterdir())) == 30


def test_the_sweep_knows_folders_by_their_real_path_and_retries_a_failed_delete(tmp_path, monkeypatch):
    """A relative folder names another folder after a chdir (a relative --state, notify's
    default outbox); and a folder whose stale file could not be deleted is swept again."""
    import os
    import time
    from runner.artifacts import remove_stale_temporaries
    old = time.time() - 3600
    stale = {}
    for d in ("a", "b"):
        folder = tmp_path / d / "out"
        folder.mkdir(parents=True)
        stale[d] = folder / ".x.txt.k1.tmp"
        stale[d].write_bytes(b"half")
        os.utime(stale[d], (old, old))
    monkeypatch.chdir(tmp_path / "a")
    remove_stale_temporaries(Path("out"))
    monkeypatch.chdir(tmp_path / "b")
    remove_stale_temporaries(Path("out"))
    assert not stale["a"].exists() and not stale["b"].exists()

    c = tmp_path / "c"
    c.mkdir()
    left = c / ".y.json.k2.tmp"
    left.write_bytes(b"half")
    os.utime(left, (old, old))
    real = os.unlink
    monkeypatch.setattr(os, "unlink", lambda p: (_ for _ in ()).throw(PermissionError(13, "held open")))
    remove_stale_temporaries(c)
    assert left.exists()
    monkeypatch.setattr(os, "unlink", real)
    remove_stale_temporaries(c)
    assert not left.exists()


def test_artifact_read_detects_a_file_changed_on_disk(tmp_path):
    with StateStore(tmp_path) as store:
        arts = ArtifactStore(store)
        ref = arts.write("a.reg", b"data")
        Path(ref.path).write_bytes(b"tampered")
        with pytest.raises(RunnerError, match="sha256"):
            arts.read("a.reg")


def test_artifact_names_cannot_escape_the_store(tmp_path):
    with StateStore(tmp_path) as store:
        with pytest.raises(RunnerError):
            ArtifactStore(store).write("../evil.reg", b"x")


INV = Inventory(path="inv.yml", hosts={"pc01": Host("pc01", connection="nosuch"),
                                         "pc02": Host("pc02", connection="x")}, groups={}, users={})


def test_unknown_connection_kind_is_a_clear_error():
    with pytest.raises(RunnerError, match="unknown connection kind 'nosuch'"):
        open_connection(INV.hosts["pc01"], INV, ConnectionOptions())


class _Conn:
    def __init__(self, name: str) -> None:
        self.host = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_pool_opens_each_host_once_even_under_concurrency_and_closes_all():
    opened: list[str] = []

    def opener(host, inventory, options):
        opened.append(host.name)
        return _Conn(host.name)
    pool = ConnectionPool(INV, opener=opener)
    threads = [threading.Thread(target=pool.get, args=("pc02",)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn = pool.get("pc02")
    pool.close()
    assert opened == ["pc02"] and conn.closed


def test_pool_remembers_a_failed_open_briefly_then_retries():
    calls: list[str] = []

    def opener(host, inventory, options):
        calls.append(host.name)
        raise ConnectionFault("refused")
    pool = ConnectionPool(INV, opener=opener, failure_memo=60)
    for _ in range(3):
        with pytest.raises(ConnectionFault):
            pool.get("pc02")
    assert calls == ["pc02"]
    pool.failure_memo = 0
    with pytest.raises(ConnectionFault):
        pool.get("pc02")
    assert calls == ["pc02", "pc02"]
    pool.mark_unreachable("pc02", "refused")
    with pytest.raises(ConnectionFault, match="unreachable"):
        pool.get("pc02")
    assert len(calls) == 2


def test_an_artifact_reached_through_a_link_out_of_the_artifacts_folder_is_refused(tmp_path):
    """A folder or file inside artifacts/ that is a symbolic link to elsewhere is refused too
    (the runner makes no links there: someone edited the state directory)."""
    import hashlib
    outside = tmp_path / "elsewhere"
    (outside / "alice").mkdir(parents=True)
    (outside / "alice" / "merged.json").write_bytes(b"{}")
    sha = hashlib.sha256(b"{}").hexdigest()
    with StateStore(tmp_path / "st") as store:
        arts = ArtifactStore(store)
        arts.write("contacts/bob/merged.json", b"{}")
        assert arts.read("contacts/bob/merged.json") == b"{}"
        (tmp_path / "st" / "artifacts" / "contacts" / "alice").symlink_to(outside / "alice")
        store.add_artifact("contacts/alice/merged.json", "contacts/alice/merged.json", sha, 2)
        with pytest.raises(RunnerError, match="points outside"):
            arts.read("contacts/alice/merged.json")
        (tmp_path / "st" / "artifacts" / "contacts" / "bob" / "link.json").symlink_to(outside / "alice" / "merged.json")
        store.add_artifact("contacts/bob/merged.json", "contacts/bob/link.json", sha, 2)
        with pytest.raises(RunnerError, match="points outside"):
            arts.read("contacts/bob/merged.json")
        # a backslash is part of a name here: the folder checked is the one opened
        (tmp_path / "st" / "artifacts" / "contacts\\carol").symlink_to(outside / "alice")
        store.add_artifact("contacts/carol/merged.json", "contacts\\carol/merged.json", sha, 2)
        with pytest.raises(RunnerError, match="points outside"):
            arts.read("contacts/carol/merged.json")
        # a folder first read while missing, then made a link to elsewhere
        store.add_artifact("contacts/dave/merged.json", "contacts/dave/merged.json", sha, 2)
        assert arts.read("contacts/dave/merged.json") is None
        (tmp_path / "st" / "artifacts" / "contacts" / "dave").symlink_to(outside / "alice")
        with pytest.raises(RunnerError, match="points outside"):
            arts.read("contacts/dave/merged.json")


@pytest.mark.parametrize("recorded", ["/etc/passwd", "../../outside.json", "contacts/../../../x.json"])
def test_an_artifact_row_pointing_outside_the_artifacts_folder_is_refused(tmp_path, recorded):
    import hashlib
    (tmp_path / "outside.json").write_bytes(b"{}")
    with StateStore(tmp_path / "st") as store:
        store.add_artifact("contacts/alice/merged.json", recorded, hashlib.sha256(b"{}").hexdigest(), 2)
        arts = ArtifactStore(store)
        with pytest.raises(RunnerError, match="points outside"):
            arts.read("contacts/alice/merged.json")
        with pytest.raises(RunnerError, match="points outside"):
            arts.write("contacts/alice/merged.json", b"{}")


def test_artifacts_under_reads_a_range_of_the_index_and_finds_exactly_the_prefix(tmp_path):
    """artifacts_under() is a range of the name index, not a scan, and still returns exactly
    the names that start with the prefix, newest version of each, whatever their characters."""
    from runner.state import _prefix_end

    names = ["contacts/a/x.reg", "contacts/a/y.reg", "contacts/a0/x.reg", "contacts/a.b/x.reg",
             "contacts/a/\u00e9\u4e2d\U0001f600.reg", "contacts/b/x.reg", "contacts/a", "contacts/",
             "lcs-imported/a.json", "contacts/\U0010ffff/x", "contacts/\U0010ffff\U0010ffff/y",
             "contacts/\ud7ff/z", "contacts/\ue000/w"]
    with StateStore(tmp_path) as store:
        for n, name in enumerate(names):
            store.add_artifact(name, f"v/{n}", f"{n:064x}", n)
        store.add_artifact("contacts/a/x.reg", "v/new", "f" * 64, 99)
        for prefix in ("contacts/a/", "contacts/a", "contacts/", "contacts/\U0010ffff", "contacts/\ud7ff",
                       "", "lcs-imported/", "zzz/"):
            got = [r.name for r in store.artifacts_under(prefix)]
            assert got == sorted({n for n in names if n.startswith(prefix)}), prefix
        assert store.artifacts_under("contacts/a/")[0].path == "v/new"
        plan = " ".join(str(tuple(r)) for r in store._read(
            "EXPLAIN QUERY PLAN SELECT MAX(id) FROM artifacts WHERE name >= ? AND name < ?"
            " AND substr(name, 1, ?) = ? GROUP BY name", ("contacts/a/", _prefix_end("contacts/a/"), 11,
                                                             "contacts/a/")))
        assert "artifacts_name" in plan and "name>? AND name<?" in plan.replace("=", ""), plan
    assert _prefix_end("a/") == "a0" and _prefix_end("\ud7ff") == "\ue000"
    assert _prefix_end("x\U0010ffff") == "y" and _prefix_end("\U0010ffff") is None and _prefix_end("") is None
