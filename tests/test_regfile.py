"""The .reg codec: regedit/reg.exe layout (Wine programs/reg/export.c; KB 310516)."""
from __future__ import annotations

import pytest

from runner.windows.regfile import RegFileError, RegKey, RegValue, parse_reg, render_reg

KEY = r"HKEY_USERS\S-1-5-21-1\Software\Microsoft\Exchange\Messenger\Profiles\http://im.contoso.com/instmsg/aliases/alice\Contacts"


def test_render_is_utf16le_with_bom_crlf_and_v5_header():
    data = render_reg([RegKey(KEY, [RegValue("bob@im.contoso.com", "REG_SZ", "Bob")])])
    assert data.startswith(b"\xff\xfe")
    text = data[2:].decode("utf-16-le")
    assert text.startswith("Windows Registry Editor Version 5.00\r\n\r\n[")
    assert f'[{KEY}]\r\n"bob@im.contoso.com"="Bob"\r\n\r\n' in text
    assert "\n" not in text.replace("\r\n", "")


def test_dword_and_hex_encodings_match_regedit():
    text = render_reg([RegKey(r"HKEY_LOCAL_MACHINE\X", [
        RegValue("d", "REG_DWORD", 42), RegValue("e", "REG_EXPAND_SZ", "%a%"),
        RegValue("m", "REG_MULTI_SZ", ["a", "b"]), RegValue("b", "REG_BINARY", b"\x01\xff"),
        RegValue("", "REG_SZ", "default")])])[2:].decode("utf-16-le")
    assert '"d"=dword:0000002a\r\n' in text
    assert '"e"=hex(2):25,00,61,00,25,00,00,00\r\n' in text
    assert '"m"=hex(7):61,00,00,00,62,00,00,00,00,00\r\n' in text
    assert '"b"=hex:01,ff\r\n' in text
    assert '@="default"\r\n' in text


def test_long_hex_lines_wrap_at_77_chars_with_backslash_and_two_spaces():
    text = render_reg([RegKey(r"HKEY_LOCAL_MACHINE\X", [RegValue("bin", "REG_BINARY", bytes(range(60)))])])
    lines = text[2:].decode("utf-16-le").split("\r\n")
    hexlines = [l for l in lines if "," in l]
    assert all(len(l) <= 80 for l in hexlines)
    assert hexlines[0].endswith(",\\") and hexlines[1].startswith("  ")


HOSTILE = ['Bob "The" O\'Brien & Co | 100% ^ <x> \\ end\\', "Émile 中文 😀", "x" * 3000, "", "trailing\\"]


@pytest.mark.parametrize("data", HOSTILE)
def test_round_trip_keeps_hostile_and_unicode_values(data):
    keys = [RegKey(KEY, [RegValue('name "q" \\ & %', "REG_SZ", data), RegValue("n", "REG_QWORD", 2 ** 40),
                         RegValue("none", "REG_NONE", b""), RegValue("multi", "REG_MULTI_SZ", [data, "z"])])]
    assert parse_reg(render_reg(keys)) == keys


def test_line_breaks_in_string_data_survive_as_hex1():
    keys = [RegKey(r"HKEY_LOCAL_MACHINE\X", [RegValue("v", "REG_SZ", "a\r\nb")])]
    assert "hex(1):" in render_reg(keys)[2:].decode("utf-16-le")
    assert parse_reg(render_reg(keys)) == keys


def test_deletions_parse():
    text = ("Windows Registry Editor Version 5.00\r\n\r\n[-HKEY_LOCAL_MACHINE\\A]\r\n\r\n"
            "[HKEY_LOCAL_MACHINE\\B]\r\n\"x\"=-\r\n")
    keys = parse_reg(b"\xff\xfe" + text.encode("utf-16-le"))
    assert keys[0].delete and keys[0].path == "HKEY_LOCAL_MACHINE\\A"
    assert keys[1].values[0].delete and keys[1].values[0].name == "x"


def test_regedit4_and_comments_are_accepted():
    keys = parse_reg(b"REGEDIT4\r\n\r\n; comment\r\n[HKEY_LOCAL_MACHINE\\A]\r\n\"x\"=dword:0000000A\r\n")
    assert keys == [RegKey("HKEY_LOCAL_MACHINE\\A", [RegValue("x", "REG_DWORD", 10)])]


@pytest.mark.parametrize("bad", [b"not a reg file", b"REGEDIT4\r\n\"x\"=\"y\"\r\n",
                                 b"REGEDIT4\r\n[HKEY_LOCAL_MACHINE\\A]\r\n\"x\"=bogus\r\n",
                                 b"REGEDIT4\r\n[HKEY_LOCAL_MACHINE\\A]\r\n\"x=\"y\"\r\n"])
def test_malformed_files_raise_regfileerror_with_line(bad):
    with pytest.raises(RegFileError):
        parse_reg(bad)
