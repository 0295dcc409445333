"""A key-based logon reaches no share; upgrade_messenger pushes the package, checks its SHA-256 on
the client, installs it and removes it (in-process lab: ``lab_logon``)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from stepctx import StepCtx

from runner.connections.lab import LabConnection
from runner import hostenv
from runner.errors import InputError, PermanentFault, TransientFault
from runner.lab.binaries import MESSENGER51_CODE
from runner.lab.generator import generate
from runner.lab.store import Lab
from runner.loader import load_inventory
from runner.steps.upgrade_messenger import UpgradeMessenger
from runner.windows import sha256
from runner.windows.cmdline import Command, Quoted

UNC = r"\\deploy\packages\WindowsMessenger51.msi"
WIN_NT = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion"


@pytest.fixture
def estate(tmp_path):
    """A generated lab of two XP/2000 clients and the control node's copy of its package."""
    inv_path = generate(tmp_path / "lab", clients=2, users_per_client=1, contacts=2, seed=3)
    inv = load_inventory(inv_path)
    local = tmp_path / "control" / "WindowsMessenger51.msi"
    local.parent.mkdir()
    local.write_bytes((tmp_path / "lab" / "shares" / "deploy" / "packages" / "WindowsMessenger51.msi").read_bytes())
    return inv, local


def _session(inv, tmp_path, name="pc0001", **vars):
    host = dataclasses.replace(inv.hosts[name], vars=dict(inv.hosts[name].vars, **vars))
    conn = LabConnection(host, inv, None)
    ctx = StepCtx(inv, {name: conn}, tmp_path, vars=host.vars)
    return host, conn, ctx


def _temp_files(conn) -> list[str]:
    """The pushed packages in the host's %SystemRoot%\\Temp (C:\\WINNT on Windows 2000)."""
    temp = conn.lab_host.environment()["SystemRoot"] + "\\Temp"
    return [n for n in conn.lab_host.fs.listdir(temp) if n.lower().startswith("runner-wm51-")]


def _set_faults(tmp_path, **rates):
    path = tmp_path / "lab" / "lab.json"
    cfg = json.loads(path.read_text())
    cfg.setdefault("faults", {}).setdefault("global", {}).update(rates)
    path.write_text(json.dumps(cfg))
    from runner.connections import lab as labconn
    labconn._labs.clear()


# -- the logon: key sessions reach no share -----------------------------------------------------

def test_a_key_session_is_denied_every_unc_path_and_a_password_session_reads_it(estate, tmp_path):
    inv, _ = estate
    _, key, _ = _session(inv, tmp_path, lab_logon="key")
    for line in (f"type {UNC}", rf"copy {UNC} C:\x.msi"):
        res = key.run(line)
        assert res.rc == 1 and res.stderr == "Access is denied.\r\n", (line, res)
    assert key.run(rf'if exist {UNC} echo there').stdout == ""
    res = key.run(rf"msiexec /i {UNC} /qn /norestart /l*v C:\m.log")
    assert res.rc == 1619
    assert "Note: 1: 2203 2: " + UNC + " 3: -2147287035" in key.get(r"C:\m.log").decode()
    assert not key.lab_host.fs.exists(r"C:\x.msi")
    _, pw, _ = _session(inv, tmp_path)          # lab_logon unset: a password logon
    assert pw.run(rf"copy {UNC} C:\x.msi").stdout.strip() == "1 file(s) copied."
    assert pw.run(rf'if exist {UNC} echo there').stdout.strip() == "there"


def test_a_bad_lab_logon_is_refused_naming_the_choices(estate, tmp_path):
    inv, _ = estate
    with pytest.raises(PermanentFault, match="password, key"):
        _session(inv, tmp_path, lab_logon="kerberos")


def test_a_key_logon_upgrade_from_the_share_fails_1619_with_the_way_out(estate, tmp_path):
    inv, _ = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key")
    step = UpgradeMessenger()
    result = step.apply(ctx, host, step.probe(ctx, host))
    assert result.status == "failed" and result.data["rc"] == 1619
    assert "messenger_package_local" in result.message
    assert conn.lab_host.products.get(MESSENGER51_CODE) is None


