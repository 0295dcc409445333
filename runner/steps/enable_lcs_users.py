"""enable_lcs_users: home each user on LCS (MSFT_SIPESUserSetting) with the mapped SIP URI.

The SIP URI comes from ``user.sip_uri`` or the inventory's ``sip_mapping``;
the home server DN from var ``lcs_home_server_dn``; the user's DN from
``user.vars.user_dn`` or, failing that, the directory (ldifde on the Exchange
IM server, by msExchIMAddress). A user already enabled with a different URI
is a failure, never overwritten: the administrator decides.

An enable is finished only when AD says so too: the probe reads the user's
LCS setting and, in the same line on the LCS server, the AD object holding the
SIP URI (ldifde); a missing ``msRTCSIP-PrimaryUserAddress``,
``msRTCSIP-UserEnabled``, ``msRTCSIP-PrimaryHomeServer`` or ``sip:``
proxyAddresses value is a partly done enable, which apply finishes by setting
the user setting again (LCS writes the attributes) and reading AD back (still
missing: a TransientFault, retried, since the domain controller ldifde reads
may not have replicated LCS's write yet).
"""
from __future__ import annotations

from typing import Any

from runner.errors import PermanentFault, TransientFault
from runner.lcs.exchange import Directory, exchange_server, rtc_missing, rtc_query
from runner.lcs.mapping import Unmappable, user_sip_uri
from runner.lcs.server import USER_CLASS, USER_PROPS, LcsServer
from runner.model import User
from runner.steps._lcs import lcs_for
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import ldif, wmic


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
        user, entries = self._read(ctx, server, iid, mapped.uri, target.alias)
        if user is not None:
            current = user.get("PrimaryURI", "")
            if current.lower() != mapped.uri.lower():
                raise PermanentFault(
                    f"user {target.alias} is already enabled on {server.host} as {current}, not {mapped.uri}; "
                    "not overwritten (fix the mapping or the LCS user)")
            user_dn = str(user.get("UserDN") or "")
            home_dn = str(user.get("HomeServerDN") or "")
            data = {"action": "set", "uri": mapped.uri, "iid": iid, "user_dn": user_dn, "home_dn": home_dn}
            if not wmic.parse_bool(user.get("Enabled")):
                return Diff(f"re-enable {mapped.uri} on {server.host}", [f"~ {target.alias}: Enabled FALSE -> TRUE"],
                            data)
            missing = rtc_missing(entries, user_dn, mapped.uri, home_dn)
            if not missing:
                return None
            return Diff(f"finish the enable of {mapped.uri} on {server.host} (AD lacks {', '.join(missing)})",
                        [f"~ {target.alias}: enabled on LCS but AD lacks {', '.join(missing)}: set again"],
                        dict(data, missing=missing))
        home_dn = str(ctx.args.get("home_server_dn") or ctx.vars.get("lcs_home_server_dn") or "")
        if not home_dn:
            raise PermanentFault("set var lcs_home_server_dn (the LCS home server's DN)")
        user_dn = (target.vars or {}).get("user_dn") or self._lookup_dn(ctx, target)
        return Diff(f"enable {mapped.uri} on {server.host}", [f"+ {target.alias}: {mapped.uri} homed on {home_dn}"],
                    {"action": "create", "uri": mapped.uri, "iid": iid, "user_dn": user_dn, "home_dn": home_dn})

    @staticmethod
    def _read(ctx: StepContext, server: LcsServer, iid: str, uri: str, alias: str
              ) -> tuple[dict[str, str] | None, list[ldif.Entry]]:
        """The user's MSFT_SIPESUserSetting and the AD entries holding ``uri``, in one line on
        the LCS server; a failed wmic read is read again through LcsServer for its fault."""
        secs, (entries,) = Directory(server.conn, server.host, ctx.vars, owner=alias).read(
            [rtc_query(uri)], [wmic.get(USER_CLASS, USER_PROPS, wmic.where(InstanceID=iid))])
        if secs[0] is None or not secs[0].ok:
            return server.read(iid, contacts=False).user, entries
        users = wmic.parse_list(secs[0].stdout)
        return (users[0] if users else None), entries

    @staticmethod
    def _ad_missing(ctx: StepContext, server: LcsServer, alias: str, user_dn: str, uri: str,
                    home_dn: str) -> list[str]:
        """What the user's AD object lacks of the enable (ldifde on the LCS server)."""
        q = rtc_query(uri)
        return rtc_missing(Directory(server.conn, server.host, ctx.vars, owner=alias).search(q.ldap_filter, q.attrs),
                           user_dn, uri, home_dn)

    @staticmethod
    def _lookup_dn(ctx: StepContext, user: User) -> str:
        host = exchange_server(ctx.inventory, ctx.vars)
        entry = Directory(ctx.connection(host), host, ctx.vars, owner=user.alias).im_user(user.im_address)
        if entry is None:
            raise PermanentFault(f"user {user.alias}: no directory entry with msExchIMAddress={user.im_address}; "
                                 "set user vars.user_dn")
        return entry.dn

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        d: dict[str, Any] = diff.data
        server, iid = lcs_for(ctx, target)
        if d["action"] == "set":
            # setting PrimaryURI (unchanged) and Enabled makes LCS write the user's AD attributes again
            cmd = wmic.set_(USER_CLASS, wmic.where(InstanceID=iid), {"Enabled": True, "PrimaryURI": d["uri"]})
            res = server.conn.run(cmd.render())
            wmic.raise_for(wmic.outcome(res.stdout, res.stderr, res.ok), f"re-enable {d['uri']}", server.host)
            if d.get("user_dn"):
                left = self._ad_missing(ctx, server, target.alias, d["user_dn"], d["uri"], d.get("home_dn", ""))
                if left:  # transient: the DC ldifde reads may not have replicated LCS's write yet
                    raise TransientFault(f"{d['uri']} is enabled on {server.host} but AD does not show "
                                         f"{', '.join(left)} on {d['user_dn']} yet", host=server.host)
            if d.get("missing"):
                return StepResult("changed", f"finished the enable of {d['uri']} (AD had no {', '.join(d['missing'])})",
                                  {"sip_uri": d["uri"], "lcs_server": server.host, "finished": d["missing"]})
        else:
            server.enable(iid, d["user_dn"], d["home_dn"], d["uri"])
        return StepResult("changed", diff.summary, {"sip_uri": d["uri"], "lcs_server": server.host})
