"""``runner lab``: create, inspect and check the simulated estate (a click group).

Commands: ``init`` (generate a lab and its inventory), ``show`` (a summary,
one host or one user), ``verify`` (compare LCS and Exchange with the
manifest; exit 0 when all is as expected, 1 otherwise), ``faults`` (set
fault rates in lab.json). H2's ``runner.cli`` adds this group.
"""
from __future__ import annotations

import difflib
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click

from runner.errors import EXIT_ERROR, EXIT_OK, InputError, OptionsError, RunnerError
from runner.lab import exchange
from runner.lab.faults import KINDS
from runner.lab.generator import init_lab, init_lab_from_inventory
from runner.lab.verify import load_manifest, verify

DEFAULT_DIR = ".lab/default"
REHEARSAL_DIR = ".lab/rehearsal"
FAULT_KINDS = KINDS


def _fail(e: RunnerError) -> None:
    click.echo(str(e), err=True)
    sys.exit(e.exit_code)


@click.group("lab")
def lab() -> None:
    """Create, inspect and check the simulated Exchange IM estate."""


@lab.command("init")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help=f"Lab directory.  [default: {DEFAULT_DIR}; {REHEARSAL_DIR} with --from-inventory]")
@click.option("--from-inventory", "from_inventory", default=None, type=click.Path(dir_okay=False),
              help="Copy the shape of this inventory (its hosts, groups, users, waves and variables) "
                   "instead of a random estate; contact lists are still generated.")
@click.option("--clients", default=None, type=click.IntRange(1),
              help="Client machines (pc0001...), besides exim01 and lcs01.  [default: 50]")
@click.option("--users-per-client", default=None, type=click.IntRange(1),
              help="User profiles per client on average (users roam on 1-3 machines).  [default: 2]")
@click.option("--contacts", default=20, show_default=True, type=click.IntRange(0),
              help="Average contact-list size per user and machine (some lists exceed the LCS limit of 150).")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Same seed and sizes, same lab (users, contacts, waves).")
@click.option("--force", is_flag=True, help="Replace an existing lab.")
def init_cmd(directory: str | None, from_inventory: str | None, clients: int | None, users_per_client: int | None,
             contacts: int, seed: int, force: bool) -> None:
    """Generate a lab and its inventory (an existing lab is kept unless --force)."""
    if from_inventory is not None and (clients is not None or users_per_client is not None):
        _fail(OptionsError("--clients and --users-per-client size a random lab; "
                           "with --from-inventory the inventory gives the hosts and users"))
    directory = directory or (REHEARSAL_DIR if from_inventory else DEFAULT_DIR)
    existed = (Path(directory) / "inventory.yml").is_file()
    try:
        if from_inventory is not None:
            inv = init_lab_from_inventory(directory, from_inventory, contacts=contacts, seed=seed, force=force)
        else:
            inv = init_lab(directory, clients=clients or 50, users_per_client=users_per_client or 2,
                           contacts=contacts, seed=seed, force=force)
    except RunnerError as e:
        _fail(e)
    man = load_manifest(inv.parent)
    note = "kept existing lab" if existed and not force else "created lab"
    source = man["params"].get("from_inventory")
    click.echo(f"{note} at {inv.parent}: {man['params']['clients']} clients, {len(man['users'])} users"
               + (f" (the shape of {source})" if source else ""))
    click.echo(f"inventory: {inv}")
    if from_inventory is not None:
        for line in missing_identity_warnings(from_inventory):
            click.echo(f"warning: {line}", err=True)


def missing_identity_warnings(inventory_path: str) -> list[str]:
    """What the lab invented that the real night needs: users without ``sid`` (their
    hive cannot be found by SID) or ``ad_guid`` (LCS cannot be enabled without it)."""
    from runner.loader import load_inventory

    users = load_inventory(inventory_path).users.values()
    out = []
    for field, why in (("ad_guid", "enable_lcs_users needs it on the real night"),
                       ("sid", "export_contacts then finds the profile by folder name only")):
        missing = sorted(u.alias for u in users if not getattr(u, field))
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            out.append(f"{len(missing)} user(s) of {inventory_path} have no {field} (the lab made one up; "
                       f"{why}): {shown}")
    return out


@lab.command("show")
@click.argument("name", required=False)
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Lab directory.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(name: str | None, directory: str, as_json: bool) -> None:
    """Show the lab, one host (pc0001, exim01, lcs01) or one user (alias)."""
    try:
        info = describe(Path(directory), name)
    except RunnerError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(info, indent=1, ensure_ascii=False, default=str))
        return
    _print(info)


def _print(info: Any, indent: int = 0) -> None:
    pad = "  " * indent
    if isinstance(info, dict):
        for k, v in info.items():
            if isinstance(v, (dict, list)) and v:
                click.echo(f"{pad}{k}:")
                _print(v, indent + 1)
            else:
                click.echo(f"{pad}{k}: {v}")
    elif isinstance(info, list):
        for v in info:
            if isinstance(v, (dict, list)):
                click.echo(f"{pad}-")
                _print(v, indent + 1)
            else:
                click.echo(f"{pad}- {v}")