# -- the push -----------------------------------------------------------------------------------

def test_a_key_logon_upgrade_pushes_checks_installs_and_removes_the_package(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    assert diff.data["push"] and "pushed to the client" in "\n".join(diff.lines)
    result = step.apply(ctx, host, diff)
    assert result.status == "changed", result.message
    pushed = result.data["pushed"]
    assert pushed["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert pushed["remote"] == rf"C:\WINDOWS\Temp\runner-wm51-{pushed['sha256'][:12]}.msi"
    assert pushed["hash_tool"] == "sha256sum"        # an XP/2000 client: Cygwin's coreutils
    journal = [e.command for e in conn.lab_host.journal()]
    assert any(c.startswith("put " + pushed["remote"]) for c in journal)
    assert any(c.startswith("msiexec /i " + pushed["remote"]) for c in journal)
    assert not any(UNC.lower() in c.lower() for c in journal)
    assert _temp_files(conn) == []                    # removed after the install
    assert conn.lab_host.products.get(MESSENGER51_CODE) is not None
    assert step.probe(ctx, host) is None


def test_a_pushed_package_cut_short_is_caught_before_msiexec_and_pushed_again(estate, tmp_path):
    inv, local = estate
    _set_faults(tmp_path, put_truncated=1.0)
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    with pytest.raises(TransientFault, match="damaged") as caught:
        step.apply(ctx, host, diff)
    assert caught.value.data["pushed"]["got"] != caught.value.data["pushed"]["sha256"]
    assert not any(e.command.startswith("msiexec") for e in conn.lab_host.journal())
    assert _temp_files(conn) == [] and conn.lab_host.products.get(MESSENGER51_CODE) is None
    _set_faults(tmp_path, put_truncated=0.0)          # the link is good again: the retry installs
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    assert step.apply(ctx, host, step.probe(ctx, host)).status == "changed"


def test_the_pushed_package_is_removed_when_msiexec_fails(estate, tmp_path):
    inv, local = estate
    cfg_path = tmp_path / "lab" / "lab.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hosts"]["pc0001"]["msiexec_result"] = 1603
    cfg_path.write_text(json.dumps(cfg))
    from runner.connections import lab as labconn
    labconn._labs.clear()
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    step = UpgradeMessenger()
    result = step.apply(ctx, host, step.probe(ctx, host))
    assert result.status == "failed" and result.data["rc"] == 1603 and "pushed" in result.data
    assert _temp_files(conn) == []


def test_a_package_a_killed_run_left_is_removed_by_the_next_probe(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    step = UpgradeMessenger()
    assert step.apply(ctx, host, step.probe(ctx, host)).status == "changed"
    temp = conn.lab_host.environment()["SystemRoot"] + "\\Temp"
    conn.put(b"half a package", temp + "\\runner-wm51-0123456789ab.msi")   # a kill before the del
    conn.put(b"not ours", temp + "\\other.msi")
    assert step.probe(ctx, host) is None                   # up to date, and it cleaned up
    assert _temp_files(conn) == [] and conn.lab_host.fs.exists(temp + "\\other.msi")


def test_a_check_mode_probe_leaves_a_leftover_alone(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    conn.put(b"half a package", conn.lab_host.environment()["SystemRoot"] + "\\Temp\\runner-wm51-0123456789ab.msi")
    ctx.check = True
    assert UpgradeMessenger().probe(ctx, host) is not None
    assert _temp_files(conn) == ["runner-wm51-0123456789ab.msi"]


def test_certutil_checks_the_push_on_windows_7_and_a_missing_tool_is_a_clear_failure(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local),
                               client_sha256_tool="certutil")
    step = UpgradeMessenger()
    with pytest.raises(PermanentFault, match="could not compute .* with certutil .*not recognized"):
        step.apply(ctx, host, step.probe(ctx, host))     # XP has no certutil
    assert _temp_files(conn) == []
    conn.lab_host.registry.set_value(WIN_NT, "CurrentVersion", "REG_SZ", "6.1")   # now a Windows 7 client
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    assert conn.run("sha256sum -b C:\\boot.ini").rc == 9009   # no Cygwin there
    result = step.apply(ctx, host, step.probe(ctx, host))
    assert result.status == "changed" and result.data["pushed"]["hash_tool"] == "certutil"


def test_reading_the_push_back_over_the_connection_is_the_sftp_check(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local),
                               client_sha256_tool="sftp")
    step = UpgradeMessenger()
    result = step.apply(ctx, host, step.probe(ctx, host))
    assert result.status == "changed" and "read back" in result.message
    assert not any(e.command.startswith(("sha256sum", "certutil")) for e in conn.lab_host.journal())


def test_a_password_logon_without_a_local_package_still_installs_from_the_share(estate, tmp_path):
    inv, _ = estate
    host, conn, ctx = _session(inv, tmp_path)
    step = UpgradeMessenger()
    result = step.apply(ctx, host, step.probe(ctx, host))
    assert result.status == "changed" and "pushed" not in result.data
    assert any(e.command.startswith("msiexec /i " + UNC) for e in conn.lab_host.journal())


def test_every_push_command_line_fits_windows_2000(estate, tmp_path):
    inv, local = estate
    seen: list[str] = []
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local),
                               remote_temp=r"C:\Documents and Settings\migrator\Local Settings\Temp")
    conn.lab_host.fs.mkdir(r"C:\Documents and Settings\migrator\Local Settings\Temp")
    real = conn.run
    conn.run = lambda line, **kw: (seen.append(line), real(line, **kw))[1]  # type: ignore[method-assign]
    step = UpgradeMessenger()
    assert step.apply(ctx, host, step.probe(ctx, host)).status == "changed"
    assert seen and max(len(line) for line in seen) <= 2047
    assert any("Local Settings\\Temp\\runner-wm51-" in line for line in seen)


