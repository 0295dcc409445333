"""``runner report --format html``: one self-contained page for a manager.

Everything is inside the file: the styles, a small script (click a column
header to sort, type in the box to filter) and an inline SVG chart of the
progress per wave (moved, failed, pending). It loads nothing: a
Content-Security-Policy of ``default-src 'none'`` forbids the browser any
request, so the page opens the same from a mail attachment or a USB stick.
Every value is escaped (names from hosts may hold ``<``, ``&``, quotes);
the script reads the table, never data pasted into it.
"""
from __future__ import annotations

from html import escape
from typing import Any

from runner.report import messenger_text, verified_text
from runner.report_users import STAGES

COLORS = {"moved": "#2e7d32", "failed": "#c62828", "pending": "#9e9e9e"}
CHART_WIDTH = 720
BAR_LEFT = 150
BAR_HEIGHT = 22
BAR_GAP = 10

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
.meta{color:#555;font-size:.85rem}.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem;min-width:7rem}
.card b{display:block;font-size:1.4rem}.card span{color:#555;font-size:.8rem}
.moved b{color:#2e7d32}.failed b{color:#c62828}.pending b{color:#757575}
table{border-collapse:collapse;font-size:.82rem;width:100%}
th,td{border:1px solid #ddd;padding:.25rem .4rem;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right}tr.failed td.state{color:#c62828;font-weight:bold}
tr.moved td.state{color:#2e7d32}#filter{padding:.3rem;width:20rem;margin:.3rem 0}
ul{margin:0;padding-left:1.1rem}.warn li{font-size:.82rem}
td.long{font-size:.75rem;min-width:14rem;max-width:28rem}
"""

_SCRIPT = """
(function(){
var table=document.getElementById('users');if(!table)return;
var body=table.tBodies[0],heads=table.tHead.rows[0].cells;
function key(row,i,num){var c=row.cells[i],v=c.getAttribute('data-v');if(v===null)v=c.textContent;
 if(num){var n=parseFloat(v);return isNaN(n)?-1:n;}return v.toLowerCase();}
Array.prototype.forEach.call(heads,function(th,i){th.addEventListener('click',function(){
 var asc=th.getAttribute('aria-sort')!=='ascending',num=th.getAttribute('data-type')==='num';
 Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',asc?'ascending':'descending');
 var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a,i,num),y=key(b,i,num);return x<y?(asc?-1:1):x>y?(asc?1:-1):0;});
 rows.forEach(function(r){body.appendChild(r);});});});
var box=document.getElementById('filter'),shown=document.getElementById('shown');
function filter(){var q=box.value.toLowerCase(),n=0;
 Array.prototype.forEach.call(body.rows,function(r){var ok=r.textContent.toLowerCase().indexOf(q)>=0;
  r.hidden=!ok;if(ok)n++;});shown.textContent=n;}
box.addEventListener('input',filter);filter();
})();
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _card(value: Any, label: str, cls: str = "") -> str:
    return f'<div class="card {cls}" data-key="{_e(label)}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def chart_svg(waves: list[dict[str, Any]]) -> str:
    """Horizontal stacked bars, one per wave: moved, failed, pending users (inline SVG)."""
    height = max(1, len(waves)) * (BAR_HEIGHT + BAR_GAP) + 40
    widest = max([w["users"] for w in waves] or [1]) or 1
    span = CHART_WIDTH - BAR_LEFT - 60
    parts = [f'<svg id="progress-chart" xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" '
             f'height="{height}" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
             f'aria-label="progress per wave: users moved, failed and pending">']
    for i, w in enumerate(waves):
        y = 10 + i * (BAR_HEIGHT + BAR_GAP)
        parts.append(f'<text x="{BAR_LEFT - 8}" y="{y + 15}" text-anchor="end" font-size="12">{_e(w["wave"])}</text>')
        x = float(BAR_LEFT)
        for state in ("moved", "failed", "pending"):
            n = w[state]
            if not n:
                continue
            width = span * n / widest
            parts.append(f'<rect class="bar {state}" data-wave="{_e(w["wave"])}" data-state="{state}" '
                         f'data-count="{n}" x="{x:.1f}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" '
                         f'fill="{COLORS[state]}"><title>{_e(w["wave"])}: {n} {state}</title></rect>')
            if width >= 18:
                parts.append(f'<text x="{x + width / 2:.1f}" y="{y + 15}" text-anchor="middle" font-size="11" '
                             f'fill="#fff">{n}</text>')
            x += width
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 15}" font-size="11">{w["users"]}</text>')
    y = height - 18
    for j, state in enumerate(("moved", "failed", "pending")):
        lx = BAR_LEFT + j * 110
        parts.append(f'<rect x="{lx}" y="{y}" width="12" height="12" fill="{COLORS[state]}"/>'
                     f'<text x="{lx + 16}" y="{y + 10}" font-size="11">{state}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else ""


def _num(value: Any) -> str:
    return f'<td class="num" data-v="{_e("" if value is None else value)}">{_e("-" if value is None else value)}</td>'


HEADERS = (("User", "text"), ("Name", "text"), ("Wave", "text"), ("Stands", "num"), ("State", "text"),
           ("Exported", "num"), ("Imported", "num"), ("Already on LCS", "num"), ("Unmappable", "num"),
           ("Over limit", "num"), ("Names cut", "num"), ("Allow/block imported", "num"),
           ("Allow/block unmappable", "num"), ("Allow/block kept as set on LCS", "num"),
           ("Allow/block verified", "text"), ("Messenger (before -> after)", "text"),
           ("Reboot pending", "text"), ("Last failure", "text"), ("Next", "text"), ("Redo by hand", "text"))


def _row(u: dict[str, Any]) -> str:
    c = u["contacts"]
    p = u["permissions"]
    f = u["failure"]
    messenger = _list([f"{m['host']}: {messenger_text(m)}" for m in u["machines"]])
    failure = f"{f['status']} at '{f['step']}': {f['reason']}" if f else ""
    cells = [f'<td class="user">{_e(u["user"])}</td>', f"<td>{_e(u['display_name'])}</td>",
             f"<td>{_e(u['wave'] or '')}</td>",
             f'<td class="stage" data-v="{STAGES.index(u["stage"])}">{_e(u["stage_text"])}</td>',
             f'<td class="state">{_e(u["state"])}</td>',
             _num(c["exported"]), _num(c["imported"]), _num(c["already_on_lcs"]),
             f'<td class="num" data-v="{len(c["unmappable"])}" title="{_e("; ".join(x["address"] for x in c["unmappable"]))}">'
             f'{len(c["unmappable"])}</td>',
             _num(len(c["over_limit"])), _num(len(c["names_cut"])), _num(p["imported"]),
             f'<td class="num" data-v="{len(p["unmappable"])}" title="{_e("; ".join(x["value"] for x in p["unmappable"]))}">'
             f'{len(p["unmappable"])}</td>',
             f'<td class="num" data-v="{p["kept"]}" title="{_e("; ".join(p.get("conflicts") or []))}">{p["kept"]}</td>',
             f"<td>{_e(verified_text(p['verified']))}</td>", f"<td>{messenger}</td>",
             f"<td>{_e(', '.join(u['reboot_pending']))}</td>", f'<td class="failure long">{_e(failure)}</td>',
             f'<td class="long">{_e(f["next"] if f else "")}</td>', f'<td class="long">{_list(u["redo_by_hand"])}</td>']
    return f'<tr class="{_e(u["state"])}" data-user="{_e(u["user"])}">' + "".join(cells) + "</tr>"


def render_html(info: dict[str, Any]) -> str:
    """The whole page (UTF-8 text)."""
    title = "Migration report"
    if info.get("unknown_run"):
        body = f"<p>No run {_e(info['unknown_run'])} in {_e(info['state'])}.</p>"
    elif info["run"] is None:
        body = f"<p>No runs recorded in {_e(info['state'])}.</p>"
    else:
        body = _body(info)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{title}</title><style>{_STYLE}</style></head><body>{body}"
            f"<script>{_SCRIPT}</script></body></html>\n")


def _body(info: dict[str, Any]) -> str:
    s = info["summary"]
    c = s["contacts"]
    out = ["<h1>Exchange IM to LCS 2005: migration report</h1>",
           f'<p class="meta">Run {_e(info["run"])} ({_e(info.get("run_status"))}) of {_e(info["playbook"])}'
           f' with {_e(info["inventory"])}<br>Estate: {_e(info.get("estate"))}<br>'
           f'Generated {_e(info.get("generated"))} from {_e(info["state"])}</p>']
    if info.get("inventory_note"):
        out.append(f'<p class="meta">Inventory not read ({_e(info["inventory_note"])}): only users with '
                   "recorded tasks are listed.</p>")
    out.append('<h2>Summary</h2><div class="cards" id="summary">'
               + _card(s["users"], "users") + _card(s["moved"], "moved", "moved")
               + _card(s["failed"], "failed", "failed") + _card(s["pending"], "pending", "pending")
               + _card(c["exported"], "contacts exported") + _card(c["imported"], "contacts imported")
               + _card(c["already_on_lcs"], "already on LCS") + _card(c["unmappable"], "unmappable")
               + _card(c["over_limit"], "over the limit") + _card(c["names_cut"], "names cut")
               + _card(s["permissions"]["imported"], "allow/block entries imported")
               + _card(s["permissions"]["unmappable"], "allow/block unmappable")
               + _card(s["permissions"]["kept"], "allow/block kept as set on LCS")
               + _card(s["permissions"]["verified"], "users' allow/block lists verified")
               + _card(len(s["reboot_pending"]), "reboots pending") + _card(s["help_desk"], "help desk users")
               + "</div>")
    if s.get("causes"):
        out.append('<h2>Why users failed</h2><ul id="causes">'
                   + "".join(f'<li data-users="{c["users"]}"><b>{c["users"]}</b> user(s): {_e(c["cause"])}</li>'
                             for c in s["causes"]) + "</ul>")
    if s.get("not_yet"):
        out.append('<h2>Not yet, by design</h2><ul id="not-yet">'
                   + "".join(f'<li data-hosts="{len(n["hosts"])}"><b>{len(n["hosts"])}</b> machine(s) '
                             f'{_e(n["reason"])} (\'{_e(n["step"])}\'): {_e(", ".join(n["hosts"]))}</li>'
                             for n in s["not_yet"]) + "</ul>")
    out.append("<h2>Progress per wave</h2>" + chart_svg(info["waves"]))
    out.append('<h2>Users</h2><input id="filter" type="search" placeholder="Filter: user, wave, state, reason..." '
               'aria-label="filter the users"> <span class="meta"><span id="shown">'
               f'{len(info["users"])}</span> of {len(info["users"])} shown; click a header to sort</span>')
    head = "".join(f'<th data-type="{t}">{_e(h)}</th>' for h, t in HEADERS)
    out.append(f'<table id="users"><thead><tr>{head}</tr></thead><tbody>'
               + "".join(_row(u) for u in info["users"]) + "</tbody></table>")
    desk = [u for u in info["users"] if u["redo_by_hand"]]
    if desk:
        out.append('<h2>Help desk: what users redo by hand</h2><table id="help-desk"><thead><tr><th>User</th>'
                   "<th>Name</th><th>To do</th></tr></thead><tbody>"
                   + "".join(f"<tr><td>{_e(u['user'])}</td><td>{_e(u['display_name'])}</td>"
                             f"<td>{_list(u['redo_by_hand'])}</td></tr>" for u in desk) + "</tbody></table>")
    if info["entries"]:
        by_target: dict[str, list[str]] = {}
        for e in info["entries"]:
            by_target.setdefault(e["target"], []).extend(f"[{e['step']}] {w}" for w in e["warnings"])
        total = sum(len(v) for v in by_target.values())
        out.append(f'<h2>Warnings and failures ({total} on {len(by_target)} target(s))</h2><div class="warn">'
                   + "".join(f"<details><summary>{_e(t)} ({len(ws)})</summary>{_list(ws)}</details>"
                             for t, ws in by_target.items()) + "</div>")
    return "".join(out)
