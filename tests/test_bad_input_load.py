"""Careless input is refused when it is read (issue 9), before anything runs: each case
through the CLI, with its exit code and a message naming the file and line (or option)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from cli_support import cli
from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
GRADUAL = REPO / "playbooks" / "gradual.yml"


@pytest.fixture(scope="module")
def lab_inv(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("lab") / "lab", clients=2, users_per_client=2, contacts=3, seed=2)


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    """gradual.yml with ``old`` (a regex, first match) replaced by ``new``."""
    text, n = re.subn(old, new, GRADUAL.read_text(encoding="utf-8"), count=1, flags=re.M)
    assert n == 1, old
    path = tmp_path / "pb.yml"
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(path: Path, fragment: str) -> int:
    return next(i for i, t in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if fragment in t)


@pytest.mark.parametrize("old, new, says", [
    (r"^(\s+)import_contacts:\n(\s+coexistence: true\n\s+coexistence_group: .*\n)",
     r"\1import_contacts: [1, 2]\n", "must be a mapping such as {option: value} (or {} for none), not a list"),
    (r"^(\s+)import_contacts:\n(\s+coexistence: true\n\s+coexistence_group: .*\n)",
     r"\1import_contacts: coexistence\n", "not a string"),
    (r"serial: \{over: users, attribute: wave\}", 'serial: "200%"', "a percentage from 1% to 100%"),
    (r"serial: \{over: users, attribute: wave\}", 'serial: "0%"', "a percentage from 1% to 100%"),
    (r"serial: \{over: users, attribute: wave\}", "serial: {over: users, attribute: wav}",
     "serial attribute 'wav' is set on none of the play's users (did you mean 'wave'?)"),
    (r"max_fail_percentage: 10", "max_fail_percentage: .nan", ".nan is not a finite number"),
    (r"delay: 5", "delay: .inf", ".inf is not a finite number"),
    (r"delay: 5", "delay: 100000", "delay"),
])
def test_a_careless_playbook_is_refused_at_its_line(tmp_path, capsys, lab_inv, old, new, says):
    pb = _edited(tmp_path, old, new)
    code, text = cli(capsys, "validate", str(pb), "-i", str(lab_inv))
    assert code == 4, text
    fragment = new.split("\\n")[0].replace("\\1", "").strip()
    play_line = "serial attribute" in says
    line = _line_of(pb, "- name: Move users wave by wave") if play_line else _line_of(pb, fragment)
    assert f"{pb}:{line}:" in text and says in text, text
    code, text = cli(capsys, "apply", str(pb), "-i", str(lab_inv), "--state", str(tmp_path / "st"))
    assert code == 4 and not (tmp_path / "st").exists()


@pytest.mark.parametrize("args, says", [
    (["--limit", ""], "--limit '' names nothing"),
    (["--limit", ","], "--limit ',' names nothing"),
    (["--limit", " , "], "names nothing"),
    (["--limit", "!*"], "leaves no host and no user"),
    (["--limit", "all,!all"], "leaves no host and no user"),
    (["--tags", ""], "'' names no tag"),
    (["--skip-tags", ","], "names no tag"),
])
def test_an_empty_selection_is_a_bad_option_not_everything(tmp_path, capsys, lab_inv, args, says):
    """`--limit "$WAVE"` with WAVE unset must not migrate everyone."""
    code, text = cli(capsys, "apply", str(GRADUAL), "-i", str(lab_inv), "--state", str(tmp_path / "st"),
                     "--check", *args)
    assert code == 5 and says in text, text


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9", "fast"])
def test_a_retry_scale_that_is_not_a_finite_small_number_is_a_bad_option(tmp_path, capsys, lab_inv,
                                                                          monkeypatch, value):
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", value)
    code, text = cli(capsys, "apply", str(GRADUAL), "-i", str(lab_inv), "--state", str(tmp_path / "st"))
    assert code == 5 and "RUNNER_RETRY_DELAY_SCALE" in text, text


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]")
    return "- name: p\n  hosts: all\n  vars:\n" + "".join(f"    {t}\n" for t in lines) + "  steps: []\n"


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_text(_laughs(12)), "expands to more than 2,000,000 values"),
    (lambda p: p.write_text("- name: p\n  hosts: all\n  vars:\n    x: " + "[" * 990 + "]" * 990
                            + "\n  steps: []\n"), "nested too deeply"),
    (lambda p: p.write_text("- name: p\n  hosts: all\n  vars:\n    x: " + "[" * 80 + "]" * 80
                            + "\n  steps: []\n"), "nested too deeply (more than 64 levels)"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: os.truncate(p.open("wb").name, 40 << 20), "larger than the 32 MiB"),
])
def test_the_reader_bounds_size_depth_and_aliases(tmp_path, capsys, make, says):
    """Each is refused in a second or two with bounded memory (a hang or a MemoryError before)."""
    pb = tmp_path / "pb.yml"
    make(pb)
    started = time.monotonic()
    code, text = cli(capsys, "validate", str(pb))
    assert code == 4 and str(pb) in text and says in text, text
    assert time.monotonic() - started < 30  # a hang guard only; speed is for bench/


def test_a_file_with_too_many_values_is_refused_while_it_is_read(tmp_path, capsys, monkeypatch):
    """Under the size limit a flat list still holds millions of values (``[1,1,...]``: 16
    million in 32 MiB): the count stops the reader at the value that passes it, before
    the whole tree is in memory (it was composed first, then counted: gigabytes)."""
    from runner import loader
    monkeypatch.setattr(loader, "MAX_YAML_NODES", 10_000)
    pb = tmp_path / "pb.yml"
    pb.write_text("- name: p\n  hosts: all\n  vars:\n    x: [" + "1," * 50_000 + "1]\n  steps: []\n")
    code, text = cli(capsys, "validate", str(pb))
    assert code == 4 and "holds more than 10,000 values" in text, text
    line, col = map(int, re.search(re.escape(str(pb)) + r":(\d+):(\d+):", text).groups())
    assert line == 4 and 19_000 < col < 21_000, text  # at the 10,001st value, not the list's start


@pytest.mark.slow
def test_a_32_mib_flat_list_is_refused_in_bounded_memory(tmp_path):
    """The real limits, in a child limited to 1.5 GB of address space: exit 4, not a MemoryError
    (before: over 5.8 GB and 120 s, still composing)."""
    import resource
    import subprocess
    import sys
    pb = tmp_path / "pb.yml"
    with pb.open("w") as f:
        f.write("- name: p\n  hosts: all\n  vars:\n    x: [")
        f.write("1," * (15 << 20))
        f.write("1]\n  steps: []\n")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
    done = subprocess.run([sys.executable, "-m", "runner", "validate", str(pb)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limit, timeout=300)
    assert done.returncode == 4 and f"{pb}:4:" in done.stderr + done.stdout, done.stderr[-2000:]
    assert "holds more than 2,000,000 values" in done.stderr + done.stdout


def test_a_device_as_the_playbook_is_refused(capsys):
    code, text = cli(capsys, "validate", "/dev/zero")
    assert code == 4 and "/dev/zero: not a regular file" in text


def test_validate_warns_about_users_without_client_machines(tmp_path, capsys):
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  children:\n    clients: {hosts: {pc1: }}\n    lcs_servers: {hosts: {lcs01: }}\n"
                   "    exchange_im_servers: {hosts: {exim01: }}\nusers:\n"
                   "  bob: {im_address: bob@im.contoso.com, clients: [], wave: w1}\n"
                   "  al: {im_address: al@im.contoso.com, wave: w1}\n"
                   "  cy: {im_address: cy@im.contoso.com, clients: [pc1], wave: w1}\n")
    code, text = cli(capsys, "validate", str(GRADUAL), "-i", str(inv))
    assert code == 0, text
    assert "warning: user 'bob' has no clients" in text and "warning: user 'al' has no clients" in text
    assert "'cy'" not in text


@pytest.mark.parametrize("data, where, says", [
    (b"- name: p\n  hosts: all\n  steps:\n    - name: s\n      1: {}\n", ":5:7:", "the key '1' is read by YAML as a number"),
    (b"- name: p\n  hosts: all\n  steps:\n    - name: s\n      null: {}\n", ":5:7:", "read by YAML as null"),
    (b"- name: p\n  hosts: all\n  steps:\n    - name: s\x00\n", ":4:14:", "U+0000 is not allowed"),
    ("- name: p\n  hosts: all\n  steps: []\n".encode("utf-16"), ":3:10:", "'steps' must not be empty"),
    (b"- name: p\n  hosts: all\n  vars: {on: 1}\n  steps: []\n", ":3:10:", "read by YAML as a boolean"),
])
def test_keys_and_characters_yaml_reads_otherwise_are_named_at_their_place(tmp_path, capsys, data, where, says):
    pb = tmp_path / "pb.yml"
    pb.write_bytes(data)
    code, text = cli(capsys, "validate", str(pb))
    assert code == 4 and f"{pb}{where}" in text and says in text, text
    assert "<unicode string>" not in text


@pytest.mark.parametrize("key, says", [
    ("yes", "the key 'yes' is read by YAML as a boolean"),
    ("12", "the key '12' is read by YAML as a number"),
    ("a" * 5000, "a key longer than 1024 characters"),
])
def test_host_names_yaml_cannot_read_as_names_are_reported_as_such(tmp_path, capsys, key, says):
    inv = tmp_path / "inv.yml"
    inv.write_text(f"all:\n  hosts:\n    {key}: {{}}\nusers: {{}}\n")
    code, text = cli(capsys, "validate", str(GRADUAL), "-i", str(inv))
    assert code == 4 and f"{inv}:3:" in text and says in text, text


@pytest.mark.parametrize("text, where, says", [
    ("all:\n  vars: {night: 2020-99-99}\n  hosts: {pc1: }\nusers: {}\n", ":2:17:",
     "'2020-99-99' cannot be read as a date: month must be in 1..12; quote it to keep it as text"),
    ("all:\n  hosts:\n    pc1: {port: !!int y}\nusers: {}\n", ":3:17:",
     "'y' cannot be read as an integer: invalid literal for int() with base 10: 'y'; it is tagged !!int: remove"),
    ("all:\n  vars: {a: !!bool maybe}\n", ":2:13:", "'maybe' cannot be read as a boolean (true or false); it is"),
    # a tag on an unquoted value YAML would type alike: the tag is the thing to correct
    ("all:\n  vars:\n    x: !!timestamp 2020-99-99\n", ":3:8:", "it is tagged !!timestamp: remove the tag"),
    # a long value is named, not repeated
    ("all:\n  vars: {x: " + "9" * 5000 + "}\n", ":2:13:", "'" + "9" * 79 + "\u2026' cannot be read as an integer"),
    ("all:\n  vars: {a: !!float x, b: 1}\n", ":2:13:", "'x' cannot be read as a number"),
    # a document with anchors goes through PyYAML's own constructor: located all the same
    ("all:\n  vars: &v {when: 2021-02-30}\n  children: {g: {vars: *v}}\nusers: {}\n", ":2:19:",
     "'2021-02-30' cannot be read as a date: day is out of range for month; quote it"),
])
def test_a_value_its_type_cannot_read_is_named_at_its_place(tmp_path, capsys, text, where, says):
    # PyYAML raises a bare ValueError or KeyError for these: it was a crash report
    inv = tmp_path / "inv.yml"
    inv.write_text(text, encoding="utf-8")
    code, out = cli(capsys, "validate", str(GRADUAL), "-i", str(inv))
    assert code == 4 and f"{inv}{where}" in out and says in out, out
    assert "unexpected error" not in out and "Traceback" not in out
    assert max(len(line) for line in out.splitlines()) < 400 + len(str(inv))


def test_validate_on_the_lab_plugin_writes_nothing_and_apply_makes_the_lab(tmp_path, capsys, monkeypatch):
    """Reading a file never writes one: the lab is generated by apply, not by loading lab.yml."""
    monkeypatch.chdir(tmp_path)
    inv = tmp_path / "lab.yml"
    inv.write_text("plugin: lab\nlab: {dir: estate, clients: 2, users_per_client: 1, contacts: 2, seed: 4}\n")
    code, text = cli(capsys, "validate", str(GRADUAL), "-i", str(inv))
    assert code == 0 and "has not been generated yet" in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.yml"]
    inv.write_text("plugin: lab\nlab: {dir: estate, clients: 0}\n")
    code, text = cli(capsys, "validate", str(GRADUAL), "-i", str(inv))
    assert code == 4 and f"{inv}:2:" in text, text
    inv.write_text("plugin: lab\nlab: {dir: estate, clients: 2, users_per_client: 1, contacts: 2, seed: 4}\n")
    code, text = cli(capsys, "apply", str(GRADUAL), "-i", str(inv), "--state", str(tmp_path / "st"), "--check")
    assert code == 0, text
    assert (tmp_path / "estate" / "inventory.yml").is_file()
    code, text = cli(capsys, "validate", str(GRADUAL), "-i", str(inv))
    assert code == 0 and "not been generated" not in text, text


def test_the_readme_states_the_readers_limits_as_the_code_has_them():
    from runner import loader, templating
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    docs = (REPO / "docs" / "input-checks.md").read_text(encoding="utf-8")
    for text in (readme, docs):
        assert f"{loader.MAX_YAML_BYTES >> 20} MiB" in text
        assert f"{loader.MAX_YAML_DEPTH} levels" in text
        assert f"{loader.MAX_YAML_NODES:,}" in text
        assert f"{templating.MAX_TEMPLATE_RESULT:,}" in text
