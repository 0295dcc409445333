"""Benchmark: `runner apply playbooks/gradual.yml` against generated labs.

Usage: python bench/bench_apply.py [CLIENTS ...] [--forks N] [--profile]
       (default: 200 1000)

For each size a lab is generated into a temporary directory (not timed), then
three runs are timed in-process, exactly as the CLI runs them (runner.apply):

  first    the migration itself (every task does its work)
  again    the same command again: every task is skipped from the checkpoints
  fresh    ``--fresh``: a new run that re-probes every target (all ok)

Printed per run: wall time, tasks and tasks/s; per step (in plan order,
summed over waves): wall time, tasks, and lab round trips (command lines,
puts, gets and takes) per target (its tasks of every wave summed), per (task, host)
touched (the targets' budgets of docs/performance.md), with their maxima, and
round trips per task (all the step's trips, chunks included, over its tasks: the
figure for the chunked server steps, whose trips are shared by a chunk's users);
and how many commands were mutating (journaled). Tasks of different steps overlap
(a wave flows by its dependencies), so a step's wall time counts the spans
in which its outcomes were being reported. DESIGN.md wants one round trip per host per step where the work
allows. ``--profile`` prints the top of a cProfile of the first run.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _profiling import ThreadProfiles  # bench/ is on sys.path when run as a script
from runner import engine as engine_mod
from runner.apply import ApplyRequest, apply
from runner.connections import lab as labconn
from runner.events import STEP_START, WAVE_END, RUN_END
from runner.lab.generator import generate

SORT = __import__("os").environ.get("BENCH_SORT", "tottime")
PLAYBOOK = str(Path(__file__).resolve().parent.parent / "playbooks" / "gradual.yml")


class Meter:
    """Counts lab round trips per (step, target) and wall time per step, by patching the lab connection."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.trips: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.pairs: dict[str, dict[tuple[str, str | None, str], int]] = defaultdict(lambda: defaultdict(int))
        self.step_time: dict[str, float] = defaultdict(float)
        self.step_tasks: dict[str, int] = defaultdict(int)
        self.order: list[str] = []
        self.seen: set[tuple[str, Any]] = set()
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None
        self.profiling = False
        self.threads = ThreadProfiles()

    def install(self) -> None:
        meter = self
        orig_task = engine_mod.Engine._run_task
        orig_emit = engine_mod.Engine.emit

        def run_task(self: Any, pplay: Any, task: Any) -> Any:
            meter.local.key = (task.step.name, task.target_name)
            meter.local.wave = task.wave
            prof = None
            if meter.profiling:
                prof = meter.threads.current()
                prof.enable()
            try:
                return orig_task(self, pplay, task)
            finally:
                if prof is not None:
                    prof.disable()
                meter.local.key = None

        def emit(self: Any, kind: str, **data: Any) -> None:
            now = time.perf_counter()
            if kind in (STEP_START, WAVE_END, RUN_END) and meter._current is not None:
                name, t0 = meter._current
                meter.step_time[name] += now - t0
                meter._current = None
            if kind == STEP_START:
                meter._current = (data["step"], now)
                seen = (data["step"], data.get("wave"))
                if seen not in meter.seen:  # a step's header comes again when outcomes interleave
                    meter.seen.add(seen)
                    meter.step_tasks[data["step"]] += data.get("tasks", 0)
                if data["step"] not in meter.order:
                    meter.order.append(data["step"])
            orig_emit(self, kind, **data)

        def counted(name: str) -> Any:
            orig = getattr(labconn.LabConnection, name)

            def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
                key = getattr(meter.local, "key", None) or ("(outside tasks)", self.host)
                with meter._lock:
                    meter.trips[key[0]][key[1]] += 1
                    meter.pairs[key[0]][(key[1], getattr(meter.local, "wave", None), self.host)] += 1
                return orig(self, *a, **kw)
            return wrapper

        orig_chunk = engine_mod.Engine._run_chunk

        def run_chunk(self: Any, pplay: Any, chunk: Any) -> Any:
            # a chunk's round trips are the step's, shared by its users: counted per step
            meter.local.key = (chunk[0][0].step.name, "(chunks)")
            prof = None
            if meter.profiling:
                prof = meter.threads.current()
                prof.enable()
            try:
                return orig_chunk(self, pplay, chunk)
            finally:
                if prof is not None:
                    prof.disable()
                meter.local.key = None

        engine_mod.Engine._run_task = run_task  # type: ignore[method-assign]
        engine_mod.Engine._run_chunk = run_chunk  # type: ignore[method-assign]
        engine_mod.Engine.emit = emit  # type: ignore[method-assign]
        for n in [n for n in ("run", "put", "get", "take") if hasattr(labconn.LabConnection, n)]:
            setattr(labconn.LabConnection, n, counted(n))

    def reset(self) -> None:
        self.trips.clear()
        self.pairs.clear()
        self.step_time.clear()
        self.step_tasks.clear()
        self.order.clear()
        self.seen.clear()

    def report(self) -> None:
        print(f"    {'step':<40} {'wall s':>7} {'tasks':>6} {'trips/target':>12} {'max':>4} "
              f"{'trips/(task,host)':>19} {'max':>4} {'trips/task':>10}")
        for name in self.order:
            per = self.trips.get(name, {})
            chunked = per.get("(chunks)", 0)
            single = {k: v for k, v in per.items() if k != "(chunks)"}
            avg = sum(single.values()) / len(single) if single else 0.0
            pairs = {k: v for k, v in self.pairs.get(name, {}).items() if k[0] != "(chunks)"}
            pavg = sum(pairs.values()) / len(pairs) if pairs else 0.0
            tasks = self.step_tasks[name]
            print(f"    {name[:40]:<40} {self.step_time[name]:7.2f} {tasks:6d} "
                  f"{avg:12.2f} {max(single.values(), default=0):4d} {pavg:19.2f} "
                  f"{max(pairs.values(), default=0):4d} "
                  f"{(sum(per.values()) / tasks if tasks else 0.0):10.3f}" + (" chunked" if chunked else ""))
        extra = self.trips.get("(outside tasks)")
        if extra:
            print(f"    round trips outside tasks: {sum(extra.values())}")


