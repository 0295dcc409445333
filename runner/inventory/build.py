"""Put a directory's users and computers into an inventory document, merged over a base, and write it.

The directory is the authority for who a user is (alias, IM address,
display name, SID, objectGUID, mail); the base inventory (``--base``) for the
plan: its groups, servers and variables are kept as they are, and a base
user of the same alias keeps their ``wave``, ``sip_uri``, ``home_server``,
``clients`` and ``vars`` (the directory's ``email`` fills in where the base
has none). Workstations of the directory not in the base join the group
``clients``; Server editions are left to the base (they are the Exchange
and LCS servers, domain controllers and file servers).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from runner.artifacts import atomic_write, check_output_path
from runner.errors import InputError, InputErrors, RunnerError
from runner.inventory.directory import Directory
from runner.model import CONTROL_NODE_PATH_VARS

SCHEMA_FILE = Path(__file__).resolve().parent.parent.parent / "schemas" / "inventory.schema.json"
_KEPT_USER_FIELDS = ("wave", "sip_uri", "home_server", "clients")


def read_base(path: str) -> dict[str, Any]:
    """The base inventory's document, after the loader accepted it (InputError otherwise)."""
    from runner.loader import load_inventory

    load_inventory(path)  # every check of `runner validate`, with its file:line messages
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or "all" not in doc:
        raise InputError("a base inventory must be a static inventory ('all:' and 'users:'), not the lab "
                         "plugin; use the lab's own inventory.yml", path)
    return doc


def _hosts_of(group: dict[str, Any] | None, out: set[str]) -> None:
    if not isinstance(group, dict):
        return
    out.update(str(h) for h in (group.get("hosts") or {}))
    for child in (group.get("children") or {}).values():
        _hosts_of(child, out)


