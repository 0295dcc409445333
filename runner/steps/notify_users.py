"""notify_users: tell each user to recreate their contacts on LCS (scenario 1).

Writes one UTF-8 notice per user into an outbox directory on the control
node (arg ``outbox``, else var ``notify_outbox``, else ``<state>/outbox``
under var ``runner_state_dir``, else ``.runner/outbox``): their new SIP
address and, when their contacts were exported, each old contact's new
SIP address. A notice already identical on disk is left alone. Optionally
also sent by SMTP (vars ``notify_smtp_host``, ``notify_smtp_port``,
``notify_from``, recipient = the user's ``email`` var or IM address);
plain SMTP with no authentication, for an internal relay.
"""
from __future__ import annotations

import smtplib
from email.message import EmailMessage
from pathlib import Path

from runner.artifacts import atomic_write
from runner.errors import TransientFault
from runner.lcs.mapping import Mapped, mapping_for, user_sip_uri
from runner.model import User
from runner.steps._lcs import latest_export
from runner.steps.base import Diff, StepContext, StepModule, StepResult

SUBJECT = "Your instant messaging account has moved: please recreate your contacts"


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


class NotifyUsers(StepModule):
    """Write (and optionally mail) the recreate-your-contacts notice."""

    name = "notify_users"
    target = "user"
    args_schema = {"type": "object", "additionalProperties": False, "properties": {
        "outbox": {"type": "string", "minLength": 1}}}

    def probe(self, ctx: StepContext, target: User) -> Diff | None:
        path = outbox_dir(ctx) / f"{target.alias}.txt"
        text = notice_text(ctx, target)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return None
        return Diff(f"write notice {path}", [f"+ {path}"], {"path": str(path), "text": text})

    def apply(self, ctx: StepContext, target: User, diff: Diff) -> StepResult:
        path = Path(diff.data["path"])
        atomic_write(path, diff.data["text"].encode("utf-8"))
        data = {"notice": str(path)}
        host = ctx.vars.get("notify_smtp_host")
        if host:
            msg = EmailMessage()
            msg["Subject"] = SUBJECT
            msg["From"] = str(ctx.vars.get("notify_from") or "im-migration@localhost")
            msg["To"] = str((target.vars or {}).get("email") or target.im_address)
            msg.set_content(diff.data["text"])
            try:
                with smtplib.SMTP(str(host), int(ctx.vars.get("notify_smtp_port") or 25), timeout=30) as s:
                    s.send_message(msg)
            except OSError as exc:
                raise TransientFault(f"SMTP to {host} failed: {exc}") from exc
            data["mailed"] = msg["To"]
        return StepResult("changed", f"notice written to {path}", data)
