"""Specification of runner.windows.reg: reg.exe builders and the ``reg query`` parser.

Samples follow the layout of real reg.exe output: Windows Server 2003 / Vista+
(four-space separators, "(Default)"; Microsoft "reg query" reference,
learn.microsoft.com/windows-server/administration/windows-commands/reg-query)
and Windows XP reg.exe 3.0 (``! REG.EXE VERSION 3.0`` banner, tab separators,
``<NO NAME>``), as DOMAIN.md describes.
"""
from __future__ import annotations

from runner.connections.base import CommandResult
from runner.windows import reg

PROFILELIST_SAMPLE = (
    "\r\n"
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList\r\n"
    "    ProfilesDirectory    REG_EXPAND_SZ    %SystemDrive%\\Documents and Settings\r\n"
    "\r\n"
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\S-1-5-21-1004336348-1177238915-682003330-1104\r\n"
    "    ProfileImagePath    REG_EXPAND_SZ    %SystemDrive%\\Documents and Settings\\alice\r\n"
    "    Sid    REG_BINARY    010500000000000515000000DC3CDD3B831B3446827BA72850040000\r\n"
    "    Flags    REG_DWORD    0x0\r\n"
    "    State    REG_DWORD    0x100\r\n"
    "    CentralProfile    REG_SZ    \r\n"
    "\r\n")

XP_SAMPLE = (
    "\r\n! REG.EXE VERSION 3.0\r\n\r\n"
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\{A85FD55B-891B-4314-97A5-EA96C0BD80B5}\r\n"
    "    <NO NAME>\tREG_SZ\tdefault data\r\n"
    "    DisplayName\tREG_SZ\tWindows Messenger\r\n"
    "    DisplayVersion\tREG_SZ\t4.7.3001\r\n"
    "    EstimatedSize\tREG_DWORD\t0x1f40\r\n\r\n")

HKU_SAMPLE = (
    "\r\n"
    "HKEY_USERS\\.DEFAULT\r\n"
    "HKEY_USERS\\S-1-5-19\r\n"
    "HKEY_USERS\\S-1-5-20\r\n"
    "HKEY_USERS\\S-1-5-21-1004336348-1177238915-682003330-1104\r\n"
    "HKEY_USERS\\S-1-5-21-1004336348-1177238915-682003330-1104_Classes\r\n"
    "HKEY_USERS\\S-1-5-18\r\n")


def test_query_builder_uses_short_root_and_quotes_spaces() -> None:
    cmd = reg.query("HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList", recursive=True)
    assert cmd.render() == 'reg query "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList" /s'
    assert reg.query("HKLM\\X", value="DisplayVersion").render() == "reg query HKLM\\X /v DisplayVersion"
    assert reg.query("HKLM\\X", value="").render() == "reg query HKLM\\X /ve"


def test_export_load_unload_builders() -> None:
    assert reg.export("HKU\\S-1\\Software\\A B", "C:\\Windows\\Temp\\x.reg").render() == \
        'reg export "HKU\\S-1\\Software\\A B" C:\\Windows\\Temp\\x.reg /y'
    assert reg.load("runner_alice", "C:\\Documents and Settings\\alice\\NTUSER.DAT").render() == \
        'reg load HKU\\runner_alice "C:\\Documents and Settings\\alice\\NTUSER.DAT"'
    assert reg.unload("runner_alice").render() == "reg unload HKU\\runner_alice"


def test_parse_query_reads_keys_values_and_types() -> None:
    keys = reg.parse_query(PROFILELIST_SAMPLE)
    assert [k.path.rsplit("\\", 1)[1] for k in keys] == ["ProfileList", "S-1-5-21-1004336348-1177238915-682003330-1104"]
    alice = keys[1]
    assert reg.value_of(alice, "ProfileImagePath") == "%SystemDrive%\\Documents and Settings\\alice"
    assert reg.value_of(alice, "flags") == 0
    assert reg.value_of(alice, "State") == 0x100
    assert reg.value_of(alice, "Sid") == bytes.fromhex("010500000000000515000000DC3CDD3B831B3446827BA72850040000")
    assert reg.value_of(alice, "CentralProfile") == ""
    assert [v.type for v in alice.values] == ["REG_EXPAND_SZ", "REG_BINARY", "REG_DWORD", "REG_DWORD", "REG_SZ"]


def test_parse_query_decodes_binary_as_hex_bytes() -> None:
    keys = reg.parse_query("\r\nHKEY_LOCAL_MACHINE\\K\r\n    Blob    REG_BINARY    00FF10AB\r\n\r\n")
    assert reg.value_of(keys[0], "Blob") == b"\x00\xff\x10\xab"


def test_parse_query_splits_multi_sz_on_backslash_zero() -> None:
    keys = reg.parse_query("\r\nHKEY_LOCAL_MACHINE\\K\r\n    Deps    REG_MULTI_SZ    RpcSs\\0LanmanServer\\0IISADMIN\r\n"
                           "    Empty    REG_MULTI_SZ    \r\n\r\n")
    assert reg.value_of(keys[0], "Deps") == ["RpcSs", "LanmanServer", "IISADMIN"]
    assert reg.value_of(keys[0], "Empty") == []


def test_parse_query_handles_names_with_spaces_and_hostile_data() -> None:
    out = ("\r\nHKEY_USERS\\S-1\\Software\\Microsoft\\Exchange\\Messenger\\Profiles\\http://im.contoso.com/instmsg/aliases/alice\\Contacts\r\n"
           "    bob@im.contoso.com    REG_SZ    Bob \"The Builder\" & Co | 100% ^ <x>\r\n"
           "    carol@im.contoso.com    REG_SZ    \r\n"
           "    (Default)    REG_SZ    \r\n\r\n")
    (key,) = reg.parse_query(out)
    assert key.path.endswith("aliases/alice\\Contacts")
    assert [(v.name, v.data) for v in key.values] == [
        ("bob@im.contoso.com", 'Bob "The Builder" & Co | 100% ^ <x>'),
        ("carol@im.contoso.com", ""),
        ("", "")]


def test_parse_query_reads_windows_xp_layout() -> None:
    (key,) = reg.parse_query(XP_SAMPLE)
    assert reg.value_of(key, "DisplayVersion") == "4.7.3001"
    assert reg.value_of(key, "") == "default data"
    assert reg.value_of(key, "EstimatedSize") == 0x1F40


def test_reg_query_hku_lists_mounted_hives() -> None:
    keys = reg.parse_query(HKU_SAMPLE)
    names = reg.subkeys(keys, "HKU")
    assert "S-1-5-21-1004336348-1177238915-682003330-1104" in names and ".DEFAULT" in names
    assert all(not k.values for k in keys)


def test_key_paths_compare_across_root_spellings() -> None:
    assert reg.same_key("HKU\\S-1\\Software", "hkey_users\\s-1\\software\\")
    assert reg.long_path("HKLM\\X") == "HKEY_LOCAL_MACHINE\\X"
    assert reg.short_path("HKEY_USERS\\S-1") == "HKU\\S-1"


def test_result_classification_not_found_and_locked() -> None:
    assert reg.is_not_found(CommandResult(1, "", reg.NOT_FOUND + "\r\n"))
    assert not reg.is_not_found(CommandResult(0, "", ""))
    assert reg.is_locked(CommandResult(1, "", "ERROR: The process cannot access the file because it is being used by another process.\r\n"))
    assert reg.is_locked(CommandResult(1, "", "ERROR: Access is denied.\r\n"))
    assert not reg.is_locked(CommandResult(1, "", reg.NOT_FOUND))
