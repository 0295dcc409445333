"""`runner inventory from-ldif`: ldifde exports (every encoding case) to an inventory that validates."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.cli import run
from runner.errors import InputError
from runner.inventory import directory, ldif

# What `ldifde -f users.ldf -r "(msExchIMAddress=*)" -l ...` writes, by hand: a leading blank line,
# CRLF, `changetype: add` records, binary objectGUID/objectSid in base64 (the SID folded over two
# lines), a non-ASCII name as `displayName::` and `dn::`, a comment (itself folded), an empty value,
# and a `changetype: modify` record that is not an entry.
USERS = (
    "\r\n"
    "# exported from DC01\r\n"
    " (continued comment)\r\n"
    "dn: CN=Alice Smith,CN=Users,DC=contoso,DC=com\r\n"
    "changetype: add\r\n"
    "objectGUID:: Z0UjAauJ780BI0VniavN7w==\r\n"
    "objectSid:: AQUAAAAAAAUVAAAA3PTcO4M9K0aCi6\r\n"
    " YoUAQAAA==\r\n"
    "sAMAccountName: alice\r\n"
    "displayName: Alice Smith\r\n"
    "mail: alice@contoso.com\r\n"
    "msExchIMAddress: alice@im.contoso.com\r\n"
    "msExchIMVirtualServer: CN=Default Instant Messaging Virtual Server,CN=RVP,CN\r\n"
    " =Protocols,CN=EXIM01,CN=Servers,DC=contoso,DC=com\r\n"
    "msExchIMACL:\r\n"
    "\r\n"
    "dn:: Q049Wm/DqyDDhW5nc3Ryw7ZtLENOPVVzZXJzLERDPWNvbnRvc28sREM9Y29t\r\n"
    "changetype: add\r\n"
    "objectGUID:: ABEiM0RVZneImaq7zN3u/w==\r\n"
    "objectSid:: AQUAAAAAAAUVAAAA3PTcO4M9K0aCi6YoUQQAAA==\r\n"
    "sAMAccountName: zoe\r\n"
    "displayName:: Wm/DqyDDhW5nc3Ryw7Zt\r\n"
    "msExchIMAddress: zoe@im.contoso.com\r\n"
    "\r\n"
    "dn: CN=Bob,CN=Users,DC=contoso,DC=com\r\n"
    "changetype: modify\r\n"
    "delete: msExchIMAddress\r\n"
    "-\r\n"
    "\r\n"
)

COMPUTERS = (
    "\r\n"
    "dn: CN=PC0001,CN=Computers,DC=contoso,DC=com\r\n"
    "changetype: add\r\n"
    "dNSHostName: pc0001.contoso.com\r\n"
    "operatingSystem: Windows XP Professional\r\n"
    "operatingSystemVersion: 5.1 (2600)\r\n"
    "operatingSystemServicePack: Service Pack 1\r\n"
    "\r\n"
    "dn: CN=PC0002,CN=Computers,DC=contoso,DC=com\r\n"
    "changetype: add\r\n"
    "dNSHostName: PC0002.contoso.com\r\n"
    "operatingSystem: Windows 2000 Professional\r\n"
    "\r\n"
    "dn: CN=DC01,OU=Domain Controllers,DC=contoso,DC=com\r\n"
    "changetype: add\r\n"
    "dNSHostName: dc01.contoso.com\r\n"
    "operatingSystem: Windows 2000 Server\r\n"
    "\r\n"
)


def test_guid_is_decoded_in_microsoft_byte_order() -> None:
    raw = bytes.fromhex("67452301ab89efcd0123456789abcdef")
    assert directory.guid_from_bytes(raw) == "{01234567-89AB-CDEF-0123-456789ABCDEF}"
    assert directory.guid_to_bytes("{01234567-89AB-CDEF-0123-456789ABCDEF}") == raw


def test_sid_is_decoded_from_its_binary_form() -> None:
    raw = bytes.fromhex("010500000000000515000000dcf4dc3b833d2b46828ba62850040000")
    assert directory.sid_from_bytes(raw) == "S-1-5-21-1004336348-1177238915-682003330-1104"
    assert directory.sid_to_bytes("S-1-5-21-1004336348-1177238915-682003330-1104") == raw
    with pytest.raises(ValueError, match="sub-authorities"):
        directory.sid_from_bytes(raw[:-1])


def test_every_encoding_case_of_an_ldifde_export(tmp_path: Path) -> None:
    (tmp_path / "users.ldf").write_bytes(USERS.encode("ascii"))
    doc = ldif.read(str(tmp_path / "users.ldf"))
    assert doc.skipped == 1  # the modify record
    found = directory.Directory()
    directory.read_users(doc.records, "users.ldf", found)
    alice, zoe = found.users["alice"], found.users["zoe"]
    assert alice == {"im_address": "alice@im.contoso.com", "display_name": "Alice Smith",
                     "sid": "S-1-5-21-1004336348-1177238915-682003330-1104",
                     "ad_guid": "{01234567-89AB-CDEF-0123-456789ABCDEF}", "vars": {"email": "alice@contoso.com"}}
    assert zoe["display_name"] == "Zoë Ångström"
    assert zoe["ad_guid"] == "{33221100-5544-7766-8899-AABBCCDDEEFF}"
    assert doc.records[1].dn == "CN=Zoë Ångström,CN=Users,DC=contoso,DC=com"
    assert doc.records[0].text("msExchIMVirtualServer").startswith("CN=Default Instant Messaging Virtual Server,CN=RVP,CN=Protocols")
    assert doc.records[0].raw("msExchIMACL") == [""]


def test_unicode_export_of_ldifde_u_is_read(tmp_path: Path) -> None:
    (tmp_path / "u.ldf").write_bytes(b"\xff\xfe" + USERS.encode("utf-16-le"))
    assert [r.dn for r in ldif.read(str(tmp_path / "u.ldf")).records][0] == "CN=Alice Smith,CN=Users,DC=contoso,DC=com"


@pytest.mark.parametrize("text, line, message", [
    ("dn: CN=a,DC=x\nobjectGUID:: not*base64\n", 2, "not valid base64"),
    ("\n\ncn: a\n", 3, "must start with 'dn:'"),
    ("dn: CN=a,DC=x\nthis is no attribute line\n", 2, "not an LDIF line"),
    ("\n continued\n", 2, "continuation line"),
    ("dn: CN=a,DC=x\nchangetype: rename\n", 2, "unknown changetype"),
    ("dn: CN=a,DC=x\nphoto:< file:///etc/passwd\n", 2, "URL"),
    ("dn: CN=a,DC=x\ncn: a\ndn: CN=b,DC=x\n", 3, "second 'dn:'"),
    ("version: 2\n\ndn: CN=a,DC=x\n", 1, "version"),
    (b"dn: CN=a,DC=x\ncn: \xe9t\xe9\n", 2, "not UTF-8"),
])
def test_a_malformed_file_is_reported_at_its_line(tmp_path: Path, text: str | bytes, line: int, message: str) -> None:
    with pytest.raises(InputError, match=message) as exc:
        # each ends with the blank line of a whole export: the fault is the one named, not a cut file
        ldif.parse((text if isinstance(text, bytes) else text.encode()) + b"\n", "bad.ldf")
    assert (exc.value.file, exc.value.line) == ("bad.ldf", line)


def test_a_bad_guid_length_is_an_error_at_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ldf"
    bad.write_text("dn: CN=a,DC=x\nsAMAccountName: a\nmsExchIMAddress: a@im.contoso.com\nobjectGUID:: AAEC\n\n")
    assert run(["inventory", "from-ldif", str(bad), "-o", str(tmp_path / "out.yml")]) == 4
    err = capsys.readouterr().err
    assert f"{bad}:4: objectGUID" in err and "16 bytes" in err and "Traceback" not in err
    assert not (tmp_path / "out.yml").exists()


def _base(tmp_path: Path) -> Path:
    base = tmp_path / "base.yml"
    base.write_text(yaml.safe_dump({
        "all": {"vars": {"lcs_home_server_dn": "CN=LC Services,CN=Microsoft,CN=lcs01,DC=contoso,DC=com",
                         "sip_mapping": {"domains": {"im.contoso.com": "contoso.com"}, "template": "sip:{local}@{domain}"}},
                "children": {"clients": {"hosts": {"pc0002": {"address": "10.0.0.2"}}},
                             "exchange_im_servers": {"hosts": {"exim01": None}},
                             "lcs_servers": {"hosts": {"lcs01": None}}}},
        "users": {"alice": {"im_address": "old@im.contoso.com", "wave": "night2", "clients": ["pc0002"]},
                  "gone": {"im_address": "gone@im.contoso.com"}}}))
    return base


def test_from_ldif_writes_an_inventory_that_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "users.ldf").write_bytes(USERS.encode())
    (tmp_path / "computers.ldf").write_bytes(COMPUTERS.encode())
    out = tmp_path / "inv" / "contoso.yml"
    rc = run(["inventory", "from-ldif", str(tmp_path / "users.ldf"), "--computers", str(tmp_path / "computers.ldf"),
              "--base", str(_base(tmp_path)), "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=")
    doc = yaml.safe_load(text)
    users = doc["users"]
    assert set(users) == {"alice", "zoe"}                       # the base's 'gone' is not in AD
    assert "gone" in cap.err
    assert users["alice"]["wave"] == "night2" and users["alice"]["clients"] == ["pc0002"]   # the base's plan
    assert users["alice"]["im_address"] == "alice@im.contoso.com"                          # the directory's identity
    assert users["zoe"]["wave"] == "wave1" and users["zoe"]["display_name"] == "Zoë Ångström"
    clients = doc["all"]["children"]["clients"]["hosts"]
    assert clients["pc0002"] == {"address": "10.0.0.2"}         # the base's entry wins
    assert clients["pc0001"]["address"] == "pc0001.contoso.com"
    assert clients["pc0001"]["vars"]["ad_operating_system"] == "Windows XP Professional"
    assert "dc01" not in clients and "dc01" in cap.err         # a server is not made a client
    assert doc["all"]["children"]["lcs_servers"] == {"hosts": {"lcs01": None}}
    assert run(["validate", "playbooks/gradual.yml", "-i", str(out)]) == 0


def test_a_failed_run_leaves_the_old_output_whole(tmp_path: Path) -> None:
    out = tmp_path / "out.yml"
    out.write_text("# the previous inventory\n")
    bad = tmp_path / "bad.ldf"
    bad.write_text("dn: CN=a,DC=x\nsAMAccountName: a\nmsExchIMAddress: a@im.contoso.com\n")
    (tmp_path / "users.ldf").write_bytes(USERS.encode())
    missing_client_base = tmp_path / "b.yml"
    missing_client_base.write_text("all: {children: {clients: {hosts: {pc9: null}}}}\nusers:\n  alice: {im_address: a@b.cd, clients: [pc9]}\n")
    # the base's pc9 client is kept, so it validates; a base that is not an inventory is refused
    assert run(["inventory", "from-ldif", str(tmp_path / "users.ldf"), "--base", str(bad), "-o", str(out)]) == 4
    assert out.read_text() == "# the previous inventory\n"
    assert run(["inventory", "from-ldif", str(tmp_path / "users.ldf"), "--base", str(missing_client_base),
                "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["users"]["alice"]["clients"] == ["pc9"]
    assert list(tmp_path.glob(".out.yml*")) == []
