"""Planner: playbook x inventory -> ordered tasks, cut into waves.

``build_plan`` is pure: it reads the model and the command-line selections
(``--limit``, ``--tags``, ``--skip-tags``, ``--start-at-step``) and returns a
deterministic ``Plan``. Nothing is templated or evaluated here (``when`` is
evaluated per task by the engine, because it may depend on facts).

Rules, in one place:

- A host-target step runs once per selected play host; a user-target step
  once per selected play user (module ``target``, from the step registry).
- Waves (``serial``): over users, each wave runs every step for its users, and
  host-target steps in that wave target the play hosts that are clients of
  the wave's users; a host shared by users of several waves runs in the
  first of them only (task keys stay unique and the step is idempotent
  anyway). Over hosts, user-target steps of a wave run for the users whose
  first client (in wave order) is in that wave; users with no client among
  the play hosts go in the last wave.
- ``serial: N`` / ``"25%"`` without ``over``: the loader sets ``over`` to users
  when the play has a user-target step, else hosts. A percentage is of the selected targets,
  rounded down, at least 1 (as Ansible does).
- ``serial: {over: users, attribute: wave}``: one wave per value of the
  attribute (a User/Host field or a var), ordered by ``order`` when given
  (values not listed follow), else sorted naturally (wave2 before wave10);
  targets without the attribute go in a last wave named "unassigned".
- Saved before changed (README, "contact lists are saved on the control node
  before anything on a client changes"): a user step whose module saves what a
  client holds for the user (``saves_client_data``: export_contacts) runs, in
  each wave, also for every play user who uses one of the hosts that a later
  changing (not ``read_only``) host step of that wave targets, when that user has
  not had the step in this or an earlier wave of the play: a machine shared by
  users of several waves is upgraded in the first wave, so the later waves'
  users of it are exported there too, and so are the users of a machine that
  ``--limit`` selects (through another user) without selecting them. Only that
  step is added for them; their own wave still runs it again (it writes a new
  version only if the registry changed since), so a list edited between two
  nights is not lost.
- Task keys: ``"<play index>/<step name>/<host|user>:<name>"``; such an early
  task of a user's step is ``"<play index>/<step name>/user:<alias>/for-wave:<wave>"``
  (``all`` for a play without serial), so it never stands in for the user's own
  task of that step, on a later night or in a later wave.

Dependencies between tasks are kept by the engine (runner.engine): a task
depends on the earlier steps' tasks of its own target and of its related
targets (a user's clients, a host's users) in the same play.
"""
from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from runner.errors import InputError, OptionsError
from runner.model import Host, Inventory, Play, Playbook, Serial, Step, User


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
    #: the host's name or the user's alias
    target_name: str = field(init=False, compare=False, repr=False)
    #: ``kind:name``, the target as the engine's dependencies and wave gates name it
    target_id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # read for every task many times over (a resumed 1,000-client night resolves 16,000
        # tasks), so worked out once
        name = self.target.name if isinstance(self.target, Host) else self.target.alias
        object.__setattr__(self, "target_name", name)
        object.__setattr__(self, "target_id", f"{self.kind}:{name}")


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


UNASSIGNED = "unassigned"
ALWAYS = "always"

_PATTERN_TOKEN = re.compile(r"!?wave:[^,:]+|[^,:]+")


def task_key(play_index: int, step: Step, kind: str, name: str) -> str:
    """The stable checkpoint key of a task (see module docstring)."""
    return f"{play_index}/{step.name}/{kind}:{name}"


def natural_key(value: Any) -> tuple:
    """Sort key that orders ``wave2`` before ``wave10``."""
    parts = re.split(r"(\d+)", str(value))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p != "")


def split_patterns(pattern: str | None) -> list[str]:
    """Split a comma/colon-separated pattern list, keeping ``wave:<name>`` whole."""
    if not pattern:
        return []
    return [t.strip() for t in _PATTERN_TOKEN.findall(pattern) if t.strip()]


# -- pattern matching ---------------------------------------------------------

@dataclass
class _Match:
    hosts: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    known: bool = False


