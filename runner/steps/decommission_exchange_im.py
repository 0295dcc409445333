"""decommission_exchange_im: stop and disable the Exchange IM service, remove the IM virtual server.

Targets the Exchange IM server host. Refuses while any user is still homed
on it (an ldifde search of msExchIMAddress), naming them; ``force: true``
overrides loudly. Steps, each skipped when already done: ``sc stop`` (when
not STOPPED), ``sc config NAME start= disabled``, and an LDIF
delete of each IM virtual server object (found with var
``exchange_im_virtual_server_filter``, default
``(objectClass=protocolCfgIMVirtualServer)``, under var ``exchange_config_dn``
when set). Service name: var ``exchange_im_service`` (default MSExchangeIM, conv).

Round trips: the probe is one line (sc query, sc qc and both directory
searches); apply puts the LDIF file (when a virtual server goes) and runs one
line in which stop, config and the import are chained so each runs only
after the one before succeeded, then the file is deleted and the virtual
servers read back. A service stopped by someone else between probe and apply
(sc stop exit 1062) is a TransientFault: the retry re-probes.
"""
from __future__ import annotations

from runner.errors import PermanentFault, TransientFault
from runner.lcs.exchange import DEFAULT_SERVICE, DEFAULT_VS_FILTER, IM_USERS, Directory, Query, homed_on
from runner.model import Host
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
        service = self._service(ctx)
        vs_filter = str(ctx.vars.get("exchange_im_virtual_server_filter") or DEFAULT_VS_FILTER)
        vs_query = Query(vs_filter, ("cn",), ctx.vars.get("exchange_config_dn"))
        # one line: the service's state and config, its virtual servers, who is still IM-enabled
        secs, (servers, im_users) = Directory(conn, target.name, ctx.vars, owner=target.name).read(
            [vs_query, IM_USERS], [sc.query(service), sc.qc(service)])
        state = sc.parse_one(secs[0].stdout) if secs[0] is not None and secs[0].ok else None
        config = sc.parse_one(secs[1].stdout) if secs[1] is not None and secs[1].ok else None
        if servers and secs[0] is not None and sc.does_not_exist(secs[0].stdout):
            # the IM virtual server is still there but no service of this name: a wrong name, and
            # removing the virtual server while the real service runs on is not a decommission
            raise PermanentFault(f"no service {service} on {target.name} (sc query: FAILED 1060) while its IM "
                                 "virtual server is still there: set exchange_im_service (or the step's "
                                 "service) to the Exchange IM service's name; `sc query state= all` on the "
                                 "server lists them", host=target.name)
        actions: list[str] = []
        if state is not None and state.state not in ("STOPPED", None):
            actions.append("stop")
        if config is not None and (config.start_type or "").upper() != "DISABLED":
            actions.append("disable")
        if servers:
            actions.append("remove")
        if not actions:
            return None
        homed = homed_on(im_users, target.name)
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
                     "vs_query": [vs_filter, ctx.vars.get("exchange_config_dn")], "warnings": warnings})

    def apply(self, ctx: StepContext, target: Host, diff: Diff) -> StepResult:
        d = diff.data
        service = d["service"]
        steps = ([("stop", sc.stop(service))] if "stop" in d["actions"] else []) \
            + ([("disable", sc.config_start(service, "disabled"))] if "disable" in d["actions"] else [])
        removed = d["virtual_servers"]
        vs_filter, vs_base = d.get("vs_query") or (DEFAULT_VS_FILTER, None)
        read_back = [Query(vs_filter, ("cn",), vs_base)] if removed else []
        # put the LDIF (if any), then one line: stop && config && ldifde -i (in that order,
        # each only after the previous succeeded), delete the file, read the servers back
        done = Directory(ctx.connection(target.name), target.name, ctx.vars, owner=target.name).apply(
            [ldif.Change(dn, "delete") for dn in removed], before=[c for _, c in steps], read_back=read_back)
        for (what, _), sec in zip(steps, done.before):
            if sec is not None and sec.ok:
                continue
            text = sec.stdout.strip() if sec is not None else "did not run"
            if what == "stop" and f"FAILED {sc.SERVICE_NOT_ACTIVE}" in text:
                # stopped by someone else since the probe: the retry re-probes and goes on
                raise TransientFault(f"sc stop {service}: the service stopped since the probe; re-probing",
                                     host=target.name)
            if what == "stop":
                raise PermanentFault(f"sc stop {service} failed: {text[-200:]}", host=target.name)
            raise PermanentFault(f"sc config {service} start= disabled failed: {text[-200:]}", host=target.name)
        still = {e.dn.lower() for e in done.found[0]} & {dn.lower() for dn in removed} if removed else set()
        if still:
            raise PermanentFault(f"ldifde import on {target.name} succeeded but virtual server(s) remain: "
                                 f"{', '.join(sorted(still))}", host=target.name)
        return StepResult("changed", f"Exchange IM decommissioned on {target.name}",
                          {"service": service, "removed": removed, "forced": bool(d["warnings"])},
                          d["warnings"])
