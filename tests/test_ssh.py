"""The ssh connection against Debian's real OpenSSH sshd serving a lab on loopback."""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.connections.ssh import SSHConnection, decode_output, windows_to_sftp_path
from runner.errors import AuthenticationFault, ConnectionFault, HostKeyFault, PermanentFault, StepFault
from runner.lab import serve as serve_mod
from runner.lab.serve import LabServer, ServeError, map_sftp_path, unmap_sftp_path
from runner.model import Host

from ssh_helpers import make_lab, serve, ssh_host

HAVE_SSHD = os.access("/usr/sbin/sshd", os.X_OK)
needs_sshd = pytest.mark.skipif(not HAVE_SSHD, reason="OpenSSH sshd not installed (apt-get install openssh-server)")

PASSWORD = "S3cret-pa55word!"
PASSPHRASE = "k3y-Passphrase#42"


@dataclass
class Opts:
    accept_new_host_keys: bool = False
    connect_timeout: float = 5
    command_timeout: float = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """20 hosts (more than one sshd's 16 listening sockets) behind the test ForceCommand."""
    if not HAVE_SSHD:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = make_lab(tmp_path_factory.mktemp("ssh"), 20)
    server = serve(lab, fake_shell=True)
    yield server
    server.stop()


def connect(server: LabServer, name: str = "pc0001", options: Opts | None = None, **vars) -> SSHConnection:
    return SSHConnection(ssh_host(server, name, **vars), None, options or Opts())


# --- unit behaviour (no sshd) ---------------------------------------------------
def test_output_decoding_detects_utf16_with_and_without_bom():
    assert decode_output("Name=alice\r\n".encode("utf-16-le")) == "Name=alice\r\n"
    assert decode_output(b"\xff\xfe" + "Zoë".encode("utf-16-le")) == "Zoë"
    assert decode_output("Zoë".encode("utf-8")) == "Zoë"
    assert decode_output("Zoë".encode("cp437")) == "Zoë"
    assert decode_output("Zoë".encode("cp850"), "cp850") == "Zoë"


def test_windows_paths_map_to_openssh_for_windows_sftp_form():
    assert windows_to_sftp_path(r"C:\Temp\a b.reg") == "/C:/Temp/a b.reg"
    assert windows_to_sftp_path("d:/x") == "/D:/x"
    with pytest.raises(PermanentFault):
        windows_to_sftp_path(r"\\deploy\packages\x.msi")


def test_served_sftp_paths_match_existing_names_case_insensitively(tmp_path):
    (tmp_path / "C" / "WINDOWS" / "Temp").mkdir(parents=True)
    assert map_sftp_path("/C:/Windows/TEMP/new.reg", str(tmp_path)) == f"{tmp_path}/C/WINDOWS/Temp/new.reg"


def test_served_sftp_paths_stay_inside_the_host_fs():
    root = "/lab/hosts/pc1/fs"
    assert map_sftp_path("/C:/Temp/x.reg", root) == "/lab/hosts/pc1/fs/C/Temp/x.reg"
    assert map_sftp_path("/C:/../../../etc/passwd", root) == "/lab/hosts/pc1/fs/C/etc/passwd"
    assert map_sftp_path("/etc/passwd", root) == "/lab/hosts/pc1/fs/C/etc/passwd"
    assert map_sftp_path(".", root) == "/lab/hosts/pc1/fs/C"
    assert unmap_sftp_path("/lab/hosts/pc1/fs/D/x", root) == "/D:/x"


def test_serve_refuses_without_sshd_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_mod, "SSHD", str(tmp_path / "no-sshd"))
    lab = make_lab(tmp_path, 1)
    with pytest.raises(ServeError, match="apt-get install openssh-server"):
        LabServer(lab).start()


# --- against sshd ---------------------------------------------------------------
pytestmark_ssh = [pytest.mark.ssh, needs_sshd]


@pytest.mark.ssh
def test_commands_reuse_one_transport_and_return_exit_codes(served):
    conn = connect(served)
    try:
        first = conn.run("echo one")
        transport = conn._transport
        failed = conn.run("exit 5")
        assert first.rc == 0 and first.stdout == f"{served.addresses['pc0001']} echo one\n"
        assert failed.rc == 5 and failed.stderr == "failing\n"
        assert conn._transport is transport
    finally:
        conn.close()
    assert conn._transport is None


@pytest.mark.ssh
def test_each_address_reaches_its_own_host_beyond_sixteen_listeners(served):
    for name in ("pc0001", "pc0017", "pc0020"):
        conn = connect(served, name)
        try:
            assert conn.run("whoami").stdout.split()[0] == served.addresses[name]
        finally:
            conn.close()


@pytest.mark.ssh
def test_utf16_output_of_wmic_style_tools_is_decoded(served):
    conn = connect(served)
    try:
        assert conn.run("utf16 Name=Zoë").stdout == "Name=Zoë"
    finally:
        conn.close()


