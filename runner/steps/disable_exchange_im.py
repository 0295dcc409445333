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
something to clear and the entry's ``msRTCSIP-UserEnabled`` is not TRUE, its
``msRTCSIP-PrimaryHomeServer`` is not var ``lcs_home_server_dn``, or the user was
rolled back, the user's LCS setting: one line per home server); apply puts
the file and runs one line. The probe's line also deletes this user's scratch
``.ldf`` files that a killed run left on the server (runner.lcs.exchange).

Before anything is cleared, apply saves each user's values (every msExchIM*
value and the msRTCSIP-* state, as the probe read them) as the artifact
``exim-backup/<alias>.json`` (atomic, fsynced, sha256 in the state store), which
``restore_exchange_im`` puts back (docs/rollback.md). The artifact is durable
before the LDIF goes to the server, so a run killed in between has the backup
and the values; a rerun after the clear finds nothing to clear and writes
nothing, and a backup is never replaced by one holding fewer msExchIM* values.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from runner.errors import PermanentFault
from runner.lcs.chunks import (LCS_LINE, ChunkScript, LcsRead, groups, im_entries,
                               import_and_read, ldap_any, line_limit)
from runner.lcs.exchange import (BACKUP_ATTRIBUTES, IM_ATTRIBUTES, Directory, Query, clear_im_change,
                                 enabled_in_ad, entry_starts, exchange_server, im_backup, im_user_query,
                                 keeps_backup, unfinished_import)
from runner.lcs.server import UserState, home_server, instance_id
from runner.model import User
from runner.steps._lcs import (CHUNK_SIZE_ARG, DEFAULT_CHUNK, backup_name, latest_export, lcs_for, machines_read,
                               recreated_by_users, refusal_warnings, rolled_back_at, server_vars, verified)
