"""Stress test: kill `runner apply` at random moments, resume, and compare the end state.

Usage: python bench/stress_kill.py [--kills N] [--labs L] [--clients 8-20] [--seed S]
       [--faults | --no-faults] [--playbooks gradual,immediate,...] [--sigint-share 0.25]
       [--workdir DIR] [--keep] [--json]

For each lab (seed S, S+1, ...; clients drawn from --clients) and each playbook:

1. a pristine lab is generated once and copied twice (identical bytes): a
   reference and a victim, each with its own state directory;
2. the reference is migrated by one uninterrupted `python -m runner apply`
   (no faults), timed, then applied again (all skipped; its time is the
   start-up cost of a resume, and it must change nothing);
3. the victim (with the lab's faults for --faults:
   ``runner lab faults drop=0.02 lcs_busy=0.05 msiexec_1618=0.05
   hive_locked=0.02``; with neither --faults nor --no-faults, every other
   pair) is applied in a subprocess that gets SIGKILL (or,
   for ``--sigint-share`` of the kills, SIGINT: Ctrl-C, which must exit 99)
   after a random delay between 0 and the expected time left (the
   reference's time scaled by the share of tasks not yet done, plus the
   start-up cost); the same command is typed again until the kills of
   this pair are spent, then until it exits 0 (exit 2 or 3 with faults means
   retries ran out: run again; bounded by --max-runs);
4. the victim's end state is compared with the reference's, store by store
   (bench/_endstate.py: LCS users, contacts, groups and allow/block
   entries (import_permissions) per user; AD
   msExchIM*, msRTCSIP-* and proxyAddresses per user and every other AD
   object; products, Uninstall keys, HKLM, loaded hives, services, files and
   Temp folders per host; user hives; artifacts' sha256 and the outbox;
   ``runner report --json`` warnings per target and step), checked for
   invariants that hold whatever the reference says, and checked with
   ``runner lab verify`` (also run on the reference).

Every apply runs with RUNNER_RETRY_DELAY_SCALE=0.01 and PYTHONPATH set to
this tree. Printed at the end: kills (SIGKILL / SIGINT, and signals that came
too late), labs, pairs, resumes, reruns after exit 2/3, discrepancies with
one line each (lab, playbook, category, user or host, what differs),
problems of the references themselves, and wall time. Exit 0 when there is
no discrepancy, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

import _endstate  # noqa: E402  (bench/ and the tree are put on sys.path just above)
from _endstate import Discrepancy  # noqa: E402
from runner.lab.generator import generate  # noqa: E402

PLAYBOOKS = ("gradual", "immediate", "immediate-recreate", "gradual-deferred")
DEFAULT_FAULTS = ("drop=0.02", "lcs_busy=0.05", "msiexec_1618=0.05", "hive_locked=0.02")
#: Playbooks whose users rebuild their own lists: verify does not check contacts.
NO_CONTACTS = {"immediate-recreate"}
DONE = ("ok", "changed", "skipped")
EXIT_INTERRUPTED = 99


@dataclass
class Figures:
    """What a stress run did and found."""

    kills_requested: int = 0
    sigkill: int = 0
    sigint: int = 0
    late: int = 0            # signals that came after the run had ended by itself
    labs: int = 0
    pairs: int = 0
    runs: int = 0            # every `runner apply` of a victim
    resumes: int = 0         # applies after the first of each pair
    reruns: int = 0          # applies after an exit 2 or 3 (retries ran out under faults)
    wall: float = 0.0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    baseline: list[Discrepancy] = field(default_factory=list)   # problems of the references themselves
    per_pair: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return self.sigkill + self.sigint

    def as_dict(self) -> dict[str, Any]:
        return {"kills": self.kills, "kills_requested": self.kills_requested, "sigkill": self.sigkill,
                "sigint": self.sigint, "late_signals": self.late, "labs": self.labs, "pairs": self.pairs,
                "runs": self.runs, "resumes": self.resumes, "reruns_after_exit_2_or_3": self.reruns,
                "discrepancies": len(self.discrepancies), "wall_seconds": round(self.wall, 1),
                "discrepancy_list": [d.as_dict() for d in self.discrepancies],
                "baseline_problems": [d.as_dict() for d in self.baseline], "pairs_detail": self.per_pair}


@dataclass
class Options:
    """The knobs of one stress run (the command-line options)."""

    kills: int = 40
    labs: int = 2
    clients: tuple[int, int] = (8, 20)
    seed: int = 1
    faults: str = "both"          # "on", "off", or "both": every other pair
    fault_rates: tuple[str, ...] = DEFAULT_FAULTS
    playbooks: tuple[str, ...] = PLAYBOOKS
    sigint_share: float = 0.25
    users_per_client: int = 2
    contacts: int = 20
    max_runs: int = 40
    workdir: Path | None = None
    keep: bool = False
    log: Callable[[str], None] = lambda line: None


def _env() -> dict[str, str]:
    pp = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + pp if pp else ""),
            "RUNNER_RETRY_DELAY_SCALE": "0.01"}


def _runner(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _only_startup_frames(stderr: str) -> bool:
    """True when a KeyboardInterrupt traceback shows no frame of the runner package beyond
    ``runner/__init__.py`` and ``runner/__main__.py``'s imports (Python's start-up window)."""
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', stderr)
    return "KeyboardInterrupt" in stderr and not any(
        "/runner/" in f and not (f.endswith(("/runner/__init__.py", "/runner/__main__.py")) and fn == "<module>")
        for f, fn in frames)


def _apply_cmd(playbook: str, lab: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "runner", "apply", str(REPO / "playbooks" / f"{playbook}.yml"),
            "-i", str(lab / "inventory.yml"), "--state", str(state), "--json"]


def _done_share(state: Path) -> float:
    """The share of the run's registered tasks that are finished (0.0 before any)."""
    db_path = state / "state.db"
    if not db_path.exists():
        return 0.0
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            total, done = db.execute(
                f"SELECT COUNT(*), SUM(status IN ({','.join('?' * len(DONE))})) FROM tasks", DONE).fetchone()
        finally:
            db.close()
    except sqlite3.Error:  # killed before the schema was written
        return 0.0
    return (done or 0) / total if total else 0.0


