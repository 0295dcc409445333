"""At most ``max_live`` hosts keep a transport at once: the pool asks the least recently used
idle connection to give its transport back (``shed``), and that connection reconnects on its
next use. Over real sshd: nothing in flight is ever cut, and a whole run stays correct."""
from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from runner.connections import registry
from runner.connections.registry import ConnectionPool
from runner.connections.ssh import SSHConnection
from runner.model import Host, Inventory


class FakeConn:
    """A connection that holds a 'transport' until shed; busy ones refuse."""

    def __init__(self, name: str) -> None:
        self.host = name
        self.live = True
        self.busy = False
        self.sheds = 0

    def use(self) -> None:
        self.live = True

    def shed(self) -> bool | None:
        if self.busy:
            return False
        if not self.live:
            return None
        self.live = False
        self.sheds += 1
        return True

    def close(self) -> None:
        self.live = False


def _inventory(n: int) -> Inventory:
    hosts = {f"h{i}": Host(name=f"h{i}", connection="x") for i in range(n)}
    return Inventory(path="", hosts=hosts, groups={}, users={})


def test_the_pool_keeps_at_most_max_live_transports_shedding_the_least_recently_used():
    conns: dict[str, FakeConn] = {}
    pool = ConnectionPool(_inventory(10), opener=lambda h, i, o: conns.setdefault(h.name, FakeConn(h.name)),
                          max_live=3)
    for rnd in range(3):
        for i in range(10):
            pool.get(f"h{i}").use()
            assert sum(c.live for c in conns.values()) <= 3
    assert [c.host for c in conns.values() if c.live] == ["h7", "h8", "h9"]   # the most recent
    assert pool.shed_count == sum(c.sheds for c in conns.values()) == 27
    assert pool.opened == 10                                                  # objects are kept


def test_a_busy_connection_is_never_shed_and_an_idle_one_goes_instead():
    conns: dict[str, FakeConn] = {}
    pool = ConnectionPool(_inventory(4), opener=lambda h, i, o: conns.setdefault(h.name, FakeConn(h.name)),
                          max_live=2)
    pool.get("h0").use()
    conns["h0"].busy = True          # a command of a long task runs on it
    pool.get("h1").use()
    pool.get("h2").use()             # over the cap: h0 is oldest but busy, h1 goes
    assert conns["h0"].live and not conns["h1"].live and conns["h2"].live
    pool.get("h3").use()
    assert conns["h0"].live          # still busy, still kept
    assert pool.shed_count == 2


def test_connections_without_shed_are_not_counted():
    class Plain:
        def close(self) -> None:
            pass
    pool = ConnectionPool(_inventory(5), opener=lambda h, i, o: Plain(), max_live=1)
    for i in range(5):
        pool.get(f"h{i}")
    assert pool.shed_count == 0 and pool.opened == 5


def test_the_cap_follows_the_open_file_limit(monkeypatch):
    import runner.oslimits as oslimits
    monkeypatch.setattr(oslimits, "open_files_limit", lambda: 1024)
    assert registry.live_connection_cap() == min(registry.MAX_LIVE_CONNECTIONS, 1024 - registry.LIVE_FD_RESERVE)
    monkeypatch.setattr(oslimits, "open_files_limit", lambda: 200)
    assert registry.live_connection_cap() == 16
    monkeypatch.setattr(oslimits, "open_files_limit", lambda: 1 << 20)
    assert registry.live_connection_cap() == registry.MAX_LIVE_CONNECTIONS


# -- over real sshd ------------------------------------------------------------------------

@pytest.fixture
def fake_served(tmp_path):
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    from ssh_helpers import make_lab, serve
    server = serve(make_lab(tmp_path, 5), fake_shell=True)
    yield server
    server.stop()


def _active(conn: SSHConnection) -> bool:
    t = conn._transport
    return t is not None and t.is_active()


@pytest.mark.ssh
def test_over_sshd_shed_transports_reconnect_and_a_running_command_is_never_cut(fake_served):
    from ssh_helpers import ssh_host
    names = sorted(n for n in fake_served.addresses if n.startswith("pc"))
    hosts = {n: ssh_host(fake_served, n) for n in names}
    inv = Inventory(path="", hosts=hosts, groups={}, users={})
    pool = ConnectionPool(inv, max_live=2)
    try:
        slow = pool.get(names[0])
        result: dict[str, object] = {}
        worker = threading.Thread(target=lambda: result.setdefault("r", slow.run("sleep 2")))
        worker.start()
        time.sleep(0.5)                                  # the sleep is running on names[0]
        for rnd in range(2):
            for n in names[1:]:
                conn = pool.get(n)
                res = conn.run(f"echo {rnd}")
                assert res.rc == 0 and res.stdout.strip().endswith(f"echo {rnd}"), res
                assert sum(_active(c) for c in pool._open.values()) <= 3   # the cap, and the busy one
        worker.join(10)
        assert result["r"].rc == 0                       # never cut, though the oldest  # type: ignore[attr-defined]
        assert pool.shed_count >= 6
        assert sum(c.reconnects for c in pool._open.values()) >= 4   # shed ones came back on use
    finally:
        pool.close()


