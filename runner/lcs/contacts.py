"""The LCS contact model and the set-union import plan.

``plan_import`` compares a user's exported Exchange IM contacts with what the
user already has on LCS and says exactly what to create, never what to
remove: import is a set union (DESIGN.md, "Data safety").

Rules, each one a decision documented here:

- SIP URIs compare case-insensitively; a contact already on LCS is never
  duplicated, renamed, regrouped or removed (the user may have edited it).
- Groups are matched by name, case-insensitively; groups needed by the
  contacts to add, then the user's other groups (``user_groups``: the
  export's group names, empty ones included, so none is lost) are created first (the server assigns ids 1..64), at most
  64 per user: groups beyond that are reported and their contacts are added
  without that group.
- A display name longer than 256 characters (Name limit) keeps its first 256
  characters, and the truncation is reported as a warning; group names longer
  than 128 likewise. Truncations are worked out from the export, for every
  mappable contact within the limit, those already on LCS included: an import
  retried or resumed after it created them reports them again, so the warnings
  are the same after any number of interruptions (as unmappable and over-limit
  contacts are).
- Contacts that map to no SIP URI (:class:`~runner.lcs.mapping.Unmappable`)
  and contacts beyond ``MaxContactsPerUser`` (read from the server at run
  time) are listed in the plan and its warnings, never dropped silently.
- During coexistence (gradual scenarios) Windows Messenger 5.1 keeps Exchange
  IM contacts in a separate group: when ``coexistence_group`` is given,
  imported contacts that had no group go into that group (conv: "Exchange IM
  Contacts").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from runner.lcs.mapping import Mapped, SipMapping, Unmappable

MAX_NAME = 256
MAX_GROUP_NAME = 128
MAX_GROUPS = 64
DEFAULT_COEXISTENCE_GROUP = "Exchange IM Contacts"
DEFAULT_MAX_CONTACTS = 150


@dataclass(frozen=True)
class ExportedContact:
    """One contact from a user's Exchange IM list (the export artifact)."""

    address: str
    name: str = ""
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class LcsGroup:
    """A contact group on LCS (MSFT_SIPESUserContactGroupData)."""

    id: int
    name: str


@dataclass(frozen=True)
class LcsContact:
    """A contact on LCS (MSFT_SIPESUserContactData)."""

    uri: str
    name: str = ""
    group_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PlannedContact:
    """A contact to create: its SIP URI, display name and group names."""

    address: str
    uri: str
    name: str
    groups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "uri": self.uri, "name": self.name, "groups": list(self.groups)}


@dataclass
class ImportPlan:
    """What an import would do for one user; every list is JSON-friendly via ``as_dict``."""

    groups_to_create: list[str] = field(default_factory=list)
    contacts_to_add: list[PlannedContact] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    unmappable: list[Unmappable] = field(default_factory=list)
    over_limit: list[PlannedContact] = field(default_factory=list)
    groups_over_limit: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    max_contacts: int = DEFAULT_MAX_CONTACTS

    @property
    def changes(self) -> bool:
        return bool(self.groups_to_create or self.contacts_to_add)

    def warnings(self) -> list[str]:
        """Everything the administrator must hear about: nothing is dropped silently."""
        out = [f"unmappable contact {u.address}: {u.reason}" for u in self.unmappable]
        out += [f"contact {c.uri} not imported: over the server's limit of "
                f"{self.max_contacts} contacts per user" for c in self.over_limit]
        out += [f"group {g!r} not created: a user has at most {MAX_GROUPS} groups; "
                f"its contacts are added without it" for g in self.groups_over_limit]
        out += self.truncated
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups_to_create": list(self.groups_to_create),
            "contacts_to_add": [c.as_dict() for c in self.contacts_to_add],
            "already_present": list(self.already_present),
            "unmappable": [{"address": u.address, "reason": u.reason} for u in self.unmappable],
            "over_limit": [c.as_dict() for c in self.over_limit],
            "groups_over_limit": list(self.groups_over_limit),
            "truncated": list(self.truncated),
            "max_contacts": self.max_contacts,
        }


def parse_export(data: bytes | str | Mapping[str, Any]) -> list[ExportedContact]:
    """Read the normalised JSON artifact of export_contacts.

    Accepts ``{"contacts": [{"address", "name"|"display_name", "groups"}]}``
    (and a bare list of such objects); order is kept, because it decides which
    contacts fall beyond the server's limit.
    """
    doc: Any = data
    if isinstance(data, (bytes, str)):
        doc = json.loads(data)
    items = doc.get("contacts", []) if isinstance(doc, Mapping) else doc
    out: list[ExportedContact] = []
    for item in items or []:
        if isinstance(item, str):
            out.append(ExportedContact(item))
            continue
        address = str(item.get("address") or item.get("im_address") or "")
        name = item.get("name")
        if name is None:
            name = item.get("display_name")
        groups = tuple(str(g) for g in (item.get("groups") or ()))
        out.append(ExportedContact(address, str(name or ""), groups))
    return out


def parse_export_groups(data: bytes | str | Mapping[str, Any]) -> list[str]:
    """The group names of an export artifact (its top-level ``groups``, which
    includes groups without members), or [] for artifacts that predate it."""
    doc: Any = data
    if isinstance(data, (bytes, str)):
        doc = json.loads(data)
    if not isinstance(doc, Mapping):
        return []
    return [str(g) for g in (doc.get("groups") or ()) if g]


