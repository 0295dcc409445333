"""Ansible's habits (issue 11 part 4): --list-hosts/--list-tasks/--list-tags from the plan
without connecting, -e/--extra-vars, --limit @FILE and the retry file, --version, and the
wave gate judged over the wave's unit with its verdict."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from runner.context import task_variables
from runner.errors import EXIT_BAD_OPTIONS, EXIT_INVALID, EXIT_OK
from runner.extravars import with_extra_vars
from runner.loader import load_inventory, load_playbook
from runner.plan import build_plan
from tests.scenario_support import PLAYBOOKS, REPO, make_scenario

GRADUAL = str(PLAYBOOKS / "gradual.yml")


def wave_users(sc, wave: str) -> list[str]:
    return sorted(a for a, u in sc.manifest["users"].items() if u.get("wave") == wave)


def test_list_options_come_from_the_plan_with_limit_and_tags_and_touch_nothing(tmp_path):
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=8)
    journal_before = sc.mutations_since(0)
    base = ["apply", GRADUAL, "-i", str(sc.inventory), "--state", str(sc.state), "--limit", "wave:wave1"]
    hosts = sc.runner(*base, "--list-hosts")
    assert hosts.code == EXIT_OK, hosts.out
    first_users = wave_users(sc, "wave1")
    users_line = next(line for line in hosts.out.splitlines() if line.strip().startswith("users ("))
    assert users_line.strip().startswith(f"users ({len(first_users)}): ")
    assert "wave wave2" not in hosts.out
    tasks = sc.runner(*base, "--list-tasks", "--tags", "lcs")
    assert tasks.code == EXIT_OK and "Enable users on LCS (enable_lcs_users, " in tasks.out
    assert "Export contact lists" not in tasks.out and "TAGS: [lcs, import]" in tasks.out
    tags = sc.runner(*base, "--list-tags", "--skip-tags", "inventory")
    # wave1 selects no Exchange IM server: the decommission play has nothing to run tonight
    assert tags.code == EXIT_OK and "TASK TAGS: [client, exchange, export, import, lcs, permissions, verify]" in tags.out
    assert not sc.state.exists()                     # nothing locked or recorded
    assert sc.mutations_since(0) == journal_before   # nothing ran on any host
    bad = sc.runner(*base[:-1], "wave:nope", "--list-hosts")
    assert bad.code == EXIT_BAD_OPTIONS


def test_extra_vars_win_over_every_other_variable_and_enter_the_fingerprint(tmp_path):
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=4)
    pb, inv = load_playbook(GRADUAL), load_inventory(sc.inventory)
    extra = {"messenger_package": r"\\deploy\tonight.msi", "lcs_home_server_dn": "CN=x"}
    task = next(t for t in build_plan(with_extra_vars(pb, extra), inv).tasks() if t.kind == "user")
    variables = task_variables(inv, with_extra_vars(pb, extra).plays[task.play_index], task)
    assert variables["messenger_package"] == extra["messenger_package"]
    assert variables["lcs_home_server_dn"] == "CN=x"    # above the inventory's all.vars
    assert with_extra_vars(pb, {}) is pb               # no -e: the same fingerprints, a resume resumes
    assert pb.plays[1].steps[0].fingerprint != with_extra_vars(pb, extra).plays[1].steps[0].fingerprint
    res = sc.runner("apply", GRADUAL, "-i", str(sc.inventory), "--state", str(sc.state), "--check", "--diff",
                    "--json", "--limit", "wave:wave1", "-e", r"messenger_package=\\deploy\tonight.msi")
    assert res.code == 0, res.out[-2000:]
    upgrades = [e for e in res.tasks if e["module"] == "upgrade_messenger" and e.get("diff")]
    assert upgrades and all(r"from \\deploy\tonight.msi" in "\n".join(e["diff"]["lines"]) for e in upgrades)


def test_extra_vars_from_a_file_are_checked_with_file_and_line(tmp_path):
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=2)
    base = ["apply", GRADUAL, "-i", str(sc.inventory), "--state", str(sc.state), "--list-tasks"]
    good = tmp_path / "good.yml"
    good.write_text("messenger_package: '\\\\deploy\\wm.msi'\n", encoding="utf-8")
    assert sc.runner(*base, "-e", f"@{good}").code == EXIT_OK
    broken = tmp_path / "broken.yml"
    broken.write_text("a: 1\nb: [unclosed\n", encoding="utf-8")
    res = sc.runner(*base, "-e", f"@{broken}")
    assert res.code == EXIT_INVALID and f"{broken}:3" in res.out or f"{broken}:2" in res.out, res.out
    rule = tmp_path / "rule.yml"
    rule.write_text("x: 1\nsip_mapping:\n  template: 'sip:{nope}@{domain}'\n", encoding="utf-8")
    res = sc.runner(*base, "-e", f"@{rule}")
    assert res.code == EXIT_INVALID and f"{rule}:3" in res.out, res.out
    listed = tmp_path / "list.yml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    res = sc.runner(*base, "-e", f"@{listed}")
    assert res.code == EXIT_INVALID and f"{listed}:1" in res.out and "mapping" in res.out
    assert sc.runner(*base, "-e", "1x=2").code == EXIT_BAD_OPTIONS
    assert sc.runner(*base, "-e", "novalue").code == EXIT_BAD_OPTIONS
    assert sc.runner(*base, "-e", f"@{tmp_path / 'missing.yml'}").code == EXIT_INVALID


def test_a_run_with_failures_leaves_a_retry_file_that_limit_at_file_takes(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0")
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=8)
    down = "pc0002"
    assert sc.runner("lab", "faults", "--dir", str(sc.lab_dir), "down=1", "--host", down).code == 0
    first = sc.runner("apply", GRADUAL, "-i", str(sc.inventory), "--state", str(sc.state))
    assert first.code == 3, first.out[-2000:]
    retry = sc.state / "gradual.retry"
    assert f"failed and unreachable targets: {retry} (--limit @{retry}" in first.out
    names = retry.read_text(encoding="utf-8").split()
    users_of_down = {a for a, u in sc.manifest["users"].items() if down in u["machines"]}
    assert down in names and users_of_down <= set(names)
    listed = sc.runner("apply", GRADUAL, "-i", str(sc.inventory), "--state", str(sc.state),
                       "--limit", f"@{retry}", "--list-hosts")
    assert listed.code == 0 and f"hosts (1): {down}" in listed.out, listed.out
    assert sc.runner("lab", "faults", "--dir", str(sc.lab_dir), "down=0", "--host", down).code == 0
    # a new process, as the next night's is (the lab keeps its fault settings per process)
    proc = subprocess.run([sys.executable, "-m", "runner", "apply", GRADUAL, "-i", str(sc.inventory), "--state",
                           str(sc.state), "--json", "--limit", f"@{retry}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    ran = {e["target"] for e in events if e["event"] == "task" and not e.get("resumed")}
    assert down in ran and ran <= set(names) | {"exim01"} | \
        {h for a in users_of_down for h in sc.manifest["users"][a]["machines"]}
    end = next(e for e in events if e["event"] == "run_end")
    assert "retry_file" not in end and not retry.exists()   # nothing failed: no stale list left
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n\n", encoding="utf-8")
    res = sc.runner("apply", GRADUAL, "-i", str(sc.inventory), "--limit", f"@{empty}", "--list-hosts")
    assert res.code == EXIT_BAD_OPTIONS and "names nothing" in res.out


def test_the_wave_gate_is_judged_over_the_waves_users_and_says_its_verdict(tmp_path):
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=8)
    res = sc.runner("apply", GRADUAL, "-i", str(sc.inventory), "--state", str(sc.state), "--json",
                    "--limit", "wave:wave1")
    assert res.code == 0, res.out[-2000:]
    gate = next(e for e in res.events if e["event"] == "wave_end" and e["wave"] == "wave1")
    assert gate["unit"] == "users" and gate["units"] == len(wave_users(sc, "wave1"))
    assert gate["gate"] == (f"0 of {gate['units']} users of wave wave1 failed (0% <= max_fail_percentage 10%)")
    human = sc.runner("apply", GRADUAL, "-i", str(sc.inventory), "--state", str(sc.state), "--limit", "wave:wave1")
    assert f"WAVE [wave1] gate: 0 of {gate['units']} users of wave wave1 failed" in human.out


def test_version():
    from runner.cli import run
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run(["--version"]) == 0
    from runner import __version__
    assert buf.getvalue().strip() == f"runner {__version__}"


def test_apply_hands_what_it_froze_back_to_the_collector(tmp_path, monkeypatch):
    # apply keeps its inputs and plan out of the cyclic collector's sight while it runs
    # (gc.freeze); a caller that goes on (these tests, a wrapper script) gets it back
    import gc
    frozen: list[int] = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (real_freeze(), frozen.append(gc.get_freeze_count())))
    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=3)
    assert sc.apply().code == EXIT_OK
    assert frozen and frozen[0] > 0           # the run did freeze its inputs
    assert gc.get_freeze_count() == 0         # ... and apply undid it on the way out
    runs = len(frozen)
    assert sc.runner("apply", GRADUAL, "-i", str(sc.inventory), "--list-hosts").code == EXIT_OK
    assert len(frozen) == runs and gc.get_freeze_count() == 0  # a listing returns before freezing
    real_freeze()  # a caller that froze its own objects: apply leaves that as it is
    try:
        held = gc.get_freeze_count()
        assert sc.apply().code == EXIT_OK
        assert len(frozen) == runs and gc.get_freeze_count() == held
    finally:
        gc.unfreeze()
