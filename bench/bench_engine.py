"""Benchmark: the runner's own overhead (loader, planner, engine, state store, output), without the lab.

Usage: python bench/bench_engine.py [SIZES ...] [--forks N] [--rtt-ms MS] [--rtt-sizes ...]
                                    [--rtt-forks N] [--result-bytes B] [--profile]
       (default: 1000 10000; RTT phase at 120 ms on 1000 with 100 forks)

For each size an estate of SIZE hosts and SIZE users (one client each) is
written into a temporary directory: an inventory whose hosts use the
in-bench connection BenchConnection, registered in place of the ``ssh``
kind (its ``run()`` sleeps the round-trip time and answers rc 0), and a playbook of one play with two steps, one per
host and one per user, each doing exactly one round trip in its probe and
returning a small result (``--result-bytes`` of data) from its apply.
Everything goes through the real path: ``runner.cli.run(["apply", ...,
"--state", DIR, "--forks", N])``, human output to /dev/null.

Printed per size (round-trip time 0, i.e. pure overhead):

  load+plan   loading the inventory and playbook and planning, timed alone
  apply       first run (every task probes and applies), human output
  apply-json  the same with --json (a fresh state directory)
  resume      the same command again: every task skipped from the checkpoints
  store       StateStore.record_task + flush alone: checkpoint rows/s and
              the WAL size before close (close checkpoints it away), and the
              size of the database the apply left behind

With ``--rtt-ms`` (default 120, DESIGN.md's OpenSSH round trip on loopback)
the first run is repeated with that round trip and compared with the ideal
``sum over steps of ceil(tasks / forks) x rtt`` (~ tasks x rtt / forks).
``--profile`` prints the top 15 functions by cumulative time of a 0 ms run
(main thread and worker threads merged; BENCH_SORT=tottime sorts otherwise).
"""
from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import math
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from _profiling import ThreadProfiles  # bench/ is on sys.path when run as a script
from runner import engine as engine_mod
from runner.cli import run as cli_run
from runner.connections.base import CommandResult
from runner.connections.registry import register_kind
from runner.events import TaskOutcome
from runner.loader import load_inventory, load_playbook
from runner.model import Host, Inventory
from runner.plan import build_plan
from runner.state import StateStore
from runner.steps.base import Diff, StepModule, StepResult
from runner.steps.registry import register

#: Round-trip time of the ``bench`` connection kind, in seconds (set per phase).
RTT = [0.0]
#: Bytes of payload each task returns in its result data.
RESULT_BYTES = [256]


class BenchConnection:
    """A connection whose every command costs one round trip (``RTT[0]`` seconds of sleep)."""

    def __init__(self, host: Host, inventory: Inventory, options: Any) -> None:
        self.host = host.name

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        if RTT[0]:
            time.sleep(RTT[0])
        return CommandResult(0, f"{self.host}\r\n")

    def put(self, data: bytes, remote_path: str) -> None:
        if RTT[0]:
            time.sleep(RTT[0])

    def get(self, remote_path: str) -> bytes:
        if RTT[0]:
            time.sleep(RTT[0])
        return b""

    def close(self) -> None:
        pass


class BenchHostStep(StepModule):
    """One round trip in the probe, a change reported by apply with a result of RESULT_BYTES."""

    name = "bench_host_step"
    target = "host"
    args_schema = {"type": "object"}

    def _host(self, target: Any) -> str:
        return target.name

    def probe(self, ctx: Any, target: Any) -> Diff | None:
        out = ctx.connection(self._host(target)).run(f"echo {ctx.args.get('marker', '')}").stdout.strip()
        return Diff(f"mark {out}", lines=[f"- none", f"+ {ctx.args.get('marker', '')}"], data={"out": out})

    def apply(self, ctx: Any, target: Any, diff: Diff) -> StepResult:
        pad = "x" * RESULT_BYTES[0]
        return StepResult("changed", message="marked",
                          data={"out": diff.data["out"], "marker": ctx.args.get("marker"), "pad": pad,
                                "items": [{"n": i, "ok": True} for i in range(8)]})


class BenchUserStep(BenchHostStep):
    """The same per user, through the connection of the user's first client."""

    name = "bench_user_step"
    target = "user"

    def _host(self, target: Any) -> str:
        return target.clients[0]


