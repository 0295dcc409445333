"""export_contacts: export a user's Exchange IM contact list from every client they use.

Per client, one round trip reads ProfileList and ``reg query HKU``; then a
second exports the contact key: from ``HKU\\<SID>`` when the user is logged
on, else ``reg load HKU\\runner_<alias> "<profile>\\NTUSER.DAT"``, export,
and ``reg unload`` chained with ``&`` so the unload runs even when the
export fails, followed by ``reg query HKU`` to verify it (a leftover is
unloaded again, else the task fails). The .reg file is written to
``C:\\Windows\\Temp`` on the client, fetched with ``get`` and deleted.

Artifacts (content-addressed, so unchanged content writes nothing new):
``contacts/<alias>/<host>.reg`` (raw), ``contacts/<alias>/<host>.json`` and
``contacts/<alias>/merged.json`` (normalised, see runner.windows.imcontacts).

Probe: reads the same keys with ``reg query /s`` (loading and unloading an
unmounted hive the same way) and compares the normalised documents with
the current artifacts; None when every machine's list is unchanged.
"""
from __future__ import annotations

import json
from typing import Any

from runner.connections.base import Connection
from runner.errors import PermanentFault, TransientFault
from runner.model import User
from runner.steps import _clients as cl
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import reg
from runner.windows.cmdline import Command, Quoted
from runner.windows.imcontacts import DEFAULT_CONTACTS_KEY, contacts_from_keys, dumps, merge
from runner.windows.regfile import RegFileError, parse_reg

TEMP_DIR = r"C:\Windows\Temp"


def _contacts_key(ctx: StepContext) -> str:
    return str(ctx.args.get("contacts_key") or ctx.vars.get("contacts_key") or DEFAULT_CONTACTS_KEY)


def _locate(conn: Connection, host: str, user: User) -> cl.Profile:
    """The user's profile on ``host`` (with whether the hive is mounted)."""
    sections, _ = cl.run_sections(conn, [Command("echo", "%SystemDrive%"),
                                         reg.query(cl.PROFILE_LIST, recursive=True), reg.query("HKU")])
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    found = cl.profiles(reg.parse_query(text[1]), reg.parse_query(text[2]), {"SystemDrive": text[0].strip() or "C:"})
    p = cl.profile_for(user, found)
    if p is None:
        raise PermanentFault(f"{user.alias} has no profile on {host}", host=host)
    return p


def _with_hive(conn: Connection, host: str, user: User, p: cl.Profile, key: str,
               inner: list[Command]) -> list[Any]:
    """Run ``inner`` (built for ``HKU\\<mount>\\key``) against the user's hive, loading
    and always unloading NTUSER.DAT when it is not mounted. Returns inner's sections."""
    if p.loaded:
        sections, _ = cl.run_sections(conn, inner)
        return sections
    name = cl.hive_name(user.alias)
    commands = [reg.load(name, p.path.rstrip("\\") + "\\NTUSER.DAT"), *inner, reg.unload(name), reg.query("HKU")]
    sections, stderr = cl.run_sections(conn, commands)
    if cl.still_loaded(sections[-1], name):
        cl.unload_verified(conn, host, name)
    load = sections[0]
    if load is None or not load.ok:
        if cl.is_locked_text(stderr):
            raise TransientFault(f"{user.alias}'s hive on {host} is in use (reg load): {stderr.strip()[:200]}",
                                 host=host)
        raise PermanentFault(f"cannot load {user.alias}'s hive on {host}: {stderr.strip()[:200]}", host=host)
    return sections[1:1 + len(inner)]


def _mount(user: User, p: cl.Profile) -> str:
    return p.sid if p.loaded else cl.hive_name(user.alias)


def read_current(ctx: StepContext, user: User, host: str) -> dict[str, Any]:
    """The user's normalised contact document on ``host`` via ``reg query /s`` (read-only)."""
    conn = ctx.connection(host)
    key = _contacts_key(ctx)
    p = _locate(conn, host, user)
    (q,) = _with_hive(conn, host, user, p, key, [reg.query(f"HKU\\{_mount(user, p)}\\{key}", recursive=True)])
    if q is None or not q.ok:
        return contacts_from_keys([], key)
    return contacts_from_keys(reg.parse_query(q.stdout), key)


