"""import_permissions: a user's Exchange IM allow and block list onto LCS, as a set union.

The probe reads, for a chunk of users, their ``msExchIMACL`` on the Exchange
IM server (one ldifde search) and their MSFT_SIPESUserACEData on their LCS
home server (one wmic query), and plans with runner.lcs.permissions.plan:
each ACL entry becomes an LCS entry keyed (Type, Mask), people mapped to SIP
URIs by the same ``sip_mapping`` as contacts, domains by its ``domains``.
An entry already on LCS with other values is kept (a user's own setting
wins), unless the runner created it itself and it still has the values it was
given (``permissions/<alias>/created.json``, recorded before each create or
update, so a kill in between cannot lose track of it): that one is updated to
what Exchange IM says now, e.g. a list changed during a rollback. Entries that cannot be read or mapped are in the result's data and
warnings on every attempt, also when nothing is left to create. Apply
creates the chunk's missing entries and updates its own outdated ones in one script on the pool server, each
user's outcome read from their own sections. What the directory said is
kept as the artifact ``permissions/<alias>/acl.json`` (on disk
``permissions/<alias>/acl.<sha12>.json``, docs/state-directory.md; so verify, report and
a rerun after disable_exchange_im still know it). docs/permissions.md.
"""
from __future__ import annotations

from typing import Any, Sequence

from runner.errors import PermanentFault, TransientFault
from runner.lcs.chunks import LCS_LINE, ChunkScript, line_limit, outcomes
from runner.lcs.mapping import mapping_for
from runner.lcs.permissions import ACE_CLASS, PermissionPlan, plan
from runner.lcs.server import home_server, instance_id
from runner.model import User
from runner.steps._permissions import (PermissionStep, entries, PermissionState, acl_file, confirm_created,
                                       record_acl, record_created)
from runner.steps._lcs import server_vars
from runner.steps.base import ApplyOutcome, Diff, ProbeOutcome, StepContext, StepResult
from runner.windows import wmic


