"""The step module contract (DESIGN.md): probe first, change second.

A step module is a file in runner/steps/ defining one subclass of ``StepModule``
with a unique ``name``. It declares what it targets (each host of the play, or
each user of the play), the JSON Schema of its arguments, and implements:

- ``probe(ctx, target) -> Diff | None``: read-only; None means "already in the
  desired state" (status ok). Check mode stops here.
- ``apply(ctx, target, diff) -> StepResult``: make the change; must be safe to
  repeat (a resumed run may apply again after a crash before the checkpoint).
- ``unchanged(ctx, target) -> StepResult`` (optional): the outcome when the probe
  found nothing to change; by default plain ok. A step whose warnings describe
  the target rather than this attempt's change (import_contacts) reports them here
  too, so a retry or a resumed run never loses them.

Not yet (by design): a probe (or apply) that finds a target is not due yet because of
other targets' state (a machine whose other users are still on Exchange IM keeps it until
the last of them has moved) raises ``NotYet``. The task's status is ``not_yet``: not a
failure (no max_fail_percentage, the target stays in the play, no retry file), not done
either (a later run does it), in check mode the same; the output counts and groups it.

A step never prints, never writes the state store and never knows which
connection kind carries its commands: it asks ``ctx.connection(host)`` for a
Connection and returns structured data. Faults are raised as
runner.errors.TransientFault / PermanentFault / ConnectionFault.

Chunks (docs/server-batching.md): a module whose ``chunk`` is above 0 works on
many targets per round trip. The engine hands it up to ``chunk`` tasks at once
(tasks of the same ``chunk_key``, e.g. the LCS home server) through
``probe_many(items)`` and ``apply_many(items)``, which return one entry per item,
in order: what ``probe``/``apply`` would have returned for it, or the exception
that fails (or, transient, retries) that one target only. Each target keeps its
own task, attempts, checkpoint and result; the defaults below just loop over
``probe``/``apply``, so a module overrides only what it can do for many at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Protocol, Sequence, Union

from runner.connections.base import Connection
from runner.model import Host, Inventory, User

Status = Literal["ok", "changed", "skipped", "failed", "unreachable", "not_yet"]


class NotYet(Exception):
    """A target is not due yet, by design, because of other targets' state (module docstring).

    ``message`` names this target's case (``pc0013: 2 user(s) still on Exchange IM: ...``);
    ``reason`` is the same words for every target it happens to, the line the output groups
    them under (``keep Exchange IM until their last user has moved``); ``waiting`` names what
    it waits for (waves, users), gathered over the group; ``data`` goes into the outcome."""

    def __init__(self, message: str, *, reason: str, waiting: Sequence[str] = (),
                 data: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.waiting = [str(w) for w in waiting]
        self.data = dict(data or {})

    def outcome_data(self) -> dict[str, Any]:
        """What the task's outcome carries: ``not_yet`` (reason, waiting) and ``data``."""
        return {**self.data, "not_yet": {"reason": self.reason, "waiting": self.waiting}}


@dataclass
class Diff:
    """What a probe found to change: a one-line summary, human-readable lines for
    ``--diff``, and structured data handed on to ``apply``."""

    summary: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    """The outcome of one task. ``data`` is JSON-serialisable and stored in the
    checkpoint; ``warnings`` are shown in the recap (e.g. unmappable contacts)."""

    status: Status
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.status == "changed"


@dataclass(frozen=True)
class ArtifactRef:
    """A file written on the control node: where, how big, its sha256."""

    path: str
    sha256: str
    size: int


class Artifacts(Protocol):
    """Artifact storage on the control node (atomic write + fsync)."""

    def write(self, name: str, data: bytes) -> ArtifactRef:
        """Store ``data`` under the relative ``name`` (e.g. ``contacts/alice/pc01.reg``)."""
        ...

    def read(self, name: str) -> bytes | None:
        """The current content stored under ``name``, or None."""
        ...


class TaskRecord(Protocol):
    """A finished task as the state store remembers it (read-only view for steps)."""

    step: str
    module: str
    target: str
    status: str
    data: Mapping[str, Any]


