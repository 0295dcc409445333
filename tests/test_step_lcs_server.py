"""The LCS wmic session against the lab's cmd.exe and wmic: hostile names arrive intact."""
from __future__ import annotations

import json

import pytest

from runner.lcs.contacts import PlannedContact
from runner.lcs.server import LcsServer

lab_generator = pytest.importorskip("runner.lab.generator")
from runner.lab import shell  # noqa: E402
from runner.lab.store import Lab  # noqa: E402

HOSTILE = ['A & B', 'say "hi" | x', '100% %PATH% ^c^', '<t> (x)', 'tail\\', "it's", "Zoë 東京"]


class ShellConnection:
    """A Connection over the lab shell (the real lab connection is H3's)."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab, self.host = lab, host
        self.lines: list[str] = []

    def run(self, command: str, *, timeout: float | None = None):
        self.lines.append(command)
        return shell.execute(self.lab, self.host, command)


@pytest.fixture()
def lcs(tmp_path):
    inv = lab_generator.generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=2, seed=5)
    manifest = json.loads((inv.parent / "manifest.json").read_text(encoding="utf-8"))
    alias, user = next(iter(manifest["users"].items()))
    conn = ShellConnection(Lab(inv.parent), manifest["lcs_server"])
    server = LcsServer(conn, manifest["lcs_server"])
    iid = user["ad_guid"].upper()
    server.enable(iid, "CN=U,DC=contoso,DC=com", manifest["lcs_server_dn"], user["sip_uri"])
    return server, iid, conn


def test_hostile_display_and_group_names_are_stored_exactly(lcs):
    server, iid, conn = lcs
    groups, failures = server.create_groups(iid, ["Friends & Co", 'Q"uote %TEMP%'])
    assert not failures and {g.name for g in groups} == {"Friends & Co", 'Q"uote %TEMP%'}
    planned = [PlannedContact(f"c{i}@im.contoso.com", f"sip:c{i}@contoso.com", n, ('Q"uote %TEMP%',))
               for i, n in enumerate(HOSTILE)]
    created, failed = server.create_contacts(iid, planned, groups)
    assert failed == [] and len(created) == len(HOSTILE)
    state = server.read(iid)
    qid = next(g.id for g in groups if g.name.startswith("Q"))
    assert sorted(c.name for c in state.contacts) == sorted(HOSTILE)
    assert all(c.group_ids == (qid,) for c in state.contacts)


def test_a_user_read_is_one_round_trip(lcs):
    server, iid, conn = lcs
    before = len(conn.lines)
    state = server.read(iid)
    assert len(conn.lines) == before + 1
    assert state.user is not None and state.max_contacts > 0 and state.contacts == []


def test_creating_an_existing_contact_is_reported_as_failed_not_duplicated(lcs):
    server, iid, _ = lcs
    c = PlannedContact("b@im.contoso.com", "sip:b@contoso.com", "B")
    assert server.create_contacts(iid, [c], [])[0] == ["sip:b@contoso.com"]
    assert server.create_contacts(iid, [c], [])[1] == ["sip:b@contoso.com"]
    assert [x.uri for x in server.read(iid).contacts] == ["sip:b@contoso.com"]
