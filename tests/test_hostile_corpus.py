"""A corpus of hostile and careless input (issue 9), run by one parametrised test.

Every case is a playbook, an inventory, options, an environment variable or a
state directory that is wrong in one way, with the exit code it must give and
the message fragments it must print: the file and line (``{pb}:12:``), and the
key or value the problem is about. Cases are built by class from the two small
valid files in tests/hostile/ (reader limits, YAML oddities, every schema field
with bad types and values, identifiers carrying cmd.exe/WQL/LDIF metacharacters
and Unicode, templates, options, the state directory), so a new field or check
gets its cases next to its neighbours. Each runs the CLI in-process.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from cli_support import cli

HERE = Path(__file__).resolve().parent / "hostile"
PB_LINES = (HERE / "playbook.yml").read_text(encoding="utf-8").splitlines()
INV_LINES = (HERE / "inventory.yml").read_text(encoding="utf-8").splitlines()
VALIDATE = ("validate", "{pb}", "-i", "{inv}")
APPLY = ("apply", "{pb}", "-i", "{lab}", "--state", "{st}", "--check")


@dataclass(frozen=True)
class Case:
    """One hostile input: what to write, what to run, what it must say."""

    id: str
    code: int
    says: tuple[str, ...]
    pb: str | bytes | None = None       # the playbook's content (None: tests/hostile/playbook.yml)
    inv: str | bytes | None = None      # the inventory's content
    args: tuple[str, ...] = VALIDATE
    env: tuple[tuple[str, str], ...] = ()
    setup: Callable[[Path], None] | None = field(default=None, compare=False)  # gets the state dir
    absent: tuple[str, ...] = ("Traceback",)


CASES: list[Case] = []


def case(id: str, code: int, *says: str, **kw) -> None:
    CASES.append(Case(id=id, code=code, says=says, **kw))


def _replace(lines: list[str], line: int, text: str, span: int = 1) -> str:
    """``lines`` with ``span`` lines from ``line`` on replaced by ``text``."""
    out = list(lines)
    out[line - 1:line - 1 + span] = text.split("\n")
    return "\n".join(out) + "\n"


def pb_line(id: str, line: int, text: str, *says: str, code: int = 4, at: int | None = None, span: int = 1,
            **kw) -> None:
    """The playbook with ``line`` (and ``span - 1`` more) replaced by ``text``; the error
    is at line ``at`` (default ``line``)."""
    where = () if code == 0 else (f"{{pb}}:{at or line}:",)
    case(id, code, *where, *says, pb=_replace(PB_LINES, line, text, span), **kw)


def inv_line(id: str, line: int, text: str, *says: str, code: int = 4, at: int | None = None, span: int = 1,
             **kw) -> None:
    where = () if code == 0 else (f"{{inv}}:{at or line}:",)
    case(id, code, *where, *says, inv=_replace(INV_LINES, line, text, span), **kw)


def pb_text(id: str, text: str | bytes, *says: str, code: int = 4, **kw) -> None:
    case(id, code, *says, pb=text, **kw)


# -- the reader: size, type, depth, aliases, encoding ----------------------------------------

def _laughs(levels: int, indent: str = "    ") -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "".join(f"{indent}{t}\n" for t in lines)


MINI = "- name: p\n  hosts: all\n  steps:\n    - name: s\n      inventory_clients: {}\n"
pb_text("laughs-in-play-vars", "- name: p\n  hosts: all\n  vars:\n" + _laughs(9) + "  steps: []\n",
        "{pb}:", "expands to more than 2,000,000 values")
pb_text("laughs-in-step-args", "- name: p\n  hosts: all\n  steps:\n    - name: s\n      inventory_clients:\n"
        + _laughs(9, "        "), "{pb}:", "expands to more than 2,000,000 values")
case("laughs-in-inventory-vars", 4, "{inv}:", "expands to more than 2,000,000 values",
     inv="all:\n  vars:\n" + _laughs(9) + "users: {}\n")
pb_text("nesting-990-lists", "- name: p\n  hosts: all\n  vars:\n    x: " + "[" * 990 + "]" * 990 + "\n  steps: []\n",
        "{pb}:4:", "nested too deeply")
pb_text("nesting-65-maps", "- name: p\n  hosts: all\n  vars:\n    x: " + "{a: " * 65 + "1" + "}" * 65
        + "\n  steps: []\n", "{pb}:4:", "nested too deeply (more than 64 levels)")
case("nesting-in-inventory", 4, "{inv}:3:", "nested too deeply",
     inv="all:\n  vars:\n    x: " + "[" * 100 + "]" * 100 + "\nusers: {}\n")
case("playbook-is-a-fifo", 4, "{pb}: not a regular file", setup=lambda st: os.mkfifo(st.parent / "pb.yml"))
case("inventory-is-a-fifo", 4, "{inv}: not a regular file", setup=lambda st: os.mkfifo(st.parent / "inv.yml"))
case("playbook-is-dev-zero", 4, "/dev/zero: not a regular file", args=("validate", "/dev/zero"))
case("playbook-is-dev-urandom", 4, "/dev/urandom: not a regular file", args=("validate", "/dev/urandom"))
case("inventory-is-dev-null", 4, "/dev/null: not a regular file", args=("validate", "{pb}", "-i", "/dev/null"))
case("playbook-is-a-directory", 4, "is a directory", args=("validate", "{st}"),
     setup=lambda st: st.mkdir())
case("playbook-missing", 4, "nosuch.yml: file not found", args=("validate", "{st}/nosuch.yml"))
case("inventory-missing", 4, "nosuch.yml: file not found", args=("validate", "{pb}", "-i", "{st}/nosuch.yml"))
case("playbook-40-mib", 4, "{pb}:", "larger than the 32 MiB",
     setup=lambda st: os.truncate(_touch(st.parent / "pb.yml"), 40 << 20))
case("inventory-40-mib", 4, "{inv}:", "larger than the 32 MiB",
     setup=lambda st: os.truncate(_touch(st.parent / "inv.yml"), 40 << 20))
pb_text("empty-playbook", "", "{pb}:1:1: the playbook is empty")
pb_text("comments-only-playbook", "# nothing\n# here\n", "{pb}:1:1: the playbook is empty")
case("empty-inventory", 4, "{inv}:1:1: the inventory is empty", inv="")
pb_text("latin-1-playbook", "- name: caf\xe9\n  steps: []\n".encode("latin-1"), "{pb}:", "not UTF-8")
case("latin-1-inventory", 4, "{inv}:", "not UTF-8", inv="all:\n  vars: {x: caf\xe9}\n".encode("latin-1"))
pb_text("nul-in-step-name", b"- name: p\n  hosts: all\n  steps:\n    - name: s\x00\n", "{pb}:4:14:", "U+0000")
pb_text("bell-in-play-name", b"- name: p\x07\n  steps: []\n", "{pb}:1:10:", "U+0007")
case("nul-in-inventory", 4, "{inv}:3:", "U+0000", inv=b"all:\n  hosts:\n    pc\x001: {}\n")
pb_text("utf-16-bom-playbook-read", "\n".join(PB_LINES).encode("utf-16"), "valid", code=0)
pb_text("utf-32-bom-playbook-read", "\n".join(PB_LINES).encode("utf-32"), "valid", code=0)
pb_text("utf-8-bom-playbook-read", b"\xef\xbb\xbf" + "\n".join(PB_LINES).encode(), "valid", code=0)
pb_text("utf-16-le-without-bom", "\n".join(PB_LINES).encode("utf-16-le"), "{pb}:1:1:", "UTF-16 without a byte-order mark")
pb_text("utf-16-be-without-bom", "\n".join(PB_LINES).encode("utf-16-be"), "{pb}:1:1:", "UTF-16 without a byte-order mark")
pb_text("nul-first", b"\x00- name: p\n", "{pb}:1:1:", "U+0000")
pb_text("utf-16-error-has-its-line", "- name: p\n  hosts: all\n  steps: []\n".encode("utf-16"),
        "{pb}:3:10:", "'steps' must not be empty")
pb_line("tab-indentation", 5, "\tinventory_clients: {}", "tab character")
pb_line("duplicate-play-key", 9, "  hosts: all", "duplicate key 'hosts'", at=9)
inv_line("duplicate-user", 24, "  alice:", "duplicate key 'alice'")
inv_line("duplicate-host", 11, "        pc1: {}", "duplicate key 'pc1'")
pb_text("unclosed-flow", "- name: p\n  hosts: [a, b\n  steps: []\n", "{pb}:", "YAML syntax error")
pb_text("unclosed-quote", '- name: "p\n  steps: []\n', "{pb}:", "YAML syntax error")
pb_text("two-documents", MINI + "---\n" + MINI, "{pb}:6:", "YAML")
pb_text("python-tag", "- name: !!python/object/apply:os.system ['echo hi']\n  steps: []\n", "{pb}:1:",
        "python/object")
pb_text("custom-tag", "- name: !vault |\n    abc\n  steps: []\n", "{pb}:1:", "!vault")
pb_text("scalar-document", "just text\n", "{pb}:1:", "must be a list of plays")
pb_text("mapping-document", "name: p\nsteps: []\n", "{pb}:1:", "must be a list of plays")
case("list-inventory", 4, "{inv}:1:", "must be a mapping", inv="- all\n- users\n")
case("scalar-inventory", 4, "{inv}:1:", "must be a mapping", inv="hello\n")
pb_text("complex-key", "- name: p\n  ? [a, b]\n  : 1\n  steps: []\n", "{pb}:2:", "a key must be a name")
pb_text("anchor-undefined", "- name: p\n  vars: *nothing\n  steps: []\n", "{pb}:2:9:", "the alias '*nothing' refers to no anchor")

# -- keys YAML reads as something else -------------------------------------------------------

for word, kind in (("yes", "a boolean"), ("on", "a boolean"), ("off", "a boolean"), ("true", "a boolean"),
                   ("null", "null"), ("~", "null"), ("12", "a number"), ("1.5", "a number"),
                   ("0x1F", "a number"), ("2024-01-01", "a date")):
    pb_line(f"step-key-{word}", 5, f"      {word}: {{}}", f"the key '{word}' is read by YAML as {kind}")
    inv_line(f"host-name-{word}", 11, f"        {word}: {{}}", f"the key '{word}' is read by YAML as {kind}")
for word in ("yes", "no", "123"):
    inv_line(f"user-alias-{word}", 24, f"  {word}:", f"the key '{word}' is read by YAML as", "quote it")
    inv_line(f"group-name-{word}", 13, f"    {word}: {{hosts: {{exim01: {{}}}}}}", f"the key '{word}' is read")
pb_line("vars-key-on", 12, "  vars: {on: 1}", "the key 'on' is read by YAML as a boolean")
inv_line("long-host-name", 11, "        " + "h" * 5000 + ": {}", "a key longer than 1024 characters")
inv_line("long-quoted-host-name", 11, '        "' + "h" * 5000 + '": {}', "a key longer than 1024 characters", "quoted or not")
inv_line("host-name-300", 11, "        " + "h" * 300 + ": {}", "'" + "h" * 300 + "' is not a valid host name")
inv_line("quoted-number-host-ok", 11, "        pc2: {}\n        '12': {}", "valid", code=0)

# -- merge keys: a merged value is reported where it is written, naming where it was merged ----

MERGED = ("- name: p\n  hosts: all\n  vars:\n    step_defaults: &sd {retries: -1, delay: 5}\n  steps:\n"
          "    - name: s\n      inventory_clients: {}\n      <<: *sd\n")
pb_text("merge-bad-retries", MERGED, "{pb}:4:34: 'retries' must be at least 0",
        "merged by '<<' into the mapping at line 6")
pb_text("merge-unknown-key", MERGED.replace("retries: -1", "retires: 1"), "{pb}:4:25: unknown key 'retires'",
        "did you mean 'retries'", "merged by '<<' into the mapping at line 6")
pb_text("merge-list-of-maps", MERGED.replace("*sd", "[*sd, {throttle: 0}]").replace("retries: -1", "retries: 1"),
        "{pb}:8:28:", "'throttle' must be at least 1")
pb_text("merge-of-a-scalar", MERGED.replace("*sd", "1"), "{pb}:8:11:", "expected a mapping or list of mappings")
pb_text("merge-overridden-is-fine", MERGED.replace("<<: *sd", "<<: *sd\n      retries: 2"), "valid", code=0)
case("merge-host-port", 4, "{inv}:10:25: 'port' must be at least 1", "host 'pc2'",
     "merged by '<<' into the mapping at line 11", inv=_replace(INV_LINES, 10, "        pc1: &pc {port: 0}\n"
                                                             "        pc2: {<<: *pc, address: x}", 2))
case("merge-user-display-name", 4, "{inv}:17:19:", "'display_name' must be a string in user 'bob'",
     "merged by '<<' into the mapping at line 25", inv=_replace(INV_LINES, 15, "  alice: &al", 1)
     .replace("display_name: Alice Smith", "display_name: [Alice]").replace("  bob:\n", "  bob:\n    <<: *al\n"))
for word in ("017", "1_000", "0b11", "+1", "1.0e+3", ".5"):
    inv_line(f"host-name-number-{word}", 11, f"        {word}: {{}}", f"the key '{word}' is read by YAML as a number")

# -- every playbook field, bad types and values ----------------------------------------------

pb_line("play-name-list", 7, "- name: [a]", "'name' must be a string", at=7)
pb_line("play-name-empty", 7, '- name: ""', "'name' must not be empty")
pb_line("play-hosts-number", 8, "  hosts: 12", "'hosts' must be a pattern")
pb_line("play-hosts-empty-list", 8, "  hosts: []", "'hosts' must be a pattern")
pb_line("play-hosts-map", 8, "  hosts: {a: 1}", "'hosts' must be a pattern")
pb_line("play-users-empty", 9, "  users: ''", "'users' must be a pattern")
pb_line("play-unknown-key", 9, "  user: all", "unknown key 'user'", "did you mean 'users'")
for bad in ("0", "-3", "1.5", '"200%"', '"0%"', '"abc"', "[1]", "true", "{over: users}",
            "{over: people, attribute: wave}", "{attribute: wave, colour: red}"):
    pb_line(f"serial-{bad}", 10, f"  serial: {bad}", "serial")
pb_line("serial-unknown-attribute", 10, "  serial: {over: users, attribute: wav}",
        "serial attribute 'wav' is set on none", "did you mean 'wave'", at=7)
for bad, says in (("-1", "at least 0"), ("101", "at most 100"), ('"10%"', "must be a number"),
                  (".nan", ".nan is not a finite number"), (".inf", ".inf is not a finite number"),
                  ("[10]", "must be a number")):
    pb_line(f"max-fail-{bad}", 11, f"  max_fail_percentage: {bad}", says)
pb_line("play-vars-list", 12, "  vars: [1, 2]", "'vars' must be a mapping")
pb_line("play-vars-string", 12, "  vars: x", "'vars' must be a mapping")
pb_line("steps-empty", 13, "  steps: []", "'steps' must not be empty", span=15)
pb_text("steps-mapping", "- name: p\n  steps: {a: 1}\n", "{pb}:2:", "'steps' must be a list")
pb_line("step-is-string", 14, "    - Export", "item 1 of 'steps' must be a mapping", span=2)
pb_line("step-name-number", 14, "    - name: 12", "'name' must be a string")
pb_line("step-name-duplicate", 16, "    - name: Export", "duplicate step name 'Export'")
pb_line("step-no-module", 15, "      tags: [x]", "names no step module", at=14)
pb_line("step-two-modules", 15, "      export_contacts: {}\n      notify_users: {}", "more than one step module", at=16)
pb_line("step-unknown-module", 15, "      export_contact: {}", "unknown step module 'export_contact'",
        "did you mean 'export_contacts'")
pb_line("step-keyword-typo", 18, "      retires: 3", "unknown key 'retires'", "did you mean 'retries'")
for bad, says in (("-1", "at least 0"), ("1.5", "must be an integer"), ('"3"', "must be an integer"),
                  ("[3]", "must be an integer"), ("true", "must be an integer"), ("101", "at most 100"),
                  ("99999999999999999999", "at most 100")):
    pb_line(f"retries-{bad}", 18, f"      retries: {bad}", "'retries'", says)
for bad, says in (("-1", "at least 0"), ("100000", "delay"), (".inf", "not a finite number"),
                  ("-.inf", "not a finite number"), (".NaN", "not a finite number"), ('"5s"', "must be a number")):
    pb_line(f"delay-{bad}", 19, f"      delay: {bad}", says)
for bad, says in (("0", "throttle"), ("1.5", "must be an integer"), ('"4"', "must be an integer")):
    pb_line(f"throttle-{bad}", 24, f"      throttle: {bad}", says)
pb_line("tags-number", 6, "      tags: 12", "'tags' must be a tag or a list of tags")
pb_line("tags-map", 6, "      tags: {a: 1}", "'tags' must be a tag or a list of tags")
pb_line("tags-list-of-lists", 6, "      tags: [[a]]", "'tags' must be a tag or a list of tags")
pb_line("ignore-errors-string", 6, '      ignore_errors: "no"', "'ignore_errors' must be true or false")
pb_line("when-number", 27, "      when: 12", "'when' must be a string or true or false")
pb_line("when-list", 27, "      when: [a]", "'when' must be a string or true or false")
pb_line("args-list", 15, "      export_contacts: [1, 2]", "must be a mapping such as {{option: value}}", "not a list")
pb_line("args-string", 15, "      export_contacts: coexistence", "must be a mapping", "not a string")
pb_line("args-number", 15, "      export_contacts: 3", "must be a mapping", "not an integer")
pb_line("args-unknown", 15, "      export_contacts: {contact_key: x}", "unknown key 'contact_key'",
        "did you mean 'contacts_key'")
pb_line("import-coexistence-string", 22, '        coexistence: "yes"', "'coexistence' must be true or false")
pb_line("import-group-empty", 23, '        coexistence_group: ""', "'coexistence_group' must not be empty")
pb_line("import-group-long", 23, "        coexistence_group: " + "g" * 200, "coexistence_group")
pb_line("import-group-list", 23, "        coexistence_group: [a]", "'coexistence_group' must be a string")
pb_line("upgrade-version-form", 17, "      upgrade_messenger: {version: '5.1 & calc'}",
        "'version' has an unexpected form")
pb_line("upgrade-package-number", 17, "      upgrade_messenger: {package: 12}", "'package' must be a string")
pb_line("upgrade-package-empty", 17, "      upgrade_messenger: {package: ''}", "'package' must not be empty")
pb_line("inventory-require-string", 5, "      inventory_clients: {require_messenger: maybe}",
        "'require_messenger' must be true or false")
pb_line("verify-recreated-number", 26, "      verify_contacts: {contacts_recreated_by_users: 1}",
        "'contacts_recreated_by_users' must be true or false")
pb_line("notify-outbox-empty", 26, "      notify_users: {outbox: ''}", "'outbox' must not be empty")
pb_line("decommission-force-string", 26, "      decommission_exchange_im: {force: 'true'}",
        "'force' must be true or false")

# -- templates -------------------------------------------------------------------------------

pb_line("when-syntax", 27, '      when: "x =="', "template syntax error in 'when'")
pb_line("when-braces-syntax", 27, '      when: "{{ x ==  }}"', "template syntax error in 'when'")
pb_line("when-unknown-filter", 27, '      when: "x | nosuchfilter"', "template syntax error", "nosuchfilter")
pb_line("args-template-syntax", 23, '        coexistence_group: "{{ name "', "template syntax error in step 'Import'")
pb_line("args-block-syntax", 23, '        coexistence_group: "{% for x %}"', "template syntax error")
pb_line("args-template-unknown-test", 23, '        coexistence_group: "{{ x is nosuchtest }}"',
        "template syntax error", "nosuchtest")
for i, src in enumerate(("'x' * 10**9", "'%0999999999d' % 1", "'x'.ljust(10**9)", "'{:>999999999}'.format(1)",
                         "'x' | center(999999999)", "('x' * 1000000) | replace('x', 'xx')")):
    case(f"when-huge-{i}", 2, "unsafe operation in ", "the result would be longer than 1,048,576 items", args=APPLY,
         pb=_replace(PB_LINES, 27, f'      when: "{{{{ {src} }}}}"'))
inv_line("sip-template-typo", 6, '      template: "sip:{locl}@{domain}"', "unknown field {{locl}}", "did you mean {{local}}")
inv_line("sip-template-attribute", 6, '      template: "{local.nosuch}"', "sip_mapping")
inv_line("sip-template-no-local", 6, '      template: "sip:x@{domain}"', "sip_mapping")
inv_line("sip-template-not-sip", 6, '      template: "{local}@{domain}"', "sip_mapping")
inv_line("sip-template-format-spec", 6, '      template: "sip:{local!r}@{domain}"', "sip_mapping")
inv_line("sip-template-list", 6, "      template: [a]", "sip_mapping")
inv_line("sip-mapping-string", 4, '    sip_mapping: "sip:{local}@contoso.com"', "sip_mapping", "mapping", span=3)
inv_line("sip-mapping-list", 4, "    sip_mapping: [a]\n    x:", "sip_mapping")
inv_line("sip-domains-bad-target", 5, "      domains: {im.contoso.com: 'contoso.com & calc'}", "sip_mapping")
inv_line("sip-domains-list", 5, "      domains: [im.contoso.com]", "sip_mapping")
inv_line("sip-table-bad-uri", 5, "      table: {alice@im.contoso.com: 'sip:al ice@contoso.com'}", "sip_mapping")
inv_line("sip-unknown-key", 5, "      domain: {im.contoso.com: contoso.com}", "sip_mapping", "domain")
# the package pushed to key-logon clients: a file on the control node, checked when read
inv_line("package-local-missing", 3, '    messenger_package_local: pkgs/WindowsMessenger51.msi\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com',
         "messenger_package_local 'pkgs/WindowsMessenger51.msi' does not exist")
inv_line("package-local-folder", 3, '    messenger_package_local: .\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com',
         "messenger_package_local '.' is a folder")
inv_line("package-local-empty", 3, '    messenger_package_local: ""\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com', "messenger_package_local")
inv_line("package-local-list", 3, '    messenger_package_local: [a.msi]\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com',
         "messenger_package_local")
inv_line("sha256-tool-unknown", 3, '    client_sha256_tool: md5sum\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com', "client_sha256_tool",
         "auto, sha256sum, certutil, sftp")
# how the client's SFTP server spells paths: checked when the inventory is read, not at the first transfer
inv_line("sftp-paths-typo", 3, '    ssh_sftp_paths: cygwn\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com', "'ssh_sftp_paths' must be one of "
         "win32-openssh, cygwin (got 'cygwn')", "did you mean 'cygwin'")
inv_line("sftp-paths-host", 11, "        pc2: {vars: {ssh_sftp_paths: Cygwin}}", "'ssh_sftp_paths'", "host 'pc2'",
         "did you mean 'cygwin'")
inv_line("sftp-paths-list", 3, '    ssh_sftp_paths: [cygwin]\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com', "'ssh_sftp_paths' must be one of")
inv_line("lab-logon-unknown", 3, '    lab_logon: kerberos\n    lcs_home_server_dn: CN=x,DC=contoso,DC=com', "lab_logon", "password, key")

# -- every inventory field, bad types and values ---------------------------------------------

for bad, says in (("telnet", "'connection' must be one of lab, ssh"), ("[ssh]", "'connection'"),
                  ("null", "'connection'")):
    inv_line(f"connection-{bad}", 11, f"        pc2: {{connection: {bad}}}", says)
for bad, says in (("0", "at least 1"), ("65536", "at most 65535"), ('"22"', "must be an integer"),
                  ("-1", "at least 1"), ("22.5", "must be an integer"), ("[22]", "must be an integer")):
    inv_line(f"port-{bad}", 11, f"        pc2: {{port: {bad}}}", "'port'", says)
inv_line("address-empty", 11, "        pc2: {address: ''}", "'address' must not be empty")
inv_line("address-list", 11, "        pc2: {address: [a]}", "'address' must be a string")
inv_line("user-empty", 11, "        pc2: {user: ''}", "'user' must not be empty")
inv_line("host-vars-list", 11, "        pc2: {vars: [1]}", "'vars' must be a mapping")
inv_line("host-unknown-key", 11, "        pc2: {adress: x}", "unknown key 'adress'", "did you mean 'address'")
inv_line("host-is-list", 11, "        pc2: [a]", "host 'pc2'", "must be a mapping")
inv_line("hosts-is-list", 9, "      hosts: [pc1, pc2]\n      x:", "'hosts' must be a mapping")
inv_line("children-is-list", 7, "  children: [clients]\n  x:", "'children' must be a mapping")
inv_line("group-unknown-key", 9, "      host:", "unknown key 'host'", "did you mean 'hosts'")
inv_line("group-vars-string", 2, "  vars: x\n  y:", "'vars' must be a mapping")
inv_line("undefined-child", 13, "    exchange_im_servers:", "group 'exchange_im_servers'", "(child of 'all')",
         "not defined")
inv_line("top-unknown-key", 14, "user:", "unknown key 'user'", "did you mean 'users'")
case("no-all", 4, "{inv}:1:", "missing required key 'all'", inv="users: {}\n")
inv_line("users-list", 14, "users: [alice]\nx:", "'users' must be a mapping")
inv_line("user-not-mapping", 15, "  alice: alice@im.contoso.com", "user 'alice'", "must be a mapping", span=9)
inv_line("user-unknown-key", 17, "    displayname: Alice", "unknown key 'displayname'", "did you mean 'display_name'")
inv_line("user-missing-im-address", 16, "    x_: 1", "missing required key 'im_address'", at=16)
inv_line("display-name-list", 17, "    display_name: [Alice]", "'display_name' must be a string")
inv_line("clients-string", 18, "    clients: pc1", "'clients' must be a list")
inv_line("clients-numbers", 18, "    clients: [1]", "item 1 of 'clients' must be a string")
inv_line("clients-empty-name", 18, "    clients: ['']", "item 1 of 'clients' must not be empty")
inv_line("clients-unknown", 18, "    clients: [pc3]", "client 'pc3' is not a host", "did you mean")
inv_line("wave-list", 21, "    wave: [w1]", "'wave' must be a string or an integer")
inv_line("wave-bool", 21, "    wave: yes", "'wave' must be a string or an integer")
inv_line("home-server-unknown", 23, "    home_server: lcs02", "home_server 'lcs02' is not a host",
         "did you mean 'lcs01'")
inv_line("home-server-number", 23, "    home_server: 1", "'home_server' must be a string")
inv_line("user-vars-list", 21, "    vars: [1]", "'vars' must be a mapping")
inv_line("same-im-address", 25, "    im_address: ALICE@im.contoso.com", "same im_address as user 'alice'")

# -- identifiers carrying cmd.exe, WQL and LDIF metacharacters, newlines and Unicode ----------

PAYLOADS = {  # each a value in an inventory, written as a YAML double-quoted string
    "cmd-amp": '" & reg add HKLM\\SOFTWARE\\X /f & "',
    "cmd-caret-pipe": "a^|b<c>d",
    "cmd-percent": "%COMSPEC%",
    "cmd-paren": "a)&(calc",
    "wql-quote": "x' OR Name LIKE '%",
    "wql-backslash": "a\\b",
    "ldif-colon": "a: b",
    "ldif-leading-space": " ab",
    "ldif-dn": "x\ndn: cn=admin",
    "ldap-filter": "*)(objectClass=*",
    "newline": "a\nb",
    "cr": "a\rb",
    "tab": "a\tb",
    "fullwidth": "\uff41lice",
    "rtl-override": "ab\u202ecd",
    "zero-width": "a\u200bb",
    "nbsp": "a\u00a0b",
    "empty": "",
}
FIELDS = {  # field -> (inventory line, line text with {v}, value around the payload, what the message names)
    "ad_guid": (20, "    ad_guid: {v}", "{}", "'ad_guid' must be an AD objectGUID"),
    "sid": (19, "    sid: {v}", "S-1-5-21-{}", "'sid' must be a Windows SID"),
    "im_address": (16, "    im_address: {v}", "{}@im.contoso.com", "'im_address' must be an address"),
    "im_domain": (16, "    im_address: {v}", "alice@{}.contoso.com", "'im_address' must be an address"),
    "sip_uri": (22, "    sip_uri: {v}", "sip:{}@contoso.com", "'sip_uri' must be a SIP URI"),
    "host": (11, "        {v}: {{}}", "pc{}", "is not a valid host name"),
    "alias": (24, "  {v}:", "bob{}", "is not a valid user alias"),
    "group": (13, "    {v}: {{hosts: {{exim01: {{}}}}}}", "ex{}", "is not a valid group name"),
}
SIP_USER_CHARACTERS = {("sip_uri", "cmd-paren"), ("sip_uri", "ldap-filter")}
for fname, (line, text, around, says) in FIELDS.items():
    for pname, payload in PAYLOADS.items():
        if pname == "empty" and fname not in ("ad_guid", "im_address"):
            continue
        value = json.dumps(around.replace("{}", payload), ensure_ascii=False)
        if (fname, pname) in SIP_USER_CHARACTERS:  # RFC 3261 user characters: data, escaped where they go
            inv_line(f"{fname}-{pname}-is-data", line, text.format(v=value), "valid", code=0)
        else:
            inv_line(f"{fname}-{pname}", line, text.format(v=value), says)
inv_line("im-address-metachars-are-data", 16, "    im_address: \"o'brien&co|x^y@im.contoso.com\"", "valid", code=0)
inv_line("im-address-domain-injection", 16, '    im_address: "a@im.contoso.com & calc"', "'im_address'")
inv_line("sip-uri-caret", 22, '    sip_uri: "sip:a^b@contoso.com"', "'sip_uri' must be a SIP URI", "invalid user part")
inv_line("sip-uri-brace", 22, '    sip_uri: "sip:{a}@contoso.com"', "'sip_uri' must be a SIP URI", "invalid user part")
inv_line("sip-uri-multicast", 22, '    sip_uri: "sip:a@[224.0.0.1]"', "'sip_uri' must be a SIP URI", "multicast")
inv_line("sip-uri-no-scheme", 22, "    sip_uri: alice@contoso.com", "'sip_uri' must be a SIP URI")
inv_line("sip-uri-too-long", 22, "    sip_uri: sip:" + "a" * 450 + "@contoso.com", "'sip_uri'")
inv_line("ad-guid-short", 20, '    ad_guid: "{0123-4567}"', "'ad_guid'")
inv_line("sid-not-s15", 19, "    sid: S-1-", "'sid'")
inv_line("group-with-dot", 13, "    exchange.im: {hosts: {exim01: {}}}", "is not a valid group name")

# -- DNs (wmic and ldifde lines), and variables checked wherever they are set -----------------

for pname, dn in (("injection", '" & reg add HKLM\\SOFTWARE\\X /f & "'), ("quote-in-value", 'CN=x" & calc & ",DC=a'),
                  ("not-a-dn", "lcs01"), ("empty", ""), ("ellipsis", "CN=LC Services,CN=lcs01,..."),
                  ("semicolon", "CN=a;DC=b"), ("double-comma", "CN=a,,DC=b"), ("trailing-backslash", "CN=a\\"),
                  ("newline", "CN=a\nDC=b"), ("list", ["CN=a"])):
    inv_line(f"dn-{pname}", 3, f"    lcs_home_server_dn: {json.dumps(dn)}", "lcs_home_server_dn",
             "must be an LDAP distinguished name")
inv_line("dn-exchange-config-in-host-vars", 11, '        pc2: {vars: {exchange_config_dn: "CN=Config;x"}}',
         "exchange_config_dn", "must be an LDAP distinguished name")
inv_line("dn-in-user-vars", 27, '    wave: w1\n    vars: {lcs_home_server_dn: nope}', "lcs_home_server_dn", at=28)
inv_line("dn-escaped-comma-ok", 3, '    lcs_home_server_dn: "CN=Smith\\\\, John+OU=x,CN=Users,DC=contoso,DC=com"',
         "valid", code=0)
inv_line("dn-templated-left-to-the-run", 3, '    lcs_home_server_dn: "{{ pool_dn }}"', "valid", code=0)
pb_line("dn-step-argument", 21, '      import_contacts: {}\n    - name: Enable\n      enable_lcs_users: {home_server_dn: "x=;"}',
        "home_server_dn", "must be an LDAP distinguished name", at=23, span=3)
pb_line("play-vars-sip-mapping-typo", 12, '  vars: {x: 1, sip_mapping: {template: "sip:{locl}@{domain}"}}',
        "sip_mapping.template", "unknown field {{locl}}")
pb_line("play-vars-sip-mapping-string", 12, '  vars: {sip_mapping: "sip:{local}@{domain}"}', "sip_mapping must be a mapping")
for pname, value in (("injection", '" & reg add HKLM\\SOFTWARE\\X /f & "'), ("space", "lcs 01"), ("url", "https://lcs01"),
                     ("port-text", "lcs01:sip"), ("number", 5061)):
    inv_line(f"pool-fqdn-{pname}", 3, f"    lcs_pool_fqdn: {json.dumps(value)}", "lcs_pool_fqdn",
             "is not a DNS name or IPv4 address")
inv_line("pool-fqdn-with-port-ok", 3, "    lcs_pool_fqdn: lcs01.contoso.com:5061", "valid", code=0)
inv_line("transport-udp", 11, "        pc2: {vars: {lcs_transport: udp}}", "lcs_transport is 'udp': tcp or tls")
pb_line("play-vars-transport", 12, "  vars: {lcs_transport: ssl}", "lcs_transport is 'ssl': tcp or tls")
pb_line("play-vars-dn", 12, '  vars: {lcs_home_server_dn: "pool one"}', "lcs_home_server_dn")
for pname, value, says in (("json-sip-mapping", '{{"sip_mapping": {{"template": "sip:{{locl}}@{{domain}}"}}}}',
                            "unknown field {{locl}}"),
                           ("json-sip-mapping-string", '{{"sip_mapping": "x"}}', "sip_mapping must be a mapping"),
                           ("inline-dn", "lcs_home_server_dn=oops", "lcs_home_server_dn has 'oops'"),
                           ("json-dn", '{{"exchange_config_dn": "a,b"}}', "exchange_config_dn")):
    case(f"extra-vars-{pname}", 5, "-e ", says, args=APPLY + ("-e", value))
case("extra-vars-file-dn", 4, "{st}/ev.yml:1:", "lcs_home_server_dn", args=APPLY + ("-e", "@{st}/ev.yml"),
     setup=lambda st: (st.mkdir(), (st / "ev.yml").write_text("lcs_home_server_dn: CN=a;b\n")))

# -- options and the environment -------------------------------------------------------------

for args, says in ((("--limit", ""), "--limit '' names nothing"), (("--limit", ","), "names nothing"),
                   (("--limit", "!*"), "leaves no host and no user"), (("--limit", "nosuch"), "nosuch"),
                   (("--tags", ""), "names no tag"), (("--skip-tags", ","), "names no tag"),
                   (("--tags", "nosuchtag"), "nosuchtag"), (("--start-at-step", "Nosuch"), "Nosuch"),
                   (("--forks", "0"), "--forks"), (("--forks", "many"), "--forks"), (("--bogus",), "--bogus")):
    case("option" + "".join(args).replace(" ", "_") or "option-empty", 5, says, args=APPLY + args)
for value in ("inf", "nan", "-1", "1e9", "fast", "0x10"):
    case(f"env-retry-scale-{value or 'empty'}", 5, "RUNNER_RETRY_DELAY_SCALE", args=APPLY,
         env=(("RUNNER_RETRY_DELAY_SCALE", value),))
case("state-is-a-file", 5, "--state", args=("apply", "{pb}", "-i", "{lab}", "--state", "{pb}", "--check"))


# -- `runner lab init --from-inventory`: a package path the lab cannot put on a share -------------

LAB_INIT = ("lab", "init", "--dir", "{st}", "--from-inventory", "{inv}")
for pname, package in (("local-path", r"C:\pkgs\m.msi"), ("share-only", r"\\deploy\m.msi"),
                       ("dot-dot", r"\\deploy\packages\..\..\..\x.msi"), ("dot-dot-server", r"\\..\..\x.msi"),
                       ("long-name", "\\\\deploy\\packages\\" + "a" * 300 + ".msi"),
                       ("trailing-dot", r"\\deploy\packages\x.msi."), ("wildcard", r"\\deploy\packages\*.msi"),
                       ("forward-slash", r"\\deploy\pack/ages\x.msi"),
                       ("http", "http://deploy/x.msi"), ("empty", "")):
    inv_line(f"lab-package-{pname}", 11, f"        pc2: {{vars: {{messenger_package: {json.dumps(package)}}}}}",
             "host 'pc2': messenger_package", "the lab serves the package from a share", args=LAB_INIT)
# a newline in a double-quoted path beside escaped backslashes: refused by the reader already
inv_line("lab-package-newline", 11, "        pc2: {vars: {messenger_package: "
         + json.dumps("\\\\deploy\\pk\\a\nb.msi") + "}}", "in double quotes, \\n is a newline",
         "single quotes", args=LAB_INIT)
inv_line("lab-package-group-var-list", 3, "    messenger_package: [a, b]", "messenger_package [",
         "is not a string", args=LAB_INIT)
inv_line("lab-package-templated-is-left-out", 11, '        pc2: {vars: {messenger_package: "{{ pkg }}"}}',
         "created lab", code=0, args=LAB_INIT)

# -- the state directory ---------------------------------------------------------------------

def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _foreign_sqlite(st: Path) -> None:
    st.mkdir()
    with sqlite3.connect(st / "state.db") as db:
        db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO photos (name) VALUES ('cat.jpg')")


def _tables(st: Path) -> list[str]:
    with sqlite3.connect(f"file:{st / 'state.db'}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


case("lock-is-a-directory", 1, "lock", "directory", args=APPLY[:-1],
     setup=lambda st: (st / "lock").mkdir(parents=True))


def _store_with_lock_dir(st: Path) -> None:
    from runner.state import StateStore
    with StateStore(st):
        pass
    if (st / "lock").exists():
        (st / "lock").unlink()
    (st / "lock").mkdir()


case("lock-is-a-directory-status", 1, "{st}/lock cannot be used: Is a directory", args=("status", "--state", "{st}"),
     setup=_store_with_lock_dir)
case("state-db-is-a-directory", 1, "state.db", "directory", args=APPLY,
     setup=lambda st: (st / "state.db").mkdir(parents=True))
case("state-db-is-text", 1, "state.db", args=APPLY,
     setup=lambda st: (_touch(st / "state.db").write_text("not a database\n" * 100)))
FOREIGN_SAYS = "state.db is not a checkpoint store: it holds another program's tables (photos)"
case("apply-on-foreign-sqlite", 1, FOREIGN_SAYS, args=APPLY, setup=_foreign_sqlite)
case("status-on-foreign-sqlite", 1, FOREIGN_SAYS, args=("status", "--state", "{st}"), setup=_foreign_sqlite)
case("report-on-foreign-sqlite", 1, FOREIGN_SAYS, args=("report", "--state", "{st}"), setup=_foreign_sqlite)


MOUNTS: list[Path] = []  # read-only bind mounts made by a case, undone after it


def _make_read_only(path: Path) -> None:
    """``path`` read-only: chmod for a user, a read-only bind mount for root (whom chmod does not stop)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("root, and no read-only bind mount here: " + done.stderr.decode(errors="replace"))
    MOUNTS.append(path)


