"""import_contacts: add a user's exported Exchange IM contacts to LCS as a set union.

Reads the newest export artifact of the user, then in one round trip the
user's LCS groups, contacts and the pool's MaxContactsPerUser; plans with
runner.lcs.contacts.plan_import (never duplicate, remove or rename). Apply
builds on the probe's plan (same attempt: the engine probes again before any
retry), creates the missing groups first and re-reads their server-assigned
ids in that line, then the contacts, batched within cmd.exe's line limit. Unmappable, over-limit
and truncated contacts are in the result's data and warnings, computed from the plan on every
attempt (also when nothing is left to add: ``unchanged``), so a retried or resumed import
reports every one of them, not only those this attempt created. In coexistence (gradual
scenarios) ungrouped contacts go to ``coexistence_group``. In check mode
before any export, the plan is made from the clients' registries (read-only),
so ``--check --diff`` lists the contacts a run would add.

Before a contact is created, it is added to the user's record of what the runner
imported (artifact ``lcs-imported/<alias>.json``: SIP URI, name and group names as
sent, durable before the command runs), so a rollback with
``remove_imported_contacts`` can tell the runner's contacts from ones the user
added or edited on LCS (docs/rollback.md), whatever run was killed where.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from runner.errors import PermanentFault, TransientFault
from runner.lcs.chunks import LCS_LINE, ChunkScript, LcsRead, busy_section, line_limit, outcomes
from runner.lcs.contacts import LcsGroup, group_ids_for, parse_export, parse_export_groups, plan_import
from runner.lcs.mapping import mapping_for
from runner.lcs.server import CONTACT_CLASS, GROUP_CLASS, UserState, home_server, instance_id
from runner.model import User
from runner.steps._lcs import (CHUNK_SIZE_ARG, DEFAULT_CHUNK, imported_name, latest_export, lcs_for, require_export,
                               server_vars)
from runner.steps.base import ApplyOutcome, Diff, ProbeOutcome, StepContext, StepModule, StepResult
from runner.windows import wmic
from runner.steps.export_contacts import read_current
from runner.windows.imcontacts import merge


class ImportContacts(StepModule):
    """Create the missing groups and contacts of one user on LCS."""

    name = "import_contacts"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "coexistence": {"type": "boolean", "default": False,
                        "description": "put ungrouped contacts into coexistence_group"},
        "coexistence_group": {"type": "string", "minLength": 1, "maxLength": 128,
                              "default": "Exchange IM Contacts"},
        "chunk_size": CHUNK_SIZE_ARG}}
    chunk = DEFAULT_CHUNK

    def chunk_key(self, ctx: StepContext, target: User) -> str:
        return home_server(target, ctx.inventory, ctx.vars)

    def _plan(self, ctx: StepContext, user: User, state: UserState | None = None):
        found = latest_export(ctx, user)
        if found is None:
            if ctx.check:  # the export step before this one has not run in check mode
                return self._preview(ctx, user, state)
            found = require_export(ctx, user)
        exported, artifact = found
        raw = ctx.artifacts.read(artifact)
        return self._planned(ctx, user, exported, parse_export_groups(raw) if raw is not None else [],
                             state) + (artifact,)

    def _preview(self, ctx: StepContext, user: User, state: UserState | None = None):
        """Check mode before any export: plan from the clients' registries, read-only
        (the same reads as export_contacts' probe), so the review shows the real contacts."""
        docs = [(host, read_current(ctx, user, host)) for host in user.clients]
        merged = merge(docs)
        return self._planned(ctx, user, parse_export(merged), merged.get("groups", []), state) + ("(registry)",)

    def _planned(self, ctx: StepContext, user: User, exported, user_groups, state: UserState | None = None):
        server, iid = lcs_for(ctx, user)
        if state is None:
            state = server.read(iid)
        if state.user is None and not ctx.check:
            raise PermanentFault(f"user {user.alias} is not enabled on {server.host}: run enable_lcs_users first")
        group = None
        if ctx.args.get("coexistence", False):
            group = str(ctx.args.get("coexistence_group") or "Exchange IM Contacts")
        plan = plan_import(exported, state.contacts, state.groups, mapping_for(ctx.vars, ctx.inventory, user),
                           max_contacts=state.max_contacts, coexistence_group=group, user_groups=user_groups)
        return plan, server, iid, state.groups

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        planned = self._plan(ctx, target)
        # apply follows this probe in the same attempt (a retry or a resumed run probes
        # again), so it builds on this plan instead of reading LCS a second time
        self._probed = (target.alias, planned)
        return self._diff(planned)

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The chunk's users' LCS groups and contacts (and the pool's limit) in one read on
        their home server (a line or a few), each planned against that user's own export."""
        out: list[ProbeOutcome] = [None] * len(items)
        self._many_probed: dict[str, Any] = {}
        ctx0, user0 = items[0]
        try:
            host = home_server(user0, ctx0.inventory, ctx0.vars)
            iids = []
            for _, user in items:
                try:
                    iids.append(instance_id(user))
                except PermanentFault:
                    pass
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, u in items],
                                 limit=line_limit(server_vars(ctx0, host), LCS_LINE), clean=True, script=False)
            read = LcsRead(script, iids)
            script.run()
            states = read.states()
        except Exception as exc:  # noqa: BLE001 - the chunk's read failed: each user's outcome
            return [exc] * len(items)
        for i, (ctx, user) in enumerate(items):
            try:
                state = states.get(instance_id(user).upper())
                if isinstance(state, Exception):
                    raise state
                planned = self._plan(ctx, user, state)
                self._many_probed[user.alias] = planned
                out[i] = self._diff(planned)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        return out

    def _diff(self, planned: Any) -> Diff | None:
        plan, server, _, _, artifact = planned
        if not plan.changes:
            return None
        lines = [f"+ group {g!r}" for g in plan.groups_to_create]
        lines += [f"+ contact {c.uri} ({c.name!r}{', ' + ', '.join(c.groups) if c.groups else ''})"
                  for c in plan.contacts_to_add]
        lines += [f"! {w}" for w in plan.warnings()]
        return Diff(f"add {len(plan.contacts_to_add)} contact(s), {len(plan.groups_to_create)} group(s) "
                    f"on {server.host}", lines, {"artifact": artifact})

    def unchanged(self, ctx: StepContext, target: User) -> StepResult:
        """Nothing left to add (a retry, or a run resumed after the import finished but
        before its outcome was recorded): ok, with the plan's warnings all the same."""
        many = getattr(self, "_many_probed", None) or {}
        probed = (target.alias, many.pop(target.alias)) if target.alias in many else getattr(self, "_probed", None)
        self._probed = None
        if probed is None or probed[0] != target.alias:
            return StepResult("ok")
        plan, server, _, _, artifact = probed[1]
        data = {**plan.as_dict(), "artifact": artifact, "created": [], "failed": []}
        return StepResult("ok", f"nothing to add ({len(plan.already_present)} contact(s) already on "
                          f"{server.host})", data, plan.warnings())

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        probed = getattr(self, "_probed", None)
        self._probed = None
        # Without this instance's probe of this user just before, re-plan from a fresh read.
        planned = probed[1] if probed is not None and probed[0] == target.alias else self._plan(ctx, target)
        plan, server, iid, groups, artifact = planned
        warnings = plan.warnings()
        failures: list[str] = []
        if plan.groups_to_create:  # creates them and re-reads the server-assigned ids in one line
            groups, failures = server.create_groups(iid, plan.groups_to_create)
        if plan.contacts_to_add:
            record_imported(ctx, target, [sent_contact(c.uri, c.name, group_ids_for(c.groups, groups), groups)
                                          for c in plan.contacts_to_add])
        created, failed = server.create_contacts(iid, plan.contacts_to_add, groups) if plan.contacts_to_add \
            else ([], [])
        data = {**plan.as_dict(), "artifact": artifact, "created": created, "failed": failed}
        warnings += failures
        if failed:
            return StepResult("failed", f"{len(failed)} contact(s) could not be created on {server.host}: "
                              + ", ".join(failed[:10]), data, warnings)
        status = "changed" if created or plan.groups_to_create else "ok"
        return StepResult(status, f"added {len(created)} contact(s), {len(plan.groups_to_create)} group(s)",
                          data, warnings)

    def apply_many(self, items: Sequence[tuple[StepContext, User, Diff]]) -> list[ApplyOutcome]:
        """The chunk's imports on their home server: every user's missing groups created and
        read back in one script (only when some user needs a group), then every user's
        contacts created in one more; each user's created and failed contacts from their own
        sections. A user whose commands met a busy server is retried (TransientFault)."""
        many = getattr(self, "_many_probed", None) or {}
        plans = []
        for ctx, user, _ in items:
            planned = many.pop(user.alias, None) or self._plan(ctx, user)
            plans.append(planned)
        ctx0, _, _ = items[0]
        host = plans[0][1].host
        conn = plans[0][1].conn
        limit = line_limit(server_vars(ctx0, host), LCS_LINE)
        owners = [u.alias for _, u, _ in items]
        group_of: dict[int, list[LcsGroup]] = {n: list(p[3]) for n, p in enumerate(plans)}
        group_failures: dict[int, list[str]] = {n: [] for n in range(len(items))}
        busy: dict[int, str] = {}
        try:
            need = [n for n, p in enumerate(plans) if p[0].groups_to_create]
            if need:
                script = ChunkScript(conn, host, server_vars(ctx0, host), owners, limit=limit)
                made = {n: [script.add(wmic.create(GROUP_CLASS, {"UserInstanceID": plans[n][2],
                                                                 "Name": wmic.clean_text(g)}), stderr_too=True,
                                       commutes=True)
                            for g in plans[n][0].groups_to_create] for n in need}
                read = LcsRead(script, [plans[n][2] for n in need], only_groups=True)
                script.run()
                states = read.states()
                for n in need:
                    for g, i in zip(plans[n][0].groups_to_create, made[n]):
                        sec = script.section(i)
                        if sec is None or not sec.ok or "ERROR:" in sec.stdout:
                            if busy_section(sec):
                                busy[n] = f"creating group {g!r}"
                            group_failures[n].append(f"group {g!r} not created")
                    state = states.get(plans[n][2].upper())
                    if isinstance(state, UserState):
                        group_of[n] = state.groups
                    else:  # the new groups' ids are unknown: no contact may go in without them
                        busy.setdefault(n, "reading the new groups back")
            script = ChunkScript(conn, host, server_vars(ctx0, host), owners, limit=limit)
            sections: dict[int, list[tuple[str, int]]] = {}
            for n, p in enumerate(plans):
                if n in busy:
                    continue
                sent = []
                for c in p[0].contacts_to_add:
                    values: dict[str, Any] = {"UserInstanceID": p[2], "SIPURI": c.uri}
                    if c.name:
                        values["Name"] = wmic.clean_text(c.name)
                    values["Subscribed"] = True
                    ids = group_ids_for(c.groups, group_of[n])
                    if ids:
                        values["GroupID"] = list(ids)
                    sent.append(sent_contact(c.uri, c.name, ids, group_of[n]))
                    sections.setdefault(n, []).append((c.uri, script.add(wmic.create(CONTACT_CLASS, values),
                                                                         stderr_too=True, commutes=True)))
                if sent:  # durable before the commands run (a kill in between leaves a superset)
                    record_imported(items[n][0], items[n][1], sent)
            if script.commands:
                script.run()
        except Exception as exc:  # noqa: BLE001 - the chunk's commands did not run: each user's outcome
            return [exc] * len(items)
        out: list[ApplyOutcome] = []
        for n, ((ctx, user, _), planned) in enumerate(zip(items, plans)):
            if n in busy:
                out.append(TransientFault(f"LCS server {host} busy while {busy[n]} for {user.alias}", host=host))
                continue
            created, failed, retry = outcomes(script, sections.get(n, []))
            if retry:
                out.append(TransientFault(f"LCS server {host} busy while adding {user.alias}'s contacts "
                                          f"({len(created)} added, {len(failed)} left)", host=host))
                continue
            plan, server, iid, groups, artifact = planned
            data = {**plan.as_dict(), "artifact": artifact, "created": created, "failed": failed}
            warnings = plan.warnings() + group_failures[n]
            if failed:
                out.append(StepResult("failed", f"{len(failed)} contact(s) could not be created on {host}: "
                                      + ", ".join(failed[:10]), data, warnings))
                continue
            status = "changed" if created or plan.groups_to_create else "ok"
            out.append(StepResult(status, f"added {len(created)} contact(s), {len(plan.groups_to_create)} group(s)",
                                  data, warnings))
        return out


