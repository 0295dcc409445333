"""wmic command lines for the LCS WMI classes, and parsers of what wmic prints.

Builders return :class:`runner.windows.cmdline.Command` objects; batch them
with ``cmdline.sectioned`` + ``cmdline.batch`` (one round trip per user).

Syntax (real wmic)::

    wmic path MSFT_SIPESUserContactData where "UserInstanceID='{GUID}'" get SIPURI,Name,GroupID /format:list
    wmic path MSFT_SIPESUserContactGroupData create UserInstanceID="{GUID}",Name="Friends"
    wmic path MSFT_SIPESUserSetting where "InstanceID='{GUID}'" set Enabled=TRUE
    wmic path MSFT_SIPESUserContactData where "UserInstanceID='{GUID}' AND SIPURI='sip:b@c.com'" delete

Quoting, in two layers:

1. wmic: string values in create/set are in double quotes with ``\\`` and
   ``\\"`` escaped by a backslash (the WMI object-path convention); WQL string
   literals in ``where`` are in single quotes with ``\\`` and ``\\'`` escaped.
   Booleans are ``TRUE``/``FALSE``, arrays ``{1,2}``.
2. cmd.exe: when the wmic text holds no ``%`` and no escaped quote, cmd.exe's
   own quote state matches wmic's and the metacharacters (``& | < > ^ ( )``)
   are all inside quotes: the text is used as it is. Otherwise cmd.exe never
   enters a quoted region: every ``"`` becomes ``^"`` (a literal quote that
   does not toggle cmd's state), every metacharacter is escaped with ``^``, and
   every ``%`` becomes ``^%``, so any ``%...%`` span cmd.exe tries to expand
   ends in ``^`` and names no variable (left as is on a command line, then the
   caret is removed). wmic receives exactly the layer-1 text.

Values are also validated: CR, LF, NUL and Ctrl-Z are refused (they end a
command line); callers sanitise display names first (:func:`clean_text`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from runner.errors import PermanentFault, TransientFault
from runner.windows.cmdline import Command, UnsafeValueError

NO_INSTANCES = "No Instance(s) Available."
#: HRESULTs that mean "try again later": server busy, RPC server unavailable.
TRANSIENT_CODES = {0x80041045, 0x800706BA, 0x800706BF}
#: WBEM_E_SERVER_TOO_BUSY: the server answered and did nothing; the same command may be sent again.
SERVER_TOO_BUSY = 0x80041045
_CMD_META = set('&|<>^()"%')
_FORBIDDEN = re.compile(r"[\r\n\x00\x1a]")


class WmicError(PermanentFault):
    """wmic reported an error (``code`` is the HRESULT, when printed)."""

    def __init__(self, message: str, code: int | None = None, **kw: Any) -> None:
        self.code = code
        super().__init__(message, **kw)


def clean_text(value: str) -> str:
    """``value`` with control characters (line ends, NUL, tabs) turned into spaces.

    Display names come from a registry and may hold anything; wmic's
    /format:list output and the command line cannot carry line ends.
    """
    return "".join(" " if (ord(c) < 32 or c == "\x7f") else c for c in value)


def wmi_string(value: str) -> str:
    """A wmic create/set string value: ``"..."`` with ``\\`` and ``"`` escaped."""
    _check(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wql_string(value: str) -> str:
    """A WQL string literal for a where clause: ``'...'`` with ``\\`` and ``'`` escaped.

    A ``"`` is refused: the where clause travels inside double quotes on the
    wmic line, and neither wmic nor cmd.exe can carry one inside them (it
    would end the clause and put the rest, ``&`` included, outside quotes).
    """
    _check(value)
    if '"' in value:
        raise UnsafeValueError(f"value {value[:40]!r} contains a double quote, which a WQL condition "
                               "on a wmic command line cannot carry")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def wmi_value(value: Any) -> str:
    """Render a property value for create/set (str, bool, int, list of ints)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(str(int(v)) for v in value) + "}"
    return wmi_string(str(value))


def _check(value: str) -> None:
    if _FORBIDDEN.search(value):
        raise UnsafeValueError(f"value {value[:40]!r} contains a line end or NUL")


def _quoted_by_cmd(text: str) -> bool:
    """True when cmd.exe's quote toggling keeps every metacharacter of ``text`` inside quotes."""
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        elif c in _CMD_META and not quoted:
            return False
    return not quoted


def for_cmd(text: str) -> str:
    """Make wmic text safe on a cmd.exe line (module docstring, layer 2)."""
    if "%" not in text and '\\"' not in text and _quoted_by_cmd(text):
        return text
    out = []
    for c in text:
        out.append("^" + c if c in _CMD_META else c)
    return "".join(out)


def where(**conditions: Any) -> str:
    """A WQL condition ANDing ``Prop=value`` pairs (strings quoted, bools as TRUE/FALSE)."""
    parts = []
    for prop, value in conditions.items():
        if isinstance(value, bool):
            parts.append(f"{prop}={'TRUE' if value else 'FALSE'}")
        elif isinstance(value, int):
            parts.append(f"{prop}={value}")
        else:
            parts.append(f"{prop}={wql_string(str(value))}")
    return " AND ".join(parts)


def _path(cls: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cls):
        raise ValueError(f"not a WMI class name: {cls!r}")
    return cls


def _props(names: Iterable[str]) -> str:
    names = list(names)
    for n in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n):
            raise ValueError(f"not a WMI property name: {n!r}")
    return ",".join(names)


