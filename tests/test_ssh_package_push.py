"""Over the served lab's real sshd: a key-based logon is refused the package's share, so
upgrade_messenger pushes the package over SFTP, has the client hash it, installs and removes
it; a password logon still reads the share."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest
import yaml
from stepctx import StepCtx

from runner import hostenv
from runner.connections.ssh import SSHConnection
from runner.errors import TransientFault
from runner.lab.binaries import MESSENGER51_CODE
from runner.lab.generator import generate
from runner.lab.store import Lab
from runner.loader import load_inventory
from runner.steps.upgrade_messenger import UpgradeMessenger

from ssh_helpers import password_account, serve, ssh_host

pytestmark = pytest.mark.ssh
UNC = r"\\deploy\packages\WindowsMessenger51.msi"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = tmp_path_factory.mktemp("pushlab") / "lab"
    generate(lab, clients=2, users_per_client=1, contacts=2, seed=5)
    server = serve(lab, fake_shell=False)
    yield server
    server.stop()


def _client(server) -> str:
    return sorted(h for h in server.addresses if h.startswith("pc"))[0]


def test_the_served_inventory_pushes_the_package_it_cannot_share(served):
    doc = yaml.safe_load(served.inventory_out.read_text(encoding="utf-8"))
    local = doc["all"]["vars"]["messenger_package_local"]
    assert os.path.isfile(local) and local.startswith(str(served.lab_dir / "shares"))
    assert "ExposeAuthInfo yes" in served.config.read_text()


def test_a_key_logon_is_refused_the_share_and_the_pushed_package_is_hashed_and_installed(served, tmp_path):
    name = _client(served)
    inv = load_inventory(served.inventory_out)
    conn = SSHConnection(ssh_host(served, name), None, None)
    try:
        denied = conn.run(f"type {UNC}")
        assert denied.rc == 1 and denied.stderr == "Access is denied.\r\n", denied
        assert conn.run(rf"msiexec /i {UNC} /qn /norestart").rc == 1619
        host = inv.hosts[name]
        ctx = StepCtx(inv, {name: conn}, tmp_path, vars=host.vars)
        step = UpgradeMessenger()
        diff = step.probe(ctx, host)
        assert diff is not None and diff.data.get("push"), diff
        hostenv.system_root(conn)                    # learned once per connection (or from facts)
        trips: list[str] = []
        for op in ("run", "put", "get"):
            real = getattr(conn, op)
            setattr(conn, op, lambda *a, _real=real, _op=op, **kw: (trips.append(_op), _real(*a, **kw))[1])
        result = step.apply(ctx, host, diff)
        assert result.status == "changed", result.message
        assert trips == ["put", "run"]               # the SFTP put, then one line: hash, msiexec, delete
        pushed = result.data["pushed"]
        local = host.vars["messenger_package_local"]
        with open(local, "rb") as fh:
            assert pushed["sha256"] == hashlib.sha256(fh.read()).hexdigest()
        assert pushed["hash_tool"] == "sha256sum"
        lab_host = Lab(served.lab_dir).host(name)
        journal = [e.command for e in lab_host.journal()]
        assert any(c.startswith("msiexec /i " + pushed["remote"]) for c in journal), journal
        assert not lab_host.fs.exists(pushed["remote"])
        assert lab_host.products.get(MESSENGER51_CODE) is not None
        assert step.probe(ctx, host) is None
    finally:
        conn.close()


def test_a_push_cut_short_over_sftp_is_caught_by_the_clients_hash_before_msiexec(served, tmp_path):
    name = sorted(h for h in served.addresses if h.startswith("pc"))[1]
    path = served.lab_dir / "lab.json"
    saved = path.read_text(encoding="utf-8")
    cfg = json.loads(saved)
    cfg.setdefault("faults", {}).setdefault("hosts", {})[name] = {"put_truncated": 1.0}
    path.write_text(json.dumps(cfg), encoding="utf-8")
    inv = load_inventory(served.inventory_out)
    conn = SSHConnection(ssh_host(served, name), None, None)
    try:
        host = inv.hosts[name]
        ctx = StepCtx(inv, {name: conn}, tmp_path, vars=host.vars)
        step = UpgradeMessenger()
        with pytest.raises(TransientFault, match="damaged") as caught:
            step.apply(ctx, host, step.probe(ctx, host))
        pushed = caught.value.data["pushed"]
        assert pushed["got"] != pushed["sha256"]
        lab_host = Lab(served.lab_dir).host(name)
        assert not any(e.command.startswith("msiexec") for e in lab_host.journal())
        assert not lab_host.fs.exists(pushed["remote"])
        path.write_text(saved, encoding="utf-8")      # the link is good again: a new connection installs
        conn.close()
        conn = SSHConnection(ssh_host(served, name), None, None)
        ctx = StepCtx(inv, {name: conn}, tmp_path, vars=host.vars)
        assert step.apply(ctx, host, step.probe(ctx, host)).status == "changed"
    finally:
        path.write_text(saved, encoding="utf-8")
        conn.close()


def test_a_password_logon_reads_the_share(served, tmp_path_factory, monkeypatch):
    """A served lab whose sshd lets one account log on with a password: its session has
    network credentials, and reads the share the key sessions are refused."""
    lab = tmp_path_factory.mktemp("pwpushlab") / "lab"
    generate(lab, clients=1, users_per_client=1, contacts=1, seed=6)
    with password_account(tmp_path_factory.mktemp("pwhome")) as (user, password):
        pw_server = serve(lab, fake_shell=False, allow_password_users=[user])
        try:
            monkeypatch.setenv("LAB_PUSH_PW", password)
            name = _client(pw_server)
            host = dataclasses.replace(ssh_host(pw_server, name, ssh_key_file=None, ssh_password_env="LAB_PUSH_PW"),
                                       user=user)
            conn = SSHConnection(host, None, None)
            try:
                res = conn.run(rf"copy {UNC} C:\pw-copy.msi")
                assert res.rc == 0 and "1 file(s) copied." in res.stdout, res
                assert conn.run(f"type {UNC}").rc == 0
            finally:
                conn.run(r"del /q C:\pw-copy.msi")
                conn.close()
        finally:
            pw_server.stop()


def test_a_served_lab_made_from_a_pushing_inventory_pushes_over_ssh(tmp_path):
    """lab init --from-inventory keeps a relative messenger_package_local: the SSH
    inventory, one folder down, names the file absolutely, and loads."""
    from pathlib import Path

    from runner.lab.generator import generate_from_inventory

    src = tmp_path / "estate" / "contoso.yml"
    src.parent.mkdir()
    (src.parent / "WindowsMessenger51.msi").write_bytes(b"the real package")
    text = (Path(__file__).resolve().parents[1] / "inventories" / "example-ssh.yml").read_text(encoding="utf-8")
    marker = "    clients:                                  # the Windows XP/2000 desktops with Windows Messenger\n      vars:\n"
    assert marker in text
    src.write_text(text.replace(marker, marker + "        messenger_package_local: WindowsMessenger51.msi\n"),
                   encoding="utf-8")   # on the clients group, which names no messenger_package
    generate_from_inventory(tmp_path / "lab", src, contacts=2, seed=5)
    lab_doc = yaml.safe_load((tmp_path / "lab" / "inventory.yml").read_text(encoding="utf-8"))
    assert lab_doc["all"]["children"]["clients"]["vars"]["messenger_package_local"].startswith("shares/")
    server = serve(tmp_path / "lab", fake_shell=False)
    try:
        inv = load_inventory(server.inventory_out)
        name = sorted(h for h in inv.hosts if inv.hosts[h].vars.get("messenger_package_local"))[0]
        local = inv.hosts[name].vars["messenger_package_local"]
        assert os.path.isabs(local) and os.path.isfile(local)
    finally:
        server.stop()
