"""Run a plan: waves in order, each wave's tasks flowing by their dependencies, with retries and checkpoints.

Per play, per wave: a task runs as soon as the tasks it depends on in the wave
are finished (its own target's earlier steps, and the earlier steps of its
related targets, below), on a thread pool bounded by ``forks``, at most
``throttle`` at once per step. So a slow client delays only its own users:
the wave's other users go through all their steps without waiting for it.
A task already finished by an earlier session of the run (same fingerprint)
is skipped; ``when`` is evaluated; then probe -> (check mode: report) ->
apply, retried when the fault is transient. Every outcome becomes a
``task_end`` event for the subscribers (state store, output); the store is
flushed before a task whose upstream just finished is started, so a task
never runs before the outcomes it depends on are committed. A
``step_start`` event is emitted whenever the outcomes switch to another
step (the output shows its header again).

Chunks (docs/server-batching.md): a step whose module has ``chunk`` > 0 runs
its ready tasks in chunks of up to ``chunk`` (or the ``chunk_size`` argument)
tasks sharing a ``chunk_key``: one worker probes and applies the chunk with
``probe_many``/``apply_many`` (one round trip for many users), and each task
still gets its own outcome, attempts and retries (a transient fault of one
user retries that user alone, in the chunk's next round). A partial chunk
waits up to ``CHUNK_LINGER`` seconds for more ready tasks while the step's
upstream is still at work (longer when the wave's single tasks take longer: ``_linger``).

Ansible semantics: a target that failed a step drops out of the rest of
the play (unless ``ignore_errors``); an unreachable host is skipped for the
rest of the run but does not stop the others; after each wave, the play
stops if more than ``max_fail_percentage`` of the wave's targets failed
(or all of them, when no percentage is set); unreachable targets drop out
of the play but do not count against that gate.

Not yet (runner.steps.base.NotYet): a step that finds a target not due yet because of
other targets' state (a machine shared with users still on Exchange IM) raises NotYet from
its probe or apply; the task's status is ``not_yet``, counted apart. It is not a failure
(the target stays in the play, the wave gate and the exit code ignore it, and it blocks
nothing downstream) and not done (not a checkpoint: a later run does it). In check mode
the probe says the same; ``ctx.predicted`` shows a later step what this check predicted
for an earlier one (the users it would take off Exchange IM), as ``previous`` would after
the real run.

Dependencies across targets (docs/data-safety.md): a task also depends on
the earlier steps' tasks, in the same play, of the targets related to its
own: a user's clients (the play hosts in ``user.clients``) and a host's users
(the play users who have it among their clients). When one of those failed or
was unreachable in an earlier step (in any wave of the play), the task does
not run: it fails, saying which target failed which step (``data.blocked_by``),
and its target drops out of the play like any failed one. So a user whose
client's upgrade failed is not enabled, imported or disabled, and a machine
is not changed while one of its users' contact lists could not be saved.
A task blocked by an unreachable target does not count against the wave gate
(the down machine is retried on the next run, and its users with it).
"""
from __future__ import annotations

import os
import random
import threading
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from tenacity import (Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_exponential,
                      wait_random)

from runner.artifacts import ArtifactStore
from runner.connections.registry import ConnectionOptions, ConnectionPool
from runner.context import TaskContext, task_variables
from runner.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, HostGivenUp,
                           OptionsError, RunnerError, StepFault)
from runner.events import (PLAY_START, RUN_END, RUN_START, STEP_START, TASK_END, WAVE_END, Event,
                           Subscriber, TaskOutcome)
from runner.model import Host
from runner.plan import Plan, PlannedPlay, Task, Wave
from runner.state import StateStore, TaskRecord
from runner.steps.base import Diff, NotYet, StepModule, StepResult
from runner.steps.registry import get_step
from runner.templating import evaluate_when

#: Per-target counters of the recap, in its order; ``not_yet``: not due yet, by design (NotYet).
COUNTERS = ("ok", "changed", "failed", "skipped", "unreachable", "retried", "ignored", "not_yet")
DELAY_SCALE_ENV = "RUNNER_RETRY_DELAY_SCALE"
MAX_DELAY_SCALE = 100.0
#: Seconds a partial chunk waits for more ready tasks of its step while their upstream is still busy
#: (at least: twice the median duration of the wave's recent single tasks when that is longer, up
#: to ``MAX_LINGER``, so that a loaded machine or a slow network, whose tasks come further apart,
#: does not cut chunks short; a client 20 times slower than the others still comes later, alone).
CHUNK_LINGER = 0.2
MAX_LINGER = 2.0
#: The most tasks in one chunk, whatever the module or ``chunk_size`` say.
MAX_CHUNK = 500
#: Seconds between two commits of the state store that let dependent tasks start: outcomes are
#: committed in groups (a commit per finished task cost more than the tasks of a re-probe).
FLUSH_GAP = 0.05


