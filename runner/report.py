"""``runner report``: what a run could not do silently: every warning per target.

Unmappable contacts, contacts beyond the LCS limit, truncated names,
reboots required, failures: the step results in the checkpoint store carry
them as ``warnings`` (and failed tasks as a message). This module reads them
back for a person (grouped by target) or for other tools (JSON).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.state import DB_NAME, StateStore, refuse_lost_store


def collect_report(state_dir: Path, run_id: str | None = None) -> dict[str, Any]:
    """Warnings and failures of ``run_id`` (default: the newest run) as a JSON-able dict."""
    refuse_lost_store(state_dir)
    if not (state_dir / DB_NAME).exists():
        return {"state": str(state_dir), "run": None, "entries": []}
    store = StateStore(state_dir, create=False)
    try:
        runs = store.runs()
        run = next((r for r in runs if r.id == run_id), None) if run_id else (runs[0] if runs else None)
        if run is None:
            return {"state": str(state_dir), "run": None, "entries": [], "unknown_run": run_id}
        entries = []
        damaged: list[str] = []
        for row in store.task_rows(run.id):
            if row.get("damaged"):
                damaged.append(row["damaged"])
                entries.append({"step": row["step"], "module": row["module"], "target": row["target"],
                                "status": row["status"],
                                "warnings": [f"the store's record of this task is damaged: {row['damaged']}"]})
                continue
            result = row["result"] if isinstance(row["result"], dict) else {}
            warnings = list(result.get("warnings") or [])
            if row["status"] in ("failed", "unreachable") and row["message"]:
                warnings.insert(0, f"{row['status']}: {row['message']}")
            if warnings:
                entries.append({"step": row["step"], "module": row["module"], "target": row["target"],
                                "status": row["status"], "warnings": warnings})
        bound = store.estate()
        return {"state": str(state_dir), "run": run.id, "playbook": run.playbook,
                "inventory": run.inventory, "estate": bound[1].describe() if bound else None,
                "entries": entries, "damaged": damaged}
    finally:
        store.close()


def render_report(info: dict[str, Any]) -> str:
    """The report as text: one block per target, one line per warning."""
    if info.get("unknown_run"):
        return f"no run {info['unknown_run']} in {info['state']} (runner status lists the runs)"
    if info["run"] is None:
        return f"no runs recorded in {info['state']}"
    lines = [f"run {info['run']}: {info['playbook']} with {info['inventory']}"]
    if info.get("estate"):
        lines.append(f"estate: {info['estate']}")
    if not info["entries"]:
        lines.append("no warnings and no failures recorded")
        return "\n".join(lines)
    by_target: dict[str, list[dict[str, Any]]] = {}
    for e in info["entries"]:
        by_target.setdefault(e["target"], []).append(e)
    total = 0
    for target, entries in by_target.items():
        lines.append("")
        lines.append(f"{target}:")
        for e in entries:
            for w in e["warnings"]:
                lines.append(f"  [{e['step']}] {w}")
                total += 1
    lines.append("")
    lines.append(f"{total} warning(s) on {len(by_target)} target(s)")
    return "\n".join(lines)
