"""Specification of playbook/inventory loading: every error class with its file:line:col message."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from runner.errors import InputError, InputErrors
from runner.loader import load_inventory, load_playbook
from runner.steps.base import StepModule
from runner.steps.registry import register


@register
class LoaderHostStep(StepModule):
    name = "ldr_host"
    target = "host"
    args_schema = {"type": "object", "additionalProperties": False,
                   "properties": {"count": {"type": "integer"}, "path": {"type": "string"}}}


@register
class LoaderUserStep(StepModule):
    name = "ldr_user"
    target = "user"


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(p)


def messages(exc: InputError, tmp_path: Path) -> list[str]:
    errors = exc.errors if isinstance(exc, InputErrors) else [exc]
    return [str(InputError(e.message, e.file, e.line, e.col)).replace(str(tmp_path) + "/", "") for e in errors]


def playbook_errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, "pb.yml", text)
    with pytest.raises(InputError) as info:
        load_playbook(path)
    assert info.value.exit_code == 4
    return messages(info.value, tmp_path)


def inventory_errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, "inv.yml", text)
    with pytest.raises(InputError) as info:
        load_inventory(path)
    return messages(info.value, tmp_path)


GOOD_PLAYBOOK = """
- name: Gradual
  hosts: clients
  serial: {over: users, attribute: wave}
  vars: {pkg: 'x.msi'}
  steps:
    - name: Upgrade
      ldr_host: {count: 3}
      tags: [upgrade]
      retries: 2
    - name: Export
      ldr_user:
      when: "{{ user.alias != 'bob' }}"
"""

INVENTORY = """
all:
  vars: {domain: contoso.com, level: all}
  children:
    clients:
      vars: {level: clients}
      hosts:
        pc0001: {}
        pc0002: {address: 127.0.0.2, port: 2222, user: admin, vars: {level: host}}
      children:
        pilot:
          vars: {level: pilot, pilot: true}
          hosts: {pc0001: }
    lcs_servers:
      hosts: {lcs01: {connection: lab}}
users:
  alice: {im_address: alice@im.contoso.com, clients: [pc0001], wave: 1}
  bob: {im_address: bob@im.contoso.com, clients: [pc0002], display_name: Bob, vars: {x: 1}}
"""


def test_valid_playbook_loads_into_the_model(tmp_path):
    pb = load_playbook(write(tmp_path, "pb.yml", GOOD_PLAYBOOK))
    play = pb.plays[0]
    assert play.name == "Gradual" and play.hosts == "clients" and play.users == "all"
    assert play.serial.over == "users" and play.serial.attribute == "wave"
    up, ex = play.steps
    assert (up.module, dict(up.args), up.tags, up.retries, up.line) == ("ldr_host", {"count": 3}, ("upgrade",), 2, 6)
    assert (ex.module, dict(ex.args), ex.when) == ("ldr_user", {}, "{{ user.alias != 'bob' }}")
    assert len(up.fingerprint) == 64 and up.fingerprint != ex.fingerprint


def test_editing_a_step_changes_its_fingerprint_only(tmp_path):
    a = load_playbook(write(tmp_path, "a.yml", GOOD_PLAYBOOK)).plays[0].steps
    b = load_playbook(write(tmp_path, "b.yml", GOOD_PLAYBOOK.replace("count: 3", "count: 4"))).plays[0].steps
    assert a[0].fingerprint != b[0].fingerprint
    assert a[1].fingerprint == b[1].fingerprint


def test_scalar_serial_cuts_users_when_the_play_has_user_steps_else_hosts(tmp_path):
    pb = load_playbook(write(tmp_path, "pb.yml", """
        - hosts: clients
          serial: "25%"
          steps: [{name: A, ldr_user: {}}]
        - hosts: clients
          serial: 10
          steps: [{name: B, ldr_host: {}}]
    """))
    assert (pb.plays[0].serial.over, pb.plays[0].serial.percent) == ("users", 25.0)
    assert (pb.plays[1].serial.over, pb.plays[1].serial.size) == ("hosts", 10)
    assert pb.plays[0].name == "play 1"


def test_unknown_key_names_the_step_and_suggests_the_keyword(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          steps:
            - name: Export
              ldr_user: {}
              retires: 3
    """) == ["pb.yml:5:7: unknown key 'retires' in step 'Export' (did you mean 'retries'?)"]


