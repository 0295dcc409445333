"""``runner status``: what the checkpoint store knows, as a dict and as text.

Runs (newest first), for the newest run of each playbook + inventory what
finished and what is left per step, the command that resumes an unfinished
run, and a summary of the client facts gathered by inventory_clients for
planning a night: hosts by OS and Messenger version (how many below 5.1),
unfit clients, and who has the largest contact lists.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from runner.lcs.contacts import DEFAULT_MAX_CONTACTS
from runner.state import DB_NAME, StateStore, refuse_lost_store
from runner.steps._clients import version_tuple

MAX_RUNS = 20
TARGET_MESSENGER = (5, 1)
LARGEST = 5
MAX_UNFIT_SHOWN = 10


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


def collect_status(state_dir: Path) -> dict[str, Any]:
    """A JSON-serialisable summary of the store in ``state_dir`` (empty when there is none)."""
    refuse_lost_store(state_dir)
    if not (state_dir / DB_NAME).exists():
        return {"state": str(state_dir), "estate": None, "runs": [],
                "facts": summarise_facts({}) | {"last_updated": None}, "damaged": []}
    store = StateStore(state_dir, create=False)
    try:
        runs = store.runs()
        latest_ids: set[str] = set()
        seen: set[str] = set()
        for r in runs:
            if r.identity not in seen:
                seen.add(r.identity)
                latest_ids.add(r.id)
        out_runs = []
        for r in runs[:MAX_RUNS]:
            entry: dict[str, Any] = {
                "id": r.id, "status": r.status, "playbook": r.playbook, "inventory": r.inventory,
                "started": _when(r.started), "ended": _when(r.ended), "sessions": r.sessions,
                "latest": r.id in latest_ids,
            }
            if r.id in latest_ids:
                steps = store.step_summary(r.id)
                entry["steps"] = steps
                entry["left"] = sum(s["left"] for s in steps)
                if r.status != "ok" or entry["left"]:
                    entry["resume_command"] = r.command
            out_runs.append(entry)
        damaged: list[str] = []
        facts = summarise_facts(_gathered_facts(store, latest_ids, damaged))
        facts["last_updated"] = _when(store.facts_summary()["last_updated"])
        bound = store.estate()
        return {"state": str(state_dir), "estate": bound[1].describe() if bound else None,
                "runs": out_runs, "facts": facts, "damaged": damaged}
    finally:
        store.close()


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
            by_messenger[f"{m.get('product') or 'Messenger'} {version}"] += 1
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
    top = sorted(largest.values(), key=lambda e: (-e["count"], e["user"]))
    return {"hosts": len(hosts), "os": dict(by_os.most_common()), "messenger": dict(by_messenger.most_common()),
            "below_5_1": below, "messenger_missing": missing, "unfit": unfit,
            "contact_lists": {"users": len(largest), "limit": DEFAULT_MAX_CONTACTS,
                              "over_limit": sum(1 for e in top if e["over_limit"]), "largest": top[:LARGEST]}}


def render_facts(f: dict[str, Any]) -> list[str]:
    """The facts summary as a few lines of text."""
    lines = [f"facts: {f['hosts']} host(s)" + (f", last updated {f['last_updated']}" if f.get("last_updated") else "")]
    if not f["hosts"]:
        return lines
    lines.append("  OS: " + ", ".join(f"{k} x{n}" for k, n in f["os"].items()))
    lines.append("  Messenger: " + ", ".join(f"{k} x{n}" for k, n in f["messenger"].items())
                 + f"; below 5.1: {f['below_5_1']}" + (f", missing: {f['messenger_missing']}"
                                                        if f["messenger_missing"] else ""))
    unfit = f["unfit"]
    shown = "; ".join(f"{u['host']} ({', '.join(u['problems'])})" for u in unfit[:MAX_UNFIT_SHOWN])
    more = f"; +{len(unfit) - MAX_UNFIT_SHOWN} more" if len(unfit) > MAX_UNFIT_SHOWN else ""
    lines.append(f"  unfit: {len(unfit)}" + (f": {shown}{more}" if unfit else ""))
    c = f["contact_lists"]
    top = ", ".join(f"{e['user']} {e['count']}" + (" (over limit)" if e["over_limit"] else "")
                    for e in c["largest"])
    lines.append(f"  contact lists: {c['users']} user(s), {c['over_limit']} over {c['limit']}"
                 + (f"; largest: {top}" if top else ""))
    return lines


def render_status(info: dict[str, Any]) -> str:
    """The summary as text for a person."""
    if not info["runs"]:
        return f"no runs recorded in {info['state']}"
    lines: list[str] = [f"estate: {info['estate']}"] if info.get("estate") else []
    for r in info["runs"]:
        lines.append(f"run {r['id']}: {r['status']} (started {r['started']}, "
                     f"{'ended ' + r['ended'] if r['ended'] else 'not ended'}, sessions {r['sessions']})")
        lines.append(f"  playbook {r['playbook']}")
        lines.append(f"  inventory {r['inventory']}")
        for s in r.get("steps", []):
            counts = "  ".join(f"{k}={v}" for k, v in sorted(s["counts"].items()))
            left = f"  -> {s['left']} left" if s["left"] else ""
            lines.append(f"    [{s['play']}] {s['step']}: {counts}{left}")
        if r.get("resume_command"):
            lines.append(f"  to resume: {r['resume_command']}")
    lines += render_facts(info["facts"])
    return "\n".join(lines)