def _read_only_store(st: Path) -> None:
    from runner.state import StateStore
    StateStore(st).close()  # a store of earlier runs, then the directory turns read-only
    _make_read_only(st)


def _read_only_parent(st: Path) -> None:
    st.parent.joinpath("ro").mkdir()
    _make_read_only(st.parent / "ro")


READ_ONLY_SAYS = ("is read-only", "make it writable, or give --state a writable directory")
READ_ONLY_NOT = ("Traceback", "unable to open database file", "damaged", "Permission denied")
case("state-dir-read-only", 1, "{st}", *READ_ONLY_SAYS, args=APPLY, setup=_read_only_store, absent=READ_ONLY_NOT)
case("state-dir-read-only-run", 1, "{st}", *READ_ONLY_SAYS, args=APPLY[:-1], setup=_read_only_store,
     absent=READ_ONLY_NOT)
case("state-dir-read-only-status", 1, "{st}", *READ_ONLY_SAYS, args=("status", "--state", "{st}"),
     setup=_read_only_store, absent=READ_ONLY_NOT)
case("state-dir-under-read-only", 1, "ro/st is read-only", "/ro is ", *READ_ONLY_SAYS,
     args=("apply", "{pb}", "-i", "{lab}", "--state", "{st}/../ro/st", "--check"), setup=_read_only_parent,
     absent=READ_ONLY_NOT)

