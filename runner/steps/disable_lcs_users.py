"""disable_lcs_users: take a rolled-back user off LCS (``MSFT_SIPESUserSetting.Enabled = FALSE``).

The second step of a rollback (playbooks/rollback.yml, docs/rollback.md), after
restore_exchange_im. The user's setting stays on the pool, disabled (LCS
writes ``msRTCSIP-UserEnabled FALSE`` into AD), and so do their contacts and
groups: a later migration finds them and adds only what is new.

``remove_imported_contacts: true`` also deletes the contacts the runner
imported: those in the user's record of imported contacts (import_contacts
writes it before it creates them) that are still exactly as the runner created
them (same SIP URI, name and group names). A contact the user added on LCS is
in no record, and one they renamed or moved to another group no longer
matches it: both stay. Groups stay too.

Refused for a user who is not back on Exchange IM (their AD object has no
msExchIMAddress: restore_exchange_im did not restore them), so a rollback never
leaves anyone with no IM at all; ``force: true`` overrides, loudly. A user the
pool does not know needs nothing (ok).

Round trips per chunk (the users' LCS home server): the probe is one line (the
users' settings, and contacts when they are to be removed, plus the AD search
by objectGUID); apply is one script: the deletes, the disables, the read-back.
Each result carries ``rollback: true`` (see restore_exchange_im).
"""
from __future__ import annotations

from typing import Any, Sequence

from runner.errors import PermanentFault
from runner.lcs.chunks import LCS_LINE, ChunkScript, LcsRead, groups, line_limit, wmic_fault
from runner.lcs.exchange import guid_query
from runner.lcs.server import CONTACT_CLASS, USER_CLASS, UserState, home_server, instance_id
from runner.model import User
from runner.steps._lcs import CHUNK_SIZE_ARG, ChunkedOnly, backup_name, imported_name, refusal_warnings, server_vars
from runner.steps.base import ApplyOutcome, Diff, ProbeOutcome, StepContext, StepModule, StepResult
from runner.steps.import_contacts import read_imported
from runner.steps.restore_exchange_im import GUID_GROUP, entries_by_guid, guid_bytes
from runner.windows import wmic


def removable(state: UserState, imported: Sequence[dict[str, Any]]) -> list[str]:
    """The SIP URIs of the user's contacts on LCS that the runner imported and nobody changed
    since: in the record, with the recorded name and group names."""
    names = {g.id: g.name for g in state.groups}
    record = {str(c["uri"]).casefold(): c for c in imported}
    out = []
    for c in state.contacts:
        rec = record.get(c.uri.casefold())
        if rec is None:
            continue
        now_groups = sorted(names.get(i, f"#{i}") for i in c.group_ids)
        if (c.name or "") == (rec.get("name") or "") and now_groups == sorted(rec.get("groups") or []):
            out.append(c.uri)
    return out


