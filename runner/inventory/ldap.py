"""The live directory query of ``runner inventory from-ldap``: a paged LDAP search with ldap3.

The results become the same :class:`runner.inventory.ldif.Record` objects
the LDIF reader makes (binary values as bytes), so both commands write the
same inventory. The bind password comes from an environment variable or a
file, never from the command line (where ``ps`` and shell history show it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from runner.errors import OptionsError, RunnerError
from runner.inventory.ldif import Record

PAGE_SIZE = 500  # below Active Directory's MaxPageSize (1,000)


class LdapQueryError(RunnerError):
    """The directory could not be reached, refused the bind, or failed the search."""


@dataclass(frozen=True)
class LdapTarget:
    """Where to search and as whom."""

    url: str
    base: str
    bind_user: str | None = None
    password: str | None = None
    timeout: float = 10.0


def read_password(env: str | None, file: str | None) -> str | None:
    """The bind password from the environment variable named ``env`` or the first line of ``file``."""
    if env and file:
        raise OptionsError("give the password by --password-env or --password-file, not both")
    if env:
        value = os.environ.get(env)
        if value is None:
            raise OptionsError(f"--password-env {env}: the environment variable {env} is not set")
        return value
    if file:
        try:
            with open(file, encoding="utf-8") as fh:
                return fh.readline().rstrip("\r\n")
        except OSError as e:
            raise OptionsError(f"--password-file {file}: {e.strerror}") from None
    return None


def _server(url: str, timeout: float):  # type: ignore[no-untyped-def]
    import ldap3

    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise OptionsError(f"{url!r} is not an LDAP URL (ldap://HOST[:PORT] or ldaps://HOST[:PORT])")
    try:
        port = parts.port
    except ValueError:
        raise OptionsError(f"{url!r}: the port is not a number from 1 to 65535") from None
    return ldap3.Server(parts.hostname, port=port, use_ssl=parts.scheme == "ldaps", get_info=ldap3.NONE,
                        connect_timeout=timeout)


def search(target: LdapTarget, ldap_filter: str, attributes: Sequence[str]) -> Iterator[Record]:
    """Every entry under ``target.base`` matching ``ldap_filter``, page by page."""
    import ldap3
    from ldap3.core import exceptions as lx

    server = _server(target.url, target.timeout)
    auth = ldap3.SIMPLE if target.bind_user else ldap3.ANONYMOUS
    try:
        conn = ldap3.Connection(server, user=target.bind_user, password=target.password, authentication=auth,
                                receive_timeout=max(1, round(target.timeout)),  # ldap3 packs it as whole seconds
                                raise_exceptions=True, read_only=True)
        conn.bind()
    except lx.LDAPInvalidCredentialsResult:
        raise LdapQueryError(f"{target.url}: the directory refused the bind as {target.bind_user!r} "
                             f"(wrong user or password)") from None
    except lx.LDAPException as e:
        raise LdapQueryError(f"{target.url}: cannot connect and bind: {e}") from None
    try:
        cookie: bytes | None = None
        while True:
            try:
                conn.search(target.base, ldap_filter, search_scope=ldap3.SUBTREE, attributes=list(attributes),
                            paged_size=PAGE_SIZE, paged_cookie=cookie)
            except lx.LDAPNoSuchObjectResult:
                raise LdapQueryError(f"{target.url}: the search base {target.base!r} does not exist") from None
            except lx.LDAPException as e:
                raise LdapQueryError(f"{target.url}: the search {ldap_filter} under {target.base!r} failed: {e}") \
                    from None
            for i, item in enumerate(conn.response or []):
                if item.get("type") != "searchResEntry":
                    continue  # referrals: the export is of one domain
                rec = Record(item["dn"], i + 1)
                for name, values in (item.get("raw_attributes") or {}).items():
                    key = name.split(";", 1)[0].lower()
                    rec.values[key] = [_value(key, v) for v in values]
                yield rec
            controls = (conn.result or {}).get("controls") or {}
            cookie = controls.get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                break
    finally:
        conn.unbind()


def _value(attr: str, raw: bytes) -> str | bytes:
    """Binary attributes stay bytes (as ``attr::`` in LDIF); text is decoded."""
    if attr in ("objectguid", "objectsid"):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
