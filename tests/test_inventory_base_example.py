"""inventories/base-example.yml, the base the README starts from: from-ldif takes it as it is, keeps it
unchanged, and writes an inventory `runner validate` accepts; validate tells warnings from problems."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.cli import run
from test_inventory_cut import _computers, _users

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "inventories" / "base-example.yml"


def test_from_ldif_with_the_shipped_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = BASE.read_bytes()
    users, computers = tmp_path / "users.ldf", tmp_path / "computers.ldf"
    users.write_bytes(_users(3))
    computers.write_bytes(_computers())
    out = tmp_path / "contoso-ad.yml"
    assert run(["inventory", "from-ldif", str(users), "--computers", str(computers), "--base", str(BASE),
                "-o", str(out)]) == 0
    assert BASE.read_bytes() == before
    doc = yaml.safe_load(out.read_text())
    base = yaml.safe_load(before)
    assert set(doc["users"]) == {"user0", "user1", "user2"}
    assert set(doc["all"]["children"]["clients"]["hosts"]) == {"pc0000", "pc0001", "pc0002"}
    assert doc["all"]["children"]["lcs_servers"] == base["all"]["children"]["lcs_servers"]
    assert doc["all"]["vars"]["ssh_sftp_paths"] == "cygwin"
    capsys.readouterr()
    assert run(["validate", str(ROOT / "playbooks" / "gradual.yml"), "-i", str(out)]) == 0
    cap = capsys.readouterr()
    # users without clients yet (discover fills them in): warnings, not problems
    assert "valid, with 3 warning(s) and no problem" in cap.out and "problem(s) found" not in cap.err
    assert cap.err.count("warning: user") == 3


def test_validate_says_problems_when_there_are_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(BASE.read_text().replace("ssh_sftp_paths: cygwin", "ssh_sftp_paths: cygwn"))
    assert run(["validate", str(ROOT / "playbooks" / "gradual.yml"), "-i", str(bad)]) == 4
    cap = capsys.readouterr()
    assert "1 problem(s) found: not valid" in cap.err and ": valid" not in cap.out


@pytest.mark.parametrize("name", ["base-example.yml", "example-ssh.yml"])
def test_the_shipped_inventories_log_on_to_the_servers_by_password_only(name: str) -> None:
    """Keys are tried before a password, and a key logon has no network credentials (which
    ldifde and wmic on the servers may need): the servers offer no key and no agent."""
    from runner.connections.ssh import SSHConnection
    from runner.loader import load_inventory

    inv = load_inventory(ROOT / "inventories" / name)
    for server in inv.group_hosts("exchange_im_servers") + inv.group_hosts("lcs_servers"):
        conn = SSHConnection(inv.hosts[server], inv)
        assert conn.key_file is None and not conn.use_agent, server
        assert inv.hosts[server].vars["ssh_password_env"], server
    key = str(inv.vars.get("ssh_key_file") or inv.groups["clients"].vars.get("ssh_key_file"))
    assert key.endswith("_rsa")          # the OpenSSH of 2005 knows no ed25519