def _changed_tasks(stdout: str) -> list[str]:
    """Keys of tasks an apply reported as changed (from its JSON-lines events)."""
    out = []
    for line in stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "task" and e.get("status") == "changed":
            out.append(str(e.get("key") or e.get("target")))
    return out


def _terminal_signals() -> None:
    """In the child, before exec: Ctrl-C does what it does at a terminal. A shell without job
    control starts background commands with SIGINT ignored, and a child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_end(stdout_path: Path) -> dict[str, Any] | None:
    """The run_end event of an apply's JSON-lines output (None when it never got there)."""
    end = None
    for line in stdout_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"run_end"' in line:
            try:
                end = json.loads(line)
            except ValueError:
                pass
    return end


@dataclass
class Attempt:
    """One `runner apply` of a victim: how it ended."""

    rc: int | None
    signal: str | None       # "KILL", "INT" or None (ran to its end)
    landed: bool              # the signal reached a running apply
    seconds: float
    stderr: str


def _attempt(cmd: list[str], cwd: Path, log_base: Path, delay: float | None, sig: int,
             timeout: float) -> Attempt:
    """Run one apply; after ``delay`` seconds (None: never) send ``sig`` if it still runs."""
    out_path, err_path = log_base.with_suffix(".out"), log_base.with_suffix(".err")
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=out, stderr=err, preexec_fn=_terminal_signals)
        landed = False
        name = None
        if delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                name = "KILL" if sig == signal.SIGKILL else "INT"
                proc.send_signal(sig)
                landed = True
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    return Attempt(rc, name, landed, time.monotonic() - started, stderr)


def _verify(lab: Path, playbook: str, *, lab_name: str) -> list[Discrepancy]:
    args = ["lab", "verify", "--dir", str(lab), "--json", "--signin"] + (
        ["--no-contacts"] if playbook in NO_CONTACTS else [])
    proc = _runner(*args, cwd=lab)
    try:
        rep = json.loads(proc.stdout)
    except ValueError:
        return [Discrepancy(lab_name, playbook, "verify", "-", f"exit {proc.returncode}: {proc.stderr[-300:]}")]
    out = [Discrepancy(lab_name, playbook, "verify", "-", p) for p in rep.get("problems", [])]
    for u in rep.get("users", []):
        if not u.get("ok", True):
            detail = "; ".join(u.get("problems", []))
            extra = u.get("extra") or u.get("missing")
            out.append(Discrepancy(lab_name, playbook, "verify", u["alias"],
                                   detail + (f" ({', '.join(extra[:3])})" if extra else "")))
    if (proc.returncode == 0) != (not out):
        out.append(Discrepancy(lab_name, playbook, "verify", "-", f"exit {proc.returncode} but ok={rep.get('ok')}"))
    return out


