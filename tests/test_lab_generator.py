"""The lab generator: determinism, the realistic mix, ensure_lab, ldifde against the generated AD."""
from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from runner.lab.commands.ldifde import parse_filter, parse_ldif, run_ldifde
from runner.lab.faults import Faults
from runner.lab.generator import ensure_lab, generate
from runner.lab.shell import ShellContext
from runner.lab.store import Lab


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab") / "lab"
    generate(d, clients=40, users_per_client=2, contacts=20, seed=3)
    return d


def manifest(d):
    return json.loads((d / "manifest.json").read_text(encoding="utf-8"))


def test_same_seed_gives_the_same_manifest_and_inventory(tmp_path, lab_dir):
    other = tmp_path / "again"
    generate(other, clients=40, users_per_client=2, contacts=20, seed=3)
    a, b = manifest(lab_dir), manifest(other)
    a.pop("generated"), b.pop("generated")
    assert a == b
    assert (lab_dir / "inventory.yml").read_text(encoding="utf-8") == (other / "inventory.yml").read_text(encoding="utf-8")


def test_another_seed_gives_another_estate(tmp_path, lab_dir):
    generate(tmp_path / "s4", clients=40, users_per_client=2, contacts=20, seed=4)
    assert manifest(tmp_path / "s4")["users"] != manifest(lab_dir)["users"]


def test_the_mix_is_realistic(lab_dir):
    m = manifest(lab_dir)
    users = m["users"].values()
    lists = [mm["contacts"] for u in users for mm in u["machines"].values()]
    addresses = [c["address"] for lst in lists for c in lst]
    names = [c["display_name"] for lst in lists for c in lst]
    assert any(len(u["clients"]) > 1 for u in users), "users with several machines"
    machines = {}
    for u in users:
        for c in u["clients"]:
            machines[c] = machines.get(c, 0) + 1
    assert any(n > 1 for n in machines.values()), "shared machines"
    assert any(not lst for lst in lists), "empty lists"
    assert any(len(lst) > m["lcs_limit"] for lst in lists), "lists over the LCS limit"
    assert any(a.endswith("@hotmail.com") or a.endswith("@aol.com") or a.endswith("@msn.com") for a in addresses)
    assert any("@" not in a or a.count("@") > 1 or " " in a for a in addresses), "malformed addresses"
    assert any(any(ch in n for ch in '"&|%^<>') for n in names), "hostile display names"
    assert any(any(ord(ch) > 127 for ch in n) for n in names), "unicode display names"
    assert any(u["machines"][c]["logged_on"] for u in users for c in u["clients"])
    assert any(not u["machines"][c]["logged_on"] for u in users for c in u["clients"])
    assert any(u["machines"][c]["groups"] for u in users for c in u["clients"])