def register_bench() -> None:
    """Put BenchConnection in place of the ``ssh`` kind (the inventory schema only knows lab and
    ssh; the bench models OpenSSH) and register the two bench steps."""
    register_kind("ssh", BenchConnection)
    register(BenchHostStep)
    register(BenchUserStep)


PLAYBOOK = """\
- name: Bench play
  hosts: clients
  users: all
  steps:
    - name: Mark hosts
      bench_host_step: {marker: "{{ inventory_hostname }}-{{ site }}"}
    - name: Mark users
      bench_user_step: {marker: "{{ user.alias }}"}
"""


def write_estate(directory: Path, size: int) -> tuple[Path, Path]:
    """Write inventory.yml (SIZE hosts + SIZE users) and playbook.yml into ``directory``."""
    lines = ["all:", "  vars:", "    site: hq", "  children:", "    clients:", "      hosts:"]
    lines += [f"        pc{i:05}: {{}}" for i in range(size)]
    lines.append("users:")
    lines += [f"  u{i:05}: {{im_address: u{i:05}@im.contoso.com, clients: [pc{i:05}]}}" for i in range(size)]
    inv = directory / "inventory.yml"
    inv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pb = directory / "playbook.yml"
    pb.write_text(PLAYBOOK, encoding="utf-8")
    return inv, pb


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send the runner's stdout to /dev/null (the output is still formatted and written)."""
    with open(os.devnull, "w", encoding="utf-8") as null:
        old = sys.stdout
        sys.stdout = null
        try:
            yield
        finally:
            sys.stdout = old


class Profiler:
    """cProfile of the main thread plus every task worker thread (wraps Engine._run_task)."""

    def __init__(self) -> None:
        self.threads = ThreadProfiles()
        self.profiles = self.threads.profiles
        self.orig = engine_mod.Engine._run_task

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        threads = self.threads
        orig = self.orig

        def run_task(engine: Any, pplay: Any, task: Any) -> Any:
            prof = threads.current()
            prof.enable()
            try:
                return orig(engine, pplay, task)
            finally:
                prof.disable()

        main = cProfile.Profile()
        self.profiles.insert(0, main)
        engine_mod.Engine._run_task = run_task  # type: ignore[method-assign]
        main.enable()
        try:
            yield
        finally:
            main.disable()
            engine_mod.Engine._run_task = orig  # type: ignore[method-assign]

    def print_top(self, n: int = 15) -> None:
        out = io.StringIO()
        stats = pstats.Stats(self.profiles[0], stream=out)
        for p in self.profiles[1:]:
            stats.add(p)
        stats.sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(n)
        print(out.getvalue())


def apply_run(inv: Path, pb: Path, state: Path, forks: int, *, as_json: bool = False,
              fresh: bool = False) -> tuple[int, float]:
    """One ``runner apply`` through the CLI; returns (exit code, wall seconds)."""
    args = ["apply", str(pb), "-i", str(inv), "--state", str(state), "--forks", str(forks)]
    if as_json:
        args.append("--json")
    if fresh:
        args.append("--fresh")
    t0 = time.perf_counter()
    with quiet_stdout():
        code = cli_run(args)
    return code, time.perf_counter() - t0


def store_rate(directory: Path, rows: int) -> tuple[float, int]:
    """Checkpoint rows/s (queue ``rows`` outcomes with record_task, then flush) and the WAL size then."""
    store = StateStore(directory)
    try:
        pad = "x" * RESULT_BYTES[0]
        now = time.time()
        outcomes = [TaskOutcome(key=f"0/step/host:pc{i:05}", play_index=0, step="step", module="m",
                                kind="host", target=f"pc{i:05}", status="changed", attempts=1,
                                started=now, ended=now, message="marked",
                                data={"out": f"pc{i:05}", "pad": pad}, fingerprint="f" * 16)
                    for i in range(rows)]
        t0 = time.perf_counter()
        for o in outcomes:
            store.record_task("bench", o)
        store.flush()
        rate = rows / (time.perf_counter() - t0)
        return rate, file_size(store.path.with_name(store.path.name + "-wal"))
    finally:
        store.close()


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def ideal_seconds(tasks_per_step: list[int], forks: int, rtt: float) -> float:
    """Wall time if only round trips cost: each step runs its tasks ``forks`` at a time."""
    return sum(math.ceil(n / forks) * rtt for n in tasks_per_step)


