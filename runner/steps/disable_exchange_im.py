"""disable_exchange_im: clear a user's Exchange IM attributes once they are safe on LCS.

Refuses unless the user is enabled on LCS and verify_contacts passed for
them in this or an earlier run, or the playbook says users recreate their
contacts themselves (``contacts_recreated_by_users: true``, scenario 1), and
refuses a user whose newest export read their list from no machine (a user
without clients: nothing proves their contacts are on LCS).
``force: true`` overrides the refusal with a loud warning. The change is an
LDIF modify (delete of each msExchIM* attribute still present) put on the
Exchange IM server, applied with ``ldifde -i -f`` and read back in the same
line. Round trips: the probe reads the directory (and, only when there is
something to clear, the user's LCS setting: one line per host); apply puts
the file and runs one line. The probe's line also deletes this user's scratch
``.ldf`` files that a killed run left on the server (runner.lcs.exchange).
"""
from __future__ import annotations

from runner.errors import PermanentFault
from runner.lcs.exchange import IM_ATTRIBUTES, Directory, clear_im_change, exchange_server, im_user_query
from runner.model import User
from runner.steps._lcs import (latest_export, lcs_for, machines_read, recreated_by_users, refusal_warnings,
                               verified)
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import ldif, wmic


class DisableExchangeIm(StepModule):
    """Remove the user's msExchIM* attributes (Exchange IM disabled for them)."""

    name = "disable_exchange_im"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "contacts_recreated_by_users": {"type": "boolean", "default": False},
        "force": {"type": "boolean", "default": False}}}

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        host = exchange_server(ctx.inventory, ctx.vars)
        entry = Directory(ctx.connection(host), host, ctx.vars, owner=target.alias).im_user(target.im_address)
        if entry is None:
            return None
        change = clear_im_change(entry)
        if not change.mods:
            return None
        warnings = refusal_warnings(ctx, self._pending(ctx, target),
                                    action=f"disable Exchange IM for {target.alias}",
                                    forced=f"disabling Exchange IM for {target.alias}")
        lines = [f"- {entry.dn}: {attr}" for _, attr, _ in change.mods] + [f"! {w}" for w in warnings]
        return Diff(f"clear {len(change.mods)} IM attribute(s) of {target.alias}", lines,
                    {"dn": entry.dn, "attrs": [a for _, a, _ in change.mods], "warnings": warnings})

    @staticmethod
    def _pending(ctx: StepContext, user: User) -> str | None:
        """Why the user is not yet safe to disable, or None."""
        server, iid = lcs_for(ctx, user)
        state = server.read(iid, contacts=False)
        if state.user is None or not wmic.parse_bool(state.user.get("Enabled")):
            return f"{user.alias} is not enabled on LCS ({server.host})"
        if recreated_by_users(ctx):
            return None
        if not verified(ctx, user):
            return f"verify_contacts has not passed for {user.alias}"
        found = latest_export(ctx, user)
        if found is not None and not machines_read(ctx, user, found[1]):
            return f"no contact list of {user.alias} was read from any machine"
        return None

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        host = exchange_server(ctx.inventory, ctx.vars)
        d = diff.data
        # put the LDIF, then one line: import, delete it, read the user back
        done = Directory(ctx.connection(host), host, ctx.vars, owner=target.alias).apply(
            [ldif.Change(d["dn"], "modify", [("delete", a, []) for a in d["attrs"]])],
            read_back=[im_user_query(target.im_address)])
        left = [a for e in done.found[0] for a in IM_ATTRIBUTES if e.get(a)]
        if left:
            raise PermanentFault(f"ldifde import on {host} succeeded but {d['dn']} still has "
                                 f"{', '.join(left)}", host=host)
        return StepResult("changed", f"Exchange IM disabled for {target.alias}",
                          {"dn": d["dn"], "cleared": d["attrs"], "forced": bool(d["warnings"])}, d["warnings"])