# -- the lab's tools hash the bytes really there --------------------------------------------------

def test_the_lab_hash_tools_print_what_windows_and_cygwin_print(tmp_path):
    lab = Lab.create(tmp_path / "lab", {"hosts": {"pc1": {"role": "client"}, "pc7": {"role": "client"}}})
    data = b"MSI bytes \x00\xff" * 100
    digest = hashlib.sha256(data).hexdigest()
    xp, w7 = lab.host("pc1"), lab.host("pc7")
    w7.registry.set_value(WIN_NT, "CurrentVersion", "REG_SZ", "6.1")
    from runner.lab.shell import Shell
    for h in (xp, w7):
        h.fs.write(r"C:\Temp\p.msi", data)
    out = Shell(lab, xp).run(r"sha256sum -b C:\Temp\p.msi")
    assert out.stdout == f"\\{digest} *C:\\\\Temp\\\\p.msi\n" and sha256.parse(out.stdout) == digest
    missing = Shell(lab, xp).run(r"sha256sum -b C:\Temp\none.msi")
    assert missing.rc == 1 and "No such file or directory" in missing.stderr
    assert Shell(lab, xp).run(r"certutil -hashfile C:\Temp\p.msi SHA256").rc == 9009
    out = Shell(lab, w7).run(r"certutil -hashfile C:\Temp\p.msi SHA256")
    lines = out.stdout.splitlines()
    assert out.rc == 0 and lines[0] == r"SHA256 hash of file C:\Temp\p.msi:"
    assert lines[1] == " ".join(digest[i:i + 2] for i in range(0, 64, 2))
    assert lines[2] == "CertUtil: -hashfile command completed successfully."
    assert sha256.parse(out.stdout) == digest
    gone = Shell(lab, w7).run(r"certutil -hashfile C:\Temp\none.msi SHA256")
    assert gone.rc == -2147024894 and "ERROR_FILE_NOT_FOUND" in gone.stdout and sha256.parse(gone.stdout) is None
    # auto: sha256sum where Cygwin is, else certutil, in one line
    for h in (xp, w7):
        line = sha256.command("auto", r"C:\Temp\p.msi").render()
        assert sha256.parse(Shell(lab, h).run(line).stdout) == digest


