"""The Exchange IM contact list as the client registry holds it, normalised and merged.

Layout (DOMAIN.md, conv): under ``<hive>\\<contacts_key>`` (default
``Software\\Microsoft\\Exchange\\Messenger\\Profiles``) one subkey per RVP
profile URL; its ``Contacts`` subkey has one value per contact (name = IM
address, REG_SZ data = display name, may be empty); ``Groups\\<group>``
subkeys list member addresses as value names.

``contacts_from_keys`` turns parsed keys (from ``reg query /s`` output or a
``.reg`` export, whatever the hive's mount name) into one normalised
document; ``merge`` joins a user's documents from several machines.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from runner.windows.regfile import RegKey

DEFAULT_CONTACTS_KEY = r"Software\Microsoft\Exchange\Messenger\Profiles"


def _relative(path: str, key: str) -> list[str] | None:
    """Path components of ``path`` below ``...\\<key>``, or None when not below it."""
    low, k = path.lower(), "\\" + key.strip("\\").lower()
    idx = low.find(k + "\\")
    if idx < 0:
        return [] if low.endswith(k) else None
    return path[idx + len(k) + 1:].split("\\")


def contacts_from_keys(keys: Iterable[RegKey], contacts_key: str = DEFAULT_CONTACTS_KEY) -> dict[str, Any]:
    """Normalise the keys below ``contacts_key`` into
    ``{"profiles": [...], "contacts": [{"address", "display_name", "groups"}], "groups": [...]}``,
    contacts sorted by address (case-insensitive), one entry per address;
    ``groups`` names every group key, members or not (an empty group is still
    the user's, and must reach LCS).

    A profile URL may itself contain backslashes only in theory; profile
    URLs use ``/`` so the first component is the profile.
    """
    profiles: list[str] = []
    contacts: dict[str, dict[str, Any]] = {}
    memberships: list[tuple[str, str]] = []
    groups: dict[str, str] = {}
    for key in keys:
        if key.delete:
            continue
        rel = _relative(key.path, contacts_key)
        if not rel:
            continue
        profile = rel[0]
        if profile not in profiles:
            profiles.append(profile)
        sub = [p.lower() for p in rel[1:]]
        if sub == ["contacts"]:
            for v in key.values:
                if v.delete or not v.name:
                    continue
                name = v.data if isinstance(v.data, str) else ""
                entry = contacts.setdefault(v.name.lower(), {"address": v.name, "display_name": "", "groups": []})
                if name and not entry["display_name"]:
                    entry["display_name"] = name
        elif len(sub) == 2 and sub[0] == "groups":
            group = rel[2]
            groups.setdefault(group.lower(), group)
            for v in key.values:
                if v.name and not v.delete:
                    memberships.append((v.name, group))
    for address, group in memberships:
        entry = contacts.setdefault(address.lower(), {"address": address, "display_name": "", "groups": []})
        if group not in entry["groups"]:
            entry["groups"].append(group)
    for entry in contacts.values():
        entry["groups"].sort(key=str.lower)
    return {"profiles": sorted(profiles), "contacts": [contacts[k] for k in sorted(contacts)],
            "groups": [groups[k] for k in sorted(groups)]}


def merge(per_machine: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge one user's documents from several machines (in the user's ``clients`` order).

    Rules: contacts are keyed by address, case-insensitively; the address is
    written as on the first machine that has it; groups are the union; the
    display name is the first non-empty one in machine order, and any other
    non-empty name for the same address is recorded in ``conflicts``;
    ``sources`` lists the machines holding the contact; ``groups`` is the
    union of every machine's group names (first spelling kept).
    """
    merged: dict[str, dict[str, Any]] = {}
    all_groups: dict[str, str] = {}
    conflicts: list[dict[str, Any]] = []
    for host, doc in per_machine:
        for g in doc.get("groups", []):
            all_groups.setdefault(g.lower(), g)
        for c in doc.get("contacts", []):
            key = c["address"].lower()
            entry = merged.get(key)
            if entry is None:
                entry = merged[key] = {"address": c["address"], "display_name": c.get("display_name", ""),
                                       "groups": list(c.get("groups", [])), "sources": [host],
                                       "_name_from": host}
                continue
            if host not in entry["sources"]:
                entry["sources"].append(host)
            for g in c.get("groups", []):
                if g.lower() not in (x.lower() for x in entry["groups"]):
                    entry["groups"].append(g)
            name = c.get("display_name", "")
            if name and not entry["display_name"]:
                entry["display_name"], entry["_name_from"] = name, host
            elif name and name != entry["display_name"]:
                conflicts.append({"address": entry["address"], "kept": entry["display_name"],
                                  "kept_from": entry["_name_from"], "ignored": name, "ignored_from": host})
    out = []
    for key in sorted(merged):
        entry = merged[key]
        entry.pop("_name_from")
        entry["groups"].sort(key=str.lower)
        out.append(entry)
    return {"contacts": out, "conflicts": conflicts, "groups": [all_groups[k] for k in sorted(all_groups)]}


def dumps(doc: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes (sorted keys, UTF-8, newline): equal documents, equal sha256."""
    return (json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
