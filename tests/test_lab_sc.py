"""sc.exe (learn.microsoft.com windows-commands sc-query, sc-config): output blocks and Win32 exit codes."""
from __future__ import annotations

from lab_fixtures import make_lab
from runner.lab.shell import execute


def test_query_stop_and_stop_again_is_1062(tmp_path):
    lab = make_lab(tmp_path)
    r = execute(lab, "exim01", "sc query RTCSrv")
    assert r.rc == 0 and "STATE              : 4  RUNNING" in r.stdout
    assert execute(lab, "exim01", "sc stop RTCSrv").rc == 0
    r = execute(lab, "exim01", "sc stop RTCSrv")
    assert (r.rc, r.stdout) == (1062, "[SC] ControlService FAILED 1062:\r\n\r\nThe service has not been started.\r\n\r\n")


def test_config_start_needs_a_space_after_the_equal_sign(tmp_path):
    lab = make_lab(tmp_path)
    assert execute(lab, "exim01", "sc config RTCSrv start=disabled").rc == 1639
    r = execute(lab, "exim01", "sc config RTCSrv start= disabled")
    assert (r.rc, r.stdout) == (0, "[SC] ChangeServiceConfig SUCCESS\r\n")
    assert "START_TYPE         : 4   DISABLED" in execute(lab, "exim01", "sc qc RTCSrv").stdout


def test_unknown_service_is_1060(tmp_path):
    lab = make_lab(tmp_path)
    assert execute(lab, "exim01", "sc query Nope").rc == 1060
