"""Windows Messenger 5.1's sign-in settings by policy: what configure_messenger sets and
inventory_clients checks (docs/messenger-signin.md says which are documented and which are ours).

Two registry keys, read in one round trip (``reg query`` of each, one line):

- ``HKLM\\SOFTWARE\\Policies\\Microsoft\\Messenger\\Client``: the machine policy key of
  Windows Messenger (KB 328212: the HKLM key wins over HKCU). Under it (conv):
  ``ServerAddress`` (REG_SZ, the LCS pool's FQDN), ``Transport`` (REG_DWORD, 2 TCP,
  4 TLS) and ``ConfigurationMode`` (REG_DWORD, 1 = the server is configured, not found
  by DNS); and the Exchange IM service's own subkey (its service GUID) with ``Disabled``
  (REG_DWORD 1) once Exchange IM is switched off.
- ``HKLM\\SOFTWARE\\Microsoft\\MessengerService\\Policies``: ``ExchangeConn`` (REG_DWORD;
  Exchange 2000 SP2 docs, KB 328212: 0 normal, 1 Exchange always primary, 2 Exchange only).

Private to runner/steps (the leading underscore keeps it out of step discovery).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runner.errors import PermanentFault
from runner.model import Inventory
from runner.windows import reg
from runner.windows.cmdline import Command, Section

POLICY_KEY = r"HKLM\SOFTWARE\Policies\Microsoft\Messenger\Client"
EXCHANGE_POLICIES = r"HKLM\SOFTWARE\Microsoft\MessengerService\Policies"
#: Windows Messenger's service id of Exchange Instant Messaging (the client's IMessengerContact
#: ServiceId for Exchange IM contacts).
EXCHANGE_SERVICE_ID = "{83D4679E-B6D7-11D2-BF36-00C04FB90A03}"
SERVICE_KEY = POLICY_KEY + "\\" + EXCHANGE_SERVICE_ID
SERVER = "ServerAddress"
TRANSPORT = "Transport"
MODE = "ConfigurationMode"
EXCHANGE_CONN = "ExchangeConn"
DISABLED = "Disabled"
#: Transport values as Office Communicator 2005 takes them (2 TCP, 4 TLS); conv for Messenger 5.1.
TRANSPORTS = {"tcp": 2, "tls": 4}
DEFAULT_TRANSPORT = "tls"
MANUAL = 1
#: ExchangeConn during coexistence: 0, "normal operation" (both accounts, neither forced).
COEXIST = 0
EXCHANGE_ONLY = 2
#: configure_messenger's exchange_im modes; ``restore`` is the rollback's: it only undoes ``off``.
RESTORE = "restore"
EXCHANGE_MODES = ("keep", "off", RESTORE)
#: Inventory variables: the pool's FQDN and the transport.
SERVER_VAR = "lcs_pool_fqdn"
TRANSPORT_VAR = "lcs_transport"

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


@dataclass(frozen=True)
class Setting:
    """One registry value as wanted: ``data`` None means it must be absent."""

    key: str
    name: str
    type: str
    data: str | int | None
    what: str

    def shown(self) -> str:
        return f"{self.what} ({self.key}\\{self.name})"


#: What a client holds: (key lower-case, value name lower-case) -> (type, data).
Held = dict[tuple[str, str], tuple[str, Any]]


def check_server(value: Any, source: str) -> str:
    """``value`` when it is a DNS name or IP address with an optional ``:port``; else
    PermanentFault naming ``source`` (the argument or variable it came from). A name goes
    on the command line and into every client's policy: nothing else may."""
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    ok = bool(host) and len(host) <= 253 and (not port or port.isdigit() and 0 < int(port) < 65536)
    if ok:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            labels = host.rstrip(".").split(".")
            ok = all(_LABEL.match(x) for x in labels) and not labels[-1].isdigit()
    if not ok:
        raise PermanentFault(f"{source} {value!r} is not a DNS name or IPv4 address (with an optional :port); "
                             "set it to the LCS pool's FQDN, e.g. lcs01.contoso.com")
    return text


def wanted_server(args: Mapping[str, Any], vars_: Mapping[str, Any], inventory: Inventory) -> str:
    """The SIP server clients sign in to: argument ``sip_server``, else var ``lcs_pool_fqdn``,
    else the first host of group ``lcs_servers`` (its name); checked by ``check_server``."""
    if args.get("sip_server") is not None:
        return check_server(args["sip_server"], "configure_messenger: sip_server")
    if vars_.get(SERVER_VAR) is not None:
        return check_server(vars_[SERVER_VAR], f"variable {SERVER_VAR}")
    pools = inventory.group_hosts("lcs_servers")
    if not pools:
        raise PermanentFault(f"no SIP server to point the clients at: set variable {SERVER_VAR} "
                             "(the LCS pool's FQDN) or the step's sip_server")
    return check_server(pools[0], "the first host of group lcs_servers")