@pytest.mark.ssh
def test_put_and_get_over_sftp_land_in_the_hosts_simulated_fs(served):
    conn = connect(served, "pc0003")
    try:
        conn.put(b"Windows Registry Editor Version 5.00\r\n", r"C:\Temp\alice.reg")
        on_disk = served.lab_dir / "hosts" / "pc0003" / "fs" / "C" / "Temp" / "alice.reg"
        assert on_disk.read_bytes() == b"Windows Registry Editor Version 5.00\r\n"
        assert conn.get(r"C:\Temp\alice.reg") == on_disk.read_bytes()
        with pytest.raises(PermanentFault):
            conn.get(r"C:\Temp\missing.txt")
        with pytest.raises(PermanentFault):   # ../ cannot climb out of the host's fs
            conn.get(r"C:\..\..\..\..\lab.json")
    finally:
        conn.close()


@pytest.mark.ssh
def test_host_key_mismatch_is_refused_and_never_retried(served, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pub = other.with_suffix(".pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[{served.addresses['pc0001']}]:{served.port} {pub[0]} {pub[1]}\n")
    conn = connect(served, options=Opts(accept_new_host_keys=True), ssh_known_hosts=str(known))
    with pytest.raises(HostKeyFault) as info:
        conn.run("echo hi")
    assert not info.value.transient and info.value.unreachable
    assert "MISMATCH" in info.value.message and "ssh-keygen -R" in info.value.message
    assert known.read_text().count("\n") == 1   # accept-new never replaces a key


@pytest.mark.ssh
def test_unknown_host_key_refused_unless_accept_new_then_remembered(served, tmp_path):
    known = tmp_path / "kh" / "known_hosts"
    with pytest.raises(HostKeyFault) as info:
        connect(served, ssh_known_hosts=str(known)).run("echo hi")
    assert "--accept-new-host-keys" in info.value.message and "ssh-keyscan" in info.value.message
    conn = connect(served, options=Opts(accept_new_host_keys=True), ssh_known_hosts=str(known))
    assert conn.run("echo hi").rc == 0
    conn.close()
    assert f"[{served.addresses['pc0001']}]:{served.port} ssh-ed25519 " in known.read_text()
    strict = connect(served, ssh_known_hosts=str(known))      # now known: no option needed
    assert strict.run("echo again").rc == 0
    strict.close()


@pytest.mark.ssh
def test_hashed_known_hosts_entries_are_understood(served, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(served.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "|1|" in known.read_text()
    conn = connect(served, ssh_known_hosts=str(known))
    try:
        assert conn.run("echo hashed").rc == 0
    finally:
        conn.close()


@pytest.mark.ssh
def test_wrong_key_is_a_permanent_authentication_fault(served, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(AuthenticationFault) as info:
        connect(served, ssh_key_file=str(stranger)).run("echo hi")
    assert not info.value.transient and info.value.unreachable


@pytest.mark.ssh
def test_encrypted_key_uses_passphrase_from_env_and_never_shows_it(served, tmp_path, monkeypatch):
    key = tmp_path / "id_enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-f", str(key)], check=True)
    with open(served.ssh_dir / "authorized_keys", "a") as fh:
        fh.write(key.with_suffix(".pub").read_text())
    texts = []
    monkeypatch.delenv("LAB_KEY_PASS", raising=False)
    with pytest.raises(AuthenticationFault) as unset:
        connect(served, ssh_key_file=str(key), ssh_key_passphrase_env="LAB_KEY_PASS").run("x")
    assert "LAB_KEY_PASS" in unset.value.message
    monkeypatch.setenv("LAB_KEY_PASS", "not-" + PASSPHRASE)
    with pytest.raises(AuthenticationFault) as wrong:
        connect(served, ssh_key_file=str(key), ssh_key_passphrase_env="LAB_KEY_PASS").run("x")
    texts += [str(unset.value), repr(unset.value), str(wrong.value), repr(wrong.value)]
    monkeypatch.setenv("LAB_KEY_PASS", PASSPHRASE)
    conn = connect(served, ssh_key_file=str(key), ssh_key_passphrase_env="LAB_KEY_PASS")
    assert conn.run("echo unlocked").rc == 0
    texts += [repr(conn), str(conn.__dict__)]
    conn.close()
    assert not any(PASSPHRASE in t for t in texts)


@pytest.mark.ssh
def test_password_comes_from_env_or_file_and_never_appears_in_faults(served, tmp_path, monkeypatch):
    # The served lab allows public keys only, so a password login is refused: that
    # exercises the plumbing (env var and file read, offered, refused) with real sshd.
    monkeypatch.setenv("LAB_PASSWORD", PASSWORD)
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    texts = []
    for vars in ({"ssh_password_env": "LAB_PASSWORD"}, {"ssh_password_file": str(pw_file)}):
        conn = connect(served, ssh_key_file=str(tmp_path / "none"), **vars)
        conn.key_file = None
        with pytest.raises(AuthenticationFault) as info:
            conn.run("echo hi")
        assert "password" in info.value.message or "publickey" in info.value.message
        texts += [str(info.value), repr(info.value), repr(conn), str(conn.__dict__), str(info.value.data)]
    assert not any(PASSWORD in t for t in texts)


@pytest.mark.ssh
def test_host_with_nothing_listening_is_a_transient_connection_fault():
    host = Host(name="ghost", connection="ssh", address="127.0.3.250", port=9, vars={"ssh_agent": False})
    with pytest.raises(ConnectionFault) as info:
        SSHConnection(host, None, Opts()).run("echo hi")
    assert info.value.transient and info.value.unreachable


@pytest.mark.ssh
def test_lab_host_marked_down_drops_connections(served):
    import json
    meta_path = served.lab_dir / "lab.json"
    meta = json.loads(meta_path.read_text())
    meta["faults"]["hosts"]["pc0005"] = {"down": 1.0}
    meta_path.write_text(json.dumps(meta))
    try:
        with pytest.raises(ConnectionFault):
            connect(served, "pc0005").run("echo hi")
    finally:
        meta["faults"]["hosts"].pop("pc0005")
        meta_path.write_text(json.dumps(meta))


@pytest.mark.ssh
def test_command_timeout_is_a_connection_fault_and_the_connection_stays_usable(served):
    conn = connect(served)
    try:
        with pytest.raises(ConnectionFault, match="timed out"):
            conn.run("sleep 5", timeout=0.5)
        assert conn.run("echo after").rc == 0
    finally:
        conn.close()


@pytest.mark.ssh
def test_connection_dropped_mid_command_is_transient_and_reconnects(served):
    conn = connect(served, "pc0002")
    try:
        assert conn.run("echo before").rc == 0
        with pytest.raises(ConnectionFault) as info:
            conn.run("drop")
        assert info.value.transient
        assert conn.run("echo after").stdout.endswith("echo after\n")   # a fresh transport
    finally:
        conn.close()


@pytest.mark.ssh
def test_proxy_jump_through_another_lab_host(served):
    jump = ssh_host(served, "pc0001")
    target = ssh_host(served, "pc0019", ssh_proxy_jump="pc0001")
    from runner.model import Inventory
    inv = Inventory(path="", hosts={"pc0001": jump, "pc0019": target}, groups={}, users={})
    conn = SSHConnection(target, inv, Opts())
    try:
        assert conn.run("echo via").stdout == f"{served.addresses['pc0019']} echo via\n"
        assert conn._jump is not None and conn._jump._transport is not None
    finally:
        conn.close()
    assert conn._jump is None


@pytest.mark.ssh
def test_stop_ends_sessions_and_listeners(tmp_path):
    if not HAVE_SSHD:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    server = serve(make_lab(tmp_path, 2), fake_shell=True)
    conn = connect(server)
    assert conn.run("echo up").rc == 0
    assert server.session_pids("pc0001")
    server.stop()
    with pytest.raises(ConnectionFault):
        conn.run("echo down")
    conn.close()
    with pytest.raises(ConnectionFault):
        connect(server).run("echo down")


@pytest.mark.ssh
def test_serve_command_serves_until_sigterm_then_stops_cleanly(tmp_path):
    if not HAVE_SSHD:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    import random
    import signal
    import sys
    lab = make_lab(tmp_path, 3)
    port = random.randint(20000, 60000)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from runner.lab.serve import serve_command; serve_command()",
         "--dir", str(lab), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert any("serving 3 hosts" in x for x in lines), lines
        inventory = lab / "ssh" / "inventory.yml"
        assert "connection: ssh" in inventory.read_text()
        host = Host(name="pc0001", connection="ssh", address="127.0.1.1", port=port,
                    vars={"ssh_key_file": str(lab / "ssh" / "id_ed25519"), "ssh_agent": False,
                          "ssh_known_hosts": str(lab / "ssh" / "known_hosts")})
        conn = SSHConnection(host, None, Opts())
        try:
            assert conn.run("echo hi").stdout.strip() == "hi"    # H3's lab shell, over real sshd
        finally:
            conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in out


def test_serve_command_refuses_without_sshd(tmp_path, monkeypatch):
    from click.testing import CliRunner
    monkeypatch.setattr(serve_mod, "SSHD", str(tmp_path / "no-sshd"))
    result = CliRunner().invoke(serve_mod.serve_command, ["--dir", str(make_lab(tmp_path, 1))])
    assert result.exit_code == 1
    assert "apt-get install openssh-server" in result.output
