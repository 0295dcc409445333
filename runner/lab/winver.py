"""What differs between the Windows versions a lab host runs (docs/windows-versions.md).

Each lab host has an ``os`` in ``lab.json`` (clients: "Windows XP
Professional" or "Windows 2000 Professional"; the Exchange 2000 IM server
"Windows 2000 Server"; the LCS 2005 pool "Windows Server 2003"). Its
:class:`WindowsVersion` says what the lab's cmd.exe and programs do there:

- the longest command line cmd.exe takes: 2,047 characters on Windows 2000,
  8,191 from XP on (doc: KB 830473);
- ``%SystemRoot%``: ``C:\\WINNT`` on Windows 2000, ``C:\\WINDOWS`` on XP and
  Server 2003 (doc: the default folders of fresh installs);
- whether ``wmic`` exists: it first shipped with XP (doc), so a Windows 2000
  host answers "'wmic' is not recognized ...";
- the ``reg query`` layout: reg.exe 3.0 on XP / 2003 (doc: the header
  ``! REG.EXE VERSION 3.0``, a blank line, tab-separated columns,
  ``<NO NAME>``); Windows 2000 has reg.exe only from its Support Tools,
  version 2.0, modelled with the 3.0 layout and a ``2.0`` header (conv).

Labs written before this module (``lab.json`` format ``lab/1``) are read
as they were made: every host has :data:`LEGACY` (``C:\\WINDOWS``, 8,191
characters, wmic, the Windows Vista/7 ``reg query`` layout), since their
files were laid out that way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class WindowsVersion:
    """The facts of one Windows version the lab models."""

    name: str                 # ProductName as the registry holds it
    version: str              # HKLM\...\Windows NT\CurrentVersion CurrentVersion
    build: str                # the build ``ver`` prints
    service_pack: str         # CSDVersion
    system_root: str          # %SystemRoot% / %windir%
    line_limit: int           # cmd.exe's longest command line
    wmic: bool                # wmic.exe is installed
    reg_version: str | None   # "3.0" / "2.0": the reg.exe header; None: the Vista/7 layout

    @property
    def ver_line(self) -> str:
        """What ``ver`` prints (without the blank lines around it)."""
        if self.version == "5.0":
            return f"Microsoft Windows 2000 [Version {self.build}]"
        if self.version == "5.1":
            return f"Microsoft Windows XP [Version {self.build}]"
        return f"Microsoft Windows [Version {self.build}]"

    @property
    def missing_programs(self) -> frozenset[str]:
        """Programs of the lab this version does not have (cmd.exe cannot find them)."""
        return frozenset() if self.wmic else frozenset({"wmic"})

    def environment(self) -> dict[str, str]:
        """The variables of cmd.exe's environment that depend on the version."""
        root = self.system_root
        return {"SystemRoot": root, "windir": root, "ComSpec": root + r"\system32\cmd.exe",
                "PATH": f"{root}\\system32;{root};{root}\\System32\\Wbem"}

    def registry_values(self, product: str) -> list[tuple[str, str, Any]]:
        """``HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion`` values of an install."""
        return [("ProductName", "REG_SZ", product), ("CurrentVersion", "REG_SZ", self.version),
                ("CurrentBuildNumber", "REG_SZ", self.build.rsplit(".", 1)[-1]),
                ("CSDVersion", "REG_SZ", self.service_pack), ("SystemRoot", "REG_SZ", self.system_root)]

    def system_folders(self) -> tuple[str, ...]:
        """Folders every install of this version has (reg export and msiexec logs write there)."""
        return (self.system_root + r"\system32", self.system_root + r"\Temp",
                r"C:\Documents and Settings\Administrator\Local Settings\Temp")


WINDOWS_2000 = WindowsVersion("Microsoft Windows 2000", "5.0", "5.00.2195", "Service Pack 4", r"C:\WINNT", 2047,
                              False, "2.0")
WINDOWS_XP = WindowsVersion("Microsoft Windows XP", "5.1", "5.1.2600", "Service Pack 2", r"C:\WINDOWS", 8191,
                            True, "3.0")
WINDOWS_2003 = WindowsVersion("Microsoft Windows Server 2003", "5.2", "5.2.3790", "Service Pack 1", r"C:\WINDOWS",
                              8191, True, "3.0")
#: Hosts of labs made before per-version modelling (lab.json ``lab/1``).
LEGACY = WindowsVersion("Microsoft Windows XP", "5.1", "5.1.2600", "Service Pack 1", r"C:\WINDOWS", 8191, True, None)

#: The OS of a host whose lab.json entry names none, by role.
ROLE_DEFAULT = {"client": "Windows XP Professional", "exchange_im": "Windows 2000 Server",
                "lcs": "Windows Server 2003", "member": "Windows Server 2003"}


def parse_os(os_name: str) -> WindowsVersion:
    """The version an ``os`` string names ("Windows 2000 Professional", "Windows XP
    Professional SP3", "Windows Server 2003"); the service pack is kept when named."""
    low = os_name.lower()
    base = WINDOWS_2000 if "2000" in low else WINDOWS_2003 if "2003" in low else WINDOWS_XP
    for sp in ("1", "2", "3", "4"):
        if f"sp{sp}" in low.replace(" ", "") or f"service pack {sp}" in low:
            return WindowsVersion(base.name, base.version, base.build, f"Service Pack {sp}", base.system_root,
                                  base.line_limit, base.wmic, base.reg_version)
    return base


def for_host(config: Mapping[str, Any], lab_format: str) -> WindowsVersion:
    """The version of a lab host from its lab.json entry (``os`` and ``service_pack``, else
    its role's default);
    :data:`LEGACY` for every host of a ``lab/1`` lab."""
    if lab_format == "lab/1":
        return LEGACY
    os_name = config.get("os")
    if not isinstance(os_name, str) or not os_name:
        os_name = ROLE_DEFAULT.get(str(config.get("role", "client")), ROLE_DEFAULT["client"])
    sp = config.get("service_pack")
    return parse_os(f"{os_name} {sp}" if isinstance(sp, str) and sp else os_name)
