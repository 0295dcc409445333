"""One ``runner apply``: load, plan, lock the state, run the engine, return the exit code.

Also owns Ctrl-C: the first SIGINT asks the engine to stop scheduling (tasks
in flight finish and are recorded, then the recap and the resume command
are printed, exit 99); a second one exits at once (the WAL store stays
consistent; the lock dies with the process).
"""
from __future__ import annotations

import gc
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from runner.connections.lab import check_labs, real_lab_dir
from runner.connections.registry import ConnectionOptions
from runner.engine import Engine, EngineOptions, retry_delay_scale
from runner.errors import EXIT_INTERRUPTED, PermanentFault, RunnerError
from runner.estate import Estate, estate_of, subjects
from runner.events import RUN_END, Event
from runner.extravars import with_extra_vars
from runner.oslimits import raise_open_files
from runner.lab.store import lab_identity
from runner.loader import LabNotGenerated, collection_paused, load_inventory, load_playbook
from runner.model import Inventory
from runner.output import HumanOutput, JsonOutput
from runner.outstream import LosableStream
from runner.plan import build_plan
from runner.state import StateStore


@dataclass
class ApplyRequest:
    """Everything ``runner apply`` was asked to do (built by the CLI)."""

    playbook: str
    inventory: str
    check: bool = False
    diff: bool = False
    limit: str | None = None
    tags: set[str] = field(default_factory=set)
    skip_tags: set[str] = field(default_factory=set)
    start_at_step: str | None = None
    forks: int = 25
    state_dir: str = ".runner"
    fresh: bool = False
    json: bool = False
    verbosity: int = 0
    quiet: bool = False
    accept_new_host_keys: bool = False
    resume_command: str = ""
    default_delay: float = 1.0
    extra_vars: dict[str, Any] = field(default_factory=dict)
    list_hosts: bool = False
    list_tasks: bool = False
    list_tags: bool = False


class _Interrupts:
    """SIGINT and SIGHUP handling for the duration of a run (main thread only). A hang-up (the
    terminal or the ssh session to the control node went away) is not a reason to stop: the
    streams on that terminal are dropped, as a closed stdout is (runner.outstream)."""

    def __init__(self, engine: Engine, err: TextIO, streams: tuple[LosableStream, ...] = (),
                 resume_command: str = "") -> None:
        self.engine = engine
        self.err = err
        self.streams = streams
        self.resume_command = resume_command
        self.previous: Any = None
        self.previous_hup: Any = None

    def _hang_up(self, signum: int, frame: Any) -> None:
        for stream in self.streams:
            if stream.isatty():
                stream.lose("hung up (SIGHUP: its terminal or ssh session went away)")

    def _handle(self, signum: int, frame: Any) -> None:
        if self.engine.interrupted:
            try:
                self.err.write("\ninterrupted again: stopping now (finished tasks are recorded"
                               + (f"; to resume: {self.resume_command}" if self.resume_command else "")
                               + ")\n")
                self.err.flush()
            finally:
                os._exit(EXIT_INTERRUPTED)
        self.engine.interrupt()
        self.err.write("\ninterrupted: finishing the tasks in flight (Ctrl-C again to stop now)\n")
        self.err.flush()

    def __enter__(self) -> "_Interrupts":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
            if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # not nohup's
                self.previous_hup = signal.signal(signal.SIGHUP, self._hang_up)
        except ValueError:  # not the main thread (embedded use): no handler
            self.previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.previous_hup is not None:
            signal.signal(signal.SIGHUP, self.previous_hup)


def inventory_estate(inventory: Inventory) -> Estate:
    """The estate ``inventory`` describes, a lab's identity read from its directory."""
    cache: dict[Path, str] = {}
    resolved: dict[Path, Path] = {}

    def lab_of(host: Any) -> str | None:
        try:
            path = real_lab_dir(host, inventory, resolved)
        except PermanentFault:
            return None
        if path not in cache:
            cache[path] = lab_identity(path) or f"dir:{path}"
        return cache[path]
    return estate_of(inventory, lab_of)


def bind_estate(store: StateStore, inventory: Inventory, *, record: bool) -> Estate:
    """Bind ``store`` to the inventory's estate or refuse (StateEstateError, exit 1).

    For a store written before stores knew their estate, the inventory files of
    its runs are read again (those that still load) to tell whether they were
    this estate.
    """
    estate = inventory_estate(inventory)
    legacy: dict[str, Estate] = {}
    for path in store.legacy_inventories():
        if not Path(path).is_file():
            continue
        try:
            legacy[path] = inventory_estate(load_inventory(path))
        except (RunnerError, OSError):  # unreadable now: nothing known against it
            continue
    store.bind_estate(estate, subjects(inventory), legacy=legacy, record=record, inventory=inventory.path)
    return estate


class RetryFile:
    """Ansible's retry file: after a run with failed or unreachable targets, their names one a
    line in ``<state>/<playbook>.retry``, for ``--limit @FILE`` (a run without any removes
    it, so an old list is never taken for tonight's). Sets the summary's ``retry_file``
    before the output prints the recap."""

    def __init__(self, state_dir: Path, playbook: str) -> None:
        self.path = state_dir / f"{Path(playbook).stem}.retry"

    def __call__(self, event: Event) -> None:
        if event.kind != RUN_END:
            return
        summary = event.data["summary"]
        names = sorted({n for n, c in summary.counts.items() if c.get("failed") or c.get("unreachable")})
        try:
            if not names:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:  # the run is recorded either way; the recap simply names no file
            return
        summary.retry_file = str(self.path)


