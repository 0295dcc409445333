"""The `runner` command line: exit codes, JSON events, status, lock, Ctrl-C and SIGKILL resume."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

import engine_support  # noqa: F401  (registers the t_* test steps)
from runner.cli import run
from runner.state import StateStore

LAUNCHER = str(Path(__file__).with_name("cli_launcher.py"))

INVENTORY = """\
all:
  vars:
    workdir: {workdir}
  children:
    clients:
      hosts:
{hosts}
users:
  alice: {{im_address: alice@im.contoso.com, clients: [pc01]}}
"""

PLAYBOOK_OK = """\
- name: Test play
  hosts: clients
  steps:
    - name: Write
      t_write_file: {content: v1}
    - name: Per user
      t_user_write_file: {dir: users}
"""


def project(tmp_path: Path, playbook: str = PLAYBOOK_OK, hosts: int = 3) -> Path:
    (tmp_path / "work").mkdir(exist_ok=True)
    host_lines = "\n".join(f"        pc{i:02}: {{}}" for i in range(1, hosts + 1))
    (tmp_path / "inv.yml").write_text(INVENTORY.format(workdir=tmp_path / "work", hosts=host_lines))
    (tmp_path / "pb.yml").write_text(playbook)
    return tmp_path


def cli(tmp_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process with the working directory ``tmp_path``."""
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = run(list(args))
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    return code, out, err


