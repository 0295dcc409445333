"""Values from an inventory are data in every language they enter (issue 9: injection).

The reproduction: an inventory user's ``ad_guid`` holding ``" & reg add ... & "``
went into a WQL ``where`` clause unescaped and cmd.exe ran the ``reg add`` on
the LCS server. Identifiers now have formats checked at load, so such a value
stops the run before any host is touched; the lab's journals prove it.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from cli_support import cli
from runner.lab.generator import generate

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = '" & reg add HKLM\\SOFTWARE\\Injected /f & "'


def _journal(lab: Path, host: str) -> list[str]:
    with sqlite3.connect(lab / "hosts" / host / "host.db") as db:
        return [r[0] for r in db.execute("SELECT command FROM journal")]


def test_an_injected_ad_guid_stops_the_run_at_its_line_and_reaches_no_host(tmp_path, capsys):
    lab = tmp_path / "lab"
    generate(lab, clients=4, users_per_client=1, contacts=3, seed=3)
    inv_path = lab / "inventory.yml"
    inv = yaml.safe_load(inv_path.read_text(encoding="utf-8"))
    victim = sorted(inv["users"])[0]
    inv["users"][victim]["ad_guid"] = PAYLOAD
    inv_path.write_text(yaml.safe_dump(inv, allow_unicode=True, sort_keys=False), encoding="utf-8")
    line = next(i for i, text in enumerate(inv_path.read_text(encoding="utf-8").splitlines(), 1)
                if "Injected" in text)

    code, text = cli(capsys, "apply", str(REPO / "playbooks" / "gradual.yml"), "-i", str(inv_path),
                     "--state", str(tmp_path / "state"))

    assert code == 4, text
    assert f"{inv_path}:{line}:" in text and "'ad_guid'" in text and f"user '{victim}'" in text
    for host in ("lcs01", "exim01"):
        assert not any("Injected" in c for c in _journal(lab, host))
    assert not (tmp_path / "state" / "state.db").exists()


# Values that pass the load-time checks and still carry every cmd.exe, WQL and LDIF
# metacharacter (and Unicode): each reaches the servers through its own language and
# arrives as data. The canary is a ``reg add`` of HKLM\SOFTWARE\Injected: the lab's
# registry and journals prove no host ran it, and where LCS stores the value it is
# stored exactly as written.
META = '" & reg add HKLM\\SOFTWARE\\Injected /f & " %PATH% ^& | < > ( ) \' ! ; , = Zoë 李 \u202e'
DN_META = ('CN=LC \\"Pool\\" & reg add HKLM\\\\SOFTWARE\\\\Injected /f & %PATH% ^ \\< \\> \\; \\+ \\, ( ) \' ! Zoë 李,'
           'CN=Microsoft,DC=contoso,DC=com')
SIP_META = "sip:o'brien&co)(x*=+$,;?/!~_.-@contoso.com"  # every RFC 3261 user character but %


def _registry_keys(lab: Path, host: str) -> list[str]:
    with sqlite3.connect(lab / "hosts" / host / "host.db") as db:
        return [r[0] for r in db.execute("SELECT path FROM reg_key")]


def _lcs(lab: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(lab / "hosts" / "lcs01" / "lcs.db") as db:
        return db.execute(sql).fetchall()


def _set_var(inv: dict, name: str, value: str) -> None:
    inv["all"]["vars"][name] = value


@pytest.mark.parametrize("field, change, stored", [
    ("display_name", lambda inv, pb, v: inv["users"][sorted(inv["users"])[0]].update(display_name=META), None),
    ("sip_uri", lambda inv, pb, v: inv["users"][sorted(inv["users"])[0]].update(sip_uri=SIP_META),
     ("SELECT primary_uri FROM users", SIP_META)),
    ("lcs_home_server_dn", lambda inv, pb, v: _set_var(inv, "lcs_home_server_dn", DN_META),
     ("SELECT home_server_dn FROM users", DN_META)),
    ("exchange_config_dn", lambda inv, pb, v: _set_var(inv, "exchange_config_dn", DN_META), None),
    ("exchange_im_service", lambda inv, pb, v: _set_var(inv, "exchange_im_service", "MSExchangeIM" + META), None),
    ("messenger_package", lambda inv, pb, v: _set_var(inv, "messenger_package", "\\\\deploy\\packages\\a" + META + ".msi"),
     None),
    ("coexistence_group", lambda inv, pb, v: pb.__setitem__(0, pb[0].replace(
        "coexistence_group: Exchange IM Contacts", "coexistence_group: " + json.dumps(META))),
     ("SELECT name FROM contact_groups", META)),
])
def test_hostile_values_that_pass_the_checks_reach_the_servers_as_data(tmp_path, capsys, field, change, stored):
    lab = tmp_path / "lab"
    generate(lab, clients=2, users_per_client=1, contacts=8, seed=5)
    inv_path = lab / "inventory.yml"
    inv = yaml.safe_load(inv_path.read_text(encoding="utf-8"))
    pb = [(REPO / "playbooks" / "gradual.yml").read_text(encoding="utf-8")]
    change(inv, pb, None)
    inv_path.write_text(yaml.safe_dump(inv, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (tmp_path / "pb.yml").write_text(pb[0], encoding="utf-8")
    assert cli(capsys, "validate", str(tmp_path / "pb.yml"), "-i", str(inv_path))[0] == 0

    code, text = cli(capsys, "apply", str(tmp_path / "pb.yml"), "-i", str(inv_path), "--state", str(tmp_path / "st"))

    assert code in (0, 2), text  # a value the servers cannot use fails its task; it never runs as a command
    for host in (p.name for p in (lab / "hosts").iterdir()):
        assert not [k for k in _registry_keys(lab, host) if "injected" in k.lower()], host
        assert not [c for c in _journal(lab, host) if c.startswith("reg ") and "Injected" in c], host
    if stored is not None:
        sql, value = stored
        assert value in {r[0] for r in _lcs(lab, sql)}, (field, _lcs(lab, sql))
