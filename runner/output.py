"""What the user sees: Ansible-like lines and a recap, or JSON-lines events (--json).

Both are engine subscribers. ``HumanOutput`` prints a header per play and
step with a one-line summary of each step's counts and warnings, the failed
and unreachable tasks (those an earlier failure blocked grouped in one line
per cause), the targets not due yet by design (``not_yet``: one line per
reason with a few examples), every task at ``-v``, diffs with ``--diff``, and the final RECAP:
hosts and users apart, the targets with problems, the warnings per step and
kind with a few examples, and the command to resume. ``-q`` keeps only the
failures, the recap totals and the resume command.

Progress: on a terminal, one bar for the whole run (tasks done and left over
every step and wave, rate, time left, changed / failed / unreachable so far,
the wave and step); elsewhere, a plain ``progress:`` line every
``PROGRESS_INTERVAL`` seconds. ``JsonOutput`` writes one JSON object per line
and nothing else. Lines nobody will see are never formatted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import json
import sys
import textwrap
import time
from collections import Counter
from typing import Any, Callable, TextIO

from runner.engine import COUNTERS, RunSummary
from runner.plan import natural_key
from runner.events import (PLAY_START, RUN_END, RUN_START, STEP_START, TASK_END, WAVE_END, Event,
                           TaskOutcome, failure_kind, one_line)
from runner.warnings_tally import WarningTally, kinds_line

#: Up to this many targets, the recap lists every one of them (beyond: those with problems, unless -v).
RECAP_ALL_TARGETS = 20
#: Warnings shown as examples per step and kind in the recap (-v prints every one as it comes).
WARNINGS_PER_TASK = 3
#: Seconds between two plain progress lines when the output is not a terminal.
PROGRESS_INTERVAL = 30.0
#: On a terminal: the bar follows tasks' outcomes at most this often (seconds).
PROGRESS_REDRAW = 0.1
#: Targets named in one grouped "not run" line before "+N more".
GROUPED_NAMES = 30
#: Examples under a step's "not yet" line, and targets the recap names (-v: every one).
NOT_YET_EXAMPLES = 3
RECAP_NOT_YET_NAMES = 10
WIDTH = 78
_PROBLEMS = ("failed", "unreachable", "ignored")


def header(kind: str, name: str, counts: str = "") -> str:
    """``PLAY [name] ****...`` padded to the line width, as Ansible does; ``counts`` (a
    block that has nothing else to say) goes after the name: ``STEP [name] ok=8 ****``."""
    text = f"{kind} [{name}] " + (f"{counts} " if counts else "")
    return text + "*" * max(3, WIDTH - len(text))


def _block_name(block: "_StepBlock") -> str:
    """A step block's name in its header: the step, and its wave when it has one."""
    d = block.event
    return d["step"] + (f" (wave {d['wave']})" if d.get("wave") is not None else "")


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``12s``: a short human duration."""
    s = int(max(0, seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _blocked_reason(o: TaskOutcome) -> str | None:
    """Why a task did not run because of an earlier failure (grouped in one line), else None."""
    data = o.data if isinstance(o.data, dict) else {}
    if isinstance(data.get("blocked_by"), dict) or o.message == "host unreachable earlier in this run":
        return o.message
    return None


def _not_yet_lines(reason: str, found: list[tuple[str, str, str]], waiting: set[str], examples: bool) -> list[str]:
    """A step's targets not due yet for one reason (``found``: target, kind, message):
    ``not yet: 78 hosts keep Exchange IM ... (waiting for wave2, wave3)`` and, when
    ``examples``, the first few (``  e.g. [pc0001] ...``) and how many more."""
    kinds = {k for _, k, _ in found}
    what = f"{kinds.pop()}s" if len(kinds) == 1 else "targets"
    lines = [f"not yet: {len(found)} {what if len(found) != 1 else what[:-1]} {reason}"
             + (f" (waiting for {', '.join(sorted(waiting, key=natural_key))})" if waiting else "")]
    if examples:
        for target, _, message in sorted(found, key=lambda f: natural_key(f[0]))[:NOT_YET_EXAMPLES]:
            lines.append(f"  e.g. [{target}] {message}")
        if len(found) > NOT_YET_EXAMPLES:
            lines.append(f"  ... and {len(found) - NOT_YET_EXAMPLES} more (-v shows each; `runner status` lists them)")
    return lines


@dataclass
class _StepBlock:
    """One step of one wave in the live output: its counts, warnings and grouped failures."""
    event: dict[str, Any]
    announced: int
    seen: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "changed": 0, "failed": 0,
                                                             "skipped": 0, "unreachable": 0, "not_yet": 0})
    warnings: Counter[str] = field(default_factory=Counter)
    blocked: dict[str, list[str]] = field(default_factory=dict)
    # not due yet (NotYet), by reason: the (target, kind, message) of each, and what they wait for
    not_yet: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    waiting: dict[str, set[str]] = field(default_factory=dict)
    # failures under ignore_errors, by kind (failure_kind): (target, message) each
    ignored: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    headed: bool = False   # its header was printed (a line of it came before it closed)
    # real failures by (status, whole message with <target>): the first is printed as it comes,
    # the later ones alike are one line at the step's end
    alike: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # lines said while an earlier step was still printing: (text, shown with -q too), said in turn
    held: list[tuple[str, bool]] = field(default_factory=list)
    complete: bool = False  # every task of it is in; its closing lines wait for its turn


def _counters(c: dict[str, int]) -> str:
    return "  ".join(f"{k}={c.get(k, 0)}" for k in COUNTERS)


class HumanOutput:
    """Human-readable output on ``stream`` (stdout by default)."""

    def __init__(self, *, verbosity: int = 0, diff: bool = False, stream: TextIO | None = None,
                 tty: bool | None = None, resume_command: str | None = None, quiet: bool = False,
                 progress_interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.verbosity = verbosity
        self.quiet = quiet and verbosity == 0
        self.diff = diff
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.resume_command = resume_command
        self.progress_interval = progress_interval
        self.clock = clock
        self._progress: Any = None
        self._progress_task: Any = None
        # A wave's tasks flow by their dependencies, so outcomes of its steps interleave:
        # each (play, step, wave) is one block, and blocks speak in the order they began.
        # The first open block prints as its lines come (its header before its first line);
        # a later block's lines are held until the blocks before it are done, then printed
        # together under its one header, followed by its counts.
        self._blocks: dict[tuple[Any, ...], _StepBlock] = {}
        self._step: dict[str, Any] | None = None      # the step the next outcomes belong to
        self._cur: tuple[Any, ...] | None = None
        self._check = False
        # blocks a resumed run found all done: said together, in one line, before the next line
        self._earlier: list[tuple[str, Any, int]] = []
        self.warnings = WarningTally(WARNINGS_PER_TASK)
        self._kinds: dict[str, str] = {}
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._run_counts: Counter[str] = Counter()
        self._total = 0
        self._done = 0
        self._ran = 0
        self._started = 0.0
        self._last_line = 0.0
        self._drawn = float("-inf")  # when the bar was last updated
        self._stale = False           # it has not been updated for every one since

    # -- plumbing ---------------------------------------------------------------

    def _write(self, line: str) -> None:
        if self._earlier:
            self._flush_earlier()
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(line + "\n")

    def _flush_earlier(self) -> None:
        """Consecutive steps a resumed run found done earlier, as one line:
        ``STEP [Export contact lists ... Disable Exchange IM (wave wave2), 9 steps] done earlier=1043``."""
        blocks, self._earlier = self._earlier, []
        if len(blocks) == 1:
            name = blocks[0][0] + (f" (wave {blocks[0][1]})" if blocks[0][1] is not None else "")
        else:
            waves = {w for _, w, _ in blocks}
            wave = next(iter(waves)) if len(waves) == 1 else None
            name = (f"{blocks[0][0]} ... {blocks[-1][0]}" + (f" (wave {wave})" if wave is not None else "")
                    + f", {len(blocks)} steps")
        self._say("")
        self._say(header("STEP", name, f"done earlier={sum(n for _, _, n in blocks)}"))

    def _say(self, line: str) -> None:
        """A line of the normal output (not shown with -q)."""
        if not self.quiet:
            self._write(line)

    def _start_progress(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=self.stream, force_terminal=True)
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            TextColumn("changed={task.fields[changed]} failed={task.fields[failed]} "
                       "unreachable={task.fields[unreachable]}"),
            console=console, transient=True)
        self._progress.start()
        self._progress_task = self._progress.add_task("run", total=max(1, self._total), rate="",
                                                      changed=0, failed=0, unreachable=0)

    def _where(self) -> str:
        if not self._step:
            return ""
        wave = self._step.get("wave")
        return (f"wave {wave}: " if wave is not None else "") + self._step["step"]

    def _rate(self) -> float:
        elapsed = self.clock() - self._started
        return self._ran / elapsed if elapsed > 0 else 0.0

    def _advance(self, n: int = 1, *, lazy: bool = False) -> None:
        """Count ``n`` more tasks of the plan as done (run, skipped or dropped). ``lazy`` (an
        outcome of a burst: a wave the engine settles whole, thousands of tasks at once on a
        resume): the bar is updated at most every PROGRESS_REDRAW seconds, as it is painted
        only ten times a second and updating it for each cost a 1,000-client resume 0.3 s;
        the burst's WAVE_END, or any other event that is not a task's outcome, brings it up
        to date."""
        self._done = min(self._total, self._done + n)
        c = self._run_counts
        if self._progress is not None:
            now = self.clock()
            if lazy and self._done < self._total and now - self._drawn < PROGRESS_REDRAW:
                self._stale = True
                return
            self._drawn, self._stale = now, False
            rate = self._rate()
            self._progress.update(self._progress_task, completed=self._done,
                                  description=self._where()[:40], rate=f"{rate:.1f}/s" if rate else "",
                                  changed=c["changed"], failed=c["failed"], unreachable=c["unreachable"])
        elif not self.tty and not self.quiet and self.progress_interval >= 0:
            now = self.clock()
            if now - self._last_line >= self.progress_interval and self._done < self._total:
                self._last_line = now
                self._write(self.progress_line())

    def progress_line(self) -> str:
        """``progress: 120/538 tasks (22%), 4.1/s, about 1m40s left; changed=...; wave ...``."""
        rate = self._rate()
        left = self._total - self._done
        eta = f", about {duration(left / rate)} left" if rate > 0 and left else ""
        pct = 100 * self._done // self._total if self._total else 100
        c = self._run_counts
        return (f"progress: {self._done}/{self._total} tasks ({pct}%), {rate:.1f}/s{eta}; "
                f"changed={c['changed']} failed={c['failed']} unreachable={c['unreachable']}; "
                f"{self._where()}")

    def _header(self, key: tuple[Any, ...]) -> None:
        """Print ``key``'s STEP header, once."""
        if self._earlier:
            self._flush_earlier()   # before: its line must not come under a header it has not
        block = self._blocks[key]
        if block.headed:
            return
        block.headed = True
        self._say("")
        self._say(header("STEP", _block_name(block)))

    def _line(self, key: tuple[Any, ...] | None, line: str, loud: bool) -> None:
        """A line of ``key``'s block (``loud``: shown with -q too): printed now under its header
        when the block has the floor, else held for its turn."""
        block = self._blocks.get(key) if key is not None else None
        if block is None:
            self._write(line) if loud else self._say(line)
        elif key != next(iter(self._blocks)):
            block.held.append((line, loud))
        else:
            self._header(key)
            self._write(line) if loud else self._say(line)

    def _loud(self, line: str) -> None:
        """Write a failure (or -v) line under its own step's header."""
        self._line(self._cur, line, True)

    def _close(self, key: tuple[Any, ...]) -> None:
        """A block has all its tasks: its closing lines now if it has the floor, else in its turn."""
        b = self._blocks[key]
        b.complete = True
        dropped = b.announced - b.seen  # targets out of the play: never run
        if dropped > 0:
            self._advance(dropped)
            b.seen = b.announced
        if self._cur == key:
            self._cur = None
            self._step = None
        while self._blocks:  # the first block done gives the floor to the next, which says what it held
            first = next(iter(self._blocks))
            fb = self._blocks[first]
            for line, loud in fb.held:
                self._header(first)
                self._write(line) if loud else self._say(line)
            fb.held.clear()
            if not fb.complete:
                break
            self._conclude(first)

    def _conclude(self, key: tuple[Any, ...]) -> None:
        """A block done and with the floor: its grouped failures, then its counts and warnings, once."""
        b = self._blocks[key]
        show_counts = self.verbosity == 0 and any(b.counts.values())
        if show_counts and not b.headed and not b.blocked and not b.ignored and not b.warnings \
                and set(k for k, v in b.counts.items() if v) == {"done earlier"}:
            self._earlier.append((b.event["step"], b.event.get("wave"), b.counts["done earlier"]))
            show_counts = False
        elif show_counts and not b.headed and not b.blocked and not b.ignored and not b.not_yet \
                and not (b.warnings and self.verbosity == 0):
            # nothing but its counts: one line, `STEP [name] changed=8 ****` (a screen or two a night)
            if self._earlier:
                self._flush_earlier()
            self._say("")
            self._say(header("STEP", _block_name(b), "  ".join(f"{k}={v}" for k, v in b.counts.items() if v)))
            show_counts = False
        elif b.blocked or b.ignored or b.not_yet or show_counts or (b.warnings and self.verbosity == 0) \
                or any(len(t) > 1 for t in b.alike.values()):
            self._header(key)  # printed by _say: with -q, the failures come without it
        for reason, targets in b.blocked.items():
            targets = sorted(targets, key=natural_key)
            names = ", ".join(targets[:GROUPED_NAMES]) + (f" +{len(targets) - GROUPED_NAMES} more"
                                                           if len(targets) > GROUPED_NAMES else "")
            self._write(f"failed: [{names}] {reason}" + (f" ({len(targets)} targets)" if len(targets) > 1 else ""))
        for kind, failures in b.ignored.items():
            if len(failures) == 1:
                self._write(f"failed (ignored): [{failures[0][0]}] {failures[0][1]}")
                continue
            failures = sorted(failures, key=lambda f: natural_key(f[0]))
            targets = [t for t, _ in failures]
            names = ", ".join(targets[:GROUPED_NAMES]) + (f" +{len(targets) - GROUPED_NAMES} more"
                                                           if len(targets) > GROUPED_NAMES else "")
            self._write(f"failed (ignored): [{names}] {kind} ({len(targets)} targets; -v shows each)")
            self._write(f"  e.g. [{failures[0][0]}] {failures[0][1]}")
        for (status, message), targets in b.alike.items():
            if len(targets) > 1:  # every target named: each is a failure of its own
                rest = sorted(targets[1:], key=natural_key)
                self._write(f"{status}: [{', '.join(rest)}] {message} ({len(rest)} more "
                            f"target{'s' if len(rest) > 1 else ''} alike [{targets[0]}] above; -v shows each)")
        for reason, found in b.not_yet.items():
            for line in _not_yet_lines(reason, found, b.waiting.get(reason, set()), self.verbosity == 0):
                self._say(line)
        if show_counts:
            self._say("  " + "  ".join(f"{k}={v}" for k, v in b.counts.items() if v))
        if b.warnings and self.verbosity == 0:
            self._say(f"  warnings: {kinds_line(dict(b.warnings))}")
        del self._blocks[key]

    def _end_step(self) -> None:
        """Close every open block (a wave, play or run ended)."""
        for key in list(self._blocks):
            if key in self._blocks:
                self._close(key)
        self._cur = self._step = None
        self.stream.flush()

    # -- events -----------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        kind, d = event.kind, event.data
        if kind == TASK_END:
            self._task(d["outcome"], lazy=bool(d.get("burst")))
        elif kind == STEP_START:
            key = (d.get("play"), d["step"], d.get("wave"))
            self._step, self._cur = d, key
            if key not in self._blocks:
                # its header waits for its first line (a failure, or its counts when done)
                self._blocks[key] = _StepBlock(event=d, announced=int(d.get("tasks") or 0))
            self._advance(0)
        elif kind == PLAY_START:
            self._end_step()
            self._say("")
            self._say(header("PLAY", d["name"]))
        elif kind == WAVE_END:
            self._end_step()
            self._wave_end(d)
        elif kind == RUN_START:
            self._check = bool(d.get("check"))
            self._total = int(d.get("tasks") or 0)
            self._started = self._last_line = self.clock()
            if self._check:  # a check has no run id of its own: it records nothing
                self._say(f"CHECK MODE (nothing will be changed): {d['tasks']} tasks")
            else:
                how = "resuming run" if d.get("resumed") else "run"
                self._say(f"{how} {d['run_id']}: {d['tasks']} tasks")
            if self.tty and self.verbosity == 0 and self._total:
                self._start_progress()
        elif kind == RUN_END:
            self._end_step()
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            self._recap(d["summary"])
        if kind != TASK_END:
            if self._stale and self._progress is not None:
                self._advance(0)
            self.stream.flush()

    def _wave_end(self, d: dict[str, Any]) -> None:
        wave = d.get("wave")  # None: a play without waves, whose only "wave" is the play itself
        gate = d.get("gate")
        if d.get("stopped"):
            self._write(f"WAVE [{wave}] stopped the play: {d['reason']}" if wave is not None
                        else f"the play stopped: {d['reason']}")
        elif gate:
            self._say(f"WAVE [{wave}] gate: {gate}: the play goes on" if wave is not None
                      else f"the play's gate: {gate}: it goes on")

    def _task(self, o: TaskOutcome, *, lazy: bool = False) -> None:
        block = self._blocks.get(self._cur) if self._cur is not None else None
        if block is not None:
            block.seen += 1
        self._kinds.setdefault(o.target, o.kind)
        c = self._counts.get((o.kind, o.target))
        if c is None:  # (not setdefault: it would build the counters for every outcome)
            c = self._counts[(o.kind, o.target)] = dict.fromkeys(COUNTERS, 0)
        c["ignored" if o.ignored else o.status] += 1
        if o.retried:
            c["retried"] += 1
        if not o.resumed:
            self._ran += 1
            self._run_counts["failed" if o.ignored else o.status] += 1
        if block is not None:
            bucket = "done earlier" if o.resumed else "failed" if o.ignored else o.status
            block.counts[bucket] = block.counts.get(bucket, 0) + 1
        self._advance(lazy=lazy)
        status = o.status
        if status == "not_yet" and block is not None:
            why = o.data.get("not_yet") if isinstance(o.data, dict) else None
            why = why if isinstance(why, dict) else {}
            reason = str(why.get("reason") or "not due yet")
            block.waiting.setdefault(reason, set()).update(str(w) for w in why.get("waiting") or ())
            block.not_yet.setdefault(reason, []).append((o.target, o.kind, o.message))  # -v: each below too
        loud = status in ("failed", "unreachable")
        blocked = _blocked_reason(o) if loud and self.verbosity == 0 else None
        if blocked is not None and block is not None:
            block.blocked.setdefault(blocked, []).append(o.target)
        elif loud and o.ignored and self.verbosity == 0 and block is not None:
            # ignore_errors: the playbook expects these (a machine whose users have not all
            # moved yet keeps Exchange IM), so alike ones are one line at the step's end
            block.ignored.setdefault(failure_kind(o.message, o.target), []).append((o.target, one_line(o.message)))
        elif loud and self.verbosity == 0 and block is not None and self._alike(block, o):
            pass  # alike an earlier failure of this step: named in one line when the step is done
        elif loud or self.verbosity >= 1:
            label = "failed (ignored)" if o.ignored else "not yet" if status == "not_yet" else status
            text = f"{label}: [{o.target}]"
            message = "(done in an earlier run)" if o.resumed else one_line(o.message)
            if message:
                text += f" {message}"
            if o.attempts > 1:
                text += f" (attempts: {o.attempts})"
            self._loud(text)
            if o.traceback and self.verbosity >= 3:
                for line in o.traceback.rstrip().splitlines():
                    self._loud("    " + line)
        if self.diff and o.diff is not None and status == "changed":
            if self.verbosity == 0:
                self._line(self._cur, f"changed: [{o.target}] {o.diff.summary}", False)
            for line in o.diff.lines:
                self._line(self._cur, "    " + line, False)
        if o.warnings:
            for wkind, n, text in self.warnings.add(o.step, o.target, o.warnings):
                if block is not None:
                    block.warnings[wkind] += n
                if self.verbosity >= 1:
                    self._loud(f"warning: [{o.target}] {text}")
        if block is not None and block.seen >= block.announced > 0:
            self._close(self._cur)

    @staticmethod
    def _alike(block: _StepBlock, o: TaskOutcome) -> bool:
        """Count a real failure by its cause; whether one alike was already printed at this step."""
        same = block.alike.setdefault((o.status, failure_kind(o.message, o.target, whole=True)), [])
        same.append(o.target)
        return len(same) > 1

    def _recap(self, summary: RunSummary) -> None:
        self._say("")
        self._say(header("RECAP", "check mode" if self._check else summary.run_id))
        counts = self._counts
        groups = {"hosts": sorted((n for k, n in counts if k == "host"), key=natural_key),
                  "users": sorted((n for k, n in counts if k == "user"), key=natural_key)}
        width = max([len(n) for names in groups.values() for n in names] + [12])
        all_lines = self.verbosity >= 1 or len(counts) <= RECAP_ALL_TARGETS
        for label, kind in (("hosts", "host"), ("users", "user")):
            names = groups[label]
            if not names:
                continue
            totals = Counter()
            for n in names:
                totals.update(counts[(kind, n)])
            bad = [n for n in names if any(counts[(kind, n)][k] for k in _PROBLEMS)]
            self._write(f"{label + ' ' + str(len(names)):<{width}} : {_counters(totals)}")
            if self.quiet:
                continue
            if all_lines:
                for name in names:
                    self._write(f"  {name:<{width - 2}} : {_counters(counts[(kind, name)])}")
                continue
            for problem in _PROBLEMS:  # names only: each failure was printed as it happened
                which = [n for n in bad if counts[(kind, n)][problem]]
                if which:
                    for line in textwrap.wrap(", ".join(which), WIDTH - 4,
                                              initial_indent=f"  {problem} ({len(which)}): ",
                                              subsequent_indent="    ", break_on_hyphens=False,
                                              break_long_words=False):
                        self._write(line)
            later = [n for n in names if counts[(kind, n)].get("not_yet")]
            if later:
                shown = ", ".join(later[:RECAP_NOT_YET_NAMES]) + (
                    f" +{len(later) - RECAP_NOT_YET_NAMES} more" if len(later) > RECAP_NOT_YET_NAMES else "")
                for line in textwrap.wrap(f"{shown} (by design; a later run does them)", WIDTH - 4,
                                          initial_indent=f"  not yet ({len(later)}): ", subsequent_indent="    ",
                                          break_on_hyphens=False, break_long_words=False):
                    self._write(line)
            if len(bad) < len(names):
                self._write(f"  ({len(names) - len(bad)} without problems; -v lists each)")
        self._write(f"{'TOTAL':<{width}} : " + _counters(summary.totals))
        self._recap_warnings()
        if summary.stopped_reason:
            self._write(f"stopped: {summary.stopped_reason}")
        if summary.status == "interrupted":
            self._write("interrupted: tasks in flight finished and were recorded.")
        if summary.status != "ok" and self.resume_command and not self._check:
            self._write(f"to resume: {self.resume_command}")
        retry = getattr(summary, "retry_file", None)
        if retry:
            self._write(f"failed and unreachable targets: {retry} (--limit @{retry} runs them alone)")
        self.stream.flush()

    def _recap_warnings(self) -> None:
        tally = self.warnings
        if not tally.total:
            return
        self._write(f"warnings: {tally.total} on {len(tally.targets)} target(s); `runner report` lists them")
        if self.quiet:
            return
        for step, kinds in tally.by_step.items():
            self._write(f"  {step}: " + ", ".join(f"{k} x{t.count} ({len(t.targets)} target(s))"
                                                  for k, t in sorted(kinds.items(), key=lambda kv: -kv[1].count)))
            if self.verbosity >= 1:
                continue  # every one was printed as it came
            ordered = sorted(kinds.values(), key=lambda t: -t.count)
            examples: list[tuple[str, str]] = []
            for rank in range(WARNINGS_PER_TASK):  # the first of each kind, then the second...
                examples += [t.examples[rank] for t in ordered if rank < len(t.examples)]
            examples = examples[:WARNINGS_PER_TASK]
            for target, text in examples:
                self._write(f"warning: [{target}] {text}")
            more = sum(t.count for t in ordered) - len(examples)
            if more > 0:
                self._write(f"warning: ... and {more} more (-v shows all; `runner report` lists them)")


class JsonOutput:
    """JSON-lines events on ``stream``: run_start, play_start, step_start, task, wave_end, run_end."""

    def __init__(self, stream: TextIO | None = None, *, resume_command: str | None = None) -> None:
        self.stream = stream or sys.stdout
        self.resume_command = resume_command

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.kind == TASK_END:
            obj = {"event": "task", **d["outcome"].to_json()}
        elif event.kind == RUN_END:
            obj = {"event": "run_end", **d["summary"].to_json()}
            if d["summary"].status != "ok" and self.resume_command:
                obj["resume_command"] = self.resume_command
        else:
            obj = {"event": event.kind, **d}
        self.stream.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
        self.stream.flush()
