"""Without lab workers (``RUNNER_LAB_WORKERS=0``, runner.lab.workers), the in-process lab
emulates at most LAB_SLOTS round trips at once in the calling threads, whatever the threads;
a slow host's delay is spent outside a slot (runner.connections.lab). With workers, the
same holds of the workers: tests/test_lab_workers.py."""
from __future__ import annotations

import threading
import time

import pytest

from runner.connections import lab as labconn
from runner.lab import workers
from runner.lab.shell import Shell
from runner.loader import load_inventory
from runner.lab.generator import generate

THREADS = 8
SLOTS = 2  # the lab's slots in these tests (the machine's CPUs otherwise)


@pytest.fixture(autouse=True)
def _in_thread(monkeypatch):
    monkeypatch.setenv("RUNNER_LAB_WORKERS", "0")


def _inventory(tmp_path):
    return load_inventory(generate(tmp_path / "lab", clients=4, users_per_client=1, contacts=1, seed=3))


def test_the_slots_are_the_cpus_at_least_two():
    assert workers.cpus() >= 2


def test_no_more_round_trips_at_once_than_slots(tmp_path, monkeypatch):
    inv = _inventory(tmp_path)
    hosts = sorted(inv.group_hosts("clients"))
    lock = threading.Lock()
    inside = [0]
    peak = [0]
    real = Shell.run

    def counted(self, *args, **kwargs):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            time.sleep(0.02)  # long enough for every thread to be trying at once
            return real(self, *args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    depth = threading.local()

    def outermost(self, *args, **kwargs):  # a batch file's lines run in nested Shell.run calls
        if getattr(depth, "n", 0):
            return real(self, *args, **kwargs)
        depth.n = 1
        try:
            return counted(self, *args, **kwargs)
        finally:
            depth.n = 0
    monkeypatch.setattr(Shell, "run", outermost)
    monkeypatch.setattr(labconn, "LAB_SLOTS", threading.BoundedSemaphore(SLOTS))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            name = hosts[i % len(hosts)]
            conn = labconn.LabConnection(inv.hosts[name], inv, None)
            for _ in range(5):
                assert conn.run("ver").rc == 0
                assert conn.run_input("findstr /r /c:\"^\"", b"a\r\n").stdout == "a\r\n"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert peak[0] == SLOTS  # every slot used, never more


def test_a_slow_hosts_delay_is_spent_outside_a_slot(tmp_path, monkeypatch):
    inv = _inventory(tmp_path)
    slow, other = sorted(inv.group_hosts("clients"))[:2]
    free_during_delay: list[bool] = []
    real_before = labconn.Faults.before_command
    sem = threading.BoundedSemaphore(SLOTS)
    monkeypatch.setattr(labconn, "LAB_SLOTS", sem)

    def before(self, host):
        if host.name == slow:
            # every slot free while the slow host waits (nothing else runs here)
            got = [sem.acquire(blocking=False) for _ in range(SLOTS)]
            for ok in got:
                if ok:
                    sem.release()
            free_during_delay.append(all(got))
            time.sleep(0.05)
        return real_before(self, host)
    monkeypatch.setattr(labconn.Faults, "before_command", before)
    assert labconn.LabConnection(inv.hosts[slow], inv, None).run("ver").rc == 0
    assert labconn.LabConnection(inv.hosts[other], inv, None).run("ver").rc == 0
    assert free_during_delay == [True]
