"""configure_messenger against lab clients: the sign-in policy set, re-probed as unchanged,
wrong values corrected, only what differs written, Exchange IM switched off only once a
machine's users have moved, hostile server names refused, lines within Windows 2000's limit."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from runner.connections.lab import LabConnection
from runner.errors import PermanentFault
from runner.lab.generator import generate
from runner.loader import load_inventory
from runner.steps import _clients as cl
from runner.steps import _signin as S
from runner.steps.base import NotYet
from runner.steps.configure_messenger import KEEPS_EXCHANGE, ConfigureMessenger
from runner.steps.inventory_clients import InventoryClients
from runner.windows import reg
from runner.windows.cmdline import UnsafeValueError

from lab_fixtures import script_lines
from stepctx import StepCtx

POOL = "lcs01.contoso.com"


class Recording:
    """A LabConnection that keeps every command line it runs."""

    def __init__(self, conn: LabConnection) -> None:
        self.conn = conn
        self.lines: list[str] = []

    def run(self, line: str, **kw: Any):
        self.lines.append(line)
        return self.conn.run(line, **kw)

    def run_input(self, line: str, data: bytes, **kw: Any):
        """A fed script: its lines are kept, as if each had been sent on its own."""
        self.lines.extend(script_lines(data))
        return self.conn.run_input(line, data, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@dataclass
class Rec:
    status: str
    data: dict
    ended: float = 0.0


class Ctx(StepCtx):
    """A StepCtx whose ``previous`` answers from a dict (module, target) -> statuses."""

    def __init__(self, *a: Any, done: dict | None = None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.done = done or {}

    def previous(self, module: str, target: str) -> list:
        return [Rec(s, {}) if isinstance(s, str) else Rec(*s) for s in self.done.get((module, target), [])]


@pytest.fixture
def lab(tmp_path):
    """A lab of 12 clients with every kind of seeded policy values (seed 7); each test its own."""
    root = tmp_path / "cm"
    inv = load_inventory(generate(root / "lab", clients=12, users_per_client=2, contacts=2, seed=7))
    manifest = json.loads((root / "lab" / "manifest.json").read_text())
    return root, inv, manifest


def _host(lab, kind: str | None) -> str:
    _, inv, manifest = lab
    for name, m in sorted(manifest["machines"].items()):
        if m.get("signin_seed") == kind:
            return name
    pytest.skip(f"no client seeded {kind!r} in this lab")


def _ctx(lab, host: str, tmp_path, *, args=None, done=None, check=False, facts=None) -> tuple[Ctx, Recording]:
    _, inv, _ = lab
    conn = Recording(LabConnection(inv.hosts[host], inv, None))
    ctx = Ctx(inv, {host: conn}, tmp_path, args=args or {}, vars=dict(inv.hosts[host].vars), done=done,
              check=check)
    if facts:
        ctx._facts[host] = facts
    return ctx, conn


def _values(conn: Recording, key: str) -> dict[str, tuple[str, Any]]:
    registry = conn.conn.lab_host.registry
    if not registry.key_exists(key):
        return {}
    return {v.name: (v.type, v.data) for v in registry.values(key)}


def _all_moved(lab, host: str) -> dict:
    _, inv, _ = lab
    return {("disable_exchange_im", u.alias): ["changed"] for u in cl.client_users(inv, host)}


def test_values_are_set_then_reprobed_unchanged(lab, tmp_path):
    host = _host(lab, None)
    ctx, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "keep"})
    step = ConfigureMessenger()
    assert _values(conn, S.POLICY_KEY) == {} and _values(conn, S.EXCHANGE_POLICIES) == {}, "absent before"
    diff = step.probe(ctx, lab[1].hosts[host])
    assert diff is not None and len(conn.lines) == 1, "the probe reads both keys in one line"
    result = step.apply(ctx, lab[1].hosts[host], diff)
    assert result.status == "changed", result.message
    assert len(conn.lines) == 2, "apply writes and reads back in one line"
    assert _values(conn, S.POLICY_KEY) == {"ServerAddress": ("REG_SZ", POOL), "Transport": ("REG_DWORD", 4),
                                           "ConfigurationMode": ("REG_DWORD", 1)}
    assert _values(conn, S.EXCHANGE_POLICIES) == {"ExchangeConn": ("REG_DWORD", 0)}
    assert result.data["facts_update"]["signin"]["problems"] == []
    assert step.probe(ctx, lab[1].hosts[host]) is None, "a second probe finds nothing to change"
    again = step.unchanged(ctx, lab[1].hosts[host])
    assert again.status == "ok" and again.data["signin"]["sip_server"] == POOL
    assert "reg add" not in " ".join(conn.lines[2:]), "nothing written once the values are there"


def test_wrong_values_are_corrected_and_only_what_differs_is_written(lab, tmp_path):
    host = _host(lab, "pilot")
    ctx, conn = _ctx(lab, host, tmp_path, args={"transport": "tcp"})
    before = _values(conn, S.POLICY_KEY)
    assert before["ServerAddress"][1].startswith("lcspilot.") and before["Transport"] == ("REG_DWORD", 2)
    step = ConfigureMessenger()
    diff = step.probe(ctx, lab[1].hosts[host])
    assert diff is not None and [row[1] for row in diff.data["todo"]] == ["ServerAddress"], diff.lines
    assert step.apply(ctx, lab[1].hosts[host], diff).status == "changed"
    written = conn.lines[-1]
    assert written.count("reg add") == 1 and "/v ServerAddress" in written and "reg delete" not in written
    assert _values(conn, S.POLICY_KEY)["ServerAddress"] == ("REG_SZ", POOL)
    assert step.probe(ctx, lab[1].hosts[host]) is None


def test_a_transport_typed_as_text_is_rewritten_and_other_policies_left_alone(lab, tmp_path):
    host = _host(lab, "typed_transport")
    ctx, conn = _ctx(lab, host, tmp_path)
    assert _values(conn, S.POLICY_KEY)["Transport"] == ("REG_SZ", "TLS")
    step = ConfigureMessenger()
    diff = step.probe(ctx, lab[1].hosts[host])
    assert step.apply(ctx, lab[1].hosts[host], diff).status == "changed"
    held = _values(conn, S.POLICY_KEY)
    assert held["Transport"] == ("REG_DWORD", 4) and held["PreventAutoRun"] == ("REG_DWORD", 1)
    assert step.probe(ctx, lab[1].hosts[host]) is None


def test_a_half_done_apply_is_finished_by_the_next_probe(lab, tmp_path):
    host = _host(lab, "autorun_policy")
    ctx, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "keep"})
    # a run killed after the first reg add of its line
    conn.run(reg.add(S.POLICY_KEY, "ServerAddress", "REG_SZ", POOL).render())
    step = ConfigureMessenger()
    diff = step.probe(ctx, lab[1].hosts[host])
    assert [row[1] for row in diff.data["todo"]] == ["Transport", "ConfigurationMode", "ExchangeConn"]
    assert step.apply(ctx, lab[1].hosts[host], diff).status == "changed"
    assert step.probe(ctx, lab[1].hosts[host]) is None


def test_exchange_im_off_is_not_yet_while_a_user_of_the_machine_is_on_it(lab, tmp_path):
    _, inv, _ = lab
    host = _host(lab, "exchange_only")
    users = [u.alias for u in cl.client_users(inv, host)]
    assert users
    step = ConfigureMessenger()
    moved = _all_moved(lab, host)
    one_left = dict(moved)
    one_left.pop(("disable_exchange_im", users[-1]))
    ctx, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "off"}, done=one_left)
    with pytest.raises(NotYet) as why:
        step.probe(ctx, inv.hosts[host])
    assert users[-1] in why.value.message and "force" not in why.value.message
    assert why.value.reason == KEEPS_EXCHANGE and why.value.outcome_data()["still_on_exchange"] == [users[-1]]
    assert "reg add" not in " ".join(conn.lines), "not yet: nothing written"
    # check mode predicts the same
    checking, _ = _ctx(lab, host, tmp_path, args={"exchange_im": "off"}, done=one_left, check=True)
    with pytest.raises(NotYet):
        step.probe(checking, inv.hosts[host])
    # forced: done, loudly
    forced, _ = _ctx(lab, host, tmp_path, args={"exchange_im": "off", "force": True}, done=one_left)
    diff = step.probe(forced, inv.hosts[host])
    assert any(w.startswith("FORCED") for w in diff.data["warnings"])


def test_exchange_im_kept_during_coexistence_then_switched_off_and_kept_off(lab, tmp_path):
    _, inv, _ = lab
    host = _host(lab, "exchange_only")
    step = ConfigureMessenger()
    keep, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "keep"})
    assert _values(conn, S.EXCHANGE_POLICIES) == {"ExchangeConn": ("REG_DWORD", 2)}, "seeded: Exchange only"
    diff = step.probe(keep, inv.hosts[host])
    assert any("ExchangeConn: 2 (REG_DWORD) -> 0" in line for line in diff.lines), diff.lines
    step.apply(keep, inv.hosts[host], diff)
    assert _values(conn, S.EXCHANGE_POLICIES) == {"ExchangeConn": ("REG_DWORD", 0)}
    assert _values(conn, S.SERVICE_KEY) == {}
    # everyone moved: off removes ExchangeConn and disables the Exchange IM service
    off, _ = _ctx(lab, host, tmp_path, args={"exchange_im": "off"}, done=_all_moved(lab, host))
    diff = step.probe(off, inv.hosts[host])
    assert {row[1]: row[3] for row in diff.data["todo"]} == {"ExchangeConn": None, "Disabled": 1}
    result = step.apply(off, inv.hosts[host], diff)
    assert result.status == "changed" and result.data["signin"]["exchange_im"] == "off"
    assert _values(conn, S.EXCHANGE_POLICIES) == {} and _values(conn, S.SERVICE_KEY) == {"Disabled": ("REG_DWORD", 1)}
    assert _values(conn, S.POLICY_KEY)["ServerAddress"] == ("REG_SZ", POOL), "the SIP server stays"
    assert step.probe(off, inv.hosts[host]) is None
    # a later wave's keep (or a --fresh run) does not turn Exchange IM back on
    keep_again, _ = _ctx(lab, host, tmp_path, args={"exchange_im": "keep"}, done=_all_moved(lab, host))
    assert step.probe(keep_again, inv.hosts[host]) is None


@pytest.mark.parametrize("bad", ["lcs01&calc.exe", 'lcs"01', "%COMPUTERNAME%.contoso.com", "lcs01 /f",
                                 "lcs01\r\nreg delete HKLM", "", "-lcs01.contoso.com", "lcs01..contoso.com",
                                 "lcs01.contoso.com:99999", "a" * 64 + ".contoso.com", "lcs01^.contoso.com",
                                 "10.0.0.300"])
def test_hostile_server_names_are_refused_before_anything_runs(lab, tmp_path, bad):
    host = _host(lab, None)
    step = ConfigureMessenger()
    ctx, conn = _ctx(lab, host, tmp_path, args={"sip_server": bad})
    with pytest.raises(PermanentFault) as err:
        step.probe(ctx, lab[1].hosts[host])
    assert "sip_server" in str(err.value) and conn.lines == []
    # the same from the inventory variable names the variable
    ctx, conn = _ctx(lab, host, tmp_path)
    ctx.vars["lcs_pool_fqdn"] = bad
    with pytest.raises(PermanentFault) as err:
        step.probe(ctx, lab[1].hosts[host])
    assert "variable lcs_pool_fqdn" in str(err.value) and conn.lines == []


def test_accepted_names_include_ports_and_addresses():
    assert S.check_server("lcs01.contoso.com:5061", "x") == "lcs01.contoso.com:5061"
    assert S.check_server("10.1.2.3", "x") == "10.1.2.3"
    assert S.check_server("LCS01", "x") == "LCS01"


def test_reg_add_and_delete_builders_quote_data_and_refuse_what_cannot_go_on_a_line():
    assert reg.add(S.POLICY_KEY, "ServerAddress", "REG_SZ", "a b&c").render() == (
        r'reg add HKLM\SOFTWARE\Policies\Microsoft\Messenger\Client /v ServerAddress /t REG_SZ /d "a b&c" /f')
    assert reg.add(S.POLICY_KEY, "Transport", "REG_DWORD", 4).render().endswith("/t REG_DWORD /d 4 /f")
    assert reg.delete_value(S.EXCHANGE_POLICIES, "ExchangeConn").render() == (
        r"reg delete HKLM\SOFTWARE\Microsoft\MessengerService\Policies /v ExchangeConn /f")
    with pytest.raises(UnsafeValueError):
        reg.add(S.POLICY_KEY, "ServerAddress", "REG_SZ", "%PATH%").render()
    with pytest.raises(ValueError):
        reg.add(S.POLICY_KEY, "Transport", "REG_DWORD", "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        reg.add(S.POLICY_KEY, "X", "REG_BINARY", "00")


def test_lines_stay_within_windows_2000s_limit_with_the_longest_name(lab, tmp_path):
    host = _host(lab, "exchange_only")
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "com"])[:253]
    assert len(longest) == 253
    facts = {"cmd_line_limit": 2047, "os_version": "5.0"}
    step = ConfigureMessenger()
    ctx, conn = _ctx(lab, host, tmp_path, args={"sip_server": longest, "exchange_im": "off", "force": True},
                     facts=facts)
    diff = step.probe(ctx, lab[1].hosts[host])
    assert len(diff.data["todo"]) == 5, "every value written: the most a line holds"
    assert step.apply(ctx, lab[1].hosts[host], diff).status == "changed"
    assert len(conn.lines) == 2 and all(len(line) <= 2047 for line in conn.lines), [len(x) for x in conn.lines]


def test_inventory_clients_reports_wrong_settings_and_counts_missing_ones(lab, tmp_path):
    _, inv, manifest = lab
    step = InventoryClients()
    seen: dict[str, Any] = {}
    for host, m in sorted(manifest["machines"].items()):
        ctx, _ = _ctx(lab, host, tmp_path)
        result = step.apply(ctx, inv.hosts[host], step.probe(ctx, inv.hosts[host]))
        signin = result.data["facts"]["signin"]
        wrong = [w for w in result.warnings if "sign-in settings" in w]
        seen[m.get("signin_seed")] = (signin, wrong)
        kind = m.get("signin_seed")
        if kind in ("exchange_only", "pilot", "typed_transport"):
            assert wrong and wrong[0].startswith(f"{host}: Messenger sign-in settings missing or wrong"), kind
        else:
            assert not wrong, (kind, wrong)
            assert "no SIP server set" in signin["problems"], "not configured yet: a fact, not a warning"
    assert "Exchange only" in seen["exchange_only"][1][0]
    assert "lcspilot." in seen["pilot"][1][0] and "not 'lcs01.contoso.com'" in seen["pilot"][1][0]
    assert seen["exchange_only"][0]["exchange_conn"] == 2


def test_inventory_clients_warns_of_missing_values_once_they_were_set(lab, tmp_path):
    _, inv, _ = lab
    host = _host(lab, None)
    configure = ConfigureMessenger()
    ctx, conn = _ctx(lab, host, tmp_path)
    assert configure.apply(ctx, inv.hosts[host], configure.probe(ctx, inv.hosts[host])).status == "changed"
    # someone removes the policy afterwards (a GPO cleanup, a reimage)
    conn.conn.lab_host.registry.delete_key(S.POLICY_KEY)
    step = InventoryClients()
    before, _ = _ctx(lab, host, tmp_path)
    result = step.apply(before, inv.hosts[host], step.probe(before, inv.hosts[host]))
    assert not [w for w in result.warnings if "sign-in" in w], "never configured: not a warning"
    after, _ = _ctx(lab, host, tmp_path, done={("configure_messenger", host): ["changed"]})
    result = step.apply(after, inv.hosts[host], step.probe(after, inv.hosts[host]))
    assert any("no SIP server set" in w for w in result.warnings), result.warnings


def test_sign_in_warnings_are_counted_as_their_own_kind_per_host():
    from runner.warnings_tally import classify

    assert classify("pc0007: Messenger sign-in settings missing or wrong: ExchangeConn is 2 (REG_DWORD)") == (
        "sign-in settings", ["pc0007"])


def test_status_counts_clients_set_not_yet_and_wrong():
    from runner.status import render_facts, summarise_facts

    hosts = {"pc1": {"signin": {"problems": []}}, "pc2": {"signin": {"problems": ["no SIP server set"]}},
             "pc3": {"signin": {"problems": ["no SIP server set", "ExchangeConn is 2 (REG_DWORD)"]}},
             "pc4": {}}
    f = summarise_facts(hosts)
    assert f["signin"] == {"set": 1, "missing": 1, "wrong": [{"host": "pc3", "problems": [
        "ExchangeConn is 2 (REG_DWORD)"]}]}
    assert "  Messenger sign-in: 1 set, 1 not yet, 1 wrong: pc3 (ExchangeConn is 2 (REG_DWORD))" in render_facts(f)


def test_values_that_do_not_take_fail_the_task_with_what_reg_said(lab, tmp_path):
    host = _host(lab, None)
    _, inv, _ = lab

    class Refusing(Recording):
        def run(self, line: str, **kw: Any):  # every reg add refused as reg.exe refuses a bad one
            return super().run(line.replace("reg add", "reg nosuchop"), **kw)

    conn = Refusing(LabConnection(inv.hosts[host], inv, None))
    ctx = Ctx(inv, {host: conn}, tmp_path, args={"exchange_im": "keep"}, vars=dict(inv.hosts[host].vars))
    step = ConfigureMessenger()
    result = step.apply(ctx, inv.hosts[host], step.probe(ctx, inv.hosts[host]))
    assert result.status == "failed" and "did not take" in result.message and "Invalid syntax" in result.message
    assert result.data["signin"]["problems"], "the facts say what is still missing"


def test_a_key_that_cannot_be_read_is_not_taken_for_an_absent_one():
    from runner.windows.cmdline import Section

    absent = Section(False, reg.NOT_FOUND + "\r\n")
    assert S.unreadable([absent, Section(True, "")]) is None
    assert S.unreadable([Section(False, "ERROR: Access is denied.\r\n"), absent]) == "ERROR: Access is denied."
    assert S.unreadable([None, absent]) == "the registry read did not run"


def test_the_probe_uses_this_runs_inventory_facts_until_the_step_has_run(lab, tmp_path):
    _, inv, _ = lab
    host = _host(lab, "pilot")
    h = inv.hosts[host]
    ctx, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "keep"})
    gather = InventoryClients()
    ctx._facts[host] = gather.apply(ctx, h, gather.probe(ctx, h)).data["facts"]
    step = ConfigureMessenger()
    n = len(conn.lines)
    diff = step.probe(ctx, h)
    assert len(conn.lines) == n, "the facts of this run's inventory stand for the read"
    assert [row[1] for row in diff.data["todo"]] == ["ServerAddress", "Transport", "ExchangeConn"]
    assert step.apply(ctx, h, diff).status == "changed" and len(conn.lines) == n + 1
    # once the step has an outcome for the host, the facts may be stale: read live
    ctx.done[("configure_messenger", host)] = ["changed"]
    assert step.probe(ctx, h) is None and len(conn.lines) == n + 2
    # facts of another run: read live too
    ctx.done.clear()
    ctx._facts[host] = {**ctx._facts[host], "run_id": "an-earlier-run"}
    assert step.probe(ctx, h) is None and len(conn.lines) == n + 3


@pytest.mark.parametrize("guess", [True, False], ids=["first-gather-guess", "profiles-from-profilelist"])
def test_inventory_reads_the_policy_where_it_fits_and_never_loses_it(tmp_path, monkeypatch, guess):
    """On Windows 2000's 2,047 characters, a machine with many users has no room for the policy
    reads in its first line: they go with the hive loads of its second line, or in one of their
    own, and the facts are the same whichever way they were read. Without the first gather's
    guess at the profile folders (a profile elsewhere), every placement occurs."""
    if not guess:
        monkeypatch.setattr(cl, "default_profile", lambda user: None)
    inv = load_inventory(generate(tmp_path / "lab", clients=10, users_per_client=3, contacts=2, seed=7))
    manifest = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    step = InventoryClients()
    where: set[str] = set()
    for host in sorted(manifest["machines"]):
        ctx, conn = _ctx((tmp_path, inv, manifest), host, tmp_path, facts={"cmd_line_limit": 2047})
        result = step.apply(ctx, inv.hosts[host], step.probe(ctx, inv.hosts[host]))
        assert all(len(line) <= 2047 for line in conn.lines)
        at = [i for i, line in enumerate(conn.lines) if "Messenger\\Client" in line]
        assert len(at) == 1, "read once"
        where.add("first" if at == [0] else "with the hives" if "reg load" in conn.lines[at[0]] else "own line")
        held = _values(conn, S.POLICY_KEY)
        signin = result.data["facts"]["signin"]
        assert signin["sip_server"] == (held.get("ServerAddress") or (None, None))[1], host
        assert (signin["exchange_conn"] is not None) == bool(_values(conn, S.EXCHANGE_POLICIES)), host
    assert where == {"first", "with the hives", "own line"} or guess, where


def _rolled_back(lab, host: str) -> dict:
    """Every user of ``host`` moved (disable_exchange_im at t=10), then rolled back at t=20."""
    _, inv, _ = lab
    out: dict = {}
    for u in cl.client_users(inv, host):
        out[("disable_exchange_im", u.alias)] = [("changed", {}, 10.0)]
        out[("restore_exchange_im", u.alias)] = [("changed", {"rollback": True}, 20.0)]
    return out


def test_restore_leaves_a_never_migrated_machine_alone(lab, tmp_path):
    """rollback.yml without --limit reaches every client: one whose users never moved (seeded
    ExchangeConn 2, no SIP server) gets nothing, not a SIP server nor ExchangeConn 0."""
    _, inv, _ = lab
    host = _host(lab, "exchange_only")
    step = ConfigureMessenger()
    ctx, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "restore"})
    assert step.probe(ctx, inv.hosts[host]) is None
    assert step.unchanged(ctx, inv.hosts[host]).status == "ok"
    assert conn.lines == [], "no rolled-back user on it: not even read"
    assert _values(conn, S.EXCHANGE_POLICIES) == {"ExchangeConn": ("REG_DWORD", 2)}
    assert _values(conn, S.POLICY_KEY) == {}
    # its users rolled back "too", but it was never switched off: still nothing written
    back, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "restore"}, done=_rolled_back(lab, host))
    assert step.probe(back, inv.hosts[host]) is None
    assert "reg add" not in " ".join(conn.lines) and _values(conn, S.POLICY_KEY) == {}


def test_restore_gives_back_exchange_im_only_where_off_switched_it_off(lab, tmp_path):
    _, inv, _ = lab
    host = _host(lab, "exchange_only")
    step = ConfigureMessenger()
    for args, done in (({"exchange_im": "keep"}, None), ({"exchange_im": "off"}, _all_moved(lab, host))):
        ctx, conn = _ctx(lab, host, tmp_path, args=args, done=done)
        step.apply(ctx, inv.hosts[host], step.probe(ctx, inv.hosts[host]))
    assert _values(conn, S.SERVICE_KEY) == {"Disabled": ("REG_DWORD", 1)}
    # users still moved (no rollback newer than their disable): restore does nothing
    moved, _ = _ctx(lab, host, tmp_path, args={"exchange_im": "restore"}, done=_all_moved(lab, host))
    assert step.probe(moved, inv.hosts[host]) is None
    back, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "restore"}, done=_rolled_back(lab, host))
    diff = step.probe(back, inv.hosts[host])
    assert diff is not None and {row[1]: row[3] for row in diff.data["todo"]} == {"ExchangeConn": 0, "Disabled": None}
    result = step.apply(back, inv.hosts[host], diff)
    assert result.status == "changed", result.message
    assert _values(conn, S.EXCHANGE_POLICIES) == {"ExchangeConn": ("REG_DWORD", 0)} and _values(conn, S.SERVICE_KEY) == {}
    assert _values(conn, S.POLICY_KEY)["ServerAddress"] == ("REG_SZ", POOL), "the SIP server stays"
    assert step.probe(back, inv.hosts[host]) is None, "a second rollback changes nothing"
    # moved again after the rollback: a later off switches it off again, restore stands down
    again = {k: v for k, v in _rolled_back(lab, host).items()}
    for u in cl.client_users(inv, host):
        again[("disable_exchange_im", u.alias)] = [("changed", {}, 30.0)]
    later, _ = _ctx(lab, host, tmp_path, args={"exchange_im": "restore"}, done=again)
    assert step.probe(later, inv.hosts[host]) is None


def test_an_unquoted_off_is_refused_with_the_advice_to_quote_it(tmp_path):
    """YAML 1.1 reads `exchange_im: off` as false: the message says to quote it, at its line."""
    from runner.errors import InputErrors
    from runner.loader import load_playbook
    book = tmp_path / "end.yml"
    book.write_text("- name: End\n  hosts: clients\n  steps:\n    - name: Switch\n      configure_messenger:\n"
                    "        exchange_im: off\n", encoding="utf-8")
    with pytest.raises(InputErrors) as err:
        load_playbook(str(book))
    text = str(err.value)
    assert f"{book}:6:" in text and "(got False)" in text
    assert 'quote it (exchange_im: "off")' in text, text
    book.write_text(book.read_text(encoding="utf-8").replace("exchange_im: off", 'exchange_im: "off"'),
                    encoding="utf-8")
    load_playbook(str(book))


def test_restore_in_check_mode_previews_machines_of_users_who_moved_and_have_a_backup(lab, tmp_path):
    """--check: the rollback's user steps only probed, so no rollback record exists yet; a
    switched-off machine whose users moved and have a backup is previewed, nothing written."""
    _, inv, _ = lab
    host = _host(lab, "exchange_only")
    step = ConfigureMessenger()
    for args in ({"exchange_im": "keep"}, {"exchange_im": "off"}):
        ctx, conn = _ctx(lab, host, tmp_path, args=args, done=_all_moved(lab, host))
        diff = step.probe(ctx, inv.hosts[host])
        if diff is not None:
            step.apply(ctx, inv.hosts[host], diff)
    checking, conn = _ctx(lab, host, tmp_path, args={"exchange_im": "restore"}, done=_all_moved(lab, host),
                          check=True)
    assert step.probe(checking, inv.hosts[host]) is None, "no backup stored: nothing to roll back"
    from runner.steps._lcs import backup_name
    for u in cl.client_users(inv, host):
        checking.artifacts.write(backup_name(u.alias), b"{}")
    diff = step.probe(checking, inv.hosts[host])
    assert diff is not None and {row[1] for row in diff.data["todo"]} == {"ExchangeConn", "Disabled"}
    assert "reg add" not in " ".join(conn.lines) and _values(conn, S.SERVICE_KEY) == {"Disabled": ("REG_DWORD", 1)}