def _match_one(token: str, inventory: Inventory, *, allow_users: bool, allow_hosts: bool) -> _Match:
    """Hosts and users one pattern (without ``!``) names."""
    m = _Match()
    if token.startswith("wave:"):
        wave_pat = token[len("wave:"):]
        if allow_users:
            for u in inventory.users.values():
                if u.wave is not None and fnmatch.fnmatchcase(u.wave, wave_pat):
                    m.users.add(u.alias)
                    m.known = True
        return m
    if token == "all":
        m.known = True
        if allow_hosts:
            m.hosts.update(inventory.hosts)
        if allow_users:
            m.users.update(inventory.users)
        return m
    if allow_hosts:
        for name in inventory.hosts:
            if fnmatch.fnmatchcase(name, token):
                m.hosts.add(name)
                m.known = True
        for g in inventory.groups:
            if fnmatch.fnmatchcase(g, token):
                m.hosts.update(inventory.group_hosts(g))
                m.known = True
    if allow_users:
        for alias in inventory.users:
            if fnmatch.fnmatchcase(alias, token):
                m.users.add(alias)
                m.known = True
    return m


def _select(pattern: str | None, inventory: Inventory, *, allow_hosts: bool,
            allow_users: bool) -> tuple[set[str], set[str], list[str]]:
    """Resolve a pattern list to (hosts, users, unknown tokens).

    Positive patterns are unioned (everything when there are none); ``!``
    patterns are then subtracted. Hosts named by a user pattern's clients and
    users having a client among the named hosts are included, so ``--limit
    alice`` also runs host steps on alice's machines and ``--limit pc0001``
    also runs user steps for the people using pc0001.
    """
    tokens = split_patterns(pattern)
    unknown: list[str] = []
    pos_hosts: set[str] = set()
    pos_users: set[str] = set()
    neg_hosts: set[str] = set()
    neg_users: set[str] = set()
    positives = [t for t in tokens if not t.startswith("!")]
    for tok in tokens:
        neg = tok.startswith("!")
        body = tok[1:] if neg else tok
        m = _match_one(body, inventory, allow_users=allow_users, allow_hosts=allow_hosts)
        if not m.known:
            unknown.append(tok)
        if neg:
            neg_hosts |= m.hosts
            neg_users |= m.users
        else:
            pos_hosts |= m.hosts
            pos_users |= m.users
    if not positives:
        pos_hosts = set(inventory.hosts) if allow_hosts else set()
        pos_users = set(inventory.users) if allow_users else set()
        hosts = pos_hosts - neg_hosts
        if allow_users and allow_hosts:
            users = {a for a in pos_users if any(c in hosts for c in inventory.users[a].clients)
                     or not inventory.users[a].clients} - neg_users
        else:
            users = pos_users - neg_users
        return hosts, users, unknown
    hosts = set(pos_hosts)
    if allow_hosts:
        for a in pos_users:
            hosts.update(c for c in inventory.users[a].clients if c in inventory.hosts)
    hosts -= neg_hosts
    users = set(pos_users)
    if allow_users and allow_hosts:
        users.update(a for a, u in inventory.users.items() if any(c in pos_hosts for c in u.clients))
    users -= neg_users
    return hosts, users, unknown


def _host_order(inventory: Inventory, names: set[str]) -> list[Host]:
    return [h for n, h in inventory.hosts.items() if n in names]


def _user_order(inventory: Inventory, names: set[str]) -> list[User]:
    return [u for a, u in inventory.users.items() if a in names]


# -- steps: tags and start-at-step -------------------------------------------

def _step_selected(step: Step, tags: set[str] | None, skip_tags: set[str] | None) -> bool:
    st = set(step.tags)
    if skip_tags and st & skip_tags:
        return False
    if not tags or "all" in tags:
        return True
    return bool(st & tags) or ALWAYS in st


def _step_class(step: Step) -> Any:
    from runner.steps.registry import get_step

    cls = get_step(step.module)
    if cls is None:
        raise InputError(f"unknown step module '{step.module}' in step '{step.name}'", None, step.line)
    return cls


def _step_kind(step: Step) -> str:
    return _step_class(step).target


def early_key(play_index: int, step: Step, alias: str, wave: str | None) -> str:
    """The key of a user's task run early, in ``wave``, to save what the machines that
    wave changes hold for them (see the module docstring)."""
    return f"{task_key(play_index, step, 'user', alias)}/for-wave:{wave or 'all'}"


# -- waves -------------------------------------------------------------------

def _attribute(obj: Host | User, name: str) -> Any:
    names = {f.name for f in fields(obj)}
    if name in names and name != "vars":
        return getattr(obj, name)
    return obj.vars.get(name)


def _chunks(items: list, serial: Serial) -> list[tuple[str, list]]:
    if not items:
        return []
    if serial.size is not None:
        size = max(1, int(serial.size))
    else:
        size = max(1, int(len(items) * float(serial.percent or 100) / 100))
    count = math.ceil(len(items) / size)
    return [(str(i + 1), items[i * size:(i + 1) * size]) for i in range(count)]


