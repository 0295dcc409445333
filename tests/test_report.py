"""`runner report` lists every warning of a run per target; the live output stays short."""
from __future__ import annotations

import json

import pytest
from scenario_support import expected_uri, make_scenario

from runner.errors import EXIT_ERROR, EXIT_OK


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    sc = make_scenario(tmp_path_factory.mktemp("report"), "immediate.yml", seed=4)
    run = sc.apply()
    assert run.code == 0, run.out[-2000:]
    return sc, run


def _unmappable_in_manifest(manifest):
    out = {}
    for alias, u in manifest["users"].items():
        for m in u["machines"].values():
            for c in m["contacts"]:
                if expected_uri(c["address"], manifest) is None:
                    out.setdefault(alias, set()).add(c["address"].lower())
    return out


def test_report_names_every_unmappable_contact_of_every_user(migrated):
    sc, _ = migrated
    res = sc.runner("report", "--state", str(sc.state), "--json")
    assert res.code == EXIT_OK
    info = json.loads(res.out)
    reported: dict[str, set[str]] = {}
    for e in info["entries"]:
        for w in e["warnings"]:
            if w.startswith("unmappable contact "):
                reported.setdefault(e["target"], set()).add(w[len("unmappable contact "):].split(": ")[0].lower())
    expected = _unmappable_in_manifest(sc.manifest)
    assert expected, "the lab should hold unmappable contacts"
    assert reported == expected


def test_report_text_groups_warnings_by_target(migrated):
    sc, _ = migrated
    res = sc.runner("report", "--state", str(sc.state))
    some_user = sorted(_unmappable_in_manifest(sc.manifest))[0]
    assert f"\n{some_user}:\n" in res.out
    assert "[Import contacts into LCS] unmappable contact" in res.out
    assert res.out.rstrip().endswith("target(s)")


def test_report_of_an_unknown_run_is_an_error(migrated):
    sc, _ = migrated
    res = sc.runner("report", "--state", str(sc.state), "--run", "no-such-run")
    assert res.code == EXIT_ERROR and "no run no-such-run" in res.out


def test_human_output_shows_a_few_warnings_per_task_and_points_to_the_report(tmp_path):
    sc = make_scenario(tmp_path, "immediate.yml", seed=4)
    res = sc.runner("apply", str(sc.playbook_path), "-i", str(sc.inventory), "--state", str(sc.state))
    assert res.code == 0, res.out[-2000:]
    per_target: dict[str, int] = {}
    for line in res.out.splitlines():
        if line.startswith("warning: [") and "... and" not in line:
            target = line[len("warning: ["):].split("]")[0]
            per_target[target] = per_target.get(target, 0) + 1
    assert per_target and max(per_target.values()) <= 3 * 2  # at most 3 per task (import + notify/verify)
    assert "more (-v shows all; `runner report` lists them)" in res.out
    assert any(line.startswith("warnings: ") and line.endswith("`runner report` lists them")
               for line in res.out.splitlines())
