"""decommission_exchange_im: stop and disable the Exchange IM service, remove the IM virtual server.

Targets the Exchange IM server host. Refuses while any user is still homed
on it (an ldifde search of msExchIMAddress), naming them; ``force: true``
overrides loudly. Steps, each skipped when already done: ``sc stop`` (1062,
not running, is fine), ``sc config NAME start= disabled``, and an LDIF
delete of each IM virtual server object (found with var
``exchange_im_virtual_server_filter``, default
``(objectClass=protocolCfgIMVirtualServer)``, under var ``exchange_config_dn``
when set). Service name: var ``exchange_im_service`` (default MSExchangeIM, conv).
"""
from __future__ import annotations

from runner.errors import PermanentFault
from runner.lcs.exchange import DEFAULT_SERVICE, DEFAULT_VS_FILTER, Directory, homed_on
from runner.model import Host
from runner.steps._clients import run_sections
from runner.steps._lcs import refusal_warnings
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import ldif, sc


class DecommissionExchangeIm(StepModule):
    """Retire an Exchange IM server once nobody depends on it."""

    name = "decommission_exchange_im"
    target = "host"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "force": {"type": "boolean", "default": False},
        "service": {"type": "string", "minLength": 1}}}

    def _service(self, ctx: StepContext) -> str:
        return str(ctx.args.get("service") or ctx.vars.get("exchange_im_service") or DEFAULT_SERVICE)

    def probe(self, ctx: StepContext, target: Host) -> Diff | None:
        conn = ctx.connection(target.name)
        directory = Directory(conn, target.name, ctx.vars)
        service = self._service(ctx)
        secs, _ = run_sections(conn, [sc.query(service), sc.qc(service)])
        state = sc.parse_one(secs[0].stdout) if secs[0] is not None and secs[0].ok else None
        config = sc.parse_one(secs[1].stdout) if secs[1] is not None and secs[1].ok else None
        vs_filter = str(ctx.vars.get("exchange_im_virtual_server_filter") or DEFAULT_VS_FILTER)
        servers = directory.search(vs_filter, ["cn"], ctx.vars.get("exchange_config_dn"))
        actions: list[str] = []
        if state is not None and state.state not in ("STOPPED", None):
            actions.append("stop")
        if config is not None and (config.start_type or "").upper() != "DISABLED":
            actions.append("disable")
        if servers:
            actions.append("remove")
        if not actions:
            return None
        homed = homed_on(directory.im_users(), target.name)
        why: str | None = None
        if homed:
            names = ", ".join(e.first("msExchIMAddress") or e.dn for e in homed[:20])
            more = f" and {len(homed) - 20} more" if len(homed) > 20 else ""
            why = f"{len(homed)} user(s) still homed on {target.name}: {names}{more}"
        warnings = refusal_warnings(ctx, why, action=f"decommission Exchange IM on {target.name}",
                                    forced="decommissioning")
        lines = {"stop": f"~ service {service}: stop", "disable": f"~ service {service}: start= disabled"}
        out = [lines[a] for a in actions if a in lines] + [f"- virtual server {e.dn}" for e in servers]
        return Diff(f"decommission Exchange IM on {target.name}", out + [f"! {w}" for w in warnings],
                    {"actions": actions, "service": service, "virtual_servers": [e.dn for e in servers],
                     "warnings": warnings})

    def apply(self, ctx: StepContext, target: Host, diff: Diff) -> StepResult:
        d = diff.data
        conn = ctx.connection(target.name)
        service = d["service"]
        if "stop" in d["actions"]:
            res = conn.run(sc.stop(service).render())
            if not res.ok and res.rc != sc.SERVICE_NOT_ACTIVE:
                raise PermanentFault(f"sc stop {service} failed (exit {res.rc}): {res.stdout.strip()[-200:]}")
        if "disable" in d["actions"]:
            res = conn.run(sc.config_start(service, "disabled").render())
            if not res.ok:
                raise PermanentFault(f"sc config {service} start= disabled failed (exit {res.rc})")
        if d["virtual_servers"]:
            Directory(conn, target.name, ctx.vars).apply(
                [ldif.Change(dn, "delete") for dn in d["virtual_servers"]])
        return StepResult("changed", f"Exchange IM decommissioned on {target.name}",
                          {"service": service, "removed": d["virtual_servers"], "forced": bool(d["warnings"])},
                          d["warnings"])
