"""`runner inventory from-ldap` against a real OpenLDAP slapd with the AD attributes in its schema."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from runner.cli import run
from runner.inventory import directory, ldap as ldapq
from runner.windows.ldif import attr_line
from ldap_support import BASE, SIZE_LIMIT, Slapd, start_slapd

pytestmark = pytest.mark.ldap

USERS = 7  # more than the server's size limit: only a paged search reads them all


def _sid(i: int) -> str:
    return f"S-1-5-21-1004336348-1177238915-682003330-{1100 + i}"


def _guid(i: int) -> str:
    return "{" + str(uuid.UUID(int=0x0123456789ABCDEF0123456789AB0000 + i)).upper() + "}"


def _entry(dn: str, values: list[tuple[str, str | bytes]]) -> str:
    return "\n".join([attr_line("dn", dn), *(attr_line(a, v) for a, v in values)]) + "\n\n"


def _data() -> bytes:
    out = []
    for i in range(USERS):
        name = f"Zoë User{i}" if i == 0 else f"User {i}"
        out.append(_entry(f"cn={name},{BASE}", [
            ("objectClass", "inetOrgPerson"), ("objectClass", "adUser"), ("cn", name), ("sn", f"User{i}"),
            ("displayName", name), ("sAMAccountName", f"user{i}"), ("mail", f"user{i}@contoso.com"),
            ("msExchIMAddress", f"user{i}@im.contoso.com"),
            ("objectGUID", directory.guid_to_bytes(_guid(i))), ("objectSid", directory.sid_to_bytes(_sid(i)))]))
    out.append(_entry(f"cn=No IM,{BASE}", [("objectClass", "inetOrgPerson"), ("objectClass", "adUser"),
                                            ("cn", "No IM"), ("sn", "IM"), ("sAMAccountName", "noim")]))
    for name, os_name in (("pc0001", "Windows XP Professional"), ("exim01", "Windows 2000 Server")):
        out.append(_entry(f"cn={name.upper()},{BASE}", [("objectClass", "computer"), ("cn", name.upper()),
                                                         ("dNSHostName", f"{name}.contoso.com"),
                                                         ("operatingSystem", os_name)]))
    return "".join(out).encode("utf-8")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"), _data())
    try:
        yield server
    finally:
        server.stop()


def test_the_server_limits_an_unpaged_search(slapd: Slapd) -> None:
    import ldap3

    conn = ldap3.Connection(ldap3.Server(slapd.url), slapd.bind_dn, slapd.password, auto_bind=True)
    conn.search(BASE, directory.USER_FILTER, attributes=["sAMAccountName"])
    assert conn.result["description"] == "sizeLimitExceeded" and len(conn.entries) == SIZE_LIMIT
    conn.unbind()


def test_from_ldap_reads_every_user_page_by_page(slapd: Slapd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ldapq, "PAGE_SIZE", 2)
    monkeypatch.setenv("DC_PASSWORD", slapd.password)
    out = tmp_path / "ad.yml"
    rc = run(["inventory", "from-ldap", slapd.url, "--base", BASE, "--bind-user", slapd.bind_dn,
              "--password-env", "DC_PASSWORD", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert sorted(doc["users"]) == [f"user{i}" for i in range(USERS)]
    for i in range(USERS):
        u = doc["users"][f"user{i}"]
        assert (u["sid"], u["ad_guid"], u["im_address"]) == (_sid(i), _guid(i), f"user{i}@im.contoso.com")
    assert doc["users"]["user0"]["display_name"] == "Zoë User0"
    assert list(doc["all"]["children"]["clients"]["hosts"]) == ["pc0001"]   # exim01 runs a Server OS
    assert slapd.password not in out.read_text(encoding="utf-8")


def test_the_password_comes_from_a_file_and_a_wrong_one_is_a_clear_error(
        slapd: Slapd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = tmp_path / "pw"
    pw.write_text(slapd.password + "\n")
    out = tmp_path / "ad.yml"
    assert run(["inventory", "from-ldap", slapd.url, "--base", BASE, "--bind-user", slapd.bind_dn,
                "--password-file", str(pw), "--no-computers", "-o", str(out)]) == 0
    pw.write_text("wrong\n")
    capsys.readouterr()
    assert run(["inventory", "from-ldap", slapd.url, "--base", BASE, "--bind-user", slapd.bind_dn,
                "--password-file", str(pw), "-o", str(tmp_path / "x.yml")]) == 1
    err = capsys.readouterr().err
    assert "refused the bind" in err and "Traceback" not in err and not (tmp_path / "x.yml").exists()
    # there is no option that takes the password itself
    assert run(["inventory", "from-ldap", slapd.url, "--base", BASE, "--password", "x", "-o", str(out)]) == 5
    assert run(["inventory", "from-ldap", slapd.url, "--base", BASE, "--bind-user", slapd.bind_dn,
                "-o", str(out)]) == 5


def test_an_unreachable_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run(["inventory", "from-ldap", f"ldap://127.0.0.1:{port}", "--base", BASE, "--timeout", "2",
                "-o", str(tmp_path / "x.yml")]) == 1
    assert "cannot connect" in capsys.readouterr().err
