"""Planner: playbook x inventory -> ordered tasks, cut into waves.

(Data types first; the planning function is filled in by the loader/planner work.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.model import Host, Play, Step, User


@dataclass(frozen=True)
class Task:
    """One unit of work: a step applied to one host or one user.

    ``key`` is stable across runs of the same playbook + inventory
    (``"<play index>/<step name>/<host|user>:<name>"``) and is what the
    checkpoint store records outcomes under.
    """

    key: str
    play_index: int
    step: Step
    kind: str                 # "host" or "user"
    target: Host | User
    wave: str | None = None

    @property
    def target_name(self) -> str:
        return self.target.name if isinstance(self.target, Host) else self.target.alias


@dataclass(frozen=True)
class Wave:
    """A batch of a play (``serial:``); a play without serial has one wave named None.
    Steps run in order; within a step, the wave's tasks run concurrently."""

    name: str | None
    tasks: tuple[Task, ...] = ()


@dataclass(frozen=True)
class PlannedPlay:
    """A play with its waves of tasks, in execution order."""

    index: int
    play: Play
    waves: tuple[Wave, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The whole ordered plan of a run."""

    plays: tuple[PlannedPlay, ...] = field(default_factory=tuple)

    def tasks(self) -> list[Task]:
        return [t for p in self.plays for w in p.waves for t in w.tasks]
