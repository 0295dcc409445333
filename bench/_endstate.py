"""The end state of a migrated lab and its state directory, read straight from the stores,
and how two such states differ (used by bench/stress_kill.py and its test).

Nothing here goes through the runner or ``runner lab verify``: the LCS pool
(``hosts/<lcs>/lcs.db``), AD (``ad.db``), every host's ``host.db`` and ``fs/``
and the runner's ``state.db``, ``artifacts/`` and ``outbox/`` are opened with
sqlite3 and plain file reads (docs/lab-storage.md describes them), so a bug
in the runner's probes or in verify cannot hide itself.

A snapshot is ``{category: {subject: value}}`` with JSON-able values compared
with ``==``; timestamps and other things that legitimately differ between two
runs (creation times, LCS group ids, installer log contents, the journal, fault
counters) are left out. Users are named by their alias (looked up by AD GUID in
the manifest), hosts by name. :func:`compare` lists what differs between a
snapshot and a reference; :func:`invariants` lists what no finished migration
may show whatever the reference says (an LCS user without its AD attributes, a
Messenger 5.1 binary without its registered product, a hive left loaded under
the runner's temporary name, a runner scratch file left in a Temp folder, an
artifact whose file does not match its recorded sha256).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from runner.lab.binaries import read_version_info

UNINSTALL = "software\\microsoft\\windows\\currentversion\\uninstall"
#: AD attributes the migration touches (the brief's "msExchIM*, msRTCSIP-*, proxyAddresses").
AD_PREFIXES = ("msexchim", "msrtcsip-", "proxyaddresses")
#: The upgrade step's own installer log: kept on purpose (runner-wm51.log), compared by presence only.
KEPT_LOGS = (".log",)
MESSENGER_EXE = "msmsgs.exe"


@dataclass(frozen=True)
class Discrepancy:
    """One thing that differs from what an uninterrupted run (or any finished run) leaves."""

    lab: str
    playbook: str
    category: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.lab} {self.playbook} [{self.category}] {self.subject}: {self.detail}"


def _ro(path: Path) -> sqlite3.Connection:
    """A read-only connection (WAL databases are read with their -wal, nothing is written)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _text(v: Any) -> Any:
    return v.hex() if isinstance(v, (bytes, memoryview)) else v


# -- the lab ------------------------------------------------------------------

def _lcs(lab: Path, man: dict[str, Any], by_guid: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"lcs.user": {}, "lcs.contacts": {}, "lcs.groups": {}, "lcs.aces": {}}
    db = _ro(lab / "hosts" / man["lcs_server"] / "lcs.db")
    try:
        for iid, dn, name, uri, enabled, home, target in db.execute(
                "SELECT instance_id, user_dn, display_name, primary_uri, enabled, home_server_dn,"
                " target_server_dn FROM users"):
            who = by_guid.get(iid.upper(), iid)
            out["lcs.user"][who] = {"user_dn": dn, "display_name": name, "primary_uri": uri,
                                    "enabled": bool(enabled), "home_server_dn": home, "target_server_dn": target}
        names: dict[tuple[str, int], str] = {}
        groups: dict[str, list[list[Any]]] = {}
        for iid, gid, name, url in db.execute(
                "SELECT user_instance_id, group_id, name, external_url FROM contact_groups"):
            names[(iid.upper(), gid)] = name
            groups.setdefault(by_guid.get(iid.upper(), iid), []).append([name, url])
        out["lcs.groups"] = {k: sorted(v) for k, v in groups.items()}
        contacts: dict[str, list[list[Any]]] = {}
        for iid, uri, name, url, sub, gids in db.execute(
                "SELECT user_instance_id, sip_uri, name, external_url, subscribed, group_ids FROM contacts"):
            gnames = sorted(names.get((iid.upper(), int(g)), f"#{g}") for g in str(gids or "").split() if g)
            contacts.setdefault(by_guid.get(iid.upper(), iid), []).append(
                [uri.casefold(), name, url, bool(sub), gnames])
        out["lcs.contacts"] = {k: sorted(v) for k, v in contacts.items()}
        aces: dict[str, list[list[Any]]] = {}
        try:
            rows = db.execute("SELECT user_instance_id, type, mask, presence, communication FROM user_aces").fetchall()
        except sqlite3.OperationalError:  # a pool store from before allow and block lists
            rows = []
        for iid, typ, mask, presence, communication in rows:
            aces.setdefault(by_guid.get(iid.upper(), iid), []).append([typ, (mask or "").casefold(), presence,
                                                                        communication])
        out["lcs.aces"] = {k: sorted(v) for k, v in aces.items()}
    finally:
        db.close()
    return out


