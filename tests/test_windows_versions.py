"""Windows 2000, XP and Server 2003 as the lab models them and the runner reads them
(docs/windows-versions.md).

Sources: KB 830473 (2,047 characters on Windows 2000, 8,191 from XP on);
Microsoft's PowerShell docs "Working with registry entries" (reg.exe 3.0 output:
``! REG.EXE VERSION 3.0``, a blank line, tab-separated columns); WMIC first
shipped with XP; MsiExec error 1622 (ERROR_INSTALL_LOG_FAILURE); LCS 2005 SP1
SDK cc165059 (MSFT_SIPESEmSetting keys Backend, InstanceID) and cc165067
(MSFT_SIPESUserSetting.TargetServerDNIfMoving).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lab_fixtures import ALICE, CONTACTS, make_lab, script_lines
from runner.apply import ApplyRequest, apply
from runner.errors import InputError
from runner.lab import generator
from runner.lab.binaries import MESSENGER51_CODE
from runner.lab.lcs import LcsStore
from runner.lab.shell import Shell, execute
from runner.lab.store import Lab
from runner.lab.verify import verify
from runner.windows import msiexec, reg, wmic
from runner.windows.msiexec import MsiOutcome, classify, install_line

NOT_RECOGNIZED = ("'wmic' is not recognized as an internal or external command,\r\n"
                  "operable program or batch file.\r\n")
PLAYBOOK = str(Path(__file__).resolve().parent.parent / "playbooks" / "gradual.yml")


@pytest.fixture
def w2k(tmp_path):
    return make_lab(tmp_path, os="Windows 2000 Professional", service_pack="Service Pack 4")


@pytest.fixture
def xp(tmp_path):
    return make_lab(tmp_path)


# -- the lab: one host per version ------------------------------------------------

def test_windows_2000_takes_2047_characters_and_xp_8191(w2k, tmp_path):
    ok = "echo " + "x" * (2047 - 5)
    assert execute(w2k, "pc0001", ok).rc == 0
    r = execute(w2k, "pc0001", ok + "x")
    assert (r.rc, r.stdout, r.stderr) == (1, "", "The input line is too long.\r\n")
    # the limit holds after %VAR% expansion too (KB 830473)
    long = "echo %USERPROFILE%" + "x" * (2047 - 18)  # 2,047 as typed, longer once expanded
    assert len(long) == 2047 and execute(w2k, "pc0001", long).stderr == "The input line is too long.\r\n"
    xp = make_lab(tmp_path / "xp")
    assert execute(xp, "pc0001", ok + "x").rc == 0


def test_windows_2000_has_winnt_and_no_wmic(w2k):
    r = execute(w2k, "pc0001", "echo %SystemRoot%&echo %windir%&ver")
    assert r.stdout == "C:\\WINNT\r\nC:\\WINNT\r\n\r\nMicrosoft Windows 2000 [Version 5.00.2195]\r\n"
    r = execute(w2k, "pc0001", 'wmic datafile where "name=\'C:\\\\x\'" get Version /value')
    assert (r.rc, r.stdout, r.stderr) == (9009, "", NOT_RECOGNIZED)
    assert execute(w2k, "exim01", "echo %SystemRoot%").stdout == "C:\\WINNT\r\n"  # Windows 2000 Server


def test_xp_and_2003_hosts_have_windows_and_wmic(xp):
    assert execute(xp, "pc0001", "echo %SystemRoot%").stdout == "C:\\WINDOWS\r\n"
    r = execute(xp, "pc0001", 'wmic datafile where "name=\'C:\\\\Program Files\\\\Messenger\\\\msmsgs.exe\'" '
                              "get Version /value")
    assert r.rc == 0 and "Version=4.7.3001\r\r\n" in r.stdout


def test_xp_reg_query_prints_the_reg_exe_3_0_layout(xp):
    k = r"HKLM\SOFTWARE\Lab"
    for args in ("/ve /d def", "/v M /t REG_MULTI_SZ /d \"a\\0b c\"", "/v B /t REG_BINARY /d 00ff10",
                 "/v D /t REG_DWORD /d 42", '/v "two  words" /d "x\ty"'):
        assert execute(xp, "pc0001", f"reg add {k} {args} /f").rc == 0
    out = execute(xp, "pc0001", f"reg query {k}").stdout
    assert out == ("\r\n! REG.EXE VERSION 3.0\r\n\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Lab\r\n"
                   "    <NO NAME>\tREG_SZ\tdef\r\n"
                   "    M\tREG_MULTI_SZ\ta\\0b c\\0\\0\r\n"
                   "    B\tREG_BINARY\t00FF10\r\n"
                   "    D\tREG_DWORD\t0x2a\r\n"
                   "    two  words\tREG_SZ\tx\ty\r\n\r\n")
    key = reg.find_key(reg.parse_query(out), k)
    assert [(v.name, v.data) for v in key.values] == [
        ("", "def"), ("M", ["a", "b c"]), ("B", b"\x00\xff\x10"), ("D", 42), ("two  words", "x\ty")]


def test_windows_2000_reg_is_the_support_tools_2_0(w2k):
    out = execute(w2k, "pc0001", f'reg query "HKU\\{ALICE}\\{CONTACTS}"').stdout
    assert out.startswith("\r\n! REG.EXE VERSION 2.0\r\n\r\nHKEY_USERS\\")
    assert reg.value_of(reg.find_key(reg.parse_query(out), f"HKU\\{ALICE}\\{CONTACTS}"),
                        "bob@im.contoso.com") == 'Bob "B" & Co 100%'


def test_msiexec_exits_1622_when_the_log_folder_is_missing(xp):
    pkg = r"\\deploy\packages\WindowsMessenger51.msi"
    r = execute(xp, "pc0001", f"msiexec /i {pkg} /qn /norestart /l*v C:\\NoSuchDir\\wm.log")
    assert r.rc == 1622
    h = xp.host("pc0001")
    assert not h.products.list() and not h.fs.exists(r"C:\NoSuchDir")
    # the runner's line makes the folder first: installed, log written
    line = install_line(pkg, log=r"C:\NoSuchDir\wm.log").render()
    assert execute(xp, "pc0001", line).rc == 0
    assert b"Installation success or error status: 0.\r\n" in h.fs.read(r"C:\NoSuchDir\wm.log")
    assert [p.version for p in h.products.list()] == ["5.1.0715"]


def test_msiexec_1622_is_classified_with_its_message():
    r = classify(1622)
    assert r.outcome is MsiOutcome.PERMANENT and "log file" in r.message
    assert install_line("a.msi", log="runner.log").render() == "msiexec /i a.msi /qn /norestart /l*v runner.log"


def test_wmic_output_through_a_pipe_ends_lines_with_cr_cr_lf_and_parses(tmp_path):
    inv = generator.generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=0, seed=2)
    lab = Lab(inv.parent)
    r = execute(lab, "lcs01", "wmic path MSFT_SIPESEmSetting get /format:list")
    assert r.rc == 0 and "\r\r\nMaxContactsPerUser=150\r\r\n" in r.stdout and "\r\n" not in r.stdout.replace("\r\r\n", "")
    [rec] = wmic.parse_list(r.stdout)
    assert rec["Backend"] == "(local)\\rtc" and rec["MaxContactsPerUser"] == "150"
    assert rec["InstanceID"].startswith("{") and rec["InstanceID"].endswith("}")


def test_lcs_schema_as_documented_for_2005(tmp_path):
    inv = generator.generate(tmp_path / "lab", clients=1, users_per_client=1, contacts=0, seed=2)
    lab = Lab(inv.parent)
    # MSFT_SIPESEmSetting keyed on Backend and InstanceID: set names both in the object path
    r = execute(lab, "lcs01", "wmic path MSFT_SIPESEmSetting set MaxContactsPerUser=200")
    assert r.rc == 0
    assert 'MSFT_SIPESEmSetting.Backend="(local)\\\\rtc",InstanceID="{' in r.stdout
    with LcsStore(lab.host("lcs01").dir / "lcs.db") as store:
        assert store.max_contacts == 200
        dn = store.server_dn
    # TargetServerDNIfMoving is the property; TargetServerDN does not exist
    user = ('InstanceID="{11111111-2222-4333-8444-555555555555}",UserDN="CN=x,DC=contoso,DC=com",'
            f'PrimaryURI="sip:x@contoso.com",HomeServerDN="{dn}"')
    bad = execute(lab, "lcs01", f'wmic path MSFT_SIPESUserSetting create {user},TargetServerDN="{dn}"')
    assert bad.rc != 0 and "ERROR:" in bad.stderr
    assert execute(lab, "lcs01", f'wmic path MSFT_SIPESUserSetting create {user},TargetServerDNIfMoving="{dn}"').rc == 0
    got = wmic.parse_list(execute(lab, "lcs01", "wmic path MSFT_SIPESUserSetting get "
                                                "InstanceID,TargetServerDNIfMoving /format:list").stdout)
    assert got == [{"InstanceID": "{11111111-2222-4333-8444-555555555555}", "TargetServerDNIfMoving": dn}]


# -- labs of earlier versions ------------------------------------------------------

def test_a_lab_1_lab_loads_with_the_model_it_was_made_with(tmp_path):
    lab = make_lab(tmp_path, os="Windows 2000 Professional")
    cfg = lab.path / "lab.json"
    doc = json.loads(cfg.read_text())
    doc["format"] = "lab/1"
    cfg.write_text(json.dumps(doc))
    old = Lab(lab.path)
    assert execute(old, "pc0001", "echo %SystemRoot%").stdout == "C:\\WINDOWS\r\n"
    assert execute(old, "pc0001", "echo " + "x" * 3000).rc == 0
    out = execute(old, "pc0001", f'reg query "HKU\\{ALICE}\\{CONTACTS}"').stdout
    assert out == (f"\r\nHKEY_USERS\\{ALICE}\\{CONTACTS}\r\n"
                   f'    bob@im.contoso.com    REG_SZ    Bob "B" & Co 100%\r\n\r\n')  # the Vista/7 layout


def test_a_lab_format_from_the_future_is_refused_by_name(tmp_path):
    lab = make_lab(tmp_path)
    cfg = lab.path / "lab.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "format": "lab/9"}))
    with pytest.raises(InputError) as e:
        Lab(lab.path)
    assert "lab/9" in str(e.value) and e.value.file == str(cfg)


# -- the runner on a Windows 2000 estate ---------------------------------------------

def test_windows_2000_clients_migrate_with_every_line_under_2047(tmp_path, monkeypatch):
    real_info = generator._machine_info

    def all_2000(rng, names):  # every client a Windows 2000 SP4 machine
        info = real_info(rng, names)
        for c in info.values():
            c.update(os="Windows 2000 Professional", service_pack="Service Pack 4")
            if c["messenger"] == "wm47":  # XP's own Messenger: a 2000 machine has an MSN Messenger
                c["messenger"] = "msn47"
        return info

    monkeypatch.setattr(generator, "_machine_info", all_2000)
    inv = generator.generate(tmp_path / "lab", clients=5, users_per_client=3, contacts=30, seed=4)
    lab = Lab(inv.parent)
    assert {lab.host(n).windows.line_limit for n in lab.host_names()} == {2047, 8191}  # lcs01 runs 2003
    lines: list[tuple[str, str]] = []
    refused: list[str] = []
    real_run = Shell.run

    def recorded(self, line, *, in_batch=False, stdin=""):
        lines.append((self.host.name, line))
        res = real_run(self, line, in_batch=in_batch, stdin=stdin)
        if "too long" in res.stderr:
            refused.append(f"{self.host.name}: {line[:60]}")
        return res

    monkeypatch.setattr(Shell, "run", recorded)
    out = io.StringIO()
    rc = apply(ApplyRequest(playbook=PLAYBOOK, inventory=str(inv), forks=4, state_dir=str(tmp_path / "state"),
                            default_delay=0.01), stdout=out, stderr=out)
    assert rc == 0, out.getvalue()[-3000:]
    assert not refused
    on_2000 = [(h, ln) for h, ln in lines if lab.host(h).windows.version == "5.0"]
    assert on_2000 and max(len(ln) for _, ln in on_2000) <= 2047
    # the limit was met, not avoided: lines were packed up to it, and the 2003 pool took longer ones
    assert max(len(ln) for _, ln in on_2000) > 1500
    assert max(len(ln) for h, ln in lines if h == "lcs01") > 2047
    # the journal (every mutating command) says the same
    assert all(len(e.command) <= 2047 for e in lab.mutations_since(0) if lab.host(e.host).windows.version == "5.0")
    # no literal C:\WINDOWS on a Windows 2000 host, and wmic asked there only by the first
    # gather, before any fact says 5.0 (it answers "not recognized": the Uninstall key tells)
    assert not [ln for _, ln in on_2000 if "c:\\windows" in ln.lower()]
    wmic_lines = [h for h, ln in on_2000 if "wmic" in ln.lower()]
    assert all(wmic_lines.count(h) == 1 for h in lab.host_names() if h.startswith("pc")), wmic_lines
    report = verify(lab.path)
    assert report.ok, report


def test_upgrade_on_windows_2000_reads_no_wmic_and_logs_under_winnt(tmp_path):
    from runner.connections.lab import LabConnection
    from runner.loader import load_inventory
    from runner.steps.inventory_clients import gather
    from runner.steps.upgrade_messenger import UpgradeMessenger
    from stepctx import StepCtx

    inv = load_inventory(generator.generate(tmp_path / "lab", clients=20, users_per_client=1, contacts=2, seed=3))
    lab = Lab(tmp_path / "lab")
    name = next(n for n in sorted(inv.group_hosts("clients"))
                if lab.host(n).windows.version == "5.0" and not lab.host(n).products.get(MESSENGER51_CODE))
    conn = LabConnection(inv.hosts[name], inv, None)
    sent: list[str] = []
    original, fed = conn.run, conn.run_input
    conn.run = lambda cmd, **kw: (sent.append(cmd), original(cmd, **kw))[1]  # type: ignore[method-assign]
    conn.run_input = lambda cmd, data, **kw: (sent.extend(script_lines(data)),  # type: ignore[method-assign]
                                              fed(cmd, data, **kw))[1]
    ctx = StepCtx(inv, {name: conn}, tmp_path)
    facts = gather(ctx, inv.hosts[name])[0]
    assert (facts["os_version"], facts["cmd_line_limit"], facts["env"]["SystemRoot"]) == ("5.0", 2047, r"C:\WINNT")
    ctx._facts[name] = {**facts, "run_id": "an earlier run"}  # not this run's: the probe reads live
    sent.clear()
    again = gather(ctx, inv.hosts[name])[0]  # a later gather knows the host has no wmic
    assert sent and not any("wmic" in c.lower() for c in sent), sent
    assert again["messenger"]["file_known"] is False and again["messenger"]["version"] == facts["messenger"]["version"]
    sent.clear()
    step = UpgradeMessenger()
    diff = step.probe(ctx, inv.hosts[name])
    assert diff is not None and sent and not any("wmic" in c.lower() for c in sent), sent
    sent.clear()
    assert step.apply(ctx, inv.hosts[name], diff).status == "changed"
    assert sent[0].startswith(r"mkdir C:\WINNT\Temp 2>nul & msiexec /i ")
    assert lab.host(name).fs.exists(r"C:\WINNT\Temp\runner-wm51.log")
    assert step.probe(ctx, inv.hosts[name]) is None, "5.1 registered: the Uninstall key alone tells"


def test_upgrade_names_1622_and_the_log_it_could_not_open(tmp_path):
    from runner.connections.lab import LabConnection
    from runner.loader import load_inventory
    from runner.steps.upgrade_messenger import UpgradeMessenger
    from stepctx import StepCtx

    inv = load_inventory(generator.generate(tmp_path / "lab", clients=20, users_per_client=1, contacts=2, seed=3))
    step = UpgradeMessenger()
    for name in sorted(inv.group_hosts("clients")):
        ctx = StepCtx(inv, {name: LabConnection(inv.hosts[name], inv, None)}, tmp_path,
                      args={"log": "C:\\bad|dir\\wm.log"})  # a folder no mkdir can make
        diff = step.probe(ctx, inv.hosts[name])
        if diff is not None:
            break
    result = step.apply(ctx, inv.hosts[name], diff)
    assert result.status == "failed" and result.data["rc"] == 1622
    assert result.message == f"msiexec 1622: {msiexec.MESSAGES[1622]} (log C:\\bad|dir\\wm.log)"
    assert "log_artifact" not in result.data


def test_discover_reads_a_crowded_windows_2000_client_within_2047(tmp_path, monkeypatch):
    from runner.inventory.discover import discover
    from runner.loader import load_inventory

    real_info = generator._machine_info

    def all_2000(rng, names):
        info = real_info(rng, names)
        for c in info.values():
            c.update(os="Windows 2000 Professional", service_pack="Service Pack 4")
        return info

    monkeypatch.setattr(generator, "_machine_info", all_2000)
    inv_path = generator.generate(tmp_path / "lab", clients=2, users_per_client=8, contacts=5, seed=6)
    man = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    longest: list[int] = []
    real_run = Shell.run
    monkeypatch.setattr(Shell, "run", lambda self, line, **kw: (longest.append(len(line)), real_run(self, line, **kw))[1])
    found = discover(load_inventory(inv_path))
    assert max(longest) <= 2047 and len(longest) > 4  # several lines per client: the profiles did not fit one
    for alias, u in man["users"].items():  # every profile holds its user's Exchange IM profile key
        assert sorted(found.clients[alias]) == sorted(u["clients"]), alias
