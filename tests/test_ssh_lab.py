"""A generated lab served over real OpenSSH: the lab shell and its files reached through SSH."""
from __future__ import annotations

import json
import os

import pytest

from runner.connections.ssh import SSHConnection
from runner.errors import ConnectionFault
from runner.lab.generator import generate

from ssh_helpers import serve, ssh_host

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def served_lab(tmp_path_factory):
    """A small generated lab behind sshd with the real lab shell as ForceCommand."""
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = tmp_path_factory.mktemp("sshlab") / "lab"
    generate(lab, clients=3, users_per_client=1, contacts=3, seed=5)
    server = serve(lab, fake_shell=False)
    yield server
    server.stop()


def _conn(server, name):
    return SSHConnection(ssh_host(server, name), None, None)


def test_served_inventory_keeps_users_and_groups_and_uses_ssh(served_lab):
    import yaml
    doc = yaml.safe_load(served_lab.inventory_out.read_text())
    original = yaml.safe_load((served_lab.lab_dir / "inventory.yml").read_text())
    assert doc["users"] == original["users"]
    assert "lab_dir" not in doc["all"]["vars"]
    clients = doc["all"]["children"]["clients"]["hosts"]
    first = next(iter(clients))
    assert clients[first]["connection"] == "ssh"
    assert clients[first]["address"] == served_lab.addresses[first]
    assert clients[first]["port"] == served_lab.port


def test_lab_shell_runs_windows_commands_for_the_addressed_host(served_lab):
    client = next(h for h, a in served_lab.addresses.items() if a.startswith("127.10."))
    conn = _conn(served_lab, client)
    try:
        res = conn.run("echo 50%% off & echo second")
        assert res.rc == 0, res.stderr
        assert res.stdout.splitlines() == ["50%% off ", "second"]
        missing = conn.run("nosuchprogram /x")     # exit codes above 255 survive the trip
        assert missing.rc == 9009 and "not recognized" in missing.stderr
        assert "runner-exit-code" not in missing.stderr
    finally:
        conn.close()


def test_files_put_over_sftp_are_seen_by_the_lab_shell(served_lab):
    client = next(h for h, a in served_lab.addresses.items() if a.startswith("127.10."))
    conn = _conn(served_lab, client)
    try:
        conn.put("contacts: Zoë & Ümit\r\n".encode("utf-8"), r"C:\sshtest.txt")
        typed = conn.run(r"type C:\sshtest.txt")
        assert typed.rc == 0 and "Zoë & Ümit" in typed.stdout
        assert conn.get(r"C:\sshtest.txt") == "contacts: Zoë & Ümit\r\n".encode("utf-8")
    finally:
        conn.close()


def test_take_reads_a_file_and_removes_it_on_the_same_sftp_session(served_lab):
    client = next(h for h, a in served_lab.addresses.items() if a.startswith("127.10."))
    conn = _conn(served_lab, client)
    try:
        conn.put(b"\xff\xfeR\x00", r"C:\WINDOWS\Temp\runner-take.reg")
        assert conn.take(r"C:\WINDOWS\Temp\runner-take.reg") == b"\xff\xfeR\x00"
        gone = conn.run(r"type C:\WINDOWS\Temp\runner-take.reg")
        assert gone.rc == 1 and "cannot find" in gone.stderr
    finally:
        conn.close()


def test_lab_drop_fault_surfaces_as_a_dropped_ssh_connection(served_lab):
    client = next(h for h, a in served_lab.addresses.items() if a.startswith("127.10."))
    meta_path = served_lab.lab_dir / "lab.json"
    meta = json.loads(meta_path.read_text())
    meta["faults"]["hosts"][client] = {"drop": 1.0}
    meta_path.write_text(json.dumps(meta))
    conn = _conn(served_lab, client)
    try:
        with pytest.raises(ConnectionFault):
            conn.run("echo hi")
    finally:
        conn.close()
        meta["faults"]["hosts"].pop(client)
        meta_path.write_text(json.dumps(meta))


def test_served_inventory_loads_and_connects_through_the_registry(served_lab):
    from runner.connections.registry import ConnectionOptions, factory_for
    from runner.loader import load_inventory

    inv = load_inventory(str(served_lab.inventory_out))
    host = inv.hosts["lcs01"] if "lcs01" in inv.hosts else next(iter(inv.hosts.values()))
    assert host.connection == "ssh"
    conn = factory_for("ssh")(host, inv, ConnectionOptions())
    try:
        assert conn.run("echo served").stdout.strip() == "served"
    finally:
        conn.close()
