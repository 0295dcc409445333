"""Password login against the real sshd: a local account whose password sshd checks in /etc/shadow."""
from __future__ import annotations

import dataclasses
import os

import pytest

from runner.connections.ssh import SSHConnection
from runner.errors import AuthenticationFault
from runner.lab.generator import generate

from ssh_helpers import password_account, serve, ssh_host

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def account(tmp_path_factory):
    with password_account(tmp_path_factory.mktemp("pwhome")) as acct:
        yield acct


@pytest.fixture(scope="module")
def served_lab(tmp_path_factory, account):
    """A small generated lab whose sshd also lets ``account`` log in with its password."""
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = tmp_path_factory.mktemp("pwlab") / "lab"
    generate(lab, clients=2, users_per_client=1, contacts=3, seed=7)
    server = serve(lab, fake_shell=False, allow_password_users=[account[0]])
    yield server
    server.stop()


def _password_conn(server, account, **vars) -> SSHConnection:
    name = next(h for h, a in server.addresses.items() if a.startswith("127.10."))
    host = dataclasses.replace(ssh_host(server, name, ssh_key_file=None, **vars), user=account[0])
    return SSHConnection(host, None, None)


def _failed_passwords(server) -> int:
    return server.log.read_text(errors="replace").count("Failed password for") if server.log.exists() else 0


def test_served_sshd_allows_passwords_only_for_the_named_accounts(served_lab, account):
    config = served_lab.config.read_text()
    main, _, match = config.partition(f"Match User {account[0]}\n")
    assert "PasswordAuthentication no" in main and "AuthenticationMethods publickey" in main
    assert "PasswordAuthentication yes" in match and "AuthenticationMethods password" in match


def test_right_password_from_env_runs_commands_and_moves_files(served_lab, account, monkeypatch):
    monkeypatch.setenv("LAB_PW", account[1])
    conn = _password_conn(served_lab, account, ssh_password_env="LAB_PW")
    try:
        res = conn.run("echo %COMPUTERNAME%")
        assert res.rc == 0, res.stderr
        assert res.stdout.strip().lower() == conn.host.lower()
        assert res.stderr == ""      # no sshd noise (home directory, motd) in the command's output
        conn.put("Zoë\r\n".encode("utf-8"), r"C:\pwtest.txt")
        assert conn.run(r"type C:\pwtest.txt").stdout.strip() == "Zoë"
        assert conn.get(r"C:\pwtest.txt") == "Zoë\r\n".encode("utf-8")
    finally:
        conn.close()


def test_right_password_from_file_logs_in(served_lab, account, tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text(account[1] + "\n")
    conn = _password_conn(served_lab, account, ssh_password_file=str(pw_file))
    try:
        assert conn.run("echo ok").stdout.strip() == "ok"
    finally:
        conn.close()


def test_wrong_password_is_a_permanent_authentication_fault_tried_once(served_lab, account, monkeypatch):
    wrong = account[1][::-1]
    monkeypatch.setenv("LAB_PW", wrong)
    before = _failed_passwords(served_lab)
    conn = _password_conn(served_lab, account, ssh_password_env="LAB_PW")
    try:
        with pytest.raises(AuthenticationFault) as info:
            conn.run("echo never")
    finally:
        conn.close()
    assert "password" in info.value.message
    assert wrong not in str(info.value) and account[1] not in str(info.value)
    assert _failed_passwords(served_lab) - before == 1      # one attempt, no retries


def test_key_user_cannot_fall_back_to_a_password(served_lab, account, monkeypatch):
    # the serving user is not in the Match block: a password is refused before it is checked
    monkeypatch.setenv("LAB_PW", account[1])
    name = next(h for h, a in served_lab.addresses.items() if a.startswith("127.10."))
    conn = SSHConnection(ssh_host(served_lab, name, ssh_key_file=None, ssh_password_env="LAB_PW"), None, None)
    try:
        with pytest.raises(AuthenticationFault) as info:
            conn.run("echo never")
    finally:
        conn.close()
    assert "publickey" in info.value.message
