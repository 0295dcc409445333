"""The lab's LCS store held by another process (``BEGIN EXCLUSIVE`` on lcs.db, as a backup or a
stuck writer would): the pool server is busy, not broken. wmic says WBEM_E_SERVER_TOO_BUSY,
the runner retries the users it concerns, and when the retries run out each fails saying the
LCS server was busy; once the store is free the same command finishes the migration."""
from __future__ import annotations

import subprocess
import sys

import pytest

from runner.lab.shell import execute
from runner.lab.store import Lab
from scenario_support import make_scenario

pytestmark = pytest.mark.slow

HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()      # until the test closes our stdin
db.execute("ROLLBACK")
"""


def _hold(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_a_locked_pool_store_is_a_busy_server_retried_then_a_clear_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_LAB_LCS_BUSY_MS", "50")
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0.001")
    sc = make_scenario(tmp_path, "immediate.yml", seed=4, clients=3, users_per_client=1, contacts=3)
    holder = _hold(sc.lab_dir / "hosts" / "lcs01" / "lcs.db")
    try:
        res = execute(Lab(sc.lab_dir), "lcs01", 'wmic path MSFT_SIPESUserSetting create InstanceID="{0}",'
                      'UserDN="CN=x",HomeServerDN="CN=y",PrimaryURI="sip:x@y.com",Enabled=TRUE')
        assert res.rc != 0 and "0x80041045" in res.stderr, res
        run = sc.apply()
    finally:
        _release(holder)
    enables = [t for t in run.tasks if t["module"] == "enable_lcs_users"]
    assert enables and all(t["status"] == "failed" for t in enables), run.out[-3000:]
    for t in enables:
        assert "0x80041045" in t["message"] and "OperationalError" not in t["message"], t["message"]
        assert t["attempts"] == 4   # retried: the default 3 retries
    assert run.code == 2 and "Traceback" not in run.out
    again = sc.apply()
    assert again.code == 0, again.out[-3000:]