def export_one(ctx: StepContext, user: User, host: str) -> tuple[bytes, dict[str, Any]]:
    """Export the user's contact key on ``host``: raw .reg bytes (b"" when the key is
    absent) and the normalised document."""
    conn = ctx.connection(host)
    key = _contacts_key(ctx)
    p = _locate(conn, host, user)
    remote = f"{TEMP_DIR}\\runner-{cl.hive_name(user.alias)}-{ctx.run_id[:8] or 'run'}.reg"
    mount = _mount(user, p)
    (exp,) = _with_hive(conn, host, user, p, key, [reg.export(f"HKU\\{mount}\\{key}", remote)])
    if exp is None or not exp.ok:
        # no contact key (or the export failed): check it really is absent
        (q,) = _with_hive(conn, host, user, p, key, [reg.query(f"HKU\\{mount}\\{key}")])
        if q is not None and q.ok:
            raise PermanentFault(f"reg export of {user.alias}'s contacts on {host} failed", host=host)
        return b"", contacts_from_keys([], key)
    try:
        raw = conn.get(remote)
    finally:
        conn.run(Command("del", "/q", Quoted(remote)).render())
    try:
        keys = parse_reg(raw)
    except RegFileError as exc:
        raise PermanentFault(f"unreadable export of {user.alias}'s contacts from {host}: {exc}", host=host)
    return raw, contacts_from_keys(keys, key)


def _doc(user: User, host: str, key: str, contacts: dict[str, Any]) -> dict[str, Any]:
    return {"user": user.alias, "host": host, "contacts_key": key, **contacts}


class ExportContacts(StepModule):
    """Export and merge a user's Exchange IM contact lists into artifacts."""

    name = "export_contacts"
    target = "user"
    args_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"contacts_key": {"type": "string", "minLength": 1}},
    }

    def probe(self, ctx: StepContext, target: User) -> Diff | None:  # type: ignore[override]
        key = _contacts_key(ctx)
        lines: list[str] = []
        changed: list[str] = []
        for host in target.clients:
            doc = _doc(target, host, key, read_current(ctx, target, host))
            stored = ctx.artifacts.read(f"contacts/{target.alias}/{host}.json")
            if stored is None or json.loads(stored) != json.loads(dumps(doc)):
                changed.append(host)
                lines.append(f"{host}: {len(doc['contacts'])} contact(s) to export"
                             + ("" if stored is None else " (changed since the last export)"))
        if not changed and ctx.artifacts.read(f"contacts/{target.alias}/merged.json") is not None:
            return None
        return Diff(summary=f"export {target.alias}'s contacts from {', '.join(changed) or 'all clients'}",
                    lines=lines, data={"hosts": changed})

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:  # type: ignore[override]
        key = _contacts_key(ctx)
        per_machine: list[tuple[str, dict[str, Any]]] = []
        artifacts: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        before: dict[str, str | None] = {}
        for host in target.clients:
            raw, contacts = export_one(ctx, target, host)
            doc = _doc(target, host, key, contacts)
            per_machine.append((host, doc))
            counts[host] = len(doc["contacts"])
            for name, data in ((f"contacts/{target.alias}/{host}.reg", raw),
                               (f"contacts/{target.alias}/{host}.json", dumps(doc))):
                before[name] = _sha(ctx.artifacts.read(name))
                ref = ctx.artifacts.write(name, data)
                artifacts[name] = {"sha256": ref.sha256, "size": ref.size, "path": ref.path}
        merged = {"user": target.alias, "im_address": target.im_address, **merge(per_machine)}
        mname = f"contacts/{target.alias}/merged.json"
        before[mname] = _sha(ctx.artifacts.read(mname))
        ref = ctx.artifacts.write(mname, dumps(merged))
        artifacts[mname] = {"sha256": ref.sha256, "size": ref.size, "path": ref.path}
        new = [n for n, a in artifacts.items() if before[n] != a["sha256"]]
        warnings = [f"{c['address']}: display name {c['ignored']!r} on {c['ignored_from']} differs from "
                    f"{c['kept']!r} on {c['kept_from']}; kept the latter" for c in merged["conflicts"]]
        data = {"counts": counts, "merged_count": len(merged["contacts"]), "artifacts": artifacts,
                "merged_artifact": mname, "new_artifacts": new, "conflicts": merged["conflicts"]}
        status = "changed" if new else "ok"
        return StepResult(status, f"{len(merged['contacts'])} contact(s) from {len(counts)} machine(s)"
                          + ("" if new else " (unchanged)"), data=data, warnings=warnings)


def _sha(data: bytes | None) -> str | None:
    import hashlib
    return None if data is None else hashlib.sha256(data).hexdigest()