def test_unknown_play_key(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          serail: 3
          steps: [{name: A, ldr_host: {}}]
    """) == ["pb.yml:2:3: unknown key 'serail' in play 'P' (did you mean 'serial'?)"]


def test_wrong_type(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          steps:
            - name: A
              ldr_host: {}
              retries: many
    """) == ["pb.yml:5:16: 'retries' must be an integer in step 'A'"]


def test_missing_required_key(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          hosts: all
    """) == ["pb.yml:1:3: play 'P' is missing required key 'steps'"]
    assert playbook_errors(tmp_path, """
        - name: P
          steps:
            - ldr_host: {}
    """) == ["pb.yml:3:7: step 1 of 'P' is missing required key 'name'"]


def test_bad_serial(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          serial: {over: people, attribute: wave}
          steps: [{name: A, ldr_host: {}}]
    """) == ["pb.yml:2:11: 'serial' must be a count, a percentage from 1% to 100% like '25%' or {over:…, attribute:…} in play 'P'"]
    assert playbook_errors(tmp_path, """
        - name: P
          serial: "ten%"
          steps: [{name: A, ldr_host: {}}]
    """) == ["pb.yml:2:11: 'serial' must be a count, a percentage from 1% to 100% like '25%' or {over:…, attribute:…} in play 'P'"]


def test_duplicate_yaml_key(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          hosts: all
          hosts: clients
          steps: [{name: A, ldr_host: {}}]
    """) == ["pb.yml:3:3: duplicate key 'hosts' (first defined at line 2, column 3)"]


def test_duplicate_step_name(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          steps:
            - {name: A, ldr_host: {}}
        - name: Q
          steps:
            - {name: A, ldr_user: {}}
    """) == ["pb.yml:6:14: duplicate step name 'A' (first used at pb.yml:3:14); step names must be unique"]


def test_unknown_module_lists_known_modules_and_suggests(tmp_path):
    errors = playbook_errors(tmp_path, """
        - name: P
          steps:
            - name: A
              ldr_hots: {}
    """)
    assert len(errors) == 1
    assert errors[0].startswith("pb.yml:4:7: unknown step module 'ldr_hots' in step 'A' (did you mean 'ldr_host'?); "
                                "known modules: ")
    assert "ldr_host" in errors[0].split("known modules: ")[1]
    assert "ldr_user" in errors[0].split("known modules: ")[1]


def test_step_without_module(tmp_path):
    errors = playbook_errors(tmp_path, """
        - name: P
          steps:
            - name: A
              tags: [x]
    """)
    assert errors[0].startswith("pb.yml:3:7: step 'A' names no step module; known modules: ")


def test_bad_module_args(tmp_path):
    assert playbook_errors(tmp_path, """
        - name: P
          steps:
            - name: A
              ldr_host: {count: three, colour: red}
    """) == [
        "pb.yml:4:25: 'count' must be an integer in the arguments of step 'A' (ldr_host)",
        "pb.yml:4:32: unknown key 'colour' in the arguments of step 'A' (ldr_host)",
    ]


def test_templated_module_args_are_not_type_checked_but_syntax_checked(tmp_path):
    pb = load_playbook(write(tmp_path, "ok.yml", """
        - name: P
          steps: [{name: A, ldr_host: {count: "{{ n }}"}}]
    """))
    assert pb.plays[0].steps[0].args == {"count": "{{ n }}"}
    errors = playbook_errors(tmp_path, """
        - name: P
          steps: [{name: A, ldr_host: {path: "{{ n + }}"}, when: "x ==="}]
    """)
    assert errors[0].startswith("pb.yml:2:38: template syntax error in step 'A':")
    assert errors[1].startswith("pb.yml:2:58: template syntax error in 'when' of step 'A':")


def test_yaml_syntax_error(tmp_path):
    errors = playbook_errors(tmp_path, """
        - name: P
          steps: [{name: A, ldr_host: {}
    """)
    # libyaml and the pure-Python parser word the end differently
    assert len(errors) == 1
    assert errors[0].startswith("pb.yml:3:1: YAML syntax error: while parsing a flow mapping, ")
    assert "expected ',' or '}'" in errors[0]


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as info:
        load_playbook(tmp_path / "nope.yml")
    assert str(info.value) == f"{tmp_path}/nope.yml: file not found"
    with pytest.raises(InputError, match="is a directory"):
        load_inventory(tmp_path)


def test_empty_playbook(tmp_path):
    assert playbook_errors(tmp_path, "# nothing\n") == ["pb.yml:1:1: the playbook is empty; expected a list of plays"]


