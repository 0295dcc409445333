"""What import_permissions and verify_permissions share: a chunk's reads and the ACL record.

Private to runner/steps (the leading underscore keeps it out of step discovery).
A user's Exchange IM ACL is read from their directory entry (``msExchIMACL``,
one ldifde search for the chunk on the Exchange IM server) and kept on the
control node as the artifact ``permissions/<alias>/acl.json`` (on disk, like
every artifact, the content-addressed ``permissions/<alias>/acl.<sha12>.json``
under ``artifacts/``; the results carry that path as ``acl_file``), so that what
was migrated can still be verified, reported and compared after
disable_exchange_im has cleared the attribute. LCS's side is one wmic query
over the chunk's ``UserInstanceID``s (docs/permissions.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from runner.artifacts import on_disk_name
from runner.errors import PermanentFault
from runner.lcs.chunks import LCS_LINE, ChunkScript, LcsRead, groups, im_entries, line_limit, wmic_fault, wql_any
from runner.lcs.exchange import exchange_server, im_user_query
from runner.lcs.permissions import ACE_CLASS, ACE_PROPS, LcsAce, PlannedAce, parse_lcs
from runner.lcs.server import UserState, home_server, instance_id
from runner.model import User
from runner.steps._lcs import CHUNK_SIZE_ARG, rolled_back_at, server_vars
from runner.steps.base import Diff, ProbeOutcome, StepContext, StepModule
from runner.windows import wmic
from runner.windows.cmdline import quotable

ACL_ATTRIBUTE = "msExchIMACL"


@dataclass
class PermissionState:
    """One user's allow and block list as read for a chunk: the source (msExchIMACL values,
    None when neither the directory nor an earlier read has them) and the LCS side."""

    acl: list[str] | None
    dn: str | None
    source: str                       # "directory", "artifact" or "none"
    user: dict[str, str] | None = None
    aces: list[LcsAce] = field(default_factory=list)
    created: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)


def entries(n: int, what: str = "") -> str:
    """``1 allow/block entry``, ``3 unmappable allow/block entries``."""
    return f"{n} {what}allow/block {'entry' if n == 1 else 'entries'}"


class PermissionStep(StepModule):
    """What both permission steps are: per user, in chunks of their LCS home server."""

    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "chunk_size": CHUNK_SIZE_ARG}}
    chunk = 50

    def chunk_key(self, ctx: StepContext, target: User) -> str:
        return home_server(target, ctx.inventory, ctx.vars)

    #: Whether the probe reads msExchIMACL on the Exchange IM server (else the record only).
    reads_directory: bool = False

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        return self.probe_many([(ctx, target)])[0]  # type: ignore[return-value]

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The chunk's reads (read_chunk), then each user judged on their own state; a read
        or judgement that fails is that user's outcome only."""
        out: list[ProbeOutcome] = []
        for (ctx, user), state in zip(items, read_chunk(items, directory=self.reads_directory)):
            try:
                if isinstance(state, Exception):
                    raise state
                out.append(self.judge(ctx, user, state))
            except Exception as exc:  # noqa: BLE001 - this user's outcome
                out.append(exc)
        return out

    def judge(self, ctx: StepContext, user: User, state: PermissionState) -> Diff | None:
        """What the probe found for one user of the chunk."""
        raise NotImplementedError


def acl_values(values: Sequence[str]) -> list[str]:
    """msExchIMACL values as the runner keeps and compares them: text as it is, a value that is
    not text (ldifde printed it base64-encoded and it is not UTF-8, e.g. a binary encoding this
    convention does not know) as ``0x`` and its bytes in hex, so it is reported, stored and
    compared like any other."""
    out = []
    for v in values:
        try:
            v.encode("utf-8")
            out.append(v)
        except UnicodeEncodeError:
            out.append("0x" + v.encode("utf-8", "surrogateescape").hex())
    return out


def artifact_name(user: User) -> str:
    """The control node's record of a user's ACL as read from the directory (the artifact's
    name; its file is ``acl.<sha12>.json``, see :func:`acl_file`)."""
    return f"permissions/{user.alias}/acl.json"


def acl_file(ctx: StepContext, user: User) -> str | None:
    """Where the current version of the user's ACL record is, relative to the state directory
    (``artifacts/permissions/<alias>/acl.<sha12>.json``), None without one."""
    raw = ctx.artifacts.read(artifact_name(user))
    return on_disk_name(artifact_name(user), raw) if raw is not None else None


def missing_acl(user: User) -> str:
    """How a message names the ACL record of ``user`` that is not there."""
    return (f"artifact {artifact_name(user)}, on disk artifacts/permissions/{user.alias}/acl.<sha12>.json, "
            "not in the state directory")


def created_name(user: User) -> str:
    """The control node's record of the LCS entries import_permissions created (or was about
    to create, or to update) for ``user``, with the values it gave them."""
    return f"permissions/{user.alias}/created.json"


