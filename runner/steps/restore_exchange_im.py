"""restore_exchange_im: put a rolled-back user's Exchange IM attributes back from their backup.

The first step of a rollback (playbooks/rollback.yml, docs/rollback.md). The
values are the ones disable_exchange_im saved before it cleared them
(artifact ``exim-backup/<alias>.json``, checked against its sha256): every
msExchIM* value goes back with an LDIF modify (``replace`` of each saved
attribute whose values differ, ``delete`` of an IM attribute the backup does
not hold), imported with ``ldifde -i -f`` on the Exchange IM server and read
back in the same line. The user's AD object is found by its objectGUID (the
inventory's ``ad_guid``), since the address it was found by is what was
cleared.

Refused, naming the user and the reason, when:

- the user has no msExchIMAddress and no backup is stored (nothing to put back
  with: the state directory lost it, or the user was cleared by another tool);
  a user who still has their Exchange IM attributes needs no backup (``ok``);
- the Exchange IM server has been decommissioned: its IM service is disabled
  or missing, or the IM virtual server the backup names is gone from AD
  (decommission_exchange_im removed it); a rollback cannot bring the server back.

Round trips per chunk (the Exchange IM server): the probe is one line (or a
few within the server's line limit): ``sc query``/``sc qc`` of the IM service,
the virtual servers and the users' entries; apply puts one LDIF file and runs
one line: import, delete it, read the users back. Each result carries
``rollback: true``: the record that reopens the user's earlier migration tasks
(runner.state, "rollbacks").
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Mapping, Sequence

from runner.errors import PermanentFault, RunnerError
from runner.lcs.chunks import WINDOWS_2000_LINE, ChunkScript, groups, import_and_read, line_limit
from runner.lcs.exchange import (DEFAULT_SERVICE, DEFAULT_VS_FILTER, IM_ATTRIBUTES, Query, entry_starts,
                                 exchange_server, guid_query, restore_im_change, unfinished_import)
from runner.lcs.server import instance_id
from runner.model import User
from runner.steps._lcs import CHUNK_SIZE_ARG, ChunkedOnly, backup_name, server_vars
from runner.steps.base import ApplyOutcome, Diff, ProbeOutcome, StepContext, StepModule, StepResult
from runner.windows import ldif, sc

#: objectGUID values per OR condition: 61 characters each, so a search stays well within 2,047.
GUID_GROUP = 20


def guid_bytes(user: User) -> bytes:
    """The objectGUID of ``user`` as AD stores it (little-endian, from the inventory's ad_guid)."""
    return uuid.UUID(instance_id(user).strip("{}")).bytes_le


def entries_by_guid(entries: Sequence[ldif.Entry]) -> dict[bytes, ldif.Entry]:
    """The entries read with an objectGUID, by that GUID's bytes."""
    out = {}
    for e in entries:
        raw = e.first("objectGUID")
        if raw is not None:
            out[raw.encode("utf-8", "surrogateescape")] = e
    return out


def read_backup(ctx: StepContext, user: User) -> dict[str, Any] | None:
    """The user's saved Exchange IM values, None when none is stored; a RunnerError when the
    file was edited after it was written (runner.artifacts)."""
    raw = ctx.artifacts.read(backup_name(user.alias))
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise PermanentFault(f"the backup {backup_name(user.alias)} of {user.alias} is not JSON") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("msExchIM"), Mapping) or not doc["msExchIM"]:
        raise PermanentFault(f"the backup {backup_name(user.alias)} of {user.alias} holds no msExchIM* values")
    return dict(doc)


