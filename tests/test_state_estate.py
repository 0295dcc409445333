"""A state directory serves one estate (issue 8, item 1; docs/state-directory.md).

Two labs migrated with the same ``--state``: the second is refused before
anything runs, and neither lab ever gets the other's contacts, as the labs
themselves say (``runner lab verify``, the lab's lcs.db). An estate is what the
inventory describes, not where its file is: a moved inventory, lab or
repository resumes its run. Users are found by AD GUID, not alias.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from cli_support import cli
from runner.apply import inventory_estate
from runner.errors import StateEstateError
from runner.estate import Estate, subjects
from runner.events import TaskOutcome
from runner.lab.generator import generate, generate_from_inventory
from runner.lab.serve import write_ssh_inventory
from runner.lab.store import lab_identity
from runner.loader import load_inventory
from runner.state import StateStore

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")


@pytest.fixture(autouse=True)
def _short_backoffs(monkeypatch):
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0.001")


def _lcs_users(lab: Path) -> int:
    db = sqlite3.connect(lab / "hosts" / "lcs01" / "lcs.db")
    try:
        return db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
    finally:
        db.close()


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@pytest.mark.slow
def test_a_second_estate_is_refused_and_no_lab_gets_another_labs_contacts(tmp_path, capsys):
    # Seeds chosen so that the two labs share an alias whose person uses other machines
    # (sbrown): the case where the old store imported lab C's list into lab A.
    lab_a, lab_c, state = tmp_path / "labA", tmp_path / "labC", tmp_path / "st"
    assert cli(capsys, "lab", "init", "--dir", str(lab_a), "--clients", "6", "--seed", "1")[0] == 0
    assert cli(capsys, "lab", "init", "--dir", str(lab_c), "--clients", "20", "--seed", "6")[0] == 0
    inv_a, inv_c = str(lab_a / "inventory.yml"), str(lab_c / "inventory.yml")
    code, out = cli(capsys, "apply", GRADUAL, "-i", inv_a, "--state", str(state))
    assert code == 0, out

    code, out = cli(capsys, "apply", GRADUAL, "-i", inv_c, "--state", str(state))
    assert code == 1, out
    assert "belongs to another estate" in out and "--state DIR" in out
    assert inv_a in out and inv_c in out and "a different lab" in out
    assert _lcs_users(lab_c) == 0  # refused before anything ran: nobody enabled on lab C's pool

    code, out = cli(capsys, "apply", GRADUAL, "-i", inv_a, "--state", str(state), "--fresh")
    assert code == 0, out
    code, out = cli(capsys, "lab", "verify", "--dir", str(lab_a))
    assert code == 0, out
    assert "10/10 users as expected" in out

    code, out = cli(capsys, "apply", GRADUAL, "-i", inv_c, "--state", str(tmp_path / "st-c"))
    assert code == 0, out
    code, out = cli(capsys, "lab", "verify", "--dir", str(lab_c))
    assert code == 0, out


def test_check_mode_refuses_another_estate_too(tmp_path, capsys):
    inv_a = generate(tmp_path / "labA", clients=1, users_per_client=1, contacts=2, seed=1)
    inv_b = generate(tmp_path / "labB", clients=1, users_per_client=1, contacts=2, seed=2)
    state = str(tmp_path / "st")
    assert cli(capsys, "apply", GRADUAL, "-i", str(inv_a), "--state", state, "--tags", "inventory")[0] == 0
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(inv_b), "--state", state, "--check")
    assert code == 1 and "belongs to another estate" in out


def test_a_moved_lab_and_playbook_resume_the_same_run(tmp_path, capsys):
    inv = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=3, seed=3)
    state = str(tmp_path / "st")
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", state)
    assert code == 0, out
    # the administrator reorganises: the lab (with its inventory) and the repository move
    shutil.move(str(tmp_path / "lab"), str(tmp_path / "moved-lab"))
    (tmp_path / "repo2" / "playbooks").mkdir(parents=True)
    playbook = tmp_path / "repo2" / "playbooks" / "gradual.yml"
    shutil.copy(GRADUAL, playbook)
    code, out = cli(capsys, "apply", str(playbook), "-i", str(tmp_path / "moved-lab" / "inventory.yml"),
                    "--state", state, "--json")
    assert code == 0, out
    events = _events(out)
    start = next(e for e in events if e.get("event") == "run_start")
    assert start["resumed"] is True
    skipped = [e for e in events if e.get("event") == "task" and e.get("resumed")]
    assert skipped, "tasks finished before the move must be skipped, not run again"
    code, out = cli(capsys, "status", "--state", state, "--json")
    info = json.loads(out)
    assert len(info["runs"]) == 1 and info["runs"][0]["sessions"] == 2
    assert info["runs"][0]["inventory"] == str((tmp_path / "moved-lab" / "inventory.yml").resolve())
    code, out = cli(capsys, "lab", "verify", "--dir", str(tmp_path / "moved-lab"))
    assert code == 0, out


def test_a_lab_served_over_ssh_is_the_lab_and_a_rehearsal_lab_is_not_its_source(tmp_path):
    inv = load_inventory(generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=1, seed=4))
    lab = inventory_estate(inv)
    assert lab.lab == lab_identity(tmp_path / "lab") and lab.domain == "contoso.com"
    assert lab.exchange_im_servers == ("exim01",) and lab.lcs_servers == ("lcs01",)
    server = SimpleNamespace(lab_dir=tmp_path / "lab", client_key=tmp_path / "key", known_hosts=tmp_path / "kh",
                             addresses={"pc0001": "127.10.0.1", "exim01": "127.0.1.1", "lcs01": "127.0.2.1"},
                             port=2222, inventory_out=tmp_path / "lab" / "ssh" / "inventory.yml")
    served = inventory_estate(load_inventory(write_ssh_inventory(server)))
    assert served.lab == lab.lab and lab.conflict(served) is None
    assert lab.conflict(Estate(**{**lab.__dict__, "lab": None})) == "one is a lab, the other is not"
    source = REPO / "inventories" / "example-ssh.yml"
    real = inventory_estate(load_inventory(source))
    rehearsal = inventory_estate(load_inventory(generate_from_inventory(tmp_path / "rehearsal", source)))
    assert rehearsal.conflict(real) is not None and real.conflict(real) is None


def test_an_estate_that_grows_is_still_itself():
    night1 = Estate(domain="contoso.com", pools=("cn=lcs01",), exchange_im_servers=("exim01",),
                    lcs_servers=("lcs01",))
    night2 = Estate(domain="contoso.com", pools=("cn=lcs01", "cn=lcs02"),
                    exchange_im_servers=("exim01", "exim02"), lcs_servers=("lcs01", "lcs02"))
    other = Estate(domain="fabrikam.com", pools=("cn=lcs01",), exchange_im_servers=("exim01",),
                   lcs_servers=("lcs01",))
    assert night1.conflict(night2) is None
    assert night1.conflict(other) == "a different AD domain"


def _verified(store: StateStore, run_id: str, alias: str) -> None:
    store.record_task(run_id, TaskOutcome(key=f"verify/{alias}", play_index=0, step="Verify",
                                          module="verify_contacts", kind="user", target=alias,
                                          status="ok", ended=1.0, data={"verified": True}))
    store.flush()


def test_users_are_known_by_ad_guid_not_alias(tmp_path):
    inv = load_inventory(generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=1, seed=5))
    estate = inventory_estate(inv)
    alias = next(iter(inv.users))
    guid = subjects(inv)[alias]
    with StateStore(tmp_path / "st") as store:
        store.bind_estate(estate, {alias: guid})
        run = store.start_run(GRADUAL, inv.path, command="c")
        _verified(store, run.id, alias)
    # the same person renamed: their history follows them; someone new under the old alias: none
    with StateStore(tmp_path / "st") as store:
        store.bind_estate(estate, {"renamed": guid, alias: "guid:00000000-0000-0000-0000-000000000001"})
        assert [r.data["verified"] for r in store.previous("verify_contacts", "renamed")] == [True]
        assert store.previous("verify_contacts", alias) == []


def _downgrade_to_schema_1(db_path: Path) -> None:
    """Make a store look as the runner before estates wrote it (no meta, no subject)."""
    db = sqlite3.connect(db_path)
    try:
        db.execute("DROP INDEX IF EXISTS tasks_module_subject")
        db.execute("ALTER TABLE tasks DROP COLUMN subject")
        db.execute("DROP TABLE meta")
        db.execute("UPDATE runs SET identity='old-path-identity'")
        db.commit()
    finally:
        db.close()


def test_an_old_store_of_one_estate_is_adopted_and_resumes(tmp_path, capsys):
    inv = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=6)
    state = tmp_path / "st"
    assert cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(state))[0] == 0
    _downgrade_to_schema_1(state / "state.db")
    code, out = cli(capsys, "status", "--state", str(state))
    assert code == 0 and "run " in out
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(state), "--check")
    assert code == 0, out  # read-only: the old store is checked, not converted
    with StateStore(state, create=False) as store:
        assert store.schema == 1
    code, out = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(state), "--json")
    assert code == 0, out
    events = _events(out)
    assert next(e for e in events if e.get("event") == "run_start")["resumed"] is True
    tasks = [e for e in events if e.get("event") == "task"]
    assert tasks and all(t["status"] == "skipped" for t in tasks)
    with StateStore(state, create=False) as store:
        assert store.estate() is not None and store.schema == 2


def test_an_old_store_holding_two_estates_is_refused(tmp_path, capsys):
    inv_a = generate(tmp_path / "labA", clients=1, users_per_client=1, contacts=1, seed=7)
    inv_b = generate(tmp_path / "labB", clients=1, users_per_client=1, contacts=1, seed=8)
    state = tmp_path / "st"
    assert cli(capsys, "apply", GRADUAL, "-i", str(inv_a), "--state", str(state), "--tags", "inventory")[0] == 0
    _downgrade_to_schema_1(state / "state.db")
    db = sqlite3.connect(state / "state.db")
    db.execute("INSERT INTO runs(id, identity, playbook, inventory, started, status) VALUES (?,?,?,?,?,?)",
               ("old-b", "x", GRADUAL, str(inv_b.resolve()), 2.0, "ok"))
    db.commit()
    db.close()
    for inv in (inv_a, inv_b):
        code, out = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(state))
        assert code == 1 and "holds runs of several" in out and "--state DIR" in out


def test_refusal_is_a_state_estate_error_naming_both(tmp_path):
    a = Estate(domain="contoso.com", lab="aaa")
    b = Estate(domain="contoso.com", lab="bbb")
    with StateStore(tmp_path) as store:
        store.bind_estate(a, {})
        store.start_run("pb.yml", "a.yml", command="c")
        with pytest.raises(StateEstateError) as err:
            store.bind_estate(b, {}, inventory="b.yml")
    assert "lab aaa" in str(err.value) and "lab bbb" in str(err.value) and "b.yml" in str(err.value)
