"""The in-process lab's round trips run in worker processes (runner.lab.workers): they answer
as the lab does in the calling thread, no more run at once than there are workers, a dead
worker is a dropped connection that a new worker replaces, workers end with their runner,
and a terminal's Ctrl-C stops the run, not the command in hand."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from runner.connections import lab as labconn
from runner.errors import ChannelFault, PermanentFault
from runner.lab import workers
from runner.lab.generator import generate
from runner.loader import load_inventory

REPO = Path(__file__).resolve().parent.parent


def _inventory(root: Path):
    return load_inventory(generate(root / "lab", clients=4, users_per_client=1, contacts=2, seed=11))


def _conversation(inv, root: Path) -> list:
    """What a session sees of a client and of the LCS server: output, exit codes, errors."""
    client = sorted(inv.group_hosts("clients"))[0]
    conn = labconn.LabConnection(inv.hosts[client], inv, None)
    seen: list = []
    for line in ("ver", r'reg query "HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion" /v CurrentVersion',
                 "dir C:\\ & echo %COMPUTERNAME% ^& done", "nosuchprogram /x"):
        r = conn.run(line)
        seen.append((line, r.rc, r.stdout, r.stderr))
    r = conn.run_input('findstr /r /c:"^"', "Zoë & \"Z\"\r\n".encode("utf-8") + b"\xff\xfe raw\r\n")
    seen.append(("findstr", r.rc, r.stdout, r.stderr))
    conn.put("contacts ü\r\n".encode("utf-8"), r"C:\Temp\w\put.txt")
    seen.append(("get", conn.get(r"C:\Temp\w\put.txt")))
    seen.append(("take", conn.take(r"C:\Temp\w\put.txt")))
    for call in (lambda: conn.get(r"C:\Temp\w\put.txt"), lambda: conn.put(b"x", r"C:\Temp\a<b>.txt")):
        with pytest.raises(PermanentFault) as e:
            call()
        seen.append(("fault", e.value.message.replace(str(root), "ROOT")))
    lcs = sorted(inv.group_hosts("lcs_servers"))[0]
    r = labconn.LabConnection(inv.hosts[lcs], inv, None).run(
        'wmic /namespace:\\\\root\\cimv2 path MSFT_SIPESUserSetting get PrimaryURI /format:list')
    seen.append(("wmic", r.rc, r.stdout, r.stderr))
    return seen


def test_a_worker_answers_as_the_calling_thread_does(tmp_path, monkeypatch):
    in_workers = _conversation(_inventory(tmp_path / "a"), tmp_path / "a")
    monkeypatch.setenv(workers.WORKERS_ENV, "0")
    assert workers.pool() is None
    in_thread = _conversation(_inventory(tmp_path / "b"), tmp_path / "b")
    assert in_workers == in_thread
    assert ("wmic", 0, "", "No Instance(s) Available.\r\n") in in_workers   # nobody enabled yet


def test_no_more_round_trips_at_once_than_workers(tmp_path, monkeypatch):
    monkeypatch.setenv(workers.WORKERS_ENV, "2")
    monkeypatch.setattr(workers, "_pool", None)
    inv = _inventory(tmp_path)
    hosts = sorted(inv.group_hosts("clients"))
    lock = threading.Lock()
    inside, peak = [0], [0]
    real = workers._Worker.call

    def counted(self, request):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            return real(self, request)
        finally:
            with lock:
                inside[0] -= 1
    monkeypatch.setattr(workers._Worker, "call", counted)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            conn = labconn.LabConnection(inv.hosts[hosts[i % len(hosts)]], inv, None)
            for _ in range(6):
                assert conn.run("ver & dir C:\\").rc == 0
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert peak[0] == 2
    workers._pool.stop()


def test_a_dead_worker_is_a_dropped_connection_and_a_new_one_takes_its_place(tmp_path, monkeypatch):
    monkeypatch.setenv(workers.WORKERS_ENV, "2")
    monkeypatch.setattr(workers, "_pool", None)
    inv = _inventory(tmp_path)
    conn = labconn.LabConnection(inv.hosts[sorted(inv.group_hosts("clients"))[0]], inv, None)
    assert conn.run("ver").rc == 0
    pool = workers.pool()
    old = {w.proc.pid for w in pool._live}
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    dropped = 0
    for _ in range(len(old) + 1):
        try:
            assert conn.run("ver").rc == 0
        except ChannelFault as e:
            assert "dropped" in e.message
            dropped += 1
    assert dropped >= 1
    assert conn.run("ver").rc == 0
    assert not old & {w.proc.pid for w in pool._live}
    pool.stop()


def test_threads_waiting_for_a_worker_outlive_the_workers_dying(tmp_path, monkeypatch):
    """Every worker dies while more threads wait for one than there are workers: the waiters
    get new workers (their callers, whose connection dropped, never come back for them)."""
    monkeypatch.setenv(workers.WORKERS_ENV, "2")
    monkeypatch.setattr(workers, "_pool", None)
    inv = _inventory(tmp_path)
    hosts = sorted(inv.group_hosts("clients"))
    conns = [labconn.LabConnection(inv.hosts[hosts[i % len(hosts)]], inv, None) for i in range(8)]
    pool = workers.pool()
    started = [pool._take(), pool._take()]   # both workers running, idle
    with pool._cond:
        pool._idle.extend(started)
    doomed = [w.proc.pid for w in pool._live]
    for pid in doomed:   # each takes the next request and never answers it
        os.kill(pid, signal.SIGSTOP)
    outcomes: dict[int, str] = {}

    def one(i: int) -> None:
        try:
            outcomes[i] = "ok" if conns[i].run("ver").rc == 0 else "rc"
        except ChannelFault:
            outcomes[i] = "dropped"
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    time.sleep(0.3)   # two requests sent to the stopped workers, six threads waiting for one
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread waited for ever for a worker"
    assert sorted(outcomes.values()) == ["dropped"] * 2 + ["ok"] * 6
    pool.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_workers_end_with_their_runner_however_it_ends(tmp_path):
    inv_path = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=1, seed=2)
    script = textwrap.dedent(f"""
        import sys, time
        from runner.connections import lab as labconn
        from runner.lab import workers
        from runner.loader import load_inventory
        inv = load_inventory({str(inv_path)!r})
        conn = labconn.LabConnection(inv.hosts[sorted(inv.group_hosts("clients"))[0]], inv, None)
        conn.run("ver")
        print(" ".join(str(w.proc.pid) for w in workers.pool()._live), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, workers.WORKERS_ENV: "2"})
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert pids and all(_alive(p) for p in pids)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_a_changed_lab_json_reaches_the_workers(tmp_path):
    inv = _inventory(tmp_path)
    client = sorted(inv.group_hosts("clients"))[0]
    install = r"msiexec /i C:\Temp\none.msi /qn"
    assert labconn.LabConnection(inv.hosts[client], inv, None).run(install).rc != 1618
    cfg_path = tmp_path / "lab" / "lab.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["faults"]["global"]["msiexec_1618"] = 1.0   # drawn inside msiexec, in the worker
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    labconn._labs.clear()
    assert labconn.LabConnection(inv.hosts[client], inv, None).run(install).rc == 1618


