"""The lab's sc.exe: query, qc, stop, start, config NAME start= TYPE.

Syntax: Microsoft "Windows commands" reference, sc query / sc stop / sc config
/ sc qc (learn.microsoft.com/windows-server/administration/windows-commands/
sc-query, sc-config...): options are written ``start= disabled``, the ``=``
glued to the option name and a space before the value. Output blocks and
error texts as sc.exe prints them (``SERVICE_NAME:`` block with ``TYPE``,
``STATE``..., ``[SC] ChangeServiceConfig SUCCESS``, ``[SC] ControlService
FAILED 1062:`` / ``The service has not been started.``, ``[SC]
EnumQueryServicesStatus:OpenService FAILED 1060:`` / ``The specified service
does not exist as an installed service.``). The exit code is the Win32 error
(0, 1060, 1062, 1056, 1058), as sc.exe returns it.
"""
from __future__ import annotations

from typing import Any

from runner.connections.base import CommandResult
from runner.lab.commands import program
from runner.lab.store import Service

STATE_CODES = {"STOPPED": 1, "START_PENDING": 2, "STOP_PENDING": 3, "RUNNING": 4,
               "CONTINUE_PENDING": 5, "PAUSE_PENDING": 6, "PAUSED": 7}
START_CODES = {"BOOT_START": 0, "SYSTEM_START": 1, "AUTO_START": 2, "DEMAND_START": 3, "DISABLED": 4}
START_WORDS = {"boot": "BOOT_START", "system": "SYSTEM_START", "auto": "AUTO_START",
               "demand": "DEMAND_START", "disabled": "DISABLED"}
TYPE_NAMES = {0x10: "WIN32_OWN_PROCESS", 0x20: "WIN32_SHARE_PROCESS", 0x1: "KERNEL_DRIVER",
              0x2: "FILE_SYSTEM_DRIVER"}

ERRORS = {
    1060: "The specified service does not exist as an installed service.",
    1062: "The service has not been started.",
    1056: "An instance of the service is already running.",
    1058: ("The service cannot be started, either because it is disabled or because it has no "
           "enabled devices associated with it."),
}


def _fail(api: str, code: int) -> CommandResult:
    return CommandResult(code, f"[SC] {api} FAILED {code}:\r\n\r\n{ERRORS[code]}\r\n\r\n", "")


def status_block(svc: Service, state: str | None = None) -> str:
    """The ``SERVICE_NAME:`` block of ``sc query`` (and of stop/start, with a pending state)."""
    st = state or svc.state
    flags = "(STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)" if st in ("RUNNING", "STOP_PENDING") else \
        "(NOT_STOPPABLE, NOT_PAUSABLE, IGNORES_SHUTDOWN)"
    return (f"\r\nSERVICE_NAME: {svc.name} \r\n"
            f"        TYPE               : {svc.type:x}  {TYPE_NAMES.get(svc.type, 'WIN32')}  \r\n"
            f"        STATE              : {STATE_CODES.get(st, 1)}  {st} \r\n"
            f"                                {flags}\r\n"
            f"        WIN32_EXIT_CODE    : 0  (0x0)\r\n"
            f"        SERVICE_EXIT_CODE  : 0  (0x0)\r\n"
            f"        CHECKPOINT         : 0x0\r\n"
            f"        WAIT_HINT          : 0x0\r\n")


def _qc(svc: Service) -> str:
    return ("[SC] QueryServiceConfig SUCCESS\r\n\r\n"
            f"SERVICE_NAME: {svc.name}\r\n"
            f"        TYPE               : {svc.type:x}  {TYPE_NAMES.get(svc.type, 'WIN32')}\r\n"
            f"        START_TYPE         : {START_CODES.get(svc.start_type, 3)}   {svc.start_type}\r\n"
            f"        ERROR_CONTROL      : 1   NORMAL\r\n"
            f"        BINARY_PATH_NAME   : {svc.binary_path}\r\n"
            f"        LOAD_ORDER_GROUP   : \r\n"
            f"        TAG                : 0\r\n"
            f"        DISPLAY_NAME       : {svc.display_name}\r\n"
            f"        DEPENDENCIES       : {svc.dependencies}\r\n"
            f"        SERVICE_START_NAME : {svc.account}\r\n")


USAGE_CONFIG = ("DESCRIPTION:\r\n        Modifies a service entry in the registry and Service Database.\r\n"
                "USAGE:\r\n        sc <server> config [service name] <option1> <option2>...\r\n\r\n"
                "OPTIONS:\r\nNOTE: The option name includes the equal sign.\r\n"
                "      A space is required between the equal sign and the value.\r\n"
                " start= <boot|system|auto|demand|disabled|delayed-auto>\r\n")
USAGE = ("DESCRIPTION:\r\n        SC is a command line program used for communicating with the\r\n"
         "        Service Control Manager and services.\r\nUSAGE:\r\n"
         "        sc <server> [command] [service name] <option1> <option2>...\r\n")


@program("sc")
def sc(ctx: Any, argv: list[str], raw: str) -> CommandResult:
    """Dispatch ``sc <command> NAME ...``; an optional ``\\\\server`` first argument is ignored."""
    args = argv[1:]
    if args and args[0].startswith("\\\\"):
        args = args[1:]
    if len(args) < 2:
        return CommandResult(1639 if args else 0, USAGE, "")
    cmd, name, opts = args[0].lower(), args[1], args[2:]
    services = ctx.host.services
    svc = services.get(name)
    if cmd == "query":
        if svc is None:
            return _fail("EnumQueryServicesStatus:OpenService", 1060)
        return CommandResult(0, status_block(svc), "")
    if cmd == "qc":
        if svc is None:
            return _fail("OpenService", 1060)
        return CommandResult(0, _qc(svc), "")
    if cmd == "stop":
        if svc is None:
            return _fail("OpenService", 1060)
        if svc.state != "RUNNING":
            return _fail("ControlService", 1062)
        ctx.mutated()
        services.set_state(svc.name, "STOPPED")
        return CommandResult(0, status_block(svc, "STOP_PENDING"), "")
    if cmd == "start":
        if svc is None:
            return _fail("OpenService", 1060)
        if svc.start_type == "DISABLED":
            return _fail("StartService", 1058)
        if svc.state == "RUNNING":
            return _fail("StartService", 1056)
        ctx.mutated()
        services.set_state(svc.name, "RUNNING")
        return CommandResult(0, status_block(svc, "START_PENDING"), "")
    if cmd == "config":
        # options come as pairs "start=" VALUE; "start=disabled" (no space) is a usage error
        start = None
        i = 0
        while i < len(opts):
            o = opts[i].lower()
            if not o.endswith("=") or i + 1 >= len(opts):
                return CommandResult(1639, USAGE_CONFIG, "")
            if o == "start=":
                start = START_WORDS.get(opts[i + 1].lower())
                if start is None:
                    return CommandResult(1639, USAGE_CONFIG, "")
            i += 2
        if not opts:
            return CommandResult(1639, USAGE_CONFIG, "")
        if svc is None:
            return _fail("OpenService", 1060)
        ctx.mutated()
        if start is not None:
            services.set_start_type(svc.name, start)
        return CommandResult(0, "[SC] ChangeServiceConfig SUCCESS\r\n", "")
    return CommandResult(1639, USAGE, "")