def var_problems(vars_: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(variable, what is wrong) for ``lcs_pool_fqdn`` and ``lcs_transport`` in ``vars_``, the
    values configure_messenger writes into every client's policy: checked where they are
    given (the inventory, ``-e``), not first on the clients after their upgrade. A Jinja
    template (``{{ ... }}``) is checked when it is rendered."""
    out: list[tuple[str, str]] = []
    if SERVER_VAR in vars_ and not _templated(vars_[SERVER_VAR]):
        try:
            check_server(vars_[SERVER_VAR], f"variable {SERVER_VAR}")
        except PermanentFault as exc:
            out.append((SERVER_VAR, str(exc)))
    if TRANSPORT_VAR in vars_ and not _templated(vars_[TRANSPORT_VAR]):
        value = vars_[TRANSPORT_VAR]
        if not isinstance(value, str) or value.lower() not in TRANSPORTS:
            out.append((TRANSPORT_VAR, f"variable {TRANSPORT_VAR} is {value!r}: tcp or tls (Windows Messenger "
                                       "5.1 signs in to LCS 2005 over TCP or TLS; there is no UDP)"))
    return out


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def wanted_transport(args: Mapping[str, Any], vars_: Mapping[str, Any]) -> str:
    """``tcp`` or ``tls``: argument ``transport``, else var ``lcs_transport``, else ``tls``."""
    value = args.get("transport") or vars_.get(TRANSPORT_VAR) or DEFAULT_TRANSPORT
    if not isinstance(value, str) or value.lower() not in TRANSPORTS:
        raise PermanentFault(f"transport {value!r} (variable {TRANSPORT_VAR}) must be tcp or tls")
    return value.lower()


def wanted(server: str | None, transport: str | None, exchange_im: str | None) -> list[Setting]:
    """The settings of a client signed in to ``server`` over ``transport``; ``exchange_im``
    ``keep`` (coexistence: ExchangeConn 0, the Exchange service not disabled), ``off``
    (ExchangeConn removed, the Exchange service disabled) or None (left as they are).
    ``restore`` (a rollback) wants only keep's Exchange IM values, nothing of the SIP server
    (``server`` and ``transport`` None): it undoes ``off`` and nothing else."""
    out = [] if exchange_im == RESTORE else [
        Setting(POLICY_KEY, SERVER, "REG_SZ", server, "SIP server"),
        Setting(POLICY_KEY, TRANSPORT, "REG_DWORD", TRANSPORTS[transport or DEFAULT_TRANSPORT], "transport"),
        Setting(POLICY_KEY, MODE, "REG_DWORD", MANUAL, "configuration mode")]
    if exchange_im in ("keep", RESTORE):
        out += [Setting(EXCHANGE_POLICIES, EXCHANGE_CONN, "REG_DWORD", COEXIST, "ExchangeConn"),
                Setting(SERVICE_KEY, DISABLED, "REG_DWORD", None, "Exchange IM service disabled")]
    elif exchange_im == "off":
        out += [Setting(EXCHANGE_POLICIES, EXCHANGE_CONN, "REG_DWORD", None, "ExchangeConn"),
                Setting(SERVICE_KEY, DISABLED, "REG_DWORD", 1, "Exchange IM service disabled")]
    return out


def switched_off(have: Held) -> bool:
    """Whether the client's Exchange IM account is switched off by policy (``Disabled`` 1 under
    the Exchange IM service's key: what ``exchange_im: off`` sets, and no seed of an Exchange
    2000 IM estate holds)."""
    found = value(have, SERVICE_KEY, DISABLED)
    return found is not None and found[1] == 1


def read_commands() -> list[Command]:
    """The two ``reg query`` commands whose sections ``held`` reads; each one's error text
    goes to its own section (``2>&1``), apart from what other commands of the line say."""
    return [Command(*reg.query(POLICY_KEY, recursive=True).bits, "2>&1"),
            Command(*reg.query(EXCHANGE_POLICIES).bits, "2>&1")]


def held(sections: Sequence[Section | None]) -> Held:
    """The values the two read sections show (a failed section: its key is absent)."""
    out: Held = {}
    for sec in sections:
        if sec is None or not sec.ok:
            continue
        for key in reg.parse_query(sec.stdout):
            for v in key.values:
                out[(reg.long_path(key.path).lower(), v.name.lower())] = (v.type, v.data)
    return out


def raw(have: Held) -> list[list[Any]]:
    """``have`` as JSON for the host's facts: [key, name, type, data], data None where it is
    not text, a number or a list of text (such a value never matches a wanted one)."""
    out = []
    for (key, name), (type_, data) in sorted(have.items()):
        safe = isinstance(data, (str, int)) or isinstance(data, list) and all(isinstance(x, str) for x in data)
        out.append([key, name, type_, data if safe else None])
    return out


def from_raw(rows: Any) -> Held | None:
    """The inverse of ``raw``; None when ``rows`` is not its shape."""
    if not isinstance(rows, list):
        return None
    out: Held = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4 and all(isinstance(x, str) for x in row[:3])):
            return None
        out[(row[0].lower(), row[1].lower())] = (row[2], row[3])
    return out


def unreadable(sections: Sequence[Section | None]) -> str | None:
    """Why the read tells nothing (a section that never ran, a query that failed other than
    with "not found"), or None when every failed query is of a key that does not exist."""
    if any(s is None for s in sections):
        return "the registry read did not run"
    errors = [" ".join(ln.strip() for ln in s.stdout.splitlines() if ln.strip())
              for s in sections if s is not None and not s.ok and "unable to find" not in s.stdout.lower()]
    return "; ".join(errors)[:200] if errors else None


def value(have: Held, key: str, name: str) -> tuple[str, Any] | None:
    """(type, data) of ``key\\name`` on the client, None when absent."""
    return have.get((reg.long_path(key).lower(), name.lower()))


def matches(s: Setting, have: Held) -> bool:
    """Whether the client holds ``s`` as wanted (a server name compares case-insensitively)."""
    found = value(have, s.key, s.name)
    if s.data is None:
        return found is None
    if found is None or found[0] != s.type:
        return False
    if isinstance(s.data, str):
        return isinstance(found[1], str) and found[1].lower() == s.data.lower()
    return found[1] == s.data


def differences(want: Sequence[Setting], have: Held) -> list[Setting]:
    """The wanted settings the client does not hold, in order."""
    return [s for s in want if not matches(s, have)]


def shown(found: tuple[str, Any] | None) -> str:
    """A held value for a diff line or a warning."""
    if found is None:
        return "(none)"
    return f"{found[1]!r}" if isinstance(found[1], str) else f"{found[1]} ({found[0]})"


def summary(have: Held) -> dict[str, Any]:
    """The sign-in facts of a client (``facts.signin``): the values held (``values``, what a
    probe may use instead of reading again) and what ``runner status`` shows of them."""
    server = value(have, POLICY_KEY, SERVER)
    transport = value(have, POLICY_KEY, TRANSPORT)
    names = {v: k for k, v in TRANSPORTS.items()}
    conn = value(have, EXCHANGE_POLICIES, EXCHANGE_CONN)
    disabled = value(have, SERVICE_KEY, DISABLED)
    return {"values": raw(have), "sip_server": server[1] if server and isinstance(server[1], str) else None,
            "transport": (names.get(transport[1], str(transport[1])) if transport and transport[0] == "REG_DWORD"
                          else None if transport is None else f"{transport[1]!r} ({transport[0]})"),
            "exchange_conn": conn[1] if conn and conn[0] == "REG_DWORD" else None if conn is None else str(conn[1]),
            "exchange_im": "off" if disabled and disabled[1] == 1 else "on"}


def problems(have: Held, server: str | None, transport: str | None) -> list[str]:
    """What is missing or wrong in a client's sign-in settings, as short phrases: the SIP
    server and transport against the wanted ones (None: not known, only checked for being
    there), an ExchangeConn of 2 (Exchange only: the client never signs in to LCS) or of a
    value the policy does not define."""
    out: list[str] = []
    found = value(have, POLICY_KEY, SERVER)
    if found is None:
        out.append("no SIP server set")
    elif not isinstance(found[1], str) or found[0] != "REG_SZ" or (server and found[1].lower() != server.lower()):
        out.append(f"SIP server is {shown(found)}" + (f", not {server!r}" if server else ""))
    t = value(have, POLICY_KEY, TRANSPORT)
    if t is None:
        out.append("no transport set")
    elif t[0] != "REG_DWORD" or t[1] not in TRANSPORTS.values() or (
            transport and t[1] != TRANSPORTS[transport]):
        out.append(f"transport is {shown(t)}" + (f", not {transport} ({TRANSPORTS[transport]})" if transport else ""))
    conn = value(have, EXCHANGE_POLICIES, EXCHANGE_CONN)
    if conn is not None and (conn[0] != "REG_DWORD" or conn[1] not in (0, 1)):
        why = ", Exchange only: the client never signs in to LCS" if conn[1] == EXCHANGE_ONLY else ""
        out.append(f"ExchangeConn is {shown(conn)}{why}")
    return out