def rebase_lab_dirs(node: Any, src: Path, dst: Path) -> None:
    """Relative control-node paths (``lab_dir``, ``ssh_key_file``...: runner.model.
    CONTROL_NODE_PATH_VARS) point from the base's folder; make them point from OUT's."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in CONTROL_NODE_PATH_VARS and isinstance(v, str) and v and "{{" not in v \
                    and not os.path.isabs(os.path.expanduser(v)):
                node[k] = os.path.relpath((src / v).resolve(), dst.resolve())
            else:
                rebase_lab_dirs(v, src, dst)


def check_values(found: Directory) -> None:
    """Every user and client the directory gave, checked against the inventory schema's
    rules for users and hosts (runner.loader.schema_errors, the checks of `runner validate`)
    and reported at the LDIF line of the value (``msExchIMAddress: ahall`` at its line),
    before any inventory is made. InputErrors (exit 4) when any is wrong."""
    from runner.loader import _inventory_context, _sorted, _validator, load_schema, schema_errors

    defs = load_schema("inventory")["$defs"]
    schema = {"$defs": defs, "type": "object", "properties": {
        "users": {"type": "object", "additionalProperties": {"$ref": "#/$defs/user"},
                  "propertyNames": {"$ref": "#/$defs/alias"}},
        "hosts": {"type": "object", "additionalProperties": {"$ref": "#/$defs/host"},
                  "propertyNames": {"$ref": "#/$defs/host_name"}}}}
    errors = schema_errors(found, {"users": found.users, "hosts": found.hosts},  # type: ignore[arg-type]
                           _validator(schema), _inventory_context)
    if errors:
        raise InputErrors(_sorted(errors))


def inventory_document(found: Directory, base: dict[str, Any] | None = None, *, base_path: str | None = None,
                       out_path: str | None = None, wave: str | None = "wave1") -> tuple[dict[str, Any], list[str]]:
    """The merged inventory document and the notes for the user (what was left out, kept, added).

    A user the base gives no ``wave`` moves in ``wave`` (None: no wave), so the gradual
    playbooks run on the result as it is; the waves are then the administrator's to edit.
    """
    notes = list(found.warnings)
    doc: dict[str, Any] = copy.deepcopy(base) if base else {"all": {"children": {}}}
    root = doc.setdefault("all", {}) or {}
    doc["all"] = root
    if base_path and out_path:
        rebase_lab_dirs(root, Path(base_path).resolve().parent, Path(out_path).resolve().parent)
    known: set[str] = set()
    _hosts_of(root, known)
    known_lower = {h.lower() for h in known}
    children = root.setdefault("children", {}) or {}
    root["children"] = children
    clients = children.get("clients")
    if not isinstance(clients, dict):
        clients = children["clients"] = {}
    hosts = clients.get("hosts")
    if not isinstance(hosts, dict):
        hosts = clients["hosts"] = {}
    added = 0
    for name, entry in found.hosts.items():
        if name.lower() in known_lower:
            continue
        if name in found.servers:
            notes.append(f"computer {name} runs {entry.get('vars', {}).get('ad_operating_system', 'a Server OS')}: "
                         f"not made a client (add it to the base's server groups if the migration needs it)")
            continue
        hosts[name] = entry
        added += 1
    base_users: dict[str, Any] = (base or {}).get("users") or {}
    by_lower = {str(a).lower(): a for a in base_users}
    users: dict[str, Any] = {}
    for alias, entry in found.users.items():
        old = base_users.get(by_lower.get(alias.lower(), ""), None) or {}
        merged = dict(entry)
        for k in _KEPT_USER_FIELDS:
            if k in old:
                merged[k] = old[k]
        if wave is not None and "wave" not in merged:
            merged["wave"] = wave
        if old.get("vars") or entry.get("vars"):
            merged["vars"] = {**(entry.get("vars") or {}), **(old.get("vars") or {})}
        users[alias] = merged
    gone = sorted(set(by_lower) - {a.lower() for a in found.users})
    if gone:
        shown = ", ".join(by_lower[a] for a in gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
        notes.append(f"{len(gone)} user(s) of the base are not in the directory export and were left out: {shown}")
    doc["users"] = users
    all_hosts = set(known) | set(hosts)
    for alias, u in users.items():
        for c in u.get("clients") or []:
            if c not in all_hosts:
                notes.append(f"user {alias}: client {c} (from the base) is not a host of the new inventory")
    notes.append(f"{len(users)} user(s), {added} client(s) added from the directory")
    return doc, notes


def header(source: str, out_path: str) -> str:
    """The comment block at the top of a generated inventory (with the schema line for editors)."""
    if source == "discover":
        lines = ["# Made by `runner inventory discover`: each user's clients are the machines where a profile",
                 "# of theirs holds an Exchange IM contact list (read off the clients, nothing changed).",
                 "# GENERATED: comments are not kept when it is made again; keep yours in the base inventory."]
    else:
        lines = [f"# Made by `runner inventory {source}`: users from Active Directory (SIDs and objectGUIDs",
                 "# decoded from the directory, never typed). `runner inventory discover` fills in each user's",
                 "# clients. GENERATED: comments are not kept when it is made again; edit servers, variables",
                 "# and waves in the base inventory (never written by the runner), then run it again."]
    if SCHEMA_FILE.is_file():
        rel = Path(os.path.relpath(SCHEMA_FILE, Path(out_path).resolve().parent)).as_posix()
        if rel.startswith("../../../"):  # OUT is outside the checkout: an absolute path reads better
            rel = SCHEMA_FILE.as_posix()
        lines.insert(0, f"# yaml-language-server: $schema={rel}")
    return "\n".join(lines) + "\n"


def write_inventory(doc: dict[str, Any], out_path: str, source: str) -> None:
    """Write ``doc`` to ``out_path`` atomically (readers see the old file or the whole new one)."""
    from runner.lab.generator import dump_yaml

    from runner.loader import load_inventory

    out = check_output_path(out_path)
    data = (header(source, out_path) + dump_yaml(doc)).encode("utf-8")
    check = out.with_name(f".{out.name}.check.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        check.write_bytes(data)
        try:
            load_inventory(check)  # what `runner validate` checks, before OUT is touched
        except InputError as e:
            # the checked copy is deleted: name what is wrong, never a line of a file that is not there
            problems = e.errors if isinstance(e, InputErrors) else [e]
            raise InputError(f"the inventory made for {out_path} would not validate, so nothing was written: "
                             + "; ".join(p.message for p in problems)) from None
        finally:
            check.unlink(missing_ok=True)
        atomic_write(out, data)
    except OSError as e:
        raise RunnerError(f"cannot write {out_path}: {e.strerror}") from None