# ----------------------------------------------------------------------------------------------

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    from runner.lab.generator import generate
    return generate(tmp_path_factory.mktemp("lab") / "lab", clients=2, users_per_client=1, contacts=2, seed=9)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150, len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_input(c: Case, tmp_path: Path, capsys, monkeypatch, lab: Path) -> None:
    pb, inv, st = tmp_path / "pb.yml", tmp_path / "inv.yml", tmp_path / "st"
    if c.setup:
        c.setup(st)
    for path, content, base in ((pb, c.pb, HERE / "playbook.yml"), (inv, c.inv, HERE / "inventory.yml")):
        if path.exists() and not path.is_file() or path.exists() and c.setup:
            continue
        if content is None:
            content = base.read_bytes()
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    for name, value in c.env:
        monkeypatch.setenv(name, value)
    names = {"pb": str(pb), "inv": str(inv), "st": str(st), "lab": str(lab)}
    args = [a.format(**names) for a in c.args]
    before = _tables(st) if c.setup is _foreign_sqlite else None
    try:
        code, text = cli(capsys, *args)
    finally:
        while MOUNTS:
            subprocess.run(["umount", str(MOUNTS.pop())], check=True)
        for d in (st, tmp_path / "ro"):
            if d.is_dir():
                d.chmod(0o755)
    assert code == c.code, text
    for fragment in c.says:
        assert fragment.format(**names) in text, text
    for fragment in c.absent:
        assert fragment not in text, text
    if before is not None:  # another program's database: refused, and nothing written into it
        assert _tables(st) == before == ["photos"]
