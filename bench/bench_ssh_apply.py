"""Benchmark: `runner apply playbooks/gradual.yml` over real OpenSSH (`runner lab serve`).

Usage: python bench/bench_ssh_apply.py [--clients 48] [--seed 5] [--runs 3] [--forks N] [--port P]
       python bench/bench_ssh_apply.py --clients 200 --runs 1     (the 200-client check)

Each run: a new lab (`runner lab init --clients N --seed S`, not timed) served by
`runner lab serve` in a child process (OpenSSH's sshd, its default MaxSessions 10,
the lab shell as ForceCommand), then the first apply of gradual.yml on the served
inventory, in this process exactly as the CLI runs it (runner.apply), at the CLI's
default forks unless --forks is given. Printed per run, then the median of the runs:

  wall        the apply's wall time
  hosts/s     hosts of the inventory / wall
  trips/host  command lines, puts, gets and takes over SSH / hosts
  net share   thread-seconds inside SSH calls (connect, run, put, get, take) /
              thread-seconds inside tasks: how much of the work is waiting on the network

With --max-live N, at most N hosts keep a transport at once (the pool sheds the least
recently used idle ones, which reconnect when next used): "transports shed" counts them.

With --by-step, each run also prints per step (its name in the playbook): round trips
and round trips per host of the inventory, most first: where the trips still go.

The script exits 1 when an apply does not exit 0. The machine is shared: give the
median of several runs, and say what else ran.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from runner import engine as engine_mod
from runner.apply import ApplyRequest, apply
from runner.connections import ssh as sshconn

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = str(ROOT / "playbooks" / "gradual.yml")
CALLS = ("run", "run_input", "put", "get", "take")


class NetMeter:
    """Round trips per host and thread-seconds inside SSH calls and inside tasks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.trips: Counter = Counter()
        self.steps: Counter = Counter()   # round trips per step name (the task running the call)
        self.net = 0.0
        self.task = 0.0

    def install(self) -> None:
        meter = self
        orig_task = engine_mod.Engine._run_task

        def run_task(self: Any, pplay: Any, task: Any) -> Any:
            t0 = time.perf_counter()
            meter.local.step = task.step.name
            try:
                return orig_task(self, pplay, task)
            finally:
                meter.local.step = None
                with meter.lock:
                    meter.task += time.perf_counter() - t0

        engine_mod.Engine._run_task = run_task  # type: ignore[method-assign]
        names = [n for n in CALLS if hasattr(sshconn.SSHConnection, n)]
        for name in names + ["_ensure_transport"]:
            if hasattr(sshconn.SSHConnection, name):
                setattr(sshconn.SSHConnection, name, self._timed(getattr(sshconn.SSHConnection, name),
                                                                 counted=name in names))

    def _timed(self, orig: Any, *, counted: bool) -> Any:
        meter = self

        def wrapper(conn: Any, *a: Any, **kw: Any) -> Any:
            depth = getattr(meter.local, "depth", 0)
            if counted:
                with meter.lock:
                    meter.trips[conn.host] += 1
                    meter.steps[getattr(meter.local, "step", None) or "(outside tasks)"] += 1
            meter.local.depth = depth + 1
            t0 = time.perf_counter()
            try:
                return orig(conn, *a, **kw)
            finally:
                meter.local.depth = depth
                if depth == 0:  # a call inside a timed call (run -> connect) is counted once
                    with meter.lock:
                        meter.net += time.perf_counter() - t0
        return wrapper

    def reset(self) -> None:
        self.trips.clear()
        self.steps.clear()
        self.net = self.task = 0.0


def _count_reconnects() -> dict[str, int]:
    """Counts the transports the pool made idle connections give back (SSHConnection.shed)."""
    counts = {"shed": 0}
    real = sshconn.SSHConnection.shed

    def shed(conn: Any) -> bool | None:
        done = real(conn)
        counts["shed"] += done is True
        return done
    sshconn.SSHConnection.shed = shed  # type: ignore[method-assign]
    return counts


def _runner(*args: str, **kw: Any) -> subprocess.Popen:
    """``python -m runner ARGS`` with this process's interpreter and PYTHONPATH (the code under test)."""
    return subprocess.Popen([sys.executable, "-m", "runner", *args], env=dict(os.environ), **kw)


