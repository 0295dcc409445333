"""verify_permissions: read a user's LCS allow and block list back and compare it with their ACL.

The ACL is the one import_permissions read from the directory and kept
(artifact ``permissions/<alias>/acl.json``, on disk
``permissions/<alias>/acl.<sha12>.json``); every entry of it that maps must be on
LCS with its (Type, Mask) key and, if the runner created it, with the values
Exchange IM gives it now. An entry LCS holds with other values that a user or
an administrator set on LCS passes, with a warning (import is a set union and
never overwrites it); one the runner created and nobody changed since, still
holding an older value (an update that did not happen), fails. Missing entries fail
the task, by name. Passing is recorded as ``data.verified = true`` together
with the ACL values verified: disable_exchange_im refuses to clear a user's
msExchIMACL unless that very list was verified. Read-only; one wmic read per
chunk on the home server. docs/permissions.md.
"""
from __future__ import annotations

from typing import Any

from runner.errors import PermanentFault
from runner.lcs.mapping import mapping_for
from runner.lcs.permissions import plan
from runner.lcs.server import home_server
from runner.model import User
from runner.steps._permissions import PermissionStep, entries, PermissionState, acl_file, missing_acl
from runner.steps.base import Diff, StepContext, StepResult


class VerifyPermissions(PermissionStep):
    """Compare LCS's allow and block list with the recorded Exchange IM ACL; read-only."""

    name = "verify_permissions"
    read_only = True

    def judge(self, ctx: StepContext, user: User, state: PermissionState) -> Diff:
        """The user's LCS entries compared with their recorded ACL (always handed to apply,
        which reports: verification is the result)."""
        host = home_server(user, ctx.inventory, ctx.vars)
        if state.acl is None:
            if ctx.check:
                return Diff(f"verify {user.alias}'s allow and block list once it is imported", [], {"pending": True})
            raise PermanentFault(f"no allow and block list read for {user.alias} ({missing_acl(user)}): "
                                 "run import_permissions for this user first")
        p = plan(state.acl, state.aces, mapping_for(ctx.vars, ctx.inventory, user), state.created)
        data: dict[str, Any] = {
            "acl_file": acl_file(ctx, user),
            "verified": not p.to_add and not p.to_update and state.user is not None, "acl": list(state.acl),
            "expected": p.expected, "present": len(p.present) + len(p.kept),
            "missing": [e.describe() for e in p.to_add]
            + [f"{e.describe()} (LCS still has the runner's earlier presence {was.presence}, communication "
               f"{was.communication})" for e, was in p.to_update],
            "kept": [w for w in p.warnings() if w.startswith("permission ")],
            "unmappable": [{"value": u.value, "reason": u.reason} for u in p.unmappable]}
        return Diff(f"verify {entries(p.expected)} on {host}", [], data)

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        d = diff.data
        if d.get("pending"):
            return StepResult("skipped", diff.summary)
        # one line per kind: import_permissions reported each entry with its reason
        warnings = []
        if d["unmappable"]:
            warnings.append(f"{entries(len(d['unmappable']), 'unmappable ')} not on LCS: "
                            + ", ".join(u["value"] for u in d["unmappable"]))
        warnings += d["kept"]  # the same lines as import_permissions': counted once
        if not d["verified"] and ctx.check:
            return StepResult("skipped", f"check mode: not verified yet ({entries(len(d['missing']))} not "
                              "imported yet)", d, warnings)
        if not d["verified"]:
            missing = d["missing"]
            msg = (f"{entries(len(missing))} missing or outdated on LCS: " + "; ".join(missing[:20])
                   + (" ..." if len(missing) > 20 else "")) if missing else f"{target.alias} is not enabled on LCS"
            return StepResult("failed", msg, d, warnings)
        return StepResult("ok", f"{d['present']}/{entries(d['expected'])} present", d, warnings)