def _ad(lab: Path, by_guid: dict[str, str]) -> dict[str, dict[str, Any]]:
    users: dict[str, dict[str, list[Any]]] = {}
    objects: dict[str, dict[str, list[Any]]] = {}
    db = _ro(lab / "ad.db")
    try:
        attrs: dict[str, dict[str, list[Any]]] = {}
        for dn, name, value in db.execute("SELECT dn, name, value FROM attrs"):
            attrs.setdefault(dn.lower(), {}).setdefault(name.lower(), []).append(_text(value))
        alive = {dn.lower() for (dn,) in db.execute("SELECT dn FROM objects")}
    finally:
        db.close()
    for dn in sorted(set(attrs) | alive):
        a = {k: sorted(map(str, v)) for k, v in attrs.get(dn, {}).items()}
        guid = a.get("objectguid")
        who = None
        if guid:
            try:
                who = by_guid.get("{" + str(uuid.UUID(bytes_le=bytes.fromhex(guid[0]))).upper() + "}")
            except ValueError:
                who = None
        if who is not None:
            users[who] = {k: v for k, v in a.items() if k.startswith(AD_PREFIXES)}
            rest = {k: v for k, v in a.items() if not k.startswith(AD_PREFIXES)}
            objects[dn] = rest
        else:
            objects[dn] = a
    return {"ad.user": users, "ad.object": objects}


def _registry(db: sqlite3.Connection) -> dict[str, dict[str, list[Any]]]:
    keys: dict[str, dict[str, list[Any]]] = {p: {} for (p,) in db.execute("SELECT path_lc FROM reg_key")}
    for key, name, type_, data in db.execute("SELECT key_lc, name, type, data FROM reg_value"):
        keys.setdefault(key, {})[name] = [type_, _text(data)]
    return keys


def _files(root: Path) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """(files by relative path -> sha256, files in any Temp folder, msmsgs.exe path -> FileVersion).
    User hives (SQLite) are read as registries elsewhere, not compared byte for byte."""
    files: dict[str, str] = {}
    temp: list[str] = []
    exes: dict[str, str] = {}
    if not root.is_dir():
        return files, temp, exes
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        low = rel.lower()
        if p.name.startswith(".lab-"):  # the lab's own half-written file: no listing on the host shows it
            continue
        if low.rsplit("/", 1)[-1].startswith("ntuser.dat"):
            continue
        if "/temp/" in f"/{low}":  # compared by presence only (host.temp): logs carry clock times
            temp.append(rel)
            continue
        files[rel] = _sha(p)
        if low.endswith("/" + MESSENGER_EXE):
            info = read_version_info(p.read_bytes()) or {}
            exes[rel] = str(info.get("FileVersion", ""))
    return files, temp, exes


def _hosts(lab: Path) -> dict[str, dict[str, Any]]:
    cats = ("host.products", "host.uninstall", "host.hklm", "host.hives", "host.services", "host.processes",
            "host.files", "host.temp", "host.messenger", "host.user_hives")
    out: dict[str, dict[str, Any]] = {c: {} for c in cats}
    for hdir in sorted((lab / "hosts").iterdir()):
        h = hdir.name
        db_path = hdir / "host.db"
        if db_path.exists():
            db = _ro(db_path)
            try:
                out["host.products"][h] = sorted(list(r) for r in db.execute(
                    "SELECT code_lc, name, version, publisher FROM product"))
                reg = _registry(db)
                out["host.uninstall"][h] = {k: v for k, v in reg.items() if k.startswith(UNINSTALL + "\\")}
                out["host.hklm"][h] = {k: v for k, v in reg.items() if not k.startswith(UNINSTALL + "\\")}
                out["host.hives"][h] = sorted(list(r) for r in db.execute(
                    "SELECT name, file, in_use FROM hive_mount"))
                out["host.services"][h] = sorted(list(r) for r in db.execute(
                    "SELECT name, state, start_type FROM service"))
                out["host.processes"][h] = sorted(r[0] for r in db.execute("SELECT name FROM process"))
            finally:
                db.close()
        files, temp, exes = _files(hdir / "fs")
        out["host.files"][h] = files
        out["host.temp"][h] = temp
        out["host.messenger"][h] = exes
        for hive in sorted(hdir.glob("fs/*/Documents and Settings/*/NTUSER.DAT")):
            hdb = _ro(hive)
            try:
                digest = hashlib.sha256(json.dumps(_registry(hdb), sort_keys=True, default=str).encode()).hexdigest()
            finally:
                hdb.close()
            out["host.user_hives"][f"{h}/{hive.parent.name}"] = digest
    return out