def bench_size(size: int, forks: int, root: Path, profile: bool) -> None:
    """The 0 ms figures for one estate size."""
    d = root / f"estate-{size}"
    d.mkdir()
    inv, pb = write_estate(d, size)
    tasks = 2 * size
    RTT[0] = 0.0

    load_plan, load_inv = math.inf, math.inf
    for _ in range(2):  # the first round also pays one-off costs (imports, schema compilation)
        t0 = time.perf_counter()
        inventory = load_inventory(str(inv))
        t1 = time.perf_counter()
        plan = build_plan(load_playbook(str(pb)), inventory)
        t2 = time.perf_counter()
        load_plan, load_inv = min(load_plan, t2 - t0), min(load_inv, t1 - t0)
    assert len(plan.tasks()) == tasks, (len(plan.tasks()), tasks)
    print(f"\n== {size} hosts + {size} users: {tasks} tasks, forks {forks}, rtt 0 ms ==")
    print(f"  load+plan    {load_plan:7.2f} s  (inventory {load_inv:.2f} s, playbook+plan {load_plan - load_inv:.2f} s)")

    def line(label: str, code: int, wall: float) -> None:
        engine = max(wall - load_plan, 1e-9)
        print(f"  {label:<12} {wall:7.2f} s  exit {code}  {tasks / wall:8.0f} tasks/s"
              f"  engine {engine * 1e6 / tasks:6.0f} us/task (wall minus load+plan)")

    state = d / "state"
    code, wall = apply_run(inv, pb, state, forks)
    line("apply", code, wall)
    db = file_size(state / "state.db")
    code, wall = apply_run(inv, pb, state, forks)
    line("resume", code, wall)
    code, wall = apply_run(inv, pb, d / "state-json", forks, as_json=True)
    line("apply-json", code, wall)
    rate, wal = store_rate(d / "state-store", tasks)
    print(f"  store        {rate:8.0f} checkpoint rows/s (record_task + flush of {tasks});"
          f" WAL then {wal / 1e6:.1f} MB; state.db after apply {db / 1e6:.1f} MB")
    if profile:
        prof = Profiler()
        with prof.active():
            code, wall = apply_run(inv, pb, d / "state-profile", forks)
        print(f"  profiled apply: {wall:.2f} s (exit {code}); top 15 by cumulative time:")
        prof.print_top(15)


def bench_rtt(size: int, forks: int, rtt_ms: float, root: Path) -> None:
    """Wall time against the ideal with a real-network round trip."""
    d = root / f"rtt-{size}"
    d.mkdir()
    inv, pb = write_estate(d, size)
    RTT[0] = rtt_ms / 1000
    try:
        t0 = time.perf_counter()
        inventory = load_inventory(str(inv))
        plan = build_plan(load_playbook(str(pb)), inventory)
        load_plan = time.perf_counter() - t0
        per_step: dict[str, int] = {}
        for t in plan.tasks():
            per_step[t.step.name] = per_step.get(t.step.name, 0) + 1
        tasks = sum(per_step.values())
        code, wall = apply_run(inv, pb, d / "state", forks)
    finally:
        RTT[0] = 0.0
    ideal = ideal_seconds(list(per_step.values()), forks, rtt_ms / 1000)
    print(f"\n== {size} hosts + {size} users: {tasks} tasks, forks {forks}, rtt {rtt_ms:g} ms ==")
    print(f"  apply        {wall:7.2f} s  exit {code}  ideal {ideal:.2f} s (tasks x rtt / forks)"
          f"  overhead {wall - ideal:+.2f} s ({100 * (wall / ideal - 1):+.0f}%), of which load+plan"
          f" {load_plan:.2f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--forks", type=int, default=25, help="forks of the 0 ms runs (default 25)")
    parser.add_argument("--rtt-ms", type=float, default=120.0, help="round trip of the RTT phase (0: skip)")
    parser.add_argument("--rtt-sizes", nargs="*", type=int, default=[1000])
    parser.add_argument("--rtt-forks", type=int, default=100)
    parser.add_argument("--result-bytes", type=int, default=256, help="payload each task returns")
    parser.add_argument("--profile", action="store_true", help="cProfile a 0 ms run of the first size")
    args = parser.parse_args(argv)
    RESULT_BYTES[0] = args.result_bytes
    register_bench()
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        for n, size in enumerate(args.sizes):
            bench_size(size, args.forks, root, args.profile and n == 0)
        if args.rtt_ms > 0:
            for size in args.rtt_sizes:
                bench_rtt(size, args.rtt_forks, args.rtt_ms, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
