"""Benchmark: `runner apply playbooks/gradual.yml` against generated labs.

Usage: python bench/bench_apply.py [CLIENTS ...] [--forks N] [--runs first,again,fresh]
       [--again N] [--profile [RUN]] [--profile-out FILE] [--keep DIR]   (default: 200 1000)

For each size a lab is generated into a temporary directory (not timed), then
three runs are timed in-process, exactly as the CLI runs them (runner.apply):

  first    the migration itself (every task does its work)
  again    the same command again: every task is skipped from the checkpoints
  fresh    ``--fresh``: a new run that re-probes every target (all ok)

Printed per run: wall time and CPU time (of all the process's threads, and apart that of
the lab's worker processes, runner.lab.workers: on a loaded machine it stays near what an
idle one would take, where wall time does not), tasks
and tasks/s; per step (in plan order,
summed over waves): wall time, tasks, and lab round trips (command lines,
puts, gets and takes) per target (its tasks of every wave summed), per (task, host)
touched (the targets' budgets of docs/performance.md), with their maxima, and
round trips per task (all the step's trips, chunks included, over its tasks: the
figure for the chunked server steps, whose trips are shared by a chunk's users);
and how many commands were mutating (journaled). Tasks of different steps overlap
(a wave flows by its dependencies), so a step's wall time counts the spans
in which its outcomes were being reported. DESIGN.md wants one round trip per host per step where the work
allows. Then, per chunked step: its chunks' sizes and round trips per chunk (probe,
apply); and one line with the server round trips per user per step (the issue's
target: at most 0.1), the hosts per second and the process's peak RSS so far
(``ru_maxrss``). The all-skipped run is repeated (``--again``) and its median
printed. ``--profile [RUN]`` prints the top of a cProfile of that run (main
thread and task threads), ``--profile-out`` writes it for pstats/snakeviz;
``--keep DIR`` keeps the lab and state (a later call with ``--runs again``
reuses them).
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import resource
import statistics
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
from runner.lab import workers as labworkers
from runner.events import STEP_START, WAVE_END, RUN_END
from runner.lab.generator import generate
from runner.lab.store import Lab

SORT = __import__("os").environ.get("BENCH_SORT", "tottime")
PLAYBOOK = str(Path(__file__).resolve().parent.parent / "playbooks" / "gradual.yml")


def _lab_workers_cpu() -> float:
    """CPU seconds of the in-process lab's worker processes so far (runner.lab.workers)."""
    pool = labworkers.pool()
    return pool.cpu_seconds() if pool is not None else 0.0