def test_the_shared_stores_write_lock_holds_across_processes(tmp_path):
    """The lab's worker processes (and the served lab's sessions) queue on one lock per store."""
    from runner.lab.store import process_write_lock
    db = tmp_path / "lcs.db"
    db.write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from runner.lab.store import process_write_lock
        with process_write_lock({str(db)!r}):
            print("held", flush=True)
            time.sleep(0.5)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t = time.monotonic()
    with process_write_lock(db):
        waited = time.monotonic() - t
    holder.wait(10)
    assert waited >= 0.3   # it waited for the other process to let go
    t = time.monotonic()
    with process_write_lock(db):   # and is free at once when nobody holds it
        pass
    assert time.monotonic() - t < 0.3


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_stops_the_run_and_resuming_finishes(tmp_path):
    """A terminal sends Ctrl-C to the runner's whole process group; the workers are in a
    session of their own and finish the command in hand, the runner exits 99."""
    inv_path = generate(tmp_path / "lab", clients=8, users_per_client=2, contacts=3, seed=21)
    subprocess.run([sys.executable, "-m", "runner", "lab", "faults", "slow=1", "--dir", str(tmp_path / "lab")],
                   check=True, capture_output=True)
    cmd = [sys.executable, "-m", "runner", "apply", str(REPO / "playbooks" / "gradual.yml"), "-i", str(inv_path),
           "--state", str(tmp_path / "state")]
    env = {**os.environ, "RUNNER_RETRY_DELAY_SCALE": "0.05"}
    env.pop(workers.WORKERS_ENV, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    time.sleep(2.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C landed")
    assert proc.returncode == 99, err
    assert "Traceback" not in err and "lab failed" not in err
    subprocess.run([sys.executable, "-m", "runner", "lab", "faults", "slow=0", "--dir", str(tmp_path / "lab")],
                   check=True, capture_output=True)
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    verify = subprocess.run([sys.executable, "-m", "runner", "lab", "verify", "--dir", str(tmp_path / "lab")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