def _by_attribute(items: list, serial: Serial) -> list[tuple[str, list]]:
    buckets: dict[str, list] = {}
    unassigned: list = []
    for it in items:
        value = _attribute(it, serial.attribute or "")
        if value is None or value == "":
            unassigned.append(it)
        else:
            buckets.setdefault(str(value), []).append(it)
    ordered = [v for v in serial.order if v in buckets]
    ordered += sorted((v for v in buckets if v not in serial.order), key=natural_key)
    waves = [(v, buckets[v]) for v in ordered]
    if unassigned:
        waves.append((UNASSIGNED, unassigned))
    return waves


def _cut(items: list, serial: Serial) -> list[tuple[str, list]]:
    if serial.attribute:
        return _by_attribute(items, serial)
    return _chunks(items, serial)


# -- the plan ----------------------------------------------------------------

def _check_tags(playbook: Playbook, tags: set[str] | None, option: str) -> None:
    if not tags:
        return
    used = {t for p in playbook.plays for s in p.steps for t in s.tags}
    unknown = sorted(tags - used - {ALWAYS, "all"})
    if unknown:
        # what the playbook's steps carry (as --list-tags prints it), then the two words every
        # playbook understands
        listed = ", ".join(sorted(used - {ALWAYS, "all"})) or "(none)"
        raise OptionsError(f"{option}: unknown tag(s) {', '.join(unknown)}; tags in this playbook: {listed} "
                           f"(and '{ALWAYS}' and 'all')")


def build_plan(playbook: Playbook, inventory: Inventory, *, limit: str | None = None,
               tags: set[str] | None = None, skip_tags: set[str] | None = None,
               start_at_step: str | None = None) -> Plan:
    """Cut ``playbook`` x ``inventory`` into ordered plays, waves and tasks.

    Raises OptionsError (exit 5) for a ``--limit`` pattern that matches
    nothing, an unknown tag or an unknown ``--start-at-step``, and
    InputError (exit 4) for a play whose ``hosts``/``users`` pattern names
    nothing in the inventory.
    """
    tags = set(tags) if tags else None
    skip_tags = set(skip_tags) if skip_tags else None
    _check_tags(playbook, tags, "--tags")
    _check_tags(playbook, skip_tags, "--skip-tags")

    if limit is not None and not split_patterns(limit):
        # `--limit "$WAVE"` with WAVE unset must not migrate everyone
        raise OptionsError(f"--limit {limit!r} names nothing; give hosts, groups, users or wave:NAME "
                           "(or leave --limit out to run everything)")
    limit_hosts, limit_users, unknown = _select(limit, inventory, allow_hosts=True, allow_users=True)
    if unknown:
        raise OptionsError(
            f"--limit: {', '.join(repr(u) for u in unknown)} matches no host, group, user or wave "
            f"in {inventory.path}")
    if limit is not None and not limit_hosts and not limit_users:
        raise OptionsError(f"--limit {limit!r} leaves no host and no user of {inventory.path} to run")

    started = start_at_step is None
    if not started and not any(s.name == start_at_step for p in playbook.plays for s in p.steps):
        names = ", ".join(s.name for p in playbook.plays for s in p.steps)
        raise OptionsError(f"--start-at-step: no step named {start_at_step!r}; steps: {names}")

    planned: list[PlannedPlay] = []
    for index, play in enumerate(playbook.plays):
        steps: list[tuple[Step, str]] = []
        for step in play.steps:
            if not started and step.name == start_at_step:
                started = True
            if not started or not _step_selected(step, tags, skip_tags):
                continue
            steps.append((step, _step_kind(step)))
        waves = _plan_play(index, play, steps, inventory, limit_hosts, limit_users, playbook.path)
        planned.append(PlannedPlay(index=index, play=play, waves=tuple(waves)))
    return Plan(plays=tuple(planned))


def _play_targets(play: Play, inventory: Inventory, file: str) -> tuple[set[str], set[str]]:
    hosts, _, unknown_h = _select(play.hosts, inventory, allow_hosts=True, allow_users=False)
    _, users, unknown_u = _select(play.users, inventory, allow_hosts=False, allow_users=True)
    problems = [f"hosts pattern {u!r} matches no host or group" for u in unknown_h]
    problems += [f"users pattern {u!r} matches no user or wave" for u in unknown_u]
    if problems:
        raise InputError(f"play '{play.name}': " + "; ".join(problems) + f" in {inventory.path}",
                         file, play.line)
    return hosts, users