def test_sha256_parse_reads_each_tools_layout():
    d = "ab" * 32
    assert sha256.parse(f"{d} *C:/x.msi\n") == d
    assert sha256.parse("SHA256 hash of C:\\x.msi:\r\n" + d.upper() + "\r\nCertUtil: done\r\n") == d
    assert sha256.parse("CertUtil: -hashfile command FAILED: 0x80070002\r\n") is None
    assert sha256.parse("") is None
    with pytest.raises(ValueError, match="auto, sha256sum, certutil, sftp"):
        sha256.check_tool("md5")
    assert isinstance(sha256.command("certutil", r"C:\a b.msi"), Command)
    assert Quoted(r"C:\a b.msi").render() in sha256.command("certutil", r"C:\a b.msi").render()


# -- the inventory ------------------------------------------------------------------------------

def _inventory(tmp_path: Path, value: str) -> Path:
    inv = tmp_path / "inv" / "estate.yml"
    inv.parent.mkdir(exist_ok=True)
    inv.write_text("all:\n  vars:\n    lab_dir: ../lab\n"
                   f"    messenger_package_local: {json.dumps(value)}\n"
                   "  hosts:\n    pc0001: {}\n"
                   "users:\n  alice:\n    im_address: alice@im.contoso.com\n    clients: [pc0001]\n")
    return inv


def test_messenger_package_local_is_resolved_against_the_inventory_folder(tmp_path):
    (tmp_path / "inv" / "pkg").mkdir(parents=True)
    (tmp_path / "inv" / "pkg" / "wm51.msi").write_bytes(b"x")
    inv = load_inventory(_inventory(tmp_path, "pkg/wm51.msi"))
    assert inv.hosts["pc0001"].vars["messenger_package_local"] == str((tmp_path / "inv" / "pkg" / "wm51.msi").resolve())


def test_a_missing_messenger_package_local_is_an_input_error_at_its_line(tmp_path):
    path = _inventory(tmp_path, "pkg/none.msi")
    with pytest.raises(InputError) as caught:
        load_inventory(path)
    text = str(caught.value)
    assert f"{path}:4:" in text and "messenger_package_local 'pkg/none.msi' does not exist" in text


def test_a_remote_temp_with_a_variable_is_refused_since_sftp_expands_none(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local),
                               remote_temp="%TEMP%")
    with pytest.raises(PermanentFault, match="literal folder"):
        UpgradeMessenger().probe(ctx, host)


def _key_logon_lab(tmp_path: Path, *, push: bool):
    """A generated lab whose inventory logs every host on by key, pushing the package or not."""
    import yaml
    from scenario_support import make_scenario

    sc = make_scenario(tmp_path, "gradual.yml", seed=4, clients=3, users_per_client=1, contacts=3)
    doc = yaml.safe_load(sc.inventory.read_text(encoding="utf-8"))
    doc["all"]["vars"]["lab_logon"] = "key"
    if push:   # relative: to the inventory's folder, the lab directory
        doc["all"]["vars"]["messenger_package_local"] = "shares/deploy/packages/WindowsMessenger51.msi"
    sc.inventory.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return sc


def test_a_key_logon_estate_migrates_end_to_end_by_pushing_the_package(tmp_path):
    sc = _key_logon_lab(tmp_path, push=True)
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    mutations = [e.command for e in sc.mutations_since(run.started)]
    installs = [c for c in mutations if c.startswith("msiexec")]
    assert installs and all("\\Temp\\runner-wm51-" in c for c in installs), installs
    assert not any("\\\\deploy" in c.lower() for c in mutations)
    lab = Lab(sc.lab_dir)
    roots = set()
    for name in lab.host_names():
        host = lab.host(name)
        temp = host.environment()["SystemRoot"] + "\\Temp"
        roots.add(temp)
        assert not [n for n in host.fs.listdir(temp) if n.startswith("runner-wm51-")], name
    assert any(f"{t}\\runner-wm51-" in c for c in installs for t in roots)
    again = sc.apply()
    assert again.code == 0 and again.totals.get("changed", 0) == 0, again.totals


