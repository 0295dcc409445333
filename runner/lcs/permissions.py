"""Allow and block lists: a user's Exchange 2000 IM ACL (``msExchIMACL``) as LCS 2005 ACEs.

Exchange 2000 IM keeps who may see a user's presence and who may send them
messages on the server (the RVP ``ACL`` method, draft-osborne-rvp section
5.7); the user's ``msExchIMACL`` attribute is its directory side. Its exact
public format is not documented; the runner reads the convention of
docs/permissions.md: one value per access control entry, in SDDL-shaped text::

    (A;;PRST;;;WD)                                         grant presence and send-to to everyone
    (D;;PRST;;;http://im.fabrikam.com/instmsg/aliases/bob)  deny both to one RVP principal
    (D;;ST;;;im.litware.com)                               deny send-to to a whole IM domain or server

Field 1 is ``A`` (RVP ``grant``) or ``D`` (``deny``); field 3 the RVP rights
as two-letter codes (``PR`` presence, ``ST`` send-to; ``LI`` list, ``RF``
receive-from, ``SU`` subscriptions, ``SO`` subscribe-others have no LCS
equivalent and are reported); field 6, the rest of the value verbatim, the
principal: ``WD`` (everyone: RVP ``allauthprincipals``), an RVP user URL
``http://HOST/instmsg/aliases/NAME`` (the person ``NAME@HOST``, percent-decoded),
or a bare DNS name (an IM domain or server: everyone in it).

On LCS each principal becomes one ``MSFT_SIPESUserACEData`` (keys
``UserInstanceID``, ``Type`` All/Domain/User, ``Mask``; ``Presence`` and
``Communication`` Allow/Deny, both required): a person's URL is mapped to a
SIP URI through the same ``sip_mapping`` as contacts, a domain through its
``domains`` map. Several ACEs of one principal combine right by right, a deny
winning over a grant; a right no ACE of the principal names takes what the
less specific entry gives (a person: their IM domain's entry, else everyone's;
a domain: everyone's; everyone: Allow, Exchange IM's default). Entries that
cannot be read or mapped are :class:`UnmappableAce` with a reason, never dropped.
Import is a set union keyed like LCS (Type, Mask, case-insensitive): an entry
already on LCS with other values is kept as it is, unless the runner created it
itself and it still has exactly the values the runner gave it (the ``created``
record of :func:`plan`): such an entry is the runner's, not a user's setting,
and is updated to what Exchange IM says now (a list changed during a rollback).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from runner.lcs.mapping import Mapped, SipMapping

ACE_CLASS = "MSFT_SIPESUserACEData"
ACE_PROPS = ("UserInstanceID", "Type", "Mask", "Presence", "Communication")
#: MSFT_SIPESUserACEData.Mask maximum length (doc).
MAX_MASK = 454
EVERYONE = "WD"
#: RVP access rights carried to LCS: presence -> Presence, send-to -> Communication.
CARRIED = {"PR": "presence", "ST": "send-to"}
#: RVP access rights LCS has no equivalent for (reported, not carried).
NOT_CARRIED = {"LI": "list", "RF": "receive-from", "SU": "subscriptions", "SO": "subscribe-others"}
TYPES = ("All", "Domain", "User")
_ALIAS_PATH = re.compile(r"^/instmsg/aliases/([^/]+)/?$", re.IGNORECASE)
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


@dataclass(frozen=True)
class SourceAce:
    """One ``msExchIMACL`` value, read: grant or deny, the RVP rights, the principal."""

    raw: str
    deny: bool
    rights: frozenset[str]
    principal: str


@dataclass(frozen=True)
class UnmappableAce:
    """A value (or a principal's values) that cannot become an LCS entry, and why."""

    value: str
    reason: str


@dataclass(frozen=True)
class PlannedAce:
    """An MSFT_SIPESUserACEData the user should have, and the msExchIMACL values it comes from."""

    type: str
    mask: str
    presence: str
    communication: str
    source: tuple[str, ...] = ()

    def key(self) -> tuple[str, str]:
        return self.type.lower(), self.mask.lower()

    def describe(self) -> str:
        who = "everyone" if self.type == "All" else f"{self.type} {self.mask}"
        return f"{who}: presence {self.presence}, communication {self.communication}"

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "mask": self.mask, "presence": self.presence,
                "communication": self.communication, "source": list(self.source)}


@dataclass(frozen=True)
class LcsAce:
    """An MSFT_SIPESUserACEData as read from the pool."""

    type: str
    mask: str
    presence: str
    communication: str

    def key(self) -> tuple[str, str]:
        return self.type.lower(), self.mask.lower()