def test_all_errors_are_reported_in_file_order(tmp_path):
    errors = playbook_errors(tmp_path, """
        - name: P
          serial: 0
          steps:
            - {name: A, ldr_host: {}, retires: 1}
            - {name: A, ldr_host: {}}
    """)
    assert [e.split(": ")[0] for e in errors] == ["pb.yml:2:11", "pb.yml:4:31", "pb.yml:5:14"]


def test_inventory_vars_cascade_all_then_groups_parent_first_then_host(tmp_path):
    inv = load_inventory(write(tmp_path, "inv.yml", INVENTORY))
    pc1, pc2, lcs = inv.hosts["pc0001"], inv.hosts["pc0002"], inv.hosts["lcs01"]
    assert pc1.vars == {"domain": "contoso.com", "level": "pilot", "pilot": True}
    assert pc2.vars == {"domain": "contoso.com", "level": "host"}
    assert lcs.vars == {"domain": "contoso.com", "level": "all"}
    assert pc1.groups == ("all", "clients", "pilot")
    assert (pc2.address, pc2.port, pc2.user, pc2.connection) == ("127.0.0.2", 2222, "admin", "ssh")
    assert lcs.connection == "lab"
    assert list(inv.hosts) == ["pc0001", "pc0002", "lcs01"]
    assert inv.group_hosts("clients") == ["pc0001", "pc0002"]
    assert inv.users["alice"].wave == "1" and inv.users["alice"].clients == ("pc0001",)
    assert inv.users["bob"].vars == {"x": 1} and inv.users["bob"].display_name == "Bob"


def test_lab_dir_is_resolved_against_the_inventory_file_and_means_lab_connections(tmp_path):
    (tmp_path / "sub").mkdir()
    inv = load_inventory(write(tmp_path / "sub", "inv.yml", """
        all:
          vars: {lab_dir: ../lab}
          hosts: {pc1: {}}
    """))
    assert inv.vars["lab_dir"] == str((tmp_path / "lab").resolve())
    assert inv.hosts["pc1"].connection == "lab"
    assert inv.hosts["pc1"].vars["lab_dir"] == inv.vars["lab_dir"]


def test_unknown_client_host(tmp_path):
    assert inventory_errors(tmp_path, """
        all:
          hosts: {pc0001: {}}
        users:
          alice: {im_address: alice@im.contoso.com, clients: [pc0001, pc0010]}
    """) == ["inv.yml:4:63: user 'alice': client 'pc0010' is not a host in this inventory (did you mean 'pc0001'?)"]


def test_inventory_unknown_key_and_bad_enum(tmp_path):
    assert inventory_errors(tmp_path, """
        all:
          hosts:
            pc0001: {adress: 127.0.0.2}
            lcs01: {connection: sssh}
    """) == [
        "inv.yml:3:14: unknown key 'adress' in host 'pc0001' (did you mean 'address'?)",
        "inv.yml:4:25: 'connection' must be one of lab, ssh (got 'sssh') in host 'lcs01' (did you mean 'ssh'?)",
    ]


def test_inventory_user_fields_are_checked(tmp_path):
    assert inventory_errors(tmp_path, """
        all: {hosts: {pc1: }}
        users:
          alice: {clients: [pc1]}
          bob: {im_address: bob}
    """) == [
        "inv.yml:3:10: user 'alice' is missing required key 'im_address'",
        "inv.yml:4:21: 'im_address' must be an address like alice@im.contoso.com (letters, digits and "
        "!#$&'*+/=?^_`{|}~.- before the @, a DNS name after it) in user 'bob'",
    ]


def test_duplicate_users_and_hosts_are_errors(tmp_path):
    assert inventory_errors(tmp_path, """
        all:
          children:
            a: {hosts: {pc1: {port: 22}}}
            b: {hosts: {pc1: {port: 23}}}
        users:
          alice: {im_address: alice@x.com}
          alias2: {im_address: Alice@X.com}
    """) == [
        "inv.yml:4:17: host 'pc1' is defined twice (first at inv.yml:3:17); host names must be unique",
        "inv.yml:7:24: user 'alias2' has the same im_address as user 'alice'; users must be unique",
    ]


def test_group_children_must_exist_and_not_cycle(tmp_path):
    assert inventory_errors(tmp_path, """
        all:
          children:
            a: {children: {b: , missing: }}
            b: {children: {a: }}
    """) == [
        "inv.yml:3:25: group 'missing' (child of 'a') is not defined anywhere; define it with a mapping (even {})",
        "inv.yml:4:5: group cycle: a -> b -> a",
    ]