def _serve(lab: Path, port: int) -> tuple[subprocess.Popen, Path]:
    proc = _runner("lab", "serve", "--dir", str(lab), "--port", str(port),
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"runner lab serve exited {proc.wait()}: {''.join(seen)[-2000:]}")
        seen.append(line)
        if line.startswith("Ctrl-C to stop"):
            inv = next(x.split(":", 1)[1].strip() for x in seen if x.startswith("inventory:"))
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, Path(inv)
    proc.terminate()
    raise SystemExit("runner lab serve did not come up in 600 s")


def one_run(root: Path, clients: int, seed: int, forks: int | None, port: int, meter: NetMeter) -> dict[str, Any]:
    lab = root / "lab"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    init = _runner("lab", "init", "--dir", str(lab), "--clients", str(clients), "--seed", str(seed),
                   stdout=subprocess.DEVNULL)
    if init.wait() != 0:
        raise SystemExit("runner lab init failed")
    server, inventory = _serve(lab, port)
    try:
        meter.reset()
        kw: dict[str, Any] = {} if forks is None else {"forks": forks}
        req = ApplyRequest(playbook=PLAYBOOK, inventory=str(inventory), state_dir=str(root / "state"), **kw)
        out = io.StringIO()
        t0 = time.perf_counter()
        rc = apply(req, stdout=out, stderr=out)
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    hosts = clients + 2
    result = {"rc": rc, "wall": wall, "hosts_per_s": hosts / wall, "trips_per_host": sum(meter.trips.values()) / hosts,
              "net_share": meter.net / meter.task if meter.task else 0.0, "forks": req.forks,
              "tail": out.getvalue()[-1500:] if rc != 0 else "", "steps": dict(meter.steps), "hosts": hosts}
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=48)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--forks", type=int, default=None, help="default: the CLI's default forks")
    ap.add_argument("--port", type=int, default=None, help="default: a random free-looking port")
    ap.add_argument("--dir", default=None, help="work directory (default: a new temporary one)")
    ap.add_argument("--by-step", action="store_true", help="print each run's round trips per step")
    ap.add_argument("--max-live", type=int, default=None,
                    help="hosts keeping an SSH transport at once (runner.connections.registry."
                         "MAX_LIVE_CONNECTIONS; default: the runner's own cap)")
    ns = ap.parse_args()
    if not os.access("/usr/sbin/sshd", os.X_OK):
        print("OpenSSH sshd not installed (apt-get install openssh-server)", file=sys.stderr)
        return 2
    if ns.max_live is not None:
        from runner.connections import registry
        registry.MAX_LIVE_CONNECTIONS = ns.max_live
    meter = NetMeter()
    meter.install()
    reconnects = _count_reconnects()
    base = Path(ns.dir) if ns.dir else Path(tempfile.mkdtemp(prefix="bench-ssh-apply-"))
    results = []
    failed = False
    try:
        for i in range(ns.runs):
            port = ns.port or random.randint(20000, 60000)
            r = one_run(base / f"run{i + 1}", ns.clients, ns.seed, ns.forks, port, meter)
            results.append(r)
            failed |= r["rc"] != 0
            print(f"run {i + 1}: rc={r['rc']} forks={r['forks']} wall {r['wall']:.1f} s  "
                  f"{r['hosts_per_s']:.2f} hosts/s  {r['trips_per_host']:.1f} trips/host  "
                  f"net share {r['net_share']:.0%}  transports shed {reconnects['shed']}", flush=True)
            reconnects["shed"] = 0
            if r["tail"]:
                print(r["tail"])
            if ns.by_step:
                for step, n in sorted(r["steps"].items(), key=lambda kv: -kv[1]):
                    print(f"    {step[:44]:44} {n:6d} trips  {n / r['hosts']:5.2f} per host")
    finally:
        if not ns.dir:
            shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in results) for k in ("wall", "hosts_per_s", "trips_per_host", "net_share")}
    print(f"median of {len(results)} ({ns.clients} clients, seed {ns.seed}): wall {med['wall']:.1f} s  "
          f"{med['hosts_per_s']:.2f} hosts/s  {med['trips_per_host']:.1f} trips/host  "
          f"net share {med['net_share']:.0%}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