def parse_value(raw: str) -> SourceAce | UnmappableAce:
    """Read one msExchIMACL value (module docstring); an UnmappableAce says why it cannot be read."""
    v = (raw or "").strip()
    if not (v.startswith("(") and v.endswith(")")):
        return UnmappableAce(raw, "not an ACE of the form (A|D;;RIGHTS;;;PRINCIPAL)")
    parts = v[1:-1].split(";", 5)
    if len(parts) != 6:
        return UnmappableAce(raw, "not an ACE of the form (A|D;;RIGHTS;;;PRINCIPAL): too few fields")
    kind = parts[0].strip().upper()
    if kind not in ("A", "D"):
        return UnmappableAce(raw, f"ACE type {parts[0]!r} is neither A (grant) nor D (deny)")
    codes = parts[2].strip().upper()
    if len(codes) % 2:
        return UnmappableAce(raw, f"rights {parts[2]!r} are not two-letter codes")
    rights = set()
    for i in range(0, len(codes), 2):
        code = codes[i:i + 2]
        if code not in CARRIED and code not in NOT_CARRIED:
            return UnmappableAce(raw, f"unknown right {code!r}")
        rights.add(code)
    principal = parts[5].strip()
    if not principal:
        return UnmappableAce(raw, "the ACE names no principal")
    return SourceAce(raw, kind == "D", frozenset(rights), principal)


def _principal(principal: str) -> tuple[str, str] | str:
    """(kind, name) of an RVP principal: ("All", ""), ("User", "name@host") or
    ("Domain", "dns.name"); a string says why it names nobody LCS can hold."""
    if principal.upper() == EVERYONE:
        return "All", ""
    if re.match(r"^https?://", principal, re.IGNORECASE):
        try:
            parts = urlsplit(principal)
            host = (parts.hostname or "").rstrip(".").lower()
        except ValueError:
            return f"{principal!r} is not a valid URL"
        m = _ALIAS_PATH.match(parts.path)
        if not host or not m:
            return f"{principal!r} is not an RVP user URL (http://HOST/instmsg/aliases/NAME)"
        return "User", f"{unquote(m.group(1))}@{host}"
    name = principal.rstrip(".").lower()
    try:
        ipaddress.ip_address(name)
        return f"{principal!r} is an IP address (an Exchange IM server), not a SIP domain"
    except ValueError:
        pass
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.match(lb) for lb in labels):
        return f"{principal!r} is neither WD, an RVP user URL nor a DNS name"
    return "Domain", name


@dataclass
class Translation:
    """What a user's msExchIMACL becomes on LCS."""

    entries: list[PlannedAce] = field(default_factory=list)
    unmappable: list[UnmappableAce] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _effective(aces: Sequence[SourceAce]) -> dict[str, str | None]:
    """Per carried right, Deny when any ACE denies it, else Allow when any grants it, else None."""
    out: dict[str, str | None] = {}
    for code in CARRIED:
        if any(a.deny and code in a.rights for a in aces):
            out[code] = "Deny"
        elif any(not a.deny and code in a.rights for a in aces):
            out[code] = "Allow"
        else:
            out[code] = None
    return out


def translate(values: Iterable[str], mapping: SipMapping) -> Translation:
    """The LCS entries of a user's msExchIMACL values (module docstring), in a stable order:
    everyone, then domains, then people, each by mask."""
    t = Translation()
    groups: dict[tuple[str, str], list[SourceAce]] = {}
    for raw in values:
        read = parse_value(str(raw))
        if isinstance(read, UnmappableAce):
            t.unmappable.append(read)
            continue
        who = _principal(read.principal)
        if isinstance(who, str):
            t.unmappable.append(UnmappableAce(read.raw, who))
            continue
        other = sorted(NOT_CARRIED[c] for c in read.rights if c in NOT_CARRIED)
        if other and read.rights & CARRIED.keys():  # (an ACE of such rights only is reported unmappable)
            t.notes.append(f"{read.raw}: RVP right(s) {', '.join(other)} have no LCS equivalent, not carried")
        groups.setdefault((who[0], who[1].lower()), []).append(read)
    rights = {k: _effective(v) for k, v in groups.items()}
    for k, r in rights.items():
        if all(x is None for x in r.values()):
            for a in groups[k]:
                t.unmappable.append(UnmappableAce(a.raw, "grants or denies neither presence nor send-to"))
    everyone = rights.get(("All", ""), {})
    base = {c: everyone.get(c) or "Allow" for c in CARRIED}

    def filled(r: Mapping[str, str | None], fallback: Mapping[str, str]) -> dict[str, str]:
        return {c: r.get(c) or fallback[c] for c in CARRIED}

    merged: dict[tuple[str, str], PlannedAce] = {}
    order = sorted(groups, key=lambda k: (TYPES.index(k[0]), k[1]))
    for kind, name in order:
        r = rights[(kind, name)]
        if all(x is None for x in r.values()):
            continue
        src = tuple(a.raw for a in groups[(kind, name)])
        if kind == "All":
            typ, mask, eff = "All", "", filled(r, base)
        elif kind == "Domain":
            sip = mapping.domains.get(name)
            if sip is None:
                t.unmappable.extend(UnmappableAce(s, f"domain {name} is not in the sip_mapping domains") for s in src)
                continue
            typ, mask, eff = "Domain", sip.lower(), filled(r, base)
        else:
            found = mapping.map(name)
            if not isinstance(found, Mapped):
                t.unmappable.extend(UnmappableAce(s, found.reason) for s in src)
                continue
            dom = rights.get(("Domain", name.rpartition("@")[2]))
            typ, mask = "User", found.uri
            eff = filled(r, filled(dom, base) if dom is not None else base)
        if len(mask) > MAX_MASK:
            t.unmappable.extend(UnmappableAce(s, f"mask longer than {MAX_MASK} characters") for s in src)
            continue
        entry = PlannedAce(typ, mask, "Deny" if eff["PR"] == "Deny" else "Allow",
                           "Deny" if eff["ST"] == "Deny" else "Allow", src)
        same = merged.get(entry.key())
        if same is not None:  # two principals (IM domains, addresses) of one LCS entry: deny wins
            entry = PlannedAce(typ, same.mask, _stricter(same.presence, entry.presence),
                               _stricter(same.communication, entry.communication), same.source + src)
        merged[entry.key()] = entry
    t.entries = list(merged.values())
    return t


