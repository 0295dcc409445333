"""Shared helpers for the end-to-end scenario tests (tests/test_scenario_*.py).

The end state is checked against the lab's ``manifest.json`` independently
of the runner: LCS is read from ``lcs.db`` and the directory from ``ad.db``
with plain sqlite3, and the documented mapping rule (DOMAIN.md "Mapping
contacts": exact table, then an inventory user's own SIP URI, then domain
map + template) is applied here, not through runner.lcs or
runner.lab.verify, so a bug in either cannot hide itself.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from runner.cli import run as cli_run
from runner.lab.generator import generate
from runner.lab.store import Lab

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "playbooks"
COEXISTENCE_GROUP = "Exchange IM Contacts"
MAX_NAME = 256
MAX_GROUP_NAME = 128
IM_ATTRIBUTES = ("msexchimaddress", "msexchimphysicalurl", "msexchimmetaphysicalurl",
                 "msexchimvirtualserver", "msexchimacl")
_ADDR = re.compile(r"^([^@\s]+)@([^@\s]+)$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


# -- running the CLI ------------------------------------------------------------------

@dataclass
class Run:
    """One in-process ``runner`` invocation: exit code, stdout, and its JSON events if any."""

    code: int
    out: str
    started: float

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "task"]

    @property
    def totals(self) -> dict[str, int]:
        ends = [e for e in self.events if e.get("event") == "run_end"]
        assert ends, f"no run_end event in:\n{self.out[-2000:]}"
        return ends[-1]["totals"]


@dataclass
class Scenario:
    """A generated lab plus a state directory, driven through the CLI from ``root``."""

    root: Path
    playbook: str
    seed: int

    @property
    def lab_dir(self) -> Path:
        return self.root / "lab"

    @property
    def inventory(self) -> Path:
        return self.lab_dir / "inventory.yml"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def playbook_path(self) -> Path:
        return PLAYBOOKS / self.playbook

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.lab_dir / "manifest.json").read_text(encoding="utf-8"))

    def runner(self, *args: str) -> Run:
        """Run ``runner ARGS`` in-process with the working directory at ``root``."""
        buf = io.StringIO()
        old = os.getcwd()
        started = time.time()
        os.chdir(self.root)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                code = cli_run(list(args))
        finally:
            os.chdir(old)
        return Run(code, buf.getvalue(), started)

    def apply(self, *extra: str, playbook: str | None = None) -> Run:
        """``runner apply PLAYBOOK -i lab/inventory.yml --state state --json EXTRA``."""
        pb = str(PLAYBOOKS / playbook) if playbook else str(self.playbook_path)
        return self.runner("apply", pb, "-i", str(self.inventory), "--state", str(self.state), "--json", *extra)

    def mutations_since(self, ts: float) -> list[Any]:
        """Every mutating command any lab host ran from ``ts`` on (the lab journal)."""
        lab = Lab(self.lab_dir)
        out = []
        for name in lab.host_names():
            out.extend(lab.host(name).journal(since=ts))
        return out


def make_scenario(root: Path, playbook: str, seed: int, **params: int) -> Scenario:
    """Generate a small lab under ``root/lab`` for ``playbook``."""
    root.mkdir(parents=True, exist_ok=True)
    generate(root / "lab", clients=params.get("clients", 12), users_per_client=params.get("users_per_client", 2),
             contacts=params.get("contacts", 15), seed=seed)
    return Scenario(root, playbook, seed)


def migrated_scenario(root: Path, playbook: str, seed: int) -> tuple[Scenario, list[dict[str, Any]]]:
    """A lab for ``playbook`` migrated by one apply, which must succeed, and that run's task events."""
    sc = make_scenario(root, playbook, seed)
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    return sc, run.tasks


# -- the mapping rule, re-implemented from DOMAIN.md ---------------------------------------

def expected_uri(address: str, manifest: dict[str, Any]) -> str | None:
    """The SIP URI an Exchange IM address must become on LCS, None when unmappable."""
    rule = manifest["sip_mapping"]
    a = address.strip()
    m = _ADDR.match(a)
    if not m:
        return None
    table = {k.lower(): v for k, v in (rule.get("table") or {}).items()}
    users = {u["im_address"].lower(): u["sip_uri"] for u in manifest["users"].values()}
    uri = table.get(a.lower()) or users.get(a.lower())
    if uri is None:
        domains = {k.lower(): v for k, v in (rule.get("domains") or {}).items()}
        if m.group(2).lower() not in domains:
            return None
        uri = (rule.get("template") or "sip:{local}@{domain}").format(local=m.group(1),
                                                                      domain=domains[m.group(2).lower()])
    host = uri.split("@", 1)[1]
    if not all(_LABEL.match(label) for label in host.split(".")):
        return None
    return uri


@dataclass
class ExpectedContact:
    uri: str
    name: str = ""
    groups: set[str] = field(default_factory=set)


