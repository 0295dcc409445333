"""SFTP paths for the SSH servers a 2005 estate runs: Win32-OpenSSH's /C:/... and Cygwin's (copSSH's) /cygdrive/c/..."""
from __future__ import annotations

import pytest

from runner.connections.ssh import SSHConnection, windows_to_sftp_path
from runner.errors import PermanentFault
from runner.model import Host


def test_cygwin_sftp_server_paths_are_cygdrive_paths() -> None:
    assert windows_to_sftp_path(r"C:\WINNT\Temp\a b.reg", "cygwin") == "/cygdrive/c/WINNT/Temp/a b.reg"
    assert windows_to_sftp_path("D:/x", "cygwin") == "/cygdrive/d/x"
    assert windows_to_sftp_path(r"C:\Temp\x", "win32-openssh") == "/C:/Temp/x"
    with pytest.raises(PermanentFault, match="UNC"):
        windows_to_sftp_path(r"\\deploy\packages\x.msi", "cygwin")


def test_an_unknown_sftp_path_style_is_refused_naming_the_variable() -> None:
    host = Host(name="pc0001", connection="ssh", vars={"ssh_sftp_paths": "msys"})
    with pytest.raises(PermanentFault, match="ssh_sftp_paths"):
        SSHConnection(host, None, None)
