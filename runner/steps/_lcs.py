"""Helpers shared by the LCS/Exchange steps: the user's export, LCS server, verification record.

Private to runner/steps (the leading underscore keeps it out of step discovery).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from runner.errors import PermanentFault
from runner.events import ROLLBACK_MODULES
from runner.lcs.contacts import ExportedContact, parse_export
from runner.lcs.server import LcsServer, home_server, instance_id
from runner.model import User
from runner.steps.base import Diff, StepContext, StepResult


#: The ``chunk_size`` argument of the chunked LCS / Exchange IM steps (docs/server-batching.md).
#: Users per chunk of the LCS and Exchange IM steps unless ``chunk_size`` says fewer. A chunk's
#: apply costs a fixed 2 to 4 round trips (scripts put and run) whatever its size, so at 50 users
#: these alone came to 0.08 a user; at 100 the steps stay within 0.1 a user (bench_apply.py).
DEFAULT_CHUNK = 100
CHUNK_SIZE_ARG = {"type": "integer", "minimum": 1, "maximum": 500,
                  "description": "most users per chunk, i.e. per round trip; it can only lower the step's "
                                 f"own size ({DEFAULT_CHUNK} for the LCS contact and Exchange IM steps)"}


#: Variables that describe one server, which its own inventory entry sets (docs/server-batching.md):
#: a user task's variables hold the user's, not the server's the step works on.
SERVER_SCOPED_VARS = ("command_line_limit", "remote_temp")


def server_vars(ctx: StepContext, host: str) -> Mapping[str, Any]:
    """The variables a user task's work on server ``host`` sees: the task's, with the
    server-scoped ones (:data:`SERVER_SCOPED_VARS`) from ``host``'s own inventory entry, so
    that ``exim01: {vars: {command_line_limit: 8191}}`` is the limit of exim01's lines;
    extra variables (``-e``) still win."""
    entry = ctx.inventory.hosts.get(host)
    own = getattr(entry, "vars", None) or {}
    extra = getattr(ctx, "extra_vars", None) or {}
    scoped = {k: own[k] for k in SERVER_SCOPED_VARS if k in own and k not in extra}
    if not scoped or all(ctx.vars.get(k) == v for k, v in scoped.items()):
        return ctx.vars
    return {**ctx.vars, **scoped}


def _artifact_names(data: Any) -> Iterable[str]:
    """Artifact names of the normalised JSON export found in a task's data (any key)."""
    if isinstance(data, str):
        if data.lower().endswith(".json"):
            yield data
    elif isinstance(data, Mapping):
        for key in ("merged_artifact", "artifact", "json_artifact", "contacts_artifact"):
            if key in data:
                yield from _artifact_names(data[key])
        for value in data.values():
            yield from _artifact_names(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _artifact_names(value)


def latest_export(ctx: StepContext, user: User) -> tuple[list[ExportedContact], str] | None:
    """The user's exported contacts from the newest successful export_contacts
    outcome that names a readable JSON artifact, with that artifact's name; None
    when the user was never exported."""
    for record in ctx.previous("export_contacts", user.alias):
        if record.status not in ("ok", "changed"):
            continue
        for name in dict.fromkeys(_artifact_names(dict(record.data))):
            path = name
            data = ctx.artifacts.read(path)
            if data is None and "/artifacts/" in name.replace("\\", "/"):
                path = name.replace("\\", "/").split("/artifacts/", 1)[1]
                data = ctx.artifacts.read(path)
            if data is not None:
                return parse_export(data), path
    name = f"contacts/{user.alias}/merged.json"  # export_contacts' conventional name
    if ctx.previous("export_contacts", user.alias):
        data = ctx.artifacts.read(name)
        if data is not None:
            return parse_export(data), name
    return None


def require_export(ctx: StepContext, user: User) -> tuple[list[ExportedContact], str]:
    """Like latest_export, but a missing export is a failure that says what to run."""
    found = latest_export(ctx, user)
    if found is None:
        raise PermanentFault(f"no contact export for {user.alias}: run export_contacts for this user first")
    return found


def machines_read(ctx: StepContext, user: User, artifact: str) -> list[str]:
    """The machines the export ``artifact`` read the user's contact list from (its
    ``machines``); [] when none was read, so an empty list proves nothing. An artifact
    written before ``machines`` was recorded was read from every client (a failed read
    fails the export)."""
    raw = ctx.artifacts.read(artifact)
    try:
        doc = json.loads(raw) if raw is not None else None
    except ValueError:
        doc = None
    machines = doc.get("machines") if isinstance(doc, Mapping) else None
    if isinstance(machines, list):
        return [str(m) for m in machines]
    return list(user.clients)


def recreated_by_users(ctx: StepContext) -> bool:
    """The playbook says users recreate their contacts themselves (scenario 1): the step's
    ``contacts_recreated_by_users`` argument, else the variable of that name."""
    value = ctx.args.get("contacts_recreated_by_users")
    if value is None:
        value = ctx.vars.get("contacts_recreated_by_users")
    return bool(value)


def lcs_for(ctx: StepContext, user: User) -> tuple[LcsServer, str]:
    """The user's LCS home server session and the user's InstanceID."""
    host = home_server(user, ctx.inventory, ctx.vars)
    return LcsServer(ctx.connection(host), host), instance_id(user)


def backup_name(alias: str) -> str:
    """The artifact holding the user's Exchange IM values saved by disable_exchange_im."""
    return f"exim-backup/{alias}.json"


def imported_name(alias: str) -> str:
    """The artifact listing the contacts import_contacts created (or was about to create) on LCS."""
    return f"lcs-imported/{alias}.json"


def rolled_back_at(ctx: StepContext, user: User) -> float:
    """When the user's latest rollback finished (0.0: never rolled back): what came before it
    no longer holds (docs/rollback.md)."""
    ends = [float(getattr(r, "ended", 0) or 0) for m in ROLLBACK_MODULES for r in ctx.previous(m, user.alias)
            if (r.data or {}).get("rollback")]
    return max(ends, default=0.0)


def verified(ctx: StepContext, user: User, since: float | None = None) -> bool:
    """True when verify_contacts passed for ``user`` in this or an earlier run, after their
    latest rollback if any (a rolled-back user is verified again before being disabled);
    ``since``: that rollback's :func:`rolled_back_at`, when the caller has read it already."""
    if since is None:
        since = rolled_back_at(ctx, user)
    return any(r.status in ("ok", "changed") and (r.data or {}).get("verified")
               and (not since or float(getattr(r, "ended", 0) or 0) > since)
               for r in ctx.previous("verify_contacts", user.alias))


def refusal_warnings(ctx: StepContext, why: str | None, *, action: str, forced: str) -> list[str]:
    """Apply the steps' safety refusal: ``why`` (None: nothing stands in the way) stops the
    step unless ``force: true``.

    Returns the warnings for the diff: ``FORCED: <forced> although <why>`` when forced,
    ``would refuse now: <why>`` in check mode; otherwise raises PermanentFault
    ``refusing to <action>: <why> (force: true overrides)``.
    """
    if not why:
        return []
    if ctx.args.get("force"):
        return [f"FORCED: {forced} although {why}"]
    if ctx.check:
        return [f"would refuse now: {why}"]
    raise PermanentFault(f"refusing to {action}: {why} (force: true overrides)")


class ChunkedOnly:
    """For a step written for chunks only: ``probe``/``apply`` of one target are its
    ``probe_many``/``apply_many`` of a chunk of one (mixed in before StepModule)."""

    def probe(self, ctx: StepContext, target: Any) -> Diff | None:
        [found] = self.probe_many([(ctx, target)])  # type: ignore[attr-defined]
        if isinstance(found, Exception):
            raise found
        return found

    def apply(self, ctx: StepContext, target: Any, diff: Diff) -> StepResult:
        [done] = self.apply_many([(ctx, target, diff)])  # type: ignore[attr-defined]
        if isinstance(done, Exception):
            raise done
        return done
