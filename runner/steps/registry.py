"""Discover step modules in runner/steps/ by their ``name``."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from runner.steps.base import StepModule


@lru_cache(maxsize=1)
def _discovered() -> dict[str, type[StepModule]]:
    import runner.steps as pkg

    found: dict[str, type[StepModule]] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in ("base", "registry") or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"runner.steps.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, StepModule) and obj is not StepModule and obj.name:
                found[obj.name] = obj
    return found


_extra: dict[str, type[StepModule]] = {}


def register(cls: type[StepModule]) -> type[StepModule]:
    """Register a step module defined outside runner/steps/ (tests use this)."""
    _extra[cls.name] = cls
    return cls


def all_steps() -> dict[str, type[StepModule]]:
    """Every known step module by name."""
    return {**_discovered(), **_extra}


def get_step(name: str) -> type[StepModule] | None:
    """The step module called ``name``, or None."""
    return all_steps().get(name)
