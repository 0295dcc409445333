"""verify_contacts: read a user's LCS contacts back and compare them with the export.

Every mappable contact of the newest export must be on LCS, except those
that could not fit because the user is at MaxContactsPerUser (reported as
warnings). Missing contacts fail the task, by name. Passing is recorded as
``data.verified = true``: disable_exchange_im relies on it.

An export that read no machine (a user without clients) proves nothing, as
"0/0 contacts present" would: such a user fails, unless the playbook says
users recreate their contacts (``contacts_recreated_by_users: true``, as an
argument or a variable), when it passes with a warning.
"""
from __future__ import annotations

from typing import Any, Sequence

from runner.lcs.chunks import LCS_LINE, ChunkScript, LcsRead, line_limit
from runner.lcs.contacts import verify
from runner.lcs.mapping import mapping_for
from runner.lcs.server import UserState, home_server, instance_id
from runner.model import User
from runner.steps._lcs import (CHUNK_SIZE_ARG, DEFAULT_CHUNK, latest_export, lcs_for, machines_read,
                               recreated_by_users, require_export, server_vars)
from runner.steps.base import Diff, ProbeOutcome, StepContext, StepModule, StepResult


class VerifyContacts(StepModule):
    """Compare LCS with the export; read-only."""

    name = "verify_contacts"
    target = "user"
    read_only = True
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "contacts_recreated_by_users": {"type": "boolean", "default": False,
                                        "description": "pass users whose contact list was read from no machine"},
        "chunk_size": CHUNK_SIZE_ARG}}

    chunk = DEFAULT_CHUNK

    def chunk_key(self, ctx: StepContext, target: User) -> str:
        return home_server(target, ctx.inventory, ctx.vars)

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        if ctx.check and latest_export(ctx, target) is None:
            return Diff(f"verify {target.alias}'s contacts once they are exported", [], {"pending": True})
        exported, artifact = require_export(ctx, target)
        server, iid = lcs_for(ctx, target)
        return self._verdict(ctx, target, exported, artifact, server.read(iid), server.host)

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The chunk's users' LCS contacts in one round trip on their home server (a line or a
        few, read-only), each compared with that user's own export."""
        out: list[ProbeOutcome] = [None] * len(items)
        live: list[tuple[int, StepContext, User, Any, str, str]] = []
        for i, (ctx, user) in enumerate(items):
            try:
                if ctx.check and latest_export(ctx, user) is None:
                    out[i] = Diff(f"verify {user.alias}'s contacts once they are exported", [], {"pending": True})
                    continue
                exported, artifact = require_export(ctx, user)
                live.append((i, ctx, user, exported, artifact, instance_id(user)))
            except Exception as exc:  # noqa: BLE001 - this user's outcome
                out[i] = exc
        if not live:
            return out
        ctx0, user0 = live[0][1], live[0][2]
        host = home_server(user0, ctx0.inventory, ctx0.vars)
        try:
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, _, u, *_ in live],
                                 limit=line_limit(server_vars(ctx0, host), LCS_LINE), clean=True, script=False)
            read = LcsRead(script, [iid for *_, iid in live])
            script.run()
            states = read.states()
        except Exception as exc:  # noqa: BLE001 - the chunk's read failed: each user's outcome
            for i, *_ in live:
                out[i] = exc
            return out
        for i, ctx, user, exported, artifact, iid in live:
            try:
                state = states[iid.upper()]
                if isinstance(state, Exception):
                    raise state
                out[i] = self._verdict(ctx, user, exported, artifact, state, host)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        return out

    @staticmethod
    def _verdict(ctx: StepContext, target: User, exported: Any, artifact: str, state: UserState,
                 host: str) -> Diff:
        ver = verify(exported, state.contacts, mapping_for(ctx.vars, ctx.inventory, target),
                     max_contacts=state.max_contacts)
        read = machines_read(ctx, target, artifact)
        no_list = not read and not recreated_by_users(ctx)
        data = {"verified": ver.passed and state.user is not None and not no_list, "artifact": artifact,
                "machines_read": read, "no_list": not read,
                "expected": ver.expected, "present": ver.present, "missing": ver.missing,
                "over_limit": ver.over_limit,
                "unmappable": [{"address": u.address, "reason": u.reason} for u in ver.unmappable]}
        # Always hand over to apply, which only reports: verification is the result.
        return Diff(f"verify {ver.expected} contact(s) on {host}", [], data)

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        d = diff.data
        if d.get("pending"):
            return StepResult("skipped", diff.summary)
        # One line per kind: import_contacts already reported each contact with its reason.
        warnings = []
        if d["over_limit"]:
            warnings.append(f"{len(d['over_limit'])} contact(s) not on LCS, over the server's per-user limit: "
                            + ", ".join(d["over_limit"]))
        if d["unmappable"]:
            warnings.append(f"{len(d['unmappable'])} unmappable contact(s) not on LCS: "
                            + ", ".join(u["address"] for u in d["unmappable"]))
        if not d["verified"] and ctx.check:
            return StepResult("skipped", f"check mode: not verified yet ({len(d['missing'])} contact(s) "
                              "not imported yet)", d, warnings)
        if d.get("no_list"):
            warnings.insert(0, f"no contact list of {target.alias} was read from any machine"
                            + (" (contacts_recreated_by_users: true)" if d["verified"] else ""))
        if not d["verified"] and d.get("no_list"):
            return StepResult("failed", f"no contact list of {target.alias} was read from any machine (no "
                              "clients in the inventory): nothing verified, Exchange IM stays enabled "
                              "(contacts_recreated_by_users: true if users recreate their contacts)", d, warnings)
        if not d["verified"]:
            missing = d["missing"]
            msg = (f"{len(missing)} contact(s) missing on LCS: {', '.join(missing[:20])}"
                   + (" ..." if len(missing) > 20 else "")) if missing else f"{target.alias} is not enabled on LCS"
            return StepResult("failed", msg, d, warnings)
        return StepResult("ok", f"{d['present']}/{d['expected']} contact(s) present", d, warnings)
