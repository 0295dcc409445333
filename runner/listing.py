"""``runner apply --list-hosts / --list-tasks / --list-tags``: what a run would do, from its plan.

Ansible's habits: who moves tonight and what will run, with ``--limit``, ``--tags``,
``--skip-tags`` and ``--start-at-step`` applied, printed from the plan alone: nothing
connects, nothing is locked or recorded. Plays, their waves and, per wave, the hosts and
users (``--list-hosts``), the steps with their tags and task counts (``--list-tasks``), or
the tags (``--list-tags``).
"""
from __future__ import annotations

import textwrap

from runner.plan import Plan, PlannedPlay, Wave, _step_kind, natural_key

WIDTH = 78


def _names(label: str, names: list[str]) -> list[str]:
    if not names:
        return []
    return textwrap.wrap(", ".join(names), WIDTH, initial_indent=f"      {label} ({len(names)}): ",
                         subsequent_indent="        ", break_on_hyphens=False,
                         break_long_words=False)


def _play_line(pp: PlannedPlay) -> str:
    """``play #2 (hosts: clients; users: all): NAME``; users only for a play with user steps (a
    play of host steps moves nobody, and its ``users`` is the default it never uses)."""
    play = pp.play
    users = f"; users: {play.users}" if any(_step_kind(step) == "user" for step in play.steps) else ""
    return f"play #{pp.index + 1} (hosts: {play.hosts}{users}): {play.name}"


def _wave_label(wave: Wave) -> str:
    return f"wave {wave.name}" if wave.name is not None else "all targets"


def _targets(wave: Wave, kind: str, early: bool = False) -> list[str]:
    """The wave's targets of ``kind``; with ``early``, the later waves' users whose contact
    lists it only saves (their machines change tonight: ``for-wave`` tasks), without them."""
    own = {t.target_name for t in wave.tasks if t.kind == kind and "/for-wave:" not in t.key}
    if early:
        return sorted({t.target_name for t in wave.tasks if t.kind == kind} - own, key=natural_key)
    return sorted(own, key=natural_key)


def list_hosts(plan: Plan) -> list[str]:
    """Per play and wave, the hosts and users the run would touch."""
    lines: list[str] = []
    hosts: set[str] = set()
    users: set[str] = set()
    for pp in plan.plays:
        lines.append(_play_line(pp))
        for wave in pp.waves:
            lines.append(f"    {_wave_label(wave)}:")
            h, u, e = _targets(wave, "host"), _targets(wave, "user"), _targets(wave, "user", early=True)
            hosts.update(h)
            users.update(u)
            lines += _names("hosts", h) + _names("users", u)
            lines += _names("users of later waves, lists saved early", e)
    lines.append(f"in all: {len(hosts)} host(s), {len(users)} user(s)")
    return lines


def list_tasks(plan: Plan) -> list[str]:
    """Per play and wave, the steps in order, with their tags and how many tasks each has."""
    lines: list[str] = []
    for pp in plan.plays:
        lines.append(_play_line(pp))
        for wave in pp.waves:
            lines.append(f"    {_wave_label(wave)}:")
            counts: dict[str, list] = {}
            for t in wave.tasks:
                entry = counts.setdefault(t.step.name, [t.step, 0, t.kind])
                entry[1] += 1
            for name, (step, n, kind) in counts.items():
                tags = f"  TAGS: [{', '.join(step.tags)}]" if step.tags else ""
                lines.append(f"      {name} ({step.module}, {n} {kind} task(s)){tags}")
    lines.append(f"in all: {len(plan.tasks())} task(s)")
    return lines


def list_tags(plan: Plan) -> list[str]:
    """The tags of each play's selected steps, and all of them."""
    lines: list[str] = []
    every: set[str] = set()
    for pp in plan.plays:
        tags = sorted({tag for w in pp.waves for t in w.tasks for tag in t.step.tags})
        every.update(tags)
        lines.append(f"{_play_line(pp)}  TAGS: [{', '.join(tags)}]")
    lines.append(f"TASK TAGS: [{', '.join(sorted(every))}]")
    return lines
