"""playbooks/rollback.yml: a migrated wave put back on Exchange IM from the backup
disable_exchange_im saved, disabled on LCS, the other waves untouched; refused without a
backup and after decommission; idempotent; and the wave moves again and verifies.

The end state is read from the lab's ad.db and lcs.db with plain sqlite3 and compared with
a copy of ad.db taken right after the lab was generated (its pristine state)."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runner.lab.verify import verify
from scenario_support import (PLAYBOOKS, Run, Scenario, assert_exchange_im_disabled, exchange_im_attributes,
                              lcs_dump, lcs_user, make_scenario)

pytestmark = pytest.mark.slow

SEED = 8
WAVE = "wave1"


def _waves(sc: Scenario) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, u in sc.manifest["users"].items():
        out.setdefault(u["wave"], []).append(alias)
    return out


def _rollback(sc: Scenario, *extra: str, playbook: Path | None = None, state: Path | None = None) -> Run:
    return sc.runner("apply", str(playbook or PLAYBOOKS / "rollback.yml"), "-i", str(sc.inventory),
                     "--state", str(state or sc.state), "--json", *extra)


def _ad_rows(ad_db: Path, alias: str, prefix: str) -> list[tuple[str, Any]]:
    """Every value of the user's attributes whose name starts with ``prefix`` (case-insensitive),
    sorted: what "the same attributes" is compared on, value by value."""
    db = sqlite3.connect(f"file:{ad_db}?mode=ro", uri=True)
    try:
        [dn] = [r[0] for r in db.execute("SELECT dn FROM attrs WHERE name='sAMAccountName' AND value=?", (alias,))]
        return sorted((n.lower(), v if isinstance(v, str) else bytes(v).hex())
                      for n, v in db.execute("SELECT name, value FROM attrs WHERE dn=?", (dn,))
                      if n.lower().startswith(prefix.lower()))
    finally:
        db.close()


def _pristine(tmp_path: Path) -> tuple[Scenario, Path]:
    sc = make_scenario(tmp_path, "gradual.yml", SEED)
    pristine = tmp_path / "pristine-ad.db"
    shutil.copy(sc.lab_dir / "ad.db", pristine)
    return sc, pristine


def _failures(run: Run) -> list[tuple[str, str, str]]:
    return [(t["step"], t["target"], t["message"]) for t in run.tasks if t["status"] == "failed"]


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """wave1 moved by gradual.yml, then rolled back; what the tests below look at."""
    root = tmp_path_factory.mktemp("rollback")
    sc, pristine = _pristine(root)
    moved = sc.apply("--limit", f"wave:{WAVE}")
    assert moved.code == 0, moved.out[-3000:]
    waves = _waves(sc)
    first = waves[WAVE]
    others = [a for w, users in waves.items() if w != WAVE for a in users]
    assert first and others
    assert_exchange_im_disabled(sc, first)
    on_lcs = {a: lcs_user(sc.lab_dir, sc.manifest, a) for a in first}
    assert all(u.enabled for u in on_lcs.values())
    before_others = {a: _ad_rows(sc.lab_dir / "ad.db", a, "") for a in others}
    back = _rollback(sc, "--limit", f"wave:{WAVE}")
    assert back.code == 0, back.out[-3000:]
    return {"sc": sc, "pristine": pristine, "first": first, "others": others, "on_lcs": on_lcs,
            "before_others": before_others, "back": back}


def test_rollback_restores_exactly_the_pristine_exchange_im_attributes(rolled_back) -> None:
    sc, first = rolled_back["sc"], rolled_back["first"]
    for alias in first:
        now = _ad_rows(sc.lab_dir / "ad.db", alias, "msExchIM")
        was = _ad_rows(rolled_back["pristine"], alias, "msExchIM")
        assert was, f"{alias} had no Exchange IM attributes in the pristine lab"
        assert now == was, f"{alias}: {now} != pristine {was}"


def test_the_backup_is_an_artifact_with_its_sha256(rolled_back) -> None:
    sc, first = rolled_back["sc"], rolled_back["first"]
    db = sqlite3.connect(f"file:{sc.state / 'state.db'}?mode=ro", uri=True)
    try:
        rows = {n: (p, s) for n, p, s in db.execute("SELECT name, path, sha256 FROM artifacts "
                                                    "WHERE name LIKE 'exim-backup/%'")}
    finally:
        db.close()
    assert set(rows) == {f"exim-backup/{a}.json" for a in first}
    import hashlib
    for alias in first:
        path, sha = rows[f"exim-backup/{alias}.json"]
        data = (sc.state / "artifacts" / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        doc = json.loads(data)
        assert doc["msExchIM"]["msExchIMAddress"] == [sc.manifest["users"][alias]["im_address"]]
        assert doc["msRTCSIP"]["msRTCSIP-UserEnabled"] == ["TRUE"]  # the LCS state at the time


def test_rolled_back_users_are_disabled_on_lcs_and_keep_their_contacts(rolled_back) -> None:
    sc = rolled_back["sc"]
    for alias in rolled_back["first"]:
        u = lcs_user(sc.lab_dir, sc.manifest, alias)
        assert u.primary_uri is not None and not u.enabled, alias
        assert sorted(u.contacts, key=str) == sorted(rolled_back["on_lcs"][alias].contacts, key=str), alias
        assert ("msrtcsip-userenabled", "FALSE") in _ad_rows(sc.lab_dir / "ad.db", alias, "msRTCSIP")


def test_the_report_says_who_was_rolled_back(rolled_back) -> None:
    sc = rolled_back["sc"]
    run = sc.runner("report", "--state", str(sc.state), "--json")
    assert run.code == 0, run.out[-2000:]
    users = {u["user"]: u for u in json.loads(run.out)["users"]}
    for alias in rolled_back["first"]:
        assert (users[alias]["stage_text"], users[alias]["state"]) == ("rolled back to Exchange IM", "pending")


def test_other_waves_are_untouched(rolled_back) -> None:
    sc = rolled_back["sc"]
    tasks = rolled_back["back"].tasks
    users = sc.manifest["users"]
    assert {t["target"] for t in tasks if t["module"] != "configure_messenger"} == set(rolled_back["first"])
    assert {t["target"] for t in tasks if t["module"] == "configure_messenger"} == {
        c for a in rolled_back["first"] for c in users[a]["clients"]}  # only the wave's clients
    for alias in rolled_back["others"]:
        assert _ad_rows(sc.lab_dir / "ad.db", alias, "") == rolled_back["before_others"][alias], alias
        assert lcs_user(sc.lab_dir, sc.manifest, alias).primary_uri is None, alias


def test_a_second_rollback_changes_nothing(rolled_back) -> None:
    sc = rolled_back["sc"]
    for extra in ((), ("--fresh",)):
        before = (lcs_dump(sc.lab_dir, sc.manifest), {a: _ad_rows(sc.lab_dir / "ad.db", a, "")
                                                       for a in rolled_back["first"]})
        again = _rollback(sc, "--limit", f"wave:{WAVE}", *extra)
        assert again.code == 0, again.out[-3000:]
        assert again.totals["changed"] == 0 and again.totals["failed"] == 0, extra
        assert not sc.mutations_since(again.started), extra
        assert (lcs_dump(sc.lab_dir, sc.manifest), {a: _ad_rows(sc.lab_dir / "ad.db", a, "")
                                                    for a in rolled_back["first"]}) == before


def test_after_a_rollback_the_wave_moves_again_and_verifies(rolled_back) -> None:
    sc, first = rolled_back["sc"], rolled_back["first"]
    again = sc.apply("--limit", f"wave:{WAVE}")
    assert again.code == 0, again.out[-3000:]
    redone = {t["target"] for t in again.tasks if t["module"] == "enable_lcs_users" and t["status"] == "changed"}
    assert redone == set(first), "the rolled-back users were skipped as done"
    verified = {t["target"] for t in again.tasks if t["module"] == "verify_contacts" and t["status"] == "ok"
                and not t.get("resumed")}
    assert verified == set(first)
    assert_exchange_im_disabled(sc, first)
    check = verify(sc.lab_dir, waves=[WAVE])  # what `runner lab verify --wave wave1` says
    assert check.ok, [(u.alias, u.problems) for u in check.users if not u.ok] + check.problems
    for alias in rolled_back["others"]:
        assert exchange_im_attributes(sc.lab_dir, alias), alias
    # moved again, the same rollback command puts them back again (not skipped as done)
    back = _rollback(sc, "--limit", f"wave:{WAVE}")
    assert back.code == 0, back.out[-3000:]
    assert {t["target"] for t in back.tasks if t["module"] == "restore_exchange_im"
            and t["status"] == "changed"} == set(first)
    for alias in first:
        assert _ad_rows(sc.lab_dir / "ad.db", alias, "msExchIM") == _ad_rows(rolled_back["pristine"], alias,
                                                                             "msExchIM")


def test_rollback_is_refused_without_a_backup(tmp_path) -> None:
    sc, _ = _pristine(tmp_path)
    moved = sc.apply("--limit", f"wave:{WAVE}")
    assert moved.code == 0, moved.out[-3000:]
    first = _waves(sc)[WAVE]
    before = lcs_dump(sc.lab_dir, sc.manifest)
    run = _rollback(sc, "--limit", f"wave:{WAVE}", state=tmp_path / "other-state")  # no backups there
    assert run.code == 2, run.out[-3000:]
    refused = {t: m for s, t, m in _failures(run) if s.startswith("Restore")}
    assert set(refused) == set(first)
    for alias, message in refused.items():
        assert f"refusing to roll back {alias}: no backup" in message, message
    assert not [t for t in run.tasks if t["module"] == "disable_lcs_users" and t["status"] in ("ok", "changed")]
    assert_exchange_im_disabled(sc, first)
    assert lcs_dump(sc.lab_dir, sc.manifest) == before
    assert not sc.mutations_since(run.started)


def test_rollback_is_refused_after_decommission(tmp_path) -> None:
    sc, _ = _pristine(tmp_path)
    moved = sc.apply()  # every wave, then the server is retired
    assert moved.code == 0, moved.out[-3000:]
    first = _waves(sc)[WAVE]
    before = lcs_dump(sc.lab_dir, sc.manifest)
    run = _rollback(sc, "--limit", f"wave:{WAVE}")
    assert run.code == 2, run.out[-3000:]
    refused = {t: m for s, t, m in _failures(run) if s.startswith("Restore")}
    assert set(refused) == set(first)
    host = sc.manifest["exchange_server"]
    for alias, message in refused.items():
        assert f"refusing to roll back {alias}: the Exchange IM server {host} has been decommissioned" in message
    assert_exchange_im_disabled(sc, first)
    assert lcs_dump(sc.lab_dir, sc.manifest) == before
    assert not sc.mutations_since(run.started)


def test_remove_imported_contacts_keeps_what_the_user_added_or_edited_on_lcs(tmp_path) -> None:
    sc, _ = _pristine(tmp_path)
    moved = sc.apply("--limit", f"wave:{WAVE}")
    assert moved.code == 0, moved.out[-3000:]
    man = sc.manifest
    alias = max(_waves(sc)[WAVE], key=lambda a: len(lcs_user(sc.lab_dir, man, a).contacts))
    got = lcs_user(sc.lab_dir, man, alias)
    assert len(got.contacts) >= 3, alias
    guid = man["users"][alias]["ad_guid"].upper()
    renamed, regrouped = got.contacts[0][0], got.contacts[1][0]
    lcs = sqlite3.connect(sc.lab_dir / "hosts" / man["lcs_server"] / "lcs.db")
    with lcs:  # on LCS the user renames one, takes one out of its groups, and adds one of their own
        lcs.execute("UPDATE contacts SET name='Renamed on LCS' WHERE user_instance_id=? AND sip_uri=?",
                    (guid, renamed))
        lcs.execute("UPDATE contacts SET group_ids='' WHERE user_instance_id=? AND sip_uri=?", (guid, regrouped))
        lcs.execute("INSERT INTO contacts(user_instance_id, sip_uri, name, subscribed, group_ids) "
                    "VALUES (?, 'sip:mine@contoso.com', 'Added on LCS', 1, '')", (guid,))
    lcs.close()
    playbook = tmp_path / "rollback-remove.yml"
    playbook.write_text((PLAYBOOKS / "rollback.yml").read_text(encoding="utf-8").replace(
        "remove_imported_contacts: false", "remove_imported_contacts: true"), encoding="utf-8")
    run = _rollback(sc, "--limit", alias, playbook=playbook)
    assert run.code == 0, run.out[-3000:]
    left = {uri.lower() for uri, _, _ in lcs_user(sc.lab_dir, man, alias).contacts}
    assert left == {renamed.lower(), regrouped.lower(), "sip:mine@contoso.com"}
    assert not lcs_user(sc.lab_dir, man, alias).enabled
    removed = next(t for t in run.tasks if t["module"] == "disable_lcs_users")["data"]["removed"]
    assert len(removed) == len(got.contacts) - 2
    again = _rollback(sc, "--limit", alias, "--fresh", playbook=playbook)
    assert again.code == 0 and again.totals["changed"] == 0, again.out[-3000:]


def test_check_mode_previews_the_rollback_and_changes_nothing(tmp_path) -> None:
    sc, _ = _pristine(tmp_path)
    moved = sc.apply("--limit", f"wave:{WAVE}")
    assert moved.code == 0, moved.out[-3000:]
    first = _waves(sc)[WAVE]
    before = lcs_dump(sc.lab_dir, sc.manifest)
    run = _rollback(sc, "--limit", f"wave:{WAVE}", "--check", "--diff")
    assert run.code == 0, run.out[-3000:]
    previews = [t for t in run.tasks if t["status"] == "changed"]
    assert {(t["module"], t["target"]) for t in previews} == {(m, a) for a in first
                                                               for m in ("restore_exchange_im", "disable_lcs_users")}
    assert not any("refuse" in w for t in run.tasks for w in t.get("warnings", []))
    assert_exchange_im_disabled(sc, first)
    assert lcs_dump(sc.lab_dir, sc.manifest) == before
    assert not sc.mutations_since(run.started)


def _exchange_policy(sc: Scenario, host: str) -> dict[str, Any]:
    """The client's Exchange IM account policy: ExchangeConn and the account's ``disabled``."""
    from runner.lab.verify import EXCHANGE_POLICY_LC, EXCHANGE_SERVICE_LC
    db = sqlite3.connect(f"file:{sc.lab_dir / 'hosts' / host / 'host.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key_lc, name_lc, data FROM reg_value WHERE key_lc IN (?, ?)",
                          (EXCHANGE_POLICY_LC, EXCHANGE_SERVICE_LC)).fetchall()
    finally:
        db.close()
    return {("exchangeconn" if k == EXCHANGE_POLICY_LC else "disabled") if n in ("exchangeconn", "disabled") else n: d
            for k, n, d in rows}


def test_clients_switched_off_exchange_im_get_it_back_and_lose_it_again_on_the_next_move(tmp_path) -> None:
    sc = make_scenario(tmp_path, "gradual.yml", 8, clients=8, users_per_client=1, contacts=10)
    users = sc.manifest["users"]
    first = [a for a, u in users.items() if u["wave"] == WAVE]
    only = sorted(h for h in {c for a in first for c in users[a]["clients"]}
                  if all(u["wave"] == WAVE for u in users.values() if h in u["clients"]))
    assert only, "the lab has no machine used by wave1 alone"
    moved = sc.apply("--limit", f"wave:{WAVE}")
    assert moved.code == 0, moved.out[-3000:]
    off = {"disabled": 1}
    assert all(_exchange_policy(sc, h) == off for h in only)  # gradual.yml switched them off Exchange IM
    # `runner lab verify --wave wave1 --signin` checks wave1's clients only: the other waves'
    # machines, not pointed at LCS yet, are not its business
    moved_check = verify(sc.lab_dir, waves=[WAVE], signin=True)
    assert moved_check.ok, [(u.alias, u.problems) for u in moved_check.users if not u.ok] + moved_check.problems
    assert not verify(sc.lab_dir, waves=[WAVE], rolled_back=True).ok, "moved, not rolled back"
    back = _rollback(sc, "--limit", f"wave:{WAVE}")
    assert back.code == 0, back.out[-3000:]
    assert all(_exchange_policy(sc, h) == {"exchangeconn": 0} for h in only)  # coexistence again
    # `--rolled-back`: back on Exchange IM, disabled on LCS, their clients' Exchange IM account on
    rolled = verify(sc.lab_dir, waves=[WAVE], rolled_back=True, signin=True)
    assert rolled.ok, [(u.alias, u.problems) for u in rolled.users if not u.ok] + rolled.problems
    plain = verify(sc.lab_dir, waves=[WAVE])
    assert {u.alias for u in plain.users if "not enabled on LCS" in u.problems} == set(first)
    again = sc.apply("--limit", f"wave:{WAVE}")
    assert again.code == 0, again.out[-3000:]
    assert all(_exchange_policy(sc, h) == off for h in only)
    check = verify(sc.lab_dir, waves=[WAVE], signin=True)
    assert check.ok, [(u.alias, u.problems) for u in check.users if not u.ok] + check.problems
    gone = verify(sc.lab_dir, waves=[WAVE], rolled_back=True, signin=True)
    assert {u.alias for u in gone.users if not u.ok} == set(first)
    assert {p.split(":")[0] for p in gone.problems} >= set(only), gone.problems


def _registry(sc: Scenario, host: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{sc.lab_dir / 'hosts' / host / 'host.db'}?mode=ro", uri=True)
    try:
        return sorted(db.execute("SELECT key_lc, name_lc, type, data FROM reg_value").fetchall(), key=repr)
    finally:
        db.close()


def test_rollback_without_limit_leaves_what_never_moved_alone(tmp_path) -> None:
    """Only wave1 moved; rollback.yml without --limit puts wave1 back and is a no-op for the
    rest: no never-migrated client pointed at LCS, no never-moved user "rolled back"."""
    sc = make_scenario(tmp_path, "gradual.yml", 8, clients=8, users_per_client=1, contacts=4)
    users = sc.manifest["users"]
    first = sorted(a for a, u in users.items() if u["wave"] == WAVE)
    others = sorted(set(users) - set(first))
    assert first and others
    moved = sc.apply("--limit", f"wave:{WAVE}")
    assert moved.code == 0, moved.out[-3000:]
    theirs = {c for a in first for c in users[a]["clients"]}
    untouched = sorted(set(sc.manifest["machines"]) - theirs)
    assert untouched, "every client belongs to wave1"
    before = {h: _registry(sc, h) for h in untouched}
    back = _rollback(sc)
    assert back.code == 0, back.out[-3000:]
    changed = {(t["module"], t["target"]) for t in back.tasks if t["status"] == "changed"}
    assert {t for m, t in changed if m != "configure_messenger"} == set(first), changed
    assert {t for m, t in changed if m == "configure_messenger"} <= theirs, changed
    assert {h: _registry(sc, h) for h in untouched} == before, "a never-migrated client was changed"
    for alias in first:
        assert exchange_im_attributes(sc.lab_dir, alias), alias
    report = sc.runner("report", "--state", str(sc.state), "--json")
    assert report.code == 0, report.out[-2000:]
    stages = {u["user"]: u["stage_text"] for u in json.loads(report.out)["users"]}
    assert {a for a, s in stages.items() if s == "rolled back to Exchange IM"} == set(first), stages


def test_status_after_a_rollback_never_suggests_dropping_its_limit(rolled_back) -> None:
    """`runner status` after `rollback.yml --limit wave:wave1`: no "next ... without --limit"
    (which would roll back everyone); whatever command it shows keeps --limit wave:wave1."""
    sc = rolled_back["sc"]
    run = sc.runner("status", "--state", str(sc.state), "--json")
    assert run.code == 0, run.out[-2000:]
    backs = [r for r in json.loads(run.out)["runs"] if r["playbook"].endswith("rollback.yml") and r["latest"]]
    assert backs
    for back in backs:
        assert back["status"] == "ok" and back.get("rollback") is True, back
        assert not back.get("next_command") and back["remaining"] is None, back
        assert f"--limit wave:{WAVE}" in back["again_command"], back
    text = sc.runner("status", "--state", str(sc.state)).out
    blocks = [b for b in text.split("\nrun ") if "  playbook " in b
              and b.split("  playbook ", 1)[1].split("\n", 1)[0].endswith("rollback.yml")]
    assert blocks, text
    for block in blocks:
        assert "without --limit" not in block and "next:" not in block, block
    assert any(f"--limit wave:{WAVE}" in b for b in blocks), blocks


def test_a_rollback_rerun_with_a_stale_state_directory_puts_the_users_back_again(tmp_path) -> None:
    """Moved and rolled back with state A, moved again with state B: the same rollback with
    state A (where it had finished) probes again instead of saying "done earlier"."""
    sc = make_scenario(tmp_path, "gradual.yml", 8, clients=8, users_per_client=1, contacts=4)
    users = sc.manifest["users"]
    first = sorted(a for a, u in users.items() if u["wave"] == WAVE)
    only = sorted(h for h in {c for a in first for c in users[a]["clients"]}
                  if all(u["wave"] == WAVE for u in users.values() if h in u["clients"]))
    assert sc.apply("--limit", f"wave:{WAVE}").code == 0
    assert _rollback(sc, "--limit", f"wave:{WAVE}").code == 0
    other = tmp_path / "state-b"
    moved = sc.runner("apply", str(PLAYBOOKS / "gradual.yml"), "-i", str(sc.inventory), "--state", str(other),
                      "--json", "--limit", f"wave:{WAVE}")
    assert moved.code == 0, moved.out[-3000:]
    assert_exchange_im_disabled(sc, first)
    back = _rollback(sc, "--limit", f"wave:{WAVE}")
    assert back.code == 0, back.out[-3000:]
    restored = {t["target"] for t in back.tasks if t["module"] == "restore_exchange_im" and t["status"] == "changed"}
    assert restored == set(first), [(t["module"], t["target"], t["status"], t.get("message")) for t in back.tasks]
    for alias in first:
        assert exchange_im_attributes(sc.lab_dir, alias), alias
        assert not lcs_user(sc.lab_dir, sc.manifest, alias).enabled, alias
    assert all(_exchange_policy(sc, h) == {"exchangeconn": 0} for h in only)
