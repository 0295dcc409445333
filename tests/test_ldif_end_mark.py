"""An LDIF file the runner puts on a server ends with a mark that is checked before ldifde runs:
a file cut short in transfer (the lab's ``put_truncated``) is never imported in part, and the
import is a transient fault (put again) instead of a permanent "succeeded but still has"."""
from __future__ import annotations


import pytest

from runner.connections.lab import LabConnection
from runner.errors import TransientFault
from runner.lab.generator import generate
from runner.lcs.chunks import import_and_read
from runner.lcs.exchange import Directory, im_user_query, unfinished_import
from runner.loader import load_inventory
from runner.windows import ldif

from lab_fixtures import im_clear_changes, set_put_truncated


@pytest.fixture
def exim(tmp_path):
    inv = load_inventory(generate(tmp_path / "lab", clients=3, users_per_client=2, contacts=2, seed=6))
    name = next(h for h in inv.hosts if h.startswith("exim"))
    return tmp_path, inv, name


def _faults(tmp_path, host, rate):
    set_put_truncated(tmp_path / "lab", host, rate)


def _left(directory, users):
    return {u.alias: bool(directory.search(im_user_query(u.im_address).ldap_filter, ["msExchIMAddress"]))
            for u in users}


def test_the_end_mark_is_the_files_last_line_and_ldif_skips_it():
    body = ldif.render([ldif.Change("CN=a,DC=x", "modify", [("delete", "msExchIMAddress", [])])], end="0123abcd")
    assert body.decode().splitlines()[-1] == ldif.END_MARK + "0123abcd"
    with pytest.raises(ValueError):
        ldif.render([], end='x" & calc')


def test_a_cut_short_file_is_never_imported_and_the_import_is_retried(exim):
    tmp_path, inv, name = exim
    users = list(inv.users.values())[:3]
    conn = LabConnection(inv.hosts[name], inv, None)
    d = Directory(conn, name, inv.hosts[name].vars, owner=users[0].alias)
    changes = im_clear_changes(d, users)
    _faults(tmp_path, name, 1.0)
    conn = LabConnection(inv.hosts[name], inv, None)
    d = Directory(conn, name, inv.hosts[name].vars, owner=users[0].alias)
    with pytest.raises(TransientFault, match="cut short"):
        d.apply(changes[:1])
    sec, _found = import_and_read(conn, name, inv.hosts[name].vars, [u.alias for u in users], changes, [])
    fault = unfinished_import(sec, 1, changes[0].dn, name, "still has msExchIMAddress")
    assert isinstance(fault, TransientFault) and "cut short" in str(fault)
    assert _left(d, users) == {u.alias: True for u in users}, "nothing of a cut file was imported"
    _faults(tmp_path, name, 0.0)
    conn = LabConnection(inv.hosts[name], inv, None)
    d = Directory(conn, name, inv.hosts[name].vars, owner=users[0].alias)
    sec, _found = import_and_read(conn, name, inv.hosts[name].vars, [u.alias for u in users], changes, [])
    assert sec is not None and sec.ok, sec
    assert _left(d, users) == {u.alias: False for u in users}


def test_a_chunk_script_cut_short_is_never_run(tmp_path):
    """A chunk's script whose end did not arrive runs none of its commands (no section comes
    back: the chunk's users are retried), rather than the commands before the cut, the last
    of them perhaps cut in the middle; the same script whole runs every command."""
    from runner.lcs.chunks import ChunkScript
    from runner.windows.cmdline import Command
    inv = load_inventory(generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=6))
    lcs = next(h for h in inv.hosts if h.startswith("lcs"))

    def script_of(conn):
        s = ChunkScript(conn, lcs, inv.hosts[lcs].vars, ["chunk"], limit=2047)
        for i in range(40):   # well over one line: a script put and run
            s.add(Command("echo", f"command {i} " + "x" * 60))
        return s

    _faults(tmp_path, lcs, 1.0)
    s = script_of(LabConnection(inv.hosts[lcs], inv, None))
    with pytest.raises(TransientFault, match="cut short"):
        s.run()
    assert all(s.section(i) is None for i in range(40)), "no command of a cut script ran"
    _faults(tmp_path, lcs, 0.0)
    s = script_of(LabConnection(inv.hosts[lcs], inv, None))
    s.run()
    assert all(s.section(i) is not None and s.section(i).ok and f"command {i} " in s.section(i).stdout
               for i in range(40))
