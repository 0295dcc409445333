"""The lab's findstr and call: the pieces the package push's one-line hash gate relies on.

Sources: Microsoft's findstr reference (options, regex metacharacters, exit codes),
stackoverflow.com/questions/4094699 (phase 1 leaves an undefined %VAR% as typed on the
command line; CALL expands percents a second time, so ``call echo %^ERRORLEVEL%``
reads the ERRORLEVEL of a command earlier on the same line).
"""
from __future__ import annotations

import pytest

from lab_fixtures import make_lab
from runner.lab.shell import execute

H = "ab" * 32


@pytest.fixture
def lab(tmp_path):
    return make_lab(tmp_path)


def run(lab, line):
    return execute(lab, "pc0001", line)


def test_findstr_literal_c_string_keeps_spaces_and_exit_codes(lab):
    r = run(lab, 'echo one two three| findstr /c:"two three"')
    assert (r.rc, r.stdout) == (0, "one two three\r\n")
    r = run(lab, 'echo one two three| findstr /c:"two  three"')
    assert (r.rc, r.stdout) == (1, "")


def test_findstr_plain_strings_are_alternatives(lab):
    assert run(lab, 'echo alpha| findstr "zeta alp"').rc == 0
    assert run(lab, 'echo alpha| findstr "zeta beta"').rc == 1
    r = run(lab, "echo alpha| findstr zeta alp")       # the second word is a file
    assert (r.rc, r.stderr) == (2, "FINDSTR: Cannot open alp\r\n")


def test_findstr_b_i_and_v(lab):
    assert run(lab, f"echo {H.upper()} *-| findstr /b /i {H}").rc == 0
    assert run(lab, f"echo {H.upper()} *-| findstr /b {H}").rc == 1          # case counts without /i
    assert run(lab, f"echo x{H}| findstr /b /i {H}").rc == 1                 # not at the start
    r = run(lab, "echo abc| findstr /v abc")
    assert (r.rc, r.stdout) == (1, "")


def test_findstr_regex_anchor_and_optional_backslashes(lab):
    pat = f'/r /i /c:"^\\\\*{H}"'
    assert run(lab, f"echo \\{H} *C:\\\\x| findstr {pat}").rc == 0
    assert run(lab, f"echo {H} *C:\\\\x| findstr {pat}").rc == 0
    assert run(lab, f"echo \\{'cd' * 32} *C:\\\\{H}| findstr {pat}").rc == 1   # the hash in the name only
    assert run(lab, "echo a.c| findstr /r /x a.c").rc == 0
    assert run(lab, "echo abc| findstr /r /x /c:ab[a-c]").rc == 0
    assert run(lab, "echo abd| findstr /r /x /c:ab[a-c]").rc == 1
    assert run(lab, "echo a.c| findstr /l /x abc").rc == 1


def test_findstr_bad_option_and_missing_file(lab):
    r = run(lab, "echo a| findstr /q a")
    assert (r.rc, r.stderr) == (2, "FINDSTR: Bad command line\r\n")
    r = run(lab, "findstr a C:\\nope.txt")
    assert (r.rc, r.stderr) == (2, "FINDSTR: Cannot open C:\\nope.txt\r\n")


def test_errorlevel_expands_when_the_line_is_read_but_call_reads_it_later(lab):
    r = run(lab, "frobnicate & echo %ERRORLEVEL% & call echo %^ERRORLEVEL%")
    assert r.stdout.split() == ["0", "9009"]


def test_a_set_errorlevel_variable_wins(lab):
    r = run(lab, "set ERRORLEVEL=7 & frobnicate & call echo %^ERRORLEVEL%")
    assert r.stdout.split() == ["7"]
