"""configure_messenger: point Windows Messenger 5.1 at the LCS pool by machine policy.

Sets, under ``HKLM\\SOFTWARE\\Policies\\Microsoft\\Messenger\\Client``, the SIP server
(argument ``sip_server``, else var ``lcs_pool_fqdn``, else the first ``lcs_servers`` host),
the transport (``tcp`` or ``tls``, var ``lcs_transport``, default ``tls``) and the manual
configuration mode; and, with ``exchange_im``, the Exchange IM account: ``keep`` during
coexistence (``ExchangeConn`` 0, the Exchange IM service not disabled), ``off`` at the end
(``ExchangeConn`` removed, the Exchange IM service disabled). Without ``exchange_im`` the
Exchange settings are left as they are, and so does ``keep`` on a machine none of whose
users is on Exchange IM any more (a second run never turns back on what ``off`` switched off).
``restore`` is the rollback's (docs/rollback.md): on a machine a rolled-back user uses and
whose Exchange IM account ``off`` disabled, it gives back keep's Exchange IM values and
writes nothing else (no SIP server); elsewhere it changes nothing. Keys, values and sources:
docs/messenger-signin.md.

Probe: one line reads both policy keys (``reg query``) and compares them value by value;
nothing differs, nothing is written. The line is saved when inventory_clients read the same
keys earlier in this run and no outcome of this step exists for the host (``_fresh_values``). Apply: one line of ``reg add`` / ``reg delete`` for
what differs only, followed by the same read, so the outcome says what the client holds.
Both lines stay within the host's line limit (fact ``cmd_line_limit``: 2,047 characters on
Windows 2000). A run killed in between leaves values a re-probe finds and finishes.

Not yet: ``exchange_im: off`` waits on a machine while any inventory user of it is still on
Exchange IM (their newest ``disable_exchange_im`` outcome is not ok/changed: a machine shared
by users of several waves keeps Exchange IM until the last of them has moved). That is the
normal case on every night but the last, not a failure: the probe raises ``NotYet`` naming
those users and their waves (status ``not_yet``, done by a later night), in ``--check`` too,
where the users this check predicts taken off Exchange IM count as moved (``ctx.predicted``).
``force: true`` switches it off anyway, loudly.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from runner.errors import PermanentFault, TransientFault
from runner.model import Host
from runner.steps import _clients as cl
from runner.steps import _signin as S
from runner.steps._lcs import backup_name, refusal_warnings, rolled_back_at
from runner.steps.base import Diff, NotYet, StepContext, StepModule, StepResult
from runner.windows import reg
from runner.windows.cmdline import Command

#: The step that takes a user off Exchange IM; its newest ok/changed outcome means "moved".
DISABLE_STEP = "disable_exchange_im"
#: The not-yet line of a machine that keeps Exchange IM (the same words for every machine).
KEEPS_EXCHANGE = "keep Exchange IM until the last of their users has moved"


def _read(ctx: StepContext, host: str, before: Sequence[Command] = ()) -> tuple[S.Held, str]:
    """Run ``before`` then the policy read, in one line within the host's limit; the values
    held after it and what reg.exe wrote to stderr."""
    commands = [*before, *S.read_commands()]
    sections, stderr = cl.run_sections(ctx.connection(host), commands, limit=cl.line_limit(ctx, host),
                                       owner=cl.script_owner(ctx, f"host:{host}"))
    reads = sections[len(before):]
    if any(s is None for s in reads):
        raise TransientFault(f"the registry read on {host} did not come back whole", host=host)
    why = S.unreadable(reads)
    if why:
        raise PermanentFault(f"cannot read the Messenger policy keys on {host}: reg.exe said {why}", host=host)
    return S.held(reads), stderr


def _fresh_values(ctx: StepContext, host: str) -> S.Held | None:
    """The policy values inventory_clients read on ``host`` in this run, when nothing of this
    step can have changed them since: no configure_messenger outcome of the host exists in
    any run (as upgrade_messenger trusts the facts). Then they stand for the probe's read,
    one round trip less per client; otherwise (a later play, a retry, a later run) the probe
    reads live. A kill after reg add but before the checkpoint leaves no outcome: the resumed
    run writes those values again, which apply bears (``reg add /f``, and its read-back)."""
    facts = ctx.facts(host) if hasattr(ctx, "facts") else None
    if not facts or facts.get("run_id") != ctx.run_id or not isinstance(facts.get("signin"), dict):
        return None
    have = S.from_raw(facts["signin"].get("values"))
    if have is None or ctx.previous(ConfigureMessenger.name, host):
        return None
    return have


def still_on_exchange(ctx: StepContext, host: str) -> list[str]:
    """Inventory users of ``host`` not yet taken off Exchange IM (newest disable_exchange_im
    outcome missing or not ok/changed, or older than their latest rollback: docs/rollback.md),
    in inventory order. In ``--check`` a user this check predicts taken off counts as moved."""
    out = []
    for user in cl.client_users(ctx.inventory, host):
        newest = [*ctx.predicted(DISABLE_STEP, user.alias), *ctx.previous(DISABLE_STEP, user.alias)] \
            if ctx.check and hasattr(ctx, "predicted") else ctx.previous(DISABLE_STEP, user.alias)
        if not newest or newest[0].status not in ("ok", "changed") \
                or float(getattr(newest[0], "ended", 0) or 0) < rolled_back_at(ctx, user):
            out.append(user.alias)
    return out


def rolled_back_here(ctx: StepContext, host: str) -> list[str]:
    """Inventory users of ``host`` a rollback put back on Exchange IM after they had moved:
    their latest rollback record (docs/rollback.md) is newer than their newest ok/changed
    disable_exchange_im. In ``--check`` the rollback's own steps only probed: a user who moved
    and whose Exchange IM backup is stored counts (they are what the rollback would put back).
    A user never moved has no rollback record and no disable: never counted."""
    out = []
    for user in cl.client_users(ctx.inventory, host):
        newest = [r for r in ctx.previous(DISABLE_STEP, user.alias) if r.status in ("ok", "changed")]
        moved_at = float(getattr(newest[0], "ended", 0) or 0) if newest else None
        back = rolled_back_at(ctx, user)
        if back and (moved_at is None or moved_at < back):
            out.append(user.alias)
        elif ctx.check and moved_at is not None and moved_at >= back \
                and ctx.artifacts.read(backup_name(user.alias)) is not None:
            out.append(user.alias)
    return out


def _line(s: S.Setting, have: S.Held) -> str:
    found = S.value(have, s.key, s.name)
    if s.data is None:
        return f"- {s.what}: {S.shown(found)} (removed)"
    new = repr(s.data) if isinstance(s.data, str) else str(s.data)
    return f"{'~' if found is not None else '+'} {s.what}: {S.shown(found)} -> {new}"


class ConfigureMessenger(StepModule):
    """Set Windows Messenger's sign-in policy (SIP server, transport, Exchange IM account)."""

    name = "configure_messenger"
    target = "host"
    args_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sip_server": {"type": "string", "minLength": 1,
                           "description": "the LCS pool's FQDN (default: var lcs_pool_fqdn, else the "
                                          "first lcs_servers host)"},
            "transport": {"enum": ["tcp", "tls"], "description": "default: var lcs_transport, else tls"},
            "exchange_im": {"enum": list(S.EXCHANGE_MODES),
                            "description": "keep: coexistence (ExchangeConn 0); off: Exchange IM switched off "
                                           "(refused while a user of the machine is still on it); restore "
                                           "(rollback.yml): undo off on a machine of rolled-back users, "
                                           "nothing else; absent: left as it is"},
            "force": {"type": "boolean", "default": False,
                      "description": "switch Exchange IM off even while users of the machine are on it"},
        },
    }

    @classmethod
    def rechecks_when_done(cls, args: Mapping[str, Any]) -> bool:
        """``exchange_im: restore`` (the rollback's) probes again when its run resumes, as the
        rollback's user steps do (docs/rollback.md)."""
        return args.get("exchange_im") == S.RESTORE

    def probe(self, ctx: StepContext, target: Host) -> Diff | None:  # type: ignore[override]
        mode = ctx.args.get("exchange_im")
        if mode == S.RESTORE:
            # the rollback touches a machine only when a rolled-back user uses it; and there
            # only what "off" did: never a SIP server on a machine the migration never reached
            server, transport = None, None
            if not rolled_back_here(ctx, target.name):
                self._found = None
                return None
        else:
            server = S.wanted_server(ctx.args, ctx.vars, ctx.inventory)
            transport = S.wanted_transport(ctx.args, ctx.vars)
        if mode == "keep" and not still_on_exchange(ctx, target.name):
            mode = None  # everyone of the machine has moved: an "off" already set stays
        have = _fresh_values(ctx, target.name)
        if have is None:
            have, _ = _read(ctx, target.name)
        if mode == S.RESTORE and not S.switched_off(have):
            todo: list[S.Setting] = []  # Exchange IM never switched off here: nothing to give back
        else:
            todo = S.differences(S.wanted(server, transport, mode), have)
        if not todo:
            self._found = (target.name, {**S.summary(have), "problems": S.problems(have, server, transport)})
            return None
        warnings: list[str] = []
        if mode == "off" and any(s.key != S.POLICY_KEY for s in todo):
            left = still_on_exchange(ctx, target.name)
            waves = {u.alias: u.wave for u in cl.client_users(ctx.inventory, target.name) if u.alias in left}
            named = ", ".join(f"{a} ({waves[a]})" if waves.get(a) else a for a in left[:20]) \
                + (f" and {len(left) - 20} more" if len(left) > 20 else "")
            why = f"{len(left)} user(s) of {target.name} still on Exchange IM: {named}" if left else None
            if why and not ctx.args.get("force"):
                raise NotYet(f"{len(left)} user(s) still on Exchange IM: {named}", reason=KEEPS_EXCHANGE,
                             waiting=sorted({waves.get(a) or a for a in left}), data={"still_on_exchange": left})
            warnings = refusal_warnings(ctx, why, action=f"switch Exchange IM off on {target.name}",
                                        forced="switching Exchange IM off")
        return Diff(summary=f"set {len(todo)} Messenger sign-in value(s) on {target.name}",
                    lines=[_line(s, have) for s in todo] + [f"! {w}" for w in warnings],
                    data={"server": server, "transport": transport, "exchange_im": mode,
                          "todo": [[s.key, s.name, s.type, s.data, s.what] for s in todo],
                          "warnings": warnings})

    def unchanged(self, ctx: StepContext, target: Host) -> StepResult:  # type: ignore[override]
        """Nothing differed: ok, with what the client holds (``runner status`` shows it)."""
        found, self._found = getattr(self, "_found", None), None
        if found is None or found[0] != target.name:
            return StepResult("ok")
        return StepResult("ok", data={"signin": found[1], "facts_update": {"signin": found[1]}})

    def apply(self, ctx: StepContext, target: Host, diff: Diff) -> StepResult:  # type: ignore[override]
        d = diff.data
        todo = [S.Setting(*row) for row in d["todo"]]
        commands = [reg.delete_value(s.key, s.name) if s.data is None else reg.add(s.key, s.name, s.type, s.data)
                    for s in todo]
        have, stderr = _read(ctx, target.name, commands)
        after = {**S.summary(have), "problems": S.problems(have, d["server"], d["transport"])}
        left = S.differences(S.wanted(d["server"], d["transport"], d["exchange_im"]), have)
        data: dict[str, Any] = {"set": [s.shown() for s in todo if s.data is not None],
                                "removed": [s.shown() for s in todo if s.data is None], "signin": after,
                                "facts_update": {"signin": after}}
        if left:
            said = " ".join(ln.strip() for ln in stderr.splitlines() if ln.strip())[:200]
            return StepResult("failed", f"{target.name}: reg add/delete did not take: "
                              + ", ".join(s.shown() for s in left) + (f" (reg.exe: {said})" if said else ""),
                              data=data, warnings=list(d.get("warnings") or []))
        if d["exchange_im"] == S.RESTORE:
            return StepResult("changed", f"{target.name}: Exchange IM account given back ({len(todo)} value(s); "
                              "the SIP server left as it is)", data=data, warnings=list(d.get("warnings") or []))
        return StepResult("changed", f"{len(todo)} sign-in value(s) set on {target.name} (SIP server "
                          f"{d['server']}, {d['transport']}"
                          + (f", Exchange IM {d['exchange_im']}" if d["exchange_im"] else "") + ")",
                          data=data, warnings=list(d.get("warnings") or []))
