"""The kill-and-resume stress test (bench/stress_kill.py), short: one small lab, every playbook.

The first test checks the checker: two uninterrupted runs of the same lab end
in the same state, store by store, and damage planted in each store (a lost
LCS contact, a missing msRTCSIP attribute, a product without its record, a
hive left loaded, a scratch file in Temp, an artifact that no longer matches
its sha256, a lost report warning) is found. The second one kills and
resumes the apply of each of the four playbooks and wants the end state of
an uninterrupted run.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import _endstate  # noqa: E402
import stress_kill  # noqa: E402


def _apply(lab: Path, state: Path) -> None:
    proc = subprocess.run(stress_kill._apply_cmd("gradual", lab, state), env=stress_kill._env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _snap(lab: Path, state: Path) -> dict:
    return _endstate.snapshot(lab, state, stress_kill._report(state, lab.parent))


def _found(found: list, category: str, subject: str) -> bool:
    return any(d.category == category and d.subject == subject for d in found)


@pytest.mark.slow
def test_end_states_of_two_uninterrupted_runs_match_and_planted_damage_is_found(tmp_path):
    pristine = tmp_path / "pristine"
    generate(pristine, clients=4, users_per_client=2, contacts=12, seed=5)
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(pristine, a)
    shutil.copytree(pristine, b)
    _apply(a, tmp_path / "sa")
    _apply(b, tmp_path / "sb")
    want = _snap(a, tmp_path / "sa")
    assert _endstate.compare(_snap(b, tmp_path / "sb"), want, lab="l", playbook="p") == []
    assert _endstate.invariants(want, tmp_path / "sa", lab="l", playbook="p") == []

    man = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
    lcs = sqlite3.connect(b / "hosts" / "lcs01" / "lcs.db")
    iid, uri = lcs.execute("SELECT user_instance_id, sip_uri FROM contacts LIMIT 1").fetchone()
    lcs.execute("DELETE FROM contacts WHERE user_instance_id=? AND sip_uri=?", (iid, uri))
    lcs.commit()
    lcs.close()
    lost_contact = next(al for al, u in man["users"].items() if u["ad_guid"].upper() == iid.upper())
    ad = sqlite3.connect(b / "ad.db")
    other = next(al for al in man["users"] if al != lost_contact)
    dn = ad.execute("SELECT dn FROM attrs WHERE name='msRTCSIP-PrimaryUserAddress' AND lower(value)=?",
                    (man["users"][other]["sip_uri"].lower(),)).fetchone()[0]
    ad.execute("DELETE FROM attrs WHERE dn=? AND name='msRTCSIP-UserEnabled'", (dn,))
    ad.commit()
    ad.close()
    host = b / "hosts" / "pc0001" / "host.db"
    h = sqlite3.connect(host)
    h.execute("DELETE FROM product WHERE name='Windows Messenger 5.1'")
    h.execute("INSERT INTO hive_mount VALUES ('runner_x', 'runner_x', 'C:\\x\\NTUSER.DAT', 0)")
    h.commit()
    h.close()
    temp = b / "hosts" / "exim01" / "fs" / "C" / "WINDOWS" / "Temp"
    temp.mkdir(parents=True, exist_ok=True)
    (temp / "runner-0badf00d.ldf").write_text("dn: x\n")
    st = sqlite3.connect(tmp_path / "sb" / "state.db")
    art = st.execute("SELECT path FROM artifacts WHERE name LIKE '%merged.json' LIMIT 1").fetchone()[0]
    key, target, result = st.execute("SELECT key, target, result FROM tasks WHERE module='import_contacts'"
                             " AND result LIKE '%unmappable contact%' LIMIT 1").fetchone()
    res = json.loads(result)
    res["warnings"] = res["warnings"][1:]
    st.execute("UPDATE tasks SET result=? WHERE key=?", (json.dumps(res), key))
    st.commit()
    st.close()
    (tmp_path / "sb" / "artifacts" / art).write_bytes(b"{}")

    got = _snap(b, tmp_path / "sb")
    problems = _endstate.invariants(got, tmp_path / "sb", lab="l", playbook="p")
    found = _endstate.compare(got, want, lab="l", playbook="p", explained=problems) + problems
    for category, subject in (("lcs.contacts", lost_contact), ("ad.user", other), ("invariant.lcs-ad", other),
                              ("host.products", "pc0001"), ("invariant.product", "pc0001"),
                              ("invariant.hive", "pc0001"), ("invariant.temp", "exim01")):
        assert _found(found, category, subject), (category, subject, [d.line() for d in found])
    assert any(d.category == "invariant.artifact" for d in found), [d.line() for d in found]
    assert _found(found, "report", f"{target} | Import contacts into LCS"), [d.line() for d in found]


@pytest.mark.slow
def test_killed_and_resumed_runs_of_every_playbook_end_as_an_uninterrupted_run(tmp_path):
    opts = stress_kill.Options(kills=8, labs=1, clients=(8, 8), seed=11, faults="both", contacts=12,
                               workdir=tmp_path / "work")
    fig = stress_kill.StressRun(opts).run()
    assert fig.kills >= 4, stress_kill.render(fig)
    assert fig.discrepancies == [] and fig.baseline == [], stress_kill.render(fig)
