"""Human output and JSON-lines events."""
from __future__ import annotations

import io
import json
import re

from runner.engine import RunSummary
from runner.events import PLAY_START, RUN_END, RUN_START, STEP_START, TASK_END, Event, TaskOutcome
from runner.output import HumanOutput, JsonOutput
from runner.steps.base import Diff


def outcome(target: str, status: str, **kw) -> TaskOutcome:
    return TaskOutcome(key=f"0/s/host:{target}", play_index=0, step="s", module="m", kind="host",
                       target=target, status=status, attempts=kw.pop("attempts", 1), **kw)


def feed(sink, outcomes, summary=None) -> None:
    sink(Event(RUN_START, {"run_id": "r1", "resumed": False, "check": False, "tasks": len(outcomes)}))
    sink(Event(PLAY_START, {"play": 0, "name": "Migrate"}))
    sink(Event(STEP_START, {"play": 0, "step": "Export", "module": "m", "wave": "wave1",
                            "tasks": len(outcomes)}))
    for o in outcomes:
        sink(Event(TASK_END, {"outcome": o}))
    summary = summary or RunSummary(run_id="r1", status="failed", exit_code=2,
                                    counts={"pc2": {"ok": 0, "changed": 0, "failed": 1, "skipped": 0,
                                                    "unreachable": 0, "retried": 0, "ignored": 0}},
                                    totals={"failed": 1})
    sink(Event(RUN_END, {"run_id": "r1", "status": summary.status, "exit_code": summary.exit_code,
                         "summary": summary}))


def test_default_output_shows_headers_failures_and_recap_but_not_ok_lines():
    buf = io.StringIO()
    feed(HumanOutput(stream=buf, tty=False, resume_command="runner apply pb.yml"),
         [outcome("pc1", "changed"), outcome("pc2", "failed", message="access denied")])
    text = buf.getvalue()
    assert "PLAY [Migrate] ***" in text and "STEP [Export (wave wave1)] ***" in text
    assert "failed: [pc2] access denied" in text and "changed: [pc1]" not in text
    assert "changed=1  failed=1" in text                  # the step summary line
    assert "RECAP" in text and re.search(r"^  pc2 +: ok=0  changed=0  failed=1", text, re.M)
    assert "to resume: runner apply pb.yml" in text


def test_verbose_output_shows_every_task_attempts_and_resumed_ones():
    buf = io.StringIO()
    feed(HumanOutput(stream=buf, tty=False, verbosity=1),
         [outcome("pc1", "changed", attempts=3), outcome("pc3", "skipped", resumed=True)])
    text = buf.getvalue()
    assert "changed: [pc1] (attempts: 3)" in text
    assert "skipped: [pc3] (done in an earlier run)" in text


def test_diff_lines_are_printed_with_diff():
    buf = io.StringIO()
    feed(HumanOutput(stream=buf, tty=False, diff=True),
         [outcome("pc1", "changed", diff=Diff("2 contacts", lines=["+ bob@im.contoso.com"]))])
    assert "changed: [pc1] 2 contacts\n    + bob@im.contoso.com" in buf.getvalue()


def test_tracebacks_only_at_vvv_and_warnings_always():
    o = outcome("pc1", "failed", message="KeyError: 'x'", traceback="Traceback (most recent call last):\n  boom",
                warnings=["contact zed@x cannot be mapped"])
    quiet, loud = io.StringIO(), io.StringIO()
    feed(HumanOutput(stream=quiet, tty=False), [o])
    feed(HumanOutput(stream=loud, tty=False, verbosity=3), [o])
    assert "Traceback" not in quiet.getvalue() and "Traceback" in loud.getvalue()
    assert "warning: [pc1] contact zed@x cannot be mapped" in quiet.getvalue()


def test_progress_bar_on_a_terminal_for_long_steps():
    buf = io.StringIO()
    feed(HumanOutput(stream=buf, tty=True), [outcome(f"pc{i}", "ok") for i in range(12)])
    assert "RECAP" in buf.getvalue()


def test_json_output_is_one_object_per_line():
    buf = io.StringIO()
    feed(JsonOutput(buf, resume_command="runner apply pb.yml"),
         [outcome("pc1", "changed", diff=Diff("x", lines=["+ a"]))])
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["run_start", "play_start", "step_start", "task", "run_end"]
    assert events[3]["diff"] == {"summary": "x", "lines": ["+ a"]}
    assert events[-1]["exit_code"] == 2 and events[-1]["resume_command"] == "runner apply pb.yml"
