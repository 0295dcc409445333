"""enable_lcs_users: home each user on LCS (MSFT_SIPESUserSetting) with the mapped SIP URI.

The SIP URI comes from ``user.sip_uri`` or the inventory's ``sip_mapping``;
the home server DN from var ``lcs_home_server_dn``; the user's DN from
``user.vars.user_dn`` or, failing that, the directory (ldifde on the Exchange
IM server, by msExchIMAddress). A user already enabled with a different URI
is a failure, never overwritten: the administrator decides.
"""
from __future__ import annotations

from typing import Any

from runner.errors import PermanentFault
from runner.lcs.exchange import Directory, exchange_server
from runner.lcs.mapping import Unmappable, user_sip_uri
from runner.lcs.server import USER_CLASS
from runner.model import User
from runner.steps._lcs import lcs_for
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import wmic


class EnableLcsUsers(StepModule):
    """Create (or re-enable) the user's MSFT_SIPESUserSetting on their home server."""

    name = "enable_lcs_users"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "home_server_dn": {"type": "string", "description": "overrides var lcs_home_server_dn"}}}

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        mapped = user_sip_uri(target, ctx.vars, ctx.inventory)
        if isinstance(mapped, Unmappable):
            raise PermanentFault(f"user {target.alias} has no valid SIP URI: {mapped.reason}")
        server, iid = lcs_for(ctx, target)
        state = server.read(iid, contacts=False)
        if state.user is not None:
            current = state.user.get("PrimaryURI", "")
            if current.lower() != mapped.uri.lower():
                raise PermanentFault(
                    f"user {target.alias} is already enabled on {server.host} as {current}, not {mapped.uri}; "
                    "not overwritten (fix the mapping or the LCS user)")
            if wmic.parse_bool(state.user.get("Enabled")):
                return None
            return Diff(f"re-enable {mapped.uri} on {server.host}", [f"~ {target.alias}: Enabled FALSE -> TRUE"],
                        {"action": "set", "uri": mapped.uri, "iid": iid})
        home_dn = str(ctx.args.get("home_server_dn") or ctx.vars.get("lcs_home_server_dn") or "")
        if not home_dn:
            raise PermanentFault("set var lcs_home_server_dn (the LCS home server's DN)")
        user_dn = (target.vars or {}).get("user_dn") or self._lookup_dn(ctx, target)
        return Diff(f"enable {mapped.uri} on {server.host}", [f"+ {target.alias}: {mapped.uri} homed on {home_dn}"],
                    {"action": "create", "uri": mapped.uri, "iid": iid, "user_dn": user_dn, "home_dn": home_dn})

    @staticmethod
    def _lookup_dn(ctx: StepContext, user: User) -> str:
        host = exchange_server(ctx.inventory, ctx.vars)
        entry = Directory(ctx.connection(host), host, ctx.vars).im_user(user.im_address)
        if entry is None:
            raise PermanentFault(f"user {user.alias}: no directory entry with msExchIMAddress={user.im_address}; "
                                 "set user vars.user_dn")
        return entry.dn

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        d: dict[str, Any] = diff.data
        server, iid = lcs_for(ctx, target)
        if d["action"] == "set":
            cmd = wmic.set_(USER_CLASS, wmic.where(InstanceID=iid), {"Enabled": True})
            res = server.conn.run(cmd.render())
            wmic.raise_for(wmic.outcome(res.stdout, res.stderr, res.ok), f"re-enable {d['uri']}", server.host)
        else:
            server.enable(iid, d["user_dn"], d["home_dn"], d["uri"])
        return StepResult("changed", diff.summary, {"sip_uri": d["uri"], "lcs_server": server.host})
