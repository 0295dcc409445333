"""``runner report --format csv``: one row per user for a spreadsheet (the help desk's list).

The header is fixed (``COLUMNS``, documented in docs/report.md): columns are
only ever added at the end. Lists inside a cell are joined with ``; `` and
per-machine figures written ``host=value``. A text cell that a spreadsheet
would take for a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return, after any spaces: a display name from a host is data) is prefixed with
``'``, as OWASP advises against CSV injection.
"""
from __future__ import annotations

import csv
import io
from typing import Any

COLUMNS = ("user", "display_name", "im_address", "wave", "stage", "state", "run", "machines",
           "contacts_found", "contacts_exported_per_machine", "exported", "imported", "already_on_lcs",
           "unmappable", "unmappable_contacts", "over_limit", "over_limit_contacts", "names_cut",
           "permissions_imported", "permissions_kept", "permissions_unmappable", "unmappable_permissions",
           "permissions_verified", "messenger_before", "messenger_after", "reboot_pending", "failed_step", "failure_status",
           "failure_reason", "next_action", "redo_by_hand", "warnings", "not_yet")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and (value.startswith(_FORMULA) or value.lstrip().startswith(_FORMULA)):
        return "'" + value  # leading spaces too: a spreadsheet told to trim them would see the formula
    return value


def _per_machine(machines: list[dict[str, Any]], key: str) -> str:
    return "; ".join(f"{m['host']}={'' if m[key] is None else m[key]}" for m in machines)


def csv_row(u: dict[str, Any]) -> list[Any]:
    """The CSV cells of one user row, in COLUMNS order."""
    c = u["contacts"]
    f = u["failure"] or {}
    values = {
        "user": u["user"], "display_name": u["display_name"], "im_address": u["im_address"], "wave": u["wave"],
        "stage": u["stage"], "state": u["state"], "run": u["run"],
        "machines": "; ".join(m["host"] for m in u["machines"]),
        "contacts_found": _per_machine(u["machines"], "found"),
        "contacts_exported_per_machine": _per_machine(u["machines"], "exported"),
        "exported": c["exported"], "imported": c["imported"], "already_on_lcs": c["already_on_lcs"],
        "unmappable": len(c["unmappable"]),
        "unmappable_contacts": "; ".join(f"{x['address']} ({x['reason']})" for x in c["unmappable"]),
        "over_limit": len(c["over_limit"]), "over_limit_contacts": "; ".join(c["over_limit"]),
        "names_cut": len(c["names_cut"]),
        "permissions_imported": u["permissions"]["imported"], "permissions_kept": u["permissions"]["kept"],
        "permissions_unmappable": len(u["permissions"]["unmappable"]),
        "unmappable_permissions": "; ".join(f"{x['value']} ({x['reason']})" for x in u["permissions"]["unmappable"]),
        "permissions_verified": u["permissions"]["verified"],
        "messenger_before": _per_machine(u["machines"], "messenger_before"),
        "messenger_after": _per_machine(u["machines"], "messenger_after"),
        "reboot_pending": "; ".join(u["reboot_pending"]),
        "failed_step": f.get("step"), "failure_status": f.get("status"), "failure_reason": f.get("reason"),
        "next_action": f.get("next"), "redo_by_hand": "; ".join(u["redo_by_hand"]), "warnings": u["warnings"],
        # what a machine of the user's was left by design (Exchange IM kept for a later wave's user)
        "not_yet": "; ".join(f"{m['host']}: {n['reason']} ('{n['step']}')"
                             for m in u["machines"] for n in m.get("not_yet") or ()),
    }
    return [_cell(values[k]) for k in COLUMNS]


def render_csv(info: dict[str, Any]) -> str:
    """The whole CSV document (header + one row per user), RFC 4180 quoting, CRLF line ends."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for u in info["users"]:
        w.writerow(csv_row(u))
    return buf.getvalue()