def test_hives_hold_the_manifest_contacts(lab_dir):
    m = manifest(lab_dir)
    lab = Lab(lab_dir)
    alias, u = next((a, u) for a, u in m["users"].items() if any(mm["contacts"] for mm in u["machines"].values()))
    client = next(c for c in u["clients"] if u["machines"][c]["contacts"])
    host = lab.host(client)
    hive = host.fs.resolve(f"C:\\Documents and Settings\\{alias}\\NTUSER.DAT")
    db = sqlite3.connect(hive)
    key = (f"software\\microsoft\\exchange\\messenger\\profiles\\{u['profile_url']}\\contacts").lower()
    names = {r[0] for r in db.execute("SELECT name FROM reg_value WHERE key_lc=?", (key,))}
    assert names == {c["address"] for c in u["machines"][client]["contacts"]}
    assert host.registry.get_value(
        r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList" + "\\" + u["sid"], "ProfileImagePath")


def test_lab_has_servers_package_and_no_faults(lab_dir):
    cfg = json.loads((lab_dir / "lab.json").read_text(encoding="utf-8"))
    roles = {h["role"] for h in cfg["hosts"].values()}
    assert roles == {"client", "exchange_im", "lcs"}
    assert all(v == 0.0 for v in cfg["faults"]["global"].values())
    assert (lab_dir / "shares" / "deploy" / "packages" / "WindowsMessenger51.msi").is_file()
    lcs = sqlite3.connect(lab_dir / "hosts" / "lcs01" / "lcs.db")
    assert lcs.execute("SELECT count(*) FROM users").fetchone()[0] == 0
    inv = yaml.safe_load((lab_dir / "inventory.yml").read_text(encoding="utf-8"))
    assert inv["all"]["vars"]["lab_dir"] == "."
    assert set(inv["users"]) == set(manifest(lab_dir)["users"])
    assert {u["wave"] for u in inv["users"].values()} == {"wave1", "wave2", "wave3"}


def test_ensure_lab_creates_once_and_keeps_an_existing_lab(tmp_path):
    d = tmp_path / "l"
    inv = ensure_lab(d, clients=3, users_per_client=1, contacts=2, seed=1)
    assert inv == d.absolute() / "inventory.yml"
    before = inv.read_bytes()
    assert ensure_lab(d, clients=9, users_per_client=2, contacts=5, seed=2) == inv
    assert inv.read_bytes() == before


def _ctx(lab_dir, host="exim01"):
    lab = Lab(lab_dir)
    h = lab.host(host)
    return ShellContext(lab, h, h.environment(), "C:\\", Faults(lab))


def test_ldifde_export_writes_ldif_with_requested_attributes(lab_dir):
    ctx = _ctx(lab_dir)
    alias = next(iter(manifest(lab_dir)["users"]))
    r = run_ldifde(ctx, ["ldifde", "-f", r"C:\Temp\u.ldf", "-r", f"(&(objectClass=user)(sAMAccountName={alias}))",
                         "-l", "msExchIMAddress,objectGUID"])
    assert r.rc == 0 and "1 entries exported" in r.stdout
    assert r.stdout.endswith("The command has completed successfully\r\n")
    entries = parse_ldif(ctx.host.fs.read(r"C:\Temp\u.ldf"))
    assert len(entries) == 1
    attrs = dict(entries[0].attrs)
    assert attrs["msExchIMAddress"] == f"{alias}@im.contoso.com"
    assert isinstance(attrs["objectGUID"], bytes) and len(attrs["objectGUID"]) == 16
    assert b"objectGUID:: " in ctx.host.fs.read(r"C:\Temp\u.ldf")


def test_ldifde_import_modify_then_repeat_fails_with_no_such_attribute(lab_dir):
    ctx = _ctx(lab_dir)
    alias = list(manifest(lab_dir)["users"])[1]
    run_ldifde(ctx, ["ldifde", "-f", r"C:\Temp\one.ldf", "-r", f"(sAMAccountName={alias})", "-l", "cn"])
    dn = parse_ldif(ctx.host.fs.read(r"C:\Temp\one.ldf"))[0].dn
    ldif = f"dn: {dn}\r\nchangetype: modify\r\ndelete: msExchIMAddress\r\n-\r\nreplace: msExchIMACL\r\n-\r\n\r\n"
    ctx.host.fs.write(r"C:\Temp\m.ldf", ldif.encode())
    r = run_ldifde(ctx, ["ldifde", "-i", "-f", r"C:\Temp\m.ldf"])
    assert r.rc == 0 and "1 entries modified successfully." in r.stdout
    r = run_ldifde(ctx, ["ldifde", "-i", "-f", r"C:\Temp\m.ldf"])
    assert r.rc == 16 and "No Such Attribute" in r.stderr


def test_ldifde_deletes_the_virtual_server_object(lab_dir):
    ctx = _ctx(lab_dir)
    r = run_ldifde(ctx, ["ldifde", "-f", r"C:\Temp\vs.ldf", "-d", "CN=Configuration,DC=contoso,DC=com",
                         "-r", "(objectClass=protocolCfgIMVirtualServer)"])
    assert "1 entries exported" in r.stdout
    dn = parse_ldif(ctx.host.fs.read(r"C:\Temp\vs.ldf"))[0].dn
    ctx.host.fs.write(r"C:\Temp\del.ldf", f"dn: {dn}\r\nchangetype: delete\r\n\r\n".encode())
    assert run_ldifde(ctx, ["ldifde", "-i", "-f", r"C:\Temp\del.ldf"]).rc == 0
    r = run_ldifde(ctx, ["ldifde", "-i", "-f", r"C:\Temp\del.ldf"])
    assert r.rc == 32 and "No Such Object" in r.stderr


def test_ldifde_usage_errors():
    assert parse_filter("(|(a=1)(b=2))")[1] == [("a", "1"), ("b", "2")]
    assert parse_filter("(&(a=*)(!(b=2)))")[0]({"a": ["x"], "b": ["3"]})


def test_ldif_base64_and_folded_lines_are_read():
    data = b"dn: CN=x,DC=y\r\nchangetype: add\r\ndisplayName:: WsO2w6s=\r\ndescription: long\r\n  value\r\n\r\n"
    e = parse_ldif(data)[0]
    assert dict(e.attrs) == {"displayName": "Zöë", "description": "long value"}
