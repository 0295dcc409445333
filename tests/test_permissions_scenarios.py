"""Allow and block lists moved end to end in the three contact-moving scenarios, on generated labs.

The expected LCS entries are computed here from the manifest's seeded entries (the mapping
rule of scenario_support plus the SIP user-part rule, not runner.lcs nor runner.lab.verify),
and compared with the pool's ``user_aces`` table read with plain sqlite3. Every seeded
msExchIMACL value must either have become an LCS entry or be reported as unmappable by
import_permissions; a second apply changes nothing; an entry a user set on LCS is kept;
Exchange IM is not disabled for a user whose list is not verified, or changed since.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from runner.lab.generator import MALFORMED_ACES
from runner.lab.verify import verify as lab_verify
from scenario_support import (Scenario, assert_idempotent, exchange_im_attributes, expected_uri, make_scenario)

pytestmark = pytest.mark.slow

SEED = 4
_USER_PART = re.compile(r"^(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+$")


def _uri(address: str, manifest: dict[str, Any]) -> str | None:
    uri = expected_uri(address, manifest)
    if uri is None or not _USER_PART.match(uri[4:].rsplit("@", 1)[0]):
        return None
    return uri


def expected_entries(manifest: dict[str, Any], alias: str) -> tuple[dict[tuple[str, str], tuple[str, str]], set[str]]:
    """{(type, mask): (presence, communication)} the user must have on LCS, and the ACL
    principals (as msExchIMACL spells them) that map to nothing."""
    domains = {k.lower(): v.lower() for k, v in manifest["sip_mapping"].get("domains", {}).items()}
    out: dict[tuple[str, str], tuple[str, str]] = {}
    unmapped: set[str] = set()
    for e in manifest["users"][alias]["permissions"]["entries"]:
        rights = (e["presence"], e["communication"])
        if e["type"] == "All":
            out[("all", "")] = rights
        elif e["type"] == "Domain":
            if e["domain"] in domains:
                out[("domain", domains[e["domain"]])] = rights
            else:
                unmapped.add(e["domain"])
        else:
            host, alias_part = e["url"].split("/")[2], e["url"].rsplit("/", 1)[1]
            uri = _uri(f"{unquote(alias_part)}@{host}", manifest)
            if uri is None:
                unmapped.add(e["url"])
            else:
                out[("user", uri.lower())] = rights
    return out, unmapped


def lcs_entries(sc: Scenario, alias: str) -> dict[tuple[str, str], tuple[str, str]]:
    m = sc.manifest
    db = sqlite3.connect(f"file:{sc.lab_dir / 'hosts' / m['lcs_server'] / 'lcs.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT type, mask, presence, communication FROM user_aces WHERE user_instance_id=?",
                          (m["users"][alias]["ad_guid"].upper(),)).fetchall()
    finally:
        db.close()
    return {(t.lower(), (mask or "").lower()): (p, c) for t, mask, p, c in rows}


def reported_unmappable(tasks: list[dict[str, Any]], alias: str) -> set[str]:
    out: set[str] = set()
    for t in tasks:
        if t.get("module") == "import_permissions" and t.get("target") == alias:
            out |= {u["value"] for u in (t.get("data") or {}).get("unmappable", [])}
    return out


def _principal(value: str) -> str:
    return value.strip()[1:-1].split(";", 5)[5].strip() if value.count(";") >= 5 else ""


def assert_permissions_moved(sc: Scenario, tasks: list[dict[str, Any]]) -> dict[str, int]:
    """Every user's LCS entries are exactly the expected ones; every ACL value is carried or reported."""
    seen = {"entries": 0, "unmappable": 0, "deny": 0, "domain": 0, "hostile": 0, "malformed": 0}
    for alias, u in sc.manifest["users"].items():
        want, unmapped = expected_entries(sc.manifest, alias)
        assert lcs_entries(sc, alias) == want, alias
        reported = reported_unmappable(tasks, alias)
        for value in u["permissions"]["acl"]:
            p = _principal(value)
            carried = p and p not in unmapped and not (p.lower() == "wd" and ("all", "") not in want)
            if not carried or value in MALFORMED_ACES:
                assert value in reported, (alias, value, reported)
        seen["entries"] += len(want)
        seen["unmappable"] += len(reported)
        seen["deny"] += sum(1 for r in want.values() if "Deny" in r)
        seen["domain"] += sum(1 for k in want if k[0] == "domain")
        seen["hostile"] += sum(1 for k in want if "'" in k[1] or "&" in k[1])
        seen["malformed"] += sum(1 for v in u["permissions"]["acl"] if v in MALFORMED_ACES)
    return seen


