"""Allow and block lists changed during a rollback window (gradual.yml, rollback.yml, gradual.yml).

A rolled-back user changes their Exchange IM list; the next move must carry the change to
the entries the runner created itself (they are the runner's, not the user's), keep entries
the user set on LCS, and verify only what LCS really holds. docs/permissions.md.
"""
from __future__ import annotations

import json
import sqlite3

import pytest

from scenario_support import PLAYBOOKS, make_scenario
from test_permissions_scenarios import _add_ace, expected_entries, lcs_entries

pytestmark = pytest.mark.slow

SEED = 8
WAVE = "wave1"


def _acl_rows(sc, alias: str) -> tuple[str, list[str]]:
    db = sqlite3.connect(sc.lab_dir / "ad.db")
    try:
        dn = db.execute("SELECT dn FROM attrs WHERE name='sAMAccountName' AND value=?", (alias,)).fetchone()[0]
        return dn, [v for (v,) in db.execute("SELECT value FROM attrs WHERE dn=? AND name='msExchIMACL'", (dn,))]
    finally:
        db.close()


def test_a_block_set_in_exchange_im_during_a_rollback_reaches_lcs_on_the_next_move(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", SEED)
    assert sc.apply("--limit", f"wave:{WAVE}").code == 0
    man = sc.manifest
    wave = [a for a, u in man["users"].items() if u["wave"] == WAVE]
    # a user with two entries for people, both allowing presence: one the user will block in
    # Exchange IM during the rollback, one they change themselves on LCS
    alias, allowed = next((a, people) for a in wave for people in
                          [[k for k, v in sorted(expected_entries(man, a)[0].items())
                            if k[0] == "user" and v == ("Allow", "Allow")]] if len(people) >= 2)
    blocked, own = allowed[0], allowed[1]
    back = sc.runner("apply", str(PLAYBOOKS / "rollback.yml"), "-i", str(sc.inventory), "--state", str(sc.state),
                     "--json", "--limit", f"wave:{WAVE}")
    assert back.code == 0, back.out[-3000:]
    entry = next(e for e in man["users"][alias]["permissions"]["entries"]
                 if e["type"] == "User" and blocked[1].split(":", 1)[1].split("@")[0] in e["url"].lower())
    dn, before = _acl_rows(sc, alias)
    assert before
    db = sqlite3.connect(sc.lab_dir / "ad.db")
    with db:  # back on Exchange IM, the user blocks one person (deny wins over their grant)
        db.execute("INSERT INTO attrs (dn, name, value) VALUES (?, 'msExchIMACL', ?)",
                   (dn, f"(D;;PRST;;;{entry['url']})"))
    db.close()
    _add_ace(sc, alias, "User", own[1], "Allow", "Deny")  # and changes another entry on LCS themselves
    again = sc.apply("--limit", f"wave:{WAVE}")
    assert again.code == 0, again.out[-3000:]
    have = lcs_entries(sc, alias)
    assert have[blocked] == ("Deny", "Deny"), "the block set in Exchange IM became an allow on LCS"
    assert have[own] == ("Allow", "Deny"), "the user's own LCS setting was overwritten"
    mine = {t["module"]: t for t in again.tasks if t["target"] == alias and not t.get("resumed")}
    imp = mine["import_permissions"]
    assert imp["status"] == "changed" and len(imp["data"]["updated"]) == 1, imp
    assert not any(blocked[1] in w for w in imp["warnings"]), imp["warnings"]
    assert any(own[1] in w and "kept as set on LCS" in w for w in imp["warnings"]), imp["warnings"]
    assert mine["verify_permissions"]["status"] == "ok" and mine["disable_exchange_im"]["status"] == "changed"
    # the help desk hears of the conflict the user made on LCS
    report = json.loads(sc.runner("report", "--state", str(sc.state), "--json").out)
    desk = next(u for u in report["users"] if u["user"] == alias)["redo_by_hand"]
    assert any("kept as set on LCS" in line and own[1] in line.lower() for line in desk), desk
    text = sc.runner("report", "--state", str(sc.state)).out
    header = next(line for line in text.splitlines() if line.startswith("user "))
    row = next(line for line in text.splitlines() if line.startswith(alias + " "))
    cells = dict(zip(header.split()[:13], row.split()[:3] + row.split("disabled on Exchange IM")[1].split()[:10]))
    assert cells["p.kept"] == "1" and cells["p.ok"] == "yes", (header, row)
    # a second night changes nothing
    assert sc.apply("--limit", f"wave:{WAVE}", "--fresh").totals["changed"] == 0
