"""notify_users: tell each user to recreate their contacts on LCS (scenario 1).

Writes one UTF-8 notice per user into an outbox directory on the control
node (arg ``outbox``, else var ``notify_outbox``, else ``<state>/outbox``
under var ``runner_state_dir``, else ``.runner/outbox``): their new SIP
address and, when their contacts were exported, each old contact's new
SIP address. A notice already identical on disk is left alone.

Optional mail: when var ``notify_smtp_host`` is set, each notice is also
sent by plain SMTP (``notify_smtp_port``, default 25; sender
``notify_from``; no authentication: an internal relay) to the user's
mailbox: the user's own ``email`` var, else the ``notify_smtp_to``
template rendered for the user (e.g. ``"{{ user.alias }}@contoso.com"``),
else the IM address. What was mailed is remembered beside the notice in
``<alias>.sent.json`` (recipient and sha256 of the text), so a later run
mails only a notice that changed or was never delivered. A refused
message (5xx) is a permanent failure of that user's task, a connection
error or 4xx a transient one; the notice file is written first either way.
"""
from __future__ import annotations

import hashlib
import json
import re
import smtplib
import time
from email.errors import HeaderParseError, InvalidHeaderDefect
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from runner.artifacts import atomic_write, remove_stale_temporaries
from runner.errors import PermanentFault, TransientFault
from runner.lcs.mapping import Mapped, mapping_for, user_sip_uri
from runner.model import User
from runner.steps._lcs import latest_export
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.templating import render_string

SUBJECT = "Your instant messaging account has moved: please recreate your contacts"
DEFAULT_FROM = "im-migration@localhost"
SMTP_TIMEOUT = 30.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def outbox_dir(ctx: StepContext) -> Path:
    """Where notices go (see the module docstring)."""
    chosen = ctx.args.get("outbox") or ctx.vars.get("notify_outbox")
    if chosen:
        return Path(str(chosen))
    return Path(str(ctx.vars.get("runner_state_dir") or ".runner")) / "outbox"


def notice_text(ctx: StepContext, user: User) -> str:
    """The notice for ``user`` (plain text)."""
    me = user_sip_uri(user, ctx.vars, ctx.inventory)
    lines = [f"Hello {user.display_name or user.alias},", "",
             "Your instant messaging account has moved from Exchange Instant Messaging to",
             "Live Communications Server. Please sign in with Windows Messenger 5.1 as:", "",
             f"    {me.uri if isinstance(me, Mapped) else user.im_address}", "",
             "Your contact list was not moved: please add your contacts again."]
    found = latest_export(ctx, user)
    if found and found[0]:
        mapping = mapping_for(ctx.vars, ctx.inventory, user)
        lines += ["", "Your old contacts and their new addresses:", ""]
        for c in found[0]:
            m = mapping.map(c.address)
            new = m.uri if isinstance(m, Mapped) else "(no new address: ask your help desk)"
            label = f"{c.name} <{c.address}>" if c.name else c.address
            lines.append(f"    {label}  ->  {new}")
    return "\n".join(lines) + "\n"


def mail_recipient(ctx: StepContext, user: User) -> str | None:
    """The address ``user``'s notice is mailed to, None when SMTP is not configured
    (see the module docstring for the order of choices)."""
    if not ctx.vars.get("notify_smtp_host"):
        return None
    own = (user.vars or {}).get("email")
    if own:
        return str(own)
    template = ctx.vars.get("notify_smtp_to")
    if template:
        variables = dict(ctx.vars)
        variables.setdefault("user", {"alias": user.alias, "im_address": user.im_address,
                                      "display_name": user.display_name, "sip_uri": user.sip_uri})
        return str(render_string(str(template), variables))
    return user.im_address


def _one_line(text: str) -> str:
    """``text`` with control characters (CR, LF, tab...) folded to single spaces."""
    return _CONTROL.sub(" ", text).strip()


