"""Specification of runner.windows.msiexec (builder, exit codes) and runner.windows.sc
(builders, ``sc query``/``sc qc`` parsing). Output samples follow the layout of the
Microsoft "sc.exe query" and "sc.exe qc" references (learn.microsoft.com/windows-server/
administration/windows-commands/sc-query, sc-qc); exit codes follow the Windows Installer
error code table (learn.microsoft.com/windows/win32/msi/error-codes)."""
from __future__ import annotations

import pytest

from runner.windows import msiexec, sc

SC_QUERY_RUNNING = (
    "\r\nSERVICE_NAME: RTVSRVR\r\n"
    "        TYPE               : 10  WIN32_OWN_PROCESS\r\n"
    "        STATE              : 4  RUNNING\r\n"
    "                                (STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)\r\n"
    "        WIN32_EXIT_CODE    : 0  (0x0)\r\n"
    "        SERVICE_EXIT_CODE  : 0  (0x0)\r\n"
    "        CHECKPOINT         : 0x0\r\n"
    "        WAIT_HINT          : 0x0\r\n")

SC_QC = (
    "[SC] QueryServiceConfig SUCCESS\r\n\r\n"
    "SERVICE_NAME: RTVSRVR\r\n"
    "        TYPE               : 10  WIN32_OWN_PROCESS\r\n"
    "        START_TYPE         : 4   DISABLED\r\n"
    "        ERROR_CONTROL      : 1   NORMAL\r\n"
    "        BINARY_PATH_NAME   : C:\\Program Files\\Exchsrvr\\bin\\mad.exe\r\n"
    "        LOAD_ORDER_GROUP   :\r\n"
    "        TAG                : 0\r\n"
    "        DISPLAY_NAME       : Microsoft Exchange Instant Messaging\r\n"
    "        DEPENDENCIES       : IISADMIN\r\n"
    "                           : RpcSs\r\n"
    "        SERVICE_START_NAME : LocalSystem\r\n")


@pytest.mark.parametrize("rc, outcome, succeeded, reboot", [
    (0, msiexec.MsiOutcome.OK, True, False),
    (3010, msiexec.MsiOutcome.REBOOT_REQUIRED, True, True),
    (1641, msiexec.MsiOutcome.REBOOT_STARTED, True, True),
    (1618, msiexec.MsiOutcome.TRANSIENT, False, False),
    (1603, msiexec.MsiOutcome.PERMANENT, False, False),
    (1619, msiexec.MsiOutcome.PERMANENT, False, False),
    (1, msiexec.MsiOutcome.PERMANENT, False, False),
])
def test_msiexec_exit_codes_are_classified(rc: int, outcome: msiexec.MsiOutcome, succeeded: bool, reboot: bool) -> None:
    r = msiexec.classify(rc)
    assert (r.outcome, r.succeeded, r.reboot_required) == (outcome, succeeded, reboot)
    assert r.message


def test_msiexec_install_command_is_quiet_without_restart_and_logged() -> None:
    cmd = msiexec.install("\\\\deploy\\packages\\WindowsMessenger51.msi")
    assert cmd.render() == ("msiexec /i \\\\deploy\\packages\\WindowsMessenger51.msi /qn /norestart "
                            "/l*v C:\\Windows\\Temp\\runner-wm51.log")
    spaced = msiexec.install("\\\\deploy\\My Packages\\wm 5.1.msi", log=None)
    assert spaced.render() == 'msiexec /i "\\\\deploy\\My Packages\\wm 5.1.msi" /qn /norestart'


def test_sc_query_state_line_and_flags_are_parsed() -> None:
    info = sc.parse_one(SC_QUERY_RUNNING)
    assert info is not None and info.name == "RTVSRVR"
    assert (info.state, info.state_code) == ("RUNNING", 4)
    assert info.flags == ["STOPPABLE", "NOT_PAUSABLE", "ACCEPTS_SHUTDOWN"]
    assert info.fields["WIN32_EXIT_CODE"] == "0  (0x0)"


def test_sc_qc_start_type_display_name_and_dependencies_are_parsed() -> None:
    info = sc.parse_one(SC_QC)
    assert info is not None
    assert info.start_type == "DISABLED"
    assert info.display_name == "Microsoft Exchange Instant Messaging"
    assert info.fields["DEPENDENCIES"] == "IISADMIN RpcSs"
    assert info.fields["LOAD_ORDER_GROUP"] == ""


def test_sc_missing_service_output_has_no_service() -> None:
    out = "[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\r\n\r\nThe specified service does not exist as an installed service.\r\n\r\n"
    assert sc.parse_one(out) is None


def test_sc_builders() -> None:
    assert sc.query("RTVSRVR").render() == "sc query RTVSRVR"
    assert sc.config_start("RTVSRVR", "disabled").render() == "sc config RTVSRVR start= disabled"
    assert sc.stop("My Service").render() == 'sc stop "My Service"'
    with pytest.raises(ValueError):
        sc.config_start("x", "sometimes")
