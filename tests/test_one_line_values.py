"""A line end in an identifier or a name is refused when the inventory or playbook is read, at
its line, not found at night on a command line (Python's ``$`` matches before a final newline,
JSON Schema's does not); and the other inputs the run could never use."""
from __future__ import annotations

import pytest

from runner.errors import InputError
from runner.fastschema import ecma_pattern
from runner.lab.generator import generate
from runner.loader import load_inventory, load_playbook

CASES = {
    "im_address": ('"im_address": "probinson@im.contoso.com"', '"im_address": "probinson@im.contoso.com\\n"'),
    "sid": ('"sid": "S-1-5-21-1004336348-1177238915-682003330-1104"',
            '"sid": "S-1-5-21-1004336348-1177238915-682003330-1104\\n"'),
    "ad_guid": ('"ad_guid": "{D76D4330-F144-4BEA-B0C1-1FDECB91CE37}"',
                '"ad_guid": "{D76D4330-F144-4BEA-B0C1-1FDECB91CE37}\\r\\n"'),
    "sip_uri": ('"sip_uri": "sip:probinson@contoso.com"', '"sip_uri": "sip:probinson@contoso.com\\n"'),
    "display_name": ('"Pablo Robinson"', '"Pablo\\r\\nRobinson"'),
    "wave": ('"wave": "wave', '"wave": "\\nwave'),
    "home_server": ('"home_server": "lcs01"}', '"home_server": "lcs01\\n"}'),
    "alias": ("  probinson: {", '  "probinson\\n": {'),
    "host": ("        pc0004: {}", '        "pc0004\\n": {}'),
    "group": ("    lcs_servers:", '    "lcs_servers\\n":'),
    "template": ('"sip:{local}@{domain}"', '"sip:{local}@{domain}\\n"'),
    "jinja field": ('"sip:{local}@{domain}"', '"sip:{{local}}@{domain}"'),
    "percent": ('"sip_uri": "sip:probinson@contoso.com"', '"sip_uri": "sip:p%25robinson@contoso.com"'),
}


@pytest.fixture(scope="module")
def inventory_text(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("one-line") / "lab", clients=4, users_per_client=1, contacts=1, seed=5)
    return path, path.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_at_its_line(inventory_text, case, tmp_path):
    path, text = inventory_text
    old, new = CASES[case]
    assert old in text, case
    bad = path.parent / f"bad-{case.replace(' ', '-')}.yml"
    bad.write_text(text.replace(old, new, 1), encoding="utf-8")  # the first one
    line = text[:text.index(old)].count("\n") + 1
    with pytest.raises(InputError) as e:
        load_inventory(bad)
    message = str(e.value)
    assert message.startswith(f"{bad}:{line}:"), message
    assert "\n" not in message and "\r" not in message  # a quoted name keeps the message on one line


def test_a_tab_in_a_display_name_and_a_jinja_domain_variable_are_fine(inventory_text):
    path, text = inventory_text
    ok = path.parent / "ok.yml"
    ok.write_text(text.replace('"Pablo Robinson"', '"Pablo\\tRobinson"')
                  .replace('"sip:{local}@{domain}"', '"sip:{local}@{{ im_domain }}"'), encoding="utf-8")
    inv = load_inventory(ok)
    assert inv.users["probinson"].display_name == "Pablo\tRobinson"


def test_a_step_name_with_a_line_feed_is_refused(tmp_path):
    pb = tmp_path / "pb.yml"
    pb.write_text('- hosts: clients\n  steps:\n    - name: "Inventory\\nclients"\n      inventory_clients: {}\n',
                  encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_playbook(pb)
    assert str(e.value).startswith(f"{pb}:3:") and "one line" in str(e.value)


@pytest.mark.parametrize("pattern,text,expected", [
    ("^a$", "a", True), ("^a$", "a\n", False), ("^[$]$", "$", True), ("^a\\$$", "a$", True),
    ("^[]$]+$", "]$", True), ("^[^]$]+$", "ab\n", True), ("^[^]$]+$", "a$", False),
])
def test_ecma_pattern_dollar_is_the_end(pattern, text, expected):
    assert (ecma_pattern(pattern).search(text) is not None) is expected


@pytest.mark.parametrize("value,ok", [("-1", False), ("0", False), ('"ten"', False), ('"0"', False), ('"0.0"', False),
                                      ('"00"', False), ("10", True), ("2.5", True), ('"10"', True), ('"0.5"', True)])
def test_ssh_connect_timeout_is_seconds_above_zero(inventory_text, value, ok):
    path, text = inventory_text
    edited = path.parent / "timeout.yml"
    edited.write_text(text.replace("        pc0004: {}", f"        pc0004: {{vars: {{ssh_connect_timeout: {value}}}}}"),
                      encoding="utf-8")
    if ok:
        assert load_inventory(edited).hosts["pc0004"].vars["ssh_connect_timeout"] is not None
        return
    with pytest.raises(InputError) as e:
        load_inventory(edited)
    assert "ssh_connect_timeout" in str(e.value) and "seconds" in str(e.value)


def test_a_byte_that_is_not_utf8_is_reported_at_its_line_and_column(tmp_path):
    bad = tmp_path / "latin1.yml"
    bad.write_bytes("all:\n  hosts:\n    pcé001: {}\n".encode("latin-1"))
    with pytest.raises(InputError) as e:
        load_inventory(bad)
    assert str(e.value).startswith(f"{bad}:3:7: not UTF-8 text"), str(e.value)


@pytest.mark.parametrize("prefix,end", [(b"", b"\r"), (b"\xef\xbb\xbf", b"\r\n")])
def test_the_bad_byte_is_found_with_cr_line_ends_and_after_a_bom(tmp_path, prefix, end):
    bad = tmp_path / "latin1.yml"
    bad.write_bytes(prefix + end.join([b"all:", b"  hosts:", "    pcé001: {}".encode("latin-1"), b""]))
    with pytest.raises(InputError) as e:
        load_inventory(bad)
    byte = len(prefix) + len(b"all:" + end + b"  hosts:" + end + b"    pc")
    assert str(e.value).startswith(f"{bad}:3:7: not UTF-8 text") and f"byte {byte})" in str(e.value), str(e.value)
