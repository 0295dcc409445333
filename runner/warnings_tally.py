"""Warnings counted per step and kind, each one once per target (runner apply's live output).

Steps report what the administrator must hear about as text (``StepResult.warnings``).
The live output does not print them all (an 800-user import has thousands): it counts
them per step and kind and keeps a few examples, and every warning is in ``runner
report``. The same thing said by two steps (import_contacts lists each unmappable
contact, verify_contacts lists them again as "N unmappable contact(s) not on LCS: ...")
counts once, for the step that said it first: the key is (target, kind, subject).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

#: (kind, pattern, group holding the subject(s) or None, whether that group is a ", " list)
_KINDS: tuple[tuple[str, re.Pattern[str], int | None, bool], ...] = (
    ("unmappable contact", re.compile(r"^unmappable contact (.+?): "), 1, False),
    ("unmappable contact", re.compile(r"^\d+ unmappable contact\(s\) not on LCS: (.*)$"), 1, True),
    ("over the contact limit", re.compile(r"^contact (\S+) not imported: over the server's limit"), 1, False),
    ("over the contact limit",
     re.compile(r"^\d+ contact\(s\) not on LCS, over the server's per-user limit: (.*)$"), 1, True),
    ("name cut", re.compile(r"^(.+?) longer than \d+ characters: kept its first"), 1, False),
    ("group over the limit", re.compile(r"^group (.+?) not created"), 1, False),
    ("reboot required", re.compile(r"^(\S+): reboot required"), 1, False),
    ("no profile", re.compile(r"^(\S+): no profile on "), 1, False),
    ("hive not loadable", re.compile(r"^(\S+): hive could not be loaded"), 1, False),
    ("sign-in settings", re.compile(r"^(\S+): Messenger sign-in settings missing or wrong"), 1, False),
    ("no contact list read", re.compile(r"^no contact list of (\S+) was read"), 1, False),
    ("display name differs", re.compile(r"^(\S+): display name .* differs from"), 1, False),
    ("unmappable permission", re.compile(r"^unmappable permission (.+?): "), 1, False),
    ("unmappable permission",  # also the bracketed plural that stores written before hold
     re.compile(r"^\d+ unmappable allow/block entr(?:y|ies|\(y/ies\)) not on LCS: (.*)$"), 1, True),
    ("permission kept as on LCS", re.compile(r"^permission (.+?) already on LCS as "), 1, False),
    ("RVP right not carried", re.compile(r"^(.+?): RVP right\(s\) .* have no LCS equivalent"), 1, False),
    ("no permissions read", re.compile(r"^(\S+) has no Exchange IM directory entry and no earlier read"), 1, False),
    ("forced", re.compile(r"^FORCED"), None, False),
)


def classify(text: str) -> tuple[str, list[str]]:
    """The kind of a warning and what it is about (one subject, or several for a summary line)."""
    for kind, pattern, group, is_list in _KINDS:
        m = pattern.search(text)
        if m:
            if group is None:
                return kind, [text]
            value = m.group(group)
            return kind, [s for s in value.split(", ") if s] if is_list else [value]
    return "other", [text]


@dataclass
class KindTally:
    """One step's warnings of one kind: how many, on which targets, the first few."""

    count: int = 0
    targets: set[str] = field(default_factory=set)
    examples: list[tuple[str, str]] = field(default_factory=list)


class WarningTally:
    """Counts warnings per (step, kind), each (target, kind, subject) once across steps."""

    def __init__(self, examples: int = 3) -> None:
        self.examples = examples
        self._seen: set[tuple[str, str, str]] = set()
        self.by_step: dict[str, dict[str, KindTally]] = {}
        self.targets: set[str] = set()
        self.total = 0

    def add(self, step: str, target: str, warnings: list[str]) -> list[tuple[str, int, str]]:
        """Count ``target``'s warnings from ``step``; return (kind, new subjects, text) of
        those that said something new."""
        new: list[tuple[str, int, str]] = []
        for text in warnings:
            kind, subjects = classify(text)
            fresh = [s for s in subjects if (target, kind, s) not in self._seen]
            if not fresh:
                continue
            self._seen.update((target, kind, s) for s in fresh)
            tally = self.by_step.setdefault(step, {}).setdefault(kind, KindTally())
            tally.count += len(fresh)
            tally.targets.add(target)
            if len(tally.examples) < self.examples and all(t != target for t, _ in tally.examples):
                tally.examples.append((target, text))
            self.targets.add(target)
            self.total += len(fresh)
            new.append((kind, len(fresh), text))
        return new



def kinds_line(counts: dict[str, int]) -> str:
    """``unmappable contact x12, name cut x2``: kinds by count, most first."""
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
