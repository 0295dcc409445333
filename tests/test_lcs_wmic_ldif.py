"""wmic and LDIF builders and parsers, with real output samples and hostile values."""
from __future__ import annotations

import base64
import re

import pytest

from runner.errors import TransientFault
from runner.windows import ldif, wmic
from runner.windows.cmdline import UnsafeValueError

LIST_SAMPLE = (
    "\r\r\n\r\r\nGroupID={1,3}\r\r\nName=Bob & \"Co\"\r\r\nSIPURI=sip:bob@contoso.com\r\r\n"
    "\r\r\n\r\r\nGroupID={}\r\r\nName=\r\r\nSIPURI=sip:cy@contoso.com\r\r\n\r\r\n\r\r\n"
)


def test_format_list_output_is_split_into_records():
    recs = wmic.parse_list(LIST_SAMPLE)
    assert recs == [{"GroupID": "{1,3}", "Name": 'Bob & "Co"', "SIPURI": "sip:bob@contoso.com"},
                    {"GroupID": "{}", "Name": "", "SIPURI": "sip:cy@contoso.com"}]
    assert wmic.parse_array(recs[0]["GroupID"]) == ["1", "3"] and wmic.parse_array("{}") == []


def test_no_instances_available_is_an_empty_list():
    assert wmic.parse_list("No Instance(s) Available.\r\n") == []


def test_values_with_equals_signs_keep_them():
    assert wmic.parse_list("Name=a=b\r\n") == [{"Name": "a=b"}]


def test_busy_server_is_a_transient_fault_and_other_errors_are_not():
    busy = wmic.outcome("", "ERROR:\r\nCode = 0x80041045\r\nDescription = Server is busy\r\nFacility = WMI\r\n", False)
    with pytest.raises(TransientFault):
        wmic.raise_for(busy, "create contact")
    other = wmic.outcome("ERROR:\r\nCode = 0x80041019\r\nDescription = Already exists\r\n", "", False)
    assert other.code == 0x80041019
    with pytest.raises(wmic.WmicError) as e:
        wmic.raise_for(other, "create contact")
    assert not isinstance(e.value, TransientFault) and "Already exists" in str(e.value)


def test_get_renders_real_wmic_syntax():
    cmd = wmic.get("MSFT_SIPESUserSetting", ["InstanceID", "PrimaryURI"], wmic.where(PrimaryURI="sip:a@b.com"))
    assert cmd.render() == ("wmic path MSFT_SIPESUserSetting where \"PrimaryURI='sip:a@b.com'\" "
                            "get InstanceID,PrimaryURI /format:list")


def test_create_renders_typed_values():
    cmd = wmic.create("MSFT_SIPESUserContactData", {"UserInstanceID": "{AB}", "SIPURI": "sip:b@c.com",
                                                     "Name": "B & C", "Subscribed": True, "GroupID": [1, 2]})
    assert cmd.render() == ('wmic path MSFT_SIPESUserContactData create UserInstanceID="{AB}",'
                            'SIPURI="sip:b@c.com",Name="B & C",Subscribed=TRUE,GroupID={1,2}')


def test_wql_string_escapes_quote_and_backslash():
    assert wmic.where(SIPURI="sip:o'brien@c.com") == "SIPURI='sip:o\\'brien@c.com'"


def _cmd_exe(line: str, env: dict[str, str]) -> str:
    """Reference model of cmd.exe phases 1-2 on a command line (SO 4094699):
    %VAR% expanded when defined and kept when not; ^ escapes outside quotes; quotes toggle."""
    out, i = [], 0
    while i < len(line):
        if line[i] == "%":
            j = line.find("%", i + 1)
            if j > i and line[i + 1:j] in env:
                out.append(env[line[i + 1:j]])
                i = j + 1
                continue
            if j > i:
                out.append(line[i:j])
                i = j
                continue
        out.append(line[i])
        i += 1
    text, res, quoted, i = "".join(out), [], False, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            quoted = not quoted
            res.append(c)
        elif c == "^" and not quoted and i + 1 < len(text):
            res.append(text[i + 1])
            i += 1
        elif c in "&|<>" and not quoted:
            res.append("\x00" + c)  # a live operator: marks a command boundary
        else:
            res.append(c)
        i += 1
    return "".join(res)


