"""`runner lab init --from-inventory`: a lab with the shape of the administrator's own inventory.

The lab keeps the inventory's hosts, groups, users and variables (SSH
settings left out), generates what an inventory does not hold (contact
lists, Messenger versions, logged-on users, missing SIDs and GUIDs), and a
playbook run against it is checked by `runner lab verify` as for a random lab.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from cli_support import cli
from runner.lab import exchange
from runner.lab.generator import generate_from_inventory
from runner.loader import load_inventory

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventories" / "example-ssh.yml"
GRADUAL = str(REPO / "playbooks" / "gradual.yml")

HAND_WRITTEN = r"""
all:
  vars:
    sip_mapping:
      domains: {im.example.org: example.org, example.org: example.org, im.partner.net: partner.net}
      template: "sip:{local}@{domain}"
      table: {"ceo@chat.partner.net": "sip:ceo@partner.net"}
    lcs_home_server_dn: "CN=LC Services,CN=Microsoft,CN=lcspool1,CN=Pools,CN=RTC Service,CN=Microsoft,CN=System,DC=corp,DC=example,DC=org"
    messenger_package: '\\files01\software\messenger\WM51.msi'
    site_code: HQ
    ssh_key_file: ~/.ssh/id_migration
    ssh_known_hosts: ~/.ssh/known_hosts
  children:
    clients:
      vars:
        ssh_proxy_jump: jump@bastion.example.org
      children:
        floor1:
          vars: {floor: 1}
          hosts:
            ws-101: {address: 10.0.0.1, user: EXAMPLE\mig, vars: {asset_tag: A-101, ssh_command_timeout: 60}}
            ws-102: {}
        floor2:
          vars: {floor: 2}
          hosts:
            ws-201: {}
            ws-202: {}
            ws-203: {port: 2222}
    laptops:
      hosts:
        ws-102:
      children:
        floor2:
    exchange_im_servers:
      hosts:
        imsrv: {address: imsrv.corp.example.org}
    lcs_servers:
      hosts:
        lcspool1: {}
    monitoring:
      hosts:
        mon01: {}
users:
  ann:
    im_address: ann@im.example.org
    display_name: Ann Lee
    clients: [ws-101, ws-102]
    sid: S-1-5-21-1111111111-2222222222-3333333333-2001
    ad_guid: "{11111111-2222-3333-4444-555555555555}"
    wave: night1
  ben:
    im_address: ben@im.example.org
    display_name: Ben & Co <IT>
    clients: [ws-102]
    wave: night1
  cora:
    im_address: cora@im.example.org
    display_name: Cora Díaz
    clients: [ws-201, ws-203]
    sid: S-1-5-21-1111111111-2222222222-3333333333-2003
    ad_guid: "{33333333-2222-3333-4444-555555555555}"
    wave: night2
    sip_uri: sip:cora.diaz@example.org
    vars: {note: VIP}
  dan:
    im_address: daniel.ng@im.example.org
    display_name: Daniel Ng
    clients: [ws-202]
    sid: S-1-5-21-1111111111-2222222222-3333333333-2004
    ad_guid: "{44444444-2222-3333-4444-555555555555}"
    wave: night2
  eve:
    im_address: eve@im.example.org
    display_name: Eve Park
    clients: [ws-203]
    wave: night1
  fay:
    im_address: fay@im.example.org
    clients: [ws-101]
    sid: S-1-5-21-1111111111-2222222222-3333333333-2006
    ad_guid: "{66666666-2222-3333-4444-555555555555}"
    wave: night3
