"""A damaged checkpoint store is refused, never re-created over (issue 8, item 6).

A state.db cut to 0 bytes, missing a table, deleted, or that lost its last
commits with its -wal file, next to ``artifacts/`` that still holds the
exports: ``runner apply``, ``status`` and ``report`` exit 1 saying what to do,
and leave the store as it is for whoever restores it. A row whose JSON cannot
be decoded is named by ``status`` and ``report`` (exit 1) instead of a crash.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_support import cli
from runner.cli import run
from runner.lab.generator import generate

REPO = Path(__file__).resolve().parent.parent
GRADUAL = str(REPO / "playbooks" / "gradual.yml")
COMMANDS = ["apply", "status", "report"]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> tuple[Path, Path]:
    """A small lab migrated once: its inventory and a state directory with artifacts."""
    base = tmp_path_factory.mktemp("migrated")
    inv = generate(base / "lab", clients=2, users_per_client=1, contacts=3, seed=2)
    os.environ.setdefault("RUNNER_RETRY_DELAY_SCALE", "0.001")
    assert run(["apply", GRADUAL, "-i", str(inv), "--state", str(base / "st")]) == 0
    assert any((base / "st" / "artifacts").rglob("*.json"))
    return inv, base / "st"


def _copy(migrated: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    inv, state = migrated
    shutil.copytree(state, tmp_path / "st")
    return inv, tmp_path / "st"


def _run(capsys, command: str, inv: Path, state: Path) -> tuple[int, str]:
    if command == "apply":
        return cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(state))
    return cli(capsys, command, "--state", str(state))


@pytest.mark.parametrize("command", COMMANDS)
def test_a_state_db_cut_to_zero_bytes_is_refused_and_left_as_it_is(migrated, tmp_path, capsys, command):
    inv, state = _copy(migrated, tmp_path)
    (state / "state.db").write_bytes(b"")
    for side in ("state.db-wal", "state.db-shm"):
        (state / side).unlink(missing_ok=True)
    code, text = _run(capsys, command, inv, state)
    assert code == 1, text
    assert "state.db is not a checkpoint store: it is empty" in text
    assert "artifacts holds" in text and "--state DIR" in text and "backup" in text
    assert (state / "state.db").stat().st_size == 0  # never re-created over


@pytest.mark.parametrize("command", COMMANDS)
def test_a_dropped_table_is_refused_not_recreated(migrated, tmp_path, capsys, command):
    inv, state = _copy(migrated, tmp_path)
    db = sqlite3.connect(state / "state.db")
    db.execute("DROP TABLE tasks")
    db.commit()
    db.close()
    code, text = _run(capsys, command, inv, state)
    assert code == 1, text
    assert "is damaged: table(s) tasks missing" in text and "--state DIR" in text
    db = sqlite3.connect(state / "state.db")
    try:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='tasks'").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_deleted_state_db_beside_artifacts_is_refused(migrated, tmp_path, capsys, command):
    inv, state = _copy(migrated, tmp_path)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    code, text = _run(capsys, command, inv, state)
    assert code == 1, text
    assert "state.db is missing, but" in text and "exported file(s)" in text
    assert not (state / "state.db").exists()


@pytest.mark.slow
def test_a_lost_wal_then_a_kill_is_refused_not_taken_for_a_new_store(tmp_path, capsys):
    inv = generate(tmp_path / "lab", clients=6, users_per_client=2, contacts=10, seed=3)
    state = tmp_path / "st"
    env = {**os.environ, "RUNNER_RETRY_DELAY_SCALE": "0.001"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "apply", GRADUAL, "-i", str(inv),
                             "--state", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not any((state / "artifacts").rglob("merged.*.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run finished before an export was written"
            time.sleep(0.05)
        (state / "state.db-wal").unlink()  # an administrator "cleaning up" the store
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any((state / "artifacts").rglob("*.json"))
    for command in COMMANDS:
        code, text = _run(capsys, command, inv, state)
        assert code == 1, text
        assert "records no run" in text and "exported file(s)" in text


def _garble(state: Path) -> tuple[str, str]:
    db = sqlite3.connect(state / "state.db")
    try:
        run_id, key = db.execute("SELECT run_id, key FROM tasks WHERE module='export_contacts' AND"
                                 " status='changed' ORDER BY rowid LIMIT 1").fetchone()
        db.execute("UPDATE tasks SET result='{\"data\": {trunc' WHERE run_id=? AND key=?", (run_id, key))
        host = db.execute("SELECT host FROM facts ORDER BY host LIMIT 1").fetchone()[0]
        db.execute("UPDATE facts SET data=CAST(X'80FF7B' AS TEXT) WHERE host=?", (host,))
        db.commit()
    finally:
        db.close()
    return key, host


def test_status_names_undecodable_rows_instead_of_crashing(migrated, tmp_path, capsys):
    inv, state = _copy(migrated, tmp_path)
    key, host = _garble(state)
    code, text = cli(capsys, "status", "--state", str(state))
    assert code == 1, text
    assert f"key={key!r}) column result cannot be decoded" in text
    assert f"facts(host={host!r}) column data cannot be decoded" in text
    assert "run " in text and "facts:" in text  # the rest is still shown
    code, text = cli(capsys, "status", "--state", str(state), "--json")
    assert code == 1 and '"damaged"' in text


def test_report_names_undecodable_rows_instead_of_crashing(migrated, tmp_path, capsys):
    inv, state = _copy(migrated, tmp_path)
    key, _host = _garble(state)
    code, text = cli(capsys, "report", "--state", str(state))
    assert code == 1, text
    assert f"key={key!r}) column result cannot be decoded" in text
    assert "the store's record of this task is damaged" in text


def test_a_new_state_directory_is_still_created(tmp_path, capsys):
    inv = generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=1, seed=4)
    code, text = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(tmp_path / "new" / "st"),
                     "--tags", "inventory")
    assert code == 0, text
    assert not [p for p in (tmp_path / "new" / "st").iterdir() if p.name.startswith(".state.db")]
    code, text = cli(capsys, "status", "--state", str(tmp_path / "new" / "st"))
    assert code == 0 and "estate: contoso.com" in text


def test_a_step_that_needs_a_damaged_record_fails_naming_it(migrated, tmp_path, capsys):
    inv, state = _copy(migrated, tmp_path)
    key, host = _garble(state)
    code, text = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(state), "--fresh")
    assert code == 2, text
    # The export reads both damaged rows (the user's outcome, the machine's facts for its
    # command-line limit): it fails naming whichever it meets first, and points at status.
    assert (f"key={key!r}) column result cannot be decoded" in text
            or f"facts(host={host!r}) column data cannot be decoded" in text), text
    assert "failed: [" in text and "runner status" in text


def test_a_lock_that_is_a_directory_is_an_error_naming_it(tmp_path, capsys):
    inv = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=5)
    (tmp_path / "st" / "lock").mkdir(parents=True)
    code, text = cli(capsys, "apply", GRADUAL, "-i", str(inv), "--state", str(tmp_path / "st"))
    assert code == 1 and f"the lock {tmp_path / 'st' / 'lock'} cannot be used: " in text, text
    assert "a directory" in text.lower(), text
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["lock"], "a refused run writes nothing"


def test_a_state_db_that_is_a_directory_says_so(tmp_path, capsys):
    inv = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=5)
    (tmp_path / "st" / "state.db").mkdir(parents=True)
    for args in (["apply", GRADUAL, "-i", str(inv)], ["status"], ["report"]):
        code, text = cli(capsys, *args, "--state", str(tmp_path / "st"))
        assert code == 1 and "state.db is a directory, not a checkpoint store" in text, (args, text)