def plan_import(exported: Iterable[ExportedContact], current_contacts: Iterable[LcsContact],
                current_groups: Iterable[LcsGroup], mapping: SipMapping, *,
                max_contacts: int = DEFAULT_MAX_CONTACTS,
                coexistence_group: str | None = None,
                user_groups: Iterable[str] = ()) -> ImportPlan:
    """The set-union import plan for one user (see the module docstring for the rules)."""
    plan = ImportPlan(max_contacts=max_contacts)
    current_contacts = list(current_contacts)
    present = {c.uri.lower() for c in current_contacts}
    group_names = {g.name.casefold() for g in current_groups}
    merged: dict[str, PlannedContact] = {}
    for contact in exported:
        result = mapping.map(contact.address)
        if isinstance(result, Unmappable):
            if all(u.address.lower() != result.address.lower() for u in plan.unmappable):
                plan.unmappable.append(result)
            continue
        assert isinstance(result, Mapped)
        key = result.uri.lower()
        if key in present:
            if key not in {p.lower() for p in plan.already_present}:
                plan.already_present.append(result.uri)
            # reported as when it was created (a retry must not lose the warning)
            _limited(contact.name, MAX_NAME, f"display name of {result.uri}", plan)
            for g in contact.groups:
                if g:
                    _limited(g, MAX_GROUP_NAME, f"group name {g[:40]!r}...", plan)
            continue
        name = _limited(contact.name, MAX_NAME, f"display name of {result.uri}", plan)
        groups = tuple(_limited(g, MAX_GROUP_NAME, f"group name {g[:40]!r}...", plan)
                       for g in contact.groups if g)
        if not groups and coexistence_group:
            groups = (coexistence_group,)
        if key in merged:  # the same contact twice (two machines, two addresses)
            old = merged[key]
            merged[key] = PlannedContact(old.address, old.uri, old.name or name,
                                         _union(old.groups, groups))
        else:
            merged[key] = PlannedContact(contact.address, result.uri, name, groups)
    room = max(0, max_contacts - len(current_contacts))
    wanted = list(merged.values())
    plan.contacts_to_add, plan.over_limit = wanted[:room], wanted[room:]
    for contact in plan.contacts_to_add:
        for g in contact.groups:
            _admit_group(plan, g, group_names)
    for g in user_groups:  # the user's groups without a contact to add (empty ones too)
        _admit_group(plan, _limited(g, MAX_GROUP_NAME, f"group name {g[:40]!r}...", plan), group_names)
    if plan.groups_over_limit:
        dropped = {g.casefold() for g in plan.groups_over_limit}
        plan.contacts_to_add = [
            PlannedContact(c.address, c.uri, c.name, tuple(g for g in c.groups if g.casefold() not in dropped))
            for c in plan.contacts_to_add]
    return plan


def _admit_group(plan: ImportPlan, name: str, existing: set[str]) -> None:
    """Plan group ``name`` unless the user has it (``existing``: casefolded) or it is
    already planned; past MAX_GROUPS (existing + created) it goes to groups_over_limit."""
    k = name.casefold()
    if k in existing or any(x.casefold() == k for x in plan.groups_to_create + plan.groups_over_limit):
        return
    if len(existing) + len(plan.groups_to_create) < MAX_GROUPS:
        plan.groups_to_create.append(name)
    else:
        plan.groups_over_limit.append(name)


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    seen = {g.casefold() for g in a}
    return a + tuple(g for g in b if g.casefold() not in seen)


def _limited(value: str, limit: int, what: str, plan: ImportPlan) -> str:
    if len(value) <= limit:
        return value
    note = f"{what} longer than {limit} characters: kept its first {limit}"
    if note not in plan.truncated:
        plan.truncated.append(note)
    return value[:limit]


def group_ids_for(names: Iterable[str], groups: Iterable[LcsGroup]) -> tuple[int, ...]:
    """The server ids of the groups called ``names`` (case-insensitive), in order."""
    by_name = {g.name.casefold(): g.id for g in groups}
    ids = [by_name[n.casefold()] for n in names if n.casefold() in by_name]
    return tuple(dict.fromkeys(ids))


@dataclass
class Verification:
    """Read-back of a user's LCS contacts against the export."""

    missing: list[str] = field(default_factory=list)
    over_limit: list[str] = field(default_factory=list)
    unmappable: list[Unmappable] = field(default_factory=list)
    present: int = 0
    expected: int = 0

    @property
    def passed(self) -> bool:
        return not self.missing


def verify(exported: Iterable[ExportedContact], current_contacts: Iterable[LcsContact],
           mapping: SipMapping, *, max_contacts: int = DEFAULT_MAX_CONTACTS) -> Verification:
    """Compare LCS with the export: every mappable contact must be there, except
    those that could not fit because the user is at the server's limit."""
    current = list(current_contacts)
    present = {c.uri.lower() for c in current}
    ver = Verification()
    wanted: dict[str, str] = {}
    for contact in exported:
        result = mapping.map(contact.address)
        if isinstance(result, Unmappable):
            ver.unmappable.append(result)
        else:
            wanted.setdefault(result.uri.lower(), result.uri)
    ver.expected = len(wanted)
    absent = [uri for key, uri in wanted.items() if key not in present]
    ver.present = ver.expected - len(absent)
    if len(current) >= max_contacts:
        ver.over_limit = absent
    else:
        ver.missing = absent
    return ver
