"""`runner inventory from-ldif` on exports that are cut, swapped or carry a bad value: exit 4 at the LDIF's line.

A whole ldifde export ends every record with a blank line; a file cut anywhere but exactly at a
record's end is refused at its last line, a users record without msExchIMAddress (which the export's
filter guarantees) is refused at its line, the two exports given the wrong way round are refused
naming the file, and a value the inventory schema refuses is reported at its line in the LDIF.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import run
from runner.errors import InputError
from runner.inventory import directory, ldif
from runner.inventory.directory import Directory, guid_to_bytes, sid_to_bytes
from runner.windows.ldif import render_entries


def _users(n: int) -> bytes:
    entries = []
    for i in range(n):
        entries.append((f"CN=User {i},CN=Users,DC=contoso,DC=com", [
            ("objectGUID", guid_to_bytes(f"{{01234567-0123-4567-89AB-{i:012X}}}")),
            ("objectSid", sid_to_bytes(f"S-1-5-21-1004336348-1177238915-682003330-{1100 + i}")),
            ("sAMAccountName", f"user{i}"), ("displayName", f"User {i}"),
            ("msExchIMAddress", f"user{i}@im.contoso.com"),
            ("msExchIMVirtualServer", "CN=Default Instant Messaging Virtual Server,CN=RVP,CN=Protocols,"
                                      "CN=EXIM01,CN=Servers,DC=contoso,DC=com")]))
    return render_entries(entries)


def _computers() -> bytes:
    return render_entries([(f"CN=PC{i:04},CN=Computers,DC=contoso,DC=com",
                            [("dNSHostName", f"pc{i:04}.contoso.com"), ("operatingSystem", "Windows XP Professional")])
                           for i in range(3)])


def _read_users(data: bytes) -> Directory:
    found = Directory()
    directory.read_users(ldif.parse(data, "t.ldf").records, "t.ldf", found)
    return found


def test_a_whole_export_is_read() -> None:
    assert len(_read_users(_users(24)).users) == 24


def test_every_cut_but_at_a_record_end_is_refused_at_the_last_line() -> None:
    data = _users(3)
    ends = {i + 4 for i in range(len(data)) if data[i:i + 4] == b"\r\n\r\n"}  # a whole record: undetectable
    for cut in range(1, len(data)):
        if cut in ends:
            assert len(_read_users(data[:cut]).users) == data[:cut].count(b"msExchIMAddress")
            continue
        with pytest.raises(InputError) as exc:
            _read_users(data[:cut])
        text = data[:cut].decode()
        assert exc.value.file == "t.ldf", cut
        assert any(w in exc.value.message for w in ("cut", "not valid base64", "no user record")), (cut, exc.value.message)
        last = text.count("\n") + (0 if text.endswith("\n") else 1)
        assert exc.value.line is not None and exc.value.line <= last, cut


def test_head_c_of_the_users_export_is_exit_4_at_its_last_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "t.ldf"
    cut.write_bytes(_users(24)[:5000])
    out = tmp_path / "out.yml"
    assert run(["inventory", "from-ldif", str(cut), "-o", str(out)]) == 4
    err = capsys.readouterr().err
    lines = cut.read_bytes().count(b"\n") + 1
    assert f"{cut}:{lines}: the file ends inside a line" in err and "looks cut" in err
    assert not out.exists()


def test_a_record_without_its_im_address_is_refused_at_its_line() -> None:
    data = _users(3).replace(b"msExchIMAddress: user1@im.contoso.com\r\n", b"")
    with pytest.raises(InputError, match="has no msExchIMAddress.*msExchIMAddress=\\*.*looks cut") as exc:
        _read_users(data)
    assert exc.value.line == ldif.parse(data, "t.ldf").records[1].line


def test_a_duplicate_im_address_is_refused_at_its_line() -> None:
    data = _users(2).replace(b"user1@im", b"user0@im")
    with pytest.raises(InputError, match="msExchIMAddress of") as exc:
        _read_users(data)
    assert exc.value.line == ldif.parse(data, "t.ldf").records[1].line_of("msExchIMAddress")


def test_the_exports_swapped_are_errors_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users, computers, out = tmp_path / "users.ldf", tmp_path / "computers.ldf", tmp_path / "out.yml"
    users.write_bytes(_users(2))
    computers.write_bytes(_computers())
    assert run(["inventory", "from-ldif", str(computers), "--computers", str(users), "-o", str(out)]) == 4
    err = capsys.readouterr().err
    assert f"{computers}:2: " in err and "is the computers export" in err and "--computers" in err
    assert run(["inventory", "from-ldif", str(users), "--computers", str(users), "-o", str(out)]) == 4
    err = capsys.readouterr().err
    assert f"{users}:2: is the users export" in err
    empty = tmp_path / "empty.ldf"
    empty.write_bytes(b"\r\n")
    assert run(["inventory", "from-ldif", str(empty), "-o", str(out)]) == 4
    assert "holds no user record" in capsys.readouterr().err
    assert not out.exists()
    assert run(["inventory", "from-ldif", str(users), "--computers", str(computers), "-o", str(out)]) == 0


@pytest.mark.parametrize("attr, bad, says", [
    ("msExchIMAddress", "ahall", "'im_address' must be an address"),
    ("msExchIMAddress", "a b@im.contoso.com", "'im_address' must be an address"),
])
def test_a_bad_value_is_reported_at_its_ldif_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   attr: str, bad: str, says: str) -> None:
    data = _users(3).replace(b"msExchIMAddress: user2@im.contoso.com", f"{attr}: {bad}".encode())
    src = tmp_path / "t.ldf"
    src.write_bytes(data)
    out = tmp_path / "t7.yml"
    assert run(["inventory", "from-ldif", str(src), "-o", str(out)]) == 4
    err = capsys.readouterr().err
    line = ldif.parse(data, str(src)).records[2].line_of(attr)
    assert f"{src}:{line}: {says}" in err and "user 'user2'" in err and f"the directory's {attr}" in err
    assert "t7.yml" not in err and not out.exists()


def test_a_bad_computer_value_is_reported_at_its_ldif_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users, computers = tmp_path / "users.ldf", tmp_path / "computers.ldf"
    users.write_bytes(_users(1))
    # a dNSHostName that makes no host name
    data = _computers().replace(b"dNSHostName: pc0001.contoso.com", b"dNSHostName: pc0001 contoso")
    computers.write_bytes(data)
    rc = run(["inventory", "from-ldif", str(users), "--computers", str(computers), "-o", str(tmp_path / "o.yml")])
    err = capsys.readouterr().err
    assert rc == 4, err
    assert f"{computers}:{ldif.parse(data, 'c').records[1].line_of('dNSHostName')}:" in err
