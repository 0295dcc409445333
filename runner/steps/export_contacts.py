"""export_contacts: export a user's Exchange IM contact list from every client they use.

Round trips per (user, machine) (DESIGN.md, "Speed"; docs/performance.md):

- Reading (the probe, when an export is stored to compare with): one command
  line per machine reads the list of *every* inventory user of that machine,
  each in its own marked group: ``reg query HKU\\<SID>\\<key> /s`` in place
  (a logged-on user), then ``reg load HKU\\runner_<alias> <profile>\\NTUSER.DAT &
  reg query /s & reg unload`` (a user not logged on; for a logged-on one the
  load fails "in use" and the in-place read stands), so the line does not
  depend on who is logged on. The other users' probes in the same step and
  wave take their reading from it (each reading is used once). Profiles come
  from the facts inventory_clients gathered (checked against ProfileList in
  the same line); without them a first line locates them. One user's locked
  hive or missing profile is that user's fault only.
- A machine never exported for the user is not read by the probe (outside
  check mode): there is nothing to compare with, so apply exports it.
- Export (apply, changed machines only): one line ``del old scratch files &
  reg export in place & reg query & reg load & reg export & reg query & reg
  unload & reg query HKU``, then the UTF-16 .reg file is taken (read and
  deleted in one round trip, runner.steps._clients.take): 2 per machine.

Every line fits the host's cmd.exe limit (runner.steps._clients.line_limit);
a user's load and unload always share a line, and the final ``reg query HKU``
verifies the unloads (a leftover is unloaded again, else the task fails).

Artifacts (content-addressed, so unchanged content writes nothing new):
``contacts/<alias>/<host>.reg`` (raw), ``contacts/<alias>/<host>.json`` and
``contacts/<alias>/merged.json`` (normalised, see runner.windows.imcontacts;
its ``machines`` lists where the list was read). A machine whose list cannot
be read fails the task; a user with no clients is exported as an empty list
read from no machine, with a warning: verify_contacts fails such a user, so
Exchange IM is not disabled for them (docs/data-safety.md).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from runner import hostenv
from runner.connections.base import Connection
from runner.errors import PermanentFault, TransientFault
from runner.model import User
from runner.steps import _clients as cl
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import reg
from runner.windows.cmdline import Command, Quoted, Section
from runner.windows.imcontacts import DEFAULT_CONTACTS_KEY, contacts_from_keys, dumps, merge
from runner.windows.regfile import RegFileError, parse_reg

#: A machine reading older than this is not handed to another user's probe.
READING_MAX_AGE = 300.0
#: How often the readings past that age are let go (a sweep reads them all).
SWEEP_SECONDS = 5.0
_swept = 0.0


def _contacts_key(ctx: StepContext) -> str:
    return str(ctx.args.get("contacts_key") or ctx.vars.get("contacts_key") or DEFAULT_CONTACTS_KEY)


# -- profiles -------------------------------------------------------------------

def _locate_commands() -> list[Command]:
    """Where profiles are, and ``%SystemRoot%`` (for the scratch folder, runner.hostenv)."""
    return [Command("echo", "%SystemDrive%"), reg.query(cl.PROFILE_LIST, recursive=True), reg.query("HKU"),
            Command("echo", "%SystemRoot%")]


#: Sections of ``_locate_commands``.
_LOCATE = 4


def _located(sections: Sequence[Section | None]) -> dict[str, cl.Profile]:
    """Profiles by SID from the sections of ``_locate_commands``."""
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    return cl.profiles(reg.parse_query(text[1]), reg.parse_query(text[2]), {"SystemDrive": text[0].strip() or "C:"})


def _locate_live(conn: Connection, host: str, user: User, limit: int, owner: cl.ScriptOwner | None) -> cl.Profile:
    sections, _ = cl.run_sections(conn, _locate_commands(), limit=limit, owner=owner)
    if sections[3] is not None and sections[3].ok:
        hostenv.remember(conn, sections[3].stdout)
    p = cl.profile_for(user, _located(sections))
    if p is None:
        raise PermanentFault(f"{user.alias} has no profile on {host}", host=host)
    return p


def _same_path(a: str, b: str) -> bool:
    return a.rstrip("\\").lower() == b.rstrip("\\").lower()


# -- one user's hive, whoever is logged on ----------------------------------------

def _ntuser(p: cl.Profile) -> str:
    return p.path.rstrip("\\") + "\\NTUSER.DAT"


def _read_group(user: User, p: cl.Profile, key: str) -> cl.GroupBuilder:
    """Sections: mounted, in-place read | load, loaded read, unload (5)."""
    return cl.hive_group(p.sid, [reg.query(f"HKU\\{p.sid}\\{key}", recursive=True)], user.alias, _ntuser(p),
                         [reg.query(f"HKU\\{cl.hive_name(user.alias)}\\{key}", recursive=True)])


def _mounted(hku: Section | None, sid: str) -> bool:
    return hku is not None and any(s.lower() == sid.lower()
                                   for s in reg.subkeys(reg.parse_query(hku.stdout), "HKU"))


def _hive_outcome(user: User, host: str, p: cl.Profile, mounted: Section | None, load: Section | None,
                  hku: Section | None) -> bool:
    """Whether the in-place branch of a hive group holds the user's list (logged on),
    else the loaded one; raises the user's own fault when neither can be trusted.

    Logged on, but no longer mounted at the end of the line: the user logged off
    in between and the in-place read may have missed the key (TransientFault). Not
    logged on and the load failed: in use (the user logging on, another process)
    is a TransientFault, anything else a PermanentFault.
    """
    if mounted is not None and mounted.ok:
        return True
    if load is None or not load.ok:
        text = load.stdout if load is not None else ""
        if cl.is_locked_text(text) or mounted is None:
            raise TransientFault(f"{user.alias}'s hive on {host} is in use (reg load): {text.strip()[:200]}",
                                 host=host)
        raise PermanentFault(f"cannot load {user.alias}'s hive on {host}: {text.strip()[:200]}", host=host)
    return False


def _check_unloaded(conn: Connection, host: str, users: Sequence[User], hku: Section | None) -> None:
    for user in users:
        if cl.still_loaded(hku, cl.hive_name(user.alias)):
            cl.unload_verified(conn, host, cl.hive_name(user.alias))


# -- reading every user of a machine in one line -----------------------------------

def read_machine(ctx: StepContext, host: str, users: Sequence[User], *,
                 owner: cl.ScriptOwner | None = None) -> dict[str, Any]:
    """The normalised contact document of each of ``users`` on ``host`` (read-only):
    alias -> (profile, document), or the fault of that user alone.

    One line when the facts give the profiles (checked against ProfileList in the
    same line), else two (locate, then read). Each user's reads are one group, so
    a line break never separates a hive's load from its unload. ``owner``: the task's target
    (``user:ALIAS``), whose scratch script this is (runner.steps._clients.run_built; None:
    no script).
    """
    conn = ctx.connection(host)
    key = _contacts_key(ctx)
    limit = cl.line_limit(ctx, host)
    known = cl.fact_profiles(ctx, host)
    plan = [(u, cl.profile_for(u, known)) for u in users]
    first = [(u, p) for u, p in plan if p is not None]
    builders = [cl.plain(_locate_commands())] + [_read_group(u, p, key) for u, p in first]
    with cl.hive_locks(host, [u.alias for u, _ in first]):
        sections, _ = cl.run_built(conn, builders + [cl.plain([reg.query("HKU")])], limit=limit, owner=owner)
        _check_unloaded(conn, host, [u for u, _ in first], sections[-1])
    live = _located(sections[:_LOCATE])
    if sections[3] is not None and sections[3].ok:
        hostenv.remember(conn, sections[3].stdout)
    results: dict[str, Any] = {}
    for i, (u, guess) in enumerate(first):
        p = cl.profile_for(u, live)
        if p is None or not _same_path(p.path, guess.path) or p.sid.lower() != guess.sid.lower():
            continue  # the facts are out of date: read again below with the live profile
        results[u.alias] = _outcome(u, host, p, sections[_LOCATE + 5 * i:_LOCATE + 5 + 5 * i], sections[-1], key)
    again: list[tuple[User, cl.Profile]] = []
    for u, _ in plan:
        if u.alias in results:
            continue
        p = cl.profile_for(u, live)
        if p is None:
            results[u.alias] = PermanentFault(f"{u.alias} has no profile on {host}", host=host)
        else:
            again.append((u, p))
    if again:
        with cl.hive_locks(host, [u.alias for u, _ in again]):
            sections, _ = cl.run_built(conn, [_read_group(u, p, key) for u, p in again]
                                       + [cl.plain([reg.query("HKU")])], limit=limit, owner=owner)
            _check_unloaded(conn, host, [u for u, _ in again], sections[-1])
        for i, (u, p) in enumerate(again):
            results[u.alias] = _outcome(u, host, p, sections[5 * i:5 * i + 5], sections[-1], key)
    return results


def _outcome(user: User, host: str, p: cl.Profile, group: Sequence[Section | None], hku: Section | None,
             key: str) -> Any:
    """(profile, document) from a read group's sections, or the user's fault."""
    mounted, in_place, load, loaded, _unload = group
    try:
        logged_on = _hive_outcome(user, host, p, mounted, load, hku)
    except (TransientFault, PermanentFault) as exc:
        return exc
    q = in_place if logged_on else loaded
    if logged_on and (q is None or not q.ok) and not _mounted(hku, p.sid):
        return TransientFault(f"{user.alias} logged off {host} during the read; reading the hive again", host=host)
    profile = cl.Profile(p.sid, p.path, logged_on)
    if q is None or not q.ok:
        return profile, contacts_from_keys([], key)
    return profile, contacts_from_keys(reg.parse_query(q.stdout), key)


@dataclass
class _Shared:
    """The readings of one machine in one step (and wave) of one run, each handed out once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: float = 0.0
    readings: dict[str, Any] = field(default_factory=dict)


