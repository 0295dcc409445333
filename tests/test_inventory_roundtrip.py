"""The whole road of a real estate, on a lab: its AD exported as ldifde would, an inventory made from the two
files and the clients, and the gradual migration of the lab built from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runner.cli import run
from runner.inventory import ldif
from runner.lab.generator import generate
from runner.lab.verify import verify


def test_lab_to_ldif_to_inventory_to_migration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = generate(tmp_path / "lab", clients=10, users_per_client=2, contacts=4, seed=11)
    man = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    assert run(["lab", "export-ldif", "--dir", str(tmp_path / "lab"), "-o", str(tmp_path / "ad")]) == 0
    users_ldf, computers_ldf = tmp_path / "ad" / "users.ldf", tmp_path / "ad" / "computers.ldf"
    raw = users_ldf.read_bytes()
    assert b"objectGUID:: " in raw and b"objectSid:: " in raw and b"changetype: add" in raw
    assert b"S-1-5-21" not in raw                       # SIDs are binary in an ldifde export
    assert len(ldif.parse(raw, "users.ldf").records) == len(man["users"])
    # the plan without anybody in it: servers, variables, no users, no clients
    base = yaml.safe_load(inv.read_text())
    base["users"] = {}
    base["all"]["children"]["clients"]["hosts"] = {}
    (tmp_path / "lab" / "base.yml").write_text(yaml.safe_dump(base))
    made = tmp_path / "lab" / "from-ad.yml"
    assert run(["inventory", "from-ldif", str(users_ldf), "--computers", str(computers_ldf),
                "--base", str(tmp_path / "lab" / "base.yml"), "-o", str(made)]) == 0
    full = tmp_path / "lab" / "contoso.yml"
    assert run(["inventory", "discover", "-i", str(made), "-o", str(full)]) == 0
    doc = yaml.safe_load(full.read_text())
    for alias, u in man["users"].items():
        got = doc["users"][alias]
        assert (got["sid"], got["ad_guid"].upper(), got["im_address"], got["display_name"]) == (
            u["sid"], u["ad_guid"].upper(), u["im_address"], u["display_name"])
        assert sorted(got["clients"]) == sorted(u["clients"])
    assert run(["validate", "playbooks/gradual.yml", "-i", str(full)]) == 0
    capsys.readouterr()
    rc = run(["apply", "playbooks/gradual.yml", "-i", str(full), "--state", str(tmp_path / "state")])
    assert rc == 0, capsys.readouterr().out[-3000:]
    report = verify(tmp_path / "lab")
    assert report.ok, [u.problems for u in report.users if not u.ok] + report.problems
