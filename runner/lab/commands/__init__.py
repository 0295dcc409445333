"""Emulated Windows programs of the lab's cmd.exe, registered by name.

Each program is a function ``(ctx, argv, raw) -> CommandResult`` where
``argv`` is the argument list as the Microsoft C runtime would parse it
(CommandLineToArgvW rules, after cmd.exe has processed quotes, ``^`` and
``%VAR%``), ``argv[0]`` being the program name as typed, and ``raw`` the
argument text after the program name (for programs like wmic that parse
their own command line). ``ctx`` is the lab shell's ShellContext (the host
being driven, its registry, files, services, journal and faults).
"""
from __future__ import annotations

from typing import Any, Callable

from runner.connections.base import CommandResult

Program = Callable[[Any, list[str], str], CommandResult]

PROGRAMS: dict[str, Program] = {}


def program(*names: str) -> Callable[[Program], Program]:
    """Register an emulated program under one or more names (``reg``, ``reg.exe``)."""

    def deco(fn: Program) -> Program:
        for n in names:
            PROGRAMS[n.lower()] = fn
        return fn

    return deco