_SHARED: dict[tuple[Any, ...], _Shared] = {}
_SHARED_LOCK = threading.Lock()
#: The share keys (step, host) whose machine a reading has been taken from: before the first,
#: no task of the step has run anything on the machine (see ``probe_host``).
_READ: set[tuple[Any, ...]] = set()


def _share_key(ctx: StepContext, host: str) -> tuple[Any, ...] | None:
    task = getattr(ctx, "task", None)
    step = getattr(task, "step", None)
    if task is None or step is None:
        return None
    return (ctx.run_id, getattr(task, "play_index", None), getattr(step, "name", None), task.wave, host.lower())


def probe_host(ctx: StepContext, user: User, host: str) -> tuple[cl.Profile, dict[str, Any]]:
    """The user's profile on ``host`` and their normalised contact document (read-only).

    Within a step of a run, the first probe that reaches a machine reads every
    inventory user of it in one line; the others take their reading from it.
    """
    skey = _share_key(ctx, host)
    if skey is None:
        got = read_machine(ctx, host, [user], owner=cl.script_owner(ctx, f"user:{user.alias}"))[user.alias]
    else:
        with _SHARED_LOCK:
            now = time.monotonic()
            global _swept
            if now - _swept > SWEEP_SECONDS:   # not at every probe: that was O(machines) each
                _swept = now
                for k in [k for k, v in _SHARED.items() if now - v.taken > READING_MAX_AGE and not v.lock.locked()]:
                    del _SHARED[k]
            shared = _SHARED.setdefault(skey, _Shared(taken=now))
        with shared.lock:
            got = shared.readings.pop(user.alias, None)
            if got is None or time.monotonic() - shared.taken > READING_MAX_AGE:
                users = cl.client_users(ctx.inventory, host)
                if user not in users:
                    users.append(user)
                owner = cl.script_owner(ctx, f"user:{user.alias}")
                with _SHARED_LOCK:
                    first = skey not in _READ
                    _READ.add(skey)
                if owner is not None and first:
                    # the step's first line on this machine (every other user line of the step
                    # claims it first: _claim): no other user's task has run one, and the users
                    # who take this reading run none, so it also deletes the scripts a run cut
                    # off left for them (else nothing would)
                    owner = replace(owner, others=tuple(f"user:{u.alias}" for u in users if u is not user))
                readings = read_machine(ctx, host, users, owner=owner)
                got = readings.pop(user.alias)
                shared.readings, shared.taken = readings, time.monotonic()
    if isinstance(got, BaseException):
        raise got
    return got


