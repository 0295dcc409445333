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
"""
from __future__ import annotations

from runner.errors import PermanentFault
from runner.lcs.contacts import parse_export, parse_export_groups, plan_import
from runner.lcs.mapping import mapping_for
from runner.model import User
from runner.steps._lcs import latest_export, lcs_for, require_export
from runner.steps.base import Diff, StepContext, StepModule, StepResult
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
                              "default": "Exchange IM Contacts"}}}

    def _plan(self, ctx: StepContext, user: User):
        found = latest_export(ctx, user)
        if found is None:
            if ctx.check:  # the export step before this one has not run in check mode
                return self._preview(ctx, user)
            found = require_export(ctx, user)
        exported, artifact = found
        raw = ctx.artifacts.read(artifact)
        return self._planned(ctx, user, exported, parse_export_groups(raw) if raw is not None else []) + (artifact,)

    def _preview(self, ctx: StepContext, user: User):
        """Check mode before any export: plan from the clients' registries, read-only
        (the same reads as export_contacts' probe), so the review shows the real contacts."""
        docs = [(host, read_current(ctx, user, host)) for host in user.clients]
        merged = merge(docs)
        return self._planned(ctx, user, parse_export(merged), merged.get("groups", [])) + ("(registry)",)

    def _planned(self, ctx: StepContext, user: User, exported, user_groups):
        server, iid = lcs_for(ctx, user)
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
        plan, server, _, _, artifact = planned
        # apply follows this probe in the same attempt (a retry or a resumed run probes
        # again), so it builds on this plan instead of reading LCS a second time
        self._probed = (target.alias, planned)
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
        probed = getattr(self, "_probed", None)
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
