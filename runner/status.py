"""``runner status``: what the checkpoint store knows, as a dict and as text.

Runs (newest first), for the newest run of each playbook + inventory what
finished and what is left per step, the command that resumes an unfinished
run, and a summary of the client facts gathered by inventory_clients for
planning a night: hosts by OS and Messenger version (how many below 5.1),
unfit clients, and who has the largest contact lists.

Honest about what it cannot see in the store alone:

- what remains of the playbook after a ``--limit`` night: the run's playbook
  and inventory are planned again without ``--limit`` (nothing connects) and
  every task not done yet is counted per play and wave (``remaining``);
- a run recorded as ``running`` whose process is gone (killed: no live holder
  of the state directory's lock) is shown as ``interrupted``;
- the targets not due yet by design (status ``not_yet``: a machine that keeps Exchange IM
  until the last of its users has moved), per step and reason, as what is left, not as a
  failure (``not_yet``);
- every failed or unreachable target of the newest runs, grouped by the
  target that caused it with how many others it holds up
  (``exim01: connection closed (572 users)``);
- when the facts were gathered, and which steps updated them since.
"""
from __future__ import annotations

import re
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from runner.events import failure_kind, one_line
from runner.lcs.contacts import DEFAULT_MAX_CONTACTS
from runner.state import DB_NAME, DONE_STATUSES, StateStore, lock_holder, refuse_lost_store
from runner.plan import natural_key
from runner.steps._clients import version_tuple

MAX_RUNS = 20
TARGET_MESSENGER = (5, 1)
LARGEST = 5
MAX_UNFIT_SHOWN = 10


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


def collect_status(state_dir: Path) -> dict[str, Any]:
    """A JSON-serialisable summary of the store in ``state_dir`` (``store: false`` when there is none)."""
    refuse_lost_store(state_dir)
    if not (state_dir / DB_NAME).exists():
        return {"state": str(state_dir), "store": False, "estate": None, "runs": [],
                "facts": summarise_facts({}) | {"last_updated": None, "gathered": None, "updated_by": {}},
                "damaged": []}
    store = StateStore(state_dir, create=False)
    try:
        runs = store.runs()
        latest_ids: set[str] = set()
        seen: set[str] = set()
        for r in runs:
            if r.identity not in seen:
                seen.add(r.identity)
                latest_ids.add(r.id)
        holder = lock_holder(state_dir)
        out_runs = []
        damaged: list[str] = []
        for r in runs[:MAX_RUNS]:
            status = r.status
            if status == "running" and holder is None:
                status = "interrupted"  # recorded as running, yet no process holds the lock: killed
            entry: dict[str, Any] = {
                "id": r.id, "status": status, "recorded_status": r.status, "playbook": r.playbook,
                "inventory": r.inventory, "started": _when(r.started), "ended": _when(r.ended),
                "sessions": r.sessions, "latest": r.id in latest_ids,
            }
            if status == "running" and holder:
                entry["holder"] = holder
            if r.id in latest_ids:
                steps = store.step_summary(r.id)
                rows = store.task_rows(r.id)
                damaged += [t["damaged"] for t in rows if t.get("damaged")]
                entry["steps"] = steps
                entry["left"] = sum(s["left"] for s in steps)
                entry["remaining"] = remaining_of_playbook(r.playbook, r.inventory, rows)
                entry["problems"] = group_problems(rows)
                entry["not_yet"] = group_not_yet(rows)
                more = (entry["remaining"] or {}).get("tasks") or 0
                if status != "ok" or entry["left"] or more:
                    entry["resume_command"] = r.command
                if rollback_playbook(r.playbook):
                    # a rollback does what its --limit selected and nothing more: the rest of
                    # the inventory is not "left", and no suggestion may drop the --limit
                    entry["remaining"] = None
                    entry["rollback"] = True
                    entry.pop("resume_command", None)
                    if status != "ok" or entry["left"]:
                        entry["resume_command"] = r.command
                    entry["again_command"] = r.command
                elif status == "ok" and (entry["left"] or more):
                    entry["status"] = "partial"  # this night's selection is done, the playbook is not
                    entry["next_command"] = next_command(r.command, entry["remaining"])
            out_runs.append(entry)
        facts = summarise_facts(_gathered_facts(store, latest_ids, damaged))
        facts["last_updated"] = _when(store.facts_summary()["last_updated"])
        facts.update(_fact_times(store.all_facts([]), store.facts_times()))
        bound = store.estate()
        return {"state": str(state_dir), "store": True, "estate": bound[1].describe() if bound else None,
                "runs": out_runs, "facts": facts, "damaged": damaged}
    finally:
        store.close()


