"""Load playbooks and inventories: YAML -> JSON Schema -> typed model, errors as file:line:col.

Every problem found in one pass is reported (``InputErrors``), each located at
the YAML node it is about and phrased for a person, not as a jsonschema dump:
``pb.yml:7:7: unknown key 'retires' in step 'Export' (did you mean 'retries'?)``.

Public: ``load_playbook(path) -> Playbook``, ``load_inventory(path) -> Inventory``.
"""
from __future__ import annotations

import codecs
import difflib
import gc
import hashlib
import json
import os
import re
import stat
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import jsonschema
import yaml
from yaml.composer import Composer, ComposerError
from yaml.events import AliasEvent, MappingEndEvent, MappingStartEvent, ScalarEvent, SequenceEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import InputError, InputErrors, RunnerError
from runner.fastschema import compile_check, extra_keys, validator_class
from runner.lcs.mapping import rule_problems, validate_sip_uri
from runner.model import CONTROL_NODE_PATH_VARS, Group, Host, Inventory, Play, Playbook, Serial, Step, User
from runner.templating import check_syntax, is_template
from runner.windows.ldif import dn_problem

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
STEP_KEYWORDS = ("name", "when", "tags", "retries", "delay", "throttle", "ignore_errors")
#: Limits of the reader: a playbook or inventory larger, deeper or more expanded than
#: this is refused (exit 4) within a second instead of eating memory for minutes.
MAX_YAML_BYTES = 32 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 2_000_000
LAB_DEFAULTS = {"dir": ".lab/default", "clients": 50, "users_per_client": 2, "contacts": 20, "seed": 1}

Path_ = tuple  # a path into the document: keys and list indexes


# -- YAML with marks ----------------------------------------------------------

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NotPlain(Exception):
    """MarkedLoader.construct_plain met what only PyYAML's constructor builds."""