def chunk_linger(spans: Iterable[float]) -> float:
    """Seconds a partial chunk waits for its step's next ready task, given the durations of the
    wave's recent single tasks: twice their median, within ``CHUNK_LINGER`` and ``MAX_LINGER``."""
    ordered = sorted(spans)
    if not ordered:
        return CHUNK_LINGER
    return min(MAX_LINGER, max(CHUNK_LINGER, 2 * ordered[len(ordered) // 2]))


def retry_delay_scale() -> float:
    """The factor applied to every retry delay, from ``RUNNER_RETRY_DELAY_SCALE`` (default 1).

    Rehearsals and tests set it (e.g. 0.01) so that a playbook's ``delay: 30``
    does not make a fault-injected lab run wait for minutes; production runs
    leave it unset. A value that is not a non-negative number is a bad option
    (a typo must not silently bring back full-length backoffs).
    """
    raw = os.environ.get(DELAY_SCALE_ENV, "").strip()
    try:
        value = float(raw) if raw else 1.0
    except ValueError:
        value = -1.0
    if not (0 <= value <= MAX_DELAY_SCALE):  # also refuses nan and inf
        raise OptionsError(f"{DELAY_SCALE_ENV}={raw!r}: must be a number from 0 to {MAX_DELAY_SCALE:g} "
                           "such as 0.01")
    return value


@dataclass
class EngineOptions:
    """How the engine runs: concurrency, check mode, retry defaults, connection settings."""

    forks: int = 25
    check: bool = False
    diff: bool = False
    default_retries: int = 3
    default_delay: float = 1.0
    max_delay: float = 60.0
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)


@dataclass
class RunSummary:
    """What a run came to: status, exit code, per-target counters and totals."""

    run_id: str
    status: str
    exit_code: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    stopped_reason: str | None = None
    tasks_run: int = 0
    retry_file: str | None = None  # set by runner apply: the failed and unreachable targets

    def to_json(self) -> dict[str, Any]:
        out = {"run_id": self.run_id, "status": self.status, "exit_code": self.exit_code,
               "totals": self.totals, "counts": self.counts, "interrupted": self.interrupted,
               "stopped_reason": self.stopped_reason}
        if self.retry_file:
            out["retry_file"] = self.retry_file
        return out


def _steps_of(wave: Wave) -> list[list[Task]]:
    """The wave's tasks grouped by step, in plan order (the planner emits them step by step)."""
    groups: list[list[Task]] = []
    for task in wave.tasks:
        if groups and groups[-1][0].step.name == task.step.name:
            groups[-1].append(task)
        else:
            groups.append([task])
    return groups


class _Dependencies:
    """Which targets of a play depend on which, and the first failure of each (see the
    module docstring): a user on their clients, a host on its users, in step order."""

    def __init__(self, pplay: PlannedPlay) -> None:
        self._position = {s.name: i for i, s in enumerate(pplay.play.steps)}
        hosts: set[str] = set()
        users: dict[str, tuple[str, ...]] = {}
        for wave in pplay.waves:
            for t in wave.tasks:
                if t.kind == "host":
                    hosts.add(t.target_name)
                else:
                    users[t.target_name] = tuple(getattr(t.target, "clients", ()))
        self._related: dict[str, list[tuple[str, str]]] = {}  # target id -> [(target id, label)]
        for alias, clients in users.items():
            for c in dict.fromkeys(clients):
                if c in hosts:
                    self._related.setdefault(f"user:{alias}", []).append((f"host:{c}", f"client {c}"))
                    self._related.setdefault(f"host:{c}", []).append((f"user:{alias}", f"user {alias}"))
        self._failures: dict[str, tuple[int, dict[str, Any]]] = {}

    def related(self, tid: str) -> list[str]:
        """The target ids related to ``tid`` (a user's clients, a host's users) in this play."""
        return [r for r, _ in self._related.get(tid, ())]

    def failed(self, task: Task, outcome: TaskOutcome) -> None:
        """Remember ``task``'s target failed (or was unreachable) at its step, first failure only."""
        tid = task.target_id
        if tid not in self._failures:
            upstream = outcome.data.get("blocked_by") if isinstance(outcome.data, Mapping) else None
            root = upstream.get("root_status") if isinstance(upstream, Mapping) else None
            self._failures[tid] = (self._position.get(task.step.name, 0), {
                "target": tid, "step": task.step.name, "status": outcome.status,
                "root_status": root or outcome.status, "message": outcome.message})

    def blocker(self, task: Task) -> dict[str, Any] | None:
        """Why ``task`` must not run: a related target that failed an earlier step, else None."""
        here = self._position.get(task.step.name, 0)
        for tid, label in self._related.get(task.target_id, ()):
            found = self._failures.get(tid)
            if found is None or found[0] >= here:
                continue
            info = found[1]
            verb = "was unreachable in" if info["status"] == "unreachable" else "failed"
            return {**info, "reason": f"not run: {label} {verb} '{info['step']}'"}
        return None

    @staticmethod
    def blocked_by_unreachable(outcome: TaskOutcome) -> bool:
        blocker = outcome.data.get("blocked_by") if isinstance(outcome.data, Mapping) else None
        return isinstance(blocker, Mapping) and blocker.get("root_status") == "unreachable"


def _gate_units(play: Any, wave: Wave, bad: set[str],
                deps: "_Dependencies") -> tuple[set[str], set[str], str]:
    """What ``max_fail_percentage`` is judged over: the wave's unit (``serial.over``), so a wave
    over users counts its users (one whose client failed counts as failed), not users and
    machines together, nor later waves' users whose lists it saved early (``for-wave`` tasks);
    a play without serial counts every target. Returns (units, failed units, label)."""
    wave_targets = {t.target_id for t in wave.tasks}
    over = getattr(getattr(play, "serial", None), "over", None)
    kind = {"users": "user", "hosts": "host"}.get(over or "")
    units = {t.target_id for t in wave.tasks if t.kind == kind and "/for-wave:" not in t.key}
    if not units:
        return wave_targets, set(bad), "targets"
    failed = {u for u in units if u in bad or any(r in bad for r in deps.related(u))}
    return units, failed, over or "targets"


class Engine:
    """Runs one plan against one inventory, recording into ``store`` under ``run_id``.

    ``subscribers`` get every event, on the thread that called ``run``. In
    check mode nothing is written to the store (earlier checkpoints are
    still honoured, so the report matches what ``apply`` would do).
    """

    def __init__(self, inventory: Any, store: StateStore, run_id: str, options: EngineOptions | None = None,
                 subscribers: Iterable[Subscriber] = (), *, resumed: bool = False,
                 pool: ConnectionPool | None = None) -> None:
        self.inventory = inventory
        self.store = store
        self.run_id = run_id
        self.options = options or EngineOptions()
        self.resumed = resumed
        self._delay_scale = retry_delay_scale()
        self.subscribers: list[Subscriber] = list(subscribers)
        if not self.options.check:
            self.subscribers.insert(0, store.subscriber(run_id))
        self.pool = pool or ConnectionPool(inventory, self.options.connection,
                                           failure_memo=min(1.0, self.options.default_delay / 2))
        self.artifacts = ArtifactStore(store, run_id=run_id)
        # resolved once: Path.resolve() costs an lstat per path component, per task otherwise
        self._state_dir = str(store.directory.resolve())
        self._stop = threading.Event()
        self._facts: dict[str, Mapping[str, Any]] = {}
        # --check: the outcomes this check predicts, newest first, for ctx.predicted
        self._predicted: dict[tuple[str, str], list[TaskRecord]] = {}
        self._gathered: dict[str, float] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._failed_any = False
        self._unreachable_any = False
        self._tasks_run = 0

    # -- control ----------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop scheduling new tasks; tasks in flight finish (first Ctrl-C)."""
        self._stop.set()

    @property
    def interrupted(self) -> bool:
        return self._stop.is_set()

    def emit(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        for sub in self.subscribers:
            sub(event)

    # -- the run ----------------------------------------------------------------

    def run(self, plan: Plan) -> RunSummary:
        """Execute ``plan`` and return its summary (the caller closes the store)."""
        tasks = plan.tasks()
        completed = self.store.completed(self.run_id) if self.resumed else {}
        if not self.options.check:  # a task this run finished is in the store already
            self.store.register_tasks(self.run_id, (
                (t.key, t.play_index, t.step.name, t.step.module, t.kind, t.target_name, t.wave,
                 t.step.fingerprint) for t in tasks if t.key not in completed))
        self.emit(RUN_START, run_id=self.run_id, resumed=self.resumed, check=self.options.check,
                  tasks=len(tasks), plays=len(plan.plays))
        stopped: str | None = None
        executor = ThreadPoolExecutor(max_workers=max(1, self.options.forks), thread_name_prefix="task")
        try:
            for pplay in plan.plays:
                if self._stop.is_set() or stopped:
                    break
                stopped = self._run_play(pplay, completed, executor)
        finally:
            executor.shutdown(wait=True)
            self.pool.close()
            self.store.flush()
        summary = self._summary(stopped)
        self.emit(RUN_END, run_id=self.run_id, status=summary.status, exit_code=summary.exit_code,
                  summary=summary)
        return summary

    def _run_play(self, pplay: PlannedPlay, completed: Mapping[str, str],
                  executor: ThreadPoolExecutor) -> str | None:
        play = pplay.play
        self.emit(PLAY_START, play=pplay.index, name=play.name,
                  waves=[w.name for w in pplay.waves])
        dropped: set[str] = set()
        deps = _Dependencies(pplay)
        for wave in pplay.waves:
            if self._stop.is_set():
                return None
            wave_targets = {t.target_id for t in wave.tasks}
            bad = self._run_wave(pplay, wave, completed, dropped, executor, deps)
            self.store.flush()
            if self._stop.is_set():
                return None
            units, failed_units, unit = _gate_units(play, wave, bad, deps)
            limit = play.max_fail_percentage
            failed_pct = 100.0 * len(failed_units) / len(units) if units else 0.0
            of_wave = f"{len(failed_units)} of {len(units)} {unit} of wave {wave.name or '(all)'} failed"
            if limit is not None:
                stop = failed_pct > limit
                verdict = (f"{of_wave} ({failed_pct:.0f}% {'>' if stop else '<='} "
                           f"max_fail_percentage {limit:g}%)")
            else:
                stop = bool(units) and len(failed_units) == len(units)
                verdict = f"all {len(units)} {unit} of the wave failed" if stop else ""
            self.emit(WAVE_END, play=pplay.index, wave=wave.name, targets=len(wave_targets),
                      failed=len(bad), stopped=stop, reason=verdict if stop else "",
                      gate=verdict, unit=unit, units=len(units), failed_units=len(failed_units))
            if stop:
                return f"play '{play.name}' stopped after wave {wave.name or '(all)'}: {verdict}"
        return None

    def _run_wave(self, pplay: PlannedPlay, wave: Wave, completed: Mapping[str, str],
                  dropped: set[str], executor: ThreadPoolExecutor, deps: _Dependencies) -> set[str]:
        """Run one wave's tasks as their dependencies allow; the targets that failed (for the gate)."""
        return _WaveRun(self, pplay, wave, completed, dropped, executor, deps).run()

    # -- one task ----------------------------------------------------------------

    def _outcome(self, task: Task, status: str, **kw: Any) -> TaskOutcome:
        now = time.time()
        kw.setdefault("started", now)
        kw.setdefault("ended", now)
        return TaskOutcome(key=task.key, play_index=task.play_index, step=task.step.name,
                           module=task.step.module, kind=task.kind, target=task.target_name,
                           status=status, wave=task.wave, fingerprint=task.step.fingerprint, **kw)

    def _context(self, pplay: PlannedPlay, task: Task) -> TaskContext:
        """The StepContext of ``task``."""
        variables = task_variables(self.inventory, pplay.play, task)
        variables.setdefault("runner_state_dir", self._state_dir)
        return TaskContext(task=task, variables=variables, inventory=self.inventory,
                           check=self.options.check, run_id=self.run_id,
                           artifacts=self.artifacts.for_task(task.key), pool=self.pool,
                           store=self.store, facts_overlay=self._facts, predicted=self._predicted,
                           extra_vars=pplay.play.extra_vars)

    def _retry_policy(self, step: Any) -> tuple[int, float, float]:
        """(retries, first delay, longest delay) of ``step``, delays scaled."""
        retries = self.options.default_retries if step.retries is None else step.retries
        scale = self._delay_scale
        delay = (self.options.default_delay if step.delay is None else step.delay) * scale
        return max(0, retries), delay, max(delay, self.options.max_delay * scale)

    def _result_outcome(self, task: Task, result: Any, *, started: float, attempts: int,
                        diff: Diff | None) -> TaskOutcome:
        """The outcome of a task whose last attempt returned ``result``."""
        if not isinstance(result, StepResult):
            return self._outcome(task, "failed", started=started, ended=time.time(), attempts=attempts,
                                 message=f"step returned {type(result).__name__}, not StepResult")
        status = result.status
        if status not in ("ok", "changed", "skipped", "failed", "unreachable", "not_yet"):
            return self._outcome(task, "failed", started=started, attempts=attempts,
                                 message=f"step returned an unknown status {status!r}")
        return self._outcome(task, status, started=started, ended=time.time(), attempts=attempts,
                             message=result.message, data=dict(result.data),
                             warnings=list(result.warnings), diff=diff,
                             ignored=status == "failed" and task.step.ignore_errors)

    def _fault_outcome(self, task: Task, fault: StepFault, *, started: float, attempts: int,
                       answered: bool, diff: Diff | None) -> TaskOutcome:
        """The outcome of a task whose last attempt raised ``fault`` (no retry left)."""
        # Unreachable only when every attempt failed to connect at all. A host that
        # answered an earlier attempt (busy, an error, a channel that died under a
        # command) is reachable but flaky: the task failed, the host is not written
        # off for the run (a shared LCS server would otherwise take every later user
        # down with it).
        unreachable = fault.unreachable and not answered
        message = fault.message
        host = fault.host or self._host_of(task)
        if (unreachable and host and not isinstance(fault, HostGivenUp)
                and self.pool.answered_since(host, started)):
            # this task could not connect, but the host answered other tasks meanwhile:
            # it is reachable, so only this task failed
            unreachable = False
            message += " (the host answered other tasks meanwhile)"
        status = "unreachable" if unreachable else "failed"
        if self._stop.is_set() and fault.transient:
            message += " (interrupted while retrying)"
        data = dict(fault.data)
        if unreachable and fault.host:
            data.setdefault("host", fault.host)
        return self._outcome(task, status, started=started, ended=time.time(), attempts=attempts,
                             message=message, data=data, diff=diff,
                             ignored=status == "failed" and task.step.ignore_errors)

    def _bug_outcome(self, task: Task, exc: BaseException, *, started: float, attempts: int,
                     diff: Diff | None) -> TaskOutcome:
        """A bug in a step fails its task, not the run. A RunnerError a step lets through (an
        artifact edited by hand, a damaged store) is no bug: its message is what the user reads."""
        if isinstance(exc, RunnerError):
            return self._outcome(task, "failed", started=started, ended=time.time(), attempts=attempts,
                                 message=str(exc), diff=diff, ignored=task.step.ignore_errors)
        return self._outcome(task, "failed", started=started, ended=time.time(), attempts=attempts,
                             message=f"{type(exc).__name__}: {exc}", diff=diff,
                             traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                             ignored=task.step.ignore_errors)

    def _not_yet_outcome(self, task: Task, why: NotYet, *, started: float, attempts: int,
                         diff: Diff | None) -> TaskOutcome:
        """A target not due yet (the step raised NotYet): neither done nor failed."""
        return self._outcome(task, "not_yet", started=started, ended=time.time(), attempts=attempts,
                             message=why.message, data=why.outcome_data(), diff=diff)

    def _run_task(self, pplay: PlannedPlay, task: Task) -> TaskOutcome:
        """Run one task in a worker thread; never raises."""
        started = time.time()
        attempts = 0
        answered = False  # some attempt got an answer other than a connection fault
        step = task.step
        diff: Diff | None = None
        try:
            ctx = self._context(pplay, task)
            if step.when is not None and not evaluate_when(step.when, ctx.vars):
                return self._outcome(task, "skipped", started=started, message="condition is false")
            module_cls = get_step(step.module)
            if module_cls is None:
                return self._outcome(task, "failed", started=started,
                                     message=f"unknown step module {step.module!r}")
            module = module_cls()
            retries, delay, longest = self._retry_policy(step)
            retrying = Retrying(
                stop=stop_any(stop_after_attempt(retries + 1), lambda _: self._stop.is_set()),
                wait=wait_exponential(multiplier=delay, max=longest) + wait_random(0, delay),
                retry=retry_if_exception(lambda e: isinstance(e, StepFault) and e.transient),
                sleep=self._sleep, reraise=True)
            result: StepResult | None = None
            for attempt in retrying:
                with attempt:
                    attempts += 1
                    try:
                        result, diff = self._attempt(module, ctx, task)
                    except StepFault as fault:
                        # The shared connection is left alone: other tasks may have commands
                        # in flight on it, and it re-opens a dead transport by itself.
                        if not fault.unreachable:
                            answered = True
                        raise
            assert result is not None
            return self._result_outcome(task, result, started=started, attempts=attempts, diff=diff)
        except NotYet as why:  # not a fault: never retried
            return self._not_yet_outcome(task, why, started=started, attempts=attempts, diff=diff)
        except StepFault as fault:
            return self._fault_outcome(task, fault, started=started, attempts=attempts, answered=answered,
                                       diff=diff)
        except Exception as exc:  # a bug in a step must fail its task, not the run
            return self._bug_outcome(task, exc, started=started, attempts=attempts, diff=diff)

    def _run_chunk(self, pplay: PlannedPlay, chunk: list[tuple[Task, TaskContext]]) -> list[tuple[Task, TaskOutcome]]:
        """Run a chunk of one chunked step's tasks in a worker thread; one outcome per task, never raises.

        Each round probes the live tasks with ``probe_many`` and applies those with a
        diff with ``apply_many``; a task whose attempt raised a transient fault and has
        retries left stays live for the next round (after the backoff), the others are
        finished. So every task has its own attempts, retries and outcome.
        """
        started = time.time()
        step = chunk[0][0].step
        done: list[tuple[Task, TaskOutcome]] = []
        module_cls = get_step(step.module)
        if module_cls is None:
            return [(t, self._outcome(t, "failed", started=started, message=f"unknown step module {step.module!r}"))
                    for t, _ in chunk]
        module = module_cls()
        live: list[tuple[Task, TaskContext]] = []
        for task, ctx in chunk:
            try:
                if step.when is not None and not evaluate_when(step.when, ctx.vars):
                    done.append((task, self._outcome(task, "skipped", started=started,
                                                     message="condition is false")))
                    continue
            except StepFault as fault:
                done.append((task, self._fault_outcome(task, fault, started=started, attempts=0,
                                                       answered=False, diff=None)))
                continue
            except Exception as exc:  # noqa: BLE001
                done.append((task, self._bug_outcome(task, exc, started=started, attempts=0, diff=None)))
                continue
            live.append((task, ctx))
        retries, delay, longest = self._retry_policy(step)
        attempts: dict[str, int] = {t.key: 0 for t, _ in live}
        answered: dict[str, bool] = {t.key: False for t, _ in live}
        diffs: dict[str, Diff | None] = {}
        last: dict[str, StepFault] = {}
        rounds = 0
        while live:
            again: list[tuple[Task, TaskContext]] = []

            def failed(task: Task, ctx: TaskContext, exc: BaseException) -> None:
                key = task.key
                if isinstance(exc, NotYet):
                    done.append((task, self._not_yet_outcome(task, exc, started=started, attempts=attempts[key],
                                                             diff=diffs.get(key))))
                elif isinstance(exc, StepFault):
                    if not exc.unreachable:
                        answered[key] = True
                    if exc.transient and attempts[key] <= retries and not self._stop.is_set():
                        last[key] = exc
                        again.append((task, ctx))
                        return
                    done.append((task, self._fault_outcome(task, exc, started=started, attempts=attempts[key],
                                                           answered=answered[key], diff=diffs.get(key))))
                else:
                    done.append((task, self._bug_outcome(task, exc, started=started, attempts=attempts[key],
                                                         diff=diffs.get(key))))

            for task, _ in live:
                attempts[task.key] += 1
                diffs[task.key] = None
            probes = self._many(module.probe_many, [(ctx, task.target) for task, ctx in live])
            to_apply: list[tuple[Task, TaskContext, Diff]] = []
            for (task, ctx), found in zip(live, probes):
                if isinstance(found, BaseException):
                    failed(task, ctx, found)
                elif found is None:
                    try:
                        result = module.unchanged(ctx, task.target)
                    except Exception as exc:  # noqa: BLE001
                        failed(task, ctx, exc)
                        continue
                    done.append((task, self._result_outcome(task, result, started=started,
                                                            attempts=attempts[task.key], diff=None)))
                elif not isinstance(found, Diff):
                    failed(task, ctx, TypeError(f"{type(module).__name__}.probe_many gave "
                                                f"{type(found).__name__}, not Diff or None"))
                else:
                    diffs[task.key] = found
                    if self.options.check and not module.read_only:
                        done.append((task, self._result_outcome(
                            task, StepResult("changed", message=found.summary), started=started,
                            attempts=attempts[task.key], diff=found)))
                    else:
                        to_apply.append((task, ctx, found))
            if to_apply:
                applied = self._many(module.apply_many, [(ctx, task.target, d) for task, ctx, d in to_apply])
                for (task, ctx, d), result in zip(to_apply, applied):
                    if isinstance(result, BaseException):
                        failed(task, ctx, result)
                    else:
                        done.append((task, self._result_outcome(task, result, started=started,
                                                                attempts=attempts[task.key], diff=d)))
            live = again
            if live:
                # 2 ** rounds is capped: past 2**1023 it no longer converts to a float
                self._sleep(min(longest, delay * (2 ** min(rounds, 64))) + random.uniform(0, delay))
                rounds += 1
                if self._stop.is_set():  # no new attempt after a Ctrl-C: each says so
                    for task, ctx in live:
                        done.append((task, self._fault_outcome(
                            task, last[task.key], started=started, attempts=attempts[task.key], answered=answered[task.key],
                            diff=diffs.get(task.key))))
                    live = []
        return done

    @staticmethod
    def _many(call: Any, items: list[Any]) -> list[Any]:
        """``call(items)`` with one entry per item; an exception of the whole call (or a wrong
        count) becomes every item's outcome."""
        try:
            out = list(call(items))
        except Exception as exc:  # noqa: BLE001 - a chunk-wide fault (the server busy...) is each one's
            return [exc] * len(items)
        if len(out) != len(items):
            bug = TypeError(f"{getattr(call, '__qualname__', call)} gave {len(out)} outcomes for {len(items)} items")
            return [bug] * len(items)
        return out

    def _attempt(self, module: StepModule, ctx: TaskContext, task: Task) -> tuple[StepResult, Diff | None]:
        diff = module.probe(ctx, task.target)
        if diff is None:
            return module.unchanged(ctx, task.target), None
        if self.options.check and not module.read_only:
            return StepResult("changed", message=diff.summary), diff
        result = module.apply(ctx, task.target, diff)
        if not isinstance(result, StepResult):
            raise TypeError(f"{type(module).__name__}.apply returned {type(result).__name__}, not StepResult")
        return result, diff

    def _sleep(self, seconds: float) -> None:
        """Backoff sleep that a Ctrl-C cuts short."""
        self._stop.wait(seconds)

    @staticmethod
    def _host_of(task: Task) -> str | None:
        return task.target.name if isinstance(task.target, Host) else None

    # -- bookkeeping (main thread) ---------------------------------------------------

    def _finish(self, task: Task, outcome: TaskOutcome, *, burst: bool = False) -> TaskOutcome:
        """Account for an outcome, mark unreachable hosts, keep facts, emit the event
        (``burst``: one of a settled wave's outcomes, told in one go and closed by its
        WAVE_END, so a subscriber may defer what it shows for each: runner.output)."""
        if not outcome.resumed:
            self._tasks_run += 1
        if outcome.status == "unreachable":
            self._unreachable_any = True
            host = outcome.data.get("host") or self._host_of(task)
            if host and not self.pool.is_unreachable(host):
                self.pool.mark_unreachable(host, outcome.message)
        elif outcome.status == "failed" and not outcome.ignored:
            self._failed_any = True
        if task.kind == "host" and outcome.status in ("ok", "changed"):
            facts = self._new_facts(task, outcome)
            if facts is not None:
                self._facts[task.target_name] = facts
                if not self.options.check:
                    self.store.set_facts(task.target_name, facts, self.run_id)
        if self.options.check and outcome.status in ("ok", "changed"):
            key = (outcome.module, outcome.target)
            self._predicted[key] = [TaskRecord(step=outcome.step, module=outcome.module, target=outcome.target,
                                               status=outcome.status, data=dict(outcome.data), run_id=self.run_id,
                                               key=outcome.key, ended=outcome.ended),
                                    *self._predicted.get(key, ())]
        c = self._counts.get(outcome.target)
        if c is None:  # (not setdefault: it would build the counters for every outcome)
            c = self._counts[outcome.target] = dict.fromkeys(COUNTERS, 0)
        c["ignored" if outcome.ignored else outcome.status] += 1
        if outcome.retried:
            c["retried"] += 1
        self.emit(TASK_END, outcome=outcome, burst=burst)
        return outcome

    def _new_facts(self, task: Task, outcome: TaskOutcome) -> dict[str, Any] | None:
        """The host's facts after ``outcome``: all of them from a step that gathers them
        (``data.facts``), or the known ones with what a changing step
        says it changed merged in (``data.facts_update``, e.g. the Messenger version after
        an upgrade; stamped per key in ``updated``, and the gathering time kept in ``gathered``), so `runner status` does not show the
        night's starting point as the estate's state. None when the step says nothing."""
        data = outcome.data if isinstance(outcome.data, Mapping) else {}
        if isinstance(data.get("facts"), Mapping):
            self._gathered[task.target_name] = outcome.ended or time.time()
            return dict(data["facts"])
        update = data.get("facts_update")
        if not isinstance(update, Mapping) or not update:
            return None
        known = self._facts.get(task.target_name)
        gathered = self._gathered.get(task.target_name)
        if known is None:
            try:
                known = self.store.facts(task.target_name)
                gathered = self.store.facts_times().get(task.target_name)
            except Exception:  # a damaged row: the update stands alone (status names the row)
                known = None
        facts = dict(known or {})
        if "updated" not in facts and gathered:
            facts["gathered"] = gathered  # the row's own time is the update's from now on
        stamps = dict(facts.get("updated") or {}) if isinstance(facts.get("updated"), Mapping) else {}
        for key, value in update.items():
            old = facts.get(key)
            facts[key] = {**old, **value} if isinstance(old, Mapping) and isinstance(value, Mapping) else value
            stamps[key] = {"step": task.step.name, "at": outcome.ended or time.time()}
        facts["updated"] = stamps
        return facts

    def _summary(self, stopped: str | None) -> RunSummary:
        totals = dict.fromkeys(COUNTERS, 0)
        for c in self._counts.values():
            for k, v in c.items():
                totals[k] += v
        if self._stop.is_set():
            status, code = "interrupted", EXIT_INTERRUPTED
        elif self._unreachable_any:
            # as ansible-playbook: unreachable hosts win over failures, which are often
            # their consequence (decommission refuses, and its play stops, while the
            # down host's users wait); the recap still names every failure
            status, code = "unreachable", EXIT_UNREACHABLE
        elif stopped:
            status, code = "stopped", EXIT_FAILED
        elif self._failed_any:
            status, code = "failed", EXIT_FAILED
        else:
            status, code = "ok", EXIT_OK
        return RunSummary(run_id=self.run_id, status=status, exit_code=code, counts=self._counts,
                          totals=totals, interrupted=self._stop.is_set(), stopped_reason=stopped,
                          tasks_run=self._tasks_run)


class _WaveRun:
    """One wave of a play, run as its dependencies allow (module docstring).

    Each task waits for the wave's tasks of earlier steps of its own target and of its
    related targets; once they are all finished it is resolved in the main thread (dropped,
    done in an earlier run, blocked by a failed dependency, unreachable host) or queued,
    and queued tasks are started in plan order within ``forks`` and each step's
    ``throttle``: one task per worker, or one chunk per worker for a chunked step.
    """

    def __init__(self, engine: Engine, pplay: PlannedPlay, wave: Wave, completed: Mapping[str, str],
                 dropped: set[str], executor: ThreadPoolExecutor, deps: _Dependencies) -> None:
        self.e = engine
        self.pplay = pplay
        self.completed = completed
        self.dropped = dropped
        self.executor = executor
        self.deps = deps
        self.bad: set[str] = set()
        self.wave = wave
        self.groups = _steps_of(wave)
        self.modules = [get_step(g[0].step.module) for g in self.groups]
        self.shown: int | None = None                     # the step whose header the output shows
        # a resumed wave an earlier session finished whole: nothing to schedule, so no graph
        self.settled = bool(completed) and self._all_done()
        if self.settled:
            return
        self.by_key = {t.key: t for t in wave.tasks}
        self.pos: dict[str, int] = {}
        by_target: dict[str, list[Task]] = {}
        for i, group in enumerate(self.groups):
            for t in group:
                self.pos[t.key] = i
                by_target.setdefault(t.target_id, []).append(t)
        self.waiting: dict[str, int] = {}
        self.downstream: dict[str, list[Task]] = {}
        for i, group in enumerate(self.groups):
            for t in group:
                tid = t.target_id
                ups = [u for rid in (tid, *deps.related(tid)) for u in by_target.get(rid, ())
                       if self.pos[u.key] < i]
                self.waiting[t.key] = len(ups)
                for u in ups:
                    self.downstream.setdefault(u.key, []).append(t)
        self.unready = [len(g) for g in self.groups]      # tasks of each step not resolved yet
        self.chunked = [bool(m is not None and getattr(m, "chunk", 0) > 0) for m in self.modules]
        self.queued: list[deque[Task]] = [deque() for _ in self.groups]
        self.chunks: list[dict[str, list[tuple[Task, TaskContext]]]] = [{} for _ in self.groups]
        self.fed = [0.0] * len(self.groups)               # when a task last joined each step's queue
        self.running = [0] * len(self.groups)
        self.inflight: dict[Future[Any], int] = {}
        self.ready: deque[Task] = deque()
        self.spans: deque[float] = deque(maxlen=64)       # durations of the wave's recent single tasks
        self.dirty = False                                # outcomes emitted since the last flush
        self.flushed_at = 0.0

    def _all_done(self) -> bool:
        """Whether every task of the wave would be skipped as done in an earlier session: its
        checkpoint has the step's fingerprint, its step does not recheck finished work, and
        its target was not dropped earlier in this run (whose tasks are released unreported)."""
        for module, group in zip(self.modules, self.groups):
            step = group[0].step
            if module is not None and module.rechecks_when_done(step.args):
                return False
            fp = step.fingerprint
            for t in group:
                if self.completed.get(t.key) != fp or t.target_id in self.dropped:
                    return False
        return True

    def _settle_all(self) -> set[str]:
        """Report every task of a settled wave skipped as ``_resolve`` would, without the
        dependency graph (all are done): step by step in plan order, which is an order the
        dependencies allow (the scheduled path reports in the order they release tasks, so
        a resumed wave's steps can come interleaved there)."""
        e = self.e
        for i, group in enumerate(self.groups):
            self._emit_step(i)
            for t in group:
                e._finish(t, e._outcome(t, "skipped", message="done in an earlier run", resumed=True), burst=True)
        return self.bad

    # -- resolution (main thread) -------------------------------------------------

    def _emit_step(self, i: int) -> None:
        if self.shown != i:
            self.shown = i
            step = self.groups[i][0].step
            self.e.emit(STEP_START, play=self.pplay.index, step=step.name, module=step.module,
                        wave=self.wave.name, tasks=len(self.groups[i]))

    def _release(self, task: Task) -> None:
        for d in self.downstream.get(task.key, ()):
            self.waiting[d.key] -= 1
            if self.waiting[d.key] == 0:
                self.ready.append(d)

    def _outcome(self, task: Task, outcome: TaskOutcome) -> None:
        """Account for a finished task: emit, drop its target on failure, free its downstream."""
        self._emit_step(self.pos[task.key])
        if not outcome.resumed and not self.chunked[self.pos[task.key]] and outcome.ended and outcome.started:
            self.spans.append(max(0.0, outcome.ended - outcome.started))
        self.e._finish(task, outcome)
        self.dirty = True
        if outcome.status in ("failed", "unreachable") and not outcome.ignored:
            self.dropped.add(task.target_id)
            self.deps.failed(task, outcome)
            # DESIGN.md: an unreachable host does not stop the others (it is
            # retried on resume), so only failures count against the wave gate;
            # nor do the tasks it blocked.
            if outcome.status == "failed" and not self.deps.blocked_by_unreachable(outcome):
                self.bad.add(task.target_id)
        self._release(task)

    def _resolve(self, task: Task) -> None:
        """``task``'s dependencies are finished: settle it here or queue it to run."""
        i = self.pos[task.key]
        self.unready[i] -= 1
        e = self.e
        if task.target_id in self.dropped:
            self._release(task)
            return
        fp = self.completed.get(task.key)
        module = self.modules[i]
        if fp is not None and fp == task.step.fingerprint \
                and not (module is not None and module.rechecks_when_done(task.step.args)):
            self._outcome(task, e._outcome(task, "skipped", message="done in an earlier run", resumed=True))
            return
        blocker = self.deps.blocker(task)
        if blocker is not None:
            self._outcome(task, e._outcome(task, "failed", message=blocker["reason"], data={"blocked_by": blocker},
                                           ignored=task.step.ignore_errors))
            return
        if task.kind == "host" and e.pool.is_unreachable(task.target_name):
            self._outcome(task, e._outcome(task, "unreachable", message="host unreachable earlier in this run"))
            return
        self.fed[i] = time.monotonic()
        if not self.chunked[i]:
            self.queued[i].append(task)
            return
        ctx = e._context(self.pplay, task)
        try:
            key = self.modules[i]().chunk_key(ctx, task.target)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - the probe reports what is wrong, for this task alone
            key = ""
        self.chunks[i].setdefault(key, []).append((task, ctx))

    def _chunk_size(self, i: int) -> int:
        step = self.groups[i][0].step
        size = int(getattr(self.modules[i], "chunk", 1) or 1)
        wanted = step.args.get("chunk_size") if isinstance(step.args, Mapping) else None
        if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted >= 1:
            size = min(size, wanted)
        return max(1, min(size, MAX_CHUNK))

    def _linger(self) -> float:
        """How long a partial chunk waits for its step's next ready task (see ``CHUNK_LINGER``)."""
        return chunk_linger(self.spans)

    # -- starting work ---------------------------------------------------------------

    def _start(self) -> float | None:
        """Start what may start now; seconds until a lingering chunk is due (None: none waits)."""
        e = self.e
        forks = max(1, e.options.forks)
        if self.dirty and time.monotonic() - self.flushed_at < FLUSH_GAP and self.inflight:
            # let more outcomes gather before the next commit (one commit starts many tasks)
            return FLUSH_GAP - (time.monotonic() - self.flushed_at)
        due: float | None = None
        for i, group in enumerate(self.groups):
            if e._stop.is_set():
                return None
            step = group[0].step
            limit = min(forks, step.throttle) if step.throttle else forks
            if not self.chunked[i]:
                while self.queued[i] and self.running[i] < limit and len(self.inflight) < forks:
                    self._flush()
                    task = self.queued[i].popleft()
                    self._submit(i, self.executor.submit(e._run_task, self.pplay, task))
                continue
            size = self._chunk_size(i)
            for key in list(self.chunks[i]):
                waiting = self.chunks[i][key]
                while waiting and self.running[i] < limit and len(self.inflight) < forks:
                    if len(waiting) < size and self.unready[i] > 0:
                        # more of this step's tasks are on their way: wait a little for them
                        left = self._linger() - (time.monotonic() - self.fed[i])
                        if left > 0:
                            due = left if due is None else min(due, left)
                            break
                    self._flush()
                    chunk, waiting[:] = waiting[:size], waiting[size:]
                    self._submit(i, self.executor.submit(e._run_chunk, self.pplay, chunk))
                if not waiting:
                    del self.chunks[i][key]
        return due

    def _submit(self, i: int, fut: Future[Any]) -> None:
        self.inflight[fut] = i
        self.running[i] += 1

    def _flush(self) -> None:
        """Commit the outcomes emitted so far before a task that may depend on them starts."""
        if self.dirty:
            self.e.store.flush()
            self.dirty = False
            self.flushed_at = time.monotonic()

    def _pending(self) -> bool:
        return any(self.queued) or any(self.chunks)

    def run(self) -> set[str]:
        if self.settled:
            return self._settle_all()
        for group in self.groups:
            for t in group:
                if self.waiting[t.key] == 0:
                    self.ready.append(t)
        while True:
            while self.ready:
                self._resolve(self.ready.popleft())
            due = None if self.e._stop.is_set() else self._start()
            if self.ready:
                continue
            if not self.inflight:
                if due is not None and not self.e._stop.is_set():
                    self.e._stop.wait(due)
                    continue
                break
            timeout = 0.5 if due is None else max(0.01, min(0.5, due))
            finished, _ = wait(list(self.inflight), timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = self.inflight.pop(fut)
                self.running[i] -= 1
                got = fut.result()
                if isinstance(got, TaskOutcome):
                    self._outcome(self.by_key[got.key], got)
                else:
                    for task, outcome in got:
                        self._outcome(task, outcome)
        return self.bad
