"""The lab's cmd.exe: parsing and exit codes pinned to cmd.exe behaviour.

Sources: KB 830473 (8,191-character limit on XP, the lab's pc0001; 2,047 on
Windows 2000, in test_windows_versions.py), stackoverflow.com/questions/4094699
(cmd.exe parser phases), learn.microsoft.com "Parsing C++ command-line
arguments" (CommandLineToArgvW), the cmd.exe 9009 message.
"""
from __future__ import annotations

import pytest

from lab_fixtures import make_lab
from runner.lab.shell import execute, expand, split_args

NOT_RECOGNIZED = ("'frobnicate' is not recognized as an internal or external command,\r\n"
                  "operable program or batch file.\r\n")


@pytest.fixture
def lab(tmp_path):
    return make_lab(tmp_path)


def run(lab, line):
    return execute(lab, "pc0001", line)


def test_unknown_program_prints_not_recognized_and_exits_9009(lab):
    r = run(lab, "frobnicate /x")
    assert (r.rc, r.stdout, r.stderr) == (9009, "", NOT_RECOGNIZED)


def test_8191_characters_run_and_8192_are_too_long(lab):
    # KB 830473: the maximum length of the command-line string is 8191 characters
    ok = "echo " + "x" * (8191 - 5)
    assert len(ok) == 8191 and run(lab, ok).rc == 0
    r = run(lab, ok + "x")
    assert (r.rc, r.stderr) == (1, "The input line is too long.\r\n")


def test_limit_applies_after_variable_expansion(lab):
    line = "echo %ProgramFiles%" + "x" * (8191 - 19)
    assert len(line) == 8191
    assert run(lab, line).stderr == "The input line is too long.\r\n"


def test_chaining_and_or_and_sequence(lab):
    assert run(lab, "echo a&echo b").stdout == "a\r\nb\r\n"
    assert run(lab, "frobnicate && echo no").stdout == ""
    r = run(lab, "frobnicate || echo yes")
    # echo does not set ERRORLEVEL, so cmd /c still exits with the failure's code
    assert r.stdout == "yes\r\n" and r.rc == 9009
    assert run(lab, "echo a & frobnicate").rc == 9009


def test_echo_keeps_the_space_before_an_ampersand(lab):
    assert run(lab, "echo a & echo b").stdout == "a \r\nb\r\n"


def test_echo_does_not_reset_errorlevel_so_the_line_keeps_the_failure(lab):
    r = run(lab, r"reg query HKLM\Nope & echo done")
    assert r.rc == 1 and r.stdout == "done\r\n"


def test_metacharacters_inside_quotes_are_literal(lab):
    assert run(lab, 'echo "a & b | c < d > e ^ f"').stdout == '"a & b | c < d > e ^ f"\r\n'


def test_caret_escapes_outside_quotes(lab):
    assert run(lab, "echo a^&b^|c^>d").stdout == "a&b|c>d\r\n"


def test_unbalanced_quote_runs_to_the_end_of_the_line(lab):
    assert run(lab, 'echo "a & b').stdout == '"a & b\r\n'


def test_percent_variables_expand_and_unknown_ones_stay(lab):
    r = run(lab, "echo %SystemDrive% %computername% %NOPE% 50%")
    assert r.stdout == "C: PC0001 %NOPE% 50%\r\n"


def test_percent_expands_even_inside_quotes():
    assert expand('"%OS%"', {"OS": "Windows_NT"}) == '"Windows_NT"'


def test_redirection_to_file_append_and_nul(lab):
    run(lab, r"echo one> C:\Temp\o.txt & echo two>> C:\Temp\o.txt")
    # the blank before "&" stays part of echo's text once the redirection is taken out
    assert run(lab, r"type C:\Temp\o.txt").stdout == "one \r\ntwo\r\n"
    assert run(lab, "frobnicate 2>nul").stderr == ""
    r = run(lab, r"frobnicate > C:\Temp\e.txt 2>&1")
    assert r.stderr == "" and "not recognized" in run(lab, r"type C:\Temp\e.txt").stdout


def test_parentheses_group_commands(lab):
    r = run(lab, r"(echo a& echo b)> C:\Temp\g.txt & type C:\Temp\g.txt")
    assert r.stdout == "a\r\nb\r\n"


def test_dangling_operator_is_a_syntax_error(lab):
    r = run(lab, "echo a &&")
    assert r.rc == 255 and r.stderr == "&& was unexpected at this time.\r\n"


@pytest.mark.parametrize("line,argv", [
    (r'p "a b" c', ["p", "a b", "c"]),
    (r'p a\\\"b', ["p", 'a\\"b']),            # 2n+1 backslashes + quote: n backslashes, literal quote
    (r'p "C:\Temp\\"', ["p", "C:\\Temp\\"]),  # 2n backslashes + quote: n backslashes, quote closes
    (r'p a\b\c', ["p", r"a\b\c"]),            # backslashes not before a quote are literal
    ('p "a""b"', ["p", 'a"b']),
    ('p "unbalanced arg', ["p", "unbalanced arg"]),
    ('"C:\\Program Files\\x.exe" a', ["C:\\Program Files\\x.exe", "a"]),
])
def test_commandlinetoargvw_rules(line, argv):
    assert split_args(line) == argv


