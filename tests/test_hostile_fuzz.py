"""Property: no mutation of a shipped playbook or inventory makes the runner crash (issue 9).

Hypothesis mutates playbooks/*.yml and inventories/*.yml, as data (drop, retype
or rename a key, a scalar swapped for a list or a mapping, hostile strings) and
as text (truncated, a line deleted, duplicated or re-indented), and runs
``runner validate`` on the result in-process. Whatever it makes, the runner
exits 0 (still valid), 4 or 5, never 250 and never with a traceback, within 30 s and
128 MiB allocated at the peak, and an exit 4 names the file and a line (of the file, or of the playbook
planned against the mutated inventory).
"""
from __future__ import annotations

import re
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from cli_support import cli

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))
INVENTORIES = sorted((REPO / "inventories").glob("*.yml"))
HOSTILE = ['" & reg add HKLM\\SOFTWARE\\X /f & "', "x' OR 1=1 --", "%PATH%", "a^|b", "dn: cn=x\nchangetype: add",
           " lead", "\u202eevil", "\uff41", "{{ 7 * 7 }}", "{{ x", "{% for %}", "sip:{locl}@{domain}", "*", "!all",
           "", " ", "-", "0%", "200%", "1e999", "\t", "yes", "null", "a" * 2000, "../../etc/passwd", "C:\\x"]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: What one validation of a mutated shipped file may allocate at its peak (they take a few MiB).
MAX_PEAK = 128 << 20
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
SCALARS = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=30), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into ``value`` (keys and indexes), the root included."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, path + (i,))
    return out


def _set(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = root
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return root


def _get(root: Any, path: tuple) -> Any:
    for part in path:
        root = root[part]
    return root


@st.composite
def data_mutation(draw: st.DrawFn, text: str) -> str:
    """The document with one value dropped, retyped, renamed or swapped for a container."""
    data = yaml.load(text, Loader=_LOADER)
    path = draw(st.sampled_from(_paths(data)))
    op = draw(st.sampled_from(["drop", "scalar", "list", "map", "rename", "hostile-key"]))
    parent = _get(data, path[:-1]) if path else None
    if op == "drop" and path:
        del parent[path[-1]]
    elif op in ("rename", "hostile-key") and path and isinstance(parent, dict):
        new = draw(st.sampled_from(HOSTILE) if op == "hostile-key" else st.one_of(SCALARS, st.just(str(path[-1]) + "s")))
        parent[new if not isinstance(new, float) else str(new)] = parent.pop(path[-1])
    elif op == "list":
        data = _set(data, path, [_get(data, path), draw(SCALARS)])
    elif op == "map":
        data = _set(data, path, {draw(st.sampled_from(["a", "name", "hosts", "vars"])): _get(data, path)})
    else:
        data = _set(data, path, draw(SCALARS))
    return yaml.dump(data, Dumper=_DUMPER, allow_unicode=True, sort_keys=False, width=1000)


@st.composite
def text_mutation(draw: st.DrawFn, text: str) -> str:
    """The text truncated, or one line deleted, duplicated or re-indented."""
    lines = text.splitlines(keepends=True)
    op = draw(st.sampled_from(["truncate", "delete", "duplicate", "indent", "dedent", "insert"]))
    if op == "truncate" or not lines:
        return text[:draw(st.integers(0, len(text)))]
    i = draw(st.integers(0, len(lines) - 1))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "indent":
        lines[i] = "  " + lines[i]
    elif op == "dedent":
        lines[i] = lines[i][2:] if lines[i].startswith("  ") else lines[i].lstrip()
    else:
        key = draw(st.sampled_from(HOSTILE[:12] + ["<<: *x", "&a b: 1", "- ", ": :", "? a"]))
        indent = re.match(r"\s*", lines[i]).group(0)
        lines.insert(i, f"{indent}{key}\n")
    return "".join(lines)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str, str]:
    """(which file, its mutated text, 'playbook' or 'inventory')."""
    kind = draw(st.sampled_from(["playbook", "inventory"]))
    source = draw(st.sampled_from(PLAYBOOKS if kind == "playbook" else INVENTORIES))
    text = source.read_text(encoding="utf-8")
    for _ in range(draw(st.integers(1, 3))):
        try:
            yaml.load(text, Loader=_LOADER)
            parses = True
        except yaml.YAMLError:
            parses = False
        strategy = st.one_of(data_mutation(text), text_mutation(text)) if parses else text_mutation(text)
        text = draw(strategy)
    return source.name, text, kind


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(case=mutated())
def test_a_mutated_shipped_file_is_valid_or_refused_at_a_line(case, capsys, monkeypatch) -> None:
    name, text, kind = case
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.chdir(tmp)  # a lab plugin's relative dir is looked up here (and never written)
        _check(Path(tmp), name, text, kind, capsys)


def _check(tmp_path: Path, name: str, text: str, kind: str, capsys) -> None:
    target = tmp_path / name
    target.write_text(text, encoding="utf-8")
    if kind == "playbook":
        args = ["validate", str(target), "-i", str(REPO / "inventories" / "example-ssh.yml")]
    else:
        args = ["validate", str(REPO / "playbooks" / "gradual.yml"), "-i", str(target)]
    started = time.monotonic()
    tracemalloc.start()
    try:
        code, out = cli(capsys, *args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 30, "a hang guard only"
    assert peak < MAX_PEAK, f"{peak / 2**20:.0f} MiB at the peak"
    assert code in (0, 4, 5), out
    if code == 4:
        # at a line of the mutated file, or of the playbook planned against it, naming the file
        assert str(target) in out and re.search(r"\.yml:\d+:(\d+:)? ", out), out
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # validation wrote nothing
