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

from typing import Any, Sequence

from runner.errors import PermanentFault, TransientFault
from runner.lcs.chunks import (LCS_LINE, ChunkScript, LcsRead, groups, ldap_any, line_limit,
                               wmic_fault)
from runner.lcs.exchange import (RTC_ATTRIBUTES, Directory, Query, exchange_server, rtc_missing,
                                 rtc_query)
from runner.lcs.mapping import Unmappable, user_sip_uri
from runner.lcs.server import USER_CLASS, USER_PROPS, LcsServer, home_server, instance_id
from runner.model import User
from runner.steps._lcs import CHUNK_SIZE_ARG, DEFAULT_CHUNK, lcs_for, server_vars
from runner.steps.base import ApplyOutcome, Diff, ProbeOutcome, StepContext, StepModule, StepResult
from runner.windows import ldif, wmic
from runner.windows.cmdline import Command, UnsafeValueError, quotable


class EnableLcsUsers(StepModule):
    """Create (or re-enable) the user's MSFT_SIPESUserSetting on their home server."""

    name = "enable_lcs_users"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "home_server_dn": {"type": "string", "description": "overrides var lcs_home_server_dn"},
        "chunk_size": CHUNK_SIZE_ARG}}
    chunk = DEFAULT_CHUNK

    def chunk_key(self, ctx: StepContext, target: User) -> str:
        return home_server(target, ctx.inventory, ctx.vars)

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The chunk's users' LCS settings and AD objects in one round trip on their home
        server (a line, or a script put and run), and the DNs of the users to create in one
        more on the Exchange IM server; each user's Diff as ``probe`` would give it."""
        out: list[ProbeOutcome] = [None] * len(items)
        live: list[tuple[int, StepContext, User, str, str]] = []
        for i, (ctx, user) in enumerate(items):
            try:
                mapped = user_sip_uri(user, ctx.vars, ctx.inventory)
                if isinstance(mapped, Unmappable):
                    raise PermanentFault(f"user {user.alias} has no valid SIP URI: {mapped.reason}")
                rtc = rtc_query(mapped.uri)
                if not quotable(rtc.ldap_filter):
                    raise PermanentFault(f"user {user.alias}: SIP URI {mapped.uri!r} cannot go on a command line")
                live.append((i, ctx, user, mapped.uri, instance_id(user)))
            except Exception as exc:  # noqa: BLE001 - this user's outcome
                out[i] = exc
        if not live:
            return out
        ctx0 = live[0][1]
        host = home_server(live[0][2], ctx0.inventory, ctx0.vars)
        try:
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, _, u, _, _ in live],
                                 limit=line_limit(server_vars(ctx0, host), LCS_LINE), clean=True, script=False)
            read = LcsRead(script, [iid for *_, iid in live], contacts=False)
            handles = [script.add_query(Query(ldap_any("msRTCSIP-PrimaryUserAddress", g),
                                              (*RTC_ATTRIBUTES, "proxyAddresses")))
                       for g in groups([uri for *_, uri, _ in live])]
            # the DNs of users to create, in the same line (an existing user's DN is LCS's)
            ask = [u.im_address for _, _, u, _, _ in live if not (u.vars or {}).get("user_dn")
                   and quotable(f"(msExchIMAddress={ldif.escape_filter_value(u.im_address)})")]
            im = [script.add_query(Query(ldap_any("msExchIMAddress", g), ("msExchIMAddress",)))
                  for g in groups(ask)]
            script.run()
            states = read.states()
            entries = [e for h in handles for e in script.entries(h)]
            dns = {a.lower(): e.dn for h in im for e in script.entries(h) for a in e.get("msExchIMAddress")}
        except Exception as exc:  # noqa: BLE001 - the whole chunk's read failed: each user's outcome
            for i, *_ in live:
                out[i] = exc
            return out
        creates: list[tuple[int, StepContext, User, str, str, str]] = []
        for i, ctx, user, uri, iid in live:
            state = states.get(iid.upper())
            try:
                if isinstance(state, Exception):
                    raise state
                if state is not None and state.user is not None:
                    out[i] = self._existing(user, host, uri, iid, state.user, entries)
                    continue
                home_dn = str(ctx.args.get("home_server_dn") or ctx.vars.get("lcs_home_server_dn") or "")
                if not home_dn:
                    raise PermanentFault("set var lcs_home_server_dn (the LCS home server's DN)")
                creates.append((i, ctx, user, uri, iid, home_dn))
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        dns = self._dns(creates, dns)
        for i, ctx, user, uri, iid, home_dn in creates:
            dn = dns.get(user.alias)
            if isinstance(dn, Exception) or dn is None:
                out[i] = dn or PermanentFault(f"user {user.alias}: no directory entry found")
                continue
            out[i] = Diff(f"enable {uri} on {host}", [f"+ {user.alias}: {uri} homed on {home_dn}"],
                          {"action": "create", "uri": uri, "iid": iid, "user_dn": dn, "home_dn": home_dn})
        return out

    @staticmethod
    def _existing(user: User, host: str, uri: str, iid: str, setting: dict[str, str],
                  entries: list[ldif.Entry]) -> Diff | None:
        """The Diff for a user LCS already has (``probe``'s rules)."""
        current = setting.get("PrimaryURI", "")
        if current.lower() != uri.lower():
            raise PermanentFault(
                f"user {user.alias} is already enabled on {host} as {current}, not {uri}; "
                "not overwritten (fix the mapping or the LCS user)")
        user_dn = str(setting.get("UserDN") or "")
        home_dn = str(setting.get("HomeServerDN") or "")
        data = {"action": "set", "uri": uri, "iid": iid, "user_dn": user_dn, "home_dn": home_dn}
        if not wmic.parse_bool(setting.get("Enabled")):
            return Diff(f"re-enable {uri} on {host}", [f"~ {user.alias}: Enabled FALSE -> TRUE"], data)
        missing = rtc_missing(entries, user_dn, uri, home_dn)
        if not missing:
            return None
        return Diff(f"finish the enable of {uri} on {host} (AD lacks {', '.join(missing)})",
                    [f"~ {user.alias}: enabled on LCS but AD lacks {', '.join(missing)}: set again"],
                    dict(data, missing=missing))

    @staticmethod
    def _dns(creates: Sequence[tuple[Any, ...]], found: dict[str, str]) -> dict[str, Any]:
        """Per alias the DN of each user to create: ``vars.user_dn``, else the directory entry
        holding their msExchIMAddress (``found``, read in the probe's line on their LCS server,
        a domain member); a PermanentFault per user without one."""
        out: dict[str, Any] = {}
        for _, ctx, user, *_ in creates:
            dn = (user.vars or {}).get("user_dn") or found.get(user.im_address.lower())
            out[user.alias] = dn or PermanentFault(
                f"user {user.alias}: no directory entry with msExchIMAddress={user.im_address}; set user vars.user_dn")
        return out

    def apply_many(self, items: Sequence[tuple[StepContext, User, Diff]]) -> list[ApplyOutcome]:
        """Every user's create or set, then the AD read-back of the users set again, in one
        round trip (a line, or a script put and run); each user's outcome from their section."""
        out: list[ApplyOutcome] = [StepResult("failed")] * len(items)
        ctx0, user0, _ = items[0]
        host = home_server(user0, ctx0.inventory, ctx0.vars)
        cmds: list[tuple[int, Command]] = []
        for n, (_, user, diff) in enumerate(items):
            d = diff.data
            try:  # a value that cannot go on the line (a DN with a line end in AD) fails its user only
                if d["action"] == "set":
                    cmd = wmic.set_(USER_CLASS, wmic.where(InstanceID=d["iid"]), {"Enabled": True, "PrimaryURI": d["uri"]})
                else:
                    cmd = wmic.create(USER_CLASS, {"InstanceID": d["iid"], "UserDN": d["user_dn"],
                                                   "HomeServerDN": d["home_dn"], "PrimaryURI": d["uri"], "Enabled": True})
                cmds.append((n, cmd))
            except UnsafeValueError as exc:
                out[n] = PermanentFault(f"user {user.alias}: {exc}")
        if not cmds:
            return out
        live = [items[n] for n, _ in cmds]
        try:
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, u, _ in live],
                                 limit=line_limit(server_vars(ctx0, host), LCS_LINE))
            index = [script.add(cmd, stderr_too=True, commutes=True) for _, cmd in cmds]  # one per user
            back = [d.data["uri"] for _, _, d in live if d.data["action"] == "set" and d.data.get("user_dn")]
            handles = [script.add_query(Query(ldap_any("msRTCSIP-PrimaryUserAddress", g),
                                              (*RTC_ATTRIBUTES, "proxyAddresses"))) for g in groups(back)]
            script.run()
            entries = [e for h in handles for e in script.entries(h)] if handles else []
        except Exception as exc:  # noqa: BLE001
            for n, _ in cmds:
                out[n] = exc
            return out
        for (n, _), i in zip(cmds, index):
            _, user, diff = items[n]
            d = diff.data
            verb = f"re-enable {d['uri']}" if d["action"] == "set" else f"enable {d['uri']} on {host}"
            fault = wmic_fault(script.section(i), verb, host)
            if fault is not None:
                out[n] = fault
                continue
            out[n] = self._applied(d, diff, host, entries)
        return out

    @staticmethod
    def _applied(d: dict[str, Any], diff: Diff, host: str, entries: list[ldif.Entry]) -> ApplyOutcome:
        if d["action"] == "set" and d.get("user_dn"):
            left = rtc_missing(entries, d["user_dn"], d["uri"], d.get("home_dn", ""))
            if left:  # transient: the DC ldifde reads may not have replicated LCS's write yet
                return TransientFault(f"{d['uri']} is enabled on {host} but AD does not show "
                                      f"{', '.join(left)} on {d['user_dn']} yet", host=host)
        if d["action"] == "set" and d.get("missing"):
            return StepResult("changed", f"finished the enable of {d['uri']} (AD had no {', '.join(d['missing'])})",
                              {"sip_uri": d["uri"], "lcs_server": host, "finished": d["missing"]})
        return StepResult("changed", diff.summary, {"sip_uri": d["uri"], "lcs_server": host})

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
        secs, (entries,) = Directory(server.conn, server.host, server_vars(ctx, server.host), owner=alias).read(
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
        return rtc_missing(Directory(server.conn, server.host, server_vars(ctx, server.host), owner=alias).search(q.ldap_filter, q.attrs),
                           user_dn, uri, home_dn)

    @staticmethod
    def _lookup_dn(ctx: StepContext, user: User) -> str:
        host = exchange_server(ctx.inventory, ctx.vars)
        entry = Directory(ctx.connection(host), host, server_vars(ctx, host), owner=user.alias).im_user(user.im_address)
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
