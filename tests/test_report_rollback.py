"""`runner report` after rollbacks (docs/report.md, docs/rollback.md): a refused rollback leaves
migrated users migrated, a re-move counts the runner's own earlier imports as imported, and
verifications from before a rollback no longer count."""
from __future__ import annotations

import json
import re

import pytest

from scenario_support import PLAYBOOKS, Scenario, make_scenario

pytestmark = pytest.mark.slow

SEED = 8
WAVE = "wave1"


def _rollback(sc: Scenario) -> None:
    run = sc.runner("apply", str(PLAYBOOKS / "rollback.yml"), "-i", str(sc.inventory), "--state", str(sc.state),
                    "--json", "--limit", f"wave:{WAVE}")
    assert run.code in (0, 2), run.out[-3000:]


def _report(sc: Scenario) -> dict:
    res = sc.runner("report", "--state", str(sc.state), "--json")
    assert res.code == 0, res.out[-2000:]
    return json.loads(res.out)


def _wave(report: dict) -> list[dict]:
    return [u for u in report["users"] if u["wave"] == WAVE]


def test_after_a_rollback_and_a_new_move_the_report_counts_what_the_runner_did(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", SEED)
    assert sc.apply("--limit", f"wave:{WAVE}").code == 0
    first = _report(sc)
    # one wave of the playbook's three: `runner status` says partial, and so does the report
    status = json.loads(sc.runner("status", "--state", str(sc.state), "--json").out)
    assert status["runs"][0]["status"] == "partial" and first["run_status"] == "partial"
    html = sc.runner("report", "--state", str(sc.state), "--format", "html").out
    assert f"Run {first['run']} (partial)" in html
    moved = {u["user"]: u for u in _wave(first)}
    assert moved and all(u["permissions"]["verified"] for u in moved.values())
    imported = {a: u["contacts"]["imported"] for a, u in moved.items()}
    perms = {a: u["permissions"]["imported"] for a, u in moved.items()}
    assert all(imported.values())
    for u in moved.values():  # where the ACL record really is: its content-addressed file
        path = u["permissions"]["acl_file"]
        assert re.fullmatch(rf"artifacts/permissions/{u['user']}/acl\.[0-9a-f]{{12}}\.json", path), path
        assert (sc.state / path).is_file()
    _rollback(sc)
    back = _report(sc)
    assert all(u["stage_text"] == "rolled back to Exchange IM" for u in _wave(back))
    assert not any(u["permissions"]["verified"] for u in _wave(back)), "verified before the rollback"
    assert back["summary"]["permissions"]["verified"] == first["summary"]["permissions"]["verified"] - len(moved)
    assert sc.apply("--limit", f"wave:{WAVE}").code == 0
    again = _report(sc)
    for u in _wave(again):
        assert u["state"] == "moved", u
        assert u["contacts"]["imported"] == imported[u["user"]], u["contacts"]
        assert u["contacts"]["already_on_lcs"] == 0, u["contacts"]
        assert u["permissions"]["imported"] == perms[u["user"]], u["permissions"]
        assert u["permissions"]["verified"] is True


def test_a_refused_rollback_after_decommission_keeps_users_migrated_and_is_one_cause(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", SEED)
    assert sc.apply().code == 0  # every wave, then Exchange IM is decommissioned
    _rollback(sc)
    report = _report(sc)
    wave = _wave(report)
    assert len(wave) >= 2
    for u in wave:
        assert u["stage"] == "disabled" and u["state"] == "moved", (u["user"], u["stage"], u["state"])
        assert u["failure"] and "refusing to roll back" in (u["failure"]["reason"] + str(u["failure"]["root"])), u
    assert report["summary"]["failed"] == 0
    assert next(w for w in report["waves"] if w["wave"] == WAVE)["moved"] == len(wave)
    causes = [c for c in report["summary"]["causes"] if "refusing to roll back" in c["cause"]]
    assert len(causes) == 1 and causes[0]["users"] == len(wave), report["summary"]["causes"]
    assert "<user>" in causes[0]["cause"]
