"""The runner's parsers on output as Windows XP / 2003 (and 2000) print it, hand-written
(docs/windows-versions.md).

reg.exe 3.0 (Microsoft's PowerShell docs, "Working with registry entries"): a blank
line, ``! REG.EXE VERSION 3.0``, a blank line, the key, then ``    NAME<TAB>TYPE<TAB>DATA``
lines; ``<NO NAME>`` is the default value. wmic through a pipe ends its lines with
``\\r\\r\\n``. Each sample is parsed and compared with the same data in the Vista/7
layout, which must give the same keys and values.
"""
from __future__ import annotations

from runner.steps import _clients as cl
from runner.windows import reg, wmic

KEY = r"HKEY_USERS\S-1-5-21-1-2-3-1104\Software\Microsoft\Exchange\Messenger\Profiles\http://im.contoso.com/instmsg/aliases/alice\Contacts"

XP = ("\r\n! REG.EXE VERSION 3.0\r\n\r\n"
      f"{KEY}\r\n"
      "    <NO NAME>\tREG_SZ\t\r\n"
      "    bob@im.contoso.com\tREG_SZ\tBob \"B\" & Co | 100% ^ <x>\r\n"
      "    carol@im.contoso.com\tREG_SZ\tCarol  two  spaces \r\n"
      "    dave@im.contoso.com\tREG_SZ\tDave\twith\ttabs\r\n"
      "    zoe@im.contoso.com\tREG_SZ\tZoë 李伟 😀 \u2028 line sep\r\n"
      "    Groups list\tREG_MULTI_SZ\tColleagues\\0Friends & Family\\0\\0\r\n"
      "    Blob\tREG_BINARY\t00FF10AB\r\n"
      "    Count\tREG_DWORD\t0x2a\r\n"
      "    Path\tREG_EXPAND_SZ\t%SystemRoot%\\Temp\r\n"
      "\r\n"
      f"{KEY}\\Groups\r\n"
      "\r\n")

VISTA = ("\r\n"
         f"{KEY}\r\n"
         "    (Default)    REG_SZ    \r\n"
         "    bob@im.contoso.com    REG_SZ    Bob \"B\" & Co | 100% ^ <x>\r\n"
         "    carol@im.contoso.com    REG_SZ    Carol  two  spaces \r\n"
         "    dave@im.contoso.com    REG_SZ    Dave\twith\ttabs\r\n"
         "    zoe@im.contoso.com    REG_SZ    Zoë 李伟 😀 \u2028 line sep\r\n"
         "    Groups list    REG_MULTI_SZ    Colleagues\\0Friends & Family\r\n"
         "    Blob    REG_BINARY    00FF10AB\r\n"
         "    Count    REG_DWORD    0x2a\r\n"
         "    Path    REG_EXPAND_SZ    %SystemRoot%\\Temp\r\n"
         "\r\n"
         f"{KEY}\\Groups\r\n"
         "\r\n")

EXPECTED = [("", ""),
            ("bob@im.contoso.com", 'Bob "B" & Co | 100% ^ <x>'),
            ("carol@im.contoso.com", "Carol  two  spaces "),
            ("dave@im.contoso.com", "Dave\twith\ttabs"),
            ("zoe@im.contoso.com", "Zoë 李伟 😀 \u2028 line sep"),
            ("Groups list", ["Colleagues", "Friends & Family"]),
            ("Blob", b"\x00\xff\x10\xab"),
            ("Count", 42),
            ("Path", "%SystemRoot%\\Temp")]


def _values(keys, path):
    return [(v.name, v.data) for v in reg.find_key(keys, path).values]


def test_xp_layout_parses_every_type_and_keeps_data_as_it_is() -> None:
    keys = reg.parse_query(XP)
    assert [k.path for k in keys] == [KEY, KEY + "\\Groups"]
    assert _values(keys, KEY) == EXPECTED
    assert reg.subkeys(keys, KEY) == ["Groups"]


def test_both_layouts_give_the_same_keys_and_values() -> None:
    xp, vista = reg.parse_query(XP), reg.parse_query(VISTA)
    assert [(k.path, [(v.name, v.type, v.data) for v in k.values]) for k in xp] == \
           [(k.path, [(v.name, v.type, v.data) for v in k.values]) for k in vista]


def test_the_microsoft_docs_sample_parses() -> None:
    # "Working with registry entries": reg query ... /v DevicePath on reg.exe 3.0
    out = ("\r\n! REG.EXE VERSION 3.0\r\n\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\r\n"
           "    DevicePath\tREG_EXPAND_SZ\t%SystemRoot%\\inf\r\n\r\n")
    key = reg.find_key(reg.parse_query(out), r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion")
    assert reg.value_of(key, "devicepath") == "%SystemRoot%\\inf"


def test_windows_2000_support_tools_header_and_recursive_blocks() -> None:
    out = ("\r\n! REG.EXE VERSION 2.0\r\n\r\n"
           "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\{A}\r\n"
           "    DisplayName\tREG_SZ\tMSN Messenger 4.7\r\n    DisplayVersion\tREG_SZ\t4.7.0105\r\n\r\n"
           "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\{B}\r\n"
           "    DisplayName\tREG_SZ\tWindows Messenger 5.1\r\n    DisplayVersion\tREG_SZ\t5.1.0715\r\n\r\n")
    found = cl.messenger_from_uninstall(reg.parse_query(out))
    assert found == {"installed": True, "product": "Windows Messenger 5.1", "version": "5.1.0715",
                     "product_code": "{B}", "source": "uninstall"}


def test_an_empty_multi_string_and_a_lone_closing_pair() -> None:
    out = ("\r\n! REG.EXE VERSION 3.0\r\n\r\nHKEY_LOCAL_MACHINE\\X\r\n"
           "    Empty\tREG_MULTI_SZ\t\r\n    One\tREG_MULTI_SZ\tonly\\0\\0\r\n\r\n")
    assert _values(reg.parse_query(out), r"HKLM\X") == [("Empty", []), ("One", ["only"])]


def test_piped_wmic_output_with_cr_cr_lf_parses() -> None:
    out = ("\r\r\n\r\r\nInstanceID={0A}\r\r\nEnabled=TRUE\r\r\nPrimaryURI=sip:a@contoso.com\r\r\n"
           "\r\r\n\r\r\nInstanceID={0B}\r\r\nEnabled=FALSE\r\r\nPrimaryURI=sip:b@contoso.com\r\r\n\r\r\n\r\r\n")
    recs = wmic.parse_list(out)
    assert recs == [{"InstanceID": "{0A}", "Enabled": "TRUE", "PrimaryURI": "sip:a@contoso.com"},
                    {"InstanceID": "{0B}", "Enabled": "FALSE", "PrimaryURI": "sip:b@contoso.com"}]
    assert [wmic.parse_bool(r["Enabled"]) for r in recs] == [True, False]
    assert cl.file_version("\r\r\n\r\r\nVersion=5.1.0715.0\r\r\n\r\r\n\r\r\n") == "5.1.0715.0"
    err = "ERROR:\r\r\nCode = 0x80041045\r\r\nDescription = Server is busy\r\r\nFacility = WMI\r\r\n"
    assert wmic.outcome(err, ok=False) == wmic.WmicOutcome(False, 0x80041045, "Server is busy")
