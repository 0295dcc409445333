"""An sshd offering only the key exchanges of 2005 (SHA-1), as Cygwin's OpenSSH of that era does.

The runner's paramiko either speaks them (paramiko before 5) and reads the client, or the
handshake failure says why and what to install, instead of a bare "Incompatible peer".
"""
from __future__ import annotations

import os
from pathlib import Path

import paramiko
import pytest

from runner.connections.ssh import LEGACY_KEX, SSHConnection
from runner.errors import ConnectionFault
from runner.lab.generator import generate

pytestmark = pytest.mark.ssh


def test_a_2005_key_exchange_only_sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    import ssh_helpers
    from runner.lab.serve import LabServer

    class Legacy(LabServer):
        def _sshd_config(self) -> str:
            return super()._sshd_config() + "KexAlgorithms " + ",".join(LEGACY_KEX[:2]) + "\n"

    generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=1, seed=2)
    monkeypatch.setattr(ssh_helpers, "LabServer", Legacy)   # serve() picks the port, as for the others
    server = ssh_helpers.serve(tmp_path / "lab", fake_shell=False)
    try:
        conn = SSHConnection(ssh_helpers.ssh_host(server, "pc0001"))
        speaks = any(k in getattr(paramiko.Transport, "_kex_info", {}) for k in LEGACY_KEX[:2])
        try:
            if speaks:
                assert conn.run("ver").ok
            else:
                with pytest.raises(ConnectionFault) as exc:
                    conn.run("ver")
                msg = str(exc.value)
                assert "IncompatiblePeer" in msg and "no SHA-1 key exchange" in msg
                assert "paramiko 3.x" in msg and "docs/transports.md" in msg
        finally:
            conn.close()
    finally:
        server.stop()
