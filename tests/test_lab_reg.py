"""The lab's reg.exe: output layout and exit codes.

Sources: learn.microsoft.com windows-commands reg-query/reg-add/reg-delete/
reg-export/reg-import/reg-load/reg-unload. The lab's pc0001 runs Windows XP, whose
reg.exe 3.0 prints a blank line, "! REG.EXE VERSION 3.0", a blank line, the key
path, then "    NAME<TAB>TYPE<TAB>DATA" (Microsoft's PowerShell docs show such
output); the Vista+ layout (blank line, key path, "    NAME    TYPE    DATA",
as Wine programs/reg/query.c prints it) is pinned in test_windows_versions.py.
"""
from __future__ import annotations

import pytest

from lab_fixtures import ALICE, CAROL, CONTACTS, make_lab
from runner.lab.shell import execute
from runner.windows.regfile import parse_reg

NOT_FOUND = "ERROR: The system was unable to find the specified registry key or value.\r\n"
OK = "The operation completed successfully.\r\n"


@pytest.fixture
def lab(tmp_path):
    return make_lab(tmp_path)


def run(lab, line):
    return execute(lab, "pc0001", line)


def test_query_prints_header_blank_line_key_and_tab_columns(lab):
    r = run(lab, f'reg query "HKU\\{ALICE}\\{CONTACTS}"')
    assert r.rc == 0
    assert r.stdout == (f"\r\n! REG.EXE VERSION 3.0\r\n\r\nHKEY_USERS\\{ALICE}\\{CONTACTS}\r\n"
                        f'    bob@im.contoso.com\tREG_SZ\tBob "B" & Co 100%\r\n\r\n')


def test_query_missing_key_fails_with_exit_1(lab):
    r = run(lab, r"reg query HKLM\SOFTWARE\Nope")
    assert (r.rc, r.stdout, r.stderr) == (1, "", NOT_FOUND)


def test_add_types_and_query_formats(lab):
    k = r"HKLM\SOFTWARE\Policies\Microsoft\Messenger\Client"
    assert run(lab, f"reg add {k} /v D /t REG_DWORD /d 42 /f").stdout == OK
    run(lab, f"reg add {k} /v M /t REG_MULTI_SZ /d a\\0b /f")
    run(lab, f"reg add {k} /v B /t REG_BINARY /d 01ff /f")
    run(lab, f"reg add {k} /v E /t REG_EXPAND_SZ /d %%SystemDrive%% /f")
    run(lab, f"reg add {k} /ve /d def /f")
    out = run(lab, f"reg query {k}").stdout
    assert "    D\tREG_DWORD\t0x2a\r\n" in out
    assert "    M\tREG_MULTI_SZ\ta\\0b\\0\\0\r\n" in out
    assert "    B\tREG_BINARY\t01FF\r\n" in out
    assert "    <NO NAME>\tREG_SZ\tdef\r\n" in out


def test_add_invalid_type_or_dword_is_invalid_syntax(lab):
    r = run(lab, r"reg add HKLM\SOFTWARE\X /v a /t REG_FOO /d 1 /f")
    assert r.rc == 1 and r.stderr.startswith("ERROR: Invalid syntax.\r\n")
    assert run(lab, r"reg add HKLM\SOFTWARE\X /v a /t REG_DWORD /d abc /f").rc == 1


def test_invalid_root_is_invalid_key_name(lab):
    r = run(lab, r"reg query HKXX\Software")
    assert r.stderr == 'ERROR: Invalid key name.\r\nType "REG QUERY /?" for usage.\r\n'


def test_value_and_key_names_are_case_insensitive_and_case_preserving(lab):
    run(lab, r"reg add HKLM\SOFTWARE\CaseKey /v MixedName /d 1 /f")
    r = run(lab, r"reg query hklm\software\casekey /v mixedname")
    assert "HKEY_LOCAL_MACHINE\\SOFTWARE\\CaseKey\r\n    MixedName\tREG_SZ\t1" in r.stdout


def test_delete_value_and_key(lab):
    run(lab, r"reg add HKLM\SOFTWARE\D\Sub /v a /d 1 /f")
    assert run(lab, r"reg delete HKLM\SOFTWARE\D\Sub /v nope /f").stderr == NOT_FOUND
    assert run(lab, r"reg delete HKLM\SOFTWARE\D\Sub /v a /f").stdout == OK
    assert run(lab, r"reg delete HKLM\SOFTWARE\D /f").stdout == OK
    assert run(lab, r"reg query HKLM\SOFTWARE\D").rc == 1