def _claim(ctx: StepContext, host: str) -> None:
    """Before a user's line of this step runs on ``host`` other than in a shared reading: the
    step's first reading of the machine, which deletes its users' cut-off scripts, is either
    over (it holds the machine's lock while it runs) or will not count as first, so it never
    deletes a script of this user's that is running."""
    skey = _share_key(ctx, host)
    if skey is None:
        return
    with _SHARED_LOCK:
        shared = _SHARED.setdefault(skey, _Shared(taken=time.monotonic()))
    with shared.lock, _SHARED_LOCK:
        _READ.add(skey)


def read_current(ctx: StepContext, user: User, host: str) -> dict[str, Any]:
    """The user's normalised contact document on ``host`` via ``reg query /s`` (read-only)."""
    _claim(ctx, host)
    got = read_machine(ctx, host, [user], owner=cl.script_owner(ctx, f"user:{user.alias}"))[user.alias]
    if isinstance(got, BaseException):
        raise got
    return got[1]


def _profile_data(p: cl.Profile) -> dict[str, Any]:
    return {"sid": p.sid, "path": p.path, "loaded": p.loaded}


def _profile_from(data: Any) -> cl.Profile | None:
    if isinstance(data, dict) and isinstance(data.get("sid"), str) and isinstance(data.get("path"), str):
        return cl.Profile(data["sid"], data["path"], bool(data.get("loaded")))
    return None


