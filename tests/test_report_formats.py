"""`runner report` in each format after a night with failures, its numbers checked against
the lab's own stores (LCS pool, AD, the clients' installed products, the manifest)."""
from __future__ import annotations

import csv
import io
import json
import os
import sqlite3

import pytest
from report_support import HOSTILE_NAME, failed_night
from scenario_support import exchange_im_attributes, expected_user, lcs_limit, lcs_user

from runner.errors import EXIT_OK
from runner.report_csv import COLUMNS, render_csv
from runner.report_users import STAGES


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    sc, picked = failed_night(tmp_path_factory.mktemp("report-night"))
    res = sc.runner("report", "--state", str(sc.state), "--format", "json")
    assert res.code == EXIT_OK, res.out[-2000:]
    return sc, picked, json.loads(res.out)


def _at_least(row, stage):
    return STAGES.index(row["stage"]) >= STAGES.index(stage)


def _messenger_51(sc, host):
    db = sqlite3.connect(f"file:{sc.lab_dir / 'hosts' / host / 'host.db'}?mode=ro", uri=True)
    try:
        return any(str(v).startswith("5.1") for (v,) in db.execute("SELECT version FROM product"))
    finally:
        db.close()


def test_json_has_one_row_per_user_of_the_estate(night):
    sc, _, info = night
    aliases = [u["user"] for u in info["users"]]
    assert sorted(aliases) == sorted(sc.manifest["users"]) and len(set(aliases)) == len(aliases)
    assert info["report_format"] == 1
    s = info["summary"]
    assert s["users"] == len(aliases) == s["moved"] + s["failed"] + s["pending"]
    assert s["moved"] and s["failed"] and s["pending"], "the night should leave users in every state"
    assert sum(w["users"] for w in info["waves"]) == len(aliases)
    for w in info["waves"]:
        members = [u for u in info["users"] if u["wave"] == w["wave"]]
        assert (w["moved"], w["failed"], w["pending"]) == tuple(
            sum(1 for u in members if u["state"] == st) for st in ("moved", "failed", "pending"))


def test_where_each_user_stands_matches_ad_and_lcs(night):
    sc, _, info = night
    man = sc.manifest
    for row in info["users"]:
        alias = row["user"]
        disabled = not exchange_im_attributes(sc.lab_dir, alias)
        assert (row["stage"] == "disabled") == disabled, (alias, row["stage"])
        assert lcs_user(sc.lab_dir, man, alias).enabled == _at_least(row, "enabled"), (alias, row["stage"])
        assert row["wave"] == man["users"][alias]["wave"]
        if row["state"] == "moved":
            assert disabled and row["failure"] is None


def test_contact_figures_match_the_lcs_pool_and_the_clients(night):
    sc, picked, info = night
    man = sc.manifest
    limit = lcs_limit(sc.lab_dir, man)
    checked = 0
    for row in info["users"]:
        alias, c = row["user"], row["contacts"]
        machines = man["users"][alias]["machines"]
        for m in row["machines"]:
            on_machine = len(machines[m["host"]]["contacts"]) if m["host"] in machines else 0
            if m["host"] == picked["down"]:
                assert m["found"] is None and m["exported"] is None
            else:
                assert m["found"] == on_machine, (alias, m)
            if m["exported"] is not None:
                assert m["exported"] == on_machine, (alias, m)
        if not _at_least(row, "imported"):
            assert c["imported"] is None
            continue
        exp = expected_user(man, alias, coexistence=True)
        on_lcs = lcs_user(sc.lab_dir, man, alias).contacts
        assert c["imported"] + c["already_on_lcs"] == len(on_lcs), alias
        assert {u["address"].strip().casefold() for u in c["unmappable"]} == exp.unmappable, alias
        assert all(u["reason"] for u in c["unmappable"])
        assert len(c["over_limit"]) == max(0, len(exp.contacts) - limit), alias
        checked += 1
    assert checked >= 3
    assert info["summary"]["contacts"]["imported"] == sum(u["contacts"]["imported"] or 0 for u in info["users"])


def test_messenger_versions_match_the_installed_products(night):
    sc, picked, info = night
    seen = set()
    for row in info["users"]:
        for m in row["machines"]:
            seen.add(m["messenger_after"])
            assert (m["messenger_after"] == "5.1") == _messenger_51(sc, m["host"]), (row["user"], m)
            if m["host"] != picked["down"]:
                assert m["messenger_before"] and m["messenger_before"].startswith("4."), m
            assert m["reboot_pending"] is False
    assert {"5.1", None} <= seen


