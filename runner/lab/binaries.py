"""The lab's stand-ins for Windows binaries: executables with version info, MSI packages.

A lab executable (e.g. ``msmsgs.exe``) is a file that starts with ``MZ`` (so
it looks like a PE image to anything that sniffs it) followed by a NUL, the
marker ``LAB-VERSIONINFO`` and a NUL, then a UTF-8 JSON object with the
VS_VERSIONINFO strings (``FileVersion``, ``ProductVersion``, ``ProductName``,
``FileDescription``, ``CompanyName``). The version travels with the file
when it is copied, as on Windows.

A lab MSI package is a UTF-8 JSON document:
``{"format": "lab-msi/1", "ProductName", "ProductVersion", "ProductCode",
"UpgradeCode", "Manufacturer", "files": [{"path":
"[ProgramFilesFolder]Messenger\\\\msmsgs.exe", "FileVersion": "5.1.0715"}],
"broken": false, "reboot_required": false}``. ``broken`` makes msiexec fail
with 1603 (a corrupt or failing package); ``reboot_required`` makes it
return 3010. ``[ProgramFilesFolder]`` etc. are Windows Installer folder
properties resolved against the host's environment.
"""
from __future__ import annotations

import json
from typing import Any

EXE_MARKER = b"MZ\x00LAB-VERSIONINFO\x00"
MSI_FORMAT = "lab-msi/1"

MESSENGER51_CODE = "{83C292B7-38A5-440B-A731-07070E81A64F}"
MESSENGER51_UPGRADE = "{2A5C1BF9-A8B6-4B4A-9A48-5E8C5E2B7D0B}"


def make_exe(file_version: str, *, product_name: str = "", description: str = "",
             company: str = "Microsoft Corporation", product_version: str | None = None) -> bytes:
    """The bytes of a lab executable carrying VS_VERSIONINFO-like strings."""
    info = {"FileVersion": file_version, "ProductVersion": product_version or file_version,
            "ProductName": product_name, "FileDescription": description, "CompanyName": company}
    return EXE_MARKER + json.dumps(info, ensure_ascii=False).encode("utf-8")


def read_version_info(data: bytes) -> dict[str, str] | None:
    """The version strings of a lab executable, or None for any other file."""
    if not data.startswith(EXE_MARKER):
        return None
    try:
        info = json.loads(data[len(EXE_MARKER):].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def make_msi(product_name: str, product_version: str, product_code: str, *,
             upgrade_code: str = "", manufacturer: str = "Microsoft Corporation",
             files: list[dict[str, str]] | None = None, broken: bool = False,
             reboot_required: bool = False) -> bytes:
    """The bytes of a lab MSI package (see the module docstring)."""
    doc = {"format": MSI_FORMAT, "ProductName": product_name, "ProductVersion": product_version,
           "ProductCode": product_code, "UpgradeCode": upgrade_code, "Manufacturer": manufacturer,
           "files": files or [], "broken": broken, "reboot_required": reboot_required}
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")


def messenger51_msi(*, broken: bool = False, reboot_required: bool = False) -> bytes:
    """The Windows Messenger 5.1 (5.1.0715, KB899283's build) lab package."""
    return make_msi("Windows Messenger 5.1", "5.1.0715", MESSENGER51_CODE,
                    upgrade_code=MESSENGER51_UPGRADE,
                    files=[{"path": "[ProgramFilesFolder]Messenger\\msmsgs.exe", "FileVersion": "5.1.0715",
                            "FileDescription": "Windows Messenger", "ProductName": "Windows Messenger"}],
                    broken=broken, reboot_required=reboot_required)


def read_msi(data: bytes) -> dict[str, Any] | None:
    """The package's properties, or None if the bytes are not a lab MSI (msiexec 1620)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MSI_FORMAT:
        return None
    for k in ("ProductName", "ProductVersion", "ProductCode"):
        if not isinstance(doc.get(k), str):
            return None
    return doc
