"""The StepContext the engine hands a step for one task, and the variables it sees.

Variables, lowest precedence first: inventory ``all.vars``, the host's merged
group + host vars (host tasks), play vars, the user's own ``vars`` (user
tasks), the command line's ``-e`` extra vars, then ``host``/``user`` (dicts of
the target's fields) and ``inventory_hostname``. Step arguments are templated with those variables
(runner.templating, sandboxed and strict) before the step sees them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from runner.connections.base import Connection
from runner.connections.registry import ConnectionPool
from runner.model import Host, Inventory, Play, User
from runner.plan import Task
from runner.state import StateStore, TaskRecord
from runner.steps.base import Artifacts
from runner.templating import render


def _as_dict(obj: Host | User) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out


def task_variables(inventory: Inventory, play: Play, task: Task) -> dict[str, Any]:
    """The variables visible to ``task`` (see the module docstring for precedence)."""
    variables: dict[str, Any] = dict(inventory.vars)
    target = task.target
    if isinstance(target, Host):
        variables.update(target.vars)
        variables.update(play.vars)
        variables.update(play.extra_vars)
        variables["host"] = _as_dict(target)
        variables["inventory_hostname"] = target.name
    else:
        variables.update(play.vars)
        variables.update(target.vars)
        variables.update(play.extra_vars)
        variables["user"] = _as_dict(target)
    if task.wave is not None:
        variables.setdefault("wave", task.wave)
    return variables


class TaskContext:
    """The engine's StepContext for one task (see runner.steps.base.StepContext)."""

    def __init__(self, *, task: Task, variables: Mapping[str, Any], inventory: Inventory, check: bool,
                 run_id: str, artifacts: Artifacts, pool: ConnectionPool, store: StateStore,
                 facts_overlay: Mapping[str, Mapping[str, Any]] | None = None,
                 predicted: Mapping[tuple[str, str], list[TaskRecord]] | None = None,
                 extra_vars: Mapping[str, Any] | None = None) -> None:
        self.task = task
        self.vars = variables
        self.extra_vars = dict(extra_vars or {})  # ``-e``: over every other variable (server_vars too)
        self.inventory = inventory
        self.check = check
        self.run_id = run_id
        self.artifacts = artifacts
        self._pool = pool
        self._store = store
        self._facts_overlay = facts_overlay if facts_overlay is not None else {}
        self._predicted = predicted if predicted is not None else {}
        self._args: Mapping[str, Any] | None = None

    @property
    def args(self) -> Mapping[str, Any]:
        """The step's arguments, templated on first use (a TemplateError fails the task)."""
        if self._args is None:
            self._args = render(dict(self.task.step.args), self.vars)
        return self._args

    def connection(self, host: str) -> Connection:
        """The run's shared connection to ``host``."""
        return self._pool.get(host)

    def previous(self, module: str, target: str) -> list[TaskRecord]:
        """Finished outcomes of ``module`` for ``target`` in this or earlier runs, newest first."""
        return self._store.previous(module, target)

    def predicted(self, module: str, target: str) -> list[TaskRecord]:
        """In ``--check``: the ok/changed outcomes of ``module`` for ``target`` that this check
        predicted earlier (newest first), which ``previous`` cannot see since a check records
        nothing; empty otherwise."""
        return list(self._predicted.get((module, target), ())) if self.check else []

    def facts(self, host: str) -> Mapping[str, Any] | None:
        """Facts gathered for ``host`` in this run (even before commit) or an earlier one."""
        found = self._facts_overlay.get(host)
        if found is not None:
            return found
        return self._store.facts(host)