class RestoreExchangeIm(ChunkedOnly, StepModule):
    """Give the user back the msExchIM* values saved before Exchange IM was disabled for them."""

    name = "restore_exchange_im"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "service": {"type": "string", "minLength": 1,
                    "description": "the Exchange IM service (default var exchange_im_service, else MSExchangeIM)"},
        "chunk_size": CHUNK_SIZE_ARG}}
    chunk = 50
    # probes again when its run resumes: the users may have moved again with another
    # state directory since (docs/rollback.md)
    rechecks = True

    def chunk_key(self, ctx: StepContext, target: User) -> str:
        return exchange_server(ctx.inventory, ctx.vars)

    @staticmethod
    def _service(ctx: StepContext) -> str:
        return str(ctx.args.get("service") or ctx.vars.get("exchange_im_service") or DEFAULT_SERVICE)

    def probe_many(self, items: Sequence[tuple[StepContext, User]]) -> list[ProbeOutcome]:
        """The IM service, the IM virtual servers and the chunk's users' entries, read in one
        line (or a few) on the Exchange IM server; each user's Diff, None (their values are
        there) or refusal."""
        out: list[ProbeOutcome] = [None] * len(items)
        live: list[tuple[int, StepContext, User, dict[str, Any] | None]] = []
        for i, (ctx, user) in enumerate(items):
            try:
                guid_bytes(user)
                live.append((i, ctx, user, read_backup(ctx, user)))
            except (RunnerError, ValueError) as exc:
                out[i] = exc if isinstance(exc, RunnerError) else PermanentFault(
                    f"user {user.alias}: ad_guid {user.ad_guid!r} is not a GUID")
        if not live:
            return out
        ctx0 = live[0][1]
        host = exchange_server(ctx0.inventory, ctx0.vars)
        service = self._service(ctx0)
        try:
            script = ChunkScript(ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, _, u, _ in live],
                                 limit=line_limit(server_vars(ctx0, host), WINDOWS_2000_LINE), clean=True, script=False)
            query = script.add(sc.query(service), stderr_too=True, read=True)
            config = script.add(sc.qc(service), stderr_too=True, read=True)
            vs = script.add_query(Query(str(ctx0.vars.get("exchange_im_virtual_server_filter") or DEFAULT_VS_FILTER),
                                        ("cn",), ctx0.vars.get("exchange_config_dn")))
            handles = [script.add_query(guid_query([instance_id(u) for *_, u, _ in g], ("objectGUID", *IM_ATTRIBUTES)))
                       for g in groups(live, GUID_GROUP)]
            script.run()
            servers = {e.dn.lower() for e in script.entries(vs)}
            found = entries_by_guid([e for h in handles for e in script.entries(h)])
        except Exception as exc:  # noqa: BLE001 - the chunk's read failed: each user's outcome
            for i, *_ in live:
                out[i] = exc
            return out
        retired = self._retired(script.section(query), script.section(config), service, host)
        for i, ctx, user, backup in live:
            try:
                out[i] = self._diff(user, host, found.get(guid_bytes(user)), backup, servers, retired)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        return out

    @staticmethod
    def _retired(query: Any, config: Any, service: str, host: str) -> str | None:
        """Why the Exchange IM server counts as decommissioned by its service, or None."""
        state = sc.parse_one(query.stdout) if query is not None and query.ok else None
        conf = sc.parse_one(config.stdout) if config is not None and config.ok else None
        if state is None or conf is None:
            text = ((config or query).stdout.strip().splitlines() or ["no output"])[-1] if (config or query) else \
                "the command did not run"
            return f"the service {service} cannot be read on {host} ({text})"
        if (conf.start_type or "").upper() == "DISABLED":
            return f"its service {service} is disabled"
        return None

    @staticmethod
    def _diff(user: User, host: str, entry: ldif.Entry | None, backup: dict[str, Any] | None,
              servers: set[str], retired: str | None) -> Diff | None:
        if entry is None:
            raise PermanentFault(f"refusing to roll back {user.alias}: no AD object has their objectGUID "
                                 f"{instance_id(user)} (read on {host})")
        if backup is None:
            if entry.get("msExchIMAddress"):
                return None  # never disabled: still on Exchange IM, nothing to put back
            raise PermanentFault(f"refusing to roll back {user.alias}: no backup of their Exchange IM attributes "
                                 f"is stored ({backup_name(user.alias)} in the state directory's artifacts; "
                                 "disable_exchange_im saves it before clearing them), so there is nothing to "
                                 "put back")
        change = restore_im_change(entry, backup)
        if not change.mods:
            return None
        vs = [v for v in backup["msExchIM"].get("msExchIMVirtualServer", [])]
        gone = [v for v in vs if v.lower() not in servers]
        why = retired or (f"its IM virtual server {gone[0]} is gone from AD" if gone else None)
        if why:
            raise PermanentFault(f"refusing to roll back {user.alias}: the Exchange IM server {host} has been "
                                 f"decommissioned ({why}); a rollback cannot bring it back")
        lines = [f"~ {entry.dn}: {op} {attr}" + (f" = {', '.join(map(str, vals))}" if vals else "")
                 for op, attr, vals in change.mods]
        return Diff(f"restore {len(change.mods)} Exchange IM attribute(s) of {user.alias}", lines,
                    {"dn": entry.dn, "mods": [[op, a, list(v)] for op, a, v in change.mods],
                     "backup": backup, "attrs": [a for _, a, _ in change.mods]})

    def unchanged(self, ctx: StepContext, target: User) -> StepResult:
        """Already back on Exchange IM (a second rollback, or a resumed one): ok, still a rollback.
        A user with no backup in this state directory was never taken off Exchange IM by it
        (the probe refuses one whose attributes are gone): ok, and no rollback record, so the
        report and the next night do not take a user who never moved for a rolled-back one."""
        if ctx.artifacts.read(backup_name(target.alias)) is None:
            return StepResult("ok", f"{target.alias} never moved: still on Exchange IM, nothing to put back",
                              {"rollback": False, "never_moved": True})
        return StepResult("ok", f"{target.alias} has their Exchange IM attributes",
                          {"rollback": True, "backup": backup_name(target.alias)})

    def apply_many(self, items: Sequence[tuple[StepContext, User, Diff]]) -> list[ApplyOutcome]:
        """One LDIF file with every user's modify, put on the Exchange IM server, then one line
        (or a few): import it, delete it, read the users back by objectGUID. A user whose
        entry ldifde stopped at fails with its error; those after it are retried."""
        ctx0, _, _ = items[0]
        host = exchange_server(ctx0.inventory, ctx0.vars)
        changes = [ldif.Change(d.data["dn"], "modify", [(op, a, v) for op, a, v in d.data["mods"]])
                   for _, _, d in items]
        starts = entry_starts(changes)
        try:
            sec, entries = import_and_read(
                ctx0.connection(host), host, server_vars(ctx0, host), [u.alias for _, u, _ in items], changes,
                [guid_query([instance_id(u) for _, u, _ in g], ("objectGUID", *IM_ATTRIBUTES))
                 for g in groups(items, GUID_GROUP)])
            back = entries_by_guid(entries)
        except Exception as exc:  # noqa: BLE001
            return [exc] * len(items)
        out: list[ApplyOutcome] = []
        for n, (ctx, user, diff) in enumerate(items):
            d = diff.data
            entry = back.get(guid_bytes(user))
            left = restore_im_change(entry, d["backup"]).mods if entry is not None else [("?", "entry", [])]
            if not left:
                out.append(StepResult("changed", f"{user.alias} is back on Exchange IM ({host})",
                                      {"rollback": True, "dn": d["dn"], "restored": d["attrs"],
                                       "backup": backup_name(user.alias)}))
            else:
                out.append(unfinished_import(sec, starts[n], d["dn"], host, "still differs from its backup in "
                                             + ", ".join(a for _, a, _ in left)))
        return out

