"""``runner status``: what the checkpoint store knows, as a dict and as text.

Runs (newest first), for the newest run of each playbook + inventory what
finished and what is left per step, the facts gathered, and the command
that resumes an unfinished run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from runner.state import DB_NAME, StateStore

MAX_RUNS = 20


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


def collect_status(state_dir: Path) -> dict[str, Any]:
    """A JSON-serialisable summary of the store in ``state_dir`` (empty when there is none)."""
    if not (state_dir / DB_NAME).exists():
        return {"state": str(state_dir), "runs": [], "facts": {"hosts": 0, "last_updated": None}}
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
        facts = store.facts_summary()
        facts["last_updated"] = _when(facts["last_updated"])
        return {"state": str(state_dir), "runs": out_runs, "facts": facts}
    finally:
        store.close()


def render_status(info: dict[str, Any]) -> str:
    """The summary as text for a person."""
    if not info["runs"]:
        return f"no runs recorded in {info['state']}"
    lines: list[str] = []
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
    f = info["facts"]
    lines.append(f"facts: {f['hosts']} host(s)" + (f", last updated {f['last_updated']}" if f["last_updated"] else ""))
    return "\n".join(lines)