def _mutations(lab_dir: Path, since: float) -> int:
    from runner.lab.store import Lab
    return len(Lab(lab_dir).mutations_since(since))


def bench(n: int, forks: int, profile: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-apply-"))
    try:
        t0 = time.perf_counter()
        inv = generate(root / "lab", clients=n, users_per_client=2, contacts=20, seed=1)
        print(f"\n{n} clients: lab generated in {time.perf_counter() - t0:.1f} s (not counted)")
        meter = Meter()
        meter.install()
        for label, fresh in (("first", False), ("again", False), ("fresh", True)):
            meter.reset()
            req = ApplyRequest(playbook=PLAYBOOK, inventory=str(inv), forks=forks,
                               state_dir=str(root / "state"), fresh=fresh, default_delay=0.01)
            out = io.StringIO()
            prof = cProfile.Profile() if profile and label == "first" else None
            meter.profiling = prof is not None
            since = time.time()
            t = time.perf_counter()
            if prof:
                prof.enable()
            rc = apply(req, stdout=out, stderr=out)
            if prof:
                prof.disable()
            meter.profiling = False
            dt = time.perf_counter() - t
            tasks = sum(meter.step_tasks.values())
            print(f"  {label:<6} rc={rc} {dt:7.2f} s  {tasks} tasks  {tasks / dt:8.1f} tasks/s  "
                  f"{_mutations(root / 'lab', since)} mutating commands")
            meter.report()
            if prof:
                for title, profs in (("main thread", [prof]), ("task threads", meter.threads.profiles)):
                    s = io.StringIO()
                    pstats.Stats(*profs, stream=s).sort_stats(SORT).print_stats(30)
                    print(f"  -- profile, {title}\n{s.getvalue()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clients", nargs="*", type=int, default=[200, 1000])
    ap.add_argument("--forks", type=int, default=25)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    for n in a.clients:
        bench(n, a.forks, a.profile)


if __name__ == "__main__":
    main()