def get(cls: str, props: Sequence[str], condition: str | None = None) -> Command:
    """``wmic path CLASS [where "COND"] get P1,P2 /format:list``."""
    text = f"path {_path(cls)}"
    if condition:
        text += f' where "{condition}"'
    text += f" get {_props(props)} /format:list"
    return Command("wmic", for_cmd(text))


def create(cls: str, values: Mapping[str, Any]) -> Command:
    """``wmic path CLASS create P1="v",P2=1``."""
    _props(values)
    assigns = ",".join(f"{k}={wmi_value(v)}" for k, v in values.items())
    return Command("wmic", for_cmd(f"path {_path(cls)} create {assigns}"))


def set_(cls: str, condition: str, values: Mapping[str, Any]) -> Command:
    """``wmic path CLASS where "COND" set P1="v"``."""
    _props(values)
    assigns = ",".join(f"{k}={wmi_value(v)}" for k, v in values.items())
    return Command("wmic", for_cmd(f'path {_path(cls)} where "{condition}" set {assigns}'))


def delete(cls: str, condition: str) -> Command:
    """``wmic path CLASS where "COND" delete``."""
    return Command("wmic", for_cmd(f'path {_path(cls)} where "{condition}" delete'))


# --- parsing ----------------------------------------------------------------

def parse_list(stdout: str) -> list[dict[str, str]]:
    """Records of ``/format:list`` output: blank-line separated ``Name=Value`` lines.

    ``No Instance(s) Available.`` (or no output) gives an empty list. Values
    are raw strings; see :func:`parse_bool`, :func:`parse_array`.
    """
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for raw in stdout.replace("\r\r\n", "\n").replace("\r\n", "\n").split("\n"):
        line = raw.rstrip("\r")
        if not line.strip():
            if current:
                records.append(current)
                current = {}
            continue
        if line.strip() == NO_INSTANCES:
            continue
        name, eq, value = line.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        if name in current:  # a new record without a separating blank line
            records.append(current)
            current = {}
        current[name] = value
    if current:
        records.append(current)
    return records


def parse_bool(value: str | None) -> bool:
    """wmic's TRUE/FALSE."""
    return (value or "").strip().upper() == "TRUE"


def parse_array(value: str | None) -> list[str]:
    """wmic's ``{1,2}`` or ``{"a","b"}`` array rendering; empty for ``""``/``{}``."""
    v = (value or "").strip()
    if v.startswith("{") and v.endswith("}"):
        v = v[1:-1]
    if not v:
        return []
    items = re.findall(r'"((?:[^"\\]|\\.)*)"|([^,]+)', v)
    return [a.replace('\\"', '"').replace("\\\\", "\\") if a else b.strip() for a, b in items]


_CODE_RE = re.compile(r"Code\s*=\s*(0x[0-9A-Fa-f]+)")
_DESC_RE = re.compile(r"Description\s*=\s*(.+)")


@dataclass(frozen=True)
class WmicOutcome:
    """What one wmic command said: success, the HRESULT and description on error."""

    ok: bool
    code: int | None = None
    description: str = ""


def outcome(stdout: str, stderr: str = "", ok: bool = True) -> WmicOutcome:
    """Read wmic's verdict: an ``ERROR:`` block (Code/Description) means failure."""
    text = f"{stdout}\n{stderr}"
    if "ERROR:" not in text and ok:
        return WmicOutcome(True)
    m = _CODE_RE.search(text)
    d = _DESC_RE.search(text)
    desc = d.group(1).strip() if d else (text.strip().splitlines() or ["wmic failed"])[-1]
    return WmicOutcome(False, int(m.group(1), 16) if m else None, desc)


_BUSY_RE = re.compile(r"^ERROR:[ \t]*\r?\n[ \t]*Code[ \t]*=[ \t]*0x80041045[ \t]*\r?$", re.MULTILINE | re.IGNORECASE)


def busy(output: str) -> bool:
    """wmic printed the server's busy error block (``ERROR:`` on a line of its own, then
    ``Code = 0x80041045``): the command did nothing. A value that merely contains such text
    (a hostile display name in a ``/format:list`` line) is not taken for it."""
    return _BUSY_RE.search(output) is not None


def raise_for(out: WmicOutcome, what: str, host: str | None = None) -> None:
    """Raise TransientFault for a busy/unavailable server, WmicError otherwise."""
    if out.ok:
        return
    code = f"0x{out.code:08X} " if out.code is not None else ""
    msg = f"{what}: wmic error {code}{out.description}"
    if out.code in TRANSIENT_CODES:
        raise TransientFault(msg, host=host)
    raise WmicError(msg, out.code, host=host)
