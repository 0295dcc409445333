"""The reader composes its node tree in one loop (runner.loader.MarkedLoader): it must give
exactly the tree PyYAML's recursive Composer gives over the same events (tags, values,
styles, marks, shared alias nodes) and the same errors, and keep the reader's limits."""
from __future__ import annotations

import random

import pytest
import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from runner import loader

SCALARS = ["a", "'q'", '"x\\ty"', "12", "0x1f", "1_000", "1:30", "yes", "No", "~", "null", "", "3.5", ".inf",
           "2020-01-01", "2001-12-14t21:59:43.10-05:00", "!!str 12", "!!int '7'", "! 12", "!local x",
           "|\n  lit\n", "é", "'it''s'", "\"\\u00e9\""]
KEYS = ["a", "b", "c", "'k'", "12", "yes", "~", "? [x, y]", "<<"]


class _Recursive(Composer, loader._BaseLoader):  # type: ignore[misc, valid-type]
    """PyYAML's own Composer over the same parser: the reference."""

    def __init__(self, text: str) -> None:
        loader._BaseLoader.__init__(self, text)
        self.anchors = {}


def _doc(rnd: random.Random, anchors: list[str], depth: int = 0, indent: int = 0) -> str:
    """A random document in flow style, with anchors, aliases (some undefined, some twice)."""
    r = rnd.random()
    if r < 0.08 and anchors:
        return "*" + rnd.choice(anchors + ["nope"])
    prefix = ""
    if rnd.random() < 0.15:
        name = rnd.choice(["a1", "b2", "c3", "d4"])
        anchors.append(name)
        prefix = f"&{name} "
    if depth > 5 or r < 0.45:
        s = rnd.choice(SCALARS)
        return prefix + (s if "\n" not in s else "'lit'")
    if r < 0.75:
        items = ", ".join(f"{rnd.choice(KEYS)}: {_doc(rnd, anchors, depth + 1)}" for _ in range(rnd.randint(0, 4)))
        tag = "!!map " if rnd.random() < 0.05 else ""
        return prefix + tag + "{" + items + "}"
    items = ", ".join(_doc(rnd, anchors, depth + 1) for _ in range(rnd.randint(0, 4)))
    return prefix + "[" + items + "]"


def _block(rnd: random.Random, depth: int = 0, indent: int = 0) -> str:
    """A random block-style document (the shape of real inventories and playbooks)."""
    pad = " " * indent
    lines = []
    for _ in range(rnd.randint(1, 4)):
        key = rnd.choice(["hosts", "vars", "users", "a", "b", "'q q'"])
        r = rnd.random()
        if depth < 4 and r < 0.35:
            lines.append(f"{pad}{key}:\n" + _block(rnd, depth + 1, indent + 2))
        elif depth < 4 and r < 0.5:
            lines.append(f"{pad}{key}:\n" + "".join(f"{pad}  - {rnd.choice(SCALARS[:14])}\n"
                                                     for _ in range(rnd.randint(1, 3))))
        else:
            lines.append(f"{pad}{key}: {rnd.choice(SCALARS[:14])}\n")
    return "".join(lines)


def _tree(node, seen: dict[int, int]) -> object:
    """Everything a node says, with shared nodes named by their first position."""
    if id(node) in seen:
        return ("alias", seen[id(node)])
    seen[id(node)] = len(seen)
    marks = (node.start_mark.index, node.start_mark.line, node.start_mark.column,
             node.end_mark.index, node.end_mark.line, node.end_mark.column)
    if isinstance(node, ScalarNode):
        return ("scalar", node.tag, node.value, node.style, marks)
    if isinstance(node, SequenceNode):
        return ("seq", node.tag, node.flow_style, marks, [_tree(v, seen) for v in node.value])
    assert isinstance(node, MappingNode)
    return ("map", node.tag, node.flow_style, marks, [(_tree(k, seen), _tree(v, seen)) for k, v in node.value])


def _compose(cls, text: str) -> tuple[str, object]:
    ldr = cls(text)
    try:
        root = ldr.get_single_node()
        return "ok", None if root is None else _tree(root, {})
    except yaml.YAMLError as e:
        return "error", str(e)
    finally:
        ldr.dispose()


def test_the_loop_composes_what_pyyaml_composes() -> None:
    rnd = random.Random(11)
    outcomes = {"ok": 0, "error": 0}
    for i in range(4000):
        text = _doc(rnd, []) if i % 3 else _block(rnd)
        if i % 17 == 0:
            text += "\n---\nb: 1\n"  # a second document: refused alike
        ours, theirs = _compose(loader.MarkedLoader, text), _compose(_Recursive, text)
        assert ours == theirs, text
        outcomes[ours[0]] += 1
    assert outcomes["ok"] > 2000 and outcomes["error"] > 300  # the corpus exercises both