def test_failures_name_their_reason_their_root_and_what_to_do(night):
    sc, picked, info = night
    man = sc.manifest
    by_user = {u["user"]: u for u in info["users"]}
    on_down = [a for a, u in man["users"].items() if picked["down"] in u["clients"]]
    for alias in on_down:
        f = by_user[alias]["failure"]
        assert f["status"] == "unreachable" and picked["down"] in f["reason"], (alias, f)
        assert "reachable" in f["next"] and "runner apply" in f["next"]
    blocked = [u for u in info["users"] if u["failure"] and u["failure"]["reason"].startswith("not run")]
    assert blocked
    for u in blocked:
        root = u["failure"]["root"]
        assert root and u["failure"]["next"].startswith("fix ")
        assert picked["failing"] in root["target"] or root["status"] == "unreachable", u
    on_failing = [a for a, u in man["users"].items() if picked["failing"] in u["clients"]
                  and by_user[a]["failure"] and by_user[a]["failure"]["root"]
                  and by_user[a]["failure"]["root"]["target"] == f"host:{picked['failing']}"]
    assert on_failing and all("msiexec 1618" in by_user[a]["failure"]["root"]["message"] for a in on_failing)
    failed = {u["user"] for u in info["users"] if u["state"] == "failed"}
    assert failed == {u["user"] for u in info["users"] if u["failure"]}


def test_help_desk_list_names_unmappable_and_over_limit_contacts(night):
    _, _, info = night
    for u in info["users"]:
        c = u["contacts"]
        items = " ".join(u["redo_by_hand"])
        for x in c["unmappable"]:
            assert x["address"] in items
        for uri in c["over_limit"]:
            assert uri in items
        for x in u["permissions"]["unmappable"]:
            assert x["value"] in items
        assert bool(u["redo_by_hand"]) == bool(c["unmappable"] or c["over_limit"] or u["permissions"]["unmappable"])
    assert info["summary"]["help_desk"] == sum(1 for u in info["users"] if u["redo_by_hand"]) > 0


def test_csv_has_a_stable_header_and_one_row_per_user(night):
    sc, picked, info = night
    res = sc.runner("report", "--state", str(sc.state), "--format", "csv")
    assert res.code == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(res.out)))
    assert list(rows[0]) == list(COLUMNS)
    assert [r["user"] for r in rows] == [u["user"] for u in info["users"]]
    for r, u in zip(rows, info["users"]):
        assert r["state"] == u["state"] and r["stage"] == u["stage"]
        assert r["imported"] == ("" if u["contacts"]["imported"] is None else str(u["contacts"]["imported"]))
        assert int(r["unmappable"]) == len(u["contacts"]["unmappable"])
        assert r["failure_status"] == (u["failure"]["status"] if u["failure"] else "")
    assert next(r for r in rows if r["user"] == picked["renamed"])["display_name"] == HOSTILE_NAME


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted(night):
    _, _, info = night
    row = json.loads(json.dumps(info["users"][0]))
    row["display_name"] = "=HYPERLINK(\"http://x\")"
    out = list(csv.reader(io.StringIO(render_csv({"users": [row]}))))
    assert out[1][COLUMNS.index("display_name")] == "'=HYPERLINK(\"http://x\")"
    for name, cell in (("+SUM(A1)", "'+SUM(A1)"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
                       ("\tx", "'\tx"), ("  =1+2", "'  =1+2"),   # spaces a spreadsheet may trim
                       ('Smith, John "JJ"\nÜ', 'Smith, John "JJ"\nÜ')):
        row["display_name"] = name
        out = list(csv.reader(io.StringIO(render_csv({"users": [row]}))))
        assert len(out) == 2 and out[1][COLUMNS.index("display_name")] == cell


def test_text_keeps_the_warnings_and_adds_the_user_table(night):
    sc, _, info = night
    res = sc.runner("report", "--state", str(sc.state))
    assert res.code == EXIT_OK
    lines = res.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("user ") and "stands" in line)
    table = lines[header + 1: header + 1 + len(info["users"])]
    assert [line.split()[0] for line in table] == [u["user"] for u in info["users"]]
    s = info["summary"]
    assert f"users: {s['users']}: {s['moved']} moved, {s['failed']} failed, {s['pending']} pending" in res.out
    assert "failures (newest per user) and what to do next:" in res.out
    assert "help desk: what users have to redo by hand:" in res.out
    assert "[Import contacts into LCS] unmappable contact" in res.out
    assert res.out.rstrip().endswith("target(s)")