def describe(lab_dir: Path, name: str | None) -> dict[str, Any]:
    """What ``runner lab show`` prints: the lab summary, a host or a user."""
    from runner.lab.store import Lab
    man = load_manifest(lab_dir)
    lab_ = Lab(lab_dir)
    lcs_db = lab_dir / "hosts" / man["lcs_server"] / "lcs.db"
    if name is None:
        db = sqlite3.connect(f"file:{lcs_db}?mode=ro", uri=True)
        try:
            enabled = db.execute("SELECT count(*) FROM users WHERE enabled=1").fetchone()[0]
            contacts = db.execute("SELECT count(*) FROM contacts").fetchone()[0]
        finally:
            db.close()
        roles: dict[str, int] = {}
        for h in lab_.host_names():
            r = lab_.hosts_config[h].get("role", "client")
            roles[r] = roles.get(r, 0) + 1
        return {"lab": str(lab_.path), "params": man["params"], "hosts": roles, "users": len(man["users"]),
                "lcs": {"enabled_users": enabled, "contacts": contacts},
                "faults": lab_.config.get("faults", {})}
    if name.lower() in {h.lower() for h in lab_.host_names()}:
        h = lab_.host(name)
        out: dict[str, Any] = {"host": h.name, "role": h.role, "address": h.config.get("address")}
        if h.role == "client":
            try:
                out["messenger_version"] = h.fs.file_version(r"C:\Program Files\Messenger\msmsgs.exe")
            except OSError:
                out["messenger_version"] = None
            out["os"] = h.config.get("os")
            out["profiles"] = [a for a, u in man["users"].items() if h.name in u["clients"]]
            out["hives_mounted"] = [f"{m.name} ({'in use' if m.in_use else 'loaded'})" for m in h.registry.mounts()]
        out["services"] = [f"{s.name}: {s.state} {s.start_type}" for s in h.services.list()]
        out["journal"] = [f"{e.program}: {e.command} -> {e.rc}" for e in h.journal()][-20:]
        return out
    u = man["users"].get(name)
    if u is None:
        close = difflib.get_close_matches(name, [*lab_.host_names(), *man["users"]], n=1)
        raise OptionsError(f"no host or user named {name!r} in the lab {lab_dir}"
                           + (f" (did you mean {close[0]!r}?)" if close else ""))
    out = {"user": name, **{k: u[k] for k in ("display_name", "im_address", "sip_uri", "ad_guid", "sid", "wave",
                                              "clients")}}
    out["machines"] = {c: {"logged_on": m["logged_on"], "contacts": len(m["contacts"]),
                           "groups": list(m["groups"])} for c, m in u["machines"].items()}
    db = sqlite3.connect(f"file:{lcs_db}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT primary_uri, enabled, home_server_dn FROM users WHERE instance_id=?",
                         (u["ad_guid"].upper(),)).fetchone()
        n = db.execute("SELECT count(*) FROM contacts WHERE user_instance_id=?", (u["ad_guid"].upper(),)).fetchone()[0]
        try:
            aces = [f"{t} {m}: presence {p}, communication {c}".replace(" :", ":") for t, m, p, c in db.execute(
                "SELECT type, mask, presence, communication FROM user_aces WHERE user_instance_id=?",
                (u["ad_guid"].upper(),))]
        except sqlite3.OperationalError:  # a pool store from before allow and block lists
            aces = []
    finally:
        db.close()
    out["lcs"] = {"enabled": bool(row and row[1]), "primary_uri": row[0] if row else None,
                  "home_server_dn": row[2] if row else None, "contacts": n, "allow_block": aces}
    with exchange.Directory(exchange.ad_path(lab_dir)) as d:
        dn = exchange.guid_dn(d, u["ad_guid"])
        attrs = d.attributes(dn) if dn else {}
    out["exchange_im"] = {a: attrs.get(a, [None])[0] for a in exchange.IM_ATTRIBUTES}
    out["exchange_im"]["msExchIMACL"] = [str(v) for k, vals in attrs.items() if k.lower() == "msexchimacl"
                                         for v in vals]
    return out


@lab.command("verify")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Lab directory.")
@click.option("--wave", "waves", multiple=True, help="Only users of this wave (repeatable); the server is then not expected to be decommissioned.")
@click.option("--no-contacts", is_flag=True, help="Do not check contacts nor allow and block lists (the 'users recreate' scenario).")
@click.option("--no-permissions", is_flag=True, help="Do not check the users' allow and block lists.")
@click.option("--no-exchange", is_flag=True, help="Do not check the Exchange IM side.")
@click.option("--signin", is_flag=True, help="Also check the Messenger sign-in policy (SIP server, transport; "
              "Exchange IM switched off when the whole lab is checked) of every client, or with --wave of the "
              "clients of those waves' users.")
