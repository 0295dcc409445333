"""inventory_clients: gather each client's facts (OS, Messenger, profiles, contact lists).

One round trip reads ``ver``, the environment (``%SystemDrive%``,
``%ProgramFiles%``, ``%SystemRoot%``), the Windows version (``CurrentVersion``:
``os_version`` and the ``cmd_line_limit`` it implies, 2,047 characters on
Windows 2000 and 8,191 from XP on), the Uninstall and ProfileList
keys, ``reg query HKU`` and the contact key of every inventory user of the
host: in place when they are logged on, else from their NTUSER.DAT, loaded,
read and always unloaded in the same round trip. Where the profile is comes
from an earlier gather's facts; on a first gather, from the default folder
(``%SystemDrive%\\Documents and Settings\\<alias>``, for a user the inventory gives a
SID), loaded only when ProfileList says that SID's profile is there. A
profile elsewhere (or a user without a SID) costs a second round trip, which
loads the hive from the folder ProfileList names (``load_hives``). Lines
that do not fit the host's limit (2,047 characters until the facts say the
host runs XP or later) go as one batch file fed with the line that runs it
(runner.steps._clients.run_built).

Policy: an inventory user without a profile on the host is a warning (in
the result and ``facts.users[alias].problem``); Windows Messenger missing
fails the task unless ``require_messenger: false``. Messenger's sign-in policy
keys (runner.steps._signin) are read in the first line where they fit, else
with the second line's hives, else in a line of their own: ``facts.signin``
holds them and what is missing or wrong; wrong values are warnings.
"""
from __future__ import annotations

from typing import Any, Sequence

from runner.errors import PermanentFault, TransientFault
from runner.model import Host
from runner.steps import _clients as cl
from runner.steps import _signin as S
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import reg
from runner.windows.cmdline import Command
from runner.windows.imcontacts import DEFAULT_CONTACTS_KEY, contacts_from_keys

def _contact_summary(stdout: str, contacts_key: str) -> dict[str, Any]:
    doc = contacts_from_keys(reg.parse_query(stdout), contacts_key)
    return {"present": True, "count": len(doc["contacts"]), "profiles": doc["profiles"]}


class InventoryClients(StepModule):
    """Gather client facts for later steps and ``runner status``."""

    name = "inventory_clients"
    target = "host"
    read_only = True
    args_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "require_messenger": {"type": "boolean", "default": True},
            "load_hives": {"type": "boolean", "default": True},
            "contacts_key": {"type": "string", "minLength": 1},
            "messenger_exe": {"type": "string", "minLength": 1},
        },
    }

    def probe(self, ctx: StepContext, target: Host) -> Diff | None:  # type: ignore[override]
        return Diff(summary=f"gather facts of {target.name}")

    def apply(self, ctx: StepContext, target: Host, diff: Diff) -> StepResult:  # type: ignore[override]
        facts, warnings = gather(ctx, target)
        data = {"facts": facts}
        if not facts["messenger"]["installed"] and ctx.args.get("require_messenger", True):
            return StepResult("failed", f"Windows Messenger is not installed on {target.name}",
                              data=data, warnings=warnings)
        n = len(facts["users"])
        return StepResult("ok", f"{facts['os'] or 'unknown OS'}; Messenger "
                          f"{facts['messenger'].get('version') or 'missing'}; {n} inventory user(s)",
                          data=data, warnings=warnings)