def test_builtins_type_mkdir_copy_del_if(lab):
    assert run(lab, r"mkdir C:\Temp").stderr == "A subdirectory or file C:\\Temp already exists.\r\n"
    assert run(lab, r"type C:\nope.txt").stderr == "The system cannot find the file specified.\r\n"
    run(lab, r"echo x> C:\Temp\a.txt")
    assert run(lab, r"copy C:\Temp\a.txt C:\Temp\b.txt").stdout == "        1 file(s) copied.\r\n"
    assert run(lab, r"if exist C:\Temp\b.txt echo yes").stdout == "yes\r\n"
    run(lab, r"del C:\Temp\b.txt")
    assert run(lab, r"if not exist C:\Temp\b.txt echo gone").stdout == "gone\r\n"
    assert run(lab, r"del C:\Temp\b.txt").stderr == "Could Not Find C:\\Temp\\b.txt\r\n"


def test_ver_and_set(lab):
    assert run(lab, "ver").stdout == "\r\nMicrosoft Windows XP [Version 5.1.2600]\r\n"
    assert run(lab, "set SystemD").stdout == "SystemDrive=C:\r\n"
    assert run(lab, "set NOSUCH").stderr == "Environment variable NOSUCH not defined\r\n"


def test_file_system_is_case_insensitive(lab):
    assert run(lab, r'type "c:\program files\MESSENGER\MSMSGS.EXE"').rc == 0


def test_del_with_a_wildcard_deletes_only_the_matching_files(lab):
    fs = lab.host("pc0001").fs
    for name in ("runner-aaaa1111-01.ldf", "RUNNER-AAAA1111-02.LDF", "runner-bbbb2222-01.ldf", "keep.txt"):
        fs.write("C:\\Temp\\" + name, b"x")
    r = run(lab, 'del /q "C:\\Temp\\runner-aaaa1111-*.ldf"')
    assert r.rc == 0 and r.stderr == ""
    assert fs.listdir("C:\\Temp") == ["keep.txt", "runner-bbbb2222-01.ldf"]
    r = run(lab, 'del /q "C:\\Temp\\runner-aaaa1111-*.ldf"')
    assert "Could Not Find C:\\Temp\\runner-aaaa1111-*.ldf" in r.stderr


@pytest.mark.parametrize("line,stdout,written", [
    # a lone 1 or 2 starting a token before > is a handle number, else it is text
    (r"echo ab 2>C:\Temp\h.txt", "ab \r\n", None),
    (r"echo ab2>C:\Temp\h.txt", "", "ab2\r\n"),
    (r"echo 2>C:\Temp\h.txt", "ECHO is on.\r\n", None),
    (r"echo a	1>C:\Temp\h.txt", "", "a\t\r\n"),
    (r'echo "x 2>y" 2>C:\Temp\h.txt', '"x 2>y" \r\n', None),
    (r"echo 12>C:\Temp\h.txt", "", "12\r\n"),
    (r"echo a ^& b ^> c ^| d & echo e", "a & b > c | d \r\ne\r\n", None),
])
def test_handle_numbers_carets_and_quotes_in_long_runs_of_text(lab, line, stdout, written):
    """cmd.exe's reading of a command's text, which the lab takes in runs of plain characters."""
    r = run(lab, line)
    assert r.stdout == stdout, (line, r.stdout, r.stderr)
    if written is not None:
        assert run(lab, r"type C:\Temp\h.txt").stdout == written


# -- batch files: read again before each line, as cmd.exe reads them ----------------------

def _script(lab, text: str, path: str = r"C:\Temp\t.cmd") -> str:
    lab.host("pc0001").fs.write(path, text.replace("\n", "\r\n").encode("cp437"))
    return path


def test_a_batch_file_deleted_while_it_runs_stops_at_the_next_line(lab):
    path = _script(lab, "@echo off\necho one\ndel /q C:\\Temp\\t.cmd\necho two\n")
    r = run(lab, f"cmd /c {path}")
    assert r.stdout.split() == ["one"], r
    assert "The batch file cannot be found." in r.stderr


def test_a_batch_file_stops_at_a_line_cmd_cannot_parse(lab):
    path = _script(lab, "@echo off\necho one\n| echo piped\necho two\n")
    r = run(lab, f"cmd /c {path}")
    assert "two" not in r.stdout and "was unexpected at this time." in r.stderr, r


def test_lines_added_to_a_running_batch_file_run_too(lab):
    path = _script(lab, "@echo off\necho one\necho echo two>> C:\\Temp\\t.cmd\n")
    r = run(lab, f"cmd /c {path}")
    assert r.stdout.split() == ["one", "two"], r