@dataclass
class ExpectedUser:
    """What one user must have on LCS after a contact-moving scenario."""

    alias: str
    contacts: dict[str, ExpectedContact] = field(default_factory=dict)  # casefolded URI -> contact
    unmappable: set[str] = field(default_factory=set)  # casefolded addresses
    groups: set[str] = field(default_factory=set)  # every group name the user had, as LCS can hold it


def expected_user(manifest: dict[str, Any], alias: str, *, coexistence: bool) -> ExpectedUser:
    """Union of the user's lists on all machines, mapped; display name = first non-empty
    in machine order (cut to 256); groups cut to 128; ungrouped contacts in the coexistence
    group when the scenario keeps one."""
    exp = ExpectedUser(alias)
    for machine in manifest["users"][alias]["machines"].values():
        members: dict[str, set[str]] = {}
        for group, addrs in machine.get("groups", {}).items():
            exp.groups.add(group[:MAX_GROUP_NAME])
            for a in addrs:
                members.setdefault(a.lower(), set()).add(group[:MAX_GROUP_NAME])
        for c in machine["contacts"]:
            uri = expected_uri(c["address"], manifest)
            if uri is None:
                exp.unmappable.add(c["address"].strip().casefold())
                continue
            entry = exp.contacts.setdefault(uri.casefold(), ExpectedContact(uri))
            if not entry.name and c["display_name"]:
                entry.name = c["display_name"][:MAX_NAME]
            entry.groups |= members.get(c["address"].lower(), set())
    if coexistence:
        for entry in exp.contacts.values():
            if not entry.groups:
                entry.groups.add(COEXISTENCE_GROUP)
                exp.groups.add(COEXISTENCE_GROUP)
    return exp


# -- reading the lab's stores directly ------------------------------------------------------

def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@dataclass
class LcsUser:
    primary_uri: str | None
    enabled: bool
    contacts: list[tuple[str, str, set[str]]]  # (sip_uri, name, group names)
    groups: list[str]


def lcs_limit(lab_dir: Path, manifest: dict[str, Any]) -> int:
    db = _ro(lab_dir / "hosts" / manifest["lcs_server"] / "lcs.db")
    try:
        row = db.execute("SELECT value FROM pool_settings WHERE name='MaxContactsPerUser'").fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 150


def lcs_user(lab_dir: Path, manifest: dict[str, Any], alias: str) -> LcsUser:
    """The user's row, contacts and groups in the LCS pool's SQLite store."""
    guid = manifest["users"][alias]["ad_guid"].upper()
    db = _ro(lab_dir / "hosts" / manifest["lcs_server"] / "lcs.db")
    try:
        row = db.execute("SELECT primary_uri, enabled FROM users WHERE upper(instance_id)=?", (guid,)).fetchone()
        groups = dict(db.execute("SELECT group_id, name FROM contact_groups WHERE upper(user_instance_id)=?",
                                 (guid,)).fetchall())
        contacts = [(uri, name or "", {groups.get(int(g), f"?{g}") for g in (ids or "").split()})
                    for uri, name, ids in db.execute(
                        "SELECT sip_uri, name, group_ids FROM contacts WHERE upper(user_instance_id)=?", (guid,))]
    finally:
        db.close()
    return LcsUser(row[0] if row else None, bool(row and row[1]), contacts, list(groups.values()))


def lcs_contact_count(lab_dir: Path, manifest: dict[str, Any]) -> int:
    db = _ro(lab_dir / "hosts" / manifest["lcs_server"] / "lcs.db")
    try:
        return db.execute("SELECT count(*) FROM contacts").fetchone()[0]
    finally:
        db.close()