def _check_serial_attribute(play: Play, inventory: Inventory, play_hosts: set[str], play_users: set[str],
                            file: str) -> None:
    """``serial: {attribute: X}`` where no target of the play has X is a typo (``wav`` for
    ``wave``) that would put everyone in one wave: an input error (exit 4)."""
    serial = play.serial
    if serial is None or not serial.attribute:
        return
    items: list[Host | User] = (list(_user_order(inventory, play_users)) if serial.over == "users"
                                else list(_host_order(inventory, play_hosts)))
    if not items or any(_attribute(it, serial.attribute) not in (None, "") for it in items):
        return
    known = sorted({f.name for f in fields(items[0])} - {"vars"} | {k for it in items for k in it.vars})
    hint = difflib.get_close_matches(serial.attribute, [k for k in known if k != serial.attribute], n=1)
    what = "user" if serial.over == "users" else "host"
    raise InputError(f"play '{play.name}': serial attribute {serial.attribute!r} is set on none of the play's "
                     f"{serial.over}" + (f" (did you mean {hint[0]!r}?)" if hint else
                                         f"; set it on each {what} (e.g. {serial.attribute}: wave1) "
                                         f"so the play can run {what}s in waves"), file, play.line)


def _plan_play(index: int, play: Play, steps: list[tuple[Step, str]], inventory: Inventory,
               limit_hosts: set[str], limit_users: set[str], file: str) -> list[Wave]:
    play_hosts, play_users = _play_targets(play, inventory, file)
    _check_serial_attribute(play, inventory, play_hosts, play_users, file)
    hosts = _host_order(inventory, play_hosts & limit_hosts)
    users = _user_order(inventory, play_users & limit_users)
    if not steps:
        return []

    # (wave name, hosts of the wave, users of the wave)
    groups: list[tuple[str | None, list[Host], list[User]]]
    serial = play.serial
    if serial is None:
        groups = [(None, hosts, users)]
    elif serial.over == "users":
        groups = []
        taken: set[str] = set()
        host_names = {h.name for h in hosts}
        for name, wave_users in _cut(users, serial):
            clients = {c for u in wave_users for c in u.clients if c in host_names and c not in taken}
            taken |= clients
            groups.append((name, [h for h in hosts if h.name in clients], wave_users))
    else:
        groups = []
        assigned: set[str] = set()
        cuts = _cut(hosts, serial)
        for n, (name, wave_hosts) in enumerate(cuts):
            names = {h.name for h in wave_hosts}
            wave_users = [u for u in users if u.alias not in assigned and any(c in names for c in u.clients)]
            if n == len(cuts) - 1:
                wave_users += [u for u in users if u.alias not in assigned and u not in wave_users
                               and not any(c in play_hosts for c in u.clients)]
            assigned |= {u.alias for u in wave_users}
            groups.append((name, wave_hosts, wave_users))

    classes = [_step_class(step) for step, _ in steps]
    # a changing host step after position i: a saving user step at i must cover its hosts' users
    changes_after = [any(kind == "host" and not cls.read_only for (_, kind), cls in
                         zip(steps[i + 1:], classes[i + 1:])) for i in range(len(steps))]
    all_play_users = _user_order(inventory, play_users)
    saved: dict[int, set[str]] = {}  # step position -> users who had it in this or an earlier wave
    waves: list[Wave] = []
    for name, wave_hosts, wave_users in groups:
        tasks: list[Task] = []
        for i, ((step, kind), cls) in enumerate(zip(steps, classes)):
            targets: list[Host | User] = list(wave_hosts) if kind == "host" else list(wave_users)
            for t in targets:
                tname = t.name if isinstance(t, Host) else t.alias
                tasks.append(Task(key=task_key(index, step, kind, tname), play_index=index,
                                  step=step, kind=kind, target=t, wave=name))
            if kind != "user" or not cls.saves_client_data:
                continue
            done = saved.setdefault(i, set())
            done.update(u.alias for u in wave_users)
            if not changes_after[i]:
                continue
            changed = {h.name for h in wave_hosts}
            for u in all_play_users:
                if u.alias not in done and any(c in changed for c in u.clients):
                    done.add(u.alias)
                    tasks.append(Task(key=early_key(index, step, u.alias, name), play_index=index,
                                      step=step, kind=kind, target=u, wave=name))
        if tasks:
            waves.append(Wave(name=name, tasks=tuple(tasks)))
    return waves