"""

USER_FIELDS = ("im_address", "display_name", "clients", "wave", "sip_uri", "home_server", "vars")


@pytest.fixture(scope="module")
def hand_written(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("inv") / "estate.yml"
    p.write_text(HAND_WRITTEN, encoding="utf-8")
    return p


def manifest(lab: Path) -> dict:
    return json.loads((lab / "manifest.json").read_text(encoding="utf-8"))


def no_ssh(vars_) -> dict:
    return {k: v for k, v in vars_.items() if not k.startswith("ssh_")}


@pytest.mark.parametrize("source", ["example", "hand_written"])
def test_the_lab_has_the_inventorys_hosts_groups_users_and_variables(tmp_path, hand_written, source):
    src_path = EXAMPLE if source == "example" else hand_written
    src = load_inventory(src_path)
    lab = load_inventory(generate_from_inventory(tmp_path / "lab", src_path, contacts=10, seed=5))
    assert list(lab.hosts) == list(src.hosts)
    assert all(h.connection == "lab" for h in lab.hosts.values())
    for name, g in src.groups.items():
        assert lab.groups[name].hosts == g.hosts and lab.groups[name].children == g.children, name
        assert no_ssh(lab.groups[name].vars) == {k: v for k, v in no_ssh(g.vars).items() if k != "lab_dir"} | (
            {"lab_dir": str((tmp_path / "lab").resolve())} if name == "all" else {})
    for name, h in src.hosts.items():
        assert lab.hosts[name].groups == h.groups
        assert no_ssh(lab.hosts[name].vars) == no_ssh(h.vars) | {"lab_dir": str((tmp_path / "lab").resolve())}
        assert not any(k.startswith("ssh_") for k in lab.hosts[name].vars)
    assert list(lab.users) == list(src.users)
    for alias, u in src.users.items():
        for f in USER_FIELDS:
            assert getattr(lab.users[alias], f) == getattr(u, f), (alias, f)
        for f in ("sid", "ad_guid"):
            if getattr(u, f):
                assert getattr(lab.users[alias], f) == getattr(u, f), (alias, f)


def test_missing_sids_and_guids_are_generated_the_same_every_time(tmp_path, hand_written):
    a = load_inventory(generate_from_inventory(tmp_path / "a", hand_written, contacts=5, seed=1)).users
    b = load_inventory(generate_from_inventory(tmp_path / "b", hand_written, contacts=5, seed=9)).users
    for alias in ("ben", "eve"):
        assert a[alias].sid.startswith("S-1-5-21-1111111111-2222222222-3333333333-")
        uuid.UUID(a[alias].ad_guid.strip("{}"))
        assert (a[alias].sid, a[alias].ad_guid) == (b[alias].sid, b[alias].ad_guid)
    sids = [u.sid for u in a.values()]
    assert len(set(sids)) == len(sids)


def test_same_inventory_and_seed_give_the_same_lab(tmp_path, hand_written):
    one = generate_from_inventory(tmp_path / "one", hand_written, contacts=10, seed=3)
    two = generate_from_inventory(tmp_path / "two", hand_written, contacts=10, seed=3)
    m1, m2 = manifest(one.parent), manifest(two.parent)
    m1.pop("generated"), m2.pop("generated")
    assert m1 == m2
    assert one.read_text(encoding="utf-8") == two.read_text(encoding="utf-8")


def test_servers_home_exactly_the_inventorys_users(tmp_path, hand_written):
    lab = generate_from_inventory(tmp_path / "lab", hand_written, contacts=5, seed=2).parent
    src = load_inventory(hand_written)
    with exchange.Directory(exchange.ad_path(lab)) as d:
        homed = {dn: attrs for dn, attrs in exchange.im_users(d)}
        addresses = sorted(str(a["msExchIMAddress"][0]).lower() for a in homed.values())
        assert addresses == sorted(u.im_address.lower() for u in src.users.values())
        assert all(dn.endswith(",CN=Users,DC=corp,DC=example,DC=org") for dn in homed)
    db = sqlite3.connect(lab / "hosts" / "lcspool1" / "lcs.db")
    server_dn = db.execute("SELECT value FROM meta WHERE name='server_dn'").fetchone()[0]
    assert server_dn == src.vars["lcs_home_server_dn"]
    m = manifest(lab)
    assert (m["exchange_server"], m["lcs_server"]) == ("imsrv", "lcspool1")
    assert m["users"]["cora"]["sip_uri"] == "sip:cora.diaz@example.org"
    assert m["users"]["dan"]["sip_uri"] == "sip:daniel.ng@example.org"
    roles = json.loads((lab / "lab.json").read_text(encoding="utf-8"))["hosts"]
    assert {h: r["role"] for h, r in roles.items() if r["role"] != "client"} == {
        "imsrv": "exchange_im", "lcspool1": "lcs", "mon01": "member"}
    assert (lab / "shares" / "files01" / "software" / "messenger" / "WM51.msi").is_file()


def test_contact_lists_are_built_like_a_random_labs(tmp_path, hand_written):
    m = manifest(generate_from_inventory(tmp_path / "lab", hand_written, contacts=30, seed=4).parent)
    users = m["users"]
    colleagues = {u["im_address"].lower() for u in users.values()}
    lists = {(a, c): mm["contacts"] for a, u in users.items() for c, mm in u["machines"].items()}
    for (alias, _), lst in lists.items():
        addrs = [c["address"].lower() for c in lst]
        assert users[alias]["im_address"].lower() not in addrs, "nobody lists themselves"
    addresses = [c["address"] for lst in lists.values() for c in lst]
    names = [c["display_name"] for lst in lists.values() for c in lst]
    assert any(a.lower() in colleagues for a in addresses), "colleagues are the inventory's users"
    assert any(a.lower().endswith("@im.partner.net") for a in addresses), "partners in the mapped partner domain"
    assert "ceo@chat.partner.net" in {a.lower() for a in addresses}, "the mapping table's entries"
    assert any(a.endswith(("@hotmail.com", "@aol.com", "@msn.com", "@im.litware.com")) for a in addresses)
    assert any(len(lst) > m["lcs_limit"] for lst in lists.values()), "a list over the LCS limit"
    assert any(any(ch in n for ch in '"&|%^<>') for n in names), "hostile display names"
    ann = users["ann"]["machines"]
    shared = {c["address"].lower() for c in ann["ws-101"]["contacts"]} & {
        c["address"].lower() for c in ann["ws-102"]["contacts"]}
    assert shared, "a user's machines hold overlapping lists (duplicates across machines)"
    assert set(m["machines"]) == {"ws-101", "ws-102", "ws-201", "ws-202", "ws-203"}
    assert {v["messenger"] for v in m["machines"].values()} <= {"msn46", "msn47", "wm47", "wm51"}


@pytest.mark.parametrize("source", ["example", "hand_written"])
def test_gradual_migrates_the_lab_and_verify_passes(tmp_path, capsys, hand_written, source):
    src_path = EXAMPLE if source == "example" else hand_written
    lab = tmp_path / "lab"
    code, out = cli(capsys, "lab", "init", "--from-inventory", str(src_path), "--dir", str(lab), "--contacts", "15")
    assert code == 0, out
    n_users = len(load_inventory(src_path).users)
    assert f"{n_users} users" in out and str(src_path) in out
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(lab / "inventory.yml"), "--state", str(tmp_path / "st"))
    assert code == 0, out[-3000:]
    code, out = cli(capsys, "lab", "verify", "--dir", str(lab))
    assert code == 0, out
    assert f"{n_users}/{n_users} users as expected" in out and "server decommissioned" in out


def test_limit_by_the_inventorys_waves_migrates_only_that_wave(tmp_path, capsys, hand_written):
    lab = tmp_path / "lab"
    code, out = cli(capsys, "lab", "init", "--from-inventory", str(hand_written), "--dir", str(lab))
    assert code == 0, out
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(lab / "inventory.yml"), "--state", str(tmp_path / "st"),
                    "--limit", "wave:night1")
    assert code == 0, out[-3000:]
    code, out = cli(capsys, "lab", "verify", "--dir", str(lab), "--wave", "night1")
    assert code == 0, out
    assert "3/3 users as expected" in out
    db = sqlite3.connect(lab / "hosts" / "lcspool1" / "lcs.db")
    on_lcs = {r[0].lower() for r in db.execute("SELECT primary_uri FROM users WHERE enabled=1")}
    assert on_lcs == {"sip:ann@example.org", "sip:ben@example.org", "sip:eve@example.org"}


def test_a_broken_inventory_exits_4_naming_file_and_line(tmp_path, capsys, hand_written):
    broken = tmp_path / "broken.yml"
    broken.write_text(HAND_WRITTEN.replace("clients: [ws-202]", "clients: [ws-299]"), encoding="utf-8")
    code, out = cli(capsys, "lab", "init", "--from-inventory", str(broken), "--dir", str(tmp_path / "lab"))
    assert code == 4
    line = HAND_WRITTEN.replace("clients: [ws-202]", "clients: [ws-299]").splitlines().index(
        "    clients: [ws-299]") + 1
    assert f"broken.yml:{line}:" in out and "ws-299" in out
    assert not (tmp_path / "lab").exists()


@pytest.mark.parametrize("package", [r"C:\pkgs\m.msi", r"\\deploy\packages\..\x.msi"])
def test_a_package_path_the_lab_cannot_serve_writes_nothing_and_keeps_the_old_lab(tmp_path, capsys, package):
    """Checked before the lab's lock file is made or --force removes the old lab (issue 9:
    a command that refuses its input leaves the disk as it was)."""
    inv = tmp_path / "inv.yml"
    text = HAND_WRITTEN.replace("    messenger_package: '\\\\files01\\software\\messenger\\WM51.msi'",
                                "    messenger_package: " + json.dumps(package))
    assert text != HAND_WRITTEN
    inv.write_text(text, encoding="utf-8")
    line = text.splitlines().index("    messenger_package: " + json.dumps(package)) + 1
    old = tmp_path / "old"
    assert cli(capsys, "lab", "init", "--dir", str(old), "--clients", "1")[0] == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (("--dir", str(tmp_path / "lab")), ("--dir", str(old), "--force")):
        code, out = cli(capsys, "lab", "init", "--from-inventory", str(inv), *args)
        assert code == 4 and f"inv.yml:{line}:" in out and "messenger_package" in out, out
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (old / "inventory.yml").is_file()


def test_random_lab_sizes_do_not_mix_with_an_inventory(tmp_path, capsys):
    code, out = cli(capsys, "lab", "init", "--from-inventory", str(EXAMPLE), "--clients", "5",
                    "--dir", str(tmp_path / "lab"))
    assert code == 5 and "--from-inventory" in out


def test_init_warns_which_users_lack_the_ids_the_real_night_needs(tmp_path, capsys, hand_written):
    source = tmp_path / "source.yml"
    source.write_text(HAND_WRITTEN, encoding="utf-8")
    users = load_inventory(source).users.values()
    no_guid = sorted(u.alias for u in users if not u.ad_guid)
    assert no_guid, "the hand-written inventory should leave some ad_guid out"
    code, out = cli(capsys, "lab", "init", "--from-inventory", str(source), "--dir", str(tmp_path / "lab"))
    assert code == 0
    warning = next(line for line in out.splitlines() if "have no ad_guid" in line)
    assert all(alias in warning for alias in no_guid[:10])
    code, out = cli(capsys, "lab", "init", "--from-inventory", str(EXAMPLE), "--dir", str(tmp_path / "lab2"))
    assert code == 0 and "have no" not in out  # the example gives every user a sid and an ad_guid