class ImportPermissions(PermissionStep):
    """Create the missing allow and block list entries of one user on LCS."""

    name = "import_permissions"

    reads_directory = True

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The chunk's ACLs in one ldifde search and their LCS entries in one wmic read, each
        user planned against their own entries."""
        self._many_probed: dict[str, Any] = {}
        return super().probe_many(items)

    def judge(self, ctx: StepContext, user: User, state: PermissionState) -> Diff | None:
        host = home_server(user, ctx.inventory, ctx.vars)
        if state.user is None and not ctx.check:
            raise PermanentFault(f"user {user.alias} is not enabled on {host}: run enable_lcs_users first")
        p = plan(state.acl or [], state.aces, mapping_for(ctx.vars, ctx.inventory, user), state.created)
        self._many_probed[user.alias] = (state, p, host)
        if not p.to_add and not p.to_update:
            return None
        lines = ([f"+ {e.describe()}" for e in p.to_add]
                 + [f"~ {e.describe()} (was presence {was.presence}, communication {was.communication}, as the "
                    "runner created it)" for e, was in p.to_update]
                 + [f"! {w}" for w in p.warnings()])
        what = [f"add {len(p.to_add)}"] if p.to_add else []
        what += [f"update {len(p.to_update)}"] if p.to_update else []
        n = len(p.to_add) + len(p.to_update)
        return Diff(f"{' and '.join(what)} allow/block entr{'y' if n == 1 else 'ies'} on {host}", lines, {})

    @staticmethod
    def _data(state: PermissionState, p: PermissionPlan, artifact: str | None, created: list[str],
              failed: list[str], updated: list[str] | None = None, acl_file: str | None = None) -> dict[str, Any]:
        return {**p.as_dict(), "source": state.source, "artifact": artifact, "acl_file": acl_file, "acl_values": len(state.acl or []),
                "created": created, "updated": updated or [], "failed": failed}

    @staticmethod
    def _warnings(user: User, state: PermissionState, p: PermissionPlan) -> list[str]:
        out = p.warnings()
        if state.source == "none":
            out.insert(0, f"{user.alias} has no Exchange IM directory entry and no earlier read of their "
                          "allow and block list: nothing imported")
        return out

    def unchanged(self, ctx: StepContext, target: User) -> StepResult:
        """Nothing left to create: ok, with the unmappable and kept entries all the same."""
        probed = (getattr(self, "_many_probed", None) or {}).pop(target.alias, None)
        if probed is None:
            return StepResult("ok")
        state, p, host = probed
        artifact = record_acl(ctx, target, state, host)
        return StepResult("ok", f"nothing to add ({entries(len(p.present) + len(p.kept))} already on {host})",
                          self._data(state, p, artifact, [], [], None, acl_file(ctx, target) if artifact else None),
                          self._warnings(target, state, p))

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        result = self.apply_many([(ctx, target, diff)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def apply_many(self, items: Sequence[tuple[StepContext, User, Diff]]) -> list[ApplyOutcome]:
        """Every user's missing entries created in one script on the pool server; each user's
        created and failed entries from their own sections, a busy server retried for them."""
        many = dict(getattr(self, "_many_probed", None) or {})
        missing = [(ctx, user) for ctx, user, _ in items if user.alias not in many]
        faults: dict[str, Exception] = {}
        if missing:  # no probe of these users just before on this instance: probe them now
            for (_, user), found in zip(missing, self.probe_many(missing)):
                if isinstance(found, Exception):
                    faults[user.alias] = found
            many.update(self._many_probed)
        self._many_probed = {}
        if faults:
            rest = [(c, u, d) for c, u, d in items if u.alias not in faults]
            done = iter(self._apply_probed(rest, many) if rest else [])
            return [faults[u.alias] if u.alias in faults else next(done) for _, u, _ in items]
        return self._apply_probed(items, many)

    def _apply_probed(self, items: Sequence[tuple[StepContext, User, Diff]],
                      many: dict[str, Any]) -> list[ApplyOutcome]:
        """apply_many once every user of ``items`` has their probe in ``many``."""
        probed = [many[user.alias] for _, user, _ in items]
        ctx0 = items[0][0]
        host = probed[0][2]
        artifacts: list[str | None] = []
        try:
            for (ctx, user, _), (state, _, h) in zip(items, probed):
                artifacts.append(record_acl(ctx, user, state, h))  # what AD said, before LCS changes
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, u, _ in items],
                                 limit=line_limit(server_vars(ctx0, host), LCS_LINE))
            sections: dict[int, list[tuple[str, int]]] = {}
            updates: dict[int, list[tuple[str, int]]] = {}
            for n, ((ctx, user, _), (_, p, _)) in enumerate(zip(items, probed)):
                iid = instance_id(user)
                if not ctx.check and (p.to_add or p.to_update):  # recorded before LCS has them
                    record_created(ctx, user, [(e, None) for e in p.to_add] + list(p.to_update))
                for e, was in p.to_update:  # keys cannot be updated on LCS; the values can
                    keys: dict[str, Any] = {"UserInstanceID": iid, "Type": was.type}
                    if was.mask:
                        keys["Mask"] = was.mask
                    updates.setdefault(n, []).append((e.describe(), script.add(
                        wmic.set_(ACE_CLASS, wmic.where(**keys), {"Presence": e.presence,
                                                                   "Communication": e.communication}),
                        stderr_too=True, commutes=True)))
                for e in p.to_add:
                    values: dict[str, Any] = {"UserInstanceID": iid, "Type": e.type}
                    if e.mask:
                        values["Mask"] = e.mask
                    values["Presence"] = e.presence
                    values["Communication"] = e.communication
                    sections.setdefault(n, []).append((e.describe(), script.add(wmic.create(ACE_CLASS, values),
                                                                               stderr_too=True, commutes=True)))
            if script.commands:
                script.run()
        except Exception as exc:  # noqa: BLE001 - the chunk's commands did not run: each user's outcome
            return [exc] * len(items)
        out: list[ApplyOutcome] = []
        for n, ((ctx, user, _), (state, p, _)) in enumerate(zip(items, probed)):
            created, failed, busy = outcomes(script, sections.get(n, []))
            updated, not_updated, busy_too = outcomes(script, updates.get(n, []))
            failed += not_updated
            busy = busy or busy_too
            if updated and not ctx.check:
                confirm_created(ctx, user, [e.key() for e, _ in p.to_update if e.describe() in updated])
            if busy:
                out.append(TransientFault(f"LCS server {host} busy while adding {user.alias}'s allow and block "
                                          f"list ({len(created)} added, {len(failed)} left)", host=host))
                continue
            data = self._data(state, p, artifacts[n], created, failed, updated,
                              acl_file(ctx, user) if artifacts[n] else None)
            warnings = self._warnings(user, state, p)
            if failed:
                out.append(StepResult("failed", f"{entries(len(failed))} could not be set on "
                                      f"{host}: " + "; ".join(failed[:10]), data, warnings))
                continue
            done = f"added {len(created)} allow/block entr{'y' if len(created) == 1 else 'ies'}"
            if updated:
                done += f", updated {len(updated)} the runner had created to their new Exchange IM values"
            out.append(StepResult("changed" if created or updated else "ok", done, data, warnings))
        return out