@pytest.mark.ssh
@pytest.mark.slow
def test_gradual_over_sshd_with_two_live_transports_migrates_everyone(tmp_path, monkeypatch):
    """A whole night over a served lab where only 2 hosts keep a transport at once (of 6):
    every user ends as the manifest wants, and the rerun changes nothing."""
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    from runner.apply import ApplyRequest, apply
    from runner.lab.generator import generate
    from runner.lab.verify import verify
    from ssh_helpers import serve
    lab = tmp_path / "lab"
    generate(lab, clients=4, users_per_client=2, contacts=4, seed=9)
    server = serve(lab, fake_shell=False)
    sheds: list[str] = []
    real_shed = SSHConnection.shed

    def counting(self: SSHConnection) -> bool | None:
        done = real_shed(self)
        if done is True:
            sheds.append(self.host)
        return done
    monkeypatch.setattr(SSHConnection, "shed", counting)
    monkeypatch.setattr(registry, "MAX_LIVE_CONNECTIONS", 2)
    playbook = str(Path(__file__).resolve().parents[1] / "playbooks" / "gradual.yml")
    try:
        req = ApplyRequest(playbook=playbook, inventory=str(server.inventory_out), state_dir=str(tmp_path / "state"))
        out = io.StringIO()
        assert apply(req, stdout=out, stderr=out) == 0, out.getvalue()[-3000:]
        assert len(sheds) >= 10, sheds
        report = verify(lab, signin=True)
        assert report.ok and report.decommissioned, report.to_dict()
        again = io.StringIO()
        assert apply(req, stdout=again, stderr=again) == 0
        total = next(ln for ln in again.getvalue().splitlines() if ln.startswith("TOTAL"))
        assert "changed=0" in total and "failed=0" in total
    finally:
        server.stop()


def test_hosts_that_hold_no_transport_leave_the_count_and_unreachable_ones_are_dropped():
    """A host that never connected (or was given up) is not counted against the cap: counted, it
    made every later get() walk and shed the dead ones, and kept healthy hosts below the cap."""
    conns: dict[str, FakeConn] = {}

    def opener(h, i, o):
        c = conns.setdefault(h.name, FakeConn(h.name))
        c.live = not h.name.startswith("h1")      # h1..: connects never succeed, nothing held
        return c
    pool = ConnectionPool(_inventory(12), opener=opener, max_live=4)
    for i in range(12):
        pool.get(f"h{i}")
    pool.mark_unreachable("h0", "refused")
    assert "h0" not in pool._live
    assert len(pool._live) <= 4 and pool.shed_count == sum(c.sheds for c in conns.values())
    for i in (2, 3, 4, 5, 2, 3):                    # the live hosts again: the dead ones age out
        pool.get(f"h{i}").use()
    assert set(pool._live) == {"h2", "h3", "h4", "h5"}   # held nothing: no longer counted
    before = pool.shed_count
    pool.get("h2")                                  # already live, under the cap: nothing to do
    assert pool.shed_count == before


def test_a_host_asked_for_again_while_it_is_being_shed_keeps_its_place():
    """The race the pool must survive: a task's get() of a host between that host's shed and the
    pool's bookkeeping (it has reconnected) leaves it counted, so a later shed can take it."""
    conns: dict[str, FakeConn] = {}
    pool: ConnectionPool

    class Racing(FakeConn):
        def shed(self) -> bool | None:
            done = super().shed()
            if self.host == "h0" and done:
                pool.get("h0").use()                # asked for again, mid-shed: reconnects
            return done
    pool = ConnectionPool(_inventory(4), opener=lambda h, i, o: conns.setdefault(h.name, Racing(h.name)),
                          max_live=2)
    pool.get("h0").use()
    pool.get("h1").use()
    pool.get("h2").use()                            # sheds h0, which is asked for meanwhile
    assert conns["h0"].live and "h0" in pool._live
    assert {n for n, c in conns.items() if c.live} == set(pool._live) == {"h0", "h2"}