from runner.steps._permissions import permissions_pending
from runner.steps.base import ApplyOutcome, Diff, ProbeOutcome, StepContext, StepModule, StepResult
from runner.windows import ldif, wmic
from runner.windows.cmdline import quotable


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
            found = im_entries(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, _, u in live],
                               [u.im_address for *_, u in live], BACKUP_ATTRIBUTES)
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
        # AD's msRTCSIP-UserEnabled, read in the same search, is LCS's own record of the enable
        # (_ad_enabled says when it is trusted); LCS is asked about the others, one read per
        # home server
        trusted: dict[str, bool] = {}
        since: dict[str, float] = {}
        for _, ctx, user, entry, _ in todo:
            try:
                since[user.alias] = rolled_back_at(ctx, user)
                trusted[user.alias] = self._ad_enabled(ctx, entry, since[user.alias])
            except Exception:  # noqa: BLE001 - e.g. a damaged record: _pending reports it for this user
                trusted[user.alias] = False
        states = self._lcs_states([(ctx, user) for _, ctx, user, *_ in todo if not trusted[user.alias]])
        for i, ctx, user, entry, change in todo:
            try:
                state = None
                if not trusted[user.alias]:
                    state = states.get(user.alias)
                    if isinstance(state, Exception):
                        raise state
                out[i] = self._diff(ctx, user, entry, change,
                                    self._pending(ctx, user, state, acl=entry.get("msExchIMACL"),
                                                  enabled=trusted[user.alias] or None,
                                                  since=since.get(user.alias)), host)
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
                script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, u in members],
                                     limit=line_limit(server_vars(ctx0, host), LCS_LINE), clean=True, script=False)
                read = LcsRead(script, [instance_id(u) for _, u in members], contacts=False)
                script.run()
                states = read.states()
            except Exception as exc:  # noqa: BLE001
                out.update({u.alias: exc for _, u in members})
                continue
            out.update({u.alias: states[instance_id(u).upper()] for _, u in members})
        return out

    @staticmethod
    def _diff(ctx: StepContext, target: User, entry: ldif.Entry, change: ldif.Change, why: str | None,
              host: str) -> Diff:
        warnings = refusal_warnings(ctx, why, action=f"disable Exchange IM for {target.alias}",
                                    forced=f"disabling Exchange IM for {target.alias}")
        lines = [f"- {entry.dn}: {attr}" for _, attr, _ in change.mods] + [f"! {w}" for w in warnings]
        return Diff(f"clear {len(change.mods)} IM attribute(s) of {target.alias}", lines,
                    {"dn": entry.dn, "attrs": [a for _, a, _ in change.mods], "warnings": warnings,
                     "backup": im_backup(entry, alias=target.alias, server=host)})

    @staticmethod
    def _save_backup(ctx: StepContext, user: User, diff: Diff) -> dict[str, Any]:
        """Store the values the probe read as ``exim-backup/<alias>.json`` (durable when this
        returns), unless the backup already saved holds more of them; what the result names."""
        name = backup_name(user.alias)
        backup = diff.data.get("backup")
        if not isinstance(backup, dict) or not backup.get("msExchIM"):
            raise PermanentFault(f"no values of {user.alias}'s Exchange IM attributes were read: "
                                 "nothing is cleared without a backup")
        raw = ctx.artifacts.read(name)
        try:
            old = json.loads(raw) if raw is not None else None
        except ValueError:
            old = None
        if keeps_backup(old, backup):
            return {"backup": name, "backup_kept": True}
        ref = ctx.artifacts.write(name, json.dumps(backup, sort_keys=True, indent=1).encode("utf-8") + b"\n")
        return {"backup": name, "backup_sha256": ref.sha256}

    def apply_many(self, items: Sequence[tuple[StepContext, User, Diff]]) -> list[ApplyOutcome]:
        """One LDIF file with every user's modify, put on the Exchange IM server, then one line
        (or a few): import it, delete it, read the users back. Each user's outcome is their
        entry read back; when ldifde stopped at an entry, that user fails with its error and
        the users after it are retried (TransientFault: their change never ran)."""
        out: list[ApplyOutcome] = [StepResult("failed")] * len(items)
        saved: dict[str, dict[str, Any]] = {}
        kept = []
        for n, (ctx, user, diff) in enumerate(items):  # the backups first, durable before any clear
            try:
                saved[user.alias] = self._save_backup(ctx, user, diff)
                kept.append(n)
            except Exception as exc:  # noqa: BLE001 - that user is not cleared
                out[n] = exc
        if not kept:
            return out
        done = self._clear([items[n] for n in kept], saved)
        for n, result in zip(kept, done):
            out[n] = result
        return out

    def _clear(self, items: Sequence[tuple[StepContext, User, Diff]],
               saved: dict[str, dict[str, Any]]) -> list[ApplyOutcome]:
        """The chunk's LDIF put and imported (``apply_many``), for users whose backup is saved."""
        ctx0, _, _ = items[0]
        host = exchange_server(ctx0.inventory, ctx0.vars)
        changes = [ldif.Change(d.data["dn"], "modify", [("delete", a, []) for a in d.data["attrs"]])
                   for _, _, d in items]
        starts = entry_starts(changes)
        try:
            sec, entries = import_and_read(
                ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, u, _ in items], changes,
                [Query(ldap_any("msExchIMAddress", [u.im_address for _, u, _ in g]), IM_ATTRIBUTES) for g in groups(items)])
            back = {a.lower(): e for e in entries for a in e.get("msExchIMAddress")}
        except Exception as exc:  # noqa: BLE001
            return [exc] * len(items)
        out: list[ApplyOutcome] = []
        for n, (ctx, user, diff) in enumerate(items):
            d = diff.data
            entry = back.get(user.im_address.lower())
            left = [a for a in IM_ATTRIBUTES if entry is not None and entry.get(a)]
            if not left:
                out.append(StepResult("changed", f"Exchange IM disabled for {user.alias}",
                                      {"dn": d["dn"], "cleared": d["attrs"], "forced": bool(d["warnings"]),
                                       **saved.get(user.alias, {})}, d["warnings"]))
            else:
                out.append(unfinished_import(sec, starts[n], d["dn"], host, f"still has {', '.join(left)}"))
        return out

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        host = exchange_server(ctx.inventory, ctx.vars)
        q = im_user_query(target.im_address)
        found = Directory(ctx.connection(host), host, server_vars(ctx, host), owner=target.alias).search(
            q.ldap_filter, BACKUP_ATTRIBUTES)
        entry = found[0] if found else None
        if entry is None:
            return None
        change = clear_im_change(entry)
        if not change.mods:
            return None
        try:
            since: float | None = rolled_back_at(ctx, target)
        except Exception:  # noqa: BLE001 - as probe_many: LCS is read, and _pending reports it
            since = None
        enabled = self._ad_enabled(ctx, entry, since) if since is not None else False
        return self._diff(ctx, target, entry, change, self._pending(
            ctx, target, acl=entry.get("msExchIMACL"), enabled=enabled or None, since=since), host)

    @staticmethod
    def _ad_enabled(ctx: StepContext, entry: ldif.Entry, since: float) -> bool:
        """Whether the entry's ``msRTCSIP-UserEnabled`` TRUE stands for reading LCS: only when its
        ``msRTCSIP-PrimaryHomeServer`` is the configured home server (var ``lcs_home_server_dn``:
        an enable on another pool, or an estate without the var, is read on LCS), and not after the
        user was rolled back (``since``, :func:`rolled_back_at`), since a domain controller that has
        not yet replicated the rollback's disable would still say TRUE (an entry that is not TRUE
        is read on LCS anyway)."""
        home_dn = ctx.vars.get("lcs_home_server_dn")
        return bool(home_dn) and not since and enabled_in_ad(entry, str(home_dn))

    @staticmethod
    def _pending(ctx: StepContext, user: User, state: UserState | None = None, *,
                 acl: list[str] | None = None, enabled: bool | None = None,
                 since: float | None = None) -> str | None:
        """Why the user is not yet safe to disable, or None (``state``: their LCS setting, when read;
        ``enabled``: True when AD already says LCS enabled them, so LCS is not read;
        ``acl``: their msExchIMACL values, which verify_permissions must have passed on;
        ``since``: their rolled_back_at, when already read)."""
        host = home_server(user, ctx.inventory, ctx.vars)
        instance_id(user)  # a user without ad_guid is refused, LCS read or not (no rollback could find them)
        if enabled is None:
            if state is None:
                server, iid = lcs_for(ctx, user)
                state = server.read(iid, contacts=False)
            enabled = state.user is not None and wmic.parse_bool(state.user.get("Enabled"))
        if not enabled:
            return f"{user.alias} is not enabled on LCS ({host})"
        if recreated_by_users(ctx):
            return None
        if not verified(ctx, user, since):
            return f"verify_contacts has not passed for {user.alias}"
        found = latest_export(ctx, user)
        if found is not None and not machines_read(ctx, user, found[1]):
            return f"no contact list of {user.alias} was read from any machine"
        return permissions_pending(ctx, user, acl or [])

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        host = exchange_server(ctx.inventory, ctx.vars)
        d = diff.data
        saved = self._save_backup(ctx, target, diff)
        # put the LDIF, then one line: import, delete it, read the user back
        done = Directory(ctx.connection(host), host, server_vars(ctx, host), owner=target.alias).apply(
            [ldif.Change(d["dn"], "modify", [("delete", a, []) for a in d["attrs"]])],
            read_back=[im_user_query(target.im_address)])
        left = [a for e in done.found[0] for a in IM_ATTRIBUTES if e.get(a)]
        if left:
            raise PermanentFault(f"ldifde import on {host} succeeded but {d['dn']} still has "
                                 f"{', '.join(left)}", host=host)
        return StepResult("changed", f"Exchange IM disabled for {target.alias}",
                          {"dn": d["dn"], "cleared": d["attrs"], "forced": bool(d["warnings"]), **saved},
                          d["warnings"])