def test_a_key_logon_estate_without_the_local_package_fails_its_upgrades_saying_why(tmp_path):
    sc = _key_logon_lab(tmp_path, push=False)
    run = sc.apply()
    assert run.code != 0
    failed = [t for t in run.tasks if t.get("step") and t.get("status") == "failed"
              and "messenger_package_local" in str(t.get("message"))]
    assert failed, run.out[-3000:]


def test_a_push_damaged_on_every_try_fails_the_host_with_the_reason_after_its_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_RETRY_DELAY_SCALE", "0.0005")
    sc = _key_logon_lab(tmp_path, push=True)
    cfg = json.loads((sc.lab_dir / "lab.json").read_text())
    cfg.setdefault("faults", {}).setdefault("global", {})["put_truncated"] = 1.0
    (sc.lab_dir / "lab.json").write_text(json.dumps(cfg))
    from runner.connections import lab as labconn
    labconn._labs.clear()
    # every transfer of the night is cut short: with no line input to cut (a connection that
    # can only put, then run), the clients' reads go line by line and only the package is hit
    monkeypatch.delattr(labconn.LabConnection, "run_input")
    run = sc.apply()
    labconn._labs.clear()
    assert run.code != 0
    upgrades = [t for t in run.tasks if str(t.get("step", "")).startswith("Upgrade")]
    assert upgrades and all(t["status"] == "failed" and "damaged" in t["message"] for t in upgrades), upgrades
    assert run.totals["retried"] >= len(upgrades)
    assert not any(e.command.startswith("msiexec") for e in sc.mutations_since(run.started))


def test_a_lab_made_from_a_pushing_inventory_rehearses_the_push_with_key_logons(tmp_path):
    """example-ssh.yml with messenger_package_local set: the lab pushes its own package, its
    sessions logged on by key, and the rehearsal migrates."""
    import yaml
    from scenario_support import Scenario

    from runner.lab.generator import generate_from_inventory

    src = tmp_path / "estate" / "contoso.yml"
    src.parent.mkdir()
    (src.parent / "WindowsMessenger51.msi").write_bytes(b"the real package")
    text = (Path(__file__).resolve().parents[1] / "inventories" / "example-ssh.yml").read_text(encoding="utf-8")
    src.write_text(text.replace("    # messenger_package_local: packages/WindowsMessenger51.msi",
                                "    messenger_package_local: WindowsMessenger51.msi"), encoding="utf-8")
    inv_path = generate_from_inventory(tmp_path / "lab", src, contacts=3, seed=5)
    doc = yaml.safe_load(inv_path.read_text(encoding="utf-8"))
    local = doc["all"]["vars"]["messenger_package_local"]
    assert local == "shares/deploy/packages/WindowsMessenger51.msi" and doc["all"]["vars"]["lab_logon"] == "key"
    assert load_inventory(inv_path)   # the lab's package is there
    sc = Scenario(tmp_path, "gradual.yml", 5)
    run = sc.apply("--limit", "wave:wave1")
    assert run.code == 0, run.out[-3000:]
    installs = [e.command for e in sc.mutations_since(run.started) if e.command.startswith("msiexec")]
    assert installs and all("runner-wm51-" in c for c in installs), installs


