"""Flowing steps in the live output: a wave's steps interleave their outcomes (a slow client
delays only its own users), yet each step's lines come together under one header, printed
only when something goes under it, in the order the steps began (a 400-client --check --diff
printed the Export and Upgrade headers alternately 5 and 6 times)."""
from __future__ import annotations

import io

from runner.engine import RunSummary
from runner.events import PLAY_START, RUN_END, RUN_START, STEP_START, TASK_END, WAVE_END, Event, TaskOutcome
from runner.output import HumanOutput
from runner.steps.base import Diff


def _outcome(step: str, target: str, status: str, **kw) -> TaskOutcome:
    return TaskOutcome(key=f"1/{step}/user:{target}", play_index=1, step=step, module="m", kind="user",
                       target=target, status=status, wave="wave1", attempts=kw.pop("attempts", 1), **kw)


def _run(sink, items, tasks) -> None:
    """``items``: (step, outcome) as the engine emits them, a STEP_START whenever the step changes."""
    sink(Event(RUN_START, {"run_id": "r1", "resumed": False, "check": False, "tasks": sum(tasks.values())}))
    sink(Event(PLAY_START, {"play": 1, "name": "Move users"}))
    shown = None
    for step, o in items:
        if step != shown:
            shown = step
            sink(Event(STEP_START, {"play": 1, "step": step, "module": "m", "wave": "wave1", "tasks": tasks[step]}))
        sink(Event(TASK_END, {"outcome": o}))
    sink(Event(WAVE_END, {"play": 1, "wave": "wave1"}))
    summary = RunSummary(run_id="r1", status="failed", exit_code=2, counts={}, totals={"failed": 1})
    sink(Event(RUN_END, {"run_id": "r1", "status": "failed", "exit_code": 2, "summary": summary}))


def _interleaved(diff: bool):
    d = (lambda t: Diff(f"export {t}", [f"{t}: 3 contact(s)"])) if diff else (lambda t: None)
    items = []
    for i in range(6):  # export of u{i}, then the upgrade of its machine, then the next export...
        items.append(("Export", _outcome("Export", f"u{i}", "changed", diff=d(f"u{i}"))))
        items.append(("Upgrade", _outcome("Upgrade", f"u{i}", "failed" if i % 2 else "changed",
                                          message="msiexec 1603", diff=d(f"pc{i}"))))
    for i in range(6):
        items.append(("Enable", _outcome("Enable", f"u{i}", "changed")))
        items.append(("Import", _outcome("Import", f"u{i}", "failed", message="LCS server busy")))
    return items, {"Export": 6, "Upgrade": 6, "Enable": 6, "Import": 6}


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("STEP ["):
            out.append((line.split("[", 1)[1].split("]", 1)[0], []))
        elif line.startswith(("RECAP", "WAVE")):
            break
        elif out and line.strip():
            out[-1][1].append(line)
    return out


def test_interleaved_steps_each_print_one_header_with_their_own_lines_under_it():
    for diff in (False, True):
        buf = io.StringIO()
        items, tasks = _interleaved(diff)
        _run(HumanOutput(stream=buf, tty=False, diff=diff), items, tasks)
        blocks = _blocks(buf.getvalue())
        names = [n for n, _ in blocks]
        assert names == ["Export (wave wave1)", "Upgrade (wave wave1)", "Enable (wave wave1)",
                         "Import (wave wave1)"], buf.getvalue()
        for name, lines in blocks:
            step = name.split(" (")[0]
            for line in lines:  # an outcome line names a target of its own step only
                if line.startswith(("failed:", "changed:")):
                    for target in line.split("[")[1].split("]")[0].split(", "):
                        assert (step, target) in {
                            (s, o.target) for s, o in items if o.status in ("failed", "changed")}, (name, line)
        text = buf.getvalue()
        assert text.count("failed: [u1] msiexec 1603") == 1 and text.count("] LCS server busy") >= 1
        imports = dict(blocks)["Import (wave wave1)"]
        assert any("u5" in line for line in imports), imports  # every failure, under its header
        named = {t for line in imports if line.startswith("failed:")
                 for t in line.split("[")[1].split("]")[0].split(", ")}
        assert named == {f"u{i}" for i in range(6)}, imports


def test_a_header_is_printed_only_with_something_under_it():
    buf = io.StringIO()
    items, tasks = _interleaved(True)
    _run(HumanOutput(stream=buf, tty=False, diff=True), items, tasks)
    lines = buf.getvalue().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("STEP [") and "=" not in line.split("]", 1)[1]:  # not a one-line count header
            assert i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith("STEP"), lines[i:i + 2]


def test_the_front_steps_failures_are_printed_as_they_come():
    buf = io.StringIO()
    out = HumanOutput(stream=buf, tty=False)
    out(Event(RUN_START, {"run_id": "r1", "resumed": False, "check": False, "tasks": 4}))
    out(Event(PLAY_START, {"play": 1, "name": "Move users"}))
    out(Event(STEP_START, {"play": 1, "step": "Export", "module": "m", "wave": "wave1", "tasks": 2}))
    out(Event(TASK_END, {"outcome": _outcome("Export", "u1", "failed", message="hive in use")}))
    assert "failed: [u1] hive in use" in buf.getvalue()  # live: not held until the step ends


def _busy_night(verbosity: int) -> str:
    buf = io.StringIO()
    items = [("Import", _outcome("Import", f"u{i}", "failed", attempts=4,
                                 message="read MaxContactsPerUser: wmic error 0x80041045 Server is busy"))
             for i in range(1, 39)]
    items.insert(5, ("Import", _outcome("Import", "x1", "failed", message="read MaxContactsPerUser: access denied")))
    items.append(("Import", _outcome("Import", "u99", "changed")))
    _run(HumanOutput(stream=buf, tty=False, verbosity=verbosity), items, {"Import": len(items)})
    return buf.getvalue()


def test_failures_alike_are_one_line_naming_every_target_and_v_prints_each():
    text = _busy_night(0)
    busy = [ln for ln in text.splitlines() if ln.startswith("failed:") and "Server is busy" in ln]
    assert len(busy) == 2, text  # the first as it came, then the 37 others alike in one line
    assert busy[0].startswith("failed: [u1] read MaxContactsPerUser: wmic error")
    named = busy[1].split("[", 1)[1].split("]", 1)[0].split(", ")
    assert named == [f"u{i}" for i in range(2, 39)] and "37 more targets" in busy[1], busy[1]
    assert "failed: [x1] read MaxContactsPerUser: access denied" in text  # another cause: its own line
    verbose = _busy_night(1)
    assert sum(1 for ln in verbose.splitlines() if ln.startswith("failed:") and "Server is busy" in ln) == 38