class _TooLarge(Exception):
    """Raised while composing: the document passes a reader limit at ``mark``."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


_LOADER_BASES = (_BaseLoader,) if issubclass(_BaseLoader, Composer) else (Composer, _BaseLoader)


class MarkedLoader(*_LOADER_BASES):  # type: ignore[misc]
    """SafeLoader (libyaml's parser when available: large inventories) that keeps the
    composed node tree (every node has start_mark line/column) so that any
    document path can be located afterwards.

    The tree is composed here, in one loop over libyaml's events rather than PyYAML's
    recursive Composer (the same nodes, tags, marks and errors: tests/test_composer.py;
    a fifth less time on a 1,000-client inventory), so that the reader's limits hold while
    it is built: a file under the size limit can still hold millions of values
    (``[1,1,1,...]``: 16 million in 32 MiB, tens of GB as nodes), and deep
    nesting would end in a RecursionError. Both stop at the node that passes
    MAX_YAML_NODES or MAX_YAML_DEPTH, at its line. Path resolvers
    (``add_path_resolver``), which no reader here registers, are not applied.
    """

    def __init__(self, stream: str) -> None:
        _BaseLoader.__init__(self, stream)
        self.anchors: dict[str, Node] = {}  # Composer's, which libyaml's loader does not set up
        self._nodes = 0
        self.shared = False  # the last document composed had an anchor (so maybe aliases)

    def compose_document(self) -> Node:
        # PyYAML's, keeping whether the document had any anchor before they are forgotten
        self.get_event()
        node = self._compose_tree()
        self.get_event()
        self.shared = bool(self.anchors)
        self.anchors = {}
        return node

    def construct_plain(self, root: Node) -> Any:
        """The data of a tree without anchors, as ``construct_document`` builds it, in a third
        of its time (tests/test_composer.py): each scalar by PyYAML's own constructor for its
        tag, plain lists and dicts. ``_NOT_PLAIN`` when the tree holds what only PyYAML's
        constructor handles (a merge or ``=`` key, a set, omap or pairs, an unknown tag, a
        key that is a list or mapping): the caller then builds it with that, errors and all."""
        try:
            return self._plain(root)
        except _NotPlain:
            return _NOT_PLAIN

    def _plain(self, node: Node) -> Any:
        # a method, not a closure calling itself: that would be a reference cycle holding the
        # loader (and its tree) until a collection
        kind = type(node)
        if kind is ScalarNode:
            if node.tag not in _PLAIN_SCALARS:
                raise _NotPlain
            return self.yaml_constructors[node.tag](self, node)
        if kind is SequenceNode and node.tag == _SEQ:
            return [self._plain(item) for item in node.value]
        if kind is MappingNode and node.tag == _MAP:
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if type(key_node) is not ScalarNode:  # (a list is no key; PyYAML says so)
                    raise _NotPlain
                out[self._plain(key_node)] = self._plain(value_node)  # a merge or "=" key: not plain
            return out
        raise _NotPlain

    def _compose_tree(self) -> Node:
        """The next node with everything under it: PyYAML's ``Composer.compose_node`` as a
        loop with an explicit stack of the open sequences and mappings, with its checks in
        its order (a value past MAX_YAML_NODES, an undefined alias or a duplicate anchor,
        then a collection past MAX_YAML_DEPTH)."""
        get, resolve, anchors = self.get_event, self.resolve, self.anchors
        stack: list[list[Any]] = []  # [node, the mapping's key waiting for its value, or None]
        nodes = self._nodes
        while True:
            event = get()
            kind = type(event)
            if kind is SequenceEndEvent or kind is MappingEndEvent:
                node = stack.pop()[0]
                node.end_mark = event.end_mark
            else:
                nodes += 1
                if nodes > MAX_YAML_NODES:
                    self._nodes = nodes
                    raise _TooLarge(f"holds more than {MAX_YAML_NODES:,} values", event.start_mark)
                anchor = event.anchor
                if kind is AliasEvent:
                    if anchor not in anchors:
                        raise ComposerError(None, None, f"found undefined alias {anchor!r}", event.start_mark)
                    node = anchors[anchor]
                else:
                    if anchor is not None and anchor in anchors:
                        raise ComposerError(f"found duplicate anchor {anchor!r}; first occurrence",
                                            anchors[anchor].start_mark, "second occurrence", event.start_mark)
                    tag = event.tag
                    if kind is ScalarEvent:
                        if tag is None or tag == "!":
                            tag = resolve(ScalarNode, event.value, event.implicit)
                        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
                    else:
                        if len(stack) >= MAX_YAML_DEPTH:
                            self._nodes = nodes
                            raise _TooLarge(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)",
                                            event.start_mark)
                        mapping = kind is MappingStartEvent
                        if tag is None or tag == "!":
                            tag = resolve(MappingNode if mapping else SequenceNode, None, event.implicit)
                        node = (MappingNode if mapping else SequenceNode)(
                            tag, [], event.start_mark, None, flow_style=event.flow_style)
                        if anchor is not None:
                            anchors[anchor] = node
                        stack.append([node, None])
                        continue
                    if anchor is not None:
                        anchors[anchor] = node
            # a whole node: the document's, an item of the open sequence, or a key or value
            if not stack:
                self._nodes = nodes
                return node
            top = stack[-1]
            parent = top[0]
            if type(parent) is SequenceNode:
                parent.value.append(node)
            elif top[1] is None:
                top[1] = node
            else:
                parent.value.append((top[1], node))
                top[1] = None


_NOT_PLAIN = object()  # MarkedLoader.construct_plain: PyYAML's constructor must build this one
_SEQ, _MAP = "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
#: the scalar tags construct_plain builds, by SafeConstructor's own function for each
_PLAIN_SCALARS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null",
                                                              "timestamp", "binary"))


class Document:
    """A parsed YAML file: its data and its node tree, for locating paths."""

    def __init__(self, file: str, data: Any, root: Node | None) -> None:
        self.file = file
        self.data = data
        self.root = root

    def nodes(self, path: Iterable[Any]) -> tuple[Node | None, Node | None]:
        """(key node, value node) at ``path``; the deepest existing node when a step is missing."""
        key, node, _ = self._walk(path)
        return key, node

    def _walk(self, path: Iterable[Any]) -> tuple[Node | None, Node | None, Node | None]:
        """``nodes`` and the last mapping that took its key from a merge (``<<: *anchor``).

        Constructing the data flattens merges into the node tree (PyYAML's
        flatten_mapping), so a merged key is found under the mapping it was merged
        into while its marks stay at the anchor, where its value is written."""
        key: Node | None = None
        node = self.root
        merged_into: Node | None = None
        for part in path:
            if isinstance(node, MappingNode):
                for k, v in node.value:
                    if isinstance(k, ScalarNode) and k.value == str(part):
                        if not _within(k, node):
                            merged_into = node
                        key, node = k, v
                        break
                else:
                    return key, node, merged_into
            elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
                key, node = None, node.value[part]
            else:
                return key, node, merged_into
        return key, node, merged_into

    def error(self, message: str, path: Iterable[Any] = (), *, at_key: bool = False) -> InputError:
        """An InputError located at ``path`` (its key when ``at_key``); a value that came
        through a merge key is located where it is written, naming where it was merged."""
        key, node, merged_into = self._walk(path)
        target = key if (at_key and key is not None) else node
        if target is None:
            return InputError(message, self.file)
        if merged_into is not None:
            m = merged_into.start_mark
            message += f" (merged by '<<' into the mapping at line {m.line + 1}, column {m.column + 1})"
        return InputError(message, self.file, target.start_mark.line + 1, target.start_mark.column + 1)

    def where(self, path: Iterable[Any], *, at_key: bool = False) -> str:
        """``file:line:col`` of ``path``, for "first defined at" hints."""
        e = self.error("", path, at_key=at_key)
        return str(e)[:-2] if e.line else self.file


def _within(inner: Node, outer: Node) -> bool:
    """True when ``inner`` is written inside ``outer`` (by their marks)."""
    start, end = outer.start_mark, outer.end_mark
    return (start.line, start.column) <= (inner.start_mark.line, inner.start_mark.column) \
        and (inner.end_mark.line, inner.end_mark.column) <= (end.line, end.column)


def _duplicate_keys(node: Node | None, file: str, seen: set[int] | None = None) -> list[InputError]:
    """Every duplicate key in every mapping of the tree, located at the duplicate."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return []
    seen.add(id(node))
    errors: list[InputError] = []
    if isinstance(node, MappingNode):
        first: dict[str, Node] = {}
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                if k.value in first:
                    m, f = k.start_mark, first[k.value].start_mark
                    errors.append(InputError(
                        f"duplicate key '{k.value}' (first defined at line {f.line + 1}, column {f.column + 1})",
                        file, m.line + 1, m.column + 1))
                else:
                    first[k.value] = k
            errors += _duplicate_keys(v, file, seen)
    elif isinstance(node, SequenceNode):
        for v in node.value:
            errors += _duplicate_keys(v, file, seen)
    return errors


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while a file's tree, data and model are built: tens of
    thousands of nodes, marks and values that all live on had every collection walk them
    again (a sixth of a 1,000-client inventory's read). What a read leaves behind is
    collected once it is over (or frozen by the caller: runner.apply); an inner pause
    leaves the outer one's to end it."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def read_yaml(path: str | os.PathLike[str]) -> Document:
    """Read and parse one YAML file; missing/unreadable files, syntax errors and
    duplicate keys become InputError(s) with their location."""
    with collection_paused():
        return _read_yaml(path)


def _read_yaml(path: str | os.PathLike[str]) -> Document:
    file = str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            raise InputError("not a regular file (a pipe, device or socket): give a YAML file", file)
        if st.st_size > MAX_YAML_BYTES:
            raise InputError(f"is {st.st_size / 2**20:.0f} MiB: larger than the {MAX_YAML_BYTES >> 20} MiB a "
                             "playbook or inventory may be", file)
        raw = Path(path).read_bytes()
        if _utf16_without_bom(raw):
            raise InputError("looks like UTF-16 without a byte-order mark (every other byte is NUL); save it as "
                             "UTF-8, or as UTF-16 with its byte-order mark", file, 1, 1)
        text = _decode(raw)
    except FileNotFoundError:
        raise InputError("file not found", file) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a YAML file", file) from None
    except UnicodeDecodeError as exc:
        # where an editor shows it: the line, and the column in characters of the valid text before it
        data = exc.object if isinstance(exc.object, bytes) else b""
        if exc.encoding.replace("-", "").lower().startswith("utf8") and data:
            # utf-8-sig reports offsets after its BOM; lines end at LF, CR LF or a lone CR, as YAML's
            offset = exc.start + (3 if raw.startswith(codecs.BOM_UTF8) else 0)
            before = data[:exc.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            line = before.count(b"\n") + 1
            col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
            raise InputError(f"not UTF-8 text ({exc.reason}, byte {offset}): save the file as UTF-8",
                             file, line, col) from None
        raise InputError(f"not {exc.encoding} text ({exc.reason} at byte {exc.start})", file) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file) from None
    loader = MarkedLoader(text)
    try:
        root = loader.get_single_node()
        dups = _duplicate_keys(root, file)
        if dups:
            raise InputErrors(dups)
        shape = _shape_errors(root, file, text, shared=loader.shared)
        if shape:
            raise InputErrors(shape)
        data = None
        if root is not None:
            try:
                data = _NOT_PLAIN if loader.shared else loader.construct_plain(root)
                if data is _NOT_PLAIN:
                    data = loader.construct_document(root)
            except yaml.YAMLError:
                raise
            except Exception as exc:  # noqa: BLE001 - a value its tag cannot read: 2020-99-99, !!int y
                raise _unreadable_value(loader, root, file, text, exc) from None
    except _TooLarge as exc:
        raise InputError(exc.message, file, exc.mark.line + 1, exc.mark.column + 1) from None
    except RecursionError:
        raise InputError(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)", file) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, other controls)
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise InputError(f"the character U+{ord(char):04X} is not allowed in YAML (a control character; "
                         "a binary file?)", file, line, col) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            what = f"{exc.context}, {exc.problem}"
        if mark and _char_at(text, mark.line, mark.column) == "\t":
            what = "a tab character; YAML indents with spaces only"
        elif mark and "undefined alias" in what:  # libyaml does not say which
            name = re.match(r"\*([^\s,\[\]{}]*)", text.splitlines()[mark.line][mark.column:])
            what = f"the alias {name.group(0)!r} refers to no anchor (&{name.group(1)}) defined before it" \
                if name else what
        elif mark and "unknown escape character" in what:
            what += (": in double quotes a backslash starts an escape; write a Windows path in single "
                     "quotes ('\\\\server\\share\\file.msi') or double every backslash")
        elif mark and _long_key(text, mark.line):
            what = (f"a key longer than {YAML_KEY_LIMIT} characters, which YAML cannot read, quoted or not "
                    "(names are at most 128 characters)")
        raise InputError(f"YAML syntax error: {what}", file,
                         mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise InputError(f"YAML error: {exc}", file) from None
    finally:
        loader.dispose()
    return Document(file, data, root)


YAML_KEY_LIMIT = 1024  # PyYAML's (and YAML 1.1's) limit on an implicit key

_TAG_WORDS = {"int": "an integer", "float": "a number", "bool": "a boolean (true or false)",
              "timestamp": "a date", "binary": "base64 binary data"}


def _unreadable_value(loader: MarkedLoader, root: Node, file: str, text: str, exc: Exception) -> InputError:
    """The scalar whose tag's constructor refused its text (an unquoted ``2020-99-99`` is a
    date in YAML 1.1, ``!!int y`` asks for an integer), located; PyYAML raises a bare
    ValueError or KeyError for it, with no line."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            if node.tag not in _PLAIN_SCALARS:
                continue
            try:
                loader.yaml_constructors[node.tag](loader, node)
            except Exception as why:  # noqa: BLE001 - this is the one
                return _unreadable(node, file, text, why)
            continue
        children = node.value if isinstance(node, SequenceNode) else [n for kv in node.value for n in kv]
        stack.extend(reversed(children))
    return InputError(f"a value cannot be read ({type(exc).__name__}: {_clip(str(exc))})", file)


def _unreadable(node: ScalarNode, file: str, text: str, why: Exception) -> InputError:
    """``node``'s value cannot be read as its tag's type: say so at its place, with the way
    out (quote a value YAML typed by itself; drop or correct an explicit tag)."""
    short = node.tag.rsplit(":", 1)[-1]
    line, col = node.start_mark.line, node.start_mark.column
    lines = text.splitlines()
    # the node starts at its properties: an anchor (&name), then a tag (!!int, !<...>)
    props = re.sub(r"^&\S*\s+", "", lines[line][col:] if line < len(lines) else "")
    reason = f": {_clip(str(why).strip())}" if isinstance(why, ValueError) and str(why).strip() else ""
    how = (f"; it is tagged !!{short}: remove the tag or correct the value" if props.startswith("!")
           else "; quote it to keep it as text")
    return InputError(f"{_clip(node.value)!r} cannot be read as {_TAG_WORDS.get(short, short)}{reason}{how}",
                      file, line + 1, col + 1)


def _clip(value: str, limit: int = 80) -> str:
    """``value``, cut to ``limit`` characters with an ellipsis (a message names a value, it
    does not repeat a 100,000-digit one)."""
    return value if len(value) <= limit else value[:limit - 1] + "\u2026"


def _utf16_without_bom(data: bytes) -> bool:
    """True when ``data`` starts like ASCII text in UTF-16 (LE or BE) with no byte-order mark."""
    head = data[:4]
    if len(head) < 4 or head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    return all(head[i] == 0 and head[i ^ 1] != 0 for i in (1, 3)) \
        or all(head[i] == 0 and head[i ^ 1] != 0 for i in (0, 2))


def _decode(data: bytes) -> str:
    """The text of a YAML file: UTF-8 (with or without a BOM), or UTF-16/32 with its BOM
    (Windows tools such as Notepad and PowerShell's Out-File write UTF-16)."""
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(codec)
    return data.decode("utf-8-sig")


def _long_key(text: str, line: int) -> bool:
    """True when ``line`` (0-based) starts with a plain key longer than YAML's limit."""
    lines = text.splitlines()
    if line >= len(lines):
        return False
    key = lines[line].strip().lstrip("- ").partition(":")[0]
    return len(key) > YAML_KEY_LIMIT


_NON_FINITE = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_FLOAT_TAG = "tag:yaml.org,2002:float"
#: In a double-quoted YAML string, a backslash and one of these letters is one control
#: character (``\n`` a newline, ``\t`` a tab...), preceded by an even run of backslashes.
_CONTROL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*(\\[ntrabfve0])")
_CONTROL_CHAR = re.compile("[\n\t\r\a\b\f\v\x1b\0]")   # what those escapes become
_CONTROL_NAMES = {"n": "newline", "t": "tab", "r": "carriage return", "a": "bell", "b": "backspace",
                  "f": "form feed", "v": "vertical tab", "e": "escape", "0": "NUL"}


def _path_escape_error(node: ScalarNode, file: str, text: str | None) -> InputError | None:
    """A double-quoted Windows path whose ``\\n`` or ``\\t`` YAML has read as a newline or tab
    (``"\\\\deploy\\new\\temp.msi"``): it would print like the path and be another one.
    Told by an escaped backslash (``\\\\``) beside the control escape: a text that only means
    a newline has none."""
    if node.style != '"' or text is None or _CONTROL_CHAR.search(node.value) is None:
        return None
    raw = text[node.start_mark.index:node.end_mark.index]
    found = _CONTROL_ESCAPE.search(raw)
    if found is None or "\\\\" not in raw:
        return None
    esc = found.group(1)
    m = node.start_mark
    return InputError(f"in double quotes, {esc} is a {_CONTROL_NAMES[esc[1]]}, not a backslash and "
                      f"'{esc[1]}': write a Windows path in single quotes ('\\\\server\\share\\file.msi') "
                      "or double every backslash", file, m.line + 1, m.column + 1)


def _scalar_errors(node: ScalarNode, file: str, text: str | None) -> list[InputError]:
    """A scalar's own errors: ``.inf``/``.nan``, a Windows path a double-quoted escape broke.
    Only a float or a double-quoted scalar can have either."""
    if node.style != '"' and node.tag != _FLOAT_TAG:
        return []
    out = []
    if node.tag == _FLOAT_TAG and _NON_FINITE.fullmatch(node.value):
        m = node.start_mark
        out.append(InputError(f"{node.value} is not a finite number", file, m.line + 1, m.column + 1))
    path_error = _path_escape_error(node, file, text)
    if path_error is not None:
        out.append(path_error)
    return out


def _shape_errors(root: Node | None, file: str, text: str | None = None, *,
                  shared: bool = True) -> list[InputError]:
    """Limits of the reader, checked on the node tree before anything is built from it.

    Nesting deeper than MAX_YAML_DEPTH (a playbook is a few levels deep), more
    than MAX_YAML_NODES nodes once aliases are expanded (a "billion laughs"
    document is small on disk and exponential in memory), and ``.inf``/``.nan``
    (numbers are finite: a delay or a percentage never is either).

    ``shared=False`` says the document has no anchor, so no node is reached twice and its
    size is the count the composer already bounded: one plain walk (a quarter of reading a
    1,000-client inventory was the size bookkeeping).
    """
    if root is None:
        return []
    errors: list[InputError] = []
    if not shared:
        todo: list[tuple[Node, int]] = [(root, 1)]
        while todo:
            node, depth = todo.pop()
            if depth > MAX_YAML_DEPTH:
                m = node.start_mark
                return [InputError(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)", file,
                                   m.line + 1, m.column + 1)]
            if isinstance(node, ScalarNode):
                errors.extend(_scalar_errors(node, file, text))
            elif isinstance(node, MappingNode):
                errors.extend(_key_errors(node, file))
                todo.extend((n, depth + 1) for kv in node.value for n in kv)
            else:
                todo.extend((n, depth + 1) for n in node.value)
        return _sorted(errors)
    sizes: dict[int, int] = {}
    # iterative post-order walk over distinct nodes; an alias is a node seen again
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, expanded = stack.pop()
        if depth > MAX_YAML_DEPTH:
            m = node.start_mark
            return [InputError(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)", file,
                               m.line + 1, m.column + 1)]
        children: list[Node] = []
        if isinstance(node, MappingNode):
            children = [n for kv in node.value for n in kv]
            if not expanded:
                errors.extend(_key_errors(node, file))
        elif isinstance(node, SequenceNode):
            children = list(node.value)
        if expanded:
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                m = node.start_mark
                return [InputError(f"expands to more than {MAX_YAML_NODES:,} values (aliases of aliases?)",
                                   file, m.line + 1, m.column + 1)]
            continue
        if id(node) in sizes:
            continue
        if isinstance(node, ScalarNode):
            sizes[id(node)] = 1
            errors.extend(_scalar_errors(node, file, text))
            continue
        sizes[id(node)] = 1  # provisional: an alias cycle counts once
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)
    return _sorted(errors)


_KEY_WORDS = {"tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:int": "a number",
              "tag:yaml.org,2002:float": "a number", "tag:yaml.org,2002:null": "null (nothing)",
              "tag:yaml.org,2002:timestamp": "a date"}


def _key_errors(node: MappingNode, file: str) -> list[InputError]:
    """Keys are names: one YAML reads as a boolean (``yes``), a number (``12``), null or
    a date would be reported under another name, or crash a check that expects text.
    Merge keys (``<<: *defaults``) are fine."""
    out = []
    for key, _ in node.value:
        if isinstance(key, ScalarNode) and key.tag in _KEY_WORDS:
            m = key.start_mark
            shown = key.value or "(empty)"
            out.append(InputError(f"the key {shown!r} is read by YAML as {_KEY_WORDS[key.tag]}; "
                                  f"quote it ('{key.value}') if it is a name", file, m.line + 1, m.column + 1))
        elif not isinstance(key, ScalarNode):
            m = key.start_mark
            out.append(InputError("a key must be a name, not a list or a mapping", file, m.line + 1,
                                  m.column + 1))
    return out


def _char_at(text: str, line: int, column: int) -> str:
    """The character at 0-based ``line``/``column`` of ``text`` ('' past the end)."""
    lines = text.splitlines()
    return lines[line][column:column + 1] if 0 <= line < len(lines) else ""


# -- schema errors in plain words ---------------------------------------------

@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``schemas/<name>.schema.json``."""
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=None)
def _inventory_schema(kind: str) -> dict[str, Any]:
    """The inventory schema for one kind of inventory (``static``, ``lab_plugin``): one
    object for every read, so its compiled yes-check (``_fast_check``, cached per schema
    object) is compiled once, not again (and kept again) for each inventory read."""
    schema = dict(load_schema("inventory"))
    schema.pop("oneOf", None)
    schema["$ref"] = f"#/$defs/{kind}"
    return schema


_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "empty"}


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field(path: Path_) -> str:
    for part in reversed(path):
        if isinstance(part, str):
            return part
    return "the document"


#: The words YAML 1.1 reads unquoted as booleans (PyYAML's resolver), by lower-case spelling.
_YAML_BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def _quote_advice(path: Path_, got: Any, allowed: Iterable[Any]) -> str:
    """For a text choice YAML turned into a boolean (``exchange_im: off`` reads as False):
    the advice to quote it, as for keys (docs/input-checks.md); else nothing."""
    if not isinstance(got, bool):
        return ""
    words = [a for a in allowed if isinstance(a, str) and _YAML_BOOLS.get(a.lower()) is got]
    if not words:
        return ""
    field = _field(path) if path else "value"
    return (f"; YAML reads an unquoted {words[0]} as a boolean: quote it "
            f"({field}: \"{words[0]}\")")


def _label(path: Path_) -> str:
    """How to name the value at ``path`` in a message: 'retries', item 2 of 'clients'."""
    if not path:
        return "the document"
    last = path[-1]
    if isinstance(last, int):
        return f"item {last + 1} of " + (f"'{_field(path[:-1])}'" if path[:-1] else "the document")
    return f"'{last}'"


def _json_type(value: Any) -> str:
    """The JSON Schema type name of a YAML value."""
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number"}.get(type(value), "null")


def _type_words(t: Any) -> str:
    types = t if isinstance(t, list) else [t]
    return " or ".join(_TYPE_WORDS.get(x, x) for x in types)


def schema_errors(doc: Document, instance: Any, validator: jsonschema.protocols.Validator,
                  context: Callable[[Path_], str], base: Path_ = (),
                  skip: Callable[[Path_, Any], bool] | None = None) -> list[InputError]:
    """Validate ``instance`` (found at ``base`` in ``doc``) and word every error."""
    out: list[InputError] = []
    if _fast_check(validator.schema)(instance):  # certainly valid: skip jsonschema (runner.fastschema)
        return out
    for err in validator.iter_errors(instance):
        path = tuple(base) + tuple(err.absolute_path)
        if skip and skip(path, err):
            continue
        ctx = context(path)
        in_ctx = f" in {ctx}" if ctx else ""
        schema = err.schema if isinstance(err.schema, dict) else {}
        v = err.validator
        if "propertyNames" in err.schema_path and isinstance(err.instance, str):
            # a bad key (host name, alias...): jsonschema points at the map; point at the key
            why = schema.get("x-error") or "is not a valid name"
            out.append(doc.error(f"'{err.instance}' {why}{in_ctx}", path + (err.instance,), at_key=True))
            continue
        if v == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(schema.get("properties", {}))
            for key in extra_keys(schema, err.instance):
                if isinstance(schema.get("additionalProperties"), dict):
                    continue
                kctx = context(path + (key,))
                out.append(doc.error(f"unknown key '{key}'" + (f" in {kctx}" if kctx else "")
                                     + _suggest(str(key), allowed), path + (key,), at_key=True))
            continue
        if v == "pattern" and "x-error-pattern" in schema:  # the format's message, not the type's
            out.append(doc.error(f"{_label(path)} {schema['x-error-pattern']}{in_ctx}", path))
            continue
        if "x-error" in schema and v not in ("required",):
            out.append(doc.error(f"{_label(path)} {schema['x-error']}{in_ctx}", path))
            continue
        if v == "required":
            missing = [k for k in err.validator_value if not (isinstance(err.instance, dict) and k in err.instance)]
            what = ctx or _label(path)
            for k in missing:
                out.append(doc.error(f"{what} is missing required key '{k}'", path))
            continue
        if v == "type":
            msg = f"{_label(path)} must be {_type_words(err.validator_value)}"
        elif v == "enum":
            msg = (f"{_label(path)} must be one of " + ", ".join(str(x) for x in err.validator_value)
                   + f" (got {err.instance!r})")
            in_ctx += _suggest(str(err.instance), map(str, err.validator_value)) \
                or _quote_advice(path, err.instance, err.validator_value)
        elif v == "const":
            msg = f"{_label(path)} must be {err.validator_value!r} (got {err.instance!r})"
        elif v in ("minimum", "exclusiveMinimum"):
            msg = f"{_label(path)} must be at least {err.validator_value} (got {err.instance!r})"
        elif v in ("maximum", "exclusiveMaximum"):
            msg = f"{_label(path)} must be at most {err.validator_value} (got {err.instance!r})"
        elif v == "minItems":
            msg = f"{_label(path)} must not be empty" if err.validator_value == 1 else \
                f"{_label(path)} needs at least {err.validator_value} items"
        elif v == "minLength":
            msg = f"{_label(path)} must not be empty"
        elif v == "pattern":
            msg = f"{_label(path)} has an unexpected form: {err.instance!r}"
        elif v in ("oneOf", "anyOf"):
            best = jsonschema.exceptions.best_match(err.context) if err.context else None
            msg = f"{_label(path)} is not valid" + (f": {best.message}" if best else "")
        else:
            msg = f"{_label(path)}: {err.message}"
        out.append(doc.error(msg + in_ctx, path))
    return out


_fast_checks: dict[int, tuple[Any, Callable[[Any], bool]]] = {}


def _fast_check(schema: Any) -> Callable[[Any], bool]:
    """The compiled yes-check of a schema (cached per schema object)."""
    hit = _fast_checks.get(id(schema))
    if hit is None or hit[0] is not schema:
        hit = _fast_checks[id(schema)] = (schema, compile_check(schema))
    return hit[1]


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    return validator_class(schema)(schema)


# -- playbooks ----------------------------------------------------------------

def _play_name(data: Any, i: int) -> str:
    if isinstance(data, list) and i < len(data) and isinstance(data[i], dict) and isinstance(data[i].get("name"), str):
        return data[i]["name"]
    return f"play {i + 1}"


def _playbook_context(data: Any) -> Callable[[Path_], str]:
    def context(path: Path_) -> str:
        if len(path) >= 3 and path[1] == "steps" and isinstance(path[2], int):
            try:
                name = data[path[0]]["steps"][path[2]].get("name")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = None
            return f"step '{name}'" if isinstance(name, str) else f"step {path[2] + 1} of {_play_name(data, path[0])!r}"
        if len(path) == 1 and not (isinstance(data, list) and isinstance(data[path[0]], dict)):
            return ""  # the item itself is not a play: "item 2 of the document must be a mapping"
        if len(path) >= 1 and isinstance(path[0], int):
            return f"play '{_play_name(data, path[0])}'"
        return ""
    return context


def _pattern(value: Any) -> str:
    if value is None:
        return "all"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _serial(value: Any, step_kinds: set[str]) -> Serial | None:
    if value is None:
        return None
    auto_over = "users" if "user" in step_kinds or not step_kinds else "hosts"

    def size_of(v: Any) -> dict[str, Any]:
        if isinstance(v, str) and v.endswith("%"):
            return {"percent": float(v[:-1])}
        return {"size": int(v)}

    if isinstance(value, dict):
        over = value.get("over") or ("users" if value.get("attribute") else auto_over)
        extra = size_of(value["size"]) if "size" in value else {}
        return Serial(over=over, attribute=value.get("attribute"),
                      order=tuple(str(o) for o in value.get("order") or ()), **extra)
    return Serial(over=auto_over, **size_of(value))


def fingerprint(module: str, args: Any, when: Any, play_vars: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a step's definition (editing it changes this)."""
    canon = json.dumps({"module": module, "args": args, "when": when, "vars": play_vars},
                       sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _template_errors(doc: Document, value: Any, path: Path_, ctx: str) -> list[InputError]:
    errors: list[InputError] = []
    if isinstance(value, str) and is_template(value):
        problem = check_syntax(value)
        if problem:
            errors.append(doc.error(f"template syntax error in {ctx}: {problem}", path))
    elif isinstance(value, dict):
        for k, v in value.items():
            errors += _template_errors(doc, v, path + (k,), ctx)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            errors += _template_errors(doc, v, path + (i,), ctx)
    return errors


def load_playbook(path: str | os.PathLike[str]) -> Playbook:
    """Parse and validate a playbook file; raise InputError/InputErrors (exit 4) with every problem."""
    from runner.steps.registry import all_steps

    doc = read_yaml(path)
    data = doc.data
    if data is None:
        raise InputError("the playbook is empty; expected a list of plays", doc.file, 1, 1)
    context = _playbook_context(data)
    modules = all_steps()

    def skip(p: Path_, err: Any) -> bool:
        # Keys of a step that are not keywords are module keys: checked below, with better words.
        return len(p) == 4 and p[1] == "steps" and p[3] not in STEP_KEYWORDS

    errors = schema_errors(doc, data, _validator(load_schema("playbook")), context, skip=skip)
    if not isinstance(data, list):
        raise InputErrors(errors or [doc.error("the playbook must be a list of plays")])

    plays: list[Play] = []
    step_names: dict[str, Path_] = {}
    for pi, pdata in enumerate(data):
        if not isinstance(pdata, dict):
            continue
        play_vars = dict(pdata.get("vars") or {}) if isinstance(pdata.get("vars"), dict) else {}
        errors += vars_errors(doc, (pi, "vars"), pdata.get("vars"))
        steps: list[Step] = []
        kinds: set[str] = set()
        for si, sdata in enumerate(pdata.get("steps") or [] if isinstance(pdata.get("steps"), list) else []):
            spath: Path_ = (pi, "steps", si)
            if not isinstance(sdata, dict):
                continue
            name = sdata.get("name")
            label = f"step '{name}'" if isinstance(name, str) else context(spath)
            if isinstance(name, str):
                if name in step_names:
                    errors.append(doc.error(f"duplicate step name '{name}' (first used at "
                                            f"{doc.where(step_names[name] + ('name',))}); step names must be unique",
                                            spath + ("name",)))
                else:
                    step_names[name] = spath
            module_keys = [k for k in sdata if k not in STEP_KEYWORDS]
            found = [k for k in module_keys if k in modules]
            for k in module_keys:
                if k in modules:
                    continue
                close_kw = difflib.get_close_matches(str(k), STEP_KEYWORDS, n=1, cutoff=0.75)
                if close_kw or found:
                    errors.append(doc.error(f"unknown key '{k}' in {label}" + _suggest(str(k), STEP_KEYWORDS + tuple(modules)),
                                            spath + (k,), at_key=True))
                else:
                    known = ", ".join(sorted(modules)) or "(none)"
                    errors.append(doc.error(f"unknown step module '{k}' in {label}" + _suggest(str(k), modules)
                                            + f"; known modules: {known}", spath + (k,), at_key=True))
            if not module_keys:
                known = ", ".join(sorted(modules)) or "(none)"
                errors.append(doc.error(f"{label} names no step module; known modules: {known}", spath))
            if len(found) > 1:
                errors.append(doc.error(f"{label} names more than one step module: {', '.join(found)}",
                                        spath + (found[1],), at_key=True))
            if len(found) != 1:
                continue
            module = found[0]
            cls = modules[module]
            kinds.add(cls.target)
            args = sdata.get(module)
            args = {} if args is None else args
            if isinstance(args, dict):
                args_ctx = f"the arguments of {label} ({module})"
                errors += schema_errors(
                    doc, args, _validator(cls.args_schema), lambda p, c=args_ctx: c, base=spath + (module,),
                    skip=lambda p, err: is_template(err.instance))
                errors += _template_errors(doc, args, spath + (module,), label)
                errors += _dn_errors(doc, spath + (module,), args, DN_ARGS)
            else:  # a list or a string would be dropped silently: the step would run with defaults
                errors.append(doc.error(f"the arguments of {label} ({module}) must be a mapping such as "
                                        f"{{option: value}} (or {{}} for none), not "
                                        f"{_TYPE_WORDS.get(_json_type(args), type(args).__name__)}",
                                        spath + (module,)))
            when = sdata.get("when")
            if isinstance(when, str):
                problem = check_syntax(when if is_template(when) else "{{ " + when + " }}")
                if problem:
                    errors.append(doc.error(f"template syntax error in 'when' of {label}: {problem}",
                                            spath + ("when",)))
            if isinstance(when, bool):
                when = "true" if when else "false"
            tags = sdata.get("tags") or ()
            tags = (tags,) if isinstance(tags, str) else tuple(str(t) for t in tags) if isinstance(tags, list) else ()
            key_node, _ = doc.nodes(spath + ("name",))
            if not isinstance(name, str):
                continue
            try:
                steps.append(Step(
                    name=name, module=module, args=args if isinstance(args, dict) else {},
                    when=when if isinstance(when, str) else None, tags=tags,
                    retries=sdata.get("retries"), delay=sdata.get("delay"), throttle=sdata.get("throttle"),
                    ignore_errors=bool(sdata.get("ignore_errors", False)),
                    fingerprint=fingerprint(module, args, when, play_vars),
                    line=key_node.start_mark.line + 1 if key_node is not None else None))
            except (TypeError, ValueError):
                continue  # already reported by the schema
        try:
            serial = _serial(pdata.get("serial"), kinds)
        except (TypeError, ValueError, KeyError):
            serial = None  # reported by the schema
        _, pnode = doc.nodes((pi,))
        plays.append(Play(
            name=_play_name(data, pi), hosts=_pattern(pdata.get("hosts")), users=_pattern(pdata.get("users")),
            vars=play_vars, serial=serial, max_fail_percentage=pdata.get("max_fail_percentage"),
            steps=tuple(steps), line=pnode.start_mark.line + 1 if pnode is not None else None))
    if errors:
        raise InputErrors(_sorted(errors))
    return Playbook(path=doc.file, plays=tuple(plays))


def _sorted(errors: list[InputError]) -> list[InputError]:
    unique: dict[str, InputError] = {}
    for e in errors:
        unique.setdefault(str(e), e)
    return sorted(unique.values(), key=lambda e: (e.file or "", e.line or 0, e.col or 0))


# -- inventories --------------------------------------------------------------

def _inventory_context(path: Path_) -> str:
    label = ""
    i = 0
    while i < len(path):
        part = path[i]
        if i == 0 and part == "all":
            label = "group 'all'"
        elif i == 0 and part == "users" and len(path) > 1:
            return f"user '{path[1]}'"
        elif part == "children" and i + 1 < len(path):
            label = f"group '{path[i + 1]}'"
            i += 1
        elif part == "hosts" and i + 1 < len(path):
            label = f"host '{path[i + 1]}'"
            i += 1
        elif part == "lab" and i == 0:
            label = "the lab plugin settings"
        i += 1
    return label


# CONTROL_NODE_PATH_VARS (runner.model): the variables naming a file or folder on the control
# node, relative to the inventory file's folder whatever the current directory.


def _resolve_control_paths(vars_: dict[str, Any], base: Path) -> dict[str, Any]:
    """``vars_`` with the CONTROL_NODE_PATH_VARS made absolute against ``base`` (templates stay)."""
    for name in CONTROL_NODE_PATH_VARS:
        value = vars_.get(name)
        if isinstance(value, str) and value and "{{" not in value:
            full = os.path.expanduser(value)
            full = full if os.path.isabs(full) else str((base / full).resolve())
            if full != value:
                vars_ = dict(vars_)
                vars_[name] = full
    return vars_


def _local_package_errors(doc: Document, vars_path: Path_, vars_: Any, base: Path) -> list[InputError]:
    """``messenger_package_local`` of one scope must name a readable file on the control node:
    a missing package would otherwise fail every client's upgrade, one by one, mid-night."""
    if not isinstance(vars_, dict) or "messenger_package_local" not in vars_:
        return []
    value = vars_["messenger_package_local"]
    where = tuple(vars_path) + ("messenger_package_local",)
    if not isinstance(value, str) or not value.strip():
        return [doc.error("messenger_package_local must be the path of the package file on the control node "
                          "(relative paths: to the inventory's folder)", where)]
    if "{{" in value:
        return []
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        return [doc.error(f"messenger_package_local {value!r} {why} (looked for {path}); it must be the "
                          "Windows Messenger package file on the control node, pushed to key-logon clients",
                          where)]
    if not os.access(path, os.R_OK):
        return [doc.error(f"messenger_package_local {value!r}: {path} cannot be read", where)]
    return []


class _InventoryBuilder:
    """Walks the validated inventory data into groups, hosts and users."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.base = Path(doc.file).resolve().parent
        self.errors: list[InputError] = []
        self.group_defs: dict[str, tuple[dict[str, Any], Path_]] = {}
        self.group_refs: list[tuple[str, str, Path_]] = []      # (child, parent, path)
        self.children: dict[str, list[str]] = {}
        self.own_hosts: dict[str, list[str]] = {}
        self.host_defs: dict[str, tuple[dict[str, Any], Path_]] = {}
        self.host_order: dict[str, None] = {}
        self.host_groups: dict[str, list[str]] = {}

    def visit_group(self, name: str, gdef: dict[str, Any], path: Path_) -> None:
        if name in self.group_defs:
            self.errors.append(self.doc.error(
                f"group '{name}' is defined twice (first at {self.doc.where(self.group_defs[name][1], at_key=True)}); "
                "refer to it elsewhere with an empty value (`{name}:`)".replace("{name}", name), path, at_key=True))
            return
        self.group_defs[name] = (gdef, path)
        self.children.setdefault(name, [])
        self.own_hosts.setdefault(name, [])
        for hname, hdef in (gdef.get("hosts") or {}).items():
            hname = str(hname)
            hpath = path + ("hosts", hname)
            self.own_hosts[name].append(hname)
            self.host_order.setdefault(hname, None)
            self.host_groups.setdefault(hname, []).append(name)
            if hdef:  # a non-empty entry defines the host's settings
                if hname in self.host_defs:
                    self.errors.append(self.doc.error(
                        f"host '{hname}' is defined twice (first at {self.doc.where(self.host_defs[hname][1], at_key=True)}); "
                        "host names must be unique", hpath, at_key=True))
                else:
                    self.host_defs[hname] = (hdef, hpath)
        for cname, cdef in (gdef.get("children") or {}).items():
            cname = str(cname)
            cpath = path + ("children", cname)
            self.children[name].append(cname)
            if cdef is None:
                self.group_refs.append((cname, name, cpath))
            else:
                self.visit_group(cname, cdef, cpath)

    def check_groups(self) -> None:
        for child, parent, path in self.group_refs:
            if child not in self.group_defs:
                self.errors.append(self.doc.error(
                    f"group '{child}' (child of '{parent}') is not defined anywhere"
                    + _suggest(child, self.group_defs) + "; define it with a mapping (even {})", path, at_key=True))
        # cycles (only possible through references)
        state: dict[str, int] = {}
        for g in list(self.group_defs):
            if state.get(g) is None:
                self._cycles(g, [g], state)

    def _cycles(self, g: str, trail: list[str], state: dict[str, int]) -> None:
        """Depth-first from group ``g``: a group cycle is an error at the group that closes it.
        (A method, not a closure calling itself: that was a reference cycle holding the
        builder, its document and the whole node tree until a collection.)"""
        state[g] = 1
        for c in self.children.get(g, []):
            if state.get(c) == 1:
                cycle = trail[trail.index(c):] + [c] if c in trail else [g, c]
                self.errors.append(self.doc.error("group cycle: " + " -> ".join(cycle),
                                                  self.group_defs[g][1], at_key=True))
            elif c in self.group_defs and state.get(c) is None:
                self._cycles(c, trail + [c], state)
        state[g] = 2

    def depths(self) -> dict[str, int]:
        depth = {"all": 0}
        for _ in range(len(self.group_defs) + 1):
            changed = False
            for g, kids in self.children.items():
                if g not in depth:
                    continue
                for c in kids:
                    if depth.get(c, -1) < depth[g] + 1:
                        depth[c] = depth[g] + 1
                        changed = True
            if not changed:
                break
        return depth

    def ancestors(self) -> dict[str, set[str]]:
        parents: dict[str, set[str]] = {}
        for g, kids in self.children.items():
            for c in kids:
                parents.setdefault(c, set()).add(g)
        result: dict[str, set[str]] = {}
        for g in self.group_defs:
            seen: set[str] = set()
            stack = [g]
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                stack.extend(parents.get(x, ()))
            result[g] = seen
        return result


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Parse and validate an inventory (or run the lab plugin); raise InputError/InputErrors (exit 4)."""
    with collection_paused():
        return _load_inventory(path)


def _load_inventory(path: str | os.PathLike[str]) -> Inventory:
    doc = read_yaml(path)
    data = doc.data
    if data is None:
        raise InputError("the inventory is empty; expected 'all:' and 'users:'", doc.file, 1, 1)
    if isinstance(data, dict) and "plugin" in data:
        return _load_lab_plugin(doc)
    if not isinstance(data, dict):
        raise InputErrors([doc.error(f"the inventory must be a mapping with 'all:' and 'users:', "
                                     f"not {_TYPE_WORDS.get(_json_type(data), 'that')}")])
    errors = schema_errors(doc, data, _validator(_inventory_schema("static")), _inventory_context)
    if not isinstance(data, dict) or not isinstance(data.get("all", {}), (dict, type(None))):
        raise InputErrors(errors or [doc.error("the inventory must be a mapping with 'all' and 'users'")])
    if errors:
        # The structure is wrong; building the model would only add confusing follow-up errors.
        raise InputErrors(_sorted(errors))

    b = _InventoryBuilder(doc)
    b.visit_group("all", data.get("all") or {}, ("all",))
    b.check_groups()
    users_data = data.get("users") or {}
    host_names = set(b.host_order)

    depth = b.depths()
    ancestors = b.ancestors()
    order = {g: i for i, g in enumerate(b.group_defs)}
    group_vars = {g: _resolve_control_paths(dict(d.get("vars") or {}), b.base) for g, (d, _) in b.group_defs.items()}
    all_vars = group_vars.get("all", {})

    groups: dict[str, Group] = {}
    for g, (gdef, _) in b.group_defs.items():
        groups[g] = Group(name=g, hosts=tuple(dict.fromkeys(b.own_hosts[g])),
                          children=tuple(dict.fromkeys(b.children[g])), vars=group_vars[g])

    hosts: dict[str, Host] = {}
    for h in b.host_order:
        direct = b.host_groups[h]
        member = set().union(*(ancestors.get(g, {g}) for g in direct)) | {"all"}
        ordered = sorted(member, key=lambda g: (depth.get(g, 0), order.get(g, 0)))
        merged: dict[str, Any] = {}
        for g in ordered:
            merged.update(group_vars.get(g, {}))
        hdef = b.host_defs.get(h, ({}, ()))[0] or {}
        merged.update(_resolve_control_paths(dict(hdef.get("vars") or {}), b.base))
        connection = hdef.get("connection") or ("lab" if merged.get("lab_dir") else "ssh")
        hosts[h] = Host(name=h, connection=connection, address=hdef.get("address"), port=hdef.get("port"),
                        user=hdef.get("user"), groups=tuple(ordered), vars=merged)

    users: dict[str, User] = {}
    addresses: dict[str, str] = {}
    identities: dict[tuple[str, str], str] = {}
    for alias, udef in users_data.items():
        alias = str(alias)
        upath: Path_ = ("users", alias)
        clients = tuple(str(c) for c in udef.get("clients") or ())
        for ci, c in enumerate(clients):
            if c not in host_names:
                b.errors.append(doc.error(f"user '{alias}': client '{c}' is not a host in this inventory"
                                          + _suggest(c, host_names), upath + ("clients", ci)))
        home = udef.get("home_server")
        if home is not None and home not in host_names:
            b.errors.append(doc.error(f"user '{alias}': home_server '{home}' is not a host in this inventory"
                                      + _suggest(home, host_names), upath + ("home_server",)))
        addr = str(udef.get("im_address", "")).lower()
        if addr in addresses:
            b.errors.append(doc.error(f"user '{alias}' has the same im_address as user '{addresses[addr]}'; "
                                      "users must be unique", upath + ("im_address",)))
        else:
            addresses[addr] = alias
        sip_uri = udef.get("sip_uri")
        problem = validate_sip_uri(sip_uri) if isinstance(sip_uri, str) else None
        if problem:  # the check the run makes (runner.lcs.mapping), so the two never disagree
            b.errors.append(doc.error(f"'sip_uri' must be a SIP URI like sip:alice@contoso.com in user '{alias}': "
                                      f"{problem}", upath + ("sip_uri",)))
        elif isinstance(sip_uri, str) and "%" in sip_uri:
            # valid SIP (a %-escape), but the user's enable finds them by it in an ldifde filter on
            # a cmd.exe line, where % cannot be written: the user would fail every night
            b.errors.append(doc.error(f"'sip_uri' of user '{alias}' has a %-escape ({sip_uri!r}): LCS is asked "
                                      "for a user by their URI on a cmd.exe command line, where '%' cannot be "
                                      "passed; give the user a URI without one", upath + ("sip_uri",)))
        # an AD GUID is the user's LCS key (UserInstanceID) and their key in the state store, a
        # SID their hive: two users with one of them would be enabled, imported and disabled
        # as each other (found a night late, when the second one's wave moved)
        for field_, norm in (("ad_guid", lambda v: str(_braced_guid(v)).lower()), ("sid", lambda v: str(v).upper())):
            value = udef.get(field_)
            if value is None:
                continue
            key = (field_, norm(value))
            if key in identities:
                b.errors.append(doc.error(f"user '{alias}' has the same {field_} as user '{identities[key]}'; "
                                          f"each person has their own {field_}", upath + (field_,)))
            else:
                identities[key] = alias
        wave = udef.get("wave")
        users[alias] = User(alias=alias, im_address=udef["im_address"], clients=clients,
                            display_name=udef.get("display_name"), sid=udef.get("sid"),
                            ad_guid=_braced_guid(udef.get("ad_guid")), sip_uri=udef.get("sip_uri"), home_server=home,
                            wave=None if wave is None else str(wave), vars=dict(udef.get("vars") or {}))
    scopes: list[tuple[Path_, Any]] = [(path + ("vars",), gdef.get("vars")) for gdef, path in b.group_defs.values()]
    scopes += [(hpath + ("vars",), (hdef or {}).get("vars")) for hdef, hpath in b.host_defs.values()]
    scopes += [(("users", str(a), "vars"), (u or {}).get("vars")) for a, u in users_data.items()]
    for vpath, vars_ in scopes:
        b.errors.extend(vars_errors(doc, vpath, vars_, b.base))
    if b.errors:
        raise InputErrors(_sorted(b.errors))
    return Inventory(path=doc.file, hosts=hosts, groups=groups, users=users, vars=all_vars)


#: Variables that hold an LDAP distinguished name (they go into wmic and ldifde lines).
DN_VARS = ("lcs_home_server_dn", "exchange_config_dn")
#: Step arguments that hold one.
DN_ARGS = ("home_server_dn",)


def vars_errors(doc: Document, vars_path: Path_, vars_: Any, base: Path | None = None) -> list[InputError]:
    """The checked variables of one scope, wherever variables are set (an inventory's
    groups, hosts and users, a play's ``vars``, ``-e @file``): ``sip_mapping``, the DN
    variables and, with ``base`` (the inventory's folder), ``messenger_package_local``."""
    errors = _sip_mapping_errors(doc, vars_path, vars_) + _dn_errors(doc, vars_path, vars_, DN_VARS)
    errors += _signin_var_errors(doc, vars_path, vars_)
    if base is not None:
        errors += _local_package_errors(doc, vars_path, vars_, base)
    return errors


def _dn_errors(doc: Document, path: Path_, values: Any, names: Iterable[str]) -> list[InputError]:
    """``names`` of the mapping ``values`` that are set and are not DNs (templates are left to the run)."""
    if not isinstance(values, dict):
        return []
    errors = []
    for name in names:
        value = values.get(name)
        if name not in values or value is None or (isinstance(value, str) and "{{" in value):
            continue
        problem = dn_problem(value)
        if problem:
            errors.append(doc.error(f"{name} {problem}: it must be an LDAP distinguished name such as "
                                    "CN=LC Services,CN=Microsoft,DC=contoso,DC=com",
                                    tuple(path) + (name,)))
    return errors


#: A sip_mapping template's per-address field written as a Jinja expression (``{{ local }}``).
#: (``{{ domain }}`` or ``{{ im_domain }}`` may well be an inventory variable.)
_JINJA_FIELD = re.compile(r"\{\{-?\s*(local|address)\s*-?\}\}")


def _sip_mapping_errors(doc: Document, vars_path: Path_, vars_: Any) -> list[InputError]:
    """The ``sip_mapping`` variable of one scope, checked (runner.lcs.mapping.rule_problems).

    A wrong rule fails no task: it leaves contacts unmapped for every user, so
    it is an input error at its line. A Jinja template (``{{ ... }}``) is
    checked when it is rendered instead.
    """
    if not isinstance(vars_, dict) or "sip_mapping" not in vars_:
        return []
    rule = vars_["sip_mapping"]
    base = tuple(vars_path) + ("sip_mapping",)
    template = rule.get("template") if isinstance(rule, dict) else None
    jinja_fields = [f for f in (_JINJA_FIELD.findall(template) if isinstance(template, str) else [])
                    if f not in vars_]
    if jinja_fields:  # "sip:{{local}}@{domain}": Ansible's braces around the rule's own field
        name = jinja_fields[0]
        return [doc.error(f"sip_mapping.template writes {{{{{name}}}}}: the rule's fields take single braces, "
                          f"{{{name}}} (double braces are a Jinja expression, rendered from variables "
                          f"before the rule applies; a variable '{name}' meant here must be set beside "
                          "sip_mapping)", base + ("template",))]
    if "{{" in json.dumps(rule, default=str):
        return []
    return [doc.error(message, base + tuple(sub)) for sub, message in rule_problems(rule)]


def _signin_var_errors(doc: Document, vars_path: Path_, vars_: Any) -> list[InputError]:
    """``lcs_pool_fqdn`` and ``lcs_transport`` of one scope (runner.steps._signin.var_problems)
    at their lines: a wrong one would fail every client's sign-in step after its upgrade."""
    if not isinstance(vars_, dict):
        return []
    from runner.steps._signin import var_problems
    return [doc.error(message, tuple(vars_path) + (name,)) for name, message in var_problems(vars_)]


def _braced_guid(value: Any) -> Any:
    """An AD GUID in the braced form LCS keys users by (``UserInstanceID``): Windows tools
    print it with or without braces, and administrators paste either."""
    if isinstance(value, str) and value and not value.startswith("{"):
        return "{" + value + "}"
    return value


def inventory_warnings(inventory: Inventory) -> list[str]:
    """What is valid but will not migrate as an administrator expects (``runner validate``
    prints these): users without client machines have no contact list to export, so the
    runner keeps them on Exchange IM unless the playbook has users recreate contacts."""
    return [f"user '{u.alias}' has no clients: no machine to export their contact list from, so they "
            "stay on Exchange IM (unless the playbook has users recreate their contacts)"
            for u in inventory.users.values() if not u.clients]


def lab_plugin_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``lab:`` settings of a ``plugin: lab`` inventory (defaults filled in, ``dir`` as
    written), or None for an ordinary inventory. Reads only; InputError when invalid."""
    doc = read_yaml(path)
    if not (isinstance(doc.data, dict) and "plugin" in doc.data):
        return None
    return _lab_settings(doc)


def _lab_settings(doc: Document) -> dict[str, Any]:
    errors = schema_errors(doc, doc.data, _validator(_inventory_schema("lab_plugin")), _inventory_context)
    if errors:
        raise InputErrors(_sorted(errors))
    return {**LAB_DEFAULTS, **(doc.data.get("lab") or {})}


class LabNotGenerated(InputError):
    """A ``plugin: lab`` inventory whose lab does not exist yet (``apply`` or ``lab init`` makes it)."""


def _load_lab_plugin(doc: Document) -> Inventory:
    """``plugin: lab``: the inventory of the lab the plugin names, which must exist.

    Reading never writes: the lab is generated by ``runner apply`` (before it
    loads the inventory) or ``runner lab init``, not by loading this file.
    """
    settings = _lab_settings(doc)
    generated = Path(settings["dir"]).absolute() / "inventory.yml"
    if not generated.is_file():
        raise LabNotGenerated(f"the lab in {settings['dir']} has not been generated yet: `runner apply` "
                              f"creates it on first use, or `runner lab init --dir {settings['dir']}`",
                              doc.file)
    inv_doc = read_yaml(generated)
    if isinstance(inv_doc.data, dict) and "plugin" in inv_doc.data:
        raise InputError("the lab generator returned another plugin inventory", str(generated))
    return load_inventory(generated)