def test_a_windows_2000_client_gets_the_push_in_winnt_temp_in_lines_under_2047(tmp_path):
    """(Without facts the probe still asks wmic, which 2000 lacks: its answer is told apart.)"""
    inv_path = generate(tmp_path / "lab", clients=4, users_per_client=1, contacts=2, seed=4)
    inv = load_inventory(inv_path)
    local = tmp_path / "lab" / "shares" / "deploy" / "packages" / "WindowsMessenger51.msi"
    lab = Lab(tmp_path / "lab")
    name = next(n for n in sorted(inv.hosts) if n.startswith("pc") and lab.host(n).windows.version == "5.0")
    host, conn, ctx = _session(inv, tmp_path, name, lab_logon="key", messenger_package_local=str(local))
    seen: list[str] = []
    real = conn.run
    conn.run = lambda line, **kw: (seen.append(line), real(line, **kw))[1]  # type: ignore[method-assign]
    step = UpgradeMessenger()
    result = step.apply(ctx, host, step.probe(ctx, host))
    assert result.status == "changed", result.message
    assert result.data["pushed"]["remote"].startswith("C:\\WINNT\\Temp\\runner-wm51-")
    assert result.data["pushed"]["hash_tool"] == "sha256sum"
    assert max(len(line) for line in seen) <= 2047
    assert _temp_files(conn) == [] and step.probe(ctx, host) is None


# -- the folded line: one command line after the put --------------------------------------------

def _counting(conn):
    """Wrap ``conn`` so each command line, put and get is counted (a round trip each); the
    host's %SystemRoot% (which a run learns once per connection, or from its facts) is
    asked before counting starts."""
    hostenv.system_root(conn)
    trips: list[str] = []
    for name in ("run", "put", "get"):
        real = getattr(conn, name)

        def counted(*a, _real=real, _name=name, **kw):
            trips.append(_name)
            return _real(*a, **kw)
        setattr(conn, name, counted)
    return trips


def _with_msiexec_result(tmp_path, rc):
    cfg_path = tmp_path / "lab" / "lab.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hosts"]["pc0001"]["msiexec_result"] = rc
    cfg_path.write_text(json.dumps(cfg))
    from runner.connections import lab as labconn
    labconn._labs.clear()


@pytest.mark.parametrize("rc,status", [(0, "changed"), (3010, "changed"), (1603, "failed"), (1618, None)])
def test_msiexec_exit_codes_come_back_from_the_folded_line_and_the_file_is_deleted(estate, tmp_path, rc, status):
    inv, local = estate
    if rc == 1603:
        _with_msiexec_result(tmp_path, rc)             # a package that fails
    if rc == 1618:
        _set_faults(tmp_path, msiexec_1618=1.0)        # another install is running
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    if rc == 3010:
        conn.lab_host.start_process("msmsgs.exe")      # Messenger running: its file is in use
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    trips = _counting(conn)
    if status is None:      # 1618: another install is running; the engine retries
        with pytest.raises(TransientFault, match="msiexec 1618"):
            step.apply(ctx, host, diff)
    else:
        result = step.apply(ctx, host, diff)
        assert (result.status, result.data["rc"]) == (status, rc)
        assert result.data["reboot_required"] is (rc == 3010)
    assert trips[:2] == ["put", "run"]             # the put, then one line: hash, msiexec, delete
    assert trips[2:] == (["get"] if rc == 1603 else [])   # a failure's log is fetched
    assert _temp_files(conn) == []


@pytest.mark.parametrize("version,tool", [(None, "sha256sum"), ("6.1", "certutil"), ("10.0", "certutil")])
def test_a_successful_push_costs_the_put_and_one_line(estate, tmp_path, version, tool):
    """XP: Cygwin's sha256sum; Windows 7 (bytes spaced) and 10 (not): auto finds certutil."""
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    if version:
        conn.lab_host.registry.set_value(WIN_NT, "CurrentVersion", "REG_SZ", version)   # no Cygwin there
        host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    trips = _counting(conn)
    result = step.apply(ctx, host, diff)
    assert result.status == "changed" and result.data["pushed"]["hash_tool"] == tool
    assert trips == ["put", "run"]
    assert _temp_files(conn) == []


def test_sftp_read_back_costs_the_put_the_get_and_one_line(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local),
                               client_sha256_tool="sftp")
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    trips = _counting(conn)
    assert step.apply(ctx, host, diff).status == "changed"
    assert trips == ["put", "get", "run"]
    assert _temp_files(conn) == []