def apply(req: ApplyRequest, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run (or check) a playbook against an inventory; return the exit code."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    doing = ["loading the playbook"]  # what a Ctrl-C before the engine starts interrupted
    froze: list[bool] = []  # _apply froze the run's inputs (gc.freeze): undone on the way out
    try:
        return _apply(req, out, err, doing, froze)
    except KeyboardInterrupt:
        if not doing:  # the engine had started: its own handler has said what it had to
            raise
        err.write(f"\ninterrupted while {doing[0]}: nothing was started (no task ran, nothing changed)\n"
                  f"to run again: {req.resume_command}\n")
        err.flush()
        return EXIT_INTERRUPTED
    finally:
        if froze:
            gc.unfreeze()  # what _apply froze goes back to the collector


def _apply(req: ApplyRequest, out: TextIO, err: TextIO, doing: list[str], froze: list[bool]) -> int:
    """``apply``'s work; ``doing`` names the stage of loading under way, and is emptied when
    the engine starts; ``froze`` gets an entry once the inputs are frozen."""
    retry_delay_scale()  # a bad RUNNER_RETRY_DELAY_SCALE is a bad option before anything starts
    raise_open_files()   # a socket per SSH host, SQLite files per lab thread (runner.oslimits)
    playbook = with_extra_vars(load_playbook(req.playbook), req.extra_vars)
    doing[0] = "loading the inventory"
    # the inputs and the plan are built with no cyclic collection, then kept out of the
    # collector's sight for the run (gc.freeze below); the built-in lab's generation, inside
    # too, leaves no cyclic garbage (the same peak memory either way at 1,500 clients)
    with collection_paused():
        try:
            inventory = load_inventory(req.inventory)
        except LabNotGenerated:  # the built-in lab is made on first use, by apply (loading never writes)
            from runner.lab.generator import ensure_plugin_lab
            doing[0] = "generating the built-in lab"
            ensure_plugin_lab(req.inventory)
            doing[0] = "loading the inventory"
            inventory = load_inventory(req.inventory)
        doing[0] = "planning"
        plan = build_plan(playbook, inventory, limit=req.limit, tags=req.tags or None,
                          skip_tags=req.skip_tags or None, start_at_step=req.start_at_step)
        if req.list_hosts or req.list_tasks or req.list_tags:  # from the plan alone: nothing connects
            from runner import listing
            for wanted, lister in ((req.list_hosts, listing.list_hosts), (req.list_tasks, listing.list_tasks),
                                   (req.list_tags, listing.list_tags)):
                if wanted:
                    out.write("\n".join(lister(plan)) + "\n")
            out.flush()
            return 0
        # they live as long as the run: frozen, the collections of the run do not walk a
        # 10,000-client inventory and plan again and again, and the objects built while
        # collection was paused are never walked at all. The reader leaves no node tree in a
        # reference cycle (tests/test_composer.py), so nothing dead is frozen with them.
        # Undone when apply returns, for a caller that goes on (the tests run many); a
        # caller's own freeze is left alone, as freezes do not nest.
        if gc.get_freeze_count() == 0:
            gc.freeze()
            froze.append(True)
    doing[0] = "checking the labs"
    check_labs(inventory, {t.target_name for t in plan.tasks() if t.kind == "host"}
               | {c for t in plan.tasks() if t.kind == "user" for c in getattr(t.target, "clients", ())})
    doing[0] = "opening the state store"
    store = StateStore(Path(req.state_dir))
    try:
        if req.check:
            bind_estate(store, inventory, record=False)
            latest = None if req.fresh else store.latest_run(store.identity_for(req.playbook, req.inventory))
            run_id, resumed = (latest.id, True) if latest else ("check", False)
        else:
            store.acquire_lock()
            bind_estate(store, inventory, record=True)
            info = store.start_run(req.playbook, req.inventory, command=req.resume_command, fresh=req.fresh)
            run_id, resumed = info.id, info.resumed
        err = LosableStream(err, "standard error")
        if req.check:  # nothing is recorded: with nobody reading, there is nothing left to do
            then = "the check stops (it changes nothing and records nothing)"
        else:
            then = (f"the run goes on and records everything: `runner status --state {req.state_dir}` and "
                    f"`runner report --state {req.state_dir}` show how it ends")
        out = LosableStream(out, "standard output", notice=err, then=then)
        output: Any
        if req.json:
            output = JsonOutput(out, resume_command=req.resume_command)
        else:
            output = HumanOutput(verbosity=req.verbosity, diff=req.diff, stream=out, quiet=req.quiet,
                                 resume_command=req.resume_command)
        options = EngineOptions(forks=req.forks, check=req.check, diff=req.diff,
                                default_delay=req.default_delay,
                                connection=ConnectionOptions(accept_new_host_keys=req.accept_new_host_keys))
        subscribers: list[Any] = [output]
        if not req.check:
            subscribers.insert(0, RetryFile(Path(req.state_dir), req.playbook))
        engine = Engine(inventory, store, run_id, options, subscribers, resumed=resumed)
        if req.check:
            out.on_lost = engine.interrupt
        with _Interrupts(engine, err, (out, err), "" if req.check else req.resume_command):
            doing.clear()
            summary = engine.run(plan)
            if not req.check:
                store.finish_run(run_id, summary.status)
        return summary.exit_code
    finally:
        store.close()