def gather(ctx: StepContext, host: Host) -> tuple[dict[str, Any], list[str]]:
    """Read the facts of ``host`` (read-only): one round trip when an earlier gather recorded
    the profiles of its users not logged on (or all are logged on), else two."""
    contacts_key = str(ctx.args.get("contacts_key") or ctx.vars.get("contacts_key") or DEFAULT_CONTACTS_KEY)
    exe = str(ctx.args.get("messenger_exe") or cl.DEFAULT_MESSENGER_EXE)
    users = cl.client_users(ctx.inventory, host.name)
    conn = ctx.connection(host.name)
    wmic = cl.has_wmic(ctx, host.name)
    base = [Command("ver"), Command("echo", "%SystemDrive%"), Command("echo", "%ProgramFiles%"),
            reg.query(cl.UNINSTALL, recursive=True), reg.query(cl.PROFILE_LIST, recursive=True),
            # msmsgs.exe's version through wmic, which Windows 2000 lacks (an earlier gather's
            # os_version says so; "ver" then holds the section's place and tells nothing)
            reg.query("HKU"), cl.file_version_query(exe) if wmic else Command("ver"),
            reg.query(cl.WINDOWS_NT, value="CurrentVersion"),
            Command("echo", "%SystemRoot%")]
    limit = cl.line_limit(ctx, host.name)
    # profiles an earlier run recorded: those users' hives are read in this first line, in
    # place or loaded and unloaded (cmd.exe branches on who is logged on), checked below
    # against the live ProfileList; the others as before (in place, a second line to load)
    earlier = cl.fact_profiles(ctx, host.name) if ctx.args.get("load_hives", True) else {}
    guesses = {u.alias: g for u in users if (g := cl.profile_for(u, earlier)) is not None}
    # a first gather: the default folder of each user the inventory gives a SID, its hive
    # loaded only when ProfileList says that SID's profile is there (checked in the line)
    checks: dict[str, Command] = {}
    if ctx.args.get("load_hives", True) and not earlier:
        for u in users:
            if u.alias not in guesses and (first := cl.default_profile(u)) is not None:
                guesses[u.alias], checks[u.alias] = first
    builders, offsets, pos = [cl.plain(base)], [], len(base)
    for u in users:
        g = guesses.get(u.alias)
        if g is not None:
            name = cl.hive_name(u.alias)
            builders.append(cl.hive_group(g.sid, [reg.query(f"HKU\\{g.sid}\\{contacts_key}", recursive=True)],
                                          u.alias, g.path.rstrip("\\") + "\\NTUSER.DAT",
                                          [reg.query(f"HKU\\{name}\\{contacts_key}", recursive=True)],
                                          load_if=checks.get(u.alias)))
            offsets.append(pos)
            pos += 5
        else:
            builders.append(cl.plain([reg.query(f"HKU\\{u.sid}\\{contacts_key}", recursive=True) if u.sid
                                      else Command("ver")]))
            offsets.append(pos)
            pos += 1
    # when this line loads hives, HKU once more to see them unloaded (without hives to load,
    # the first group's HKU says all there is); Messenger's sign-in policy keys before it when
    # they fit in these lines, else with the second line's hives (or in one of their own)
    tail = [cl.plain([reg.query("HKU")])] if guesses else []
    policy = cl.plain(S.read_commands())
    in_first = cl.line_count([*builders, policy, *tail], limit=limit) == cl.line_count([*builders, *tail],
                                                                                         limit=limit)
    builders += [policy, *tail] if in_first else tail
    with cl.hive_locks(host.name, list(guesses)):
        sections, _ = cl.run_built(conn, builders, limit=limit, owner=cl.script_owner(ctx, f"host:{host.name}"))
        for alias in guesses:
            if cl.still_loaded(sections[-1], cl.hive_name(alias)):
                cl.unload_verified(conn, host.name, cl.hive_name(alias))
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    env = {"SystemDrive": text[1].strip() or "C:", "ProgramFiles": text[2].strip() or r"C:\Program Files"}
    if text[8].strip() and "%" not in text[8]:  # C:\WINNT on Windows 2000, C:\WINDOWS on XP/2003
        env["SystemRoot"] = text[8].strip()
    os_line = next((ln.strip() for ln in text[0].splitlines() if ln.strip()), None)
    messenger = cl.messenger_from_uninstall(reg.parse_query(text[3]))
    file_version = cl.file_version(text[6]) if wmic else None
    if messenger is None and file_version:
        messenger = {"installed": True, "product": "Windows Messenger", "version": file_version,
                     "product_code": None, "source": "file"}
    messenger = messenger or {"installed": False, "product": None, "version": None, "product_code": None,
                              "source": None}
    messenger["file_version"] = file_version
    messenger["file_known"] = wmic and sections[6] is not None and sections[6].ok  # wmic looked at the file
    found = cl.profiles(reg.parse_query(text[4]), reg.parse_query(text[5]), env)
    loaded = sorted(s for s in reg.subkeys(reg.parse_query(text[5]), "HKU"))
    warnings: list[str] = []
    user_facts: dict[str, Any] = {}
    unloaded: list[tuple[Any, cl.Profile]] = []
    for i, user in enumerate(users):
        p = cl.profile_for(user, found)
        if p is None:
            warnings.append(f"{user.alias}: no profile on {host.name}")
            user_facts[user.alias] = {"sid": user.sid, "profile": None, "loaded": False, "contacts": None,
                                      "problem": "no profile"}
            continue
        entry: dict[str, Any] = {"sid": p.sid, "profile": p.path, "loaded": p.loaded, "contacts": None}
        g = guesses.get(user.alias)
        if g is not None:
            mounted, in_place, load, from_hive, _unload = sections[offsets[i]:offsets[i] + 5]
            guessed = cl.expand(g.path, env).rstrip("\\").lower()  # a first gather's %SystemDrive%
            same = g.sid.lower() == p.sid.lower() and guessed == p.path.rstrip("\\").lower()
            read = (in_place if mounted is not None and mounted.ok else
                    from_hive if load is not None and load.ok else None)
            if same and read is not None:
                entry["loaded"] = bool(mounted is not None and mounted.ok)
                entry["contacts"] = (_contact_summary(read.stdout, contacts_key) if read.ok
                                     else {"present": False, "count": 0, "profiles": []})
            else:  # out-of-date profile, a hive in use or not loadable: the second line tells
                unloaded.append((user, p))
            user_facts[user.alias] = entry
            continue
        sec = sections[offsets[i]]
        if p.loaded and user.sid:
            entry["contacts"] = (_contact_summary(sec.stdout, contacts_key) if sec is not None and sec.ok
                                 else {"present": False, "count": 0, "profiles": []})
        else:
            unloaded.append((user, p))
        user_facts[user.alias] = entry
    policy_secs = sections[pos:pos + 2] if in_first else None
    if unloaded and ctx.args.get("load_hives", True):
        later = _read_unloaded(conn, host.name, unloaded, contacts_key, user_facts, warnings, limit,
                               extra=() if in_first else S.read_commands(),
                               owner=cl.script_owner(ctx, f"host:{host.name}"))
        policy_secs = policy_secs or later
    if policy_secs is None:
        policy_secs, _ = cl.run_sections(conn, S.read_commands(), limit=limit,
                                         owner=cl.script_owner(ctx, f"host:{host.name}"))
    os_version = reg.value_of(reg.find_key(reg.parse_query(text[7]), cl.WINDOWS_NT), "CurrentVersion")
    os_version = os_version if isinstance(os_version, str) else None
    signin = _signin(ctx, host.name, policy_secs, warnings)
    facts = {"os": os_line, "os_version": os_version, "run_id": ctx.run_id, "messenger_exe": exe, "cmd_line_limit": cl.limit_for_version(os_version),
             "env": env, "messenger": messenger, "signin": signin,
             "profiles": {sid: {"path": p.path, "loaded": p.loaded} for sid, p in found.items()},
             "loaded_hives": loaded, "users": user_facts, "contacts_key": contacts_key}
    return facts, warnings


