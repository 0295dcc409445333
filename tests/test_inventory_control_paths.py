"""Control-node path variables: one list (runner.model.CONTROL_NODE_PATH_VARS) that the loader, the SSH
connection and an inventory written into another folder (`from-ldif --base`, `discover -o`) all use;
and `ssh_sftp_paths`, checked when the inventory is read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runner.cli import run
from runner.connections.ssh import SFTP_PATH_STYLES, SSHConnection
from runner.loader import load_inventory
from runner.model import CONTROL_NODE_PATH_VARS
from test_inventory_cut import _computers, _users

ROOT = Path(__file__).resolve().parent.parent


def test_the_schema_knows_the_sftp_path_styles_the_connection_knows() -> None:
    schema = json.loads((ROOT / "schemas" / "inventory.schema.json").read_text())
    assert tuple(schema["$defs"]["vars"]["properties"]["ssh_sftp_paths"]["enum"]) == SFTP_PATH_STYLES


def test_a_wrong_sftp_path_style_is_exit_4_at_its_line_by_validate(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  vars:\n    ssh_sftp_paths: cygwn\n  children:\n    clients: {hosts: {pc1: {}}}\n"
                   "users: {a: {im_address: a@im.contoso.com, clients: [pc1]}}\n")
    assert run(["validate", "playbooks/gradual.yml", "-i", str(inv)]) == 4
    out = capsys.readouterr().out
    assert f"{inv}:3:" in out and "did you mean 'cygwin'" in out


def _base(folder: Path) -> Path:
    """A base inventory whose control-node paths are all relative to its own folder."""
    (folder / "keys").mkdir(parents=True)
    for name in ("id_rsa", "known_hosts", "password.txt"):
        (folder / "keys" / name).write_text("x\n")
    (folder / "pkgs").mkdir()
    (folder / "pkgs" / "WindowsMessenger51.msi").write_bytes(b"MSI")
    doc = {"all": {"vars": {"ssh_key_file": "keys/id_rsa", "ssh_known_hosts": "keys/known_hosts",
                            "messenger_package_local": "pkgs/WindowsMessenger51.msi"},
                   "children": {"clients": {"hosts": {}},
                                "lcs_servers": {"hosts": {"lcs01": {"vars": {"ssh_password_file": "keys/password.txt"}}}}}},
           "users": {}}
    path = folder / "base.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _paths(inv_path: Path) -> dict[str, str]:
    inv = load_inventory(inv_path)
    lcs = inv.hosts["lcs01"]
    conn = SSHConnection(lcs, inv)
    return {"key": str(conn.key_file), "known": str(conn.known_hosts), "password": lcs.vars["ssh_password_file"],
            "package": lcs.vars["messenger_package_local"]}


def test_every_control_node_path_is_rebased_into_the_outputs_folder(tmp_path: Path) -> None:
    assert {"lab_dir", "messenger_package_local", "ssh_key_file", "ssh_known_hosts",
            "ssh_password_file"} <= set(CONTROL_NODE_PATH_VARS)
    base = _base(tmp_path / "plan")
    users, computers = tmp_path / "users.ldf", tmp_path / "computers.ldf"
    users.write_bytes(_users(2))
    computers.write_bytes(_computers())
    out = tmp_path / "elsewhere" / "deep" / "contoso.yml"
    assert run(["inventory", "from-ldif", str(users), "--computers", str(computers), "--base", str(base),
                "-o", str(out)]) == 0
    expected = _paths(base)
    assert expected["key"] == str(tmp_path / "plan" / "keys" / "id_rsa")
    assert _paths(out) == expected
    written = yaml.safe_load(out.read_text())["all"]
    assert written["vars"]["ssh_key_file"] == "../../plan/keys/id_rsa"      # still relative, from OUT's folder
    # and discover's output in a third folder (no client to read: the clients group is empty)
    again = tmp_path / "third" / "d.yml"
    doc = yaml.safe_load(out.read_text())
    doc["all"]["children"]["clients"]["hosts"] = {}
    bare = tmp_path / "elsewhere" / "deep" / "bare.yml"
    bare.write_text(yaml.safe_dump(doc))
    assert run(["inventory", "discover", "-i", str(bare), "-o", str(again)]) == 0
    assert _paths(again) == expected
