"""``runner report``: one row per user of the estate, and every warning per target.

Where each user stands, their contact figures, Messenger versions, failures
and what the help desk must redo by hand (runner.report_users), plus what a
run could not do silently: unmappable contacts, contacts beyond the LCS
limit, truncated names, reboots required, failures, as the step results in
the checkpoint store carry them (``warnings``, and failed tasks' messages).
This module gathers both into one JSON-able dict (its keys are documented in
docs/report.md and kept stable: ``REPORT_FORMAT`` changes when one does) and
renders it as text; runner.report_html and runner.report_csv render the others.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from runner.errors import InputError
from runner.estate import subjects
from runner.model import Inventory
from runner.report_users import STAGE_WORDS, entry_key, summarise, user_rows, wave_progress
from runner.state import DB_NAME, StateStore, refuse_lost_store

#: Version of the report's JSON layout (docs/report.md); raised when a key changes meaning.
REPORT_FORMAT = 1
FORMATS = ("text", "html", "csv", "json")
MAX_CAUSES = 10
#: Machines named in a "not yet" line of the summary before "+N more".
MAX_NOT_YET = 10


def _empty(state_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"report_format": REPORT_FORMAT, "state": str(state_dir), "run": None, "entries": [], "users": [],
            "waves": [], "summary": summarise([]), "damaged": [], **extra}


def _inventory(path: str | None) -> tuple[Inventory | None, str | None]:
    """The run's inventory, or None and why it could not be read (the report then lists
    the users the store knows)."""
    if not path:
        return None, "no inventory recorded"
    from runner.loader import load_inventory
    try:
        return load_inventory(path), None
    except InputError as exc:
        return None, InputError.__str__(exc).splitlines()[0]
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"


def collect_report(state_dir: Path, run_id: str | None = None, *,
                   inventory: Inventory | None = None) -> dict[str, Any]:
    """The report of the store in ``state_dir`` as a JSON-able dict: per-user rows over every
    run of the estate (only ``run_id``'s when given) and the warnings of ``run_id`` (default:
    the newest run). ``inventory`` replaces the one the run recorded (tests, callers that
    have it loaded)."""
    refuse_lost_store(state_dir)
    if not (state_dir / DB_NAME).exists():
        return _empty(state_dir)
    store = StateStore(state_dir, create=False)
    try:
        runs = store.runs()
        run = next((r for r in runs if r.id == run_id), None) if run_id else (runs[0] if runs else None)
        if run is None:
            return _empty(state_dir, unknown_run=run_id) if run_id else _empty(state_dir)
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
        inventory_note = None
        if inventory is None:
            inventory, inventory_note = _inventory(run.inventory)
        history = store.outcome_history(run_id)
        damaged += [r["damaged"] for r in history if r.get("damaged") and r["damaged"] not in damaged]
        subject_alias = {subj: alias for alias, subj in subjects(inventory).items()} if inventory else {}
        users = user_rows(history, inventory, subject_alias, store.all_facts(damaged),
                          {r.id: r.command for r in runs}, _runner_records(store))
        return {"report_format": REPORT_FORMAT, "state": str(state_dir), "run": run.id,
                "run_status": shown_status(store, state_dir, run), "scope": "run" if run_id else "estate",
                "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
                "playbook": run.playbook, "inventory": run.inventory, "inventory_note": inventory_note,
                "estate": bound[1].describe() if bound else None,
                "summary": summarise(users), "waves": wave_progress(users, inventory), "users": users,
                "entries": entries, "damaged": damaged}
    finally:
        store.close()


def shown_status(store: StateStore, state_dir: Path, run: Any) -> str:
    """The run's status as ``runner status`` shows it: ``interrupted`` for one recorded as
    running that no process holds the lock of, ``partial`` for an ok run (e.g. ``--limit``)
    that left tasks of its playbook to do, else as recorded."""
    from runner.state import lock_holder
    from runner.status import remaining_of_playbook
    if run.status == "running" and lock_holder(state_dir) is None:
        return "interrupted"
    if run.status != "ok":
        return str(run.status)
    left = sum(s["left"] for s in store.step_summary(run.id))
    remaining = remaining_of_playbook(run.playbook, run.inventory, store.task_rows(run.id))
    return "partial" if left or (remaining or {}).get("tasks") else "ok"


def _runner_records(store: StateStore) -> dict[str, dict[str, list[str]]]:
    """Per alias what the runner itself created on LCS in any run, from its records (the
    artifacts ``lcs-imported/<alias>.json`` of import_contacts and ``permissions/<alias>/created.json``
    of import_permissions): ``contacts`` (SIP URIs) and ``permissions`` (entry keys as
    ``everyone`` / ``Type mask``). A record that cannot be read counts as none."""
    import json

    from runner.artifacts import ArtifactStore
    from runner.errors import RunnerError
    artifacts = ArtifactStore(store)
    out: dict[str, dict[str, list[str]]] = {}
    wanted = [(row.name, "contacts") for row in store.artifacts_under("lcs-imported/")]
    wanted += [(row.name, "permissions") for row in store.artifacts_under("permissions/")
               if row.name.endswith("/created.json")]
    for name, kind in wanted:
        try:
            doc = json.loads(artifacts.read(name) or b"{}")
        except (RunnerError, ValueError, OSError):
            continue
        if not isinstance(doc, dict):
            continue
        alias = name.split("/")[1].removesuffix(".json")
        if kind == "contacts":
            found = [str(c["uri"]) for c in doc.get("contacts") or [] if isinstance(c, dict) and c.get("uri")]
        else:
            found = [entry_key(str(e.get("type", "")), str(e.get("mask", "")))
                     for e in doc.get("entries") or [] if isinstance(e, dict)]
        out.setdefault(alias, {})[kind] = found
    return out


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def verified_text(verified: bool | None) -> str:
    """Whether verify_permissions passed (after the latest rollback): yes, no, ``-`` not run."""
    return "-" if verified is None else ("yes" if verified else "no")


def messenger_text(m: dict[str, Any]) -> str:
    """``4.7.2009 -> 5.1`` (``-`` where unknown or not upgraded yet)."""
    return f"{m['messenger_before'] or '-'} -> {m['messenger_after'] or '-'}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return [fmt.format(*header).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def render_summary(info: dict[str, Any]) -> list[str]:
    """The totals and the progress per wave, a few lines."""
    s = info["summary"]
    c = s["contacts"]
    lines = [f"users: {s['users']}: {s['moved']} moved, {s['failed']} failed, {s['pending']} pending",
             "  stages: " + ", ".join(f"{STAGE_WORDS[k]} {n}" for k, n in s["stages"].items() if n),
             f"  contacts: {c['exported']} exported, {c['imported']} imported, {c['already_on_lcs']} already on LCS, "
             f"{c['unmappable']} unmappable, {c['over_limit']} over the limit, {c['names_cut']} name(s) cut",
             f"  allow/block lists: {s['permissions']['imported']} entries imported, "
             f"{s['permissions']['kept']} kept as set on LCS, {s['permissions']['unmappable']} unmappable, "
             f"{s['permissions']['verified']} user(s) verified",
             f"  reboot pending: {len(s['reboot_pending'])} machine(s)"
             + (f": {', '.join(s['reboot_pending'])}" if s["reboot_pending"] else ""),
             f"  help desk: {s['help_desk']} user(s) to help by hand"]
    for n in s.get("not_yet") or []:
        hosts = n["hosts"]
        lines.append(f"  not yet (by design): {len(hosts)} machine(s) {n['reason']} ('{n['step']}'): "
                     + ", ".join(hosts[:MAX_NOT_YET]) + (f" +{len(hosts) - MAX_NOT_YET} more" if len(hosts) > MAX_NOT_YET else ""))
    causes = s.get("causes") or []
    if causes:
        lines.append(f"  failed because of {len(causes)} cause(s):")
        lines += [f"    {c['users']} user(s): {c['cause']}" for c in causes[:MAX_CAUSES]]
        if len(causes) > MAX_CAUSES:
            lines.append(f"    ... and {len(causes) - MAX_CAUSES} more (listed per user below)")
    for w in info["waves"]:
        lines.append(f"  wave {w['wave']}: {w['users']} user(s): {w['moved']} moved, {w['failed']} failed, "
                     f"{w['pending']} pending")
    return lines


def render_users(users: list[dict[str, Any]]) -> list[str]:
    """The per-user table (one line each) and, under it, each failure with what to do next."""
    header = ["user", "wave", "stands", "exported", "imported", "already", "unmappable", "over", "cut",
              "perms", "p.unmap", "p.kept", "p.ok", "messenger", "reboot", "failure"]
    rows = []
    for u in users:
        c = u["contacts"]
        messenger = ", ".join(f"{m['host']} {messenger_text(m)}" for m in u["machines"]) or "-"
        fail = f"{u['failure']['status']} at '{u['failure']['step']}'" if u["failure"] else "-"
        rows.append([u["user"], u["wave"] or "-", u["stage_text"], _n(c["exported"]), _n(c["imported"]),
                     _n(c["already_on_lcs"]), str(len(c["unmappable"])), str(len(c["over_limit"])),
                     str(len(c["names_cut"])), _n(u["permissions"]["imported"]),
                     str(len(u["permissions"]["unmappable"])), str(u["permissions"]["kept"]),
                     verified_text(u["permissions"]["verified"]), messenger, ",".join(u["reboot_pending"]) or "-", fail])
    lines = _table(header, rows) if rows else []
    failed = [u for u in users if u["failure"]]
    if failed:
        lines += ["", "failures (newest per user) and what to do next:"]
        for u in failed:
            f = u["failure"]
            lines.append(f"  {u['user']}: {f['status']} at '{f['step']}': {f['reason']}"
                         + (" (a refused rollback: nothing changed, the user stays where they stand)"
                            if f.get("refused") else ""))
            lines.append(f"    next: {f['next']}")
    return lines


def render_help_desk(users: list[dict[str, Any]]) -> list[str]:
    """What each user has to redo by hand (the help desk's list)."""
    lines = []
    for u in users:
        if u["redo_by_hand"]:
            lines.append(f"  {u['user']}" + (f" ({u['display_name']})" if u["display_name"] else "") + ":")
            lines += [f"    - {item}" for item in u["redo_by_hand"]]
    return ["help desk: what users have to redo by hand:", *lines] if lines else []


def render_report(info: dict[str, Any]) -> str:
    """The report as text: summary, one line per user, the help-desk list, then one block
    per target with one line per warning (the last line counts them)."""
    if info.get("unknown_run"):
        return f"no run {info['unknown_run']} in {info['state']} (runner status lists the runs)"
    if info["run"] is None:
        return f"no runs recorded in {info['state']}"
    lines = [f"run {info['run']} ({info.get('run_status')}): {info['playbook']} with {info['inventory']}"]
    if info.get("estate"):
        lines.append(f"estate: {info['estate']}")
    if info.get("inventory_note"):
        lines.append(f"note: inventory not read ({info['inventory_note']}): only users with recorded tasks listed")
    lines += ["", *render_summary(info)]
    if info["users"]:
        lines += ["", *render_users(info["users"])]
    desk = render_help_desk(info["users"])
    if desk:
        lines += ["", *desk]
    if not info["entries"]:
        lines += ["", "no warnings and no failures recorded"]
        return "\n".join(lines)
    by_target: dict[str, list[dict[str, Any]]] = {}
    for e in info["entries"]:
        by_target.setdefault(e["target"], []).append(e)
    total = 0
    lines += ["", "warnings and failures per target:"]
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


def render(info: dict[str, Any], fmt: str) -> str:
    """The report in ``fmt`` (one of FORMATS)."""
    if fmt == "json":
        import json
        return json.dumps(info, indent=2, default=str, sort_keys=True) + "\n"
    if fmt == "csv":
        from runner.report_csv import render_csv
        return render_csv(info)
    if fmt == "html":
        from runner.report_html import render_html
        return render_html(info)
    return render_report(info)