def _signin(ctx: StepContext, host: str, sections: list, warnings: list[str]) -> dict[str, Any]:
    """The client's Messenger sign-in settings (runner.steps._signin) and what is missing or
    wrong in them against the inventory's ``lcs_pool_fqdn`` / ``lcs_transport``. A wrong value
    (another server, an unknown transport, ExchangeConn "Exchange only") is a warning; missing
    ones are the state before configure_messenger, and a warning only once it has set them."""
    have = S.held(sections)
    try:
        server: str | None = S.wanted_server({}, ctx.vars, ctx.inventory)
    except PermanentFault:  # no pool named, or a bad name: configure_messenger says so
        server = None
    try:
        transport: str | None = S.wanted_transport({}, ctx.vars)
    except PermanentFault:
        transport = None
    problems = S.problems(have, server, transport)
    configured = any(r.status in ("ok", "changed") for r in ctx.previous("configure_messenger", host))
    shown = [p for p in problems if configured or not p.startswith("no ")]
    if shown:
        warnings.append(f"{host}: Messenger sign-in settings missing or wrong: {'; '.join(shown)}")
    return {**S.summary(have), "problems": problems}


def _read_unloaded(conn: Any, host: str, unloaded: list, contacts_key: str,
                   user_facts: dict[str, Any], warnings: list[str], limit: int,
                   extra: Sequence[Command] = (), owner: cl.ScriptOwner | None = None) -> list:
    """Load, read and unload (always, same line) the hives of users not logged on; ``extra``
    commands run in the same lines, and their sections are returned."""
    groups: list[list[Command]] = []
    for user, p in unloaded:
        name = cl.hive_name(user.alias)
        # 2>&1: reg load's error text in the user's own section, so "in use" is that user's outcome
        groups.append([Command(*reg.load(name, p.path.rstrip("\\") + "\\NTUSER.DAT").bits, "2>&1"),
                       reg.query(f"HKU\\{name}\\{contacts_key}", recursive=True), reg.unload(name)])
    if extra:
        groups.append(list(extra))
    groups.append([reg.query("HKU")])
    with cl.hive_locks(host, [u.alias for u, _ in unloaded]):
        sections, _stderr = cl.run_groups(conn, groups, limit=limit, owner=owner)
        for user, _p in unloaded:
            if cl.still_loaded(sections[-1], cl.hive_name(user.alias)):
                cl.unload_verified(conn, host, cl.hive_name(user.alias))
    locked: list[str] = []
    why = ""  # reg load's own answer for the first hive in use (the line's other errors are not its)
    for i, (user, _p) in enumerate(unloaded):
        load, query = sections[3 * i], sections[3 * i + 1]
        if load is None or not load.ok:
            if load is None or cl.is_locked_text(load.stdout):
                locked.append(user.alias)
                if not why:
                    lines = load.stdout.strip().splitlines() if load is not None else []
                    why = " / ".join(ln.strip() for ln in lines if ln.strip()) or "reg load did not answer"
                continue
            user_facts[user.alias]["problem"] = "hive could not be loaded"
            warnings.append(f"{user.alias}: hive could not be loaded on {host}")
            continue
        user_facts[user.alias]["contacts"] = (_contact_summary(query.stdout, contacts_key)
                                              if query is not None and query.ok
                                              else {"present": False, "count": 0, "profiles": []})
    if locked:
        # a hive in use is a moment's state, not a fact about the client: retried like
        # export_contacts does, never recorded as a lasting "unfit client" warning
        raise TransientFault(f"the hive of {', '.join(locked)} on {host} is in use (reg load): {why[:200]}",
                             host=host)
    return sections[3 * len(unloaded):3 * len(unloaded) + len(extra)] if extra else []
