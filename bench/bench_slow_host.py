"""Benchmark: one client 20 times slower than the others, and what it costs its wave.

Usage: python bench/bench_slow_host.py [--clients 48] [--seed 1] [--factor 20] [--forks 25]

Two copies of one generated lab run ``playbooks/gradual.yml`` in-process, as the CLI
runs it. The first is plain; it measures every wave's wall time and the median time of
one round trip (command line, put, get or take) on the clients. In the second, the lab's
``slow`` fault is on for one client of the first wave, with its delay set so that each of
that client's round trips takes ``--factor`` times the median (the fault sleeps before
each command; puts and gets are slowed alike here). Printed per wave: the wall time of
both runs, its growth, and the slow client's own work (the time its round trips took in
the second run, summed). The target (docs/server-batching.md): a wave grows by no more
than the slow client's own work, since only that client's users wait for it.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from runner import engine as engine_mod
from runner.apply import ApplyRequest, apply
from runner.connections import lab as labconn
from runner.events import PLAY_START, WAVE_END
from runner.lab import faults as lab_faults
from runner.lab.generator import generate

PLAYBOOK = str(Path(__file__).resolve().parent.parent / "playbooks" / "gradual.yml")
TRIPS = ("run", "run_input", "put", "get", "take")


class Timer:
    """Times every lab round trip by host, and every wave's wall time, by patching."""

    def __init__(self, slow_host: str | None = None, slow_seconds: float = 0.0) -> None:
        self.slow_host = slow_host
        self.slow_seconds = slow_seconds
        self.trip_times: dict[str, list[float]] = defaultdict(list)
        self.waves: list[tuple[str, float]] = []
        self._mark = 0.0
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> "Timer":
        timer = self
        for name in TRIPS:
            orig = getattr(labconn.LabConnection, name, None)
            if orig is None:
                continue

            def wrapper(conn: Any, *a: Any, _orig: Any = orig, _name: str = name, **kw: Any) -> Any:
                t0 = time.perf_counter()
                if conn.host == timer.slow_host and _name != "run":
                    time.sleep(timer.slow_seconds)   # the fault slows command lines; slow the files alike
                try:
                    return _orig(conn, *a, **kw)
                finally:
                    with timer._lock:
                        timer.trip_times[conn.host].append(time.perf_counter() - t0)
            self._undo.append((labconn.LabConnection, name, orig))
            setattr(labconn.LabConnection, name, wrapper)
        orig_emit = engine_mod.Engine.emit

        def emit(engine: Any, kind: str, **data: Any) -> None:
            now = time.perf_counter()
            if kind == PLAY_START:
                timer._mark = now
            elif kind == WAVE_END:
                timer.waves.append((f"play {data.get('play')} {data.get('wave')}", now - timer._mark))
                timer._mark = now
            orig_emit(engine, kind, **data)
        self._undo.append((engine_mod.Engine, "emit", orig_emit))
        engine_mod.Engine.emit = emit  # type: ignore[method-assign]
        self._old_slow = lab_faults.SLOW_SECONDS
        lab_faults.SLOW_SECONDS = self.slow_seconds
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)
        lab_faults.SLOW_SECONDS = self._old_slow


def _run(lab: Path, state: Path, forks: int, timer: Timer) -> int:
    labconn._labs.clear()
    with timer:
        return apply(ApplyRequest(playbook=PLAYBOOK, inventory=str(lab / "inventory.yml"), state_dir=str(state),
                                  forks=forks, quiet=True), stdout=open("/dev/null", "w"),
                     stderr=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--factor", type=float, default=20.0)
    ap.add_argument("--forks", type=int, default=25)
    ns = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    try:
        generate(root / "a" / "lab", clients=ns.clients, seed=ns.seed)
        shutil.copytree(root / "a" / "lab", root / "b" / "lab")
        import json
        manifest = json.loads((root / "a" / "lab" / "manifest.json").read_text())
        first_wave = sorted({u.get("wave") for u in manifest["users"].values() if u.get("wave")})[0]
        slow = sorted({c for u in manifest["users"].values() if u.get("wave") == first_wave for c in u["clients"]})[0]
        plain = Timer()
        rc_a = _run(root / "a" / "lab", root / "a" / "state", ns.forks, plain)
        clients = [h for h in plain.trip_times if h.startswith("pc")]
        median = statistics.median(t for h in clients for t in plain.trip_times[h])
        delay = (ns.factor - 1) * median
        cfg_path = root / "b" / "lab" / "lab.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("faults", {}).setdefault("hosts", {})[slow] = {"slow": 1.0}
        cfg_path.write_text(json.dumps(cfg))
        slowed = Timer(slow, delay)
        rc_b = _run(root / "b" / "lab", root / "b" / "state", ns.forks, slowed)
        own = sum(slowed.trip_times[slow])
        print(f"{ns.clients} clients, seed {ns.seed}, forks {ns.forks}: rc {rc_a} plain, {rc_b} with {slow} slow "
              f"(first wave {first_wave})")
        print(f"client round trip median {median * 1000:.1f} ms; {slow}'s slowed by {delay * 1000:.1f} ms each "
              f"({ns.factor:g} times): {len(slowed.trip_times[slow])} round trips, its own work {own:.2f} s")
        print(f"{'wave':28} {'plain s':>8} {'slow s':>8} {'growth s':>9} {'growth / own work':>18}")
        for (name, a), (_, b) in zip(plain.waves, slowed.waves):
            print(f"{name:28} {a:8.2f} {b:8.2f} {b - a:9.2f} {(b - a) / own if own else 0:18.2f}")
        total_a, total_b = sum(a for _, a in plain.waves), sum(b for _, b in slowed.waves)
        print(f"{'whole run':28} {total_a:8.2f} {total_b:8.2f} {total_b - total_a:9.2f} "
              f"{(total_b - total_a) / own if own else 0:18.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
