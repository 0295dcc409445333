"""The reader's shape checks take a plain walk when a document has no anchor: it must find
exactly what the walk that counts aliases finds (runner.loader._shape_errors)."""
from __future__ import annotations

import random

import pytest

from runner import loader

ATOMS = ['"\\\\srv\\new\\x.msi"', '"a\\nb"', "'x'", ".inf", "-.Inf", ".nan", "1.5", "yes", "12", "~",
         "2020-01-01", "plain", '"\\\\a\\tb"', "null", '"\\\\deploy\\temp.msi"']
KEYS = ["a", "yes", "12", "~", "2020-01-01", "'q'", "b", "[x]", "{k: v}", "on"]


def _doc(rnd: random.Random, depth: int = 0) -> str:
    r = rnd.random()
    if depth > 6 or r < 0.4:
        return rnd.choice(ATOMS)
    if r < 0.7:
        return "{" + ", ".join(f"{rnd.choice(KEYS)}: {_doc(rnd, depth + 1)}" for _ in range(rnd.randint(0, 4))) + "}"
    return "[" + ", ".join(_doc(rnd, depth + 1) for _ in range(rnd.randint(0, 4))) + "]"


def _both(text: str) -> tuple[list[str], list[str]]:
    ldr = loader.MarkedLoader(text)
    try:
        root = ldr.get_single_node()
        assert not ldr.shared
    finally:
        ldr.dispose()
    full = [str(e) for e in loader._shape_errors(root, "f.yml", text, shared=True)]
    plain = [str(e) for e in loader._shape_errors(root, "f.yml", text, shared=False)]
    return full, plain


def test_plain_walk_finds_what_the_full_walk_finds() -> None:
    rnd = random.Random(7)
    compared = with_errors = 0
    for _ in range(3000):
        text = _doc(rnd)
        try:
            full, plain = _both(text)
        except Exception:  # noqa: BLE001 - a document the composer itself refuses
            continue
        assert plain == full, text
        compared += 1
        with_errors += bool(full)
    assert compared > 2000 and with_errors > 500  # the corpus exercises the checks


def test_plain_walk_keeps_the_depth_limit() -> None:
    limit = loader.MAX_YAML_DEPTH
    said = []
    for n in (limit - 2, limit - 1):
        for text in ("[" * n + "1" + "]" * n, "a: " + "[" * n + "1" + "]" * n):
            full, plain = _both(text)
            assert plain == full, (n, text[:20])
            said += full
    assert any("nested too deeply" in e for e in said)  # a scalar one past the limit is refused


def test_documents_with_anchors_still_count_expansions(tmp_path) -> None:
    laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(7))
    f = tmp_path / "laughs.yml"
    f.write_text(laughs + "z: .inf\n", encoding="utf-8")
    with pytest.raises(loader.InputError) as exc:   # InputErrors is one too
        loader.read_yaml(f)
    assert "expands to more than" in str(exc.value)