def spawn(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, LAUNCHER, *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _read_stderr_until(proc: subprocess.Popen, text: str, timeout: float = 30.0) -> str:
    """Read ``proc``'s stderr line by line until a line holds ``text``; return what was read."""
    import select

    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"never saw {text!r}; stderr so far: {seen!r}"
        ready, _, _ = select.select([proc.stderr], [], [], min(left, 0.5))
        if ready:  # os.read, not readline: the text wrapper would buffer lines select cannot see
            seen += os.read(proc.stderr.fileno(), 4096).decode("utf-8", "replace")
    return seen


def journal(tmp_path: Path) -> list[str]:
    p = tmp_path / "work" / "journal.log"
    return p.read_text().splitlines() if p.exists() else []


def test_help_exits_0(tmp_path, capsys):
    code, out, _ = cli(tmp_path, capsys, "--help")
    assert code == 0 and "apply" in out and "status" in out and "validate" in out


def test_apply_exits_0_and_second_apply_changes_nothing(tmp_path, capsys):
    project(tmp_path)
    code, out, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml", "-v")
    assert code == 0 and "changed: [pc01]" in out and "RECAP" in out
    code, out, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml", "--json")
    tasks = [json.loads(l) for l in out.splitlines() if json.loads(l)["event"] == "task"]
    assert code == 0 and len(tasks) == 4 and all(t["resumed"] for t in tasks)
    code, out, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml", "--fresh", "--json")
    end = json.loads(out.splitlines()[-1])
    assert code == 0 and end["totals"]["changed"] == 0 and end["totals"]["ok"] == 4
    assert len(journal(tmp_path)) == 4


def test_json_writes_only_events_on_stdout(tmp_path, capsys):
    project(tmp_path)
    code, out, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("task") == 4
    task = next(e for e in events if e["event"] == "task" and e["target"] == "pc02")
    assert task["status"] == "changed" and task["step"] == "Write" and task["attempts"] == 1


def test_check_diff_shows_diff_lines_and_changes_nothing(tmp_path, capsys):
    project(tmp_path)
    code, out, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml", "--check", "--diff")
    assert code == 0 and "+ v1" in out and "CHECK MODE" in out
    assert journal(tmp_path) == [] and not (tmp_path / "work" / "files").exists()


def test_failed_task_exits_2_and_status_says_what_is_left(tmp_path, capsys):
    project(tmp_path, """\
- name: Failing play
  hosts: clients
  steps:
    - name: Break pc02
      t_flaky: {fail_times: 1, fault: permanent}
      when: "inventory_hostname == 'pc02'"
    - name: Write
      t_write_file: {}
""")
    code, out, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml")
    assert code == 2 and "failed: [pc02] access denied" in out
    assert "to resume: runner apply pb.yml -i inv.yml" in out
    code, out, _ = cli(tmp_path, capsys, "status", "--json")
    status = json.loads(out)
    latest = status["runs"][0]
    assert code == 0 and latest["status"] == "failed" and latest["left"] == 2
    write = next(s for s in latest["steps"] if s["step"] == "Write")
    assert write["counts"] == {"changed": 2, "pending": 1} and write["left"] == 1
    assert latest["resume_command"] == "runner apply pb.yml -i inv.yml"
    code, out, _ = cli(tmp_path, capsys, "status")
    assert "Write: changed=2  pending=1  -> 1 left" in out and "to resume:" in out


def test_unreachable_host_exits_3(tmp_path, capsys):
    project(tmp_path, """\
- name: Unreachable
  hosts: clients
  max_fail_percentage: 50
  steps:
    - name: Connect
      t_flaky: {fail_times: 99, fault: connection}
      when: "inventory_hostname == 'pc03'"
      retries: 1
      delay: 0.001
""")
    code, out, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml")
    assert code == 3 and "unreachable: [pc03] connection reset by peer (attempts: 2)" in out


def test_invalid_playbook_exits_4_with_file_line_col(tmp_path, capsys):
    project(tmp_path, "- name: Bad\n  hosts: clients\n  steps:\n    - name: W\n      t_write_file: {}\n"
                      "      retires: 3\n")
    code, out, err = cli(tmp_path, capsys, "validate", "pb.yml", "-i", "inv.yml")
    assert code == 4 and "pb.yml:6:7:" in out and "retires" in out
    code, out, err = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml")
    assert code == 4 and "pb.yml:6:7:" in err and "Traceback" not in err


def test_validate_valid_exits_0(tmp_path, capsys):
    project(tmp_path)
    code, out, _ = cli(tmp_path, capsys, "validate", "pb.yml", "-i", "inv.yml")
    assert code == 0 and "valid" in out


@pytest.mark.parametrize("args", [
    ["apply", "pb.yml", "-i", "inv.yml", "--bogus"],
    ["apply", "pb.yml", "-i", "inv.yml", "--forks", "0"],
    ["apply", "pb.yml", "-i", "inv.yml", "--tags", "nosuchtag"],
    ["apply", "pb.yml", "-i", "inv.yml", "--limit", "nosuchhost"],
    ["frobnicate"],
])
def test_bad_options_exit_5(tmp_path, capsys, args):
    project(tmp_path)
    code, out, err = cli(tmp_path, capsys, *args)
    assert code == 5 and "Traceback" not in err + out


def test_missing_default_inventory_is_a_clear_error(tmp_path, capsys):
    project(tmp_path)
    code, _, err = cli(tmp_path, capsys, "apply", "pb.yml")
    assert code == 1 and "inventories/lab.yml" in err and "Traceback" not in err


def test_unexpected_error_exits_250_with_traceback_file(tmp_path, capsys, monkeypatch):
    project(tmp_path)
    import runner.apply

    def boom(*a, **k):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(runner.apply, "apply", boom)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the report lands here, not in /tmp
    code, out, err = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml")
    assert code == 250 and "kaboom" in err and "traceback written to" in err and "Traceback" not in err
    [report] = tmp_path.glob("runner-crash-*.log")
    assert "RuntimeError: kaboom" in report.read_text()


def test_lock_refuses_a_second_concurrent_run(tmp_path, capsys):
    project(tmp_path)
    holder = StateStore(tmp_path / ".runner")
    holder.acquire_lock()
    try:
        code, _, err = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml")
        assert code == 1 and "another run is using the state directory" in err
        assert f"pid {os.getpid()}" in err
    finally:
        holder.close()
    code, _, _ = cli(tmp_path, capsys, "apply", "pb.yml", "-i", "inv.yml")
    assert code == 0


SLOW = """\
- name: Slow play
  hosts: clients
  steps:
    - name: Write
      t_write_file: {{content: v1, sleep: {sleep}}}
    - name: Again
      t_write_file: {{content: v2, dir: again, sleep: {sleep}}}
"""


def _wait_for_journal(tmp_path: Path, n: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(journal(tmp_path)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)


def test_ctrl_c_finishes_tasks_in_flight_and_exits_99_with_resume_command(tmp_path):
    project(tmp_path, SLOW.format(sleep=0.3), hosts=6)
    proc = spawn(tmp_path, "apply", "pb.yml", "-i", "inv.yml", "--forks", "2")
    _wait_for_journal(tmp_path, 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 99, err
    assert "to resume: runner apply pb.yml -i inv.yml --forks 2" in out
    assert "Traceback" not in err
    done = len(journal(tmp_path))
    assert 1 <= done < 12
    resumed = subprocess.run([sys.executable, LAUNCHER, "apply", "pb.yml", "-i", "inv.yml", "--json"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    tasks = [e for e in map(json.loads, resumed.stdout.splitlines()) if e["event"] == "task"]
    assert sum(1 for t in tasks if t.get("resumed")) == done
    assert sorted(Counter(journal(tmp_path)).values()) == [1] * 12


def test_second_ctrl_c_stops_at_once_and_the_run_resumes(tmp_path):
    project(tmp_path, SLOW.format(sleep=2), hosts=4)
    proc = spawn(tmp_path, "apply", "pb.yml", "-i", "inv.yml", "--forks", "1")
    _wait_for_journal(tmp_path, 1, proc)
    proc.send_signal(signal.SIGINT)
    # Two signals that arrive before Python runs the handler coalesce into one
    # (POSIX keeps one pending SIGINT): wait until the first was seen.
    first = _read_stderr_until(proc, "interrupted: finishing")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 99 and "stopping now" in first + err
    resumed = subprocess.run([sys.executable, LAUNCHER, "apply", "pb.yml", "-i", "inv.yml"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert all(n == 1 for n in Counter(journal(tmp_path)).values()) and len(set(journal(tmp_path))) == 8


@pytest.mark.parametrize("seed", [1, 2])
def test_resume_after_sigkill_at_a_random_point_skips_finished_tasks(tmp_path, seed):
    project(tmp_path, SLOW.format(sleep=0.05), hosts=8)
    proc = spawn(tmp_path, "apply", "pb.yml", "-i", "inv.yml", "--forks", "2")
    _wait_for_journal(tmp_path, 1, proc)
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    proc.kill()
    proc.communicate(timeout=30)
    with StateStore(tmp_path / ".runner") as store:       # opens after SIGKILL (WAL recovery)
        run_id = store.runs()[0].id
        done_before = {r["key"] for r in store.task_rows(run_id) if r["status"] in ("ok", "changed")}
    resumed = subprocess.run([sys.executable, LAUNCHER, "apply", "pb.yml", "-i", "inv.yml", "--json"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    tasks = [e for e in map(json.loads, resumed.stdout.splitlines()) if e["event"] == "task"]
    assert {t["key"] for t in tasks if t.get("resumed")} == done_before
    assert len(tasks) == 16
    # final effect: every file written once, none twice
    work = tmp_path / "work"
    assert all((work / "files" / f"pc{i:02}").read_text() == "v1" for i in range(1, 9))
    assert all((work / "again" / f"pc{i:02}").read_text() == "v2" for i in range(1, 9))
    assert max(Counter(journal(tmp_path)).values()) == 1
    with StateStore(tmp_path / ".runner") as store:
        assert {r["status"] for r in store.task_rows(run_id)} <= {"ok", "changed"}
        assert store.runs()[0].status == "ok" and store.runs()[0].sessions == 2