class StepContext(Protocol):
    """What the engine gives a step for one task."""

    args: Mapping[str, Any]          # the step's arguments, templated
    vars: Mapping[str, Any]          # play + inventory + host/user variables
    inventory: Inventory
    check: bool                      # --check: probe only
    run_id: str
    artifacts: Artifacts

    def connection(self, host: str) -> Connection:
        """The run's shared connection to ``host`` (opened lazily, reused)."""
        ...

    def previous(self, module: str, target: str) -> list[TaskRecord]:
        """Finished outcomes of ``module`` for ``target`` in this or an earlier
        run on the same state directory (newest first): how a later step knows
        that e.g. verify_contacts passed for a user."""
        ...

    def facts(self, host: str) -> Mapping[str, Any] | None:
        """Facts gathered by inventory_clients for ``host``, if any."""
        ...

    def predicted(self, module: str, target: str) -> list[TaskRecord]:
        """In check mode, the ok/changed outcomes of ``module`` for ``target`` this check
        predicted (newest first: what ``previous`` would hold after the real run); else empty."""
        ...


class StepModule:
    """Base class of step modules. Subclasses set the class attributes."""

    name: ClassVar[str] = ""
    target: ClassVar[Literal["host", "user"]] = "host"
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}
    #: The module only reads (facts, verification): no Diff ever changes anything.
    read_only: ClassVar[bool] = False
    #: A user step that saves what a client holds for the user (export_contacts): the
    #: planner runs it for every user of a machine before a later host step of the play
    #: changes that machine, whatever wave or ``--limit`` the user is in (runner.plan).
    saves_client_data: ClassVar[bool] = False
    #: Most targets per chunk (0: one task at a time). The step argument ``chunk_size``
    #: lowers it; the engine also bounds how many chunks run at once (forks, throttle).
    chunk: ClassVar[int] = 0
    #: Every finished task of the step probes again when its run resumes (see
    #: :meth:`rechecks_when_done`, which steps override to decide by their arguments).
    rechecks: ClassVar[bool] = False

    def chunk_key(self, ctx: StepContext, target: Host | User) -> str:
        """Targets with the same key may share a chunk (e.g. the server their work runs on)."""
        return ""

    @classmethod
    def rechecks_when_done(cls, args: Mapping[str, Any]) -> bool:
        """Whether a task of this step (with these raw ``args``) that an earlier session of
        the same run finished probes again when the run resumes, instead of being skipped as
        done: for steps whose work can be undone where this state directory cannot see it
        (the rollback's: users moved again with another --state, docs/rollback.md). The
        probe finds the work in place and changes nothing, or does it again."""
        return cls.rechecks

    def probe_many(self, items: Sequence[tuple[StepContext, Host | User]]) -> list[ProbeOutcome]:
        """``probe`` for each (ctx, target): a Diff, None (nothing to change) or the exception
        for that target alone. One round trip for the chunk where the module can."""
        out: list[ProbeOutcome] = []
        for ctx, target in items:
            try:
                out.append(self.probe(ctx, target))
            except Exception as exc:  # noqa: BLE001 - handed back as this target's outcome
                out.append(exc)
        return out

    def apply_many(self, items: Sequence[tuple[StepContext, Host | User, Diff]]) -> list[ApplyOutcome]:
        """``apply`` for each (ctx, target, diff): a StepResult or the exception for that target."""
        out: list[ApplyOutcome] = []
        for ctx, target, diff in items:
            try:
                out.append(self.apply(ctx, target, diff))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out

    def probe(self, ctx: StepContext, target: Host | User) -> Diff | None:
        raise NotImplementedError

    def apply(self, ctx: StepContext, target: Host | User, diff: Diff) -> StepResult:
        raise NotImplementedError

    def unchanged(self, ctx: StepContext, target: Host | User) -> StepResult:
        """The outcome when ``probe`` returned None (nothing to change): ok, with whatever
        still holds about the target whatever earlier attempts did, e.g. the contacts an
        import could not map, that a retried or resumed task must report again. Called
        right after that probe on the same instance, so it may use what the probe kept."""
        return StepResult("ok")


#: What ``probe_many`` / ``apply_many`` give per target: the value, or the exception for that target.
ProbeOutcome = Union[Diff, None, Exception]
ApplyOutcome = Union[StepResult, Exception]
