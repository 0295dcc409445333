"""Scratch .ldf files a killed run left on the Exchange IM server are removed by the next run
(issue 8, item 7): the runner is killed right after an LDIF file landed on exim01 (put, or
fed with its line and written by the line's findstr) and before the import that deletes it,
then resumed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.store import Lab
from scenario_support import PLAYBOOKS, make_scenario

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

KILL_AFTER_PUT = """
import os, sys
from runner.connections import lab as labconn
del labconn.LabConnection.run_input   # a connection that can only put, then run
put = labconn.LabConnection.put
def killing_put(self, data, path):
    put(self, data, path)
    if path.lower().endswith(".ldf") and self.host == "exim01":
        os._exit(77)   # as SIGKILL: no cleanup, no checkpoint
labconn.LabConnection.put = killing_put
from runner.cli import run
sys.exit(run(sys.argv[1:]))
"""

# the LDIF file fed with its line: the line's findstr has written it, and the session dies there
KILL_AFTER_FEED = """
import os, re, sys
from runner.connections import lab as labconn
fed = labconn.LabConnection.run_input
def killing_feed(self, command, data, *, timeout=None):
    m = re.match(r'findstr /r /c:"\\^" > ("?)([^"&]+?)\\1 &', command)
    if m and m.group(2).lower().endswith(".ldf") and self.host == "exim01":
        self.lab_host.fs.write(m.group(2).strip(), data)
        os._exit(77)   # as SIGKILL: no cleanup, no checkpoint
    return fed(self, command, data, timeout=timeout)
labconn.LabConnection.run_input = killing_feed
from runner.cli import run
sys.exit(run(sys.argv[1:]))
"""


def _ldf_files(lab_dir: Path, host: str) -> list[str]:
    lab_host = Lab(lab_dir).host(host)
    fs = lab_host.fs
    temp = lab_host.windows.system_root + r"\Temp"   # C:\WINNT\Temp on the Windows 2000 exim01
    return [n for n in (fs.listdir(temp) if fs.exists(temp) else []) if n.lower().endswith(".ldf")]


@pytest.mark.parametrize("inject", [KILL_AFTER_PUT, KILL_AFTER_FEED], ids=["put", "fed"])
def test_a_kill_between_the_put_and_the_import_leaves_no_ldf_file_after_the_resume(tmp_path, inject):
    sc = make_scenario(tmp_path, "immediate.yml", seed=6, clients=4, users_per_client=1, contacts=3)
    args = ["apply", str(PLAYBOOKS / "immediate.yml"), "-i", str(sc.inventory), "--state", str(sc.state),
            "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RUNNER_RETRY_DELAY_SCALE="0.001")
    killed = subprocess.run([sys.executable, "-c", inject, *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 77, killed.stdout[-2000:] + killed.stderr[-2000:]
    left = _ldf_files(sc.lab_dir, "exim01")
    assert left and all(n.startswith("runner-") for n in left), left
    resumed = sc.apply()
    assert resumed.code == 0, resumed.out[-3000:]
    assert _ldf_files(sc.lab_dir, "exim01") == []
    assert _ldf_files(sc.lab_dir, "lcs01") == []
