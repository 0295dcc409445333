"""Sessions of one SSH connection: a per-host limit, back-pressure, faults confined to one channel.

No sshd here: FakeTransport (tests/ssh_helpers.py) counts open sessions and
refuses beyond its MaxSessions as OpenSSH does, so these tests see exactly
how many channels the connection asks for at once.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paramiko
import pytest

from engine_support import make_inventory, make_plan, make_step
from runner import errors
from runner.connections.registry import register_kind
from runner.connections.sessions import DEFAULT_MAX_SESSIONS, SessionLimiter, parse_max_sessions
from runner.engine import Engine, EngineOptions
from runner.events import TASK_END
from runner.state import StateStore
from runner.steps.base import Diff, StepModule, StepResult
from runner.steps.registry import register

from ssh_helpers import FakeTransport, fake_ssh_connection


def _hammer(conn: Any, commands: list[str]) -> dict[str, Any]:
    """Run every command on its own thread at once; command -> result or exception."""
    results: dict[str, Any] = {}

    def one(i: int, cmd: str) -> None:
        try:
            results[f"{i}:{cmd}"] = conn.run(cmd)
        except Exception as exc:  # noqa: BLE001 - the test looks at what came back
            results[f"{i}:{cmd}"] = exc

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(commands)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_the_default_limit_stays_below_openssh_maxsessions():
    assert 1 <= DEFAULT_MAX_SESSIONS < 10


def test_a_connection_never_opens_more_sessions_than_the_default_limit():
    conn, opened = fake_ssh_connection(max_sessions=10)
    results = _hammer(conn, ["sleep 0.05"] * 40)
    bad = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not bad
    assert opened[0].client_peak == DEFAULT_MAX_SESSIONS
    assert len(opened) == 1                       # one connection for all of it


def test_ssh_max_sessions_sets_the_per_host_limit():
    conn, opened = fake_ssh_connection(max_sessions=10, ssh_max_sessions=3)
    results = _hammer(conn, ["sleep 0.03"] * 15)
    assert all(r.rc == 0 for r in results.values())
    assert opened[0].client_peak == 3


def test_sessions_refused_by_the_server_are_waited_for_not_faults():
    # the server allows fewer sessions than we were told: its refusals are back-pressure
    conn, opened = fake_ssh_connection(max_sessions=3)
    results = _hammer(conn, ["sleep 0.03"] * 20)
    assert all(not isinstance(r, Exception) and r.rc == 0 for r in results.values()), results
    assert opened[0].refused > 0 and opened[0].peak == 3
    assert len(opened) == 1                       # a refusal never drops the connection


def test_the_sftp_channel_counts_as_a_session(monkeypatch):
    class FakeSFTP:
        """Holds one session channel of the transport for as long as it is open."""

        def __init__(self, t: FakeTransport) -> None:
            self.chan = t.open_session()
            self.files: dict[str, bytes] = {}

        def get_channel(self) -> Any:
            return self.chan

        def open(self, path: str, mode: str) -> Any:
            sftp = self

            class F:
                def __enter__(self) -> "F":
                    return self

                def __exit__(self, *a: object) -> None:
                    pass

                def set_pipelined(self, on: bool) -> None:
                    pass

                def write(self, data: bytes) -> None:
                    sftp.files[path] = data

            return F()

        def close(self) -> None:
            self.chan.close()

    monkeypatch.setattr(paramiko.SFTPClient, "from_transport", classmethod(lambda cls, t: FakeSFTP(t)))
    conn, opened = fake_ssh_connection(max_sessions=10, ssh_max_sessions=4)
    errors_seen: list[Exception] = []

    def putter() -> None:
        try:
            for i in range(5):
                conn.put(b"x", rf"C:\Temp\f{i}.txt")
        except Exception as exc:  # noqa: BLE001
            errors_seen.append(exc)

    threads = [threading.Thread(target=putter) for _ in range(2)]
    for t in threads:
        t.start()
    results = _hammer(conn, ["sleep 0.03"] * 12)
    for t in threads:
        t.join(10)
    assert not errors_seen and all(not isinstance(r, Exception) for r in results.values())
    assert opened[0].client_peak <= 4             # 3 commands + the SFTP subsystem, never 5


def test_one_channel_dying_fails_only_its_own_command():
    conn, opened = fake_ssh_connection(max_sessions=10)
    results = _hammer(conn, ["sleep 0.2"] * 6 + ["die"])
    died = results.pop("6:die")
    assert isinstance(died, errors.ChannelFault) and died.transient and not died.unreachable
    assert all(not isinstance(r, Exception) and r.rc == 0 for r in results.values()), results
    assert len(opened) == 1 and opened[0].is_active()   # the others' transport was left alone


def test_a_dropped_transport_is_reopened_for_the_commands_still_waiting():
    conn, opened = fake_ssh_connection(max_sessions=10, ssh_max_sessions=2)
    results = _hammer(conn, ["drop"] + ["sleep 0.05"] * 9)
    faults = [r for r in results.values() if isinstance(r, Exception)]
    # only commands whose channel was open when the transport died failed, and transiently
    assert all(isinstance(f, errors.ChannelFault) and not f.unreachable for f in faults), faults
    assert len(faults) <= 2
    assert sum(1 for r in results.values() if not isinstance(r, Exception)) >= 8
    assert len(opened) == 2 and conn.reconnects == 1     # one fresh transport, shared again


def test_a_host_that_cannot_be_connected_to_is_a_connection_fault(monkeypatch):
    conn, opened = fake_ssh_connection()
    opened[0].close()

    def refuse() -> None:
        raise errors.ConnectionFault("lcs01: connection to 127.0.0.1:22 refused", host="lcs01")

    conn._connect = refuse                        # type: ignore[method-assign]
    with pytest.raises(errors.ConnectionFault) as info:
        conn.run("echo hi")
    assert info.value.unreachable and not isinstance(info.value, errors.ChannelFault)
    assert conn.sessions.in_use == 0              # the slot came back


def test_limiter_counts_and_waits():
    lim = SessionLimiter(2)
    assert lim.acquire() and lim.acquire()
    assert not lim.acquire(timeout=0.05)
    threading.Timer(0.05, lim.release).start()
    assert lim.acquire(timeout=5)
    assert lim.peak == 2 and lim.waited == 2
    with pytest.raises(ValueError):
        SessionLimiter(0)


@pytest.mark.parametrize("raw,want", [(None, DEFAULT_MAX_SESSIONS), (4, 4), ("6", 6)])
def test_ssh_max_sessions_values(raw, want):
    assert parse_max_sessions(raw) == want


def test_a_bad_ssh_max_sessions_is_refused_naming_the_host():
    from runner.connections.ssh import SSHConnection
    from runner.model import Host
    for bad in (0, "many", True):
        host = Host(name="lcs01", connection="ssh", address="127.0.0.1", vars={"ssh_max_sessions": bad})
        with pytest.raises(errors.PermanentFault, match="lcs01: ssh_max_sessions must be"):
            SSHConnection(host, None, None)


# --- through the engine: one user's dying command does not take the server down ---

_SHARED: dict[str, Any] = {}


def _shared_fake_ssh(host: Any, inventory: Any, options: Any) -> Any:
    conn, opened = fake_ssh_connection(max_sessions=10)
    _SHARED["opened"] = opened
    return conn


class RunOnServer(StepModule):
    """Per user: one command on the shared server ``server``; ``die`` for the users in ``die_for``."""

    name = "t_user_run_on_server"
    target = "user"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        cmd = "die" if target.alias in ctx.args.get("die_for", []) else "sleep 0.05"
        ctx.connection(ctx.args["server"]).run(cmd)
        return None

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:  # pragma: no cover
        return StepResult("ok")


register(RunOnServer)
register_kind("fake_ssh", _shared_fake_ssh)


def test_a_command_dying_on_a_shared_server_fails_only_that_users_task(tmp_path: Path):
    users = {f"u{i:02d}": ["lcs01"] for i in range(30)}
    inv = make_inventory(tmp_path, ["lcs01"], users=users, connection={"lcs01": "fake_ssh"})
    plan = make_plan(inv, [make_step("import", "t_user_run_on_server",
                                     args={"server": "lcs01", "die_for": ["u03"]})],
                     max_fail_percentage=100)
    events: list[Any] = []
    with StateStore(tmp_path / "state") as store:
        store.acquire_lock()
        info = store.start_run(tmp_path / "pb.yml", tmp_path / "inv.yml", command="runner apply pb.yml")
        engine = Engine(inv, store, info.id,
                        EngineOptions(forks=25, default_retries=3, default_delay=0.001, max_delay=0.001),
                        [events.append], resumed=info.resumed)
        summary = engine.run(plan)
    outcomes = {e.data["outcome"].target: e.data["outcome"] for e in events if e.kind == TASK_END}
    assert outcomes["u03"].status == "failed" and outcomes["u03"].attempts == 4
    others = {a: o.status for a, o in outcomes.items() if a != "u03"}
    assert set(others.values()) == {"ok"}, others
    assert not engine.pool.is_unreachable("lcs01")
    assert summary.exit_code == 2 and summary.totals["unreachable"] == 0
    assert _SHARED["opened"][0].client_peak <= DEFAULT_MAX_SESSIONS


class CannotConnectOnce(StepModule):
    """Per user: a command on ``server``; the users in ``no_connect`` get a connect failure instead."""

    name = "t_user_cannot_connect"
    target = "user"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        conn = ctx.connection(ctx.args["server"])
        if target.alias in ctx.args.get("no_connect", []):
            import time
            time.sleep(0.3)       # the others' commands complete meanwhile
            raise errors.ConnectionFault(f"{ctx.args['server']}: SSH handshake failed (EOFError)",
                                         host=ctx.args["server"])
        conn.run("sleep 0.05")
        return None

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:  # pragma: no cover
        return StepResult("ok")


register(CannotConnectOnce)


def test_a_host_that_answered_other_tasks_meanwhile_is_not_written_off(tmp_path: Path):
    users = {f"u{i:02d}": ["lcs01"] for i in range(20)}
    inv = make_inventory(tmp_path, ["lcs01"], users=users, connection={"lcs01": "fake_ssh"})
    steps = [make_step("enable", "t_user_cannot_connect", args={"server": "lcs01", "no_connect": ["u00"]}),
             make_step("import", "t_user_run_on_server", args={"server": "lcs01"})]
    plan = make_plan(inv, steps, max_fail_percentage=100)
    events: list[Any] = []
    with StateStore(tmp_path / "state") as store:
        store.acquire_lock()
        info = store.start_run(tmp_path / "pb.yml", tmp_path / "inv.yml", command="runner apply pb.yml")
        engine = Engine(inv, store, info.id,
                        EngineOptions(forks=25, default_retries=1, default_delay=0.001, max_delay=0.001),
                        [events.append], resumed=info.resumed)
        summary = engine.run(plan)
    outcomes = [e.data["outcome"] for e in events if e.kind == TASK_END]
    u00 = next(o for o in outcomes if o.target == "u00")
    assert u00.status == "failed" and "answered other tasks" in u00.message
    assert not engine.pool.is_unreachable("lcs01")
    assert [o.status for o in outcomes if o.target != "u00"] == ["ok"] * 38   # both steps, 19 users
    assert summary.totals["unreachable"] == 0


def test_a_host_given_up_fails_at_once_but_its_open_connection_is_not_closed_under_others():
    from runner.connections.registry import ConnectionPool
    from runner.model import Host, Inventory

    closed: list[str] = []

    class Conn:
        host = "lcs01"

        def close(self) -> None:
            closed.append(self.host)

    inv = Inventory(path="", hosts={"lcs01": Host(name="lcs01", connection="x")}, groups={}, users={})
    pool = ConnectionPool(inv, opener=lambda h, i, o: Conn())
    pool.get("lcs01")
    pool.mark_unreachable("lcs01", "lcs01: connection refused")
    with pytest.raises(errors.HostGivenUp, match="lcs01 is unreachable"):
        pool.get("lcs01")
    assert closed == []                           # a task still running on it finishes
    pool.close()
    assert closed == ["lcs01"]
