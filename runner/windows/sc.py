"""sc.exe: builders for query/qc/stop/config and parsers of ``sc query`` / ``sc qc`` output.

Output layout (doc: Microsoft "sc.exe query" / "sc.exe qc" references,
learn.microsoft.com/windows-server/administration/windows-commands/sc-query):
``SERVICE_NAME: NAME`` then indented ``FIELD : value`` lines, e.g.
``STATE              : 4  RUNNING`` followed by a continuation line of
flags in parentheses; ``sc qc`` starts with ``[SC] QueryServiceConfig
SUCCESS``. A missing service: ``[SC] EnumQueryServicesStatus:OpenService
FAILED 1060:`` and exit code 1060. ``sc stop`` on a stopped service exits
1062 (DOMAIN.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from runner.windows.cmdline import Command, Quoted

SERVICE_DOES_NOT_EXIST = 1060
SERVICE_NOT_ACTIVE = 1062
START_TYPES = ("boot", "system", "auto", "demand", "disabled")

_FIELD = re.compile(r"^\s+([A-Z_0-9]+)\s*:\s?(.*)$")


@dataclass
class ServiceInfo:
    """Fields of one service from ``sc query`` or ``sc qc`` (raw text by field name),
    with the STATE / START_TYPE decoded."""

    name: str
    fields: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def _code_word(self, key: str) -> tuple[int | None, str | None]:
        text = self.fields.get(key)
        if not text:
            return None, None
        parts = text.split()
        code = int(parts[0]) if parts[0].isdigit() else None
        word = parts[1] if len(parts) > 1 else None
        return code, word

    @property
    def state(self) -> str | None:
        """``RUNNING``, ``STOPPED``, ``START_PENDING``... from the STATE line."""
        return self._code_word("STATE")[1]

    @property
    def state_code(self) -> int | None:
        return self._code_word("STATE")[0]

    @property
    def start_type(self) -> str | None:
        """``AUTO_START``, ``DEMAND_START``, ``DISABLED``... from ``sc qc``."""
        return self._code_word("START_TYPE")[1]

    @property
    def display_name(self) -> str | None:
        return self.fields.get("DISPLAY_NAME")


def query(name: str) -> Command:
    """``sc query NAME``."""
    return Command("sc", "query", Quoted(name))


def qc(name: str) -> Command:
    """``sc qc NAME`` (the service's configuration: start type, binary, account)."""
    return Command("sc", "qc", Quoted(name))


def stop(name: str) -> Command:
    """``sc stop NAME`` (exit 1062 when it is not running)."""
    return Command("sc", "stop", Quoted(name))


def config_start(name: str, start: str) -> Command:
    """``sc config NAME start= TYPE`` (sc wants the space after ``start=``)."""
    if start not in START_TYPES:
        raise ValueError(f"start type must be one of {START_TYPES}, not {start!r}")
    return Command("sc", "config", Quoted(name), "start=", start)


def parse(stdout: str) -> list[ServiceInfo]:
    """Parse ``sc query`` / ``sc qc`` output (one or several services)."""
    services: list[ServiceInfo] = []
    current: ServiceInfo | None = None
    last: str | None = None
    for raw in stdout.splitlines():
        line = raw.rstrip()
        if line.startswith("SERVICE_NAME:"):
            current = ServiceInfo(line.split(":", 1)[1].strip())
            services.append(current)
            last = None
            continue
        if current is None or not line.strip():
            continue
        m = _FIELD.match(line)
        if m:
            last = m.group(1)
            current.fields[last] = m.group(2).strip()
            continue
        stripped = line.strip()
        if last == "STATE" and stripped.startswith("("):
            current.flags = [f.strip() for f in stripped.strip("()").split(",") if f.strip()]
        elif last == "DEPENDENCIES":
            current.fields[last] = (current.fields[last] + " " + stripped.lstrip(": ")).strip()
    return services


def parse_one(stdout: str) -> ServiceInfo | None:
    """The single service of ``sc query NAME`` / ``sc qc NAME`` output, or None."""
    found = parse(stdout)
    return found[0] if found else None


def does_not_exist(stdout: str) -> bool:
    """Whether sc's answer is ``FAILED 1060`` (no service of that name is installed)."""
    return f"FAILED {SERVICE_DOES_NOT_EXIST}" in stdout
