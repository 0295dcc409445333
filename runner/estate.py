"""Which estate an inventory describes: the identity a state directory is bound to.

A state directory holds the checkpoints of ONE estate (DESIGN.md): outcomes,
facts and artifacts of one estate must never be read for another. An estate
is identified by what it is, not by the path of its inventory file, so that
moving or renaming the inventory (or the whole repository) keeps its history:

- ``domain``: the AD domain, from the ``DC=`` parts of the LCS home server DN;
- ``pools``: the LCS home server DN(s) users are homed on (``lcs_home_server_dn``
  in ``all.vars`` or any host's variables), normalised (case, spaces);
- ``exchange_im_servers`` / ``lcs_servers``: host names of those groups;
- ``lab``: for a simulated estate, the lab's own identity (runner.lab.store.
  lab_identity: fixed when the lab was generated, kept when it is moved), or
  ``lab_estate`` from an inventory written by ``runner lab serve``. A lab built
  from a real inventory (``lab init --from-inventory``) shares its names but is
  not that estate, and two labs of the same shape are not one estate;
- ``declared``: an optional ``estate_id`` variable an administrator may set.

Two descriptions are the same estate unless they conflict (``conflict``): a
component known on both sides differs (server groups: share no host). So an
estate that grows (another Exchange IM server, a pool DN added for a host) is
still itself. Users are keyed by their AD GUID (``subject``), which never
changes, rather than by alias, which can.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from runner.model import Inventory, User

DN_VAR = "lcs_home_server_dn"
DECLARED_VAR = "estate_id"
LAB_MARK_VAR = "lab_estate"


@dataclass(frozen=True)
class Estate:
    """What an inventory says its estate is (see the module docstring)."""

    domain: str | None = None
    pools: tuple[str, ...] = ()
    exchange_im_servers: tuple[str, ...] = ()
    lcs_servers: tuple[str, ...] = ()
    lab: str | None = None
    declared: str | None = None

    @property
    def key(self) -> str:
        """A short stable hash of the description (the store's estate key when first bound)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """Canonical JSON, as recorded in the state store."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Estate":
        """The inverse of ``to_json`` (unknown keys ignored, lists become tuples)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("an estate is a JSON object")
        fields = {k: raw.get(k) for k in ("domain", "lab", "declared")}
        for k in ("pools", "exchange_im_servers", "lcs_servers"):
            fields[k] = tuple(str(v) for v in (raw.get(k) or ()))
        return cls(**fields)  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line for a person: ``contoso.com (LCS lcs01, Exchange IM exim01, lab 1a2b...)``."""
        parts = []
        if self.declared:
            parts.append(f"estate_id {self.declared}")
        if self.lcs_servers:
            parts.append("LCS " + ", ".join(self.lcs_servers))
        if self.exchange_im_servers:
            parts.append("Exchange IM " + ", ".join(self.exchange_im_servers))
        if not self.lcs_servers and self.pools:
            parts.append("pool " + "; ".join(self.pools))
        if self.lab:
            parts.append(f"lab {self.lab}")
        head = self.domain or "an estate without an AD domain"
        return f"{head} ({', '.join(parts)})" if parts else head

    def conflict(self, other: "Estate") -> str | None:
        """Why ``other`` is not this estate, or None when it may be the same one."""
        if self.lab != other.lab:
            if self.lab and other.lab:
                return "a different lab (made by another `runner lab init`, or regenerated with --force)"
            return "one is a lab, the other is not" if (self.lab or other.lab) else None
        if self.declared and other.declared and self.declared != other.declared:
            return "a different estate_id"
        if self.domain and other.domain and self.domain != other.domain:
            return "a different AD domain"
        if self.pools and other.pools and not set(self.pools) & set(other.pools):
            return "no LCS home server DN in common"
        for label, mine, theirs in (("Exchange IM server", self.exchange_im_servers, other.exchange_im_servers),
                                    ("LCS server", self.lcs_servers, other.lcs_servers)):
            if mine and theirs and not set(mine) & set(theirs):
                return f"no {label} in common"
        return None


def normalise_dn(dn: str) -> str:
    """``CN=LC Services, cn=Microsoft`` -> ``cn=lc services,cn=microsoft`` (for comparison)."""
    return re.sub(r"\s*([,=])\s*", r"\1", str(dn).strip()).casefold()


def domain_of(dn: str) -> str | None:
    """The DNS name of the domain a DN lives in (its ``DC=`` parts), or None."""
    parts = [p.split("=", 1)[1] for p in normalise_dn(dn).split(",") if p.startswith("dc=") and "=" in p]
    return ".".join(parts) or None


def estate_of(inventory: Inventory, lab_identity: Any = None) -> Estate:
    """The estate ``inventory`` describes.

    ``lab_identity(host) -> str | None`` gives the lab id of a lab-connected
    host (the apply layer passes one that reads the lab directory); without it,
    only ``lab_estate`` marks a simulated estate.
    """
    written: set[str] = set()  # as written: most hosts take the same one from their groups
    for source in [inventory.vars, *(h.vars for h in inventory.hosts.values())]:
        value = (source or {}).get(DN_VAR)
        if isinstance(value, str) and value.strip():
            written.add(value)
    dns = {normalise_dn(value) for value in written}
    domains = sorted({d for d in (domain_of(dn) for dn in dns) if d})
    labs: set[str] = set()
    if lab_identity is not None:
        for host in inventory.hosts.values():
            if host.connection == "lab":
                found = lab_identity(host)
                if found:
                    labs.add(str(found))
    mark = (inventory.vars or {}).get(LAB_MARK_VAR)
    if not labs and isinstance(mark, str) and mark:
        labs.add(mark)
    declared = (inventory.vars or {}).get(DECLARED_VAR)
    return Estate(
        domain=" + ".join(domains) or None,
        pools=tuple(sorted(dns)),
        exchange_im_servers=_names(inventory.group_hosts("exchange_im_servers")),
        lcs_servers=_names(inventory.group_hosts("lcs_servers")),
        lab=" + ".join(sorted(labs)) or None,
        declared=str(declared) if declared not in (None, "") else None,
    )


def _names(hosts: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({h.casefold() for h in hosts}))


def normalise_guid(guid: str) -> str:
    """``{01234567-89ab-...}`` -> ``01234567-89AB-...`` (braces and case do not matter in AD)."""
    return str(guid).strip().strip("{}").upper()


def subject(user: User) -> str:
    """The key of a user's records in the state store: ``guid:<AD GUID>``, else ``alias:<alias>``."""
    if user.ad_guid:
        return f"guid:{normalise_guid(user.ad_guid)}"
    return f"alias:{user.alias}"


def subjects(inventory: Inventory) -> dict[str, str]:
    """Alias -> record key for every user of the inventory."""
    return {alias: subject(u) for alias, u in inventory.users.items()}


def playbook_name(playbook: str | Path) -> str:
    """The playbook part of a run's identity: its file name (moving the repository keeps it)."""
    return Path(playbook).name


def describe_estates(estates: Mapping[str, Estate]) -> str:
    """``a.yml: contoso.com (...); b.yml: ...`` for messages."""
    return "; ".join(f"{where}: {e.describe()}" for where, e in estates.items())