HOSTILE = ['A & B', 'say "hi" | x', '100% %PATH% ^caret^', '<tag> (x)', 'tail\\', '"', '%USERNAME%', "it's"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_display_names_reach_wmic_intact(name):
    cmd = wmic.create("MSFT_SIPESUserContactData", {"SIPURI": "sip:b@c.com", "Name": name})
    line = cmd.render() + " & echo next"
    received = _cmd_exe(line, {"PATH": "C:\\Windows", "USERNAME": "admin"})
    wmic_text, tail = received.split("\x00")
    assert tail == "& echo next" and "\x00" not in wmic_text
    wmic_text = wmic_text.rstrip()
    m = re.search(r'Name="((?:[^"\\]|\\.)*)"$', wmic_text)
    assert m and re.sub(r"\\(.)", r"\1", m.group(1)) == name


def test_line_ends_are_refused_and_clean_text_removes_them():
    with pytest.raises(UnsafeValueError):
        wmic.create("MSFT_SIPESUserContactData", {"Name": "a\r\nb"})
    assert wmic.clean_text("a\r\nb\tc") == "a  b c"


def test_ldif_modify_file_deletes_attributes():
    data = ldif.render([ldif.Change("CN=Al,DC=c,DC=com", "modify",
                                    [("delete", "msExchIMAddress", []), ("delete", "msExchIMPhysicalURL", [])])])
    assert data == (b"dn: CN=Al,DC=c,DC=com\r\nchangetype: modify\r\ndelete: msExchIMAddress\r\n-\r\n"
                    b"delete: msExchIMPhysicalURL\r\n-\r\n\r\n")


@pytest.mark.parametrize("value", [" lead", ":colon", "<lt", "trail ", "Zoë", "a\nb"])
def test_unsafe_ldif_values_are_base64(value):
    line = ldif.attr_line("description", value)
    assert line.startswith("description:: ")
    assert base64.b64decode(line.split(":: ")[1]).decode() == value


def test_ldif_round_trips_through_the_parser_with_folding():
    dn = "CN=" + "Very Long Name " * 10 + ",OU=Users,DC=contoso,DC=com"
    data = ldif.render([ldif.Change(dn, "modify", [("replace", "displayName", ["Zoë"])])])
    assert max(len(x) for x in data.split(b"\r\n")) <= 76
    [e] = ldif.parse(data)
    assert e.dn == dn and e.get("displayname") == ["Zoë"]


LDIFDE_EXPORT = (
    "dn: CN=Alice Smith,OU=Users,DC=contoso,DC=com\r\n"
    "changetype: add\r\n"
    "msExchIMAddress: alice@im.contoso.com\r\n"
    "msExchIMPhysicalURL: http://exim01.contoso.com/instmsg/local/exim01.contoso.com/aliases/al\r\n"
    " ice\r\n"
    "\r\n"
    "dn:: Q049Wm/DqyxPVT1Vc2VycyxEQz1jb250b3NvLERDPWNvbQ==\r\n"
    "changetype: add\r\n"
    "msExchIMAddress: zoe@im.contoso.com\r\n\r\n"
)


def test_ldifde_export_files_are_parsed():
    a, z = ldif.parse(LDIFDE_EXPORT.encode("utf-8"))
    assert a.first("msExchIMAddress") == "alice@im.contoso.com"
    assert a.first("msexchimphysicalurl").endswith("/aliases/alice")
    assert z.dn == "CN=Zoë,OU=Users,DC=contoso,DC=com"


def test_ldap_filter_values_are_escaped():
    assert ldif.escape_filter_value("a*(b)\\") == "a\\2a\\28b\\29\\5c"


def test_ldifde_commands():
    assert ldif.import_command(r"C:\Temp\x y.ldf").render() == r'ldifde -i -f "C:\Temp\x y.ldf"'
    assert ldif.export_command(r"C:\Temp\e.ldf", "(msExchIMAddress=*)", ["msExchIMAddress"]).render() == \
        r'ldifde -f C:\Temp\e.ldf -r "(msExchIMAddress=*)" -l msExchIMAddress'


WQL_HOSTILE = ["o'brien", "A & B", "100% %PATH%", "^caret^ (x) <y> |z", "tail\\", "Zoë 山田 ‮", "a' OR 'x'='x"]


@pytest.mark.parametrize("value", WQL_HOSTILE)
def test_wql_literals_reach_wmic_intact_and_expose_no_cmd_operator(value):
    cmd = wmic.delete("MSFT_SIPESUserContactData", wmic.where(UserInstanceID="{0-1}", SIPURI=value))
    received = _cmd_exe(cmd.render() + " & echo next", {"PATH": "C:\\Windows"})
    wmic_text, tail = received.split("\x00")
    assert tail == "& echo next"
    m = re.search(r"SIPURI='((?:[^'\\]|\\.)*)'\" delete\s*$", wmic_text)
    assert m and re.sub(r"\\(.)", r"\1", m.group(1)) == value


@pytest.mark.parametrize("value", ['" & reg add HKLM\\SOFTWARE\\X /f & "', 'a"b', '"'])
def test_a_double_quote_in_a_wql_literal_is_refused(value):
    """It would end the double-quoted where clause and put the rest on cmd.exe's line."""
    with pytest.raises(UnsafeValueError):
        wmic.where(InstanceID=value)


def test_text_whose_quotes_leave_an_operator_outside_is_escaped_whole():
    text = 'path X where "A=\'1\'" & calc & "" get B'
    received = _cmd_exe(wmic.for_cmd(text), {})
    assert "\x00" not in received and received == text