def test_html_and_output_file_are_self_contained_and_escaped(night, tmp_path):
    sc, _, info = night
    out = tmp_path / "report.html"
    res = sc.runner("report", "--state", str(sc.state), "--format", "html", "-o", str(out))
    assert res.code == EXIT_OK and f"report written to {out}" in res.out
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<svg id="progress-chart"' in page
    assert HOSTILE_NAME not in page and "&lt;b&gt;Zoë &quot;Z&quot; O&#x27;Neil &amp; Co&lt;/b&gt;" in page
    for needle in (" src=", " href=", "url(", "@import", "<link"):
        assert needle not in page, needle
    assert page.count("<script>") == 1
    assert all(f'data-user="{u["user"]}"' in page for u in info["users"])


def test_scenario_1_users_are_told_to_recreate_their_exported_contacts(tmp_path):
    from scenario_support import make_scenario

    sc = make_scenario(tmp_path, "immediate-recreate.yml", seed=5, clients=4, contacts=6)
    assert sc.apply().code == 0
    res = sc.runner("report", "--state", str(sc.state), "--format", "json")
    info = json.loads(res.out)
    assert info["summary"]["moved"] == len(sc.manifest["users"]) == info["summary"]["help_desk"]
    for u in info["users"]:
        addresses = {c["address"].casefold() for m in sc.manifest["users"][u["user"]]["machines"].values()
                     for c in m["contacts"]}
        first = u["redo_by_hand"][0]
        assert first.startswith(f"recreate {len(addresses)} contact(s) on LCS by hand"), (u["user"], first)
        assert f"{u['user']}.txt" in first and u["contacts"]["imported"] is None


def test_failures_are_grouped_by_their_cause(night):
    _, picked, info = night
    causes = info["summary"]["causes"]
    assert sum(c["users"] for c in causes) == info["summary"]["failed"]
    down = next(c for c in causes if picked["down"] in c["cause"] and "unreachable" in c["cause"])
    on_down = [u for u in info["users"] if u["failure"] and picked["down"] in u["failure"]["next"]]
    assert down["users"] == len(on_down) >= 2
    assert any(c["cause"].startswith(f"{picked['failing']}, ") and "msiexec 1618" in c["cause"] for c in causes)


def test_a_report_whose_inventory_is_gone_lists_the_users_the_store_knows(night, tmp_path):
    import shutil

    sc, _, info = night
    state = tmp_path / "state"
    shutil.copytree(sc.state, state)
    db = sqlite3.connect(state / "state.db")
    with db:
        db.execute("UPDATE runs SET inventory=?", (str(tmp_path / "gone.yml"),))
    db.close()
    res = sc.runner("report", "--state", str(state), "--format", "json")
    gone = json.loads(res.out)
    assert res.code == EXIT_OK and "gone.yml" in gone["inventory_note"]
    assert sorted((u["user"], u["stage"], u["state"], u["wave"]) for u in gone["users"]) == \
        sorted((u["user"], u["stage"], u["state"], u["wave"]) for u in info["users"])
    text = sc.runner("report", "--state", str(state)).out
    assert "note: inventory not read (" in text


def test_an_unknown_run_is_an_error_in_every_format(night):
    sc, _, _ = night
    for fmt in ("csv", "json", "html"):
        res = sc.runner("report", "--state", str(sc.state), "--run", "no-such-run", "--format", fmt)
        assert res.code == 1 and "ERROR: no run no-such-run" in res.out, fmt


def test_a_machine_whose_upgrade_wants_a_reboot_is_pending_for_each_of_its_users(tmp_path):
    from scenario_support import make_scenario

    sc = make_scenario(tmp_path, "gradual.yml", seed=3, clients=6, contacts=4)
    host = next(h for u in sc.manifest["users"].values() for h in u["clients"])
    cfg = json.loads((sc.lab_dir / "lab.json").read_text())
    cfg["hosts"][host]["msiexec_reboot"] = True          # msiexec /norestart then exits 3010
    (sc.lab_dir / "lab.json").write_text(json.dumps(cfg))
    assert sc.apply().code == 0
    info = json.loads(sc.runner("report", "--state", str(sc.state), "--format", "json").out)
    assert info["summary"]["reboot_pending"] == [host]
    users = {a for a, u in sc.manifest["users"].items() if host in u["clients"]}
    assert {u["user"] for u in info["users"] if u["reboot_pending"] == [host]} == users
    rows = list(csv.DictReader(io.StringIO(sc.runner("report", "--state", str(sc.state), "--format", "csv").out)))
    assert {r["user"] for r in rows if r["reboot_pending"] == host} == users
    assert f"reboot pending: 1 machine(s): {host}" in sc.runner("report", "--state", str(sc.state)).out
