"""msiexec exit codes (learn.microsoft.com "MsiExec.exe and InstMsi.exe Error Messages"):
0 ok, 3010 reboot required, 1618 another install in progress, 1603 fatal, 1619 cannot open."""
from __future__ import annotations

from lab_fixtures import make_lab
from runner.lab.binaries import messenger51_msi
from runner.lab.shell import execute

CMD = r"msiexec /i \\deploy\packages\WindowsMessenger51.msi /qn /norestart /l*v C:\Temp\m.log"
UNINSTALL = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall"


def test_install_sets_file_version_uninstall_key_and_log(tmp_path):
    lab = make_lab(tmp_path)
    h = lab.host("pc0001")
    assert h.fs.file_version(r"C:\Program Files\Messenger\msmsgs.exe") == "4.7.3001"
    assert execute(lab, "pc0001", CMD).rc == 0
    assert h.fs.file_version(r"C:\Program Files\Messenger\msmsgs.exe") == "5.1.0715"
    assert "DisplayVersion\tREG_SZ\t5.1.0715" in execute(lab, "pc0001", f"reg query {UNINSTALL} /s").stdout
    assert "Installation success or error status: 0." in h.fs.read(r"C:\Temp\m.log").decode()
    assert h.journal()[-1].program == "msiexec"


def test_missing_package_is_1619(tmp_path):
    lab = make_lab(tmp_path)
    assert execute(lab, "pc0001", r"msiexec /i \\deploy\packages\nope.msi /qn").rc == 1619


def test_broken_package_is_1603(tmp_path):
    lab = make_lab(tmp_path)
    lab.host("pc0001").fs.write(r"\\deploy\packages\WindowsMessenger51.msi", messenger51_msi(broken=True))
    assert execute(lab, "pc0001", CMD).rc == 1603


def test_running_messenger_needs_a_reboot_3010(tmp_path):
    lab = make_lab(tmp_path)
    lab.host("pc0001").start_process("msmsgs.exe")
    assert execute(lab, "pc0001", CMD).rc == 3010


def test_fault_1618_is_returned_when_configured(tmp_path):
    lab = make_lab(tmp_path, faults={"seed": 3, "global": {"msiexec_1618": 1.0}})
    assert execute(lab, "pc0001", CMD).rc == 1618