def read_created(ctx: StepContext, user: User) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """The entries the runner created on LCS for ``user``: (Type, Mask) key (lower case) -> the
    (Presence, Communication) values it gave them; while an update is under way (recorded, not
    yet confirmed) both the old and the new values. Entries created before this record existed
    come from the earlier import_permissions results (their ``to_add`` that were ``created``)."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for record in reversed(ctx.previous("import_permissions", user.alias)):  # oldest first
        data = record.data or {}
        done = {str(c) for c in data.get("created") or []}
        for e in data.get("to_add") or []:
            if isinstance(e, dict) and _described(e) in done:
                out[(str(e.get("type", "")).lower(), str(e.get("mask", "")).lower())] = \
                    [(str(e.get("presence")), str(e.get("communication")))]
    raw = ctx.artifacts.read(created_name(user))
    try:
        doc = json.loads(raw) if raw is not None else {}
    except ValueError:
        doc = {}
    for e in (doc.get("entries") if isinstance(doc, dict) else None) or []:
        if not isinstance(e, dict):
            continue
        values = [(str(e.get("presence")), str(e.get("communication")))]
        was = e.get("was")
        if isinstance(was, dict):
            values.append((str(was.get("presence")), str(was.get("communication"))))
        out[(str(e.get("type", "")).lower(), str(e.get("mask", "")).lower())] = values
    return out


def _described(e: dict[str, Any]) -> str:
    return PlannedAce(str(e.get("type", "")), str(e.get("mask", "")), str(e.get("presence", "")),
                      str(e.get("communication", ""))).describe()


def record_created(ctx: StepContext, user: User, entries: Sequence[tuple[PlannedAce, LcsAce | None]]) -> None:
    """Add ``entries`` to the user's record of what the runner created on LCS, before the wmic
    that creates or updates them runs (so a kill in between cannot lose track of them): each
    with the values it is given, and, for an update (an LcsAce: what LCS holds now), the values
    it had, which stay the runner's until :func:`confirm_created` drops them."""
    raw = ctx.artifacts.read(created_name(user))
    try:
        doc = json.loads(raw) if raw is not None else {}
    except ValueError:
        doc = {}
    by_key = {(str(e.get("type", "")).lower(), str(e.get("mask", "")).lower()): dict(e)
              for e in (doc.get("entries") if isinstance(doc, dict) else None) or [] if isinstance(e, dict)}
    for p, was in entries:
        entry: dict[str, Any] = {"type": p.type, "mask": p.mask, "presence": p.presence,
                                 "communication": p.communication}
        if was is not None:
            entry["was"] = {"presence": was.presence, "communication": was.communication}
        by_key[p.key()] = entry
    _write_created(ctx, user, by_key)


def confirm_created(ctx: StepContext, user: User, keys: Sequence[tuple[str, str]]) -> None:
    """The updates of ``keys`` went through: their old values are no longer the runner's."""
    raw = ctx.artifacts.read(created_name(user))
    try:
        doc = json.loads(raw) if raw is not None else {}
    except ValueError:
        return
    by_key = {(str(e.get("type", "")).lower(), str(e.get("mask", "")).lower()): dict(e)
              for e in (doc.get("entries") if isinstance(doc, dict) else None) or [] if isinstance(e, dict)}
    if not any("was" in by_key.get(k, {}) for k in keys):
        return
    for k in keys:
        by_key.get(k, {}).pop("was", None)
    _write_created(ctx, user, by_key)


def _write_created(ctx: StepContext, user: User, by_key: dict[tuple[str, str], dict[str, Any]]) -> None:
    doc = {"format": 1, "alias": user.alias, "entries": [by_key[k] for k in sorted(by_key)]}
    ctx.artifacts.write(created_name(user), json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False)
                        .encode("utf-8") + b"\n")