def test_host_in_several_groups_is_one_host(tmp_path):
    inv = load_inventory(write(tmp_path, "inv.yml", """
        all:
          children:
            a: {hosts: {pc1: {port: 22}}}
            b: {hosts: {pc1: }}
    """))
    assert list(inv.hosts) == ["pc1"] and inv.hosts["pc1"].groups == ("all", "a", "b")


def test_lab_plugin_loads_its_labs_inventory_and_never_generates_one(tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("runner.lab.generator")  # loading must not reach the generator
    monkeypatch.setitem(sys.modules, "runner.lab.generator", module)
    plugin = write(tmp_path, "lab.yml", """
        plugin: lab
        lab: {dir: .lab/x, clients: 3}
    """)
    with pytest.raises(InputError, match=r"the lab in \.lab/x has not been generated yet"):
        load_inventory(plugin)
    assert not (tmp_path / ".lab").exists()
    (tmp_path / ".lab" / "x").mkdir(parents=True)
    write(tmp_path, ".lab/x/inventory.yml", """
        all:
          vars: {lab_dir: lab}
          children: {clients: {hosts: {pc0001: {}}}}
        users: {alice: {im_address: alice@im.contoso.com, clients: [pc0001]}}
    """)
    inv = load_inventory(plugin)
    assert inv.hosts["pc0001"].connection == "lab"
    assert inv.users["alice"].clients == ("pc0001",)


def test_lab_plugin_settings_are_validated(tmp_path):
    assert inventory_errors(tmp_path, """
        plugin: lab
        lab: {clients: 0, seeds: 1}
    """) == [
        "inv.yml:2:16: 'clients' must be at least 1 (got 0) in the lab plugin settings",
        "inv.yml:2:19: unknown key 'seeds' in the lab plugin settings (did you mean 'seed'?)",
    ]


def test_unsafe_host_group_and_user_names_are_reported_at_their_key(tmp_path):
    """Names become file and hive names: anything but letters, digits, '.', '_', '-' is refused."""
    inv = tmp_path / "inv.yml"
    inv.write_text(
        "all:\n"
        "  children:\n"
        "    clients:\n"
        "      hosts:\n"
        "        pc0001: {}\n"
        "        \"pc 2&x\": {}\n"
        "    \"bad group!\":\n"
        "      hosts: {}\n"
        "users:\n"
        "  alice: {im_address: alice@im.contoso.com, clients: [pc0001]}\n"
        "  \"../evil\": {im_address: evil@im.contoso.com, clients: [pc0001]}\n")
    with pytest.raises(InputError) as exc:
        load_inventory(inv)
    text = str(exc.value)
    assert f"{inv}:6:9: 'pc 2&x' is not a valid host name" in text
    assert f"{inv}:7:5: 'bad group!' is not a valid group name" in text
    assert f"{inv}:11:3: '../evil' is not a valid user alias" in text


@pytest.mark.parametrize("field, value, says", [
    ("ad_guid", '" & reg add HKLM\\SOFTWARE\\X /f & "', "must be an AD objectGUID like"),
    ("ad_guid", "{01234567-0123-4567-89AB-CDEF01234567", "must be an AD objectGUID like"),
    ("ad_guid", "{01234567-0123-4567-89AB-CDEF0123456Z}", "must be an AD objectGUID like"),
    ("sid", "S-1-5-21-1' OR '1'='1", "must be a Windows SID"),
    ("im_address", 'bob"&calc&"@im.contoso.com', "must be an address like"),
    ("im_address", "bob@im.contoso.com%PATH%", "must be an address like"),
    ("im_address", "bob@-bad-.com", "must be an address like"),
    ("sip_uri", "sip:bob@contoso.com' OR 'x'='x", "must be a SIP URI"),
    ("sip_uri", "sip:bob@contoso.com & del C:\\x", "must be a SIP URI"),
    ("sip_uri", "sip:" + "b" * 460 + "@contoso.com", "must be a SIP URI"),
])
def test_identifiers_with_foreign_characters_are_refused_at_their_line(tmp_path, field, value, says):
    """Identifiers enter WQL, LDIF and cmd.exe lines: their formats are checked at load (exit 4)."""
    lines = ["all: {hosts: {pc1: }}", "users:", "  bob:", "    clients: [pc1]"]
    if field != "im_address":
        lines.append("    im_address: bob@im.contoso.com")
    lines.append(f"    {field}: {json.dumps(value)}")
    errors = inventory_errors(tmp_path, "\n".join(lines) + "\n")
    assert len(errors) == 1 and errors[0].startswith(f"inv.yml:{len(lines)}:"), errors
    assert says in errors[0] and f"'{field}'" in errors[0] and "user 'bob'" in errors[0], errors


def test_well_formed_identifiers_with_apostrophes_and_plus_load(tmp_path):
    (tmp_path / "inv.yml").write_text(
        "all: {hosts: {pc1: }}\nusers:\n  obrien:\n    im_address: \"o'brien+im@im.contoso.com\"\n"
        "    sip_uri: \"sip:o'brien@contoso.com\"\n    ad_guid: \"{01234567-89ab-cdef-0123-456789ABCDEF}\"\n"
        "    sid: S-1-5-21-1004336348-1177238915-682003330-1104\n    clients: [pc1]\n", encoding="utf-8")
    inv = load_inventory(tmp_path / "inv.yml")
    assert inv.users["obrien"].sip_uri == "sip:o'brien@contoso.com"


def test_an_ad_guid_pasted_without_braces_is_taken_in_the_braced_form(tmp_path):
    """Windows tools print GUIDs with or without braces; LCS keys users by the braced one."""
    (tmp_path / "inv.yml").write_text(
        "all: {hosts: {pc1: }}\nusers:\n  al:\n    im_address: al@im.contoso.com\n"
        "    ad_guid: d76d4330-f144-4b5e-9f3a-0123456789ab\n    clients: [pc1]\n", encoding="utf-8")
    assert load_inventory(tmp_path / "inv.yml").users["al"].ad_guid == "{d76d4330-f144-4b5e-9f3a-0123456789ab}"


@pytest.mark.parametrize("rule, line, says", [
    ('{domains: {im.contoso.com: contoso.com}, template: "sip:{locl}@{domain}"}', 3,
     "unknown field {locl} (did you mean {local}?)"),
    ('{template: "{local.nosuch}"}', 3, "unknown field {local.nosuch}"),
    ('{template: "{local}@{domain}"}', 3, "does not start with 'sip:'"),
    ('{template: "sip:admin@{domain}"}', 3, "uses neither {local} nor {address}"),
    ('{template: "sip:{local!r}@{domain}"}', 3, "takes no format or conversion"),
    ('"sip:{local}@contoso.com"', 3, "sip_mapping must be a mapping"),
    ('{tabel: {}}', 3, "unknown key 'tabel' in sip_mapping"),
    ('{table: {"bob@im.fabrikam.com": "bob@fabrikam.com"}}', 3, "does not start with 'sip:'"),
    ('{domains: {im.contoso.com: "contoso .com"}}', 3, "not a valid domain name"),
])
def test_a_wrong_mapping_rule_is_refused_at_load_naming_sip_mapping(tmp_path, rule, line, says):
    """A mapping typo fails no task (contacts just go unmapped, the night goes on): exit 4 at load."""
    errors = inventory_errors(tmp_path, f"all:\n  vars:\n    sip_mapping: {rule}\n  hosts: {{pc1: }}\n"
                                        "users:\n  bob: {im_address: bob@im.contoso.com, clients: [pc1]}\n")
    assert len(errors) == 1 and errors[0].startswith(f"inv.yml:{line}:") and says in errors[0], errors
    assert "sip_mapping" in errors[0]


def test_a_users_own_mapping_override_is_checked_too(tmp_path):
    errors = inventory_errors(tmp_path, "all: {hosts: {pc1: }}\nusers:\n  bob:\n    im_address: bob@im.contoso.com\n"
                                        "    clients: [pc1]\n    vars:\n      sip_mapping:\n"
                                        "        template: \"sip:{loc}@{domain}\"\n")
    assert len(errors) == 1 and errors[0].startswith("inv.yml:8:") and "{loc}" in errors[0], errors


def test_the_shipped_rules_and_a_jinja_rule_load(tmp_path):
    for text in ('{domains: {im.contoso.com: contoso.com}, template: "sip:{local}@{domain}", '
                 'table: {"bob@im.fabrikam.com": "sip:bob@fabrikam.com"}}',
                 '"{{ org_rule }}"'):
        write(tmp_path, "inv.yml", f"all:\n  vars:\n    sip_mapping: {text}\n  hosts: {{pc1: }}\n"
                                   "users:\n  bob: {im_address: bob@im.contoso.com, clients: [pc1]}\n")
        load_inventory(tmp_path / "inv.yml")