def remaining_of_playbook(playbook: str, inventory: str, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the whole playbook (no ``--limit``, no tags) still has to do, per play and wave:
    its plan against the inventory minus the tasks done in this run. None when the files
    cannot be planned any more (moved, edited into an error): ``note`` says why."""
    from runner.errors import RunnerError
    from runner.loader import load_inventory, load_playbook
    from runner.plan import build_plan

    try:
        plan = build_plan(load_playbook(playbook), load_inventory(inventory))
    except (RunnerError, OSError) as exc:
        return {"tasks": None, "plays": [], "note": f"cannot plan {playbook} again: {str(exc).splitlines()[0]}"}
    done = {t["key"] for t in rows if t["status"] in DONE_STATUSES}
    plays = []
    total = 0
    for pp in plan.plays:
        waves: dict[str, int] = {}
        early: list[str] = []  # waves whose tasks left only save later waves' users' lists early
        for wave in pp.waves:
            left = [t for t in wave.tasks if t.key not in done]
            if left:
                waves[wave.name or "all"] = len(left)
                if all("/for-wave:" in t.key for t in left):  # e.g. a later user `state reexport`ed
                    early.append(wave.name or "all")
        n = sum(waves.values())
        total += n
        if n:
            plays.append({"play": pp.index, "name": pp.play.name, "tasks": n, "waves": waves,
                          **({"early_only": early} if early else {})})
    return {"tasks": total, "plays": plays}


def rollback_playbook(playbook: str) -> bool:
    """Whether ``playbook`` is a rollback (one of its steps puts users back on Exchange IM:
    docs/rollback.md). False when it cannot be loaded any more."""
    from runner.errors import RunnerError
    from runner.loader import load_playbook
    from runner.events import ROLLBACK_MODULES

    try:
        plays = load_playbook(playbook).plays
    except (RunnerError, OSError):
        return False
    return any(step.module in ROLLBACK_MODULES for play in plays for step in play.steps)


def next_command(command: str | None, remaining: dict[str, Any] | None) -> str | None:
    """The command that goes on with the playbook after a ``--limit`` night: the next wave
    left (``--limit wave:NAME``) when the run was limited to one, else the command itself."""
    import shlex

    if not command:
        return None
    argv = shlex.split(command)
    out, skip, limited = [], False, False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--limit", "-l"):
            skip = limited = True
            continue
        if a.startswith("--limit="):
            limited = True
            continue
        # how that night was watched (-q, -v) and where it started are not the next night's
        if a in ("-q", "--quiet", "--verbose") or re.fullmatch(r"-v+", a) or a.startswith("--start-at-step="):
            continue
        if a == "--start-at-step":
            skip = True
            continue
        out.append(a)
    plays = (remaining or {}).get("plays") or []
    # a wave left only for its early saves of later users' lists is not the next night: their own wave is
    waves = [w for p in plays for w in p["waves"] if w != "all" and w not in p.get("early_only", ())] \
        or [w for p in plays for w in p["waves"] if w != "all"]
    if limited and waves:
        out += ["--limit", f"wave:{waves[0]}"]
    return shlex.join(out)


def group_not_yet(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks whose outcome is ``not_yet`` (a step found the target not due yet, by design),
    per step and reason: the targets (natural order), what they wait for, one example."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for t in rows:
        if t["status"] != "not_yet":
            continue
        data = ((t.get("result") or {}).get("data") or {}) if isinstance(t.get("result"), dict) else {}
        why = data.get("not_yet") if isinstance(data.get("not_yet"), dict) else {}
        reason = str(why.get("reason") or "not due yet")
        g = groups.setdefault((t["play_index"], t["step"], t["kind"], reason), {
            "play": t["play_index"], "step": t["step"], "kind": t["kind"] or "host", "reason": reason,
            "targets": [], "waiting": set(), "example": f"{t['target']}: {t['message']}"})
        g["targets"].append(t["target"])
        g["waiting"].update(str(w) for w in why.get("waiting") or ())
    out = list(groups.values())
    for g in out:
        g["targets"].sort(key=natural_key)
        g["waiting"] = sorted(g["waiting"], key=natural_key)
    return out


def group_problems(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every failed or unreachable target, grouped by the target that caused it: a task an
    earlier failure blocked, or a user whose client was down, goes under that cause, followed
    to its root (a machine down holds up its users, who hold up their other machines...):
    one entry per root with its reason and the users and hosts it holds up."""
    first: dict[str, tuple[dict[str, Any], str | None]] = {}  # target id -> (its first failure, parent id)
    for t in rows:  # plan order: a target's first failure is the one that took it out
        if t["status"] not in ("failed", "unreachable"):
            continue
        own = f"{t['kind'] or 'host'}:{t['target']}"
        if own in first:
            continue
        data = ((t.get("result") or {}).get("data") or {}) if isinstance(t.get("result"), dict) else {}
        blocker = data.get("blocked_by") if isinstance(data.get("blocked_by"), dict) else None
        parent = None
        if blocker and isinstance(blocker.get("target"), str):
            parent = blocker["target"]
        elif t["status"] == "unreachable" and isinstance(data.get("host"), str) and data["host"] != t["target"]:
            parent = f"host:{data['host']}"
        first[own] = (t, parent if parent != own else None)

    def root(tid: str) -> str:
        seen = {tid}
        while True:
            parent = first.get(tid, (None, None))[1]
            if parent is None or parent in seen:
                return tid
            seen.add(parent)
            tid = parent

    causes: dict[str, dict[str, Any]] = {}
    for tid, (t, _) in first.items():
        r = root(tid)
        kind, name = r.split(":", 1)
        c = causes.setdefault(r, {"target": name, "kind": kind, "status": None, "step": None, "reason": None,
                                  "users": [], "hosts": []})
        if r == tid:
            c.update(status=t["status"], step=t["step"], reason=t["message"])
        else:
            (c["users"] if t["kind"] == "user" else c["hosts"]).append(t["target"])
    for c in causes.values():
        c["users"].sort(key=natural_key)
        c["hosts"].sort(key=natural_key)
    return sorted(causes.values(), key=lambda c: (-(len(c["users"]) + len(c["hosts"])), natural_key(c["target"])))


def _fact_times(hosts: dict[str, dict[str, Any]], written: dict[str, float]) -> dict[str, Any]:
    """When the facts were gathered (oldest and newest inventory_clients: the row's time, or
    ``gathered`` once a step updated the row) and which steps updated which facts since."""
    gathered = [f["gathered"] if isinstance(f.get("gathered"), (int, float)) else written[h]
                for h, f in hosts.items() if h in written]
    updated: dict[str, dict[str, Any]] = {}
    for host, f in hosts.items():
        for key, stamp in (f.get("updated") or {}).items() if isinstance(f.get("updated"), dict) else ():
            if not isinstance(stamp, dict):
                continue
            u = updated.setdefault(str(stamp.get("step")), {"facts": set(), "hosts": set(), "last": 0.0})
            u["facts"].add(key)
            u["hosts"].add(host)
            u["last"] = max(u["last"], float(stamp.get("at") or 0))
    return {"gathered": {"first": _when(min(gathered)), "last": _when(max(gathered)), "hosts": len(gathered)}
            if gathered else None,
            "updated_by": {k: {"facts": sorted(v["facts"]), "hosts": len(v["hosts"]), "last": _when(v["last"])}
                           for k, v in sorted(updated.items())}}


def _gathered_facts(store: StateStore, latest_ids: set[str],
                    damaged: list[str]) -> dict[str, dict[str, Any]]:
    """Facts per host: the store's (kept for ok tasks), plus those of hosts whose
    inventory_clients task failed in a latest run (Messenger missing), which the
    store does not keep. Rows that cannot be decoded are named in ``damaged``."""
    hosts = store.all_facts(damaged)
    for run_id in sorted(latest_ids):
        for t in store.task_rows(run_id):
            if t.get("damaged"):
                damaged.append(t["damaged"])
                continue
            data = ((t.get("result") or {}).get("data") or {})
            if t["module"] == "inventory_clients" and t["status"] == "failed" \
                    and isinstance(data.get("facts"), dict):
                hosts.setdefault(t["target"], data["facts"])
    return hosts


def summarise_facts(hosts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What an administrator planning a night needs from the client facts: hosts by
    OS and Messenger version, how many below 5.1, unfit clients and the largest
    contact lists (over the LCS default of 150 flagged)."""
    by_os: Counter[str] = Counter()
    by_messenger: Counter[str] = Counter()
    below = missing = 0
    unfit: list[dict[str, Any]] = []
    signin: dict[str, Any] = {"set": 0, "missing": 0, "wrong": []}
    largest: dict[str, dict[str, Any]] = {}
    for host in sorted(hosts):
        f = hosts[host]
        by_os[f.get("os") or "unknown"] += 1
        m = f.get("messenger") or {}
        problems: list[str] = []
        if not m.get("installed"):
            missing += 1
            by_messenger["missing"] += 1
            problems.append("Messenger missing")
        else:
            version = m.get("version") or "unknown version"
            product = m.get("product") or "Messenger"
            by_messenger[_product_label(product, version)] += 1
            if version_tuple(m.get("version")) < TARGET_MESSENGER:
                below += 1
        for alias, u in sorted((f.get("users") or {}).items()):
            if u.get("problem"):
                problems.append(f"{u['problem']}: {alias}")
            count = (u.get("contacts") or {}).get("count") or 0
            if count and count > largest.get(alias, {}).get("count", 0):
                largest[alias] = {"user": alias, "host": host, "count": count,
                                  "over_limit": count > DEFAULT_MAX_CONTACTS}
        if problems:
            unfit.append({"host": host, "problems": problems})
        _count_signin(signin, host, f.get("signin"))
    top = sorted(largest.values(), key=lambda e: (-e["count"], e["user"]))
    return {"hosts": len(hosts), "os": dict(by_os.most_common()), "messenger": dict(by_messenger.most_common()),
            "below_5_1": below, "messenger_missing": missing, "unfit": unfit, "signin": signin,
            "contact_lists": {"users": len(largest), "limit": DEFAULT_MAX_CONTACTS,
                              "over_limit": sum(1 for e in top if e["over_limit"]), "largest": top[:LARGEST]}}


def _product_label(product: str, version: str) -> str:
    """One label per product: ``Windows Messenger 5.1`` for its 5.1 and 5.1.0715 alike (a build
    refines the version the name carries; an upgrade records the version it asked for),
    ``Windows Messenger 4.7.2009`` for a name without one."""
    named = product.rsplit(" ", 1)[-1]
    if version == named or (named[:1].isdigit() and version.startswith(named + ".")):
        return product
    return f"{product} {version}"


def _count_signin(tally: dict[str, Any], host: str, signin: Any) -> None:
    """Count a host's Messenger sign-in settings (inventory_clients' ``facts.signin``): set as
    wanted, missing (not yet configured), or wrong (listed with what is wrong)."""
    if not isinstance(signin, dict):
        return
    problems = [p for p in signin.get("problems") or [] if isinstance(p, str)]
    wrong = [p for p in problems if not p.startswith("no ")]
    if wrong:
        tally["wrong"].append({"host": host, "problems": wrong})
    elif problems:
        tally["missing"] += 1
    else:
        tally["set"] += 1


def render_facts(f: dict[str, Any]) -> list[str]:
    """The facts summary as a few lines of text."""
    lines = [f"facts: {f['hosts']} host(s)" + (f", last updated {f['last_updated']}" if f.get("last_updated") else "")]
    if not f["hosts"]:
        return lines
    g = f.get("gathered")
    if g:
        lines.append(f"  gathered: {g['hosts']} host(s), {g['first']}" + (f" to {g['last']}" if g["last"] != g["first"] else ""))
    for step, u in (f.get("updated_by") or {}).items():
        lines.append(f"  updated since by '{step}': {', '.join(u['facts'])} on {u['hosts']} host(s), "
                     f"last {u['last']}")
    lines.append("  OS: " + ", ".join(f"{k} x{n}" for k, n in f["os"].items()))
    lines.append("  Messenger: " + ", ".join(f"{k} x{n}" for k, n in f["messenger"].items())
                 + f"; below 5.1: {f['below_5_1']}" + (f", missing: {f['messenger_missing']}"
                                                        if f["messenger_missing"] else ""))
    unfit = f["unfit"]
    shown = "; ".join(f"{u['host']} ({', '.join(u['problems'])})" for u in unfit[:MAX_UNFIT_SHOWN])
    more = f"; +{len(unfit) - MAX_UNFIT_SHOWN} more" if len(unfit) > MAX_UNFIT_SHOWN else ""
    lines.append(f"  unfit: {len(unfit)}" + (f": {shown}{more}" if unfit else ""))
    si = f.get("signin") or {}
    if si.get("set") or si.get("missing") or si.get("wrong"):
        wrong = si["wrong"]
        shown_w = "; ".join(f"{w['host']} ({', '.join(w['problems'])})" for w in wrong[:MAX_UNFIT_SHOWN])
        more_w = f"; +{len(wrong) - MAX_UNFIT_SHOWN} more" if len(wrong) > MAX_UNFIT_SHOWN else ""
        lines.append(f"  Messenger sign-in: {si['set']} set, {si['missing']} not yet, {len(wrong)} wrong"
                     + (f": {shown_w}{more_w}" if wrong else ""))
    c = f["contact_lists"]
    top = ", ".join(f"{e['user']} {e['count']}" + (" (over limit)" if e["over_limit"] else "")
                    for e in c["largest"])
    lines.append(f"  contact lists: {c['users']} user(s), {c['over_limit']} over {c['limit']}"
                 + (f"; largest: {top}" if top else ""))
    return lines


#: Targets named in one grouped line of failures alike before "+N more".
GROUPED_NAMES = 30


def _problem_line(c: dict[str, Any]) -> str:
    held = [f"{len(c[k])} {k if len(c[k]) > 1 else k[:-1]}" for k in ("users", "hosts") if c[k]]
    where = f" at '{c['step']}'" if c.get("step") else ""
    return (f"{c['target']}: {one_line(c.get('reason') or c.get('status') or 'failed')}{where}"
            + (f" ({', '.join(held)})" if held else ""))


def _problem_lines(problems: list[dict[str, Any]]) -> list[str]:
    """One line per cause; causes alike (same status, step and kind of failure: a hundred
    machines that keep Exchange IM until their last user moves) as one line naming them all,
    with the first one's message as an example."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for c in problems:
        kind = failure_kind(str(c.get("reason") or ""), c["target"])
        groups.setdefault((c.get("status"), c.get("step"), c["kind"], kind), []).append(c)
    lines = []
    for (status, step, kind, what), alike in groups.items():
        if len(alike) == 1:
            lines.append(f"    {status or 'failed'}: {_problem_line(alike[0])}")
            continue
        names = [c["target"] for c in alike]
        shown = ", ".join(names[:GROUPED_NAMES]) + (f" +{len(names) - GROUPED_NAMES} more"
                                                     if len(names) > GROUPED_NAMES else "")
        held = {k: sum(len(c[k]) for c in alike) for k in ("users", "hosts")}
        also = ", ".join(f"{n} {k if n > 1 else k[:-1]}" for k, n in held.items() if n)
        lines.append(f"    {status or 'failed'}: {len(names)} {kind}s at '{step}': {what}"
                     + (f" (holding up {also})" if also else ""))
        lines += textwrap.wrap(shown, 78, initial_indent="      ", subsequent_indent="      ",
                               break_on_hyphens=False, break_long_words=False)
        lines.append(f"      e.g. {_problem_line(alike[0])}")
    return lines


def render_status(info: dict[str, Any]) -> str:
    """The summary as text for a person."""
    if not info.get("store", True):
        return f"no state store in {info['state']}"
    if not info["runs"]:
        return f"no runs recorded in {info['state']}"
    lines: list[str] = [f"estate: {info['estate']}"] if info.get("estate") else []
    for r in info["runs"]:
        status = r["status"]
        if status == "interrupted" and r.get("recorded_status") == "running":
            status = "interrupted (recorded as running, but no process holds the lock: it was killed)"
        elif status == "running" and r.get("holder"):
            h = r["holder"]
            status = f"running (pid {h.get('pid')} on {h.get('host')})"
        lines.append(f"run {r['id']}: {status} (started {r['started']}, "
                     f"{'ended ' + r['ended'] if r['ended'] else 'not ended'}, sessions {r['sessions']})")
        lines.append(f"  playbook {r['playbook']}")
        lines.append(f"  inventory {r['inventory']}")
        for s in r.get("steps", []):
            counts = "  ".join(f"{k}={v}" for k, v in sorted(s["counts"].items()))
            left = f"  -> {s['left']} left" if s["left"] else ""
            lines.append(f"    [{s['play']}] {s['step']}: {counts}{left}")
        rem = r.get("remaining")
        if rem and rem.get("note"):
            lines.append(f"  remaining: unknown ({rem['note']})")
        elif rem and rem.get("tasks"):
            lines.append(f"  remaining of the playbook: {rem['tasks']} task(s)")
            for p in rem["plays"]:
                waves = ", ".join(f"{w} {n}" for w, n in p["waves"].items())
                lines.append(f"    [{p['play']}] {p['name']}: {waves}")
        elif rem is not None:
            lines.append("  remaining of the playbook: nothing")
        for g in r.get("not_yet") or []:
            n = len(g["targets"])
            waiting = f" (waiting for {', '.join(g['waiting'])})" if g["waiting"] else ""
            lines.append(f"  not yet (by design; a later night does them): {n} {g['kind']}(s) at "
                         f"'{g['step']}': {g['reason']}{waiting}")
            names = ", ".join(g["targets"][:GROUPED_NAMES]) + (
                f" +{n - GROUPED_NAMES} more" if n > GROUPED_NAMES else "")
            lines += textwrap.wrap(names, 78, initial_indent="      ", subsequent_indent="      ",
                                   break_on_hyphens=False, break_long_words=False)
            lines.append(f"      e.g. {g['example']}")
        problems = r.get("problems") or []
        if problems:
            lines.append(f"  failed or unreachable: {len(problems)} cause(s)")
            lines += _problem_lines(problems)
        if r.get("next_command"):
            lines.append(f"  next: {r['next_command']}   (without --limit: everything left)")
        elif r.get("resume_command"):
            lines.append(f"  to resume: {r['resume_command']}")
        elif r.get("again_command"):
            lines.append("  a rollback: done for its --limit; the rest of the inventory is not left to do")
            lines.append(f"  the same rollback again (once those users moved again): {r['again_command']}")
    lines += render_facts(info["facts"])
    return "\n".join(lines)
