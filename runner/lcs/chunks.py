"""Many users' server work in one round trip: sectioned commands on one line, or in a script file.

The chunked LCS and Exchange IM steps (docs/server-batching.md) collect the
commands of a whole chunk of users in a :class:`ChunkScript`: each command is
sectioned (runner.windows.cmdline), so every user's outcome is read from its
own marked section. When everything fits on one command line (the host's
limit, :func:`line_limit`) the chunk is one round trip. Otherwise the
commands go into a batch file (``@echo off``, one command a line, ``%``
doubled as a batch file wants) run once with ``cmd /c`` and deleted. On a
connection that can feed a line's standard input (``run_input``: SSH and
the lab), the script is that input, written to its file by the line that
runs it (runner.windows.scripts): one round trip whatever the
chunk's size. Without it, a change's script is put first (two round trips)
and a read is packed into as few lines as fit, so that a probe never puts a
file. A read's fed script is one of its scratch files, like its ldifde
exports: nothing the migration is about changes on the host. A file the
commands use (an LDIF file to import, ``deliver``) goes with the first line
in the same way, or is put first.

Scratch files (the script, ldifde exports) are named after the chunk's first
owner (a user's alias, runner.lcs.exchange.owner_tag). A read (``clean``)
also removes the ``runner-<tag>-*`` files of any of its owners that a killed
run left: its first command lists ``runner-*`` in ``remote_temp``
(``dir /b /a-d``, one short command whatever the chunk's size, where a
``del`` per owner took a whole 2,047-character line for 45 users), and the
listed files of its owners, other than its own, are deleted in one more line
afterwards, so only after a kill. No other chunk holding one of these users
is in flight then (a user is in one task at a time); other users' files are
left alone (their chunk may be running).

A busy pool answers busy per request, so :meth:`ChunkScript.run` sends again,
after a short pause, only the commands wmic said were busy (and, in a chunk
that only reads, the lines whose connection was lost), keeping every other
command's outcome: one busy answer to a chunk-wide read no longer costs every
user of the chunk an attempt (docs/server-batching.md).
"""
from __future__ import annotations

import secrets
import time
from typing import Any, Callable, Mapping, Sequence

from runner.connections.base import CommandResult, Connection
from runner.errors import ChannelFault, PermanentFault, StepFault, TransientFault
from runner.lcs.exchange import Query, owner_tag, temp_path
from runner.windows import ldif, wmic
from runner.windows.cmdline import (MAX_COMMAND_LINE, Command, Quoted, Section, batch, chain, sectioned,
                                    split_sections)
from runner.windows.scripts import (batch_file, console_codepage, encodable, feed_command, feeds, run_delivering,
                                    script_line)

#: cmd.exe on Windows 2000 takes at most 2,047 characters (KB 830473); XP / 2003 take 8,191.
WINDOWS_2000_LINE = 2047
#: LCS 2005 runs on Windows Server 2003 only, so its pool servers take the longer line.
LCS_LINE = MAX_COMMAND_LINE
#: Values per OR condition of one command (a WQL where, an LDAP filter): keeps each command short.
OR_GROUP = 40
#: Seconds before a chunk's busy commands are sent again (ChunkScript.run), one pause per
#: resend, scaled like every retry delay (RUNNER_RETRY_DELAY_SCALE). A pool busy for longer
#: than these is left to the step's ``retries`` and ``delay``.
RESEND_PAUSES = (0.25, 0.5, 1.0)


def _pause(seconds: float) -> None:
    from runner.engine import retry_delay_scale  # the engine's scale; imported late (the engine imports steps)
    time.sleep(seconds * retry_delay_scale())


def line_limit(vars: Mapping[str, Any], default: int = WINDOWS_2000_LINE) -> int:
    """The host's command-line limit: var ``command_line_limit`` (256 to 8,191), else ``default``."""
    raw = vars.get("command_line_limit")
    try:
        value = int(raw) if raw is not None and not isinstance(raw, bool) else default
    except (TypeError, ValueError):
        value = default
    return max(256, min(MAX_COMMAND_LINE, value))


