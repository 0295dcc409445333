"""What the engine tells its subscribers (the state store, the output) while it runs.

The engine never prints and never writes the store itself: it emits
``Event``s, and each subscriber takes what it needs. A task's outcome is a
``TaskOutcome`` inside a ``task_end`` event.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from runner.steps.base import Diff

#: Event kinds, in the order a run emits them.
RUN_START = "run_start"
PLAY_START = "play_start"
STEP_START = "step_start"
TASK_END = "task_end"
WAVE_END = "wave_end"
RUN_END = "run_end"

#: Statuses that count as "done" for a checkpoint: not run again on resume. Not ``not_yet``
#: (a target not due yet, by design: runner.steps.base.NotYet), which a later run does.
DONE_STATUSES = frozenset({"ok", "changed", "skipped"})

#: The modules of a rollback (playbooks/rollback.yml, docs/rollback.md): the only steps whose
#: results carry ``rollback: true``, which reopens what the user had done before.
ROLLBACK_MODULES = ("restore_exchange_im", "disable_lcs_users")


def one_line(message: str) -> str:
    """``message`` on one line: the lines of a command's output (``ERROR: ...`` three times)
    joined with `` / ``, so a failure stays one line of the live output and of ``runner status``."""
    return " / ".join(part.strip() for part in message.splitlines() if part.strip())


def failure_kind(message: str, target: str, *, whole: bool = False) -> str:
    """What ``target``'s failure is, in the same words for every target it happens to: the
    message up to its first ``": "`` (all of it with ``whole``), the target's own name put as
    ``<target>`` (``refusing to switch Exchange IM off on <target>``, ``msiexec 1603``). Lines
    of the live output and of ``runner status`` group the targets that failed alike at one step."""
    text = one_line(message)
    if target:
        text = re.sub(rf"(?<![\w.@-]){re.escape(target)}(?![\w@-]|\.\w)", "<target>", text)
    return text if whole else text.split(": ", 1)[0]


@dataclass
class TaskOutcome:
    """One finished task: what happened, how many attempts, how long, and why.

    ``resumed`` marks a task skipped because an earlier run finished it (not
    written to the store again). ``ignored`` marks a failure under
    ``ignore_errors``. ``traceback`` is only set for unexpected exceptions.
    """

    key: str
    play_index: int
    step: str
    module: str
    kind: str
    target: str
    status: str
    wave: str | None = None
    attempts: int = 0
    started: float = 0.0
    ended: float = 0.0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    diff: Diff | None = None
    fingerprint: str = ""
    resumed: bool = False
    ignored: bool = False
    traceback: str | None = None

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    @property
    def retried(self) -> bool:
        return self.attempts > 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable view (used by --json and the state store)."""
        out: dict[str, Any] = {
            "key": self.key, "play": self.play_index, "step": self.step, "module": self.module,
            "kind": self.kind, "target": self.target, "wave": self.wave, "status": self.status,
            "attempts": self.attempts, "duration": round(self.duration, 6), "message": self.message,
        }
        if self.resumed:
            out["resumed"] = True
        if self.ignored:
            out["ignored"] = True
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.data:
            out["data"] = self.data
        if self.diff is not None:
            out["diff"] = {"summary": self.diff.summary, "lines": list(self.diff.lines)}
        return out


@dataclass
class Event:
    """One thing that happened during a run. ``data`` depends on ``kind``:

    - run_start: run_id, resumed, check, playbook, inventory, tasks (count)
    - play_start: play (index), name
    - step_start: play, step, module, wave, tasks (count)
    - task_end: outcome (a TaskOutcome)
    - wave_end: play, wave, targets, failed, stopped (bool), reason; gate (the verdict of
      max_fail_percentage, judged over ``unit``: users or hosts as the play's serial, else
      targets), units, failed_units
    - run_end: run_id, status ("ok", "failed", "unreachable", "interrupted", "stopped"), exit_code
    """

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Event], None]
