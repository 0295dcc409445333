"""What the sign-in step writes into every client and what keys a user are checked where they
are given: ``lcs_pool_fqdn`` and ``lcs_transport`` in the inventory (exit 4 at the line) and
in ``-e`` (exit 5), two users with one ``ad_guid`` or ``sid`` (exit 4 at the second one)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.lab.generator import generate

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOK = ROOT / "playbooks" / "gradual.yml"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("signin") / "lab", clients=3, users_per_client=1, contacts=2, seed=4)


def _runner(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)


def _variant(inventory: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = inventory.read_text(encoding="utf-8")
    assert old in text
    out = tmp_path / "inv.yml"
    out.write_text(text.replace(old, new, 1), encoding="utf-8")
    return out


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


@pytest.mark.parametrize("value,ok", [("udp", False), ("TLS", True), ("tcp", True), ("'{{ transport }}'", True),
                                      ("3", False)])
def test_lcs_transport_is_tcp_or_tls_at_its_line(inventory, tmp_path, value, ok):
    inv = _variant(inventory, tmp_path, 'lcs_pool_fqdn: "lcs01.contoso.com"',
                   f'lcs_pool_fqdn: "lcs01.contoso.com"\n    lcs_transport: {value}')
    done = _runner("validate", str(PLAYBOOK), "-i", str(inv), cwd=tmp_path)
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        assert done.returncode == 4
        assert re.search(rf"inv\.yml:{_line_of(inv, 'lcs_transport')}:\d+: variable lcs_transport", done.stdout + done.stderr)
        assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("value", ['""', '"lcs01 & calc"', '"-lcs.contoso.com"', '"lcs01.contoso.com:99999"'])
def test_a_pool_name_that_is_no_dns_name_is_refused_at_its_line(inventory, tmp_path, value):
    inv = _variant(inventory, tmp_path, 'lcs_pool_fqdn: "lcs01.contoso.com"', f"lcs_pool_fqdn: {value}")
    done = _runner("validate", str(PLAYBOOK), "-i", str(inv), cwd=tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"inv.yml:{_line_of(inv, 'lcs_pool_fqdn')}:" in done.stdout + done.stderr


@pytest.mark.parametrize("field_", ["ad_guid", "sid"])
def test_two_users_with_one_identity_are_refused_at_the_second(inventory, tmp_path, field_):
    text = inventory.read_text(encoding="utf-8")
    values = re.findall(rf'"{field_}": "([^"]+)"', text)
    assert len(values) >= 2
    first, second = values[0], values[1]
    same = first.lower().strip("{}") if field_ == "ad_guid" else first   # pasted without braces, lower case
    inv = _variant(inventory, tmp_path, f'"{field_}": "{second}"', f'"{field_}": "{same}"')
    done = _runner("validate", str(PLAYBOOK), "-i", str(inv), cwd=tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    line = [i for i, ln in enumerate(inv.read_text().splitlines(), 1) if f'"{field_}": "{same}"' in ln][-1]
    assert re.search(rf"inv\.yml:{line}:\d+: user '\w+' has the same {field_} as user '\w+'", done.stdout + done.stderr)


@pytest.mark.parametrize("extra", ["lcs_transport=udp", "lcs_pool_fqdn=", "lcs_pool_fqdn=a&b"])
def test_extra_vars_for_the_sign_in_are_checked_before_anything_runs(inventory, tmp_path, extra):
    done = _runner("apply", str(PLAYBOOK), "-i", str(inventory), "--state", str(tmp_path / "st"), "-e", extra,
                   cwd=tmp_path)
    assert done.returncode == 5, done.stdout + done.stderr
    assert f"-e {extra.split('=')[0]}:" in done.stdout + done.stderr
    assert not (tmp_path / "st").exists(), "a refused option leaves no state directory"
