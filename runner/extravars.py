"""``-e/--extra-vars`` and ``--limit @FILE``: values the command line adds to a run.

Extra variables are Ansible's: ``-e key=value`` (several pairs in one ``-e`` separated by
spaces, values are strings), ``-e '{"key": 1}'`` (JSON), and ``-e @vars.yml`` (a YAML
mapping, read with the same reader and limits as playbooks and inventories, so its
errors carry file:line). Wherever they come from, the variables the loader checks
(``sip_mapping``, the DNs, ``lcs_pool_fqdn``, ``lcs_transport``) are checked like the
inventory's (runner.loader.vars_errors): a bad ``-e`` value is exit 5, a bad ``@file`` exit 4. They win
over every other variable (runner.context) and are part of each step's fingerprint when
given, so a resumed run re-runs the steps under new values.

``--limit @FILE`` reads one host, group, user or ``wave:NAME`` a line (blank lines and
``#`` comments skipped): the retry file a run with failures leaves is such a file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

from runner.errors import InputError, InputErrors, OptionsError
from runner.model import Playbook

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_extra_vars(values: Iterable[str]) -> dict[str, Any]:
    """Merge every ``-e`` value, later ones winning (as Ansible does)."""
    out: dict[str, Any] = {}
    for value in values:
        out.update(_one(value))
    from runner.loader import Document, vars_errors
    for name, value in out.items():  # checked as wherever variables are set (runner.loader.vars_errors)
        problems = [e.message for e in vars_errors(Document("-e", {name: value}, None), (), {name: value})]
        if problems:
            raise OptionsError(f"-e {name}: " + "; ".join(problems))
    return out


def _one(value: str) -> dict[str, Any]:
    text = value.strip()
    if text.startswith("@"):
        return _from_file(text[1:])
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise OptionsError(f"-e {value!r}: not a JSON object ({exc})") from None
        if not isinstance(data, dict):
            raise OptionsError(f"-e {value!r}: a JSON object is needed")
        return _checked_names(data, f"-e {value!r}")
    try:  # not POSIX: backslashes stay (\\deploy\wm51.msi), quotes only group words
        words = shlex.split(text, posix=False)
    except ValueError as exc:
        raise OptionsError(f"-e {value!r}: {exc}") from None
    if not words:
        raise OptionsError(f"-e {value!r} names no variable; give key=value, a JSON object or @FILE")
    out: dict[str, Any] = {}
    for word in words:
        key, sep, val = word.partition("=")
        if not sep:
            raise OptionsError(f"-e {value!r}: {word!r} is not key=value (words are separated by spaces: "
                               f"a variable name has none; or give a JSON object, or @FILE)")
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        out[key] = val
    return _checked_names(out, f"-e {value!r}")


def _checked_names(data: Mapping[Any, Any], where: str) -> dict[str, Any]:
    bad = [k for k in data if not isinstance(k, str) or not _NAME.match(k)]
    if bad:
        raise OptionsError(f"{where}: {', '.join(map(repr, bad))} is not a variable name "
                           "(letters, digits and _, not starting with a digit)")
    return dict(data)


def _from_file(path: str) -> dict[str, Any]:
    from runner.loader import read_yaml, vars_errors

    if not path:
        raise OptionsError("-e @: give the file after @ (-e @vars.yml)")
    doc = read_yaml(path)  # InputError with file:line, exit 4, like a bad playbook
    data = doc.data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"extra vars must be a mapping of names to values, not a {type(data).__name__}",
                         doc.file, 1, 1)
    errors = [doc.error(f"{k!r} is not a variable name (letters, digits and _, not starting with a digit)",
                        (k,)) for k in data if not isinstance(k, str) or not _NAME.match(k)]
    errors += vars_errors(doc, (), data)
    if errors:
        raise InputErrors(errors)
    return dict(data)


def with_extra_vars(playbook: Playbook, extra: Mapping[str, Any]) -> Playbook:
    """``playbook`` with ``extra`` on every play, each step's fingerprint covering them (no
    change at all without extra vars, so a run without -e resumes as before)."""
    if not extra:
        return playbook
    canon = json.dumps(dict(extra), sort_keys=True, default=str, ensure_ascii=False)
    plays = []
    for play in playbook.plays:
        steps = tuple(dataclasses.replace(
            s, fingerprint=hashlib.sha256(f"{s.fingerprint}\0{canon}".encode("utf-8")).hexdigest())
            for s in play.steps)
        plays.append(dataclasses.replace(play, steps=steps, extra_vars=dict(extra)))
    return dataclasses.replace(playbook, plays=tuple(plays))


def expand_limit(limit: str | None) -> str | None:
    """``--limit`` with every ``@FILE`` token replaced by the names the file holds."""
    if limit is None or "@" not in limit:
        return limit
    parts: list[str] = []
    for token in limit.split(","):
        token = token.strip()
        if not token.startswith("@"):
            parts.append(token)
            continue
        path = Path(token[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise OptionsError(f"--limit @{path}: cannot read the file ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise OptionsError(f"--limit @{path}: not UTF-8 text (one name a line)") from None
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        names = [n for n in names if n]
        if not names:
            raise OptionsError(f"--limit @{path}: the file names nothing (one host, group, user or "
                               "wave:NAME a line)")
        parts += names
    return ",".join(parts)
