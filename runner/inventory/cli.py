"""``runner inventory ...``: make an inventory from Active Directory and fill in each user's clients.

``from-ldif`` reads ldifde exports, ``from-ldap`` queries a domain controller,
``discover`` reads the clients' profiles (read-only). Errors are RunnerError
types; runner.cli maps them to exit codes.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from runner.artifacts import check_output_path
from runner.errors import EXIT_OK, EXIT_UNREACHABLE, OptionsError
from runner.inventory import build, directory
from runner.inventory.directory import Directory


@click.group("inventory")
def inventory() -> None:
    """Make an inventory from Active Directory; discover which machines each user uses."""


_WAVE = click.option("--wave", default="wave1", show_default=True,
                     help="The wave of users the base gives none (the gradual playbooks need one); edit later.")


def _finish(found: Directory, base: str | None, out: str, source: str, wave: str) -> int:
    build.check_values(found)  # a bad directory value at its LDIF line, not at a line of OUT
    base_doc = build.read_base(base) if base else None
    doc, notes = build.inventory_document(found, base_doc, base_path=base, out_path=out, wave=wave)
    build.write_inventory(doc, out, source)
    for n in notes[:-1]:
        click.echo(f"note: {n}", err=True)
    click.echo(f"{out}: {notes[-1]}")
    return EXIT_OK


def _not_the_input(source: str | None, out: str, option: str = "-i") -> None:
    """Refuse ``-o`` naming the input inventory: OUT is generated (YAML written from data), so the
    input's comments and layout would be lost; the input stays the administrator's file."""
    if not source:
        return
    same = Path(source).resolve() == Path(out).resolve()
    if not same and Path(source).exists() and Path(out).exists():
        same = os.path.samefile(source, out)
    if same:
        raise OptionsError(f"-o {out} is the {option} inventory: the output is generated and keeps no comments "
                           f"of {source}, so it is never written over it; write a new file (e.g. -o "
                           f"{Path(out).with_name(Path(out).stem + '-new.yml')}) and keep {source} as it is")


@inventory.command("from-ldif")
@click.argument("users_file", metavar="USERS.LDF", type=click.Path(dir_okay=False))
@click.option("--computers", "computers_file", metavar="COMPUTERS.LDF", type=click.Path(dir_okay=False),
              help="ldifde export of the computer objects (dNSHostName, operatingSystem...): workstations "
                   "become the group 'clients'.")
@click.option("--base", metavar="INVENTORY", type=click.Path(dir_okay=False),
              help="Keep this inventory's groups, servers and variables (and its users' waves, sip_uri...).")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The inventory to write (replaced atomically).")
@_WAVE
def from_ldif(users_file: str, computers_file: str | None, base: str | None, out: str, wave: str) -> int:
    """Write an inventory from ldifde exports (docs/active-directory.md gives the commands)."""
    from runner.inventory import ldif

    check_output_path(out)
    _not_the_input(base, out, "--base")
    found = Directory()
    doc = ldif.read(users_file)
    directory.read_users(doc.records, users_file, found)
    if doc.skipped:
        found.warnings.append(f"{users_file}: {doc.skipped} change record(s) (modify/delete) are not entries; skipped")
    if computers_file:
        cdoc = ldif.read(computers_file)
        directory.read_computers(cdoc.records, computers_file, found)
    return _finish(found, base, out, "from-ldif", wave)


@inventory.command("from-ldap")
@click.argument("url", metavar="ldap://HOST[:PORT]")
@click.option("--base", "search_base", required=True, metavar="DN",
              help="Search base, e.g. DC=contoso,DC=com.")
@click.option("--computers-base", metavar="DN", help="Search base of the computers (default: --base).")
@click.option("--no-computers", is_flag=True, help="Do not read computer objects.")
@click.option("--bind-user", metavar="USER", help="Bind as this user (CONTOSO\\migrator or a DN); default anonymous.")
@click.option("--password-env", metavar="NAME", help="Name of the environment variable holding the bind password.")
@click.option("--password-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="File whose first line is the bind password.")
@click.option("--inventory-base", "base", metavar="INVENTORY", type=click.Path(dir_okay=False),
              help="Keep this inventory's groups, servers and variables (as from-ldif --base).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to connect and per answer.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The inventory to write (replaced atomically).")
@_WAVE
def from_ldap(url: str, search_base: str, computers_base: str | None, no_computers: bool, bind_user: str | None,
              password_env: str | None, password_file: str | None, base: str | None, timeout: float,
              out: str, wave: str) -> int:
    """Write an inventory from a live directory query (paged; read-only)."""
    from runner.inventory import ldap

    check_output_path(out)
    _not_the_input(base, out, "--inventory-base")
    password = ldap.read_password(password_env, password_file)
    if bind_user and password is None:
        raise OptionsError("--bind-user needs --password-env NAME or --password-file FILE")
    target = ldap.LdapTarget(url, search_base, bind_user, password, timeout)
    found = Directory()
    directory.read_users(ldap.search(target, directory.USER_FILTER, directory.USER_ATTRIBUTES), None, found)
    if not no_computers:
        ctarget = ldap.LdapTarget(url, computers_base or search_base, bind_user, password, timeout)
        directory.read_computers(ldap.search(ctarget, directory.COMPUTER_FILTER, directory.COMPUTER_ATTRIBUTES),
                                 None, found)
    return _finish(found, base, out, "from-ldap", wave)


@inventory.command("discover")
@click.option("-i", "--inventory", "inventory_path", required=True, type=click.Path(dir_okay=False),
              help="The inventory whose clients are read.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The inventory to write, with each user's clients filled in (not -i's file: OUT is generated).")
@click.option("--forks", "-f", type=click.IntRange(min=1), default=8, show_default=True,
              help="How many clients are read at once.")
@click.option("--accept-new-host-keys", is_flag=True,
              help="Trust SSH host keys seen for the first time (and add them to known_hosts), as apply's option.")
def discover_cmd(inventory_path: str, out: str, forks: int, accept_new_host_keys: bool) -> int:
    """Read every client's profiles (read-only) and write which users hold a contact list where.

    Exit 0 when every client was read; 3 when some could not be (OUT is written with what
    was found, and the unread clients' users keep the clients the inventory gave them);
    3 with nothing written when no client could be read at all.
    """
    import yaml

    from runner.connections.registry import ConnectionOptions
    from runner.inventory import discover
    from runner.loader import load_inventory

    check_output_path(out)
    _not_the_input(inventory_path, out)
    inv = load_inventory(inventory_path)
    with open(inventory_path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or "all" not in doc:
        raise OptionsError(f"{inventory_path} is the lab plugin; discover the lab's own inventory.yml instead")
    found = discover.discover(inv, forks=forks,
                              options=ConnectionOptions(accept_new_host_keys=accept_new_host_keys))
    lines = discover.report_lines(found)
    unread = [r.host for r in found.hosts.values() if r.error is not None]
    if found.hosts and len(unread) == len(found.hosts):
        for line in lines[:-1]:
            click.echo(f"note: {line}", err=True)
        raise discover.ClientsNotRead(f"no client could be read ({lines[-1]}); {out} was not written. "
                                      "Check the connection (lab_dir, sshd running, ssh_* variables) and host keys "
                                      "(known_hosts, or --accept-new-host-keys): docs/active-directory.md")
    new = discover.with_clients(doc, found)
    build.rebase_lab_dirs(new.get("all"), Path(inventory_path).resolve().parent, Path(out).resolve().parent)
    build.write_inventory(new, out, "discover")
    for line in lines[:-1]:
        click.echo(f"note: {line}", err=True)
    click.echo(f"{out}: {lines[-1]}")
    if unread:
        click.echo(f"ERROR: {len(unread)} client(s) not read: {', '.join(unread)}; {out} was written with the "
                   "others, and these clients' users keep the clients the inventory gave them. Run discover "
                   f"again (-i {out}) when they answer", err=True)
        return EXIT_UNREACHABLE
    return EXIT_OK