def groups(values: Sequence[Any], size: int = OR_GROUP) -> list[Sequence[Any]]:
    """``values`` cut into as few runs of at most ``size`` as possible, of even lengths
    (46 values: 23 and 23, not 40 and 6), so that two half-full commands share a line
    with the chunk's other commands instead of a full one taking a line of its own."""
    if not values:
        return []
    count = -(-len(values) // size)
    base, extra = divmod(len(values), count)
    out, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        out.append(values[start:end])
        start = end
    return out


def wql_any(prop: str, values: Sequence[str]) -> str:
    """A WQL condition true when ``prop`` equals any of ``values`` (each escaped by wmic.where)."""
    return " OR ".join(wmic.where(**{prop: v}) for v in values)


def ldap_any(attr: str, values: Sequence[str]) -> str:
    """An LDAP filter matching ``attr`` equal to any of ``values`` (each escaped by ldif)."""
    parts = "".join(f"({attr}={ldif.escape_filter_value(v)})" for v in values)
    return parts if len(values) == 1 else f"(|{parts})"


class ChunkScript:
    """The commands of one chunk, run in one round trip (a line, or a script fed with the line
    that runs it), or a few (a script put, then run; a read in lines)."""

    def __init__(self, conn: Connection, host: str, vars: Mapping[str, Any], owners: Sequence[str], *,
                 limit: int, clean: bool = False, script: bool = True,
                 deliver: tuple[bytes, str] | None = None) -> None:
        """``clean``: delete the owners' stale scratch files first (reads); ``script``: what does not
        fit on one line goes into a script file (changes) rather than several lines (reads, on a
        connection that cannot feed a line's input); ``deliver``: (data, path), a file the
        commands use (an LDIF file to import), sent with the first line."""
        if clean and deliver is not None:  # the stale files' listing would run after the file landed
            raise ValueError("a chunk that cleans stale scratch files delivers no file")
        self.conn = conn
        self.host = host
        self.vars = vars
        self.owners = [o for o in dict.fromkeys(owners)] or ["chunk"]
        self.limit = limit
        self.clean = clean
        self.script = script
        self.commands: list[Command] = []
        self._queries: list[tuple[Query, int]] = []
        self._own: set[str] = set()   # this chunk's own scratch file names (lower case)
        self.sections: list[Section | None] = []
        self.stderr = ""
        self.removed: list[str] = []  # stale scratch files of the owners deleted after the run
        self._reads: list[bool] = []  # per command: it only reads (see :meth:`add`)
        self._commutes: list[bool] = []  # per command: a change that may run before or after its like
        self._lost: ChannelFault | None = None  # the last pass lost a line of a read-only chunk
        self._printed = ""  # what the last pass printed (for a chunk that printed no section)
        self.deliver = deliver

    def _scratch(self, ext: str) -> str:
        name = f"runner-{owner_tag(self.owners[0])}-{secrets.token_hex(4)}.{ext}"
        self._own.add(name.lower())
        return temp_path(self.conn, self.vars, name)

    def _stale(self, listing: Section | None) -> list[str]:
        """The files of the ``dir /b`` listing that a killed run left for this chunk's owners."""
        if listing is None or not listing.ok:
            return []
        tags = tuple(f"runner-{owner_tag(o)}-" for o in self.owners)
        names = [n.strip() for n in listing.stdout.splitlines()]
        return [n for n in names if n and n.lower().startswith(tags) and n.lower() not in self._own]

    def _remove(self, names: list[str]) -> None:
        """Delete stale scratch files (best effort: a failure leaves them to a later read)."""
        dels = [Command("del", "/q", Quoted(temp_path(self.conn, self.vars, n))) for n in names]
        try:
            for one in batch(dels, limit=self.limit):
                self.conn.run(one.render(limit=self.limit))
        except StepFault:
            return
        self.removed = names

    def add(self, cmd: Command, *, stderr_too: bool = False, read: bool = False, commutes: bool = False) -> int:
        """Add ``cmd``; its index for :meth:`section`. ``stderr_too``: its stderr goes into its
        section (wmic prints its errors there, so each one stays with its user). ``read``: it
        changes nothing (a query), so it may be sent again (see :meth:`run`). ``commutes``: a
        change that depends on none of the commuting changes added next to it, nor they on
        it (one contact's create beside another's), so they may run in another order."""
        if commutes and read:
            raise ValueError("a read keeps its place after the changes before it")
        self.commands.append(Command(cmd, "2>&1") if stderr_too else cmd)
        self._reads.append(read)
        self._commutes.append(commutes)
        return len(self.commands) - 1

    @property
    def read_only(self) -> bool:
        """Every command is a read: the chunk changes nothing on the host."""
        return all(self._reads)

    def add_query(self, q: Query) -> int:
        """Add an ldifde search (export to a scratch file, type it, delete it); a handle for :meth:`entries`."""
        path = self._scratch("ldf")
        first = self.add(ldif.export_command(path, q.ldap_filter, q.attrs, q.base_dn), read=True)
        self.add(Command("type", Quoted(path)), read=True)
        self.add(Command("del", "/q", Quoted(path)), read=True)
        self._queries.append((q, first))
        return len(self._queries) - 1

    def run(self) -> None:
        """Run the chunk; afterwards :meth:`section` and :meth:`entries` tell each command's outcome.

        A command the server answered busy (wmic ``0x80041045``: it did nothing) is sent
        again, alone with the others that were, after a short pause (``RESEND_PAUSES``), as
        an administrator would re-run it: what succeeded stays done and is not sent again,
        so one busy answer costs that command a moment, not every user of the chunk an
        attempt. When a change is sent again, the reads after it in the chunk are too (a
        read-back must see it). A read-only chunk also sends again the lines whose
        connection dropped or timed out (a read can be repeated). What is still busy after
        the last pause is the outcome the step sees (its user is retried by the engine)."""
        everything = list(range(len(self.commands)))
        self._send(everything, first=True)
        for pause in RESEND_PAUSES:
            again = [i for i in everything if self._resend(self.sections[i])]
            if not again:
                break
            changed = [i for i in again if not self._reads[i]]
            if changed:  # a read-back after a resent change must see it
                again = sorted(set(again) | {i for i in everything if self._reads[i] and i > changed[0]})
            _pause(pause)
            try:
                self._send(again)
            except StepFault:  # they keep their first answer: busy, or not run
                break
        if not any(self.sections) and self.commands:
            raise self._lost or TransientFault(
                f"no output from the {len(self.commands)} command(s) of a chunk on {self.host} "
                f"({self._printed.strip()[-200:] or 'nothing printed'}; a script cut short in transfer "
                "is not run)", host=self.host)

    def _resend(self, sec: Section | None) -> bool:
        """Whether a command with this outcome is sent again: the server said busy, or (in a
        read-only chunk) its line was lost with the connection."""
        if sec is None:
            return self.read_only and self._lost is not None
        return not sec.ok and wmic.busy(sec.stdout)

    def _send(self, indices: list[int], *, first: bool = False) -> None:
        """Run the commands ``indices`` (all of them, ``first``) as one line, a few lines (reads)
        or a script (fed with its line, or put and run); their sections replace what an
        earlier pass left."""
        nonce = secrets.token_hex(4)
        commands = [self.commands[i] for i in indices]
        clean = self.clean and first
        if clean:  # listed first: before this chunk's own scratch files exist
            commands.append(Command("dir", "/b", "/a-d", Quoted(temp_path(self.conn, self.vars, "runner-*"))))
        wrapped, _ = sectioned(commands, nonce)
        if clean:
            wrapped.insert(0, wrapped.pop())
        self._lost = None
        data = self.deliver if first else None  # the file the commands use, sent once
        if data is not None and not feeds(self.conn):
            self.conn.put(*data)
            data = None
        prefix = [feed_command(data[1])] if data is not None else []
        whole = chain([*prefix, *wrapped]) if wrapped else None  # flat: a nested Command renders alone
        if whole is not None and len(whole) <= self.limit:
            res = self._line(whole, data[0] if data is not None else None)
        elif not self.script and (data is not None or not feeds(self.conn)):
            # a read in several lines; the file, if any, fed to the first (the line's one input)
            lines = batch(wrapped, limit=self.limit - (len(prefix[0]) + 3 if prefix else 0))
            results = [self._line(Command(*prefix, "&", *lines[0].bits) if prefix else lines[0],
                                  data[0] if data is not None else None)]
            results += [self._line(one) for one in lines[1:]]
            res = CommandResult(results[-1].rc, "".join(r.stdout for r in results),
                                "".join(r.stderr for r in results))
        else:
            if data is not None:  # the file put, the script fed (a line has one input)
                self.conn.put(*data)
            res = self._scripted(wrapped, [False] * int(clean) + [self._commutes[i] for i in indices])
        sections = split_sections(res.stdout, len(commands), nonce)
        self._printed = res.stderr or res.stdout
        if first:
            self.sections = sections[:len(self.commands)]
            self.stderr = res.stderr
        else:
            for i, sec in zip(indices, sections):
                if sec is not None or self.sections[i] is None:
                    self.sections[i] = sec
            self.stderr += res.stderr
        stale = self._stale(sections[-1]) if clean else []
        if stale:
            self._remove(stale)

    def _scripted(self, wrapped: list[Command], commutes: list[bool]) -> CommandResult:
        """Run the (sectioned) commands as a script: one fed with its line, or put and run.

        cmd.exe reads a batch file in the console's code page, where a command line arrives
        as sent: a command holding a character outside it (a group named in Chinese on a
        US-English server) goes on the line after the script instead, with as many of the
        commands after it as the line takes; a script of what follows comes next. Changes
        added as ``commutes`` (creates of one kind that do not depend on each other) are
        reordered, those a script can carry first, so that a chunk of thousands costs one
        or two round trips more, not one per such command."""
        codepage = console_codepage(self.conn)  # the server's own, as its output is read
        order = _carried_first(wrapped, commutes, lambda c: encodable(c.render(), codepage))
        carried = [encodable(c.render(), codepage) for c in order]
        results: list[CommandResult] = []
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and carried[j]:
                j += 1
            script, end = (self._scratch("cmd"), None) if j > i else (None, None)
            head: list[Command] = []
            if script is not None:
                # the script's last line is a mark the line checks before running it: a script cut
                # short in transfer never runs (its commands come back with no section: retried).
                # Every % of a chunk's commands is data (Quoted refuses %): doubled, as a batch file wants
                text, end = batch_file([c.render() for c in order[i:j]], double_percent=True, codepage=codepage)
                head = [script_line(script, end)]
            room = self.limit - (len(feed_command(script)) + 3 if script is not None else 0)
            k = j
            while k < len(order) and len(chain([*head, *order[j:k + 1]])) <= room:
                k += 1
            if script is None and k == j:
                chain([order[j]]).render(limit=self.limit)  # one command longer than a line: says so
            line = chain([*head, *order[j:k]])
            if script is None:
                results.append(self._line(line))
            else:  # fed with its line where the connection can (one round trip), else put, then run
                results.append(run_delivering(self.conn, line, data=text, path=script, limit=self.limit,
                                              run=self._line))
            i = k
        if not results:
            return CommandResult(0, "", "")
        return CommandResult(results[-1].rc, "".join(r.stdout for r in results),
                             "".join(r.stderr for r in results))

    def _line(self, line: Command | str, data: bytes | None = None) -> CommandResult:
        """Run one line (``data``: its standard input); in a read-only chunk a dropped or
        timed-out line gives no output (its commands are sent again, see :meth:`run`)
        instead of failing the whole read."""
        text = line if isinstance(line, str) else line.render(limit=self.limit)
        try:
            if data is not None:
                return self.conn.run_input(text, data)  # type: ignore[attr-defined]
            return self.conn.run(text)
        except ChannelFault as exc:
            if not self.read_only:
                raise
            self._lost = exc
            return CommandResult(-1, "", "")

    def section(self, index: int) -> Section | None:
        return self.sections[index] if index < len(self.sections) else None

    def entries(self, handle: int) -> list[ldif.Entry]:
        """The entries a query found; PermanentFault when its ldifde failed."""
        q, first = self._queries[handle]
        export, typed = self.section(first), self.section(first + 1)
        if export is None and self._lost is not None:
            raise TransientFault(f"ldifde search {q.ldap_filter[:120]} on {self.host}: {self._lost.message}",
                                 host=self.host)
        if export is None or not export.ok:
            detail = (self.stderr or (export.stdout if export else "")).strip().splitlines()
            raise PermanentFault(f"ldifde search {q.ldap_filter[:120]} on {self.host} failed: "
                                 f"{detail[-1] if detail else 'no output'}", host=self.host)
        if typed is None or not typed.ok:
            return []
        return ldif.parse(typed.stdout)


def _carried_first(commands: list[Command], commutes: list[bool],
                   carried: Callable[[Command], bool]) -> list[Command]:
    """``commands`` with each run of adjacent commuting ones reordered: those ``carried`` (a
    script can hold them) first, both parts in their order; the others keep their places."""
    out: list[Command] = []
    run: list[Command] = []
    for cmd, free in zip([*commands, None], [*commutes, False]):
        if free:
            run.append(cmd)
            continue
        out += [c for c in run if carried(c)] + [c for c in run if not carried(c)]
        run = []
        if cmd is not None:
            out.append(cmd)
    return out


def im_entries(conn: Connection, host: str, vars: Mapping[str, Any], owners: Sequence[str],
               addresses: Sequence[str], attrs: Sequence[str]) -> dict[str, ldif.Entry]:
    """The directory entries whose msExchIMAddress is one of ``addresses``, by that address in
    lower case: one ldifde search per OR group, on one line or a few (Windows 2000's limit by
    default), deleting the ``owners``' stale scratch files first; raises when a search failed."""
    script = ChunkScript(conn, host, vars, owners, limit=line_limit(vars, WINDOWS_2000_LINE), clean=True,
                         script=False)
    handles = [script.add_query(Query(ldap_any("msExchIMAddress", list(g)), tuple(attrs)))
               for g in groups(list(addresses))]
    script.run()
    return {a.lower(): e for h in handles for e in script.entries(h) for a in e.get("msExchIMAddress")}


def busy_section(sec: Section | None) -> bool:
    """The section of a wmic command that met a busy or unreachable server (or never ran)."""
    if sec is None:
        return True
    return wmic.outcome(sec.stdout, "", ok=False).code in wmic.TRANSIENT_CODES


def outcomes(script: ChunkScript, named: Sequence[tuple[str, int]]) -> tuple[list[str], list[str], bool]:
    """One user's wmic creations in a run ChunkScript (name, command index): the names whose
    section succeeded, those that failed, and whether a failure met a busy or unreachable
    server (the user is then retried rather than failed)."""
    done, failed, busy = [], [], False
    for name, i in named:
        sec = script.section(i)
        if sec is not None and sec.ok and "ERROR:" not in sec.stdout:
            done.append(name)
        else:
            failed.append(name)
            busy = busy or busy_section(sec)
    return done, failed, busy


def wmic_fault(sec: Section | None, what: str, host: str) -> Exception | None:
    """The fault of one wmic command's section (stderr included), None when it succeeded:
    TransientFault for a busy or unreachable server, WmicError otherwise."""
    if sec is not None and sec.ok and "ERROR:" not in sec.stdout:
        return None
    out = wmic.outcome(sec.stdout if sec else "", "", ok=False)
    if sec is None:
        return TransientFault(f"{what}: the command did not run on {host}", host=host)
    try:
        wmic.raise_for(out, what, host)
    except Exception as exc:  # noqa: BLE001 - handed back as that user's outcome
        return exc
    return None


class LcsRead:
    """The LCS state of many users, read with a few OR-ed wmic queries added to a ChunkScript
    (what LcsServer.read reads for one user: setting, groups, contacts, MaxContactsPerUser)."""

    def __init__(self, script: ChunkScript, iids: Sequence[str], *, contacts: bool = True,
                 only_groups: bool = False) -> None:
        """``contacts``: also the groups, contacts and the pool's limit; ``only_groups``: the
        groups alone (a read-back of groups just created, whose server-assigned ids are needed)."""
        from runner.lcs.server import CONTACT_CLASS, GROUP_CLASS, POOL_CLASS, USER_CLASS, USER_PROPS
        self.script = script
        self.iids = list(dict.fromkeys(iids))
        self.contacts = contacts and not only_groups
        contacts = self.contacts
        self._parts: list[tuple[str, Sequence[str], int]] = []
        for g in groups(self.iids):
            if not only_groups:
                self._parts.append(("user", g, script.add(wmic.get(USER_CLASS, ("InstanceID",) + tuple(
                    p for p in USER_PROPS if p != "InstanceID"), wql_any("InstanceID", g)), stderr_too=True, read=True)))
            if contacts or only_groups:
                self._parts.append(("group", g, script.add(wmic.get(
                    GROUP_CLASS, ("UserInstanceID", "GroupID", "Name"), wql_any("UserInstanceID", g)),
                    stderr_too=True, read=True)))
                self._parts.append(("contact", g, script.add(wmic.get(
                    CONTACT_CLASS, ("UserInstanceID", "GroupID", "Name", "SIPURI"), wql_any("UserInstanceID", g)),
                    stderr_too=True, read=True)))
        self._pool = script.add(wmic.get(POOL_CLASS, ("MaxContactsPerUser",)), stderr_too=True, read=True) if contacts else None

    def states(self) -> dict[str, Any]:
        """Per InstanceID (upper case): its runner.lcs.server.UserState, or the fault of its read."""
        from runner.lcs.contacts import LcsContact, LcsGroup
        from runner.lcs.server import UserState
        out: dict[str, Any] = {iid.upper(): UserState() for iid in self.iids}
        host = self.script.host
        max_contacts = None
        if self._pool is not None:
            sec = self.script.section(self._pool)
            fault = wmic_fault(sec, "read MaxContactsPerUser", host)
            if fault is not None:
                return {k: fault for k in out}
            pool = wmic.parse_list(sec.stdout if sec else "")
            if pool and pool[0].get("MaxContactsPerUser", "").strip().isdigit():
                max_contacts = int(pool[0]["MaxContactsPerUser"])
        for kind, g, index in self._parts:
            sec = self.script.section(index)
            fault = wmic_fault(sec, f"read LCS users on {host}", host)
            if fault is not None:
                for iid in g:
                    out[iid.upper()] = fault
                continue
            for r in wmic.parse_list(sec.stdout if sec else ""):
                key = (r.get("InstanceID") if kind == "user" else r.get("UserInstanceID")) or ""
                state = out.get(key.strip().upper())
                if state is None or isinstance(state, Exception):
                    continue
                if kind == "user":
                    state.user = {k: v for k, v in r.items()}
                elif kind == "group" and r.get("GroupID", "").strip().isdigit():
                    state.groups.append(LcsGroup(int(r["GroupID"]), r.get("Name", "")))
                elif kind == "contact":
                    state.contacts.append(LcsContact(r.get("SIPURI", ""), r.get("Name", ""), tuple(
                        int(x) for x in wmic.parse_array(r.get("GroupID")) if x.isdigit())))
        if max_contacts is not None:
            for state in out.values():
                if not isinstance(state, Exception):
                    state.max_contacts = max_contacts
        return out


def import_and_read(conn: Connection, host: str, vars: Mapping[str, Any], owners: Sequence[str],
                    changes: Sequence[ldif.Change], queries: Sequence[Query]) -> tuple[Section | None, list[ldif.Entry]]:
    """One LDIF file holding ``changes``, then one line (or a few within its line limit,
    default Windows 2000's): import it, delete it, run ``queries``. The file goes with the
    first line where the connection can feed it (one round trip), else it is put first. The
    import's section (runner.lcs.exchange.unfinished_import reads it) and every entry found."""
    path = temp_path(conn, vars, f"runner-{owner_tag(owners[0])}-{secrets.token_hex(4)}.ldf")
    end = secrets.token_hex(8)
    script = ChunkScript(conn, host, vars, owners, limit=line_limit(vars, WINDOWS_2000_LINE), script=False,
                         deliver=(ldif.render(changes, end=end), path))
    imported = script.add(ldif.checked_import(path, end), stderr_too=True)
    script.add(Command("del", "/q", Quoted(path)))
    handles = [script.add_query(q) for q in queries]
    script.run()
    return script.section(imported), [e for h in handles for e in script.entries(h)]