@pytest.mark.parametrize("tool", ["auto", "sha256sum"])
def test_a_mismatching_hash_in_the_folded_line_never_runs_msiexec_and_deletes_the_file(estate, tmp_path, tool):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local),
                               client_sha256_tool=tool)
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    real_put = conn.put
    conn.put = lambda data, remote: real_put(data[:-1] + bytes([data[-1] ^ 1]), remote)   # one bit flipped
    trips = _counting(conn)
    with pytest.raises(TransientFault, match="damaged; msiexec was not run") as caught:
        step.apply(ctx, host, diff)
    pushed = caught.value.data["pushed"]
    assert pushed["got"] != pushed["sha256"] and len(pushed["got"]) == 64
    assert trips == ["put", "run"]                     # the delete was on the same line
    assert not any(e.command.startswith("msiexec") for e in conn.lab_host.journal())
    assert conn.lab_host.products.get(MESSENGER51_CODE) is None
    assert _temp_files(conn) == []


def test_the_gate_alone_refuses_other_bytes_even_with_the_hash_in_the_file_name(estate, tmp_path):
    inv, local = estate
    _, conn, _ = _session(inv, tmp_path, lab_logon="key")
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    temp = conn.lab_host.environment()["SystemRoot"] + "\\Temp"
    path = f"{temp}\\{digest}.msi"                         # sha256sum prints the name after the hash
    conn.put(b"other bytes", path)
    for tool in ("auto", "sha256sum"):
        line = Command(sha256.gate(tool, path, digest), "&&", "echo", "matched")
        assert conn.run(line.render()).stdout.strip() == ""
    conn.put(local.read_bytes(), path)
    line = Command(sha256.gate("sha256sum", path, digest), "&&", "echo", "matched")
    assert conn.run(line.render()).stdout.strip().endswith("matched")


def test_a_missing_hash_tool_in_the_folded_line_is_permanent_and_installs_nothing(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local),
                               client_sha256_tool="certutil")   # XP: no certutil
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    trips = _counting(conn)
    with pytest.raises(PermanentFault, match="could not compute"):
        step.apply(ctx, host, diff)
    assert trips == ["put", "run"]
    assert not any(e.command.startswith("msiexec") for e in conn.lab_host.journal())
    assert _temp_files(conn) == []


def test_the_folded_line_fits_windows_2000(estate, tmp_path):
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    conn.lab_host.registry.set_value(WIN_NT, "CurrentVersion", "REG_SZ", "5.0")
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    lines: list[str] = []
    real = conn.run
    conn.run = lambda line, **kw: (lines.append(line), real(line, **kw))[1]
    assert step.apply(ctx, host, diff).status == "changed"
    folded = [ln for ln in lines if "findstr" in ln]
    assert len(folded) == 1 and len(folded[0]) <= 2047, folded


def test_with_this_runs_facts_an_upgraded_push_host_costs_the_put_and_one_line(estate, tmp_path):
    """inventory_clients' facts of this run stand for the probe when the package is pushed too:
    a host to upgrade costs two round trips in all (the put and the folded line), and the
    install line still deletes a package a killed session left; once the host has an upgrade
    outcome, the probe reads live again (and cleans up)."""
    from runner.steps.inventory_clients import gather
    inv, local = estate
    host, conn, ctx = _session(inv, tmp_path, lab_logon="key", messenger_package_local=str(local))
    temp = conn.lab_host.environment()["SystemRoot"] + "\\Temp"
    conn.put(b"half a package", temp + "\\runner-wm51-0123456789ab.msi")   # a killed session's push
    ctx._facts[host.name] = gather(ctx, host)[0]
    trips = _counting(conn)
    step = UpgradeMessenger()
    diff = step.probe(ctx, host)
    assert diff is not None and trips == []            # no round trip: the facts stand for the read
    result = step.apply(ctx, host, diff)
    assert result.status == "changed" and trips == ["put", "run"]
    assert _temp_files(conn) == []                     # the leftover went with the install line
    ctx.previous = lambda module, target: ["an earlier outcome"]  # type: ignore[method-assign]
    conn.put(b"half a package", temp + "\\runner-wm51-0123456789ab.msi")
    assert step.probe(ctx, host) is None and trips[-1] == "run" and _temp_files(conn) == []
