"""Windows paths in double-quoted YAML: an escape YAML reads as a control character beside an
escaped backslash is refused at its line, with the way out; a text meaning a newline is not."""
from __future__ import annotations

import pytest

from runner.errors import InputError, InputErrors
from runner.loader import read_yaml


def _problems(tmp_path, body: str) -> list[str]:
    path = tmp_path / "f.yml"
    path.write_text(body, encoding="utf-8")
    try:
        read_yaml(path)
    except InputErrors as exc:
        return [str(e) for e in exc.errors]
    except InputError as exc:
        return [str(exc)]
    return []


@pytest.mark.parametrize("value,esc", [
    (r'"\\deploy\new\temp.msi"', r"\n"),
    (r'"\\deploy\tools\\wm.msi"', r"\t"),
    (r'"C:\\Program Files\new\\a.msi"', r"\n"),
    (r'"\\srv\\\new"', r"\n"),                  # an odd run of backslashes: the last one escapes
])
def test_a_double_quoted_path_whose_escape_reads_as_a_control_character_is_refused(tmp_path, value, esc):
    problems = _problems(tmp_path, f"all:\n  vars:\n    messenger_package: {value}\n")
    assert len(problems) == 1 and ":3:24:" in problems[0], problems
    assert f"{esc} is a" in problems[0] and "single quotes" in problems[0]


@pytest.mark.parametrize("value", [r'"\\\\deploy\\new\\temp.msi"', r"'\\deploy\new\temp.msi'",
                                   r'"line one\nline two"', r'"tab\there"', r"\\deploy\new\temp.msi",
                                   r'"\\\\srv\\share\\\\new"'])
def test_paths_written_right_and_texts_meaning_a_newline_are_read(tmp_path, value):
    assert _problems(tmp_path, f"all:\n  vars:\n    v: {value}\n") == []


def test_an_unknown_escape_says_how_to_write_the_path(tmp_path):
    problems = _problems(tmp_path, 'all:\n  vars:\n    p: "\\\\deploy\\packages\\x.msi"\n')
    assert len(problems) == 1 and "unknown escape" in problems[0] and "single quotes" in problems[0], problems
