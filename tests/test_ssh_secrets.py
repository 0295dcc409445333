"""No password or key passphrase ever reaches output, events, artifacts, the state store or the lab.

`runner apply playbooks/gradual.yml` runs over real SSH against a served lab,
once logging in with a passphrase-protected key and once with a password,
in human (-vvv) and JSON output, succeeding and failing (wrong passphrase,
wrong password: AuthenticationFault, exit 3). Then every byte the runs left
behind is searched for the secrets, as UTF-8 and as UTF-16LE.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.generator import generate

from ssh_helpers import password_account, serve, write_inventory

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _needles(*values: str) -> list[bytes]:
    return [form for v in values for form in (v.encode("utf-8"), v.encode("utf-16-le"))]


def assert_nothing_leaked(values: list[str], outputs: list[bytes], dirs: list[Path]) -> int:
    """Fail naming the place where any of ``values`` appears; returns how many files were searched."""
    needles = _needles(*values)
    for i, out in enumerate(outputs):
        for needle in needles:
            assert needle not in out, f"a secret appears in output #{i}"
    searched = 0
    for d in dirs:
        for path in sorted(d.rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                searched += 1
                for needle in needles:
                    assert needle not in data, f"a secret appears in {path}"
    return searched


class Runs:
    """Runs `runner apply` over SSH, keeping every output and every directory written."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.crash_dir = tmp_path / "tmpdir"     # TMPDIR of the runs: crash reports land here
        self.crash_dir.mkdir()
        self.outputs: list[bytes] = []
        self.states: list[Path] = []

    def apply(self, inventory: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
        state = self.tmp / f"state{len(self.states)}"
        self.states.append(state)
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "apply", "playbooks/gradual.yml", "-i", str(inventory),
             "--state", str(state), *flags],
            cwd=REPO, capture_output=True, timeout=600,
            env={**os.environ, "TMPDIR": str(self.crash_dir), **env})
        self.outputs += [proc.stdout, proc.stderr]
        return proc


def _lab(tmp_path: Path) -> Path:
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server)")
    lab = tmp_path / "lab"
    generate(lab, clients=2, users_per_client=1, contacts=3, seed=11)
    return lab


def assert_refused_once(proc: subprocess.CompletedProcess, reason: str) -> int:
    """Every host's first task is unreachable after one attempt, for ``reason`` (JSON events).

    Returns how many hosts the run tried to reach.
    """
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    first: dict[str, dict] = {}
    for e in events:
        if e.get("event") == "task" and (e.get("data") or {}).get("host"):
            first.setdefault(e["data"]["host"], e)
    assert first, "no task events naming a host"
    for e in first.values():
        assert e["status"] == "unreachable" and e["attempts"] == 1, e
        assert reason in e["message"], e
    return len(first)


def _total(proc: subprocess.CompletedProcess) -> str:
    return next(line for line in proc.stdout.decode().splitlines() if line.startswith("TOTAL"))


def test_key_passphrase_never_appears_anywhere(tmp_path):
    lab = _lab(tmp_path)
    passphrase = "Kp-" + secrets.token_urlsafe(15) + "#"
    wrong = "Kp-" + secrets.token_urlsafe(15) + "%"
    (lab / "ssh").mkdir(mode=0o700)
    # the lab's client key, encrypted: serve() keeps an existing key and authorizes it
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "runner-lab",
                    "-f", str(lab / "ssh" / "id_ed25519")], check=True, stdin=subprocess.DEVNULL)
    server = serve(lab, fake_shell=False)
    runs = Runs(tmp_path)
    try:
        inventory = write_inventory(server, tmp_path / "inventory.yml", ssh_key_passphrase_env="LAB_KEY_PASS")
        ok = runs.apply(inventory, {"LAB_KEY_PASS": passphrase}, "-vvv")
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        assert "failed=0" in _total(ok) and "unreachable=0" in _total(ok)
        ok_json = runs.apply(inventory, {"LAB_KEY_PASS": passphrase}, "--json")
        assert ok_json.returncode == 0, ok_json.stderr[-2000:]
        bad_json = runs.apply(inventory, {"LAB_KEY_PASS": wrong}, "--json")
        assert bad_json.returncode == 3, bad_json.stdout[-2000:] + bad_json.stderr[-2000:]
        assert_refused_once(bad_json, "wrong passphrase")
        bad = runs.apply(inventory, {"LAB_KEY_PASS": wrong}, "-vvv")
        assert bad.returncode == 3 and b"wrong passphrase" in bad.stdout, bad.stdout[-2000:]
    finally:
        server.stop()
    assert not list(runs.crash_dir.iterdir()), "a run crashed"
    searched = assert_nothing_leaked([passphrase, wrong], runs.outputs, runs.states + [lab, runs.crash_dir])
    assert searched > 20 and any(p.name == "state.db" for s in runs.states for p in s.rglob("*"))


def test_password_never_appears_anywhere(tmp_path):
    lab = _lab(tmp_path)
    with password_account(tmp_path / "home") as (user, password):
        wrong = password[::-1]
        secret_dir = tmp_path / "secret"          # the password files: the one place allowed to hold them
        secret_dir.mkdir(mode=0o700)
        (secret_dir / "right").write_text(password + "\n")
        (secret_dir / "wrong").write_text(wrong + "\n")
        server = serve(lab, fake_shell=False, allow_password_users=[user])
        runs = Runs(tmp_path)
        try:
            by_env = write_inventory(server, tmp_path / "by_env.yml", user=user, drop=("ssh_key_file",),
                                     ssh_password_env="LAB_PW")
            by_file = write_inventory(server, tmp_path / "by_file.yml", user=user, drop=("ssh_key_file",),
                                      ssh_password_file=str(secret_dir / "right"))
            wrong_file = write_inventory(server, tmp_path / "wrong_file.yml", user=user, drop=("ssh_key_file",),
                                         ssh_password_file=str(secret_dir / "wrong"))
            ok = runs.apply(by_env, {"LAB_PW": password}, "-vvv")
            assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
            assert "failed=0" in _total(ok) and "unreachable=0" in _total(ok)
            ok_json = runs.apply(by_file, {}, "--json")
            assert ok_json.returncode == 0, ok_json.stderr[-2000:]
            failed_before = server.log.read_text(errors="replace").count("Failed password for")
            bad_env = runs.apply(by_env, {"LAB_PW": wrong}, "-vvv")
            bad_file = runs.apply(wrong_file, {}, "--json")
            failed = server.log.read_text(errors="replace").count("Failed password for") - failed_before
            for bad in (bad_env, bad_file):
                assert bad.returncode == 3, bad.stdout[-2000:] + bad.stderr[-2000:]
            assert b"refused (tried: password)" in bad_env.stdout
            reached = assert_refused_once(bad_file, "refused (tried: password)")
            # sshd saw one attempt per host and run: an authentication failure is never retried
            assert failed == 2 * reached
        finally:
            server.stop()
    assert not list(runs.crash_dir.iterdir()), "a run crashed"
    dirs = runs.states + [lab, runs.crash_dir, tmp_path / "home"]
    searched = assert_nothing_leaked([password, wrong], runs.outputs, dirs)
    assert searched > 20