class Meter:
    """Counts lab round trips per (step, target) and wall time per step, by patching the lab connection."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.trips: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.pairs: dict[str, dict[tuple[str, str | None, str], int]] = defaultdict(lambda: defaultdict(int))
        self.step_time: dict[str, float] = defaultdict(float)
        self.step_tasks: dict[str, int] = defaultdict(int)
        self.order: list[str] = []
        # per chunked step: (users in the chunk, its round trips by phase) for every chunk run
        self.chunks: dict[str, list[tuple[int, dict[str, int]]]] = defaultdict(list)
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
                phases = getattr(meter.local, "phases", None)
                if phases is not None:
                    phases[getattr(meter.local, "phase", "other")] += 1
                with meter._lock:
                    meter.trips[key[0]][key[1]] += 1
                    meter.pairs[key[0]][(key[1], getattr(meter.local, "wave", None), self.host)] += 1
                return orig(self, *a, **kw)
            return wrapper

        orig_chunk = engine_mod.Engine._run_chunk

        def run_chunk(self: Any, pplay: Any, chunk: Any) -> Any:
            # a chunk's round trips are the step's, shared by its users: counted per step
            meter.local.key = (chunk[0][0].step.name, "(chunks)")
            meter.local.phases = phases = defaultdict(int)
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
                meter.local.phases = None
                with meter._lock:
                    meter.chunks[chunk[0][0].step.name].append((len(chunk), dict(phases)))

        orig_many = engine_mod.Engine._many

        def many(call: Any, items: list[Any]) -> list[Any]:
            meter.local.phase = getattr(call, "__name__", "other").replace("_many", "")
            try:
                return orig_many(call, items)
            finally:
                meter.local.phase = "other"

        engine_mod.Engine._many = staticmethod(many)  # type: ignore[method-assign]
        engine_mod.Engine._run_task = run_task  # type: ignore[method-assign]
        engine_mod.Engine._run_chunk = run_chunk  # type: ignore[method-assign]
        engine_mod.Engine.emit = emit  # type: ignore[method-assign]
        for n in [n for n in ("run", "run_input", "put", "get", "take") if hasattr(labconn.LabConnection, n)]:
            setattr(labconn.LabConnection, n, counted(n))

    def reset(self) -> None:
        self.trips.clear()
        self.pairs.clear()
        self.step_time.clear()
        self.step_tasks.clear()
        self.order.clear()
        self.chunks.clear()
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
        for name in self.order:
            runs = self.chunks.get(name)
            if not runs:
                continue
            sizes = sorted(n for n, _ in runs)
            phases: dict[str, int] = defaultdict(int)
            for _, ph in runs:
                for k, v in ph.items():
                    phases[k] += v
            trips = sum(phases.values())
            print(f"    chunks of {name[:32]!r}: {len(runs)} run(s), users per chunk min/median/max "
                  f"{sizes[0]}/{sizes[len(sizes) // 2]}/{sizes[-1]}, trips per chunk {trips / len(runs):.2f} ("
                  + ", ".join(f"{k} {v / len(runs):.2f}" for k, v in sorted(phases.items())) + ")")
        extra = self.trips.get("(outside tasks)")
        if extra:
            print(f"    round trips outside tasks: {sum(extra.values())}")


def _mutations(lab_dir: Path, since: float) -> int:
    from runner.lab.store import Lab
    return len(Lab(lab_dir).mutations_since(since))


SERVER_STEPS = ("Enable users on LCS", "Import contacts into LCS", "Verify contacts on LCS",
                "Disable Exchange IM for verified users")


def _peak_rss_mib() -> float:
    """This process's peak resident set so far (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(n: int, forks: int, profile: str | None, *, runs: list[str], again: int,
          keep: Path | None, profile_out: str | None) -> None:
    root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="bench-apply-"))
    try:
        inv = root / "lab" / "inventory.yml"
        found = sorted((root / "lab").glob("inventory*")) if (root / "lab").exists() else []
        if found:
            inv = found[0]
            print(f"\n{n} clients: reusing the lab and state in {root}")
        else:
            t0 = time.perf_counter()
            inv = generate(root / "lab", clients=n, users_per_client=2, contacts=20, seed=1)
            print(f"\n{n} clients: lab generated in {time.perf_counter() - t0:.1f} s (not counted)")
        hosts = len(Lab(root / "lab").host_names())
        meter = Meter()
        meter.install()
        plan = [(label, label == "fresh") for label in runs for _ in range(again if label == "again" else 1)]
        walls: dict[str, list[float]] = defaultdict(list)
        for label, fresh in plan:
            meter.reset()
            req = ApplyRequest(playbook=PLAYBOOK, inventory=str(inv), forks=forks,
                               state_dir=str(root / "state"), fresh=fresh, default_delay=0.01)
            out = io.StringIO()
            prof = cProfile.Profile() if profile == label and not walls[label] else None
            meter.profiling = prof is not None
            meter.threads = ThreadProfiles()
            t = time.perf_counter()
            left = gc.collect()  # what the previous run left to the collector, timed apart
            if left and walls:
                print(f"  (before this run: {left} objects the previous run left collected in "
                      f"{time.perf_counter() - t:.2f} s, not counted)")
            since = time.time()
            cpu = time.process_time()
            lab_cpu = _lab_workers_cpu()
            t = time.perf_counter()
            if prof:
                prof.enable()
            rc = apply(req, stdout=out, stderr=out)
            if prof:
                prof.disable()
            meter.profiling = False
            dt = time.perf_counter() - t
            cpu = time.process_time() - cpu
            lab_cpu = _lab_workers_cpu() - lab_cpu
            walls[label].append(dt)
            tasks = sum(meter.step_tasks.values())
            print(f"  {label:<6} rc={rc} {dt:7.2f} s ({cpu:.2f} s CPU, all threads, + {lab_cpu:.2f} s lab workers)  {tasks} tasks  {tasks / dt:8.1f} tasks/s  "
                  f"{hosts / dt:7.1f} hosts/s  {_mutations(root / 'lab', since)} mutating commands  "
                  f"peak RSS so far {_peak_rss_mib():.0f} MiB")
            if len(walls[label]) == 1:
                meter.report()
                trips = [sum(meter.trips.get(s, {}).values()) / meter.step_tasks[s] if meter.step_tasks[s] else 0.0
                         for s in SERVER_STEPS]
                print(f"  {label}: server round trips per user per step (enable/import/verify/disable): "
                      + " / ".join(f"{x:.3f}" for x in trips))
            if prof:
                stats = pstats.Stats(prof, *meter.threads.profiles)
                if profile_out:
                    stats.dump_stats(profile_out)
                    print(f"  profile of the {label} run (main and task threads) written to {profile_out}")
                for title, profs in (("main thread", [prof]), ("task threads", meter.threads.profiles)):
                    if not profs:
                        continue
                    s = io.StringIO()
                    pstats.Stats(*profs, stream=s).sort_stats(SORT).print_stats(30)
                    print(f"  -- profile, {title}\n{s.getvalue()}")
        for label, ws in walls.items():
            if len(ws) > 1:
                print(f"  {label}: median {statistics.median(ws):.2f} s of {len(ws)} runs "
                      f"({', '.join(f'{w:.2f}' for w in ws)})")
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clients", nargs="*", type=int, default=[200, 1000])
    ap.add_argument("--forks", type=int, default=25)
    ap.add_argument("--runs", default="first,again,fresh",
                    help="comma-separated runs, in order, from first, again and fresh")
    ap.add_argument("--again", type=int, default=3, metavar="N",
                    help="repeat the all-skipped run N times and print the median (default 3)")
    ap.add_argument("--profile", nargs="?", const="first", choices=("first", "again", "fresh"),
                    help="cProfile that run (default: first) and print its top")
    ap.add_argument("--profile-out", metavar="FILE", help="also write that profile (all threads) to FILE")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="lab and state in DIR, kept afterwards (and reused when DIR holds them)")
    a = ap.parse_args()
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in ("first", "again", "fresh")]
    if bad:
        ap.error(f"--runs: unknown run(s) {', '.join(bad)}")
    for n in a.clients:
        bench(n, a.forks, a.profile, runs=runs, again=max(1, a.again), keep=a.keep, profile_out=a.profile_out)


if __name__ == "__main__":
    main()
