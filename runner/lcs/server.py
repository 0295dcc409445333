"""Talking to an LCS 2005 pool server through wmic: read and create users, groups, contacts.

Every call is one round trip: reads of a user's groups, contacts and the
pool's ``MaxContactsPerUser`` are chained with ``&`` and split apart with
sectioned output; creations are packed into as few lines as cmd.exe's
8,191-character limit allows. A busy or unreachable WMI server is a
TransientFault (the engine retries); other wmic errors are reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from runner.connections.base import Connection
from runner.errors import PermanentFault, TransientFault
from runner.lcs.contacts import DEFAULT_MAX_CONTACTS, LcsContact, LcsGroup, PlannedContact, group_ids_for
from runner.model import Inventory, User
from runner.windows import wmic
from runner.windows.cmdline import Command, batch, sectioned, split_sections

USER_CLASS = "MSFT_SIPESUserSetting"
CONTACT_CLASS = "MSFT_SIPESUserContactData"
GROUP_CLASS = "MSFT_SIPESUserContactGroupData"
POOL_CLASS = "MSFT_SIPESEmSetting"
USER_PROPS = ("InstanceID", "UserDN", "PrimaryURI", "Enabled", "HomeServerDN")


def home_server(user: User, inventory: Inventory, vars: Mapping[str, Any]) -> str:
    """The LCS host name ``user`` is homed on: ``user.home_server``, else var
    ``lcs_server``, else the first host of the ``lcs_servers`` group."""
    if user.home_server:
        return user.home_server
    if vars.get("lcs_server"):
        return str(vars["lcs_server"])
    hosts = inventory.group_hosts("lcs_servers")
    if not hosts:
        raise PermanentFault("no LCS server: set user.home_server, var lcs_server, or an lcs_servers group")
    return hosts[0]


def instance_id(user: User) -> str:
    """The user's AD GUID in braces (MSFT_SIPESUserSetting.InstanceID); required."""
    if not user.ad_guid:
        raise PermanentFault(f"user {user.alias} has no ad_guid in the inventory")
    g = user.ad_guid.strip()
    return (g if g.startswith("{") else "{" + g + "}").upper()


@dataclass
class UserState:
    """A user's LCS side as read in one round trip."""

    user: dict[str, str] | None = None
    groups: list[LcsGroup] = field(default_factory=list)
    contacts: list[LcsContact] = field(default_factory=list)
    max_contacts: int = DEFAULT_MAX_CONTACTS