def _verified(tasks: list[dict[str, Any]]) -> dict[str, bool]:
    return {t["target"]: bool((t.get("data") or {}).get("verified")) for t in tasks
            if t.get("module") == "verify_permissions"}


@pytest.fixture(scope="module", params=["immediate.yml", "gradual.yml", "gradual-deferred.yml"])
def migrated(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, list[dict[str, Any]]]:
    sc = make_scenario(tmp_path_factory.mktemp(request.param.split(".")[0]), request.param, SEED)
    tasks: list[dict[str, Any]] = []
    if request.param == "gradual-deferred.yml":
        for wave in sorted({u["wave"] for u in sc.manifest["users"].values()}):
            run = sc.apply("--limit", f"wave:{wave}", "--tags", "wave")
            assert run.code == 0, run.out[-3000:]
            assert not any(t["module"] == "import_permissions" for t in run.tasks)
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    return sc, tasks + run.tasks


def test_permissions_are_migrated_verified_and_reported(migrated) -> None:
    sc, tasks = migrated
    seen = assert_permissions_moved(sc, tasks)
    # the lab exercised the awkward cases, so the checks meant something
    assert seen["entries"] > 20 and seen["unmappable"] > 0 and seen["deny"] > 0 and seen["domain"] > 0
    assert seen["hostile"] > 0 and seen["malformed"] > 0
    verified = _verified(tasks)
    assert set(verified) == set(sc.manifest["users"]) and all(verified.values())
    for alias in sc.manifest["users"]:
        assert exchange_im_attributes(sc.lab_dir, alias) == [], alias
    rep = lab_verify(sc.lab_dir)
    assert rep.ok, [(u.alias, u.problems) for u in rep.users if u.problems] + rep.problems
    assert sum(u.permissions_expected for u in rep.users) == seen["entries"]
    report = sc.runner("report", "--state", str(sc.state), "--format", "csv")
    assert report.code == 0 and "permissions_unmappable" in report.out.splitlines()[0]


def test_permissions_second_apply_and_fresh_apply_change_nothing(migrated) -> None:
    sc, _ = migrated
    assert_idempotent(sc)
    run = assert_idempotent(sc, "--fresh")
    # after Exchange IM was disabled the list comes from the record the import kept
    imports = [t for t in run.tasks if t["module"] == "import_permissions"]
    assert imports and all(t["status"] == "ok" for t in imports)
    assert all((t.get("data") or {}).get("source") in ("artifact", "none") for t in imports)


def _add_ace(sc: Scenario, alias: str, typ: str, mask: str, presence: str, communication: str) -> None:
    m = sc.manifest
    db = sqlite3.connect(sc.lab_dir / "hosts" / m["lcs_server"] / "lcs.db")
    try:
        db.execute("INSERT OR REPLACE INTO user_aces VALUES (?,?,?,?,?)",
                   (m["users"][alias]["ad_guid"].upper(), typ, mask, presence, communication))
        db.commit()
    finally:
        db.close()


