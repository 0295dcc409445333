"""disable_exchange_im: clear a user's Exchange IM attributes once they are safe on LCS.

Refuses unless the user is enabled on LCS and verify_contacts passed for
them in this or an earlier run (and, when their entry holds an Exchange IM
allow and block list, ``msExchIMACL``, verify_permissions passed on that very
list: docs/permissions.md), or the playbook says users recreate their
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

import re
import secrets
from typing import Any, Sequence

from runner.errors import PermanentFault, TransientFault
from runner.lcs.chunks import (LCS_LINE, WINDOWS_2000_LINE, ChunkScript, LcsRead, groups, im_entries, ldap_any,
                               line_limit)
from runner.lcs.exchange import (IM_ATTRIBUTES, Directory, Query, clear_im_change, exchange_server,
                                 im_user_query, temp_path, owner_tag)
from runner.lcs.server import UserState, home_server, instance_id
from runner.model import User
from runner.steps._lcs import (CHUNK_SIZE_ARG, DEFAULT_CHUNK, latest_export, lcs_for, machines_read,
                               recreated_by_users, refusal_warnings, verified)
from runner.steps._permissions import permissions_pending
from runner.steps.base import ApplyOutcome, Diff, ProbeOutcome, StepContext, StepModule, StepResult
from runner.windows import ldif, wmic
from runner.windows.cmdline import Command, Quoted, quotable

_ENTRY_LINE = re.compile(r"error on entry starting on line (\d+)")


class DisableExchangeIm(StepModule):
    """Remove the user's msExchIM* attributes (Exchange IM disabled for them)."""

    name = "disable_exchange_im"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "contacts_recreated_by_users": {"type": "boolean", "default": False},
        "force": {"type": "boolean", "default": False},
        "chunk_size": CHUNK_SIZE_ARG}}
    chunk = DEFAULT_CHUNK

    def chunk_key(self, ctx: StepContext, target: User) -> str:
        return exchange_server(ctx.inventory, ctx.vars)

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The chunk's users' directory entries in one ldifde search (a line or a few) on the
        Exchange IM server, and, for those with attributes to clear, their LCS settings in one
        read per home server; each user's Diff or refusal as ``probe`` gives it."""
        out: list[ProbeOutcome] = [None] * len(items)
        live = []
        for i, (ctx, user) in enumerate(items):
            if quotable(im_user_query(user.im_address).ldap_filter):
                live.append((i, ctx, user))
            else:
                out[i] = PermanentFault(f"user {user.alias}: msExchIMAddress {user.im_address!r} cannot go on "
                                        "a command line")
        if not live:
            return out
        ctx0 = live[0][1]
        host = exchange_server(ctx0.inventory, ctx0.vars)
        try:
            found = im_entries(ctx0.connection(host), host, ctx0.vars, [u.alias for _, _, u in live],
                               [u.im_address for *_, u in live], IM_ATTRIBUTES)
        except Exception as exc:  # noqa: BLE001 - the chunk's read failed: each user's outcome
            for i, *_ in live:
                out[i] = exc
            return out
        todo = []
        for i, ctx, user in live:
            entry = found.get(user.im_address.lower())
            change = clear_im_change(entry) if entry is not None else None
            if change is not None and change.mods:
                todo.append((i, ctx, user, entry, change))
        states = self._lcs_states([(ctx, user) for _, ctx, user, *_ in todo])
        for i, ctx, user, entry, change in todo:
            try:
                state = states.get(user.alias)
                if isinstance(state, Exception):
                    raise state
                out[i] = self._diff(ctx, user, entry, change,
                                    self._pending(ctx, user, state, acl=entry.get("msExchIMACL")))
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        return out

    @staticmethod
    def _lcs_states(users: Sequence[tuple[StepContext, User]]) -> dict[str, Any]:
        """Per alias the user's LCS setting (UserState), read in one line per home server; a
        fault per user when it could not be read."""
        by_host: dict[str, list[tuple[StepContext, User]]] = {}
        out: dict[str, Any] = {}
        for ctx, user in users:
            try:
                by_host.setdefault(home_server(user, ctx.inventory, ctx.vars), []).append((ctx, user))
                instance_id(user)
            except Exception as exc:  # noqa: BLE001
                out[user.alias] = exc
        for host, members in by_host.items():
            members = [(c, u) for c, u in members if u.alias not in out]
            if not members:
                continue
            ctx0 = members[0][0]
            try:
                script = ChunkScript(ctx0.connection(host), host, ctx0.vars, [u.alias for _, u in members],
                                     limit=line_limit(ctx0.vars, LCS_LINE), clean=True, script=False)
                read = LcsRead(script, [instance_id(u) for _, u in members], contacts=False)
                script.run()
                states = read.states()
            except Exception as exc:  # noqa: BLE001
                out.update({u.alias: exc for _, u in members})
                continue
            out.update({u.alias: states[instance_id(u).upper()] for _, u in members})
        return out

    @staticmethod
    def _diff(ctx: StepContext, target: User, entry: ldif.Entry, change: ldif.Change, why: str | None) -> Diff:
        warnings = refusal_warnings(ctx, why, action=f"disable Exchange IM for {target.alias}",
                                    forced=f"disabling Exchange IM for {target.alias}")
        lines = [f"- {entry.dn}: {attr}" for _, attr, _ in change.mods] + [f"! {w}" for w in warnings]
        return Diff(f"clear {len(change.mods)} IM attribute(s) of {target.alias}", lines,
                    {"dn": entry.dn, "attrs": [a for _, a, _ in change.mods], "warnings": warnings})

    def apply_many(self, items: Sequence[tuple[StepContext, User, Diff]]) -> list[ApplyOutcome]:
        """One LDIF file with every user's modify, put on the Exchange IM server, then one line
        (or a few): import it, delete it, read the users back. Each user's outcome is their
        entry read back; when ldifde stopped at an entry, that user fails with its error and
        the users after it are retried (TransientFault: their change never ran)."""
        ctx0, _, _ = items[0]
        host = exchange_server(ctx0.inventory, ctx0.vars)
        changes = [ldif.Change(d.data["dn"], "modify", [("delete", a, []) for a in d.data["attrs"]])
                   for _, _, d in items]
        starts, line = [], 1
        for ch in changes:
            starts.append(line)
            line += ldif.render([ch]).count(b"\r\n")
        try:
            conn = ctx0.connection(host)
            script = ChunkScript(conn, host, ctx0.vars, [u.alias for _, u, _ in items],
                                 limit=line_limit(ctx0.vars, WINDOWS_2000_LINE), script=False)
            path = temp_path(conn, ctx0.vars, f"runner-{owner_tag(items[0][1].alias)}-{secrets.token_hex(4)}.ldf")
            conn.put(ldif.render(changes), path)
            imported = script.add(ldif.import_command(path), stderr_too=True)
            script.add(Command("del", "/q", Quoted(path)))
            handles = [script.add_query(Query(ldap_any("msExchIMAddress", [u.im_address for _, u, _ in g]),
                                              IM_ATTRIBUTES)) for g in groups(items)]
            script.run()
            back = {a.lower(): e for h in handles for e in script.entries(h) for a in e.get("msExchIMAddress")}
        except Exception as exc:  # noqa: BLE001
            return [exc] * len(items)
        sec = script.section(imported)
        stopped_at = None
        if sec is None or not sec.ok:
            m = _ENTRY_LINE.search(sec.stdout if sec else "")
            stopped_at = int(m.group(1)) if m else 0
        out: list[ApplyOutcome] = []
        for n, (ctx, user, diff) in enumerate(items):
            d = diff.data
            entry = back.get(user.im_address.lower())
            left = [a for a in IM_ATTRIBUTES if entry is not None and entry.get(a)]
            if not left:
                out.append(StepResult("changed", f"Exchange IM disabled for {user.alias}",
                                      {"dn": d["dn"], "cleared": d["attrs"], "forced": bool(d["warnings"])},
                                      d["warnings"]))
            elif stopped_at is not None and stopped_at == starts[n]:
                detail = (sec.stdout if sec else "").strip().splitlines()
                out.append(PermanentFault(f"ldifde import on {host} failed for {d['dn']}: "
                                          f"{detail[-1] if detail else 'no output'}", host=host))
            elif stopped_at is not None:
                out.append(TransientFault(f"ldifde import on {host} stopped before {d['dn']} (at line "
                                          f"{stopped_at}); retried", host=host))
            else:
                out.append(PermanentFault(f"ldifde import on {host} succeeded but {d['dn']} still has "
                                          f"{', '.join(left)}", host=host))
        return out

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        host = exchange_server(ctx.inventory, ctx.vars)
        entry = Directory(ctx.connection(host), host, ctx.vars, owner=target.alias).im_user(target.im_address)
        if entry is None:
            return None
        change = clear_im_change(entry)
        if not change.mods:
            return None
        warnings = refusal_warnings(ctx, self._pending(ctx, target, acl=entry.get("msExchIMACL")),
                                    action=f"disable Exchange IM for {target.alias}",
                                    forced=f"disabling Exchange IM for {target.alias}")
        lines = [f"- {entry.dn}: {attr}" for _, attr, _ in change.mods] + [f"! {w}" for w in warnings]
        return Diff(f"clear {len(change.mods)} IM attribute(s) of {target.alias}", lines,
                    {"dn": entry.dn, "attrs": [a for _, a, _ in change.mods], "warnings": warnings})

    @staticmethod
    def _pending(ctx: StepContext, user: User, state: UserState | None = None, *,
                 acl: list[str] | None = None) -> str | None:
        """Why the user is not yet safe to disable, or None (``state``: their LCS setting, when read;
        ``acl``: their msExchIMACL values, which verify_permissions must have passed on)."""
        if state is None:
            server, iid = lcs_for(ctx, user)
            state = server.read(iid, contacts=False)
        host = home_server(user, ctx.inventory, ctx.vars)
        if state.user is None or not wmic.parse_bool(state.user.get("Enabled")):
            return f"{user.alias} is not enabled on LCS ({host})"
        if recreated_by_users(ctx):
            return None
        if not verified(ctx, user):
            return f"verify_contacts has not passed for {user.alias}"
        found = latest_export(ctx, user)
        if found is not None and not machines_read(ctx, user, found[1]):
            return f"no contact list of {user.alias} was read from any machine"
        return permissions_pending(ctx, user, acl or [])

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