def lcs_dump(lab_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Every row of the LCS store, to prove a run changed nothing."""
    db = _ro(lab_dir / "hosts" / manifest["lcs_server"] / "lcs.db")
    try:
        return list(db.iterdump())
    finally:
        db.close()


def exchange_im_attributes(lab_dir: Path, alias: str) -> list[str]:
    """The msExchIM* attribute names the user's AD object still carries."""
    db = _ro(lab_dir / "ad.db")
    try:
        dns = [r[0] for r in db.execute("SELECT dn FROM attrs WHERE name='sAMAccountName' AND value=?", (alias,))]
        assert len(dns) == 1, f"{alias}: {len(dns)} AD objects"
        return sorted({r[0] for r in db.execute("SELECT name FROM attrs WHERE dn=?", (dns[0],))
                       if r[0].lower() in IM_ATTRIBUTES})
    finally:
        db.close()


def exchange_server_state(lab_dir: Path, manifest: dict[str, Any]) -> tuple[tuple[str, str] | None, int]:
    """((state, start type) of the IM service or None, number of IM virtual servers in AD)."""
    h = _ro(lab_dir / "hosts" / manifest["exchange_server"] / "host.db")
    try:
        svc = h.execute("SELECT state, start_type FROM service WHERE name_lc='msexchangeim'").fetchone()
    finally:
        h.close()
    db = _ro(lab_dir / "ad.db")
    try:
        vs = db.execute("SELECT count(*) FROM attrs WHERE name='objectClass' "
                        "AND lower(value)='protocolcfgimvirtualserver'").fetchone()[0]
    finally:
        db.close()
    return (tuple(svc) if svc else None), vs


# -- assertions ---------------------------------------------------------------------------

def reported(tasks: Iterable[dict[str, Any]], alias: str) -> tuple[set[str], set[str]]:
    """(unmappable addresses, over-limit URIs), casefolded, that the run's import_contacts
    results reported for ``alias`` (data and warnings)."""
    unmappable: set[str] = set()
    over: set[str] = set()
    for t in tasks:
        if t.get("module") != "import_contacts" or t.get("target") != alias:
            continue
        data = t.get("data") or {}
        unmappable |= {u["address"].strip().casefold() for u in data.get("unmappable", [])}
        over |= {c["uri"].casefold() for c in data.get("over_limit", [])}
        for w in t.get("warnings", []):
            m = re.match(r"contact (\S+) not imported: over the server's limit", w)
            if m:
                over.add(m.group(1).casefold())
    return unmappable, over


def assert_enabled_on_lcs(sc: Scenario, aliases: Iterable[str]) -> None:
    man = sc.manifest
    for alias in aliases:
        u = lcs_user(sc.lab_dir, man, alias)
        assert u.enabled, f"{alias} not enabled on LCS"
        assert (u.primary_uri or "").lower() == man["users"][alias]["sip_uri"].lower(), alias


def assert_contacts_moved(sc: Scenario, aliases: Iterable[str], tasks: list[dict[str, Any]], *,
                          coexistence: bool) -> dict[str, int]:
    """Every mappable contact once, with its name and groups; the rest reported. Returns
    counters of what the lab exercised (so a test can show it covered the hard cases)."""
    man = sc.manifest
    limit = lcs_limit(sc.lab_dir, man)
    seen = Counter()
    for alias in aliases:
        exp = expected_user(man, alias, coexistence=coexistence)
        got = lcs_user(sc.lab_dir, man, alias)
        keys = Counter(uri.casefold() for uri, _, _ in got.contacts)
        dups = [k for k, n in keys.items() if n > 1]
        assert not dups, f"{alias}: duplicated on LCS: {dups}"
        extra = set(keys) - set(exp.contacts)
        assert not extra, f"{alias}: contacts on LCS that were never on Exchange IM: {sorted(extra)}"
        missing = set(exp.contacts) - set(keys)
        unmappable, over = reported(tasks, alias)
        if len(exp.contacts) > limit:
            seen["over_limit_users"] += 1
            assert len(keys) == limit, f"{alias}: {len(keys)} contacts on LCS, limit {limit}"
            assert missing <= over, f"{alias}: over-limit contacts not reported: {sorted(missing - over)}"
        else:
            assert not missing, f"{alias}: missing on LCS: {sorted(missing)}"
        assert exp.unmappable <= unmappable, \
            f"{alias}: unmappable contacts not reported: {sorted(exp.unmappable - unmappable)}"
        seen["unmappable"] += len(exp.unmappable)
        for uri, name, groups in got.contacts:
            want = exp.contacts[uri.casefold()]
            assert name == want.name, f"{alias}: {uri} is named {name!r}, expected {want.name!r}"
            assert groups == want.groups, f"{alias}: {uri} in groups {groups}, expected {want.groups}"
            seen["long_names"] += len(want.name) == MAX_NAME
            seen["grouped"] += bool(groups)
        assert exp.groups <= set(got.groups), f"{alias}: groups missing on LCS: {exp.groups - set(got.groups)}"
        seen["long_groups"] += any(len(g) == MAX_GROUP_NAME for g in exp.groups)
        seen["multi_machine"] += len(man["users"][alias]["machines"]) > 1 and bool(exp.contacts)
        seen["contacts"] += len(keys)
    return dict(seen)


def assert_exchange_im_disabled(sc: Scenario, aliases: Iterable[str]) -> None:
    for alias in aliases:
        left = exchange_im_attributes(sc.lab_dir, alias)
        assert not left, f"{alias} still has Exchange IM attributes {left}"


def assert_decommissioned(sc: Scenario) -> None:
    svc, vs = exchange_server_state(sc.lab_dir, sc.manifest)
    assert svc is None or svc == ("STOPPED", "DISABLED"), f"Exchange IM service is {svc}"
    assert vs == 0, f"{vs} IM virtual server(s) left in AD"


def assert_idempotent(sc: Scenario, *extra: str) -> Run:
    """Another apply (``extra`` e.g. --fresh) changes nothing: changed=0, no failures,
    no mutating command on any host, the LCS store byte-for-byte the same."""
    before = lcs_dump(sc.lab_dir, sc.manifest)
    run = sc.apply(*extra)
    assert run.code == 0, run.out[-3000:]
    assert run.totals["changed"] == 0, [(t["step"], t["target"], t["message"]) for t in run.tasks
                                        if t["status"] == "changed"]
    assert run.totals["failed"] == 0
    mutations = sc.mutations_since(run.started)
    assert not mutations, [(m.host, m.command) for m in mutations]
    assert lcs_dump(sc.lab_dir, sc.manifest) == before
    return run