@click.option("--rolled-back", is_flag=True, help="Expect the users (of --wave) back on Exchange IM after "
              "playbooks/rollback.yml: Exchange IM address back, disabled on LCS, server in service; with "
              "--signin, their clients' Exchange IM account not switched off.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(directory: str, waves: tuple[str, ...], no_contacts: bool, no_permissions: bool, no_exchange: bool,
               signin: bool, rolled_back: bool, as_json: bool) -> None:
    """Compare LCS and Exchange IM with the manifest; exit 0 if all is as expected, 1 if not,
    4 if DIR holds no lab."""
    try:
        rep = verify(Path(directory), waves=waves, contacts=not no_contacts, exchange_side=not no_exchange,
                     permissions=not (no_contacts or no_permissions), signin=signin, rolled_back=rolled_back)
    except RunnerError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1, ensure_ascii=False))
    else:
        bad = [u for u in rep.users if not u.ok]
        for u in bad:
            click.echo(f"{u.alias} ({u.wave}): " + "; ".join(u.problems))
            for what in ("missing", "extra", "duplicated", "permissions_missing", "permissions_wrong"):
                lst = getattr(u, what)
                if lst:
                    click.echo(f"  {what.replace('_', ' ')}: " + ", ".join(lst[:10]) + (" ..." if len(lst) > 10 else ""))
        for p in rep.problems:
            click.echo(p)
        over = sum(1 for u in rep.users if u.over_limit)
        perms = sum(u.permissions_expected for u in rep.users)
        click.echo(f"{len(rep.users) - len(bad)}/{len(rep.users)} users as expected"
                   + (f", {over} over the LCS limit of {rep.limit}" if over else "")
                   + (f", {perms} permission entries checked" if perms else "")
                   + ("" if rep.decommissioned is None else
                      f", server {'decommissioned' if rep.decommissioned else 'still in service'}"))
    sys.exit(EXIT_OK if rep.ok else EXIT_ERROR)


def _faults_help() -> str:
    from runner.lab.faults import MEANINGS
    kinds = "\n".join(f"  {k:<14} {MEANINGS.get(k, '')}" for k in FAULT_KINDS)
    return ("Set seeded fault rates, KIND=RATE with 0 <= RATE <= 1, for the whole lab or one host "
            "(--host); with no rate, print the rates.\n\n"
            "Example: runner lab faults drop=0.05 lcs_busy=0.1 --host pc0003\n\n"
            f"\b\nFault kinds:\n{kinds}")


@lab.command("faults", help=_faults_help(), short_help="Set or print the lab's seeded fault rates.")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Lab directory.")
@click.option("--host", "host", default=None, help="Set the rate for one host instead of globally.")
@click.option("--seed", type=int, default=None, help="Seed of the fault decisions.")
@click.argument("rates", nargs=-1)
def faults_cmd(directory: str, host: str | None, seed: int | None, rates: tuple[str, ...]) -> None:
    """Set fault rates (the help text is _faults_help(): it lists the kinds)."""
    path = Path(directory) / "lab.json"
    if not path.is_file():
        _fail(InputError(f"no lab at {directory}"))
    cfg = json.loads(path.read_text(encoding="utf-8"))
    faults = cfg.setdefault("faults", {"seed": 0, "global": {}, "hosts": {}})
    target = faults.setdefault("global", {}) if host is None else faults.setdefault("hosts", {}).setdefault(host, {})
    for r in rates:
        k, eq, v = r.partition("=")
        try:
            rate = float(v)
        except ValueError:
            rate = -1.0
        if not eq or k not in FAULT_KINDS or not 0.0 <= rate <= 1.0:
            click.echo(f"bad fault rate {r!r}: use KIND=RATE with KIND in {', '.join(FAULT_KINDS)}, 0 <= RATE <= 1",
                       err=True)
            sys.exit(5)
        target[k] = rate
    if seed is not None:
        faults["seed"] = seed
    if rates or seed is not None:
        tmp = path.with_name(".lab.json.tmp")
        tmp.write_text(json.dumps(cfg, indent=1, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
    # every kind it accepts, those never set at 0 (the file keeps only what was set)
    shown = {**faults, "global": {**dict.fromkeys(FAULT_KINDS, 0.0), **faults.get("global", {})}}
    click.echo(json.dumps(shown, indent=1))


@lab.command("export-ldif")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Lab directory.")
@click.option("-o", "--output-dir", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where to write users.ldf and computers.ldf.")
def export_ldif_cmd(directory: str, out_dir: str) -> None:
    """Write users.ldf and computers.ldf as ldifde exports them from the lab's domain."""
    from runner.lab.ldif_export import export_ldif

    if not (Path(directory) / "lab.json").is_file():
        _fail(InputError(f"no lab at {directory}"))
    users, computers = export_ldif(directory, out_dir)
    click.echo(f"wrote {users} and {computers}")


def _add_serve() -> None:
    """`runner lab serve` lives in runner/lab/serve.py (H6): the lab over real OpenSSH."""
    from runner.lab.serve import serve_command

    lab.add_command(serve_command)


_add_serve()