def test_entries_users_set_on_lcs_before_the_import_are_kept(tmp_path: Path) -> None:
    """Set union: after the waves (users on LCS, lists not imported yet) a user blocks someone on
    LCS and changes an entry the import would create; the import adds the rest and keeps both."""
    sc = make_scenario(tmp_path, "gradual-deferred.yml", SEED)
    for wave in sorted({u["wave"] for u in sc.manifest["users"].values()}):
        assert sc.apply("--limit", f"wave:{wave}", "--tags", "wave").code == 0
    alias, want = next((a, expected_entries(sc.manifest, a)[0]) for a in sc.manifest["users"]
                       if len(expected_entries(sc.manifest, a)[0]) >= 2)
    (typ, mask), (presence, communication) = sorted(want.items())[0]
    flipped = ("Deny" if presence == "Allow" else "Allow", communication)
    _add_ace(sc, alias, typ.capitalize(), mask, *flipped)
    _add_ace(sc, alias, "User", "sip:stalker@contoso.com", "Deny", "Deny")
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    have = lcs_entries(sc, alias)
    assert have[(typ, mask)] == flipped
    assert have[("user", "sip:stalker@contoso.com")] == ("Deny", "Deny")
    assert {k: v for k, v in have.items() if k != (typ, mask) and k[1] != "sip:stalker@contoso.com"} == \
        {k: v for k, v in want.items() if k != (typ, mask)}
    mine = {t["module"]: t for t in run.tasks if t["target"] == alias}
    assert any("kept as set on LCS" in w for w in mine["import_permissions"]["warnings"])
    assert mine["verify_permissions"]["status"] == "ok" and mine["disable_exchange_im"]["status"] == "changed"


def test_exchange_im_is_not_disabled_for_an_unverified_or_changed_list(tmp_path: Path) -> None:
    sc = make_scenario(tmp_path, "immediate.yml", SEED)
    with_acl = [a for a, u in sc.manifest["users"].items() if u["permissions"]["acl"]]
    without = [a for a, u in sc.manifest["users"].items() if not u["permissions"]["acl"]]
    assert with_acl and without
    # a playbook that forgets verify_permissions: the users with a list stay on Exchange IM
    text = sc.playbook_path.read_text(encoding="utf-8")
    forgetful = tmp_path / "forgetful.yml"
    forgetful.write_text(re.sub(r"\n    - name: Verify allow and block lists on LCS\n(      .*\n)+", "\n", text),
                         encoding="utf-8")
    assert "verify_permissions" not in forgetful.read_text(encoding="utf-8")
    run = sc.runner("apply", str(forgetful), "-i", str(sc.inventory), "--state", str(tmp_path / "st1"), "--json")
    assert run.code == 2, run.out[-3000:]
    disabled = {t["target"]: t for t in run.tasks if t["module"] == "disable_exchange_im"}
    for a in with_acl:
        assert disabled[a]["status"] == "failed" and "verify_permissions has not passed" in disabled[a]["message"]
        assert "msExchIMACL" in exchange_im_attributes(sc.lab_dir, a)
    assert all(disabled[a]["status"] == "changed" for a in without)


def test_a_list_changed_after_its_verification_is_not_cleared(tmp_path: Path) -> None:
    sc = make_scenario(tmp_path, "immediate.yml", SEED)
    run = sc.apply("--skip-tags", "exchange")
    assert run.code == 0, run.out[-3000:]
    alias = next(a for a, u in sc.manifest["users"].items() if u["permissions"]["acl"])
    db = sqlite3.connect(sc.lab_dir / "ad.db")
    try:
        dn = db.execute("SELECT dn FROM attrs WHERE name='sAMAccountName' AND value=?", (alias,)).fetchone()[0]
        db.execute("INSERT INTO attrs (dn, name, value) VALUES (?, 'msExchIMACL', ?)",
                   (dn, "(D;;PRST;;;http://im.contoso.com/instmsg/aliases/newcomer)"))
        db.commit()
    finally:
        db.close()
    run = sc.apply()
    assert run.code == 2, run.out[-3000:]
    mine = next(t for t in run.tasks if t["module"] == "disable_exchange_im" and t["target"] == alias)
    assert mine["status"] == "failed" and "changed since verify_permissions passed" in mine["message"], mine
    assert "msExchIMACL" in exchange_im_attributes(sc.lab_dir, alias)
    # a new night imports and verifies the changed list, then disables
    run = sc.apply("--fresh")
    assert run.code == 0, run.out[-3000:]
    assert ("user", "sip:newcomer@contoso.com") in lcs_entries(sc, alias)
    assert exchange_im_attributes(sc.lab_dir, alias) == []