class LcsServer:
    """wmic operations against one LCS server for one user's data."""

    def __init__(self, conn: Connection, host: str) -> None:
        self.conn = conn
        self.host = host

    def _run_sections(self, commands: Sequence[Command], what: str) -> list[wmic.WmicOutcome | None]:
        """Run ``commands`` in as few round trips as fit; per command the parsed
        stdout section (or None when it did not run)."""
        results: list[Any] = []
        for line_cmds in _chunks(commands):
            wrapped, nonce = sectioned(line_cmds)
            out: list[Any] = []
            for line in batch(wrapped):
                res = self.conn.run(line.render())
                out.append(res)
            stdout = "".join(r.stdout for r in out)
            stderr = "".join(r.stderr for r in out)
            sections = split_sections(stdout, len(line_cmds), nonce)
            if any(s is None or not s.ok for s in sections) or "ERROR:" in stderr:
                failure = wmic.outcome(stdout, stderr, ok=False)
                if failure.code in wmic.TRANSIENT_CODES:
                    raise TransientFault(f"{what}: LCS server {self.host} busy or unavailable "
                                         f"(0x{failure.code:08X} {failure.description})", host=self.host)
            results.extend(sections)
            self._last_stderr = stderr
        return results

    def read(self, iid: str, *, contacts: bool = True) -> UserState:
        """The user setting, groups, contacts and MaxContactsPerUser, in one round trip."""
        cond = wmic.where(UserInstanceID=iid)
        cmds = [wmic.get(USER_CLASS, USER_PROPS, wmic.where(InstanceID=iid))]
        if contacts:
            cmds += [wmic.get(GROUP_CLASS, ("GroupID", "Name"), cond),
                     wmic.get(CONTACT_CLASS, ("GroupID", "Name", "SIPURI"), cond),
                     wmic.get(POOL_CLASS, ("MaxContactsPerUser",))]
        secs = self._run_sections(cmds, "read LCS user")
        for s in secs:
            if s is None or not s.ok:
                raise PermanentFault(f"could not read LCS data on {self.host}: "
                                     f"{wmic.outcome('', getattr(self, '_last_stderr', ''), False).description}",
                                     host=self.host)
        state = UserState()
        users = wmic.parse_list(secs[0].stdout)
        state.user = users[0] if users else None
        if contacts:
            state.groups = [LcsGroup(int(r["GroupID"]), r.get("Name", "")) for r in wmic.parse_list(secs[1].stdout)
                            if r.get("GroupID", "").strip().isdigit()]
            state.contacts = [LcsContact(r.get("SIPURI", ""), r.get("Name", ""),
                                         tuple(int(x) for x in wmic.parse_array(r.get("GroupID")) if x.isdigit()))
                              for r in wmic.parse_list(secs[2].stdout)]
            pool = wmic.parse_list(secs[3].stdout)
            if pool and pool[0].get("MaxContactsPerUser", "").strip().isdigit():
                state.max_contacts = int(pool[0]["MaxContactsPerUser"])
        return state

    def enable(self, iid: str, user_dn: str, home_dn: str, uri: str) -> None:
        """Create the MSFT_SIPESUserSetting of a user (Enabled=TRUE)."""
        cmd = wmic.create(USER_CLASS, {"InstanceID": iid, "UserDN": user_dn, "HomeServerDN": home_dn,
                                       "PrimaryURI": uri, "Enabled": True})
        [sec] = self._run_sections([cmd], "enable LCS user")
        if sec is None or not sec.ok:
            out = wmic.outcome(sec.stdout if sec else "", getattr(self, "_last_stderr", ""), False)
            wmic.raise_for(out, f"enable {uri} on {self.host}", self.host)

    def create_groups(self, iid: str, names: Sequence[str]) -> tuple[list[LcsGroup], list[str]]:
        """Create groups, then re-read the user's groups (server-assigned ids) in the
        same round trip; returns (all groups now, failures)."""
        cmds = [wmic.create(GROUP_CLASS, {"UserInstanceID": iid, "Name": wmic.clean_text(n)}) for n in names]
        cmds.append(wmic.get(GROUP_CLASS, ("GroupID", "Name"), wmic.where(UserInstanceID=iid)))
        secs = self._run_sections(cmds, "create contact groups")
        failures = [f"group {n!r} not created" for n, s in zip(names, secs) if s is None or not s.ok]
        last = secs[-1]
        groups = [LcsGroup(int(r["GroupID"]), r.get("Name", "")) for r in wmic.parse_list(last.stdout if last else "")
                  if r.get("GroupID", "").strip().isdigit()]
        return groups, failures

    def create_contacts(self, iid: str, contacts: Sequence[PlannedContact],
                        groups: Sequence[LcsGroup]) -> tuple[list[str], list[str]]:
        """Create contacts (Subscribed=TRUE, GroupID from group names); (created URIs, failures)."""
        cmds = []
        for c in contacts:
            values: dict[str, Any] = {"UserInstanceID": iid, "SIPURI": c.uri}
            if c.name:
                values["Name"] = wmic.clean_text(c.name)
            values["Subscribed"] = True
            ids = group_ids_for(c.groups, groups)
            if ids:
                values["GroupID"] = list(ids)
            cmds.append(wmic.create(CONTACT_CLASS, values))
        secs = self._run_sections(cmds, "create contacts")
        created, failed = [], []
        for c, s in zip(contacts, secs):
            (created if s is not None and s.ok else failed).append(c.uri)
        return created, failed


def _chunks(commands: Sequence[Command], size: int = 200) -> list[Sequence[Command]]:
    """Sections are numbered per call; keep calls moderate so one failure costs little."""
    return [commands[i:i + size] for i in range(0, len(commands), size)] or [[]]