def record_acl(ctx: StepContext, user: User, state: PermissionState, host: str) -> str | None:
    """Keep what the directory said (atomic, sha256, like the contact exports); the artifact's
    name, None in check mode (nothing is written). A user the directory has no Exchange IM
    entry for and no earlier record of (moved off Exchange IM before this state directory
    existed) is recorded with no entries, so verify_permissions has a list to check: should
    their entry turn up with an ACL after all, disable_exchange_im refuses it as changed."""
    if ctx.check or state.source == "artifact":
        return None if state.source != "artifact" else artifact_name(user)
    if state.source == "none":
        doc: dict[str, Any] = {"user": user.alias, "im_address": user.im_address, "dn": None, "read_from": host,
                               "note": "no Exchange IM directory entry when read", ACL_ATTRIBUTE: []}
    elif state.acl is None:
        return None
    else:
        doc = {"user": user.alias, "im_address": user.im_address, "dn": state.dn, "read_from": host,
               ACL_ATTRIBUTE: list(state.acl)}
    ctx.artifacts.write(artifact_name(user), json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"))
    return artifact_name(user)


def recorded_acl(ctx: StepContext, user: User) -> list[str] | None:
    """The ACL values the newest record holds (import_permissions' artifact), None without one."""
    raw = ctx.artifacts.read(artifact_name(user))
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    values = doc.get(ACL_ATTRIBUTE) if isinstance(doc, dict) else None
    return [str(v) for v in values] if isinstance(values, list) else None


def read_chunk(items: Sequence[tuple[StepContext, User]], *, directory: bool) -> list[PermissionState | Exception]:
    """Per user (in order) their PermissionState, or the fault of their read. ``directory``:
    read msExchIMACL on the Exchange IM server (one line, or a few), falling back on the
    recorded ACL when the user's entry no longer has IM attributes; without it, the record
    only. Then the chunk's LCS settings and ACEs in one read on their home server."""
    out: list[Any] = [None] * len(items)
    live: list[tuple[int, StepContext, User, str]] = []
    for i, (ctx, user) in enumerate(items):
        try:
            live.append((i, ctx, user, instance_id(user)))
        except PermanentFault as exc:
            out[i] = exc
    found: dict[str, Any] = {}
    if directory and live:
        askable = []
        for i, ctx, user, iid in live:
            if quotable(im_user_query(user.im_address).ldap_filter):
                askable.append((i, ctx, user, iid))
            else:
                out[i] = PermanentFault(f"user {user.alias}: msExchIMAddress {user.im_address!r} cannot go on "
                                        "a command line")
        live = askable
        if live:
            ctx0 = live[0][1]
            host = exchange_server(ctx0.inventory, ctx0.vars)
            try:
                found = im_entries(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, _, u, _ in live],
                                   [u.im_address for _, _, u, _ in live], ("msExchIMAddress", ACL_ATTRIBUTE))
            except Exception as exc:  # noqa: BLE001 - the chunk's read failed: each user's outcome
                for i, *_ in live:
                    out[i] = exc
                return out
    if not live:
        return out
    ctx0, user0 = live[0][1], live[0][2]
    host = home_server(user0, ctx0.inventory, ctx0.vars)
    try:
        script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, _, u, _ in live],
                             limit=line_limit(server_vars(ctx0, host), LCS_LINE), clean=True, script=False)
        iids = [iid for *_, iid in live]
        read = LcsRead(script, iids, contacts=False)
        parts = [(g, script.add(wmic.get(ACE_CLASS, ACE_PROPS, wql_any("UserInstanceID", g)), stderr_too=True,
                                   read=True))
                 for g in groups(list(dict.fromkeys(iids)))]
        script.run()
        states = read.states()
    except Exception as exc:  # noqa: BLE001
        for i, *_ in live:
            out[i] = exc
        return out
    aces: dict[str, Any] = {}
    for g, index in parts:
        sec = script.section(index)
        fault = wmic_fault(sec, f"read allow and block lists on {host}", host)
        for iid in g:
            aces[iid.upper()] = fault if fault is not None else []
        if fault is None:
            for r in wmic.parse_list(sec.stdout if sec else ""):
                key = (r.get("UserInstanceID") or "").strip().upper()
                if isinstance(aces.get(key), list):
                    aces[key].extend(parse_lcs([r]))
    for i, ctx, user, iid in live:
        setting: Any = states.get(iid.upper())
        lcs = aces.get(iid.upper())
        if isinstance(setting, Exception) or isinstance(lcs, Exception):
            out[i] = setting if isinstance(setting, Exception) else lcs
            continue
        entry = found.get(user.im_address.lower()) if directory else None
        if entry is not None:
            state = PermissionState(acl_values(entry.get(ACL_ATTRIBUTE)), entry.dn, "directory")
        else:
            recorded = recorded_acl(ctx, user)
            state = PermissionState(recorded, None, "artifact" if recorded is not None else "none")
        state.user = setting.user if isinstance(setting, UserState) else None
        state.aces = list(lcs or [])
        state.created = read_created(ctx, user)
        out[i] = state
    return out


def permissions_pending(ctx: StepContext, user: User, acl: Sequence[str]) -> str | None:
    """Why disabling Exchange IM would lose ``user``'s allow and block list (their current
    msExchIMACL values ``acl``), or None: no list, or verify_permissions passed on this very list."""
    if not acl:
        return None
    acl = acl_values(acl)
    since = rolled_back_at(ctx, user)   # a rolled-back user's list is verified again before disabling
    for record in ctx.previous("verify_permissions", user.alias):
        data = record.data or {}
        if since and float(getattr(record, "ended", 0) or 0) <= since:
            continue
        if record.status in ("ok", "changed") and data.get("verified"):
            if sorted(str(v) for v in data.get("acl") or []) == sorted(str(v) for v in acl):
                return None
            return (f"{user.alias}'s msExchIMACL changed since verify_permissions passed: a new run "
                    f"(--fresh --limit {user.alias}) imports and verifies it again")
    return (f"verify_permissions has not passed for {user.alias} (their Exchange IM allow and block list, "
            f"{len(acl)} entr{'y' if len(acl) == 1 else 'ies'}, would be lost)")