def _report(state: Path, cwd: Path) -> dict[str, Any]:
    proc = _runner("report", "--json", "--state", str(state), cwd=cwd)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"entries": [], "error": f"exit {proc.returncode}: {proc.stderr[-300:]}"}


def _end_state(lab: Path, state: Path, playbook: str, lab_name: str) -> tuple[dict[str, Any], list[Discrepancy]]:
    """The snapshot of a finished pair member and what its own checks found."""
    report = _report(state, lab.parent)
    problems = []
    if report.get("error"):
        problems.append(Discrepancy(lab_name, playbook, "report", "-", report["error"]))
    snap = _endstate.snapshot(lab, state, report)
    problems += _endstate.invariants(snap, state, lab=lab_name, playbook=playbook)
    problems += _verify(lab, playbook, lab_name=lab_name)
    return snap, problems


class StressRun:
    """One stress run: labs x playbooks, kills spread over the pairs (see the module docstring)."""

    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.fig = Figures(kills_requested=opts.kills)
        self.root = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="stress-kill-"))

    def run(self) -> Figures:
        started = time.monotonic()
        try:
            per_lab = len(self.o.playbooks)
            planned = self.o.labs * per_lab
            base, extra = divmod(self.o.kills, max(1, planned))
            carry, n = 0, 0
            lab: Path | None = None
            # kills that could not land (the run finished first) move on to the next pair; when
            # the labs asked for are done and kills are left, up to as many labs again are added
            while n < planned or (carry > 0 and n < 2 * planned):
                i, pb = n // per_lab, self.o.playbooks[n % per_lab]
                if n % per_lab == 0 or lab is None:
                    lab = self._lab(i)
                quota = carry + ((base + (1 if n < extra else 0)) if n < planned else 0)
                faulty = self.o.faults == "on" or (self.o.faults == "both" and n % 2 == 1)
                carry = quota - self._pair(i, pb, lab, faulty, quota)
                n += 1
        finally:
            self.fig.wall = time.monotonic() - started
            if not self.o.keep and self.o.workdir is None:
                shutil.rmtree(self.root, ignore_errors=True)
        return self.fig

    def _lab(self, i: int) -> Path:
        clients = self.rng.randint(*self.o.clients)
        path = self.root / f"lab{i}" / "pristine"
        generate(path, clients=clients, users_per_client=self.o.users_per_client, contacts=self.o.contacts,
                 seed=self.o.seed + i)
        self.fig.labs += 1
        self.o.log(f"lab{i}: {clients} clients, seed {self.o.seed + i}")
        return path

    def _pair(self, i: int, playbook: str, pristine: Path, faulty: bool, quota: int) -> int:
        """Reference run, victim runs with ``quota`` kills, comparison; returns the kills that landed."""
        name = f"lab{i}"
        pdir = pristine.parent / playbook
        ref, ref_state = pdir / "ref-lab", pdir / "ref-state"
        vic, vic_state = pdir / "victim-lab", pdir / "victim-state"
        (pdir / "logs").mkdir(parents=True)
        shutil.copytree(pristine, ref)
        shutil.copytree(pristine, vic)
        self.fig.pairs += 1
        total, startup = self._reference(name, playbook, ref, ref_state, pdir)
        if faulty:
            proc = _runner("lab", "faults", *self.o.fault_rates, "--seed", str(self.o.seed + i), "--dir", str(vic),
                           cwd=pdir)
            if proc.returncode != 0:
                raise SystemExit(f"runner lab faults failed: {proc.stderr}")
        landed, runs, history = self._victim(name, playbook, vic, vic_state, pdir, faulty, quota, total, startup)
        self.fig.per_pair.append({"lab": name, "playbook": playbook, "faults": faulty, "kills": landed,
                                  "runs": runs, "reference_seconds": round(total, 2), "history": history})
        self.o.log(f"{name} {playbook}{' (faults)' if faulty else ''}: reference {total:.1f}s; "
                   f"{landed} kill(s), {runs} run(s): {' '.join(history)}")

        want, ref_problems = _end_state(ref, ref_state, playbook, name)
        self.fig.baseline.extend(ref_problems)
        got, problems = _end_state(vic, vic_state, playbook, name)
        # what the reference shows as well is a problem of the code, not of the kills: kept in baseline
        known = {(d.category, d.subject, d.detail) for d in ref_problems}
        problems = [d for d in problems if (d.category, d.subject, d.detail) not in known]
        found = _endstate.compare(got, want, lab=name, playbook=playbook, explained=problems) + problems
        for d in found:
            self.fig.discrepancies.append(d)
            self.o.log(f"  DISCREPANCY {d.line()}")
        return landed

    def _reference(self, name: str, playbook: str, lab: Path, state: Path, pdir: Path) -> tuple[float, float]:
        """One uninterrupted run, then the same command again (all skipped, nothing changed);
        returns the run's time and the time of a resume that has nothing left to do."""
        logs = pdir / "logs"
        first = _attempt(_apply_cmd(playbook, lab, state), pdir, logs / "ref-1", None, 0, 900)
        again = _attempt(_apply_cmd(playbook, lab, state), pdir, logs / "ref-2", None, 0, 900)
        for label, a in (("uninterrupted run", first), ("second run", again)):
            if a.rc != 0:
                self.fig.baseline.append(Discrepancy(name, playbook, "reference", label,
                                                     f"exit {a.rc}: {a.stderr.strip()[-300:]}"))
        changed = _changed_tasks((logs / "ref-2.out").read_text(encoding="utf-8", errors="replace"))
        if changed:
            self.fig.baseline.append(Discrepancy(name, playbook, "reference", "second run",
                                                 f"{len(changed)} task(s) changed again: {', '.join(changed[:4])}"))
        return first.seconds, min(again.seconds, first.seconds)

    def _victim(self, name: str, playbook: str, lab: Path, state: Path, pdir: Path, faulty: bool, quota: int,
                total: float, startup: float) -> tuple[int, int, list[str]]:
        """Apply, kill, type it again: until ``quota`` kills landed and then until exit 0 (at most
        --max-runs applies after the killed ones, so a pair given many kills still gets its runs
        to finish). Returns (kills landed, applies, one history entry per apply)."""
        def bad(d: Discrepancy) -> None:
            self.fig.discrepancies.append(d)
            self.o.log(f"  DISCREPANCY {d.line()}")

        cmd = _apply_cmd(playbook, lab, state)
        landed = runs = 0
        history: list[str] = []
        rc: int | None = None
        while runs < self.o.max_runs + quota:
            runs += 1
            delay = sig = None
            if landed < quota:
                left = startup + (total - startup) * (1.0 - _done_share(state))
                delay = self.rng.uniform(0.0, max(left, 0.05))
                sig = signal.SIGINT if self.rng.random() < self.o.sigint_share else signal.SIGKILL
            log = pdir / "logs" / f"victim-{runs}"
            a = _attempt(cmd, pdir, log, delay, sig or 0, max(300.0, 20 * total))
            rc = a.rc
            history.append(f"{'SIG' + a.signal if a.landed else 'ended-before'}@{delay:.2f}s:{rc}"
                           if delay is not None else f"run:{rc}")
            self.fig.runs += 1
            self.fig.resumes += runs > 1
            trace = ("; traceback ending " + a.stderr.strip().splitlines()[-1][:160]) if "Traceback" in a.stderr else ""
            if a.signal == "INT" and a.landed and rc not in (0, 2, 3):
                landed += 1
                self.fig.sigint += 1
                # killed by the default action with not a byte written: Python was not up yet (the
                # OS's doing, as at a terminal); anything else must be the runner's exit 99
                before_python = rc == -signal.SIGINT and not a.stderr and not log.with_suffix(".out").stat().st_size
                # Python's own start-up (site, runpy) runs before the runner's first line can take
                # SIGINT: a KeyboardInterrupt raised there, with no frame of the runner's code, is
                # the interpreter's window too (about 30 ms), not the runner's handling
                before_python = before_python or (rc in (1, -signal.SIGINT) and bool(trace)
                                                  and _only_startup_frames(a.stderr))
                if (rc != EXIT_INTERRUPTED or trace) and not before_python:
                    bad(Discrepancy(name, playbook, "sigint", f"run {runs}",
                                    f"Ctrl-C {delay:.2f}s after start: exit {rc}, expected 99{trace}"))
                continue
            if trace:
                bad(Discrepancy(name, playbook, "crash", f"run {runs}", f"exit {rc}{trace}"))
            if a.signal == "KILL" and rc == -signal.SIGKILL:
                landed += 1
                self.fig.sigkill += 1
                continue
            if delay is not None:  # the run ended by itself before (or as) the signal came
                self.fig.late += 1
                end = _run_end(log.with_suffix(".out")) or {}
                if a.signal == "INT" and not end.get("interrupted") and a.seconds - delay > max(2.0, total / 4):
                    bad(Discrepancy(name, playbook, "sigint", f"run {runs}",
                                    f"Ctrl-C {delay:.2f}s after start was ignored: the run went on for "
                                    f"{a.seconds - delay:.1f}s more and exited {rc}"))
            if rc == 0:
                break
            if rc in (2, 3):
                self.fig.reruns += 1
                if not faulty:
                    bad(Discrepancy(name, playbook, "exit", f"run {runs}",
                                    f"exit {rc} without faults: {a.stderr.strip()[-200:]}"))
                continue
            bad(Discrepancy(name, playbook, "exit", f"run {runs}", f"exit {rc}: {a.stderr.strip()[-300:]}"))
        if rc != 0:
            bad(Discrepancy(name, playbook, "converge", "-", f"no exit 0 after {runs} runs ({' '.join(history)})"))
        return landed, runs, history


