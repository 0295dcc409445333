"""Values from an inventory are data in every language they enter (issue 9: injection).

The reproduction: an inventory user's ``ad_guid`` holding ``" & reg add ... & "``
went into a WQL ``where`` clause unescaped and cmd.exe ran the ``reg add`` on
the LCS server. Identifiers now have formats checked at load, so such a value
stops the run before any host is touched; the lab's journals prove it.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

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