def _address(value: str, what: str, display_name: str = "") -> Address:
    """A checked mail address; CR/LF or anything not ``local@domain`` is a PermanentFault."""
    if _CONTROL.search(value):
        raise PermanentFault(f"{what} {value!r} contains control characters: not mailed")
    try:
        addr = Address(display_name=_one_line(display_name), addr_spec=value.strip())
    except (ValueError, HeaderParseError, InvalidHeaderDefect) as exc:
        raise PermanentFault(f"{what} {value!r} is not a mail address: {exc}") from exc
    if not addr.username or not addr.domain:
        raise PermanentFault(f"{what} {value!r} is not a mail address (local@domain)")
    return addr


def _sent_path(notice: Path) -> Path:
    return notice.with_name(notice.stem + ".sent.json")


def _sent_record(notice: Path) -> dict[str, Any]:
    try:
        record = json.loads(_sent_path(notice).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def send_notice(ctx: StepContext, user: User, to: str, text: str) -> None:
    """Mail ``text`` to ``to`` through the configured relay; SMTP errors become faults
    (5xx permanent; 4xx, refused or dropped connections transient)."""
    host = str(ctx.vars["notify_smtp_host"])
    try:
        port = int(ctx.vars.get("notify_smtp_port") or 25)
    except (TypeError, ValueError) as exc:
        raise PermanentFault(f"notify_smtp_port {ctx.vars.get('notify_smtp_port')!r} is not a port") from exc
    sender = _address(str(ctx.vars.get("notify_from") or DEFAULT_FROM), "notify_from")
    recipient = _address(to, f"{user.alias}'s mail address", user.display_name or "")
    msg = EmailMessage()
    msg["Subject"] = SUBJECT
    msg["From"] = sender
    msg["To"] = recipient
    msg.set_content(text)
    where = f"SMTP {host}:{port}"
    try:
        with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT) as s:
            s.send_message(msg, from_addr=sender.addr_spec, to_addrs=[recipient.addr_spec])
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()), (0, b""))
        _refused(f"{where} refused recipient {recipient.addr_spec}", code, reply)
    except smtplib.SMTPResponseException as exc:
        _refused(f"{where} refused the notice for {user.alias}", exc.smtp_code, exc.smtp_error)
    except (smtplib.SMTPException, OSError) as exc:
        raise TransientFault(f"{where} failed for {user.alias}: {exc or type(exc).__name__}") from exc


def _refused(what: str, code: int, reply: bytes | str) -> None:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    message = f"{what}: {code} {_one_line(text)}"
    raise (PermanentFault if 500 <= code < 600 else TransientFault)(message)


class NotifyUsers(StepModule):
    """Write (and optionally mail) the recreate-your-contacts notice."""

    name = "notify_users"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "outbox": {"type": "string", "minLength": 1}}}

    def probe(self, ctx: StepContext, target: User) -> Diff | None:  # type: ignore[override]
        path = outbox_dir(ctx) / f"{target.alias}.txt"
        text = notice_text(ctx, target)
        write = not (path.is_file() and path.read_text(encoding="utf-8") == text)
        to = mail_recipient(ctx, target)
        sent = _sent_record(path)
        mail = to is not None and (sent.get("to") != to or sent.get("sha256") != _sha(text))
        if not write and not mail:
            return None
        lines = [f"+ {path}"] if write else []
        if mail:
            lines.append(f"+ mail to {_one_line(str(to))!r}")
        summary = " and ".join(([f"write notice {path}"] if write else [])
                               + ([f"mail it to {_one_line(str(to))}"] if mail else []))
        return Diff(summary, lines, {"path": str(path), "text": text, "write": write,
                                     "mail_to": to if mail else None})

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:  # type: ignore[override]
        path = Path(diff.data["path"])
        text = diff.data["text"]
        # A run killed mid-write left a `.<name>.*.tmp` beside the notice: clear it.
        remove_stale_temporaries(path.parent)
        if diff.data.get("write", True):
            atomic_write(path, text.encode("utf-8"))
        data: dict[str, Any] = {"notice": str(path)}
        to = diff.data.get("mail_to")
        if to:
            send_notice(ctx, target, to, text)
            record = {"to": to, "sha256": _sha(text), "sent": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write(_sent_path(path), json.dumps(record, indent=1).encode("utf-8"))
            data["mailed"] = to
        done = [f"notice written to {path}"] if diff.data.get("write", True) else []
        if to:
            done.append(f"mailed to {_one_line(to)}")
        return StepResult("changed", "; ".join(done), data)