def render(fig: Figures) -> str:
    """The figures as text for a person."""
    lines = [f"kills: {fig.kills} of {fig.kills_requested} requested (SIGKILL {fig.sigkill}, SIGINT {fig.sigint};"
             f" {fig.late} signal(s) came after the run had ended)",
             f"labs: {fig.labs}, lab x playbook pairs: {fig.pairs}",
             f"applies of victims: {fig.runs}, resumes: {fig.resumes}, reruns after exit 2/3: {fig.reruns}",
             f"discrepancies: {len(fig.discrepancies)}"]
    lines += [f"  {d.line()}" for d in fig.discrepancies]
    if fig.baseline:
        lines.append(f"problems of the uninterrupted references themselves: {len(fig.baseline)}")
        lines += [f"  {d.line()}" for d in fig.baseline]
    lines.append(f"wall time: {fig.wall:.1f} s")
    return "\n".join(lines)


def _clients(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if a < 1 or b < a:
        raise argparse.ArgumentTypeError(f"--clients wants N or LOW-HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return a, b


def _playbooks(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().removesuffix(".yml") for p in text.split(",") if p.strip())
    unknown = [p for p in names if not (REPO / "playbooks" / f"{p}.yml").is_file()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown playbook(s) {', '.join(unknown) or text!r}; "
                                         f"choose among {', '.join(PLAYBOOKS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=40, help="kills to land in all (default 40)")
    ap.add_argument("--labs", type=int, default=2, help="labs (seed, seed+1, ...; default 2)")
    ap.add_argument("--clients", type=_clients, default=(8, 20), help="clients per lab, N or LOW-HIGH (8-20)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the labs, faults and kill times (default 1)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--faults", dest="faults", action="store_const", const="on",
                   help="every victim lab has the lab's faults (default: every other pair)")
    g.add_argument("--no-faults", dest="faults", action="store_const", const="off", help="no faults at all")
    ap.add_argument("--fault-rates", default=" ".join(DEFAULT_FAULTS),
                    help=f"rates for `runner lab faults` (default: {' '.join(DEFAULT_FAULTS)})")
    ap.add_argument("--playbooks", type=_playbooks, default=PLAYBOOKS,
                    help="comma-separated names from playbooks/ (default: all four)")
    ap.add_argument("--sigint-share", type=float, default=0.25, help="share of kills sent as SIGINT (0.25)")
    ap.add_argument("--contacts", type=int, default=20, help="average contacts per user and machine (20)")
    ap.add_argument("--max-runs", type=int, default=40, help="applies per pair, after its killed ones, before giving up (40)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep labs and logs here (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args(argv)
    if a.workdir is not None and a.workdir.exists() and any(a.workdir.iterdir()):
        ap.error(f"--workdir {a.workdir} is not empty")
    opts = Options(kills=a.kills, labs=a.labs, clients=a.clients, seed=a.seed, faults=a.faults or "both",
                   fault_rates=tuple(a.fault_rates.split()), playbooks=a.playbooks, sigint_share=a.sigint_share,
                   contacts=a.contacts, max_runs=a.max_runs, workdir=a.workdir, keep=a.keep,
                   log=(lambda line: print(line, file=sys.stderr, flush=True)))
    run = StressRun(opts)
    if a.keep or a.workdir:
        print(f"labs and logs in {run.root}", file=sys.stderr)
    fig = run.run()
    print(json.dumps(fig.as_dict(), indent=1) if a.json else render(fig))
    return 0 if not fig.discrepancies else 1


if __name__ == "__main__":
    sys.exit(main())
