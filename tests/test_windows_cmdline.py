"""Specification of runner.windows.cmdline: quoting for cmd.exe + CommandLineToArgvW,
secret masking, chaining, the 8,191 limit, batching and sectioned output."""
from __future__ import annotations

import pytest

from runner.errors import PermanentFault
from runner.windows.cmdline import (MASK, MAX_COMMAND_LINE, Command, CommandLineTooLong, Quoted,
                                    Secret, UnsafeValueError, batch, chain, quotable, quote,
                                    sectioned, split_sections)
from winargv import argv


def cmd_live_metachars(line: str) -> list[str]:
    """Characters cmd.exe would treat as operators: those outside double quotes."""
    live, in_quotes = [], False
    for c in line:
        if c == '"':
            in_quotes = not in_quotes
        elif not in_quotes and c in "&|<>^()":
            live.append(c)
    return live


HOSTILE = ["Bob & Alice", "a|b", "<admin>", "caret^x", "(paren)", "semi;colon,comma=eq",
           "tab\there", "  spaces  ", "", "C:\\Temp\\", "C:\\Program Files\\x\\\\", "ünïcødé 名前",
           "bang!", "single'quote", "back\\slash\\in\\middle"]


@pytest.mark.parametrize("value", HOSTILE)
def test_quoted_value_reaches_the_program_as_one_identical_argument(value: str) -> None:
    line = Command("prog.exe", Quoted(value), "/x").render()
    assert argv(line) == ["prog.exe", value, "/x"]


@pytest.mark.parametrize("value", HOSTILE)
def test_quoted_value_exposes_no_cmd_metacharacter(value: str) -> None:
    line = Command("prog.exe", Quoted(value)).render()
    assert cmd_live_metachars(line) == []


def test_plain_words_are_not_quoted() -> None:
    assert quote(r"HKLM\SOFTWARE\Microsoft") == r"HKLM\SOFTWARE\Microsoft"
    assert quote("S-1-5-21-1004336348-1177238915-682003330-1104") == \
        "S-1-5-21-1004336348-1177238915-682003330-1104"


def test_trailing_backslashes_are_doubled_before_the_closing_quote() -> None:
    assert quote("C:\\My Dir\\") == '"C:\\My Dir\\\\"'


@pytest.mark.parametrize("value", ['say "hi"', "50%", "%PATH%", "a\nb", "a\rb", "a\x1ab", "a\x00b"])
def test_values_that_cannot_be_quoted_are_refused(value: str) -> None:
    assert not quotable(value)
    with pytest.raises(UnsafeValueError, match="through a file"):
        Command("prog", Quoted(value)).render()


def test_unsafe_value_is_a_permanent_fault() -> None:
    assert issubclass(UnsafeValueError, PermanentFault)


def test_literal_bits_may_not_hold_a_line_end() -> None:
    with pytest.raises(UnsafeValueError):
        Command("echo a\r\ndel x")


def test_secret_renders_real_value_and_displays_masked() -> None:
    cmd = Command("net", "use", "\\\\srv\\ipc$", Secret("p@ss word"), "/user:admin")
    assert cmd.render() == 'net use \\\\srv\\ipc$ "p@ss word" /user:admin'
    assert cmd.display() == f"net use \\\\srv\\ipc$ {MASK} /user:admin"
    assert "p@ss" not in str(cmd) and "p@ss" not in repr(cmd) and "p@ss" not in repr(Secret("p@ss"))


def test_chain_joins_with_the_operator_and_masks_secrets_throughout() -> None:
    a = Command("reg", "load", Quoted("HKU\\runner_alice"), Quoted("C:\\Documents and Settings\\alice\\NTUSER.DAT"))
    b = Command("reg", "unload", "HKU\\runner_alice")
    line = chain([a, b], "&").render()
    assert line == ('reg load HKU\\runner_alice "C:\\Documents and Settings\\alice\\NTUSER.DAT" & '
                    'reg unload HKU\\runner_alice')
    assert chain([a, Command("x", Secret("s"))], "&&").display().endswith(f"&& x {MASK}")
    with pytest.raises(ValueError):
        chain([a], ";")