class DisableLcsUsers(ChunkedOnly, StepModule):
    """Disable the user's LCS setting; optionally remove the contacts the runner imported."""

    name = "disable_lcs_users"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "remove_imported_contacts": {"type": "boolean", "default": False,
                                     "description": "also delete the contacts the runner imported that "
                                                    "nobody changed on LCS"},
        "force": {"type": "boolean", "default": False},
        "chunk_size": CHUNK_SIZE_ARG}}
    chunk = 50
    # probes again when its run resumes: the users may have moved again with another
    # state directory since (docs/rollback.md)
    rechecks = True

    def chunk_key(self, ctx: StepContext, target: User) -> str:
        return home_server(target, ctx.inventory, ctx.vars)

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The chunk's users' LCS settings (and contacts, when asked) and their AD objects, in
        one line on their home server; each user's Diff, None or refusal."""
        out: list[ProbeOutcome] = [None] * len(items)
        live: list[tuple[int, StepContext, User]] = []
        for i, (ctx, user) in enumerate(items):
            try:
                guid_bytes(user)
                live.append((i, ctx, user))
            except Exception as exc:  # noqa: BLE001 - this user's outcome
                out[i] = exc if isinstance(exc, PermanentFault) else PermanentFault(
                    f"user {user.alias}: ad_guid {user.ad_guid!r} is not a GUID")
        if not live:
            return out
        ctx0 = live[0][1]
        host = home_server(live[0][2], ctx0.inventory, ctx0.vars)
        remove = any(bool(c.args.get("remove_imported_contacts")) for _, c, _ in live)
        try:
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for *_, u in live],
                                 limit=line_limit(server_vars(ctx0, host), LCS_LINE), clean=True, script=False)
            read = LcsRead(script, [instance_id(u) for *_, u in live], contacts=remove)
            handles = [script.add_query(guid_query([instance_id(u) for *_, u in g], ("objectGUID", "msExchIMAddress")))
                       for g in groups(live, GUID_GROUP)]
            script.run()
            states = read.states()
            found = entries_by_guid([e for h in handles for e in script.entries(h)])
        except Exception as exc:  # noqa: BLE001 - the chunk's read failed: each user's outcome
            for i, *_ in live:
                out[i] = exc
            return out
        for i, ctx, user in live:
            try:
                state = states.get(instance_id(user).upper())
                if isinstance(state, Exception):
                    raise state
                entry = found.get(guid_bytes(user))
                out[i] = self._diff(ctx, user, host, state, entry is not None and bool(entry.get("msExchIMAddress")))
                never = self.__dict__.setdefault("_not_on_lcs", set())
                (never.add if state is None or state.user is None else never.discard)(user.alias)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        return out

    @staticmethod
    def _diff(ctx: StepContext, user: User, host: str, state: UserState | None, on_exchange: bool) -> Diff | None:
        if state is None or state.user is None:
            return None  # not on this pool: nothing to disable, nothing to remove
        enabled = wmic.parse_bool(state.user.get("Enabled"))
        remove = removable(state, read_imported(ctx, user)) if ctx.args.get("remove_imported_contacts") else []
        if not enabled and not remove:
            return None
        # a --check preview: the restore before this step only probed; a user it can restore is not refused
        on_exchange = on_exchange or (ctx.check and ctx.artifacts.read(backup_name(user.alias)) is not None)
        why = None if on_exchange else f"{user.alias} is not back on Exchange IM (no msExchIMAddress in AD: " \
                                       "restore_exchange_im has not restored them)"
        warnings = refusal_warnings(ctx, why, action=f"disable {user.alias} on LCS ({host})",
                                    forced=f"disabling {user.alias} on LCS")
        lines = ([f"~ {user.alias}: Enabled TRUE -> FALSE on {host}"] if enabled else []) \
            + [f"- contact {uri} (imported by the runner)" for uri in remove] + [f"! {w}" for w in warnings]
        what = ", ".join((["disable"] if enabled else []) + ([f"remove {len(remove)} imported contact(s)"]
                                                              if remove else []))
        return Diff(f"{what} for {user.alias} on {host}", lines,
                    {"iid": instance_id(user), "disable": enabled, "remove": remove, "warnings": warnings})

    def unchanged(self, ctx: StepContext, target: User) -> StepResult:
        """Already disabled: ok, still a rollback. A user with no LCS setting on the pool was
        never moved there: ok, and no rollback record (as restore_exchange_im for a user it
        never took off Exchange IM)."""
        never = self.__dict__.get("_not_on_lcs", set())
        if target.alias in never:
            never.discard(target.alias)
            return StepResult("ok", f"{target.alias} has no LCS setting: never moved, nothing to disable",
                              {"rollback": False, "never_moved": True, "removed": []})
        return StepResult("ok", f"{target.alias} is not enabled on LCS", {"rollback": True, "removed": []})

    def apply_many(self, items: Sequence[tuple[StepContext, User, Diff]]) -> list[ApplyOutcome]:
        """Every user's contact deletes and disable, then the read-back, in one script on their
        home server; each user's outcome from their own sections and what was read back."""
        ctx0, user0, _ = items[0]
        host = home_server(user0, ctx0.inventory, ctx0.vars)
        try:
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, u, _ in items],
                                 limit=line_limit(server_vars(ctx0, host), LCS_LINE))
            index: list[list[int]] = []
            for _, _, diff in items:
                d = diff.data
                mine = [script.add(wmic.delete(CONTACT_CLASS, wmic.where(UserInstanceID=d["iid"], SIPURI=uri)),
                                   stderr_too=True) for uri in d["remove"]]
                if d["disable"]:
                    mine.append(script.add(wmic.set_(USER_CLASS, wmic.where(InstanceID=d["iid"]), {"Enabled": False}),
                                           stderr_too=True))
                index.append(mine)
            read = LcsRead(script, [d.data["iid"] for _, _, d in items],
                           contacts=any(d.data["remove"] for _, _, d in items))
            script.run()
            states = read.states()
        except Exception as exc:  # noqa: BLE001 - the chunk did not run: each user's outcome
            return [exc] * len(items)
        out: list[ApplyOutcome] = []
        for (_, user, diff), mine in zip(items, index):
            d = diff.data
            state = states.get(d["iid"].upper())
            fault = next((f for f in (wmic_fault(script.section(i), f"disable {user.alias} on LCS", host)
                                      for i in mine) if f is not None), None)
            if isinstance(state, Exception):
                out.append(fault or state)
                continue
            left = {c.uri.casefold() for c in state.contacts} & {u.casefold() for u in d["remove"]}
            still = state.user is not None and wmic.parse_bool(state.user.get("Enabled"))
            if fault is not None and (still or left):
                out.append(fault)
            elif still or left:
                out.append(PermanentFault(f"{user.alias} on {host}: wmic succeeded but "
                                          + ("the user is still enabled" if still else
                                             f"{len(left)} imported contact(s) are still there"), host=host))
            else:
                out.append(StepResult("changed", diff.summary,
                                      {"rollback": True, "lcs_server": host, "disabled": d["disable"],
                                       "removed": d["remove"], "record": imported_name(user.alias),
                                       "forced": bool(d["warnings"])}, d["warnings"]))
        return out
