"""What the user sees: Ansible-like lines and a recap, or JSON-lines events (--json).

Both are engine subscribers. ``HumanOutput`` prints a header per play and
step, per-task lines at ``-v`` (failures, unreachable hosts and warnings
always), a progress bar on a terminal for long steps (a one-line step
summary otherwise), diffs with ``--diff``, and the final RECAP with the
command to resume. ``JsonOutput`` writes one JSON object per line and
nothing else. Lines nobody will see are never formatted.
"""
from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from runner.engine import COUNTERS, RunSummary
from runner.plan import natural_key
from runner.events import (PLAY_START, RUN_END, RUN_START, STEP_START, TASK_END, WAVE_END, Event,
                           TaskOutcome)

#: A step with at least this many tasks gets a progress bar on a terminal.
PROGRESS_MIN_TASKS = 10
#: Beyond this many targets, the recap lists only the targets with problems (unless -v).
RECAP_MAX_LINES = 200
#: Warnings shown per task without -v (an import can have hundreds: `runner report` has them all).
WARNINGS_PER_TASK = 3
WIDTH = 78


def header(kind: str, name: str) -> str:
    """``PLAY [name] ****...`` padded to the line width, as Ansible does."""
    text = f"{kind} [{name}] "
    return text + "*" * max(3, WIDTH - len(text))


class HumanOutput:
    """Human-readable output on ``stream`` (stdout by default)."""

    def __init__(self, *, verbosity: int = 0, diff: bool = False, stream: TextIO | None = None,
                 tty: bool | None = None, resume_command: str | None = None) -> None:
        self.verbosity = verbosity
        self.diff = diff
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.resume_command = resume_command
        self._progress: Any = None
        self._progress_task: Any = None
        self._step_counts: dict[str, int] | None = None
        self._check = False
        self._warnings = 0
        self._warned_targets: set[str] = set()

    # -- plumbing ---------------------------------------------------------------

    def _write(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(line + "\n")

    def _start_progress(self, total: int, label: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=self.stream, force_terminal=True)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True)
        self._progress.start()
        self._progress_task = self._progress.add_task(label, total=total)

    def _end_step(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._step_counts is not None:
            counts = self._step_counts
            self._step_counts = None
            if self.verbosity == 0 and any(counts.values()):
                self._write("  " + "  ".join(f"{k}={v}" for k, v in counts.items() if v))
        self.stream.flush()

    # -- events -----------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        kind, d = event.kind, event.data
        if kind == TASK_END:
            self._task(d["outcome"])
        elif kind == STEP_START:
            self._end_step()
            wave = f" (wave {d['wave']})" if d.get("wave") is not None else ""
            self._write("")
            self._write(header("STEP", d["step"] + wave))
            self._step_counts = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "unreachable": 0}
            if self.tty and self.verbosity == 0 and d["tasks"] >= PROGRESS_MIN_TASKS:
                self._start_progress(d["tasks"], d["step"])
        elif kind == PLAY_START:
            self._end_step()
            self._write("")
            self._write(header("PLAY", d["name"]))
        elif kind == WAVE_END:
            self._end_step()
            if d.get("stopped"):
                self._write(f"WAVE [{d['wave'] or 'all'}] stopped the play: {d['reason']}")
        elif kind == RUN_START:
            self._check = bool(d.get("check"))
            if self._check:  # a check has no run id of its own: it records nothing
                self._write(f"CHECK MODE (nothing will be changed): {d['tasks']} tasks")
            else:
                how = "resuming run" if d.get("resumed") else "run"
                self._write(f"{how} {d['run_id']}: {d['tasks']} tasks")
        elif kind == RUN_END:
            self._end_step()
            self._recap(d["summary"])
        if kind != TASK_END:
            self.stream.flush()

    def _task(self, o: TaskOutcome) -> None:
        if self._step_counts is not None:
            bucket = "done earlier" if o.resumed else "failed" if o.ignored else o.status
            self._step_counts[bucket] = self._step_counts.get(bucket, 0) + 1
        if self._progress is not None:
            self._progress.advance(self._progress_task)
        status = o.status
        loud = status in ("failed", "unreachable")
        if loud or self.verbosity >= 1:
            label = "failed (ignored)" if o.ignored else status
            text = f"{label}: [{o.target}]"
            message = "(done in an earlier run)" if o.resumed else o.message
            if message:
                text += f" {message}"
            if o.attempts > 1:
                text += f" (attempts: {o.attempts})"
            self._write(text)
            if o.traceback and self.verbosity >= 3:
                for line in o.traceback.rstrip().splitlines():
                    self._write("    " + line)
        if self.diff and o.diff is not None and status == "changed":
            if self.verbosity == 0:
                self._write(f"changed: [{o.target}] {o.diff.summary}")
            for line in o.diff.lines:
                self._write("    " + line)
        if o.warnings:
            self._warnings += len(o.warnings)
            self._warned_targets.add(o.target)
            shown = o.warnings if self.verbosity >= 1 else o.warnings[:WARNINGS_PER_TASK]
            for w in shown:
                self._write(f"warning: [{o.target}] {w}")
            if len(shown) < len(o.warnings):
                self._write(f"warning: [{o.target}] ... and {len(o.warnings) - len(shown)} more"
                            " (-v shows all; `runner report` lists them)")

    def _recap(self, summary: RunSummary) -> None:
        self._write("")
        self._write(header("RECAP", "check mode" if self._check else summary.run_id))
        counts = summary.counts
        names = sorted(counts, key=natural_key)
        if len(names) > RECAP_MAX_LINES and self.verbosity == 0:
            shown = [n for n in names if counts[n]["failed"] or counts[n]["unreachable"] or counts[n]["ignored"]]
        else:
            shown = names
        width = max([len(n) for n in shown] + [5])
        for name in shown:
            self._write(f"{name:<{width}} : " + "  ".join(f"{k}={counts[name][k]}" for k in COUNTERS))
        if len(shown) < len(names):
            self._write(f"({len(names) - len(shown)} more targets without failures; -v lists them)")
        self._write(f"{'TOTAL':<{width}} : " + "  ".join(f"{k}={summary.totals.get(k, 0)}" for k in COUNTERS))
        if self._warnings:
            self._write(f"warnings: {self._warnings} on {len(self._warned_targets)} target(s);"
                        " `runner report` lists them")
        if summary.stopped_reason:
            self._write(f"stopped: {summary.stopped_reason}")
        if summary.status == "interrupted":
            self._write("interrupted: tasks in flight finished and were recorded.")
        if summary.status != "ok" and self.resume_command and not self._check:
            self._write(f"to resume: {self.resume_command}")
        self.stream.flush()


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