def test_line_longer_than_8191_characters_raises_a_clear_error() -> None:
    ok = Command("echo", "x" * (MAX_COMMAND_LINE - 5))
    assert len(ok.render()) == MAX_COMMAND_LINE
    too_long = Command("echo", "x" * (MAX_COMMAND_LINE - 4))
    with pytest.raises(CommandLineTooLong, match="8191"):
        too_long.render()


def test_batch_packs_commands_in_order_into_as_few_lines_as_fit() -> None:
    cmds = [Command("reg", "query", f"HKLM\\SOFTWARE\\K{i:04d}") for i in range(1000)]
    lines = batch(cmds, limit=MAX_COMMAND_LINE)
    rendered = [line.render() for line in lines]
    assert all(len(r) <= MAX_COMMAND_LINE for r in rendered)
    joined = " & ".join(rendered)
    assert joined == chain(cmds).render(limit=10**9)
    assert len(lines) > 1
    # greedy packing: the next line's first command would not have fitted on the previous line
    for prev, nxt in zip(lines, lines[1:]):
        first = nxt.bits[0]
        assert isinstance(first, Command)
        assert len(prev.render()) + 3 + len(first.render()) > MAX_COMMAND_LINE


def test_batch_refuses_a_single_command_over_the_limit() -> None:
    with pytest.raises(CommandLineTooLong):
        batch([Command("echo", "y" * 9000)])


def test_sectioned_output_is_split_per_command_with_success_flags() -> None:
    cmds = [Command("reg", "query", "HKLM\\A"), Command("reg", "query", "HKLM\\B"), Command("ver")]
    wrapped, nonce = sectioned(cmds, nonce="n1")
    line = batch(wrapped)[0].render()
    assert line.startswith("echo @@runnern1 0 & reg query HKLM\\A && echo @@runnern1 0 ok || echo @@runnern1 0 fail & ")
    # what cmd.exe prints for that line: echo keeps the space before '&'
    stdout = ("@@runnern1 0 \r\n\r\nHKEY_LOCAL_MACHINE\\A\r\n    v    REG_SZ    x\r\n\r\n@@runnern1 0 ok\r\n"
              "@@runnern1 1 \r\n@@runnern1 1 fail\r\n")
    sections = split_sections(stdout, 3, nonce)
    assert sections[0] is not None and sections[0].ok and "REG_SZ    x" in sections[0].stdout
    assert sections[1] is not None and not sections[1].ok and sections[1].stdout == ""
    assert sections[2] is None


def test_sectioned_lines_render_as_the_nested_markers_did_and_check_the_nonce() -> None:
    """The wrapped commands are built flat, without re-checking the markers' bits: the line
    is the same, a secret stays masked, and a nonce that would end the line is refused."""
    cmds = [Command("reg", "query", Quoted("HKU\\a b & c")), Command("echo", Secret("pw")), "ver"]
    wrapped, _ = sectioned(cmds, nonce="n2", start=4)
    nested = [Command(Command("echo", "@@runnern2", str(i)), "&", c if isinstance(c, Command) else c, "&&",
                      Command("echo", "@@runnern2", str(i), "ok"), "||", Command("echo", "@@runnern2", str(i), "fail"))
              for i, c in enumerate(cmds, 4)]
    assert [w.render() for w in wrapped] == [n.render() for n in nested]
    assert [w.display() for w in wrapped] == [n.display() for n in nested]
    assert "pw" not in wrapped[1].display() and "pw" in wrapped[1].render()
    assert len(wrapped[0]) == len(nested[0].render())
    with pytest.raises(UnsafeValueError):
        sectioned(cmds, nonce="x\r\necho pwned")
    with pytest.raises(UnsafeValueError):
        sectioned(["ver\r\nformat c:"])


def test_section_markers_cannot_be_forged_without_the_nonce() -> None:
    stdout = "@@runnerAA 0 \r\n    x    REG_SZ    @@runnerBB 0 fail\r\n@@runnerAA 0 ok\r\n"
    (s,) = split_sections(stdout, 1, "AA")
    assert s is not None and s.ok and "@@runnerBB 0 fail" in s.stdout


def test_marker_after_output_without_final_newline_is_still_found() -> None:
    (s,) = split_sections("@@runnerq 0 \r\npartial@@runnerq 0 fail\r\n", 1, "q")
    assert s is not None and not s.ok and s.stdout == "partial"