def test_load_unload_of_a_user_hive(lab):
    assert run(lab, f'reg load HKU\\tmp "C:\\Documents and Settings\\carol\\NTUSER.DAT"').stdout == OK
    assert "dave@im.contoso.com\tREG_SZ\t\r\n" in run(lab, f'reg query "HKU\\tmp\\{CONTACTS}"').stdout
    run(lab, f'reg add "HKU\\tmp\\{CONTACTS}" /v eve@im.contoso.com /d Eve /f')
    assert run(lab, "reg unload HKU\\tmp").stdout == OK
    assert run(lab, f'reg query "HKU\\tmp\\{CONTACTS}"').stderr == NOT_FOUND
    # the write went to the NTUSER.DAT file: visible after loading it again
    run(lab, f'reg load HKU\\again "C:\\Documents and Settings\\carol\\NTUSER.DAT"')
    assert "eve@im.contoso.com" in run(lab, f'reg query "HKU\\again\\{CONTACTS}"').stdout


def test_unloading_a_logged_on_users_hive_is_access_denied(lab):
    r = run(lab, f"reg unload HKU\\{ALICE}")
    assert (r.rc, r.stderr) == (1, "ERROR: Access is denied.\r\n")


def test_loading_a_hive_file_already_in_use_is_a_sharing_violation(lab):
    r = run(lab, 'reg load HKU\\x "C:\\Documents and Settings\\alice\\NTUSER.DAT"')
    assert r.rc == 1
    assert r.stderr == ("ERROR: The process cannot access the file because it is being used by another "
                        "process.\r\n")


def test_unload_of_a_name_not_loaded_is_parameter_incorrect(lab):
    assert run(lab, "reg unload HKU\\ghost").stderr == "ERROR: The parameter is incorrect.\r\n"


def test_export_writes_utf16_reg_file_and_refuses_overwrite_without_y(lab):
    key = f"HKU\\{ALICE}\\Software"
    assert run(lab, f'reg export "{key}" C:\\Temp\\a.reg').stdout == OK
    data = lab.host("pc0001").fs.read(r"C:\Temp\a.reg")
    assert data.startswith(b"\xff\xfe")
    keys = parse_reg(data)
    assert keys[-1].values[0].data == 'Bob "B" & Co 100%'
    r = run(lab, f'reg export "{key}" C:\\Temp\\a.reg')
    assert r.rc == 1
    assert run(lab, f'reg export "{key}" C:\\Temp\\a.reg /y').rc == 0


def test_import_applies_a_reg_file_and_reports_success_on_stderr(lab):
    text = ("Windows Registry Editor Version 5.00\r\n\r\n[HKEY_LOCAL_MACHINE\\SOFTWARE\\Imp]\r\n"
            '"x"="1 & 2"\r\n')
    lab.host("pc0001").fs.write(r"C:\Temp\i.reg", b"\xff\xfe" + text.encode("utf-16-le"))
    r = run(lab, r"reg import C:\Temp\i.reg")
    assert (r.rc, r.stderr) == (0, OK)
    assert "    x\tREG_SZ\t1 & 2\r\n" in run(lab, r"reg query HKLM\SOFTWARE\Imp").stdout


def test_mutations_are_journaled_and_reads_are_not(lab):
    h = lab.host("pc0001")
    before = len(h.journal())
    run(lab, r"reg query HKLM\SOFTWARE")
    run(lab, f'reg export "HKU\\{ALICE}\\Software" C:\\Temp\\j.reg /y')
    run(lab, f'reg load HKU\\t "C:\\Documents and Settings\\carol\\NTUSER.DAT" & reg unload HKU\\t')
    assert len(h.journal()) == before
    run(lab, r"reg add HKLM\SOFTWARE\J /v a /d 1 /f")
    entries = h.journal()
    assert len(entries) == before + 1 and entries[-1].command.startswith("reg add") and entries[-1].rc == 0
    assert lab.mutations_since(entries[-1].ts)[-1].host == "pc0001"


def test_hive_locked_fault_fails_reg_load(tmp_path):
    lab = make_lab(tmp_path, faults={"seed": 1, "global": {"hive_locked": 1.0}})
    r = execute(lab, "pc0001", f'reg load HKU\\x "C:\\Documents and Settings\\carol\\NTUSER.DAT"')
    assert r.rc == 1 and "being used by another process" in r.stderr
