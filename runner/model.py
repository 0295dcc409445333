"""The typed model of an inventory and a playbook (frozen dataclasses).

The loader builds these from validated YAML; the planner and engine read
them. Nothing here does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

TargetKind = Literal["host", "user"]

#: Variables naming a file or folder on the control node. A relative one is relative to the
#: folder of the inventory that sets it, whatever the current directory: the loader makes them
#: absolute (runner.loader), the SSH connection resolves them the same way when a value comes
#: from elsewhere (runner.connections.ssh), and an inventory written into another folder
#: (``from-ldif --base``, ``discover -o``) has them rebased (runner.inventory.build). One list
#: for all three, so a new path variable cannot be resolved by one and forgotten by another.
CONTROL_NODE_PATH_VARS: tuple[str, ...] = ("lab_dir", "messenger_package_local", "ssh_key_file",
                                           "ssh_known_hosts", "ssh_password_file")


@dataclass(frozen=True)
class Host:
    """A machine: a Windows client, the Exchange IM server or an LCS pool server.

    ``connection`` names the connection kind ("lab", "ssh"); ``vars`` are the
    merged variables (group vars, then host vars) the host sees.
    """

    name: str
    connection: str = "lab"
    address: str | None = None
    port: int | None = None
    user: str | None = None
    groups: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class User:
    """A person being migrated, with the client machines they use.

    ``alias`` is the unique id (``alice``); ``im_address`` the Exchange IM
    address (``alice@im.contoso.com``); ``clients`` the host names of the
    machines whose registry holds their contact list. ``sip_uri`` overrides
    the inventory's mapping rule for this user; ``wave`` names the wave the
    user moves in (gradual scenarios).
    """

    alias: str
    im_address: str
    clients: tuple[str, ...] = ()
    display_name: str | None = None
    sid: str | None = None
    ad_guid: str | None = None
    sip_uri: str | None = None
    home_server: str | None = None
    wave: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """An inventory group: its own hosts, child groups and variables."""

    name: str
    hosts: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    """Hosts, groups, users and global variables (``all.vars``)."""

    path: str
    hosts: Mapping[str, Host]
    groups: Mapping[str, Group]
    users: Mapping[str, User]
    vars: Mapping[str, Any] = field(default_factory=dict)

    def users_of_client(self, host: str) -> list["User"]:
        """Users whose ``clients`` include ``host``, in inventory order.

        From an index built on first use (the inventory does not change during a run):
        steps ask this for every machine, and scanning every user each time made a
        10,000-client run quadratic."""
        index = self.__dict__.get("_users_of_client")
        if index is None:
            index = {}
            for u in self.users.values():
                for c in dict.fromkeys(u.clients):
                    index.setdefault(c, []).append(u)
            object.__setattr__(self, "_users_of_client", index)
        return list(index.get(host, ()))

    def sip_uris_by_address(self) -> Mapping[str, str]:
        """Lower-case ``im_address`` -> explicit ``sip_uri`` of the users that set one (read-only,
        built once: every user's mapping rule consults it)."""
        found = self.__dict__.get("_sip_uris_by_address")
        if found is None:
            found = MappingProxyType({u.im_address.lower(): u.sip_uri for u in self.users.values()
                                      if u.sip_uri and u.im_address})
            object.__setattr__(self, "_sip_uris_by_address", found)
        return found

    def group_hosts(self, group: str) -> list[str]:
        """All host names in ``group`` and its descendants, in inventory order."""
        seen: dict[str, None] = {}
        stack = [group]
        visited: set[str] = set()
        while stack:
            g = stack.pop(0)
            if g in visited or g not in self.groups:
                continue
            visited.add(g)
            for h in self.groups[g].hosts:
                seen.setdefault(h, None)
            stack.extend(self.groups[g].children)
        return list(seen)


@dataclass(frozen=True)
class Step:
    """One step of a play: a step module with arguments.

    ``args`` are raw (untemplated); ``fingerprint`` is a hash of the step's
    definition (module, args, when, play vars it uses) so that editing a step
    re-runs it on resume. ``line`` is where it starts in the playbook file.
    """

    name: str
    module: str
    args: Mapping[str, Any] = field(default_factory=dict)
    when: str | None = None
    tags: tuple[str, ...] = ()
    retries: int | None = None
    delay: float | None = None
    throttle: int | None = None
    ignore_errors: bool = False
    fingerprint: str = ""
    line: int | None = None


@dataclass(frozen=True)
class Serial:
    """How a play is cut into waves.

    ``over`` is "users" or "hosts"; either ``size`` (a count), ``percent``,
    or ``attribute`` (a user attribute such as ``wave``: one wave per value,
    in order of first appearance or ``order`` when given) is set.
    """

    over: Literal["users", "hosts"] = "users"
    size: int | None = None
    percent: float | None = None
    attribute: str | None = None
    order: tuple[str, ...] = ()


@dataclass(frozen=True)
class Play:
    """A play: target hosts/groups (and users), variables, waves and steps."""

    name: str
    hosts: str = "all"
    users: str = "all"
    vars: Mapping[str, Any] = field(default_factory=dict)
    serial: Serial | None = None
    max_fail_percentage: float | None = None
    steps: tuple[Step, ...] = ()
    line: int | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)  # -e: above every other variable


@dataclass(frozen=True)
class Playbook:
    """A validated playbook file: its plays in order."""

    path: str
    plays: tuple[Play, ...]
