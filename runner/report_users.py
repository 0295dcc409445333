"""Where each user of the estate stands, from the checkpoint store's task outcomes.

One row per user (``user_rows``), built from the outcomes recorded for the
user and for their client machines, newest outcome of each step winning
(a step that failed and later passed is not a failure any more):

- ``stage``: the furthest milestone passed (exported, enabled on LCS,
  contacts imported, verified, disabled on Exchange IM), or not started;
  ``state``: moved (disabled on Exchange IM), failed (a step's newest
  outcome is failed or unreachable) or pending;
- contact figures: found on each machine (inventory_clients), exported per
  machine and merged (export_contacts), imported by the runner, already on
  LCS, unmappable with the reason, over the server's limit, names cut
  (import_contacts, else verify_contacts);
- per machine the Messenger version before and after (inventory_clients,
  upgrade_messenger), whether a reboot is pending, and what is not due on it yet by
  design (``not_yet``: a step whose newest outcome is not_yet, e.g. Exchange IM kept until
  the machine's last user has moved);
- the newest failure with its reason, its root cause when it was a
  ``not run`` (blocked by another target) and what to do next;
- ``redo_by_hand``: what the help desk must do with the user by hand
  (scenario 1: recreate the contact list; unmappable and over-limit contacts).

The inventory (when it can still be read) adds users nobody ran a task for
yet (not started), waves and display names. Nothing here writes anything.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from runner.events import ROLLBACK_MODULES
from runner.model import Inventory
from runner.plan import natural_key

#: Milestones in the order a user passes them, and the step module that passes each.
STAGES = ("not started", "exported", "enabled", "imported", "verified", "disabled")
MILESTONES = {"export_contacts": "exported", "enable_lcs_users": "enabled", "import_contacts": "imported",
              "verify_contacts": "verified", "disable_exchange_im": "disabled"}
STAGE_WORDS = {"not started": "not started", "exported": "contacts exported", "enabled": "enabled on LCS",
               "imported": "contacts imported", "verified": "contacts verified",
               "disabled": "disabled on Exchange IM"}
#: What a user's stage says when a rollback (docs/rollback.md) put them back and nothing moved them since.
ROLLED_BACK = "rolled back to Exchange IM"
REFUSED = "refusing to roll back"
PROBLEMS = ("failed", "unreachable")
PASSED = ("ok", "changed")
NO_WAVE = "(no wave)"
MAX_HOPS = 8


def _data(row: Mapping[str, Any]) -> dict[str, Any]:
    result = row.get("result")
    data = result.get("data") if isinstance(result, dict) else None
    return data if isinstance(data, dict) else {}


def _warnings(row: Mapping[str, Any]) -> list[str]:
    result = row.get("result")
    found = result.get("warnings") if isinstance(result, dict) else None
    return [str(w) for w in found] if isinstance(found, list) else []


def _rolled_back_at(rows: Iterable[Mapping[str, Any]]) -> float:
    """When the user's latest rollback record finished (0.0: none): milestones before it no
    longer hold (runner.state.StateStore.reopened_by_rollback)."""
    return max((float(r.get("ended") or 0) for r in rows
                if r.get("status") in PASSED and _data(r).get("rollback") is True), default=0.0)


class _History:
    """The outcomes of one report, indexed by target and module (newest last)."""

    def __init__(self, rows: Iterable[dict[str, Any]], subject_alias: Mapping[str, str]) -> None:
        self.by_user: dict[str, list[dict[str, Any]]] = {}
        self.by_host: dict[str, list[dict[str, Any]]] = {}
        self.alias_of: dict[str, str] = {}
        for r in rows:
            if r.get("damaged"):
                continue
            if r.get("kind") == "host":
                self.by_host.setdefault(r["target"], []).append(r)
                continue
            alias = subject_alias.get(r.get("subject") or "") or subject_alias.get(f"alias:{r['target']}") \
                or r["target"]
            self.by_user.setdefault(alias, []).append(r)
            self.alias_of[f"user:{r['target']}"] = alias

    @staticmethod
    def latest(rows: list[dict[str, Any]], module: str, *, need: str | None = None,
               statuses: tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """The newest outcome of ``module`` (not pending), optionally with ``need`` in its data."""
        for r in reversed(rows):
            if r["module"] != module or r["status"] == "pending":
                continue
            if statuses is not None and r["status"] not in statuses:
                continue
            if need is not None and need not in _data(r):
                continue
            return r
        return None

    def step_row(self, target_id: str, step: str) -> dict[str, Any] | None:
        """The newest outcome of step ``step`` for ``user:X`` / ``host:X``."""
        kind, _, name = target_id.partition(":")
        rows = self.by_host.get(name, []) if kind == "host" else \
            self.by_user.get(self.alias_of.get(target_id, name), [])
        for r in reversed(rows):
            if r["step"] == step and r["status"] != "pending":
                return r
        return None


def _root(history: _History, row: dict[str, Any]) -> dict[str, Any] | None:
    """The outcome at the end of a ``not run`` chain (blocked_by), None when ``row`` is no such."""
    seen = 0
    blocker = _data(row).get("blocked_by")
    found = None
    while isinstance(blocker, dict) and seen < MAX_HOPS:
        seen += 1
        found = {"target": str(blocker.get("target") or ""), "step": str(blocker.get("step") or ""),
                 "status": str(blocker.get("status") or "failed"), "message": str(blocker.get("message") or "")}
        upstream = history.step_row(found["target"], found["step"])
        if upstream is None:
            break
        found["message"] = upstream.get("message") or found["message"]
        blocker = _data(upstream).get("blocked_by")
    return found


def next_action(failure: Mapping[str, Any], resume: str | None) -> str:
    """What to do about ``failure`` (a dict of step, status, reason, root), in one sentence."""
    rerun = f"then run `{resume}`" if resume else "then run the same apply command again"
    root = failure.get("root")
    reason = str(failure.get("reason") or "")
    if root:
        who = root["target"].replace(":", " ", 1)
        return f"fix {who} first ({root['step']}: {root['message']}), {rerun}"
    if failure.get("status") == "unreachable":
        return f"check that the machine is on and reachable ({reason}), {rerun}"
    if "already enabled" in reason:
        return f"fix the SIP mapping or the user's LCS account (not overwritten), {rerun}"
    if "no contact list" in reason or "no clients" in reason:
        return ("give the user's machines (clients) in the inventory, or set contacts_recreated_by_users: "
                f"true if users recreate their contacts, {rerun}")
    if "missing on LCS" in reason:
        return f"check the LCS pool accepted the contacts (its event log), {rerun}"
    if reason.startswith("msiexec"):
        return f"read the installer log kept under artifacts/msiexec/, fix the client, {rerun}"
    return f"fix the cause named here, {rerun}"


def _machine(history: _History, alias: str, host: str, export: dict[str, Any] | None,
             facts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    rows = history.by_host.get(host, [])
    gathered = [r for r in rows if r["module"] == "inventory_clients" and isinstance(_data(r).get("facts"), dict)]
    first_facts = _data(gathered[0])["facts"] if gathered else facts.get(host) or {}
    last_facts = _data(gathered[-1])["facts"] if gathered else facts.get(host) or {}
    user_facts = ((last_facts.get("users") or {}).get(alias) or {}) if isinstance(last_facts, dict) else {}
    found = (user_facts.get("contacts") or {}).get("count") if isinstance(user_facts, dict) else None
    counts = _data(export).get("counts") if export else None
    upgrades = [r for r in rows if r["module"] == "upgrade_messenger" and r["status"] != "pending"]
    changed = [r for r in upgrades if r["status"] == "changed"]
    before = _data(changed[0]).get("from") if changed else ((first_facts.get("messenger") or {}).get("version")
                                                             if isinstance(first_facts, dict) else None)
    after = None
    last = upgrades[-1] if upgrades else None
    if last is not None and last["status"] in PASSED:
        d = _data(last)
        # "to": the version the upgrade installed; "version": the one an up-to-date probe found;
        # neither (outcomes recorded before they were): upgraded, to an unrecorded version
        after = d.get("to") or d.get("version") or ("upgraded" if last["status"] == "changed" else before)
    reboot = bool(changed and _data(changed[-1]).get("reboot_required"))
    # Messenger's sign-in policy: as configure_messenger last left it, else as last gathered
    configured = [r for r in rows if r["module"] == "configure_messenger" and r["status"] in PASSED
                  and isinstance(_data(r).get("signin"), dict)]
    signin = _data(configured[-1])["signin"] if configured else (
        last_facts.get("signin") if isinstance(last_facts, dict) else None)
    newest: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "pending":
            newest[r["step"]] = r
    not_yet = [{"step": r["step"], "reason": str((_data(r).get("not_yet") or {}).get("reason") or "not due yet"),
                "message": r.get("message") or ""} for r in newest.values() if r["status"] == "not_yet"]
    problem = None
    for r in reversed(rows):
        if r["status"] == "pending":
            continue
        if r["status"] in PROBLEMS:
            problem = f"{r['step']}: {r['message']}"
        break
    return {"host": host, "found": found if isinstance(found, int) else None,
            "exported": counts.get(host) if isinstance(counts, dict) else None,
            "messenger_before": before, "messenger_after": after, "reboot_pending": reboot,
            "signin": {k: v for k, v in signin.items() if k != "values"} if isinstance(signin, dict) else None,
            "problem": problem, "not_yet": not_yet}


def entry_key(typ: str, mask: str) -> str:
    """An allow/block entry as the report counts it: ``everyone`` or ``Type mask`` (lower case)."""
    return "everyone" if typ.lower() == "all" else f"{typ} {mask}".lower()


def _contacts(rows: list[dict[str, Any]], recorded: Sequence[str] = ()) -> dict[str, Any]:
    """A user's contact figures; ``recorded``: the SIP URIs the runner's record says it created
    (import_contacts' ``lcs-imported`` artifact), counted as imported when a later import found
    them already on LCS (a re-move after a rollback), not as the user's own."""
    export = _History.latest(rows, "export_contacts", need="merged_count")
    imports = [r for r in rows if r["module"] == "import_contacts" and r["status"] != "pending"]
    planned = next((r for r in reversed(imports) if "already_present" in _data(r)), None)
    verify = _History.latest(rows, "verify_contacts", need="expected")
    created: dict[str, str] = {}
    for r in imports:
        for uri in _data(r).get("created") or []:
            created.setdefault(str(uri).casefold(), str(uri))
    already = None
    unmappable: list[dict[str, str]] = []
    over: list[str] = []
    cut: list[str] = []
    if planned is not None:
        d = _data(planned)
        mine = {str(u).casefold() for u in recorded}
        for u in d.get("already_present") or []:
            if str(u).casefold() in mine:
                created.setdefault(str(u).casefold(), str(u))
        already = len([u for u in d.get("already_present") or [] if str(u).casefold() not in created])
        unmappable = [{"address": str(u.get("address", "")), "reason": str(u.get("reason", ""))}
                      for u in d.get("unmappable") or [] if isinstance(u, dict)]
        over = [str(c.get("uri", "")) if isinstance(c, dict) else str(c) for c in d.get("over_limit") or []]
        cut = [str(t) for t in d.get("truncated") or []]
        limit = d.get("max_contacts")
    else:
        limit = None
    if verify is not None:
        v = _data(verify)
        if planned is None:
            unmappable = [{"address": str(u.get("address", "")), "reason": str(u.get("reason", ""))}
                          for u in v.get("unmappable") or [] if isinstance(u, dict)]
            over = [str(u) for u in v.get("over_limit") or []]
    return {
        "exported": _data(export).get("merged_count") if export else None,
        "imported": len(created) if imports else None,
        "already_on_lcs": already,
        "on_lcs": _data(verify).get("present") if verify else None,
        "expected_on_lcs": _data(verify).get("expected") if verify else None,
        "missing_on_lcs": list(_data(verify).get("missing") or []) if verify else [],
        "unmappable": unmappable, "over_limit": over, "names_cut": cut, "limit": limit,
    }


def _permissions(rows: list[dict[str, Any]], since: list[dict[str, Any]] | None = None,
                 recorded: Sequence[str] = ()) -> dict[str, Any]:
    """A user's allow and block list: entries to have on LCS, imported by the runner (in any
    run: its results' ``created`` and its record ``recorded``), kept with LCS's own values (the
    conflicts, each with both values), unmappable (with the reason), verified (only a
    verification after the latest rollback, ``since``, counts)."""
    imports = [r for r in rows if r["module"] == "import_permissions" and r["status"] != "pending"]
    planned = next((r for r in reversed(imports) if "expected" in _data(r)), None)
    verify = _History.latest(rows if since is None else since, "verify_permissions", need="expected")
    created: dict[str, None] = {}
    for r in imports:
        created.update((str(c).rpartition(": presence ")[0].lower(), None) for c in _data(r).get("created") or [])
    if imports:
        created.update((str(k), None) for k in recorded)
    d = _data(planned) if planned is not None else (_data(verify) if verify is not None else {})
    unmappable = [{"value": str(u.get("value", "")), "reason": str(u.get("reason", ""))}
                  for u in d.get("unmappable") or [] if isinstance(u, dict)]
    conflicts = []
    for k in (d.get("kept") or []) if planned is not None else []:
        if isinstance(k, dict):
            lcs = k.get("lcs") if isinstance(k.get("lcs"), dict) else {}
            who = "everyone" if k.get("type") == "All" else f"{k.get('type')} {k.get('mask')}"
            conflicts.append(f"{who}: Exchange IM says presence {k.get('presence')}, communication "
                             f"{k.get('communication')}; LCS has "
                             + (f"presence {lcs.get('presence')}, communication {lcs.get('communication')}"
                                if lcs else "other values"))
    return {
        "expected": d.get("expected"),
        "imported": len(created) if imports else None,
        "kept": len(d.get("kept") or []),
        "conflicts": conflicts,
        "acl_file": (_data(verify).get("acl_file") if verify is not None else None) or d.get("acl_file"),
        "unmappable": unmappable,
        "verified": bool(_data(verify).get("verified")) if verify is not None else None,
    }


def _redo(scenario1: bool, contacts: Mapping[str, Any], notice: str | None,
          permissions: Mapping[str, Any] | None = None) -> list[str]:
    """What the help desk does by hand with the user."""
    out = []
    if scenario1:
        n = contacts.get("exported")
        what = f"{n} contact(s)" if isinstance(n, int) else "their contacts"
        out.append(f"recreate {what} on LCS by hand (contacts are not moved in this scenario"
                   + (f"; notice {notice})" if notice else ")"))
    if contacts["unmappable"]:
        out.append("add by hand, no SIP address could be made: "
                   + "; ".join(f"{u['address']} ({u['reason']})" for u in contacts["unmappable"]))
    if contacts["over_limit"]:
        limit = contacts.get("limit")
        out.append(f"not imported, over the server's limit{f' of {limit}' if limit else ''} contacts per user "
                   "(remove some on LCS or raise MaxContactsPerUser, then add): " + ", ".join(contacts["over_limit"]))
    if permissions and permissions["unmappable"]:
        n = len(permissions["unmappable"])
        out.append(f"{n} allow/block entr{'y' if n == 1 else 'ies'} could not be carried to LCS (set by hand on "
                   "LCS where still wanted): "
                   + "; ".join(f"{u['value']} ({u['reason']})" for u in permissions["unmappable"]))
    if permissions and permissions.get("conflicts"):
        out.append("allow/block entries kept as set on LCS, differing from Exchange IM (ask the user which "
                   "they want; change it on LCS by hand if needed): " + "; ".join(permissions["conflicts"]))
    return out


def user_rows(rows: list[dict[str, Any]], inventory: Inventory | None, subject_alias: Mapping[str, str],
              facts: Mapping[str, Mapping[str, Any]], resume: Mapping[str, str | None],
              records: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> list[dict[str, Any]]:
    """One dict per user (inventory order, then users known only to the store, by alias).

    ``rows``: the store's outcome history, oldest first; ``subject_alias``: record key ->
    alias for the inventory's users; ``facts``: the store's client facts per host (used
    when no inventory_clients outcome is in ``rows``); ``resume``: run id -> the command
    that resumes it; ``records``: alias -> what the runner's own records say it created on LCS
    (``contacts``: SIP URIs, ``permissions``: entry keys), runner.report reads them.
    """
    history = _History(rows, subject_alias)
    users = dict(inventory.users) if inventory is not None else {}
    aliases = list(users) + sorted(a for a in history.by_user if a not in users)
    out = []
    for alias in aliases:
        urows = history.by_user.get(alias, [])
        user = users.get(alias)
        stage, stage_run = "not started", None
        rolled_back = _rolled_back_at(urows)
        since = [r for r in urows if (r.get("ended") or 0) > rolled_back] if rolled_back else urows
        for module, milestone in MILESTONES.items():
            r = _History.latest(since, module)
            if r is not None and r["status"] in PASSED and STAGES.index(milestone) > STAGES.index(stage):
                stage, stage_run = milestone, r["run_id"]
        latest_per_step: dict[str, dict[str, Any]] = {}
        for r in urows:
            if r["status"] != "pending":
                latest_per_step[r["module"]] = r
        failure = None
        failing = [r for r in latest_per_step.values() if r["status"] in PROBLEMS]
        if failing:
            r = max(failing, key=lambda x: (x.get("ended") or 0))
            failure = {"step": r["step"], "module": r["module"], "status": r["status"],
                       "reason": r.get("message") or "", "run": r["run_id"], "root": _root(history, r)}
            failure["next"] = next_action(failure, resume.get(r["run_id"]))
            # a rollback refused (no backup, Exchange IM decommissioned) changed nothing: the
            # user stays where they stand, the refusal is shown as their newest failure
            why = failure["root"]["message"] if failure["root"] else failure["reason"]
            failure["refused"] = r["module"] in ROLLBACK_MODULES and REFUSED in str(why)
        export = _History.latest(urows, "export_contacts", need="counts")
        clients = list(user.clients) if user is not None else list((_data(export).get("counts") or {}) if export else [])
        machines = [_machine(history, alias, h, export, facts) for h in clients]
        mine = (records or {}).get(alias) or {}
        contacts = _contacts(urows, mine.get("contacts") or ())
        permissions = _permissions(urows, since, mine.get("permissions") or ())
        notify = _History.latest(urows, "notify_users", need="notice")
        scenario1 = any(r["module"] == "notify_users" for r in urows)
        # a user's export also runs in an earlier wave that upgrades a machine they share:
        # their own wave is that of their other steps
        waves = [r["wave"] for r in urows if r.get("wave") and r["module"] != "export_contacts"] \
            or [r["wave"] for r in urows if r.get("wave")]
        wave = (user.wave if user is not None else None) or (waves[-1] if waves else None)
        runs = [r["run_id"] for r in urows]
        warnings = sum(len(_warnings(r)) for r in latest_per_step.values())
        out.append({
            "user": alias,
            "display_name": user.display_name if user is not None else None,
            "im_address": user.im_address if user is not None else None,
            "wave": wave,
            "stage": stage,
            "stage_text": ROLLED_BACK if rolled_back and stage == "not started" else STAGE_WORDS[stage],
            "state": "failed" if failure and not failure["refused"] else (
                "moved" if stage == "disabled" else "pending"),
            "run": stage_run or (runs[-1] if runs else None),
            "machines": machines,
            "contacts": contacts,
            "permissions": permissions,
            "reboot_pending": [m["host"] for m in machines if m["reboot_pending"]],
            "failure": failure,
            "scenario1": scenario1,
            "redo_by_hand": _redo(scenario1, contacts, _data(notify).get("notice") if notify else None,
                                  permissions),
            "warnings": warnings,
        })
    return out


def wave_progress(users: list[dict[str, Any]], inventory: Inventory | None) -> list[dict[str, Any]]:
    """Per wave (in the order waves first appear in the inventory, else by name): users,
    moved, failed, pending."""
    order: dict[str, None] = {}
    if inventory is not None:
        for u in inventory.users.values():
            order.setdefault(u.wave or NO_WAVE, None)
    for u in sorted(users, key=lambda x: str(x["wave"] or NO_WAVE)):
        order.setdefault(u["wave"] or NO_WAVE, None)
    out = []
    for wave in order:
        members = [u for u in users if (u["wave"] or NO_WAVE) == wave]
        if not members:
            continue
        out.append({"wave": wave, "users": len(members),
                    **{s: sum(1 for u in members if u["state"] == s) for s in ("moved", "failed", "pending")}})
    return out


def summarise(users: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the user rows: by state and stage, contact figures, reboots, help-desk work."""
    def total(key: str) -> int:
        return sum(u["contacts"][key] or 0 for u in users)
    hosts_reboot = sorted({h for u in users for h in u["reboot_pending"]})
    failed_steps: dict[str, int] = {}
    causes: dict[str, int] = {}
    for u in users:
        if u["failure"]:
            failed_steps[u["failure"]["step"]] = failed_steps.get(u["failure"]["step"], 0) + 1
            cause = failure_cause(u["failure"], u)
            causes[cause] = causes.get(cause, 0) + 1
    return {
        "users": len(users),
        "moved": sum(1 for u in users if u["state"] == "moved"),
        "failed": sum(1 for u in users if u["state"] == "failed"),
        "pending": sum(1 for u in users if u["state"] == "pending"),
        "stages": {s: sum(1 for u in users if u["stage"] == s) for s in STAGES},
        "contacts": {"exported": total("exported"), "imported": total("imported"),
                     "already_on_lcs": total("already_on_lcs"),
                     "unmappable": sum(len(u["contacts"]["unmappable"]) for u in users),
                     "over_limit": sum(len(u["contacts"]["over_limit"]) for u in users),
                     "names_cut": sum(len(u["contacts"]["names_cut"]) for u in users)},
        "permissions": {"imported": sum(u["permissions"]["imported"] or 0 for u in users),
                        "kept": sum(u["permissions"]["kept"] for u in users),
                        "unmappable": sum(len(u["permissions"]["unmappable"]) for u in users),
                        "verified": sum(1 for u in users if u["permissions"]["verified"])},
        "reboot_pending": hosts_reboot,
        "not_yet": _not_yet_machines(users),
        "help_desk": sum(1 for u in users if u["redo_by_hand"]),
        "failures_by_step": failed_steps,
        "causes": [{"cause": c, "users": n} for c, n in sorted(causes.items(), key=lambda x: (-x[1], x[0]))],
    }


def _not_yet_machines(users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The machines with something not due yet, per step and reason (hosts in natural order)."""
    groups: dict[tuple[str, str], set[str]] = {}
    for u in users:
        for m in u["machines"]:
            for n in m.get("not_yet") or ():
                groups.setdefault((n["step"], n["reason"]), set()).add(m["host"])
    return [{"step": step, "reason": reason, "hosts": sorted(hosts, key=natural_key)}
            for (step, reason), hosts in groups.items()]


def failure_cause(failure: Mapping[str, Any], user: Mapping[str, Any] | None = None) -> str:
    """What a failure comes down to, the same words for every user it stops: the root of a
    ``not run`` chain (``pc0004, 'Upgrade...': msiexec 1618...``), else the step and reason;
    a user's own failure with their alias and address replaced by ``<user>`` / ``<address>``
    (``refusing to roll back <user>: ...`` is one cause however many users it stops)."""
    root = failure.get("root")
    if root and root["target"].startswith("host:"):
        return f"{root['target'][5:]}, '{root['step']}': {root['message']}"
    if root:  # a user's failure names its machine, as the users' own failures of that step do
        return f"'{root['step']}': {_anonymous(str(root['message']), user, root['target'])}"
    return f"'{failure['step']}': {_anonymous(str(failure['reason']), user)}"


def _anonymous(message: str, user: Mapping[str, Any] | None, target: str | None = None) -> str:
    """``message`` with the user's IM address and alias (whole words) put as placeholders."""
    names = []
    if user is not None:
        names += [("<address>", str(user.get("im_address") or "")), ("<user>", str(user.get("user") or ""))]
    if target and target.startswith("user:"):
        names.append(("<user>", target[5:]))
    for placeholder, name in names:
        if name:
            message = re.sub(rf"(?<![\w.@-]){re.escape(name)}(?![\w@-]|\.\w)", placeholder, message,
                             flags=re.IGNORECASE)
    return message
