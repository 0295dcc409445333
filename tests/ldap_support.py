"""A throwaway OpenLDAP ``slapd`` for the ``ldap`` tests: 127.0.0.1, a free port, config and data in a temp dir.

The schema below gives slapd the Active Directory and Exchange attributes
``runner inventory from-ldap`` reads, with OIDs under IANA's example
enterprise arc 1.3.6.1.4.1.32473 (RFC 5612): objectGUID and objectSid are
octet strings (binary, as in AD), the rest directory strings. Data is loaded
with ``slapadd`` before the server starts; ``sizelimit`` is set below the
number of users so that only a paged search can read them all.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
BASE = "dc=contoso,dc=com"
ROOT_DN = f"cn=admin,{BASE}"
BIND_DN = f"cn=migrator,{BASE}"  # an ordinary account: the size limit holds for it (not for the rootdn)
SIZE_LIMIT = 3

_STRING = "EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15"
_OCTETS = "EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE"
_ATTRS = [("objectGUID", _OCTETS), ("objectSid", _OCTETS), ("sAMAccountName", _STRING + " SINGLE-VALUE"),
          ("msExchIMAddress", _STRING + " SINGLE-VALUE"), ("msExchIMPhysicalURL", _STRING),
          ("msExchIMMetaPhysicalURL", _STRING), ("msExchIMVirtualServer", _STRING), ("msExchIMACL", _STRING),
          ("dNSHostName", _STRING + " SINGLE-VALUE"), ("operatingSystem", _STRING + " SINGLE-VALUE"),
          ("operatingSystemVersion", _STRING + " SINGLE-VALUE"),
          ("operatingSystemServicePack", _STRING + " SINGLE-VALUE")]
ARC = "1.3.6.1.4.1.32473.12"


def schema_text() -> str:
    """The slapd schema file of the attributes and classes the tests use."""
    out = [f"attributetype ( {ARC}.1.{i} NAME '{name}' {spec} )" for i, (name, spec) in enumerate(_ATTRS, 1)]
    user = " $ ".join(n for n, _ in _ATTRS[:8])
    out.append(f"objectclass ( {ARC}.2.1 NAME 'adUser' SUP top AUXILIARY MAY ( {user} ) )")
    out.append(f"objectclass ( {ARC}.2.2 NAME 'computer' SUP top STRUCTURAL MUST cn "
               f"MAY ( {' $ '.join(n for n, _ in _ATTRS)} ) )")
    return "\n".join(out) + "\n"


def slapd_available() -> bool:
    return os.path.exists(SLAPD) and os.path.exists(SLAPADD) and (SCHEMA_DIR / "core.schema").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slapd:
    """A running slapd: its URL, the ordinary account's DN and password, and the process."""

    url: str
    bind_dn: str
    password: str
    process: subprocess.Popen
    directory: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_slapd(tmp: Path, data_ldif: bytes, password: str = "s3cret!") -> Slapd:
    """Configure a temp-dir slapd, load ``data_ldif`` (entries below BASE) with slapadd, start it."""
    if not slapd_available():
        pytest.skip("Debian's slapd is not installed (apt-get install slapd ldap-utils)")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "db").mkdir()
    (tmp / "ad.schema").write_text(schema_text())
    conf = tmp / "slapd.conf"
    conf.write_text("\n".join([
        *(f"include {SCHEMA_DIR / n}" for n in ("core.schema", "cosine.schema", "inetorgperson.schema")),
        f"include {tmp / 'ad.schema'}",
        f"pidfile {tmp / 'slapd.pid'}",
        "modulepath /usr/lib/ldap", "moduleload back_mdb",
        f"sizelimit size.soft={SIZE_LIMIT} size.hard={SIZE_LIMIT} size.prtotal=unlimited",
        "database mdb", f'suffix "{BASE}"', f'rootdn "{ROOT_DN}"', f"rootpw {password}",
        f"directory {tmp / 'db'}", "maxsize 10485760",
        "access to attrs=userPassword by anonymous auth by * none",
        "access to * by users read by * none", ""]))
    top = (f"dn: {BASE}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\ndc: contoso\n"
           f"o: Contoso\n\n"
           f"dn: {BIND_DN}\nobjectClass: person\ncn: migrator\nsn: migrator\nuserPassword: {password}\n\n").encode()
    (tmp / "data.ldif").write_bytes(top + data_ldif)
    subprocess.run([SLAPADD, "-f", str(conf), "-l", str(tmp / "data.ldif")], check=True, capture_output=True)
    port = _free_port()
    url = f"ldap://127.0.0.1:{port}"
    proc = subprocess.Popen([SLAPD, "-d", "0", "-f", str(conf), "-h", url], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("slapd did not listen within 15 s")
    return Slapd(url, BIND_DN, password, proc, tmp)