@pytest.mark.parametrize("text", ["", "# only a comment\n", "a", "[]", "{}", "&x [*x]", "a: &x {b: *x}"])
def test_edge_documents(text: str) -> None:
    assert _compose(loader.MarkedLoader, text) == _compose(_Recursive, text)


def test_limits_hold_at_their_node() -> None:
    n = loader.MAX_YAML_DEPTH
    ok = "[" * n + "1" + "]" * n
    assert _compose(loader.MarkedLoader, ok)[0] == "ok"
    deep = "a:\n  b: " + "[" * (n - 1) + "1" + "]" * (n - 1)
    ldr = loader.MarkedLoader(deep)
    with pytest.raises(loader._TooLarge) as exc:
        ldr.get_single_node()
    assert "nested too deeply" in exc.value.message and exc.value.mark.line == 1
    assert exc.value.mark.column == 5 + n - 2  # the bracket one past the limit


def test_node_limit_counts_aliases(monkeypatch) -> None:
    monkeypatch.setattr(loader, "MAX_YAML_NODES", 10)
    ldr = loader.MarkedLoader("a: &x [1, 2]\nb: [*x, *x, *x, *x, *x]\n")
    with pytest.raises(loader._TooLarge) as exc:
        ldr.get_single_node()
    assert "more than 10 values" in exc.value.message
    assert (exc.value.mark.line, exc.value.mark.column) == (1, 16)  # the fourth alias, the 11th value


def _typed(value: object) -> object:
    """A value with every type spelled out (1, 1.0 and True are equal in Python; nan is not)."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


def _constructed(text: str) -> tuple[object, object] | None:
    """(construct_plain's data, construct_document's) of a document without anchors."""
    ldr = loader.MarkedLoader(text)
    try:
        root = ldr.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        ldr.dispose()
    if root is None or ldr.shared:
        return None
    plain = ldr.construct_plain(root)
    try:
        full: object = ldr.construct_document(root)
    except yaml.YAMLError as e:
        full = ("error", str(e))
    return (plain if plain is loader._NOT_PLAIN else _typed(plain)), (full if isinstance(full, tuple) and full[:1] == ("error",) else _typed(full))


def test_plain_construction_builds_what_pyyaml_builds() -> None:
    rnd = random.Random(5)
    built = handed_over = 0
    extra = ["<<: {a: 1}\nb: 2", "=: x", "!!set {a, b}", "!!omap [a: 1]", "[a, !!binary aGk=]",
             "{? [1, 2] : x}", "!!map x", "!!str [a]", "a: !!float 1", "t: 2001-12-14 21:59:43.10 -5"]
    for i in range(4000):
        text = extra[i] if i < len(extra) else (_doc(rnd, []) if i % 3 else _block(rnd))
        got = _constructed(text)
        if got is None:
            continue
        plain, full = got
        if plain is loader._NOT_PLAIN:
            handed_over += 1  # PyYAML's constructor builds it (or refuses it) instead
            continue
        assert plain == full, text
        built += 1
    assert built > 2000 and handed_over >= 8


def test_read_yaml_gives_merged_and_plain_data_alike(tmp_path) -> None:
    f = tmp_path / "m.yml"
    f.write_text("base: &b {x: 1}\nuse: {<<: *b, y: 2}\nlist: [1, '2', 3.0, yes, ~]\n", encoding="utf-8")
    assert loader.read_yaml(f).data == {"base": {"x": 1}, "use": {"x": 1, "y": 2}, "list": [1, "2", 3.0, True, None]}
    f.write_text("a: {<<: {x: 1}, y: 2}\n", encoding="utf-8")  # a merge without an anchor
    assert loader.read_yaml(f).data == {"a": {"x": 1, "y": 2}}


def test_reading_an_inventory_leaves_its_tree_to_reference_counting(tmp_path) -> None:
    # apply freezes what exists once the inventory and the plan are built (runner.apply), so
    # a node tree left in a reference cycle would be kept all night: 12 MiB at 1,000 clients
    import gc
    from runner.lab.generator import generate
    inv = generate(tmp_path / "lab", clients=30, users_per_client=2, contacts=2, seed=4)
    playbook = loader.SCHEMA_DIR.parent / "playbooks" / "gradual.yml"
    loader.load_inventory(inv)
    loader.load_playbook(playbook)
    checks = len(loader._fast_checks)
    gc.collect()
    gc.disable()
    try:
        loader.load_inventory(inv)
        loader.load_playbook(playbook)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not kinds & {"ScalarNode", "MappingNode", "SequenceNode", "Mark", "Document", "MarkedLoader",
                        "_InventoryBuilder"}, kinds
    assert len(loader._fast_checks) == checks  # each schema's check is compiled once
