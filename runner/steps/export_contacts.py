"""export_contacts: export a user's Exchange IM contact list from every client they use.

Round trips per client (DESIGN.md, "Speed"): the profile is located once per
client per task, in the probe, and handed to apply in ``Diff.data``.

Probe, one line per client: ``echo %SystemDrive%``, ``reg query ProfileList
/s``, ``reg query HKU`` and, when the inventory gives the user's SID, ``reg
query HKU\\<SID>\\<key> /s`` read in place; a user who is not logged on
needs a second line, ``reg load HKU\\runner_<alias> "<profile>\\NTUSER.DAT" &
reg query /s & reg unload & reg query HKU`` (the unload always runs, and the
final query verifies it: a leftover is unloaded again, else the task fails;
a hive in use is a TransientFault). The normalised documents are compared
with the current artifacts; None when every machine's list is unchanged.

Apply exports only the machines whose list changed (the others' artifacts
are reused): one line ``[reg load &] reg export KEY file & reg query KEY [&
reg unload & reg query HKU]`` (the query tells an absent key from a failed
export), then ``get`` of the UTF-16 .reg file from ``C:\\Windows\\Temp``
and its ``del``: 1-2 round trips per unchanged client, 4-5 per changed one.

Artifacts (content-addressed, so unchanged content writes nothing new):
``contacts/<alias>/<host>.reg`` (raw), ``contacts/<alias>/<host>.json`` and
``contacts/<alias>/merged.json`` (normalised, see runner.windows.imcontacts;
its ``machines`` lists where the list was read). A machine whose list cannot
be read fails the task; a user with no clients is exported as an empty list
read from no machine, with a warning: verify_contacts fails such a user, so
Exchange IM is not disabled for them (docs/data-safety.md).
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


def _located(conn: Connection, host: str, user: User, key: str) -> tuple[cl.Profile, Any]:
    """The user's profile on ``host`` (with whether the hive is mounted), in one round trip.

    When the inventory gives the user's SID, the same line also reads
    ``HKU\\<SID>\\key /s`` in place: returned as the second item when the hive
    is mounted (so a logged-on user's probe costs one round trip), else None.
    """
    commands = [Command("echo", "%SystemDrive%"), reg.query(cl.PROFILE_LIST, recursive=True), reg.query("HKU")]
    if user.sid:
        commands.append(reg.query(f"HKU\\{user.sid}\\{key}", recursive=True))
    sections, _ = cl.run_sections(conn, commands)
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    found = cl.profiles(reg.parse_query(text[1]), reg.parse_query(text[2]), {"SystemDrive": text[0].strip() or "C:"})
    p = cl.profile_for(user, found)
    if p is None:
        raise PermanentFault(f"{user.alias} has no profile on {host}", host=host)
    return p, (sections[3] if user.sid and p.loaded else None)


def _with_hive(conn: Connection, host: str, user: User, p: cl.Profile, inner: list[Command]) -> list[Any]:
    """Run ``inner`` (built for ``HKU\\<mount>\\...``) against the user's hive in one round
    trip, loading and always unloading NTUSER.DAT when it is not mounted: ``reg load &
    inner & reg unload & reg query HKU``, the unload verified (a leftover is unloaded
    again, else PermanentFault). A hive in use is a TransientFault. Returns inner's sections."""
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


def _profile_data(p: cl.Profile) -> dict[str, Any]:
    return {"sid": p.sid, "path": p.path, "loaded": p.loaded}


def _profile_from(data: Any) -> cl.Profile | None:
    if isinstance(data, dict) and isinstance(data.get("sid"), str) and isinstance(data.get("path"), str):
        return cl.Profile(data["sid"], data["path"], bool(data.get("loaded")))
    return None


def probe_host(ctx: StepContext, user: User, host: str) -> tuple[cl.Profile, dict[str, Any]]:
    """The user's profile on ``host`` and their normalised contact document, read with
    ``reg query /s`` (read-only): one round trip for a logged-on user whose SID the
    inventory gives, two otherwise (locate, then read the hive in place or loaded)."""
    conn = ctx.connection(host)
    key = _contacts_key(ctx)
    p, q = _located(conn, host, user, key)
    if q is None:
        (q,) = _with_hive(conn, host, user, p, [reg.query(f"HKU\\{_mount(user, p)}\\{key}", recursive=True)])
    if q is None or not q.ok:
        return p, contacts_from_keys([], key)
    return p, contacts_from_keys(reg.parse_query(q.stdout), key)


def read_current(ctx: StepContext, user: User, host: str) -> dict[str, Any]:
    """The user's normalised contact document on ``host`` via ``reg query /s`` (read-only)."""
    return probe_host(ctx, user, host)[1]


def export_one(ctx: StepContext, user: User, host: str,
               profile: cl.Profile | None = None) -> tuple[bytes, dict[str, Any]]:
    """Export the user's contact key on ``host``: raw .reg bytes (b"" when the key is
    absent) and the normalised document.

    ``profile`` is the one the probe located (else it is located here). Round trips:
    ``[reg load &] reg export & reg query KEY [& reg unload & reg query HKU]`` (the
    query tells an absent key from a failed export), the ``get`` of the file, and
    its ``del``.
    """
    conn = ctx.connection(host)
    key = _contacts_key(ctx)
    p = profile if profile is not None else _located(conn, host, user, key)[0]
    remote = f"{TEMP_DIR}\\runner-{cl.hive_name(user.alias)}-{ctx.run_id[:8] or 'run'}.reg"
    path = f"HKU\\{_mount(user, p)}\\{key}"
    inner = [reg.export(path, remote), reg.query(path)]
    if p.loaded:  # the user may have logged off since the probe: check the SID is still mounted
        inner.append(reg.query("HKU"))
    sections = _with_hive(conn, host, user, p, inner)
    exp, q = sections[0], sections[1]
    if exp is None or not exp.ok:
        if q is not None and q.ok:
            raise PermanentFault(f"reg export of {user.alias}'s contacts on {host} failed", host=host)
        if p.loaded and not cl.still_loaded(sections[2], p.sid):
            raise TransientFault(f"{user.alias} logged off {host} during the export; reading the hive again",
                                 host=host)
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
    saves_client_data = True
    args_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"contacts_key": {"type": "string", "minLength": 1}},
    }

    def probe(self, ctx: StepContext, target: User) -> Diff | None:  # type: ignore[override]
        key = _contacts_key(ctx)
        lines: list[str] = []
        changed: list[str] = []
        located: dict[str, dict[str, Any]] = {}
        for host in target.clients:
            p, contacts = probe_host(ctx, target, host)
            located[host] = _profile_data(p)
            doc = _doc(target, host, key, contacts)
            stored = ctx.artifacts.read(f"contacts/{target.alias}/{host}.json")
            if stored is None or json.loads(stored) != json.loads(dumps(doc)):
                changed.append(host)
                lines.append(f"{host}: {len(doc['contacts'])} contact(s) to export"
                             + ("" if stored is None else " (changed since the last export)"))
        if not changed and ctx.artifacts.read(f"contacts/{target.alias}/merged.json") is not None:
            return None
        # apply exports only the changed machines, from the profiles located here
        return Diff(summary=f"export {target.alias}'s contacts from {', '.join(changed) or 'all clients'}",
                    lines=lines, data={"hosts": changed, "profiles": located})

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:  # type: ignore[override]
        key = _contacts_key(ctx)
        per_machine: list[tuple[str, dict[str, Any]]] = []
        artifacts: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        before: dict[str, str | None] = {}
        to_export = diff.data.get("hosts")
        located = diff.data.get("profiles") or {}
        for host in target.clients:
            doc, raw = None, None
            if isinstance(to_export, list) and host not in to_export:
                # the probe found this machine's list equal to its artifacts: reuse them
                doc_bytes = ctx.artifacts.read(f"contacts/{target.alias}/{host}.json")
                raw = ctx.artifacts.read(f"contacts/{target.alias}/{host}.reg")
                doc = json.loads(doc_bytes) if doc_bytes is not None and raw is not None else None
            if doc is None or raw is None:
                raw, contacts = export_one(ctx, target, host, _profile_from(located.get(host)))
                doc = _doc(target, host, key, contacts)
            per_machine.append((host, doc))
            counts[host] = len(doc["contacts"])
            for name, data in ((f"contacts/{target.alias}/{host}.reg", raw),
                               (f"contacts/{target.alias}/{host}.json", dumps(doc))):
                before[name] = _sha(ctx.artifacts.read(name))
                ref = ctx.artifacts.write(name, data)
                artifacts[name] = {"sha256": ref.sha256, "size": ref.size, "path": ref.path}
        # "machines": where the list was read; none means nothing to verify the user against
        merged = {"user": target.alias, "im_address": target.im_address, **merge(per_machine),
                  "machines": [h for h, _ in per_machine]}
        mname = f"contacts/{target.alias}/merged.json"
        before[mname] = _sha(ctx.artifacts.read(mname))
        ref = ctx.artifacts.write(mname, dumps(merged))
        artifacts[mname] = {"sha256": ref.sha256, "size": ref.size, "path": ref.path}
        new = [n for n, a in artifacts.items() if before[n] != a["sha256"]]
        warnings = [f"{c['address']}: display name {c['ignored']!r} on {c['ignored_from']} differs from "
                    f"{c['kept']!r} on {c['kept_from']}; kept the latter" for c in merged["conflicts"]]
        data = {"counts": counts, "merged_count": len(merged["contacts"]), "artifacts": artifacts,
                "merged_artifact": mname, "new_artifacts": new, "conflicts": merged["conflicts"],
                "machines_read": list(counts)}
        status = "changed" if new else "ok"
        if not counts:
            warnings.insert(0, _no_list(target))
            return StepResult(status, f"no contact list read for {target.alias}: no clients in the inventory",
                              data=data, warnings=warnings)
        return StepResult(status, f"{len(merged['contacts'])} contact(s) from {len(counts)} machine(s)"
                          + ("" if new else " (unchanged)"), data=data, warnings=warnings)

    def unchanged(self, ctx: StepContext, target: User) -> StepResult:  # type: ignore[override]
        if not target.clients:
            return StepResult("ok", f"no contact list read for {target.alias}: no clients in the inventory",
                              data={"machines_read": []}, warnings=[_no_list(target)])
        return StepResult("ok")


def _no_list(user: User) -> str:
    return (f"no contact list of {user.alias} was read: the inventory gives no clients; verify_contacts will "
            "fail and Exchange IM stays enabled for them unless contacts_recreated_by_users: true")


def _sha(data: bytes | None) -> str | None:
    import hashlib
    return None if data is None else hashlib.sha256(data).hexdigest()
