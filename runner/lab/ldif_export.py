"""``runner lab export-ldif``: the two files ``ldifde`` would export from the lab's domain.

``users.ldf`` is what ``ldifde -f users.ldf -r "(msExchIMAddress=*)" -l ...``
gives on a domain controller: the Exchange IM users of ``ad.db`` with the
attributes of :data:`runner.inventory.directory.USER_ATTRIBUTES`, objectGUID
and objectSid binary (base64), non-ASCII names base64 too, lines folded.
``computers.ldf`` is ``ldifde -f computers.ldf -r "(objectClass=computer)"
-l dNSHostName,operatingSystem,...``: one computer object per lab host
(``ad.db`` holds no computer objects; lab.json says each host's OS, and
a host without one is a server of the era: Windows 2000 Server for an Exchange
2000 server, Windows Server 2003 for LCS 2005).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.artifacts import atomic_write, check_output_path
from runner.inventory.directory import COMPUTER_ATTRIBUTES, USER_ATTRIBUTES, sid_to_bytes
from runner.lab import exchange
from runner.lab.store import LAB_FORMAT, Lab
from runner.lab.winver import ROLE_DEFAULT, for_host
from runner.windows.ldif import render_entries



def os_values(lab: Lab, name: str) -> tuple[str, str, str]:
    """(operatingSystem, operatingSystemVersion, operatingSystemServicePack) of a lab host as AD
    records them ("Windows 2000 Server", "5.0 (2195)", "Service Pack 4"): its lab.json ``os``
    (else its role's) and the version it runs (runner.lab.winver)."""
    cfg = lab.hosts_config[name]
    v = for_host(cfg, LAB_FORMAT)  # the version its os names (a lab/1 lab's hosts named theirs too)
    os_name = cfg.get("os") or ROLE_DEFAULT.get(str(cfg.get("role", "client")), ROLE_DEFAULT["client"])
    return str(os_name), f"{v.version} ({v.build.rsplit('.', 1)[-1]})", v.service_pack


def _dns_suffix(base_dn: str) -> str:
    return ".".join(p.split("=", 1)[1] for p in base_dn.split(",") if p.strip().upper().startswith("DC="))


def users_ldif(lab_dir: Path) -> bytes:
    """The Exchange IM users of the lab's AD as an ldifde export."""
    entries: list[tuple[str, list[tuple[str, Any]]]] = []
    with exchange.Directory(exchange.ad_path(lab_dir)) as d:
        for dn, attrs in exchange.im_users(d):
            low = {k.lower(): v for k, v in attrs.items()}
            values: list[tuple[str, Any]] = []
            for a in USER_ATTRIBUTES:
                for v in low.get(a.lower(), []):
                    if a == "objectSid" and isinstance(v, str):
                        v = sid_to_bytes(v)  # the lab keeps the text form; AD and ldifde have the binary one
                    values.append((a, v))
            entries.append((dn, values))
    return render_entries(entries)


def computers_ldif(lab_dir: Path) -> bytes:
    """One computer object per lab host, as an ldifde export of CN=Computers."""
    lab = Lab(lab_dir)
    base = json.loads((Path(lab_dir) / "manifest.json").read_text(encoding="utf-8")).get("ad_base", "DC=contoso,DC=com")
    suffix = _dns_suffix(base)
    entries: list[tuple[str, list[tuple[str, Any]]]] = []
    for name in lab.host_names():
        os_name, version, sp = os_values(lab, name)
        values = [("dNSHostName", f"{name}.{suffix}")]
        values += [(a, v) for a, v in zip(COMPUTER_ATTRIBUTES[1:], (os_name, version, sp)) if v]
        entries.append((f"CN={name.upper()},CN=Computers,{base}", values))
    return render_entries(entries)


def export_ldif(lab_dir: Path | str, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``users.ldf`` and ``computers.ldf`` into ``out_dir`` (each atomically); return their paths."""
    lab_dir, out = Path(lab_dir), Path(out_dir)
    users, computers = out / "users.ldf", out / "computers.ldf"
    for path in (users, computers):  # both checked before either is written
        check_output_path(path)
    atomic_write(users, users_ldif(lab_dir))
    atomic_write(computers, computers_ldif(lab_dir))
    return users, computers