def _stricter(a: str, b: str) -> str:
    return "Deny" if "Deny" in (a, b) else "Allow"


def parse_lcs(records: Iterable[Mapping[str, str]]) -> list[LcsAce]:
    """LCS entries from wmic ``/format:list`` records of MSFT_SIPESUserACEData."""
    return [LcsAce(str(r.get("Type", "")).strip(), str(r.get("Mask", "") or "").strip(),
                   str(r.get("Presence", "")).strip(), str(r.get("Communication", "")).strip())
            for r in records]


@dataclass
class PermissionPlan:
    """A set-union import: entries to create, to update (the runner's own earlier entry, untouched
    on LCS since, now with other values in Exchange IM), already there, kept as LCS has them
    (set by a user or an administrator), unmappable."""

    to_add: list[PlannedAce] = field(default_factory=list)
    to_update: list[tuple[PlannedAce, LcsAce]] = field(default_factory=list)
    present: list[PlannedAce] = field(default_factory=list)
    kept: list[tuple[PlannedAce, LcsAce]] = field(default_factory=list)
    unmappable: list[UnmappableAce] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return len(self.to_add) + len(self.to_update) + len(self.present) + len(self.kept)

    def warnings(self) -> list[str]:
        """One line per entry not carried as it was (never dropped silently)."""
        out = [f"unmappable permission {u.value}: {u.reason}" for u in self.unmappable]
        out += [f"permission {p.describe()} already on LCS as presence {lcs.presence}, communication "
                f"{lcs.communication}: kept as set on LCS" for p, lcs in self.kept]
        return out + list(self.notes)

    def as_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "to_add": [p.as_dict() for p in self.to_add],
                "to_update": [{**p.as_dict(), "was": {"presence": lcs.presence, "communication": lcs.communication}}
                              for p, lcs in self.to_update],
                "already_present": len(self.present),
                "kept": [{**p.as_dict(), "lcs": {"presence": lcs.presence, "communication": lcs.communication}}
                         for p, lcs in self.kept],
                "unmappable": [{"value": u.value, "reason": u.reason} for u in self.unmappable],
                "notes": list(self.notes)}


#: The runner's record of the entries it created: (Type, Mask) key (lower case) -> the
#: (Presence, Communication) values it gave the entry (more than one while an update is under way).
Created = Mapping[tuple[str, str], Iterable[tuple[str, str]]]


def plan(values: Iterable[str], lcs: Sequence[LcsAce], mapping: SipMapping,
         created: Created | None = None) -> PermissionPlan:
    """Compare the translated msExchIMACL with what LCS has: the set union to make. An entry
    LCS holds with other values is updated when ``created`` says the runner made it with exactly
    those values (nobody changed it on LCS since), kept otherwise."""
    t = translate(values, mapping)
    created = created or {}
    have = {a.key(): a for a in lcs}
    p = PermissionPlan(unmappable=t.unmappable, notes=t.notes)
    for e in t.entries:
        found = have.get(e.key())
        if found is None:
            p.to_add.append(e)
        elif found.presence.lower() == e.presence.lower() and found.communication.lower() == e.communication.lower():
            p.present.append(e)
        elif (found.presence.lower(), found.communication.lower()) in {
                (a.lower(), b.lower()) for a, b in created.get(e.key(), ())}:
            p.to_update.append((e, found))
        else:
            p.kept.append((e, found))
    return p

