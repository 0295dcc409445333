"""Settings for the whole suite.

The lab's round trips run in worker processes (runner.lab.workers), where a test's patches
do not reach. So a test that patches lab code (``monkeypatch.setattr`` or ``setitem`` on a
module, class or table of ``runner.lab``) has the lab's round trips run in its own threads
(``RUNNER_LAB_WORKERS=0``), where the patch is: it tests what it patched, not an untouched
copy. The workers' own tests (tests/test_lab_workers.py) patch only the runner's side.
"""
from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from runner.lab.workers import WORKERS_ENV

_EXEMPT = ("runner.lab.workers",)


def _module_of(target: Any) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, types.ModuleType):
        return target.__name__
    if isinstance(target, type):
        return target.__module__
    return type(target).__module__


def patches_the_lab(target: Any) -> bool:
    """Whether ``target`` (what a monkeypatch call changes) is lab code or a lab table."""
    name = _module_of(target)
    if name.startswith("runner.lab") and not name.startswith(_EXEMPT):
        return True
    if not isinstance(target, (dict, list, set)):
        return False
    for mod_name, mod in list(sys.modules.items()):   # a dict or list held by a lab module
        if mod_name.startswith("runner.lab") and not mod_name.startswith(_EXEMPT) and mod is not None:
            if any(v is target for v in vars(mod).values()):
                return True
    return False


_setattr, _setitem = pytest.MonkeyPatch.setattr, pytest.MonkeyPatch.setitem


def _lab_setattr(self: pytest.MonkeyPatch, target: Any, *args: Any, **kwargs: Any) -> None:
    if patches_the_lab(target):
        self.setenv(WORKERS_ENV, "0")
    return _setattr(self, target, *args, **kwargs)


def _lab_setitem(self: pytest.MonkeyPatch, dic: Any, name: Any, value: Any) -> None:
    if patches_the_lab(dic):
        self.setenv(WORKERS_ENV, "0")
    return _setitem(self, dic, name, value)


pytest.MonkeyPatch.setattr = _lab_setattr  # type: ignore[method-assign]
pytest.MonkeyPatch.setitem = _lab_setitem  # type: ignore[method-assign]