# -- the state directory ---------------------------------------------------------

def _state(state: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"state.artifacts": {}, "state.files": {}, "outbox": {}}
    db_path = state / "state.db"
    if db_path.exists():
        db = _ro(db_path)
        try:
            for name, sha in db.execute(
                    "SELECT name, sha256 FROM artifacts a WHERE id=(SELECT MAX(id) FROM artifacts b"
                    " WHERE b.name=a.name)"):
                out["state.artifacts"][name] = sha
        finally:
            db.close()
    art = state / "artifacts"
    if art.is_dir():  # files nobody recorded (a write cut short leaves its .tmp) differ from a clean run
        out["state.files"] = {"artifacts": sorted(p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file())}
    box = state / "outbox"
    if box.is_dir():
        for p in sorted(box.iterdir()):
            if p.is_file():
                out["outbox"][p.name] = _sha(p)
    return out


def report_warnings(report: dict[str, Any]) -> dict[str, list[str]]:
    """``runner report --json`` as ``{"target | step": sorted warnings}``."""
    out: dict[str, list[str]] = {}
    for e in report.get("entries") or []:
        out.setdefault(f"{e['target']} | {e['step']}", []).extend(e.get("warnings") or [])
    return {k: sorted(v) for k, v in out.items()}


def snapshot(lab: Path, state: Path, report: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Everything a finished migration leaves in ``lab`` and ``state`` (see the module docstring);
    ``report`` is the parsed ``runner report --json`` of the run, when there is one."""
    lab, state = Path(lab), Path(state)
    man = json.loads((lab / "manifest.json").read_text(encoding="utf-8"))
    by_guid = {u["ad_guid"].upper(): alias for alias, u in man["users"].items()}
    snap: dict[str, dict[str, Any]] = {}
    snap.update(_lcs(lab, man, by_guid))
    snap.update(_ad(lab, by_guid))
    snap.update(_hosts(lab))
    snap.update(_state(state))
    if report is not None:
        snap["report"] = report_warnings(report)
    return snap


# -- differences -------------------------------------------------------------------

def _describe(got: Any, want: Any, limit: int = 4) -> str:
    """A short account of how ``got`` differs from ``want``."""
    def show(items: Iterable[Any]) -> str:
        items = list(items)
        text = "; ".join(json.dumps(i, ensure_ascii=False, default=str)[:160] for i in items[:limit])
        return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")

    if want is None:
        return f"present only here: {show([got])}"
    if got is None:
        return f"missing (reference has {show([want])})"
    if isinstance(got, dict) and isinstance(want, dict):
        parts = []
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        changed = [k for k in want if k in got and got[k] != want[k]]
        if missing:
            parts.append(f"missing {show(missing)}")
        if extra:
            parts.append(f"extra {show(extra)}")
        for k in changed[:limit]:
            parts.append(f"{k}: {show([got[k]])} instead of {show([want[k]])}")
        if len(changed) > limit:
            parts.append(f"(+{len(changed) - limit} more changed)")
        return ", ".join(parts)
    if isinstance(got, list) and isinstance(want, list):
        g = [json.dumps(x, sort_keys=True, default=str) for x in got]
        w = [json.dumps(x, sort_keys=True, default=str) for x in want]
        missing = [json.loads(x) for x in w if x not in g]
        extra = [json.loads(x) for x in g if x not in w]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {show(missing)}")
        if extra:
            parts.append(f"{len(extra)} extra: {show(extra)}")
        if not parts:
            parts.append(f"same items, other multiplicity ({len(got)} vs {len(want)})")
        return ", ".join(parts)
    return f"{show([got])} instead of {show([want])}"


#: A difference in these categories is already told by the invariant named (same host): not repeated.
EXPLAINED_BY = {"host.temp": "invariant.temp", "host.hives": "invariant.hive"}


def compare(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]], *, lab: str, playbook: str,
            explained: Iterable[Discrepancy] = ()) -> list[Discrepancy]:
    """What differs between snapshot ``got`` and the reference ``want``, one entry per category and
    subject; differences ``explained`` by an invariant's finding (EXPLAINED_BY) are left out."""
    told = {(d.category, d.subject) for d in explained}
    out = []
    for cat in sorted(set(got) | set(want)):
        g, w = got.get(cat, {}), want.get(cat, {})
        for subject in sorted(set(g) | set(w)):
            if (EXPLAINED_BY.get(cat), subject) in told:
                continue
            if g.get(subject) != w.get(subject):
                out.append(Discrepancy(lab, playbook, cat, subject, _describe(g.get(subject), w.get(subject))))
    return out


def _ci_has(values: list[Any], want: str) -> bool:
    return any(str(v).lower() == want.lower() for v in values)


def invariants(snap: dict[str, dict[str, Any]], state: Path, *, lab: str, playbook: str) -> list[Discrepancy]:
    """What no finished migration may show, reference or not (see the module docstring)."""
    out: list[Discrepancy] = []

    def bad(cat: str, subject: str, detail: str) -> None:
        out.append(Discrepancy(lab, playbook, cat, subject, detail))

    ad = snap.get("ad.user", {})
    for who, u in sorted(snap.get("lcs.user", {}).items()):
        a = ad.get(who, {})
        want = {"msrtcsip-primaryuseraddress": [u["primary_uri"]],
                "msrtcsip-userenabled": ["TRUE" if u["enabled"] else "FALSE"],
                "msrtcsip-primaryhomeserver": [u["home_server_dn"]]}
        wrong = [f"{k}={a.get(k)}" for k, v in want.items() if [str(x).lower() for x in a.get(k, [])]
                 != [str(x).lower() for x in v]]
        if not _ci_has(a.get("proxyaddresses", []), u["primary_uri"]):
            wrong.append(f"proxyAddresses lacks {u['primary_uri']}")
        if wrong:
            bad("invariant.lcs-ad", who, "enabled on LCS but AD has " + "; ".join(wrong))
    products = snap.get("host.products", {})
    uninstall = snap.get("host.uninstall", {})
    for host, exes in sorted(snap.get("host.messenger", {}).items()):
        codes = {p[0]: p for p in products.get(host, [])}
        keys = uninstall.get(host, {})
        for code, p in codes.items():
            key = keys.get(f"{UNINSTALL}\\{code}")
            if key is None or str((key.get("DisplayVersion") or [None, None])[1]) != p[2]:
                bad("invariant.product", host, f"product {p[1]} {p[2]} has no matching Uninstall key")
        for k, values in keys.items():
            code = k.rsplit("\\", 1)[-1]
            if (values.get("WindowsInstaller") or [None, None])[1] == 1 and code not in codes:
                bad("invariant.product", host, f"Uninstall key {code} without an installed product")
        for path, version in exes.items():
            if version.startswith("5.1") and not any(p[2] == version for p in codes.values()):
                bad("invariant.product", host, f"{path} is {version} but no product of that version is installed")
    for host, mounts in sorted(snap.get("host.hives", {}).items()):
        left = [m[0] for m in mounts if str(m[0]).lower().startswith("runner_")]
        if left:
            bad("invariant.hive", host, "hive(s) left loaded: " + ", ".join(left))
    for host, temp in sorted(snap.get("host.temp", {}).items()):
        left = [t.rsplit("/", 1)[-1] for t in temp if t.rsplit("/", 1)[-1].lower().startswith("runner-")
                and not t.lower().endswith(KEPT_LOGS)]
        if left:
            bad("invariant.temp", host, "runner scratch file(s) left: " + ", ".join(left))
    out.extend(artifact_integrity(state, lab=lab, playbook=playbook))
    return out


def artifact_integrity(state: Path, *, lab: str, playbook: str) -> list[Discrepancy]:
    """Every artifact row of state.db names a file whose sha256 and size are the recorded ones."""
    out: list[Discrepancy] = []
    db_path = Path(state) / "state.db"
    if not db_path.exists():
        return out
    db = _ro(db_path)
    try:
        rows = db.execute("SELECT name, path, sha256, size FROM artifacts ORDER BY id").fetchall()
    finally:
        db.close()
    for name, path, sha, size in rows:
        p = Path(path) if Path(path).is_absolute() else Path(state) / "artifacts" / path
        if not p.is_file():
            out.append(Discrepancy(lab, playbook, "invariant.artifact", name, f"file {path} is missing"))
            continue
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha or len(data) != size:
            out.append(Discrepancy(lab, playbook, "invariant.artifact", name,
                                   f"file {path} does not match its recorded sha256/size"))
    return out