# -- export ----------------------------------------------------------------------

def _owner(alias: str) -> str:
    """8 hex digits naming the user's scratch files: one user's wildcard never matches another's."""
    return hashlib.sha256(alias.encode("utf-8")).hexdigest()[:8]


def export_one(ctx: StepContext, user: User, host: str,
               profile: cl.Profile | None = None) -> tuple[bytes, dict[str, Any]]:
    """Export the user's contact key on ``host``: raw .reg bytes (b"" when the key is
    absent) and the normalised document.

    ``profile`` is the one the probe or the facts located (else it is located here,
    one more line). One line deletes the user's scratch files an earlier run left,
    then exports in place when the user is logged on, else from the loaded hive
    (``reg export & reg query``, the query telling an absent key from a failed
    export); then the file is taken (read and deleted in one round trip).
    """
    _claim(ctx, host)
    conn = ctx.connection(host)
    key = _contacts_key(ctx)
    limit = cl.line_limit(ctx, host)
    script = cl.script_owner(ctx, f"user:{user.alias}")
    p = profile if profile is not None else _locate_live(conn, host, user, limit, script)
    owner = _owner(user.alias)
    temp = hostenv.temp_dir(conn, ctx.vars, ctx.facts(host) if hasattr(ctx, "facts") else None)
    remote = f"{temp}\\runner-{owner}-{ctx.run_id[:8] or 'run'}.reg"
    in_place, loaded = f"HKU\\{p.sid}\\{key}", f"HKU\\{cl.hive_name(user.alias)}\\{key}"
    cleanup = Command("del", "/q", Quoted(f"{temp}\\runner-{owner}-*.reg"), "2>nul")
    group = cl.hive_group(p.sid, [reg.export(in_place, remote), reg.query(in_place)], user.alias, _ntuser(p),
                          [reg.export(loaded, remote), reg.query(loaded)])
    with cl.hive_locks(host, [user.alias]):
        sections, _ = cl.run_built(conn, [cl.plain([cleanup]), group, cl.plain([reg.query("HKU")])], limit=limit,
                                   owner=script)
    _del, mounted, exp_in, q_in, load, exp_l, q_l, _unload, hku = sections
    exported = any(s is not None and s.ok for s in (exp_in, exp_l))
    try:
        with cl.hive_locks(host, [user.alias]):
            _check_unloaded(conn, host, [user], hku)
        logged_on = _hive_outcome(user, host, p, mounted, load, hku)
        exp, q = (exp_in, q_in) if logged_on else (exp_l, q_l)
        if exp is None or not exp.ok:
            if q is not None and q.ok:
                raise PermanentFault(f"reg export of {user.alias}'s contacts on {host} failed", host=host)
            if logged_on and not _mounted(hku, p.sid):
                raise TransientFault(f"{user.alias} logged off {host} during the export; reading the hive again",
                                     host=host)
            return b"", contacts_from_keys([], key)
    except BaseException:
        if exported:
            cl.take(conn, remote)
        raise
    raw = cl.take(conn, remote)
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
            stored = ctx.artifacts.read(f"contacts/{target.alias}/{host}.json")
            if stored is None and not ctx.check:
                # nothing to compare with: apply exports this machine, no need to read it first
                changed.append(host)
                lines.append(f"{host}: contact list to export (not exported yet)")
                known = cl.profile_for(target, cl.fact_profiles(ctx, host))
                if known is not None:
                    located[host] = _profile_data(known)
                continue
            p, contacts = probe_host(ctx, target, host)
            located[host] = _profile_data(p)
            doc = _doc(target, host, key, contacts)
            # compared as parsed documents (the C encoder for the round trip: the canonical
            # dumps' indent takes json's pure-Python encoder, 4 % of a --fresh run's CPU)
            if stored is None or json.loads(stored) != json.loads(json.dumps(doc, ensure_ascii=False)):
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