def sent_contact(uri: str, name: str, ids: Sequence[int], groups: Sequence[LcsGroup]) -> dict[str, Any]:
    """A contact as import_contacts creates it on LCS: SIP URI, Name as sent, group names."""
    names = {g.id: g.name for g in groups}
    return {"uri": uri, "name": wmic.clean_text(name) if name else "",
            "groups": sorted(names[i] for i in ids if i in names)}


def read_imported(ctx: StepContext, user: User) -> list[dict[str, Any]]:
    """The contacts import_contacts created (or was about to create) for ``user`` on LCS."""
    raw = ctx.artifacts.read(imported_name(user.alias))
    try:
        doc = json.loads(raw) if raw is not None else {}
    except ValueError:
        doc = {}
    found = doc.get("contacts") if isinstance(doc, Mapping) else None
    return [c for c in found if isinstance(c, Mapping) and isinstance(c.get("uri"), str)] if isinstance(found, list) \
        else []


def record_imported(ctx: StepContext, user: User, sent: Sequence[Mapping[str, Any]]) -> None:
    """Add ``sent`` to the user's record of imported contacts (one entry per SIP URI, the
    latest form kept; sorted, so the same contacts are the same bytes)."""
    by_uri = {c["uri"].casefold(): dict(c) for c in read_imported(ctx, user)}
    for c in sent:
        by_uri[c["uri"].casefold()] = dict(c)
    doc = {"format": 1, "alias": user.alias, "contacts": [by_uri[k] for k in sorted(by_uri)]}
    ctx.artifacts.write(imported_name(user.alias), json.dumps(doc, sort_keys=True, indent=1).encode("utf-8") + b"\n")
