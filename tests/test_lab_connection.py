"""The in-process lab connection: put/get, journal, and seeded faults."""
from __future__ import annotations

import pytest

from lab_fixtures import make_lab
from runner.connections.lab import LabConnection
from runner.errors import ConnectionFault, PermanentFault
from runner.model import Host, Inventory


def conn(lab, name="pc0001"):
    inv = Inventory(path="inv.yml", hosts={}, groups={}, users={}, vars={"lab_dir": str(lab.path)})
    return LabConnection(Host(name), inv, None)


def test_put_get_and_journal(tmp_path):
    lab = make_lab(tmp_path)
    c = conn(lab)
    c.put(b"data", r"C:\Temp\x.txt")
    assert c.get(r"c:\temp\X.TXT") == b"data"
    assert lab.host("pc0001").journal()[-1].program == "put"
    with pytest.raises(PermanentFault):
        c.get(r"C:\Temp\missing.txt")
    assert c.run("echo hi").stdout == "hi\r\n"


def test_down_host_is_unreachable_on_every_call(tmp_path):
    lab = make_lab(tmp_path, faults={"seed": 1, "hosts": {"pc0001": {"down": 1.0}}})
    c = conn(lab)
    for _ in range(3):
        with pytest.raises(ConnectionFault):
            c.run("echo hi")
    assert conn(lab, "exim01").run("echo ok").rc == 0


def test_drop_happens_after_the_command_ran(tmp_path):
    lab = make_lab(tmp_path, faults={"seed": 1, "global": {"drop": 1.0}})
    with pytest.raises(ConnectionFault):
        conn(lab).run(r"reg add HKLM\SOFTWARE\Dropped /v a /d 1 /f")
    assert lab.host("pc0001").registry.key_exists(r"HKLM\SOFTWARE\Dropped")


def _pattern(tmp_path, sub):
    lab = make_lab(tmp_path / sub, faults={"seed": 42, "global": {"timeout": 0.5}})
    c = conn(lab)
    out = []
    for _ in range(20):
        try:
            c.run("echo x")
            out.append(0)
        except ConnectionFault:
            out.append(1)
    return out


def test_faults_are_deterministic_for_a_seed(tmp_path):
    a, b = _pattern(tmp_path, "a"), _pattern(tmp_path, "b")
    assert a == b and 0 < sum(a) < 20
