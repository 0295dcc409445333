"""Small step modules and builders shared by the engine, state and CLI tests.

The steps work on a directory given by the variable ``workdir`` (one file per
target), append one line per real change to ``<workdir>/journal.log`` (so a
test can count the effects), and fail on request, reading their fault budget
from files so that the count survives a process restart.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from runner.connections.base import CommandResult
from runner.connections.registry import register_kind
from runner.errors import ConnectionFault, PermanentFault, TransientFault
from runner.model import Host, Inventory, Play, Playbook, Step, User
from runner.plan import Plan, PlannedPlay, Task, Wave
from runner.steps.base import Diff, StepModule, StepResult
from runner.steps.registry import register


def _name(target: Any) -> str:
    return target.name if isinstance(target, Host) else target.alias


def _journal(ctx: Any, line: str) -> None:
    with open(Path(ctx.vars["workdir"]) / "journal.log", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class WriteFile(StepModule):
    """Make ``<workdir>/<step>/<target>`` hold ``content``; sleeps ``sleep`` seconds in apply."""

    name = "t_write_file"
    target = "host"
    args_schema = {"type": "object"}

    def _path(self, ctx: Any, target: Any) -> Path:
        return Path(ctx.vars["workdir"]) / ctx.args.get("dir", "files") / _name(target)

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        path = self._path(ctx, target)
        want = str(ctx.args.get("content", "done"))
        have = path.read_text() if path.exists() else None
        if have == want:
            return None
        return Diff(f"write {path.name}", lines=[f"- {have}", f"+ {want}"], data={"want": want})

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:
        time.sleep(float(ctx.args.get("sleep", 0)))
        path = self._path(ctx, target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(diff.data["want"])
        _journal(ctx, f"{ctx.args.get('dir', 'files')} {_name(target)}")
        return StepResult("changed", data={"wrote": str(path)})


class UserWriteFile(WriteFile):
    """The same, per user."""

    name = "t_user_write_file"
    target = "user"


class Flaky(StepModule):
    """Fails ``fail_times`` times per target with a TransientFault (or the fault named by ``fault``)."""

    name = "t_flaky"
    target = "host"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        counter = Path(ctx.vars["workdir"]) / f"attempts-{_name(target)}"
        n = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(n + 1))
        if n < int(ctx.args.get("fail_times", 0)):
            kind = ctx.args.get("fault", "transient")
            if kind == "permanent":
                raise PermanentFault("access denied")
            if kind == "connection":
                raise ConnectionFault("connection reset by peer", host=_name(target))
            if kind == "bug":
                raise KeyError("oops")
            raise TransientFault("server busy")
        return None

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:  # pragma: no cover - never reached
        raise AssertionError("probe never returns a diff")


class RemoteEcho(StepModule):
    """Runs ``echo`` on the host through ctx.connection (reaches the test connection kinds)."""

    name = "t_remote_echo"
    target = "host"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        result = ctx.connection(target.name).run("echo hello")
        return None if result.ok else Diff("echo failed")

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:  # pragma: no cover
        return StepResult("changed")


class Gather(StepModule):
    """Read-only facts step: returns facts about the host."""

    name = "t_gather"
    target = "host"
    read_only = True
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        return Diff("gather facts")

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:
        return StepResult("ok", data={"facts": {"messenger": "4.7", "host": target.name}})


class UseFacts(StepModule):
    """Fails unless facts for the host are visible; reports them."""

    name = "t_use_facts"
    target = "host"
    args_schema = {"type": "object"}

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        facts = ctx.facts(target.name)
        if not facts:
            raise PermanentFault("no facts")
        return None


class EchoConnection:
    """An in-test connection kind: answers every command with rc 0."""

    opened: list[str] = []

    def __init__(self, host: Host, inventory: Inventory, options: Any) -> None:
        self.host = host.name
        EchoConnection.opened.append(host.name)

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        return CommandResult(0, "hello\r\n")

    def put(self, data: bytes, remote_path: str) -> None:
        pass

    def get(self, remote_path: str) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _dead(host: Host, inventory: Inventory, options: Any) -> Any:
    raise ConnectionFault(f"connect to {host.name}: connection refused", host=host.name)


def register_all() -> None:
    """Register the test steps and connection kinds (idempotent)."""
    for cls in (WriteFile, UserWriteFile, Flaky, RemoteEcho, Gather, UseFacts):
        register(cls)
    register_kind("echo", EchoConnection)
    register_kind("dead", _dead)


register_all()


# -- building plans without the loader ---------------------------------------------


def fingerprint(module: str, args: dict) -> str:
    return hashlib.sha256(f"{module}{sorted(args.items())}".encode()).hexdigest()[:16]


def make_step(name: str, module: str, **kw: Any) -> Step:
    args = kw.pop("args", {})
    return Step(name=name, module=module, args=args, fingerprint=kw.pop("fingerprint", fingerprint(module, args)),
                **kw)


def make_inventory(workdir: Path, hosts: list[str], *, users: dict[str, list[str]] | None = None,
                   connection: dict[str, str] | None = None) -> Inventory:
    connection = connection or {}
    host_map = {h: Host(name=h, connection=connection.get(h, "echo"), groups=("clients",)) for h in hosts}
    user_map = {u: User(alias=u, im_address=f"{u}@im.contoso.com", clients=tuple(c))
                for u, c in (users or {}).items()}
    from runner.model import Group
    return Inventory(path=str(workdir / "inventory.yml"), hosts=host_map,
                     groups={"all": Group("all", children=("clients",)),
                             "clients": Group("clients", hosts=tuple(hosts))},
                     users=user_map, vars={"workdir": str(workdir)})


def make_plan(inventory: Inventory, steps: list[Step], *, waves: list[list[str]] | None = None,
              max_fail_percentage: float | None = None) -> Plan:
    """One play over all hosts/users; ``waves`` cuts the hosts into waves (names w1, w2...)."""
    play = Play(name="test play", steps=tuple(steps), max_fail_percentage=max_fail_percentage)
    host_waves = waves or [list(inventory.hosts)]
    out = []
    for n, wave_hosts in enumerate(host_waves):
        wname = f"w{n + 1}" if waves else None
        tasks = []
        for step in steps:
            cls_target = "user" if step.module.startswith("t_user") else "host"
            if cls_target == "host":
                targets = [inventory.hosts[h] for h in wave_hosts]
            else:
                targets = [u for u in inventory.users.values() if any(c in wave_hosts for c in u.clients)]
            for t in targets:
                tname = _name(t)
                tasks.append(Task(key=f"0/{step.name}/{cls_target}:{tname}", play_index=0, step=step,
                                  kind=cls_target, target=t, wave=wname))
        out.append(Wave(name=wname, tasks=tuple(tasks)))
    return Plan(plays=(PlannedPlay(index=0, play=play, waves=tuple(out)),))
